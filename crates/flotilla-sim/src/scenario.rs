//! Scenario files: every knob of a simulated federation, in TOML, validated before anything runs.
//!
//! A scenario file is a job spec (`flotilla_spec`: `name`, `seed`, `rounds`, `clients_per_round`,
//! `[model]`, `[train]`, `[round]`, `[strategy]`, `[privacy]`, `[secagg]`, read and checked there
//! exactly as the coordinator reads them) plus the simulation-only keys this module validates:
//! `clients`, `eval_every`, `[data]`, `[partition]`, `[simulation]` and `[attack]`. `tenant`,
//! `[eligibility]` and `[evaluation]` are accepted and ignored (one tenant; every simulated client
//! is eligible; the test split of `[model] dataset` evaluates every round). Every error is one line
//! that names the field (`partition.alpha: must be > 0, got -1`).

use std::path::Path;

use flotilla_core::dp::PrivacySpec;
use flotilla_core::limits;
use flotilla_core::round::RoundPolicy;
use flotilla_core::strategy::StrategySpec;
use flotilla_data::{DatasetName, PartitionSpec};
use flotilla_ml::ModelKind;
use flotilla_spec::raw::{RawAttack, RawDocument, RawPartition};
use flotilla_spec::{JobConfig, ModelSource, ParseError, RoundConfig, SpecError};

use crate::error::ScenarioError;

/// A simulated federation: data, partition, model, training and selection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// A short name used in results.
    pub name: String,
    /// Master seed: model initialisation, client selection and local shuffling derive from it.
    pub seed: u64,
    /// Rounds to run.
    pub rounds: u64,
    /// Number of simulated clients.
    pub clients: usize,
    /// Reports aggregated per round.
    pub clients_per_round: usize,
    /// Evaluate the global model on the test set every this many rounds (the last round always).
    pub eval_every: u64,
    /// Dataset and split.
    pub data: DataSettings,
    /// How the training set is spread over clients.
    pub partition: PartitionSettings,
    /// The model.
    pub model: ModelSettings,
    /// Local training on each client.
    pub train: TrainSettings,
    /// Selection and deadline policy.
    pub round: RoundSettings,
    /// Engine settings that do not change results.
    pub simulation: SimulationSettings,
    /// How reports are aggregated (`[strategy]`; FedAvg when absent).
    pub strategy: StrategySpec,
    /// Simulated attackers (`[attack]`), if any.
    pub attack: Option<AttackSettings>,
    /// Secure aggregation (`[secagg]`), if rounds run it; see [`crate::secagg`].
    pub secagg: Option<crate::settings::SecAggSettings>,
    /// Differential privacy (`[privacy]`), if any; the mechanism is also in `strategy.dp`.
    pub privacy: Option<PrivacySpec>,
    /// How clients compress their updates (`[compression]`; plain rounds, see `crate::compress`).
    pub compression: flotilla_spec::Compression,
}

/// What malicious clients do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttackKind {
    /// Report `global − scale·Δ` (the honest delta, reversed and boosted).
    SignFlip {
        /// The boost `k`.
        scale: f32,
    },
    /// Report `global + scale·Δ` (model-replacement boosting).
    Scaling {
        /// The boost.
        scale: f32,
    },
    /// Report `global + N(0, σ²)` per coordinate, without training.
    GaussianNoise {
        /// Noise standard deviation.
        sigma: f32,
    },
    /// Train honestly on labels flipped to `C − 1 − y`.
    LabelFlip,
    /// Train on data where a fraction of samples carry a fixed trigger (a bright 3×3 patch in the
    /// image's bottom-right corner) and are relabelled to `target`.
    Backdoor {
        /// The class triggered inputs should be classified as.
        target: u32,
        /// Fraction of the attacker's samples that are poisoned, in (0, 1].
        poison_fraction: f64,
    },
}

/// Attackers: which fraction of the clients and what they do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackSettings {
    /// The attack.
    pub kind: AttackKind,
    /// Fraction of clients that are malicious, chosen from the scenario seed.
    pub fraction: f64,
}

/// Dataset and train/test split.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSettings {
    /// Which dataset.
    pub dataset: DatasetName,
    /// Fraction held out for testing, where the dataset has no fixed test set.
    pub test_fraction: f64,
    /// Seed of the stratified split.
    pub split_seed: u64,
}

/// Partitioning of the training set.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionSettings {
    /// The partitioner and its parameters.
    pub spec: PartitionSpec,
    /// Its seed.
    pub seed: u64,
}

/// The model and its hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    /// Which model.
    pub kind: ModelKind,
}

/// Local training settings sent to every selected client.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Minibatch size.
    pub batch_size: usize,
    /// SGD learning rate.
    pub learning_rate: f32,
    /// Clip every local step's loss gradient to this global L2 norm (`None` = no clipping).
    pub max_grad_norm: Option<f32>,
}

/// The job's `[round]` policy and what the simulated clients do (`[simulation]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSettings {
    /// `[round]`, as the coordinator reads it; [`round_policy`] builds the machine's
    /// policy from it.
    pub config: RoundConfig,
    /// Fraction of selected clients that drop out mid-round (`[simulation] dropout`).
    pub dropout: f64,
    /// FedBuff only: virtual milliseconds a client's local training takes, drawn per task uniformly
    /// from `[min, max]` (seeded), so clients finish at different times and updates go stale
    /// (`[simulation] train_ticks_min`, `train_ticks_max`).
    pub train_ticks: (u64, u64),
}

/// Engine settings: they change speed, never results.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationSettings {
    /// Worker threads training clients in parallel (0 = one per core).
    pub threads: usize,
}

/// Values given on the command line that replace the file's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces `rounds`.
    pub rounds: Option<u64>,
    /// Replaces `seed` (and so the partition seed, unless the file sets `partition.seed`).
    pub seed: Option<u64>,
}

/// Dirichlet/quantity-skew concentration: beyond this the partition is iid to machine precision.
const MAX_ALPHA: f64 = 1e6;
/// Worker threads of the simulator.
const MAX_THREADS: u64 = 1024;

fn invalid(field: &str, message: impl std::fmt::Display) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.to_string(),
        message: message.to_string(),
    }
}

fn spec_error(e: SpecError) -> ScenarioError {
    invalid(&e.field, e.message)
}

/// A count that must be ≥ `min`.
fn count(field: &str, v: i64, min: i64) -> Result<usize, ScenarioError> {
    if v < min {
        return Err(invalid(field, format!("must be ≥ {min}, got {v}")));
    }
    usize::try_from(v).map_err(|_| invalid(field, format!("{v} is too large")))
}

/// A count that must be in `min..=max` (a ceiling from `flotilla_core::limits`).
fn bounded(field: &str, v: i64, min: i64, max: u64) -> Result<usize, ScenarioError> {
    if v >= min && v as u64 > max {
        return Err(invalid(field, format!("must be ≤ {max}, got {v}")));
    }
    count(field, v, min)
}

fn seed(field: &str, v: Option<i64>, default: u64) -> Result<u64, ScenarioError> {
    match v {
        None => Ok(default),
        Some(s) => u64::try_from(s).map_err(|_| invalid(field, format!("must be ≥ 0, got {s}"))),
    }
}

fn fraction(
    field: &str,
    v: f64,
    lo_inclusive: bool,
    hi_inclusive: bool,
) -> Result<f64, ScenarioError> {
    let ok = v.is_finite()
        && (if lo_inclusive { v >= 0.0 } else { v > 0.0 })
        && (if hi_inclusive { v <= 1.0 } else { v < 1.0 });
    if !ok {
        let (l, h) = (
            if lo_inclusive { '[' } else { '(' },
            if hi_inclusive { ']' } else { ')' },
        );
        return Err(invalid(field, format!("must be in {l}0, 1{h}, got {v}")));
    }
    Ok(v)
}

impl Scenario {
    /// Reads and validates a scenario file, with command-line overrides applied.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, overrides).map_err(|e| match e {
            ScenarioError::Syntax { path: None, error } => ScenarioError::Syntax {
                path: Some(path.display().to_string()),
                error,
            },
            other => other,
        })
    }

    /// Parses and validates scenario TOML, with overrides applied.
    pub fn parse(text: &str, overrides: &Overrides) -> Result<Self, ScenarioError> {
        let mut raw = flotilla_spec::read(text).map_err(|e| match e {
            ParseError::Syntax(error) => ScenarioError::Syntax { path: None, error },
            ParseError::Invalid(e) => spec_error(e),
        })?;
        if let Some(r) = overrides.rounds {
            raw.rounds =
                Some(i64::try_from(r).map_err(|_| invalid("rounds", format!("{r} is too large")))?);
        }
        let partition_seed_explicit = raw.partition.as_ref().is_some_and(|p| p.seed.is_some());
        let mut scenario = Self::from_raw(&raw)?;
        if let Some(s) = overrides.seed {
            scenario.seed = s;
            if !partition_seed_explicit {
                scenario.partition.seed = s;
            }
        }
        Ok(scenario)
    }

    fn from_raw(r: &RawDocument) -> Result<Self, ScenarioError> {
        // The job part, exactly as the coordinator validates it.
        let job = JobConfig::from_raw(r).map_err(spec_error)?;
        let JobConfig {
            name,
            seed: master_seed,
            rounds,
            clients_per_round,
            model,
            train,
            round: round_config,
            strategy,
            privacy,
            secagg,
            compression,
            ..
        } = job;
        let model = match model {
            ModelSource::BuiltIn(m) => m,
            ModelSource::Initial(_) => {
                return Err(invalid(
                    "model.initial",
                    "the simulator trains built-in models only (model.kind with model.dataset); \
                     a model given by model.initial runs as a coordinator job \
                     (`flotilla job submit`)",
                ));
            }
        };
        let Some(dataset) = model.dataset else {
            return Err(invalid(
                "model.dataset",
                "is required in a scenario: the simulator trains on a built-in dataset's partitions \
                 (input_shape and num_classes are for coordinator jobs)",
            ));
        };

        // The simulation-only part.
        let clients = bounded(
            "clients",
            r.clients
                .ok_or_else(|| invalid("clients", "is required in a scenario"))?,
            1,
            limits::MAX_CLIENTS as u64,
        )?;
        if clients_per_round > clients {
            return Err(invalid(
                "clients_per_round",
                format!("must be ≤ clients ({clients}), got {clients_per_round}"),
            ));
        }
        let eval_every = bounded(
            "eval_every",
            r.eval_every.unwrap_or(1),
            1,
            limits::MAX_ROUNDS,
        )? as u64;
        let raw_data = r.data.as_ref();
        let data = DataSettings {
            dataset,
            test_fraction: fraction(
                "data.test_fraction",
                raw_data.and_then(|d| d.test_fraction).unwrap_or(0.2),
                false,
                false,
            )?,
            split_seed: seed("data.split_seed", raw_data.and_then(|d| d.split_seed), 42)?,
        };
        let p = r
            .partition
            .as_ref()
            .ok_or_else(|| invalid("partition", "is required in a scenario"))?;
        let partition = PartitionSettings {
            spec: parse_partition(p)?,
            seed: seed("partition.seed", p.seed, master_seed)?,
        };
        let train = TrainSettings {
            local_epochs: train.local_epochs,
            batch_size: train.batch_size as usize,
            learning_rate: train.learning_rate as f32,
            max_grad_norm: train.max_grad_norm.map(|m| m as f32),
        };
        let sim = r.simulation.as_ref();
        let round = RoundSettings {
            config: round_config,
            dropout: fraction(
                "simulation.dropout",
                sim.and_then(|s| s.dropout).unwrap_or(0.0),
                true,
                false,
            )?,
            train_ticks: {
                let lo = count(
                    "simulation.train_ticks_min",
                    sim.and_then(|s| s.train_ticks_min).unwrap_or(10),
                    1,
                )? as u64;
                let hi = count(
                    "simulation.train_ticks_max",
                    sim.and_then(|s| s.train_ticks_max).unwrap_or(100),
                    1,
                )? as u64;
                // A tick is a virtual second and the stage deadline is the longest training time.
                let max_ticks = limits::MAX_DEADLINE_MS / 1000;
                if hi < lo || hi > max_ticks {
                    return Err(invalid(
                        "simulation.train_ticks_max",
                        format!(
                            "must be in simulation.train_ticks_min ({lo})..={max_ticks} (7 days of ticks), got {hi}"
                        ),
                    ));
                }
                (lo, hi)
            },
        };
        crate::settings::check_privacy(privacy.as_ref())?;
        let attack = match &r.attack {
            None => None,
            Some(a) => Some(parse_attack(a, dataset)?),
        };
        if strategy.fedbuff.is_some() && attack.is_some() {
            return Err(invalid(
                "attack",
                "attacks are not simulated with the fedbuff strategy",
            ));
        }
        let unmasking_dropout = sim.and_then(|s| s.unmasking_dropout);
        let secagg = match secagg {
            None => {
                if unmasking_dropout.is_some() {
                    return Err(invalid(
                        "simulation.unmasking_dropout",
                        "applies only with [secagg]",
                    ));
                }
                None
            }
            Some(config) => Some(crate::settings::SecAggSettings::new(
                config,
                unmasking_dropout.unwrap_or(0.0),
                attack.is_some(),
            )?),
        };
        let simulation = SimulationSettings {
            threads: bounded(
                "simulation.threads",
                sim.and_then(|s| s.threads).unwrap_or(0),
                0,
                MAX_THREADS,
            )?,
        };

        Ok(Scenario {
            name: name.unwrap_or_else(|| dataset.to_string()),
            seed: master_seed,
            rounds,
            clients,
            clients_per_round,
            eval_every,
            data,
            partition,
            model: ModelSettings {
                kind: model.spec.kind,
            },
            train,
            round,
            simulation,
            strategy,
            attack,
            secagg,
            privacy,
            compression,
        })
    }
}

fn parse_partition(p: &RawPartition) -> Result<PartitionSpec, ScenarioError> {
    let alpha = |default: f64| -> Result<f64, ScenarioError> {
        let a = p.alpha.unwrap_or(default);
        if !(a.is_finite() && a > 0.0) {
            return Err(invalid(
                "partition.alpha",
                format!("must be a finite number > 0, got {a}"),
            ));
        }
        if a > MAX_ALPHA {
            return Err(invalid(
                "partition.alpha",
                format!("must be ≤ {MAX_ALPHA:e} (larger is iid), got {a:e}"),
            ));
        }
        Ok(a)
    };
    let min_samples = |default: i64| {
        bounded(
            "partition.min_samples",
            p.min_samples.unwrap_or(default),
            1,
            limits::MAX_SAMPLES,
        )
    };
    let only = |allowed: &[&str]| -> Result<(), ScenarioError> {
        let given = [
            ("alpha", p.alpha.is_some()),
            ("min_samples", p.min_samples.is_some()),
            ("classes_per_client", p.classes_per_client.is_some()),
            ("samples_per_client", p.samples_per_client.is_some()),
        ];
        for (name, set) in given {
            if set && !allowed.contains(&name) {
                return Err(invalid(
                    &format!("partition.{name}"),
                    format!("does not apply to partition kind `{}`", p.kind),
                ));
            }
        }
        Ok(())
    };
    Ok(match p.kind.as_str() {
        "iid" => {
            only(&[])?;
            PartitionSpec::Iid
        }
        "dirichlet" => {
            only(&["alpha", "min_samples"])?;
            PartitionSpec::Dirichlet {
                alpha: alpha(0.5)?,
                min_samples: min_samples(1)?,
            }
        }
        "shards" => {
            only(&["classes_per_client"])?;
            PartitionSpec::Shards {
                classes_per_client: bounded(
                    "partition.classes_per_client",
                    p.classes_per_client.unwrap_or(2),
                    1,
                    limits::MAX_CLASSES,
                )?,
            }
        }
        "natural" => {
            only(&["min_samples"])?;
            PartitionSpec::Natural {
                min_samples: min_samples(1)?,
            }
        }
        "quantity_skew" => {
            only(&["alpha", "min_samples"])?;
            PartitionSpec::QuantitySkew {
                alpha: alpha(1.0)?,
                min_samples: min_samples(1)?,
            }
        }
        "sampled" => {
            only(&["samples_per_client"])?;
            // The upper bound here is the ceiling; the data set's size is checked once it is loaded.
            PartitionSpec::Sampled {
                samples_per_client: bounded(
                    "partition.samples_per_client",
                    p.samples_per_client.ok_or_else(|| {
                        invalid(
                            "partition.samples_per_client",
                            "is required for partition kind `sampled`",
                        )
                    })?,
                    1,
                    limits::MAX_SAMPLES,
                )?,
            }
        }
        other => {
            return Err(invalid(
                "partition.kind",
                format!(
                    "unknown partitioner `{other}`; expected one of iid, dirichlet, shards, natural, quantity_skew, sampled"
                ),
            ));
        }
    })
}

fn parse_attack(a: &RawAttack, dataset: DatasetName) -> Result<AttackSettings, ScenarioError> {
    let attackers = fraction("attack.fraction", a.fraction, false, false)?;
    let takes: &[&str] = match a.kind.as_str() {
        "sign_flip" | "scaling" => &["scale"],
        "gaussian" => &["sigma"],
        "label_flip" => &[],
        "backdoor" => &["target", "poison_fraction"],
        other => {
            return Err(invalid(
                "attack.kind",
                format!(
                    "unknown attack `{other}`; expected one of sign_flip, scaling, gaussian, label_flip, backdoor"
                ),
            ));
        }
    };
    for (name, set) in [
        ("scale", a.scale.is_some()),
        ("sigma", a.sigma.is_some()),
        ("target", a.target.is_some()),
        ("poison_fraction", a.poison_fraction.is_some()),
    ] {
        if set && !takes.contains(&name) {
            return Err(invalid(
                &format!("attack.{name}"),
                format!("does not apply to attack `{}`", a.kind),
            ));
        }
    }
    let positive = |field: &str, v: f64| {
        if v.is_finite() && v > 0.0 && v <= 1e6 {
            Ok(v as f32)
        } else {
            Err(invalid(field, format!("must be in (0, 1e6], got {v}")))
        }
    };
    let kind = match a.kind.as_str() {
        "sign_flip" => AttackKind::SignFlip {
            scale: positive("attack.scale", a.scale.unwrap_or(1.0))?,
        },
        "scaling" => AttackKind::Scaling {
            scale: positive("attack.scale", a.scale.unwrap_or(10.0))?,
        },
        "gaussian" => AttackKind::GaussianNoise {
            sigma: positive("attack.sigma", a.sigma.unwrap_or(1.0))?,
        },
        "label_flip" => AttackKind::LabelFlip,
        _ => {
            let (_, classes) = dataset.sample_shape();
            let t = a.target.unwrap_or(0);
            if t < 0 || t as usize >= classes {
                return Err(invalid(
                    "attack.target",
                    format!("must be a class in 0..{classes}, got {t}"),
                ));
            }
            let shape = dataset.sample_shape().0;
            if dataset == DatasetName::Shakespeare || !is_image(&shape) {
                return Err(invalid(
                    "attack.kind",
                    format!("backdoor needs an image dataset, `{dataset}` is not one"),
                ));
            }
            AttackKind::Backdoor {
                target: t as u32,
                poison_fraction: fraction(
                    "attack.poison_fraction",
                    a.poison_fraction.unwrap_or(0.5),
                    false,
                    true,
                )?,
            }
        }
    };
    Ok(AttackSettings {
        kind,
        fraction: attackers,
    })
}

/// Whether a sample shape is a square image (`[1, H, W]`, `[H, W]` or a square `[H·W]`) large enough
/// for the 3×3 trigger.
pub(crate) fn is_image(shape: &[usize]) -> bool {
    image_side(shape).is_some()
}

/// The side of a square image sample, if the shape is one.
pub(crate) fn image_side(shape: &[usize]) -> Option<usize> {
    let n: usize = shape.iter().product();
    let side = (n as f64).sqrt().round() as usize;
    let square = side * side == n && side >= 6;
    let plausible = matches!(shape.len(), 1..=3) && shape.iter().rev().skip(2).all(|&d| d == 1);
    (square && plausible && !(shape.len() == 1 && n < 36)).then_some(side)
}

/// The round policy the simulator runs: the job's `[round]`, built by `flotilla_spec` as the
/// coordinator builds it, on a virtual clock where simulated clients are always available (no
/// selection window, check-ins never expire).
pub fn round_policy(s: &Scenario) -> RoundPolicy {
    let mut p = s
        .round
        .config
        .policy(s.rounds, s.clients_per_round, s.secagg.is_some());
    p.selection_window_ms = 0;
    p.checkin_ttl_ms = flotilla_core::limits::CHECKIN_TTL_NEVER;
    if s.strategy.fedbuff.is_some() {
        // Idle clients come back about as often as a task takes; no task is ever dropped.
        p.retry_after_ms = s.round.train_ticks.1;
        p.stage_deadline_ms = 1000 * s.round.train_ticks.1;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
rounds = 5
clients = 10
clients_per_round = 2
[partition]
kind = "iid"
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 8
learning_rate = 0.1
"#;

    fn err(text: &str) -> String {
        Scenario::parse(text, &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_and_overrides() {
        let s = Scenario::parse(MINIMAL, &Overrides::default()).unwrap();
        assert_eq!((s.seed, s.partition.seed, s.eval_every), (0, 0, 1));
        assert_eq!(s.round.config.min_report_fraction, 0.8);
        assert_eq!(s.round.config, RoundConfig::default());
        let s = Scenario::parse(
            MINIMAL,
            &Overrides {
                rounds: Some(9),
                seed: Some(u64::MAX),
            },
        )
        .unwrap();
        assert_eq!(
            (s.rounds, s.seed, s.partition.seed),
            (9, u64::MAX, u64::MAX)
        );
        let pinned = MINIMAL.replace("kind = \"iid\"", "kind = \"iid\"\nseed = 3");
        let s = Scenario::parse(
            &pinned,
            &Overrides {
                rounds: None,
                seed: Some(8),
            },
        )
        .unwrap();
        assert_eq!(
            (s.seed, s.partition.seed),
            (8, 3),
            "an explicit partition seed is kept"
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(&MINIMAL.replace("[train]", "[train]\nmomentum = 0.9")).contains("momentum"));
        assert!(
            err(&MINIMAL.replace("[train]", "[train]\nmax_grad_norm = 0.0"))
                .starts_with("train.max_grad_norm")
        );
        let clipped = Scenario::parse(
            &MINIMAL.replace("[train]", "[train]\nmax_grad_norm = 5.0"),
            &Overrides::default(),
        );
        assert_eq!(clipped.unwrap().train.max_grad_norm, Some(5.0));
        assert!(
            err(&MINIMAL.replace("kind = \"iid\"", "kind = \"iid\"\nalpha = 1"))
                .starts_with("partition.alpha")
        );
        assert!(
            err(&MINIMAL.replace("kind = \"logreg\"", "kind = \"logreg\"\nhidden = 3"))
                .starts_with("model.hidden")
        );
        assert!(
            err(&MINIMAL
                .replace("seed", "x")
                .replace("rounds = 5", "rounds = 5\nseed = -1"))
            .starts_with("seed")
        );
        assert!(
            err(&MINIMAL.replace("[train]", "[simulation]\ndropout = 1.0\n[train]"))
                .starts_with("simulation.dropout")
        );
        assert!(
            err(&MINIMAL.replace("[train]", "[round]\nover_selection = 0.5\n[train]"))
                .starts_with("round.over_selection")
        );
        assert!(
            err(&MINIMAL.replace(
                "kind = \"iid\"",
                "kind = \"shards\"\nclasses_per_client = 0"
            ))
            .starts_with("partition.classes_per_client")
        );
        assert!(err(&MINIMAL.replace("rounds = 5\n", "")).contains("rounds"));
        assert!(
            err(&MINIMAL.replace(
                "dataset = \"digits\"\n",
                "input_shape = [64]\nnum_classes = 10\n"
            ))
            .starts_with("model.dataset")
        );
        let e = err(&MINIMAL.replace(
            "kind = \"logreg\"\ndataset = \"digits\"\n",
            "initial = \"init.safetensors\"\n",
        ));
        assert!(e.starts_with("model.initial"), "{e}");
        assert!(
            e.contains("the simulator trains built-in models only"),
            "{e}"
        );
        for e in [
            err("rounds = [1"),
            err(&MINIMAL.replace("[train]", "[train]\nx = 1")),
        ] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_moved_key_names_its_new_place() {
        let e = err(&MINIMAL.replace("[train]", "[round]\ndropout = 0.1\n[train]"));
        assert!(
            e.contains("`[round] dropout` has moved: write it as `[simulation] dropout`"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("[partition]", "[data]\ndataset = \"digits\"\n[partition]"));
        assert!(e.contains("write it as `[model] dataset`"), "{e}");
        let e = err(&MINIMAL.replace("rounds = 5\n", "rounds = 5\nover_selection = 1.2\n"));
        assert!(
            e.starts_with("line 3, column 1: `over_selection` at the top level has moved"),
            "{e}"
        );
    }

    #[test]
    fn a_typo_is_reported_at_its_own_line_with_the_nearest_key() {
        // Line 5, after the correct `clients_per_round` on line 4 (MINIMAL starts with a newline).
        let e = err(&MINIMAL.replace(
            "clients_per_round = 2\n",
            "clients_per_round = 2\nclients_per_rnd = 2\n",
        ));
        assert!(e.starts_with("line 5, column 1: unknown key `clients_per_rnd` at the top level; did you mean `clients_per_round`?"), "{e}");
        // Only one table takes `batch_size` (`learning_rate` is also in `[privacy.adaptive]`).
        let e = err(&MINIMAL.replace("rounds = 5\n", "rounds = 5\nbatch_size = 8\n"));
        assert!(e.contains("did you mean `[train] batch_size`?"), "{e}");
    }
}
