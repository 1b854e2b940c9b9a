//! The strategy's vocabulary: [`StrategyConfig`] as parsed from `[strategy]`, and the validated
//! [`StrategySpec`] (aggregator, filters, server optimizer, FedBuff) with every range check.

use serde::{Deserialize, Serialize};

use crate::dp::DpSpec;
use crate::error::ConfigError;
use crate::limits::{self, positive};

/// How the deltas of one round are combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregator {
    /// Sample-weighted mean, folded as reports arrive.
    Mean,
    /// Coordinate-wise median (unweighted).
    Median,
    /// Coordinate-wise trimmed mean dropping the `⌊β·n⌋` smallest and largest values (unweighted).
    TrimmedMean {
        /// Fraction trimmed at each end, in `[0, 0.5)`.
        beta: f64,
    },
    /// Krum (`m = 1`) or Multi-Krum: the unweighted mean of the `m` deltas closest to their
    /// `n − f − 2` nearest neighbours.
    Krum {
        /// Number of Byzantine clients tolerated; the round needs `n ≥ 2f + 3` reports.
        f: usize,
        /// Number of deltas selected and averaged.
        m: usize,
    },
}

/// How the aggregated delta `Δ` moves the global model `x`. `η` is [`StrategySpec::server_lr`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerOptimizer {
    /// `x ← x + η·Δ`.
    Sgd,
    /// FedAvgM: `v ← μ·v + Δ; x ← x + η·v`.
    Momentum {
        /// Momentum `μ` in `[0, 1)`.
        momentum: f64,
    },
    /// FedAdagrad: `m ← β₁m + (1−β₁)Δ; v ← v + Δ²; x ← x + η·m/(√v + τ)`.
    Adagrad {
        /// First-moment decay in `[0, 1)`.
        beta1: f64,
        /// Adaptivity `τ > 0`.
        tau: f64,
    },
    /// FedAdam: `m ← β₁m + (1−β₁)Δ; v ← β₂v + (1−β₂)Δ²; x ← x + η·m/(√v + τ)`.
    Adam {
        /// First-moment decay in `[0, 1)`.
        beta1: f64,
        /// Second-moment decay in `[0, 1)`.
        beta2: f64,
        /// Adaptivity `τ > 0`.
        tau: f64,
    },
    /// FedYogi: as Adam but `v ← v − (1−β₂)·Δ²·sign(v − Δ²)`.
    Yogi {
        /// First-moment decay in `[0, 1)`.
        beta1: f64,
        /// Second-moment decay in `[0, 1)`.
        beta2: f64,
        /// Adaptivity `τ > 0`.
        tau: f64,
    },
}

/// Thresholds of the anomaly filter; see [`robust::anomaly_filter`](crate::robust::anomaly_filter).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySpec {
    /// Largest robust z-score (median/MAD) of an update's norm within its round.
    pub max_norm_z: f64,
    /// Largest cosine distance (`1 − cos`, in `[0, 2]`) to the coordinate-wise median.
    pub max_cosine_distance: f64,
}

/// A validated strategy. Build one with [`StrategySpec::from_config`] or [`StrategySpec::fedavg`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategySpec {
    /// The name the strategy was configured by (for results and status).
    pub name: String,
    /// How deltas are combined.
    pub aggregator: Aggregator,
    /// How the combined delta is applied.
    pub optimizer: ServerOptimizer,
    /// Server learning rate `η > 0`.
    pub server_lr: f64,
    /// Norm bounding: each delta is scaled to at most this L2 norm before it counts.
    pub clip_norm: Option<f64>,
    /// Anomaly filter; when set, the round's deltas are buffered so they can be compared.
    pub anomaly: Option<AnomalySpec>,
    /// FedProx proximal coefficient `μ ≥ 0` sent to clients (0 = plain local SGD).
    pub proximal_mu: f64,
    /// SCAFFOLD control variates: reports carry `Δcᵢ` after the parameters, and the server step is the
    /// uniform (not sample-weighted) mean of the reports, as in the paper.
    pub scaffold: bool,
    /// DP-FedAvg (`[privacy]`): clipping, unweighted sum, Gaussian noise, fixed denominator. Set with
    /// [`StrategySpec::with_privacy`].
    #[serde(default)]
    pub dp: Option<DpSpec>,
    /// FedBuff: buffered asynchronous aggregation instead of rounds (see [`FedBuffSpec`]).
    #[serde(default)]
    pub fedbuff: Option<FedBuffSpec>,
}

/// Buffered asynchronous aggregation after FedBuff (Nguyen et al. 2022). The round machine then runs
/// no rounds: a client that checks in gets a task at once while fewer than `concurrency` are
/// training; each accepted report `i` adds `s(τᵢ)·Δᵢ`, where `Δᵢ` = its parameters − the model
/// version its task started from and `τᵢ` = versions committed since then; every `buffer_size`
/// accepted reports the server's optimizer ([`StrategySpec::optimizer`], chosen by the
/// `server_optimizer` key, SGD by default) takes a step with the mean `Σ s(τᵢ)·Δᵢ / Σ s(τᵢ)` —
/// with SGD, `global += server_lr × Σ s(τᵢ)·Δᵢ / Σ s(τᵢ)`.
/// Sample counts are validated but do not weight the step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FedBuffSpec {
    /// `K`: accepted reports per server step (≥ 1).
    pub buffer_size: usize,
    /// Reports whose base model is more than this many versions old are refused.
    pub max_staleness: u64,
    /// Most clients training at once (≥ 1).
    pub concurrency: usize,
    /// `a` in the staleness weight `s(τ) = 1/(1+τ)^a` (in `[0, 10]`; 0 = no discount).
    pub staleness_exponent: f64,
}

impl FedBuffSpec {
    /// The staleness weight `s(τ) = (1 + τ)^(−a)`.
    pub fn staleness_weight(&self, staleness: u64) -> f64 {
        (1.0 + staleness as f64).powf(-self.staleness_exponent)
    }
}

/// The `[strategy]` table of scenario and job files, before validation. Every key but `name` is
/// optional; a key that the named strategy does not take is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    /// One of [`STRATEGY_NAMES`].
    pub name: String,
    /// Server learning rate (all strategies; default 1, or 0.01 for the adaptive ones).
    pub server_lr: Option<f64>,
    /// FedAvgM momentum (default 0.9).
    pub momentum: Option<f64>,
    /// FedProx μ (default 0.01).
    pub mu: Option<f64>,
    /// Adaptive optimizers' first-moment decay (default 0.9; 0 for fedadagrad).
    pub beta1: Option<f64>,
    /// FedAdam / FedYogi second-moment decay (default 0.99).
    pub beta2: Option<f64>,
    /// Adaptive optimizers' τ (default 1e-3).
    pub tau: Option<f64>,
    /// Trimmed-mean β (required for trimmed_mean).
    pub beta: Option<f64>,
    /// Krum's f (required for krum).
    pub f: Option<usize>,
    /// Multi-Krum's m (default 1).
    pub m: Option<usize>,
    /// norm_bound's bound (required for norm_bound).
    pub max_norm: Option<f64>,
    /// Norm bounding on top of any strategy.
    pub clip_norm: Option<f64>,
    /// Anomaly filter on top of any strategy.
    pub anomaly: Option<AnomalySpec>,
    /// FedBuff's K, reports per server step (default 10).
    pub buffer_size: Option<usize>,
    /// FedBuff's largest accepted staleness in versions (default 10).
    pub max_staleness: Option<u64>,
    /// FedBuff's limit on clients training at once (default 100).
    pub concurrency: Option<usize>,
    /// FedBuff's staleness exponent `a` in `s(τ) = 1/(1+τ)^a` (default 0.5).
    pub staleness_exponent: Option<f64>,
    /// FedBuff's server optimizer, one of [`FEDBUFF_SERVER_OPTIMIZERS`] (default `sgd`); `momentum`
    /// takes `momentum`, `adagrad` takes `beta1` and `tau`, `adam` and `yogi` take `beta1`, `beta2`
    /// and `tau`, with the same defaults as fedavgm, fedadagrad, fedadam and fedyogi.
    pub server_optimizer: Option<String>,
}

/// Every server optimizer FedBuff's `server_optimizer` key accepts.
pub const FEDBUFF_SERVER_OPTIMIZERS: &[&str] = &["sgd", "momentum", "adagrad", "adam", "yogi"];

/// Every strategy name [`StrategyConfig::name`] accepts.
pub const STRATEGY_NAMES: &[&str] = &[
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadagrad",
    "fedadam",
    "fedyogi",
    "scaffold",
    "median",
    "trimmed_mean",
    "krum",
    "norm_bound",
    "fedbuff",
];

fn in_open_unit(field: &'static str, v: f64, lo_closed: bool) -> Result<f64, ConfigError> {
    let ok = v.is_finite() && v < 1.0 && if lo_closed { v >= 0.0 } else { v > 0.0 };
    if ok {
        Ok(v)
    } else {
        let lo = if lo_closed { "[0" } else { "(0" };
        Err(ConfigError::new(
            field,
            format!("must be in {lo}, 1), got {v}"),
        ))
    }
}

impl StrategySpec {
    /// Plain FedAvg (McMahan et al. 2017): weighted mean, server learning rate 1.
    pub fn fedavg() -> Self {
        Self {
            name: "fedavg".into(),
            aggregator: Aggregator::Mean,
            optimizer: ServerOptimizer::Sgd,
            server_lr: 1.0,
            clip_norm: None,
            anomaly: None,
            proximal_mu: 0.0,
            scaffold: false,
            dp: None,
            fedbuff: None,
        }
    }

    /// Adds DP-FedAvg to this strategy, refusing the combinations where its guarantee does not hold:
    /// robust aggregators and the anomaly filter (whether a client counts, or how much, depends on the
    /// other clients' updates, so one client's influence is no longer bounded by `C` over a fixed
    /// denominator), SCAFFOLD (the control variates would be released without noise), and
    /// `clip_norm`/`norm_bound` (DP sets its own clip norm in `[privacy]`). FedProx and the server
    /// optimizers are post-processing or local, and are allowed.
    pub fn with_privacy(mut self, dp: DpSpec) -> Result<Self, ConfigError> {
        let refuse = |why: String| Err(ConfigError::new("privacy", why));
        if !matches!(self.aggregator, Aggregator::Mean) {
            return refuse(format!(
                "differential privacy needs the mean aggregator; strategy `{}` is a robust rule whose per-client sensitivity is not bounded by the clip norm",
                self.name
            ));
        }
        if self.anomaly.is_some() {
            return refuse("differential privacy cannot be combined with strategy.anomaly (which clients count would depend on the others' updates)".into());
        }
        if self.scaffold {
            return refuse("differential privacy cannot be combined with scaffold (its control variates would be released without noise)".into());
        }
        if self.fedbuff.is_some() {
            return refuse("differential privacy is not wired into fedbuff's asynchronous steps yet (its accounting assumes sampled rounds)".into());
        }
        if self.clip_norm.is_some() {
            return refuse(format!(
                "strategy `{}` sets clip_norm/max_norm; under differential privacy the clip norm is privacy.clip_norm (remove it from [strategy])",
                self.name
            ));
        }
        self.dp = Some(dp);
        Ok(self)
    }

    /// Validates `cfg` for a round that aggregates at least `min_reports` reports (Krum needs
    /// `min_reports ≥ 2f + 3`). Errors name the parameter (`strategy.beta`, …) and its valid range.
    pub fn from_config(cfg: &StrategyConfig, min_reports: usize) -> Result<Self, ConfigError> {
        let name = cfg.name.as_str();
        if !STRATEGY_NAMES.contains(&name) {
            return Err(ConfigError::new(
                "strategy.name",
                format!(
                    "unknown strategy `{name}`; valid: {}",
                    STRATEGY_NAMES.join(", ")
                ),
            ));
        }
        // Refuse keys the named strategy does not take: a typo'd strategy must not silently run
        // with defaults.
        let takes: &[&str] = match name {
            "fedavgm" => &["momentum"],
            "fedprox" => &["mu"],
            "fedadagrad" => &["beta1", "tau"],
            "fedadam" | "fedyogi" => &["beta1", "beta2", "tau"],
            "trimmed_mean" => &["beta"],
            "krum" => &["f", "m"],
            "norm_bound" => &["max_norm"],
            "fedbuff" => &[
                "buffer_size",
                "max_staleness",
                "concurrency",
                "staleness_exponent",
                "server_optimizer",
                "momentum",
                "beta1",
                "beta2",
                "tau",
            ],
            _ => &[],
        };
        let given: [(&str, bool); 14] = [
            ("server_optimizer", cfg.server_optimizer.is_some()),
            ("buffer_size", cfg.buffer_size.is_some()),
            ("max_staleness", cfg.max_staleness.is_some()),
            ("concurrency", cfg.concurrency.is_some()),
            ("staleness_exponent", cfg.staleness_exponent.is_some()),
            ("momentum", cfg.momentum.is_some()),
            ("mu", cfg.mu.is_some()),
            ("beta1", cfg.beta1.is_some()),
            ("beta2", cfg.beta2.is_some()),
            ("tau", cfg.tau.is_some()),
            ("beta", cfg.beta.is_some()),
            ("f", cfg.f.is_some()),
            ("m", cfg.m.is_some()),
            ("max_norm", cfg.max_norm.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(k, set)| *set && !takes.contains(k)) {
            return Err(ConfigError::new(
                "strategy",
                format!(
                    "`{key}` is not a parameter of {name} (it takes: {})",
                    if takes.is_empty() {
                        "only server_lr, clip_norm, anomaly".to_string()
                    } else {
                        takes.join(", ")
                    }
                ),
            ));
        }
        // FedBuff: the server optimizer is a key of its own; the optimizer's parameters must match it.
        let fedbuff_optimizer = match (name, cfg.server_optimizer.as_deref()) {
            ("fedbuff", o) => {
                let o = o.unwrap_or("sgd");
                let keys: &[&str] = match o {
                    "sgd" => &[],
                    "momentum" => &["momentum"],
                    "adagrad" => &["beta1", "tau"],
                    "adam" | "yogi" => &["beta1", "beta2", "tau"],
                    _ => {
                        return Err(ConfigError::new(
                            "strategy.server_optimizer",
                            format!(
                                "unknown server optimizer `{o}`; valid: {}",
                                FEDBUFF_SERVER_OPTIMIZERS.join(", ")
                            ),
                        ));
                    }
                };
                let optimizer_keys: [(&str, &'static str, bool); 4] = [
                    ("momentum", "strategy.momentum", cfg.momentum.is_some()),
                    ("beta1", "strategy.beta1", cfg.beta1.is_some()),
                    ("beta2", "strategy.beta2", cfg.beta2.is_some()),
                    ("tau", "strategy.tau", cfg.tau.is_some()),
                ];
                if let Some((_, field, _)) = optimizer_keys
                    .iter()
                    .find(|(k, _, set)| *set && !keys.contains(k))
                {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "is not a parameter of fedbuff's server_optimizer = \"{o}\" (it takes: {}; server optimizers: {})",
                            if keys.is_empty() {
                                "none".to_string()
                            } else {
                                keys.join(", ")
                            },
                            FEDBUFF_SERVER_OPTIMIZERS.join(", ")
                        ),
                    ));
                }
                Some(o)
            }
            _ => None,
        };
        let adaptive = matches!(name, "fedadagrad" | "fedadam" | "fedyogi")
            || matches!(fedbuff_optimizer, Some("adagrad" | "adam" | "yogi"));
        let server_lr = positive(
            "strategy.server_lr",
            cfg.server_lr.unwrap_or(if adaptive { 0.01 } else { 1.0 }),
            limits::MAX_LEARNING_RATE,
        )?;
        let tau = || {
            positive(
                "strategy.tau",
                cfg.tau.unwrap_or(1e-3),
                limits::MAX_SMALL_CONSTANT,
            )
        };
        let beta1 = |d: f64| in_open_unit("strategy.beta1", cfg.beta1.unwrap_or(d), true);
        let beta2 = || in_open_unit("strategy.beta2", cfg.beta2.unwrap_or(0.99), true);
        let mut spec = Self {
            name: name.to_string(),
            server_lr,
            ..Self::fedavg()
        };
        match name {
            "fedavgm" => {
                spec.optimizer = ServerOptimizer::Momentum {
                    momentum: in_open_unit("strategy.momentum", cfg.momentum.unwrap_or(0.9), true)?,
                }
            }
            "fedprox" => {
                spec.proximal_mu = limits::non_negative(
                    "strategy.mu",
                    cfg.mu.unwrap_or(0.01),
                    limits::MAX_SMALL_CONSTANT,
                )?;
            }
            "fedadagrad" => {
                spec.optimizer = ServerOptimizer::Adagrad {
                    beta1: beta1(0.0)?,
                    tau: tau()?,
                }
            }
            "fedadam" => {
                spec.optimizer = ServerOptimizer::Adam {
                    beta1: beta1(0.9)?,
                    beta2: beta2()?,
                    tau: tau()?,
                }
            }
            "fedyogi" => {
                spec.optimizer = ServerOptimizer::Yogi {
                    beta1: beta1(0.9)?,
                    beta2: beta2()?,
                    tau: tau()?,
                }
            }
            "scaffold" => spec.scaffold = true,
            "median" => spec.aggregator = Aggregator::Median,
            "trimmed_mean" => {
                let beta = cfg.beta.ok_or_else(|| {
                    ConfigError::new("strategy.beta", "required for trimmed_mean, in [0, 0.5)")
                })?;
                if !(beta.is_finite() && (0.0..0.5).contains(&beta)) {
                    return Err(ConfigError::new(
                        "strategy.beta",
                        format!("must be in [0, 0.5), got {beta}"),
                    ));
                }
                spec.aggregator = Aggregator::TrimmedMean { beta };
            }
            "krum" => {
                let f = cfg
                    .f
                    .ok_or_else(|| ConfigError::new("strategy.f", "required for krum"))?;
                // n ≥ 2f + 3 must hold for the smallest round that can commit.
                let max_f = min_reports.saturating_sub(3) / 2;
                if min_reports < 3 || f > max_f {
                    return Err(ConfigError::new(
                        "strategy.f",
                        format!(
                            "krum needs at least 2f + 3 reports; a round may commit with {min_reports}, so f must be in 0..={max_f}, got {f}"
                        ),
                    ));
                }
                let m = cfg.m.unwrap_or(1);
                let max_m = min_reports - f;
                if m == 0 || m > max_m {
                    return Err(ConfigError::new(
                        "strategy.m",
                        format!("must be in 1..={max_m} (n − f), got {m}"),
                    ));
                }
                spec.aggregator = Aggregator::Krum { f, m };
            }
            "norm_bound" => {
                let max_norm = cfg.max_norm.ok_or_else(|| {
                    ConfigError::new("strategy.max_norm", "required for norm_bound, > 0")
                })?;
                spec.clip_norm = Some(positive("strategy.max_norm", max_norm, limits::MAX_NORM)?);
            }
            "fedbuff" => {
                if cfg.clip_norm.is_some() {
                    return Err(ConfigError::new(
                        "strategy.clip_norm",
                        "is not supported with fedbuff",
                    ));
                }
                if cfg.anomaly.is_some() {
                    return Err(ConfigError::new(
                        "strategy.anomaly",
                        "is not supported with fedbuff (its server step folds each update as it arrives)",
                    ));
                }
                let buffer_size = cfg.buffer_size.unwrap_or(10);
                limits::count("strategy.buffer_size", buffer_size, 1, limits::MAX_CLIENTS)?;
                let max_staleness = cfg.max_staleness.unwrap_or(10);
                if max_staleness > 1000 {
                    return Err(ConfigError::new(
                        "strategy.max_staleness",
                        format!(
                            "must be in 0..=1000 (the server may keep that many old models), got {max_staleness}"
                        ),
                    ));
                }
                let concurrency = cfg.concurrency.unwrap_or(100);
                limits::count("strategy.concurrency", concurrency, 1, limits::MAX_CLIENTS)?;
                let a = cfg.staleness_exponent.unwrap_or(0.5);
                if !(a.is_finite() && (0.0..=10.0).contains(&a)) {
                    return Err(ConfigError::new(
                        "strategy.staleness_exponent",
                        format!("must be in [0, 10], got {a}"),
                    ));
                }
                spec.fedbuff = Some(FedBuffSpec {
                    buffer_size,
                    max_staleness,
                    concurrency,
                    staleness_exponent: a,
                });
                spec.optimizer = match fedbuff_optimizer.unwrap_or("sgd") {
                    "momentum" => ServerOptimizer::Momentum {
                        momentum: in_open_unit(
                            "strategy.momentum",
                            cfg.momentum.unwrap_or(0.9),
                            true,
                        )?,
                    },
                    "adagrad" => ServerOptimizer::Adagrad {
                        beta1: beta1(0.0)?,
                        tau: tau()?,
                    },
                    "adam" => ServerOptimizer::Adam {
                        beta1: beta1(0.9)?,
                        beta2: beta2()?,
                        tau: tau()?,
                    },
                    "yogi" => ServerOptimizer::Yogi {
                        beta1: beta1(0.9)?,
                        beta2: beta2()?,
                        tau: tau()?,
                    },
                    _ => ServerOptimizer::Sgd,
                };
            }
            _ => {}
        }
        if let Some(c) = cfg.clip_norm {
            if spec.clip_norm.is_some() {
                return Err(ConfigError::new(
                    "strategy.clip_norm",
                    "norm_bound already sets the bound with max_norm",
                ));
            }
            spec.clip_norm = Some(positive("strategy.clip_norm", c, limits::MAX_NORM)?);
        }
        if let Some(a) = cfg.anomaly {
            positive(
                "strategy.anomaly.max_norm_z",
                a.max_norm_z,
                limits::MAX_SMALL_CONSTANT,
            )?;
            if !(a.max_cosine_distance.is_finite()
                && a.max_cosine_distance > 0.0
                && a.max_cosine_distance <= 2.0)
            {
                return Err(ConfigError::new(
                    "strategy.anomaly.max_cosine_distance",
                    format!("must be in (0, 2], got {}", a.max_cosine_distance),
                ));
            }
            spec.anomaly = Some(a);
        }
        Ok(spec)
    }

    /// Whether the round's deltas must all be held at once (robust aggregators, anomaly filter).
    pub fn buffers_updates(&self) -> bool {
        self.anomaly.is_some() || !matches!(self.aggregator, Aggregator::Mean)
    }

    /// Checks that the strategy needs only the *sum* of the round's updates, which is all secure
    /// aggregation reveals to the server.
    ///
    /// Allowed: the mean aggregator with any server optimizer (fedavg, fedavgm, fedprox, fedadagrad,
    /// fedadam, fedyogi). The mean is then **unweighted** (each contributor counts once), because a
    /// client's sample count is not part of the masked sum. Refused, with the key that selects it:
    /// robust aggregators (median, trimmed_mean, krum) and SCAFFOLD (`strategy.name`), the anomaly
    /// filter (`strategy.anomaly`) and server-side norm bounding (`strategy.clip_norm`, or
    /// `strategy.name` for norm_bound) — under secure aggregation clients clip their own update to
    /// the secure-aggregation clip range instead. `[privacy]` is allowed in distributed mode with a
    /// fixed clip norm only ([`DpSpec::check_secagg_mode`]).
    pub fn check_secure_aggregation(&self) -> Result<(), ConfigError> {
        let sum_only = "secure aggregation reveals only the sum of the updates; \
                        use fedavg, fedavgm, fedprox, fedadagrad, fedadam or fedyogi";
        if self.fedbuff.is_some() {
            return Err(ConfigError::new(
                "strategy.name",
                format!(
                    "`{}` is asynchronous (no rounds, each update weighted by its own staleness), but secure \
                     aggregation needs a synchronous cohort; {sum_only}",
                    self.name
                ),
            ));
        }
        if !matches!(self.aggregator, Aggregator::Mean) {
            return Err(ConfigError::new(
                "strategy.name",
                format!(
                    "`{}` needs every individual update, but {sum_only}",
                    self.name
                ),
            ));
        }
        if self.scaffold {
            return Err(ConfigError::new(
                "strategy.name",
                format!(
                    "`{}` needs each client's control-variate update, but {sum_only}",
                    self.name
                ),
            ));
        }
        if self.anomaly.is_some() {
            return Err(ConfigError::new(
                "strategy.anomaly",
                format!("the anomaly filter compares individual updates, but {sum_only}"),
            ));
        }
        if let Some(d) = &self.dp {
            // Distributed DP: clients clip and add their noise share before masking; the server
            // divides the unmasked sum by the fixed denominator ([`Strategy::apply_secure_sum`]).
            // The clip range is checked by the drivers, which know it (`DpSpec::check_secure_aggregation`).
            d.check_secagg_mode()?;
        }
        if self.clip_norm.is_some() {
            let field = if self.name == "norm_bound" {
                "strategy.name"
            } else {
                "strategy.clip_norm"
            };
            return Err(ConfigError::new(
                field,
                "server-side norm bounding needs individual updates, but secure aggregation reveals only \
                 their sum; clients clip to the secure-aggregation clip_range instead",
            ));
        }
        Ok(())
    }
}
