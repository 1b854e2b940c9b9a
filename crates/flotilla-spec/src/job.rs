//! The job part of a file: everything a coordinator needs to run a job, and the simulator to
//! simulate one.

use std::str::FromStr;

use flotilla_core::dp::PrivacySpec;
use flotilla_core::limits;
use flotilla_core::round::RoundPolicy;
use flotilla_core::strategy::StrategySpec;
use flotilla_data::DatasetName;

use crate::checks::{int, need, seed, size};
use crate::raw::RawDocument;
use crate::{ModelSource, ParseError, RoundConfig, SecAggConfig, SpecError, TrainConfig, moved};

/// `tenant` when absent.
pub const DEFAULT_TENANT: &str = "default";
/// `[eligibility] min_samples` when absent.
pub const DEFAULT_MIN_SAMPLES: u64 = 1;

/// A validated job part.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    /// `name`, if given (each driver has its own default).
    pub name: Option<String>,
    /// `tenant` (default `default`), checked by `flotilla_core::names::check_tenant`.
    pub tenant: String,
    /// Seed of model initialisation, selection and task seeds (default 0).
    pub seed: u64,
    /// Rounds to commit, `1..=MAX_ROUNDS`.
    pub rounds: u64,
    /// Reports for a full round, `1..=MAX_CLIENTS_PER_ROUND`.
    pub clients_per_round: usize,
    /// `[model]`: a built-in model, or one given by `initial`.
    pub model: ModelSource,
    /// `[train]`.
    pub train: TrainConfig,
    /// `[round]`.
    pub round: RoundConfig,
    /// `[strategy]` (FedAvg when absent), with `[privacy]`'s mechanism added.
    pub strategy: StrategySpec,
    /// `[privacy]`, if any (driver-specific rules, e.g. `population`, are the driver's).
    pub privacy: Option<PrivacySpec>,
    /// `[secagg]`, if rounds run secure aggregation.
    pub secagg: Option<SecAggConfig>,
    /// `[compression]`: how clients compress their updates (`None` when absent).
    pub compression: crate::Compression,
    /// `[eligibility] min_samples`: smallest `num_samples` a client must announce.
    pub min_samples: u64,
    /// `[evaluation] dataset`: whose test split evaluates every committed model.
    pub evaluation_dataset: Option<DatasetName>,
    /// `[registry] name`: the job's final model is registered under it when the job completes.
    pub registry: Option<flotilla_registry::ModelName>,
    /// `[release]`: the gate set on that model when the job registers it.
    pub release: Option<flotilla_registry::Gate>,
    /// `[evaluation] federated_every` and `federated_clients`: federated evaluation of committed
    /// models by the clients.
    pub federated_evaluation: Option<FederatedEvaluation>,
}

/// Most clients `[evaluation] federated_clients` may ask for.
pub const MAX_FEDERATED_EVAL_CLIENTS: u64 = 10_000;

/// `[evaluation] federated_every = K`, `federated_clients = N`: after every K-th committed round
/// (and the last), N clients of the job's tenant evaluate the committed model on their local data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FederatedEvaluation {
    /// K, in rounds (≥ 1).
    pub every: u64,
    /// N, 1..=[`MAX_FEDERATED_EVAL_CLIENTS`] (default: `clients_per_round`).
    pub clients: u32,
}

impl FederatedEvaluation {
    /// Whether committed round `round` of a job of `rounds` rounds is evaluated.
    pub fn due(&self, round: u64, rounds: u64) -> bool {
        round > 0 && (round.is_multiple_of(self.every) || round == rounds)
    }
}

/// Reads a file into its raw form: TOML syntax, unknown keys (with "did you mean") and moved keys
/// are refused here, with the position in `text`.
pub fn read(text: &str) -> Result<RawDocument, ParseError> {
    let doc: RawDocument = flotilla_core::config_toml::from_str(text)?;
    moved::check(text, &doc)?;
    Ok(doc)
}

impl JobConfig {
    /// A coordinator's job file: [`read`], refuse the simulation-only keys, validate.
    pub fn from_job_toml(text: &str) -> Result<Self, ParseError> {
        let doc = read(text)?;
        moved::refuse_simulation_keys(text, &doc)?;
        Ok(Self::from_raw(&doc)?)
    }

    /// Validates the job part of a raw file (its simulation-only sections are left to the caller).
    pub fn from_raw(r: &RawDocument) -> Result<Self, SpecError> {
        let tenant = r
            .tenant
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
        flotilla_core::names::check_tenant(&tenant)
            .map_err(|e| SpecError::new("tenant", e.to_string()))?;
        let seed = seed("seed", r.seed, 0)?;
        // Counts are bounded first: everything below computes with them.
        let rounds = int("rounds", need(r.rounds, "rounds")?, 1, limits::MAX_ROUNDS)?;
        let clients_per_round = size(
            "clients_per_round",
            need(r.clients_per_round, "clients_per_round")?,
            1,
            limits::MAX_CLIENTS_PER_ROUND as u64,
        )?;
        let round = RoundConfig::from_raw(r.round.as_ref(), rounds, clients_per_round)?;
        let model = ModelSource::from_raw(need(r.model.as_ref(), "model")?)?;
        let train = TrainConfig::from_raw(r.train.as_ref())?;
        let min_samples = match r.eligibility.as_ref().and_then(|e| e.min_samples) {
            None => DEFAULT_MIN_SAMPLES,
            Some(m) => int("eligibility.min_samples", m, 0, limits::MAX_SAMPLES)?,
        };
        let evaluation_dataset = match r.evaluation.as_ref().and_then(|e| e.dataset.as_deref()) {
            None => None,
            Some(d) => {
                let Some(model) = model.built_in() else {
                    return Err(SpecError::new(
                        "evaluation.dataset",
                        "a model given by model.initial has no server-side evaluator; clients \
                         report evaluation (federated evaluation): use federated_every instead",
                    ));
                };
                let ds = DatasetName::from_str(d)
                    .map_err(|e| SpecError::new("evaluation.dataset", e.to_string()))?;
                let (shape, classes) = ds.sample_shape();
                if limits::product(&shape) != limits::product(&model.spec.input_shape)
                    || classes != model.spec.num_classes
                {
                    return Err(SpecError::new(
                        "evaluation.dataset",
                        format!("{d} does not fit the model's input_shape/num_classes"),
                    ));
                }
                Some(ds)
            }
        };
        let federated_evaluation = match &r.evaluation {
            None => None,
            Some(e) => match (e.federated_every, e.federated_clients) {
                (None, None) => {
                    if e.dataset.is_none() {
                        return Err(SpecError::new(
                            "evaluation",
                            "give dataset (server-side evaluation) or federated_every (federated \
                             evaluation by the clients), or remove [evaluation]",
                        ));
                    }
                    None
                }
                (None, Some(_)) => {
                    return Err(SpecError::new(
                        "evaluation.federated_clients",
                        "needs federated_every (evaluate every K rounds)",
                    ));
                }
                (Some(k), n) => Some(FederatedEvaluation {
                    every: int("evaluation.federated_every", k, 1, rounds)?,
                    clients: match n {
                        None => clients_per_round as u32,
                        Some(n) => int(
                            "evaluation.federated_clients",
                            n,
                            1,
                            MAX_FEDERATED_EVAL_CLIENTS,
                        )? as u32,
                    },
                }),
            },
        };

        let policy = round.policy(rounds, clients_per_round, r.secagg.is_some());
        // The smallest round that can commit, by the machine's own rule (Krum's f is checked
        // against it, distributed DP's noise share is sized by it).
        let min_reports = policy.min_reports();
        let strategy = match &r.strategy {
            None => StrategySpec::fedavg(),
            Some(c) => StrategySpec::from_config(c, min_reports)?,
        };
        let (strategy, privacy) = match &r.privacy {
            None => (strategy, None),
            Some(cfg) => {
                let spec = PrivacySpec::from_config(cfg, clients_per_round, min_reports)?;
                (strategy.with_privacy(spec.dp)?, Some(spec))
            }
        };
        let secagg = r
            .secagg
            .as_ref()
            .map(|s| SecAggConfig::from_raw(s, clients_per_round, &strategy))
            .transpose()?;
        let compression = crate::compression::compression_from_raw(
            r.compression.as_ref(),
            privacy.as_ref(),
            secagg.is_some(),
        )?;
        // Under `[secagg]`, quantization happens before masking, into the smallest safe ring.
        let secagg = match (secagg, compression) {
            (Some(s), crate::Compression::Quantize { bits, .. }) => {
                Some(s.with_quantization_bits(bits, clients_per_round)?)
            }
            (s, _) => s,
        };
        let registry = crate::release::registry_name(r.registry.as_ref())?;
        let release = crate::release::release_gate(r.release.as_ref(), registry.as_ref())?;
        Ok(Self {
            name: r.name.clone(),
            tenant,
            seed,
            rounds,
            clients_per_round,
            model,
            train,
            round,
            strategy,
            privacy,
            secagg,
            compression,
            min_samples,
            evaluation_dataset,
            registry,
            release,
            federated_evaluation,
        })
    }

    /// The round machine's policy: `[round]` for this job's rounds, with the secure-aggregation
    /// stages under `[secagg]`.
    pub fn policy(&self) -> RoundPolicy {
        self.round
            .policy(self.rounds, self.clients_per_round, self.secagg.is_some())
    }
}
