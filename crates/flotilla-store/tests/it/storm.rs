//! An enrollment storm: many clients enrolling at once through one store, each followed by what the
//! coordinator does for the new client's first call (authenticate it, record it as seen). Every
//! call must succeed: a busy store makes callers wait their turn, it does not refuse them. (SQLite
//! answered `database is locked` to some enrollments of 10,000 clients 32 at a time: its busy
//! handler polls with growing sleeps, so a writer that has waited longest polls least often and can
//! lose the lock to newer writers for the whole busy timeout.) SQLite and PostgreSQL.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb, both_backends, now_ms};
use flotilla_store::{Store, StoreError};

both_backends!(
    storm_with_the_default_pool,
    storm_with_a_connection_per_task
);

/// Enrollments in flight at once.
const TASKS: usize = 64;
/// Enrollments per task.
const EACH: usize = 50;
const FAR: i64 = i64::MAX / 2;

/// The configuration the coordinator runs with (8 connections).
async fn storm_with_the_default_pool(db: TestDb) {
    storm(db.open().await).await;
}

/// As many connections as enrollments in flight: the most writers contending at once.
async fn storm_with_a_connection_per_task(db: TestDb) {
    let mut config = db.config.clone();
    config.max_connections = TASKS as u32;
    storm(Store::open(&config).await.unwrap()).await;
}

async fn storm(store: Store) {
    let total = TASKS * EACH;
    let token = store
        .create_enrollment_token("acme", total as u32, FAR, "admin")
        .await
        .unwrap();
    let secret = Arc::new(token.secret);
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, secret, barrier) = (store.clone(), secret.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut failures = Vec::new();
                for i in 0..EACH {
                    let call = Instant::now();
                    let mut step = "redeem";
                    let enrolled: Result<(), StoreError> = async {
                        let now = now_ms();
                        let name = format!("storm-{t}-{i}");
                        let e = store
                            .redeem_enrollment_token_named(
                                &secret,
                                Some(&name),
                                now,
                                Some(now + 3_600_000),
                            )
                            .await?;
                        step = "authenticate";
                        let client = store.authenticate(&e.credential).await?;
                        step = "touch";
                        store.touch_client(client.client_id, now_ms()).await
                    }
                    .await;
                    if let Err(e) = enrolled {
                        failures.push((format!("{step}: {e}"), call.elapsed()));
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures: Vec<(String, Duration)> = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {total} enrollments failed (storm took {elapsed:.2?}), e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)],
    );
    let clients = store.list_clients(Some("acme")).await.unwrap();
    assert_eq!(clients.len(), total);
    assert!(clients.iter().all(|c| c.last_seen_ms.is_some()));
    // One enrollment entry per client (and the token's) in one unbroken chain.
    let audit = store.audit_verify().await.unwrap();
    assert!(audit.ok(), "{audit:?}");
    assert_eq!(audit.entries, total as u64 + 1);
}
