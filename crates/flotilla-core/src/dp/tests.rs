//! Unit tests of the DP mechanisms: configuration bounds, clipping, noise, adaptive clipping.

use super::*;
use proptest::prelude::*;

fn cfg() -> PrivacyConfig {
    PrivacyConfig {
        noise_multiplier: Some(1.0),
        clip_norm: Some(1.0),
        delta: Some(1e-5),
        ..PrivacyConfig::default()
    }
}

#[test]
fn config_errors_name_the_parameter() {
    let err = |c: PrivacyConfig| PrivacySpec::from_config(&c, 10, 8).unwrap_err().field;
    assert_eq!(
        err(PrivacyConfig {
            noise_multiplier: None,
            ..cfg()
        }),
        "privacy.noise_multiplier"
    );
    assert_eq!(
        err(PrivacyConfig {
            noise_multiplier: Some(-1.0),
            ..cfg()
        }),
        "privacy.noise_multiplier"
    );
    assert_eq!(
        err(PrivacyConfig {
            clip_norm: None,
            ..cfg()
        }),
        "privacy.clip_norm"
    );
    assert_eq!(
        err(PrivacyConfig {
            clip_norm: Some(f64::NAN),
            ..cfg()
        }),
        "privacy.clip_norm"
    );
    assert_eq!(
        err(PrivacyConfig {
            delta: Some(1.0),
            ..cfg()
        }),
        "privacy.delta"
    );
    assert_eq!(
        err(PrivacyConfig {
            max_epsilon: Some(0.0),
            ..cfg()
        }),
        "privacy.max_epsilon"
    );
    assert_eq!(
        err(PrivacyConfig {
            mode: Some("local".into()),
            ..cfg()
        }),
        "privacy.mode"
    );
    assert_eq!(
        err(PrivacyConfig {
            population: Some(0),
            ..cfg()
        }),
        "privacy.population"
    );
    let adaptive = AdaptiveClipConfig {
        count_noise_std: Some(0.4),
        ..AdaptiveClipConfig::default()
    };
    assert_eq!(
        err(PrivacyConfig {
            clip_norm: None,
            adaptive: Some(adaptive),
            ..cfg()
        }),
        "privacy.adaptive.count_noise_std"
    );
    let distributed_adaptive = PrivacyConfig {
        clip_norm: None,
        adaptive: Some(AdaptiveClipConfig::default()),
        mode: Some("distributed".into()),
        ..cfg()
    };
    assert_eq!(err(distributed_adaptive), "privacy.adaptive");
    let ok = PrivacySpec::from_config(
        &PrivacyConfig {
            mode: Some("distributed".into()),
            ..cfg()
        },
        10,
        8,
    )
    .unwrap();
    assert_eq!(ok.dp.min_contributors, 8);
    assert!((ok.dp.client_noise_std() - 1.0 / 8f64.sqrt()).abs() < 1e-15);
}

#[test]
fn secagg_clip_range_must_hold_c_plus_the_noise_tails() {
    // σ = 1, C = 1, n_min = 4: share std 0.5, needed range 1 + 10 × 0.5 = 6.
    let c = PrivacyConfig {
        mode: Some("distributed".into()),
        ..cfg()
    };
    let dp = PrivacySpec::from_config(&c, 10, 4).unwrap().dp;
    assert!((dp.secagg_min_clip_range() - 6.0).abs() < 1e-12);
    assert!(dp.check_secure_aggregation(6.0).is_ok());
    let e = dp.check_secure_aggregation(5.9).unwrap_err();
    assert_eq!(e.field, "secagg.clip_range");
    assert!(
        e.message.contains("must be ≥ 6.0") && e.message.contains("privacy.clip_norm"),
        "{}",
        e.message
    );
    assert_eq!(
        dp.check_secure_aggregation(f64::NAN).unwrap_err().field,
        "secagg.clip_range"
    );
    let central = PrivacySpec::from_config(&cfg(), 10, 4).unwrap().dp;
    assert_eq!(
        central.check_secure_aggregation(100.0).unwrap_err().field,
        "privacy.mode"
    );
}

#[test]
fn clip_and_add_noise_clips_then_noises_and_counts_values_outside_the_range() {
    let mut v = vec![3.0f32, 4.0];
    let out = clip_and_add_noise(&mut v, 1.0, 0.0, &mut ChaCha20Rng::seed_from_u64(1));
    assert!(out.clipped && (out.norm - 5.0).abs() < 1e-9);
    assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    assert_eq!(count_outside(&[0.5, -0.7, 0.7, f32::NAN], 0.6), 3);
    let mut w = vec![0.0f32; 10_000];
    clip_and_add_noise(&mut w, 1.0, 0.25, &mut ChaCha20Rng::seed_from_u64(2));
    let sd = (w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!((sd / 0.25 - 1.0).abs() < 0.05, "{sd}");
}

#[test]
fn adaptive_update_noise_follows_theorem_1() {
    let c = PrivacyConfig {
        clip_norm: None,
        adaptive: Some(AdaptiveClipConfig {
            count_noise_std: Some(5.0),
            ..AdaptiveClipConfig::default()
        }),
        ..cfg()
    };
    let s = PrivacySpec::from_config(&c, 100, 100).unwrap();
    let z = s.dp.update_noise_multiplier().unwrap();
    assert!((z - (1.0f64 - 0.01).powf(-0.5)).abs() < 1e-12);
    assert_eq!(s.dp.initial_clip_norm(), 0.1);
}

#[test]
fn adaptive_clip_tracks_the_target_quantile() {
    // Norms uniform on (0, 10): the median is 5. With little count noise C converges to it.
    let spec = DpSpec {
        mode: DpMode::Central,
        clip: ClipRule::Adaptive {
            initial_clip_norm: 0.1,
            target_quantile: 0.5,
            learning_rate: 0.2,
            count_noise_std: 1e-9,
        },
        noise_multiplier: 1e-9,
        expected_clients: 100,
        min_contributors: 100,
    };
    let norms: Vec<f64> = (0..100)
        .map(|i| 10.0 * (f64::from(i) + 0.5) / 100.0)
        .collect();
    let mut c = 0.1;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for _ in 0..300 {
        let unclipped = norms.iter().filter(|n| **n <= c).count() as u64;
        c = adaptive_clip_step(c, unclipped, 100, &spec, &mut rng).0;
    }
    assert!((c - 5.0).abs() < 0.3, "C = {c}");
}

#[test]
fn noise_rng_depends_on_key_round_and_attempt() {
    let k = default_noise_key(7);
    let draw = |key: &[u8; 32], r, a| noise_rng(key, r, a).next_u64();
    assert_eq!(draw(&k, 3, 1), draw(&k, 3, 1));
    assert_ne!(draw(&k, 3, 1), draw(&k, 3, 2));
    assert_ne!(draw(&k, 3, 1), draw(&k, 4, 1));
    assert_ne!(draw(&k, 3, 1), draw(&default_noise_key(8), 3, 1));
}

proptest! {
    #[test]
    fn clipped_norm_never_exceeds_c(
        v in prop::collection::vec(-1e6f32..1e6, 1..300),
        c in 1e-6f64..1e3,
    ) {
        let mut w = v.clone();
        let out = clip_delta(&mut w, c);
        let norm = norms::l2_norm(&w);
        prop_assert!(norm <= c, "norm {norm} > {c}");
        if out.clipped {
            prop_assert!(norm >= c * (1.0 - 1e-5), "{norm} much below {c}");
            // Same direction: every coordinate keeps its sign (or rounds to zero).
            prop_assert!(v.iter().zip(&w).all(|(a, b)| *b == 0.0 || a.signum() == b.signum()));
        } else {
            prop_assert_eq!(w, v);
        }
    }

    #[test]
    fn client_share_has_the_right_spread_and_is_seeded(
        sigma in 0.1f64..4.0,
        c in 0.1f64..4.0,
        n in 1usize..50,
        seed in any::<u64>(),
    ) {
        let spec = DpSpec {
            mode: DpMode::Distributed,
            clip: ClipRule::Fixed { clip_norm: c },
            noise_multiplier: sigma,
            expected_clients: n,
            min_contributors: n,
        };
        let mut a = vec![0.0f32; 4000];
        let mut b = vec![0.0f32; 4000];
        privatize_client_update(&mut a, &spec, &mut ChaCha20Rng::seed_from_u64(seed));
        privatize_client_update(&mut b, &spec, &mut ChaCha20Rng::seed_from_u64(seed));
        prop_assert_eq!(&a, &b);
        let want = sigma * c / (n as f64).sqrt();
        let var = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / a.len() as f64;
        // 4,000 samples: the sample std is within ~6% of the truth with overwhelming probability.
        prop_assert!((var.sqrt() / want - 1.0).abs() < 0.08, "std {} want {want}", var.sqrt());
    }
}
