//! Differential privacy for federated averaging: the mechanisms of DP-FedAvg (McMahan, Ramage,
//! Talwar, Zhang 2018), adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021) and the client's
//! share of distributed noise, plus the `[privacy]` configuration shared by scenario and job files.
//!
//! This is the one implementation of the mechanisms; `flotilla-privacy` holds the accountant and the
//! budgets, and re-exports what it needs from here.
//!
//! **Central DP** (a trusted server): every client's delta `Δᵢ = new − global` is clipped to L2 norm
//! `C`, the clipped deltas are summed *unweighted*, `N(0, (σC)²)` is added to every coordinate, and the
//! sum is divided by the *expected* cohort size `m` (`clients_per_round`), never by the number that
//! arrived (that count depends on who took part). The result goes to the server optimizer (which is
//! post-processing). One round is one step of the sampled Gaussian mechanism with noise multiplier `σ`
//! for the accountant. Sample counts are ignored: weighting by them would make the sensitivity depend
//! on a client's data size.
//!
//! **Distributed DP** (the server is not trusted with individual updates): each client clips its own
//! delta and adds `N(0, (σC)²/n_min)` before the update leaves the device and before secure
//! aggregation masks it ([`privatize_client_update`]); `n_min` is the fewest reports a round can commit
//! with, so every committed sum carries at least the full `N(0, (σC)²)`. The server adds nothing and
//! clips nothing (it cannot: under secure aggregation it only sees the sum). The guarantee against the
//! coordinator needs secure aggregation; without it the coordinator sees each update with only
//! `σ/√n_min` of noise.
//!
//! **Distributed DP over secure aggregation** (`[privacy] mode = "distributed"` with `[secagg]`):
//! each client clips its delta to `C`, adds its share `N(0, (σC)²/n_min)` per coordinate from its
//! *own* OS entropy, and only then fixed-point encodes and masks it. `n_min` is the machine's minimum
//! report count (`RoundPolicy::min_reports`), which is also the fewest masked inputs a secure-
//! aggregation round commits with, so the unmasked sum of `k ≥ n_min` contributions carries noise of
//! standard deviation `σC·√(k/n_min) ≥ σC` — more survivors than the minimum means more noise than
//! needed, which is safe (only utility suffers). The coordinator unmasks the sum and divides it by
//! the fixed denominator `m = clients_per_round` (as central DP does), never by the survivor count,
//! and adds no noise of its own ([`crate::strategy::Strategy::apply_secure_sum`]). The accounting is
//! the central mode's: one step of the sampled Gaussian mechanism with multiplier `σ` per round.
//! Adaptive clipping is refused (its clipped/unclipped count would need a secure count of its own).
//!
//! The secure-aggregation encoding clamps every coordinate to `±clip_range` before masking. A
//! clipped delta has every coordinate within `±C`, and the noise share exceeds
//! [`SECAGG_NOISE_TAIL`] standard deviations with probability `< 2·10⁻²³` per value, so
//! `secagg.clip_range ≥ C + SECAGG_NOISE_TAIL · σC/√n_min` is required at load
//! ([`DpSpec::check_secure_aggregation`]); clients still count (and log) any value that would be
//! clamped. Caveats, documented rather than hidden: (1) the accounting treats the fixed-point sum as
//! the continuous Gaussian mechanism — each contribution is rounded to a grid of step
//! `2·clip_range/(2³²−1)·clients_per_round` before summing, which is not analysed formally (the
//! distributed discrete Gaussian of Kairouz, Liu, Steinke 2021 is the rigorous treatment); (2) the
//! guarantee against the coordinator assumes it follows the protocol (semi-honest): a coordinator
//! that finalized a round with fewer than `n_min` masked inputs would release a sum with less than
//! `σC` of noise, which clients cannot check.
//!
//! **Noise randomness.** Central noise is drawn from ChaCha20 keyed by `SHA-256(key ‖ round ‖ attempt)`.
//! The key is part of the strategy's server state (so a restored coordinator draws the same noise) and
//! must be *secret*: whoever knows it can subtract the noise. [`default_noise_key`] derives it from the
//! job seed — reproducible, which the simulator wants, but **not secret** (a client can invert its
//! task seed back to the job seed), so a networked coordinator must install a key from OS entropy
//! (`RoundMachine::set_noise_key`). A client's noise share must likewise come from the client's own
//! entropy, never from its task seed (the server knows the task seed).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::norms;

/// Where the noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpMode {
    /// The server clips and noises the sum (trusted server).
    Central,
    /// Clients clip and add their share of the noise; the server only sums (meant for secure
    /// aggregation).
    Distributed,
}

/// How the clip norm `C` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipRule {
    /// A fixed `C`.
    Fixed {
        /// `C > 0`.
        clip_norm: f64,
    },
    /// `C` follows a quantile of the update norms (Andrew et al. 2021). Central mode only.
    Adaptive {
        /// Initial `C > 0`.
        initial_clip_norm: f64,
        /// Target quantile `γ ∈ [0, 1]` of unclipped updates.
        target_quantile: f64,
        /// Geometric learning rate `η_C ≥ 0`.
        learning_rate: f64,
        /// Standard deviation `σ_b` of the noise on the unclipped count; `2σ_b > σ`.
        count_noise_std: f64,
    },
}

/// A validated DP-FedAvg configuration, part of [`crate::strategy::StrategySpec`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpSpec {
    /// Central or distributed noise.
    pub mode: DpMode,
    /// Fixed or adaptive clipping.
    pub clip: ClipRule,
    /// Noise multiplier `σ` the round is accounted with.
    pub noise_multiplier: f64,
    /// The fixed denominator `m`: the expected number of reports per round (`clients_per_round`).
    pub expected_clients: usize,
    /// Distributed mode: `n_min`, the fewest reports a round can commit with; each client's share has
    /// standard deviation `σC/√n_min`.
    pub min_contributors: usize,
}

/// Optional keys of `[privacy.adaptive]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveClipConfig {
    /// Initial clip norm (default 0.1, the paper's).
    pub initial_clip_norm: Option<f64>,
    /// Target quantile γ (default 0.5).
    pub target_quantile: Option<f64>,
    /// Learning rate η_C (default 0.2).
    pub learning_rate: Option<f64>,
    /// Count noise σ_b (default `clients_per_round / 20`).
    pub count_noise_std: Option<f64>,
}

/// The `[privacy]` table of scenario and job files, before validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `"central"` (default) or `"distributed"`.
    pub mode: Option<String>,
    /// Noise multiplier σ (required, > 0).
    pub noise_multiplier: Option<f64>,
    /// Fixed clip norm C (give this or `[privacy.adaptive]`).
    pub clip_norm: Option<f64>,
    /// Adaptive clipping instead of a fixed C.
    pub adaptive: Option<AdaptiveClipConfig>,
    /// δ of the reported (ε, δ) and of the budget (required, in (0, 1)).
    pub delta: Option<f64>,
    /// Budget: the job stops before a round that would take ε above this.
    pub max_epsilon: Option<f64>,
    /// Coordinator only: the number of clients the cohort is sampled from, for `q = m / population`.
    pub population: Option<u64>,
}

/// A validated `[privacy]` table: the mechanism plus what the drivers account with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpec {
    /// The mechanism, run by the strategy.
    pub dp: DpSpec,
    /// δ.
    pub delta: f64,
    /// Largest ε the job may reach at δ, if budgeted.
    pub max_epsilon: Option<f64>,
    /// Population the cohort is sampled from (coordinator; the simulator knows its client count).
    pub population: Option<u64>,
}

use crate::limits::{self, positive};

impl PrivacySpec {
    /// Validates `cfg` for rounds of `clients_per_round` expected reports that may commit with as few
    /// as `min_reports`. Errors name the parameter and its valid range.
    pub fn from_config(
        cfg: &PrivacyConfig,
        clients_per_round: usize,
        min_reports: usize,
    ) -> Result<Self, ConfigError> {
        let mode = match cfg.mode.as_deref().unwrap_or("central") {
            "central" => DpMode::Central,
            "distributed" => DpMode::Distributed,
            other => {
                return Err(ConfigError::new(
                    "privacy.mode",
                    format!("must be \"central\" or \"distributed\", got \"{other}\""),
                ));
            }
        };
        let sigma = cfg
            .noise_multiplier
            .ok_or_else(|| ConfigError::new("privacy.noise_multiplier", "is required, > 0"))?;
        let sigma = positive(
            "privacy.noise_multiplier",
            sigma,
            limits::MAX_NOISE_MULTIPLIER,
        )?;
        if clients_per_round == 0 {
            return Err(ConfigError::new("clients_per_round", "must be ≥ 1"));
        }
        let clip = match (cfg.clip_norm, &cfg.adaptive) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "privacy.clip_norm",
                    "give either clip_norm or [privacy.adaptive], not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "privacy.clip_norm",
                    "is required (> 0), unless [privacy.adaptive] is given",
                ));
            }
            (Some(c), None) => ClipRule::Fixed {
                clip_norm: positive("privacy.clip_norm", c, limits::MAX_NORM)?,
            },
            (None, Some(a)) => {
                if mode == DpMode::Distributed {
                    return Err(ConfigError::new(
                        "privacy.adaptive",
                        "adaptive clipping needs the server to see each client's clipped/unclipped bit, which distributed mode \
                         (and [secagg]) hides; it is only supported in central mode — give a fixed privacy.clip_norm",
                    ));
                }
                let initial = positive(
                    "privacy.adaptive.initial_clip_norm",
                    a.initial_clip_norm.unwrap_or(0.1),
                    limits::MAX_NORM,
                )?;
                let gamma = a.target_quantile.unwrap_or(0.5);
                if !(gamma.is_finite() && (0.0..=1.0).contains(&gamma)) {
                    return Err(ConfigError::new(
                        "privacy.adaptive.target_quantile",
                        format!("must be in [0, 1], got {gamma}"),
                    ));
                }
                let lr = limits::non_negative(
                    "privacy.adaptive.learning_rate",
                    a.learning_rate.unwrap_or(0.2),
                    limits::MAX_SMALL_CONSTANT,
                )?;
                let sb = a.count_noise_std.unwrap_or(clients_per_round as f64 / 20.0);
                if sb.is_finite() && sb > limits::MAX_NORM {
                    return Err(ConfigError::new(
                        "privacy.adaptive.count_noise_std",
                        format!("must be ≤ {:e}, got {sb:e}", limits::MAX_NORM),
                    ));
                }
                if !(sb.is_finite() && 2.0 * sb > sigma) {
                    return Err(ConfigError::new(
                        "privacy.adaptive.count_noise_std",
                        format!(
                            "must be > noise_multiplier/2 = {} (the count spends part of the privacy budget, Andrew et al. 2021 Thm 1), got {sb}",
                            sigma / 2.0
                        ),
                    ));
                }
                ClipRule::Adaptive {
                    initial_clip_norm: initial,
                    target_quantile: gamma,
                    learning_rate: lr,
                    count_noise_std: sb,
                }
            }
        };
        let delta = cfg.delta.ok_or_else(|| {
            ConfigError::new(
                "privacy.delta",
                format!(
                    "is required, in [{:e}, {}]",
                    limits::MIN_DELTA,
                    limits::MAX_DELTA
                ),
            )
        })?;
        let delta = limits::delta("privacy.delta", delta)?;
        let max_epsilon = cfg
            .max_epsilon
            .map(|e| positive("privacy.max_epsilon", e, limits::MAX_EPSILON))
            .transpose()?;
        if let Some(p) = cfg.population {
            limits::count("privacy.population", p, 1, limits::MAX_POPULATION)?;
        }
        let dp = DpSpec {
            mode,
            clip,
            noise_multiplier: sigma,
            expected_clients: clients_per_round,
            min_contributors: min_reports.max(1),
        };
        // Adaptive clipping's update noise must exist.
        dp.update_noise_multiplier()?;
        Ok(Self {
            dp,
            delta,
            max_epsilon,
            population: cfg.population,
        })
    }
}

impl DpSpec {
    /// The clip norm a round starts with (the initial one for adaptive clipping).
    pub fn initial_clip_norm(&self) -> f64 {
        match self.clip {
            ClipRule::Fixed { clip_norm } => clip_norm,
            ClipRule::Adaptive {
                initial_clip_norm, ..
            } => initial_clip_norm,
        }
    }

    /// The noise multiplier `z` applied to the update sum: `σ` with a fixed clip; with adaptive
    /// clipping `(σ⁻² − (2σ_b)⁻²)^(−1/2)`, so that together with the count noise the round costs what
    /// noise multiplier `σ` costs (Andrew et al. 2021, Theorem 1).
    pub fn update_noise_multiplier(&self) -> Result<f64, ConfigError> {
        match self.clip {
            ClipRule::Fixed { .. } => Ok(self.noise_multiplier),
            ClipRule::Adaptive {
                count_noise_std, ..
            } => {
                let inv = self.noise_multiplier.powi(-2) - (2.0 * count_noise_std).powi(-2);
                if inv.is_finite() && inv > 0.0 {
                    Ok(inv.powf(-0.5))
                } else {
                    Err(ConfigError::new(
                        "privacy.adaptive.count_noise_std",
                        "must be > noise_multiplier/2",
                    ))
                }
            }
        }
    }

    /// Distributed mode: the standard deviation of one client's noise share, `σC/√n_min`.
    pub fn client_noise_std(&self) -> f64 {
        self.noise_multiplier * self.initial_clip_norm()
            / (self.min_contributors.max(1) as f64).sqrt()
    }
}

/// Standard deviations of a client's noise share that `secagg.clip_range` must leave room for
/// beyond the clip norm (see the module documentation).
pub const SECAGG_NOISE_TAIL: f64 = 10.0;

impl DpSpec {
    /// The smallest `secagg.clip_range` this mechanism can run with: `C + SECAGG_NOISE_TAIL · σC/√n_min`
    /// (a clipped coordinate is within `±C`; the noise share stays within `SECAGG_NOISE_TAIL` standard
    /// deviations except with probability `< 2·10⁻²³` per value).
    pub fn secagg_min_clip_range(&self) -> f64 {
        self.initial_clip_norm() + SECAGG_NOISE_TAIL * self.client_noise_std()
    }

    /// Checks that this mechanism can run over secure aggregation with per-coordinate clip range
    /// `clip_range`: [`DpSpec::check_secagg_mode`], and `clip_range ≥`
    /// [`DpSpec::secagg_min_clip_range`] (`secagg.clip_range`). Errors name the key.
    pub fn check_secure_aggregation(&self, clip_range: f64) -> Result<(), ConfigError> {
        self.check_secagg_mode()?;
        let needed = self.secagg_min_clip_range();
        if !(clip_range.is_finite() && clip_range >= needed) {
            return Err(ConfigError::new(
                "secagg.clip_range",
                format!(
                    "must be ≥ {needed:.6} to hold a clipped coordinate (privacy.clip_norm = {c}) plus {SECAGG_NOISE_TAIL} \
                     standard deviations of each client's noise share (privacy.noise_multiplier × clip_norm / √min_reports \
                     = {s:.6}, min_reports = {n}); got {clip_range}",
                    c = self.initial_clip_norm(),
                    s = self.client_noise_std(),
                    n = self.min_contributors.max(1),
                ),
            ));
        }
        Ok(())
    }

    /// The part of [`DpSpec::check_secure_aggregation`] that needs no clip range: a fixed clip norm
    /// (else `privacy.adaptive`) and distributed mode (else `privacy.mode`).
    pub fn check_secagg_mode(&self) -> Result<(), ConfigError> {
        if matches!(self.clip, ClipRule::Adaptive { .. }) {
            return Err(ConfigError::new(
                "privacy.adaptive",
                "adaptive clipping cannot run with [secagg]: it needs the count of unclipped updates, which \
                 secure aggregation hides (it would need a secure count of its own); give a fixed privacy.clip_norm",
            ));
        }
        if self.mode != DpMode::Distributed {
            return Err(ConfigError::new(
                "privacy.mode",
                "with [secagg] the noise must be added by the clients before masking: set mode = \"distributed\" \
                 (central mode would have the server noise a sum it should not be trusted with)",
            ));
        }
        Ok(())
    }
}

/// What clipping did to one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOutcome {
    /// The L2 norm before clipping (NaN/∞ if the update held a non-finite value; it is then zeroed).
    pub norm: f64,
    /// Whether the update was scaled down (`norm > C`).
    pub clipped: bool,
}

/// Scales `v` so that its L2 norm (as [`norms::l2_norm`] computes it) is **at most** `clip_norm`;
/// an update within `C` is untouched. Unlike [`norms::clip_to_norm`], which may land a few ulps above
/// the bound, this guarantees `‖v‖ ≤ C` (the sensitivity DP needs): it aims slightly below `C` when
/// rounding overshoots, and zeroes the vector in the (theoretical) worst case. A non-finite `v` is
/// zeroed. `clip_norm` must be finite and ≥ 0 (a negative or NaN bound counts as 0).
pub fn clip_delta(v: &mut [f32], clip_norm: f64) -> ClipOutcome {
    let bound = if clip_norm >= 0.0 { clip_norm } else { 0.0 };
    let norm = norms::clip_to_norm(v, bound);
    if !norm.is_finite() {
        return ClipOutcome {
            norm,
            clipped: true,
        };
    }
    if norm <= bound {
        return ClipOutcome {
            norm,
            clipped: false,
        };
    }
    for pass in 1..=4 {
        let now = norms::l2_norm(v);
        if now <= bound {
            return ClipOutcome {
                norm,
                clipped: true,
            };
        }
        norms::clip_to_norm(
            v,
            bound * (1.0 - 4.0 * f64::from(f32::EPSILON) * f64::from(pass)),
        );
    }
    if norms::l2_norm(v) > bound {
        v.fill(0.0);
    }
    ClipOutcome {
        norm,
        clipped: true,
    }
}

/// Adds independent `N(0, std²)` to every value, drawing from `rng`. `std = 0` draws nothing.
pub fn add_gaussian_noise<R: Rng + ?Sized>(values: &mut [f64], std: f64, rng: &mut R) {
    if std > 0.0 && std.is_finite() {
        for x in values.iter_mut() {
            let z: f64 = StandardNormal.sample(rng);
            *x += std * z;
        }
    }
}

/// Distributed DP, on the client: clips `delta` (`new − global`) to `C` and adds this client's share
/// of the noise, `N(0, (σC)²/n_min)` per coordinate, in place. Send `global + delta` afterwards (or
/// the masked delta under secure aggregation).
///
/// `rng` must be the client's own entropy (e.g. `ChaCha20Rng::from_os_rng()`), never seeded from the
/// task seed: the server knows that seed and could subtract the share. The simulator is the exception
/// (it has no adversary and wants reproducible runs).
pub fn privatize_client_update<R: Rng + ?Sized>(
    delta: &mut [f32],
    spec: &DpSpec,
    rng: &mut R,
) -> ClipOutcome {
    clip_and_add_noise(
        delta,
        spec.initial_clip_norm(),
        spec.client_noise_std(),
        rng,
    )
}

/// The client's side of distributed DP with the two numbers the client is sent (the secagg task's
/// `dp_clip_norm` and `dp_noise_std`): clips `delta` to L2 norm `clip_norm` ([`clip_delta`]), then
/// adds independent `N(0, noise_std²)` to every value from `rng`, in place. `noise_std = 0` (or a
/// non-finite one) adds nothing. See [`privatize_client_update`] for where `rng` must come from.
pub fn clip_and_add_noise<R: Rng + ?Sized>(
    delta: &mut [f32],
    clip_norm: f64,
    noise_std: f64,
    rng: &mut R,
) -> ClipOutcome {
    let out = clip_delta(delta, clip_norm);
    if noise_std > 0.0 && noise_std.is_finite() {
        for x in delta.iter_mut() {
            let z: f64 = StandardNormal.sample(rng);
            *x = (f64::from(*x) + noise_std * z) as f32;
        }
    }
    out
}

/// How many values of `v` lie outside `±clip_range` (the secure-aggregation encoding clamps them);
/// a NaN counts as outside.
pub fn count_outside(v: &[f32], clip_range: f64) -> u64 {
    v.iter()
        .filter(|x| {
            let a = f64::from(**x).abs();
            a.is_nan() || clip_range.is_nan() || a > clip_range
        })
        .count() as u64
}

/// The reproducible (not secret) noise key the round machine starts with: `SHA-256("flotilla-dp-noise"
/// ‖ seed)`. Fine for simulation; a coordinator replaces it with a key from OS entropy.
pub fn default_noise_key(seed: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"flotilla-dp-noise-v1");
    h.update(seed.to_le_bytes());
    h.finalize().into()
}

/// The noise RNG of one round attempt: ChaCha20 seeded with `SHA-256(key ‖ round ‖ attempt)`.
pub fn noise_rng(key: &[u8; 32], round: u64, attempt: u32) -> ChaCha20Rng {
    let mut h = Sha256::new();
    h.update(key);
    h.update(round.to_le_bytes());
    h.update(attempt.to_le_bytes());
    ChaCha20Rng::from_seed(h.finalize().into())
}

/// One adaptive-clipping step (Andrew et al. 2021): `unclipped` of `reported` updates had norm ≤ C;
/// the centred count is noised with `N(0, σ_b²)` from `rng`, divided by the expected cohort size `m`,
/// and `C ← C·exp(−η_C (b̃ − γ))`. Returns the new `C` (kept positive and finite) and `b̃`.
pub fn adaptive_clip_step<R: Rng + ?Sized>(
    clip_norm: f64,
    unclipped: u64,
    reported: u64,
    spec: &DpSpec,
    rng: &mut R,
) -> (f64, f64) {
    let ClipRule::Adaptive {
        target_quantile,
        learning_rate,
        count_noise_std,
        ..
    } = spec.clip
    else {
        return (clip_norm, f64::NAN);
    };
    let centred = unclipped.min(reported) as f64 - 0.5 * reported as f64;
    let z: f64 = StandardNormal.sample(rng);
    let fraction = (centred + count_noise_std * z) / spec.expected_clients.max(1) as f64 + 0.5;
    let next = clip_norm * (-learning_rate * (fraction - target_quantile)).exp();
    (
        if next.is_finite() && next > 0.0 {
            next
        } else {
            clip_norm
        },
        fraction,
    )
}

/// What the DP mechanism did in one committed round (for results and status).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpRoundInfo {
    /// The clip norm used this round.
    pub clip_norm: f64,
    /// Standard deviation of the noise the server added to the sum (0 in distributed mode).
    pub noise_std: f64,
    /// Reports whose delta was within the clip norm (central mode).
    pub unclipped: u64,
    /// Reports summed.
    pub reports: u64,
    /// Adaptive clipping: the clip norm the next round uses.
    pub next_clip_norm: f64,
}

#[cfg(test)]
mod tests;
