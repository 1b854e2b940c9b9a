//! The deterministic kernels over `f32` slices that every aggregation path shares: the SIMD
//! dispatch, the finiteness scan, and the L2 norm, dot product and clipping used by norm bounding,
//! the anomaly filter and differential privacy ([`crate::dp`]). One implementation, so a norm is the
//! same number whichever path computes it.
//!
//! Reductions add fixed chunks of partial sums in chunk order (f64 accumulators in fixed lanes), so
//! results are bit-identical whatever the number of threads or the CPU's vector width.

use rayon::prelude::*;

/// Vectors shorter than this are processed on the calling thread (rayon's overhead would dominate).
pub(crate) const PAR_MIN: usize = 1 << 15;
/// Fixed chunk of the deterministic reductions (`l2_norm`, dot products): partial sums per chunk, added
/// in chunk order, so the result does not depend on the number of threads.
const REDUCE_CHUNK: usize = 1 << 16;

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
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
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
