//! Robust aggregation: coordinate-wise median and trimmed mean, Krum / Multi-Krum, norm bounding and an
//! anomaly filter. Inputs are client deltas (new − global) of equal length.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AggregateError;

/// Vectors shorter than this are processed on the calling thread (rayon's overhead would dominate).
pub(crate) const PAR_MIN: usize = 1 << 15;
/// Fixed chunk of the deterministic reductions (`l2_norm`, dot products): partial sums per chunk, added
/// in chunk order, so the result does not depend on the number of threads.
const REDUCE_CHUNK: usize = 1 << 16;
/// Coordinates per Krum distance block (n × this many values stay in L1/L2 while all pairs are formed).
const KRUM_BLOCK: usize = 256;

/// Runs a kernel compiled for the widest vector instructions the CPU has (AVX2 on x86-64), through
/// pulp's safe runtime dispatch.
///
/// Each kernel is a struct whose `with_simd` (and everything it calls) is `#[inline(always)]`, so the
/// wider instructions reach its loops: a closure would not be inlined into pulp's target-feature
/// function. Only element-wise operations and reductions over a fixed number of lanes run inside (and
/// Rust never contracts a multiply and an add into an FMA), so every CPU computes the same bits.
#[inline(always)]
pub(crate) fn simd<K: pulp::WithSimd>(kernel: K) -> K::Output {
    pulp::Arch::new().dispatch(kernel)
}

/// Declares a struct of borrowed arguments that runs an `#[inline(always)]` function through [`simd`].
macro_rules! simd_kernel {
    ($(#[$m:meta])* $vis:vis struct $name:ident<$lt:lifetime> { $($field:ident: $ty:ty),* $(,)? } -> $out:ty => $f:ident) => {
        $(#[$m])*
        $vis struct $name<$lt> { $($vis $field: $ty),* }
        impl<$lt> pulp::WithSimd for $name<$lt> {
            type Output = $out;
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _simd: S) -> $out {
                $f($(self.$field),*)
            }
        }
    };
}
pub(crate) use simd_kernel;

simd_kernel! {
    /// [`has_non_finite`] through [`simd`].
    struct HasNonFinite<'a> { blk: &'a [f32] } -> bool => has_non_finite
}
simd_kernel! {
    /// [`add_range_distances`] through [`simd`].
    struct RangeDistances<'a> { updates: &'a [&'a [f32]], start: usize, end: usize, d: &'a mut [f64] } -> () => add_range_distances
}
simd_kernel! {
    /// [`dot_chunk`] through [`simd`].
    struct DotChunk<'a> { a: &'a [f32], b: &'a [f32] } -> f64 => dot_chunk
}
simd_kernel! {
    /// [`scale_in_place`] through [`simd`].
    struct Scale<'a> { c: &'a mut [f32], scale: f64 } -> () => scale_in_place
}

/// Runs `f` on a rayon worker when `work` (values to touch) is large enough to go parallel, so the
/// several parallel passes inside `f` cost one hand-off from the caller's thread to the pool, not one
/// each; small work runs on the caller's thread.
pub(crate) fn in_pool<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> R {
    if work < PAR_MIN {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Whether a block holds NaN or ±∞ (exponent bits all ones). Branch-free so it vectorises.
#[inline(always)]
fn has_non_finite(blk: &[f32]) -> bool {
    blk.iter().fold(0u32, |acc, v| {
        acc | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
    }) != 0
}

/// Index of the first NaN or ±∞ in `x`, if any. Parallel over blocks for long vectors; the answer is
/// always the lowest index.
pub(crate) fn first_non_finite(x: &[f32]) -> Option<usize> {
    const BLOCK: usize = 1 << 14;
    let scan = |base: usize, blk: &[f32]| -> Option<usize> {
        if simd(HasNonFinite { blk }) {
            blk.iter().position(|v| !v.is_finite()).map(|i| base + i)
        } else {
            None
        }
    };
    if x.len() < PAR_MIN {
        return x
            .chunks(BLOCK)
            .enumerate()
            .find_map(|(b, blk)| scan(b * BLOCK, blk));
    }
    x.par_chunks(BLOCK)
        .enumerate()
        .find_map_first(|(b, blk)| scan(b * BLOCK, blk))
}

/// Values in a batch (saturating), to decide whether to go parallel.
fn work(updates: &[&[f32]]) -> usize {
    updates
        .iter()
        .fold(0usize, |a, u| a.saturating_add(u.len()))
}

/// Checks lengths only: at least one update, all as long as the first. Returns the common length.
fn validate_lengths(updates: &[&[f32]]) -> Result<usize, AggregateError> {
    let first = updates.first().ok_or(AggregateError::Empty)?;
    let len = first.len();
    match updates.iter().position(|x| x.len() != len) {
        Some(u) => Err(AggregateError::MismatchedLength {
            update: u,
            expected: len,
            actual: updates[u].len(),
        }),
        None => Ok(len),
    }
}

/// Checks a batch: at least one update, equal lengths, finite values. Returns the common length.
///
/// The error names the first offending update (and its first offending index).
fn validate(updates: &[&[f32]]) -> Result<usize, AggregateError> {
    let len = validate_lengths(updates)?;
    for (u, x) in updates.iter().enumerate() {
        if let Some(index) = first_non_finite(x) {
            return Err(AggregateError::UpdateNonFinite { update: u, index });
        }
    }
    Ok(len)
}

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

/// The outcome of Krum / Multi-Krum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KrumSelection {
    /// Indices of the selected updates, lowest score first (ties: lower index first).
    pub selected: Vec<usize>,
    /// Score of every update: the sum of squared L2 distances to its n − f − 2 nearest neighbours.
    pub scores: Vec<f64>,
}

/// Krum / Multi-Krum (Blanchard et al. 2017): score each update by the sum of squared distances to its
/// n−f−2 nearest neighbours; select the m lowest-scoring (m = 1 is Krum). Needs n ≥ 2f + 3 and
/// 1 ≤ m ≤ n − f.
///
/// Pairwise distances are computed in cache-sized coordinate blocks (f32 within a block of 256
/// coordinates, f64 across blocks; a block that overflows f32 is redone in f64), in parallel over fixed
/// coordinate ranges that are added in order, so the scores do not depend on the number of threads.
pub fn krum(updates: &[&[f32]], f: usize, m: usize) -> Result<KrumSelection, AggregateError> {
    in_pool(work(updates), || {
        let n = updates.len();
        let needed = 2 * f + 3;
        if n < needed {
            return Err(AggregateError::TooFewUpdates {
                aggregator: format!("krum (f = {f})"),
                needed,
                actual: n,
            });
        }
        if m == 0 || m > n - f {
            return Err(AggregateError::Parameter {
                name: "m",
                value: m as f64,
                valid: format!("1 <= m <= n - f = {}", n - f),
            });
        }
        let len = validate(updates)?;
        let d = pairwise_sq_distances(updates, len);
        let scores = scores_from_distances(&d, n, f);
        let selected = select_lowest(&scores, m);
        Ok(KrumSelection { selected, scores })
    })
}

/// Index of pair (i, j), i < j, in a packed upper triangle of an n×n matrix.
#[inline(always)]
fn pair_index(n: usize, i: usize, j: usize) -> usize {
    i * (2 * n - i - 1) / 2 + (j - i - 1)
}

/// Lanes of the f32 partial sums in Krum's blocks (a fixed number, so the bits do not depend on the
/// CPU's vector width).
const LANES: usize = 16;

/// Σ (a − b)² in f64, the fallback when a block's f32 partial sum overflows.
fn sq_dist_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

/// Σ (a − b)² of the tail past the last full group of [`LANES`], in f64.
#[inline(always)]
fn tail_sq_dist(a: &[f32], b: &[f32]) -> f64 {
    let body = a.len() / LANES * LANES;
    a[body..]
        .iter()
        .zip(&b[body..])
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

/// Σ (a − bq)² over one block for four updates bq at once (each value of `a` is loaded once),
/// accumulated in f32 across [`LANES`] lanes, the tail in f64. A non-finite result (f32 overflow) is
/// redone in f64 by the caller.
#[inline(always)]
fn block_sq_dists4(a: &[f32], b: [&[f32]; 4]) -> [f64; 4] {
    let (mut s0, mut s1, mut s2, mut s3) =
        ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let rows = a
        .chunks_exact(LANES)
        .zip(b[0].chunks_exact(LANES))
        .zip(b[1].chunks_exact(LANES));
    for (((x, y0), y1), (y2, y3)) in
        rows.zip(b[2].chunks_exact(LANES).zip(b[3].chunks_exact(LANES)))
    {
        for l in 0..LANES {
            let (d0, d1, d2, d3) = (x[l] - y0[l], x[l] - y1[l], x[l] - y2[l], x[l] - y3[l]);
            s0[l] += d0 * d0;
            s1[l] += d1 * d1;
            s2[l] += d2 * d2;
            s3[l] += d3 * d3;
        }
    }
    let lane_sum = |s: [f32; LANES]| f64::from(s.iter().sum::<f32>());
    [
        lane_sum(s0) + tail_sq_dist(a, b[0]),
        lane_sum(s1) + tail_sq_dist(a, b[1]),
        lane_sum(s2) + tail_sq_dist(a, b[2]),
        lane_sum(s3) + tail_sq_dist(a, b[3]),
    ]
}

/// Σ (a − b)² over one block, as one lane of [`block_sq_dists4`] (same order of additions).
#[inline(always)]
fn block_sq_dist(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    f64::from(acc.iter().sum::<f32>()) + tail_sq_dist(a, b)
}

/// Adds the squared distances of all pairs over coordinates `start..end` to the packed triangle `d`,
/// block by block (each block's n × 256 values stay in L1/L2 while all pairs are formed).
#[inline(always)]
fn add_range_distances(updates: &[&[f32]], start: usize, end: usize, d: &mut [f64]) {
    let mut b0 = start;
    while b0 < end {
        let b1 = (b0 + KRUM_BLOCK).min(end);
        add_block_distances(updates, b0, b1, d);
        b0 = b1;
    }
}

/// Adds one coordinate block's squared distances of all pairs to the packed triangle `d`.
#[inline(always)]
fn add_block_distances(updates: &[&[f32]], b0: usize, b1: usize, d: &mut [f64]) {
    let n = updates.len();
    let mut p = 0;
    for i in 0..n {
        let a = &updates[i][b0..b1];
        let mut j = i + 1;
        while j + 4 <= n {
            let r = block_sq_dists4(
                a,
                [
                    &updates[j][b0..b1],
                    &updates[j + 1][b0..b1],
                    &updates[j + 2][b0..b1],
                    &updates[j + 3][b0..b1],
                ],
            );
            for (q, &x) in r.iter().enumerate() {
                d[p + q] += if x.is_finite() {
                    x
                } else {
                    sq_dist_f64(a, &updates[j + q][b0..b1])
                };
            }
            p += 4;
            j += 4;
        }
        while j < n {
            let x = block_sq_dist(a, &updates[j][b0..b1]);
            d[p] += if x.is_finite() {
                x
            } else {
                sq_dist_f64(a, &updates[j][b0..b1])
            };
            p += 1;
            j += 1;
        }
    }
}

/// Packed upper-triangle matrix of squared L2 distances between all pairs of updates.
fn pairwise_sq_distances(updates: &[&[f32]], len: usize) -> Vec<f64> {
    let n = updates.len();
    let pairs = n * (n - 1) / 2;
    // A fixed range size (never the thread count) keeps the order of additions, hence the bits, fixed.
    let range = (len.div_ceil(64)).max(1 << 15).next_multiple_of(KRUM_BLOCK);
    let partial = |r: usize| -> Vec<f64> {
        let mut d = vec![0f64; pairs];
        let end = ((r + 1) * range).min(len);
        simd(RangeDistances {
            updates,
            start: r * range,
            end,
            d: &mut d,
        });
        d
    };
    let ranges = len.div_ceil(range);
    let partials: Vec<Vec<f64>> = if len * n < PAR_MIN {
        (0..ranges).map(partial).collect()
    } else {
        (0..ranges).into_par_iter().map(partial).collect()
    };
    let mut d = vec![0f64; pairs];
    for part in &partials {
        for (x, y) in d.iter_mut().zip(part) {
            *x += y;
        }
    }
    d
}

/// Krum scores from a packed upper triangle of squared distances.
fn scores_from_distances(d: &[f64], n: usize, f: usize) -> Vec<f64> {
    let keep = n - f - 2;
    let mut row = Vec::with_capacity(n);
    (0..n)
        .map(|i| {
            row.clear();
            row.extend(
                (0..n)
                    .filter(|&j| j != i)
                    .map(|j| d[pair_index(n, i.min(j), i.max(j))]),
            );
            row.sort_by(f64::total_cmp);
            row[..keep].iter().sum()
        })
        .collect()
}

/// Indices of the `m` lowest scores, lowest first, ties by index.
fn select_lowest(scores: &[f64], m: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx.truncate(m);
    idx
}

/// Sum over fixed chunks of `f(chunk_of_a, chunk_of_b)`, added in chunk order (deterministic).
fn chunked_sum<F>(a: &[f32], b: &[f32], f: F) -> f64
where
    F: Fn(&[f32], &[f32]) -> f64 + Sync,
{
    if a.len() < PAR_MIN {
        return a
            .chunks(REDUCE_CHUNK)
            .zip(b.chunks(REDUCE_CHUNK))
            .map(|(x, y)| f(x, y))
            .sum();
    }
    let parts: Vec<f64> = a
        .par_chunks(REDUCE_CHUNK)
        .zip(b.par_chunks(REDUCE_CHUNK))
        .map(|(x, y)| f(x, y))
        .collect();
    parts.iter().sum()
}

/// Σ aᵢ·bᵢ of one chunk in f64 across 8 lanes (vectorises).
#[inline(always)]
fn dot_chunk(a: &[f32], b: &[f32]) -> f64 {
    const L: usize = 8;
    let mut acc = [0f64; L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..L {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
        }
    }
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// Σ aᵢ·bᵢ in f64, deterministic whatever the thread count.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    chunked_sum(a, b, |a, b| simd(DotChunk { a, b }))
}

/// L2 norm (f64 accumulation).
///
/// Deterministic: fixed chunks of partial sums, added in order, whatever the number of threads.
pub fn l2_norm(v: &[f32]) -> f64 {
    dot(v, v).sqrt()
}

/// Scales `v` so its L2 norm is ≤ `max_norm`; returns the norm before clipping.
///
/// Each value is scaled in f64 and rounded once, so the clipped norm is `max_norm` to within f32
/// rounding (≤ `max_norm`·(1 + 1e-6)). A negative or NaN `max_norm` counts as 0. A `v` whose norm is
/// not finite (it holds NaN or ±∞) is zeroed.
pub fn clip_to_norm(v: &mut [f32], max_norm: f64) -> f64 {
    let max_norm = if max_norm >= 0.0 { max_norm } else { 0.0 };
    let norm = l2_norm(v);
    if !norm.is_finite() {
        v.fill(0.0);
        return norm;
    }
    if norm <= max_norm {
        return norm;
    }
    let scale = max_norm / norm;
    let apply = |c: &mut [f32]| simd(Scale { c, scale });
    if v.len() < PAR_MIN {
        apply(v);
    } else {
        v.par_chunks_mut(REDUCE_CHUNK).for_each(apply);
    }
    norm
}

/// `x ← x·scale`, each value scaled in f64 and rounded once.
#[inline(always)]
fn scale_in_place(c: &mut [f32], scale: f64) {
    c.iter_mut()
        .for_each(|x| *x = (f64::from(*x) * scale) as f32);
}

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

#[cfg(test)]
mod tests {
    //! Each aggregator against a plain reference (sort every column, sum in f64) on random inputs, plus
    //! breakdown properties. Tolerances: median and Krum selections exact; trimmed mean, norms and Krum
    //! scores within 1e-6 relative (f64 sums in another order, f32 partial sums within 256-coordinate
    //! blocks for Krum).
    use super::*;
    use proptest::prelude::*;

    fn refs(rows: &[Vec<f32>]) -> Vec<&[f32]> {
        rows.iter().map(Vec::as_slice).collect()
    }

    fn column(rows: &[Vec<f32>], j: usize) -> Vec<f32> {
        let mut c: Vec<f32> = rows.iter().map(|r| r[j]).collect();
        c.sort_by(f32::total_cmp);
        c
    }

    fn ref_median(rows: &[Vec<f32>]) -> Vec<f32> {
        let n = rows.len();
        (0..rows[0].len())
            .map(|j| {
                let c = column(rows, j);
                if n % 2 == 1 {
                    c[n / 2]
                } else {
                    ((f64::from(c[n / 2 - 1]) + f64::from(c[n / 2])) / 2.0) as f32
                }
            })
            .collect()
    }

    fn ref_trimmed(rows: &[Vec<f32>], beta: f64) -> Vec<f64> {
        let n = rows.len();
        let k = (beta * n as f64).floor() as usize;
        (0..rows[0].len())
            .map(|j| {
                let c = column(rows, j);
                c[k..n - k].iter().map(|&x| f64::from(x)).sum::<f64>() / (n - 2 * k) as f64
            })
            .collect()
    }

    fn ref_krum_scores(rows: &[Vec<f32>], f: usize) -> Vec<f64> {
        let n = rows.len();
        (0..n)
            .map(|i| {
                let mut d: Vec<f64> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        rows[i]
                            .iter()
                            .zip(&rows[j])
                            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                            .sum()
                    })
                    .collect();
                d.sort_by(f64::total_cmp);
                d[..n - f - 2].iter().sum()
            })
            .collect()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-30)
    }

    /// n updates of length d with values in ±1e3.
    fn batch(
        n: std::ops::Range<usize>,
        d: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<Vec<f32>>> {
        (n, d).prop_flat_map(|(n, d)| {
            proptest::collection::vec(proptest::collection::vec(-1e3f32..1e3, d), n)
        })
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
            .install(f)
    }

    #[test]
    fn small_examples() {
        let rows = vec![
            vec![1.0, -5.0],
            vec![3.0, 7.0],
            vec![2.0, 0.0],
            vec![100.0, 1.0],
        ];
        assert_eq!(coordinate_median(&refs(&rows)).unwrap(), vec![2.5, 0.5]);
        assert_eq!(trimmed_mean(&refs(&rows), 0.25).unwrap(), vec![2.5, 0.5]);
        assert_eq!(trimmed_mean(&refs(&rows), 0.0).unwrap(), vec![26.5, 0.75]);
        assert_eq!(
            coordinate_median(&refs(&rows[..3])).unwrap(),
            vec![2.0, 0.0]
        );
        assert_eq!(
            coordinate_median(&refs(&rows[..1])).unwrap(),
            vec![1.0, -5.0]
        );
        assert!((l2_norm(&[3.0, 4.0]) - 5.0).abs() < 1e-12);
        let mut v = vec![3.0, 4.0];
        assert_eq!(clip_to_norm(&mut v, 1.0), 5.0);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut v = vec![3.0, 4.0];
        assert_eq!(clip_to_norm(&mut v, 10.0), 5.0);
        assert_eq!(v, vec![3.0, 4.0]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let ok = [1.0f32, 2.0];
        let short = [1.0f32];
        let nan = [1.0f32, f32::NAN];
        let none: [&[f32]; 0] = [];
        assert_eq!(coordinate_median(&none), Err(AggregateError::Empty));
        assert_eq!(
            coordinate_median(&[&ok, &short]),
            Err(AggregateError::MismatchedLength {
                update: 1,
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            coordinate_median(&[&ok, &nan]),
            Err(AggregateError::UpdateNonFinite {
                update: 1,
                index: 1
            })
        );
        assert_eq!(
            coordinate_median(&[&nan]),
            Err(AggregateError::UpdateNonFinite {
                update: 0,
                index: 1
            })
        );
        assert_eq!(
            trimmed_mean(&[&ok, &ok, &nan], 0.4),
            Err(AggregateError::UpdateNonFinite {
                update: 2,
                index: 1
            })
        );
        assert_eq!(
            trimmed_mean(&[&ok, &nan], 0.0),
            Err(AggregateError::UpdateNonFinite {
                update: 1,
                index: 1
            })
        );
        assert!(matches!(
            trimmed_mean(&[&ok], 0.5),
            Err(AggregateError::Parameter { name: "beta", .. })
        ));
        assert!(matches!(
            trimmed_mean(&[&ok], -0.1),
            Err(AggregateError::Parameter { name: "beta", .. })
        ));
        assert!(matches!(
            trimmed_mean(&[&ok], f64::NAN),
            Err(AggregateError::Parameter { name: "beta", .. })
        ));
        let five = [&ok[..]; 5];
        assert!(matches!(
            krum(&five, 2, 1),
            Err(AggregateError::TooFewUpdates {
                needed: 7,
                actual: 5,
                ..
            })
        ));
        assert!(matches!(
            krum(&five, 1, 0),
            Err(AggregateError::Parameter { name: "m", .. })
        ));
        assert!(matches!(
            krum(&five, 1, 5),
            Err(AggregateError::Parameter { name: "m", .. })
        ));
        assert!(krum(&five, 1, 4).is_ok());
        let mut with_nan = five;
        with_nan[3] = &nan;
        assert_eq!(
            krum(&with_nan, 1, 1),
            Err(AggregateError::UpdateNonFinite {
                update: 3,
                index: 1
            })
        );
        // Large finite values do not overflow Krum's distances.
        let big = [f32::MAX, -f32::MAX];
        let small = [-f32::MAX, f32::MAX];
        let sel = krum(&[&big, &big, &big, &small], 0, 1).unwrap();
        assert!(sel.scores.iter().all(|s| s.is_finite()));
        assert_eq!(sel.selected, vec![0]);
        let mut inf = vec![f32::INFINITY, 1.0];
        assert!(clip_to_norm(&mut inf, 1.0).is_infinite());
        assert_eq!(inf, vec![0.0, 0.0]);
    }

    #[test]
    fn anomaly_filter_reports_lengths_and_non_finite() {
        let ok = [1.0f32, 2.0, 3.0];
        let short = [1.0f32, 2.0];
        let nan = [1.0f32, f32::NAN, 3.0];
        let cfg = AnomalyConfig {
            max_norm_z: 3.5,
            max_cosine_distance: 1.0,
        };
        let v = anomaly_filter(&[&ok, &ok, &short, &nan, &ok], &cfg);
        assert_eq!(v[0], Verdict::Keep);
        assert_eq!(v[1], Verdict::Keep);
        assert_eq!(v[4], Verdict::Keep);
        assert!(
            matches!(&v[2], Verdict::Quarantine(r) if r.contains("2 values")),
            "{v:?}"
        );
        assert!(
            matches!(&v[3], Verdict::Quarantine(r) if r.contains("index 1")),
            "{v:?}"
        );
        assert!(anomaly_filter(&[], &cfg).is_empty());
        // Honest updates around (1, 1, 1, 1) with different norms are kept; a ×−10 one is quarantined.
        let rows: Vec<Vec<f32>> = vec![
            vec![1.0, 1.1, 0.9, 1.0],
            vec![1.2, 0.8, 1.0, 1.1],
            vec![0.9, 1.0, 1.0, 0.8],
            vec![1.1, 1.2, 1.1, 1.0],
            vec![-10.0, -11.0, -9.0, -10.0],
            vec![1.0, 0.9, 1.2, 1.1],
        ];
        let v = anomaly_filter(&refs(&rows), &cfg);
        for (i, verdict) in v.iter().enumerate() {
            if i == 4 {
                assert!(
                    matches!(verdict, Verdict::Quarantine(r) if r.contains("cosine distance 1.99") && r.contains("robust z")),
                    "{verdict:?}"
                );
            } else {
                assert_eq!(verdict, &Verdict::Keep, "{i}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Median equals the sorted-column reference exactly.
        #[test]
        fn median_matches_reference(rows in batch(1..12, 1..300)) {
            prop_assert_eq!(coordinate_median(&refs(&rows)).unwrap(), ref_median(&rows));
        }

        /// Trimmed mean equals the reference within 1e-6 relative (plus 1e-6 absolute for cancellation).
        #[test]
        fn trimmed_mean_matches_reference(rows in batch(1..12, 1..300), beta in 0.0f64..0.499) {
            let got = trimmed_mean(&refs(&rows), beta).unwrap();
            for (g, w) in got.iter().zip(ref_trimmed(&rows, beta)) {
                prop_assert!((f64::from(*g) - w).abs() <= 1e-6 * w.abs() + 1e-6, "got {g} want {w}");
            }
        }

        /// Krum scores within 1e-6 relative of the f64 reference; the selection is the m lowest.
        #[test]
        fn krum_matches_reference(rows in batch(3..12, 1..600), f in 0usize..5, m in 1usize..5) {
            let n = rows.len();
            prop_assume!(n >= 2 * f + 3 && m <= n - f);
            let got = krum(&refs(&rows), f, m).unwrap();
            let want = ref_krum_scores(&rows, f);
            for (g, w) in got.scores.iter().zip(&want) {
                prop_assert!(close(*g, *w, 1e-6), "got {g} want {w}");
            }
            prop_assert_eq!(got.selected.len(), m);
            let worst_selected = got.selected.iter().map(|&i| want[i]).fold(f64::MIN, f64::max);
            for i in (0..n).filter(|i| !got.selected.contains(i)) {
                prop_assert!(want[i] >= worst_selected * (1.0 - 1e-5), "unselected {i} scores lower");
            }
        }

        /// l2_norm within 1e-12 relative of a plain f64 sum; clipping leaves norm ≤ max_norm·(1 + 1e-6)
        /// and does not change the direction.
        #[test]
        fn clip_bounds_the_norm(v in proptest::collection::vec(-1e6f32..1e6, 1..2000), max_norm in 0.0f64..1e4) {
            let want = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            prop_assert!(close(l2_norm(&v), want, 1e-12));
            let mut c = v.clone();
            let before = clip_to_norm(&mut c, max_norm);
            prop_assert_eq!(before, l2_norm(&v));
            prop_assert!(l2_norm(&c) <= max_norm * (1.0 + 1e-6) + 1e-30, "{} > {max_norm}", l2_norm(&c));
            if before <= max_norm { prop_assert_eq!(&c, &v); }
            for (a, b) in c.iter().zip(&v) { prop_assert!(*a == 0.0 || a.signum() == b.signum()); }
        }

        /// With fewer than half of the inputs arbitrary, each coordinate's median stays within the range
        /// of the honest values.
        #[test]
        fn median_breakdown(honest in batch(1..10, 1..50), attackers in 0usize..10, seed in any::<u64>()) {
            let h = honest.len();
            let bad = attackers.min(h.saturating_sub(1)); // bad < h, so bad < n/2
            let d = honest[0].len();
            let mut rows = honest.clone();
            for a in 0..bad {
                rows.push((0..d).map(|j| hostile(seed, a, j)).collect());
            }
            let got = coordinate_median(&refs(&rows)).unwrap();
            for (j, &g) in got.iter().enumerate() {
                let c = column(&honest, j);
                prop_assert!(c[0] <= g && g <= c[h - 1], "j={j} {g} not in [{}, {}]", c[0], c[h - 1]);
            }
        }

        /// With fewer than ⌊β·n⌋ arbitrary inputs, each coordinate's trimmed mean stays within the range
        /// of the honest values.
        #[test]
        fn trimmed_mean_breakdown(honest in batch(2..16, 1..50), beta in 0.05f64..0.49, frac in 0.0f64..1.0, seed in any::<u64>()) {
            let h = honest.len();
            let d = honest[0].len();
            // Largest number of attackers b with b ≤ ⌊β·(h + b)⌋, scaled by frac.
            let max_bad = (0..h).take_while(|&b| b <= (beta * (h + b) as f64).floor() as usize).last().unwrap_or(0);
            let bad = (frac * max_bad as f64) as usize;
            let mut rows = honest.clone();
            for a in 0..bad {
                rows.push((0..d).map(|j| hostile(seed, a, j)).collect());
            }
            let got = trimmed_mean(&refs(&rows), beta).unwrap();
            for (j, &g) in got.iter().enumerate() {
                let c = column(&honest, j);
                let (lo, hi) = (c[0], c[h - 1]);
                let slack = 1e-6 * lo.abs().max(hi.abs());
                prop_assert!(lo - slack <= g && g <= hi + slack, "j={j} {g} not in [{lo}, {hi}]");
            }
        }

        /// Krum never selects one of f attackers placed far from the honest cluster.
        #[test]
        fn krum_ignores_far_attackers(honest in batch(5..14, 1..40), f in 1usize..5, m in 1usize..4, seed in any::<u64>()) {
            let h = honest.len();
            prop_assume!(h >= f + 3 && m <= h);
            let d = honest[0].len();
            let mut rows = honest.clone();
            for a in 0..f {
                rows.push((0..d).map(|j| 1e6 + hostile(seed, a, j).abs() * 1e-3).collect());
            }
            let sel = krum(&refs(&rows), f, m).unwrap();
            prop_assert!(sel.selected.iter().all(|&i| i < h), "{:?}", sel.selected);
        }

        /// A sign-flipped, ×10 boosted update among honest ones is quarantined with a reason; honest ones
        /// are kept.
        #[test]
        fn anomaly_filter_quarantines_scaled_update(
            centre in proptest::collection::vec(-1.0f32..1.0, 32..64),
            noise in proptest::collection::vec(proptest::collection::vec(-0.05f32..0.05, 64), 6..12),
            who in any::<proptest::sample::Index>(),
        ) {
            prop_assume!(l2_norm(&centre) > 2.0);
            let d = centre.len();
            let mut rows: Vec<Vec<f32>> = noise.iter().map(|e| centre.iter().zip(e).map(|(c, e)| c + e).collect()).collect();
            let bad = who.index(rows.len());
            rows[bad] = rows[bad].iter().map(|x| -10.0 * x).collect();
            // Honest norms are within ±0.4 of |centre| ≥ 2, so MAD ≤ 0.8 and the attacker's z ≥ 14;
            // honest directions are within cosine distance 0.04 of the centre, the attacker's ≈ 2.
            let cfg = AnomalyConfig { max_norm_z: 5.0, max_cosine_distance: 1.0 };
            let v = anomaly_filter(&refs(&rows), &cfg);
            for (i, verdict) in v.iter().enumerate() {
                if i == bad {
                    prop_assert!(matches!(verdict, Verdict::Quarantine(r) if r.contains("cosine distance") && r.contains("robust z")), "{verdict:?}");
                } else {
                    // The z-score of an honest norm is unbounded in principle (MAD may be tiny), but its
                    // direction always passes.
                    prop_assert!(!matches!(verdict, Verdict::Quarantine(r) if r.contains("cosine")), "d={d} {verdict:?}");
                }
            }
        }
    }

    /// A deterministic hostile value: huge, tiny, signed, varying by (seed, attacker, coordinate).
    fn hostile(seed: u64, a: usize, j: usize) -> f32 {
        let x = seed
            ^ (a as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (j as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let x = (x ^ (x >> 31)).wrapping_mul(0x94d0_49bb_1331_11eb);
        match x % 4 {
            0 => f32::MAX,
            1 => -f32::MAX,
            2 => (x >> 40) as f32,
            _ => -((x >> 40) as f32) * 1e-3,
        }
    }

    /// Every kernel gives bit-identical results on 1 and on 4 rayon threads (inputs large enough to run
    /// in parallel, lengths not multiples of the chunks).
    #[test]
    fn identical_for_one_and_many_threads() {
        let n = 9;
        let d = 3 * (1 << 16) + 12_345;
        let mut s = 0x1234_5678_u64;
        let rows: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                (0..d)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
                    })
                    .collect()
            })
            .collect();
        let r = refs(&rows);
        let cfg = AnomalyConfig {
            max_norm_z: 2.0,
            max_cosine_distance: 0.5,
        };
        let run = || {
            let mut c = rows[0].clone();
            let norm = clip_to_norm(&mut c, 10.0);
            let mut fedavg = crate::FedAvg::new(d);
            for (i, u) in r.iter().enumerate() {
                fedavg.accept(u, (i + 1) as f64).unwrap();
            }
            (
                coordinate_median(&r).unwrap(),
                trimmed_mean(&r, 0.2).unwrap(),
                trimmed_mean(&r, 0.0).unwrap(),
                krum(&r, 2, 3).unwrap(),
                l2_norm(&rows[1]),
                norm,
                c,
                anomaly_filter(&r, &cfg),
                fedavg,
            )
        };
        let one = in_pool(1, run);
        let many = in_pool(4, run);
        assert!(one == many, "results differ between 1 and 4 threads");
        // And the parallel paths agree with the references; FedAvg bit for bit with the plain loop.
        let mut plain = vec![0f64; d];
        for (i, u) in rows.iter().enumerate() {
            for (a, &x) in plain.iter_mut().zip(u) {
                *a += (i + 1) as f64 * f64::from(x);
            }
        }
        let inv = 1.0 / (1..=n).map(|w| w as f64).sum::<f64>();
        let plain: Vec<f32> = plain.iter().map(|s| (s * inv) as f32).collect();
        assert!(
            one.8.finish().unwrap() == plain,
            "FedAvg differs from the plain loop"
        );
        assert_eq!(one.0, ref_median(&rows));
        for (g, w) in one.1.iter().zip(ref_trimmed(&rows, 0.2)) {
            assert!((f64::from(*g) - w).abs() <= 1e-6 * w.abs() + 1e-6);
        }
        for (g, w) in one.3.scores.iter().zip(ref_krum_scores(&rows, 2)) {
            assert!(close(*g, w, 1e-6), "{g} {w}");
        }
    }
}
