//! Round trips, unbiasedness, error-feedback bookkeeping and the decoder's refusals.

use flotilla_compress::{
    Compression, DecodeError, ErrorFeedback, FORMAT_VERSION, StreamDecoder, decode_into, encode,
};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn decode(bytes: &[u8], dim: usize) -> Result<Vec<f32>, DecodeError> {
    let mut out = vec![f32::NAN; dim];
    decode_into(bytes, &mut out)?;
    Ok(out)
}

/// Decodes `bytes` fed in pieces cut at `cuts` (positions, any order, may exceed the length).
fn decode_chunked(bytes: &[u8], dim: usize, cuts: &[usize]) -> Result<Vec<f32>, DecodeError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut out = vec![f32::NAN; dim];
    let mut d = StreamDecoder::new(dim);
    for w in cuts.windows(2) {
        d.feed(&bytes[w[0]..w[1]], &mut out)?;
    }
    d.finish()?;
    Ok(out)
}

fn values(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![-10.0f32..10.0, Just(0.0f32), -1e-3f32..1e-3, -1e6f32..1e6,],
        0..max_len,
    )
}

fn quantize() -> impl Strategy<Value = Compression> {
    (prop_oneof![Just(8u8), Just(4u8)], 1usize..70)
        .prop_map(|(bits, block)| Compression::Quantize { bits, block })
}

proptest! {
    #[test]
    fn none_round_trips_exactly(x in values(300), cuts in prop::collection::vec(0usize..2000, 0..6)) {
        let e = encode(&x, &Compression::None, &mut rng(0)).unwrap();
        prop_assert_eq!(e.len(), Compression::None.encoded_len(x.len()).unwrap());
        prop_assert_eq!(decode(&e.bytes, x.len()).unwrap(), x.clone());
        prop_assert_eq!(decode_chunked(&e.bytes, x.len(), &cuts).unwrap(), x);
    }

    #[test]
    fn quantized_values_land_on_a_neighbouring_grid_point(
        x in values(300),
        c in quantize(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(0usize..2000, 0..6),
    ) {
        let Compression::Quantize { bits, block } = c else { unreachable!() };
        let e = encode(&x, &c, &mut rng(seed)).unwrap();
        prop_assert_eq!(e.len(), c.encoded_len(x.len()).unwrap());
        let y = decode(&e.bytes, x.len()).unwrap();
        prop_assert_eq!(&decode_chunked(&e.bytes, x.len(), &cuts).unwrap(), &y);
        let levels = f64::from((1u32 << bits) - 1);
        for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
            let lo = xb.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // One step of the grid, with room for the f32 rounding of step and of the result.
            let step = (f64::from(hi) - f64::from(lo)) / levels;
            let slack = step * 1e-5 + f64::from(hi.abs().max(lo.abs())) * 1e-6;
            for (&a, &b) in xb.iter().zip(yb) {
                prop_assert!(b.is_finite());
                prop_assert!((f64::from(a) - f64::from(b)).abs() <= step + slack,
                    "x {a} decoded {b}, step {step}");
                prop_assert!(f64::from(b) >= f64::from(lo) - slack);
                prop_assert!(f64::from(b) <= f64::from(hi) + step * 1e-5 + slack);
            }
        }
    }

    #[test]
    fn topk_sends_the_largest_and_zeroes_the_rest(
        x in values(300),
        fraction in 0.001f64..=1.0,
        cuts in prop::collection::vec(0usize..3000, 0..6),
    ) {
        let c = Compression::TopK { fraction };
        let e = encode(&x, &c, &mut rng(0)).unwrap();
        prop_assert_eq!(e.len(), c.encoded_len(x.len()).unwrap());
        let y = decode(&e.bytes, x.len()).unwrap();
        prop_assert_eq!(&decode_chunked(&e.bytes, x.len(), &cuts).unwrap(), &y);
        let k = if x.is_empty() { 0 } else { ((fraction * x.len() as f64).ceil() as usize).clamp(1, x.len()) };
        let entries = (e.len() - 10) / 8;
        prop_assert_eq!(entries, k);
        // Every coordinate is either sent exactly or zero; nothing unsent outweighs a sent one.
        let mut smallest_sent = f32::INFINITY;
        let mut largest_unsent = 0.0f32;
        let mut sent = 0;
        for (&a, &b) in x.iter().zip(&y) {
            prop_assert!(b == a || b == 0.0);
            if b == a && b != 0.0 { smallest_sent = smallest_sent.min(a.abs()); sent += 1; }
            if b != a { largest_unsent = largest_unsent.max(a.abs()); }
        }
        prop_assert!(sent <= k);
        prop_assert!(largest_unsent <= smallest_sent);
    }

    #[test]
    fn error_feedback_keeps_exactly_what_was_not_sent(
        rounds in prop::collection::vec(values(200), 1..4),
        fraction in 0.01f64..=1.0,
    ) {
        let dim = rounds.iter().map(Vec::len).max().unwrap_or(0);
        let c = Compression::TopK { fraction };
        let mut ef = ErrorFeedback::new(dim);
        for (r, mut update) in rounds.into_iter().enumerate() {
            update.resize(dim, 0.5);
            let old = ef.residual.clone();
            let e = ef.encode(&update, &c, &mut rng(r as u64)).unwrap();
            let sent = decode(&e.bytes, dim).unwrap();
            for i in 0..dim {
                // Bitwise: each coordinate was sent whole or kept whole.
                prop_assert_eq!(sent[i] + ef.residual[i], update[i] + old[i]);
                prop_assert!(sent[i] == 0.0 || ef.residual[i] == 0.0);
            }
            let back = ErrorFeedback::from_bytes(&ef.to_bytes()).unwrap();
            prop_assert_eq!(&back, &ef);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), dim in 0usize..80) {
        let _ = decode(&bytes, dim);
        let _ = ErrorFeedback::from_bytes(&bytes);
    }

    #[test]
    fn corrupted_encodings_are_refused_or_finite(
        x in values(120),
        c in prop_oneof![quantize(), Just(Compression::None), (0.01f64..=1.0).prop_map(|fraction| Compression::TopK { fraction })],
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = encode(&x, &c, &mut rng(1)).unwrap().bytes;
        let cut = cut % bytes.len();
        prop_assert!(decode(&bytes[..cut], x.len()).is_err(), "a strict prefix is refused");
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] ^= v;
        }
        if let Ok(y) = decode(&bytes, x.len()) {
            prop_assert!(y.iter().all(|v| v.is_finite()));
        }
    }
}

/// Mean of many independent encodings of one vector: within 5 standard errors of the vector at
/// every coordinate (variance per coordinate ≤ step²/4). Round-to-nearest would miss by up to
/// step/2, i.e. ~60 standard errors here.
#[test]
fn stochastic_quantization_is_unbiased() {
    for bits in [8u8, 4] {
        let dim = 64;
        let x: Vec<f32> = (0..dim)
            .map(|i| ((i * 37 % 64) as f32 / 7.0).sin() * 3.0 + 0.01 * i as f32)
            .collect();
        let c = Compression::Quantize { bits, block: 32 };
        let n = 4000;
        let mut r = rng(42);
        let mut sum = vec![0f64; dim];
        let mut y = vec![0f32; dim];
        for _ in 0..n {
            decode_into(&encode(&x, &c, &mut r).unwrap().bytes, &mut y).unwrap();
            for (s, v) in sum.iter_mut().zip(&y) {
                *s += f64::from(*v);
            }
        }
        let levels = f64::from((1u32 << bits) - 1);
        for (b, xb) in x.chunks(32).enumerate() {
            let lo = xb.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let step = (f64::from(hi) - f64::from(lo)) / levels;
            let se = step / 2.0 / (n as f64).sqrt();
            for (j, &xi) in xb.iter().enumerate() {
                let mean = sum[b * 32 + j] / n as f64;
                let err = (mean - f64::from(xi)).abs();
                assert!(
                    err <= 5.0 * se + 1e-6,
                    "bits {bits} coord {j}: mean {mean} x {xi} se {se}"
                );
            }
        }
        // And the estimator is not trivially exact: single encodings do move.
        let once = {
            decode_into(&encode(&x, &c, &mut r).unwrap().bytes, &mut y).unwrap();
            y.clone()
        };
        assert!(once.iter().zip(&x).any(|(a, b)| a != b));
    }
}

#[test]
fn byte_sizes_are_a_quarter_and_an_eighth() {
    let d = 1_000_000;
    let dense = Compression::None.encoded_len(d).unwrap() as f64;
    let q8 = Compression::Q8.encoded_len(d).unwrap() as f64 / dense;
    let q4 = Compression::Quantize {
        bits: 4,
        block: 1024,
    }
    .encoded_len(d)
    .unwrap() as f64
        / dense;
    let top = Compression::TopK { fraction: 0.01 }.encoded_len(d).unwrap() as f64 / dense;
    assert!((0.25..0.253).contains(&q8), "{q8}");
    assert!((0.125..0.128).contains(&q4), "{q4}");
    assert!((0.02..0.0201).contains(&top), "{top}");
}

#[test]
fn malformed_headers_and_bodies_are_named() {
    let x = [1.0f32, -2.0, 3.0, 0.5, 0.25];
    let q = encode(
        &x,
        &Compression::Quantize { bits: 4, block: 3 },
        &mut rng(3),
    )
    .unwrap()
    .bytes;
    let t = encode(&x, &Compression::TopK { fraction: 0.5 }, &mut rng(3))
        .unwrap()
        .bytes;
    let mut b = q.clone();
    b[0] = FORMAT_VERSION + 1;
    assert_eq!(decode(&b, 5), Err(DecodeError::Version(FORMAT_VERSION + 1)));
    b = q.clone();
    b[1] = 9;
    assert_eq!(decode(&b, 5), Err(DecodeError::Kind(9)));
    b = q.clone();
    b[6] = 3;
    assert_eq!(decode(&b, 5), Err(DecodeError::Bits(3)));
    b = q.clone();
    b[7..11].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(decode(&b, 5), Err(DecodeError::Block(0)));
    assert_eq!(
        decode(&q, 6),
        Err(DecodeError::Dimension {
            expected: 6,
            got: 5
        })
    );
    // Scale: a NaN lo in block 1 (block 0 is 11..11+8+2).
    b = q.clone();
    b[21..25].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(
        decode(&b, 5),
        Err(DecodeError::Scale { block: 1, .. })
    ));
    // A step that overflows the block's top value.
    b = q.clone();
    b[15..19].copy_from_slice(&f32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&b, 5),
        Err(DecodeError::Scale { block: 0, .. })
    ));
    // Block 1 has 2 coordinates (one byte, no padding); block 0 has 3: its last high nibble pads.
    b = q.clone();
    b[20] |= 0xf0;
    assert_eq!(decode(&b, 5), Err(DecodeError::Padding(0)));
    b = q.clone();
    b.push(0);
    assert_eq!(decode(&b, 5), Err(DecodeError::Trailing(1)));
    assert!(matches!(
        decode(&q[..q.len() - 1], 5),
        Err(DecodeError::Truncated { missing: 1 })
    ));
    // Top-k: k = 3 entries at 10.., 8 bytes each.
    b = t.clone();
    b[6..10].copy_from_slice(&6u32.to_le_bytes());
    assert_eq!(
        decode(&b, 5),
        Err(DecodeError::TooManyEntries { k: 6, dim: 5 })
    );
    b = t.clone();
    let first: [u8; 4] = b[10..14].try_into().unwrap();
    b[18..22].copy_from_slice(&first);
    assert!(matches!(decode(&b, 5), Err(DecodeError::IndexOrder { .. })));
    b = t.clone();
    b[26..30].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(
        decode(&b, 5),
        Err(DecodeError::IndexOutOfRange { index: 5, dim: 5 })
    );
    b = t.clone();
    b[14..18].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert!(matches!(decode(&b, 5), Err(DecodeError::NotFinite(_))));
}

#[test]
fn a_server_refuses_what_was_not_negotiated() {
    let x = vec![0.5f32; 100];
    let q4 = encode(
        &x,
        &Compression::Quantize { bits: 4, block: 64 },
        &mut rng(1),
    )
    .unwrap();
    let mut out = vec![0f32; 100];
    let mut d = StreamDecoder::expecting(100, Compression::Quantize { bits: 8, block: 64 });
    assert!(matches!(
        d.feed(&q4.bytes, &mut out),
        Err(DecodeError::NotNegotiated { .. })
    ));
    assert_eq!(d.feed(&q4.bytes, &mut out), Err(DecodeError::Poisoned));
    // Top-k: at most the negotiated number of entries.
    let t = encode(&x, &Compression::TopK { fraction: 0.2 }, &mut rng(1)).unwrap();
    let mut d = StreamDecoder::expecting(100, Compression::TopK { fraction: 0.1 });
    assert!(matches!(
        d.feed(&t.bytes, &mut out),
        Err(DecodeError::NotNegotiated { .. })
    ));
    let mut d = StreamDecoder::expecting(100, Compression::TopK { fraction: 0.3 });
    d.feed(&t.bytes, &mut out).unwrap();
    d.finish().unwrap();
    let dense = encode(&x, &Compression::None, &mut rng(1)).unwrap();
    let mut d = StreamDecoder::expecting(100, Compression::Q8);
    assert!(d.feed(&dense.bytes, &mut out).is_err());
}

#[test]
fn encoder_refuses_bad_updates_and_configs() {
    let c = Compression::Q8;
    assert!(encode(&[1.0, f32::NAN], &c, &mut rng(0)).is_err());
    assert!(encode(&[1.0, 1e31], &c, &mut rng(0)).is_err());
    assert!(
        encode(
            &[1.0],
            &Compression::Quantize { bits: 3, block: 8 },
            &mut rng(0)
        )
        .is_err()
    );
    assert!(
        encode(
            &[1.0],
            &Compression::Quantize { bits: 8, block: 0 },
            &mut rng(0)
        )
        .is_err()
    );
    assert!(encode(&[1.0], &Compression::TopK { fraction: 0.0 }, &mut rng(0)).is_err());
    assert!(
        encode(
            &[1.0],
            &Compression::TopK { fraction: f64::NAN },
            &mut rng(0)
        )
        .is_err()
    );
    let mut ef = ErrorFeedback::new(3);
    assert!(
        ef.encode(&[1.0; 4], &Compression::TopK { fraction: 0.5 }, &mut rng(0))
            .is_err()
    );
    assert_eq!(
        ef.residual,
        vec![0.0; 3],
        "a refused update leaves the residual alone"
    );
}
