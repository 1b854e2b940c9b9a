//! `flotilla policy …`: Cedar policies as code. `validate` and `schema` work locally; `apply`,
//! `list` and `show` talk to a coordinator's admin API.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use flotilla_coordinator::api::{PolicyVersionSummary, PolicyVersionText};

use crate::admin_cmd::{Admin, AdminArgs, Body, JsonArg, typed};
use crate::admin_view::{self, Clock};

/// `flotilla policy …`
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file against Flotilla's schema, locally (no coordinator); on an error prints
    /// FILE:LINE:COL: message and exits 1.
    Validate {
        /// The Cedar policy file, e.g. examples/policies/hospital.cedar
        file: PathBuf,
    },
    /// Print the Cedar schema policies are written against (entities, attributes, actions).
    Schema,
    /// Validate a policy file and apply it on the coordinator as the next version; prints the
    /// version as the last line of stdout.
    Apply {
        #[command(flatten)]
        admin: AdminArgs,
        /// The Cedar policy file
        file: PathBuf,
        #[command(flatten)]
        output: JsonArg,
    },
    /// List the applied policy versions, newest first.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Print a policy version's text (default: the one in force).
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// Version number [default: the version in force]
        version: Option<u64>,
        #[command(flatten)]
        output: JsonArg,
    },
}

/// Reads and validates `file`; the error is `FILE:LINE:COL: message`, as a compiler reports it.
fn read_valid(file: &Path) -> Result<(String, flotilla_policy::PolicySet)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let set = flotilla_policy::validate(&text)
        .map_err(|e| anyhow!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message))?;
    Ok((text, set))
}

/// `flotilla server --policy FILE`: the file, validated here first so the error points into it.
pub fn policy_file(file: &Path) -> Result<flotilla_coordinator::PolicyFile> {
    let (text, _) = read_valid(file).context("--policy")?;
    Ok(flotilla_coordinator::PolicyFile {
        name: file.display().to_string(),
        text,
    })
}

pub fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Validate { file } => {
            let (_, set) = read_valid(&file)?;
            let n = set.ids().len();
            let plural = if n == 1 { "policy" } else { "policies" };
            println!(
                "{}: valid, {n} {plural}{}{}",
                file.display(),
                if n == 0 { "" } else { ": " },
                set.ids().join(", ")
            );
        }
        PolicyCommand::Schema => print!("{}", flotilla_policy::schema_text()),
        PolicyCommand::Apply {
            admin,
            file,
            output,
        } => {
            // Locally first: the error points into the file, and nothing is sent.
            let (text, _) = read_valid(&file)?;
            let v = Admin::new(&admin)?
                .call(
                    reqwest::Method::POST,
                    "/v1/policies",
                    Some(Body::Cedar(text)),
                )
                .map_err(|e| {
                    // The coordinator says `line L, column C: …`; name the file.
                    let msg = e.to_string();
                    match located(&msg) {
                        Some((line, col, rest)) => {
                            anyhow!("{}:{line}:{col}: {rest}", file.display())
                        }
                        None => e,
                    }
                })?;
            let applied: PolicyVersionText = typed(v.clone(), "policy apply")?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            eprintln!(
                "applied {} as policy version {} (sha256 {}, {} policies)",
                file.display(),
                applied.summary.version,
                applied.summary.sha256,
                applied.policies.len()
            );
            println!("{}", applied.summary.version);
        }
        PolicyCommand::List { admin, output } => {
            let v = Admin::new(&admin)?.call(reqwest::Method::GET, "/v1/policies", None)?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            let versions: Vec<PolicyVersionSummary> = typed(v, "policy list")?;
            if versions.is_empty() {
                println!("no policy applied: the roles alone decide");
                return Ok(());
            }
            let clock = Clock::local();
            let mut t = admin_view::Table::new(&[
                ("VERSION", true),
                ("SHA256", false),
                ("APPLIED AT", false),
                ("APPLIED BY", false),
                ("", false),
            ]);
            for p in &versions {
                t.row(vec![
                    p.version.to_string(),
                    p.sha256.get(..12).unwrap_or(&p.sha256).to_owned(),
                    clock.both(p.applied_at_ms),
                    admin_view::clean(&p.applied_by),
                    if p.current { "in force" } else { "" }.to_owned(),
                ]);
            }
            print!("{}", t.render());
        }
        PolicyCommand::Show {
            admin,
            version,
            output,
        } => {
            let which = version.map_or_else(|| "current".to_owned(), |v| v.to_string());
            let v = Admin::new(&admin)?.call(
                reqwest::Method::GET,
                &format!("/v1/policies/{which}"),
                None,
            )?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            let p: PolicyVersionText = typed(v, "policy")?;
            eprintln!(
                "policy version {} (sha256 {}), applied by {}{}",
                p.summary.version,
                p.summary.sha256,
                admin_view::clean(&p.summary.applied_by),
                if p.summary.current { ", in force" } else { "" }
            );
            // The text as stored, for `> file.cedar`; escaped so it cannot drive the terminal.
            print!("{}", terminal_safe(&p.text));
        }
    }
    Ok(())
}

/// `text` with every unsafe character escaped but newlines and tabs (the file stays a file).
fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' || c == '\t' || !crate::log_escape::is_unsafe(c) {
            out.push(c);
        } else {
            out.push_str(&crate::log_escape::escape_control(
                c.encode_utf8(&mut [0; 4]),
            ));
        }
    }
    out
}

/// `(line, column, rest)` of a coordinator error `…line L, column C: rest`.
fn located(msg: &str) -> Option<(usize, usize, &str)> {
    let at = msg.find("line ")?;
    let rest = &msg[at + 5..];
    let (line, rest) = rest.split_once(", column ")?;
    let (col, rest) = rest.split_once(": ")?;
    Some((line.parse().ok()?, col.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::located;

    #[test]
    fn coordinator_errors_are_located() {
        assert_eq!(
            located("400 Bad Request: line 3, column 8: unexpected token"),
            Some((3, 8, "unexpected token"))
        );
        assert_eq!(located("403 Forbidden: nope"), None);
    }
}
