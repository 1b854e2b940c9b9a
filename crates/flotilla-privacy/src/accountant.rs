//! The Rényi-DP accountant: composes rounds of the Poisson-sampled Gaussian mechanism with varying
//! `(q, σ)` and converts the total to `(ε, δ)`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{
    PrivacyError, check_delta, check_noise_multiplier, check_sampling_rate, check_steps,
};
use crate::rdp::{DEFAULT_ORDERS, epsilon_from_rdp, rdp_curve};

/// `steps` consecutive rounds with the same sampling rate and noise multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Poisson sampling rate `q ∈ (0, 1]`.
    #[serde(with = "crate::exact_f64")]
    pub q: f64,
    /// Noise multiplier `σ > 0` (noise std over the L2 clip norm).
    #[serde(with = "crate::exact_f64")]
    pub sigma: f64,
    /// Number of rounds, ≥ 1.
    pub steps: u64,
}

/// An `(ε, δ)` guarantee and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// The smallest ε the RDP curve gives at `delta`.
    pub epsilon: f64,
    /// The δ it was computed at.
    pub delta: f64,
    /// The Rényi order that attains `epsilon`.
    pub order: f64,
    /// Rounds (steps) composed.
    pub steps: u64,
}

/// One line of [`RdpAccountant::history`]: a segment and the cumulative ε after it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SegmentReport {
    /// First round of the segment, 1-based.
    pub first_round: u64,
    /// Last round of the segment, inclusive.
    pub last_round: u64,
    /// Sampling rate of these rounds.
    pub q: f64,
    /// Noise multiplier of these rounds.
    pub sigma: f64,
    /// ε of one such round on its own, at the requested δ.
    pub round_epsilon: f64,
    /// ε of everything up to and including this segment, at the requested δ.
    pub cumulative_epsilon: f64,
    /// The order that attains `cumulative_epsilon`.
    pub order: f64,
}

/// ε after each round, from [`RdpAccountant::per_round`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundEpsilon {
    /// Round number, 1-based.
    pub round: u64,
    /// The round's sampling rate.
    pub q: f64,
    /// The round's noise multiplier.
    pub sigma: f64,
    /// ε of all rounds up to and including this one.
    pub epsilon: f64,
    /// The order that attains `epsilon`.
    pub order: f64,
}

type CurveKey = (u64, u64);

fn key(q: f64, sigma: f64) -> CurveKey {
    (q.to_bits(), sigma.to_bits())
}

/// Rényi-DP accountant for the Poisson-sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019)
/// over `dp-accounting`'s default orders ([`DEFAULT_ORDERS`]), under add/remove-one adjacency.
///
/// The accountant's state is its history: a list of [`Segment`]s (runs of rounds with the same
/// `(q, σ)`; composing the same parameters again extends the last run). The total RDP is, by
/// definition, the left fold over the segments of `steps × rdp(q, σ)`, so a restored accountant
/// recomputes exactly the same bits as the live one. The RDP curve of each distinct `(q, σ)` is
/// computed once and cached, so composing a round costs one pass over the 156 orders.
///
/// Serialised form (serde): `{"accounting": "rdp-poisson-gaussian-v1", "segments": [{"q":
/// "0.01", "sigma": "1.1", "steps": 100}]}`. Numbers are decimal strings so that every format
/// restores them bit-exactly; the cache is not serialised.
#[derive(Debug, Clone)]
pub struct RdpAccountant {
    segments: Vec<Segment>,
    /// RDP of all segments but the last.
    prefix: Vec<f64>,
    /// RDP of all segments.
    total: Vec<f64>,
    steps: u64,
    cache: HashMap<CurveKey, Arc<[f64]>>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for RdpAccountant {
    /// Two accountants are equal when their histories are (bit for bit); everything else follows.
    fn eq(&self, other: &Self) -> bool {
        self.segments.len() == other.segments.len()
            && self.segments.iter().zip(&other.segments).all(|(a, b)| {
                a.q.to_bits() == b.q.to_bits()
                    && a.sigma.to_bits() == b.sigma.to_bits()
                    && a.steps == b.steps
            })
    }
}

impl RdpAccountant {
    /// An accountant with nothing spent.
    pub fn new() -> Self {
        Self {
            segments: Vec::new(),
            prefix: vec![0.0; DEFAULT_ORDERS.len()],
            total: vec![0.0; DEFAULT_ORDERS.len()],
            steps: 0,
            cache: HashMap::new(),
        }
    }

    /// Rebuilds an accountant from its history (as returned by [`segments`](Self::segments)).
    pub fn from_segments(
        segments: impl IntoIterator<Item = Segment>,
    ) -> Result<Self, PrivacyError> {
        let mut accountant = Self::new();
        for s in segments {
            accountant.push_segment(s.q, s.sigma, s.steps)?;
        }
        Ok(accountant)
    }

    /// The Rényi orders, `dp-accounting`'s defaults.
    pub fn orders(&self) -> &'static [f64] {
        &DEFAULT_ORDERS
    }

    /// The composed RDP at each of [`orders`](Self::orders).
    pub fn rdp(&self) -> &[f64] {
        &self.total
    }

    /// The history: runs of rounds with the same parameters, oldest first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Rounds composed so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Composes `steps` rounds of the Poisson-sampled Gaussian mechanism with sampling rate `q`
    /// and noise multiplier `sigma`. Invalid parameters change nothing.
    pub fn compose(&mut self, q: f64, sigma: f64, steps: u64) -> Result<(), PrivacyError> {
        check_sampling_rate(q)?;
        check_noise_multiplier(sigma)?;
        check_steps(steps)?;
        self.push_segment(q, sigma, steps)
    }

    /// Computes and caches the RDP curve of `(q, sigma)` without composing anything, so that a
    /// later check or composition with these parameters is a cache hit.
    pub fn prepare(&mut self, q: f64, sigma: f64) -> Result<(), PrivacyError> {
        check_sampling_rate(q)?;
        check_noise_multiplier(sigma)?;
        self.curve(q, sigma);
        Ok(())
    }

    /// ε and the optimal order of everything composed so far, at `delta ∈ (0, 1)`.
    /// Nothing composed gives ε = 0.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        check_delta(delta)?;
        Ok(epsilon_from_rdp(&self.total, delta))
    }

    /// [`epsilon`](Self::epsilon) with δ and the step count, ready to report.
    pub fn spend(&self, delta: f64) -> Result<Spend, PrivacyError> {
        let (epsilon, order) = self.epsilon(delta)?;
        Ok(Spend {
            epsilon,
            delta,
            order,
            steps: self.steps,
        })
    }

    /// ε at `delta` if `steps` more rounds with `(q, sigma)` were composed; changes nothing.
    /// This is how a budget refuses a round before it starts.
    pub fn epsilon_after(
        &self,
        q: f64,
        sigma: f64,
        steps: u64,
        delta: f64,
    ) -> Result<(f64, f64), PrivacyError> {
        let rdp = self.rdp_after(q, sigma, steps)?;
        check_delta(delta)?;
        Ok(epsilon_from_rdp(&rdp, delta))
    }

    /// The composed RDP if `steps` more rounds with `(q, sigma)` were composed; changes nothing.
    pub fn rdp_after(&self, q: f64, sigma: f64, steps: u64) -> Result<Vec<f64>, PrivacyError> {
        check_sampling_rate(q)?;
        check_noise_multiplier(sigma)?;
        check_steps(steps)?;
        self.steps
            .checked_add(steps)
            .ok_or(PrivacyError::StepOverflow)?;
        let curve = self.curve_ref(q, sigma);
        Ok(match self.segments.last() {
            // Same parameters as the last run: the fold extends that run.
            Some(last) if key(last.q, last.sigma) == key(q, sigma) => {
                let n = last
                    .steps
                    .checked_add(steps)
                    .ok_or(PrivacyError::StepOverflow)? as f64;
                self.prefix
                    .iter()
                    .zip(curve.iter())
                    .map(|(p, c)| p + n * c)
                    .collect()
            }
            _ => {
                let n = steps as f64;
                self.total
                    .iter()
                    .zip(curve.iter())
                    .map(|(t, c)| t + n * c)
                    .collect()
            }
        })
    }

    /// The cumulative ε after each segment, and the ε of one of its rounds alone.
    pub fn history(&self, delta: f64) -> Result<Vec<SegmentReport>, PrivacyError> {
        check_delta(delta)?;
        let mut acc = vec![0.0; DEFAULT_ORDERS.len()];
        let mut round = 0u64;
        let mut out = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let curve = self.curve_ref(s.q, s.sigma);
            let n = s.steps as f64;
            for (a, c) in acc.iter_mut().zip(curve.iter()) {
                *a += n * c;
            }
            let (round_epsilon, _) = epsilon_from_rdp(&curve, delta);
            let (cumulative_epsilon, order) = epsilon_from_rdp(&acc, delta);
            out.push(SegmentReport {
                first_round: round + 1,
                last_round: round + s.steps,
                q: s.q,
                sigma: s.sigma,
                round_epsilon,
                cumulative_epsilon,
                order,
            });
            round += s.steps;
        }
        Ok(out)
    }

    /// The cumulative ε after every round (one entry per round, so O(rounds × orders)); the last
    /// entry equals [`epsilon`](Self::epsilon).
    pub fn per_round(&self, delta: f64) -> Result<Vec<RoundEpsilon>, PrivacyError> {
        check_delta(delta)?;
        let mut prefix = vec![0.0; DEFAULT_ORDERS.len()];
        let mut rdp = vec![0.0; DEFAULT_ORDERS.len()];
        let mut out = Vec::new();
        let mut round = 0u64;
        for s in &self.segments {
            let curve = self.curve_ref(s.q, s.sigma);
            for k in 1..=s.steps {
                // Same expression as the live fold, so the last value is bit-identical.
                let n = k as f64;
                for ((r, p), c) in rdp.iter_mut().zip(&prefix).zip(curve.iter()) {
                    *r = p + n * c;
                }
                round += 1;
                let (epsilon, order) = epsilon_from_rdp(&rdp, delta);
                out.push(RoundEpsilon {
                    round,
                    q: s.q,
                    sigma: s.sigma,
                    epsilon,
                    order,
                });
            }
            prefix.copy_from_slice(&rdp);
        }
        Ok(out)
    }

    /// The RDP curve of one round with `(q, sigma)`: cached when already composed, else computed.
    fn curve_ref(&self, q: f64, sigma: f64) -> Arc<[f64]> {
        match self.cache.get(&key(q, sigma)) {
            Some(c) => Arc::clone(c),
            None => rdp_curve(q, sigma, &DEFAULT_ORDERS).into(),
        }
    }

    fn curve(&mut self, q: f64, sigma: f64) -> Arc<[f64]> {
        Arc::clone(
            self.cache
                .entry(key(q, sigma))
                .or_insert_with(|| rdp_curve(q, sigma, &DEFAULT_ORDERS).into()),
        )
    }

    /// Appends `steps` rounds (validated) to the history and updates the fold.
    fn push_segment(&mut self, q: f64, sigma: f64, steps: u64) -> Result<(), PrivacyError> {
        check_sampling_rate(q)?;
        check_noise_multiplier(sigma)?;
        check_steps(steps)?;
        let total_steps = self
            .steps
            .checked_add(steps)
            .ok_or(PrivacyError::StepOverflow)?;
        let curve = self.curve(q, sigma);
        match self.segments.last_mut() {
            Some(last) if key(last.q, last.sigma) == key(q, sigma) => {
                last.steps = last
                    .steps
                    .checked_add(steps)
                    .ok_or(PrivacyError::StepOverflow)?;
            }
            _ => {
                self.prefix.copy_from_slice(&self.total);
                self.segments.push(Segment { q, sigma, steps });
            }
        }
        let n = self.segments.last().map_or(0, |s| s.steps) as f64;
        for ((t, p), c) in self.total.iter_mut().zip(&self.prefix).zip(curve.iter()) {
            *t = p + n * c;
        }
        self.steps = total_steps;
        Ok(())
    }
}

/// Tag of the serialised form; a different accounting method would get a different tag.
const ACCOUNTING_TAG: &str = "rdp-poisson-gaussian-v1";

#[derive(Serialize)]
struct StateRef<'a> {
    accounting: &'static str,
    segments: &'a [Segment],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    accounting: String,
    segments: Vec<Segment>,
}

impl Serialize for RdpAccountant {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StateRef {
            accounting: ACCOUNTING_TAG,
            segments: &self.segments,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RdpAccountant {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = State::deserialize(deserializer)?;
        if state.accounting != ACCOUNTING_TAG {
            return Err(serde::de::Error::custom(PrivacyError::InvalidState(
                format!(
                    "accounting method {:?} is not {ACCOUNTING_TAG:?}",
                    state.accounting
                ),
            )));
        }
        Self::from_segments(state.segments)
            .map_err(|e| serde::de::Error::custom(PrivacyError::InvalidState(e.to_string())))
    }
}

/// ε at `delta` and the optimal order of `steps` rounds with sampling rate `q` and noise
/// multiplier `sigma` — `dp-accounting`'s `RdpAccountant` with
/// `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))` composed `steps` times.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<Spend, PrivacyError> {
    check_delta(delta)?;
    let mut accountant = RdpAccountant::new();
    accountant.compose(q, sigma, steps)?;
    accountant.spend(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_accountant_spends_nothing() {
        let a = RdpAccountant::new();
        assert_eq!(a.epsilon(1e-5).unwrap().0, 0.0);
        assert_eq!(a.steps(), 0);
    }

    #[test]
    fn invalid_parameters_change_nothing() {
        let mut a = RdpAccountant::new();
        a.compose(0.01, 1.0, 10).unwrap();
        let before = a.clone();
        assert!(a.compose(0.0, 1.0, 1).is_err());
        assert!(a.compose(0.01, -1.0, 1).is_err());
        assert!(a.compose(0.01, 1.0, 0).is_err());
        assert!(a.compose(0.01, 1.0, u64::MAX).is_err());
        assert!(a.epsilon(1.0).is_err());
        assert_eq!(a, before);
        assert_eq!(a.rdp(), before.rdp());
    }

    #[test]
    fn extreme_parameters_do_not_panic_or_give_nan() {
        for (q, sigma) in [
            (1e-300, 1.0),
            (1.0 - 1e-16, 1.0),
            (0.5, 1e-200),
            (0.1, 1e200),
            (1.0, 1e-300),
        ] {
            let mut a = RdpAccountant::new();
            a.compose(q, sigma, 1_000_000).unwrap();
            let (eps, _) = a.epsilon(1e-5).unwrap();
            assert!(!eps.is_nan() && eps >= 0.0, "q {q} sigma {sigma}: {eps}");
        }
    }

    #[test]
    fn epsilon_after_predicts_compose() {
        let mut a = RdpAccountant::new();
        a.compose(0.02, 1.1, 30).unwrap();
        for (q, sigma) in [(0.02, 1.1), (0.05, 0.9)] {
            let predicted = a.epsilon_after(q, sigma, 1, 1e-6).unwrap();
            let mut b = a.clone();
            b.compose(q, sigma, 1).unwrap();
            assert_eq!(predicted, b.epsilon(1e-6).unwrap());
        }
    }

    #[test]
    fn runs_merge_and_history_reports_them() {
        let mut a = RdpAccountant::new();
        a.compose(0.01, 1.0, 5).unwrap();
        a.compose(0.01, 1.0, 5).unwrap();
        a.compose(0.02, 1.0, 3).unwrap();
        assert_eq!(a.segments().len(), 2);
        assert_eq!(a.segments()[0].steps, 10);
        let h = a.history(1e-5).unwrap();
        assert_eq!((h[1].first_round, h[1].last_round), (11, 13));
        assert_eq!(h[1].cumulative_epsilon, a.epsilon(1e-5).unwrap().0);
        let per_round = a.per_round(1e-5).unwrap();
        assert_eq!(per_round.len(), 13);
        assert_eq!(per_round[12].epsilon, a.epsilon(1e-5).unwrap().0);
        assert_eq!(per_round[9].epsilon, h[0].cumulative_epsilon);
        assert!(per_round.windows(2).all(|w| w[0].epsilon <= w[1].epsilon));
    }

    #[test]
    fn serialises_as_a_readable_history() {
        let mut a = RdpAccountant::new();
        a.compose(0.01, 1.1, 100).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"accounting":"rdp-poisson-gaussian-v1","segments":[{"q":"0.01","sigma":"1.1","steps":100}]}"#
        );
        let b: RdpAccountant = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b);
        assert!(
            a.rdp()
                .iter()
                .zip(b.rdp())
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        // Plain numbers are accepted too; bad states are refused with a reason.
        let c: RdpAccountant = serde_json::from_str(
            r#"{"accounting":"rdp-poisson-gaussian-v1","segments":[{"q":0.01,"sigma":1.1,"steps":100}]}"#,
        )
        .unwrap();
        assert_eq!(a, c);
        let bad = serde_json::from_str::<RdpAccountant>(
            r#"{"accounting":"rdp-poisson-gaussian-v1","segments":[{"q":"2","sigma":"1","steps":1}]}"#,
        )
        .unwrap_err();
        assert!(
            bad.to_string()
                .contains("sampling rate q must be in (0, 1]"),
            "{bad}"
        );
        assert!(
            serde_json::from_str::<RdpAccountant>(r#"{"accounting":"pld","segments":[]}"#).is_err()
        );
    }
}
