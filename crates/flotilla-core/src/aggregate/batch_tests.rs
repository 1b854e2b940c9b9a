//! The batched fold equals the one-at-a-time fold bit for bit, and a bad update changes nothing.

use super::*;
use proptest::prelude::*;

/// Deterministic values of widely varying magnitude and sign (so roundings differ between orders).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let mantissa = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let exp = ((s >> 8) % 40) as i32 - 20;
            mantissa * 2f32.powi(exp)
        })
        .collect()
}

fn sequential(prefix: &[(Vec<f32>, f64)], batch: &[(Vec<f32>, f64)], len: usize) -> FedAvg {
    let mut agg = FedAvg::new(len);
    for (u, w) in prefix.iter().chain(batch) {
        agg.accept(u, *w).unwrap();
    }
    agg
}

fn batched(prefix: &[(Vec<f32>, f64)], batch: &[(Vec<f32>, f64)], len: usize) -> FedAvg {
    let mut agg = FedAvg::new(len);
    for (u, w) in prefix {
        agg.accept(u, *w).unwrap();
    }
    let views: Vec<(&[f32], f64)> = batch.iter().map(|(u, w)| (u.as_slice(), *w)).collect();
    agg.accept_many(&views).unwrap();
    agg
}

fn same_bits(a: &FedAvg, b: &FedAvg) -> bool {
    a.count() == b.count()
        && a.total_weight().to_bits() == b.total_weight().to_bits()
        && a.sum().len() == b.sum().len()
        && a.sum()
            .iter()
            .zip(b.sum())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Lengths below PAR_MIN with odd tails, and a few above it (the parallel path, uneven last chunk).
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..70,
        1 => 70usize..3000,
        1 => Just(PAR_MIN - 1),
        1 => (PAR_MIN + 1)..(PAR_MIN + 40),
        1 => Just(3 * (1 << 14) + 17),
    ]
}

fn weight() -> impl Strategy<Value = f64> {
    prop_oneof![(1u32..100_000u32).prop_map(f64::from), 1e-3f64..1e6]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any batch size (including over MAX_BATCH), weights and length: the same bits as `accept` in
    /// order, for the sum, the total weight, the count and the mean.
    #[test]
    fn batch_equals_sequential(
        len in length(),
        prefix_seeds in proptest::collection::vec((any::<u64>(), weight()), 0..3),
        seeds in proptest::collection::vec((any::<u64>(), weight()), 0..(MAX_BATCH + 6)),
    ) {
        // Keep the large lengths to few updates, so a case stays fast.
        let take = if len > 5000 { 5 } else { seeds.len() };
        let prefix: Vec<(Vec<f32>, f64)> = prefix_seeds.iter().map(|&(s, w)| (values(s, len), w)).collect();
        let batch: Vec<(Vec<f32>, f64)> = seeds.iter().take(take).map(|&(s, w)| (values(s, len), w)).collect();
        let want = sequential(&prefix, &batch, len);
        let got = batched(&prefix, &batch, len);
        prop_assert!(same_bits(&want, &got));
        if want.count() > 0 {
            let (a, b) = (want.finish().unwrap(), got.finish().unwrap());
            prop_assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    /// One bad update anywhere in a batch (non-finite value, wrong length, bad weight): the batch is
    /// refused naming that update and the error `accept` would give, and the aggregate is unchanged.
    #[test]
    fn bad_update_changes_nothing(
        len in 1usize..200,
        big in any::<bool>(),
        n in 1usize..(MAX_BATCH + 8),
        bad_at in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
        kind in 0u8..6,
        seed in any::<u64>(),
    ) {
        let (len, n) = if big { (PAR_MIN + 3, n.min(4)) } else { (len, n) };
        let bad = bad_at.index(n);
        let mut batch: Vec<(Vec<f32>, f64)> = (0..n).map(|i| (values(seed ^ i as u64, len), 1.0 + i as f64)).collect();
        match kind {
            0 => batch[bad].0[pos.index(len)] = f32::NAN,
            1 => batch[bad].0[pos.index(len)] = f32::INFINITY,
            2 => batch[bad].0[pos.index(len)] = f32::NEG_INFINITY,
            3 => batch[bad].0.push(1.0),
            4 => batch[bad].1 = 0.0,
            _ => batch[bad].1 = f64::NAN,
        }
        let mut agg = FedAvg::new(len);
        agg.accept(&values(seed.rotate_left(7), len), 3.0).unwrap();
        let before = agg.clone();
        let views: Vec<(&[f32], f64)> = batch.iter().map(|(u, w)| (u.as_slice(), *w)).collect();
        let err = agg.accept_many(&views).unwrap_err();
        prop_assert_eq!(err.update, bad);
        let mut probe = before.clone();
        let single = probe.accept(&batch[bad].0, batch[bad].1).unwrap_err();
        // Compared through Debug: a NaN weight is never `==` itself.
        prop_assert_eq!(format!("{:?}", err.error), format!("{single:?}"));
        prop_assert!(same_bits(&agg, &before));
        // And the scratch buffer left behind by the failed attempt does not leak into the next fold.
        let good: Vec<(Vec<f32>, f64)> = (0..3).map(|i| (values(seed ^ (100 + i), len), 2.0)).collect();
        let gviews: Vec<(&[f32], f64)> = good.iter().map(|(u, w)| (u.as_slice(), *w)).collect();
        agg.accept_many(&gviews).unwrap();
        let mut want = before;
        for (u, w) in &good {
            want.accept(u, *w).unwrap();
        }
        prop_assert!(same_bits(&agg, &want));
    }
}

#[test]
fn empty_batch_is_a_no_op() {
    let mut agg = FedAvg::new(4);
    agg.accept_many(&[]).unwrap();
    assert_eq!(agg.count(), 0);
    assert!(agg.finish().is_err());
}

#[test]
fn clone_and_eq_ignore_the_scratch_buffer() {
    let u = [1.0f32, 2.0, 3.0];
    let mut a = FedAvg::new(3);
    a.accept_many(&[(&u, 1.0), (&u, 2.0)]).unwrap();
    let mut b = FedAvg::new(3);
    b.accept(&u, 1.0).unwrap();
    b.accept(&u, 2.0).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.clone(), b);
    assert_eq!(a.finish().unwrap(), vec![1.0, 2.0, 3.0]);
}
