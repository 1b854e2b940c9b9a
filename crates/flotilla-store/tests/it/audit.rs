//! The audit chain: appends, verification, and tampering found, on SQLite and PostgreSQL.

use crate::common;

use common::{TestDb, both_backends};
use flotilla_store::{AuditEvent, AuditOutcome, GENESIS_HASH};
use serde_json::json;

both_backends!(
    appends_chain_and_verify,
    altered_removed_and_truncated_entries_are_named,
    concurrent_appends_make_one_chain
);

fn event(i: u32) -> AuditEvent {
    AuditEvent::new("principal:alice", "job.cancel", format!("job:{i}"))
        .tenant("acme")
        .details(json!({ "reason": format!("test {i}") }))
}

async fn appends_chain_and_verify(db: TestDb) {
    let store = db.open().await;
    let v = store.audit_verify().await.expect("verify empty");
    assert!(v.ok(), "{v:?}");
    assert_eq!((v.entries, v.head_seq), (0, 0));
    for i in 1..=5 {
        assert_eq!(store.audit(&event(i)).await.expect("append"), u64::from(i));
    }
    store
        .audit(
            &AuditEvent::new("admin-token", "auth.failure", "admin-api")
                .outcome(AuditOutcome::Denied)
                .details(json!({ "count": 3 })),
        )
        .await
        .expect("append");
    let all = store.audit_entries(0, None, 100).await.expect("entries");
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].prev_hash, GENESIS_HASH);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    assert_eq!(all[5].tenant, None);
    assert_eq!(all[5].outcome, "denied");
    assert_eq!(
        store
            .audit_entries(0, Some("acme"), 100)
            .await
            .unwrap()
            .len(),
        5
    );
    assert_eq!(store.audit_entries(4, None, 1).await.unwrap()[0].seq, 5);
    let v = store.audit_verify().await.expect("verify");
    assert!(v.ok(), "{v:?}");
    assert_eq!((v.entries, v.last_seq, v.head_seq), (6, Some(6), 6));
    // Reopening keeps the chain.
    drop(store);
    let store = db.open().await;
    assert!(store.audit_verify().await.unwrap().ok());
}

async fn altered_removed_and_truncated_entries_are_named(db: TestDb) {
    let store = db.open().await;
    for i in 1..=8 {
        store.audit(&event(i)).await.expect("append");
    }
    let raw = db.raw().await;
    // One detail changed.
    sqlx::query(
        "UPDATE audit_log SET details_json = '{\"reason\":\"nothing to see\"}' WHERE seq = 3",
    )
    .execute(&raw)
    .await
    .unwrap();
    let v = store.audit_verify().await.unwrap();
    let p = v.problem.expect("altered entry found");
    assert_eq!((p.seq, p.kind.as_str()), (3, "altered"), "{}", p.message);
    assert!(p.message.contains("audit entry 3"), "{}", p.message);
    // Restored: verifies again.
    sqlx::query("UPDATE audit_log SET details_json = '{\"reason\":\"test 3\"}' WHERE seq = 3")
        .execute(&raw)
        .await
        .unwrap();
    assert!(store.audit_verify().await.unwrap().ok());
    // A middle entry removed.
    let five = store.audit_entries(4, None, 1).await.unwrap().remove(0);
    sqlx::query("DELETE FROM audit_log WHERE seq = 5")
        .execute(&raw)
        .await
        .unwrap();
    let p = store.audit_verify().await.unwrap().problem.expect("gap");
    assert_eq!((p.seq, p.kind.as_str()), (5, "removed"), "{}", p.message);
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor, tenant, action, resource, outcome, \
         details_json, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(5i64)
    .bind(five.at_ms)
    .bind(&five.actor)
    .bind(five.tenant.as_deref())
    .bind(&five.action)
    .bind(&five.resource)
    .bind(&five.outcome)
    .bind(&five.details_json)
    .bind(&five.prev_hash)
    .bind(&five.hash)
    .execute(&raw)
    .await
    .unwrap();
    assert!(store.audit_verify().await.unwrap().ok());
    // The last rows deleted: the head still records them.
    sqlx::query("DELETE FROM audit_log WHERE seq >= 7")
        .execute(&raw)
        .await
        .unwrap();
    let p = store.audit_verify().await.unwrap().problem.expect("tail");
    assert_eq!((p.seq, p.kind.as_str()), (7, "removed"), "{}", p.message);
}

async fn concurrent_appends_make_one_chain(db: TestDb) {
    let store = db.open().await;
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                s.audit(&event(t * 100 + i)).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = store.audit_verify().await.unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!((v.entries, v.head_seq), (40, 40));
}
