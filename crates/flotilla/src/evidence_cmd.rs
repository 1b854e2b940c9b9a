//! `flotilla evidence-pack --job ID --out DIR [--identities]`: fetches a job's evidence pack
//! (`GET /v1/jobs/{id}/evidence`) and writes `evidence.json` (the coordinator's answer, for
//! machines) and `evidence.md` (for people: headings, tables, times in UTC). A child of
//! `admin_cmd`, whose client it uses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flotilla_coordinator::api::evidence::EvidencePack;

use super::{Admin, AdminArgs, typed};
use crate::admin_view::{Clock, clean, num};

/// Arguments of `flotilla evidence-pack`.
#[derive(Debug, clap::Args)]
pub struct EvidenceArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The job
    #[arg(long, value_name = "ID")]
    job: String,
    /// Directory to write evidence.json and evidence.md into (created if missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Include the ids of each round's participants (auditors and admins only)
    #[arg(long)]
    identities: bool,
}

pub fn evidence_pack(args: EvidenceArgs) -> Result<()> {
    let id = args.job.trim();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("--job must be a job id (a number; see `flotilla job list`), got {id:?}");
    }
    let path = if args.identities {
        format!("/v1/jobs/{id}/evidence?identities=true")
    } else {
        format!("/v1/jobs/{id}/evidence")
    };
    let v = Admin::new(&args.admin)?.call(reqwest::Method::GET, &path, None)?;
    let pack: EvidencePack = typed(v.clone(), "evidence pack")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating --out {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&v).context("encoding evidence.json")?;
    write(&args.out.join("evidence.json"), json.as_bytes())?;
    let clock = Clock {
        now_ms: pack.generated_at_ms,
        utc: true,
    };
    write(
        &args.out.join("evidence.md"),
        markdown(&pack, &clock).as_bytes(),
    )?;
    eprintln!(
        "evidence pack of job {id} written to {} (evidence.json, evidence.md)",
        args.out.display()
    );
    println!("{}", args.out.join("evidence.md").display());
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half a pack.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Text from the coordinator in a Markdown table cell or line: one line, terminal-safe, with the
/// characters that would break a table or start markup escaped.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in clean(s).chars() {
        match c {
            // `_` is left alone: GitHub Markdown never emphasises inside a word.
            '|' | '`' | '*' | '<' | '>' | '[' | ']' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text from the coordinator as a code span: verbatim inside backticks, one line, terminal-safe.
fn code(s: &str) -> String {
    format!(
        "`{}`",
        clean(s).replace(['`', '\n', '\r'], " ").replace('|', "\\|")
    )
}

/// A Markdown table.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        headers.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "—".into())
}

/// The pack for people.
pub(crate) fn markdown(p: &EvidencePack, clock: &Clock) -> String {
    let mut o = String::new();
    let j = &p.job;
    let _ = writeln!(o, "# Evidence pack: job {} ({})\n", j.job_id, md(&j.name));
    let _ = writeln!(
        o,
        "Generated {} for {} by flotilla {} ({}). The machine-readable form is `evidence.json` \
         (format `{}`).\n",
        clock.absolute(p.generated_at_ms),
        md(&p.generated_by),
        md(&p.build.version),
        md(&p.build.git_sha),
        md(&p.format)
    );

    o.push_str("## Job\n\n");
    let mut rows = vec![
        vec!["Tenant".into(), md(&j.tenant)],
        vec!["State".into(), md(&j.state)],
        vec![
            "Rounds".into(),
            format!("{} of {} committed", j.rounds_completed, j.rounds_total),
        ],
        vec!["Submitted".into(), clock.absolute(j.created_at_ms)],
        vec!["Last change".into(), clock.absolute(j.updated_at_ms)],
    ];
    if let Some(r) = &j.state_reason {
        rows.push(vec!["Reason".into(), md(r)]);
    }
    table(&mut o, &["Field", "Value"], &rows);

    o.push_str("## Job spec\n\n");
    let _ = writeln!(
        o,
        "SHA-256 {} over the {}.\n",
        code(&p.spec.sha256),
        md(&p.spec.canonicalization)
    );
    let _ = writeln!(
        o,
        "```json\n{}\n```\n",
        serde_json::to_string_pretty(&p.spec.spec)
            .unwrap_or_default()
            .replace("```", "`\u{200b}``")
    );

    o.push_str("## Policies in force\n\n");
    if p.policies.policies.is_empty() {
        let _ = writeln!(
            o,
            "None recorded{}.\n",
            p.policies
                .note
                .as_deref()
                .map(|n| format!(": {}", md(n)))
                .unwrap_or_default()
        );
    } else {
        let rows: Vec<Vec<String>> = p
            .policies
            .policies
            .iter()
            .map(|x| {
                vec![
                    md(&x.id),
                    x.version.map(|v| v.to_string()).unwrap_or_default(),
                    code(&x.sha256),
                    x.applied_at_ms
                        .map(|t| clock.absolute(t))
                        .unwrap_or_default(),
                    x.applied_by.as_deref().map(md).unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &mut o,
            &["Policy", "Version", "SHA-256", "Applied", "By"],
            &rows,
        );
    }

    o.push_str("## Approvals\n\n");
    if p.approvals.decisions.is_empty() {
        let _ = writeln!(
            o,
            "None recorded{}.\n",
            p.approvals
                .note
                .as_deref()
                .map(|n| format!(": {}", md(n)))
                .unwrap_or_default()
        );
    } else {
        let rows: Vec<Vec<String>> = p
            .approvals
            .decisions
            .iter()
            .map(|d| {
                vec![
                    md(&d.decision),
                    md(&d.by),
                    clock.absolute(d.at_ms),
                    d.reason.as_deref().map(md).unwrap_or_default(),
                ]
            })
            .collect();
        table(&mut o, &["Decision", "By", "When", "Reason"], &rows);
    }

    o.push_str("## Security configuration\n\n");
    let s = &p.security;
    match &s.tls {
        Some(t) => {
            let _ = writeln!(
                o,
                "TLS on every listener ({} provider{}).\n",
                md(&t.provider),
                if t.fips { ", FIPS mode" } else { "" }
            );
            table(
                &mut o,
                &["Offered", "Values"],
                &[
                    vec!["Protocol versions".into(), md(&t.versions.join(", "))],
                    vec!["Cipher suites".into(), md(&t.cipher_suites.join(", "))],
                    vec![
                        "Key exchange groups".into(),
                        md(&t.key_exchange_groups.join(", ")),
                    ],
                ],
            );
        }
        None => o.push_str("**No TLS**: the coordinator serves plain text (`--insecure`).\n\n"),
    }
    let _ = writeln!(
        o,
        "Client credentials are valid for {}.\n",
        crate::admin_view::duration_words(s.credential_ttl_seconds.saturating_mul(1000))
    );
    let rows: Vec<Vec<String>> = s
        .authentication
        .iter()
        .map(|a| {
            vec![
                code(&a.name),
                if a.enabled { "enabled" } else { "disabled" }.into(),
                md(&a.detail),
            ]
        })
        .collect();
    table(&mut o, &["Authentication", "State", "What it is"], &rows);

    o.push_str("## Secure aggregation\n\n");
    match &p.secagg {
        None => o.push_str("Not used: the coordinator saw each client's update.\n\n"),
        Some(sa) => {
            let _ = writeln!(o, "{}.\n", md(&sa.protocol));
            table(
                &mut o,
                &["Parameter", "Value"],
                &[
                    vec!["n (largest roster)".into(), sa.n.to_string()],
                    vec!["k (neighbours per client)".into(), sa.k.to_string()],
                    vec!["t (shares to reconstruct)".into(), sa.t.to_string()],
                    vec!["Clip range".into(), format!("±{}", num(sa.clip_range))],
                    vec![
                        "Fewest inputs a round commits with".into(),
                        sa.min_reports.to_string(),
                    ],
                    vec![
                        "Dropouts tolerated per round".into(),
                        sa.dropouts_tolerated.per_round.to_string(),
                    ],
                    vec![
                        "Dropouts tolerated per neighbourhood".into(),
                        sa.dropouts_tolerated.per_neighbourhood.to_string(),
                    ],
                ],
            );
        }
    }

    o.push_str("## Differential privacy\n\n");
    match &p.privacy {
        None => o.push_str("Not used.\n\n"),
        Some(dp) => {
            let _ = writeln!(o, "{}.\n", md(&dp.mechanism));
            table(
                &mut o,
                &["Parameter", "Value"],
                &[
                    vec!["Mode".into(), md(&dp.mode)],
                    vec!["Noise multiplier σ".into(), dp.noise_multiplier.to_string()],
                    vec![
                        "Clip norm C".into(),
                        dp.clip_norm
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "adaptive".into()),
                    ],
                    vec!["δ".into(), format!("{:e}", dp.delta)],
                    vec!["Budget (max ε)".into(), opt(dp.max_epsilon)],
                    vec![
                        "Population".into(),
                        dp.population.map(|n| n.to_string()).unwrap_or_default(),
                    ],
                    vec!["Accountant".into(), md(&dp.accountant)],
                    vec![
                        "Rényi orders".into(),
                        format!(
                            "{} orders from {} to {}",
                            dp.orders.len(),
                            dp.orders.first().map_or(0.0, |v| *v),
                            dp.orders.last().map_or(0.0, |v| *v)
                        ),
                    ],
                ],
            );
            let _ = writeln!(
                o,
                "**Total: ε = {} at δ = {:e}** after {} rounds (Rényi order {}).\n",
                dp.total.epsilon, dp.total.delta, dp.total.steps, dp.total.order
            );
            if let Some(cmd) = &dp.reproduce {
                let _ = writeln!(o, "Reproduce it with:\n\n```\n{cmd}\n```\n");
            }
            let rows: Vec<Vec<String>> = dp
                .rounds
                .iter()
                .map(|r| {
                    vec![
                        r.round.to_string(),
                        r.q.to_string(),
                        r.sigma.to_string(),
                        num(r.round_epsilon),
                        num(r.epsilon_recorded),
                        num(r.epsilon),
                    ]
                })
                .collect();
            table(
                &mut o,
                &[
                    "Round",
                    "q",
                    "σ",
                    "ε of the round",
                    "ε recorded",
                    "ε (accountant)",
                ],
                &rows,
            );
        }
    }

    o.push_str("## Rounds\n\n");
    if p.rounds.is_empty() {
        o.push_str("No round was committed.\n\n");
    } else {
        let rows: Vec<Vec<String>> = p
            .rounds
            .iter()
            .map(|r| {
                let eval = r.eval.as_ref();
                vec![
                    r.round.to_string(),
                    r.attempt.to_string(),
                    clock.absolute(r.committed_at_ms),
                    r.participants.to_string(),
                    r.model_sha256.as_deref().map(code).unwrap_or_default(),
                    match r.model_deleted_at_ms {
                        Some(t) => format!("deleted {}", clock.absolute(t)),
                        None => "kept".into(),
                    },
                    r.num_samples.to_string(),
                    opt(r.train_loss),
                    opt(eval.and_then(|e| e.eval_accuracy)),
                    opt(eval.and_then(|e| e.eval_loss)),
                ]
            })
            .collect();
        table(
            &mut o,
            &[
                "Round",
                "Attempt",
                "Committed",
                "Clients",
                "Model SHA-256",
                "Model blob",
                "Samples",
                "Train loss",
                "Eval accuracy",
                "Eval loss",
            ],
            &rows,
        );
        if p.identities_included {
            o.push_str("Participants (client ids; 0 is a client erased since):\n\n");
            for r in &p.rounds {
                let ids: Vec<String> = r
                    .participant_ids
                    .iter()
                    .flatten()
                    .map(u64::to_string)
                    .collect();
                let _ = writeln!(o, "- round {}: {}", r.round, ids.join(", "));
            }
            o.push('\n');
        } else {
            o.push_str(
                "Participants are counted only; an auditor or admin gets their ids with \
                 `flotilla evidence-pack --identities`.\n\n",
            );
        }
    }

    o.push_str("## Audit log\n\n");
    let a = &p.audit;
    let _ = writeln!(
        o,
        "Hash chain: **{}** — {} ({} entries checked).\n",
        if a.chain_verified {
            "verified"
        } else {
            "NOT verified"
        },
        md(&a.verification),
        a.entries_checked
    );
    if a.job_entries.is_empty() {
        o.push_str("No audit entry names this job.\n\n");
    } else {
        let field = |e: &serde_json::Value, k: &str| match &e[k] {
            serde_json::Value::String(s) => md(s),
            serde_json::Value::Null => String::new(),
            other => md(&other.to_string()),
        };
        let rows: Vec<Vec<String>> = a
            .job_entries
            .iter()
            .map(|e| {
                vec![
                    field(e, "seq"),
                    e["at_ms"]
                        .as_i64()
                        .map(|t| clock.absolute(t))
                        .unwrap_or_else(|| field(e, "at_ms")),
                    field(e, "actor"),
                    field(e, "action"),
                    field(e, "outcome"),
                ]
            })
            .collect();
        table(
            &mut o,
            &["Seq", "When", "Actor", "Action", "Outcome"],
            &rows,
        );
        if a.job_entries_truncated {
            o.push_str("(The list is cut at its limit; `flotilla audit export` has them all.)\n\n");
        }
    }

    o.push_str("## Build\n\n");
    let b = &p.build;
    table(
        &mut o,
        &["Field", "Value"],
        &[
            vec!["Version".into(), md(&b.version)],
            vec!["Git commit".into(), md(&b.git_sha)],
            vec!["Target".into(), md(&b.target)],
            vec!["Profile".into(), md(&b.profile)],
            vec!["Compiler".into(), md(&b.rustc)],
        ],
    );

    o.push_str("## Software bill of materials\n\n");
    let comps = p.sbom["components"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        o,
        "CycloneDX {} JSON (in `evidence.json`, `sbom`), generated from `Cargo.lock` when the \
         binary was built: {} components.\n",
        md(p.sbom["specVersion"].as_str().unwrap_or("?")),
        comps.len()
    );
    let rows: Vec<Vec<String>> = comps
        .iter()
        .map(|c| {
            let s = |k: &str| md(c[k].as_str().unwrap_or(""));
            vec![
                s("name"),
                s("version"),
                code(c["purl"].as_str().unwrap_or("")),
            ]
        })
        .collect();
    o.push_str("<details><summary>Components</summary>\n\n");
    table(&mut o, &["Name", "Version", "purl"], &rows);
    o.push_str("</details>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_coordinator_cannot_break_a_table_or_add_markup() {
        assert_eq!(md("a|b"), "a\\|b");
        assert_eq!(md("<script>"), "\\<script\\>");
        assert_eq!(md("x\ny"), "x\\ny");
        assert_eq!(md("**bold**"), "\\*\\*bold\\*\\*");
        assert_eq!(md("x86_64"), "x86_64");
        assert_eq!(code("a`b|c"), "`a b\\|c`");
    }
}
