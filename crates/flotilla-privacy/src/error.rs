//! Errors and parameter validation.

use std::fmt;

/// A parameter this crate checks, with its name and valid range (used in error messages, and by
/// callers that map parameters to their own names such as CLI flags or TOML keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Param {
    /// Poisson sampling rate `q`: in (0, 1].
    SamplingRate,
    /// Noise multiplier `σ` (noise standard deviation over the L2 clip norm): finite, > 0.
    NoiseMultiplier,
    /// `δ` of an (ε, δ) guarantee: in (0, 1).
    Delta,
    /// Number of composed steps (rounds): ≥ 1.
    Steps,
    /// Maximum ε of a budget: finite, > 0.
    Epsilon,
}

impl Param {
    /// The parameter's name as used in messages (`sampling rate q`, …).
    pub fn name(self) -> &'static str {
        match self {
            Param::SamplingRate => "sampling rate q",
            Param::NoiseMultiplier => "noise multiplier sigma",
            Param::Delta => "delta",
            Param::Steps => "steps",
            Param::Epsilon => "epsilon budget",
        }
    }

    /// The valid range as a phrase (`in (0, 1]`, `finite and > 0`, `at least 1`, …).
    pub fn valid_range(self) -> &'static str {
        match self {
            Param::SamplingRate => "in (0, 1]",
            Param::NoiseMultiplier | Param::Epsilon => "finite and > 0",
            Param::Delta => "in (0, 1)",
            Param::Steps => "at least 1",
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// A parameter is outside its valid range.
    #[error("{param} must be {range}, got {value}", range = .param.valid_range())]
    InvalidParameter {
        /// Which parameter.
        param: Param,
        /// The offending value, as given.
        value: f64,
    },
    /// A round was refused because it would exceed a privacy budget. The message names the
    /// round's parameters, the ε before and after it, δ and the budget.
    #[error(
        "round {round} (sampling rate q = {q}, noise multiplier sigma = {sigma}) refused: it would raise the {scope} epsilon from {epsilon_before:.4} to {epsilon_after:.4} at delta = {delta:e}, over its budget of epsilon <= {max_epsilon} ({rounds_spent} rounds spent)"
    )]
    BudgetExceeded {
        /// Whose budget: `job "…"` or `tenant`.
        scope: Scope,
        /// The 1-based number the refused round would have had in that scope.
        round: u64,
        /// The round's sampling rate.
        q: f64,
        /// The round's noise multiplier.
        sigma: f64,
        /// ε spent before the round.
        epsilon_before: f64,
        /// ε the round would bring the scope to.
        epsilon_after: f64,
        /// The budget's δ.
        delta: f64,
        /// The budget's maximum ε.
        max_epsilon: f64,
        /// Rounds already accounted in that scope.
        rounds_spent: u64,
    },
    /// A job id is unknown to a tenant ledger.
    #[error("job {0:?} is not registered in the tenant ledger")]
    UnknownJob(String),
    /// A job id is registered twice in a tenant ledger.
    #[error("job {0:?} is already registered in the tenant ledger")]
    DuplicateJob(String),
    /// The step counter would overflow `u64`.
    #[error("step count overflows: more than 2^64 - 1 steps")]
    StepOverflow,
    /// A serialised accountant holds an invalid or unreadable entry.
    #[error("invalid accountant state: {0}")]
    InvalidState(String),
}

/// Whose budget a [`PrivacyError::BudgetExceeded`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A job's own budget.
    Job(String),
    /// The tenant's ledger, summed over its jobs.
    Tenant,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Job(id) => write!(f, "job {id:?}'s"),
            Scope::Tenant => f.write_str("tenant's"),
        }
    }
}

fn invalid(param: Param, value: f64) -> PrivacyError {
    PrivacyError::InvalidParameter { param, value }
}

/// Checks a sampling rate: `q ∈ (0, 1]`.
pub fn check_sampling_rate(q: f64) -> Result<f64, PrivacyError> {
    if q > 0.0 && q <= 1.0 {
        Ok(q)
    } else {
        Err(invalid(Param::SamplingRate, q))
    }
}

/// Checks a noise multiplier: finite and `σ > 0`.
pub fn check_noise_multiplier(sigma: f64) -> Result<f64, PrivacyError> {
    positive(Param::NoiseMultiplier, sigma)
}

/// Checks `δ ∈ (0, 1)`.
pub fn check_delta(delta: f64) -> Result<f64, PrivacyError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(delta)
    } else {
        Err(invalid(Param::Delta, delta))
    }
}

/// Checks a step count: `≥ 1`.
pub fn check_steps(steps: u64) -> Result<u64, PrivacyError> {
    if steps >= 1 {
        Ok(steps)
    } else {
        Err(invalid(Param::Steps, steps as f64))
    }
}

/// Finite and `> 0`.
pub(crate) fn positive(param: Param, value: f64) -> Result<f64, PrivacyError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(invalid(param, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_parameter_and_range() {
        let e = check_sampling_rate(1.5).unwrap_err();
        assert_eq!(e.to_string(), "sampling rate q must be in (0, 1], got 1.5");
        let e = check_delta(0.0).unwrap_err();
        assert_eq!(e.to_string(), "delta must be in (0, 1), got 0");
        let e = check_noise_multiplier(f64::NAN).unwrap_err();
        assert_eq!(
            e.to_string(),
            "noise multiplier sigma must be finite and > 0, got NaN"
        );
        assert_eq!(
            check_steps(0).unwrap_err().to_string(),
            "steps must be at least 1, got 0"
        );
        assert!(check_sampling_rate(1.0).is_ok() && check_sampling_rate(f64::MIN_POSITIVE).is_ok());
        assert!(check_sampling_rate(f64::NAN).is_err() && check_delta(1.0).is_err());
    }
}
