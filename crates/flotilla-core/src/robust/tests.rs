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
