//! Krum / Multi-Krum (Blanchard et al. 2017) over blocked pairwise squared distances.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{validate, work};
use crate::error::AggregateError;
use crate::norms::{PAR_MIN, in_pool, simd, simd_kernel};

/// Coordinates per Krum distance block (n × this many values stay in L1/L2 while all pairs are formed).
const KRUM_BLOCK: usize = 256;

simd_kernel! {
    /// [`add_range_distances`] through [`simd`].
    struct RangeDistances<'a> { updates: &'a [&'a [f32]], start: usize, end: usize, d: &'a mut [f64] } -> () => add_range_distances
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
