//! Streaming aggregation: updates are folded in as they arrive, so memory stays O(model), never
//! O(clients × model).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AggregateError;
use crate::norms::{PAR_MIN, first_non_finite, in_pool, simd, simd_kernel};

mod batch;
#[cfg(test)]
mod batch_tests;

pub use batch::MAX_BATCH;

/// Why [`FedAvg::accept_many`] refused a batch: which update, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("update {update} of the batch: {error}")]
pub struct BatchError {
    /// Position of the first offending update in the batch.
    pub update: usize,
    /// What was wrong with it.
    #[source]
    pub error: AggregateError,
}

/// Weighted federated averaging (McMahan et al. 2017), folded one update at a time.
///
/// The running sum is kept in `f64`, so the result does not depend measurably on arrival order and a
/// thousand `f32` updates lose no precision. The output is `Σ wᵢ·xᵢ / Σ wᵢ`, rounded once to `f32`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FedAvg {
    sum: Vec<f64>,
    total_weight: f64,
    count: usize,
    /// Scratch for [`FedAvg::accept_many`], which writes the new sum here and swaps it in only when
    /// the whole batch was valid; kept between calls so a stream of batches allocates once. Not part
    /// of the aggregate's value (not serialised, cloned or compared).
    #[serde(skip)]
    spare: Vec<f64>,
}

impl Clone for FedAvg {
    fn clone(&self) -> Self {
        Self {
            sum: self.sum.clone(),
            total_weight: self.total_weight,
            count: self.count,
            spare: Vec::new(),
        }
    }
}

impl PartialEq for FedAvg {
    fn eq(&self, other: &Self) -> bool {
        self.sum == other.sum
            && self.total_weight == other.total_weight
            && self.count == other.count
    }
}

impl FedAvg {
    /// An empty aggregate for vectors of `len` values.
    pub fn new(len: usize) -> Self {
        Self {
            sum: vec![0.0; len],
            total_weight: 0.0,
            count: 0,
            spare: Vec::new(),
        }
    }

    /// Number of values per update.
    pub fn len(&self) -> usize {
        self.sum.len()
    }

    /// Whether the aggregate is for zero-length vectors.
    pub fn is_empty(&self) -> bool {
        self.sum.is_empty()
    }

    /// How many updates have been folded in.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The running weighted sum `Σ wᵢ·xᵢ` (`f64`).
    pub fn sum(&self) -> &[f64] {
        &self.sum
    }

    /// Sum of the weights folded in so far.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// Folds one update with weight `weight` (normally its sample count) into the running sum.
    ///
    /// Checks length, weight and finiteness first; on error the aggregate is unchanged.
    pub fn accept(&mut self, update: &[f32], weight: f64) -> Result<(), AggregateError> {
        if update.len() != self.sum.len() {
            return Err(AggregateError::Length {
                expected: self.sum.len(),
                actual: update.len(),
            });
        }
        if !(weight.is_finite() && weight > 0.0) {
            return Err(AggregateError::Weight(weight));
        }
        // Two passes, so a rejected update changes nothing: find any non-finite value, then fold. Each
        // coordinate is `sum += weight·u` (multiply, then add: no fused multiply-add), computed
        // independently, so splitting the vector into chunks across rayon threads changes no bit.
        const CHUNK: usize = 1 << 14;
        let fold = |(acc, upd): (&mut [f64], &[f32])| simd(Fold { acc, upd, weight });
        let sum = &mut self.sum;
        in_pool(update.len(), || {
            if let Some(index) = first_non_finite(update) {
                return Err(AggregateError::NonFinite { index });
            }
            if update.len() < PAR_MIN {
                sum.chunks_mut(CHUNK)
                    .zip(update.chunks(CHUNK))
                    .for_each(fold);
            } else {
                sum.par_chunks_mut(CHUNK)
                    .zip(update.par_chunks(CHUNK))
                    .for_each(fold);
            }
            Ok(())
        })?;
        self.total_weight += weight;
        self.count += 1;
        Ok(())
    }

    /// Folds several resident updates at once, each `(update, weight)`, in one pass over the running sum.
    ///
    /// The result is bit-identical to calling [`FedAvg::accept`] on each in order (every coordinate
    /// sees the same additions in the same order), but the memory traffic per update falls from ≈ 20
    /// bytes per parameter to ≈ 4 + 24/B. (Measured 2026-12-08 the kernel was still compute-bound
    /// and slower than `accept`: its inner loop is not vectorised yet.) Batches longer than
    /// [`MAX_BATCH`] are folded in groups of that size (same bits). Memory: one extra f64 buffer of
    /// the model's size, kept for the next call.
    ///
    /// Every update is checked (length, weight, finiteness) before anything is committed: on error the
    /// aggregate is unchanged and the error names the offending update (the first with a wrong length
    /// or weight, else the first holding NaN or ±∞) and what [`FedAvg::accept`] would have said.
    pub fn accept_many(&mut self, batch: &[(&[f32], f64)]) -> Result<(), BatchError> {
        for (update, &(u, weight)) in batch.iter().enumerate() {
            let error = if u.len() != self.sum.len() {
                AggregateError::Length {
                    expected: self.sum.len(),
                    actual: u.len(),
                }
            } else if !(weight.is_finite() && weight > 0.0) {
                AggregateError::Weight(weight)
            } else {
                continue;
            };
            return Err(BatchError { update, error });
        }
        if batch.is_empty() {
            return Ok(());
        }
        batch::fold(self, batch)?;
        // Added one by one, in order, so the total is the same f64 as after sequential `accept`s.
        for &(_, weight) in batch {
            self.total_weight += weight;
        }
        self.count += batch.len();
        Ok(())
    }

    /// The weighted mean of everything folded in, or an error if nothing was.
    pub fn finish(&self) -> Result<Vec<f32>, AggregateError> {
        if self.count == 0 {
            return Err(AggregateError::Empty);
        }
        let inv = 1.0 / self.total_weight;
        if self.sum.len() < PAR_MIN {
            Ok(self.sum.iter().map(|s| (s * inv) as f32).collect())
        } else {
            Ok(self.sum.par_iter().map(|s| (s * inv) as f32).collect())
        }
    }
}

simd_kernel! {
    /// [`fold_chunk`] through [`simd`].
    struct Fold<'a> { acc: &'a mut [f64], upd: &'a [f32], weight: f64 } -> () => fold_chunk
}

/// `acc += weight·upd`, element by element (vectorises; no fused multiply-add, so the bits are those of
/// the plain loop on every CPU).
#[inline(always)]
fn fold_chunk(acc: &mut [f64], upd: &[f32], weight: f64) {
    for (a, &u) in acc.iter_mut().zip(upd) {
        *a += weight * f64::from(u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weighted_mean_of_two() {
        let mut a = FedAvg::new(2);
        a.accept(&[1.0, 2.0], 1.0).unwrap();
        a.accept(&[3.0, 6.0], 3.0).unwrap();
        assert_eq!(a.finish().unwrap(), vec![2.5, 5.0]);
    }

    #[test]
    fn rejects_bad_updates_without_changing_state() {
        let mut a = FedAvg::new(3);
        a.accept(&[1.0, 1.0, 1.0], 2.0).unwrap();
        let before = a.clone();
        assert!(matches!(
            a.accept(&[1.0, 1.0], 1.0),
            Err(AggregateError::Length { .. })
        ));
        assert!(matches!(
            a.accept(&[1.0, f32::NAN, 1.0], 1.0),
            Err(AggregateError::NonFinite { index: 1 })
        ));
        assert!(matches!(
            a.accept(&[1.0, 1.0, f32::INFINITY], 1.0),
            Err(AggregateError::NonFinite { index: 2 })
        ));
        assert!(matches!(
            a.accept(&[1.0, 1.0, 1.0], 0.0),
            Err(AggregateError::Weight(_))
        ));
        assert!(matches!(
            a.accept(&[1.0, 1.0, 1.0], f64::NAN),
            Err(AggregateError::Weight(_))
        ));
        assert_eq!(a, before);
        assert!(matches!(
            FedAvg::new(3).finish(),
            Err(AggregateError::Empty)
        ));
    }

    proptest! {
        /// FedAvg equals the plain weighted mean computed the textbook way, to f32 rounding.
        #[test]
        fn equals_weighted_mean(
            rows in proptest::collection::vec(
                (proptest::collection::vec(-1e3f32..1e3, 17), 1u32..10_000), 1..20)
        ) {
            let mut agg = FedAvg::new(17);
            for (v, w) in &rows {
                agg.accept(v, f64::from(*w)).unwrap();
            }
            let got = agg.finish().unwrap();
            let total: f64 = rows.iter().map(|(_, w)| f64::from(*w)).sum();
            for j in 0..17 {
                let want: f64 = rows.iter().map(|(v, w)| f64::from(v[j]) * f64::from(*w)).sum::<f64>() / total;
                let tol = 1e-6 * want.abs().max(1.0);
                prop_assert!((f64::from(got[j]) - want).abs() <= tol, "j={j} got={} want={want}", got[j]);
            }
        }

        /// The mean of identical updates is that update, whatever the weights.
        #[test]
        fn identical_updates_are_fixed_point(
            v in proptest::collection::vec(-1e6f32..1e6, 1..50),
            ws in proptest::collection::vec(1u32..1000, 1..10)
        ) {
            let mut agg = FedAvg::new(v.len());
            for w in &ws { agg.accept(&v, f64::from(*w)).unwrap(); }
            let got = agg.finish().unwrap();
            for (g, x) in got.iter().zip(&v) {
                prop_assert!((g - x).abs() <= x.abs() * 1e-6);
            }
        }
    }
}
