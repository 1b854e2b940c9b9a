//! The round machine in FedBuff mode under arbitrary, hostile event sequences: check-ins, reports
//! for the client's task, for older or future versions, for made-up tasks, duplicates, reports from
//! clients without a task, wrong-length and non-finite updates, bad sample counts, secure-aggregation
//! stage messages the mode does not take (refused as the wrong kind), lost clients, timer ticks and
//! deadlines.
//!
//! Invariants checked after every event: no panic; a refused report is the only action and changes
//! nothing (the machine's `Debug`, which includes the buffer and the old base models, is compared);
//! whenever [`RoundMachine::precheck_report`] refuses a report the machine refuses it too, for the
//! same reason (so a driver may refuse from the header alone); committed versions go up by exactly
//! 1; each commit aggregates between 1 and `buffer_size` updates, each within `max_staleness`, with
//! the staleness the test itself computes; with SGD, the new global model equals an independent
//! reference computation of the staleness-weighted step against each update's own base version; tasks in
//! flight never exceed `concurrency`, and none is more than `max_staleness` versions behind (its slot
//! is freed as soon as it can no longer be accepted); a new task always starts from the current
//! version.

use std::collections::BTreeMap;

use flotilla_core::round::*;
use flotilla_core::strategy::{StrategyConfig, StrategySpec};
use flotilla_core::{ParamLayout, TensorSpec};
use proptest::prelude::*;

const DIM: usize = 3;
const STEPS: u64 = 6;
const SERVER_LR: f64 = 0.7;
const EXPONENT: f64 = 0.5;

#[derive(Debug, Clone)]
enum Target {
    /// The client's own task, as last configured (may be stale, dropped or already reported).
    Honest,
    /// The client's task with its round moved back (older version) or forward (future version).
    Shifted(i64),
    /// A made-up round and attempt.
    MadeUp(u64, u32),
}

#[derive(Debug, Clone)]
enum Op {
    CheckIn(u64),
    Lost(u64),
    Report {
        client: u64,
        target: Target,
        stage: u32,
        samples: u64,
        values: Vec<f32>,
    },
    /// A secure-aggregation stage message, which FedBuff does not take.
    StageMessage {
        client: u64,
        honest: bool,
        masked: bool,
    },
    FireEarliestTimer,
    /// A deadline timer for a made-up round and attempt (a stale or forged timer).
    FireMadeUpTimer(u64, u32),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![8 => -10f32..10.0, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY)];
    let target = prop_oneof![
        6 => Just(Target::Honest),
        2 => (-3i64..=3).prop_map(Target::Shifted),
        1 => (0u64..8, 0u32..4).prop_map(|(r, a)| Target::MadeUp(r, a)),
    ];
    prop_oneof![
        4 => (0u64..7).prop_map(Op::CheckIn),
        1 => (0u64..7).prop_map(Op::Lost),
        8 => (
            0u64..7,
            target,
            prop_oneof![9 => Just(0u32), 1 => 1u32..3],
            prop_oneof![6 => 1u64..=3, 1 => 0u64..10],
            prop_oneof![
                8 => proptest::collection::vec(-10f32..10.0, DIM),
                1 => proptest::collection::vec(value, 0..6)
            ],
        )
            .prop_map(|(client, target, stage, samples, values)| Op::Report { client, target, stage, samples, values }),
        2 => (0u64..7, any::<bool>(), any::<bool>()).prop_map(|(client, honest, masked)| Op::StageMessage { client, honest, masked }),
        2 => Just(Op::FireEarliestTimer),
        1 => (0u64..8, 0u32..4).prop_map(|(r, a)| Op::FireMadeUpTimer(r, a)),
        2 => (0u64..800).prop_map(Op::Advance),
    ]
}

/// Server optimizers the test runs with; the reference computation of the new global model covers
/// `sgd`, the other invariants all of them.
const OPTIMIZERS: [&str; 3] = ["sgd", "momentum", "adam"];

fn machine(
    k: usize,
    max_staleness: u64,
    concurrency: usize,
    optimizer: &str,
    seed: u64,
) -> RoundMachine {
    let cfg = StrategyConfig {
        name: "fedbuff".into(),
        server_lr: Some(SERVER_LR),
        server_optimizer: Some(optimizer.into()),
        buffer_size: Some(k),
        max_staleness: Some(max_staleness),
        concurrency: Some(concurrency),
        staleness_exponent: Some(EXPONENT),
        ..StrategyConfig::default()
    };
    let spec = StrategySpec::from_config(&cfg, 1).unwrap();
    let mut p = RoundPolicy::new(STEPS, 1);
    p.stage_deadline_ms = 1000;
    p.max_samples_per_report = 3;
    p.retry_after_ms = 10;
    let layout = ParamLayout::new(vec![TensorSpec::new("w", [DIM])]);
    RoundMachine::with_strategy(p, layout, vec![0.5, -0.25, 0.0], seed, spec).unwrap()
}

/// What the test expects the buffer to hold, computed independently of the machine.
#[derive(Default)]
struct Reference {
    /// Every committed global model, by version.
    versions: Vec<Vec<f32>>,
    sum: Vec<f64>,
    weight: f64,
    staleness: Vec<u64>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(384), ..ProptestConfig::default() })]
    #[test]
    fn fedbuff_survives_hostile_event_sequences(
        ops in proptest::collection::vec(op(), 1..300),
        k in 1usize..=4,
        max_staleness in 0u64..=3,
        concurrency in 1usize..=4,
        optimizer in prop_oneof![4 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)],
        seed in any::<u64>(),
    ) {
        let optimizer = OPTIMIZERS[optimizer];
        let mut m = machine(k, max_staleness, concurrency, optimizer, seed);
        let mut now = 0u64;
        let mut timers: Vec<(u64, Timer)> = Vec::new();
        // The last task each client was configured with.
        let mut tasks: BTreeMap<ClientId, Task> = BTreeMap::new();
        let mut r = Reference { versions: vec![m.global().to_vec()], sum: vec![0.0; DIM], ..Reference::default() };
        let mut committed = 0u64;
        // Clients whose latest configured task has been accepted.
        let mut answered: std::collections::BTreeSet<ClientId> = Default::default();
        for op in ops {
            let before = format!("{m:?}");
            let mut report: Option<(ClientId, u64, u32, Vec<f32>)> = None;
            let event = match &op {
                Op::CheckIn(c) => Event::CheckIn { client: ClientId(*c) },
                Op::Lost(c) => Event::ClientLost { client: ClientId(*c) },
                Op::Report { client, target, stage, samples, values } => {
                    let c = ClientId(*client);
                    let (round, attempt) = match (target, tasks.get(&c)) {
                        (Target::Honest, Some(t)) => (t.round, t.attempt),
                        (Target::Shifted(d), Some(t)) => (t.round.saturating_add_signed(*d), t.attempt),
                        (Target::MadeUp(rd, a), _) => (*rd, *a),
                        (_, None) => (committed + 1, 1),
                    };
                    report = Some((c, round, attempt, values.clone()));
                    Event::Report {
                        client: c,
                        round,
                        attempt,
                        stage: *stage,
                        num_samples: *samples,
                        update: values,
                        metrics: ReportMetrics { train_loss: 0.5, eval: None },
                    }
                }
                Op::StageMessage { client, honest, masked } => {
                    let c = ClientId(*client);
                    let (round, attempt) = match (honest, tasks.get(&c)) {
                        (true, Some(t)) => (t.round, t.attempt),
                        _ => (1, 1),
                    };
                    let input = if *masked { StageInput::Masked(vec![1; DIM]) } else { StageInput::Message(b"keys") };
                    Event::StageMessage { client: c, round, attempt, stage: 0, input, num_samples: 1, metrics: ReportMetrics::default() }
                }
                Op::FireEarliestTimer => {
                    timers.sort();
                    if timers.is_empty() { continue; }
                    let (at, t) = timers.remove(0);
                    now = now.max(at);
                    Event::TimerFired(t)
                }
                Op::FireMadeUpTimer(round, attempt) => {
                    Event::TimerFired(Timer::Deadline { round: *round, attempt: *attempt, stage: 0 })
                }
                Op::Advance(d) => { now += d; continue; }
            };
            let predicted = report.as_ref().map(|(c, round, attempt, _)| m.precheck_report(*c, *round, *attempt));
            let outstanding_before = m.outstanding();
            let actions = m.handle(now, event);

            // A stage message is refused as the wrong kind while the job runs (not accepting, once
            // it is over).
            if let Op::StageMessage { .. } = op {
                let want = if m.is_finished() {
                    RejectReason::NotAccepting("finished")
                } else {
                    RejectReason::WrongStageKind { stage: 0, kind: "train" }
                };
                prop_assert!(matches!(actions.as_slice(), [Action::Reject { reason, .. }] if *reason == want), "{:?}", actions);
            }
            // A refused report: the only action, nothing changed, and the pre-check agrees.
            if let Some(Action::Reject { client, reason }) = actions.iter().find(|a| matches!(a, Action::Reject { .. })) {
                prop_assert_eq!(actions.len(), 1, "a rejection is the only action: {:?}", actions);
                // `Duplicate` only for a task that was answered already (a simulator treats any
                // other verdict on its honest report as fatal).
                if *reason == RejectReason::Duplicate
                    && let Op::Report { target: Target::Honest, .. } = &op
                {
                    prop_assert!(answered.contains(client), "{} refused as a duplicate but its task was never answered", client);
                }
                prop_assert_eq!(&before, &format!("{m:?}"), "a rejection changes nothing ({:?})", op);
                if let Some(Err(p)) = &predicted {
                    prop_assert_eq!(p, reason, "the pre-check names the machine's reason");
                }
            }
            if let Some(Err(p)) = &predicted {
                prop_assert!(
                    actions.iter().any(|a| matches!(a, Action::Reject { .. })),
                    "pre-check refused ({:?}) but the machine did not: {:?}", p, actions
                );
            }
            let mut commits_now = 0;
            for a in &actions {
                match a {
                    Action::SetTimer { timer, at_ms } => {
                        prop_assert!(*at_ms >= now);
                        timers.push((*at_ms, *timer));
                    }
                    Action::Configure { client, task } => {
                        let again = outstanding_before.contains(client) && tasks.get(client) == Some(task);
                        prop_assert!(
                            again || task.model_version == m.rounds_committed(),
                            "a new task starts from the current version: {:?} at {}", task, m.rounds_committed()
                        );
                        prop_assert_eq!(task.round, task.model_version + 1);
                        prop_assert_eq!(task.kind, StageKind::Train);
                        if tasks.get(client) != Some(task) {
                            answered.remove(client);
                        }
                        tasks.insert(*client, task.clone());
                    }
                    Action::Accepted { client } => {
                        let (c, _, _, values) = report.clone().expect("only a report is accepted");
                        prop_assert_eq!(c, *client);
                        let t = tasks.get(client).expect("accepted from a client with a task");
                        prop_assert!(outstanding_before.contains(client), "accepted from a client with a task in flight");
                        let tau = r.versions.len() as u64 - 1 - t.model_version;
                        prop_assert!(tau <= max_staleness, "accepted an update {} versions stale", tau);
                        let w = (1.0 + tau as f64).powf(-EXPONENT);
                        let base = &r.versions[t.model_version as usize];
                        for ((s, &v), &b) in r.sum.iter_mut().zip(&values).zip(base) {
                            *s += w * (f64::from(v) - f64::from(b));
                        }
                        r.weight += w;
                        r.staleness.push(tau);
                        answered.insert(*client);
                    }
                    Action::Commit(info) => {
                        commits_now += 1;
                        committed += 1;
                        prop_assert_eq!(info.model_version, committed, "versions go up by exactly 1");
                        prop_assert_eq!(info.round, committed);
                        prop_assert_eq!(m.rounds_committed(), committed);
                        let n = info.participants.len();
                        prop_assert!((1..=k).contains(&n), "{} updates in a step, K = {}", n, k);
                        prop_assert_eq!(info.staleness.len(), n);
                        prop_assert!(info.staleness.iter().all(|&s| s <= max_staleness));
                        prop_assert_eq!(&info.staleness, &r.staleness, "staleness as the test computed it");
                        prop_assert!(info.participants.windows(2).all(|w| w[0] <= w[1]), "participants sorted");
                        let prev = r.versions.last().expect("version 0");
                        let want: Vec<f32> = prev
                            .iter()
                            .zip(&r.sum)
                            .map(|(&x, &s)| (f64::from(x) + SERVER_LR * s / r.weight) as f32)
                            .collect();
                        if optimizer == "sgd" {
                            for (i, (&got, &w)) in m.global().iter().zip(&want).enumerate() {
                                prop_assert!((got - w).abs() <= 1e-4 * (1.0 + w.abs()), "coordinate {}: {} vs {}", i, got, w);
                            }
                        }
                        r.versions.push(m.global().to_vec());
                        r.sum = vec![0.0; DIM];
                        r.weight = 0.0;
                        r.staleness.clear();
                    }
                    Action::JobFinished => prop_assert_eq!(committed, STEPS),
                    Action::JobFailed { reason } => prop_assert!(false, "job failed: {}", reason),
                    Action::RetryAfter { .. } | Action::Reject { .. } => {}
                    other => prop_assert!(false, "FedBuff emits no {:?}", other),
                }
            }
            prop_assert!(commits_now <= 1);
            prop_assert!(m.outstanding().len() <= concurrency, "{} tasks in flight, concurrency {}", m.outstanding().len(), concurrency);
            // A task that can no longer produce an acceptable report holds no slot.
            for c in m.outstanding() {
                let t = tasks.get(&c).expect("an outstanding task was configured");
                prop_assert!(committed - t.model_version <= max_staleness, "{} holds a slot with a task on version {} at {}", c, t.model_version, committed);
            }
            prop_assert_eq!(m.buffered_updates(), r.staleness.len());
            prop_assert!(m.buffered_updates() < k, "a full buffer is a step");
            prop_assert!(m.rounds_committed() <= STEPS);
            prop_assert!(m.global().iter().all(|v| v.is_finite()));
            if m.is_finished() {
                prop_assert!(m.outstanding().is_empty());
            }
        }
        prop_assert_eq!(committed, m.rounds_committed());
    }
}
