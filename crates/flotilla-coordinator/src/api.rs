//! Typed bodies of the admin HTTP/JSON API (requests and answers) and the per-round metrics the
//! coordinator stores with every commit.
//!
//! The coordinator serializes these, and the CLI and the test kit deserialize them, so both ends
//! agree on one definition. The wire format is the API's contract (the crate README and scripts
//! read it): an optional field that is skipped when empty is absent from the JSON, an `Option`
//! without `skip_serializing_if` is written as `null`. Answers accept unknown fields, so a client
//! keeps working against a coordinator that adds some; the request bodies refuse them, so a typo
//! in a request is an error rather than a silently ignored option.

use serde::{Deserialize, Serialize};

use crate::spec::ModelSection;

mod audit;
pub mod evaluations;
pub mod evidence;
mod metrics;
mod policy;
mod principals;
mod registry;
pub mod retention;

pub use audit::{AuditCheckpointView, AuditEntryView, AuditPage, AuditProblem, AuditVerification};
pub use metrics::{EvalMetrics, FederatedEvalMetrics, RoundMetrics, RoundPrivacy};
pub use policy::{PolicyVersionSummary, PolicyVersionText};
pub use principals::{
    ApprovalInfo, JobDecided, PrincipalCreated, PrincipalInfo, PrincipalRequest, RejectRequest,
    RoleBinding, TenantSettingsInfo, TenantSettingsRequest,
};
pub use registry::{
    CanaryInfo, GateRefusal, ModelDetail, ModelVersionInfo, PromoteRequest, PromoteResult,
    RegisterRequest, RegisteredModelInfo, RollbackRequest, RolledBack, VersionDetail,
    VersionEvaluation,
};

/// Every error answer: `{"error": "<one line>"}`, with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong, on one line.
    pub error: String,
}

/// Body of `POST /v1/enrollment-tokens` (an empty body takes every default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Tenant the enrolled clients belong to (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How many clients may enroll with the token (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    /// How long the token stays valid, 1..=315360000 s (default one day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
}

/// Answer of `POST /v1/enrollment-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenIssued {
    /// The secret a client presents to enroll (shown once).
    pub token: String,
    /// The token's id (not a secret).
    pub token_id: u64,
    /// Tenant the enrolled clients belong to.
    pub tenant: String,
    /// How many clients may enroll with it.
    pub uses: u32,
    /// When it stops being valid, Unix ms.
    pub expires_at_ms: i64,
}

/// Answer of `POST /v1/jobs` (the body of the request is the job's TOML).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSubmitted {
    /// The new job's id.
    pub job_id: u64,
}

/// A job as `GET /v1/jobs` lists it, and the head of `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSummary {
    /// The job's id.
    pub job_id: u64,
    /// Its name, from the spec.
    pub name: String,
    /// Tenant it runs for.
    pub tenant: String,
    /// `pending`, `pending_approval` (waiting for an approver), `running`, `completed`, `failed`,
    /// `cancelled` or `rejected` (cancelled by an approver: it never ran).
    pub state: String,
    /// Rounds committed so far.
    pub rounds_completed: u64,
    /// Rounds the job runs in all.
    pub rounds_total: u64,
    /// Version of the latest committed global model (equals the last committed round).
    pub model_version: u64,
    /// When it was submitted, Unix ms.
    pub created_at_ms: i64,
    /// When its record last changed, Unix ms.
    pub updated_at_ms: i64,
    /// Why a failed or cancelled job ended, or why a running job is not simply making progress
    /// (waiting for clients, retrying, halted); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The storage fault that halted a running job (it resumes by itself once the store is back);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
}

/// Answer of `GET /v1/jobs/{id}`: the job's summary, every committed round, its privacy budget
/// (under `[privacy]`) and, while it runs here, its current round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStatus {
    /// The fields a job list shows, at the top level of the object.
    #[serde(flatten)]
    pub job: JobSummary,
    /// The committed rounds, oldest first.
    #[serde(default)]
    pub history: Vec<RoundRecord>,
    /// Under `[privacy]`: ε spent by the released (committed) rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_spent: Option<f64>,
    /// Under `[privacy]`: the δ ε is measured at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Under `[privacy]`: why the budget ended the job, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// Under `[privacy]`: the job's and its tenant's budget and spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyStatus>,
    /// While the job runs on this coordinator: its round in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentRound>,
    /// While the job runs on this coordinator: its most recently abandoned attempts (at most 32,
    /// oldest first; since this process started), with why. Committed rounds show how many
    /// attempts each took in `history[].attempt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abandoned: Vec<AbandonedAttempt>,
    /// The job's spec as the coordinator parsed it (every default filled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// Who submitted the job and, in a tenant that requires approval, who approved or rejected
    /// it and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalInfo>,
}

/// An abandoned round attempt in a job's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AbandonedAttempt {
    /// The round.
    pub round: u64,
    /// The attempt that was abandoned.
    pub attempt: u32,
    /// Why, on one line (e.g. "round 3 attempt 2: 4 of 10 reports by the deadline (needed 8)").
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// One committed round in a job's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: u64,
    /// The attempt that committed.
    pub attempt: u32,
    /// Clients whose updates were aggregated.
    pub participants: Vec<u64>,
    /// What the round recorded (training, privacy, staleness, evaluation).
    pub metrics: RoundMetrics,
    /// When it was committed, Unix ms.
    pub committed_at_ms: i64,
    /// Under `[privacy]`: the job's ε after this round (a copy of `metrics.privacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_spent: Option<f64>,
    /// Under `[privacy]`: the δ of `epsilon_spent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
}

/// The `privacy` part of a DP job's status. Every field is present; the ones that do not apply
/// are `null`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrivacyStatus {
    /// ε spent by the released (committed) rounds.
    pub epsilon_spent: f64,
    /// The δ every ε here is measured at (the job's).
    pub delta: f64,
    /// The job's budget (`[privacy] max_epsilon`).
    pub max_epsilon: Option<f64>,
    /// σ, the noise multiplier.
    pub noise_multiplier: f64,
    /// The population cohorts are assumed to be sampled from (`[privacy] population`).
    pub population: Option<u64>,
    /// ε charged to the job, including its admitted round in flight (`null` when the job is not
    /// in the ledger of this process).
    pub epsilon_charged: Option<f64>,
    /// ε spent by all the tenant's DP jobs (with a server tenant budget only).
    pub tenant_epsilon_spent: Option<f64>,
    /// The server's budget per tenant.
    pub tenant_max_epsilon: Option<f64>,
    /// The δ of the tenant budget.
    pub tenant_delta: Option<f64>,
    /// Why the budget ended the job, if it did.
    pub stopped_reason: Option<String>,
}

/// The `current` part of a running job's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurrentRound {
    /// The round in flight.
    pub round: u64,
    /// Its attempt, from 1.
    pub attempt: u32,
    /// The storage fault that halted the job (`null` when it is not halted).
    pub halted: Option<String>,
    /// `waiting`, `selecting`, `training`, `secagg`, `retrying`, `halted`, `finished` or
    /// `failed`.
    pub phase: String,
    /// Clients checked in and free for work.
    pub available_clients: u64,
    /// Clients the round needs (its minimum, or FedBuff's buffer size).
    pub needed_clients: u64,
    /// Deadline of the stage collecting reports, Unix ms; absent when none runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// Optional body of `POST /v1/jobs/{id}/cancel`: who cancels and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Who cancels (recorded with the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why (recorded with the job and shown in its status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer of `POST /v1/jobs/{id}/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobCancelled {
    /// The job.
    pub job_id: u64,
    /// Always `cancelled`.
    pub state: String,
    /// The reason recorded with it.
    pub reason: String,
}

/// Answer of `POST /v1/clients/{id}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientRevoked {
    /// The client.
    pub client_id: u64,
    /// Always `true`.
    pub revoked: bool,
}

/// Answer of `GET /v1/jobs/{id}/model/info[?round=R]`: a committed model described.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// The job.
    pub job_id: u64,
    /// Its name.
    pub name: String,
    /// Its state now.
    pub state: String,
    /// The round whose model this is.
    pub round: u64,
    /// The attempt that committed it.
    pub attempt: u32,
    /// The model's version (equals `round`).
    pub model_version: u64,
    /// When the round was committed, Unix ms.
    pub committed_at_ms: i64,
    /// Rounds the job has committed so far.
    pub rounds_completed: u64,
    /// Hex SHA-256 of the model's bytes (as `GET …/model` sends them).
    pub model_sha256: String,
    /// Element type, `F32`.
    pub dtype: String,
    /// Byte order of the elements, `little`.
    pub byte_order: String,
    /// Number of parameters.
    pub num_params: u64,
    /// Size of the model's bytes.
    pub size_bytes: u64,
    /// Hex fingerprint of the layout (tensor names and shapes).
    pub layout_fingerprint: String,
    /// The tensors, in the order of the bytes.
    pub tensors: Vec<TensorInfo>,
    /// The job's model section, when its stored spec is readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSection>,
}

/// One tensor of a model's layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Index of its first element among all parameters.
    pub offset: usize,
    /// Number of its elements.
    pub numel: usize,
}

#[cfg(test)]
mod tests;
