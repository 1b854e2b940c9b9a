//! The typed bodies give the JSON the `json!` code before them gave: same names, same presence.

use flotilla_core::strategy::Quarantined;
use serde_json::{Value, json};

use super::*;

fn value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

fn round_trips<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(t: &T) {
    let back: T = serde_json::from_value(value(t)).unwrap();
    assert_eq!(&back, t);
}

#[test]
fn round_metrics_of_a_plain_round() {
    let m = RoundMetrics::new(2, 120, f64::NAN, "ab".into());
    assert_eq!(
        value(&m),
        json!({"attempt": 2, "num_samples": 120, "train_loss": null, "model_sha256": "ab"})
    );
    round_trips(&m);
}

#[test]
fn round_metrics_with_privacy_staleness_quarantine_and_evaluation() {
    let mut m = RoundMetrics::new(1, 10, 0.5, "cd".into());
    m.privacy = Some(RoundPrivacy {
        q: 0.25,
        sigma: 1.1,
        epsilon_spent: 0.7,
        delta: 1e-5,
        clip_norm: None,
        noise_std: None,
        unclipped: None,
    });
    m.set_staleness(vec![0, 3, 1]);
    m.quarantined = vec![Quarantined {
        client: 7,
        reason: "norm".into(),
    }];
    assert_eq!(
        value(&m),
        json!({
            "attempt": 1, "num_samples": 10, "train_loss": 0.5, "model_sha256": "cd",
            "privacy": {"q": 0.25, "sigma": 1.1, "epsilon_spent": 0.7, "delta": 1e-5,
                        "clip_norm": null, "noise_std": null, "unclipped": null},
            "staleness": [0, 3, 1], "staleness_max": 3, "staleness_mean": 4.0 / 3.0,
            "quarantined": [{"client": 7, "reason": "norm"}],
        })
    );
    round_trips(&m);
    // The evaluation is merged into the stored object later; read back, it is typed.
    let mut stored = value(&m);
    stored["eval_accuracy"] = json!(0.9);
    stored["eval_loss"] = Value::Null;
    stored["eval_samples"] = json!(360);
    let read: RoundMetrics = serde_json::from_value(stored.clone()).unwrap();
    assert_eq!(read.eval, Some(EvalMetrics::new(0.9, f64::INFINITY, 360)));
    assert!(read.other.is_empty());
    assert_eq!(value(&read), stored);
}

#[test]
fn old_and_unknown_round_metrics_still_load_and_keep_their_fields() {
    // Before `model_sha256`, and with a field this version does not know.
    let stored = json!({"attempt": 1, "num_samples": 5, "train_loss": 1.5, "note": {"x": 1}});
    let read: RoundMetrics = serde_json::from_value(stored.clone()).unwrap();
    assert_eq!(read.model_sha256, None);
    assert_eq!(read.eval, None);
    assert_eq!(read.other["note"], json!({"x": 1}));
    assert_eq!(value(&read), stored);
}

fn summary() -> JobSummary {
    JobSummary {
        job_id: 3,
        name: "digits".into(),
        tenant: "default".into(),
        state: "running".into(),
        rounds_completed: 1,
        rounds_total: 5,
        model_version: 1,
        created_at_ms: 10,
        updated_at_ms: 20,
        reason: None,
        halted: None,
    }
}

#[test]
fn job_summary_leaves_out_what_does_not_apply() {
    let mut s = summary();
    assert_eq!(
        value(&s),
        json!({"job_id": 3, "name": "digits", "tenant": "default", "state": "running",
               "rounds_completed": 1, "rounds_total": 5, "model_version": 1,
               "created_at_ms": 10, "updated_at_ms": 20})
    );
    s.reason = Some("waiting".into());
    s.halted = Some("store down".into());
    assert_eq!(value(&s)["reason"], "waiting");
    assert_eq!(value(&s)["halted"], "store down");
    round_trips(&s);
}

#[test]
fn job_status_has_the_summary_at_the_top_level() {
    let metrics = RoundMetrics::new(1, 10, 0.5, "cd".into());
    let mut status = JobStatus {
        job: summary(),
        history: vec![RoundRecord {
            round: 1,
            attempt: 1,
            participants: vec![4, 5],
            metrics: metrics.clone(),
            committed_at_ms: 15,
            epsilon_spent: None,
            delta: None,
        }],
        epsilon_spent: None,
        delta: None,
        stopped_reason: None,
        privacy: None,
        current: Some(CurrentRound {
            round: 2,
            attempt: 1,
            halted: None,
            phase: "training".into(),
            available_clients: 3,
            needed_clients: 2,
            deadline_ms: None,
        }),
        abandoned: Vec::new(),
        spec: None,
        approval: None,
    };
    let mut want = value(&summary());
    want["history"] = json!([{"round": 1, "attempt": 1, "participants": [4, 5],
        "metrics": value(&metrics), "committed_at_ms": 15}]);
    want["current"] = json!({"round": 2, "attempt": 1, "halted": null, "phase": "training",
        "available_clients": 3, "needed_clients": 2});
    assert_eq!(value(&status), want);
    round_trips(&status);

    status.current = None;
    status.epsilon_spent = Some(0.5);
    status.delta = Some(1e-5);
    status.privacy = Some(PrivacyStatus {
        epsilon_spent: 0.5,
        delta: 1e-5,
        max_epsilon: Some(4.0),
        noise_multiplier: 1.1,
        population: None,
        epsilon_charged: Some(0.6),
        tenant_epsilon_spent: None,
        tenant_max_epsilon: None,
        tenant_delta: None,
        stopped_reason: None,
    });
    let v = value(&status);
    assert!(v.get("current").is_none() && v.get("stopped_reason").is_none());
    assert_eq!(v["epsilon_spent"], 0.5);
    assert_eq!(
        v["privacy"],
        json!({"epsilon_spent": 0.5, "delta": 1e-5, "max_epsilon": 4.0, "noise_multiplier": 1.1,
               "population": null, "epsilon_charged": 0.6, "tenant_epsilon_spent": null,
               "tenant_max_epsilon": null, "tenant_delta": null, "stopped_reason": null})
    );
    round_trips(&status);
}

#[test]
fn small_answers_and_requests() {
    assert_eq!(
        value(&ErrorBody { error: "no".into() }),
        json!({"error": "no"})
    );
    assert_eq!(value(&JobSubmitted { job_id: 4 }), json!({"job_id": 4}));
    assert_eq!(
        value(&ClientRevoked {
            client_id: 2,
            revoked: true
        }),
        json!({"client_id": 2, "revoked": true})
    );
    assert_eq!(
        value(&CancelRequest {
            by: Some("ops".into()),
            reason: None
        }),
        json!({"by": "ops"})
    );
    assert!(serde_json::from_value::<CancelRequest>(json!({"by": "a", "why": "b"})).is_err());
    assert!(serde_json::from_value::<TokenRequest>(json!({"usez": 2})).is_err());
    assert_eq!(
        serde_json::from_value::<TokenRequest>(json!({})).unwrap(),
        TokenRequest::default()
    );
}
