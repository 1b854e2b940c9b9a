//! Retention and erasure in the store, on SQLite and PostgreSQL: plans are exact, applying one
//! deletes exactly it with its audit entries in the same transaction, blobs go after the commit,
//! and audit entries go only before a checkpoint (the chain still verifies).

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestDb, both_backends, now_ms};
use flotilla_store::{
    AuditEvent, ClientId, JobId, JobState, RetentionKind, RetentionRules, RoundCommit, Store,
    StoreError,
};
use serde_json::json;

both_backends!(
    model_versions_keep_the_last_n_and_the_current,
    finished_jobs_lose_every_blob_after_the_period,
    forget_rewrites_participants_and_is_audited,
    audit_entries_go_only_before_a_checkpoint
);

async fn job_with_rounds(
    store: &Store,
    tenant: &str,
    rounds: u64,
    commit: u64,
) -> (JobId, Vec<String>) {
    let job = store
        .create_job(tenant, "digits", &json!({"seed": 1}), rounds)
        .await
        .unwrap();
    store.set_job_state(job, JobState::Running).await.unwrap();
    let mut keys = Vec::new();
    for round in 1..=commit {
        let key = store
            .put_model(job, round, format!("model {job} v{round}").into_bytes())
            .await
            .unwrap();
        let participants = [ClientId(1), ClientId(2)];
        store
            .commit_round(
                job,
                round,
                &RoundCommit {
                    attempt: 1,
                    participants: &participants,
                    metrics: &json!({}),
                    model_blob_key: &key,
                    machine_state_json: "{}",
                    dp_charge: None,
                },
            )
            .await
            .unwrap();
        keys.push(key);
    }
    (job, keys)
}

fn ids(items: &[flotilla_store::RetentionItem]) -> BTreeSet<String> {
    items.iter().map(|i| i.id.clone()).collect()
}

async fn model_versions_keep_the_last_n_and_the_current(db: TestDb) {
    let store = db.open().await;
    let (job, keys) = job_with_rounds(&store, "acme", 10, 4).await;
    let rules = RetentionRules {
        model_versions: Some(2),
        ..RetentionRules::default()
    };
    let plan = store.retention_plan(&rules, now_ms()).await.unwrap();
    assert_eq!(ids(&plan), keys[..2].iter().cloned().collect());
    assert!(plan.iter().all(|i| i.kind == RetentionKind::ModelBlob
        && i.job_id == Some(job.0)
        && i.bytes == Some(format!("model {job} v1").len() as u64)));
    let done = store
        .retention_apply(&plan, &rules, "admin-token", now_ms())
        .await
        .unwrap();
    assert_eq!(done.deleted, plan, "exactly the plan");
    assert_eq!(done.audit_seqs.len(), 1, "one entry for the job's keys");
    for k in &keys[..2] {
        assert!(matches!(
            store.get_model(k).await,
            Err(StoreError::BlobNotFound(_))
        ));
        assert!(store.blob_deleted_at(k).await.unwrap().is_some());
    }
    for k in &keys[2..] {
        assert!(store.get_model(k).await.is_ok());
        assert_eq!(store.blob_deleted_at(k).await.unwrap(), None);
    }
    let entry = store
        .audit_entries(0, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.seq == done.audit_seqs[0])
        .expect("the retention entry");
    assert_eq!(entry.action, "retention.delete_model_blobs");
    assert_eq!(entry.resource, format!("job:{job}"));
    assert_eq!(entry.tenant.as_deref(), Some("acme"));
    assert!(entry.details_json.contains(&keys[0]) && entry.details_json.contains(&keys[1]));
    // Nothing is due twice; a new commit makes the next version due.
    assert!(
        store
            .retention_plan(&rules, now_ms())
            .await
            .unwrap()
            .is_empty()
    );
    // `model_versions = 0` would delete current models: refused.
    let zero = RetentionRules {
        model_versions: Some(0),
        ..RetentionRules::default()
    };
    assert!(matches!(
        store.retention_plan(&zero, now_ms()).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(store.audit_verify().await.unwrap().ok());
}

async fn finished_jobs_lose_every_blob_after_the_period(db: TestDb) {
    let store = db.open().await;
    let (done_job, done_keys) = job_with_rounds(&store, "acme", 2, 2).await;
    let (running, _) = job_with_rounds(&store, "acme", 5, 2).await;
    assert_eq!(
        store.get_job(done_job).await.unwrap().state,
        JobState::Completed
    );
    let rules = RetentionRules {
        finished_job_blobs_ms: Some(60_000),
        ..RetentionRules::default()
    };
    assert!(
        store
            .retention_plan(&rules, now_ms())
            .await
            .unwrap()
            .is_empty(),
        "ended just now"
    );
    // An hour later, the completed job's blobs go (the final model too); the running job's stay.
    let later = now_ms() + 3_600_000;
    let plan = store.retention_plan(&rules, later).await.unwrap();
    assert_eq!(ids(&plan), done_keys.iter().cloned().collect());
    assert!(
        plan[0].reason.contains("retain-finished-job-blobs 1m"),
        "{}",
        plan[0].reason
    );
    store
        .retention_apply(&plan, &rules, "system:retention", later)
        .await
        .unwrap();
    for k in &done_keys {
        assert!(matches!(
            store.get_model(k).await,
            Err(StoreError::BlobNotFound(_))
        ));
    }
    assert_eq!(
        store.job_history(done_job).await.unwrap().len(),
        2,
        "rounds stay"
    );
    assert_eq!(store.job_history(running).await.unwrap().len(), 2);
    assert!(
        store
            .retention_plan(&rules, later)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn forget_rewrites_participants_and_is_audited(db: TestDb) {
    let store = db.open().await;
    let now = now_ms();
    let token = store
        .create_enrollment_token("acme", 3, now + 60_000, "admin-token")
        .await
        .unwrap();
    let a = store
        .redeem_enrollment_token_named(&token.secret, Some("phone-a"), now, None)
        .await
        .unwrap();
    let b = store
        .redeem_enrollment_token(&token.secret, now, None)
        .await
        .unwrap();
    // Rounds name clients 1 and 2: the two just enrolled.
    assert_eq!((a.client_id, b.client_id), (ClientId(1), ClientId(2)));
    let (job, _) = job_with_rounds(&store, "acme", 3, 3).await;
    let gone = store
        .forget_client(a.client_id, "principal:dpo", now)
        .await
        .unwrap();
    assert_eq!(gone.record.name.as_deref(), Some("phone-a"));
    assert_eq!(gone.rounds_rewritten, 3);
    assert!(matches!(
        store.authenticate(&a.credential).await,
        Err(StoreError::UnknownCredential)
    ));
    assert!(matches!(
        store.get_client(a.client_id).await,
        Err(StoreError::ClientNotFound(_))
    ));
    for r in store.job_history(job).await.unwrap() {
        assert_eq!(r.participants, vec![ClientId(0), ClientId(2)]);
    }
    assert!(store.get_client(b.client_id).await.is_ok(), "others stay");
    let entry = store
        .audit_entries(0, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.seq == gone.audit_seq)
        .unwrap();
    assert_eq!(
        (
            entry.action.as_str(),
            entry.resource.as_str(),
            entry.actor.as_str()
        ),
        ("client.forget", "client:1", "principal:dpo")
    );
    assert!(matches!(
        store.forget_client(a.client_id, "principal:dpo", now).await,
        Err(StoreError::ClientNotFound(_))
    ));
    // The inactive-client rule erases the same way, re-checking activity at apply time.
    let rules = RetentionRules {
        inactive_clients_ms: Some(1000),
        ..RetentionRules::default()
    };
    let later = now + 5000;
    let plan = store.retention_plan(&rules, later).await.unwrap();
    assert_eq!(ids(&plan), BTreeSet::from(["2".to_owned()]));
    store.touch_client(b.client_id, later).await.unwrap();
    let done = store
        .retention_apply(&plan, &rules, "system:retention", later)
        .await
        .unwrap();
    assert!(done.deleted.is_empty());
    assert_eq!(done.skipped.len(), 1, "seen again since the plan: kept");
    assert!(store.get_client(b.client_id).await.is_ok());
}

async fn audit_entries_go_only_before_a_checkpoint(db: TestDb) {
    let store = db.open().await;
    for i in 0..5 {
        store
            .audit(&AuditEvent::new(
                "admin-token",
                "job.cancel",
                format!("job:{i}"),
            ))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rules = RetentionRules {
        audit_ms: Some(1),
        ..RetentionRules::default()
    };
    assert!(
        store
            .retention_plan(&rules, now_ms())
            .await
            .unwrap()
            .is_empty(),
        "no checkpoint: nothing vouches for a shortened log"
    );
    let checkpoint = store
        .audit(&AuditEvent::new("system", "audit.checkpoint", "audit:head"))
        .await
        .unwrap();
    assert_eq!(checkpoint, 6);
    store
        .audit(&AuditEvent::new("admin-token", "job.cancel", "job:9"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let now = now_ms();
    let plan = store.retention_plan(&rules, now).await.unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].kind, RetentionKind::AuditEntries);
    assert_eq!(plan[0].id, "1..=5");
    let done = store
        .retention_apply(&plan, &rules, "admin-token", now)
        .await
        .unwrap();
    assert_eq!(done.audit_seqs, vec![8]);
    let left: Vec<u64> = store
        .audit_entries(0, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![6, 7, 8]);
    let v = store.audit_verify().await.unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.first_seq, Some(6));
}
