//! `[train]`: local training on every selected client.

use flotilla_core::limits;

use crate::SpecError;
use crate::checks::{int, need};
use crate::raw::RawTrain;

/// Local epochs when `[train] local_epochs` is absent.
pub const DEFAULT_LOCAL_EPOCHS: u32 = 1;
/// Minibatch size when `[train] batch_size` is absent.
pub const DEFAULT_BATCH_SIZE: u32 = 32;

/// A validated `[train]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Local epochs per round, `1..=MAX_LOCAL_EPOCHS` (default 1).
    pub local_epochs: u32,
    /// Minibatch size, `1..=MAX_BATCH_SIZE` (default 32).
    pub batch_size: u32,
    /// SGD learning rate, in `(0, MAX_LEARNING_RATE]` (required).
    pub learning_rate: f64,
    /// Clip every local step's loss gradient to this global L2 norm, in `(0, MAX_NORM]`
    /// (`None` = no clipping).
    pub max_grad_norm: Option<f64>,
}

impl TrainConfig {
    /// Validates `[train]` (the table is required: the learning rate has no default).
    pub fn from_raw(t: Option<&RawTrain>) -> Result<Self, SpecError> {
        let t = need(t, "train")?;
        let local_epochs = match t.local_epochs {
            None => DEFAULT_LOCAL_EPOCHS,
            Some(v) => int("train.local_epochs", v, 1, limits::MAX_LOCAL_EPOCHS)? as u32,
        };
        let batch_size = match t.batch_size {
            None => DEFAULT_BATCH_SIZE,
            Some(v) => int("train.batch_size", v, 1, limits::MAX_BATCH_SIZE)? as u32,
        };
        let learning_rate = limits::positive(
            "train.learning_rate",
            need(t.learning_rate, "train.learning_rate")?,
            limits::MAX_LEARNING_RATE,
        )?;
        let max_grad_norm = t
            .max_grad_norm
            .map(|m| limits::positive("train.max_grad_norm", m, limits::MAX_NORM))
            .transpose()?;
        Ok(Self {
            local_epochs,
            batch_size,
            learning_rate,
            max_grad_norm,
        })
    }
}
