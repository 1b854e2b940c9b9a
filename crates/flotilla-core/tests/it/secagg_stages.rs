//! The round machine's secure-aggregation stages, driven by hand: the machine does the bookkeeping
//! (cohorts, deadlines, duplicates, survivors), the "driver" here plays the secagg server's part.

use flotilla_core::round::*;
use flotilla_core::strategy::{StrategyConfig, StrategySpec};
use flotilla_core::{ParamLayout, TensorSpec};

const ADV: u32 = 0;
const SHARE: u32 = 1;
const MASKED: u32 = 2;
const UNMASK: u32 = 3;

fn layout(n: usize) -> ParamLayout {
    ParamLayout::new(vec![TensorSpec::new("w", [n])])
}

fn policy(rounds: u64, cpr: usize) -> RoundPolicy {
    let mut p = RoundPolicy::new(rounds, cpr);
    p.selection_window_ms = 10;
    p.stage_deadline_ms = 1000;
    p.min_report_fraction = 0.6;
    p.max_attempts = 3;
    p.stages = StageKind::SECURE_AGGREGATION.to_vec();
    p
}

fn configured(actions: &[Action]) -> Vec<(ClientId, Task)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Configure { client, task } => Some((*client, task.clone())),
            _ => None,
        })
        .collect()
}

fn timers(actions: &[Action]) -> Vec<(Timer, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetTimer { timer, at_ms } => Some((*timer, *at_ms)),
            _ => None,
        })
        .collect()
}

fn stage_report(m: &mut RoundMachine, now: u64, c: ClientId, t: &Task, n: u64) -> Vec<Action> {
    m.handle(
        now,
        Event::StageReport {
            client: c,
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
            num_samples: n,
            metrics: ReportMetrics { train_loss: 2.0 },
        },
    )
}

fn machine(p: RoundPolicy, seed: u64) -> RoundMachine {
    RoundMachine::new(p, layout(2), vec![1.0, -1.0], seed).unwrap()
}

/// Checks in `clients` and opens round `m`'s stage 0; returns its cohort.
fn open(
    m: &mut RoundMachine,
    now: u64,
    clients: impl IntoIterator<Item = u64>,
) -> Vec<(ClientId, Task)> {
    let mut acts = Vec::new();
    for c in clients {
        acts.extend(m.handle(
            now,
            Event::CheckIn {
                client: ClientId(c),
            },
        ));
    }
    let t = timers(&acts);
    assert_eq!(t.len(), 1, "one selection timer: {acts:?}");
    let acts = m.handle(t[0].1, Event::TimerFired(t[0].0));
    configured(&acts)
}

/// Every member of `cohort` reports; returns the actions of the last report.
fn all_report(m: &mut RoundMachine, now: u64, cohort: &[(ClientId, Task)]) -> Vec<Action> {
    let mut last = Vec::new();
    for (c, t) in cohort {
        last = stage_report(m, now, *c, t, 10 + c.0);
        assert!(matches!(last[0], Action::Accepted { .. }), "{last:?}");
    }
    last
}

fn abandoned(acts: &[Action]) -> Option<(u64, u32, String)> {
    acts.iter().find_map(|a| match a {
        Action::RoundAbandoned {
            round,
            attempt,
            reason,
            ..
        } => Some((*round, *attempt, reason.clone())),
        _ => None,
    })
}

#[test]
fn four_stages_close_in_order_then_finalize_and_commit_the_unweighted_mean() {
    let mut m = machine(policy(1, 4), 3);
    let cohort = open(&mut m, 0, 0..4);
    assert_eq!(cohort.len(), 4);
    assert!(
        cohort
            .iter()
            .all(|(_, t)| t.stage == ADV && t.kind == StageKind::AdvertiseKeys)
    );
    assert_eq!(m.current_stage(), Some((ADV, StageKind::AdvertiseKeys)));

    let mut cur = cohort;
    for (stage, kind) in [
        (ADV, StageKind::AdvertiseKeys),
        (SHARE, StageKind::ShareKeys),
        (MASKED, StageKind::MaskedInput),
    ] {
        let acts = all_report(&mut m, 20, &cur);
        // StageClosed names the survivors and comes before every Configure of the next stage.
        let closed = acts
            .iter()
            .position(|a| matches!(a, Action::StageClosed { .. }))
            .expect("stage closed");
        let first_cfg = acts
            .iter()
            .position(|a| matches!(a, Action::Configure { .. }))
            .expect("next stage");
        assert!(closed < first_cfg, "{acts:?}");
        let Action::StageClosed {
            round,
            attempt,
            stage: s,
            kind: k,
            survivors,
        } = &acts[closed]
        else {
            unreachable!()
        };
        assert_eq!((*round, *attempt, *s, *k), (1, 1, stage, kind));
        assert_eq!(survivors, &cur.iter().map(|(c, _)| *c).collect::<Vec<_>>());
        cur = configured(&acts);
        assert_eq!(cur.len(), 4);
        assert!(cur.iter().all(|(_, t)| t.stage == stage + 1
            && t.kind == StageKind::SECURE_AGGREGATION[stage as usize + 1]));
        assert!(timers(&acts).iter().any(|(t, at)| *t
            == Timer::Deadline {
                round: 1,
                attempt: 1,
                stage: stage + 1
            }
            && *at == 1020));
    }
    let acts = all_report(&mut m, 30, &cur);
    let contributors: Vec<ClientId> = (0..4).map(ClientId).collect();
    assert!(
        acts.contains(&Action::Finalize {
            round: 1,
            attempt: 1,
            contributors: contributors.clone()
        }),
        "{acts:?}"
    );
    assert!(!acts.iter().any(|a| matches!(a, Action::Commit(_))));
    assert_eq!(m.rounds_committed(), 0);

    // The driver unmasks the sum of 4 deltas: mean delta = (0.4, -2.0)/4.
    let acts = m.handle(
        40,
        Event::Aggregated {
            round: 1,
            attempt: 1,
            sum: &[0.4, -2.0],
            contributors: 4,
        },
    );
    let commit = acts
        .iter()
        .find_map(|a| {
            if let Action::Commit(c) = a {
                Some(c.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(commit.participants, contributors);
    assert_eq!(
        commit.num_samples,
        10 + 11 + 12 + 13,
        "the samples reported at the masked-input stage"
    );
    assert_eq!(commit.train_loss, 2.0);
    assert!(acts.contains(&Action::JobFinished));
    assert!(
        (m.global()[0] - 1.1).abs() < 1e-6 && (m.global()[1] + 1.5).abs() < 1e-6,
        "{:?}",
        m.global()
    );
}

#[test]
fn dropouts_shrink_the_next_cohort_but_unmasking_dropouts_still_contribute() {
    let mut m = machine(policy(1, 5), 9);
    let cohort = open(&mut m, 0, 0..5);
    // Stage 0: client 4 is lost, the other four report → stage closes early with 4 survivors.
    stage_report_all_but(&mut m, &cohort, &[4]);
    let acts = m.handle(
        25,
        Event::ClientLost {
            client: ClientId(4),
        },
    );
    let s1 = configured(&acts);
    assert_eq!(ids(&s1), vec![0, 1, 2, 3]);
    // A late report of the lost client for stage 0 is now a wrong-stage report.
    let late = stage_report(&mut m, 26, ClientId(4), &cohort[4].1, 1);
    assert!(matches!(
        late[0],
        Action::Reject {
            reason: RejectReason::WrongStage {
                expected: SHARE,
                got: ADV
            },
            ..
        }
    ));
    // Stage 1: everyone shares.
    let acts = all_report(&mut m, 30, &s1);
    let s2 = configured(&acts);
    // Stage 2: client 3 never sends its masked input; the deadline closes the stage with 3 (≥ 3 needed).
    stage_report_all_but(&mut m, &s2, &[3]);
    let deadline = Timer::Deadline {
        round: 1,
        attempt: 1,
        stage: MASKED,
    };
    let acts = m.handle(5000, Event::TimerFired(deadline));
    assert!(acts.iter().any(|a| matches!(a, Action::StageClosed { stage: MASKED, survivors, .. } if ids_of(survivors) == vec![0, 1, 2])));
    let s3 = configured(&acts);
    assert_eq!(ids(&s3), vec![0, 1, 2]);
    // Stage 3: client 2 dies after its masked input; the deadline closes unmasking with 2 answers,
    // and the contributors are still the three whose masked input arrived.
    stage_report_all_but(&mut m, &s3, &[2]);
    let acts = m.handle(
        7000,
        Event::TimerFired(Timer::Deadline {
            round: 1,
            attempt: 1,
            stage: UNMASK,
        }),
    );
    assert!(
        acts.contains(&Action::Finalize {
            round: 1,
            attempt: 1,
            contributors: vec![ClientId(0), ClientId(1), ClientId(2)]
        }),
        "{acts:?}"
    );
    let acts = m.handle(
        7001,
        Event::Aggregated {
            round: 1,
            attempt: 1,
            sum: &[0.3, 0.0],
            contributors: 3,
        },
    );
    let commit = acts
        .iter()
        .find_map(|a| {
            if let Action::Commit(c) = a {
                Some(c.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(ids_of(&commit.participants), vec![0, 1, 2]);
    assert!((m.global()[0] - 1.1).abs() < 1e-6);
}

fn ids(c: &[(ClientId, Task)]) -> Vec<u64> {
    c.iter().map(|(c, _)| c.0).collect()
}

fn ids_of(c: &[ClientId]) -> Vec<u64> {
    c.iter().map(|c| c.0).collect()
}

fn stage_report_all_but(m: &mut RoundMachine, cohort: &[(ClientId, Task)], skip: &[u64]) {
    for (c, t) in cohort.iter().filter(|(c, _)| !skip.contains(&c.0)) {
        let acts = stage_report(m, 20, *c, t, 5);
        assert!(matches!(acts[0], Action::Accepted { .. }), "{acts:?}");
    }
}

#[test]
fn too_few_survivors_at_any_stage_abandon_the_attempt_with_the_stage_named() {
    for (stage, name) in [
        (ADV, "advertise_keys"),
        (SHARE, "share_keys"),
        (MASKED, "masked_input"),
    ] {
        let mut m = machine(policy(1, 5), 1);
        let mut cur = open(&mut m, 0, 0..5);
        for _ in 0..stage {
            cur = configured(&all_report(&mut m, 10, &cur));
        }
        // Only 2 of the 3 needed (⌈5 × 0.6⌉) report before the deadline.
        stage_report_all_but(&mut m, &cur, &[2, 3, 4]);
        let acts = m.handle(
            9999,
            Event::TimerFired(Timer::Deadline {
                round: 1,
                attempt: 1,
                stage,
            }),
        );
        let (round, attempt, reason) =
            abandoned(&acts).unwrap_or_else(|| panic!("stage {stage}: {acts:?}"));
        assert_eq!((round, attempt), (1, 1));
        assert!(
            reason.contains(name) && reason.contains("fewer than 3"),
            "{reason}"
        );
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::StageClosed { .. } | Action::Finalize { .. }))
        );
        assert_eq!(m.current_round(), (1, 2));
    }
    // Unmasking needs one answer; with none the attempt is abandoned too.
    let mut m = machine(policy(1, 3), 1);
    let mut cur = open(&mut m, 0, 0..3);
    for _ in 0..3 {
        cur = configured(&all_report(&mut m, 10, &cur));
    }
    assert_eq!(cur.len(), 3);
    let acts = m.handle(
        9999,
        Event::TimerFired(Timer::Deadline {
            round: 1,
            attempt: 1,
            stage: UNMASK,
        }),
    );
    assert!(abandoned(&acts).unwrap().2.contains("unmasking"));
}

#[test]
fn bad_stage_reports_are_rejected_and_change_nothing() {
    let mut m = machine(policy(1, 3), 5);
    let cohort = open(&mut m, 0, 0..4);
    let (c0, t0) = cohort[0].clone();
    stage_report(&mut m, 10, c0, &t0, 0);
    let before = serde_json::to_string(&m).unwrap();
    let outsider = (0..4)
        .map(ClientId)
        .find(|c| cohort.iter().all(|(x, _)| x != c))
        .unwrap();
    let (c1, t1) = cohort[1].clone();
    let plain = m.handle(
        11,
        Event::Report {
            client: c1,
            round: 1,
            attempt: 1,
            stage: ADV,
            num_samples: 1,
            update: &[0.0, 0.0],
            metrics: ReportMetrics::default(),
        },
    );
    let cases: Vec<(Vec<Action>, &str)> = vec![
        (stage_report(&mut m, 11, outsider, &t0, 1), "not selected"),
        (stage_report(&mut m, 11, c0, &t0, 1), "duplicate"),
        (
            stage_report(
                &mut m,
                11,
                c1,
                &Task {
                    stage: SHARE,
                    ..t1.clone()
                },
                1,
            ),
            "wrong stage",
        ),
        (
            stage_report(
                &mut m,
                11,
                c1,
                &Task {
                    attempt: 2,
                    ..t1.clone()
                },
                1,
            ),
            "wrong attempt",
        ),
        (
            stage_report(
                &mut m,
                11,
                c1,
                &Task {
                    round: 0,
                    ..t1.clone()
                },
                1,
            ),
            "wrong round",
        ),
        (plain, "a Report with parameters at a secagg stage"),
    ];
    for (acts, what) in &cases {
        assert_eq!(acts.len(), 1, "{what}: {acts:?}");
        assert!(matches!(acts[0], Action::Reject { .. }), "{what}: {acts:?}");
    }
    assert!(matches!(
        cases[0].0[0],
        Action::Reject {
            reason: RejectReason::NotSelected,
            ..
        }
    ));
    assert!(matches!(
        cases[1].0[0],
        Action::Reject {
            reason: RejectReason::Duplicate,
            ..
        }
    ));
    assert!(matches!(
        cases[2].0[0],
        Action::Reject {
            reason: RejectReason::WrongStage {
                expected: 0,
                got: 1
            },
            ..
        }
    ));
    assert!(matches!(
        cases[5].0[0],
        Action::Reject {
            reason: RejectReason::WrongStageKind {
                stage: 0,
                kind: "advertise_keys"
            },
            ..
        }
    ));
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        before,
        "a rejected report changed the machine"
    );

    // At the masked-input stage the sample count is checked like a plain report's.
    let mut m = machine(policy(1, 3), 5);
    let mut cur = open(&mut m, 0, 0..3);
    for _ in 0..2 {
        cur = configured(&all_report(&mut m, 10, &cur));
    }
    let before = serde_json::to_string(&m).unwrap();
    let acts = stage_report(&mut m, 11, cur[0].0, &cur[0].1, 0);
    assert!(matches!(
        acts[0],
        Action::Reject {
            reason: RejectReason::BadSampleCount { got: 0, .. },
            ..
        }
    ));
    assert_eq!(serde_json::to_string(&m).unwrap(), before);

    // A StageReport in a plain round is refused as the wrong kind.
    let mut p = policy(1, 2);
    p.stages = vec![StageKind::Train];
    let mut m = machine(p, 5);
    let cohort = open(&mut m, 0, 0..2);
    let acts = stage_report(&mut m, 11, cohort[0].0, &cohort[0].1, 1);
    assert!(matches!(
        acts[0],
        Action::Reject {
            reason: RejectReason::WrongStageKind { kind: "train", .. },
            ..
        }
    ));
}

/// Runs round 1 of a 4-client machine up to `Finalize`.
fn to_finalize(m: &mut RoundMachine) {
    let mut cur = open(m, 0, 0..4);
    for _ in 0..3 {
        cur = configured(&all_report(m, 10, &cur));
    }
    let acts = all_report(m, 20, &cur);
    assert!(acts.iter().any(|a| matches!(a, Action::Finalize { .. })));
}

#[test]
fn aggregation_failure_abandons_with_the_reason_and_the_round_is_retried() {
    let mut m = machine(policy(1, 4), 2);
    to_finalize(&mut m);
    // Stale or mismatched events are ignored while waiting.
    assert!(
        m.handle(
            30,
            Event::Aggregated {
                round: 1,
                attempt: 2,
                sum: &[0.0, 0.0],
                contributors: 4
            }
        )
        .is_empty()
    );
    assert!(
        m.handle(
            30,
            Event::AggregationFailed {
                round: 2,
                attempt: 1,
                reason: "x".into()
            }
        )
        .is_empty()
    );
    let acts = m.handle(
        30,
        Event::AggregationFailed {
            round: 1,
            attempt: 1,
            reason: "client-3 has 2 live neighbours, threshold is 3".into(),
        },
    );
    let (_, attempt, reason) = abandoned(&acts).expect("abandoned");
    assert_eq!(attempt, 1);
    assert!(
        reason.contains("secure aggregation failed") && reason.contains("threshold is 3"),
        "{reason}"
    );
    assert_eq!(m.current_round(), (1, 2));
    assert_eq!(m.rounds_committed(), 0);
    assert_eq!(m.global(), &[1.0, -1.0]);
    // A late Aggregated for the abandoned attempt changes nothing.
    assert!(
        m.handle(
            31,
            Event::Aggregated {
                round: 1,
                attempt: 1,
                sum: &[4.0, 4.0],
                contributors: 4
            }
        )
        .is_empty()
    );
    assert_eq!(m.global(), &[1.0, -1.0]);

    // The retry runs all four stages again and commits.
    to_finalize_from_pool(&mut m);
    let acts = m.handle(
        60,
        Event::Aggregated {
            round: 1,
            attempt: 2,
            sum: &[4.0, 0.0],
            contributors: 4,
        },
    );
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Commit(c) if c.attempt == 2)),
        "{acts:?}"
    );
    assert_eq!(m.global(), &[2.0, -1.0]);
}

fn to_finalize_from_pool(m: &mut RoundMachine) {
    let mut cur = open(m, 40, 0..4);
    assert!(cur.iter().all(|(_, t)| t.attempt == 2 && t.stage == ADV));
    for _ in 0..3 {
        cur = configured(&all_report(m, 50, &cur));
    }
    all_report(m, 50, &cur);
}

#[test]
fn a_failed_stage_close_abandons_while_the_next_stage_runs() {
    let mut m = machine(policy(1, 4), 2);
    let cur = open(&mut m, 0, 0..4);
    let acts = all_report(&mut m, 10, &cur);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::StageClosed { stage: ADV, .. }))
    );
    // The driver's close_advertise failed: it says so instead of sending stage-1 tasks.
    let acts = m.handle(
        11,
        Event::AggregationFailed {
            round: 1,
            attempt: 1,
            reason: "too few keys".into(),
        },
    );
    assert!(abandoned(&acts).unwrap().2.contains("too few keys"));
    assert_eq!(m.current_stage(), None);
    // Reports for the abandoned attempt are stale.
    let (c, t) = &cur[0];
    let acts = stage_report(
        &mut m,
        12,
        *c,
        &Task {
            stage: SHARE,
            ..t.clone()
        },
        1,
    );
    assert!(matches!(
        acts[0],
        Action::Reject {
            reason: RejectReason::NotAccepting(_) | RejectReason::WrongRound { .. },
            ..
        }
    ));
}

#[test]
fn an_inconsistent_aggregate_is_an_explicit_abandon_never_a_commit() {
    for (sum, n, needle) in [
        (vec![1.0, 1.0], 3usize, "covers 3 clients, 4 contributed"),
        (vec![1.0], 4, "has 1 values"),
        (vec![f64::NAN, 0.0], 4, "not finite"),
    ] {
        let mut m = machine(policy(1, 4), 2);
        to_finalize(&mut m);
        let acts = m.handle(
            30,
            Event::Aggregated {
                round: 1,
                attempt: 1,
                sum: &sum,
                contributors: n,
            },
        );
        let reason = abandoned(&acts).expect("abandoned").2;
        assert!(reason.contains(needle), "{reason}");
        assert_eq!(m.rounds_committed(), 0);
    }
}

#[test]
fn recover_abandons_a_secagg_attempt_in_flight() {
    let mut m = machine(policy(1, 4), 2);
    to_finalize(&mut m);
    let global = m.global().to_vec();
    let mut m: RoundMachine = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    m.recover(global).unwrap();
    assert_eq!(m.current_round(), (1, 2));
    assert!(
        m.handle(
            30,
            Event::Aggregated {
                round: 1,
                attempt: 1,
                sum: &[1.0, 1.0],
                contributors: 4
            }
        )
        .is_empty()
    );
    assert_eq!(m.rounds_committed(), 0);
    to_finalize_from_pool(&mut m);
    let acts = m.handle(
        60,
        Event::Aggregated {
            round: 1,
            attempt: 2,
            sum: &[0.0, 4.0],
            contributors: 4,
        },
    );
    assert!(acts.iter().any(|a| matches!(a, Action::Commit(_))));
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
    // FedAvgM over two rounds: the secagg path (mean delta given) and the plain path (equal weights)
    // agree, and the momentum carries between rounds.
    let cfg = StrategyConfig {
        name: "fedavgm".into(),
        momentum: Some(0.5),
        ..StrategyConfig::default()
    };
    let spec = StrategySpec::from_config(&cfg, 2).unwrap();
    let mut secure = flotilla_core::strategy::Strategy::new(spec.clone(), 2);
    let mut plain = flotilla_core::strategy::Strategy::new(spec, 2);
    let mut g_s = vec![1.0f32, -1.0];
    let mut g_p = g_s.clone();
    for round in 0..2 {
        let deltas = [[0.5f32, 0.25], [-0.25, 0.75]];
        let mut agg = plain.begin_round();
        for (i, d) in deltas.iter().enumerate() {
            let params: Vec<f32> = g_p.iter().zip(d).map(|(g, d)| g + d).collect();
            plain
                .accept(&mut agg, &g_p, i as u64, &params, 7.0)
                .unwrap();
        }
        g_p = plain.finish(&agg, &g_p).unwrap().global;
        let mean: Vec<f32> = (0..2)
            .map(|j| (deltas[0][j] + deltas[1][j]) / 2.0)
            .collect();
        g_s = secure.apply_mean_delta(&g_s, &mean).unwrap().global;
        for (a, b) in g_s.iter().zip(&g_p) {
            assert!((a - b).abs() < 1e-6, "round {round}: {g_s:?} vs {g_p:?}");
        }
    }
    assert!((g_s[0] - (1.0 + 0.125 + 0.1875)).abs() < 1e-6, "{g_s:?}");
    // Wrong length / non-finite means are refused without touching the state.
    assert!(secure.apply_mean_delta(&g_s, &[0.0]).is_err());
    assert!(
        secure
            .apply_mean_delta(&g_s, &[f32::INFINITY, 0.0])
            .is_err()
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
        flotilla_core::strategy::Strategy::new(median, 2)
            .apply_mean_delta(&g_s, &[0.0, 0.0])
            .is_err()
    );
}

#[test]
fn check_stage_report_predicts_the_verdict_without_changing_state() {
    let mut m = machine(policy(1, 3), 4);
    let cohort = open(&mut m, 0, 0..5);
    assert_eq!(cohort.len(), 3);
    let outsider = (0..5)
        .map(ClientId)
        .find(|c| cohort.iter().all(|(x, _)| x != c))
        .unwrap();
    let before = serde_json::to_string(&m).unwrap();
    let (c0, t0) = &cohort[0];
    assert_eq!(m.check_stage_report(*c0, 1, 1, ADV, 0), Ok(()));
    assert_eq!(
        m.check_stage_report(outsider, 1, 1, ADV, 0),
        Err(RejectReason::NotSelected)
    );
    assert_eq!(
        m.check_stage_report(*c0, 1, 1, SHARE, 0),
        Err(RejectReason::WrongStage {
            expected: ADV,
            got: SHARE
        })
    );
    assert_eq!(serde_json::to_string(&m).unwrap(), before);
    assert!(matches!(
        stage_report(&mut m, 1, *c0, t0, 0)[0],
        Action::Accepted { .. }
    ));
    assert_eq!(
        m.check_stage_report(*c0, 1, 1, ADV, 0),
        Err(RejectReason::Duplicate)
    );
}
