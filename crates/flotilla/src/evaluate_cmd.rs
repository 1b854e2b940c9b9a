//! `flotilla job evaluate ID [--round R] --clients N` (and, through [`run`], `flotilla model
//! evaluate NAME@V`): a federated evaluation — the model goes to N clients of its tenant, who
//! evaluate it on their local data — started with `POST /v1/evaluations` and followed with
//! `GET /v1/evaluations/{id}` until it ends. Prints the result overall, per cohort, and the
//! fairness view (worst cohort, spread, cohorts below `--threshold`).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use flotilla_coordinator::api::evaluations::{
    EvalSubject, EvaluationRequest, EvaluationView, JobEvaluations,
};

use super::{Admin, AdminArgs, body, typed};
use crate::admin_view::{Table, clean, thousands};

/// How a federated evaluation is run and shown (what is evaluated is given by the command).
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    /// Clients to hear from (1..=10000); a few more are asked, for the ones that drop out
    #[arg(long, value_name = "N")]
    pub(crate) clients: u32,
    /// How long to wait for them, e.g. 90s, 2m (at most 1h); the evaluation then ends with
    /// whoever reported
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub(crate) deadline: Duration,
    /// Fairness threshold: list the cohorts whose accuracy is below it (0..=1, e.g. 0.9)
    #[arg(long, value_name = "F")]
    pub(crate) threshold: Option<f64>,
    /// Print the evaluation's id and return at once (follow it with --json GET
    /// /v1/evaluations/{id})
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Print the coordinator's answer as JSON (for scripts)
    #[arg(long)]
    pub(crate) json: bool,
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    /// A registered model version, `NAME@VERSION` (for `flotilla model evaluate`, which the
    /// registry's commands wire).
    Model(String),
    /// A job's committed model: `round`, or its latest committed round.
    Job {
        /// The job.
        id: u64,
        /// The round.
        round: Option<u64>,
    },
}

/// Starts the evaluation of `subject`, waits for it (unless `--no-wait`) and prints it.
pub(crate) fn run(args: &EvaluateArgs, subject: Subject) -> Result<()> {
    if !(1..=3600).contains(&args.deadline.as_secs()) {
        bail!(
            "--deadline must be between 1s and 1h, got {}",
            humantime::format_duration(args.deadline)
        );
    }
    let mut req = EvaluationRequest {
        clients: args.clients,
        deadline_secs: Some(args.deadline.as_secs()),
        threshold: args.threshold,
        ..Default::default()
    };
    match subject {
        Subject::Model(m) => req.model = Some(m),
        Subject::Job { id, round } => {
            req.job_id = Some(id);
            req.round = round;
        }
    }
    let admin = Admin::new(&args.admin)?;
    let v = admin.call(reqwest::Method::POST, "/v1/evaluations", body(&req)?)?;
    let mut view: EvaluationView = typed(v.clone(), "evaluation")?;
    if args.no_wait {
        if args.json {
            println!("{v}");
        } else {
            println!("{}", view.id);
        }
        return Ok(());
    }
    if !args.json {
        eprintln!(
            "evaluation {} of {} on {} client(s), at most {}…",
            view.id,
            subject_text(&view.subject),
            view.clients,
            humantime::format_duration(args.deadline)
        );
    }
    // Polled rather than held open: the answer may take the whole deadline.
    let give_up = Instant::now() + args.deadline + Duration::from_secs(30);
    let mut last = v;
    while view.status == "running" {
        if Instant::now() > give_up {
            bail!(
                "evaluation {} did not end within its deadline (still running; see GET /v1/evaluations/{})",
                view.id,
                view.id
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        last = admin.call(
            reqwest::Method::GET,
            &format!("/v1/evaluations/{}", view.id),
            None,
        )?;
        view = typed(last.clone(), "evaluation")?;
    }
    if args.json {
        println!("{last}");
    } else {
        print!("{}", render(&view));
    }
    if view.status == "failed" {
        bail!(
            "evaluation {} failed: {}",
            view.id,
            clean(view.error.as_deref().unwrap_or("no reason given"))
        );
    }
    Ok(())
}

fn subject_text(s: &EvalSubject) -> String {
    match s {
        EvalSubject::Version { name, version } => format!("{}@{version}", clean(name)),
        EvalSubject::Round { job_id, round } => format!("job {job_id} round {round}"),
    }
}

fn pct(a: Option<f64>) -> String {
    a.map_or("-".to_owned(), |a| format!("{:.2}%", a * 100.0))
}

/// The human view of an ended evaluation.
pub(crate) fn render(v: &EvaluationView) -> String {
    let mut out = format!(
        "evaluation {} of {}: {}\n",
        v.id,
        subject_text(&v.subject),
        v.status
    );
    let Some(s) = &v.summary else {
        if let Some(e) = &v.error {
            out.push_str(&format!("  {}\n", clean(e)));
        }
        return out;
    };
    let o = &s.overall;
    out.push_str(&format!(
        "overall: accuracy {}, loss {:.4}, {} of {} client(s), {} samples\n",
        pct(o.accuracy),
        o.loss,
        o.clients,
        v.clients,
        thousands(o.samples)
    ));
    if let Some(id) = v.stored_id {
        out.push_str(&format!("stored as evaluation {id}\n"));
    }
    if s.cohorts.is_empty() {
        out.push_str(
            "no cohorts: the clients announced no labels (flotilla client --cohort KEY=VALUE)\n",
        );
        return out;
    }
    let mut t = Table::new(&[
        ("COHORT", false),
        ("CLIENTS", true),
        ("SAMPLES", true),
        ("LOSS", true),
        ("ACCURACY", true),
    ]);
    for (name, c) in &s.cohorts {
        t.row(vec![
            clean(name),
            c.clients.to_string(),
            thousands(c.samples),
            format!("{:.4}", c.loss),
            pct(c.accuracy),
        ]);
    }
    out.push_str(&t.render());
    let f = &s.fairness;
    if let Some((worst, acc)) = &f.worst {
        out.push_str(&format!(
            "fairness: worst cohort {} ({}), spread {:.2} points",
            clean(worst),
            pct(Some(*acc)),
            f.spread.unwrap_or(0.0) * 100.0
        ));
        if let Some(th) = f.threshold {
            let below = if f.below.is_empty() {
                "none".to_owned()
            } else {
                f.below
                    .iter()
                    .map(|c| clean(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!("; below {}: {below}", pct(Some(th))));
        }
        out.push('\n');
    }
    out
}

/// The federated evaluations of a job's rounds for `flotilla job status`: one line each (overall
/// accuracy, clients, worst cohort); empty when there are none.
pub(crate) fn job_lines(j: &JobEvaluations) -> String {
    if j.evaluations.is_empty() {
        return String::new();
    }
    let mut out = "federated evaluation:\n".to_owned();
    for e in &j.evaluations {
        let EvalSubject::Round { round, .. } = &e.subject else {
            continue;
        };
        let o = &e.summary.overall;
        out.push_str(&format!(
            "  round {round}: accuracy {}, loss {:.4}, {} of {} client(s)",
            pct(o.accuracy),
            o.loss,
            o.clients,
            e.requested_clients
        ));
        if let Some((worst, acc)) = &e.summary.fairness.worst {
            out.push_str(&format!(
                ", worst cohort {} {}",
                clean(worst),
                pct(Some(*acc))
            ));
        }
        out.push('\n');
    }
    out
}

/// `GET /v1/jobs/{id}/evaluations` as [`job_lines`]; empty if the coordinator has none (or
/// predates them).
pub(crate) fn job_status_lines(admin: &Admin, id: &str) -> String {
    admin
        .call(
            reqwest::Method::GET,
            &format!("/v1/jobs/{}/evaluations", id.trim()),
            None,
        )
        .ok()
        .and_then(|v| serde_json::from_value::<JobEvaluations>(v).ok())
        .map(|j| job_lines(&j))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_coordinator::api::evaluations::{EvalKind, StoredEvaluation};
    use flotilla_store::JobId;

    fn summary() -> flotilla_coordinator::api::evaluations::EvalSummary {
        let rep = |acc: f64, n: u64, region: &str| flotilla_registry::ClientEvalReport {
            loss: 1.0 - acc,
            accuracy: Some(acc),
            samples: n,
            cohorts: [("region".to_owned(), region.to_owned())].into(),
        };
        flotilla_registry::summarize(
            &[rep(0.9, 100, "eu"), rep(0.8, 100, "eu"), rep(0.7, 50, "us")],
            Some(0.8),
        )
    }

    #[test]
    fn the_human_view_shows_cohorts_and_fairness() {
        let v = EvaluationView {
            id: 3,
            tenant: "default".into(),
            subject: EvalSubject::Round {
                job_id: JobId(7),
                round: 2,
            },
            kind: EvalKind::OnDemand,
            clients: 3,
            deadline_secs: 120,
            status: "done".into(),
            asked: None,
            reported: None,
            summary: Some(summary()),
            stored_id: Some(11),
            error: None,
        };
        let text = render(&v);
        assert!(
            text.starts_with("evaluation 3 of job 7 round 2: done\n"),
            "{text}"
        );
        assert!(text.contains("overall: accuracy 82.00%"), "{text}");
        assert!(text.contains("3 of 3 client(s), 250 samples"), "{text}");
        assert!(text.contains("region=eu"), "{text}");
        assert!(text.contains("85.00%"), "{text}");
        assert!(
            text.contains("fairness: worst cohort region=us (70.00%), spread 15.00 points; below 80.00%: region=us"),
            "{text}"
        );
        let failed = EvaluationView {
            status: "failed".into(),
            summary: None,
            error: Some("no client reported within 120 s (0 asked)".into()),
            ..v
        };
        assert!(render(&failed).contains("no client reported"));
    }

    #[test]
    fn job_status_lines_name_round_and_worst_cohort() {
        let j = JobEvaluations {
            job_id: 7,
            evaluations: vec![StoredEvaluation {
                id: 1,
                subject: EvalSubject::Round {
                    job_id: JobId(7),
                    round: 2,
                },
                kind: EvalKind::Job,
                requested_clients: 4,
                summary: summary(),
                started_at_ms: 0,
                finished_at_ms: 1,
            }],
        };
        let text = job_lines(&j);
        assert!(
            text.contains("round 2: accuracy 82.00%, loss 0.1800, 3 of 4 client(s), worst cohort region=us 70.00%"),
            "{text}"
        );
        assert_eq!(
            job_lines(&JobEvaluations {
                job_id: 7,
                evaluations: vec![]
            }),
            ""
        );
    }
}
