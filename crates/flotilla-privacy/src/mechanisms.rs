//! The mechanisms: L2 clipping (fixed and adaptive), Gaussian noise on a sum (central DP) and
//! noise shares added by clients (distributed DP).
//!
//! DP-FedAvg (McMahan et al. 2018) with these pieces: each sampled client's update is clipped to
//! L2 norm `C`; the server sums the clipped updates and adds `N(0, σ²C²)` to every coordinate
//! ([`add_central_noise`]); it divides by the *expected* number of clients `q·N`, not by the
//! count that arrived (which would depend on who took part). One such round is one step of the
//! Poisson-sampled Gaussian mechanism with noise multiplier `σ` for the accountant.
//!
//! Randomness always comes from an RNG the caller passes in (seed it from the job seed, e.g.
//! `rand_chacha::ChaCha20Rng`); nothing here reads a global RNG. Noise is continuous Gaussian
//! computed in `f64` and rounded to the element type, the usual practice; a floating-point
//! sample is not an exact Gaussian, so the guarantee is the standard one modulo that
//! (Mironov 2012) — a discrete Gaussian would be needed to close that gap.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{
    Param, PrivacyError, check_noise_multiplier, non_negative, positive, unit_interval,
};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Element types of update vectors: `f32` and `f64`.
pub trait Real: Copy + sealed::Sealed {
    /// Widens to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Rounds an `f64` to this type.
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// The L2 norm of `v`, accumulated in `f64` (without overflow for large `f64` values). NaN or
/// infinity when `v` holds one.
pub fn l2_norm<T: Real>(v: &[T]) -> f64 {
    let sum_sq: f64 = v.iter().map(|x| x.to_f64() * x.to_f64()).sum();
    if sum_sq.is_finite() {
        return sum_sq.sqrt();
    }
    // Overflow (or a non-finite element): rescale by the largest magnitude, like hypot.
    let max = v.iter().map(|x| x.to_f64().abs()).fold(0.0f64, f64::max);
    if !max.is_finite() || v.iter().any(|x| !x.to_f64().is_finite()) {
        return f64::NAN;
    }
    let inv = 1.0 / max;
    let scaled: f64 = v
        .iter()
        .map(|x| (x.to_f64() * inv) * (x.to_f64() * inv))
        .sum();
    max * scaled.sqrt()
}

/// What [`clip_l2`] did to one update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipOutcome {
    /// The update's L2 norm before clipping.
    pub norm: f64,
    /// Whether it was scaled down (`norm > C`). Adaptive clipping counts the updates that were
    /// *not* clipped.
    pub clipped: bool,
}

/// Scales `update` in place so that its L2 norm is at most `clip_norm` (`C`, finite and > 0);
/// an update already within `C` is left untouched. After clipping, [`l2_norm`] of the update is
/// guaranteed `≤ C` (rounding to the element type is absorbed by re-scaling when needed).
/// A non-finite element is an error and leaves the update untouched.
pub fn clip_l2<T: Real>(update: &mut [T], clip_norm: f64) -> Result<ClipOutcome, PrivacyError> {
    positive(Param::ClipNorm, clip_norm)?;
    let norm = l2_norm(update);
    if !norm.is_finite() {
        return Err(PrivacyError::NonFinite);
    }
    if norm <= clip_norm {
        return Ok(ClipOutcome {
            norm,
            clipped: false,
        });
    }
    let mut current = norm;
    // Each pass scales by C/‖u‖; rounding can leave the result a few ulps above C, in which case
    // the next pass aims slightly below C. Two passes suffice in practice; the loop is bounded and
    // ends with a vector of zeros in the (theoretical) worst case.
    for pass in 0..4 {
        let shrink = if pass == 0 {
            1.0
        } else {
            1.0 - 4.0 * f64::from(f32::EPSILON) * f64::from(pass)
        };
        let scale = clip_norm / current * shrink;
        for x in update.iter_mut() {
            *x = T::from_f64(x.to_f64() * scale);
        }
        current = l2_norm(update);
        if current <= clip_norm {
            return Ok(ClipOutcome {
                norm,
                clipped: true,
            });
        }
    }
    for x in update.iter_mut() {
        *x = T::from_f64(0.0);
    }
    Ok(ClipOutcome {
        norm,
        clipped: true,
    })
}

/// Adds independent `N(0, std²)` noise to every element of `values`, drawing from `rng`.
/// `std` must be finite and ≥ 0; `std = 0` adds nothing and draws nothing.
pub fn add_gaussian_noise<T: Real, R: Rng + ?Sized>(
    values: &mut [T],
    std: f64,
    rng: &mut R,
) -> Result<(), PrivacyError> {
    non_negative(Param::NoiseStd, std)?;
    if std == 0.0 {
        return Ok(());
    }
    for x in values.iter_mut() {
        let z: f64 = StandardNormal.sample(rng);
        *x = T::from_f64(x.to_f64() + std * z);
    }
    Ok(())
}

/// Central DP: adds `N(0, σ²C²)` to every coordinate of a sum of updates clipped to `C`
/// (`noise_multiplier` σ, `clip_norm` C). Returns the standard deviation used, `σ·C`.
pub fn add_central_noise<T: Real, R: Rng + ?Sized>(
    sum: &mut [T],
    noise_multiplier: f64,
    clip_norm: f64,
    rng: &mut R,
) -> Result<f64, PrivacyError> {
    check_noise_multiplier(noise_multiplier)?;
    positive(Param::ClipNorm, clip_norm)?;
    let std = noise_multiplier * clip_norm;
    add_gaussian_noise(sum, std, rng)?;
    Ok(std)
}

/// Distributed DP: every client adds a share of the noise to its own clipped update before it
/// leaves the device (and before secure-aggregation masking), so the server only ever sees a sum
/// that is already noised.
///
/// Each client adds `N(0, σ²C²/n_min)` per coordinate. The sum of `k` clients' shares is
/// `N(0, k·σ²C²/n_min)`:
///
/// * **`k ≥ n_min` contributors:** the sum carries at least the full `N(0, σ²C²)`, so the round is
///   at least as private as central DP with noise multiplier `σ` — against the coordinator too,
///   provided it sees only the sum (secure aggregation). We do not credit the extra noise from
///   `k > n_min`.
/// * **`k < n_min` survivors:** the sum carries only `σ_eff = σ·√(k/n_min)`; the round must be
///   accounted with [`effective_noise_multiplier`](Self::effective_noise_multiplier)`(k)` (or
///   refused by the budget, or not released). A trusted server could top the noise up with
///   [`top_up_std`](Self::top_up_std), but that protects nothing against the server itself.
/// * **Dishonest clients:** a client colluding with the server can reveal or omit its share, so
///   `n_min` must be a lower bound on *honest* contributors.
/// * Each individual update carries only `σ/√n_min` of noise: on its own it is weakly protected,
///   which is why distributed DP is meant to run under secure aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DistributedNoiseRaw")]
pub struct DistributedNoise {
    #[serde(with = "crate::exact_f64")]
    noise_multiplier: f64,
    #[serde(with = "crate::exact_f64")]
    clip_norm: f64,
    min_clients: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DistributedNoiseRaw {
    #[serde(with = "crate::exact_f64")]
    noise_multiplier: f64,
    #[serde(with = "crate::exact_f64")]
    clip_norm: f64,
    min_clients: u32,
}

impl TryFrom<DistributedNoiseRaw> for DistributedNoise {
    type Error = PrivacyError;
    fn try_from(raw: DistributedNoiseRaw) -> Result<Self, PrivacyError> {
        DistributedNoise::new(raw.noise_multiplier, raw.clip_norm, raw.min_clients)
    }
}

impl DistributedNoise {
    /// Noise multiplier `σ` for the whole sum, clip norm `C`, and `n_min ≥ 1` clients whose
    /// shares together make up the full noise.
    pub fn new(
        noise_multiplier: f64,
        clip_norm: f64,
        min_clients: u32,
    ) -> Result<Self, PrivacyError> {
        check_noise_multiplier(noise_multiplier)?;
        positive(Param::ClipNorm, clip_norm)?;
        if min_clients == 0 {
            return Err(PrivacyError::InvalidParameter {
                param: Param::MinClients,
                value: 0.0,
            });
        }
        Ok(Self {
            noise_multiplier,
            clip_norm,
            min_clients,
        })
    }

    /// The noise multiplier `σ` of the full sum.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// The clip norm `C`.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// `n_min`.
    pub fn min_clients(&self) -> u32 {
        self.min_clients
    }

    /// Standard deviation of one client's share: `σ·C/√n_min`.
    pub fn client_std(&self) -> f64 {
        self.noise_multiplier * self.clip_norm / f64::from(self.min_clients).sqrt()
    }

    /// Adds one client's share of noise to its (already clipped) update.
    pub fn add_client_noise<T: Real, R: Rng + ?Sized>(
        &self,
        update: &mut [T],
        rng: &mut R,
    ) -> Result<(), PrivacyError> {
        add_gaussian_noise(update, self.client_std(), rng)
    }

    /// The noise multiplier the sum of `contributors` shares actually carries, for accounting:
    /// `σ·√(min(k, n_min)/n_min)` — `σ` once `k ≥ n_min`, less below (0 for no contributors).
    pub fn effective_noise_multiplier(&self, contributors: u64) -> f64 {
        let k = contributors.min(u64::from(self.min_clients)) as f64;
        self.noise_multiplier * (k / f64::from(self.min_clients)).sqrt()
    }

    /// The extra central noise std a *trusted* server would add to restore the full `σ·C` when
    /// only `contributors < n_min` shares arrived: `σ·C·√((n_min − k)/n_min)` (0 when `k ≥ n_min`).
    pub fn top_up_std(&self, contributors: u64) -> f64 {
        let n = f64::from(self.min_clients);
        let k = contributors.min(u64::from(self.min_clients)) as f64;
        self.noise_multiplier * self.clip_norm * ((n - k) / n).sqrt()
    }
}

/// Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially private learning
/// with adaptive clipping"): the clip norm follows a target quantile `γ` of the update norms.
///
/// Each round: clip every update with the current `C` ([`clip`](Self::clip)) and count the
/// updates that were *not* clipped (`b_i = 1` when `‖Δ_i‖ ≤ C`). The server then estimates the
/// unclipped fraction privately and moves `C` geometrically towards the quantile
/// ([`update`](Self::update)):
///
/// `b̃ = (Σ (b_i − ½) + N(0, σ_b²)) / m + ½`, `C ← C · exp(−η_C (b̃ − γ))`,
///
/// with `m` the *expected* number of clients per round. Centring `b_i` halves the count's
/// sensitivity to ½. The count costs privacy too: to keep the round's total noise multiplier at
/// `σ`, noise the update sum with [`update_noise_multiplier`](Self::update_noise_multiplier)`(σ)
/// = (σ⁻² − (2σ_b)⁻²)^(−1/2)` and account the round with `σ` (Theorem 1). The paper's defaults:
/// `γ = 0.5`, `η_C = 0.2`, `σ_b = m/20`, initial `C = 0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AdaptiveClippingRaw")]
pub struct AdaptiveClipping {
    #[serde(with = "crate::exact_f64")]
    clip_norm: f64,
    #[serde(with = "crate::exact_f64")]
    target_quantile: f64,
    #[serde(with = "crate::exact_f64")]
    learning_rate: f64,
    #[serde(with = "crate::exact_f64")]
    count_noise_std: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdaptiveClippingRaw {
    #[serde(with = "crate::exact_f64")]
    clip_norm: f64,
    #[serde(with = "crate::exact_f64")]
    target_quantile: f64,
    #[serde(with = "crate::exact_f64")]
    learning_rate: f64,
    #[serde(with = "crate::exact_f64")]
    count_noise_std: f64,
}

impl TryFrom<AdaptiveClippingRaw> for AdaptiveClipping {
    type Error = PrivacyError;
    fn try_from(raw: AdaptiveClippingRaw) -> Result<Self, PrivacyError> {
        AdaptiveClipping::new(
            raw.clip_norm,
            raw.target_quantile,
            raw.learning_rate,
            raw.count_noise_std,
        )
    }
}

impl AdaptiveClipping {
    /// Initial clip norm `C > 0`, target quantile `γ ∈ [0, 1]`, learning rate `η_C ≥ 0`, and the
    /// standard deviation `σ_b ≥ 0` of the noise on the unclipped count (0: no privacy for the
    /// count — only for tests or a trusted setting).
    pub fn new(
        initial_clip_norm: f64,
        target_quantile: f64,
        learning_rate: f64,
        count_noise_std: f64,
    ) -> Result<Self, PrivacyError> {
        positive(Param::ClipNorm, initial_clip_norm)?;
        unit_interval(Param::TargetQuantile, target_quantile)?;
        non_negative(Param::LearningRate, learning_rate)?;
        non_negative(Param::CountNoiseStd, count_noise_std)?;
        Ok(Self {
            clip_norm: initial_clip_norm,
            target_quantile,
            learning_rate,
            count_noise_std,
        })
    }

    /// The current clip norm `C`.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// The target quantile `γ`.
    pub fn target_quantile(&self) -> f64 {
        self.target_quantile
    }

    /// Clips one update with the current `C`; `!outcome.clipped` is the update's `b_i`.
    pub fn clip<T: Real>(&self, update: &mut [T]) -> Result<ClipOutcome, PrivacyError> {
        clip_l2(update, self.clip_norm)
    }

    /// The noise multiplier for the update sum that, together with the count noise `σ_b`, gives a
    /// round with total noise multiplier `sigma` (Andrew et al. 2021, Theorem 1):
    /// `(σ⁻² − (2σ_b)⁻²)^(−1/2)`. Needs `2σ_b > σ`; with `σ_b = 0` (no count noise) it is an
    /// error, since the count would then be released without privacy.
    pub fn update_noise_multiplier(&self, sigma: f64) -> Result<f64, PrivacyError> {
        check_noise_multiplier(sigma)?;
        let two_sb = 2.0 * self.count_noise_std;
        if two_sb <= sigma {
            return Err(PrivacyError::CountNoiseTooSmall {
                sigma,
                count_noise_std: self.count_noise_std,
            });
        }
        let inv = sigma.powi(-2) - two_sb.powi(-2);
        // inv > 0 since 2σ_b > σ; the guard keeps a rounding accident from returning ∞ or NaN.
        if inv.is_nan() || inv <= 0.0 {
            return Err(PrivacyError::CountNoiseTooSmall {
                sigma,
                count_noise_std: self.count_noise_std,
            });
        }
        Ok(inv.powf(-0.5))
    }

    /// Ends a round: `unclipped` of the `reported` updates had norm ≤ C; `expected_clients` is
    /// `m`, the expected number of clients per round (finite, > 0). Draws the count noise from
    /// `rng`, moves `C` and returns the noisy unclipped fraction `b̃`.
    pub fn update<R: Rng + ?Sized>(
        &mut self,
        unclipped: u64,
        reported: u64,
        expected_clients: f64,
        rng: &mut R,
    ) -> Result<f64, PrivacyError> {
        positive(Param::ExpectedClients, expected_clients)?;
        let unclipped = unclipped.min(reported);
        let centred = unclipped as f64 - 0.5 * reported as f64;
        let noise = if self.count_noise_std > 0.0 {
            let z: f64 = StandardNormal.sample(rng);
            self.count_noise_std * z
        } else {
            0.0
        };
        let fraction = (centred + noise) / expected_clients + 0.5;
        let next = self.clip_norm * (-self.learning_rate * (fraction - self.target_quantile)).exp();
        // Keep C a usable positive number whatever the noise did.
        if next.is_finite() && next > 0.0 {
            self.clip_norm = next;
        }
        Ok(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn clipping_scales_only_long_updates() {
        let mut short = vec![0.3f32, 0.4];
        let out = clip_l2(&mut short, 1.0).unwrap();
        assert!(!out.clipped && (out.norm - 0.5).abs() < 1e-7);
        assert_eq!(short, vec![0.3, 0.4]);
        let mut long = vec![3.0f64, 4.0];
        let out = clip_l2(&mut long, 1.0).unwrap();
        assert!(out.clipped && out.norm == 5.0);
        assert!(l2_norm(&long) <= 1.0 && (l2_norm(&long) - 1.0).abs() < 1e-12);
        assert_eq!(
            clip_l2(&mut [f32::NAN, 1.0], 1.0).unwrap_err(),
            PrivacyError::NonFinite
        );
        assert!(clip_l2(&mut [1.0f32], 0.0).is_err());
        // Huge f64 values do not overflow the norm.
        let mut huge = vec![1e200f64, 1e200];
        clip_l2(&mut huge, 1.0).unwrap();
        assert!(l2_norm(&huge) <= 1.0);
    }

    #[test]
    fn noise_is_seeded_and_has_the_requested_spread() {
        let mut a = vec![0.0f32; 20_000];
        let mut b = vec![0.0f32; 20_000];
        add_central_noise(&mut a, 2.0, 0.5, &mut ChaCha20Rng::seed_from_u64(7)).unwrap();
        add_central_noise(&mut b, 2.0, 0.5, &mut ChaCha20Rng::seed_from_u64(7)).unwrap();
        assert_eq!(a, b);
        let var = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        assert!(add_gaussian_noise(&mut a, -1.0, &mut ChaCha20Rng::seed_from_u64(7)).is_err());
    }

    #[test]
    fn distributed_shares_sum_to_the_full_noise() {
        let d = DistributedNoise::new(1.0, 1.0, 4).unwrap();
        assert!((d.client_std() - 0.5).abs() < 1e-15);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut sum = vec![0.0f64; 20_000];
        for _ in 0..4 {
            let mut share = vec![0.0f64; 20_000];
            d.add_client_noise(&mut share, &mut rng).unwrap();
            sum.iter_mut().zip(&share).for_each(|(s, x)| *s += x);
        }
        let var = sum.iter().map(|x| x * x).sum::<f64>() / sum.len() as f64;
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        assert_eq!(d.effective_noise_multiplier(4), 1.0);
        assert_eq!(d.effective_noise_multiplier(9), 1.0);
        assert!((d.effective_noise_multiplier(1) - 0.5).abs() < 1e-15);
        assert!((d.top_up_std(1) - 0.75f64.sqrt()).abs() < 1e-15);
        assert!(DistributedNoise::new(1.0, 1.0, 0).is_err());
    }

    #[test]
    fn adaptive_clip_tracks_the_target_quantile() {
        // Norms uniform on (0, 10): the median is 5. Without count noise C converges to it.
        let mut clip = AdaptiveClipping::new(0.1, 0.5, 0.2, 0.0).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let norms: Vec<f64> = (0..100)
            .map(|i| 10.0 * (f64::from(i) + 0.5) / 100.0)
            .collect();
        for _ in 0..300 {
            let unclipped = norms.iter().filter(|n| **n <= clip.clip_norm()).count() as u64;
            clip.update(unclipped, 100, 100.0, &mut rng).unwrap();
        }
        assert!(
            (clip.clip_norm() - 5.0).abs() < 0.3,
            "C = {}",
            clip.clip_norm()
        );
        // Theorem 1: the update sum needs more noise than σ (the count spends some), and 2σ_b > σ.
        let noisy = AdaptiveClipping::new(1.0, 0.5, 0.2, 5.0).unwrap();
        let z = noisy.update_noise_multiplier(1.0).unwrap();
        assert!((z - (1.0f64 - 0.01).powf(-0.5)).abs() < 1e-12);
        assert!(noisy.update_noise_multiplier(10.0).is_err());
        assert!(clip.update_noise_multiplier(1.0).is_err());
        assert!(AdaptiveClipping::new(1.0, 1.5, 0.2, 1.0).is_err());
    }
}
