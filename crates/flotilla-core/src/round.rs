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
//! Submodules: the [policy](RoundPolicy) and the [events and actions](Event); the round-based
//! mechanism, including secure-aggregation rounds, in `rounds`; FedBuff in `fedbuff`; the upload
//! pre-check in `precheck`; what the machine is doing, for status pages, in `status`; federated
//! evaluation ([`ClientEval`], [`FederatedEval`]) in `feval`.

use std::collections::{BTreeMap, BTreeSet};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{AggregateError, ConfigError};
use crate::params::ParamLayout;
use crate::strategy::{FedBuffSpec, RoundAggregate, RoundResult, Strategy, StrategySpec};

mod events;
mod fedbuff;
mod feval;
mod policy;
mod precheck;
mod rounds;
mod secure;
mod status;

pub use events::{Action, ClientId, CommitInfo, Event, RejectReason, ReportMetrics, Task, Timer};
pub use feval::{ClientEval, EvalError, FederatedEval, MAX_EVAL_SAMPLES};
pub use policy::{RoundPolicy, StageKind};
pub use secure::{RefusalKind, SecureAggregator, StageInput, StageRefusal};
pub use status::{AbandonCause, Activity};

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
    /// Federated evaluations of the round's accepted training reports (at most one per member of
    /// the cohort), carried through the later stages of a secure-aggregation round.
    #[serde(default)]
    evals: BTreeMap<ClientId, ClientEval>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Phase {
    /// Waiting for `min_clients` live check-ins.
    Waiting,
    /// The selection window is open.
    SelectionPending,
    /// A stage is collecting reports.
    Running(Box<StageState>),
    Finished,
    Failed(String),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Waiting => "waiting for clients",
            Phase::SelectionPending => "selecting",
            Phase::Running(_) => "running",
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
    /// Secure aggregation: the aggregator and the current stage's payloads (never in a snapshot).
    #[serde(skip)]
    secure: secure::SecureSlot,
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
    /// Federated evaluations of the buffered updates that carried one, in acceptance order.
    #[serde(default)]
    evals: Vec<ClientEval>,
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
            secure: secure::SecureSlot::default(),
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
        self.secure.payloads = None;
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
            Phase::Running(_) | Phase::SelectionPending | Phase::Waiting => {
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
            Event::StageMessage {
                client,
                round,
                attempt,
                stage,
                input,
                num_samples,
                metrics,
            } => self.on_stage_message(
                now_ms,
                client,
                (round, attempt, stage),
                input,
                (num_samples, metrics),
                &mut out,
            ),
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

    fn fedbuff_spec(&self) -> Option<FedBuffSpec> {
        self.strategy.spec().fedbuff
    }

    fn retry_after(&mut self, client: ClientId, out: &mut Vec<Action>) {
        let base = self.policy.retry_after_ms.max(1);
        let after_ms = base + self.jitter_rng.random_range(0..base);
        out.push(Action::RetryAfter { client, after_ms });
    }
}
