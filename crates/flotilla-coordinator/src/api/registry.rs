//! Bodies of the model registry's endpoints (`/v1/models…`): registering a job's model,
//! listing and showing models and versions with their lineage, gate and evaluations, promoting,
//! rolling back.

use flotilla_registry::{EvalSummary, Gate, GateReport, Lineage, Stage};
use serde::{Deserialize, Serialize};

use super::TensorInfo;

/// Body of `POST /v1/models`: register a job's committed model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The job that trained it.
    pub job_id: u64,
    /// Its committed round (default: the job's last committed round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// The model's name (created on its first version).
    pub name: String,
}

/// A canary rollout in progress.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryInfo {
    /// The version served to the canary share.
    pub version: u64,
    /// Share of the tenant's clients, 1–99 %.
    pub percent: u8,
}

/// A registered model (`GET /v1/models` lists these).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisteredModelInfo {
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its release gate, if one was set.
    pub gate: Option<Gate>,
    /// The production version.
    pub production: Option<u64>,
    /// A canary rollout in progress.
    pub canary: Option<CanaryInfo>,
    /// The highest version number.
    pub latest_version: u64,
    /// Who registered its first version.
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: i64,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
}

/// A registered version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelVersionInfo {
    /// The model's name.
    pub name: String,
    /// Numbered from 1 per name.
    pub version: u64,
    /// Where it stands.
    pub stage: Stage,
    /// The job that trained it.
    pub job_id: u64,
    /// Its committed round.
    pub round: u64,
    /// Hex SHA-256 of its parameters (little-endian f32 in layout order).
    pub model_sha256: String,
    /// Number of parameters.
    pub num_params: u64,
    /// Tensor names and shapes, in parameter order.
    pub tensors: Vec<TensorInfo>,
    /// Where it came from.
    pub lineage: Lineage,
    /// The gate's verdict at its last gated promotion (or refusal).
    pub gate_report: Option<GateReport>,
    /// Who registered it.
    pub registered_by: String,
    /// When, Unix ms.
    pub created_at_ms: i64,
    /// When its stage last changed, Unix ms.
    pub stage_changed_at_ms: i64,
}

/// Answer of `GET /v1/models/{name}`: the model and its versions, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelDetail {
    /// The model.
    #[serde(flatten)]
    pub model: RegisteredModelInfo,
    /// Its versions, oldest first.
    pub versions: Vec<ModelVersionInfo>,
}

/// A stored federated evaluation of a version (or of its job round).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionEvaluation {
    /// Its id.
    pub id: u64,
    /// What it evaluated: `NAME@V` or `job J round R`.
    pub subject: String,
    /// Why it ran: `on_demand`, `scheduled`, `canary`, `job`.
    pub kind: String,
    /// Clients asked for.
    pub requested_clients: u64,
    /// The result, overall and per cohort.
    pub summary: EvalSummary,
    /// Started, Unix ms.
    pub started_at_ms: i64,
    /// Finished, Unix ms.
    pub finished_at_ms: i64,
}

/// Answer of `GET /v1/models/{name}/versions/{version}`: the version with its latest
/// evaluations (newest first, at most 20; those of its job round when the version has none).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionDetail {
    /// The version.
    #[serde(flatten)]
    pub version: ModelVersionInfo,
    /// Its model's production version, for context.
    pub production: Option<u64>,
    /// Its latest evaluations, newest first.
    pub evaluations: Vec<VersionEvaluation>,
}

/// Body of `POST /v1/models/{name}/versions/{version}/promote`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The stage to move to (default production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Start a canary instead: serve the version to this share of clients, 1–99 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<u8>,
}

/// Answer of a promotion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromoteResult {
    /// The version after the change.
    pub version: ModelVersionInfo,
    /// The canary share, when a canary was started.
    pub canary_percent: Option<u8>,
    /// The gate's verdict (gated stages and canaries).
    pub gate_report: Option<GateReport>,
}

/// Answer `409` of a promotion the release gate refused: `error` names the first failing rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateRefusal {
    /// `gate refused NAME@V: RULE: DETAIL`.
    pub error: String,
    /// Every rule's verdict (also stored with the version).
    pub gate_report: GateReport,
}

/// Body of `POST /v1/models/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Why (kept in the audit log; at most 512 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer of a rollback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolledBack {
    /// The model.
    pub name: String,
    /// The version that was served (production, or the canary that was ended).
    pub from: u64,
    /// The version served now.
    pub to: u64,
    /// Whether it ended a canary (production unchanged) rather than reverting production.
    pub ended_canary: bool,
}
