//! Typed errors of the core crate.

use thiserror::Error;

/// Why an update could not be folded into an aggregate.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AggregateError {
    /// The update has the wrong number of values for the model's layout.
    #[error("update has {actual} values, the model's layout has {expected}")]
    Length {
        /// Values the layout holds.
        expected: usize,
        /// Values the update holds.
        actual: usize,
    },
    /// The update holds NaN or ±infinity.
    #[error("update value at index {index} is not finite")]
    NonFinite {
        /// Index of the first offending value.
        index: usize,
    },
    /// The weight (sample count) is zero, negative or not finite.
    #[error("update weight {0} must be finite and > 0")]
    Weight(f64),
    /// Nothing was folded in, so there is no mean.
    #[error("no updates were aggregated")]
    Empty,
    /// An update in a batch has a different length from the batch's first update.
    #[error("update {update} has {actual} values, update 0 has {expected}")]
    MismatchedLength {
        /// Position of the offending update in the batch.
        update: usize,
        /// Values the first update holds.
        expected: usize,
        /// Values the offending update holds.
        actual: usize,
    },
    /// An update in a batch holds NaN or ±infinity.
    #[error("update {update} value at index {index} is not finite")]
    UpdateNonFinite {
        /// Position of the offending update in the batch.
        update: usize,
        /// Index of its first non-finite value.
        index: usize,
    },
    /// Too few updates for the aggregator and its parameters (Krum needs n ≥ 2f + 3).
    #[error("{aggregator} needs at least {needed} updates, got {actual}")]
    TooFewUpdates {
        /// The aggregator, e.g. `"krum (f = 2)"`.
        aggregator: String,
        /// Minimum number of updates.
        needed: usize,
        /// Updates given.
        actual: usize,
    },
    /// A parameter of an aggregator is out of its valid range.
    #[error("{name} = {value} is out of range: must be {valid}")]
    Parameter {
        /// The parameter, e.g. `"beta"`.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The valid range, e.g. `"0 <= beta < 0.5"`.
        valid: String,
    },
}

/// A job configuration that cannot run; the message names the field and its valid range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The offending field, as it is spelled in job and scenario files.
    pub field: &'static str,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl ConfigError {
    /// A configuration error for `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
