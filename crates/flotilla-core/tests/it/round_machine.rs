//! Behaviour of the round state machine, driven by hand.

use flotilla_core::round::*;
use flotilla_core::{ParamLayout, TensorSpec};

fn layout(n: usize) -> ParamLayout {
    ParamLayout::new(vec![TensorSpec::new("w", [n])])
}

fn policy(rounds: u64, cpr: usize) -> RoundPolicy {
    let mut p = RoundPolicy::new(rounds, cpr);
    p.selection_window_ms = 10;
    p.stage_deadline_ms = 1000;
    p.min_report_fraction = 0.5;
    p.max_attempts = 2;
    p
}

fn check_in_all(m: &mut RoundMachine, now: u64, ids: impl IntoIterator<Item = u64>) -> Vec<Action> {
    ids.into_iter()
        .flat_map(|i| {
            m.handle(
                now,
                Event::CheckIn {
                    client: ClientId(i),
                },
            )
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

fn configured(actions: &[Action]) -> Vec<(ClientId, Task)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Configure { client, task } => Some((*client, task.clone())),
            _ => None,
        })
        .collect()
}

fn report(
    m: &mut RoundMachine,
    now: u64,
    c: ClientId,
    t: &Task,
    n: u64,
    upd: &[f32],
) -> Vec<Action> {
    m.handle(
        now,
        Event::Report {
            client: c,
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
            num_samples: n,
            update: upd,
            metrics: ReportMetrics {
                train_loss: 1.0,
                eval: None,
            },
        },
    )
}

/// Starts a machine, checks in `clients` and opens round 1; returns the configured cohort.
fn started(p: RoundPolicy, clients: u64, seed: u64) -> (RoundMachine, Vec<(ClientId, Task)>) {
    let mut m = RoundMachine::new(p, layout(2), vec![0.0, 0.0], seed).unwrap();
    let acts = check_in_all(&mut m, 0, 0..clients);
    let t = timers(&acts);
    assert_eq!(
        t.len(),
        1,
        "exactly one selection timer once enough clients are in: {acts:?}"
    );
    let acts = m.handle(t[0].1, Event::TimerFired(t[0].0));
    let cohort = configured(&acts);
    (m, cohort)
}

#[test]
fn happy_path_commits_weighted_mean_and_finishes() {
    let (mut m, cohort) = started(policy(2, 3), 5, 7);
    assert_eq!(cohort.len(), 3);
    assert!(
        cohort
            .iter()
            .all(|(_, t)| t.round == 1 && t.attempt == 1 && t.model_version == 0)
    );
    let mut acts = Vec::new();
    for (i, (c, t)) in cohort.iter().enumerate() {
        acts = report(&mut m, 20, *c, t, (i + 1) as u64, &[(i + 1) as f32, 1.0]);
        assert!(matches!(acts[0], Action::Accepted { .. }));
    }
    // weights 1,2,3 on values 1,2,3 → 14/6
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
    assert_eq!(commit.round, 1);
    assert_eq!(commit.participants.len(), 3);
    assert_eq!(commit.num_samples, 6);
    assert!((m.global()[0] - 14.0 / 6.0).abs() < 1e-6);
    assert_eq!(m.global()[1], 1.0);
    assert_eq!(m.rounds_committed(), 1);

    // The two unselected clients are still in the pool; the three reporters check in again.
    let acts = check_in_all(&mut m, 30, cohort.iter().map(|(c, _)| c.0));
    let t = timers(&acts);
    assert_eq!(t.len(), 1);
    let acts = m.handle(t[0].1, Event::TimerFired(t[0].0));
    let cohort2 = configured(&acts);
    assert!(
        cohort2
            .iter()
            .all(|(_, t)| t.round == 2 && t.model_version == 1)
    );
    let mut last = Vec::new();
    for (c, t) in &cohort2 {
        last = report(&mut m, 50, *c, t, 1, &[0.0, 0.0]);
    }
    assert!(last.contains(&Action::JobFinished));
    assert!(m.is_finished());
    assert_eq!(m.global(), &[0.0, 0.0]);
}

#[test]
fn bad_reports_are_rejected_and_change_nothing() {
    let (mut m, cohort) = started(policy(1, 3), 5, 1);
    let (c0, t0) = cohort[0].clone();
    report(&mut m, 20, c0, &t0, 5, &[1.0, 1.0]);
    let before = format!("{m:?}");
    let outsider = (0..5)
        .map(ClientId)
        .find(|c| cohort.iter().all(|(x, _)| x != c))
        .unwrap();
    let (c1, t1) = cohort[1].clone();
    let cases: Vec<(Vec<Action>, &str)> = vec![
        (
            report(&mut m, 21, outsider, &t0, 5, &[1.0, 1.0]),
            "not selected",
        ),
        (report(&mut m, 21, c0, &t0, 5, &[1.0, 1.0]), "duplicate"),
        (
            report(
                &mut m,
                21,
                c1,
                &Task {
                    round: 2,
                    ..t1.clone()
                },
                5,
                &[1.0, 1.0],
            ),
            "wrong round",
        ),
        (
            report(
                &mut m,
                21,
                c1,
                &Task {
                    attempt: 2,
                    ..t1.clone()
                },
                5,
                &[1.0, 1.0],
            ),
            "wrong attempt",
        ),
        (
            report(
                &mut m,
                21,
                c1,
                &Task {
                    stage: 1,
                    ..t1.clone()
                },
                5,
                &[1.0, 1.0],
            ),
            "wrong stage",
        ),
        (report(&mut m, 21, c1, &t1, 5, &[1.0]), "short"),
        (report(&mut m, 21, c1, &t1, 5, &[1.0, 1.0, 1.0]), "long"),
        (report(&mut m, 21, c1, &t1, 5, &[f32::NAN, 1.0]), "nan"),
        (
            report(&mut m, 21, c1, &t1, 5, &[1.0, f32::NEG_INFINITY]),
            "inf",
        ),
        (report(&mut m, 21, c1, &t1, 0, &[1.0, 1.0]), "zero samples"),
        (
            report(&mut m, 21, c1, &t1, u64::MAX, &[1.0, 1.0]),
            "too many samples",
        ),
    ];
    for (acts, what) in cases {
        assert_eq!(acts.len(), 1, "{what}: {acts:?}");
        assert!(matches!(acts[0], Action::Reject { .. }), "{what}: {acts:?}");
    }
    assert_eq!(before, format!("{m:?}"), "rejections must not change state");
    // and a good report still goes through afterwards
    assert!(matches!(
        report(&mut m, 22, c1, &t1, 5, &[3.0, 3.0])[0],
        Action::Accepted { .. }
    ));
}

#[test]
fn deadline_commits_from_survivors_above_minimum() {
    let (mut m, cohort) = started(policy(1, 4), 4, 3);
    for (c, t) in cohort.iter().take(2) {
        report(&mut m, 20, *c, t, 1, &[2.0, 2.0]);
    }
    let acts = m.handle(
        1010,
        Event::TimerFired(Timer::Deadline {
            round: 1,
            attempt: 1,
            stage: 0,
        }),
    );
    let commit = acts.iter().find_map(|a| {
        if let Action::Commit(c) = a {
            Some(c.clone())
        } else {
            None
        }
    });
    assert_eq!(
        commit.unwrap().participants.len(),
        2,
        "2 of 4 ≥ 50% commits"
    );
    // A straggler after the deadline is refused.
    let (c, t) = &cohort[3];
    assert!(matches!(
        report(&mut m, 1020, *c, t, 1, &[9.0, 9.0])[0],
        Action::Reject { .. }
    ));
    assert_eq!(m.global(), &[2.0, 2.0]);
}

#[test]
fn below_minimum_is_abandoned_retried_then_fails() {
    let (mut m, cohort) = started(policy(1, 4), 4, 3);
    report(&mut m, 20, cohort[0].0, &cohort[0].1, 1, &[2.0, 2.0]);
    let acts = m.handle(
        1010,
        Event::TimerFired(Timer::Deadline {
            round: 1,
            attempt: 1,
            stage: 0,
        }),
    );
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::RoundAbandoned {
            round: 1,
            attempt: 1,
            reports: 1,
            needed: 2,
            ..
        }
    )));
    assert_eq!(
        m.global(),
        &[0.0, 0.0],
        "an abandoned round commits nothing"
    );
    assert_eq!(m.current_round(), (1, 2));
    // Retry: clients check in again, the attempt-2 cohort is configured with attempt 2.
    let acts = check_in_all(&mut m, 1100, 0..4);
    let t = timers(&acts);
    let acts = m.handle(t[0].1, Event::TimerFired(t[0].0));
    let cohort = configured(&acts);
    assert!(cohort.iter().all(|(_, t)| t.attempt == 2));
    // An attempt-1 report now is stale.
    let stale = Task {
        attempt: 1,
        ..cohort[0].1.clone()
    };
    assert!(matches!(
        report(&mut m, 1200, cohort[0].0, &stale, 1, &[1.0, 1.0])[0],
        Action::Reject { .. }
    ));
    // Everyone drops: the machine does not wait for the deadline.
    let mut acts = Vec::new();
    for (c, _) in &cohort {
        acts.extend(m.handle(1300, Event::ClientLost { client: *c }));
    }
    assert!(
        acts.iter().any(|a| matches!(a, Action::JobFailed { .. })),
        "{acts:?}"
    );
    assert!(m.failure().is_some());
}

#[test]
fn over_selection_commits_at_target_and_refuses_the_extra() {
    let mut p = policy(1, 2);
    p.over_selection = 1.5;
    let (mut m, cohort) = started(p, 6, 11);
    assert_eq!(cohort.len(), 3);
    report(&mut m, 20, cohort[0].0, &cohort[0].1, 1, &[1.0, 1.0]);
    let acts = report(&mut m, 21, cohort[1].0, &cohort[1].1, 1, &[3.0, 3.0]);
    assert!(acts.iter().any(|a| matches!(a, Action::Commit(_))));
    assert!(matches!(
        report(&mut m, 22, cohort[2].0, &cohort[2].1, 1, &[5.0, 5.0])[0],
        Action::Reject { .. }
    ));
    assert_eq!(m.global(), &[2.0, 2.0]);
}

#[test]
fn stale_timers_are_ignored_and_reconnects_get_the_same_task() {
    let (mut m, cohort) = started(policy(2, 2), 3, 5);
    assert!(
        m.handle(
            5,
            Event::TimerFired(Timer::Selection {
                round: 1,
                attempt: 1
            })
        )
        .is_empty()
    );
    assert!(
        m.handle(
            5,
            Event::TimerFired(Timer::Deadline {
                round: 1,
                attempt: 2,
                stage: 0
            })
        )
        .is_empty()
    );
    let (c, t) = &cohort[0];
    let again = m.handle(30, Event::CheckIn { client: *c });
    assert_eq!(
        again,
        vec![Action::Configure {
            client: *c,
            task: t.clone()
        }]
    );
}

#[test]
fn same_seed_same_selection_different_seed_differs() {
    let pick = |seed| {
        started(policy(1, 5), 50, seed)
            .1
            .into_iter()
            .map(|(c, t)| (c, t.seed))
            .collect::<Vec<_>>()
    };
    assert_eq!(pick(42), pick(42));
    assert_ne!(pick(42), pick(43));
}

#[test]
fn waits_for_min_clients_and_rejects_invalid_policy() {
    let mut m = RoundMachine::new(policy(1, 3), layout(2), vec![0.0; 2], 0).unwrap();
    assert!(
        timers(&check_in_all(&mut m, 0, 0..2)).is_empty(),
        "2 < min_clients: no round"
    );
    assert!(matches!(
        report(
            &mut m,
            1,
            ClientId(0),
            &Task {
                round: 1,
                attempt: 1,
                stage: 0,
                kind: StageKind::Train,
                model_version: 0,
                seed: 0
            },
            1,
            &[0.0, 0.0]
        )[0],
        Action::Reject { .. }
    ));
    let mut bad = policy(1, 3);
    bad.min_report_fraction = 0.0;
    assert_eq!(
        RoundMachine::new(bad, layout(2), vec![0.0; 2], 0)
            .unwrap_err()
            .field,
        "min_report_fraction"
    );
    assert_eq!(
        RoundMachine::new(policy(1, 3), layout(2), vec![0.0; 3], 0)
            .unwrap_err()
            .field,
        "initial_parameters"
    );
    let mut bad = policy(1, 3);
    bad.min_clients = 2;
    assert_eq!(
        RoundMachine::new(bad, layout(2), vec![0.0; 2], 0)
            .unwrap_err()
            .field,
        "min_clients"
    );
}

#[test]
fn snapshot_restore_and_recover_commit_every_round_exactly_once() {
    // Uninterrupted reference run: 3 rounds, 2 of 3 clients per round, fixed updates.
    let upd = |r: u64, c: ClientId| vec![r as f32 + c.0 as f32, 1.0];
    let drive_round = |m: &mut RoundMachine, now: u64, clients: u64| -> Vec<Action> {
        let acts = check_in_all(m, now, 0..clients);
        let t = timers(&acts);
        let acts = m.handle(t[0].1, Event::TimerFired(t[0].0));
        let mut out = Vec::new();
        for (c, task) in configured(&acts) {
            out.extend(report(m, now + 20, c, &task, 1, &upd(task.round, c)));
        }
        out
    };
    let mut reference = RoundMachine::new(policy(3, 2), layout(2), vec![0.0; 2], 9).unwrap();
    for r in 0..3 {
        drive_round(&mut reference, 100 * r, 3);
    }
    assert!(reference.is_finished());

    // Interrupted run: commit round 1, persist, start round 2, get one report in, then "kill -9".
    let mut m = RoundMachine::new(policy(3, 2), layout(2), vec![0.0; 2], 9).unwrap();
    drive_round(&mut m, 0, 3);
    let persisted = serde_json::to_string(&m).unwrap();
    let persisted_model = m.global().to_vec();
    assert!(
        persisted.len() < 4096,
        "a snapshot does not carry the model"
    );
    let acts = check_in_all(&mut m, 100, 0..3);
    let t = timers(&acts);
    let cohort = configured(&m.handle(t[0].1, Event::TimerFired(t[0].0)));
    report(
        &mut m,
        120,
        cohort[0].0,
        &cohort[0].1,
        1,
        &upd(2, cohort[0].0),
    );
    drop(m);

    let mut m: RoundMachine = serde_json::from_str(&persisted).unwrap();
    assert_eq!(m.rounds_committed(), 1);
    assert!(
        m.recover(vec![0.0; 3]).is_err(),
        "a model of the wrong length is refused"
    );
    assert!(
        m.recover(vec![f32::NAN, 0.0]).is_err(),
        "a non-finite model is refused"
    );
    m.recover(persisted_model).unwrap();
    // A report addressed to the round as the dead process knew it: round 2, attempt 1. After a
    // restart at a commit boundary the machine never started that attempt, so it is not selected.
    assert!(matches!(
        report(
            &mut m,
            5,
            cohort[1].0,
            &cohort[1].1,
            1,
            &upd(2, cohort[1].0)
        )[0],
        Action::Reject { .. }
    ));
    let mut commits = Vec::new();
    for r in 1..3 {
        for a in drive_round(&mut m, 1000 + 100 * r, 3) {
            if let Action::Commit(info) = a {
                commits.push(info.round);
            }
        }
    }
    assert_eq!(
        commits,
        vec![2, 3],
        "rounds after the last commit are each committed once"
    );
    assert!(m.is_finished());
    assert_eq!(m.rounds_committed(), 3);
    assert_eq!(
        m.global(),
        reference.global(),
        "restored from the commit point, the run ends where the reference does"
    );

    // Recovering in the middle of a running attempt abandons it: its reports become stale.
    let mut m = RoundMachine::new(policy(3, 2), layout(2), vec![0.0; 2], 9).unwrap();
    let acts = check_in_all(&mut m, 0, 0..3);
    let t = timers(&acts);
    let cohort = configured(&m.handle(t[0].1, Event::TimerFired(t[0].0)));
    let mut m: RoundMachine = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    m.recover(vec![0.0; 2]).unwrap();
    assert_eq!(m.current_round(), (1, 2));
    assert!(matches!(
        report(&mut m, 30, cohort[0].0, &cohort[0].1, 1, &[1.0, 1.0])[0],
        Action::Reject { .. }
    ));
    assert_eq!(m.global(), &[0.0, 0.0]);
}

#[test]
fn crashes_do_not_count_towards_max_attempts() {
    let mut m = RoundMachine::new(policy(1, 2), layout(2), vec![0.0; 2], 1).unwrap();
    for i in 0..5u64 {
        let acts = check_in_all(&mut m, i * 10, 0..2);
        let t = timers(&acts);
        assert_eq!(t.len(), 1, "a new attempt is selected after recovery {i}");
        m.handle(t[0].1, Event::TimerFired(t[0].0));
        m.recover(vec![0.0; 2]).unwrap();
    }
    assert!(m.failure().is_none());
    assert_eq!(m.current_round(), (1, 6));
}

#[test]
fn raised_attempts_skip_issued_numbers_and_do_not_count_towards_max_attempts() {
    // max_attempts = 2: raising to attempt 7 must not fail the job, and an abandonment after it
    // is only the first failed attempt of the round.
    let mut m = RoundMachine::new(policy(2, 2), layout(2), vec![0.0; 2], 3).unwrap();
    assert_eq!(
        m.raise_attempt(5).unwrap(),
        5,
        "a machine that never ran can start above 1"
    );
    m.recover(vec![0.0; 2]).unwrap();
    assert_eq!(m.current_round(), (1, 6));
    assert_eq!(m.raise_attempt(7).unwrap(), 7);
    assert_eq!(m.raise_attempt(3).unwrap(), 7, "never lowered");
    let acts = check_in_all(&mut m, 0, 0..2);
    let t = timers(&acts);
    let cohort = configured(&m.handle(t[0].1, Event::TimerFired(t[0].0)));
    assert!(
        cohort
            .iter()
            .all(|(_, task)| (task.round, task.attempt) == (1, 7)),
        "{cohort:?}"
    );
    // Refused while an attempt is under way, changing nothing.
    assert!(m.raise_attempt(9).is_err());
    assert_eq!(m.current_round(), (1, 7));
    // The deadline passes with no report: abandoned once (of max 2), retried as attempt 8.
    let acts = m.handle(
        t[0].1 + 10_000,
        Event::TimerFired(Timer::Deadline {
            round: 1,
            attempt: 7,
            stage: 0,
        }),
    );
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::RoundAbandoned { attempt: 7, .. })),
        "{acts:?}"
    );
    assert!(
        m.failure().is_none(),
        "raising and one abandonment are below max_attempts = 2"
    );
    assert_eq!(m.current_round(), (1, 8));
}
