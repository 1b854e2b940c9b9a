//! Client-reported task failures (`Event::TaskFailed`) and the machine's status accessors.

use flotilla_core::round::*;
use flotilla_core::{ParamLayout, TensorSpec};

fn machine(cpr: usize, min_clients: usize) -> RoundMachine {
    let mut p = RoundPolicy::new(1, cpr);
    p.min_clients = min_clients;
    p.selection_window_ms = 10;
    p.stage_deadline_ms = 1000;
    p.min_report_fraction = 1.0;
    p.max_attempts = 2;
    RoundMachine::new(
        p,
        ParamLayout::new(vec![TensorSpec::new("w", [2])]),
        vec![0.0, 0.0],
        7,
    )
    .unwrap()
}

fn failed(m: &mut RoundMachine, now: u64, c: ClientId, t: &Task) -> Vec<Action> {
    m.handle(
        now,
        Event::TaskFailed {
            client: c,
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
        },
    )
}

/// Checks in clients 1..=n and opens round 1; returns its cohort.
fn start(m: &mut RoundMachine, n: u64) -> Vec<(ClientId, Task)> {
    for i in 1..=n {
        m.handle(
            0,
            Event::CheckIn {
                client: ClientId(i),
            },
        );
    }
    assert_eq!(m.activity(), Activity::Selecting);
    m.handle(
        10,
        Event::TimerFired(Timer::Selection {
            round: 1,
            attempt: 1,
        }),
    )
    .into_iter()
    .filter_map(|a| match a {
        Action::Configure { client, task } => Some((client, task)),
        _ => None,
    })
    .collect()
}

#[test]
fn waiting_counts_available_clients() {
    let mut m = machine(3, 5);
    assert_eq!(m.activity(), Activity::WaitingForClients);
    for i in 1..=4 {
        m.handle(
            100,
            Event::CheckIn {
                client: ClientId(i),
            },
        );
    }
    assert_eq!(m.activity(), Activity::WaitingForClients);
    assert_eq!(m.available_clients(100), 4);
    // A check-in counts for `checkin_ttl_ms` only.
    let ttl = m.policy().checkin_ttl_ms;
    assert_eq!(m.available_clients(100 + ttl + 1), 0);
}

#[test]
fn failures_close_the_stage_early_and_are_not_handed_the_task_again() {
    let mut m = machine(3, 3);
    let cohort = start(&mut m, 3);
    assert_eq!(cohort.len(), 3);
    assert!(matches!(
        m.activity(),
        Activity::Stage {
            index: 0,
            kind: StageKind::Train
        }
    ));
    let (c1, t1) = &cohort[0];
    assert!(matches!(
        failed(&mut m, 20, *c1, t1)[..],
        [Action::Accepted { .. }]
    ));
    // The failed client checking in again is not given the same task.
    let acts = m.handle(21, Event::CheckIn { client: *c1 });
    assert!(
        acts.iter().all(|a| !matches!(a, Action::Configure { .. })),
        "{acts:?}"
    );
    // A second failure report for the same task, or one for a task it does not hold, is refused.
    assert!(matches!(
        failed(&mut m, 22, *c1, t1)[..],
        [Action::Reject {
            reason: RejectReason::Duplicate,
            ..
        }]
    ));
    let wrong = Task {
        attempt: 2,
        ..t1.clone()
    };
    assert!(matches!(
        failed(&mut m, 22, cohort[1].0, &wrong)[..],
        [Action::Reject { .. }]
    ));
    assert!(matches!(
        failed(&mut m, 22, ClientId(99), t1)[..],
        [Action::Reject {
            reason: RejectReason::NotSelected,
            ..
        }]
    ));
    assert!(m.check_task_failure(cohort[1].0, 1, 1, 0).is_ok());
    // Once the others fail too, the attempt ends before its deadline.
    failed(&mut m, 30, cohort[1].0, &cohort[1].1);
    let acts = failed(&mut m, 31, cohort[2].0, &cohort[2].1);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::RoundAbandoned {
                reports: 0,
                needed: 3,
                cause: AbandonCause::TooFewReports,
                ..
            }
        )),
        "{acts:?}"
    );
    assert_eq!(m.current_round(), (1, 2));
    assert_eq!(m.activity(), Activity::WaitingForClients);
}

#[test]
fn a_failure_of_the_last_attempt_fails_the_job() {
    let mut m = machine(1, 1);
    for attempt in 1..=2 {
        let cohort = start_attempt(&mut m, attempt);
        let (c, t) = &cohort[0];
        let acts = failed(&mut m, 100 * u64::from(attempt) + 50, *c, t);
        if attempt == 2 {
            assert!(
                acts.iter().any(|a| matches!(a, Action::JobFailed { .. })),
                "{acts:?}"
            );
        }
    }
    assert_eq!(m.activity(), Activity::Failed);
    assert!(m.check_task_failure(ClientId(1), 1, 2, 0).is_err());
}

fn start_attempt(m: &mut RoundMachine, attempt: u32) -> Vec<(ClientId, Task)> {
    let now = 100 * u64::from(attempt);
    m.handle(
        now,
        Event::CheckIn {
            client: ClientId(1),
        },
    );
    m.handle(
        now + 10,
        Event::TimerFired(Timer::Selection { round: 1, attempt }),
    )
    .into_iter()
    .filter_map(|a| match a {
        Action::Configure { client, task } => Some((client, task)),
        _ => None,
    })
    .collect()
}
