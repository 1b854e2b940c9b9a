//! Differential privacy for Flotilla, sans-IO: a Rényi-DP accountant, privacy budgets, and the
//! mechanisms of DP-FedAvg.
//!
//! * [`RdpAccountant`] composes rounds of the Poisson-sampled Gaussian mechanism (Mironov, Talwar,
//!   Zhang 2019) with varying sampling rate `q` and noise multiplier `σ`, and converts to
//!   `(ε, δ)`. It matches Google's `dp-accounting` (`RdpAccountant` with
//!   `PoissonSampledDpEvent(q, GaussianDpEvent(σ))`): the same Rényi orders, the same integer and
//!   fractional-order computations, the same conversion. `tests/reference.rs` checks it against a
//!   table that `scripts/dp_reference.py` generates with `dp-accounting`.
//! * [`JobPrivacy`] and [`TenantLedger`] hold budgets (max ε at δ) and refuse a round that would
//!   exceed one *before* it starts, with an explanation naming the numbers.
//! * [`mechanisms`]: L2 clipping (fixed and adaptive), central Gaussian noise and distributed
//!   noise shares, over `f32`/`f64` slices, with randomness from an RNG the caller passes in.
//!
//! No I/O, no clocks, no threads, no global randomness; every state (accountant, budgets, adaptive
//! clip) is serde-serialisable and restores bit-exactly.
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
pub mod mechanisms;
mod rdp;

pub use accountant::{RdpAccountant, RoundEpsilon, Segment, SegmentReport, Spend, epsilon};
pub use budget::{Budget, JobPrivacy, LedgerCheck, RoundCheck, TenantLedger};
pub use error::{
    Param, PrivacyError, Scope, check_delta, check_noise_multiplier, check_sampling_rate,
    check_steps,
};
pub use mechanisms::{AdaptiveClipping, ClipOutcome, DistributedNoise, add_central_noise, clip_l2};
pub use rdp::{DEFAULT_ORDER_COUNT, DEFAULT_ORDERS};
