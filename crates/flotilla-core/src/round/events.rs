//! What flows in and out of the machine: the [`Event`]s a driver feeds, the [`Action`]s it carries
//! out, and the values they carry (tasks, timers, reasons for a rejection, commits).

use serde::{Deserialize, Serialize};

use crate::error::AggregateError;
use crate::strategy::Quarantined;

use super::{AbandonCause, ClientEval, EvalError, FederatedEval, StageKind};

/// Identity of a client within a job, assigned by whoever authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client-{}", self.0)
    }
}

/// What a selected client is asked to do. The driver adds the global parameters and the training
/// hyper-parameters of the job when it sends this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Round number, from 1.
    pub round: u64,
    /// Attempt of this round, from 1 (a round abandoned below its minimum is retried).
    pub attempt: u32,
    /// Index of the stage within the round.
    pub stage: u32,
    /// What the stage is.
    pub kind: StageKind,
    /// Version of the global model the client must start from (= rounds committed so far).
    pub model_version: u64,
    /// Seed for the client's local randomness (shuffling), derived from the job seed.
    pub seed: u64,
}

/// Timers the machine asks its driver to fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// The selection window of a round attempt has closed.
    Selection {
        /// Round number.
        round: u64,
        /// Attempt number.
        attempt: u32,
    },
    /// A stage's deadline has passed.
    Deadline {
        /// Round number.
        round: u64,
        /// Attempt number.
        attempt: u32,
        /// Stage index.
        stage: u32,
    },
}

/// Metrics a client reports with its update.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ReportMetrics {
    /// Mean training loss over the client's last local epoch.
    pub train_loss: f64,
    /// Federated evaluation: the client's evaluation of the global model it started from, on its
    /// own held-out data, if it made one. Validated with the report ([`ClientEval::validate`]; an
    /// invalid one refuses the report, [`RejectReason::BadEval`]); never changes the aggregate.
    #[serde(default)]
    pub eval: Option<ClientEval>,
}

/// Something that happened, as the driver observed it. Nothing in an event is trusted.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A client says it is available for work.
    CheckIn {
        /// Who.
        client: ClientId,
    },
    /// A client reports the result of a `Train` stage.
    Report {
        /// Who.
        client: ClientId,
        /// The round it claims to report for.
        round: u64,
        /// The attempt it claims to report for.
        attempt: u32,
        /// The stage it claims to report for.
        stage: u32,
        /// Its sample count, the aggregation weight.
        num_samples: u64,
        /// Its new parameters, in the job's layout.
        update: &'a [f32],
        /// Its training metrics.
        metrics: ReportMetrics,
    },
    /// A client's message for a secure-aggregation stage, passed through unread. The machine checks
    /// it (round, attempt, stage, cohort, duplicate, full stage; at the training stage `MaskedInput`
    /// the sample count), then hands it to its [`SecureAggregator`](super::SecureAggregator), and
    /// records the report only if both accept it.
    StageMessage {
        /// Who (as authenticated by the driver).
        client: ClientId,
        /// The round it claims to report for.
        round: u64,
        /// The attempt it claims to report for.
        attempt: u32,
        /// The stage it claims to report for.
        stage: u32,
        /// What it sent: the masked vector at the `MaskedInput` stage, an encoded message otherwise.
        input: super::StageInput<'a>,
        /// Its sample count; checked and recorded only at a training stage (`MaskedInput`).
        num_samples: u64,
        /// Its training metrics; recorded only at a training stage.
        metrics: ReportMetrics,
    },
    /// The driver knows the client is gone (connection lost, process dead).
    ClientLost {
        /// Who.
        client: ClientId,
    },
    /// A client says it cannot carry out the task it holds (its training failed, its data does not
    /// fit the model…). Accepted ([`Action::Accepted`]) only for the task the client holds now: the
    /// current round, attempt and stage, in the cohort, not yet reported or failed (FedBuff: its
    /// outstanding task); otherwise refused ([`Action::Reject`]), changing nothing. Once accepted the
    /// client counts as dropped out of the stage, so the stage closes early when no one else is
    /// pending, and it is not handed the same task again in this attempt.
    TaskFailed {
        /// Who.
        client: ClientId,
        /// The round of its task.
        round: u64,
        /// The attempt of its task.
        attempt: u32,
        /// The stage of its task.
        stage: u32,
    },
    /// A timer set by [`Action::SetTimer`] fired.
    TimerFired(Timer),
}

/// Why a report was refused. The driver maps each to a status code; none of them changes state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    /// The job is not running a round that takes reports.
    #[error("no round is accepting reports (job is {0})")]
    NotAccepting(&'static str),
    /// The report names another round or attempt than the current one.
    #[error(
        "report is for round {got_round} attempt {got_attempt}, current is round {round} attempt {attempt}"
    )]
    WrongRound {
        /// Current round.
        round: u64,
        /// Current attempt.
        attempt: u32,
        /// Round in the report.
        got_round: u64,
        /// Attempt in the report.
        got_attempt: u32,
    },
    /// The report names another stage than the current one.
    #[error("report is for stage {got}, current stage is {expected}")]
    WrongStage {
        /// Current stage.
        expected: u32,
        /// Stage in the report.
        got: u32,
    },
    /// The client is not in this stage's cohort.
    #[error("client was not selected for this round")]
    NotSelected,
    /// The client already reported for this stage.
    #[error("duplicate report for this stage")]
    Duplicate,
    /// The round already has all the reports it needs.
    #[error("round is full; report arrived too late")]
    RoundFull,
    /// The claimed sample count is zero or above the policy's maximum.
    #[error("num_samples {got} must be in 1..={max}")]
    BadSampleCount {
        /// Claimed count.
        got: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The update itself is malformed.
    #[error("invalid update: {0}")]
    BadUpdate(AggregateError),
    /// The report's federated evaluation ([`ReportMetrics::eval`]) is unusable: a non-finite loss,
    /// a sample count outside `1..=2^53` or an accuracy outside `[0, 1]`.
    #[error("invalid federated evaluation: {0}")]
    BadEval(EvalError),
    /// FedBuff: the report's base model is more versions behind the global model than allowed.
    #[error(
        "update is {staleness} versions stale (based on version {base}); at most {max} are accepted"
    )]
    TooStale {
        /// Versions committed since the task's base model.
        staleness: u64,
        /// The task's base model version.
        base: u64,
        /// `strategy.max_staleness`.
        max: u64,
    },
    /// FedBuff: the client has no outstanding task (never given one, already reported, or its task
    /// was dropped at its deadline or replaced).
    #[error("client has no outstanding task")]
    NoTask,
    /// A `Report` (with parameters) for a secure-aggregation stage, a `StageMessage` for a `Train`
    /// stage, or a stage message of the wrong form (a masked vector at a stage that takes an encoded
    /// message, or the reverse).
    #[error("stage {stage} ({kind}) takes no such report")]
    WrongStageKind {
        /// The stage index.
        stage: u32,
        /// Its kind's name.
        kind: &'static str,
    },
    /// The job's secure aggregator refused the stage message (or none is installed).
    #[error(transparent)]
    SecureAggregation(super::StageRefusal),
}

/// What a committed round produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// Round number, from 1.
    pub round: u64,
    /// The attempt that committed.
    pub attempt: u32,
    /// New global model version (equals `round`).
    pub model_version: u64,
    /// Clients whose updates were aggregated, sorted.
    pub participants: Vec<ClientId>,
    /// Total samples behind the aggregate.
    pub num_samples: u64,
    /// Sample-weighted mean of the participants' training loss.
    pub train_loss: f64,
    /// Reporters the strategy left out of the aggregate (anomaly filter, Krum), with the reason.
    #[serde(default)]
    pub quarantined: Vec<Quarantined>,
    /// Under `[privacy]`: the clip norm and noise of this round.
    #[serde(default)]
    pub dp: Option<crate::dp::DpRoundInfo>,
    /// FedBuff: the staleness τ of each aggregated update, in acceptance order (empty for rounds).
    #[serde(default)]
    pub staleness: Vec<u64>,
    /// Federated evaluation: over the aggregated reports that carried an evaluation
    /// ([`ReportMetrics::eval`]), the sample-weighted means of what the clients measured on the
    /// model they started from — version `model_version − 1` in a round (FedBuff: each update's
    /// base version, up to `max_staleness` older); `None` if no such report carried one.
    /// Reports a robust strategy left out of the aggregate are left out here too.
    #[serde(default)]
    pub federated_eval: Option<FederatedEval>,
}

/// What the driver must do. Actions are returned in the order they must be carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `task` (with the current global model) to `client`.
    Configure {
        /// Who.
        client: ClientId,
        /// What to do.
        task: Task,
    },
    /// Tell `client` to come back after `after_ms` (pace steering).
    RetryAfter {
        /// Who.
        client: ClientId,
        /// Delay, jittered.
        after_ms: u64,
    },
    /// The report from `client` was validated and folded into the aggregate.
    Accepted {
        /// Who.
        client: ClientId,
    },
    /// The report from `client` was refused; state is unchanged.
    Reject {
        /// Who.
        client: ClientId,
        /// Why.
        reason: RejectReason,
    },
    /// Fire `timer` when the driver's clock reaches `at_ms`.
    SetTimer {
        /// Which.
        timer: Timer,
        /// When.
        at_ms: u64,
    },
    /// A round committed; [`RoundMachine::global`](crate::round::RoundMachine::global) now holds the new model.
    Commit(CommitInfo),
    /// A round attempt ended without a commit and will be retried (unless the job failed).
    RoundAbandoned {
        /// Round number.
        round: u64,
        /// The attempt that was abandoned.
        attempt: u32,
        /// Reports received.
        reports: usize,
        /// Reports needed.
        needed: usize,
        /// Why, in words (too few reports, every report quarantined, secure aggregation failed…).
        reason: String,
        /// Why, for drivers that explain it in their own words.
        cause: AbandonCause,
    },
    /// Every round committed.
    JobFinished,
    /// The job cannot go on.
    JobFailed {
        /// Why.
        reason: String,
    },
}
