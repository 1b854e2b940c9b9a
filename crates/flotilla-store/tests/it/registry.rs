//! The model registry in the store, on SQLite and PostgreSQL: versions numbered per name with their
//! parent, artifacts copied out of the job's blobs (so retention cannot take them), stage rules,
//! canary, rollback along the production history, evaluations, and an audit entry per change.

use crate::common;

use common::{TestDb, both_backends, now_ms};
use flotilla_core::{ParamLayout, TensorSpec};
use flotilla_registry::{ClientEvalReport, Gate, Lineage, ModelName, Stage, summarize};
use flotilla_store::{
    ClientId, EvalKind, EvalSubject, JobId, JobState, NewModelVersion, RetentionRules, RoundCommit,
    Store, StoreError,
};
use serde_json::json;
use sha2::{Digest, Sha256};

both_backends!(
    versions_stages_canary_and_rollback,
    evaluations_are_kept_per_subject
);

/// A running job in `tenant` with `rounds` committed 2-value models; the rounds' (key, sha).
async fn running_job(store: &Store, tenant: &str, rounds: u64) -> (JobId, Vec<(String, String)>) {
    let job = store
        .create_job(tenant, "digits", &json!({"seed": 1}), rounds)
        .await
        .unwrap();
    store.set_job_state(job, JobState::Running).await.unwrap();
    let mut out = Vec::new();
    for round in 1..=rounds {
        let bytes: Vec<u8> = [round as f32, -(round as f32)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let sha = hex::encode(Sha256::digest(&bytes));
        let key = store.put_model(job, round, bytes).await.unwrap();
        store
            .commit_round(
                job,
                round,
                &RoundCommit {
                    attempt: 1,
                    participants: &[ClientId(1), ClientId(2)],
                    metrics: &json!({}),
                    model_blob_key: &key,
                    machine_state_json: "{}",
                    dp_charge: None,
                },
            )
            .await
            .unwrap();
        out.push((key, sha));
    }
    (job, out)
}

fn layout() -> ParamLayout {
    ParamLayout::new(vec![TensorSpec::new("w", [2])])
}

async fn register(
    store: &Store,
    tenant: &str,
    job: JobId,
    round: u64,
    blob: &(String, String),
) -> Result<flotilla_store::ModelVersion, StoreError> {
    let name = ModelName::new("digits").unwrap();
    let layout = layout();
    let lineage = Lineage {
        job_id: job.0,
        round,
        ..Lineage::default()
    };
    store
        .register_model_version(
            &NewModelVersion {
                name: &name,
                tenant,
                job_id: job,
                round,
                model_blob_key: &blob.0,
                model_sha256: &blob.1,
                layout: &layout,
                lineage: &lineage,
            },
            "principal:alice",
        )
        .await
}

async fn versions_stages_canary_and_rollback(db: TestDb) {
    let store = db.open().await;
    let (job, blobs) = running_job(&store, "acme", 3).await;
    let v1 = register(&store, "acme", job, 3, &blobs[2]).await.unwrap();
    assert_eq!(
        (v1.version, v1.stage, v1.lineage.parent_version),
        (1, Stage::Candidate, None)
    );
    assert!(
        v1.blob_key.starts_with("registry/digits/v1-"),
        "{}",
        v1.blob_key
    );
    assert_eq!(v1.lineage.tenant, "acme");
    let v2 = register(&store, "acme", job, 1, &blobs[0]).await.unwrap();
    assert_eq!((v2.version, v2.lineage.parent_version), (2, Some(1)));
    // Another tenant cannot add to (or learn of) the name.
    let (other, oblobs) = running_job(&store, "globex", 1).await;
    assert!(matches!(
        register(&store, "globex", other, 1, &oblobs[0]).await,
        Err(StoreError::ModelNotFound(_))
    ));
    // A wrong SHA-256 is refused before anything is written.
    let bad = (blobs[1].0.clone(), blobs[0].1.clone());
    assert!(register(&store, "acme", job, 2, &bad).await.is_err());
    assert_eq!(store.model_versions("digits").await.unwrap().len(), 2);

    // The artifact is a copy: deleting every job blob (retention) leaves it readable.
    let rules = RetentionRules {
        finished_job_blobs_ms: Some(0),
        ..RetentionRules::default()
    };
    store.set_job_state(job, JobState::Completed).await.unwrap();
    let plan = store.retention_plan(&rules, now_ms() + 1000).await.unwrap();
    // (The other tenant's one-round job completed with its round too.)
    assert_eq!(
        plan.iter().filter(|i| i.job_id == Some(job.0)).count(),
        3,
        "{plan:?}"
    );
    store
        .retention_apply(&plan, &rules, "admin-token", now_ms() + 1000)
        .await
        .unwrap();
    let bytes = store.model_version_bytes(&v1).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), v1.model_sha256);

    // Stages: nothing goes back to candidate; one production at a time; canary needs production.
    assert!(matches!(
        store
            .promote_model_version("digits", 1, Stage::Candidate, None, "a")
            .await,
        Err(StoreError::StageConflict(_))
    ));
    assert!(matches!(
        store.set_model_canary("digits", 2, 10, None, "a").await,
        Err(StoreError::StageConflict(_))
    ));
    store
        .promote_model_version("digits", 1, Stage::Production, None, "a")
        .await
        .unwrap();
    assert!(matches!(
        store.rollback_model("digits", "a", "x").await,
        Err(StoreError::StageConflict(_))
    ));
    store
        .set_model_canary("digits", 2, 10, None, "a")
        .await
        .unwrap();
    let m = store.registered_model("digits").await.unwrap().unwrap();
    assert_eq!(
        (m.production, m.canary.map(|c| (c.version, c.percent))),
        (Some(1), Some((2, 10)))
    );
    // Rolling back a canary ends it; production stays.
    let r = store
        .rollback_model("digits", "system", "canary regressed")
        .await
        .unwrap();
    assert_eq!((r.from, r.to, r.ended_canary), (2, 1, true));
    let m = store.registered_model("digits").await.unwrap().unwrap();
    assert_eq!((m.production, m.canary), (Some(1), None));
    // v2 to production archives v1; rollback brings v1 back and archives v2.
    store
        .promote_model_version("digits", 2, Stage::Production, None, "a")
        .await
        .unwrap();
    let v1now = store.model_version("digits", 1).await.unwrap().unwrap();
    assert_eq!(v1now.stage, Stage::Archived);
    let r = store.rollback_model("digits", "a", "bad").await.unwrap();
    assert_eq!((r.from, r.to, r.ended_canary), (2, 1, false));
    let m = store.registered_model("digits").await.unwrap().unwrap();
    assert_eq!(m.production, Some(1));
    assert_eq!(
        store
            .model_version("digits", 2)
            .await
            .unwrap()
            .unwrap()
            .stage,
        Stage::Archived
    );
    // The gate is stored and validated.
    let gate = Gate {
        min_accuracy: Some(0.9),
        ..Gate::default()
    };
    store.set_model_gate("digits", &gate, "a").await.unwrap();
    assert_eq!(
        store
            .registered_model("digits")
            .await
            .unwrap()
            .unwrap()
            .gate,
        Some(gate)
    );
    assert!(
        store
            .set_model_gate(
                "digits",
                &Gate {
                    min_accuracy: Some(2.0),
                    ..Gate::default()
                },
                "a"
            )
            .await
            .is_err()
    );
    // Tenant filter.
    assert_eq!(
        store
            .registered_models(Some(&["globex".to_owned()]))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(store.registered_models(None).await.unwrap().len(), 1);
    // Every change is in the audit log, and the chain verifies.
    let actions: Vec<String> = store
        .audit_entries(0, Some("acme"), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a.starts_with("model."))
        .collect();
    assert_eq!(
        actions,
        [
            "model.register",
            "model.register",
            "model.promote",
            "model.canary",
            "model.rollback",
            "model.promote",
            "model.rollback",
            "model.gate"
        ]
    );
    assert!(store.audit_verify().await.unwrap().ok());
}

async fn evaluations_are_kept_per_subject(db: TestDb) {
    let store = db.open().await;
    let (job, _) = running_job(&store, "acme", 1).await;
    let s = summarize(
        &[ClientEvalReport {
            loss: 0.5,
            accuracy: Some(0.75),
            samples: 10,
            cohorts: [("region".to_owned(), "eu".to_owned())].into(),
        }],
        Some(0.8),
    );
    let version = EvalSubject::Version {
        name: "digits".into(),
        version: 1,
    };
    let round = EvalSubject::Round {
        job_id: job,
        round: 1,
    };
    let a = store
        .record_evaluation(&version, EvalKind::OnDemand, 4, &s, now_ms())
        .await
        .unwrap();
    let b = store
        .record_evaluation(&version, EvalKind::Canary, 4, &s, now_ms())
        .await
        .unwrap();
    store
        .record_evaluation(&round, EvalKind::Job, 2, &s, now_ms())
        .await
        .unwrap();
    let got = store.evaluations(&version, 10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [b, a]);
    assert_eq!(got[0].summary, s);
    assert_eq!(got[1].kind, EvalKind::OnDemand);
    assert_eq!(store.evaluations(&version, 1).await.unwrap().len(), 1);
    let r = store.job_evaluations(job).await.unwrap();
    assert_eq!(
        (r.len(), &r[0].subject, r[0].requested_clients),
        (1, &round, 2)
    );
}
