#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! The training vocabulary of Flotilla, free of any tensor framework: the [`Trainer`] trait, the
//! samples it trains on, its configuration and reports, and the built-in model families
//! ([`ModelKind`], [`ModelSpec`]).
//!
//! Services (the coordinator) and protocol code depend on this crate only; the burn models that
//! implement [`Trainer`] live in `flotilla-ml`, which only the binary and the simulator link.

use std::fmt;
use std::str::FromStr;

pub use flotilla_core::{ParamLayout, TensorSpec};

/// Errors reported by trainers and by `flotilla_ml::build`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TrainerError {
    /// A flat parameter vector does not have the length of the model's layout.
    #[error("parameter vector has {got} values but the layout needs {expected}")]
    ParamLength {
        /// Length required by the layout.
        expected: usize,
        /// Length that was supplied.
        got: usize,
    },
    /// A flat parameter vector contains NaN or an infinity.
    #[error("parameter {index} (in tensor `{tensor}`) is not finite: {value}")]
    NonFiniteParam {
        /// Position in the flat vector.
        index: usize,
        /// Name of the tensor holding that position.
        tensor: String,
        /// The offending value.
        value: f32,
    },
    /// The samples view is inconsistent or does not fit the model.
    #[error("invalid samples: {0}")]
    InvalidData(String),
    /// The samples view selects no samples.
    #[error("no samples selected (indices is empty)")]
    EmptyData,
    /// A [`FitConfig`] value is out of range.
    #[error("invalid fit configuration: {0}")]
    InvalidConfig(String),
    /// A [`ModelSpec`] describes a model that cannot be built.
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// A model name did not match any known [`ModelKind`].
    #[error("unknown model `{name}`; valid models are: {valid}")]
    UnknownModel {
        /// The name that was given.
        name: String,
        /// Comma-separated list of valid names.
        valid: String,
    },
    /// Training produced a non-finite loss; the parameters are restored to their values before
    /// the call to [`Trainer::fit`].
    #[error(
        "training diverged: non-finite loss at epoch {epoch}, step {step} (try a smaller learning rate)"
    )]
    Diverged {
        /// Zero-based epoch in which the loss became non-finite.
        epoch: u32,
        /// Zero-based global step at which the loss became non-finite.
        step: u64,
    },
    /// The tensor backend failed (should not happen; reported instead of panicking).
    #[error("tensor backend error: {0}")]
    Backend(String),
}

/// A view of some samples of a dataset: the rows of `features`/`labels` at `indices`.
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a> {
    /// All feature rows, `n_total * feature_len` values, row-major.
    pub features: &'a [f32],
    /// Number of values per feature row.
    pub feature_len: usize,
    /// One label per row (`n_total` values).
    pub labels: &'a [u32],
    /// The rows that make up this view, in order.
    pub indices: &'a [u32],
}

impl Samples<'_> {
    /// Number of samples in the view.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the view selects no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Hyper-parameters of one call to [`Trainer::fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Number of passes over the local samples (at least 1).
    pub epochs: u32,
    /// Minibatch size (at least 1); the last, partial batch of an epoch is included.
    pub batch_size: usize,
    /// SGD learning rate (finite, > 0).
    pub learning_rate: f32,
    /// Seed of the per-epoch shuffles (ChaCha8).
    pub seed: u64,
    /// Clip the loss gradient of every SGD step to this global L2 norm (over all parameter tensors)
    /// before the FedProx/SCAFFOLD terms are added; `None` = no clipping. Keeps one unlucky step on a
    /// skewed client from blowing up local training (finite, > 0).
    pub max_grad_norm: Option<f32>,
}

/// Extra terms of the local objective that some strategies ask for.
///
/// Both are applied as gradient terms inside each SGD step, so they cost one extra tensor
/// operation per parameter tensor per step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LocalObjective<'a> {
    /// FedProx (Li et al. 2020): adds `μ/2·‖w − w₀‖²`, where `w₀` are the parameters at the start of
    /// the call, i.e. the gradient gains `μ·(w − w₀)`. 0 disables it.
    pub proximal_mu: f32,
    /// SCAFFOLD (Karimireddy et al. 2020): a constant `c − cᵢ` added to every gradient, flat, in
    /// layout order.
    pub gradient_correction: Option<&'a [f32]>,
}

/// What a call to [`Trainer::fit`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitReport {
    /// Number of samples in the training view.
    pub num_samples: usize,
    /// Mean per-sample training loss over the last epoch (measured before each step's update).
    pub mean_loss: f64,
    /// Number of SGD steps taken.
    pub steps: u64,
}

/// Result of [`Trainer::evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    /// Number of samples evaluated.
    pub num_samples: usize,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Fraction of samples whose arg-max prediction equals the label.
    pub accuracy: f64,
}

/// A model that can be trained locally and exchanged as a flat parameter vector.
///
/// Implementations are deterministic: the same parameters, data and [`FitConfig`] give
/// bit-identical parameters after [`fit`](Trainer::fit), whatever the thread or process.
pub trait Trainer: Send {
    /// The named, stable layout of the flat parameter vector.
    fn layout(&self) -> &ParamLayout;

    /// The current parameters, flat, in layout order.
    fn parameters(&self) -> Vec<f32>;

    /// Replaces all parameters; the vector must have the layout's length and be finite.
    fn set_parameters(&mut self, params: &[f32]) -> Result<(), TrainerError>;

    /// Plain minibatch SGD on the mean cross-entropy: `cfg.epochs` passes, each over a fresh
    /// shuffle of `data` drawn from `cfg.seed`, last partial batch included.
    fn fit(&mut self, data: &Samples<'_>, cfg: &FitConfig) -> Result<FitReport, TrainerError> {
        self.fit_with(data, cfg, &LocalObjective::default())
    }

    /// As [`fit`](Trainer::fit), with the extra objective terms of `objective`.
    fn fit_with(
        &mut self,
        data: &Samples<'_>,
        cfg: &FitConfig,
        objective: &LocalObjective<'_>,
    ) -> Result<FitReport, TrainerError>;

    /// Mean loss and accuracy of the current parameters on `data`.
    fn evaluate(&mut self, data: &Samples<'_>) -> Result<EvalReport, TrainerError>;

    /// Mean loss and accuracy of `params` (validated like [`set_parameters`](Trainer::set_parameters))
    /// on `data`, for evaluation-only users such as the coordinator. Whether the trainer's own
    /// parameters change is unspecified. The default installs `params`, then evaluates; the burn
    /// trainers evaluate them without creating trainable (autodiff) tensors, whose bookkeeping burn
    /// frees only in a backward pass — so a process that only evaluates does not grow with every call.
    fn evaluate_params(
        &mut self,
        params: &[f32],
        data: &Samples<'_>,
    ) -> Result<EvalReport, TrainerError> {
        self.set_parameters(params)?;
        self.evaluate(data)
    }
}

/// The model families this crate can build.
///
/// [`FromStr`] accepts `"logreg"`, `"mlp"`, `"cnn"` and `"char_mlp"`; the sizes of `mlp` and
/// `char_mlp` parsed that way are the defaults ([`ModelKind::DEFAULT_MLP_HIDDEN`],
/// [`ModelKind::DEFAULT_CHAR_EMBED`], [`ModelKind::DEFAULT_CHAR_HIDDEN`]) and callers may
/// overwrite them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// Multinomial logistic regression: one linear layer, `input_len -> num_classes`.
    LogReg,
    /// One hidden ReLU layer: `input_len -> hidden -> num_classes`.
    Mlp {
        /// Width of the hidden layer.
        hidden: usize,
    },
    /// A small CNN for `[1, 28, 28]` inputs (see `flotilla_ml::build` for the architecture).
    Cnn,
    /// Next-character model: features are character ids (as `f32`) of a fixed window;
    /// `embedding(num_classes, embed) -> flatten -> hidden (ReLU) -> num_classes`.
    CharMlp {
        /// Embedding width per character.
        embed: usize,
        /// Width of the hidden layer.
        hidden: usize,
    },
}

impl ModelKind {
    /// All names accepted by [`FromStr`], in a stable order.
    pub const NAMES: [&'static str; 4] = ["logreg", "mlp", "cnn", "char_mlp"];
    /// Hidden width used when `"mlp"` is parsed.
    pub const DEFAULT_MLP_HIDDEN: usize = 64;
    /// Embedding width used when `"char_mlp"` is parsed.
    pub const DEFAULT_CHAR_EMBED: usize = 8;
    /// Hidden width used when `"char_mlp"` is parsed.
    pub const DEFAULT_CHAR_HIDDEN: usize = 256;

    /// The name of this family, as accepted by [`FromStr`].
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::LogReg => "logreg",
            ModelKind::Mlp { .. } => "mlp",
            ModelKind::Cnn => "cnn",
            ModelKind::CharMlp { .. } => "char_mlp",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = TrainerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "logreg" => Ok(ModelKind::LogReg),
            "mlp" => Ok(ModelKind::Mlp {
                hidden: Self::DEFAULT_MLP_HIDDEN,
            }),
            "cnn" => Ok(ModelKind::Cnn),
            "char_mlp" => Ok(ModelKind::CharMlp {
                embed: Self::DEFAULT_CHAR_EMBED,
                hidden: Self::DEFAULT_CHAR_HIDDEN,
            }),
            _ => Err(TrainerError::UnknownModel {
                name: s.to_string(),
                valid: Self::NAMES.join(", "),
            }),
        }
    }
}

/// What to build: a model family, the shape of one input sample and the number of classes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelSpec {
    /// The model family and its sizes.
    pub kind: ModelKind,
    /// Shape of one sample's features; their product must equal [`Samples::feature_len`].
    /// `[1, 28, 28]` for [`ModelKind::Cnn`]; `[window]` for [`ModelKind::CharMlp`].
    pub input_shape: Vec<usize>,
    /// Number of classes (for [`ModelKind::CharMlp`] also the vocabulary size).
    pub num_classes: usize,
}

impl ModelSpec {
    /// Parameters the model `flotilla_ml::build` makes would have (weights and biases, by the layouts listed
    /// there), saturating at `u64::MAX`; computed without allocating, so that a spec can be refused
    /// by size (`flotilla_core::limits::MAX_MODEL_PARAMS`) before anything is built.
    pub fn param_count(&self) -> u64 {
        let input = self
            .input_shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
        let classes = self.num_classes as u64;
        // in → out: weights and biases.
        let dense = |i: u64, o: u64| i.saturating_mul(o).saturating_add(o);
        match self.kind {
            ModelKind::LogReg => dense(input, classes),
            ModelKind::Mlp { hidden } => {
                dense(input, hidden as u64).saturating_add(dense(hidden as u64, classes))
            }
            // conv1 8·1·3·3 + 8, conv2 16·8·3·3 + 16, then 784 → 64 → C.
            ModelKind::Cnn => (80 + 1_168 + dense(784, 64)).saturating_add(dense(64, classes)),
            ModelKind::CharMlp { embed, hidden } => classes
                .saturating_mul(embed as u64)
                .saturating_add(dense(input.saturating_mul(embed as u64), hidden as u64))
                .saturating_add(dense(hidden as u64, classes)),
        }
    }
}
