//! `[round]`: the selection and deadline policy of the round machine, and the one place a
//! [`RoundPolicy`] is built from a file.

use flotilla_core::limits;
use flotilla_core::round::{RoundPolicy, StageKind};

use crate::SpecError;
use crate::checks::{fraction, int, size};
use crate::raw::RawRound;

/// `over_selection` when absent: select exactly `clients_per_round`.
pub const DEFAULT_OVER_SELECTION: f64 = 1.0;
/// `min_report_fraction` when absent (the round machine's own default).
pub const DEFAULT_MIN_REPORT_FRACTION: f64 = 0.8;
/// `deadline_seconds` when absent.
pub const DEFAULT_DEADLINE_SECONDS: f64 = 600.0;
/// `max_attempts` when absent.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// `selection_window_ms` when absent.
pub const DEFAULT_SELECTION_WINDOW_MS: u64 = 1000;
/// `retry_after_ms` when absent.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 2000;
/// `checkin_ttl_seconds` when absent.
pub const DEFAULT_CHECKIN_TTL_SECONDS: u64 = 300;

/// A validated `[round]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundConfig {
    /// Live clients needed before a round starts (`None`: `clients_per_round`).
    pub min_clients: Option<usize>,
    /// Over-selection factor, `[1, MAX_OVER_SELECTION]`.
    pub over_selection: f64,
    /// Fraction of `clients_per_round` needed to commit at the deadline, `(0, 1]`.
    pub min_report_fraction: f64,
    /// Deadline of a round's stage, milliseconds (`deadline_seconds`, rounded up).
    pub deadline_ms: u64,
    /// Attempts per round before the job fails.
    pub max_attempts: u32,
    /// How long selection waits for more check-ins, milliseconds.
    pub selection_window_ms: u64,
    /// Base `RetryAfter` delay, milliseconds.
    pub retry_after_ms: u64,
    /// How long a check-in counts as available, milliseconds (`checkin_ttl_seconds` × 1000).
    pub checkin_ttl_ms: u64,
}

impl Default for RoundConfig {
    fn default() -> Self {
        Self {
            min_clients: None,
            over_selection: DEFAULT_OVER_SELECTION,
            min_report_fraction: DEFAULT_MIN_REPORT_FRACTION,
            deadline_ms: (DEFAULT_DEADLINE_SECONDS * 1000.0) as u64,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            selection_window_ms: DEFAULT_SELECTION_WINDOW_MS,
            retry_after_ms: DEFAULT_RETRY_AFTER_MS,
            checkin_ttl_ms: DEFAULT_CHECKIN_TTL_SECONDS * 1000,
        }
    }
}

impl RoundConfig {
    /// Validates `[round]` (every key optional) for `rounds` rounds of `clients_per_round`; the
    /// combination is checked by [`RoundPolicy::validate`], its field names mapped to the keys.
    pub fn from_raw(
        r: Option<&RawRound>,
        rounds: u64,
        clients_per_round: usize,
    ) -> Result<Self, SpecError> {
        let d = Self::default();
        let Some(r) = r else {
            d.check(rounds, clients_per_round)?;
            return Ok(d);
        };
        let over_selection = r.over_selection.unwrap_or(d.over_selection);
        if !(over_selection.is_finite()
            && (1.0..=limits::MAX_OVER_SELECTION).contains(&over_selection))
        {
            return Err(SpecError::new(
                "round.over_selection",
                format!(
                    "must be in [1, {}], got {over_selection}",
                    limits::MAX_OVER_SELECTION
                ),
            ));
        }
        let max_deadline_s = (limits::MAX_DEADLINE_MS / 1000) as f64;
        let deadline_s = limits::positive(
            "round.deadline_seconds",
            r.deadline_seconds.unwrap_or(DEFAULT_DEADLINE_SECONDS),
            max_deadline_s,
        )?;
        let c = Self {
            min_clients: r
                .min_clients
                .map(|m| size("round.min_clients", m, 1, limits::MAX_CLIENTS as u64))
                .transpose()?,
            over_selection,
            min_report_fraction: fraction(
                "round.min_report_fraction",
                r.min_report_fraction.unwrap_or(d.min_report_fraction),
                false,
                true,
            )?,
            deadline_ms: (deadline_s * 1000.0).ceil() as u64,
            max_attempts: match r.max_attempts {
                None => d.max_attempts,
                Some(a) => int("round.max_attempts", a, 1, u64::from(limits::MAX_ATTEMPTS))? as u32,
            },
            selection_window_ms: match r.selection_window_ms {
                None => d.selection_window_ms,
                Some(v) => int(
                    "round.selection_window_ms",
                    v,
                    0,
                    limits::MAX_SELECTION_WINDOW_MS,
                )?,
            },
            retry_after_ms: match r.retry_after_ms {
                None => d.retry_after_ms,
                Some(v) => int("round.retry_after_ms", v, 1, limits::MAX_RETRY_AFTER_MS)?,
            },
            checkin_ttl_ms: match r.checkin_ttl_seconds {
                None => d.checkin_ttl_ms,
                Some(v) => {
                    int(
                        "round.checkin_ttl_seconds",
                        v,
                        1,
                        limits::MAX_CHECKIN_TTL_MS / 1000,
                    )? * 1000
                }
            },
        };
        c.check(rounds, clients_per_round)?;
        Ok(c)
    }

    fn check(&self, rounds: u64, clients_per_round: usize) -> Result<(), SpecError> {
        self.policy(rounds, clients_per_round, false)
            .validate()
            .map_err(|e| SpecError::new(Self::key(e.field), e.message))
    }

    /// The key of a file that a [`RoundPolicy`] field is written as.
    pub fn key(policy_field: &str) -> String {
        match policy_field {
            "rounds" | "clients_per_round" => policy_field.to_owned(),
            "round_deadline" => "round.deadline_seconds".to_owned(),
            "checkin_ttl" => "round.checkin_ttl_seconds".to_owned(),
            f => format!("round.{f}"),
        }
    }

    /// The round machine's policy for `rounds` rounds of `clients_per_round` reports, with the four
    /// secure-aggregation stages when `secure_aggregation`.
    pub fn policy(
        &self,
        rounds: u64,
        clients_per_round: usize,
        secure_aggregation: bool,
    ) -> RoundPolicy {
        let mut p = RoundPolicy::new(rounds, clients_per_round);
        p.min_clients = self.min_clients.unwrap_or(clients_per_round);
        p.over_selection = self.over_selection;
        p.stage_deadline_ms = self.deadline_ms;
        p.min_report_fraction = self.min_report_fraction;
        p.max_attempts = self.max_attempts;
        p.selection_window_ms = self.selection_window_ms;
        p.retry_after_ms = self.retry_after_ms;
        p.checkin_ttl_ms = self.checkin_ttl_ms;
        p.stages = if secure_aggregation {
            StageKind::SECURE_AGGREGATION.to_vec()
        } else {
            vec![StageKind::Train]
        };
        p
    }
}
