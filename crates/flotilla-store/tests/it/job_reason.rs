//! Reasons recorded with job state changes, each test run against SQLite and PostgreSQL.

use crate::common;

use common::{TestDb, both_backends};
use flotilla_store::{JobState, MAX_STATE_REASON_BYTES, StoreError};
use serde_json::json;

both_backends!(
    reason_is_written_with_the_state_and_survives_reopen,
    reason_is_bounded_and_kept_by_no_op
);

async fn reason_is_written_with_the_state_and_survives_reopen(db: TestDb) {
    let store = db.open().await;
    let job = store
        .create_job("acme", "digits", &json!({}), 3)
        .await
        .expect("create");
    store
        .set_job_state(job, JobState::Running)
        .await
        .expect("start");
    assert_eq!(
        store.get_job(job).await.expect("get").state_reason,
        None,
        "a running job has no stored reason"
    );
    store
        .set_job_state_with_reason(
            job,
            JobState::Failed,
            Some("clients reported errors: input has 63 features, model expects 64 (3 clients)"),
            "admin",
        )
        .await
        .expect("fail");
    drop(store);
    let store = db.open().await;
    let rec = store.get_job(job).await.expect("get");
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(
        rec.state_reason.as_deref(),
        Some("clients reported errors: input has 63 features, model expects 64 (3 clients)")
    );
    let listed = store.list_jobs(None).await.expect("list");
    assert_eq!(listed[0].state_reason, rec.state_reason);
    // Terminal: no transition, and the reason is untouched.
    assert!(matches!(
        store
            .set_job_state_with_reason(job, JobState::Cancelled, Some("cancelled by bob"), "admin")
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));
    assert_eq!(
        store.get_job(job).await.expect("get").state_reason,
        rec.state_reason
    );
}

async fn reason_is_bounded_and_kept_by_no_op(db: TestDb) {
    let store = db.open().await;
    let job = store
        .create_job("acme", "digits", &json!({}), 3)
        .await
        .expect("create");
    store
        .set_job_state(job, JobState::Running)
        .await
        .expect("start");
    let long = format!(
        "cancelled by alice: {}\n{}",
        "x".repeat(3000),
        "second line"
    );
    store
        .set_job_state_with_reason(job, JobState::Cancelled, Some(&long), "admin")
        .await
        .expect("cancel");
    let reason = store
        .get_job(job)
        .await
        .expect("get")
        .state_reason
        .expect("reason");
    assert!(
        reason.len() <= MAX_STATE_REASON_BYTES,
        "{} bytes",
        reason.len()
    );
    assert!(
        reason.starts_with("cancelled by alice: xxx")
            && reason.ends_with('…')
            && !reason.contains('\n')
    );
    // Cancelling again is a no-op that keeps who cancelled first.
    store
        .set_job_state_with_reason(job, JobState::Cancelled, Some("cancelled by bob"), "admin")
        .await
        .expect("no-op");
    assert_eq!(
        store
            .get_job(job)
            .await
            .expect("get")
            .state_reason
            .as_deref(),
        Some(reason.as_str())
    );
    // Without a reason the column stays NULL.
    let other = store
        .create_job("acme", "digits", &json!({}), 3)
        .await
        .expect("create");
    store
        .set_job_state_with_reason(other, JobState::Cancelled, None, "admin")
        .await
        .expect("cancel");
    assert_eq!(store.get_job(other).await.expect("get").state_reason, None);
}
