//! The batched fold behind [`FedAvg::accept_many`]: B resident updates folded in one pass over the
//! running sum.
//!
//! Folding one update at a time moves ≈ 20 bytes per parameter per update (the f64 sum read and
//! written, the update read twice: once to check finiteness, once to fold). Here each coordinate's
//! partial sum stays in registers while the B updates' values are added to it, and the finiteness
//! check rides along on the values already loaded, so each update is read once (4 bytes per
//! parameter) and the sum is read and written once per batch.
//!
//! Bit-identity: coordinate `i` is computed as `acc = sum[i]; acc += w₁·u₁[i]; acc += w₂·u₂[i]; …`
//! (multiply, then add, never fused), exactly the additions the one-at-a-time fold performs, in the
//! same order, so the result is the same to the bit for any batch size or thread count.
//!
//! Atomicity: the new sum is written to a second buffer and swapped in only once every value of the
//! batch was seen to be finite, so a rejected batch leaves the aggregate unchanged without a separate
//! validation pass.

use rayon::prelude::*;

use super::{BatchError, FedAvg};
use crate::error::AggregateError;
use crate::norms::{PAR_MIN, first_non_finite, in_pool, simd, simd_kernel};

/// Most updates folded per pass over the sum. Larger batches are folded in groups of this size (same
/// bits): each update in a group is a separate memory stream, and beyond a few dozen streams the
/// hardware prefetchers stop keeping up while the saving on the sum's traffic (16/B bytes per
/// parameter) is already small.
pub const MAX_BATCH: usize = 64;

/// Coordinates per parallel task (as in the single-update fold).
const CHUNK: usize = 1 << 14;
/// Coordinates whose partial sums are held in registers at once: 16 f64 are four AVX2 or two
/// AVX-512 registers.
const LANES: usize = 16;
/// Exponent bits of an f32: all ones means NaN or ±∞.
const EXP: u32 = 0x7f80_0000;

/// Folds `batch` into `agg` (see [`FedAvg::accept_many`]); the caller has checked lengths and weights.
pub(super) fn fold(agg: &mut FedAvg, batch: &[(&[f32], f64)]) -> Result<(), BatchError> {
    let len = agg.sum.len();
    if batch.len() > MAX_BATCH {
        // Groups are swapped in one after the other, so a bad value in a later group must be found
        // before the first group is committed.
        if let Some(e) = find_non_finite(batch) {
            return Err(e);
        }
    }
    let FedAvg { sum, spare, .. } = agg;
    for group in batch.chunks(MAX_BATCH) {
        if spare.len() != len {
            // Every value is overwritten below: only a fresh or wrongly sized buffer is (re)filled.
            spare.clear();
            spare.resize(len, 0.0);
        }
        let (old, new) = (&sum[..], &mut spare[..]);
        let work = len.saturating_mul(group.len());
        let all_finite = in_pool(work, || {
            let task = |(c, (new, old)): (usize, (&mut [f64], &[f64]))| {
                simd(FoldBatch {
                    new,
                    old,
                    batch: group,
                    base: c * CHUNK,
                })
            };
            if work < PAR_MIN {
                new.chunks_mut(CHUNK)
                    .zip(old.chunks(CHUNK))
                    .enumerate()
                    .all(task)
            } else {
                new.par_chunks_mut(CHUNK)
                    .zip(old.par_chunks(CHUNK))
                    .enumerate()
                    .all(task)
            }
        });
        if !all_finite {
            // Rare path: name the first offending value exactly (the kernel only knows "some").
            return Err(find_non_finite(batch).unwrap_or(BatchError {
                update: 0,
                error: AggregateError::NonFinite { index: 0 },
            }));
        }
        std::mem::swap(sum, spare);
    }
    Ok(())
}

/// The first non-finite value of the batch, by update then index.
fn find_non_finite(batch: &[(&[f32], f64)]) -> Option<BatchError> {
    batch.iter().enumerate().find_map(|(update, &(u, _))| {
        first_non_finite(u).map(|index| BatchError {
            update,
            error: AggregateError::NonFinite { index },
        })
    })
}

simd_kernel! {
    /// [`fold_block`] through [`simd`].
    struct FoldBatch<'a> { new: &'a mut [f64], old: &'a [f64], batch: &'a [(&'a [f32], f64)], base: usize } -> bool => fold_block
}

/// `new[i] = old[i] + w₁·u₁[base+i] + w₂·u₂[base+i] + …` added left to right; false if any update
/// value read was NaN or ±∞ (then `new` is garbage and must be discarded).
#[inline(always)]
fn fold_block(new: &mut [f64], old: &[f64], batch: &[(&[f32], f64)], base: usize) -> bool {
    let full = new.len() - new.len() % LANES;
    let mut bad = [0u32; LANES];
    let (head, tail) = new.split_at_mut(full);
    for (g, (dst, src)) in head
        .chunks_exact_mut(LANES)
        .zip(old.chunks_exact(LANES))
        .enumerate()
    {
        let off = base + g * LANES;
        let mut acc = [0f64; LANES];
        acc.copy_from_slice(src);
        for &(u, w) in batch {
            let u = &u[off..off + LANES];
            for l in 0..LANES {
                bad[l] |= u32::from(u[l].to_bits() & EXP == EXP);
                acc[l] += w * f64::from(u[l]);
            }
        }
        dst.copy_from_slice(&acc);
    }
    for (i, (dst, &src)) in tail.iter_mut().zip(&old[full..]).enumerate() {
        let mut acc = src;
        for &(u, w) in batch {
            let v = u[base + full + i];
            bad[0] |= u32::from(v.to_bits() & EXP == EXP);
            acc += w * f64::from(v);
        }
        *dst = acc;
    }
    bad.iter().all(|&b| b == 0)
}
