//! `flotilla job wait ID`: follow a job until it ends, for people (a line per change) and scripts
//! (the exit code says whether it completed).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Admin, typed};
use crate::admin_view::{self, Clock, JobStatus};

/// States after which a job never changes again.
const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "rejected"];

/// Polls the job every `interval` until it is completed, failed or cancelled, printing one line on
/// stderr whenever its progress or its reason changes; then prints its status (human, or JSON with
/// `json`). Fails unless the job completed, or when `timeout` passes first.
pub(super) fn wait(
    admin: &Admin,
    id: &str,
    timeout: Option<Duration>,
    interval: Duration,
    json: bool,
) -> Result<()> {
    let start = Instant::now();
    let mut last_line = String::new();
    loop {
        let v: Value = admin.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)?;
        let s: JobStatus = typed(v.clone(), "job status")?;
        let line = progress_line(&s);
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if TERMINAL.contains(&s.job.state.as_str()) {
            if json {
                println!("{v}");
            } else {
                print!("{}", admin_view::job_status(&s, &Clock::local()));
            }
            if s.job.state != "completed" {
                let why = s
                    .job
                    .reason
                    .as_deref()
                    .or(s.stopped_reason.as_deref())
                    .unwrap_or("no reason given");
                bail!("job {id} {}: {}", s.job.state, admin_view::clean(why));
            }
            return Ok(());
        }
        if let Some(t) = timeout
            && start.elapsed() >= t
        {
            bail!(
                "job {id} is still {} after {}; `flotilla job status {id}` shows why, or wait longer with --timeout",
                s.job.state,
                humantime::format_duration(t)
            );
        }
        std::thread::sleep(interval);
    }
}

/// `job 3 running: round 7/20, accuracy 84.1%` or, when it is not progressing, the reason.
fn progress_line(s: &JobStatus) -> String {
    let j = &s.job;
    let mut line = format!(
        "job {} {}: round {}/{}",
        j.job_id, j.state, j.rounds_completed, j.rounds_total
    );
    if let Some(acc) = s
        .history
        .last()
        .and_then(|r| r.metrics.eval.as_ref())
        .and_then(|e| e.eval_accuracy)
    {
        line.push_str(&format!(", accuracy {:.1}%", acc * 100.0));
    }
    if let Some(why) = &s.job.reason {
        line.push_str(&format!(" ({})", admin_view::clean(why)));
    }
    line
}
