//! Quantized secure rounds: `b`-bit stochastic quantization into the smallest ring (16 or 32 bits)
//! that holds the sum. Overflow is impossible by construction, the secure sum equals the plain sum
//! of the same quantized values exactly, and the rounding is unbiased.

use flotilla_secagg::{ClientMessage, Params};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::common::Round;

fn ceil_log2(n: usize) -> u32 {
    let mut bits = 0;
    while (1usize << bits) < n {
        bits += 1;
    }
    bits
}

/// Client `id`'s update on the quantization grid of `b` bits with `R = (2^b − 1)/2` (scale 1): the
/// integers `j − R`, `j` in `0..2^b`, which stochastic rounding leaves exactly where they are.
fn grid_update(id: u64, len: usize, r: f64) -> Vec<f32> {
    let levels = (2.0 * r) as u64 + 1;
    (0..len as u64)
        .map(|i| {
            let h = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
                >> 17;
            ((h % levels) as f64 - r) as f32
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For every admissible (b, n) the largest possible sum fits the chosen ring, the ring is the
    /// smallest that does, and every refused pair really needs more than 32 bits.
    #[test]
    fn overflow_is_impossible_by_construction(b in 0u8..=20, n in 3usize..=(1 << 24)) {
        let base = Params::new(n, 2, 2, 1, 1.0).unwrap();
        match base.with_quantization_bits(Some(b)) {
            Ok(p) => {
                prop_assert!((1..=16).contains(&b));
                let max_sum = n as u64 * u64::from(p.max_encoded());
                prop_assert_eq!(p.max_encoded(), (1u32 << b) - 1);
                prop_assert!(max_sum <= u64::from(p.ring_mask()), "{} > ring {}", max_sum, p.ring_mask());
                prop_assert_eq!(p.ring_bits(), if u32::from(b) + ceil_log2(n) <= 16 { 16 } else { 32 });
                if p.ring_bits() == 32 {
                    // The 16-bit ring really could overflow: n clients at 2^b − 1 exceed it.
                    prop_assert!(u32::from(b) + ceil_log2(n) > 16);
                }
            }
            Err(e) => {
                prop_assert_eq!(e.name, "quantization_bits");
                prop_assert!(!(1..=16).contains(&b) || u32::from(b) + ceil_log2(n) > 32);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// On the grid, stochastic rounding is exact, so the secure sum must equal the plain sum of the
    /// quantized values exactly, in the 16-bit ring (where the masked words wrap) and the 32-bit one.
    #[test]
    fn secure_sum_equals_plain_quantized_sum(
        b in 1u8..=12, n in 3u64..=24, len in 1usize..300, round in 0u64..100,
    ) {
        let r = (f64::from((1u32 << b) - 1)) / 2.0;
        let k = if n - 1 <= 4 { n as usize - 1 } else { 4 };
        let params = Params::new(n as usize, k / 2 + 1, k, len, r)
            .unwrap()
            .with_quantization_bits(Some(b))
            .unwrap();
        prop_assert_eq!(params.scale(), 1.0);
        let mut rd = Round::new(params, round, n, Default::default());
        rd.update = grid_update;
        let ids: Vec<u64> = rd.clients.keys().map(|c| c.0).collect();
        let (agg, _) = rd.run();
        let agg = agg.unwrap();
        let mut plain = vec![0.0f64; len];
        for id in ids {
            for (s, x) in plain.iter_mut().zip(grid_update(id, len, r)) {
                *s += f64::from(x);
            }
        }
        prop_assert_eq!(agg.sum, plain);
    }

    /// Off the grid the decoded sum is within the documented bound of the clipped sum.
    #[test]
    fn quantized_sum_is_within_bound(b in 1u8..=16, n in 3u64..=16, len in 1usize..200) {
        let k = if n - 1 <= 4 { n as usize - 1 } else { 4 };
        let params = Params::new(n as usize, k / 2 + 1, k, len, 1.0)
            .unwrap()
            .with_quantization_bits(Some(b))
            .unwrap();
        let rd = Round::new(params, 1, n, Default::default());
        let ids: Vec<u64> = rd.clients.keys().map(|c| c.0).collect();
        let (agg, _) = rd.run();
        let agg = agg.unwrap();
        let plain = crate::common::clipped_sum(ids, len, 1.0);
        prop_assert_eq!(agg.error_bound, n as f64 / params.scale());
        for (a, p) in agg.sum.iter().zip(&plain) {
            prop_assert!((a - p).abs() <= agg.error_bound * (1.0 + 1e-9), "{} vs {}", a, p);
        }
    }
}

/// The mean of many stochastic encodings of one value is the value: a fixed seed, 200,000 draws
/// per value, and a bound of 6 standard errors (each draw's deviation is at most one step).
#[test]
fn stochastic_rounding_is_unbiased() {
    let p = Params::new(100, 2, 2, 1, 1.0)
        .unwrap()
        .with_quantization_bits(Some(4))
        .unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let draws = 200_000usize;
    for x in [-0.93f32, -0.5, 0.0, 0.0417, 0.31, 0.77, 0.999] {
        let xs = vec![x; draws];
        let mut q = vec![0u32; draws];
        p.encode_stochastic_into(&xs, &mut q, &mut rng);
        let v = (f64::from(x) + 1.0) * p.scale();
        let lo = v.floor() as u32;
        assert!(
            q.iter().all(|&w| w == lo || w == lo + 1),
            "only the two neighbours of {v}"
        );
        let mean = q.iter().map(|&w| f64::from(w)).sum::<f64>() / draws as f64;
        let se = 0.5 / (draws as f64).sqrt();
        assert!(
            (mean - v).abs() <= 6.0 * se,
            "x = {x}: mean {mean} vs {v} (se {se})"
        );
        // Not the deterministic rounding: both neighbours occur when v is off the grid.
        if v.fract() > 0.01 && v.fract() < 0.99 {
            assert!(q.contains(&lo) && q.contains(&(lo + 1)));
        }
    }
}

/// A secure round with 8-bit values and ≤ 256 clients uses the 16-bit ring and sends about half
/// the bytes of the default 32-bit round.
#[test]
fn eight_bits_halve_the_masked_input() {
    let len = 10_000;
    let bytes_of = |q: Option<u8>| {
        let params = Params::new(256, 3, 4, len, 1.0)
            .unwrap()
            .with_quantization_bits(q)
            .unwrap();
        let mut rd = Round::new(params, 3, 5, Default::default());
        rd.advertise();
        let m = rd.share_keys().unwrap();
        rd.send_all(&m);
        let masked = rd.masked_inputs().unwrap();
        let sizes: Vec<usize> = masked.values().map(Vec::len).collect();
        (params.ring_bits(), sizes[0])
    };
    let (ring32, full) = bytes_of(None);
    let (ring16, half) = bytes_of(Some(8));
    assert_eq!((ring32, ring16), (32, 16));
    let ratio = half as f64 / full as f64;
    assert!(ratio <= 0.501, "{half} / {full} = {ratio}");
}

/// A word outside the 16-bit ring is refused (and changes nothing).
#[test]
fn words_outside_the_ring_are_refused() {
    let params = Params::new(10, 3, 4, 3, 1.0)
        .unwrap()
        .with_quantization_bits(Some(8))
        .unwrap();
    let mut rd = Round::new(params, 1, 5, Default::default());
    rd.advertise();
    let m = rd.share_keys().unwrap();
    rd.send_all(&m);
    let masked = rd.masked_inputs().unwrap();
    let (&id, bytes) = masked.iter().next().unwrap();
    let ClientMessage::MaskedInput(mut mi) = ClientMessage::from_bytes(bytes, &params).unwrap()
    else {
        panic!("masked input")
    };
    assert!(mi.masked.iter().all(|&w| w <= 0xFFFF));
    mi.masked[1] = 0x1_0000;
    let bad = ClientMessage::MaskedInput(mi).to_bytes();
    let err = rd.server.receive(id, &bad).unwrap_err();
    assert!(err.to_string().contains("16-bit ring"), "{err}");
    assert_eq!(rd.server.held_vectors().len(), 0);
}
