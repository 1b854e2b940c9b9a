//! Robust aggregation: coordinate-wise median and trimmed mean, Krum / Multi-Krum, norm bounding and an
//! anomaly filter. Inputs are client deltas (new − global) of equal length.
//!
//! The rules live in submodules: coordinate-wise median and trimmed mean in `coordinate`, Krum in
//! `krum`, the anomaly filter in `anomaly`; norm bounding is [`clip_to_norm`] (from [`crate::norms`]).

use crate::error::AggregateError;
use crate::norms::first_non_finite;

mod anomaly;
mod coordinate;
mod krum;
#[cfg(test)]
mod tests;

pub use crate::norms::{clip_to_norm, l2_norm};
pub use anomaly::{AnomalyConfig, Verdict, anomaly_filter};
pub use coordinate::{coordinate_median, trimmed_mean};
pub use krum::{KrumSelection, krum};

/// Values in a batch (saturating), to decide whether to go parallel.
fn work(updates: &[&[f32]]) -> usize {
    updates
        .iter()
        .fold(0usize, |a, u| a.saturating_add(u.len()))
}

/// Checks lengths only: at least one update, all as long as the first. Returns the common length.
fn validate_lengths(updates: &[&[f32]]) -> Result<usize, AggregateError> {
    let first = updates.first().ok_or(AggregateError::Empty)?;
    let len = first.len();
    match updates.iter().position(|x| x.len() != len) {
        Some(u) => Err(AggregateError::MismatchedLength {
            update: u,
            expected: len,
            actual: updates[u].len(),
        }),
        None => Ok(len),
    }
}

/// Checks a batch: at least one update, equal lengths, finite values. Returns the common length.
///
/// The error names the first offending update (and its first offending index).
fn validate(updates: &[&[f32]]) -> Result<usize, AggregateError> {
    let len = validate_lengths(updates)?;
    for (u, x) in updates.iter().enumerate() {
        if let Some(index) = first_non_finite(x) {
            return Err(AggregateError::UpdateNonFinite { update: u, index });
        }
    }
    Ok(len)
}
