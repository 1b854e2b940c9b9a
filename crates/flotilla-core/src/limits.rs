//! Ceilings of every count, size, duration and privacy parameter that a job spec or a simulator
//! scenario can set, in one place for the coordinator and the simulator.
//!
//! Each ceiling fits both the machine (memory, time, integer ranges: nothing a spec asks for can
//! overflow a counter or make the server allocate more than a large model) and the math (a noise
//! multiplier of 1e300 or a δ of 1e-300 is accepted by the formulas but means nothing). The values
//! and why they were chosen are tabulated in the coordinator README ("Limits") and in
//! `docs/reference/scenario-files.md`. Checks return a [`ConfigError`] naming the key, with the rule
//! (`must be ≤ 1000000, got 9223372036854775807`).

use std::fmt::Display;

use crate::ConfigError;

/// Rounds of a job or scenario: a million rounds of even one second each is 11 days of training.
pub const MAX_ROUNDS: u64 = 1_000_000;
/// Reports per round: the coordinator holds one task and, for robust aggregators, one update per
/// report of the round in memory; 10⁵ is two orders of magnitude above production cross-device
/// cohorts (hundreds to thousands), and the simulator uses the same round machine.
pub const MAX_CLIENTS_PER_ROUND: usize = 100_000;
/// Clients of a population: the simulator's `clients`, a job's `min_clients`, FedBuff's
/// `concurrency` and `buffer_size`. The project aims at simulating a million clients; a cohort is
/// at most [`MAX_CLIENTS_PER_ROUND`] of them.
pub const MAX_CLIENTS: usize = 1_000_000;
/// Over-selection factor: select at most 10× the cohort to absorb dropouts.
pub const MAX_OVER_SELECTION: f64 = 10.0;
/// Attempts per round before a job fails.
pub const MAX_ATTEMPTS: u32 = 100;
/// Parameters of a model (2²⁸ f32 values = 1 GiB per copy; the server holds a few copies).
pub const MAX_MODEL_PARAMS: u64 = 1 << 28;
/// Values in one input sample (`product(input_shape)`).
pub const MAX_INPUT_VALUES: u64 = 1 << 24;
/// Classes (vocabulary for `char_mlp`).
pub const MAX_CLASSES: u64 = 1 << 20;
/// Hidden width of `mlp` and `char_mlp`.
pub const MAX_HIDDEN: u64 = 65_536;
/// Embedding width of `char_mlp`.
pub const MAX_EMBED: u64 = 4_096;
/// Longest stage deadline: 7 days, so a wedged round is abandoned within a week.
pub const MAX_DEADLINE_MS: u64 = 7 * 86_400_000;
/// Longest a check-in counts as available in a job spec (`checkin_ttl_seconds`): one day.
pub const MAX_CHECKIN_TTL_MS: u64 = 86_400_000;
/// The check-in TTL of a round policy whose clients never expire (the simulator's, on its virtual
/// clock): the policy's machine-level ceiling, far from overflowing `now + ttl`.
pub const CHECKIN_TTL_NEVER: u64 = u64::MAX / 4;
/// Longest selection window: one hour.
pub const MAX_SELECTION_WINDOW_MS: u64 = 3_600_000;
/// Longest base `RetryAfter`: one hour (clients wait up to twice that).
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;
/// Local epochs per round.
pub const MAX_LOCAL_EPOCHS: u64 = 1_000;
/// Minibatch size.
pub const MAX_BATCH_SIZE: u64 = 65_536;
/// Learning rates (client SGD and server optimizers): larger steps diverge on any model here.
pub const MAX_LEARNING_RATE: f64 = 100.0;
/// Clip norms and norm bounds (`train.max_grad_norm`, `strategy.clip_norm`, `strategy.max_norm`,
/// `privacy.clip_norm`, the adaptive clip's initial norm): far above any useful L2 norm of an
/// update, and low enough that `norm²` sums cannot overflow.
pub const MAX_NORM: f64 = 1e6;
/// Noise multiplier σ: at 1000 the noise is 1000× the clip norm, already drowning any signal;
/// beyond it the accountant's arithmetic loses precision.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e3;
/// Smallest δ: 10⁻¹² is below 1/population² for every population we aim at; smaller values add
/// nothing and push the RDP→(ε, δ) conversion (`log(1/δ)`) out of its tested range.
pub const MIN_DELTA: f64 = 1e-12;
/// Largest δ: a δ above 0.1 is no (ε, δ) guarantee at all (it allows leaking a tenth of the records).
pub const MAX_DELTA: f64 = 0.1;
/// Largest ε budget: already beyond ~100 the bound says nothing about privacy; up to 1000 is
/// accepted (as for σ) so that "no real budget" can still be written as a large finite number.
pub const MAX_EPSILON: f64 = 1000.0;
/// Population a DP cohort is sampled from (`privacy.population`).
pub const MAX_POPULATION: u64 = 10_000_000_000;
/// A report's claimed sample count, and so `eligibility.min_samples`.
pub const MAX_SAMPLES: u64 = 1 << 32;
/// FedProx μ, the server optimizers' τ, the adaptive clip's learning rate and count noise, the
/// anomaly filter's z bound: generous ceilings on small positive constants.
pub const MAX_SMALL_CONSTANT: f64 = 1e3;

/// `v` must be in `min..=max`; the message names `field` and the violated bound.
pub fn count<T: PartialOrd + Display + Copy>(
    field: &'static str,
    v: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if v < min {
        Err(ConfigError::new(
            field,
            format!("must be in {min}..={max}, got {v}"),
        ))
    } else if v > max {
        Err(ConfigError::new(field, format!("must be ≤ {max}, got {v}")))
    } else {
        Ok(v)
    }
}

/// `v` must be finite, `> 0` and `≤ max`.
pub fn positive(field: &'static str, v: f64, max: f64) -> Result<f64, ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        Err(ConfigError::new(
            field,
            format!("must be finite and > 0, got {v}"),
        ))
    } else if v > max {
        Err(ConfigError::new(
            field,
            format!("must be ≤ {max:e}, got {v:e}"),
        ))
    } else {
        Ok(v)
    }
}

/// `v` must be finite, `≥ 0` and `≤ max`.
pub fn non_negative(field: &'static str, v: f64, max: f64) -> Result<f64, ConfigError> {
    if !(v.is_finite() && v >= 0.0) {
        Err(ConfigError::new(
            field,
            format!("must be finite and ≥ 0, got {v}"),
        ))
    } else if v > max {
        Err(ConfigError::new(
            field,
            format!("must be ≤ {max:e}, got {v:e}"),
        ))
    } else {
        Ok(v)
    }
}

/// δ must be in `[MIN_DELTA, MAX_DELTA]`.
pub fn delta(field: &'static str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && (MIN_DELTA..=MAX_DELTA).contains(&v) {
        Ok(v)
    } else if v.is_finite() && v > MAX_DELTA {
        Err(ConfigError::new(
            field,
            format!("must be ≤ {MAX_DELTA} (a larger δ is no guarantee), got {v:e}"),
        ))
    } else {
        Err(ConfigError::new(
            field,
            format!("must be ≥ {MIN_DELTA:e} and ≤ {MAX_DELTA}, got {v:e}"),
        ))
    }
}

/// The number of parameters of a dense model `input → hidden… → classes` (weights and biases),
/// saturating; used to refuse models over [`MAX_MODEL_PARAMS`] before anything is allocated.
pub fn dense_params(widths: &[u64]) -> u64 {
    widths.windows(2).fold(0u64, |acc, w| {
        acc.saturating_add(w[0].saturating_mul(w[1]).saturating_add(w[1]))
    })
}

/// Refuses a model of `params` parameters over [`MAX_MODEL_PARAMS`], naming `field`.
pub fn model_params(field: &'static str, params: u64) -> Result<u64, ConfigError> {
    if params > MAX_MODEL_PARAMS {
        Err(ConfigError::new(
            field,
            format!(
                "the model would have {params} parameters; must be ≤ {MAX_MODEL_PARAMS} (2^28)"
            ),
        ))
    } else {
        Ok(params)
    }
}

/// The product of `dims`, saturating (an input shape from a spec can overflow `usize`).
pub fn product(dims: &[usize]) -> u64 {
    dims.iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_name_the_field_and_the_bound() {
        assert_eq!(count("rounds", 5u64, 1, MAX_ROUNDS), Ok(5));
        let e = count("rounds", i64::MAX as u64, 1, MAX_ROUNDS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rounds: must be ≤ 1000000, got 9223372036854775807"
        );
        assert_eq!(
            count("rounds", 0u64, 1, MAX_ROUNDS)
                .unwrap_err()
                .to_string(),
            "rounds: must be in 1..=1000000, got 0"
        );
    }

    #[test]
    fn reals_refuse_non_finite_and_huge() {
        assert!(
            positive("x", 1e300, MAX_NOISE_MULTIPLIER)
                .unwrap_err()
                .message
                .contains("≤ 1e3")
        );
        assert!(positive("x", f64::NAN, 1.0).is_err());
        assert!(positive("x", 0.0, 1.0).is_err());
        assert_eq!(positive("x", 1.0, 1.0), Ok(1.0));
        assert!(non_negative("x", -1.0, 1.0).is_err());
        assert_eq!(non_negative("x", 0.0, 1.0), Ok(0.0));
    }

    #[test]
    fn delta_is_between_1e_12_and_a_tenth() {
        assert!(
            delta("privacy.delta", 1e-300)
                .unwrap_err()
                .to_string()
                .starts_with("privacy.delta: must be ≥ 1e-12")
        );
        assert!(
            delta("privacy.delta", 0.5)
                .unwrap_err()
                .to_string()
                .contains("≤ 0.1")
        );
        assert!(delta("privacy.delta", f64::NAN).is_err());
        assert_eq!(delta("privacy.delta", 1e-5), Ok(1e-5));
        assert_eq!(delta("privacy.delta", MIN_DELTA), Ok(MIN_DELTA));
    }

    #[test]
    fn model_size_saturates_and_is_capped() {
        assert_eq!(dense_params(&[64, 10]), 650);
        assert_eq!(dense_params(&[u64::MAX, 2]), u64::MAX);
        assert_eq!(product(&[usize::MAX, usize::MAX]), u64::MAX);
        assert!(
            model_params("model.hidden", dense_params(&[1 << 24, 65_536, 10]))
                .unwrap_err()
                .message
                .contains("2^28")
        );
        assert!(model_params("model.hidden", 1 << 28).is_ok());
    }
}
