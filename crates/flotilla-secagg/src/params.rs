//! Round parameters and the fixed-point encoding of updates into the ring Z_2^32 (default) or, with
//! `b`-bit stochastic quantization, the smallest ring Z_2^16 or Z_2^32 that holds the sum.
//!
//! # Ring size and quantization (default: 32-bit fixed point)
//!
//! Updates are summed in Z_2^32 (wrapping `u32` arithmetic; masks cancel modulo 2^32). A coordinate
//! `x` is clipped to `[-R, R]` and encoded as `q = ⌊(clip(x) + R) · s + ½⌋` (nearest) with
//! `M = ⌊(2^32 − 1) / n⌋` and scale `s = M / (2R)`, so `0 ≤ q ≤ M`. The sum of at most `n` encodings
//! is at most `n · M ≤ 2^32 − 1`: **the true sum never wraps**, whatever the inputs. The server decodes
//! the sum of `m` contributions as `Σq / s − m·R`.
//!
//! Each encoding is off by at most `1 / (2s)` from `clip(x) + R`, so the decoded sum of `m` clients
//! is within **`m / (2s) = m · R / M ≈ m · n · R / 2^32`** of the exact sum of the clipped inputs
//! ([`Params::quantization_error_bound`]). For `n = 1000`, `R = 1`: `2.3e-7` per client per
//! coordinate, `2.3e-4` for a 1,000-client sum. The bits per client are `log2(M) ≈ 32 − log2 n`
//! (≈ 22 for n = 1000); the upper limit on `n` (2^24) keeps at least 8 bits.
//!
//! # Quantized secure rounds (`quantization_bits = Some(b)`)
//!
//! With [`Params::with_quantization_bits`], each coordinate is quantized to `b` bits (`1..=16`):
//! `v = (clip(x) + R) · s` with `s = (2^b − 1) / (2R)`, and `q = ⌊v⌋ + 1` with probability
//! `v − ⌊v⌋`, else `⌊v⌋` (stochastic rounding drawn from the client's seeded CSPRNG, so
//! `E[q] = v`: **unbiased**, up to the `2^-32` granularity of the draw). A sum of at most `n` such
//! values is at most `n · (2^b − 1) < 2^(b + ⌈log2 n⌉)`, so the sum lives in the smallest ring
//! `Z_2^16` or `Z_2^32` with `b + ⌈log2 n⌉` bits: **it cannot overflow by construction**, and a
//! configuration that would need more than 32 bits is refused naming `quantization_bits`. Masks are
//! the same PRG words reduced modulo the ring (2^16 divides 2^32, so reducing commutes with every
//! sum), and masked vectors go on the wire in the ring's width: 2 bytes per coordinate in Z_2^16,
//! half of the default. E.g. 8 bits and ≤ 256 clients: a 16-bit ring. The decoded sum of `m`
//! clients is within `m / s` of the exact sum of the clipped inputs (each rounding moves a value by
//! less than one step), and its expectation is that exact sum.
//!
//! # Graph degree and threshold
//!
//! SecAgg+ (Bell et al. 2020) replaces the complete graph of SecAgg with a random `k`-regular graph:
//! a Harary graph `H(n, k)` over a random permutation of the roster (each client is linked to the
//! `k/2` clients on either side of it on a shuffled ring; `k` even), or the complete graph when
//! `k ≥ n − 1`. Bell et al. show `k = O(log n)` keeps privacy and dropout robustness with
//! overwhelming probability. [`Params::recommended`] picks `k = 2·⌈1.5 · log2 n⌉` (≈ 3·log2 n: 30 for
//! n = 1000, 20 for n = 100) capped at the complete graph, and `t = k/2 + 1`, the smallest threshold
//! with `t > k/2` — two disjoint sets of neighbours can never both reach `t`, so together with a
//! client's refusal to reveal both secrets of one peer, the server never learns both — while
//! tolerating up to `k/2 − 1` dropouts in any neighbourhood.

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::error::ParamError;

/// Largest number of clients in one round.
pub const MAX_CLIENTS: usize = 1 << 24;
/// Largest vector length (2^28 coordinates, 1 GiB of `u32`).
pub const MAX_VECTOR_LEN: usize = 1 << 28;
/// Largest degree of the communication graph (shares live in GF(256): at most 255 holders).
pub const MAX_NEIGHBOURS: usize = 255;
/// Largest clip range.
pub const MAX_CLIP_RANGE: f64 = 1e9;
/// Largest `quantization_bits` (wider values gain nothing over the default 32-bit fixed point).
pub const MAX_QUANTIZATION_BITS: u8 = 16;

/// `⌈log2 n⌉` for `n ≥ 1`.
fn ceil_log2(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

/// Validated parameters of a secure-aggregation round. Construct with [`Params::new`] or
/// [`Params::recommended`]; every field is checked there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    max_clients: usize,
    threshold: usize,
    neighbours: usize,
    vector_len: usize,
    clip_range: f64,
    /// `Some(b)`: `b`-bit stochastic quantization into the smallest ring that holds the sum.
    quantization_bits: Option<u8>,
}

impl Params {
    /// Validates and builds a parameter set.
    ///
    /// - `n` (`max_clients`): largest roster, `3..=2^24`; it sizes the fixed-point encoding so that a
    ///   sum of `n` clients never wraps.
    /// - `k` (`neighbours`): degree of the communication graph; even, `2..=min(n − 1, 254)`, or
    ///   exactly `n − 1` (complete graph) when that is at most 255.
    /// - `t` (`threshold`): shares needed to reconstruct a secret; `k/2 < t ≤ k` and `t ≥ 2`.
    /// - `vector_len`: `1..=2^28`.
    /// - `clip_range` (R): finite, `0 < R ≤ 1e9`.
    pub fn new(
        n: usize,
        t: usize,
        k: usize,
        vector_len: usize,
        clip_range: f64,
    ) -> Result<Self, ParamError> {
        if !(3..=MAX_CLIENTS).contains(&n) {
            return Err(ParamError::new(
                "n",
                format!("must be in 3..={MAX_CLIENTS}, got {n}"),
            ));
        }
        let complete = k == n - 1;
        if complete && k > MAX_NEIGHBOURS {
            return Err(ParamError::new(
                "k",
                format!(
                    "a complete graph of n = {n} needs {k} neighbours; at most {MAX_NEIGHBOURS}"
                ),
            ));
        }
        if !complete {
            let max_even = (n - 1).min(MAX_NEIGHBOURS - 1) & !1;
            if k < 2 || k > max_even || !k.is_multiple_of(2) {
                return Err(ParamError::new(
                    "k",
                    format!(
                        "must be even in 2..={max_even}, or exactly n − 1 = {} for a complete graph; got {k}",
                        n - 1
                    ),
                ));
            }
        }
        if !(t > k / 2 && t <= k && t >= 2) {
            let lo = (k / 2 + 1).max(2);
            return Err(ParamError::new(
                "t",
                format!("must satisfy k/2 < t ≤ k and t ≥ 2, i.e. {lo}..={k} for k = {k}; got {t}"),
            ));
        }
        if !(1..=MAX_VECTOR_LEN).contains(&vector_len) {
            return Err(ParamError::new(
                "vector_len",
                format!("must be in 1..={MAX_VECTOR_LEN}, got {vector_len}"),
            ));
        }
        if !(clip_range.is_finite() && clip_range > 0.0 && clip_range <= MAX_CLIP_RANGE) {
            return Err(ParamError::new(
                "clip_range",
                format!("must be finite and in (0, {MAX_CLIP_RANGE:e}], got {clip_range}"),
            ));
        }
        Ok(Self {
            max_clients: n,
            threshold: t,
            neighbours: k,
            vector_len,
            clip_range,
            quantization_bits: None,
        })
    }

    /// Sets `quantization_bits`: `None` (the default) encodes into Z_2^32 with `⌊(2^32 − 1)/n⌋`
    /// levels; `Some(b)`, `b` in `1..=16`, quantizes each clipped coordinate stochastically to `2^b`
    /// levels and sums in the smallest ring of 16 or 32 bits that holds `b + ⌈log2 n⌉` bits (see
    /// the module documentation). Refused, naming `quantization_bits`, if `b` is out of range or
    /// `b + ⌈log2 n⌉ > 32` (a sum of `n` clients could overflow every ring).
    ///
    /// This is the field a job's `[compression]` / `[secagg]` section maps to: 8 bits with at most
    /// 256 clients per round gives a 16-bit ring and halves the bytes of every masked input.
    pub fn with_quantization_bits(mut self, bits: Option<u8>) -> Result<Self, ParamError> {
        if let Some(b) = bits {
            if !(1..=MAX_QUANTIZATION_BITS).contains(&b) {
                return Err(ParamError::new(
                    "quantization_bits",
                    format!("must be in 1..={MAX_QUANTIZATION_BITS}, got {b}"),
                ));
            }
            let need = u32::from(b) + ceil_log2(self.max_clients);
            if need > 32 {
                return Err(ParamError::new(
                    "quantization_bits",
                    format!(
                        "{b} bits for up to n = {} clients need a {need}-bit ring (b + ⌈log2 n⌉); \
                         the largest is 32 bits: lower quantization_bits or n",
                        self.max_clients
                    ),
                ));
            }
        }
        self.quantization_bits = bits;
        Ok(self)
    }

    /// The documented default for `n` clients: `k = 2·⌈1.5·log2 n⌉` (or the complete graph if that is
    /// not smaller) and `t = k/2 + 1`. See the module documentation.
    pub fn recommended(n: usize, vector_len: usize, clip_range: f64) -> Result<Self, ParamError> {
        if n < 3 {
            return Err(ParamError::new(
                "n",
                format!("must be in 3..={MAX_CLIENTS}, got {n}"),
            ));
        }
        let log2 = (n as f64).log2();
        let k_even = 2 * ((1.5 * log2).ceil() as usize);
        let k = if k_even >= n - 1 { n - 1 } else { k_even };
        let t = k / 2 + 1;
        Self::new(n, t, k, vector_len, clip_range)
    }

    /// Largest roster (n).
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }
    /// Shares needed to reconstruct a secret (t).
    pub fn threshold(&self) -> usize {
        self.threshold
    }
    /// Degree of the communication graph (k).
    pub fn neighbours(&self) -> usize {
        self.neighbours
    }
    /// Coordinates per update.
    pub fn vector_len(&self) -> usize {
        self.vector_len
    }
    /// Clip range R: coordinates are clipped to `[-R, R]`.
    pub fn clip_range(&self) -> f64 {
        self.clip_range
    }
    /// Bits of stochastic quantization per coordinate, `None` for the default 32-bit fixed point.
    pub fn quantization_bits(&self) -> Option<u8> {
        self.quantization_bits
    }

    /// Bits of the ring sums and masks live in: 16 or 32. Always 32 without quantization; with
    /// `b` bits, 16 if `b + ⌈log2 n⌉ ≤ 16`.
    pub fn ring_bits(&self) -> u32 {
        Self::ring_bits_for(self.quantization_bits, self.max_clients)
    }

    /// [`Params::ring_bits`] of parameters with `quantization_bits` and `max_clients` (for a peer
    /// that knows only those two, e.g. a coordinator checking a masked input's word width).
    pub fn ring_bits_for(quantization_bits: Option<u8>, max_clients: usize) -> u32 {
        match quantization_bits {
            Some(b) if u32::from(b) + ceil_log2(max_clients) <= 16 => 16,
            _ => 32,
        }
    }

    /// `2^ring_bits − 1`: ring elements are the `u32` words `≤` this value.
    pub fn ring_mask(&self) -> u32 {
        if self.ring_bits() == 16 {
            u32::from(u16::MAX)
        } else {
            u32::MAX
        }
    }

    /// Largest encoded value of one coordinate of one client: `M = ⌊(2^32 − 1) / n⌋`, or
    /// `2^b − 1` with `b`-bit quantization.
    pub fn max_encoded(&self) -> u32 {
        match self.quantization_bits {
            Some(b) => (1u32 << b) - 1,
            None => (u32::MAX as usize / self.max_clients) as u32,
        }
    }

    /// Fixed-point scale `s = M / (2R)`.
    pub fn scale(&self) -> f64 {
        f64::from(self.max_encoded()) / (2.0 * self.clip_range)
    }

    /// Bound on `|decoded − Σ clip(x)|` per coordinate for a sum of `m` clients: `m / (2s)`
    /// (rounding to nearest), or `m / s` with stochastic quantization (a value moves by less than
    /// one step).
    pub fn quantization_error_bound(&self, m: usize) -> f64 {
        match self.quantization_bits {
            Some(_) => m as f64 / self.scale(),
            None => m as f64 / (2.0 * self.scale()),
        }
    }

    /// Encodes one coordinate (clipped to `[-R, R]`). `x` must be finite.
    #[inline]
    pub fn encode(&self, x: f32) -> u32 {
        let r = self.clip_range;
        let c = f64::from(x).clamp(-r, r);
        // `v + 0.5` truncated is `round(v)` for `v ≥ 0` (a cast, where `f64::round` is a libm call).
        (((c + r) * self.scale() + 0.5) as u32).min(self.max_encoded())
    }

    /// Encodes a whole update (every value must be finite); same as [`Params::encode`] per value.
    pub fn encode_all(&self, xs: &[f32]) -> Vec<u32> {
        let (r, scale, max) = (self.clip_range, self.scale(), self.max_encoded());
        xs.iter()
            .map(|&x| (((f64::from(x).clamp(-r, r) + r) * scale + 0.5) as u32).min(max))
            .collect()
    }

    /// Quantizes `xs` into `out` (same length; every value must be finite) with stochastic
    /// rounding: `⌊v⌋ + 1` with probability `v − ⌊v⌋` where `v = (clip(x) + R) · s`, so the
    /// expected encoding is `v` (unbiased). The client calls this with `quantization_bits` set;
    /// it works for any parameters (without quantization it dithers the 32-bit encoding).
    pub fn encode_stochastic_into<R: Rng + ?Sized>(
        &self,
        xs: &[f32],
        out: &mut [u32],
        rng: &mut R,
    ) {
        const TWO_32: f64 = 4_294_967_296.0;
        let (r, scale, max) = (self.clip_range, self.scale(), self.max_encoded());
        for (o, &x) in out.iter_mut().zip(xs) {
            let v = (f64::from(x).clamp(-r, r) + r) * scale;
            // `v ≥ 0`: truncation is the floor (a cast, where `f64::floor` may be a libm call).
            let floor = v as u32;
            // P(up) = ⌈frac · 2^32⌉ / 2^32: within 2^-32 of frac.
            let up = f64::from(rng.next_u32()) < (v - f64::from(floor)) * TWO_32;
            *o = (floor + u32::from(up)).min(max);
        }
    }

    /// Encodes `xs` into `out` (same length; every value must be finite), as [`Params::encode`].
    pub fn encode_into(&self, xs: &[f32], out: &mut [u32]) {
        let (r, scale, max) = (self.clip_range, self.scale(), self.max_encoded());
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = (((f64::from(x).clamp(-r, r) + r) * scale + 0.5) as u32).min(max);
        }
    }

    /// Decodes a sum of `m` encodings to the sum of the clipped values.
    #[inline]
    pub fn decode_sum(&self, q: u32, m: usize) -> f64 {
        f64::from(q) / self.scale() - m as f64 * self.clip_range
    }

    /// Largest client→server message for these parameters, in bytes (the masked input).
    pub fn max_client_message_len(&self) -> usize {
        self.vector_len * 4 + 64 + self.neighbours * 200
    }

    /// Largest server→client message for these parameters, in bytes (the roster).
    pub fn max_server_message_len(&self) -> usize {
        256 + self.max_clients * 96
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_parameters_name_the_parameter() {
        assert_eq!(Params::new(2, 2, 2, 10, 1.0).unwrap_err().name, "n");
        assert_eq!(Params::new(100, 4, 3, 10, 1.0).unwrap_err().name, "k");
        assert_eq!(Params::new(100, 4, 0, 10, 1.0).unwrap_err().name, "k");
        assert_eq!(Params::new(100, 4, 100, 10, 1.0).unwrap_err().name, "k");
        assert_eq!(Params::new(1000, 200, 300, 10, 1.0).unwrap_err().name, "k");
        assert_eq!(Params::new(100, 5, 10, 10, 1.0).unwrap_err().name, "t");
        assert_eq!(Params::new(100, 11, 10, 10, 1.0).unwrap_err().name, "t");
        assert_eq!(
            Params::new(100, 6, 10, 0, 1.0).unwrap_err().name,
            "vector_len"
        );
        assert_eq!(
            Params::new(100, 6, 10, 10, 0.0).unwrap_err().name,
            "clip_range"
        );
        assert_eq!(
            Params::new(100, 6, 10, 10, f64::NAN).unwrap_err().name,
            "clip_range"
        );
        let e = Params::new(100, 5, 10, 10, 1.0).unwrap_err();
        assert!(e.to_string().contains("6..=10"), "{e}");
        // Complete graph with odd degree is allowed.
        assert!(Params::new(4, 2, 3, 1, 1.0).is_ok());
        assert!(Params::new(3, 2, 2, 1, 1.0).is_ok());
    }

    #[test]
    fn recommended_degrees() {
        let p = Params::recommended(1000, 1, 1.0).unwrap();
        assert_eq!((p.neighbours(), p.threshold()), (30, 16));
        let p = Params::recommended(100, 1, 1.0).unwrap();
        assert_eq!((p.neighbours(), p.threshold()), (20, 11));
        let p = Params::recommended(5, 1, 1.0).unwrap();
        assert_eq!((p.neighbours(), p.threshold()), (4, 3));
        for n in 3..300 {
            assert!(Params::recommended(n, 1, 1.0).is_ok(), "n = {n}");
        }
    }

    #[test]
    fn a_full_sum_never_wraps() {
        for n in [3usize, 7, 1000, 65_537, MAX_CLIENTS] {
            let p = Params::new(n.max(3), 2, 2, 1, 3.5).unwrap();
            let total = p.max_encoded() as u64 * n as u64;
            assert!(total <= u32::MAX as u64);
            assert_eq!(p.encode(1e30), p.max_encoded());
            assert_eq!(p.encode(-1e30), 0);
        }
    }

    #[test]
    fn quantization_error_is_within_bound() {
        let p = Params::new(1000, 16, 30, 1, 2.0).unwrap();
        let bound1 = p.quantization_error_bound(1);
        let mut worst = 0.0f64;
        for i in 0..100_000 {
            let x = -2.5 + 5.0 * (i as f32) / 100_000.0;
            assert_eq!(p.encode_all(&[x]), vec![p.encode(x)]);
            let mut one = [7u32];
            p.encode_into(&[x], &mut one);
            assert_eq!(one[0], p.encode(x));
            let err = (p.decode_sum(p.encode(x), 1) - f64::from(x).clamp(-2.0, 2.0)).abs();
            worst = worst.max(err);
        }
        assert!(worst <= bound1 * (1.0 + 1e-9), "{worst} > {bound1}");
        assert!(worst > bound1 * 0.5, "bound is loose: {worst} vs {bound1}");
    }
}
