//! Bodies of the federated evaluation endpoints: `POST /v1/evaluations`,
//! `GET /v1/evaluations/{id}` and `GET /v1/jobs/{id}/evaluations`.

use serde::{Deserialize, Serialize};

pub use flotilla_registry::{CohortStats, EvalSummary, Fairness};
pub use flotilla_store::{EvalKind, EvalSubject, StoredEvaluation};

/// Default `deadline_secs` of `POST /v1/evaluations`.
pub const DEFAULT_EVAL_DEADLINE_SECS: u64 = 120;

/// Body of `POST /v1/evaluations`: what to evaluate — `model` (`NAME@VERSION`) or `job_id`
/// (with `round`, default the latest committed one) — and on how many clients.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvaluationRequest {
    /// A registered model version, `NAME@VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A job whose committed model is evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    /// The job's round (default: its latest committed round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// Clients to hear from, 1..=10000.
    pub clients: u32,
    /// How long to wait for them, 1..=3600 s (default 120); the evaluation then ends with
    /// whoever reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// Fairness threshold in [0, 1]: cohorts below this accuracy are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Answer only when the evaluation ended (at most its deadline plus a few seconds).
    #[serde(default)]
    pub wait: bool,
}

/// A federated evaluation, running or ended: answer of `POST /v1/evaluations` and
/// `GET /v1/evaluations/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvaluationView {
    /// The evaluation's id (this coordinator process's; the stored result has `stored_id`).
    pub id: u64,
    /// The tenant whose clients evaluate.
    pub tenant: String,
    /// What is evaluated.
    pub subject: EvalSubject,
    /// Why it runs.
    pub kind: EvalKind,
    /// Clients asked for.
    pub clients: u32,
    /// The deadline, seconds from the start.
    pub deadline_secs: u64,
    /// `running`, `done` or `failed`.
    pub status: String,
    /// Running: tasks handed out so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<u32>,
    /// Running: reports received so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<u32>,
    /// Done: the result overall, per cohort, and the fairness view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<EvalSummary>,
    /// Done: the stored evaluation's id (absent if it could not be stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_id: Option<u64>,
    /// Failed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of `GET /v1/jobs/{id}/evaluations`: the stored federated evaluations of the job's
/// rounds, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobEvaluations {
    /// The job.
    pub job_id: u64,
    /// Its evaluations.
    pub evaluations: Vec<StoredEvaluation>,
}
