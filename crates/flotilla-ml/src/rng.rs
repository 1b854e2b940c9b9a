//! Small, version-stable random helpers on top of ChaCha8.
//!
//! Shuffles and initial weights are part of what makes runs reproducible, so they are written
//! out here rather than delegated to `rand`'s distribution code, whose algorithms may change
//! between releases.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// Deterministic generator for a `(seed, stream)` pair.
pub(crate) fn chacha(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Uniform `u64` in `0..n` (`n > 0`), unbiased (rejection sampling).
pub(crate) fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    // Largest multiple of n that fits; values at or above it are rejected.
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let v = rng.next_u64();
        if v < zone {
            return v % n;
        }
    }
}

/// Fisher–Yates shuffle.
pub(crate) fn shuffle<T>(rng: &mut ChaCha8Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Uniform `f32` in `[-bound, bound)`.
pub(crate) fn uniform(rng: &mut ChaCha8Rng, bound: f32) -> f32 {
    // 24 random bits -> [0, 1) exactly representable in f32.
    let unit = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
    (2.0 * unit - 1.0) * bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_seeded() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut chacha(3, 0), &mut a);
        shuffle(&mut chacha(3, 0), &mut b);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_in_bounds() {
        let mut rng = chacha(1, 1);
        for _ in 0..1000 {
            let v = uniform(&mut rng, 0.5);
            assert!((-0.5..0.5).contains(&v));
        }
    }
}
