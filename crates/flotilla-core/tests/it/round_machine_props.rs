//! The round machine under arbitrary, hostile event sequences: it never panics, never commits more
//! rounds than asked, never commits a model with non-finite values, and a refused report leaves it
//! exactly as it was.

use flotilla_core::round::*;
use flotilla_core::{ParamLayout, TensorSpec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    CheckIn(u64),
    Lost(u64),
    /// Report for the client's current task if it has one (honest), else a made-up one.
    Report {
        client: u64,
        honest: bool,
        round: u64,
        attempt: u32,
        stage: u32,
        samples: u64,
        values: Vec<f32>,
    },
    FireEarliestTimer,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![8 => -10f32..10.0, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY)];
    prop_oneof![
        3 => (0u64..5).prop_map(Op::CheckIn),
        1 => (0u64..5).prop_map(Op::Lost),
        6 => (
            0u64..5,
            prop_oneof![4 => Just(true), 1 => Just(false)],
            1u64..4,
            1u32..3,
            0u32..2,
            prop_oneof![4 => 1u64..=3, 1 => 0u64..10],
            prop_oneof![
                6 => proptest::collection::vec(-10f32..10.0, 3),
                1 => proptest::collection::vec(value, 1..5)
            ],
        )
            .prop_map(|(client, honest, round, attempt, stage, samples, values)| Op::Report {
                client, honest, round, attempt, stage, samples, values
            }),
        2 => Just(Op::FireEarliestTimer),
        1 => (0u64..2000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]
    #[test]
    fn survives_arbitrary_event_sequences(ops in proptest::collection::vec(op(), 1..200), seed in any::<u64>()) {
        let mut p = RoundPolicy::new(3, 2);
        p.min_clients = 3;
        p.over_selection = 1.5;
        p.selection_window_ms = 5;
        p.stage_deadline_ms = 500;
        p.checkin_ttl_ms = 1500;
        p.max_samples_per_report = 3;
        let layout = ParamLayout::new(vec![TensorSpec::new("w", [3])]);
        let mut m = RoundMachine::new(p, layout, vec![0.0; 3], seed).unwrap();
        let mut now = 0u64;
        let mut timers: Vec<(u64, Timer)> = Vec::new();
        let mut tasks: std::collections::BTreeMap<ClientId, Task> = Default::default();
        let mut commits = 0u64;
        for op in ops {
            let before = format!("{m:?}");
            let event = match &op {
                Op::CheckIn(c) => Event::CheckIn { client: ClientId(*c) },
                Op::Lost(c) => Event::ClientLost { client: ClientId(*c) },
                Op::Report { client, honest, round, attempt, stage, samples, values } => {
                    let c = ClientId(*client);
                    let (round, attempt, stage) = match (honest, tasks.get(&c)) {
                        (true, Some(t)) => (t.round, t.attempt, t.stage),
                        _ => (*round, *attempt, *stage),
                    };
                    Event::Report { client: c, round, attempt, stage, num_samples: *samples, update: values, metrics: ReportMetrics::default() }
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
            for a in &actions {
                match a {
                    Action::SetTimer { timer, at_ms } => {
                        prop_assert!(*at_ms >= now);
                        timers.push((*at_ms, *timer));
                    }
                    Action::Configure { client, task } => { tasks.insert(*client, task.clone()); }
                    Action::Commit(info) => {
                        commits += 1;
                        prop_assert_eq!(info.round, commits);
                        prop_assert!(!info.participants.is_empty() && info.participants.len() <= 2);
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
