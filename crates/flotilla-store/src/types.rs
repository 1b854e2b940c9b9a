//! Identifiers and records returned by the store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

    };
}

id_type!(
    /// A job's id, assigned by the database.
    JobId
);
id_type!(
    /// A client's id, assigned by the database when an enrollment token is redeemed. Same
    /// numbering as `flotilla_core::round::ClientId`.
    ClientId
);
id_type!(
    /// An enrollment token's id (not its secret), assigned by the database.
    TokenId
);

/// A job's lifecycle state.
///
/// `pending → running → completed` is the normal path; `completed` is entered only by
/// [`crate::Store::commit_round`] committing the last round. `pending` and `running` may also go to
/// `failed` or `cancelled`. `completed`, `failed` and `cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Created, not started.
    Pending,
    /// Rounds are being run.
    Running,
    /// Every round is committed.
    Completed,
    /// Stopped by an error.
    Failed,
    /// Stopped by an operator.
    Cancelled,
}

impl JobState {
    /// All states.
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state's name as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    /// The states from which [`crate::Store::set_job_state`] may move a job to `self`.
    pub(crate) fn allowed_from(self) -> &'static [JobState] {
        match self {
            JobState::Pending | JobState::Completed => &[],
            JobState::Running => &[JobState::Pending],
            JobState::Failed | JobState::Cancelled => &[JobState::Pending, JobState::Running],
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for [`JobState::from_str`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown job state {0:?} (expected pending, running, completed, failed or cancelled)")]
pub struct ParseJobStateError(pub String);

impl FromStr for JobState {
    type Err = ParseJobStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseJobStateError(s.to_owned()))
    }
}

/// A freshly created enrollment token. The secret is shown once: only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrollmentToken {
    /// The token's id (for listing and auditing; not a secret).
    pub id: TokenId,
    /// The secret a client presents to enroll.
    pub secret: String,
}

/// A client enrolled by [`crate::Store::redeem_enrollment_token`]. The credential is shown once:
/// only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The new client's id.
    pub client_id: ClientId,
    /// The tenant it belongs to (the token's).
    pub tenant: String,
    /// The bearer credential the client authenticates with from now on.
    pub credential: String,
    /// When the credential expires, Unix milliseconds (exclusive); `None`: never.
    pub credential_expires_at_ms: Option<i64>,
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Its id.
    pub client_id: ClientId,
    /// Its tenant.
    pub tenant: String,
    /// Whether its credential was revoked.
    pub revoked: bool,
    /// When it enrolled, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it was last seen ([`crate::Store::touch_client`]), Unix milliseconds.
    pub last_seen_ms: Option<i64>,
    /// When its credential expires, Unix milliseconds (exclusive); `None`: never (credentials
    /// issued without an expiry, including every one issued before expiry existed).
    pub credential_expires_at_ms: Option<i64>,
    /// The name the client gave itself when it enrolled (`flotilla client --name`); `None` for
    /// clients that sent none or enrolled before names were stored.
    #[serde(default)]
    pub name: Option<String>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its tenant.
    pub tenant: String,
    /// Its human-readable name.
    pub name: String,
    /// The job specification, opaque to the store.
    pub spec: serde_json::Value,
    /// Its lifecycle state.
    pub state: JobState,
    /// Rounds to run.
    pub rounds_total: u64,
    /// Rounds committed so far.
    pub rounds_completed: u64,
    /// The current global model version (equals `rounds_completed`).
    pub model_version: u64,
    /// The blob key of the current global model, once a round is committed.
    pub model_blob_key: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
    /// Why the job is in its state, for people: set with `failed` and `cancelled` by
    /// [`crate::Store::set_job_state_with_reason`] (e.g. "cancelled by alice: wrong dataset");
    /// `None` otherwise, and for jobs that ended before reasons were recorded.
    pub state_reason: Option<String>,
}

/// A committed round, as passed to [`crate::Store::commit_round`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedRound {
    /// The job.
    pub job_id: JobId,
    /// The round (1-based).
    pub round: u64,
    /// The attempt of the round that committed (1-based).
    pub attempt: u32,
    /// The global model version this commit produced (equals `round`).
    pub model_version: u64,
    /// The clients whose reports were aggregated.
    pub participants: Vec<ClientId>,
    /// Round metrics, opaque to the store, with the evaluation metrics recorded later by
    /// [`crate::Store::record_round_eval`] (if any) merged in.
    pub metrics: serde_json::Value,
    /// The blob key of the committed model.
    pub model_blob_key: String,
    /// Commit time, Unix milliseconds.
    pub committed_at_ms: i64,
}

/// What a round commit writes, besides the job and round numbers.
#[derive(Debug, Clone, Copy)]
pub struct RoundCommit<'a> {
    /// The attempt of the round that committed (1-based).
    pub attempt: u32,
    /// The clients whose reports were aggregated.
    pub participants: &'a [ClientId],
    /// Round metrics (any JSON).
    pub metrics: &'a serde_json::Value,
    /// Key returned by [`crate::Store::put_model`] for the new global model; the blob must exist.
    pub model_blob_key: &'a str,
    /// Serialised snapshot of the round state machine after the commit (must be valid JSON;
    /// otherwise opaque). Replaces the previous snapshot.
    pub machine_state_json: &'a str,
    /// The privacy cost of the round of a DP job, written to the audit log as `dp.charge` in the
    /// commit's transaction (`None` for a job without differential privacy).
    pub dp_charge: Option<DpCharge>,
}

/// What a committed round of a DP job spent (see [`RoundCommit::dp_charge`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpCharge {
    /// ε this round added to the job's total.
    pub epsilon_round: f64,
    /// The job's ε after this round.
    pub epsilon_total: f64,
    /// The δ both are measured at.
    pub delta: f64,
}

/// A running job as reloaded after a restart by [`crate::Store::load_running_jobs`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredJob {
    /// The job (spec, progress, current model key).
    pub job: JobRecord,
    /// Its last committed round, if any.
    pub last_round: Option<CommittedRound>,
    /// The machine snapshot saved with the last commit, if any.
    pub machine_state_json: Option<String>,
    /// The highest `(round, attempt)` recorded by [`crate::Store::record_issued_attempt`], if any:
    /// tasks of that attempt may have been handed out, so recovery must start above it.
    pub issued_attempt: Option<(u64, u32)>,
    /// The parameter layout recorded when the job was created
    /// ([`crate::Store::create_job_with_layout`]); `None` for jobs created without one.
    pub layout: Option<flotilla_core::ParamLayout>,
}
