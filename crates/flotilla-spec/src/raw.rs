//! The raw form of a job or scenario file: what serde reads, every key of both files in one place.
//!
//! One type holds the job part *and* the simulation-only sections, so that
//! `flotilla_core::config_toml` learns every key of every table from it (its "did you mean" points
//! a misplaced key at its table), and so that a key can never mean one thing in a scenario and
//! another in a job. The simulation-only sections are read here but validated by the simulator
//! (`flotilla-sim`); the coordinator refuses them. Keys that moved are read as opaque values only to
//! answer with their new place ([`crate::moved`]).
//!
//! Counts are signed so that a negative value gets our message (`must be ≥ 1, got -1`) rather
//! than serde's.

use flotilla_core::dp::PrivacyConfig;
use flotilla_core::strategy::StrategyConfig;
use serde::Deserialize;

/// A whole file: job part, simulation-only sections and moved keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocument {
    /// `name`.
    pub name: Option<String>,
    /// `tenant` (coordinator; the simulator has one tenant).
    pub tenant: Option<String>,
    /// `seed`.
    pub seed: Option<i64>,
    /// `rounds`.
    pub rounds: Option<i64>,
    /// `clients_per_round`.
    pub clients_per_round: Option<i64>,
    /// `[model]`.
    pub model: Option<RawModel>,
    /// `[train]`.
    pub train: Option<RawTrain>,
    /// `[round]`.
    pub round: Option<RawRound>,
    /// `[strategy]`.
    pub strategy: Option<StrategyConfig>,
    /// `[secagg]`.
    pub secagg: Option<RawSecAgg>,
    /// `[privacy]`.
    pub privacy: Option<PrivacyConfig>,
    /// `[compression]`.
    pub compression: Option<RawCompression>,
    /// `[eligibility]`.
    pub eligibility: Option<RawEligibility>,
    /// `[evaluation]`.
    pub evaluation: Option<RawEvaluation>,
    /// `[registry]` (coordinator; the simulator ignores it).
    pub registry: Option<RawRegistry>,
    /// `[release]` (coordinator; the simulator ignores it).
    pub release: Option<RawRelease>,

    /// Simulation only: `clients`.
    pub clients: Option<i64>,
    /// Simulation only: `eval_every`.
    pub eval_every: Option<i64>,
    /// Simulation only: `[data]`.
    pub data: Option<RawData>,
    /// Simulation only: `[partition]`.
    pub partition: Option<RawPartition>,
    /// Simulation only: `[simulation]`.
    pub simulation: Option<RawSimulation>,
    /// Simulation only: `[attack]`.
    pub attack: Option<RawAttack>,

    // Moved to `[round]`: read only to say so.
    #[doc(hidden)]
    pub over_selection: Option<toml::Value>,
    #[doc(hidden)]
    pub min_clients: Option<toml::Value>,
    #[doc(hidden)]
    pub round_deadline_seconds: Option<toml::Value>,
    #[doc(hidden)]
    pub min_report_fraction: Option<toml::Value>,
    #[doc(hidden)]
    pub max_attempts: Option<toml::Value>,
    #[doc(hidden)]
    pub selection_window_ms: Option<toml::Value>,
    #[doc(hidden)]
    pub retry_after_ms: Option<toml::Value>,
    #[doc(hidden)]
    pub checkin_ttl_seconds: Option<toml::Value>,
}

/// `[model]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// A model given as a safetensors file of named `f32` tensors (its initial parameters) instead
    /// of a built-in `kind`; a path relative to the job file (the server only records it).
    pub initial: Option<String>,
    /// `logreg`, `mlp`, `cnn` or `char_mlp`.
    pub kind: Option<String>,
    /// A built-in dataset: the input shape and classes come from it (and the simulator trains on it).
    pub dataset: Option<String>,
    /// Shape of one sample, without `dataset`.
    pub input_shape: Option<Vec<i64>>,
    /// Number of classes, without `dataset`.
    pub num_classes: Option<i64>,
    /// Hidden width (`mlp`, `char_mlp`).
    pub hidden: Option<i64>,
    /// Embedding width (`char_mlp`).
    pub embed: Option<i64>,
}

/// `[train]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrain {
    /// Local epochs per round.
    pub local_epochs: Option<i64>,
    /// Minibatch size.
    pub batch_size: Option<i64>,
    /// SGD learning rate.
    pub learning_rate: Option<f64>,
    /// Per-step gradient clipping.
    pub max_grad_norm: Option<f64>,
}

/// `[round]`: selection and deadline policy of the round machine.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRound {
    /// Live clients needed before a round starts.
    pub min_clients: Option<i64>,
    /// Over-selection factor.
    pub over_selection: Option<f64>,
    /// Fraction of `clients_per_round` needed at the deadline.
    pub min_report_fraction: Option<f64>,
    /// Deadline of a round's stage, seconds.
    pub deadline_seconds: Option<f64>,
    /// Attempts per round before the job fails.
    pub max_attempts: Option<i64>,
    /// Selection window, milliseconds.
    pub selection_window_ms: Option<i64>,
    /// Base `RetryAfter` delay, milliseconds.
    pub retry_after_ms: Option<i64>,
    /// How long a check-in counts as available, seconds.
    pub checkin_ttl_seconds: Option<i64>,

    // Moved to `[simulation]`.
    #[doc(hidden)]
    pub dropout: Option<toml::Value>,
    #[doc(hidden)]
    pub train_ticks_min: Option<toml::Value>,
    #[doc(hidden)]
    pub train_ticks_max: Option<toml::Value>,
}

/// `[secagg]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecAgg {
    /// Per-coordinate clip range R.
    pub clip_range: Option<f64>,
    /// Threshold t.
    pub threshold: Option<i64>,
    /// Graph degree k.
    pub neighbours: Option<i64>,
    // Moved to `[simulation]`.
    #[doc(hidden)]
    pub unmasking_dropout: Option<toml::Value>,
}

/// `[compression]`: how clients compress their updates (see `flotilla_compress`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    /// `none`, `quantize` or `topk`.
    pub kind: Option<String>,
    /// `quantize`: bits per coordinate, 8 or 4.
    pub bits: Option<i64>,
    /// `quantize`: coordinates per scale block.
    pub block: Option<i64>,
    /// `topk`: share of coordinates sent, in (0, 1].
    pub fraction: Option<f64>,
}

/// `[eligibility]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEligibility {
    /// Smallest `num_samples` a client must announce to be given work.
    pub min_samples: Option<i64>,
}

/// `[evaluation]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvaluation {
    /// Dataset whose test split evaluates every committed model.
    pub dataset: Option<String>,
    /// Federated evaluation of the committed model every K rounds (and after the last).
    pub federated_every: Option<i64>,
    /// Clients asked for each federated evaluation (default `clients_per_round`).
    pub federated_clients: Option<i64>,
}

/// `[registry]`: register the job's final model under a name when it completes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// The model's name in the registry.
    pub name: Option<String>,
}

/// `[release]`: the release gate set on the model when the job registers it (see
/// `flotilla_registry::Gate`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelease {
    /// Minimum overall accuracy of the version's latest federated evaluation, `0..=1`.
    pub min_accuracy: Option<f64>,
    /// Most the overall accuracy may fall below production's, in points.
    pub max_regression_points: Option<f64>,
    /// Most any cohort's accuracy may fall below production's, in points.
    pub max_cohort_regression_points: Option<f64>,
    /// Most ε the job may have spent.
    pub max_epsilon: Option<f64>,
    /// The job must run under `[secagg]`.
    pub require_secagg: Option<bool>,
    /// Fewest clients the latest federated evaluation must have heard from.
    pub min_eval_clients: Option<i64>,
    /// Promote a newly registered version that passes the gate to staging by itself.
    pub auto_staging: Option<bool>,
}

/// Simulation only: `[data]`, how the simulator splits `[model] dataset`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    /// Fraction held out for testing.
    pub test_fraction: Option<f64>,
    /// Seed of the stratified split.
    pub split_seed: Option<i64>,
    // Moved to `[model] dataset`.
    #[doc(hidden)]
    pub dataset: Option<toml::Value>,
}

/// Simulation only: `[partition]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartition {
    /// Partitioner name.
    pub kind: String,
    /// Dirichlet / quantity-skew concentration.
    pub alpha: Option<f64>,
    /// Smallest client.
    pub min_samples: Option<i64>,
    /// Shards: classes per client.
    pub classes_per_client: Option<i64>,
    /// Sampled: samples each client draws from the shared training set.
    pub samples_per_client: Option<i64>,
    /// Partition seed (default: the master seed).
    pub seed: Option<i64>,
}

/// Simulation only: `[simulation]`, what the simulated world does beyond the job.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulation {
    /// Worker threads (0 = one per core).
    pub threads: Option<i64>,
    /// Fraction of selected clients that drop out mid-round.
    pub dropout: Option<f64>,
    /// With `[secagg]`: chance a client vanishes right after its masked input.
    pub unmasking_dropout: Option<f64>,
    /// FedBuff: shortest simulated training time of a task, virtual ticks.
    pub train_ticks_min: Option<i64>,
    /// FedBuff: longest simulated training time of a task, virtual ticks.
    pub train_ticks_max: Option<i64>,
}

/// Simulation only: `[attack]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttack {
    /// Attack name.
    pub kind: String,
    /// Fraction of malicious clients.
    pub fraction: f64,
    /// Boost (`sign_flip`, `scaling`).
    pub scale: Option<f64>,
    /// Noise (`gaussian`).
    pub sigma: Option<f64>,
    /// Target class (`backdoor`).
    pub target: Option<i64>,
    /// Poisoned fraction (`backdoor`).
    pub poison_fraction: Option<f64>,
}
