//! Differential privacy for Flotilla, sans-IO: a Rényi-DP accountant and privacy budgets. The
//! mechanisms of DP-FedAvg live in `flotilla_core::dp` (the round machine runs them) and are
//! re-exported here as [`mechanisms`].
//!
//! * [`RdpAccountant`] composes rounds of the Poisson-sampled Gaussian mechanism (Mironov, Talwar,
//!   Zhang 2019) with varying sampling rate `q` and noise multiplier `σ`, and converts to
//!   `(ε, δ)`. It matches Google's `dp-accounting` (`RdpAccountant` with
//!   `PoissonSampledDpEvent(q, GaussianDpEvent(σ))`): the same Rényi orders, the same integer and
//!   fractional-order computations, the same conversion. `tests/reference.rs` checks it against a
//!   table that `scripts/dp_reference.py` generates with `dp-accounting`.
//! * [`JobPrivacy`] and [`TenantLedger`] hold budgets (max ε at δ) and refuse a round that would
//!   exceed one *before* it starts, with an explanation naming the numbers.
//! * [`mechanisms`] (= `flotilla_core::dp`): L2 clipping (fixed and adaptive), central Gaussian
//!   noise and the client's distributed noise share, with randomness from an RNG the caller passes.
//!
//! No I/O, no clocks, no threads, no global randomness; every state (accountant, budgets) is
//! serde-serialisable and restores bit-exactly.
//!
//! ```
//! use flotilla_privacy::{Budget, JobPrivacy, RdpAccountant};
//!
//! let mut accountant = RdpAccountant::new();
//! accountant.compose(0.01, 1.1, 1000)?;            // 1,000 rounds, q = 1%, σ = 1.1
//! let (epsilon, order) = accountant.epsilon(1e-5)?;
//! assert!((epsilon - 1.7118).abs() < 1e-3 && order == 9.6);
//!
//! let mut job = JobPrivacy::new("job-1", Budget::new(8.0, 1e-5)?);
//! job.check_round(0.01, 1.1)?;                      // before the round starts
//! job.record_round(0.01, 1.1)?;                     // when its noised aggregate is released
//! # Ok::<(), flotilla_privacy::PrivacyError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod accountant;
mod budget;
mod error;
mod exact_f64;
mod rdp;

pub use accountant::{RdpAccountant, RoundEpsilon, Segment, SegmentReport, Spend, epsilon};
pub use budget::{Budget, JobPrivacy, LedgerCheck, RoundCheck, TenantLedger};
pub use error::{
    Param, PrivacyError, Scope, check_delta, check_noise_multiplier, check_sampling_rate,
    check_steps,
};
/// The DP-FedAvg mechanisms: one implementation, in the sans-IO core.
pub use flotilla_core::dp as mechanisms;
pub use rdp::{DEFAULT_ORDER_COUNT, DEFAULT_ORDERS};
