#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Local training for Flotilla: small models behind a backend-free [`Trainer`] trait.
//!
//! A [`Trainer`] owns one model and exposes it as a flat `f32` vector described by a
//! [`ParamLayout`]. The simulator (and later a networked client) only ever sees this crate's
//! types: the tensor backend (burn with its pure-Rust CPU `flex` backend) stays an implementation
//! detail.
//!
//! ```
//! use flotilla_ml::{build, FitConfig, ModelKind, ModelSpec, Samples};
//!
//! let spec = ModelSpec { kind: ModelKind::LogReg, input_shape: vec![2], num_classes: 2 };
//! let mut trainer = build(&spec, 7).unwrap();
//! let features = [0.0, 1.0, 1.0, 0.0, 0.0, 0.9, 0.9, 0.0];
//! let labels = [0, 1, 0, 1];
//! let indices = [0, 1, 2, 3];
//! let data = Samples { features: &features, feature_len: 2, labels: &labels, indices: &indices };
//! let cfg = FitConfig { epochs: 20, batch_size: 2, learning_rate: 0.5, seed: 1, max_grad_norm: None };
//! let report = trainer.fit(&data, &cfg).unwrap();
//! assert_eq!(report.steps, 40);
//! assert!(trainer.evaluate(&data).unwrap().accuracy > 0.99);
//! ```

mod model;
mod rng;

/// The burn-free training vocabulary, re-exported so that `flotilla_ml::Trainer` and friends keep
/// working; new code that needs no burn model depends on `flotilla-model` directly.
pub use flotilla_model::*;

/// Builds a trainer whose initial parameters are a deterministic function of `spec` and `seed`.
///
/// Architectures and layouts (weights are `[in, out]` for linear layers and
/// `[out_channels, in_channels, kh, kw]` for convolutions):
///
/// * `logreg`: `linear.weight [in, C]`, `linear.bias [C]`.
/// * `mlp`: `fc1.weight [in, H]`, `fc1.bias [H]`, `fc2.weight [H, C]`, `fc2.bias [C]`.
/// * `cnn` (input `[1, 28, 28]`): conv 3×3 pad 1 (1→8), ReLU, max-pool 2, conv 3×3 pad 1
///   (8→16), ReLU, max-pool 2, flatten (channel-major, 16·7·7 = 784), linear 784→64, ReLU,
///   linear 64→C: `conv1.weight [8,1,3,3]`, `conv1.bias [8]`, `conv2.weight [16,8,3,3]`,
///   `conv2.bias [16]`, `fc1.weight [784,64]`, `fc1.bias [64]`, `fc2.weight [64,C]`, `fc2.bias [C]`
///   (52 138 parameters for C = 10).
/// * `char_mlp` (input `[W]`): `embedding.weight [C, E]`, `fc1.weight [W*E, H]`, `fc1.bias [H]`,
///   `fc2.weight [H, C]`, `fc2.bias [C]`.
///
/// Invalid combinations (empty input, zero classes or widths, `cnn` on anything but
/// `[1, 28, 28]`, …) are reported as [`TrainerError::InvalidSpec`].
pub fn build(spec: &ModelSpec, seed: u64) -> Result<Box<dyn Trainer>, TrainerError> {
    let trainer = model::BurnTrainer::new(spec, seed)?;
    Ok(Box::new(trainer))
}
