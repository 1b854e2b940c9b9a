//! Job specifications: the TOML an operator submits, validated into a [`JobSpec`] by
//! [`JobSpec::from_toml`].
//!
//! Every validation error is one line that starts with the offending field, e.g.
//! `clients_per_round: must be ≥ 1`. See the crate README for the format.
//!
//! This module holds the types and what is derived from a spec; the parser (`from_toml`, with the
//! coordinator's privacy rules) is in `job_toml.rs`, one layer up, so that the privacy module can
//! name [`JobSpec`] without a cycle.

use flotilla_core::dp::PrivacySpec;
use flotilla_core::round::RoundPolicy;
use flotilla_core::strategy::StrategySpec;
use flotilla_model::{ModelKind, ModelSpec};
use flotilla_proto::v1;
use flotilla_spec::{RoundConfig, SecAggConfig};
use serde::{Deserialize, Serialize};

/// A job specification that failed to parse or validate. The message names the field (`toml` for
/// a syntax error, an unknown or moved key, or a simulation-only section).
pub use flotilla_spec::SpecError;

/// [`ModelSection::kind`] of a model given by `[model] initial` (a file of named tensors): the
/// coordinator knows its layout only, and its sizes are 0.
pub const CUSTOM_KIND: &str = "custom";

/// The model of a job, resolved (input shape and classes known), or a model given by its initial
/// parameters ([`CUSTOM_KIND`], no sizes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSection {
    /// `logreg`, `mlp`, `cnn`, `char_mlp`, or [`CUSTOM_KIND`] for a model given by
    /// `[model] initial`.
    pub kind: String,
    /// `[model] initial` as the job file wrote it (for information: the file's tensors are the
    /// job's version-0 model in the blob store). Absent for a built-in model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// Shape of one input sample.
    pub input_shape: Vec<usize>,
    /// Number of classes (vocabulary size for `char_mlp`).
    pub num_classes: usize,
    /// Hidden width (`mlp`, `char_mlp`).
    pub hidden: usize,
    /// Embedding width (`char_mlp`).
    pub embed: usize,
}

/// Local training hyper-parameters sent with every task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSection {
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Minibatch size.
    pub batch_size: u32,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// Clip every local step's loss gradient to this global L2 norm (`None` = no clipping). Absent in
    /// specs stored before it existed.
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
}

/// A validated job specification, as stored (JSON) with the job. Its TOML form is the job part of
/// `flotilla_spec` (shared with scenario files); this is the flat record the store has always held,
/// so specs stored by earlier versions still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Human-readable name.
    pub name: String,
    /// Tenant the job belongs to.
    pub tenant: String,
    /// Seed of model initialisation, selection and task seeds.
    pub seed: u64,
    /// Rounds to commit.
    pub rounds: u64,
    /// Reports for a full round.
    pub clients_per_round: usize,
    /// Live clients needed before a round starts.
    pub min_clients: usize,
    /// Over-selection factor.
    pub over_selection: f64,
    /// Deadline of a round's stage, milliseconds.
    pub round_deadline_ms: u64,
    /// Fraction of `clients_per_round` needed at the deadline.
    pub min_report_fraction: f64,
    /// Attempts per round before the job fails.
    pub max_attempts: u32,
    /// Selection window, milliseconds.
    pub selection_window_ms: u64,
    /// Base `RetryAfter` delay, milliseconds.
    pub retry_after_ms: u64,
    /// How long a check-in counts as "available", milliseconds.
    pub checkin_ttl_ms: u64,
    /// The model.
    pub model: ModelSection,
    /// Local training.
    pub train: TrainSection,
    /// Smallest `num_samples` a client must announce to be given work.
    pub min_samples: u64,
    /// Dataset whose test split evaluates every committed model, if any.
    pub evaluation_dataset: Option<String>,
    /// `[evaluation] federated_every` / `federated_clients`: a federated evaluation of the
    /// committed model by the clients every K rounds (and after the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_evaluation: Option<FederatedEvalSection>,
    /// How reports are aggregated (`[strategy]`; FedAvg when absent).
    #[serde(default = "StrategySpec::fedavg")]
    pub strategy: StrategySpec,
    /// Secure aggregation (`[secagg]`): rounds run the four SecAgg+ stages; see the crate's
    /// `secagg_round` module.
    #[serde(default)]
    pub secagg: Option<SecAggConfig>,
    /// Differential privacy (`[privacy]`: central DP-FedAvg, or distributed DP with `[secagg]`); the
    /// mechanism is also in `strategy.dp`.
    #[serde(default)]
    pub privacy: Option<PrivacySpec>,
    /// `[registry] name`: the model name the job's final model is registered under when the job
    /// completes. Absent from the stored JSON when not set (so the spec hashes of jobs without it
    /// are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// `[release]`: the release gate set on that model when the job registers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<flotilla_registry::Gate>,
    /// `[compression]`: how clients may compress their TRAIN uploads (`Task.compression`). Absent
    /// from the stored JSON when none (so the spec hashes of jobs without it are unchanged).
    #[serde(default = "no_compression", skip_serializing_if = "is_no_compression")]
    pub compression: flotilla_spec::Compression,
}

fn no_compression() -> flotilla_spec::Compression {
    flotilla_spec::Compression::None
}

fn is_no_compression(c: &flotilla_spec::Compression) -> bool {
    *c == flotilla_spec::Compression::None
}

/// `[evaluation] federated_every = K`, `federated_clients = N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedEvalSection {
    /// K: every K-th committed round (and the last) is evaluated.
    pub every: u64,
    /// N: clients asked for each evaluation.
    pub clients: u32,
}

impl FederatedEvalSection {
    /// Whether committed round `round` of a job of `rounds` rounds is evaluated.
    pub fn due(&self, round: u64, rounds: u64) -> bool {
        flotilla_spec::FederatedEvaluation {
            every: self.every,
            clients: self.clients,
        }
        .due(round, rounds)
    }
}

impl JobSpec {
    /// The round policy of the job, built by `flotilla_spec::RoundConfig` like the simulator's.
    pub fn policy(&self) -> RoundPolicy {
        RoundConfig {
            min_clients: Some(self.min_clients),
            over_selection: self.over_selection,
            min_report_fraction: self.min_report_fraction,
            deadline_ms: self.round_deadline_ms,
            max_attempts: self.max_attempts,
            selection_window_ms: self.selection_window_ms,
            retry_after_ms: self.retry_after_ms,
            checkin_ttl_ms: self.checkin_ttl_ms,
        }
        .policy(self.rounds, self.clients_per_round, self.secagg.is_some())
    }

    /// Whether the job's model was given by `[model] initial` (no model provider serves it).
    pub fn is_custom(&self) -> bool {
        self.model.kind == CUSTOM_KIND
    }

    /// The model spec of the built-in model families (`flotilla-model`); refused for a model
    /// given by `[model] initial`.
    pub fn ml_spec(&self) -> Result<ModelSpec, SpecError> {
        let kind = match self.model.kind.as_str() {
            CUSTOM_KIND => {
                return Err(SpecError::new(
                    "model.initial",
                    "the job's model is given by its initial parameters, not a built-in model",
                ));
            }
            "logreg" => ModelKind::LogReg,
            "mlp" => ModelKind::Mlp {
                hidden: self.model.hidden,
            },
            "cnn" => ModelKind::Cnn,
            "char_mlp" => ModelKind::CharMlp {
                embed: self.model.embed,
                hidden: self.model.hidden,
            },
            other => {
                return Err(SpecError::new(
                    "model.kind",
                    format!("unknown model {other}"),
                ));
            }
        };
        Ok(ModelSpec {
            kind,
            input_shape: self.model.input_shape.clone(),
            num_classes: self.model.num_classes,
        })
    }

    /// The wire form of the model spec (`ModelInfo.spec`): for a model given by
    /// `[model] initial`, kind [`CUSTOM_KIND`] and no sizes (the layout says it all).
    pub fn proto_model_spec(&self) -> v1::ModelSpec {
        v1::ModelSpec {
            kind: self.model.kind.clone(),
            input_shape: self.model.input_shape.iter().map(|&d| d as u64).collect(),
            num_classes: u32::try_from(self.model.num_classes).unwrap_or(u32::MAX),
            hidden: u32::try_from(self.model.hidden).unwrap_or(u32::MAX),
            embed: u32::try_from(self.model.embed).unwrap_or(u32::MAX),
        }
    }
}
