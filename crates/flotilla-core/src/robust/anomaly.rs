//! The anomaly filter: quarantines updates whose norm z-score or cosine distance to the
//! coordinate-wise median is an outlier, with the numbers in the reason.

use serde::{Deserialize, Serialize};

use super::coordinate_median;
use super::work;
use crate::norms::{dot, first_non_finite, in_pool, l2_norm};

/// Thresholds of [`anomaly_filter`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyConfig {
    /// Largest accepted robust z-score of an update's L2 norm, |norm − median| / (1.4826 · MAD).
    pub max_norm_z: f64,
    /// Largest accepted cosine distance (1 − cos, in [0, 2]) to the coordinate-wise median.
    pub max_cosine_distance: f64,
}

/// What the anomaly filter decided for one update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The update may be aggregated.
    Keep,
    /// The update is set aside; the reason says which check failed, with the numbers.
    Quarantine(String),
}

/// Anomaly filter: finiteness, norm z-score against the cohort (robust: median/MAD), cosine distance to
/// the robust centre (coordinate median). One verdict per update, in order.
///
/// - An update whose length differs from the most common length (ties: the shorter), or that holds NaN
///   or ±∞, is quarantined first; the others form the cohort.
/// - Norm check (two-sided): z = |‖u‖ − median| / max(1.4826·MAD, 1e-9·median), over the cohort's L2
///   norms; quarantined if z > `max_norm_z`. With identical norms any deviation is flagged; with two
///   updates nothing is (both sit at z ≈ 0.67).
/// - Direction check: 1 − cos(u, coordinate-wise median of the cohort) > `max_cosine_distance`; a zero
///   vector has no direction and passes.
///
/// A NaN threshold disables its check. The reason names every failed check with its numbers.
pub fn anomaly_filter(updates: &[&[f32]], cfg: &AnomalyConfig) -> Vec<Verdict> {
    in_pool(work(updates), || {
        let mut verdicts = vec![Verdict::Keep; updates.len()];
        // The expected length is the most common one (ties: the shorter).
        let mut lens: Vec<usize> = updates.iter().map(|u| u.len()).collect();
        lens.sort_unstable();
        let mut expected = 0;
        let mut best = 0;
        let mut i = 0;
        while i < lens.len() {
            let run = lens[i..].iter().take_while(|&&l| l == lens[i]).count();
            if run > best {
                best = run;
                expected = lens[i];
            }
            i += run;
        }
        for (u, v) in updates.iter().zip(verdicts.iter_mut()) {
            if u.len() != expected {
                *v = Verdict::Quarantine(format!(
                    "has {} values, the cohort's updates have {expected}",
                    u.len()
                ));
            } else if let Some(index) = first_non_finite(u) {
                *v = Verdict::Quarantine(format!(
                    "value at index {index} is not finite ({})",
                    u[index]
                ));
            }
        }
        let cohort: Vec<usize> = (0..updates.len())
            .filter(|&i| verdicts[i] == Verdict::Keep)
            .collect();
        if cohort.is_empty() {
            return verdicts;
        }
        let members: Vec<&[f32]> = cohort.iter().map(|&i| updates[i]).collect();
        let norms: Vec<f64> = members.iter().map(|u| l2_norm(u)).collect();
        let med = median_f64(&norms);
        let mad = median_f64(&norms.iter().map(|x| (x - med).abs()).collect::<Vec<_>>());
        let scale = (1.4826 * mad).max(1e-9 * med.abs()).max(f64::MIN_POSITIVE);
        let centre = match coordinate_median(&members) {
            Ok(c) => c,
            Err(_) => return verdicts,
        };
        let centre_norm = l2_norm(&centre);
        for (k, &i) in cohort.iter().enumerate() {
            let mut reasons = Vec::new();
            let z = (norms[k] - med).abs() / scale;
            if z > cfg.max_norm_z {
                reasons.push(format!(
                    "L2 norm {:.4e} is {z:.2} robust z-scores from the cohort median {med:.4e} (MAD {mad:.4e}, limit {})",
                    norms[k], cfg.max_norm_z
                ));
            }
            let dist = cosine_distance(members[k], norms[k], &centre, centre_norm);
            if dist > cfg.max_cosine_distance {
                reasons.push(format!(
                    "cosine distance {dist:.4} to the coordinate-wise median exceeds {}",
                    cfg.max_cosine_distance
                ));
            }
            if !reasons.is_empty() {
                verdicts[i] = Verdict::Quarantine(reasons.join("; "));
            }
        }
        verdicts
    })
}

/// 1 − cos(u, c); 0 when either vector is zero (no direction to compare).
fn cosine_distance(u: &[f32], u_norm: f64, c: &[f32], c_norm: f64) -> f64 {
    if u_norm == 0.0 || c_norm == 0.0 {
        return 0.0;
    }
    1.0 - dot(u, c) / (u_norm * c_norm)
}

/// Median of a non-empty slice of finite f64.
fn median_f64(x: &[f64]) -> f64 {
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
