//! The round machine's secure-aggregation stages under arbitrary, hostile event sequences: no
//! panic, rounds commit in order and at most once, the model stays finite, a refused report changes
//! nothing, `check_stage_report` predicts every verdict, and `StageClosed` always precedes the next
//! stage's tasks.

use flotilla_core::round::*;
use flotilla_core::{ParamLayout, TensorSpec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    CheckIn(u64),
    Lost(u64),
    Report {
        client: u64,
        honest: bool,
        round: u64,
        attempt: u32,
        stage: u32,
        samples: u64,
    },
    Aggregated {
        honest: bool,
        sum: Vec<f64>,
        count: usize,
    },
    Failed {
        honest: bool,
    },
    FireEarliestTimer,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![8 => -10f64..10.0, 1 => Just(f64::NAN), 1 => Just(f64::INFINITY)];
    prop_oneof![
        3 => (0u64..6).prop_map(Op::CheckIn),
        1 => (0u64..6).prop_map(Op::Lost),
        8 => (0u64..6, prop_oneof![4 => Just(true), 1 => Just(false)], 1u64..4, 1u32..3, 0u32..5, prop_oneof![4 => 1u64..=3, 1 => 0u64..10])
            .prop_map(|(client, honest, round, attempt, stage, samples)| Op::Report { client, honest, round, attempt, stage, samples }),
        2 => (prop_oneof![4 => Just(true), 1 => Just(false)], proptest::collection::vec(value, 1..5), 0usize..5)
            .prop_map(|(honest, sum, count)| Op::Aggregated { honest, sum, count }),
        1 => prop_oneof![Just(true), Just(false)].prop_map(|honest| Op::Failed { honest }),
        2 => Just(Op::FireEarliestTimer),
        1 => (0u64..2000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]
    #[test]
    fn secure_rounds_survive_arbitrary_event_sequences(ops in proptest::collection::vec(op(), 1..250), seed in any::<u64>()) {
        let mut p = RoundPolicy::new(3, 3);
        p.min_clients = 4;
        p.over_selection = 1.4;
        p.selection_window_ms = 5;
        p.stage_deadline_ms = 500;
        p.checkin_ttl_ms = 1500;
        p.max_samples_per_report = 3;
        p.min_report_fraction = 0.6;
        p.stages = StageKind::SECURE_AGGREGATION.to_vec();
        let layout = ParamLayout::new(vec![TensorSpec::new("w", [3])]);
        let mut m = RoundMachine::new(p, layout, vec![0.0; 3], seed).unwrap();
        let mut now = 0u64;
        let mut timers: Vec<(u64, Timer)> = Vec::new();
        let mut tasks: std::collections::BTreeMap<ClientId, Task> = Default::default();
        let mut finalize: Option<(u64, u32, usize)> = None;
        let mut commits = 0u64;
        for op in ops {
            let before = format!("{m:?}");
            let (cur_round, cur_attempt) = m.current_round();
            let mut predicted = None;
            let failed_reason;
            let sum_storage;
            let event = match &op {
                Op::CheckIn(c) => Event::CheckIn { client: ClientId(*c) },
                Op::Lost(c) => Event::ClientLost { client: ClientId(*c) },
                Op::Report { client, honest, round, attempt, stage, samples } => {
                    let c = ClientId(*client);
                    let (round, attempt, stage) = match (honest, tasks.get(&c)) {
                        (true, Some(t)) => (t.round, t.attempt, t.stage),
                        _ => (*round, *attempt, *stage),
                    };
                    predicted = Some(m.check_stage_report(c, round, attempt, stage, *samples));
                    Event::StageReport { client: c, round, attempt, stage, num_samples: *samples, metrics: ReportMetrics::default() }
                }
                Op::Aggregated { honest, sum, count } => {
                    let (round, attempt, count, sum) = match (honest, finalize) {
                        (true, Some((r, a, n))) => (r, a, n, vec![sum[0]; 3]),
                        _ => (cur_round, cur_attempt, *count, sum.clone()),
                    };
                    sum_storage = sum;
                    Event::Aggregated { round, attempt, sum: &sum_storage, contributors: count }
                }
                Op::Failed { honest } => {
                    failed_reason = "secagg says no".to_string();
                    let (round, attempt) = if *honest { (cur_round, cur_attempt) } else { (cur_round + 1, cur_attempt) };
                    Event::AggregationFailed { round, attempt, reason: failed_reason.clone() }
                }
                Op::FireEarliestTimer => {
                    timers.sort();
                    if timers.is_empty() { continue; }
                    let (at, t) = timers.remove(0);
                    now = now.max(at);
                    Event::TimerFired(t)
                }
                Op::Advance(d) => { now += d; continue; }
            };
            let actions = m.handle(now, event);
            if let Some(pred) = predicted {
                match &pred {
                    Ok(()) => prop_assert!(matches!(actions.first(), Some(Action::Accepted { .. })), "{:?} vs {:?}", pred, actions),
                    Err(r) => prop_assert!(matches!(actions.first(), Some(Action::Reject { reason, .. }) if reason == r), "{:?} vs {:?}", pred, actions),
                }
            }
            let mut closed_at = None;
            for (i, a) in actions.iter().enumerate() {
                match a {
                    Action::SetTimer { timer, at_ms } => {
                        prop_assert!(*at_ms >= now);
                        timers.push((*at_ms, *timer));
                    }
                    Action::StageClosed { survivors, stage, .. } => {
                        prop_assert!(*stage < 3 && !survivors.is_empty() && survivors.len() <= 3);
                        closed_at = Some(i);
                    }
                    Action::Configure { client, task } => {
                        // A check-in of a cohort member re-sends its current task; otherwise a task
                        // for a later stage only comes right after that stage opened.
                        if task.stage > 0 && !matches!(op, Op::CheckIn(_)) {
                            prop_assert!(closed_at.is_some_and(|c| c < i), "StageClosed precedes stage {} tasks", task.stage);
                        }
                        tasks.insert(*client, task.clone());
                    }
                    Action::Finalize { round, attempt, contributors } => {
                        prop_assert!(!contributors.is_empty() && contributors.len() <= 3);
                        finalize = Some((*round, *attempt, contributors.len()));
                    }
                    Action::Commit(info) => {
                        commits += 1;
                        prop_assert_eq!(info.round, commits);
                        prop_assert!(!info.participants.is_empty() && info.participants.len() <= 3);
                        finalize = None;
                    }
                    Action::RoundAbandoned { reason, .. } => {
                        prop_assert!(!reason.is_empty());
                        finalize = None;
                    }
                    Action::Reject { .. } => {
                        prop_assert_eq!(actions.len(), 1, "a rejection is the only action");
                        prop_assert_eq!(&before, &format!("{m:?}"), "a rejection changes nothing");
                    }
                    _ => {}
                }
            }
            prop_assert!(m.rounds_committed() <= 3);
            prop_assert!(m.global().iter().all(|v| v.is_finite()));
        }
        prop_assert_eq!(commits, m.rounds_committed());
    }
}
