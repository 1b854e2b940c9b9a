//! The round policy (how many clients, rounds, deadlines, stages) and the stages of a round.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

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
