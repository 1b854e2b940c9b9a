//! Coordinate-wise rules: the median and the trimmed mean of every coordinate, over keys whose
//! integer order is the float order.

use rayon::prelude::*;

use super::{validate, validate_lengths, work};
use crate::error::AggregateError;
use crate::norms::{PAR_MIN, in_pool};

/// Maps a finite `f32` to an `i32` whose integer order is the float order (−0 sorts just below +0).
/// The map is its own inverse on the bit pattern, see [`from_key`].
#[inline(always)]
fn to_key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// Inverse of [`to_key`].
#[inline(always)]
fn from_key(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// Coordinates per chunk of the column-wise kernels: about 256 KiB of transposed keys, so a chunk stays
/// in L2 while it is selected. Depends on `n` only, never on the thread count.
fn column_chunk(n: usize) -> usize {
    ((1usize << 16) / n.max(1)).clamp(16, 4096)
}

/// Runs `per_column` on every coordinate's n values (as order keys, in scratch space it may permute) and
/// writes its result to `out`. Parallel over fixed coordinate chunks; each coordinate is computed
/// independently, so the output does not depend on the number of threads. Errs if a value is not finite.
fn columnwise<F>(updates: &[&[f32]], len: usize, per_column: F) -> Result<Vec<f32>, ()>
where
    F: Fn(&mut [i32]) -> f32 + Sync,
{
    let n = updates.len();
    let chunk = column_chunk(n);
    let mut out = vec![0f32; len];
    let work = |(c, oc): (usize, &mut [f32]), buf: &mut Vec<i32>| -> Result<(), ()> {
        let c0 = c * chunk;
        let w = oc.len();
        buf.clear();
        buf.resize(w * n, 0);
        let mut bad = 0u32;
        for (i, u) in updates.iter().enumerate() {
            for (j, &x) in u[c0..c0 + w].iter().enumerate() {
                bad |= u32::from(x.to_bits() & 0x7f80_0000 == 0x7f80_0000);
                buf[j * n + i] = to_key(x);
            }
        }
        if bad != 0 {
            return Err(());
        }
        for (o, col) in oc.iter_mut().zip(buf.chunks_exact_mut(n)) {
            *o = per_column(col);
        }
        Ok(())
    };
    if len * n < PAR_MIN {
        let mut buf = Vec::new();
        out.chunks_mut(chunk)
            .enumerate()
            .try_for_each(|x| work(x, &mut buf))?;
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .try_for_each_init(Vec::new, |buf, x| work(x, buf))?;
    }
    Ok(out)
}

/// Runs a column-wise kernel; on a non-finite value, reports the canonical first offending update.
fn columnwise_checked<F>(updates: &[&[f32]], per_column: F) -> Result<Vec<f32>, AggregateError>
where
    F: Fn(&mut [i32]) -> f32 + Sync,
{
    let len = validate_lengths(updates)?;
    columnwise(updates, len, per_column).map_err(|()| match validate(updates) {
        Err(e) => e,
        // Unreachable in practice: the kernel only fails on a non-finite value, which validate finds.
        Ok(_) => AggregateError::UpdateNonFinite {
            update: 0,
            index: 0,
        },
    })
}

/// Median of one column of order keys (permutes it).
fn median_of_keys(col: &mut [i32]) -> f32 {
    let n = col.len();
    let h = n / 2;
    let (lower, mid, _) = col.select_nth_unstable(h);
    let hi = from_key(*mid);
    if n % 2 == 1 {
        return hi;
    }
    let lo = from_key(lower.iter().copied().max().unwrap_or(*mid));
    ((f64::from(lo) + f64::from(hi)) * 0.5) as f32
}

/// Coordinate-wise median of n ≥ 1 equal-length updates (mean of the two middle values when n is even).
///
/// Deterministic and independent of the number of rayon threads. Errors: no update, mismatched lengths,
/// a non-finite value.
pub fn coordinate_median(updates: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    in_pool(work(updates), || {
        if updates.len() == 1 {
            validate(updates)?;
            return Ok(updates[0].to_vec());
        }
        columnwise_checked(updates, median_of_keys)
    })
}

/// Coordinate-wise trimmed mean: drop the ⌊β·n⌋ smallest and largest values per coordinate, average the
/// rest. 0 ≤ β < 0.5.
///
/// The kept values are summed in `f64` and the mean rounded once to `f32`. Deterministic and
/// independent of the number of rayon threads. Errors: β out of range, no update, mismatched lengths, a
/// non-finite value.
pub fn trimmed_mean(updates: &[&[f32]], beta: f64) -> Result<Vec<f32>, AggregateError> {
    in_pool(work(updates), || {
        if !(0.0..0.5).contains(&beta) {
            return Err(AggregateError::Parameter {
                name: "beta",
                value: beta,
                valid: "0 <= beta < 0.5".into(),
            });
        }
        let n = updates.len();
        let k = (beta * n as f64).floor() as usize;
        if k == 0 {
            return plain_mean(updates);
        }
        let kept = n - 2 * k;
        columnwise_checked(updates, move |col: &mut [i32]| {
            // k smallest to the front, then the k largest of the rest to the back.
            col.select_nth_unstable(k);
            let rest = &mut col[k..];
            rest.select_nth_unstable(kept - 1);
            let s: f64 = rest[..kept]
                .iter()
                .map(|&key| f64::from(from_key(key)))
                .sum();
            (s / kept as f64) as f32
        })
    })
}

/// Unweighted mean in `f64`, updates added in order (trimmed mean with nothing to trim).
fn plain_mean(updates: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    let len = validate(updates)?;
    let n = updates.len();
    let mut out = vec![0f32; len];
    let work = |(c, oc): (usize, &mut [f32])| {
        let c0 = c * 4096;
        let mut acc = vec![0f64; oc.len()];
        for u in updates {
            for (a, &x) in acc.iter_mut().zip(&u[c0..c0 + oc.len()]) {
                *a += f64::from(x);
            }
        }
        for (o, a) in oc.iter_mut().zip(&acc) {
            *o = (a / n as f64) as f32;
        }
    };
    if len * n < PAR_MIN {
        out.chunks_mut(4096).enumerate().for_each(work);
    } else {
        out.par_chunks_mut(4096).enumerate().for_each(work);
    }
    Ok(out)
}
