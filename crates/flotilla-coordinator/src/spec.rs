//! Job specifications: the TOML an operator submits, validated into a [`JobSpec`].
//!
//! Every validation error is one line that starts with the offending field, e.g.
//! `clients_per_round: must be ≥ 1`. See the crate README for the format.

use std::str::FromStr;

use flotilla_core::dp::{PrivacyConfig, PrivacySpec};
use flotilla_core::limits::{self, count};
use flotilla_core::round::{RoundPolicy, StageKind};
use flotilla_core::strategy::{StrategyConfig, StrategySpec};
use flotilla_data::DatasetName;
use flotilla_model::{ModelKind, ModelSpec};
use flotilla_proto::v1;
use serde::{Deserialize, Serialize};

/// A job specification that failed to parse or validate. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The offending field, dotted (`model.kind`), or `toml` for a syntax error.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    tenant: Option<String>,
    seed: Option<u64>,
    rounds: Option<u64>,
    clients_per_round: Option<usize>,
    min_clients: Option<usize>,
    over_selection: Option<f64>,
    round_deadline_seconds: Option<f64>,
    min_report_fraction: Option<f64>,
    max_attempts: Option<u32>,
    selection_window_ms: Option<u64>,
    retry_after_ms: Option<u64>,
    checkin_ttl_seconds: Option<u64>,
    model: Option<RawModel>,
    train: Option<RawTrain>,
    eligibility: Option<RawEligibility>,
    evaluation: Option<RawEvaluation>,
    strategy: Option<StrategyConfig>,
    secagg: Option<crate::secagg_round::SecAggSpec>,
    privacy: Option<PrivacyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    kind: Option<String>,
    dataset: Option<String>,
    input_shape: Option<Vec<usize>>,
    num_classes: Option<usize>,
    hidden: Option<usize>,
    embed: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    local_epochs: Option<u32>,
    batch_size: Option<u32>,
    learning_rate: Option<f64>,
    max_grad_norm: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEligibility {
    min_samples: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvaluation {
    dataset: Option<String>,
}

/// The model of a job, resolved (input shape and classes known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSection {
    /// `logreg`, `mlp`, `cnn` or `char_mlp`.
    pub kind: String,
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

/// A validated job specification (stored as JSON with the job).
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
    /// How reports are aggregated (`[strategy]`; FedAvg when absent).
    #[serde(default = "StrategySpec::fedavg")]
    pub strategy: StrategySpec,
    /// Secure aggregation (`[secagg]`): rounds run the four SecAgg+ stages; see
    /// [`crate::secagg_round`].
    #[serde(default)]
    pub secagg: Option<crate::secagg_round::SecAggSpec>,
    /// Differential privacy (`[privacy]`: central DP-FedAvg, or distributed DP with `[secagg]`); the
    /// mechanism is also in `strategy.dp`.
    #[serde(default)]
    pub privacy: Option<PrivacySpec>,
}

impl From<flotilla_core::ConfigError> for SpecError {
    fn from(e: flotilla_core::ConfigError) -> Self {
        Self::new(e.field, e.message)
    }
}

fn need<T>(v: Option<T>, field: &str) -> Result<T, SpecError> {
    v.ok_or_else(|| SpecError::new(field, "is required"))
}

/// Input shape and classes of a known dataset, as `flotilla-data` defines them (nothing is loaded).
fn dataset_shape(name: &str, field: &str) -> Result<(Vec<usize>, usize), SpecError> {
    let ds = DatasetName::from_str(name).map_err(|e| SpecError::new(field, e.to_string()))?;
    Ok(ds.sample_shape())
}

impl JobSpec {
    /// Parses and validates a job TOML. Nothing is read from disk: dataset shapes are known
    /// statically, and an evaluation dataset is loaded when the job starts.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        // `toml: line 9, column 1: unknown key …`: the server does not know the file's name, so
        // the position is spelled out for the client to prefix its own (see `TomlError`).
        let raw: RawSpec = flotilla_core::config_toml::from_str(text)
            .map_err(|e| SpecError::new("toml", e.to_string()))?;
        let name = raw.name.unwrap_or_else(|| "job".to_owned());
        flotilla_core::names::check_job_name(&name)
            .map_err(|e| SpecError::new("name", e.to_string()))?;
        let tenant = raw.tenant.unwrap_or_else(|| "default".to_owned());
        flotilla_core::names::check_tenant(&tenant)
            .map_err(|e| SpecError::new("tenant", e.to_string()))?;
        // Counts are bounded first: everything below computes with them (see `flotilla_core::limits`).
        let rounds = count("rounds", need(raw.rounds, "rounds")?, 1, limits::MAX_ROUNDS)?;
        let clients_per_round = count(
            "clients_per_round",
            need(raw.clients_per_round, "clients_per_round")?,
            1,
            limits::MAX_CLIENTS_PER_ROUND,
        )?;
        if let Some(m) = raw.min_clients {
            count("min_clients", m, 1, limits::MAX_CLIENTS)?;
        }
        if let Some(a) = raw.max_attempts {
            count("max_attempts", a, 1, limits::MAX_ATTEMPTS)?;
        }
        let max_deadline_s = (limits::MAX_DEADLINE_MS / 1000) as f64;
        let deadline_s = limits::positive(
            "round_deadline_seconds",
            raw.round_deadline_seconds.unwrap_or(600.0),
            max_deadline_s,
        )?;
        let checkin_ttl_s = count(
            "checkin_ttl_seconds",
            raw.checkin_ttl_seconds.unwrap_or(300),
            1,
            limits::MAX_CHECKIN_TTL_MS / 1000,
        )?;
        let selection_window_ms = count(
            "selection_window_ms",
            raw.selection_window_ms.unwrap_or(1000),
            0,
            limits::MAX_SELECTION_WINDOW_MS,
        )?;
        let retry_after_ms = count(
            "retry_after_ms",
            raw.retry_after_ms.unwrap_or(2000),
            1,
            limits::MAX_RETRY_AFTER_MS,
        )?;

        let m = need(raw.model, "model")?;
        let kind_name = need(m.kind, "model.kind")?;
        let kind = ModelKind::from_str(&kind_name)
            .map_err(|e| SpecError::new("model.kind", e.to_string()))?;
        let (input_shape, num_classes) = match (&m.dataset, m.input_shape, m.num_classes) {
            (Some(d), None, None) => dataset_shape(d, "model.dataset")?,
            (Some(_), _, _) => {
                return Err(SpecError::new(
                    "model.dataset",
                    "give either dataset or input_shape and num_classes, not both",
                ));
            }
            (None, Some(s), Some(c)) => (s, c),
            (None, None, _) => {
                return Err(SpecError::new(
                    "model.input_shape",
                    "is required without model.dataset",
                ));
            }
            (None, Some(_), None) => {
                return Err(SpecError::new(
                    "model.num_classes",
                    "is required without model.dataset",
                ));
            }
        };
        if input_shape.is_empty() || input_shape.contains(&0) || input_shape.len() > 8 {
            return Err(SpecError::new(
                "model.input_shape",
                "must have 1 to 8 dimensions, each ≥ 1",
            ));
        }
        count(
            "model.input_shape",
            limits::product(&input_shape),
            1,
            limits::MAX_INPUT_VALUES,
        )
        .map_err(|e| {
            SpecError::new(
                e.field,
                format!(
                    "values per sample (the product of the dimensions) {}",
                    e.message
                ),
            )
        })?;
        count(
            "model.num_classes",
            num_classes as u64,
            2,
            limits::MAX_CLASSES,
        )?;
        let (hidden, embed) = match kind {
            ModelKind::Mlp { hidden } => {
                if m.embed.is_some() {
                    return Err(SpecError::new("model.embed", "does not apply to model mlp"));
                }
                (m.hidden.unwrap_or(hidden), 0)
            }
            ModelKind::CharMlp { embed, hidden } => {
                (m.hidden.unwrap_or(hidden), m.embed.unwrap_or(embed))
            }
            ModelKind::LogReg | ModelKind::Cnn => {
                if m.hidden.is_some() {
                    return Err(SpecError::new(
                        "model.hidden",
                        format!("does not apply to model {kind_name}"),
                    ));
                }
                if m.embed.is_some() {
                    return Err(SpecError::new(
                        "model.embed",
                        format!("does not apply to model {kind_name}"),
                    ));
                }
                (0, 0)
            }
        };
        if matches!(kind, ModelKind::Mlp { .. } | ModelKind::CharMlp { .. }) {
            count("model.hidden", hidden as u64, 1, limits::MAX_HIDDEN)?;
        }
        if matches!(kind, ModelKind::CharMlp { .. }) {
            count("model.embed", embed as u64, 1, limits::MAX_EMBED)?;
        }
        let sized = match kind {
            ModelKind::Mlp { .. } => ModelKind::Mlp { hidden },
            ModelKind::CharMlp { .. } => ModelKind::CharMlp { embed, hidden },
            k => k,
        };
        let params = ModelSpec {
            kind: sized,
            input_shape: input_shape.clone(),
            num_classes,
        }
        .param_count();
        // Named after the width that sizes the model, or the input when there is none.
        let size_key = if hidden > 0 {
            "model.hidden"
        } else {
            "model.input_shape"
        };
        limits::model_params(size_key, params)?;

        let t = need(raw.train, "train")?;
        let train = TrainSection {
            local_epochs: t.local_epochs.unwrap_or(1),
            batch_size: t.batch_size.unwrap_or(32),
            learning_rate: need(t.learning_rate, "train.learning_rate")?,
            max_grad_norm: t.max_grad_norm,
        };
        if let Some(m) = train.max_grad_norm {
            limits::positive("train.max_grad_norm", m, limits::MAX_NORM)?;
        }
        count(
            "train.local_epochs",
            u64::from(train.local_epochs),
            1,
            limits::MAX_LOCAL_EPOCHS,
        )?;
        count(
            "train.batch_size",
            u64::from(train.batch_size),
            1,
            limits::MAX_BATCH_SIZE,
        )?;
        limits::positive(
            "train.learning_rate",
            train.learning_rate,
            limits::MAX_LEARNING_RATE,
        )?;
        let min_samples = raw.eligibility.and_then(|e| e.min_samples).unwrap_or(1);
        count(
            "eligibility.min_samples",
            min_samples,
            0,
            limits::MAX_SAMPLES,
        )?;
        let evaluation_dataset = match raw.evaluation {
            None => None,
            Some(e) => {
                let d = need(e.dataset, "evaluation.dataset")?;
                let (shape, classes) = dataset_shape(&d, "evaluation.dataset")?;
                if shape.iter().product::<usize>() != input_shape.iter().product::<usize>()
                    || classes != num_classes
                {
                    return Err(SpecError::new(
                        "evaluation.dataset",
                        format!("{d} does not fit the model's input_shape/num_classes"),
                    ));
                }
                Some(d)
            }
        };

        // The smallest round that can commit, by the machine's own rule (Krum's f is checked against it).
        let min_reports = RoundPolicy {
            min_report_fraction: raw.min_report_fraction.unwrap_or(0.8),
            ..RoundPolicy::new(rounds, clients_per_round)
        }
        .min_reports();
        let strategy = match &raw.strategy {
            None => StrategySpec::fedavg(),
            // FedProx's μ travels in `TrainingConfig.proximal_mu`, SCAFFOLD's control variate as a
            // second download (`Task.server_control`); the client SDK implements both.
            Some(c) => StrategySpec::from_config(c, min_reports)
                .map_err(|e| SpecError::new(e.field, e.message))?,
        };
        let dp_policy = RoundPolicy {
            over_selection: raw.over_selection.unwrap_or(1.0),
            min_report_fraction: raw.min_report_fraction.unwrap_or(0.8),
            ..RoundPolicy::new(rounds, clients_per_round)
        };
        let (strategy, privacy) = crate::privacy::configure(
            raw.privacy.as_ref(),
            strategy,
            &dp_policy,
            raw.secagg.is_some(),
        )?;
        let spec = JobSpec {
            name,
            tenant,
            seed: raw.seed.unwrap_or(0),
            rounds,
            clients_per_round,
            min_clients: raw.min_clients.unwrap_or(clients_per_round),
            over_selection: raw.over_selection.unwrap_or(1.0),
            round_deadline_ms: (deadline_s * 1000.0).ceil() as u64,
            min_report_fraction: raw.min_report_fraction.unwrap_or(0.8),
            max_attempts: raw.max_attempts.unwrap_or(3),
            selection_window_ms,
            retry_after_ms,
            checkin_ttl_ms: checkin_ttl_s * 1000,
            model: ModelSection {
                kind: kind.name().to_owned(),
                input_shape,
                num_classes,
                hidden,
                embed,
            },
            train,
            min_samples,
            evaluation_dataset,
            strategy,
            secagg: raw.secagg.clone(),
            privacy,
        };
        if let Some(sa) = &spec.secagg {
            // The vector length is only known once the model is built; 1 checks everything else.
            sa.params(spec.clients_per_round, 1)?;
            spec.strategy
                .check_secure_aggregation()
                .map_err(|e| SpecError::new(e.field, e.message))?;
            if let Some(dp) = &spec.strategy.dp {
                // Distributed DP: the clip range must hold a clipped coordinate plus the noise tails.
                dp.check_secure_aggregation(sa.clip_range)
                    .map_err(|e| SpecError::new(e.field, e.message))?;
            }
        }
        spec.policy().validate().map_err(|e| {
            let field = match e.field {
                "round_deadline" => "round_deadline_seconds",
                "checkin_ttl" => "checkin_ttl_seconds",
                f => f,
            };
            SpecError::new(field, e.message)
        })?;
        Ok(spec)
    }

    /// The round policy of the job.
    pub fn policy(&self) -> RoundPolicy {
        let mut p = RoundPolicy::new(self.rounds, self.clients_per_round);
        p.min_clients = self.min_clients;
        p.over_selection = self.over_selection;
        p.stage_deadline_ms = self.round_deadline_ms;
        p.min_report_fraction = self.min_report_fraction;
        p.max_attempts = self.max_attempts;
        p.selection_window_ms = self.selection_window_ms;
        p.retry_after_ms = self.retry_after_ms;
        p.checkin_ttl_ms = self.checkin_ttl_ms;
        p.stages = if self.secagg.is_some() {
            StageKind::SECURE_AGGREGATION.to_vec()
        } else {
            vec![StageKind::Train]
        };
        p
    }

    /// The model spec of the built-in model families (`flotilla-model`).
    pub fn ml_spec(&self) -> Result<ModelSpec, SpecError> {
        let kind = match self.model.kind.as_str() {
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

    /// The wire form of the model spec (`ModelInfo.spec`).
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

#[cfg(test)]
mod tests {
    use super::*;

    const DIGITS: &str = r#"
name = "digits"
seed = 42
rounds = 20
clients_per_round = 10
min_clients = 10
over_selection = 1.0
round_deadline_seconds = 60
min_report_fraction = 0.8
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
[eligibility]
min_samples = 1
[evaluation]
dataset = "digits"
"#;

    fn err(text: &str) -> String {
        JobSpec::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_example() {
        let s = JobSpec::from_toml(DIGITS).unwrap();
        assert_eq!(s.model.input_shape, vec![64]);
        assert_eq!(s.model.num_classes, 10);
        assert_eq!(s.round_deadline_ms, 60_000);
        assert_eq!(s.evaluation_dataset.as_deref(), Some("digits"));
        s.policy().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err(&DIGITS.replace("clients_per_round = 10", "clients_per_round = 0"))
                .starts_with("clients_per_round:")
        );
        assert!(
            err(&DIGITS.replace("min_clients = 10", "min_clients = 3")).starts_with("min_clients:")
        );
        assert!(
            err(&DIGITS.replace("over_selection = 1.0", "over_selection = 0.5"))
                .starts_with("over_selection:")
        );
        assert!(
            err(&DIGITS.replace("kind = \"logreg\"", "kind = \"nope\"")).starts_with("model.kind:")
        );
        assert!(
            err(&DIGITS.replace("learning_rate = 0.1", "learning_rate = -1.0"))
                .starts_with("train.learning_rate:")
        );
        assert!(
            err(&DIGITS.replace(
                "learning_rate = 0.1",
                "learning_rate = 0.1\nmax_grad_norm = -2"
            ))
            .starts_with("train.max_grad_norm:")
        );
        assert!(err(&DIGITS.replace("rounds = 20", "rounds = 0")).starts_with("rounds:"));
        assert!(
            err(&DIGITS.replace("round_deadline_seconds = 60", "round_deadline_seconds = 0"))
                .starts_with("round_deadline_seconds:")
        );
        assert!(err(&DIGITS.replace("seed = 42", "seed = 42\nbogus = 1")).starts_with("toml:"));
        assert!(
            err(&DIGITS.replace(
                "dataset = \"digits\"\n[train]",
                "dataset = \"nope\"\n[train]"
            ))
            .starts_with("model.dataset:")
        );
        assert!(!err("rounds = ").contains('\n'));
        assert!(
            err(&format!(
                "{DIGITS}[strategy]\nname = \"trimmed_mean\"\nbeta = 0.5\n"
            ))
            .starts_with("strategy.beta:")
        );
        assert!(
            err(&format!("{DIGITS}[strategy]\nname = \"krum\"\nf = 3\n"))
                .starts_with("strategy.f:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[strategy]\nname = \"fedadam\"\nserver_lr = 0\n"
            ))
            .starts_with("strategy.server_lr:")
        );
    }

    #[test]
    fn strategy_defaults_to_fedavg_and_parses_by_name() {
        assert_eq!(
            JobSpec::from_toml(DIGITS).unwrap().strategy,
            StrategySpec::fedavg()
        );
        let s = JobSpec::from_toml(&format!(
            "{DIGITS}[strategy]\nname = \"krum\"\nf = 2\nm = 4\n"
        ))
        .unwrap();
        assert_eq!(s.strategy.name, "krum");
    }

    #[test]
    fn secagg_section_sets_the_stages_and_refuses_per_update_strategies() {
        let s = JobSpec::from_toml(&format!("{DIGITS}[secagg]\nclip_range = 0.5\n")).unwrap();
        assert!(s.policy().secure_aggregation());
        assert_eq!(s.secagg.as_ref().unwrap().clip_range, 0.5);
        assert!(
            !JobSpec::from_toml(DIGITS)
                .unwrap()
                .policy()
                .secure_aggregation()
        );
        // Stored specs without the key still load.
        let mut json = serde_json::to_value(JobSpec::from_toml(DIGITS).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("secagg");
        assert_eq!(
            serde_json::from_value::<JobSpec>(json).unwrap().secagg,
            None
        );
        let sa = "[secagg]\nclip_range = 0.5\n";
        assert!(
            err(&format!("{DIGITS}[strategy]\nname = \"median\"\n{sa}"))
                .starts_with("strategy.name:")
        );
        assert!(
            err(&format!("{DIGITS}[strategy]\nname = \"krum\"\nf = 1\n{sa}"))
                .starts_with("strategy.name:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[strategy]\nname = \"trimmed_mean\"\nbeta = 0.1\n{sa}"
            ))
            .starts_with("strategy.name:")
        );
        assert!(err(&format!("{DIGITS}[strategy]\nname = \"fedavg\"\n[strategy.anomaly]\nmax_norm_z = 3.0\nmax_cosine_distance = 1.0\n{sa}"))
            .starts_with("strategy.anomaly:"));
        assert!(
            err(&format!("{DIGITS}[secagg]\nclip_range = -1.0\n"))
                .starts_with("secagg.clip_range:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[secagg]\nclip_range = 1.0\nthreshold = 50\n"
            ))
            .starts_with("secagg.threshold:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[secagg]\nclip_range = 1.0\nneighbours = 3\n"
            ))
            .starts_with("secagg.neighbours:")
        );
        assert!(
            err(&format!("{DIGITS}[secagg]\nclip_range = 1.0\nbogus = 3\n")).starts_with("toml:")
        );
        for ok in ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] {
            assert!(
                JobSpec::from_toml(&format!("{DIGITS}[strategy]\nname = \"{ok}\"\n{sa}")).is_ok(),
                "{ok}"
            );
        }
    }
}
