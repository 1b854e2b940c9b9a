//! Federated evaluation through the round machine: a commit carries the sample-weighted means of
//! the evaluations its aggregated reports carried (plain rounds, robust strategies, secure
//! aggregation, FedBuff), an invalid evaluation refuses its report without changing anything, and
//! evaluations never change the aggregate.

use flotilla_core::round::*;
use flotilla_core::strategy::{AnomalySpec, StrategyConfig, StrategySpec};
use flotilla_core::{ParamLayout, TensorSpec};
use proptest::prelude::*;

use crate::fake_secagg;

fn ev(loss: f64, accuracy: Option<f64>, samples: u64) -> Option<ClientEval> {
    Some(ClientEval {
        loss,
        accuracy,
        samples,
    })
}

fn metrics(eval: Option<ClientEval>) -> ReportMetrics {
    ReportMetrics {
        train_loss: 0.5,
        eval,
    }
}

/// A machine of `rounds` rounds of `cpr` clients (all needed) over a `dim`-value model.
fn machine(rounds: u64, cpr: usize, strategy: StrategyConfig, dim: usize) -> RoundMachine {
    let mut p = RoundPolicy::new(rounds, cpr);
    p.selection_window_ms = 10;
    p.stage_deadline_ms = 1000;
    p.min_report_fraction = 1.0;
    let spec = StrategySpec::from_config(&strategy, p.min_reports()).unwrap();
    let layout = ParamLayout::new(vec![TensorSpec::new("w", [dim])]);
    RoundMachine::with_strategy(p, layout, vec![0.0; dim], 3, spec).unwrap()
}

fn fedavg() -> StrategyConfig {
    StrategyConfig {
        name: "fedavg".into(),
        ..StrategyConfig::default()
    }
}

/// Checks in clients `0..n` and fires the selection timer; returns the cohort's tasks.
fn open(m: &mut RoundMachine, now: u64, n: u64) -> Vec<(ClientId, Task)> {
    let acts: Vec<Action> = (0..n)
        .flat_map(|i| {
            m.handle(
                now,
                Event::CheckIn {
                    client: ClientId(i),
                },
            )
        })
        .collect();
    let (timer, at) = acts
        .iter()
        .find_map(|a| match a {
            Action::SetTimer { timer, at_ms } => Some((*timer, *at_ms)),
            _ => None,
        })
        .expect("a selection timer");
    fake_secagg::configured(&m.handle(at, Event::TimerFired(timer)))
}

fn report(
    m: &mut RoundMachine,
    c: ClientId,
    t: &Task,
    (samples, update): (u64, &[f32]),
    eval: Option<ClientEval>,
) -> Vec<Action> {
    m.handle(
        100,
        Event::Report {
            client: c,
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
            num_samples: samples,
            update,
            metrics: metrics(eval),
        },
    )
}

fn commit(actions: &[Action]) -> Option<CommitInfo> {
    actions.iter().find_map(|a| match a {
        Action::Commit(c) => Some(c.clone()),
        _ => None,
    })
}

fn rejected(actions: &[Action]) -> Option<RejectReason> {
    actions.iter().find_map(|a| match a {
        Action::Reject { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn a_round_commits_the_sample_weighted_means_of_its_evaluations() {
    let mut m = machine(2, 3, fedavg(), 2);
    let cohort = open(&mut m, 0, 3);
    let evals = [ev(1.0, Some(0.5), 100), ev(4.0, None, 200), None];
    let mut last = Vec::new();
    for ((c, t), e) in cohort.iter().zip(evals) {
        last = report(&mut m, *c, t, (10, &[1.0, 2.0]), e);
        assert!(matches!(last[0], Action::Accepted { .. }), "{last:?}");
    }
    let info = commit(&last).expect("the round commits");
    let f = info
        .federated_eval
        .expect("two reports carried an evaluation");
    // Loss (1·100 + 4·200) / 300 = 3; accuracy over the one that measured it.
    assert!(close(f.loss, 3.0), "{f:?}");
    assert_eq!(f.accuracy, Some(0.5));
    assert_eq!((f.samples, f.clients), (300, 2));
    // The training tally is the one it always was.
    assert_eq!(info.num_samples, 30);
    assert!(close(info.train_loss, 0.5));

    // Round 2: nobody evaluates, so there is no federated evaluation.
    let cohort = open(&mut m, 2000, 3);
    for (c, t) in &cohort {
        last = report(&mut m, *c, t, (10, &[1.0, 2.0]), None);
    }
    let info = commit(&last).expect("round 2 commits");
    assert_eq!(info.round, 2);
    assert_eq!(info.federated_eval, None);
}

#[test]
fn an_invalid_evaluation_refuses_the_report_and_changes_nothing() {
    let mut m = machine(1, 2, fedavg(), 2);
    let cohort = open(&mut m, 0, 2);
    let (c, t) = &cohort[0];
    for (bad, what) in [
        (ev(f64::NAN, None, 10), "eval_loss"),
        (ev(f64::NEG_INFINITY, None, 10), "eval_loss"),
        (ev(0.5, None, 0), "eval_samples"),
        (ev(0.5, None, MAX_EVAL_SAMPLES + 1), "eval_samples"),
        (ev(0.5, Some(1.01), 10), "eval_accuracy"),
        (ev(0.5, Some(-0.01), 10), "eval_accuracy"),
        (ev(0.5, Some(f64::NAN), 10), "eval_accuracy"),
    ] {
        let before = serde_json::to_string(&m).unwrap();
        let acts = report(&mut m, *c, t, (10, &[1.0, 2.0]), bad);
        let reason = rejected(&acts).unwrap_or_else(|| panic!("{bad:?} accepted: {acts:?}"));
        assert!(matches!(reason, RejectReason::BadEval(_)), "{reason:?}");
        let msg = reason.to_string();
        assert!(
            msg.starts_with("invalid federated evaluation: ") && msg.contains(what),
            "{msg}"
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), before, "{bad:?}");
        assert_eq!(m.outstanding().len(), 2);
    }
    // The same client may then report properly; the round commits with its evaluation only.
    let acts = report(&mut m, *c, t, (10, &[1.0, 2.0]), ev(0.7, Some(0.9), 10));
    assert!(matches!(acts[0], Action::Accepted { .. }), "{acts:?}");
    let (c2, t2) = &cohort[1];
    let acts = report(&mut m, *c2, t2, (10, &[1.0, 2.0]), None);
    let f = commit(&acts).unwrap().federated_eval.unwrap();
    assert_eq!(
        (f.loss, f.accuracy, f.samples, f.clients),
        (0.7, Some(0.9), 10, 1)
    );
}

#[test]
fn a_quarantined_reports_evaluation_is_left_out() {
    let cfg = StrategyConfig {
        name: "fedavg".into(),
        anomaly: Some(AnomalySpec {
            max_norm_z: 3.0,
            max_cosine_distance: 1.0,
        }),
        ..StrategyConfig::default()
    };
    let mut m = machine(1, 6, cfg, 4);
    let cohort = open(&mut m, 0, 6);
    let mut last = Vec::new();
    for (c, t) in &cohort {
        let i = c.0;
        let (update, eval) = if i == 5 {
            // The attacker's update is quarantined; its (absurd) evaluation must not count.
            (vec![-10.0; 4], ev(1e6, Some(0.0), 1000))
        } else {
            let u = (0..4).map(|j| 1.0 + 0.01 * (i + j) as f32).collect();
            (u, ev(0.5, Some(0.8), 10))
        };
        last = report(&mut m, *c, t, (10, &update), eval);
    }
    let info = commit(&last).expect("the round commits");
    assert_eq!(info.quarantined.len(), 1, "{:?}", info.quarantined);
    assert_eq!(info.quarantined[0].client, 5);
    let f = info.federated_eval.unwrap();
    assert_eq!(
        (f.loss, f.accuracy, f.samples, f.clients),
        (0.5, Some(0.8), 50, 5)
    );
}

#[test]
fn a_secure_round_averages_its_contributors_evaluations() {
    let (mut m, fake) = fake_secagg::machine(fake_secagg::policy(1, 5), 9);
    let mut cur = fake_secagg::open(&mut m, 0, 0..5);
    for _ in 0..2 {
        cur = fake_secagg::configured(&fake_secagg::all_report(&mut m, 10, &cur));
    }
    assert!(cur.iter().all(|(_, t)| t.stage == fake_secagg::MASKED));
    let masked = |m: &mut RoundMachine, c: ClientId, t: &Task, eval| {
        m.handle(
            20,
            Event::StageMessage {
                client: c,
                round: t.round,
                attempt: t.attempt,
                stage: t.stage,
                input: StageInput::Masked(fake_secagg::masked_of(c)),
                num_samples: 10,
                metrics: metrics(eval),
            },
        )
    };
    // A bad evaluation is refused before the aggregator sees the masked vector.
    let (c0, t0) = &cur[0];
    let receives = fake.state().receives();
    let acts = masked(&mut m, *c0, t0, ev(0.5, Some(2.0), 10));
    assert!(
        matches!(rejected(&acts), Some(RejectReason::BadEval(_))),
        "{acts:?}"
    );
    assert_eq!(fake.state().receives(), receives);
    // Clients 0..4 send evaluations with 10, 20, 30, 40 samples and losses 1..4; client 4 none.
    let mut next = Vec::new();
    for (c, t) in &cur {
        let i = c.0;
        let eval = (i < 4).then(|| ClientEval {
            loss: (i + 1) as f64,
            accuracy: (i % 2 == 0).then_some(0.5 + 0.1 * i as f64),
            samples: 10 * (i + 1),
        });
        let acts = masked(&mut m, *c, t, eval);
        assert!(matches!(acts[0], Action::Accepted { .. }), "{acts:?}");
        next = acts;
    }
    let cur = fake_secagg::configured(&next);
    assert!(cur.iter().all(|(_, t)| t.stage == fake_secagg::UNMASK));
    let info = commit(&fake_secagg::all_report(&mut m, 30, &cur)).expect("the round commits");
    let f = info.federated_eval.unwrap();
    // Loss (1·10 + 2·20 + 3·30 + 4·40) / 100 = 3; accuracy over clients 0 and 2:
    // (0.5·10 + 0.7·30) / 40 = 0.65.
    assert!(close(f.loss, 3.0), "{f:?}");
    assert!(close(f.accuracy.unwrap(), 0.65), "{f:?}");
    assert_eq!((f.samples, f.clients), (100, 4));
}

fn fedbuff(buffer: usize) -> RoundMachine {
    let cfg = StrategyConfig {
        name: "fedbuff".into(),
        buffer_size: Some(buffer),
        max_staleness: Some(4),
        concurrency: Some(8),
        ..StrategyConfig::default()
    };
    let spec = StrategySpec::from_config(&cfg, 1).unwrap();
    let mut p = RoundPolicy::new(2, 1);
    p.stage_deadline_ms = 1000;
    let layout = ParamLayout::new(vec![TensorSpec::new("w", [1])]);
    RoundMachine::with_strategy(p, layout, vec![0.0], 7, spec).unwrap()
}

fn fedbuff_task(m: &mut RoundMachine, c: u64) -> Task {
    m.handle(
        0,
        Event::CheckIn {
            client: ClientId(c),
        },
    )
    .into_iter()
    .find_map(|a| match a {
        Action::Configure { task, .. } => Some(task),
        _ => None,
    })
    .expect("a task")
}

#[test]
fn a_fedbuff_step_averages_its_buffered_evaluations() {
    let mut m = fedbuff(3);
    let tasks: Vec<Task> = (0..3).map(|c| fedbuff_task(&mut m, c)).collect();
    let before = serde_json::to_string(&m).unwrap();
    let acts = report(
        &mut m,
        ClientId(0),
        &tasks[0],
        (5, &[1.0]),
        ev(0.5, None, 0),
    );
    assert!(
        matches!(rejected(&acts), Some(RejectReason::BadEval(_))),
        "{acts:?}"
    );
    assert_eq!(serde_json::to_string(&m).unwrap(), before);
    let evals = [ev(2.0, Some(1.0), 30), None, ev(6.0, Some(0.0), 10)];
    let mut last = Vec::new();
    for (c, (t, e)) in tasks.iter().zip(evals).enumerate() {
        last = report(&mut m, ClientId(c as u64), t, (5, &[1.0]), e);
        assert!(matches!(last[0], Action::Accepted { .. }), "{last:?}");
    }
    let f = commit(&last).unwrap().federated_eval.unwrap();
    // (2·30 + 6·10) / 40 = 3; (1·30 + 0·10) / 40 = 0.75.
    assert!(
        close(f.loss, 3.0) && close(f.accuracy.unwrap(), 0.75),
        "{f:?}"
    );
    assert_eq!((f.samples, f.clients), (40, 2));
    // The next step's buffer starts empty.
    let t = fedbuff_task(&mut m, 0);
    let mut last = report(&mut m, ClientId(0), &t, (5, &[1.0]), None);
    for c in 1..3 {
        let t = fedbuff_task(&mut m, c);
        last = report(&mut m, ClientId(c), &t, (5, &[1.0]), None);
    }
    assert_eq!(commit(&last).unwrap().federated_eval, None);
}

/// A machine state: the snapshot and the global model's bits.
fn state(m: &RoundMachine) -> (String, Vec<u32>) {
    let mut v = serde_json::to_value(m).unwrap();
    // Evaluations are part of the in-flight stage; everything else must be equal.
    strip_evals(&mut v);
    (
        v.to_string(),
        m.global().iter().map(|x| x.to_bits()).collect(),
    )
}

fn strip_evals(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.remove("evals");
            o.values_mut().for_each(strip_evals);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_evals),
        _ => {}
    }
}

fn any_eval() -> impl proptest::strategy::Strategy<Value = Option<ClientEval>> {
    proptest::option::of(
        (-5.0f64..5.0, proptest::option::of(0.0f64..=1.0), 1u64..1000).prop_map(
            |(loss, accuracy, samples)| ClientEval {
                loss,
                accuracy,
                samples,
            },
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]
    /// The same reports with and without evaluations give bit-identical models and commits (but
    /// for `federated_eval`, which is the weighted mean of the evaluations sent).
    #[test]
    fn evaluations_never_change_the_aggregate(
        rounds in proptest::collection::vec(
            proptest::collection::vec(((1u64..50), proptest::collection::vec(-3.0f32..3.0, 3), any_eval()), 5),
            1..4,
        ),
        krum in any::<bool>(),
    ) {
        let cfg = if krum {
            StrategyConfig { name: "krum".into(), f: Some(1), m: Some(2), ..StrategyConfig::default() }
        } else {
            StrategyConfig { name: "fedadam".into(), server_lr: Some(0.1), ..StrategyConfig::default() }
        };
        let n = rounds.len() as u64;
        let mut with = machine(n, 5, cfg.clone(), 3);
        let mut without = machine(n, 5, cfg, 3);
        for (r, reports) in rounds.iter().enumerate() {
            let now = 5000 * r as u64;
            let cohort = open(&mut with, now, 5);
            prop_assert_eq!(&cohort, &open(&mut without, now, 5));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for ((c, t), (samples, update, eval)) in cohort.iter().zip(reports) {
                a = report(&mut with, *c, t, (*samples, update), *eval);
                b = report(&mut without, *c, t, (*samples, update), None);
                prop_assert_eq!(&a[0], &b[0]);
            }
            let (ca, cb) = (commit(&a).unwrap(), commit(&b).unwrap());
            prop_assert_eq!(cb.federated_eval, None);
            let evals: Vec<ClientEval> = ca
                .participants
                .iter()
                .filter_map(|p| reports[cohort.iter().position(|(c, _)| c == p).unwrap()].2)
                .collect();
            prop_assert_eq!(ca.federated_eval, FederatedEval::over(&evals));
            prop_assert_eq!(CommitInfo { federated_eval: None, ..ca }, cb);
            prop_assert_eq!(state(&with), state(&without));
        }
    }
}
