//! The evidence pack of a job: `GET /v1/jobs/{id}/evidence[?identities=true]`, what
//! `flotilla evidence-pack` writes as `evidence.json` (and renders as `evidence.md`).
//!
//! Every section is present; one that does not apply says so (`secagg`/`privacy` are `null` for a
//! job without them, `policies`/`approvals` carry `available: false` and a note on a coordinator
//! that does not record them).

use serde::{Deserialize, Serialize};

pub use crate::tls::TlsOffer;

use super::{EvalMetrics, FederatedEvalMetrics};

/// The name and version of this document's format.
pub const EVIDENCE_FORMAT: &str = "flotilla-evidence-v1";

/// Answer of `GET /v1/jobs/{id}/evidence`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidencePack {
    /// [`EVIDENCE_FORMAT`].
    pub format: String,
    /// When the pack was generated, Unix ms.
    pub generated_at_ms: i64,
    /// Who asked for it (the audit log's actor name).
    pub generated_by: String,
    /// The job's record.
    pub job: EvidenceJob,
    /// The job spec as the coordinator stored it, and its SHA-256.
    pub spec: EvidenceSpec,
    /// The policies in force for the job.
    pub policies: EvidencePolicies,
    /// The job's approvals and rejections.
    pub approvals: EvidenceApprovals,
    /// How the coordinator is secured.
    pub security: SecurityConfig,
    /// Secure aggregation, when the job uses it.
    pub secagg: Option<SecAggEvidence>,
    /// Differential-privacy accounting, when the job uses it.
    pub privacy: Option<DpEvidence>,
    /// Every committed round.
    pub rounds: Vec<EvidenceRound>,
    /// Whether `rounds[].participant_ids` were asked for (`?identities=true`).
    pub identities_included: bool,
    /// The audit log: the chain's verification and the job's entries.
    pub audit: AuditEvidence,
    /// The software bill of materials of the running binary (CycloneDX 1.5 JSON, generated from
    /// `Cargo.lock` when it was built).
    pub sbom: serde_json::Value,
    /// How the running binary was built.
    pub build: BuildInfo,
}

/// The job's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidenceJob {
    /// Its id.
    pub job_id: u64,
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its state now.
    pub state: String,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Rounds it runs in all.
    pub rounds_total: u64,
    /// Rounds committed.
    pub rounds_completed: u64,
    /// Submitted, Unix ms.
    pub created_at_ms: i64,
    /// Last changed, Unix ms.
    pub updated_at_ms: i64,
}

/// The job spec and its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidenceSpec {
    /// Hex SHA-256 of `canonical_json`'s bytes.
    pub sha256: String,
    /// How the hash is computed: the spec as stored, serialised as compact JSON with object keys
    /// sorted (`serde_json`'s default maps), UTF-8.
    pub canonicalization: String,
    /// The spec (every default filled in).
    pub spec: serde_json::Value,
}

/// The policies in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidencePolicies {
    /// Whether this coordinator records policies (false: `policies` is empty for that reason).
    pub available: bool,
    /// Why the list is empty or partial, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The policies, each with its hash.
    pub policies: Vec<PolicyEvidence>,
}

/// One policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyEvidence {
    /// Its id or name.
    pub id: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Hex SHA-256 of its text.
    pub sha256: String,
    /// When it was applied, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at_ms: Option<i64>,
    /// Who applied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<String>,
}

/// Approvals and rejections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidenceApprovals {
    /// Whether this coordinator records approvals.
    pub available: bool,
    /// Why the list is empty, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The decisions, oldest first.
    pub decisions: Vec<ApprovalEvidence>,
}

/// One approval or rejection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalEvidence {
    /// `approved` or `rejected`.
    pub decision: String,
    /// Who decided.
    pub by: String,
    /// When, Unix ms.
    pub at_ms: i64,
    /// The reason given (rejections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How the coordinator is secured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecurityConfig {
    /// Whether its listeners use TLS (false: `--insecure`, plain text).
    pub tls_enabled: bool,
    /// What its TLS listeners offer (read from the rustls configuration); `null` without TLS.
    pub tls: Option<TlsOffer>,
    /// How long a client credential issued at enrollment is valid, seconds.
    pub credential_ttl_seconds: u64,
    /// The ways callers authenticate, and whether each is enabled.
    pub authentication: Vec<AuthMode>,
}

/// One way of authenticating.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthMode {
    /// Its name, e.g. `admin_bearer_token`, `client_credential`.
    pub name: String,
    /// Whether it is enabled on this coordinator.
    pub enabled: bool,
    /// What it is, for people.
    pub detail: String,
}

/// Secure-aggregation parameters of the job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecAggEvidence {
    /// The protocol.
    pub protocol: String,
    /// n: the largest roster of a round (`clients_per_round`).
    pub n: usize,
    /// k: the degree of the communication graph (each client's neighbours).
    pub k: usize,
    /// t: the shares needed to reconstruct a secret.
    pub t: usize,
    /// Each coordinate is clipped to `[-clip_range, clip_range]` before masking.
    pub clip_range: f64,
    /// The fewest masked inputs a round commits with (`⌈n × min_report_fraction⌉`).
    pub min_reports: usize,
    /// Dropouts tolerated.
    pub dropouts_tolerated: DropoutTolerance,
}

/// How many dropouts a secure round survives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DropoutTolerance {
    /// Clients of a round that may drop out and the round still commits (`n − min_reports`).
    pub per_round: usize,
    /// Neighbours of one client that may drop out and its secrets still be reconstructed
    /// (`k − t`).
    pub per_neighbourhood: usize,
}

/// Differential-privacy accounting of the job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpEvidence {
    /// The mechanism, for people.
    pub mechanism: String,
    /// `central` or `distributed`.
    pub mode: String,
    /// σ, the noise multiplier.
    pub noise_multiplier: f64,
    /// C, the L2 clip norm (`null`: adaptive clipping).
    pub clip_norm: Option<f64>,
    /// δ.
    pub delta: f64,
    /// The job's budget.
    pub max_epsilon: Option<f64>,
    /// The population cohorts are assumed to be sampled from.
    pub population: Option<u64>,
    /// The accountant (`rdp-poisson-gaussian-v1`: Rényi DP of the Poisson-sampled Gaussian
    /// mechanism, as Google's `dp-accounting`).
    pub accountant: String,
    /// The Rényi orders it minimises over.
    pub orders: Vec<f64>,
    /// Each committed round: its (q, σ) as recorded, the ε the round recorded and the ε the
    /// accountant gives for the rounds up to it.
    pub rounds: Vec<DpRound>,
    /// Runs of rounds with the same (q, σ).
    pub segments: Vec<DpSegment>,
    /// The total over the committed rounds.
    pub total: DpTotal,
    /// A `flotilla dp epsilon` command that reproduces `total.epsilon` (when every round had the
    /// same q and σ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<String>,
}

/// One round's accounting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpRound {
    /// Round number.
    pub round: u64,
    /// Sampling rate recorded with the round.
    pub q: f64,
    /// Noise multiplier recorded with the round.
    pub sigma: f64,
    /// ε of one such round alone, at δ.
    pub round_epsilon: f64,
    /// ε the round recorded as the job's total after it.
    pub epsilon_recorded: f64,
    /// ε the accountant gives for rounds 1..=this one, at δ.
    pub epsilon: f64,
}

/// Rounds with the same (q, σ).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpSegment {
    /// First round.
    pub first_round: u64,
    /// Last round, inclusive.
    pub last_round: u64,
    /// Sampling rate.
    pub q: f64,
    /// Noise multiplier.
    pub sigma: f64,
    /// Number of rounds.
    pub steps: u64,
}

/// The job's total privacy spend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpTotal {
    /// ε at `delta`.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// The Rényi order that attains ε.
    pub order: f64,
    /// Rounds composed.
    pub steps: u64,
}

/// One committed round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidenceRound {
    /// Round number.
    pub round: u64,
    /// The attempt that committed.
    pub attempt: u32,
    /// When, Unix ms.
    pub committed_at_ms: i64,
    /// How many clients' updates were aggregated.
    pub participants: u64,
    /// Their ids (only with `?identities=true`; `0` is a client erased since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_ids: Option<Vec<u64>>,
    /// Hex SHA-256 of the committed model.
    pub model_sha256: Option<String>,
    /// When retention deleted the model's blob, Unix ms (`null`: it is kept).
    pub model_deleted_at_ms: Option<i64>,
    /// Samples behind the aggregate.
    pub num_samples: u64,
    /// Mean training loss.
    pub train_loss: Option<f64>,
    /// Server-side evaluation of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalMetrics>,
    /// Federated evaluation reported by the clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_eval: Option<FederatedEvalMetrics>,
}

/// The audit log as it bears on the job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvidence {
    /// Whether the whole hash chain verified.
    pub chain_verified: bool,
    /// The verification's result, for people (names the first bad entry when it failed).
    pub verification: String,
    /// Entries the verification checked.
    pub entries_checked: u64,
    /// The job's entries (resource `job:ID`), oldest first, as stored.
    pub job_entries: Vec<serde_json::Value>,
    /// Whether `job_entries` was cut at its limit.
    pub job_entries_truncated: bool,
}

/// How the running binary was built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildInfo {
    /// The package version.
    pub version: String,
    /// The git commit.
    pub git_sha: String,
    /// The target triple.
    pub target: String,
    /// The cargo profile.
    pub profile: String,
    /// The compiler.
    pub rustc: String,
}
