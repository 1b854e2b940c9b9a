//! `flotilla retention run [--dry-run]`, `flotilla client forget ID` and the `flotilla server`
//! flags that set retention (`--retain-…`, `--retention-interval`). A child of `admin_cmd`, whose
//! client it uses.

use std::time::Duration;

use anyhow::{Result, bail};
use flotilla_coordinator::api::retention::{
    ClientForgotten, RetentionKind, RetentionReport, RetentionRules, RetentionRunRequest,
};

use super::{Admin, AdminArgs, JsonArg, body, typed};
use crate::admin_view::{Table, bytes_human, clean};

/// `flotilla retention …`
#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Apply the server's retention rules now: with --dry-run, list what would be deleted;
    /// without, delete exactly that and list what went (each deletion is in the audit log).
    Run {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: JsonArg,
    },
}

/// The `flotilla server` flags of retention. Unset rules keep everything.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Keep only the last N committed model versions of each job (the final model is always kept)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    retain_model_versions: Option<u64>,
    /// Delete every model blob of a job this long after it ended, e.g. 90d (rounds, hashes and
    /// metrics stay)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    retain_finished_job_blobs: Option<Duration>,
    /// Erase the records of clients not seen for this long (revoked and expired ones included),
    /// e.g. 180d
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    retain_inactive_clients: Option<Duration>,
    /// Delete audit entries older than this, e.g. 365d, but only those before the last signed
    /// audit checkpoint (none without one)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    retain_audit: Option<Duration>,
    /// How often the server applies the rules by itself: a duration (default 24h) or `off`
    #[arg(long, value_name = "DURATION|off", default_value = "24h", value_parser = parse_interval)]
    retention_interval: Interval,
}

/// `--retention-interval`: a duration, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct Interval(Option<Duration>);

fn parse_interval(s: &str) -> Result<Interval, String> {
    if s.trim() == "off" {
        return Ok(Interval(None));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (or `off`)"))?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s (or `off`)".into());
    }
    Ok(Interval(Some(d)))
}

impl RetentionArgs {
    /// The coordinator's retention configuration.
    pub fn config(&self) -> flotilla_coordinator::RetentionConfig {
        let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        flotilla_coordinator::RetentionConfig {
            rules: RetentionRules {
                model_versions: self.retain_model_versions,
                finished_job_blobs_ms: ms(self.retain_finished_job_blobs),
                inactive_clients_ms: ms(self.retain_inactive_clients),
                audit_ms: ms(self.retain_audit),
            },
            interval: self.retention_interval.0,
        }
    }
}

pub fn retention(cmd: RetentionCommand) -> Result<()> {
    let RetentionCommand::Run {
        admin,
        dry_run,
        output,
    } = cmd;
    let req = RetentionRunRequest { dry_run };
    let v = Admin::new(&admin)?.call(reqwest::Method::POST, "/v1/retention/run", body(&req)?)?;
    if output.json {
        println!("{v}");
        return Ok(());
    }
    let r: RetentionReport = typed(v, "retention run")?;
    print!("{}", render(&r));
    Ok(())
}

fn kind(k: RetentionKind) -> &'static str {
    match k {
        RetentionKind::ModelBlob => "model blob",
        RetentionKind::Client => "client",
        RetentionKind::AuditEntries => "audit entries",
    }
}

/// The plan or the run's result as a table, with a summary line.
pub(crate) fn render(r: &RetentionReport) -> String {
    if r.rules.keeps_everything() {
        return "retention: no rule is set on the server (flotilla server --retain-…), so \
                nothing is ever deleted\n"
            .to_owned();
    }
    let mut out = String::new();
    if r.items.is_empty() {
        out.push_str(if r.dry_run {
            "nothing to delete now\n"
        } else {
            "nothing was deleted: nothing is due\n"
        });
    } else {
        let mut t = Table::new(&[
            ("KIND", false),
            ("ID", false),
            ("BYTES", true),
            ("WHY", false),
        ]);
        for i in &r.items {
            t.row(vec![
                kind(i.kind).to_owned(),
                clean(&i.id),
                i.bytes.map(bytes_human).unwrap_or_else(|| "-".into()),
                clean(&i.reason),
            ]);
        }
        out.push_str(&t.render());
        let verb = if r.dry_run { "would delete" } else { "deleted" };
        out.push_str(&format!(
            "{verb} {} item(s), {} of model blobs",
            r.items.len(),
            bytes_human(r.bytes)
        ));
        if r.dry_run {
            out.push_str("; run `flotilla retention run` to delete them\n");
        } else {
            out.push_str(&format!(
                "; recorded in audit entries {}\n",
                r.audit_seqs
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for s in &r.skipped {
        out.push_str(&format!(
            "kept {} {}: {}\n",
            kind(s.item.kind),
            clean(&s.item.id),
            clean(&s.why)
        ));
    }
    for e in &r.blob_errors {
        out.push_str(&format!(
            "warning: {} (its deletion is recorded; the next run removes it)\n",
            clean(e)
        ));
    }
    out
}

/// `flotilla client forget ID`.
pub(super) fn forget(admin: &AdminArgs, id: &str, output: JsonArg) -> Result<()> {
    let id = id.trim();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("client id must be a number (see `flotilla client list`), got {id:?}");
    }
    let v = Admin::new(admin)?.call(
        reqwest::Method::POST,
        &format!("/v1/clients/{id}/forget"),
        None,
    )?;
    if output.json {
        println!("{v}");
        return Ok(());
    }
    let f: ClientForgotten = typed(v, "client forget")?;
    let name = f
        .name
        .as_deref()
        .map(|n| format!(" ({})", clean(n)))
        .unwrap_or_default();
    println!(
        "client {}{name} of tenant {} erased (audit entry {})",
        f.client_id,
        clean(&f.tenant),
        f.audit_seq
    );
    println!("removed: {}", f.removed.join(", "));
    println!(
        "rounds rewritten: {} (the client's id in their participant lists is now 0)",
        f.rounds_rewritten
    );
    for k in &f.kept {
        println!("kept: {}", clean(k));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_coordinator::api::retention::RetentionItem;

    fn report(dry_run: bool, items: Vec<RetentionItem>) -> RetentionReport {
        RetentionReport {
            dry_run,
            computed_at_ms: 0,
            rules: RetentionRules {
                model_versions: Some(2),
                ..RetentionRules::default()
            },
            bytes: items.iter().filter_map(|i| i.bytes).sum(),
            items,
            skipped: Vec::new(),
            audit_seqs: vec![7],
            blob_errors: Vec::new(),
        }
    }

    #[test]
    fn a_plan_is_a_table_with_a_summary() {
        let item = RetentionItem {
            kind: RetentionKind::ModelBlob,
            id: "job-1/v1-ab.bin".into(),
            tenant: Some("default".into()),
            job_id: Some(1),
            reason: "round 1 of job 1: older than the last 2 versions".into(),
            bytes: Some(2048),
        };
        let text = render(&report(true, vec![item.clone()]));
        assert!(text.starts_with("KIND"), "{text}");
        assert!(
            text.contains("model blob  job-1/v1-ab.bin  2.0 KiB  round 1"),
            "{text}"
        );
        assert!(text.contains("would delete 1 item(s), 2.0 KiB"), "{text}");
        let text = render(&report(false, vec![item]));
        assert!(
            text.contains("deleted 1 item(s)") && text.contains("audit entries 7"),
            "{text}"
        );
        assert!(render(&report(true, vec![])).contains("nothing to delete"));
    }

    #[test]
    fn the_interval_is_a_duration_or_off() {
        assert_eq!(parse_interval("off").unwrap().0, None);
        assert_eq!(
            parse_interval("12h").unwrap().0,
            Some(Duration::from_secs(43_200))
        );
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("daily").is_err());
    }
}
