//! The round machine's secure-aggregation stages under arbitrary, hostile event sequences, with a
//! fake aggregator ([`crate::fake_secagg`]) that refuses messages, fails a stage close or the
//! unmasking, or returns an unusable sum when told to (once), and crash recoveries (with or without a
//! fresh aggregator installed).
//!
//! Invariants checked after every event: no panic; a rejection is the only action and changes
//! nothing; a message the machine refuses never reaches the aggregator, and one the aggregator
//! refuses is its only call; round attempts only move forward and the aggregator starts once per
//! attempt, with the attempt's seed; a stage closes (or finishes) on exactly the clients whose
//! messages the aggregator accepted at that stage; every task of a later stage comes with the
//! payload the aggregator returned for that client; a stage close or unmasking leads to the next
//! stage or a commit unless the aggregator failed, and then to an abandon naming it; rounds commit
//! in order and at most once, on the contributors' mean; the model stays finite; the job fails only
//! after `max_attempts` or when no aggregator is installed.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_core::round::*;
use flotilla_core::{ParamLayout, TensorSpec};
use proptest::prelude::*;

use crate::fake_secagg::{Call, FakeSecAgg, MASKED, UNMASK, masked_of};

const DIM: usize = 3;
const CPR: usize = 3;
const MIN_REPORTS: usize = 2;

#[derive(Debug, Clone)]
enum Form {
    /// What the stage takes.
    Honest,
    Message,
    Masked,
}

#[derive(Debug, Clone)]
enum Op {
    CheckIn(u64),
    Lost(u64),
    Message {
        client: u64,
        honest: bool,
        round: u64,
        attempt: u32,
        stage: u32,
        samples: u64,
        form: Form,
    },
    /// A plain report with parameters, which no secure stage takes.
    PlainReport(u64),
    TaskFailed(u64),
    /// Toggles whether the aggregator refuses `client`'s messages at `stage`.
    Refuse {
        client: u64,
        stage: u32,
    },
    /// The aggregator fails its next close of this stage (none: no failure).
    FailClose(Option<u32>),
    /// The aggregator fails its next unmasking (or not).
    FailFinish(bool),
    /// The aggregator's next sum: 0 the contributors' vectors, 1 too short, 2 NaN.
    Sum(u8),
    /// The process dies and comes back from its snapshot, installing a fresh aggregator or not.
    Recover {
        reinstall: bool,
    },
    FireEarliestTimer,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let form =
        prop_oneof![8 => Just(Form::Honest), 1 => Just(Form::Message), 1 => Just(Form::Masked)];
    prop_oneof![
        // Weighted so that rounds commit: a recovery or an aggregator failure is rare.
        20 => (0u64..6).prop_map(Op::CheckIn),
        2 => (0u64..6).prop_map(Op::Lost),
        50 => (0u64..6, prop_oneof![8 => Just(true), 1 => Just(false)], 1u64..4, 1u32..3, 0u32..5, prop_oneof![4 => 1u64..=3, 1 => 0u64..10], form)
            .prop_map(|(client, honest, round, attempt, stage, samples, form)| Op::Message { client, honest, round, attempt, stage, samples, form }),
        2 => (0u64..6).prop_map(Op::PlainReport),
        2 => (0u64..6).prop_map(Op::TaskFailed),
        2 => (0u64..6, 0u32..4).prop_map(|(client, stage)| Op::Refuse { client, stage }),
        1 => (0u32..3).prop_map(|s| Op::FailClose(Some(s))),
        1 => Just(Op::FailFinish(true)),
        1 => (1u8..3).prop_map(Op::Sum),
        1 => prop_oneof![12 => Just(true), 1 => Just(false)].prop_map(|reinstall| Op::Recover { reinstall }),
        6 => Just(Op::FireEarliestTimer),
        2 => (0u64..1000).prop_map(Op::Advance),
    ]
}

/// Client `c`'s delta, which the fake sums for the contributors.
fn vector(c: u64) -> Vec<f64> {
    vec![c as f64 * 0.5 - 1.0, 0.25, -(c as f64) * 0.1]
}

fn new_fake() -> FakeSecAgg {
    let f = FakeSecAgg::new(DIM);
    f.state().vectors = (0..6).map(|c| (ClientId(c), vector(c))).collect();
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]
    #[test]
    fn secure_rounds_survive_arbitrary_event_sequences(ops in proptest::collection::vec(op(), 1..300), seed in any::<u64>()) {
        let mut p = RoundPolicy::new(3, CPR);
        p.min_clients = 4;
        p.over_selection = 1.4;
        p.selection_window_ms = 5;
        p.stage_deadline_ms = 500;
        p.checkin_ttl_ms = 1500;
        p.max_samples_per_report = 3;
        p.min_report_fraction = 0.6;
        p.max_attempts = 4;
        p.stages = StageKind::SECURE_AGGREGATION.to_vec();
        prop_assert_eq!(p.min_reports(), MIN_REPORTS);
        let layout = ParamLayout::new(vec![TensorSpec::new("w", [DIM])]);
        let mut fake = new_fake();
        let mut installed = true;
        let mut m = RoundMachine::new(p, layout, vec![0.0; DIM], seed).unwrap().with_secure_aggregator(fake.boxed());
        let mut now = 0u64;
        let mut timers: Vec<(u64, Timer)> = Vec::new();
        let mut tasks: BTreeMap<ClientId, Task> = BTreeMap::new();
        // Clients whose message the aggregator accepted at each stage of the attempt it runs.
        let mut accepted: BTreeMap<u32, BTreeSet<ClientId>> = BTreeMap::new();
        let mut last_start = (0u64, 0u32);
        let mut commits = 0u64;
        for op in ops {
            let before = format!("{m:?}");
            let round_before = m.current_round();
            let global_before = m.global().to_vec();
            let event = match &op {
                Op::CheckIn(c) => Event::CheckIn { client: ClientId(*c) },
                Op::Lost(c) => Event::ClientLost { client: ClientId(*c) },
                Op::Message { client, honest, round, attempt, stage, samples, form } => {
                    // An honest message mostly comes from a client the stage still waits for, so
                    // that stages fill up and rounds commit.
                    let outstanding = m.outstanding();
                    let c = match (honest, outstanding.len()) {
                        (true, n) if n > 0 && *client < 5 => outstanding[*client as usize % n],
                        _ => ClientId(*client),
                    };
                    let (round, attempt, stage) = match (honest, tasks.get(&c)) {
                        (true, Some(t)) => (t.round, t.attempt, t.stage),
                        _ => (*round, *attempt, *stage),
                    };
                    let input = match form {
                        Form::Honest if stage == MASKED => StageInput::Masked(masked_of(c)),
                        Form::Masked => StageInput::Masked(masked_of(c)),
                        Form::Honest | Form::Message => StageInput::Message(b"a stage message"),
                    };
                    Event::StageMessage { client: c, round, attempt, stage, input, num_samples: *samples, metrics: ReportMetrics::default() }
                }
                Op::PlainReport(c) => {
                    let c = ClientId(*c);
                    let t = tasks.get(&c).cloned().unwrap_or(Task { round: 1, attempt: 1, stage: 0, kind: StageKind::Train, model_version: 0, seed: 0 });
                    Event::Report { client: c, round: t.round, attempt: t.attempt, stage: t.stage, num_samples: 1, update: &[0.0; DIM], metrics: ReportMetrics::default() }
                }
                Op::TaskFailed(c) => {
                    let c = ClientId(*c);
                    let (round, attempt, stage) = tasks.get(&c).map_or((1, 1, 0), |t| (t.round, t.attempt, t.stage));
                    Event::TaskFailed { client: c, round, attempt, stage }
                }
                Op::Refuse { client, stage } => {
                    let key = (ClientId(*client), *stage);
                    let mut s = fake.state();
                    if !s.refuse.remove(&key) {
                        s.refuse.insert(key);
                    }
                    continue;
                }
                Op::FailClose(stage) => {
                    fake.state().fail_close = stage.map(|s| (s, "the fake cannot close".to_string()));
                    continue;
                }
                Op::FailFinish(fail) => {
                    fake.state().fail_finish = fail.then(|| "the fake cannot unmask".to_string());
                    continue;
                }
                Op::Sum(k) => {
                    fake.state().sum = match k {
                        0 => None,
                        1 => Some(vec![1.0; DIM - 1]),
                        _ => Some(vec![f64::NAN; DIM]),
                    };
                    continue;
                }
                Op::Recover { reinstall } => {
                    let snapshot = serde_json::to_string(&m).unwrap();
                    let global = m.global().to_vec();
                    m = serde_json::from_str(&snapshot).unwrap();
                    m.recover(global).unwrap();
                    prop_assert!(m.current_round() >= round_before);
                    prop_assert!(m.current_stage().is_none());
                    // The old aggregator is gone with the process; a new one (or none) is installed.
                    fake = new_fake();
                    installed = *reinstall;
                    if installed {
                        m.set_secure_aggregator(fake.boxed());
                    }
                    accepted.clear();
                    continue;
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
            let calls_before = fake.state().calls.len();
            let actions = m.handle(now, event);
            let calls: Vec<Call> = fake.state().calls[calls_before..].to_vec();
            let (fail_close, fail_finish, bad_sum) = {
                let s = fake.state();
                (s.fail_close.clone(), s.fail_finish.is_some(), s.sum.is_some())
            };
            prop_assert!(installed || calls.is_empty(), "an aggregator that is not installed was called");

            // What the aggregator was asked to do, against what the test saw it accept.
            let mut closed = None;
            let mut finished = None;
            for call in &calls {
                match call {
                    Call::Start { round, attempt, seed } => {
                        prop_assert!((*round, *attempt) > last_start, "one start per attempt, attempts move forward");
                        last_start = (*round, *attempt);
                        prop_assert_eq!((*round, *attempt), m.current_round());
                        prop_assert_eq!(*seed, m.attempt_seed());
                        accepted.clear();
                    }
                    Call::Receive { client, stage, accepted: true, .. } => {
                        prop_assert!(accepted.entry(*stage).or_default().insert(*client), "{} accepted twice at stage {}", client, stage);
                    }
                    Call::Receive { .. } => {}
                    Call::CloseStage { stage, survivors } => {
                        let want: Vec<ClientId> = accepted.get(stage).into_iter().flatten().copied().collect();
                        prop_assert_eq!(survivors, &want, "stage {} closes on the clients the aggregator accepted", stage);
                        prop_assert!((MIN_REPORTS..=CPR).contains(&survivors.len()));
                        prop_assert!(*stage < UNMASK);
                        closed = Some((*stage, survivors.clone()));
                    }
                    Call::Finish { contributors } => {
                        let want: Vec<ClientId> = accepted.get(&MASKED).into_iter().flatten().copied().collect();
                        prop_assert_eq!(contributors, &want, "the contributors are the masked inputs accepted");
                        prop_assert!(accepted.get(&UNMASK).is_some_and(|u| !u.is_empty()));
                        finished = Some(contributors.clone());
                    }
                }
            }
            prop_assert!(closed.is_none() || finished.is_none(), "one stage closes per event");

            let mut configured_after_close = BTreeSet::new();
            let mut outcome = None;
            for a in &actions {
                match a {
                    Action::Reject { reason, .. } => {
                        prop_assert_eq!(actions.len(), 1, "a rejection is the only action");
                        prop_assert_eq!(&before, &format!("{m:?}"), "a rejection changes nothing");
                        match reason {
                            RejectReason::SecureAggregation(r) if r.code == "fake_refused" => {
                                prop_assert!(matches!(calls.as_slice(), [Call::Receive { accepted: false, .. }]), "{:?}", calls);
                            }
                            _ => prop_assert!(calls.is_empty(), "a message the machine refused reached the aggregator: {:?}", calls),
                        }
                    }
                    Action::Accepted { client } => {
                        if let Op::Message { .. } = op {
                            prop_assert!(matches!(calls.first(), Some(Call::Receive { client: c, accepted: true, .. }) if c == client), "{:?}", calls);
                        } else {
                            prop_assert!(matches!(op, Op::TaskFailed(_)), "{:?}", op);
                            prop_assert!(!calls.iter().any(|c| matches!(c, Call::Receive { .. })), "{:?}", calls);
                        }
                    }
                    Action::SetTimer { timer, at_ms } => {
                        prop_assert!(*at_ms >= now);
                        timers.push((*at_ms, *timer));
                    }
                    Action::Configure { client, task } => {
                        // The payload of a task is there when its Configure is carried out: what the
                        // aggregator returned for this client when the previous stage closed.
                        let payload = m.stage_payload(*client, task.round, task.attempt, task.stage);
                        if task.stage == 0 {
                            prop_assert!(payload.is_empty());
                        } else {
                            prop_assert_eq!(payload, FakeSecAgg::payload(task.stage - 1, *client));
                        }
                        if !matches!(op, Op::CheckIn(_)) && task.stage > 0 {
                            prop_assert!(closed.as_ref().is_some_and(|(s, surv)| *s + 1 == task.stage && surv.contains(client)), "stage {} tasks come from its close", task.stage);
                            configured_after_close.insert(*client);
                        }
                        tasks.insert(*client, task.clone());
                    }
                    Action::Commit(info) => {
                        commits += 1;
                        prop_assert_eq!(info.round, commits);
                        prop_assert_eq!(Some(&info.participants), finished.as_ref(), "a commit follows the unmasking of its participants");
                        let n = info.participants.len() as f64;
                        for (j, (&g, &old)) in m.global().iter().zip(&global_before).enumerate() {
                            let sum: f64 = info.participants.iter().map(|c| vector(c.0)[j]).sum();
                            let want = old + (sum / n) as f32;
                            prop_assert!((g - want).abs() < 1e-5, "coordinate {}: {} vs {}", j, g, want);
                        }
                        outcome = Some("commit");
                    }
                    Action::RoundAbandoned { reason, cause, .. } => {
                        prop_assert!(!reason.is_empty());
                        if *cause == AbandonCause::AggregationFailed {
                            prop_assert!(reason.starts_with("secure aggregation failed: "), "{}", reason);
                            prop_assert!(closed.is_some() || finished.is_some(), "an aggregation failure without an aggregator call");
                        } else {
                            prop_assert_eq!(*cause, AbandonCause::TooFewReports);
                            prop_assert!(closed.is_none() && finished.is_none());
                        }
                        outcome = Some("abandon");
                    }
                    Action::JobFailed { reason } => {
                        if installed {
                            prop_assert!(reason.contains("failed 4 times"), "{}", reason);
                        } else {
                            prop_assert!(reason.contains("failed 4 times") || reason.contains("no secure aggregator"), "{}", reason);
                        }
                    }
                    _ => {}
                }
            }
            // A stage close leads to the next stage on every survivor unless the aggregator failed;
            // an unmasking to a commit unless it failed or returned an unusable sum.
            if let Some((stage, survivors)) = &closed {
                let fails = fail_close.as_ref().is_some_and(|(s, _)| s == stage);
                if fails {
                    prop_assert_eq!(outcome, Some("abandon"));
                    prop_assert!(configured_after_close.is_empty());
                } else {
                    prop_assert_eq!(outcome, None);
                    prop_assert_eq!(&configured_after_close, &survivors.iter().copied().collect::<BTreeSet<_>>());
                    prop_assert_eq!(m.current_stage().map(|(s, _)| s), Some(stage + 1));
                }
            }
            if finished.is_some() {
                let want = if fail_finish || bad_sum { "abandon" } else { "commit" };
                prop_assert_eq!(outcome, Some(want));
            }
            // The fake's failures are one-shot, so that later attempts can commit.
            {
                let mut s = fake.state();
                if closed.as_ref().is_some_and(|(st, _)| s.fail_close.as_ref().is_some_and(|(f, _)| f == st)) {
                    s.fail_close = None;
                }
                if finished.is_some() {
                    s.fail_finish = None;
                    s.sum = None;
                }
            }
            prop_assert!(m.current_round() >= round_before, "attempts only move forward");
            prop_assert!(m.rounds_committed() <= 3);
            prop_assert!(m.global().iter().all(|v| v.is_finite()));
        }
        prop_assert_eq!(commits, m.rounds_committed());
    }
}
