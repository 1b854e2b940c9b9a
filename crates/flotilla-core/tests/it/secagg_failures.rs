//! Secure-aggregation rounds when the aggregator cannot go on (a failed stage close or unmasking,
//! an unusable sum), when the machine has no aggregator (never installed, or not re-installed after
//! a recovery), and which strategies may run under secure aggregation.

use flotilla_core::round::*;
use flotilla_core::strategy::{Strategy, StrategyConfig, StrategySpec};

use crate::fake_secagg::*;

/// The stage messages of attempt `attempt` of round 1 are refused (the attempt is over) and never
/// reach the aggregator.
fn stale_messages_are_refused(m: &mut RoundMachine, fake: &FakeSecAgg, attempt: u32) {
    let receives = fake.state().receives();
    for stage in [ADV, SHARE, MASKED, UNMASK] {
        let t = Task {
            round: 1,
            attempt,
            stage,
            kind: StageKind::SECURE_AGGREGATION[stage as usize],
            model_version: 0,
            seed: 0,
        };
        let before = fingerprint(m);
        let acts = stage_message(m, 12, ClientId(0), &t, 1);
        assert!(
            matches!(
                acts.as_slice(),
                [Action::Reject {
                    reason: RejectReason::NotAccepting(_) | RejectReason::WrongRound { .. },
                    ..
                }]
            ),
            "stage {stage}: {acts:?}"
        );
        assert_eq!(fingerprint(m), before);
    }
    assert_eq!(fake.state().receives(), receives);
}

#[test]
fn a_failed_unmasking_abandons_with_the_reason_and_the_round_is_retried() {
    let (mut m, fake) = machine(policy(1, 4), 2);
    fake.state().fail_finish = Some("client-3 has 2 live neighbours, threshold is 3".into());
    let acts = run_round(&mut m, 0, 4);
    let (round, attempt, reason, cause) = abandoned(&acts).expect("abandoned");
    assert_eq!((round, attempt), (1, 1));
    assert_eq!(cause, AbandonCause::AggregationFailed);
    assert!(
        reason.contains("secure aggregation failed") && reason.contains("threshold is 3"),
        "{reason}"
    );
    assert!(commit(&acts).is_none());
    assert_eq!(fake.state().finishes(), vec![clients(0..4)]);
    assert_eq!(m.current_round(), (1, 2));
    assert_eq!(m.rounds_committed(), 0);
    assert_eq!(m.global(), &[1.0, -1.0]);
    assert!(m.failure().is_none());
    stale_messages_are_refused(&mut m, &fake, 1);

    // The retry starts the aggregator afresh, runs all four stages again and commits.
    fake.state().fail_finish = None;
    fake.state().sum = Some(vec![4.0, 0.0]);
    let acts = run_round(&mut m, 40, 4);
    let commit = commit(&acts).expect("commit");
    assert_eq!((commit.round, commit.attempt), (1, 2));
    assert_eq!(m.global(), &[2.0, -1.0]);
    assert_eq!(fake.state().starts(), vec![(1, 1), (1, 2)]);
    let seeds: Vec<u64> = fake
        .state()
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Start { seed, .. } => Some(*seed),
            _ => None,
        })
        .collect();
    assert_ne!(seeds[0], seeds[1], "each attempt has its own seed");
}

#[test]
fn a_failed_stage_close_abandons_instead_of_opening_the_next_stage() {
    for stage in [ADV, SHARE, MASKED] {
        let (mut m, fake) = machine(policy(1, 4), 2);
        fake.state().fail_close = Some((stage, "too few keys".into()));
        let mut cur = open(&mut m, 0, 0..4);
        for _ in 0..stage {
            cur = configured(&all_report(&mut m, 10, &cur));
        }
        let acts = all_report(&mut m, 10, &cur);
        let (_, attempt, reason, cause) = abandoned(&acts).expect("abandoned");
        assert_eq!(attempt, 1);
        assert_eq!(cause, AbandonCause::AggregationFailed);
        assert_eq!(reason, "secure aggregation failed: too few keys");
        // No task of the next stage, no payload, no unmasking.
        assert!(configured(&acts).is_empty(), "stage {stage}: {acts:?}");
        assert_eq!(m.current_stage(), None);
        assert!(m.stage_payload(cur[0].0, 1, 1, stage + 1).is_empty());
        assert!(fake.state().finishes().is_empty());
        assert_eq!(fake.state().closes().last().unwrap().0, stage);
        assert_eq!(m.current_round(), (1, 2));
        stale_messages_are_refused(&mut m, &fake, 1);
    }
}

#[test]
fn aggregator_failures_fail_the_job_after_max_attempts() {
    let (mut m, fake) = machine(policy(1, 4), 2);
    fake.state().fail_close = Some((ADV, "too few keys".into()));
    for attempt in 1..=3u32 {
        let cur = open(&mut m, attempt as u64 * 100, 0..4);
        assert!(cur.iter().all(|(_, t)| t.attempt == attempt));
        let acts = all_report(&mut m, attempt as u64 * 100 + 10, &cur);
        assert_eq!(abandoned(&acts).expect("abandoned").1, attempt);
        let failed = acts.iter().find_map(|a| match a {
            Action::JobFailed { reason } => Some(reason.clone()),
            _ => None,
        });
        if attempt < 3 {
            assert!(failed.is_none(), "{acts:?}");
        } else {
            assert_eq!(
                failed.as_deref(),
                Some("round 1 failed 3 times: secure aggregation failed: too few keys")
            );
        }
    }
    assert_eq!(
        m.failure(),
        Some("round 1 failed 3 times: secure aggregation failed: too few keys")
    );
    assert_eq!(fake.state().starts(), vec![(1, 1), (1, 2), (1, 3)]);
    // A failed job takes no more messages and starts nothing.
    stale_messages_are_refused(&mut m, &fake, 3);
    let acts = m.handle(
        1000,
        Event::CheckIn {
            client: ClientId(0),
        },
    );
    assert!(matches!(acts.as_slice(), [Action::RetryAfter { .. }]));
    assert_eq!(fake.state().starts().len(), 3);
}

#[test]
fn an_unusable_sum_is_an_explicit_abandon_never_a_commit() {
    for (sum, needle) in [
        (vec![1.0], "the unmasked sum has 1 values, the layout has 2"),
        (vec![], "the unmasked sum has 0 values"),
        (vec![1.0, 1.0, 1.0], "has 3 values"),
        (vec![f64::NAN, 0.0], "unusable mean"),
        (vec![0.0, f64::INFINITY], "not finite"),
        (vec![f64::MAX, 0.0], "not finite"),
    ] {
        let (mut m, fake) = machine(policy(1, 4), 2);
        fake.state().sum = Some(sum.clone());
        let acts = run_round(&mut m, 0, 4);
        let (_, _, reason, cause) = abandoned(&acts).unwrap_or_else(|| panic!("{sum:?}: {acts:?}"));
        assert_eq!(cause, AbandonCause::AggregationFailed);
        assert!(
            reason.starts_with("secure aggregation failed: ") && reason.contains(needle),
            "{sum:?}: {reason}"
        );
        assert!(commit(&acts).is_none());
        assert_eq!(m.rounds_committed(), 0);
        assert_eq!(m.global(), &[1.0, -1.0]);
        assert_eq!(m.current_round(), (1, 2));
    }
}

#[test]
fn recover_abandons_a_secagg_attempt_in_flight_and_needs_a_fresh_aggregator() {
    let (mut m, fake) = machine(policy(1, 4), 2);
    let mut cur = open(&mut m, 0, 0..4);
    for _ in 0..3 {
        cur = configured(&all_report(&mut m, 10, &cur));
    }
    // Two of four unmasked when the process died.
    all_report_but(&mut m, &cur, &[2, 3]);
    assert!(!m.stage_payload(ClientId(0), 1, 1, UNMASK).is_empty());
    let global = m.global().to_vec();
    let snapshot = serde_json::to_string(&m).unwrap();
    let calls = fake.state().calls.len();

    // Restored from its snapshot, the machine has no aggregator: the attempt in flight is
    // abandoned, and the next secure round fails the job, naming the omission.
    let mut restored: RoundMachine = serde_json::from_str(&snapshot).unwrap();
    restored.recover(global.clone()).unwrap();
    assert!(restored.secure_aggregator().is_none());
    assert_eq!(restored.current_round(), (1, 2));
    assert_eq!(restored.current_stage(), None);
    assert!(restored.stage_payload(ClientId(0), 1, 1, UNMASK).is_empty());
    stale_messages_are_refused(&mut restored, &fake, 1);
    let acts = check_in_and_select(&mut restored, 30, 0..4);
    assert!(configured(&acts).is_empty(), "{acts:?}");
    let failed = acts
        .iter()
        .find_map(|a| match a {
            Action::JobFailed { reason } => Some(reason.clone()),
            _ => None,
        })
        .expect("job failed");
    assert!(failed.contains("no secure aggregator"), "{failed}");
    assert_eq!(restored.failure(), Some(failed.as_str()));
    assert_eq!(restored.rounds_committed(), 0);

    // With a fresh aggregator installed, the round runs again as attempt 2 and commits.
    let mut restored: RoundMachine = serde_json::from_str(&snapshot).unwrap();
    restored.recover(global.clone()).unwrap();
    let fresh = FakeSecAgg::new(2);
    fresh.state().sum = Some(vec![0.0, 4.0]);
    restored.set_secure_aggregator(fresh.boxed());
    let acts = run_round(&mut restored, 40, 4);
    let commit = commit(&acts).expect("commit");
    assert_eq!((commit.round, commit.attempt), (1, 2));
    assert_eq!(restored.global(), &[1.0, 0.0]);
    assert_eq!(fresh.state().starts(), vec![(1, 2)]);
    assert_eq!(
        fake.state().calls.len(),
        calls,
        "the dead one's aggregator saw nothing"
    );

    // Recovering the live machine abandons the attempt too: its payloads are gone.
    m.recover(global).unwrap();
    assert_eq!(m.current_round(), (1, 2));
    assert!(m.stage_payload(ClientId(0), 1, 1, UNMASK).is_empty());
    stale_messages_are_refused(&mut m, &fake, 1);
}

#[test]
fn a_secure_round_without_an_aggregator_fails_the_job_naming_it() {
    let mut m = RoundMachine::new(policy(2, 2), layout(2), vec![0.0; 2], 1).unwrap();
    assert!(m.secure_aggregator().is_none());
    let acts = check_in_and_select(&mut m, 0, 0..2);
    assert!(configured(&acts).is_empty(), "{acts:?}");
    let Some(Action::JobFailed { reason }) = acts.last() else {
        panic!("{acts:?}");
    };
    assert!(
        reason.contains("secure aggregation") && reason.contains("no secure aggregator"),
        "{reason}"
    );
    assert_eq!(m.failure(), Some(reason.as_str()));
    assert_eq!(m.current_stage(), None);
    // Installing one afterwards does not revive a failed job.
    m.set_secure_aggregator(FakeSecAgg::new(2).boxed());
    let acts = m.handle(
        50,
        Event::CheckIn {
            client: ClientId(0),
        },
    );
    assert!(matches!(acts.as_slice(), [Action::RetryAfter { .. }]));

    // A plain round needs none.
    let mut p = policy(1, 2);
    p.stages = vec![StageKind::Train];
    let mut m = RoundMachine::new(p, layout(2), vec![0.0; 2], 1).unwrap();
    assert_eq!(open(&mut m, 0, 0..2).len(), 2);
    assert!(m.failure().is_none());
}

#[test]
fn only_sum_based_strategies_run_under_secure_aggregation() {
    let spec = |name: &str, f: &dyn Fn(&mut StrategyConfig)| {
        let mut c = StrategyConfig {
            name: name.into(),
            ..StrategyConfig::default()
        };
        f(&mut c);
        StrategySpec::from_config(&c, 4).unwrap()
    };
    let none = |_: &mut StrategyConfig| {};
    for ok in [
        "fedavg",
        "fedavgm",
        "fedprox",
        "fedadagrad",
        "fedadam",
        "fedyogi",
    ] {
        let s = spec(ok, &none);
        assert!(
            RoundMachine::with_strategy(policy(1, 4), layout(2), vec![0.0; 2], 1, s).is_ok(),
            "{ok}"
        );
    }
    let refused: Vec<(StrategySpec, &str)> = vec![
        (spec("median", &none), "strategy.name"),
        (
            spec("trimmed_mean", &|c| c.beta = Some(0.1)),
            "strategy.name",
        ),
        (spec("krum", &|c| c.f = Some(0)), "strategy.name"),
        (spec("scaffold", &none), "strategy.name"),
        (
            spec("norm_bound", &|c| c.max_norm = Some(1.0)),
            "strategy.name",
        ),
        (
            spec("fedavg", &|c| c.clip_norm = Some(1.0)),
            "strategy.clip_norm",
        ),
        (
            spec("fedavg", &|c| {
                c.anomaly = Some(flotilla_core::strategy::AnomalySpec {
                    max_norm_z: 3.0,
                    max_cosine_distance: 1.0,
                })
            }),
            "strategy.anomaly",
        ),
    ];
    for (s, field) in refused {
        let name = s.name.clone();
        let e = RoundMachine::with_strategy(policy(1, 4), layout(2), vec![0.0; 2], 1, s.clone())
            .unwrap_err();
        assert_eq!(e.field, field, "{name}: {e}");
        assert!(e.message.contains("sum"), "{e}");
        // The same strategies run fine in plain rounds.
        let mut p = policy(1, 4);
        p.stages = vec![StageKind::Train];
        assert!(
            RoundMachine::with_strategy(p, layout(2), vec![0.0; 2], 1, s).is_ok(),
            "{name}"
        );
    }
    let mut p = policy(1, 4);
    p.stages = vec![StageKind::AdvertiseKeys, StageKind::Train];
    assert_eq!(p.validate().unwrap_err().field, "stages");
}

#[test]
fn a_server_optimizer_steps_on_the_secure_mean_like_on_the_plain_one() {
    // FedAvgM over two rounds, through the machine: a secure round (the fake unmasks the sum of the
    // deltas) and a plain round (equal weights) agree, and the momentum carries between rounds.
    let cfg = StrategyConfig {
        name: "fedavgm".into(),
        momentum: Some(0.5),
        ..StrategyConfig::default()
    };
    let spec = StrategySpec::from_config(&cfg, 2).unwrap();
    let deltas = [[0.5f32, 0.25], [-0.25, 0.75]];
    let fake = FakeSecAgg::new(2);
    fake.state().vectors = deltas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                ClientId(i as u64),
                d.iter().map(|&v| f64::from(v)).collect(),
            )
        })
        .collect();
    let mut secure =
        RoundMachine::with_strategy(policy(2, 2), layout(2), vec![1.0, -1.0], 1, spec.clone())
            .unwrap()
            .with_secure_aggregator(fake.boxed());
    let mut p = policy(2, 2);
    p.stages = vec![StageKind::Train];
    let mut plain = RoundMachine::with_strategy(p, layout(2), vec![1.0, -1.0], 1, spec).unwrap();
    for round in 1..=2u64 {
        let now = round * 100;
        let acts = run_round(&mut secure, now, 2);
        assert_eq!(commit(&acts).expect("secure commit").round, round);
        let cohort = open(&mut plain, now, 0..2);
        let mut acts = Vec::new();
        for (c, t) in &cohort {
            let g = plain.global().to_vec();
            let params: Vec<f32> = g
                .iter()
                .zip(&deltas[c.0 as usize])
                .map(|(g, d)| g + d)
                .collect();
            acts = plain.handle(
                now + 10,
                Event::Report {
                    client: *c,
                    round: t.round,
                    attempt: t.attempt,
                    stage: t.stage,
                    num_samples: 7,
                    update: &params,
                    metrics: ReportMetrics::default(),
                },
            );
        }
        assert_eq!(commit(&acts).expect("plain commit").round, round);
        for (a, b) in secure.global().iter().zip(plain.global()) {
            assert!(
                (a - b).abs() < 1e-6,
                "round {round}: {:?} vs {:?}",
                secure.global(),
                plain.global()
            );
        }
    }
    let g = secure.global();
    assert!((g[0] - (1.0 + 0.125 + 0.1875)).abs() < 1e-6, "{g:?}");
    assert_eq!(fake.state().finishes(), vec![clients(0..2), clients(0..2)]);
}

#[test]
fn a_precomputed_mean_is_refused_when_unusable_or_for_a_strategy_that_is_not_sum_based() {
    let cfg = StrategyConfig {
        name: "fedavgm".into(),
        momentum: Some(0.5),
        ..StrategyConfig::default()
    };
    let mut secure = Strategy::new(StrategySpec::from_config(&cfg, 2).unwrap(), 2);
    let g = [1.0f32, -1.0];
    // Wrong length / non-finite means are refused without touching the state.
    assert!(secure.apply_mean_delta(&g, &[0.0]).is_err());
    assert!(secure.apply_mean_delta(&g, &[f32::INFINITY, 0.0]).is_err());
    assert!(secure.apply_secure_sum(&g, &[1.0, 1.0], 0).is_err());
    let first = secure.apply_mean_delta(&g, &[0.5, 0.0]).unwrap().global;
    assert_eq!(
        first,
        vec![1.5, -1.0],
        "no momentum left over from the refusals"
    );
    let median = StrategySpec::from_config(
        &StrategyConfig {
            name: "median".into(),
            ..Default::default()
        },
        2,
    )
    .unwrap();
    assert!(
        Strategy::new(median, 2)
            .apply_mean_delta(&g, &[0.0, 0.0])
            .is_err()
    );
}
