//! FedBuff mode of the round machine, driven by hand.

use flotilla_core::round::*;
use flotilla_core::strategy::{StrategyConfig, StrategySpec};
use flotilla_core::{ParamLayout, TensorSpec};

fn machine(steps: u64, k: usize, max_staleness: u64, concurrency: usize, a: f64) -> RoundMachine {
    let cfg = StrategyConfig {
        name: "fedbuff".into(),
        buffer_size: Some(k),
        max_staleness: Some(max_staleness),
        concurrency: Some(concurrency),
        staleness_exponent: Some(a),
        ..StrategyConfig::default()
    };
    let spec = StrategySpec::from_config(&cfg, 1).unwrap();
    let mut p = RoundPolicy::new(steps, 1);
    p.stage_deadline_ms = 1000;
    RoundMachine::with_strategy(
        p,
        ParamLayout::new(vec![TensorSpec::new("w", [1])]),
        vec![0.0],
        7,
        spec,
    )
    .unwrap()
}

fn check_in(m: &mut RoundMachine, now: u64, c: u64) -> Option<Task> {
    m.handle(
        now,
        Event::CheckIn {
            client: ClientId(c),
        },
    )
    .into_iter()
    .find_map(|a| match a {
        Action::Configure { task, .. } => Some(task),
        _ => None,
    })
}

fn report(m: &mut RoundMachine, now: u64, c: u64, t: &Task, value: f32) -> Vec<Action> {
    m.handle(
        now,
        Event::Report {
            client: ClientId(c),
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
            num_samples: 5,
            update: &[value],
            metrics: ReportMetrics {
                train_loss: 1.0,
                eval: None,
            },
        },
    )
}

fn commits(actions: &[Action]) -> Vec<CommitInfo> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Commit(i) => Some(i.clone()),
            _ => None,
        })
        .collect()
}

fn rejected(actions: &[Action]) -> Option<RejectReason> {
    actions.iter().find_map(|a| match a {
        Action::Reject { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// Everything observable about the machine's state.
fn state(m: &RoundMachine) -> (String, Vec<u32>, usize, Vec<ClientId>) {
    (
        serde_json::to_string(m).unwrap(),
        m.global().iter().map(|v| v.to_bits()).collect(),
        m.buffered_updates(),
        m.outstanding(),
    )
}

#[test]
fn k_reports_make_one_staleness_weighted_step() {
    // K = 2, a = 1 so s(τ) = 1/(1+τ); server_lr 1.
    let mut m = machine(5, 2, 5, 3, 1.0);
    let t0 = check_in(&mut m, 0, 0).unwrap();
    let t1 = check_in(&mut m, 0, 1).unwrap();
    let t2 = check_in(&mut m, 0, 2).unwrap();
    assert!(
        [&t0, &t1, &t2]
            .iter()
            .all(|t| t.model_version == 0 && t.round == 1)
    );
    assert!(
        commits(&report(&mut m, 1, 0, &t0, 2.0)).is_empty(),
        "one report is not a step"
    );
    assert_eq!(m.buffered_updates(), 1);
    let c = commits(&report(&mut m, 2, 1, &t1, 4.0));
    // Both fresh: 0 + (1·2 + 1·4) / 2 = 3.
    assert_eq!(c.len(), 1);
    assert_eq!(
        (
            c[0].model_version,
            c[0].participants.clone(),
            c[0].staleness.clone()
        ),
        (1, vec![ClientId(0), ClientId(1)], vec![0, 0])
    );
    assert_eq!(m.global(), &[3.0]);
    assert_eq!(m.rounds_committed(), 1);
    // Client 0 starts again from version 1; client 2 still trains on version 0.
    let t0b = check_in(&mut m, 3, 0).unwrap();
    assert_eq!(t0b.model_version, 1);
    assert!(commits(&report(&mut m, 4, 2, &t2, 1.0)).is_empty());
    let c = commits(&report(&mut m, 5, 0, &t0b, 5.0));
    // Client 2: Δ = 1 − 0 (its base, version 0), τ = 1, s = 1/2. Client 0: Δ = 5 − 3 = 2, τ = 0, s = 1.
    // 3 + (0.5·1 + 1·2) / 1.5 = 3 + 5/3.
    assert_eq!(c[0].staleness, vec![1, 0]);
    assert_eq!(c[0].participants, vec![ClientId(0), ClientId(2)]);
    let want = 3.0 + 2.5 / 1.5;
    assert!(
        (f64::from(m.global()[0]) - want).abs() < 1e-6,
        "got {} want {want}",
        m.global()[0]
    );
}

#[test]
fn concurrency_limits_tasks_in_flight() {
    let mut m = machine(5, 10, 5, 2, 0.5);
    let t0 = check_in(&mut m, 0, 0).unwrap();
    assert!(check_in(&mut m, 0, 1).is_some());
    let acts = m.handle(
        0,
        Event::CheckIn {
            client: ClientId(2),
        },
    );
    assert!(
        matches!(acts.as_slice(), [Action::RetryAfter { .. }]),
        "{acts:?}"
    );
    // A reconnecting client gets the same task again, without taking another slot.
    assert_eq!(check_in(&mut m, 1, 0), Some(t0.clone()));
    assert_eq!(m.outstanding().len(), 2);
    report(&mut m, 2, 0, &t0, 1.0);
    assert!(check_in(&mut m, 3, 2).is_some(), "a report frees a slot");
    // A lost client frees its slot too.
    m.handle(
        4,
        Event::ClientLost {
            client: ClientId(1),
        },
    );
    assert!(check_in(&mut m, 4, 3).is_some());
}

#[test]
fn too_stale_duplicate_and_unknown_reports_change_nothing() {
    // max_staleness 0: only reports based on the current version count.
    let mut m = machine(5, 1, 0, 5, 0.5);
    let t0 = check_in(&mut m, 0, 0).unwrap();
    let t1 = check_in(&mut m, 0, 1).unwrap();
    assert_eq!(commits(&report(&mut m, 1, 0, &t0, 1.0)).len(), 1);
    let t2 = check_in(&mut m, 1, 2).unwrap();
    // The payload-free pre-check a networked driver runs agrees with the machine.
    assert_eq!(
        m.precheck_report(ClientId(1), t1.round, t1.attempt),
        Err(RejectReason::TooStale {
            staleness: 1,
            base: 0,
            max: 0
        })
    );
    assert_eq!(
        m.precheck_report(ClientId(0), t0.round, t0.attempt),
        Err(RejectReason::Duplicate)
    );
    assert_eq!(
        m.precheck_report(ClientId(9), 1, 1),
        Err(RejectReason::NoTask)
    );
    assert_eq!(m.precheck_report(ClientId(2), t2.round, t2.attempt), Ok(()));
    let cases: Vec<(u64, Task, f32, &str)> = vec![
        (1, t1.clone(), 1.0, "stale"),
        (0, t0.clone(), 1.0, "duplicate"),
        (9, t1.clone(), 1.0, "unknown"),
        (
            2,
            Task {
                attempt: 9,
                ..t2.clone()
            },
            1.0,
            "wrong attempt",
        ),
        // The too-stale task was dropped: a report naming another attempt is for no task at all.
        (
            1,
            Task {
                attempt: 9,
                ..t1.clone()
            },
            1.0,
            "unknown",
        ),
        (2, t2.clone(), f32::NAN, "non-finite"),
    ];
    for (client, task, value, what) in cases {
        let before = state(&m);
        let acts = report(&mut m, 2, client, &task, value);
        let reason = rejected(&acts).unwrap_or_else(|| panic!("{what}: accepted: {acts:?}"));
        match what {
            "stale" => assert_eq!(
                reason,
                RejectReason::TooStale {
                    staleness: 1,
                    base: 0,
                    max: 0
                }
            ),
            "duplicate" => assert_eq!(reason, RejectReason::Duplicate),
            "unknown" => assert_eq!(reason, RejectReason::NoTask),
            "wrong attempt" => assert!(matches!(reason, RejectReason::WrongRound { .. })),
            _ => assert!(matches!(reason, RejectReason::BadUpdate(_))),
        }
        assert_eq!(
            state(&m),
            before,
            "{what}: a refused report changes nothing"
        );
    }
    assert!(
        RejectReason::TooStale {
            staleness: 1,
            base: 0,
            max: 0
        }
        .to_string()
        .contains("at most 0")
    );
    // The too-stale client gets a fresh task when it checks in again.
    let t1b = check_in(&mut m, 3, 1).unwrap();
    assert_eq!(t1b.model_version, 1);
    assert_eq!(commits(&report(&mut m, 4, 1, &t1b, 2.0)).len(), 1);
}

#[test]
fn deadline_drops_old_tasks_and_frees_their_slots() {
    let mut m = machine(5, 2, 5, 1, 0.5);
    let t0 = check_in(&mut m, 0, 0).unwrap();
    assert!(check_in(&mut m, 500, 1).is_none(), "full");
    let timer = Timer::Deadline {
        round: t0.round,
        attempt: t0.attempt,
        stage: 0,
    };
    m.handle(999, Event::TimerFired(timer));
    assert_eq!(m.outstanding(), vec![ClientId(0)], "not yet due");
    m.handle(1000, Event::TimerFired(timer));
    assert!(m.outstanding().is_empty());
    assert_eq!(
        rejected(&report(&mut m, 1001, 0, &t0, 1.0)),
        Some(RejectReason::NoTask)
    );
    assert!(check_in(&mut m, 1001, 1).is_some());
}

#[test]
fn old_bases_are_kept_only_while_needed_and_the_job_finishes() {
    // K = 1: every report is a step. Client 9 trains on version 0 while others commit 2 versions.
    let mut m = machine(4, 1, 2, 4, 0.0);
    let slow = check_in(&mut m, 0, 9).unwrap();
    for (i, c) in [1u64, 2].into_iter().enumerate() {
        let t = check_in(&mut m, i as u64, c).unwrap();
        assert_eq!(commits(&report(&mut m, i as u64, c, &t, 1.0)).len(), 1);
    }
    assert_eq!(m.rounds_committed(), 2);
    // τ = 2 = max_staleness: accepted, Δ = 4 − 0 against version 0 (a = 0: weight 1).
    let c = commits(&report(&mut m, 5, 9, &slow, 4.0));
    assert_eq!(c[0].staleness, vec![2]);
    assert_eq!(m.global(), &[1.0 + 4.0]);
    let t = check_in(&mut m, 6, 1).unwrap();
    let acts = report(&mut m, 7, 1, &t, 0.0);
    assert!(acts.contains(&Action::JobFinished), "{acts:?}");
    assert!(m.is_finished());
    assert!(check_in(&mut m, 8, 2).is_none());
}

#[test]
fn snapshot_restore_recover_abandons_in_flight_tasks() {
    let mut m = machine(3, 2, 5, 4, 0.5);
    let t0 = check_in(&mut m, 0, 0).unwrap();
    let t1 = check_in(&mut m, 0, 1).unwrap();
    let t2 = check_in(&mut m, 0, 2).unwrap();
    report(&mut m, 1, 0, &t0, 1.0);
    report(&mut m, 1, 1, &t1, 3.0);
    assert_eq!(m.rounds_committed(), 1);
    let persisted = serde_json::to_string(&m).unwrap();
    let global = m.global().to_vec();
    let mut r: RoundMachine = serde_json::from_str(&persisted).unwrap();
    assert_eq!(serde_json::to_string(&r).unwrap(), persisted, "round trip");
    assert!(r.recover(vec![f32::NAN]).is_err());
    r.recover(global.clone()).unwrap();
    assert_eq!((r.rounds_committed(), r.global()), (1, global.as_slice()));
    assert!(r.outstanding().is_empty(), "in-flight tasks are abandoned");
    assert_eq!(
        rejected(&report(&mut r, 0, 2, &t2, 1.0)),
        Some(RejectReason::NoTask)
    );
    let a = check_in(&mut r, 0, 2).unwrap();
    let b = check_in(&mut r, 0, 3).unwrap();
    assert_eq!((a.model_version, a.attempt), (1, t2.attempt + 1));
    report(&mut r, 1, 2, &a, 2.0);
    assert_eq!(commits(&report(&mut r, 1, 3, &b, 2.0)).len(), 1);
    assert_eq!(r.rounds_committed(), 2);
}

#[test]
fn secure_aggregation_policy_is_refused() {
    let spec = StrategySpec::from_config(
        &StrategyConfig {
            name: "fedbuff".into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let mut p = RoundPolicy::new(3, 4);
    p.stages = StageKind::SECURE_AGGREGATION.to_vec();
    let e = RoundMachine::with_strategy(
        p,
        ParamLayout::new(vec![TensorSpec::new("w", [1])]),
        vec![0.0],
        1,
        spec,
    )
    .unwrap_err();
    assert_eq!(e.field, "strategy.name");
}

#[test]
fn server_momentum_carries_over_between_steps_and_survives_a_snapshot() {
    // K = 1, a = 0, server_lr 1, momentum 0.5: v ← 0.5·v + Δ; global += v.
    let cfg = StrategyConfig {
        name: "fedbuff".into(),
        buffer_size: Some(1),
        max_staleness: Some(2),
        concurrency: Some(2),
        staleness_exponent: Some(0.0),
        server_optimizer: Some("momentum".into()),
        momentum: Some(0.5),
        ..StrategyConfig::default()
    };
    let spec = StrategySpec::from_config(&cfg, 1).unwrap();
    let p = RoundPolicy::new(3, 1);
    let mut m = RoundMachine::with_strategy(
        p,
        ParamLayout::new(vec![TensorSpec::new("w", [1])]),
        vec![0.0],
        7,
        spec,
    )
    .unwrap();
    let t = check_in(&mut m, 0, 0).unwrap();
    assert_eq!(commits(&report(&mut m, 1, 0, &t, 1.0)).len(), 1);
    assert_eq!(m.global(), &[1.0], "v = 1");
    // Persist and restore between steps: the velocity is part of the snapshot.
    let global = m.global().to_vec();
    let mut m: RoundMachine = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    m.recover(global).unwrap();
    let t = check_in(&mut m, 2, 0).unwrap();
    assert_eq!(t.model_version, 1);
    // Δ = 2 − 1 = 1; v = 0.5·1 + 1 = 1.5; global = 1 + 1.5.
    assert_eq!(commits(&report(&mut m, 3, 0, &t, 2.0)).len(), 1);
    assert_eq!(m.global(), &[2.5]);
}

#[test]
fn a_task_past_max_staleness_frees_its_slot_at_once_and_is_refused_as_too_stale() {
    // concurrency 2, K = 1, max_staleness 1. Client 9 holds a slot on version 0.
    let mut m = machine(5, 1, 1, 2, 0.5);
    let slow = check_in(&mut m, 0, 9).unwrap();
    let t = check_in(&mut m, 0, 1).unwrap();
    assert_eq!(commits(&report(&mut m, 1, 1, &t, 1.0)).len(), 1);
    // Version 1: client 9 is 1 behind, still acceptable, still holding its slot.
    let t = check_in(&mut m, 2, 1).unwrap();
    assert_eq!(m.outstanding(), vec![ClientId(1), ClientId(9)]);
    assert!(check_in(&mut m, 2, 2).is_none(), "both slots taken");
    assert_eq!(commits(&report(&mut m, 3, 1, &t, 1.0)).len(), 1);
    // Version 2: client 9's task can never be accepted, so its slot is free before it checks in.
    assert_eq!(m.outstanding(), Vec::<ClientId>::new());
    assert!(
        check_in(&mut m, 4, 2).is_some(),
        "the slot of the too-stale task is free"
    );
    // Its late report is named too stale (not "no task"), before and after the payload, and
    // changes nothing.
    let stale = RejectReason::TooStale {
        staleness: 2,
        base: 0,
        max: 1,
    };
    assert_eq!(
        m.precheck_report(ClientId(9), slow.round, slow.attempt),
        Err(stale.clone())
    );
    let before = state(&m);
    assert_eq!(rejected(&report(&mut m, 5, 9, &slow, 3.0)), Some(stale));
    assert_eq!(state(&m), before);
    // A made-up round from the same client is just not its task.
    assert_eq!(
        m.precheck_report(ClientId(9), slow.round + 5, slow.attempt),
        Err(RejectReason::NoTask)
    );
    // It checks in and gets fresh work on the current version.
    let fresh = check_in(&mut m, 6, 9).unwrap();
    assert_eq!(fresh.model_version, 2);
    assert!(
        matches!(
            m.precheck_report(ClientId(9), slow.round, slow.attempt),
            Err(RejectReason::WrongRound { .. })
        ),
        "the old task is forgotten once replaced"
    );
    assert_eq!(commits(&report(&mut m, 7, 9, &fresh, 1.0)).len(), 1);
}

#[test]
fn a_late_report_for_a_second_task_on_the_same_version_is_not_called_a_duplicate() {
    // Regression (found by the proptest, and by the simulator once too-stale tasks were dropped
    // early): a client reports, gets another task on the same version — named like the first, same
    // round and attempt — and that task is dropped (deadline here; too stale alike). Its late report
    // was refused as `Duplicate` (which the simulator treats as fatal) instead of `NoTask`.
    let mut m = machine(5, 2, 0, 1, 0.5);
    let t = check_in(&mut m, 0, 1).unwrap();
    assert!(commits(&report(&mut m, 1, 1, &t, 1.0)).is_empty());
    let t2 = check_in(&mut m, 2, 1).unwrap();
    assert_eq!((t2.round, t2.attempt), (t.round, t.attempt));
    m.handle(
        1002,
        Event::TimerFired(Timer::Deadline {
            round: t2.round,
            attempt: t2.attempt,
            stage: 0,
        }),
    );
    assert!(m.outstanding().is_empty(), "dropped at its deadline");
    assert_eq!(
        m.precheck_report(ClientId(1), t2.round, t2.attempt),
        Err(RejectReason::NoTask)
    );
    assert_eq!(
        rejected(&report(&mut m, 1003, 1, &t2, 2.0)),
        Some(RejectReason::NoTask)
    );
    // (The too-stale path is the same code; `reports_beyond_max_staleness_are_refused` in the
    // simulator's tests hit it.) The client goes on: its next task is answered normally.
    let t3 = check_in(&mut m, 1004, 1).unwrap();
    let other = check_in(&mut m, 1004, 2);
    assert!(other.is_none(), "concurrency 1");
    assert_eq!(
        commits(&report(&mut m, 1005, 1, &t3, 1.0)).len(),
        1,
        "second update of the buffer: version 1"
    );
    let t4 = check_in(&mut m, 1006, 1).unwrap();
    assert_eq!(t4.model_version, 1);
}
