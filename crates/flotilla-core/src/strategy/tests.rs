//! Unit tests of the strategies: every optimizer, filter, robust rule, DP and FedBuff path.

use super::*;
use crate::dp::DpSpec;

fn cfg(name: &str) -> StrategyConfig {
    StrategyConfig {
        name: name.into(),
        ..StrategyConfig::default()
    }
}

fn run_round(s: &mut Strategy, global: &[f32], reports: &[(&[f32], f64)]) -> Vec<f32> {
    let mut agg = s.begin_round();
    for (i, (u, w)) in reports.iter().enumerate() {
        s.accept(&mut agg, global, i as u64, u, *w).unwrap();
    }
    s.finish(&agg, global).unwrap().global
}

#[test]
fn fedavg_is_weighted_mean_of_parameters() {
    let mut s = Strategy::new(StrategySpec::fedavg(), 2);
    let g = run_round(
        &mut s,
        &[0.0, 0.0],
        &[(&[1.0, 2.0], 1.0), (&[3.0, 6.0], 3.0)],
    );
    assert_eq!(g, vec![2.5, 5.0]);
}

#[test]
fn fedavgm_accumulates_velocity() {
    let spec = StrategySpec::from_config(
        &StrategyConfig {
            momentum: Some(0.5),
            ..cfg("fedavgm")
        },
        1,
    )
    .unwrap();
    let mut s = Strategy::new(spec, 1);
    // Δ = 1 → v = 1, x = 1; then Δ = 1 again → v = 0.5 + 1 = 1.5, x = 2.5.
    let g1 = run_round(&mut s, &[0.0], &[(&[1.0], 1.0)]);
    assert_eq!(g1, vec![1.0]);
    let g2 = run_round(&mut s, &g1, &[(&[2.0], 1.0)]);
    assert_eq!(g2, vec![2.5]);
}

#[test]
fn fedadam_and_fedyogi_match_hand_computed_steps() {
    // η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 0.1; Δ = 2 from x = 0.
    for (name, want_v) in [
        ("fedadam", 0.99 * 0.01 + 0.01 * 4.0),
        ("fedyogi", 0.01 - 0.01 * 4.0 * (0.01f64 - 4.0).signum()),
    ] {
        let c = StrategyConfig {
            server_lr: Some(0.1),
            beta1: Some(0.9),
            beta2: Some(0.99),
            tau: Some(0.1),
            ..cfg(name)
        };
        let mut s = Strategy::new(StrategySpec::from_config(&c, 1).unwrap(), 1);
        let g = run_round(&mut s, &[0.0], &[(&[2.0], 1.0)]);
        let m = 0.1 * 2.0;
        let want = 0.1 * m / (f64::sqrt(want_v) + 0.1);
        assert!(
            (f64::from(g[0]) - want).abs() < 1e-6,
            "{name}: got {} want {want}",
            g[0]
        );
    }
    // Adagrad: v = τ² + Δ² = 0.01 + 4, m = Δ (β₁ = 0).
    let c = StrategyConfig {
        server_lr: Some(0.1),
        tau: Some(0.1),
        ..cfg("fedadagrad")
    };
    let mut s = Strategy::new(StrategySpec::from_config(&c, 1).unwrap(), 1);
    let g = run_round(&mut s, &[0.0], &[(&[2.0], 1.0)]);
    let want = 0.1 * 2.0 / (4.01f64.sqrt() + 0.1);
    assert!((f64::from(g[0]) - want).abs() < 1e-6);
}

#[test]
fn scaffold_updates_control_variate_by_participation_fraction() {
    let mut s = Strategy::new(StrategySpec::from_config(&cfg("scaffold"), 1).unwrap(), 2);
    // Two reporters, both new: N = 2, |S| = 2 → c = mean(Δc).
    // Sample counts 1 and 9: the server step is still the uniform mean (2, 2), not (2.8, 2.8).
    let g = run_round(
        &mut s,
        &[0.0, 0.0],
        &[(&[1.0, 1.0, 0.5, -1.0], 1.0), (&[3.0, 3.0, 1.5, 1.0], 9.0)],
    );
    assert_eq!(g, vec![2.0, 2.0]);
    assert_eq!(s.client_directive().server_control.unwrap(), &[1.0, 0.0]);
    // Wrong length (parameters only) is refused.
    let mut agg = s.begin_round();
    assert!(matches!(
        s.accept(&mut agg, &g, 0, &[1.0, 1.0], 1.0),
        Err(AggregateError::Length { .. })
    ));
}

#[test]
fn norm_bound_clips_each_delta() {
    let spec = StrategySpec::from_config(
        &StrategyConfig {
            max_norm: Some(1.0),
            ..cfg("norm_bound")
        },
        1,
    )
    .unwrap();
    let mut s = Strategy::new(spec, 2);
    let g = run_round(
        &mut s,
        &[0.0, 0.0],
        &[(&[30.0, 40.0], 1.0), (&[0.6, 0.8], 1.0)],
    );
    assert!(
        (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
        "{g:?}"
    );
}

#[test]
fn non_finite_reports_are_refused_on_every_path_without_changing_state() {
    for (c, dim) in [
        (
            StrategyConfig {
                max_norm: Some(1.0),
                ..cfg("norm_bound")
            },
            2,
        ),
        (cfg("median"), 2),
        (cfg("fedavg"), 2),
        (cfg("scaffold"), 2),
    ] {
        let s = Strategy::new(StrategySpec::from_config(&c, 3).unwrap(), dim);
        let mut agg = s.begin_round();
        let before = agg.clone();
        let mut report = vec![1.0; s.report_len()];
        report[1] = f32::NAN;
        assert_eq!(
            s.accept(&mut agg, &[0.0; 2], 0, &report, 1.0),
            Err(AggregateError::NonFinite { index: 1 }),
            "{}",
            c.name
        );
        let last = report.len() - 1;
        report[1] = 1.0;
        report[last] = f32::INFINITY;
        assert_eq!(
            s.accept(&mut agg, &[0.0; 2], 0, &report, 1.0),
            Err(AggregateError::NonFinite { index: last }),
            "{}",
            c.name
        );
        assert_eq!(agg, before, "{}: a refused report changes nothing", c.name);
    }
}

#[test]
fn median_ignores_a_minority_of_attackers() {
    let spec = StrategySpec::from_config(&cfg("median"), 3).unwrap();
    let mut s = Strategy::new(spec, 1);
    let g = run_round(
        &mut s,
        &[0.0],
        &[(&[1.0], 1.0), (&[1.2], 1.0), (&[-1000.0], 1.0)],
    );
    assert_eq!(g, vec![1.0]);
}

#[test]
fn state_is_unchanged_when_the_step_fails() {
    let spec = StrategySpec::from_config(&cfg("fedavgm"), 1).unwrap();
    let mut s = Strategy::new(spec, 1);
    let before = s.clone();
    let agg = s.begin_round();
    assert!(matches!(s.finish(&agg, &[0.0]), Err(AggregateError::Empty)));
    assert_eq!(s, before);
}

#[test]
fn parameters_are_range_checked_by_name() {
    let err = |c: StrategyConfig, min: usize| StrategySpec::from_config(&c, min).unwrap_err();
    assert_eq!(
        err(
            StrategyConfig {
                beta: Some(0.5),
                ..cfg("trimmed_mean")
            },
            10
        )
        .field,
        "strategy.beta"
    );
    assert_eq!(err(cfg("trimmed_mean"), 10).field, "strategy.beta");
    let e = err(
        StrategyConfig {
            f: Some(4),
            ..cfg("krum")
        },
        10,
    );
    assert_eq!(e.field, "strategy.f");
    assert!(e.message.contains("0..=3"), "{e}");
    assert_eq!(
        err(
            StrategyConfig {
                mu: Some(-0.1),
                ..cfg("fedprox")
            },
            10
        )
        .field,
        "strategy.mu"
    );
    assert_eq!(
        err(
            StrategyConfig {
                server_lr: Some(0.0),
                ..cfg("fedadam")
            },
            10
        )
        .field,
        "strategy.server_lr"
    );
    assert_eq!(
        err(
            StrategyConfig {
                server_lr: Some(-1.0),
                ..cfg("fedavg")
            },
            10
        )
        .field,
        "strategy.server_lr"
    );
    assert_eq!(
        err(
            StrategyConfig {
                beta: Some(0.1),
                ..cfg("fedavg")
            },
            10
        )
        .field,
        "strategy"
    );
    assert_eq!(err(cfg("fedsgd"), 10).field, "strategy.name");
    assert!(
        StrategySpec::from_config(
            &StrategyConfig {
                f: Some(3),
                m: Some(7),
                ..cfg("krum")
            },
            10
        )
        .is_ok()
    );
}

fn dp(sigma: f64, clip: f64, m: usize) -> DpSpec {
    DpSpec {
        mode: DpMode::Central,
        clip: ClipRule::Fixed { clip_norm: clip },
        noise_multiplier: sigma,
        expected_clients: m,
        min_contributors: m,
    }
}

fn dp_strategy(spec: DpSpec, dim: usize) -> Strategy {
    let mut s = Strategy::new(StrategySpec::fedavg().with_privacy(spec).unwrap(), dim);
    s.set_noise_key(dp::default_noise_key(1));
    s
}

#[test]
fn dp_clips_sums_unweighted_and_divides_by_the_expected_cohort() {
    // σ so small the noise is invisible at f32 precision of these values.
    let mut s = dp_strategy(dp(1e-12, 1.0, 4), 2);
    // Deltas (3,4) → clipped to (0.6, 0.8); (0.3, 0) is within C. Weights are ignored.
    let g = run_round(
        &mut s,
        &[1.0, 1.0],
        &[(&[4.0, 5.0], 100.0), (&[1.3, 1.0], 1.0)],
    );
    assert!(
        (g[0] - (1.0 + 0.9 / 4.0)).abs() < 1e-6 && (g[1] - (1.0 + 0.8 / 4.0)).abs() < 1e-6,
        "{g:?}"
    );
}

#[test]
fn dp_noise_std_is_sigma_c_over_m_and_reproducible() {
    let (sigma, clip, m, dim) = (1.5, 2.0, 5, 40_000);
    let global = vec![0.0f32; dim];
    let zero = vec![0.0f32; dim];
    let run = |round: u64, attempt: u32| {
        let s = dp_strategy(dp(sigma, clip, m), dim);
        let mut agg = s.begin_round_at(round, attempt);
        s.accept(&mut agg, &global, 0, &zero, 1.0).unwrap();
        let mut s2 = s.clone();
        let r = s2.finish(&agg, &global).unwrap();
        assert_eq!(r.dp.unwrap().noise_std, sigma * clip);
        r.global
    };
    let a = run(3, 1);
    let want = sigma * clip / m as f64;
    let var = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / dim as f64;
    assert!(
        (var.sqrt() / want - 1.0).abs() < 0.02,
        "std {} want {want}",
        var.sqrt()
    );
    assert_eq!(a, run(3, 1), "same key, round and attempt: same noise");
    assert_ne!(a, run(3, 2), "another attempt draws other noise");
}

#[test]
fn dp_refuses_strategies_whose_math_does_not_hold() {
    for c in [
        cfg("median"),
        StrategyConfig {
            beta: Some(0.1),
            ..cfg("trimmed_mean")
        },
        StrategyConfig {
            f: Some(1),
            ..cfg("krum")
        },
        cfg("scaffold"),
        StrategyConfig {
            max_norm: Some(1.0),
            ..cfg("norm_bound")
        },
        StrategyConfig {
            clip_norm: Some(1.0),
            ..cfg("fedavg")
        },
        StrategyConfig {
            anomaly: Some(AnomalySpec {
                max_norm_z: 3.0,
                max_cosine_distance: 1.0,
            }),
            ..cfg("fedavg")
        },
    ] {
        let spec = StrategySpec::from_config(&c, 10).unwrap();
        let e = spec.with_privacy(dp(1.0, 1.0, 10)).unwrap_err();
        assert_eq!(e.field, "privacy", "{}", c.name);
    }
    for name in [
        "fedavg",
        "fedavgm",
        "fedprox",
        "fedadam",
        "fedyogi",
        "fedadagrad",
    ] {
        assert!(
            StrategySpec::from_config(&cfg(name), 10)
                .unwrap()
                .with_privacy(dp(1.0, 1.0, 10))
                .is_ok(),
            "{name}"
        );
    }
}

#[test]
fn dp_adaptive_clip_moves_and_survives_a_restore_bit_exactly() {
    let spec = DpSpec {
        mode: DpMode::Central,
        clip: ClipRule::Adaptive {
            initial_clip_norm: 0.1,
            target_quantile: 0.5,
            learning_rate: 0.2,
            count_noise_std: 2.0,
        },
        noise_multiplier: 1.0,
        expected_clients: 3,
        min_contributors: 3,
    };
    let mut s = Strategy::new(
        StrategySpec::from_config(&cfg("fedadam"), 3)
            .unwrap()
            .with_privacy(spec)
            .unwrap(),
        2,
    );
    s.set_noise_key([7; 32]);
    let reports: [(&[f32], f64); 3] = [(&[5.0, 0.0], 1.0), (&[0.0, 5.0], 1.0), (&[3.0, 4.0], 1.0)];
    let g = run_round(&mut s, &[0.0, 0.0], &reports);
    // Every delta was clipped, so C grows (b̃ ≈ 0 < γ) unless the count noise was huge.
    let c1 = s.dp_clip_norm().unwrap();
    assert!(c1 != 0.1 && c1.is_finite() && c1 > 0.0);
    let back: Strategy = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let (mut a, mut b) = (s, back);
    let ga = run_round(&mut a, &g, &reports);
    let gb = run_round(&mut b, &g, &reports);
    assert_eq!(
        ga.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        gb.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(
        a.dp_clip_norm().unwrap().to_bits(),
        b.dp_clip_norm().unwrap().to_bits()
    );
}

#[test]
fn dp_distributed_mode_adds_no_server_noise_and_does_not_clip() {
    let spec = DpSpec {
        mode: DpMode::Distributed,
        ..dp(1.0, 1.0, 2)
    };
    let mut s = dp_strategy(spec, 2);
    let g = run_round(
        &mut s,
        &[0.0, 0.0],
        &[(&[3.0, 4.0], 5.0), (&[1.0, 0.0], 1.0)],
    );
    assert_eq!(g, vec![2.0, 2.0]);
}

#[test]
fn secure_sum_under_distributed_dp_divides_by_the_expected_cohort_and_adds_nothing() {
    // m = 4 expected, n_min = 2: three contributors' sum is divided by 4, not 3.
    let spec = DpSpec {
        mode: DpMode::Distributed,
        expected_clients: 4,
        min_contributors: 2,
        ..dp(1.0, 1.0, 4)
    };
    let mut s = Strategy::new(StrategySpec::fedavg().with_privacy(spec).unwrap(), 2);
    let r = s.apply_secure_sum(&[1.0, 1.0], &[3.0, -6.0], 3).unwrap();
    assert_eq!(r.global, vec![1.75, -0.5]);
    let info = r.dp.unwrap();
    assert_eq!(
        (info.noise_std, info.reports, info.clip_norm),
        (0.0, 3, 1.0)
    );
    // Fewer contributors than the noise shares were sized for: refused, state unchanged.
    let before = s.clone();
    assert!(matches!(
        s.apply_secure_sum(&[1.0, 1.0], &[3.0, -6.0], 1),
        Err(AggregateError::Parameter {
            name: "contributors",
            ..
        })
    ));
    assert!(s.apply_secure_sum(&[1.0, 1.0], &[3.0], 3).is_err());
    assert!(
        s.apply_secure_sum(&[1.0, 1.0], &[f64::NAN, 0.0], 3)
            .is_err()
    );
    assert_eq!(s, before);
    // Without DP: the unweighted mean of the contributors.
    let mut plain = Strategy::new(StrategySpec::fedavg(), 2);
    assert_eq!(
        plain
            .apply_secure_sum(&[1.0, 1.0], &[3.0, -6.0], 3)
            .unwrap()
            .global,
        vec![2.0, -1.0]
    );
    assert!(
        plain
            .apply_secure_sum(&[1.0, 1.0], &[3.0, -6.0], 0)
            .is_err()
    );
    // Central DP cannot reach a secure sum (it is refused at load; refused here too).
    let mut central = Strategy::new(
        StrategySpec::fedavg()
            .with_privacy(dp(1.0, 1.0, 4))
            .unwrap(),
        2,
    );
    assert!(
        central
            .apply_secure_sum(&[1.0, 1.0], &[3.0, -6.0], 3)
            .is_err()
    );
}

#[test]
fn secure_aggregation_accepts_distributed_dp_only() {
    let distributed = DpSpec {
        mode: DpMode::Distributed,
        ..dp(1.0, 1.0, 4)
    };
    assert!(
        StrategySpec::fedavg()
            .with_privacy(distributed)
            .unwrap()
            .check_secure_aggregation()
            .is_ok()
    );
    let e = StrategySpec::fedavg()
        .with_privacy(dp(1.0, 1.0, 4))
        .unwrap()
        .check_secure_aggregation()
        .unwrap_err();
    assert_eq!(e.field, "privacy.mode");
    let adaptive = DpSpec {
        clip: ClipRule::Adaptive {
            initial_clip_norm: 0.1,
            target_quantile: 0.5,
            learning_rate: 0.2,
            count_noise_std: 2.0,
        },
        ..dp(1.0, 1.0, 4)
    };
    let e = StrategySpec::fedavg()
        .with_privacy(adaptive)
        .unwrap()
        .check_secure_aggregation()
        .unwrap_err();
    assert_eq!(e.field, "privacy.adaptive");
    assert!(e.message.contains("[secagg]"), "{}", e.message);
}

#[test]
fn fedbuff_parameters_and_staleness_weight() {
    let spec = StrategySpec::from_config(&cfg("fedbuff"), 1).unwrap();
    let fb = spec.fedbuff.unwrap();
    assert_eq!(
        (
            fb.buffer_size,
            fb.max_staleness,
            fb.concurrency,
            fb.staleness_exponent
        ),
        (10, 10, 100, 0.5)
    );
    // s(τ) = 1/(1+τ)^a: a = 0.5 → 1, 1/√2, 1/2 (τ = 3); a = 2, τ = 4 → 1/25; a = 0 → 1.
    assert_eq!(fb.staleness_weight(0), 1.0);
    assert!((fb.staleness_weight(1) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-15);
    assert_eq!(fb.staleness_weight(3), 0.5);
    let a2 = FedBuffSpec {
        staleness_exponent: 2.0,
        ..fb
    };
    assert!((a2.staleness_weight(4) - 0.04).abs() < 1e-15);
    assert_eq!(
        FedBuffSpec {
            staleness_exponent: 0.0,
            ..fb
        }
        .staleness_weight(7),
        1.0
    );
    let err = |c: StrategyConfig| StrategySpec::from_config(&c, 1).unwrap_err();
    let e = err(StrategyConfig {
        buffer_size: Some(0),
        ..cfg("fedbuff")
    });
    assert_eq!(e.field, "strategy.buffer_size");
    assert!(e.message.contains("1..="), "{e}");
    assert_eq!(
        err(StrategyConfig {
            concurrency: Some(0),
            ..cfg("fedbuff")
        })
        .field,
        "strategy.concurrency"
    );
    assert_eq!(
        err(StrategyConfig {
            max_staleness: Some(5000),
            ..cfg("fedbuff")
        })
        .field,
        "strategy.max_staleness"
    );
    for a in [-0.1, f64::NAN, 10.5] {
        let e = err(StrategyConfig {
            staleness_exponent: Some(a),
            ..cfg("fedbuff")
        });
        assert_eq!(e.field, "strategy.staleness_exponent");
    }
    assert_eq!(
        err(StrategyConfig {
            clip_norm: Some(1.0),
            ..cfg("fedbuff")
        })
        .field,
        "strategy.clip_norm"
    );
    assert_eq!(
        err(StrategyConfig {
            buffer_size: Some(3),
            ..cfg("fedavg")
        })
        .field,
        "strategy"
    );
    let e = spec.check_secure_aggregation().unwrap_err();
    assert_eq!(e.field, "strategy.name");
    assert!(e.message.contains("asynchronous"), "{e}");
}

#[test]
fn fedbuff_server_optimizers() {
    let fb = |o: Option<&str>| StrategyConfig {
        server_optimizer: o.map(str::to_string),
        ..cfg("fedbuff")
    };
    let ok = |c: StrategyConfig| StrategySpec::from_config(&c, 1).unwrap();
    let err = |c: StrategyConfig| StrategySpec::from_config(&c, 1).unwrap_err();
    // Default: plain SGD with server_lr 1, as before.
    let s = ok(fb(None));
    assert_eq!(
        (s.optimizer.clone(), s.server_lr),
        (ServerOptimizer::Sgd, 1.0)
    );
    assert_eq!(ok(fb(Some("sgd"))).optimizer, ServerOptimizer::Sgd);
    let s = ok(StrategyConfig {
        momentum: Some(0.5),
        ..fb(Some("momentum"))
    });
    assert_eq!(
        (s.optimizer.clone(), s.server_lr),
        (ServerOptimizer::Momentum { momentum: 0.5 }, 1.0)
    );
    assert!(s.fedbuff.is_some());
    assert_eq!(
        ok(fb(Some("momentum"))).optimizer,
        ServerOptimizer::Momentum { momentum: 0.9 }
    );
    // Adaptive optimizers default to server_lr 0.01 like fedadam.
    let s = ok(fb(Some("adam")));
    assert_eq!(
        (s.optimizer.clone(), s.server_lr),
        (
            ServerOptimizer::Adam {
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            },
            0.01
        )
    );
    assert_eq!(
        ok(fb(Some("adagrad"))).optimizer,
        ServerOptimizer::Adagrad {
            beta1: 0.0,
            tau: 1e-3
        }
    );
    let s = ok(StrategyConfig {
        server_lr: Some(0.1),
        tau: Some(0.01),
        ..fb(Some("yogi"))
    });
    assert_eq!(
        (s.optimizer, s.server_lr),
        (
            ServerOptimizer::Yogi {
                beta1: 0.9,
                beta2: 0.99,
                tau: 0.01
            },
            0.1
        )
    );
    // Refusals name the key and the valid values.
    let e = err(fb(Some("nesterov")));
    assert_eq!(e.field, "strategy.server_optimizer");
    assert!(
        e.message.contains("sgd, momentum, adagrad, adam, yogi"),
        "{e}"
    );
    let e = err(StrategyConfig {
        momentum: Some(0.5),
        ..fb(None)
    });
    assert_eq!(e.field, "strategy.momentum");
    assert!(e.message.contains("server_optimizer = \"sgd\""), "{e}");
    let e = err(StrategyConfig {
        beta2: Some(0.9),
        ..fb(Some("adagrad"))
    });
    assert_eq!(e.field, "strategy.beta2");
    assert!(e.message.contains("beta1, tau"), "{e}");
    assert_eq!(
        err(StrategyConfig {
            momentum: Some(1.0),
            ..fb(Some("momentum"))
        })
        .field,
        "strategy.momentum"
    );
    assert_eq!(
        err(StrategyConfig {
            tau: Some(0.0),
            ..fb(Some("adam"))
        })
        .field,
        "strategy.tau"
    );
    // Only fedbuff takes the key.
    let e = err(StrategyConfig {
        server_optimizer: Some("adam".into()),
        ..cfg("fedavg")
    });
    assert_eq!(e.field, "strategy");
    assert!(e.message.contains("server_optimizer"), "{e}");
    // The key round-trips through TOML-like serde.
    let back: StrategyConfig =
        serde_json::from_str(r#"{"name":"fedbuff","server_optimizer":"momentum","momentum":0.8}"#)
            .unwrap();
    assert_eq!(
        ok(back).optimizer,
        ServerOptimizer::Momentum { momentum: 0.8 }
    );
}

#[test]
fn server_state_roundtrips_bit_exactly() {
    let spec = StrategySpec::from_config(
        &StrategyConfig {
            server_lr: Some(0.3),
            ..cfg("fedyogi")
        },
        1,
    )
    .unwrap();
    let mut s = Strategy::new(spec, 3);
    run_round(
        &mut s,
        &[0.1, 0.2, 0.3],
        &[(&[0.7, -0.1, 1e-7], 5.0), (&[0.3, 0.3, 0.3], 2.0)],
    );
    let text = serde_json::to_string(&s).unwrap();
    let back: Strategy = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    let mut a = s.clone();
    let mut b = back;
    let ga = run_round(&mut a, &[0.5, 0.5, 0.5], &[(&[0.1, 0.9, 0.4], 1.0)]);
    let gb = run_round(&mut b, &[0.5, 0.5, 0.5], &[(&[0.1, 0.9, 0.4], 1.0)]);
    assert_eq!(
        ga.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        gb.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}
