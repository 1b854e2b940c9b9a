//! The round state machine of one training job: selection → configuration → reporting → aggregation →
//! commit, repeated until the job has committed all its rounds.
//!
//! It is sans-IO: the driver (the in-process simulator, or the networked coordinator) feeds it
//! [`Event`]s stamped with the current time in milliseconds and carries out the [`Action`]s it returns.
//! It never reads a clock, never sleeps, and owns its random number generators, seeded from the job
//! seed, so one seed and one event sequence always give the same run.
//!
//! A round is a sequence of client-visible *stages* ([`StageKind`]). Plain federated averaging has one
//! (`Train`); a secure-aggregation round has four ([`StageKind::SECURE_AGGREGATION`]: advertise keys,
//! share keys, masked input, unmasking). Each stage has its own cohort (the survivors of the previous
//! stage), its own reports and its own deadline.
//!
//! # Secure-aggregation rounds
//!
//! The machine does the bookkeeping of a secure-aggregation round; the cryptography is the driver's
//! (`flotilla-secagg`'s `Server`), so this crate stays free of it:
//!
//! 1. A client's stage message (keys, shares, masked vector, unmasking shares) is first checked
//!    against the machine without changing it ([`RoundMachine::check_stage_report`]: round, attempt,
//!    stage, cohort, duplicate, full stage; the sample count at the `MaskedInput` stage, where clients
//!    train), then validated and absorbed by the driver's secagg server, and only if both accepted it
//!    does the driver feed [`Event::StageReport`] for the bookkeeping. Checking the machine first
//!    matters: otherwise the secagg server could hold keys or a masked vector from a client the machine
//!    then refuses (e.g. an over-selected client after the stage filled up), and its roster or sum
//!    would cover a different set of clients than the machine's survivors.
//!    The machine never sees a vector of a secure-aggregation round.
//! 2. When a stage closes with enough reports the machine emits [`Action::StageClosed`] with the
//!    survivors *before* the next stage's [`Action::Configure`]s, so the driver can close the secagg
//!    stage and compute each survivor's server→client payload (roster, share bundle, unmasking request)
//!    before it sends the tasks.
//! 3. After the unmasking stage the machine emits [`Action::Finalize`] with the contributors (the
//!    clients whose masked input was accepted — including those that dropped out during unmasking)
//!    and waits. The driver runs the secagg server's `finish` and feeds either [`Event::Aggregated`]
//!    (the sum of the contributors' clipped deltas; the strategy divides by their number — an
//!    *unweighted* mean — or, under distributed DP, by the fixed denominator `clients_per_round`,
//!    and takes its server step, see [`Strategy::apply_secure_sum`]) or [`Event::AggregationFailed`] with the reason (e.g. a
//!    neighbourhood below the secagg threshold t), which abandons the attempt with that reason.
//!    The driver may also feed `AggregationFailed` while a stage is running (a secagg `close_*`
//!    failed); the attempt is then abandoned at once.
//!
//! The minimum report count ([`RoundPolicy::min_reports`]) applies to every stage up to the masked
//! input; the unmasking stage needs one answer, because whether the answers suffice is decided per
//! neighbourhood by the secagg threshold, which only the driver's secagg server can check.
//! Only sum-based strategies can run under secure aggregation
//! ([`StrategySpec::check_secure_aggregation`]). The secagg server's state is not persisted:
//! [`RoundMachine::recover`] abandons an in-flight secure-aggregation attempt like any other.
//!
//! # FedBuff: buffered asynchronous aggregation
//!
//! With a FedBuff strategy ([`FedBuffSpec`]) the machine runs no rounds. A checking-in client gets a
//! task at once while fewer than `concurrency` are in flight (otherwise `RetryAfter`); the task's
//! `model_version` is its base model and `round` is that version + 1. A report must answer the
//! client's outstanding task ([`RejectReason::NoTask`], or [`RejectReason::Duplicate`] for its last
//! accepted one) and be at most `max_staleness` versions behind ([`RejectReason::TooStale`]), besides
//! the usual checks; a refused report changes nothing. An accepted report adds `s(τ)·(params − base)`
//! to an `f64` buffer; every `buffer_size` accepted reports the machine hands the mean
//! `Σ s(τᵢ)·Δᵢ / Σ s(τᵢ)` to the strategy's server optimizer (SGD by default:
//! `global += server_lr × mean`; momentum or an adaptive optimizer with `server_optimizer`) and emits
//! [`Action::Commit`] with each update's staleness in [`CommitInfo::staleness`]. When a step moves
//! the global model more than `max_staleness` versions past a task's base, that task can never be
//! accepted: it is dropped at once, freeing its concurrency slot, and its late report is still named
//! [`RejectReason::TooStale`]. An old model is kept only while an in-flight task started from it and
//! it is within `max_staleness` (O((max_staleness + 1) × model) memory at worst). A `Deadline` timer
//! drops every task older than the stage deadline. [`RoundMachine::recover`] abandons in-flight
//! tasks and the partly filled buffer (neither the buffer sum nor old models are in a snapshot); the
//! optimizer's state is in the snapshot.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::index;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{AggregateError, ConfigError};
use crate::params::ParamLayout;
use crate::strategy::{
    FedBuffSpec, Quarantined, RoundAggregate, RoundResult, Strategy, StrategySpec,
};

mod precheck;
mod status;
pub use status::{AbandonCause, Activity};

/// Identity of a client within a job, assigned by whoever authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client-{}", self.0)
    }
}

/// A client-visible stage of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageKind {
    /// Train locally from the current global model and report the new parameters.
    Train,
    /// Secure aggregation, stage 0: advertise public keys.
    AdvertiseKeys,
    /// Secure aggregation, stage 1: receive the roster, send encrypted secret shares.
    ShareKeys,
    /// Secure aggregation, stage 2: receive the share bundle, train, send the masked clipped delta.
    MaskedInput,
    /// Secure aggregation, stage 3: receive the unmasking request, reveal the requested shares.
    Unmasking,
}

impl StageKind {
    /// The stages of a secure-aggregation round, in order (their indices match
    /// `flotilla_secagg::Stage::index`).
    pub const SECURE_AGGREGATION: [StageKind; 4] = [
        StageKind::AdvertiseKeys,
        StageKind::ShareKeys,
        StageKind::MaskedInput,
        StageKind::Unmasking,
    ];

    /// Whether clients train at this stage (its reports carry a sample count and a training loss).
    pub fn trains(self) -> bool {
        matches!(self, StageKind::Train | StageKind::MaskedInput)
    }

    /// A short lowercase name (`train`, `advertise_keys`, …) for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Train => "train",
            StageKind::AdvertiseKeys => "advertise_keys",
            StageKind::ShareKeys => "share_keys",
            StageKind::MaskedInput => "masked_input",
            StageKind::Unmasking => "unmasking",
        }
    }
}

/// Round and selection policy of a job. Times are in milliseconds of the driver's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundPolicy {
    /// Rounds to commit before the job is finished.
    pub rounds: u64,
    /// Reports needed for a full round; the round commits as soon as this many have arrived.
    pub clients_per_round: usize,
    /// Live clients that must be available before a round is started (≥ `clients_per_round`).
    pub min_clients: usize,
    /// Select `ceil(clients_per_round × over_selection)` clients to absorb dropouts (≥ 1).
    pub over_selection: f64,
    /// Time a stage may take before stragglers are ignored.
    pub stage_deadline_ms: u64,
    /// Fraction of `clients_per_round` that must report for a round to commit at its deadline;
    /// below it the round is abandoned and retried.
    pub min_report_fraction: f64,
    /// Attempts per round before the job fails.
    pub max_attempts: u32,
    /// Once enough clients are available, wait this long for more before selecting.
    pub selection_window_ms: u64,
    /// A check-in counts as "available" for this long.
    pub checkin_ttl_ms: u64,
    /// Base delay for `RetryAfter`; the delay sent is uniform in `[base, 2·base)`.
    pub retry_after_ms: u64,
    /// Largest sample count a report may claim (its aggregation weight).
    pub max_samples_per_report: u64,
    /// The stages of every round, in order.
    pub stages: Vec<StageKind>,
}

impl RoundPolicy {
    /// A policy with production-minded defaults for `rounds` rounds of `clients_per_round` reports.
    pub fn new(rounds: u64, clients_per_round: usize) -> Self {
        Self {
            rounds,
            clients_per_round,
            min_clients: clients_per_round,
            over_selection: 1.0,
            stage_deadline_ms: 10 * 60 * 1000,
            min_report_fraction: 0.8,
            max_attempts: 3,
            selection_window_ms: 1000,
            checkin_ttl_ms: 5 * 60 * 1000,
            retry_after_ms: 5000,
            max_samples_per_report: 1 << 32,
            stages: vec![StageKind::Train],
        }
    }

    /// Checks every field; the error names the field and its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::limits::{self, count};
        count("rounds", self.rounds, 1, limits::MAX_ROUNDS)?;
        count(
            "clients_per_round",
            self.clients_per_round,
            1,
            limits::MAX_CLIENTS_PER_ROUND,
        )?;
        if self.min_clients < self.clients_per_round {
            return Err(ConfigError::new(
                "min_clients",
                format!(
                    "must be ≥ clients_per_round ({}), got {}",
                    self.clients_per_round, self.min_clients
                ),
            ));
        }
        count("min_clients", self.min_clients, 1, limits::MAX_CLIENTS)?;
        if !(self.over_selection.is_finite()
            && (1.0..=limits::MAX_OVER_SELECTION).contains(&self.over_selection))
        {
            return Err(ConfigError::new(
                "over_selection",
                format!(
                    "must be in [1, {}], got {}",
                    limits::MAX_OVER_SELECTION,
                    self.over_selection
                ),
            ));
        }
        count(
            "round_deadline",
            self.stage_deadline_ms,
            1,
            limits::MAX_DEADLINE_MS,
        )?;
        if !(self.min_report_fraction > 0.0 && self.min_report_fraction <= 1.0) {
            return Err(ConfigError::new(
                "min_report_fraction",
                format!("must be in (0, 1], got {}", self.min_report_fraction),
            ));
        }
        count("max_attempts", self.max_attempts, 1, limits::MAX_ATTEMPTS)?;
        // Job specs are held to `MAX_CHECKIN_TTL_MS` (a day); the simulator's clients never expire.
        count(
            "checkin_ttl",
            self.checkin_ttl_ms,
            1,
            limits::CHECKIN_TTL_NEVER,
        )?;
        count(
            "selection_window_ms",
            self.selection_window_ms,
            0,
            limits::MAX_SELECTION_WINDOW_MS,
        )?;
        count(
            "retry_after_ms",
            self.retry_after_ms,
            1,
            limits::MAX_RETRY_AFTER_MS,
        )?;
        count(
            "max_samples_per_report",
            self.max_samples_per_report,
            1,
            limits::MAX_SAMPLES,
        )?;
        if self.stages.is_empty() {
            return Err(ConfigError::new(
                "stages",
                "a round needs at least one stage",
            ));
        }
        if self.stages.as_slice() != [StageKind::Train] && !self.secure_aggregation() {
            return Err(ConfigError::new(
                "stages",
                "must be [Train] (plain) or [AdvertiseKeys, ShareKeys, MaskedInput, Unmasking] (secure aggregation)",
            ));
        }
        Ok(())
    }

    /// Whether rounds run secure aggregation (`stages` is [`StageKind::SECURE_AGGREGATION`]).
    pub fn secure_aggregation(&self) -> bool {
        self.stages.as_slice() == StageKind::SECURE_AGGREGATION
    }

    /// Reports needed for stage `index` to close: [`RoundPolicy::min_reports`], except 1 for the
    /// unmasking stage, where the secagg threshold (checked by the driver) decides.
    pub fn min_reports_at(&self, index: u32) -> usize {
        match self.stages.get(index as usize) {
            Some(StageKind::Unmasking) => 1,
            _ => self.min_reports(),
        }
    }

    /// Clients selected per round: `ceil(clients_per_round × over_selection)`.
    pub fn selection_size(&self) -> usize {
        ((self.clients_per_round as f64) * self.over_selection).ceil() as usize
    }

    /// Reports needed at the deadline: `ceil(clients_per_round × min_report_fraction)`, at least 1.
    pub fn min_reports(&self) -> usize {
        (((self.clients_per_round as f64) * self.min_report_fraction).ceil() as usize).max(1)
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
    /// A client's message for a secure-aggregation stage was accepted by the driver's secagg server
    /// (which validated and absorbed the payload); the machine does the bookkeeping.
    StageReport {
        /// Who.
        client: ClientId,
        /// The round it claims to report for.
        round: u64,
        /// The attempt it claims to report for.
        attempt: u32,
        /// The stage it claims to report for.
        stage: u32,
        /// Its sample count; checked and recorded only at a training stage (`MaskedInput`).
        num_samples: u64,
        /// Its training metrics; recorded only at a training stage.
        metrics: ReportMetrics,
    },
    /// The driver's secagg server unmasked the sum after [`Action::Finalize`].
    Aggregated {
        /// Round of the `Finalize`.
        round: u64,
        /// Attempt of the `Finalize`.
        attempt: u32,
        /// Per coordinate, the sum of the contributors' clipped deltas (`new − global`).
        sum: &'a [f64],
        /// How many clients the sum covers (must equal the `Finalize`'s contributors).
        contributors: usize,
    },
    /// The driver's secagg server could not produce the sum (e.g. a neighbourhood fell below the
    /// threshold t). Abandons the attempt with `reason`.
    AggregationFailed {
        /// Round of the failed attempt.
        round: u64,
        /// The failed attempt.
        attempt: u32,
        /// Why, for logs and the `RoundAbandoned` action.
        reason: String,
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
    /// A `Report` (with parameters) for a secure-aggregation stage, or a `StageReport` for a
    /// `Train` stage.
    #[error("stage {stage} ({kind}) takes no such report")]
    WrongStageKind {
        /// The stage index.
        stage: u32,
        /// Its kind's name.
        kind: &'static str,
    },
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
    /// A round committed; [`RoundMachine::global`] now holds the new model.
    Commit(CommitInfo),
    /// A secure-aggregation stage closed; `survivors` (sorted) are the next stage's cohort. Comes
    /// before that stage's `Configure`s: close the secagg server's stage and prepare each survivor's
    /// payload first.
    StageClosed {
        /// Round number.
        round: u64,
        /// Attempt number.
        attempt: u32,
        /// Index of the stage that closed.
        stage: u32,
        /// Its kind.
        kind: StageKind,
        /// The clients whose report for it was accepted.
        survivors: Vec<ClientId>,
    },
    /// The last stage of a secure-aggregation round closed: unmask the sum of `contributors`'
    /// inputs and feed [`Event::Aggregated`] or [`Event::AggregationFailed`].
    Finalize {
        /// Round number.
        round: u64,
        /// Attempt number.
        attempt: u32,
        /// Clients whose masked input was accepted, sorted.
        contributors: Vec<ClientId>,
    },
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StageState {
    index: u32,
    cohort: BTreeSet<ClientId>,
    reported: BTreeSet<ClientId>,
    dropped: BTreeSet<ClientId>,
    /// Clients that reported a failure of their task ([`Event::TaskFailed`]); also in `dropped`.
    #[serde(default)]
    failed: BTreeSet<ClientId>,
    aggregate: RoundAggregate,
    loss_weighted: f64,
    num_samples: u64,
    /// Secure aggregation: clients whose masked input was accepted (set when that stage closes).
    #[serde(default)]
    contributors: BTreeSet<ClientId>,
}

/// A secure-aggregation round waiting for the driver's unmasked sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Finalizing {
    contributors: BTreeSet<ClientId>,
    loss_weighted: f64,
    num_samples: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Phase {
    /// Waiting for `min_clients` live check-ins.
    Waiting,
    /// The selection window is open.
    SelectionPending,
    /// A stage is collecting reports.
    Running(Box<StageState>),
    /// Secure aggregation: every stage closed; waiting for `Aggregated` / `AggregationFailed`.
    Finalizing(Box<Finalizing>),
    Finished,
    Failed(String),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Waiting => "waiting for clients",
            Phase::SelectionPending => "selecting",
            Phase::Running(_) => "running",
            Phase::Finalizing(_) => "finalizing",
            Phase::Finished => "finished",
            Phase::Failed(_) => "failed",
        }
    }
}

/// The round state machine of one job. See the module documentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundMachine {
    policy: RoundPolicy,
    layout: ParamLayout,
    /// Not part of a snapshot: the model is as large as the job's model and is persisted by the
    /// driver as a blob anyway; [`RoundMachine::recover`] takes it back.
    #[serde(skip)]
    global: Vec<f32>,
    /// Aggregation strategy and its server state (optimizer moments, control variates).
    strategy: Strategy,
    seed: u64,
    round: u64,
    attempt: u32,
    /// Attempts of the current round abandoned for too few reports (a crash does not count).
    failed_attempts: u32,
    committed: u64,
    pool: BTreeMap<ClientId, u64>,
    phase: Phase,
    select_rng: ChaCha8Rng,
    jitter_rng: ChaCha8Rng,
    /// FedBuff mode: tasks in flight and the buffer of the next server step.
    #[serde(default)]
    fedbuff: AsyncState,
}

/// A FedBuff task in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AsyncTask {
    task: Task,
    started_ms: u64,
}

/// FedBuff state. The model-sized parts (`sum`, `bases`) are not part of a snapshot:
/// [`RoundMachine::recover`] abandons the in-flight tasks and the partly filled buffer anyway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AsyncState {
    /// Tasks issued so far (for per-task seeds).
    issued: u64,
    /// Outstanding tasks, at most one per client and `concurrency` in all.
    in_flight: BTreeMap<ClientId, AsyncTask>,
    /// Each client's last accepted task `(round, attempt)`, to name duplicates as such; forgotten
    /// when the client gets a new task.
    done: BTreeMap<ClientId, (u64, u32)>,
    /// Tasks dropped because the global model moved more than `max_staleness` versions past their
    /// base, as `(round, attempt, base version)`, one per client at most, to name their late reports
    /// `TooStale` rather than `NoTask`. Forgotten when the client gets a new task.
    #[serde(default)]
    expired: BTreeMap<ClientId, (u64, u32, u64)>,
    /// Models of versions older than the current one that outstanding tasks started from, and
    /// within `max_staleness` of it: at most `max_staleness` models besides the global one.
    #[serde(skip)]
    bases: BTreeMap<u64, Vec<f32>>,
    /// `Σ s(τᵢ)·Δᵢ` of the buffered updates, per coordinate.
    #[serde(skip)]
    sum: Vec<f64>,
    /// `Σ s(τᵢ)`.
    weight: f64,
    /// Buffered updates' clients and staleness, in acceptance order.
    contributors: Vec<ClientId>,
    staleness: Vec<u64>,
    num_samples: u64,
    loss_weighted: f64,
}

/// Derives independent 64-bit seeds from one (SplitMix64 finaliser).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl RoundMachine {
    /// A machine for a job with `policy`, a model of `layout` starting from `initial`, seeded by `seed`.
    pub fn new(
        policy: RoundPolicy,
        layout: ParamLayout,
        initial: Vec<f32>,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        Self::with_strategy(policy, layout, initial, seed, StrategySpec::fedavg())
    }

    /// As [`RoundMachine::new`], aggregating with `strategy` (validated by
    /// [`StrategySpec::from_config`] against this policy's minimum report count).
    pub fn with_strategy(
        policy: RoundPolicy,
        layout: ParamLayout,
        initial: Vec<f32>,
        seed: u64,
        strategy: StrategySpec,
    ) -> Result<Self, ConfigError> {
        policy.validate()?;
        if policy.secure_aggregation() {
            strategy.check_secure_aggregation()?;
        }
        if initial.len() != layout.len() {
            return Err(ConfigError::new(
                "initial_parameters",
                format!(
                    "has {} values, the layout has {}",
                    initial.len(),
                    layout.len()
                ),
            ));
        }
        if initial.iter().any(|v| !v.is_finite()) {
            return Err(ConfigError::new("initial_parameters", "must all be finite"));
        }
        let mut strategy = Strategy::new(strategy, layout.len());
        if strategy.spec().dp.is_some() {
            strategy.set_noise_key(crate::dp::default_noise_key(seed));
        }
        Ok(Self {
            policy,
            layout,
            global: initial,
            strategy,
            seed,
            round: 1,
            attempt: 1,
            failed_attempts: 0,
            committed: 0,
            pool: BTreeMap::new(),
            phase: Phase::Waiting,
            select_rng: ChaCha8Rng::seed_from_u64(mix(seed ^ 0x5E_1EC7)),
            jitter_rng: ChaCha8Rng::seed_from_u64(mix(seed ^ 0x7_17E5)),
            fedbuff: AsyncState::default(),
        })
    }

    /// The current global model.
    pub fn global(&self) -> &[f32] {
        &self.global
    }

    /// The aggregation strategy, with its server state.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// Installs the secret key of the central DP noise (see [`Strategy::set_noise_key`]). The default
    /// is derived from the job seed, which clients can recover from their task seeds: a networked
    /// coordinator must call this with a key from OS entropy before the first round. The key is part
    /// of the snapshot, so a restored machine draws the same noise.
    pub fn set_noise_key(&mut self, key: [u8; 32]) {
        self.strategy.set_noise_key(key);
    }

    /// The model's layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The policy the machine runs.
    pub fn policy(&self) -> &RoundPolicy {
        &self.policy
    }

    /// Rounds committed so far (= the global model's version).
    pub fn rounds_committed(&self) -> u64 {
        self.committed
    }

    /// Whether every round has committed.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// The failure reason, if the job failed.
    pub fn failure(&self) -> Option<&str> {
        match &self.phase {
            Phase::Failed(r) => Some(r),
            _ => None,
        }
    }

    /// Current round number and attempt.
    pub fn current_round(&self) -> (u64, u32) {
        (self.round, self.attempt)
    }

    /// Prepares a machine restored from a persisted snapshot after the process died, giving it back
    /// its global model (a snapshot does not hold it): the model of version
    /// [`RoundMachine::rounds_committed`], as the driver persisted it. Refused, changing nothing,
    /// unless it has the layout's length and only finite values.
    ///
    /// Whatever was in flight — reports and the partial aggregate of the current attempt — may not
    /// have been persisted, so that attempt is abandoned: the attempt number always moves on (late
    /// reports for any attempt the dead process may have started are refused as stale), the pool is emptied (clients must check in again)
    /// and the same round is selected afresh. Committed rounds are untouched,
    /// and a crash does not count towards `max_attempts`. Clock values from before the restart are
    /// meaningless to the new driver, which is why nothing time-based survives.
    pub fn recover(&mut self, global: Vec<f32>) -> Result<(), ConfigError> {
        if global.len() != self.layout.len() {
            return Err(ConfigError::new(
                "global",
                format!(
                    "has {} values, the layout has {}",
                    global.len(),
                    self.layout.len()
                ),
            ));
        }
        if global.iter().any(|v| !v.is_finite()) {
            return Err(ConfigError::new("global", "must all be finite"));
        }
        self.global = global;
        self.pool.clear();
        // FedBuff: in-flight tasks and the partly filled buffer are abandoned (the bumped attempt
        // makes their late reports stale).
        self.fedbuff = AsyncState {
            issued: self.fedbuff.issued,
            ..AsyncState::default()
        };
        match self.phase {
            Phase::Finished | Phase::Failed(_) => {}
            // Even a machine persisted between rounds moves to a new attempt: the dead process may
            // have selected and configured clients for the old one after its last snapshot.
            Phase::Running(_) | Phase::Finalizing(_) | Phase::SelectionPending | Phase::Waiting => {
                self.attempt += 1;
                self.phase = Phase::Waiting;
            }
        }
        Ok(())
    }

    /// Moves the current round on to attempt `min` if it is below: for a driver resuming a job
    /// (after [`RoundMachine::recover`], or a machine that never ran) that has recorded attempts
    /// beyond the snapshot's, so no attempt number is issued twice. Like a crash, this does not
    /// count towards `max_attempts`. Returns the attempt now current.
    ///
    /// Only while no attempt is under way (the machine is waiting for clients, as after
    /// [`RoundMachine::recover`]); refused otherwise, changing nothing. A finished or failed
    /// machine is left as is.
    pub fn raise_attempt(&mut self, min: u32) -> Result<u32, ConfigError> {
        match self.phase {
            Phase::Finished | Phase::Failed(_) => Ok(self.attempt),
            Phase::Waiting => {
                self.attempt = self.attempt.max(min);
                Ok(self.attempt)
            }
            _ => Err(ConfigError::new(
                "attempt",
                format!(
                    "can only be raised while waiting for clients, not while {}",
                    self.phase.name()
                ),
            )),
        }
    }

    /// A seed for the current round attempt's server-side randomness (e.g. the secagg communication
    /// graph, which is published to clients), derived from the job seed, round and attempt.
    pub fn attempt_seed(&self) -> u64 {
        mix(mix(self.seed ^ 0x5EC_A66) ^ self.round.rotate_left(17) ^ u64::from(self.attempt))
    }

    /// The current stage's index and kind, while a stage is running.
    pub fn current_stage(&self) -> Option<(u32, StageKind)> {
        match &self.phase {
            Phase::Running(s) => Some((s.index, self.policy.stages[s.index as usize])),
            _ => None,
        }
    }

    /// Clients in the current stage's cohort that have not reported yet.
    pub fn outstanding(&self) -> Vec<ClientId> {
        if self.fedbuff_spec().is_some() {
            return self.fedbuff.in_flight.keys().copied().collect();
        }
        match &self.phase {
            Phase::Running(s) => s
                .cohort
                .iter()
                .filter(|c| !s.reported.contains(c) && !s.dropped.contains(c))
                .copied()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Feeds one event at time `now_ms`; returns what the driver must do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(fb) = self.fedbuff_spec() {
            self.handle_async(fb, now_ms, event, &mut out);
            return out;
        }
        match event {
            Event::CheckIn { client } => self.on_check_in(now_ms, client, &mut out),
            Event::Report {
                client,
                round,
                attempt,
                stage,
                num_samples,
                update,
                metrics,
            } => self.on_report(
                now_ms,
                client,
                (round, attempt, stage),
                num_samples,
                update,
                metrics,
                &mut out,
            ),
            Event::StageReport {
                client,
                round,
                attempt,
                stage,
                num_samples,
                metrics,
            } => self.on_stage_report(
                now_ms,
                client,
                (round, attempt, stage),
                num_samples,
                metrics,
                &mut out,
            ),
            Event::Aggregated {
                round,
                attempt,
                sum,
                contributors,
            } => self.on_aggregated(now_ms, (round, attempt), sum, contributors, &mut out),
            Event::AggregationFailed {
                round,
                attempt,
                reason,
            } => self.on_aggregation_failed(now_ms, (round, attempt), &reason, &mut out),
            Event::ClientLost { client } => self.on_lost(now_ms, client, &mut out),
            Event::TaskFailed {
                client,
                round,
                attempt,
                stage,
            } => self.on_task_failed(now_ms, client, (round, attempt, stage), &mut out),
            Event::TimerFired(timer) => self.on_timer(now_ms, timer, &mut out),
        }
        out
    }

    fn live_pool(&self, now_ms: u64) -> Vec<ClientId> {
        let ttl = self.policy.checkin_ttl_ms;
        self.pool
            .iter()
            .filter(|(_, seen)| now_ms.saturating_sub(**seen) <= ttl)
            .map(|(c, _)| *c)
            .collect()
    }

    fn task_for(&self, client: ClientId, stage: u32) -> Task {
        Task {
            round: self.round,
            attempt: self.attempt,
            stage,
            kind: self.policy.stages[stage as usize],
            model_version: self.committed,
            seed: mix(
                mix(self.seed ^ self.round.rotate_left(32) ^ u64::from(self.attempt)) ^ client.0,
            ),
        }
    }

    fn retry_after(&mut self, client: ClientId, out: &mut Vec<Action>) {
        let base = self.policy.retry_after_ms.max(1);
        let after_ms = base + self.jitter_rng.random_range(0..base);
        out.push(Action::RetryAfter { client, after_ms });
    }

    fn on_check_in(&mut self, now_ms: u64, client: ClientId, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Finished | Phase::Failed(_) => {
                self.retry_after(client, out);
                return;
            }
            Phase::Running(s)
                if s.cohort.contains(&client)
                    && !s.reported.contains(&client)
                    && !s.failed.contains(&client) =>
            {
                // A reconnecting member of the cohort gets the same task again: idempotent.
                let task = self.task_for(client, s.index);
                if let Phase::Running(s) = &mut self.phase {
                    s.dropped.remove(&client);
                }
                out.push(Action::Configure { client, task });
                return;
            }
            _ => {}
        }
        self.pool.insert(client, now_ms);
        self.prune_pool(now_ms);
        match self.phase {
            Phase::Waiting => {
                if self.live_pool(now_ms).len() >= self.policy.min_clients {
                    self.phase = Phase::SelectionPending;
                    out.push(Action::SetTimer {
                        timer: Timer::Selection {
                            round: self.round,
                            attempt: self.attempt,
                        },
                        at_ms: now_ms + self.policy.selection_window_ms,
                    });
                }
                self.retry_after(client, out);
            }
            _ => self.retry_after(client, out),
        }
    }

    fn on_timer(&mut self, now_ms: u64, timer: Timer, out: &mut Vec<Action>) {
        match (timer, &self.phase) {
            (Timer::Selection { round, attempt }, Phase::SelectionPending)
                if round == self.round && attempt == self.attempt =>
            {
                self.select(now_ms, out)
            }
            (
                Timer::Deadline {
                    round,
                    attempt,
                    stage,
                },
                Phase::Running(s),
            ) if round == self.round && attempt == self.attempt && stage == s.index => {
                self.close_stage(now_ms, out)
            }
            // Timers of rounds, attempts or stages that are over are stale: ignore them.
            _ => {}
        }
    }

    fn select(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let live = self.live_pool(now_ms);
        if live.len() < self.policy.min_clients {
            self.phase = Phase::Waiting;
            return;
        }
        let k = self.policy.selection_size().min(live.len());
        let mut chosen: Vec<ClientId> = index::sample(&mut self.select_rng, live.len(), k)
            .into_iter()
            .map(|i| live[i])
            .collect();
        chosen.sort();
        for c in &chosen {
            self.pool.remove(c);
        }
        self.start_stage(now_ms, 0, chosen.into_iter().collect(), out);
    }

    fn start_stage(
        &mut self,
        now_ms: u64,
        index: u32,
        cohort: BTreeSet<ClientId>,
        out: &mut Vec<Action>,
    ) {
        self.start_stage_with(now_ms, index, cohort, (BTreeSet::new(), 0.0, 0), out);
    }

    /// Opens stage `index` for `cohort`, carrying the round's training tally so far (contributors,
    /// loss-weighted sum, samples) from the previous stage of a secure-aggregation round.
    fn start_stage_with(
        &mut self,
        now_ms: u64,
        index: u32,
        cohort: BTreeSet<ClientId>,
        (contributors, loss_weighted, num_samples): (BTreeSet<ClientId>, f64, u64),
        out: &mut Vec<Action>,
    ) {
        for &client in &cohort {
            out.push(Action::Configure {
                client,
                task: self.task_for(client, index),
            });
        }
        out.push(Action::SetTimer {
            timer: Timer::Deadline {
                round: self.round,
                attempt: self.attempt,
                stage: index,
            },
            at_ms: now_ms + self.policy.stage_deadline_ms,
        });
        self.phase = Phase::Running(Box::new(StageState {
            index,
            cohort,
            reported: BTreeSet::new(),
            dropped: BTreeSet::new(),
            failed: BTreeSet::new(),
            aggregate: self.strategy.begin_round_at(self.round, self.attempt),
            loss_weighted,
            num_samples,
            contributors,
        }));
    }

    #[allow(clippy::too_many_arguments)]
    fn on_report(
        &mut self,
        now_ms: u64,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        num_samples: u64,
        update: &[f32],
        metrics: ReportMetrics,
        out: &mut Vec<Action>,
    ) {
        let max_samples = self.policy.max_samples_per_report;
        let reject = |reason| Action::Reject { client, reason };
        if let Err(reason) = self.check_report(client, (round, attempt, stage), true) {
            out.push(reject(reason));
            return;
        }
        let Phase::Running(s) = &mut self.phase else {
            return;
        };
        if num_samples == 0 || num_samples > max_samples {
            out.push(reject(RejectReason::BadSampleCount {
                got: num_samples,
                max: max_samples,
            }));
            return;
        }
        let loss = if metrics.train_loss.is_finite() {
            metrics.train_loss
        } else {
            f64::NAN
        };
        if let Err(e) = self.strategy.accept(
            &mut s.aggregate,
            &self.global,
            client.0,
            update,
            num_samples as f64,
        ) {
            out.push(reject(RejectReason::BadUpdate(e)));
            return;
        }
        s.reported.insert(client);
        s.dropped.remove(&client);
        s.num_samples += num_samples;
        s.loss_weighted += loss * num_samples as f64;
        out.push(Action::Accepted { client });
        self.maybe_close_early(now_ms, out);
    }

    /// The checks every report passes, plain or secure-aggregation: a stage is running, the report
    /// names the current round, attempt and stage, the stage takes this kind of report (`plain`:
    /// a `Report` with parameters), the client is in the cohort and has not reported, and the stage
    /// is not full.
    fn check_report(
        &self,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        plain: bool,
    ) -> Result<(), RejectReason> {
        let Phase::Running(s) = &self.phase else {
            return Err(RejectReason::NotAccepting(self.phase.name()));
        };
        if round != self.round || attempt != self.attempt {
            return Err(RejectReason::WrongRound {
                round: self.round,
                attempt: self.attempt,
                got_round: round,
                got_attempt: attempt,
            });
        }
        if stage != s.index {
            return Err(RejectReason::WrongStage {
                expected: s.index,
                got: stage,
            });
        }
        let kind = self.policy.stages[s.index as usize];
        if (kind == StageKind::Train) != plain {
            return Err(RejectReason::WrongStageKind {
                stage,
                kind: kind.name(),
            });
        }
        if !s.cohort.contains(&client) {
            return Err(RejectReason::NotSelected);
        }
        if s.reported.contains(&client) {
            return Err(RejectReason::Duplicate);
        }
        if s.reported.len() >= self.policy.clients_per_round {
            return Err(RejectReason::RoundFull);
        }
        Ok(())
    }

    /// Whether [`Event::StageReport`] with these fields would be accepted now, without changing
    /// anything. A driver calls this *before* its secagg server absorbs the client's payload, so the
    /// secagg server never holds a message the machine then refuses (a late over-selected client, a
    /// bad sample count); feeding the event right after a successful check (with no other event in
    /// between) is then accepted.
    pub fn check_stage_report(
        &self,
        client: ClientId,
        round: u64,
        attempt: u32,
        stage: u32,
        num_samples: u64,
    ) -> Result<(), RejectReason> {
        self.check_report(client, (round, attempt, stage), false)?;
        let max = self.policy.max_samples_per_report;
        if self.policy.stages[stage as usize].trains() && (num_samples == 0 || num_samples > max) {
            return Err(RejectReason::BadSampleCount {
                got: num_samples,
                max,
            });
        }
        Ok(())
    }

    fn on_stage_report(
        &mut self,
        now_ms: u64,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        num_samples: u64,
        metrics: ReportMetrics,
        out: &mut Vec<Action>,
    ) {
        if let Err(reason) = self.check_stage_report(client, round, attempt, stage, num_samples) {
            out.push(Action::Reject { client, reason });
            return;
        }
        let trains = self.policy.stages[stage as usize].trains();
        let Phase::Running(s) = &mut self.phase else {
            return;
        };
        if trains {
            let loss = if metrics.train_loss.is_finite() {
                metrics.train_loss
            } else {
                f64::NAN
            };
            s.num_samples += num_samples;
            s.loss_weighted += loss * num_samples as f64;
        }
        s.reported.insert(client);
        s.dropped.remove(&client);
        out.push(Action::Accepted { client });
        self.maybe_close_early(now_ms, out);
    }

    fn on_aggregated(
        &mut self,
        now_ms: u64,
        (round, attempt): (u64, u32),
        sum: &[f64],
        count: usize,
        out: &mut Vec<Action>,
    ) {
        if round != self.round || attempt != self.attempt {
            return; // stale: an attempt that is over
        }
        let Phase::Finalizing(f) = std::mem::replace(&mut self.phase, Phase::Waiting) else {
            // Not waiting for a sum: ignore, like a stale timer.
            return;
        };
        let expected = f.contributors.len();
        let mean: Result<(), String> = if count != expected {
            Err(format!(
                "the unmasked sum covers {count} clients, {expected} contributed"
            ))
        } else if sum.len() != self.layout.len() {
            Err(format!(
                "the unmasked sum has {} values, the layout has {}",
                sum.len(),
                self.layout.len()
            ))
        } else {
            Ok(())
        };
        // The strategy divides: by the contributors (unweighted mean), or under distributed DP by the
        // fixed denominator `clients_per_round`.
        let result = mean.and_then(|()| {
            self.strategy
                .apply_secure_sum(&self.global, sum, count)
                .map_err(|e| format!("secure aggregation produced an unusable mean: {e}"))
        });
        match result {
            Ok(r) => {
                let participants = f.contributors.iter().copied().collect();
                self.commit(now_ms, r, participants, f.num_samples, f.loss_weighted, out);
            }
            Err(why) => {
                let needed = self.policy.min_reports();
                self.abandon_attempt(
                    now_ms,
                    expected,
                    needed,
                    &why,
                    AbandonCause::AggregationFailed,
                    out,
                );
            }
        }
    }

    fn on_aggregation_failed(
        &mut self,
        now_ms: u64,
        (round, attempt): (u64, u32),
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        if round != self.round || attempt != self.attempt || !self.policy.secure_aggregation() {
            return; // stale, or not a secure-aggregation job
        }
        let reports = match &self.phase {
            Phase::Running(s) => s.reported.len(),
            Phase::Finalizing(f) => f.contributors.len(),
            _ => return,
        };
        self.phase = Phase::Waiting;
        let why = format!("secure aggregation failed: {reason}");
        self.abandon_attempt(
            now_ms,
            reports,
            self.policy.min_reports(),
            &why,
            AbandonCause::AggregationFailed,
            out,
        );
    }

    fn on_lost(&mut self, now_ms: u64, client: ClientId, out: &mut Vec<Action>) {
        self.pool.remove(&client);
        if let Phase::Running(s) = &mut self.phase
            && s.cohort.contains(&client)
            && !s.reported.contains(&client)
        {
            s.dropped.insert(client);
            self.maybe_close_early(now_ms, out);
        }
    }

    /// Closes the stage before its deadline when waiting cannot change the outcome: all needed reports
    /// are in, or every selected client has either reported or dropped.
    fn maybe_close_early(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if let Phase::Running(s) = &self.phase {
            let pending = s.cohort.len() - s.reported.len() - s.dropped.len();
            if s.reported.len() >= self.policy.clients_per_round || pending == 0 {
                self.close_stage(now_ms, out);
            }
        }
    }

    fn close_stage(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Phase::Running(s) = std::mem::replace(&mut self.phase, Phase::Waiting) else {
            return;
        };
        let needed = self.policy.min_reports_at(s.index);
        let kind = self.policy.stages[s.index as usize];
        if s.reported.len() < needed {
            let why = format!(
                "fewer than {} of {} clients reported at stage {} ({})",
                needed,
                self.policy.clients_per_round,
                s.index,
                kind.name()
            );
            self.abandon_attempt(
                now_ms,
                s.reported.len(),
                needed,
                &why,
                AbandonCause::TooFewReports,
                out,
            );
            return;
        }
        if kind != StageKind::Train {
            // Secure aggregation: the driver's secagg server holds the data; the machine hands over
            // the survivors and carries the training tally to the end of the round.
            let s = *s;
            let contributors = if kind == StageKind::MaskedInput {
                s.reported.clone()
            } else {
                s.contributors
            };
            let last = (s.index as usize) + 1 == self.policy.stages.len();
            if last {
                out.push(Action::Finalize {
                    round: self.round,
                    attempt: self.attempt,
                    contributors: contributors.iter().copied().collect(),
                });
                self.phase = Phase::Finalizing(Box::new(Finalizing {
                    contributors,
                    loss_weighted: s.loss_weighted,
                    num_samples: s.num_samples,
                }));
            } else {
                out.push(Action::StageClosed {
                    round: self.round,
                    attempt: self.attempt,
                    stage: s.index,
                    kind,
                    survivors: s.reported.iter().copied().collect(),
                });
                let carry = (contributors, s.loss_weighted, s.num_samples);
                self.start_stage_with(now_ms, s.index + 1, s.reported, carry, out);
            }
            return;
        }
        if (s.index as usize) + 1 < self.policy.stages.len() {
            // Survivors of this stage are the cohort of the next one.
            self.start_stage(now_ms, s.index + 1, s.reported.clone(), out);
            return;
        }
        let result = match self.strategy.finish(&s.aggregate, &self.global) {
            Ok(r) => r,
            Err(AggregateError::Empty) => {
                // Every report was quarantined: nothing usable, so the attempt is abandoned like one
                // that received too few reports.
                self.abandon_attempt(
                    now_ms,
                    0,
                    needed,
                    "every report was quarantined",
                    AbandonCause::AllQuarantined,
                    out,
                );
                return;
            }
            Err(e) => {
                let reason = format!("round {} aggregation failed: {e}", self.round);
                self.phase = Phase::Failed(reason.clone());
                out.push(Action::JobFailed { reason });
                return;
            }
        };
        let quarantined: BTreeSet<u64> = result.quarantined.iter().map(|q| q.client).collect();
        let participants = s
            .reported
            .iter()
            .copied()
            .filter(|c| !quarantined.contains(&c.0))
            .collect();
        self.commit(
            now_ms,
            result,
            participants,
            s.num_samples,
            s.loss_weighted,
            out,
        );
    }

    /// Installs the new global model and moves to the next round (or finishes the job).
    fn commit(
        &mut self,
        now_ms: u64,
        result: RoundResult,
        participants: Vec<ClientId>,
        num_samples: u64,
        loss_weighted: f64,
        out: &mut Vec<Action>,
    ) {
        self.global = result.global;
        self.committed += 1;
        let info = CommitInfo {
            round: self.round,
            attempt: self.attempt,
            model_version: self.committed,
            participants,
            num_samples,
            train_loss: loss_weighted / num_samples.max(1) as f64,
            quarantined: result.quarantined,
            dp: result.dp,
            staleness: Vec::new(),
        };
        out.push(Action::Commit(info));
        if self.committed >= self.policy.rounds {
            self.phase = Phase::Finished;
            out.push(Action::JobFinished);
            return;
        }
        self.round += 1;
        self.attempt = 1;
        self.failed_attempts = 0;
        self.after_round(now_ms, out);
    }

    /// Ends the current attempt without a commit; the job fails once `max_attempts` attempts of this
    /// round have been abandoned (`why` completes "round R failed N times: …").
    fn abandon_attempt(
        &mut self,
        now_ms: u64,
        reports: usize,
        needed: usize,
        why: &str,
        cause: AbandonCause,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::RoundAbandoned {
            round: self.round,
            attempt: self.attempt,
            reports,
            needed,
            reason: why.to_string(),
            cause,
        });
        self.failed_attempts += 1;
        if self.failed_attempts >= self.policy.max_attempts {
            let reason = format!(
                "round {} failed {} times: {why}",
                self.round, self.failed_attempts
            );
            self.phase = Phase::Failed(reason.clone());
            out.push(Action::JobFailed { reason });
            return;
        }
        self.attempt += 1;
        self.after_round(now_ms, out);
    }

    fn after_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.phase = Phase::Waiting;
        if self.live_pool(now_ms).len() >= self.policy.min_clients {
            self.phase = Phase::SelectionPending;
            out.push(Action::SetTimer {
                timer: Timer::Selection {
                    round: self.round,
                    attempt: self.attempt,
                },
                at_ms: now_ms + self.policy.selection_window_ms,
            });
        }
    }
}

/// FedBuff: buffered asynchronous aggregation (see [`FedBuffSpec`] and the module documentation).
impl RoundMachine {
    fn fedbuff_spec(&self) -> Option<FedBuffSpec> {
        self.strategy.spec().fedbuff
    }

    /// Whether a report from `client` naming `round` and `attempt` could be accepted now, judged
    /// before its payload is read (changes nothing). Round-based jobs: the round and attempt must be
    /// the current ones. FedBuff: they must name the client's outstanding task, whose base model is
    /// at most `max_staleness` versions old.
    pub fn precheck_report(
        &self,
        client: ClientId,
        round: u64,
        attempt: u32,
    ) -> Result<(), RejectReason> {
        let Some(fb) = self.fedbuff_spec() else {
            if (round, attempt) != (self.round, self.attempt) {
                return Err(RejectReason::WrongRound {
                    round: self.round,
                    attempt: self.attempt,
                    got_round: round,
                    got_attempt: attempt,
                });
            }
            return Ok(());
        };
        if matches!(self.phase, Phase::Finished | Phase::Failed(_)) {
            return Err(RejectReason::NotAccepting(self.phase.name()));
        }
        self.precheck_async(fb, client, round, attempt).map(|_| ())
    }

    /// The payload-free checks of a FedBuff report; returns the task's base version and the
    /// report's staleness.
    fn precheck_async(
        &self,
        fb: FedBuffSpec,
        client: ClientId,
        round: u64,
        attempt: u32,
    ) -> Result<(u64, u64), RejectReason> {
        let st = &self.fedbuff;
        let Some(t) = st.in_flight.get(&client) else {
            if st.done.get(&client) == Some(&(round, attempt)) {
                return Err(RejectReason::Duplicate);
            }
            // A task dropped when the global model moved past `max_staleness`: say so, rather than
            // `NoTask`, so the client knows to fetch fresh work.
            if let Some(&(r, a, base)) = st.expired.get(&client)
                && (r, a) == (round, attempt)
            {
                let staleness = self.committed.saturating_sub(base);
                return Err(RejectReason::TooStale {
                    staleness,
                    base,
                    max: fb.max_staleness,
                });
            }
            return Err(RejectReason::NoTask);
        };
        let t = &t.task;
        if (round, attempt) != (t.round, t.attempt) {
            return Err(RejectReason::WrongRound {
                round: t.round,
                attempt: t.attempt,
                got_round: round,
                got_attempt: attempt,
            });
        }
        let staleness = self.committed.saturating_sub(t.model_version);
        if staleness > fb.max_staleness
            || (t.model_version != self.committed && !st.bases.contains_key(&t.model_version))
        {
            return Err(RejectReason::TooStale {
                staleness,
                base: t.model_version,
                max: fb.max_staleness,
            });
        }
        Ok((t.model_version, staleness))
    }

    /// FedBuff: updates accepted into the buffer of the next server step (0 for round-based jobs).
    pub fn buffered_updates(&self) -> usize {
        self.fedbuff.contributors.len()
    }

    fn handle_async(
        &mut self,
        fb: FedBuffSpec,
        now_ms: u64,
        event: Event<'_>,
        out: &mut Vec<Action>,
    ) {
        if matches!(self.phase, Phase::Finished | Phase::Failed(_)) {
            match event {
                Event::CheckIn { client } => self.retry_after(client, out),
                Event::Report { client, .. } | Event::StageReport { client, .. } => {
                    out.push(Action::Reject {
                        client,
                        reason: RejectReason::NotAccepting(self.phase.name()),
                    })
                }
                _ => {}
            }
            return;
        }
        match event {
            Event::CheckIn { client } => self.async_check_in(fb, now_ms, client, out),
            Event::Report {
                client,
                round,
                attempt,
                stage,
                num_samples,
                update,
                metrics,
            } => {
                match self.check_async_report(
                    fb,
                    client,
                    (round, attempt, stage),
                    num_samples,
                    update,
                ) {
                    Err(reason) => out.push(Action::Reject { client, reason }),
                    Ok((base, staleness)) => self.accept_async(
                        fb,
                        client,
                        base,
                        staleness,
                        num_samples,
                        update,
                        metrics,
                        out,
                    ),
                }
            }
            Event::StageReport { client, stage, .. } => out.push(Action::Reject {
                client,
                reason: RejectReason::WrongStageKind {
                    stage,
                    kind: StageKind::Train.name(),
                },
            }),
            Event::Aggregated { .. } | Event::AggregationFailed { .. } => {}
            Event::TaskFailed {
                client,
                round,
                attempt,
                stage,
            } => self.async_task_failed(fb, client, (round, attempt, stage), out),
            Event::ClientLost { client } => {
                if self.fedbuff.in_flight.remove(&client).is_some() {
                    self.prune_bases(fb);
                }
            }
            Event::TimerFired(Timer::Deadline { attempt, .. }) if attempt == self.attempt => {
                // Drop every task older than the stage deadline: its slot is free again.
                let deadline = self.policy.stage_deadline_ms;
                let before = self.fedbuff.in_flight.len();
                self.fedbuff
                    .in_flight
                    .retain(|_, t| now_ms < t.started_ms.saturating_add(deadline));
                if self.fedbuff.in_flight.len() != before {
                    self.prune_bases(fb);
                }
            }
            Event::TimerFired(_) => {}
        }
    }

    fn async_check_in(
        &mut self,
        fb: FedBuffSpec,
        now_ms: u64,
        client: ClientId,
        out: &mut Vec<Action>,
    ) {
        if let Some(t) = self.fedbuff.in_flight.get(&client) {
            if self.committed - t.task.model_version <= fb.max_staleness {
                // A reconnecting client gets the same task again: idempotent.
                out.push(Action::Configure {
                    client,
                    task: t.task.clone(),
                });
                return;
            }
            // Its task can no longer be accepted: replace it.
            self.fedbuff.in_flight.remove(&client);
            self.prune_bases(fb);
        }
        if self.fedbuff.in_flight.len() >= fb.concurrency {
            self.retry_after(client, out);
            return;
        }
        // A new task replaces whatever the client's last one was. FedBuff names a task by its base
        // version and attempt only, so a client that reported may get a task with the same name:
        // forget the answered one, or a late report for the new task (dropped at its deadline or
        // when it became too stale) would be mistaken for a duplicate of the old one.
        self.fedbuff.done.remove(&client);
        self.fedbuff.expired.remove(&client);
        let issued = self.fedbuff.issued;
        self.fedbuff.issued += 1;
        let task = Task {
            round: self.committed + 1,
            attempt: self.attempt,
            stage: 0,
            kind: StageKind::Train,
            model_version: self.committed,
            seed: mix(mix(self.seed ^ 0xFED_B0FF ^ issued.rotate_left(29)) ^ client.0),
        };
        self.fedbuff.in_flight.insert(
            client,
            AsyncTask {
                task: task.clone(),
                started_ms: now_ms,
            },
        );
        out.push(Action::Configure {
            client,
            task: task.clone(),
        });
        out.push(Action::SetTimer {
            timer: Timer::Deadline {
                round: task.round,
                attempt: task.attempt,
                stage: 0,
            },
            at_ms: now_ms.saturating_add(self.policy.stage_deadline_ms),
        });
    }

    /// Every check of a FedBuff report, changing nothing; returns the task's base version and the
    /// report's staleness.
    fn check_async_report(
        &self,
        fb: FedBuffSpec,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        num_samples: u64,
        update: &[f32],
    ) -> Result<(u64, u64), RejectReason> {
        // First exactly what `precheck_report` checks, so a driver's pre-check and the machine
        // always name the same reason.
        let (base, staleness) = self.precheck_async(fb, client, round, attempt)?;
        if stage != 0 {
            return Err(RejectReason::WrongStage {
                expected: 0,
                got: stage,
            });
        }
        let max = self.policy.max_samples_per_report;
        if num_samples == 0 || num_samples > max {
            return Err(RejectReason::BadSampleCount {
                got: num_samples,
                max,
            });
        }
        if update.len() != self.layout.len() {
            return Err(RejectReason::BadUpdate(AggregateError::Length {
                expected: self.layout.len(),
                actual: update.len(),
            }));
        }
        if let Some(index) = update.iter().position(|v| !v.is_finite()) {
            return Err(RejectReason::BadUpdate(AggregateError::NonFinite { index }));
        }
        Ok((base, staleness))
    }

    #[allow(clippy::too_many_arguments)]
    fn accept_async(
        &mut self,
        fb: FedBuffSpec,
        client: ClientId,
        base_version: u64,
        staleness: u64,
        num_samples: u64,
        update: &[f32],
        metrics: ReportMetrics,
        out: &mut Vec<Action>,
    ) {
        let w = fb.staleness_weight(staleness);
        let st = &mut self.fedbuff;
        let base: &[f32] = if base_version == self.committed {
            &self.global
        } else {
            match st.bases.get(&base_version) {
                Some(b) => b,
                None => return, // excluded by check_async_report
            }
        };
        if st.sum.len() != update.len() {
            st.sum = vec![0.0; update.len()];
        }
        for ((acc, &p), &b) in st.sum.iter_mut().zip(update).zip(base) {
            *acc += w * (f64::from(p) - f64::from(b));
        }
        st.weight += w;
        if let Some(t) = st.in_flight.remove(&client) {
            st.done.insert(client, (t.task.round, t.task.attempt));
        }
        st.contributors.push(client);
        st.staleness.push(staleness);
        st.num_samples += num_samples;
        let loss = if metrics.train_loss.is_finite() {
            metrics.train_loss
        } else {
            f64::NAN
        };
        st.loss_weighted += loss * num_samples as f64;
        out.push(Action::Accepted { client });
        if st.contributors.len() >= fb.buffer_size {
            self.async_commit(fb, out);
        } else {
            self.prune_bases(fb);
        }
    }

    /// The server step: the strategy's server optimizer applied to the mean `Σ s(τᵢ)·Δᵢ / Σ s(τᵢ)`
    /// (SGD: `global += server_lr × mean`), then a new version.
    fn async_commit(&mut self, fb: FedBuffSpec, out: &mut Vec<Action>) {
        let st = std::mem::take(&mut self.fedbuff);
        let mean: Vec<f32> = st.sum.iter().map(|s| (s / st.weight) as f32).collect();
        let result = match self.strategy.apply_mean_delta(&self.global, &mean) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("server step {} failed: {e}", self.committed + 1);
                self.phase = Phase::Failed(reason.clone());
                out.push(Action::JobFailed { reason });
                return;
            }
        };
        let old = std::mem::replace(&mut self.global, result.global);
        let old_version = self.committed;
        self.committed += 1;
        self.round = self.committed + 1;
        self.fedbuff = AsyncState {
            issued: st.issued,
            in_flight: st.in_flight,
            done: st.done,
            expired: st.expired,
            bases: st.bases,
            ..AsyncState::default()
        };
        // Tasks whose base is now more than `max_staleness` versions old can no longer produce an
        // acceptable report: free their slots at once (their late reports are refused `TooStale`).
        let oldest = self.committed.saturating_sub(fb.max_staleness);
        let expired: Vec<ClientId> = self
            .fedbuff
            .in_flight
            .iter()
            .filter(|(_, t)| t.task.model_version < oldest)
            .map(|(c, _)| *c)
            .collect();
        for client in expired {
            if let Some(t) = self.fedbuff.in_flight.remove(&client) {
                self.fedbuff
                    .expired
                    .insert(client, (t.task.round, t.task.attempt, t.task.model_version));
            }
        }
        if self
            .fedbuff
            .in_flight
            .values()
            .any(|t| t.task.model_version == old_version)
        {
            self.fedbuff.bases.insert(old_version, old);
        }
        self.prune_bases(fb);
        let mut participants = st.contributors;
        participants.sort();
        out.push(Action::Commit(CommitInfo {
            round: self.committed,
            attempt: self.attempt,
            model_version: self.committed,
            participants,
            num_samples: st.num_samples,
            train_loss: st.loss_weighted / st.num_samples.max(1) as f64,
            quarantined: Vec::new(),
            // `[privacy]` is refused with FedBuff (`StrategySpec::with_privacy`).
            dp: None,
            staleness: st.staleness,
        }));
        if self.committed >= self.policy.rounds {
            self.phase = Phase::Finished;
            self.fedbuff.in_flight.clear();
            self.fedbuff.bases.clear();
            out.push(Action::JobFinished);
        }
    }

    /// Keeps only the old models that an outstanding task started from and that are still within
    /// `max_staleness` versions.
    fn prune_bases(&mut self, fb: FedBuffSpec) {
        let oldest = self.committed.saturating_sub(fb.max_staleness);
        let st = &mut self.fedbuff;
        let in_flight = &st.in_flight;
        st.bases
            .retain(|v, _| *v >= oldest && in_flight.values().any(|t| t.task.model_version == *v));
    }
}
