//! Store behaviour, each test run against SQLite and PostgreSQL.

use crate::common;

use std::sync::Arc;

use common::{TestDb, both_backends, now_ms};
use flotilla_core::{ParamLayout, TensorSpec};
use flotilla_store::{ClientId, JobId, JobState, RoundCommit, Store, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Row;

both_backends!(
    enrollment_token_uses_expiry_and_unknown,
    concurrent_redemptions_respect_uses,
    secrets_are_stored_only_as_hashes,
    credential_authentication_and_revocation,
    credential_expiry,
    job_lifecycle,
    commit_round_refuses_sequential_duplicate,
    commit_round_exactly_once_under_concurrency,
    commit_round_refusals_change_nothing,
    history_is_in_round_order,
    reopen_keeps_everything_committed,
    load_running_jobs_for_recovery,
    model_blob_round_trip_and_idempotent_put,
    layout_is_kept_with_the_job,
    initial_model_is_named_before_the_first_commit,
    evaluation_is_recorded_after_the_commit,
);

const FAR: i64 = i64::MAX / 2;

/// Creates a running job of `rounds` rounds.
async fn running_job(store: &Store, tenant: &str, rounds: u64) -> JobId {
    let job = store
        .create_job(
            tenant,
            "digits",
            &json!({"model": "mlp", "seed": 7}),
            rounds,
        )
        .await
        .expect("create job");
    store
        .set_job_state(job, JobState::Running)
        .await
        .expect("start job");
    job
}

/// Puts a model for `round` and commits it.
async fn commit(store: &Store, job: JobId, round: u64, attempt: u32) -> Result<String, StoreError> {
    let key = store
        .put_model(job, round, format!("model {job} v{round}").into_bytes())
        .await?;
    let participants = [ClientId(1), ClientId(2 + round)];
    let metrics = json!({"loss": 1.0 / round as f64, "attempt": attempt});
    let machine = json!({"round": round + 1, "committed": round}).to_string();
    store
        .commit_round(
            job,
            round,
            &RoundCommit {
                attempt,
                participants: &participants,
                metrics: &metrics,
                model_blob_key: &key,
                dp_charge: None,
                machine_state_json: &machine,
            },
        )
        .await?;
    Ok(key)
}

async fn enrollment_token_uses_expiry_and_unknown(db: TestDb) {
    let store = db.open().await;
    let now = now_ms();
    let token = store
        .create_enrollment_token("acme", 2, now + 60_000, "admin")
        .await
        .unwrap();
    let a = store
        .redeem_enrollment_token(&token.secret, now, None)
        .await
        .unwrap();
    let b = store
        .redeem_enrollment_token(&token.secret, now, None)
        .await
        .unwrap();
    assert_ne!(a.client_id, b.client_id);
    assert_ne!(a.credential, b.credential);
    assert_eq!((a.tenant.as_str(), b.tenant.as_str()), ("acme", "acme"));
    match store
        .redeem_enrollment_token(&token.secret, now, None)
        .await
    {
        Err(StoreError::TokenUsedUp { token_id }) => assert_eq!(token_id, token.id),
        other => panic!("expected TokenUsedUp, got {other:?}"),
    }

    // Expiry is exclusive: valid strictly before expires_at_ms.
    let short = store
        .create_enrollment_token("acme", 5, now + 1_000, "admin")
        .await
        .unwrap();
    store
        .redeem_enrollment_token(&short.secret, now + 999, None)
        .await
        .unwrap();
    match store
        .redeem_enrollment_token(&short.secret, now + 1_000, None)
        .await
    {
        Err(StoreError::TokenExpired {
            token_id,
            expires_at_ms,
        }) => {
            assert_eq!((token_id, expires_at_ms), (short.id, now + 1_000));
        }
        other => panic!("expected TokenExpired, got {other:?}"),
    }

    assert!(matches!(
        store
            .redeem_enrollment_token("flt_enroll_nope", now, None)
            .await,
        Err(StoreError::UnknownToken)
    ));
    assert!(matches!(
        store.redeem_enrollment_token("", now, None).await,
        Err(StoreError::UnknownToken)
    ));
    assert!(matches!(
        store.create_enrollment_token("acme", 0, FAR, "admin").await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.create_enrollment_token("", 1, FAR, "admin").await,
        Err(StoreError::InvalidArgument(_))
    ));
    // Three redemptions succeeded in all; refusals enrolled nobody.
    assert_eq!(store.list_clients(None).await.unwrap().len(), 3);
}

async fn concurrent_redemptions_respect_uses(db: TestDb) {
    let store = db.open().await;
    let token = store
        .create_enrollment_token("acme", 3, FAR, "admin")
        .await
        .unwrap();
    let secret = Arc::new(token.secret);
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (store, secret, barrier) = (store.clone(), secret.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.redeem_enrollment_token(&secret, now_ms(), None).await
            })
        })
        .collect();
    let (mut ok, mut used_up) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::TokenUsedUp { .. }) => used_up += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, used_up), (3, 7));
    assert_eq!(store.list_clients(Some("acme")).await.unwrap().len(), 3);
}

async fn secrets_are_stored_only_as_hashes(db: TestDb) {
    let store = db.open().await;
    let token = store
        .create_enrollment_token("acme", 1, FAR, "admin")
        .await
        .unwrap();
    let enrolled = store
        .redeem_enrollment_token(&token.secret, now_ms(), None)
        .await
        .unwrap();
    assert!(token.secret.len() >= 64 && enrolled.credential.len() >= 64);
    let raw = db.raw().await;
    let token_hash: String = sqlx::query("SELECT secret_sha256 FROM enrollment_tokens")
        .fetch_one(&raw)
        .await
        .unwrap()
        .get("secret_sha256");
    let cred_hash: String = sqlx::query("SELECT credential_sha256 FROM clients")
        .fetch_one(&raw)
        .await
        .unwrap()
        .get("credential_sha256");
    assert_eq!(
        token_hash,
        hex::encode(Sha256::digest(token.secret.as_bytes()))
    );
    assert_eq!(
        cred_hash,
        hex::encode(Sha256::digest(enrolled.credential.as_bytes()))
    );
    raw.close().await;
}

async fn credential_authentication_and_revocation(db: TestDb) {
    let store = db.open().await;
    let t1 = store
        .create_enrollment_token("acme", 2, FAR, "admin")
        .await
        .unwrap();
    let t2 = store
        .create_enrollment_token("globex", 1, FAR, "admin")
        .await
        .unwrap();
    let a = store
        .redeem_enrollment_token(&t1.secret, 1_000, None)
        .await
        .unwrap();
    let b = store
        .redeem_enrollment_token(&t1.secret, 1_000, None)
        .await
        .unwrap();
    let c = store
        .redeem_enrollment_token(&t2.secret, 1_000, None)
        .await
        .unwrap();

    let rec = store.authenticate(&a.credential).await.unwrap();
    assert_eq!(
        (rec.client_id, rec.tenant.as_str(), rec.revoked),
        (a.client_id, "acme", false)
    );
    assert_eq!(rec.last_seen_ms, None);
    assert!(matches!(
        store.authenticate("flt_client_nope").await,
        Err(StoreError::UnknownCredential)
    ));
    // The enrollment secret is not a credential.
    assert!(matches!(
        store.authenticate(&t1.secret).await,
        Err(StoreError::UnknownCredential)
    ));

    store.touch_client(a.client_id, 5_000).await.unwrap();
    assert_eq!(
        store
            .authenticate(&a.credential)
            .await
            .unwrap()
            .last_seen_ms,
        Some(5_000)
    );

    store.revoke_client(b.client_id, "admin").await.unwrap();
    store.revoke_client(b.client_id, "admin").await.unwrap(); // idempotent
    match store.authenticate(&b.credential).await {
        Err(StoreError::ClientRevoked(id)) => assert_eq!(id, b.client_id),
        other => panic!("expected ClientRevoked, got {other:?}"),
    }
    assert!(store.get_client(b.client_id).await.unwrap().revoked);
    assert!(store.authenticate(&a.credential).await.is_ok());
    assert!(matches!(
        store.revoke_client(ClientId(9_999), "admin").await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert!(matches!(
        store.touch_client(ClientId(9_999), 1).await,
        Err(StoreError::ClientNotFound(_))
    ));

    let acme: Vec<_> = store.list_clients(Some("acme")).await.unwrap();
    assert_eq!(
        acme.iter()
            .map(|c| (c.client_id, c.revoked))
            .collect::<Vec<_>>(),
        vec![(a.client_id, false), (b.client_id, true)]
    );
    let all = store.list_clients(None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].client_id, c.client_id);
    assert_eq!(all[2].tenant, "globex");
}

async fn credential_expiry(db: TestDb) {
    let store = db.open().await;
    let token = store
        .create_enrollment_token("acme", 4, FAR, "admin")
        .await
        .unwrap();
    // An expiry that is not after the enrollment time is refused and uses nothing up.
    for bad in [1_000, 999] {
        assert!(matches!(
            store
                .redeem_enrollment_token(&token.secret, 1_000, Some(bad))
                .await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
    assert!(store.list_clients(None).await.unwrap().is_empty());

    let a = store
        .redeem_enrollment_token(&token.secret, 1_000, Some(10_000))
        .await
        .unwrap();
    assert_eq!(a.credential_expires_at_ms, Some(10_000));
    let forever = store
        .redeem_enrollment_token(&token.secret, 1_000, None)
        .await
        .unwrap();
    assert_eq!(forever.credential_expires_at_ms, None);

    // Valid strictly before the expiry.
    let rec = store.authenticate_at(&a.credential, 9_999).await.unwrap();
    assert_eq!(
        (rec.client_id, rec.credential_expires_at_ms),
        (a.client_id, Some(10_000))
    );
    store.touch_client(a.client_id, 9_999).await.unwrap();
    let before = store.list_clients(None).await.unwrap();
    for now in [10_000, 10_001, i64::MAX] {
        match store.authenticate_at(&a.credential, now).await {
            Err(StoreError::CredentialExpired {
                client_id,
                expired_at_ms,
            }) => assert_eq!((client_id, expired_at_ms), (a.client_id, 10_000)),
            other => panic!("expected CredentialExpired at {now}, got {other:?}"),
        }
    }
    // The system clock is long past 10 s after the epoch.
    assert!(matches!(
        store.authenticate(&a.credential).await,
        Err(StoreError::CredentialExpired { .. })
    ));
    // Refusing an expired credential changes nothing.
    assert_eq!(store.list_clients(None).await.unwrap(), before);
    let stored = store.get_client(a.client_id).await.unwrap();
    assert_eq!(
        (
            stored.revoked,
            stored.last_seen_ms,
            stored.credential_expires_at_ms
        ),
        (false, Some(9_999), Some(10_000))
    );

    // No expiry: valid at any time.
    assert_eq!(
        store
            .authenticate_at(&forever.credential, i64::MAX)
            .await
            .unwrap()
            .credential_expires_at_ms,
        None
    );

    // Revocation takes precedence over expiry, so a revoked client is not told to enroll again.
    let b = store
        .redeem_enrollment_token(&token.secret, 1_000, Some(2_000))
        .await
        .unwrap();
    store.revoke_client(b.client_id, "admin").await.unwrap();
    assert!(matches!(
        store.authenticate_at(&b.credential, 5_000).await,
        Err(StoreError::ClientRevoked(id)) if id == b.client_id
    ));

    // Enrolling again gives a new client with a new credential; the old one stays expired.
    let again = store
        .redeem_enrollment_token(&token.secret, 20_000, Some(30_000))
        .await
        .unwrap();
    assert_ne!(again.client_id, a.client_id);
    assert_ne!(again.credential, a.credential);
    assert_eq!(
        store
            .authenticate_at(&again.credential, 20_001)
            .await
            .unwrap()
            .client_id,
        again.client_id
    );
    assert!(matches!(
        store.authenticate_at(&a.credential, 20_001).await,
        Err(StoreError::CredentialExpired { .. })
    ));

    // The expiry survives a reopen and is stored beside the hash, never the credential.
    store.close().await;
    drop(store);
    let store = db.open().await;
    assert_eq!(
        store
            .get_client(a.client_id)
            .await
            .unwrap()
            .credential_expires_at_ms,
        Some(10_000)
    );
    let raw = db.raw().await;
    let row = sqlx::query(
        "SELECT credential_sha256, credential_expires_at_ms FROM clients WHERE id = $1",
    )
    .bind(a.client_id.0 as i64)
    .fetch_one(&raw)
    .await
    .unwrap();
    let hash: String = row.try_get("credential_sha256").unwrap();
    let expires: Option<i64> = row.try_get("credential_expires_at_ms").unwrap();
    assert_eq!(hash, hex::encode(Sha256::digest(a.credential.as_bytes())));
    assert_eq!(expires, Some(10_000));
    raw.close().await;
}

async fn job_lifecycle(db: TestDb) {
    let store = db.open().await;
    let spec = json!({"model": "mlp", "rounds": 2, "nested": {"lr": 0.05}});
    let job = store.create_job("acme", "digits", &spec, 2).await.unwrap();
    let other = store
        .create_job("globex", "fmnist", &json!({}), 5)
        .await
        .unwrap();
    let rec = store.get_job(job).await.unwrap();
    assert_eq!(rec.state, JobState::Pending);
    assert_eq!((rec.tenant.as_str(), rec.name.as_str()), ("acme", "digits"));
    assert_eq!(rec.spec, spec);
    assert_eq!(
        (rec.rounds_total, rec.rounds_completed, rec.model_version),
        (2, 0, 0)
    );
    assert_eq!(rec.model_blob_key, None);

    let ids =
        |jobs: Vec<flotilla_store::JobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_jobs(None).await.unwrap()), vec![job, other]);
    assert_eq!(
        ids(store.list_jobs(Some("globex")).await.unwrap()),
        vec![other]
    );
    assert!(store.list_jobs(Some("nobody")).await.unwrap().is_empty());

    // Completed is reached only by committing; pending cannot be re-entered.
    assert!(matches!(
        store.set_job_state(job, JobState::Completed).await,
        Err(StoreError::InvalidTransition {
            from: JobState::Pending,
            to: JobState::Completed,
            ..
        })
    ));
    store.set_job_state(job, JobState::Running).await.unwrap();
    store.set_job_state(job, JobState::Running).await.unwrap(); // no-op
    assert!(matches!(
        store.set_job_state(job, JobState::Pending).await,
        Err(StoreError::InvalidTransition {
            from: JobState::Running,
            to: JobState::Pending,
            ..
        })
    ));
    commit(&store, job, 1, 1).await.unwrap();
    assert_eq!(store.get_job(job).await.unwrap().state, JobState::Running);
    let key2 = commit(&store, job, 2, 1).await.unwrap();
    let done = store.get_job(job).await.unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!((done.rounds_completed, done.model_version), (2, 2));
    assert_eq!(done.model_blob_key.as_deref(), Some(key2.as_str()));
    assert!(matches!(
        store.set_job_state(job, JobState::Cancelled).await,
        Err(StoreError::InvalidTransition {
            from: JobState::Completed,
            ..
        })
    ));
    store.set_job_state(job, JobState::Completed).await.unwrap(); // no-op

    store
        .set_job_state(other, JobState::Cancelled)
        .await
        .unwrap();
    assert_eq!(
        store.get_job(other).await.unwrap().state,
        JobState::Cancelled
    );
    assert!(matches!(
        store.set_job_state(other, JobState::Running).await,
        Err(StoreError::InvalidTransition {
            from: JobState::Cancelled,
            ..
        })
    ));
    let failing = running_job(&store, "acme", 3).await;
    store
        .set_job_state(failing, JobState::Failed)
        .await
        .unwrap();

    assert!(matches!(
        store.get_job(JobId(9_999)).await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.set_job_state(JobId(9_999), JobState::Running).await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.job_history(JobId(9_999)).await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.create_job("acme", "x", &json!({}), 0).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(
        "cancelled".parse::<JobState>().unwrap(),
        JobState::Cancelled
    );
    assert!("done".parse::<JobState>().is_err());
}

async fn commit_round_refuses_sequential_duplicate(db: TestDb) {
    let store = db.open().await;
    let job = running_job(&store, "acme", 5).await;
    let key = commit(&store, job, 1, 1).await.unwrap();
    let before_job = store.get_job(job).await.unwrap();
    let before_history = store.job_history(job).await.unwrap();

    // Same round again, even as another attempt with another model and snapshot.
    let other_key = store
        .put_model(job, 1, b"a different model".to_vec())
        .await
        .unwrap();
    let err = store
        .commit_round(
            job,
            1,
            &RoundCommit {
                attempt: 2,
                participants: &[ClientId(42)],
                metrics: &json!({"loss": 0.0}),
                model_blob_key: &other_key,
                dp_charge: None,
                machine_state_json: "{\"other\":true}",
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyCommitted { job_id, round: 1 } if job_id == job),
        "{err}"
    );
    assert!(matches!(
        commit(&store, job, 1, 1).await,
        Err(StoreError::AlreadyCommitted { .. })
    ));

    let after_job = store.get_job(job).await.unwrap();
    assert_eq!(after_job.rounds_completed, 1);
    assert_eq!(after_job.model_blob_key.as_deref(), Some(key.as_str()));
    assert_eq!(after_job.updated_at_ms, before_job.updated_at_ms);
    assert_eq!(store.job_history(job).await.unwrap(), before_history);
    let recovered = store.load_running_jobs().await.unwrap();
    assert_eq!(
        recovered[0].machine_state_json.as_deref(),
        Some(json!({"round": 2, "committed": 1}).to_string().as_str())
    );
}

async fn commit_round_exactly_once_under_concurrency(db: TestDb) {
    // Two stores on one database stand for two coordinator processes; each has several tasks.
    let stores = [db.open().await, db.open().await];
    let job = running_job(&stores[0], "acme", 10).await;
    let key = stores[0]
        .put_model(job, 1, b"round one".to_vec())
        .await
        .unwrap();
    const RACERS: usize = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = stores[i % 2].clone();
            let (barrier, key) = (barrier.clone(), key.clone());
            tokio::spawn(async move {
                let metrics = json!({"racer": i});
                let machine = json!({"racer": i}).to_string();
                let participants = [ClientId(i as u64)];
                barrier.wait().await;
                store
                    .commit_round(
                        job,
                        1,
                        &RoundCommit {
                            attempt: 1,
                            participants: &participants,
                            metrics: &metrics,
                            model_blob_key: &key,
                            dp_charge: None,
                            machine_state_json: &machine,
                        },
                    )
                    .await
                    .map(|_| i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(StoreError::AlreadyCommitted { round: 1, .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one commit must win");
    let winner = winners[0];

    let raw = db.raw().await;
    let rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM rounds")
        .fetch_one(&raw)
        .await
        .unwrap()
        .get("n");
    assert_eq!(rows, 1);
    raw.close().await;
    let history = stores[1].job_history(job).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].metrics, json!({"racer": winner}));
    assert_eq!(history[0].participants, vec![ClientId(winner as u64)]);
    let rec = stores[1].get_job(job).await.unwrap();
    assert_eq!((rec.rounds_completed, rec.model_version), (1, 1));
    let recovered = stores[1].load_running_jobs().await.unwrap();
    assert_eq!(
        recovered[0].machine_state_json,
        Some(json!({"racer": winner}).to_string())
    );
}

async fn commit_round_refusals_change_nothing(db: TestDb) {
    let store = db.open().await;
    let pending = store.create_job("acme", "p", &json!({}), 3).await.unwrap();
    match commit(&store, pending, 1, 1).await {
        Err(StoreError::JobNotRunning {
            state: JobState::Pending,
            ..
        }) => {}
        other => panic!("expected JobNotRunning, got {other:?}"),
    }
    assert!(store.job_history(pending).await.unwrap().is_empty());

    let job = running_job(&store, "acme", 3).await;
    match commit(&store, job, 2, 1).await {
        Err(StoreError::RoundOutOfOrder {
            expected: 1,
            got: 2,
            ..
        }) => {}
        other => panic!("expected RoundOutOfOrder, got {other:?}"),
    }
    assert!(store.job_history(job).await.unwrap().is_empty());
    commit(&store, job, 1, 3).await.unwrap();

    // The model must be put first.
    let missing = format!("job-{}/v2-{}.bin", job.0, "0".repeat(64));
    let refused = store
        .commit_round(
            job,
            2,
            &RoundCommit {
                attempt: 1,
                participants: &[],
                metrics: &json!(null),
                model_blob_key: &missing,
                dp_charge: None,
                machine_state_json: "{}",
            },
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::BlobNotFound(_))),
        "{refused:?}"
    );
    let key = store.put_model(job, 2, b"two".to_vec()).await.unwrap();
    let not_json = store
        .commit_round(
            job,
            2,
            &RoundCommit {
                attempt: 1,
                participants: &[],
                metrics: &json!(null),
                model_blob_key: &key,
                dp_charge: None,
                machine_state_json: "{not json",
            },
        )
        .await;
    assert!(
        matches!(not_json, Err(StoreError::InvalidArgument(_))),
        "{not_json:?}"
    );
    assert!(matches!(
        commit(&store, JobId(9_999), 1, 1).await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        commit(&store, job, 0, 1).await,
        Err(StoreError::InvalidArgument(_))
    ));
    // Cancelled jobs take no more rounds.
    store.set_job_state(job, JobState::Cancelled).await.unwrap();
    assert!(matches!(
        commit(&store, job, 2, 1).await,
        Err(StoreError::JobNotRunning {
            state: JobState::Cancelled,
            ..
        })
    ));
    let rec = store.get_job(job).await.unwrap();
    assert_eq!((rec.rounds_completed, rec.model_version), (1, 1));
    assert_eq!(store.job_history(job).await.unwrap().len(), 1);
}

async fn history_is_in_round_order(db: TestDb) {
    let store = db.open().await;
    let job = running_job(&store, "acme", 4).await;
    let other = running_job(&store, "acme", 4).await;
    let mut keys = Vec::new();
    for round in 1..=3u64 {
        keys.push(commit(&store, job, round, round as u32).await.unwrap());
        commit(&store, other, round, 1).await.unwrap();
    }
    let history = store.job_history(job).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.round).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (r, key) in history.iter().zip(&keys) {
        assert_eq!(r.job_id, job);
        assert_eq!(r.attempt as u64, r.round);
        assert_eq!(r.model_version, r.round);
        assert_eq!(&r.model_blob_key, key);
        assert_eq!(r.participants, vec![ClientId(1), ClientId(2 + r.round)]);
        assert_eq!(r.metrics["attempt"], json!(r.round));
    }
    assert!(
        history
            .windows(2)
            .all(|w| w[0].committed_at_ms <= w[1].committed_at_ms)
    );
    let empty = store.create_job("acme", "e", &json!({}), 1).await.unwrap();
    assert!(store.job_history(empty).await.unwrap().is_empty());
}

async fn reopen_keeps_everything_committed(db: TestDb) {
    let store = db.open().await;
    let token = store
        .create_enrollment_token("acme", 3, FAR, "admin")
        .await
        .unwrap();
    let a = store
        .redeem_enrollment_token(&token.secret, 10, None)
        .await
        .unwrap();
    let b = store
        .redeem_enrollment_token(&token.secret, 10, None)
        .await
        .unwrap();
    store.revoke_client(b.client_id, "admin").await.unwrap();
    let job = running_job(&store, "acme", 5).await;
    commit(&store, job, 1, 1).await.unwrap();
    let key2 = commit(&store, job, 2, 2).await.unwrap();
    let job_before = store.get_job(job).await.unwrap();
    let history_before = store.job_history(job).await.unwrap();
    let clients_before = store.list_clients(None).await.unwrap();
    // Drop every connection, as a killed process would.
    store.close().await;
    drop(store);

    let store = db.open().await;
    assert_eq!(store.get_job(job).await.unwrap(), job_before);
    assert_eq!(store.job_history(job).await.unwrap(), history_before);
    assert_eq!(store.list_clients(None).await.unwrap(), clients_before);
    assert_eq!(
        store.authenticate(&a.credential).await.unwrap().client_id,
        a.client_id
    );
    assert!(matches!(
        store.authenticate(&b.credential).await,
        Err(StoreError::ClientRevoked(_))
    ));
    // The token has exactly one use left.
    store
        .redeem_enrollment_token(&token.secret, 10, None)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem_enrollment_token(&token.secret, 10, None).await,
        Err(StoreError::TokenUsedUp { .. })
    ));
    let recovered = store.load_running_jobs().await.unwrap();
    assert_eq!(recovered.len(), 1);
    let last = recovered[0].last_round.as_ref().expect("last round");
    assert_eq!(
        (last.round, last.model_blob_key.as_str()),
        (2, key2.as_str())
    );
    assert_eq!(
        store.get_model(&key2).await.unwrap(),
        format!("model {job} v2").into_bytes()
    );
    // Committed rounds stay committed; the job continues where it stopped.
    assert!(matches!(
        commit(&store, job, 2, 3).await,
        Err(StoreError::AlreadyCommitted { .. })
    ));
    commit(&store, job, 3, 1).await.unwrap();
    store.close().await;
    drop(store);
    // A third open (migrations already applied) still works.
    let store = db.open().await;
    assert_eq!(store.get_job(job).await.unwrap().rounds_completed, 3);
}

async fn load_running_jobs_for_recovery(db: TestDb) {
    let store = db.open().await;
    assert!(store.load_running_jobs().await.unwrap().is_empty());
    let fresh = running_job(&store, "acme", 3).await;
    let progressed = running_job(&store, "globex", 3).await;
    let finished = running_job(&store, "acme", 1).await;
    let _pending = store
        .create_job("acme", "later", &json!({}), 3)
        .await
        .unwrap();
    commit(&store, progressed, 1, 1).await.unwrap();
    let key = commit(&store, progressed, 2, 4).await.unwrap();
    commit(&store, finished, 1, 1).await.unwrap();

    let recovered = store.load_running_jobs().await.unwrap();
    assert_eq!(
        recovered.iter().map(|r| r.job.id).collect::<Vec<_>>(),
        vec![fresh, progressed]
    );
    assert_eq!(recovered[0].last_round, None);
    assert_eq!(recovered[0].machine_state_json, None);
    assert_eq!(recovered[0].job.spec, json!({"model": "mlp", "seed": 7}));
    let p = &recovered[1];
    assert_eq!(p.job.tenant, "globex");
    assert_eq!(p.job.model_blob_key.as_deref(), Some(key.as_str()));
    let last = p.last_round.as_ref().unwrap();
    assert_eq!(
        (last.round, last.attempt, last.model_blob_key.as_str()),
        (2, 4, key.as_str())
    );
    assert_eq!(
        p.machine_state_json,
        Some(json!({"round": 3, "committed": 2}).to_string())
    );
}

async fn model_blob_round_trip_and_idempotent_put(db: TestDb) {
    let store = db.open().await;
    let job = running_job(&store, "acme", 3).await;
    let bytes: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let key = store.put_model(job, 1, bytes.clone()).await.unwrap();
    assert!(key.starts_with(&format!("job-{}/v1-", job.0)), "{key}");
    assert!(key.contains(&hex::encode(Sha256::digest(&bytes))), "{key}");
    assert_eq!(store.get_model(&key).await.unwrap(), bytes);
    assert_eq!(store.put_model(job, 1, bytes.clone()).await.unwrap(), key);
    assert_eq!(store.get_model(&key).await.unwrap(), bytes);
    let other = store.put_model(job, 1, b"other".to_vec()).await.unwrap();
    assert_ne!(other, key);
    let empty = store.put_model(job, 0, Vec::new()).await.unwrap();
    assert!(store.get_model(&empty).await.unwrap().is_empty());

    let missing = format!("job-{}/v9-{}.bin", job.0, "0".repeat(64));
    assert!(matches!(
        store.get_model(&missing).await,
        Err(StoreError::BlobNotFound(_))
    ));
    for bad in ["", "../etc/passwd", "job-1/v1-abc.bin", "job-1/../../x"] {
        assert!(
            matches!(
                store.get_model(bad).await,
                Err(StoreError::InvalidBlobKey(_))
            ),
            "{bad}"
        );
    }

    // Blobs live under the configured directory; tampering is detected on read, and a re-put
    // of the right bytes repairs a blob of the wrong size.
    let path = std::path::Path::new(&db.config.blob_url).join(&key);
    assert!(path.is_file(), "{}", path.display());
    std::fs::write(&path, b"tampered").unwrap();
    assert!(matches!(
        store.get_model(&key).await,
        Err(StoreError::BlobCorrupt(_))
    ));
    assert_eq!(store.put_model(job, 1, bytes.clone()).await.unwrap(), key);
    assert_eq!(store.get_model(&key).await.unwrap(), bytes);
}

async fn layout_is_kept_with_the_job(db: TestDb) {
    let store = db.open().await;
    let layout = ParamLayout::new(vec![
        TensorSpec::new("a", [3]),
        TensorSpec::new("b", [2, 2]),
    ]);
    let with = store
        .create_job_with_layout("acme", "custom", &json!({}), 2, Some(&layout))
        .await
        .unwrap();
    let without = running_job(&store, "acme", 2).await;
    assert_eq!(store.job_layout(with).await.unwrap(), Some(layout.clone()));
    assert_eq!(store.job_layout(without).await.unwrap(), None);
    assert!(matches!(
        store.job_layout(JobId(999)).await,
        Err(StoreError::JobNotFound(_))
    ));
    store.set_job_state(with, JobState::Running).await.unwrap();
    let recovered = store.load_running_jobs().await.unwrap();
    let layouts: Vec<_> = recovered
        .iter()
        .map(|r| (r.job.id, r.layout.clone()))
        .collect();
    assert_eq!(layouts, vec![(with, Some(layout)), (without, None)]);
}

async fn initial_model_is_named_before_the_first_commit(db: TestDb) {
    let store = db.open().await;
    let job = store
        .create_job_with_layout("acme", "custom", &json!({}), 2, None)
        .await
        .unwrap();
    let key = store.put_model(job, 0, vec![0, 0, 128, 63]).await.unwrap();
    store.set_initial_model(job, &key).await.unwrap();
    assert_eq!(
        store.get_job(job).await.unwrap().model_blob_key.as_deref(),
        Some(key.as_str())
    );
    // Named, so the sweep keeps it, and recovery before the first commit finds it.
    assert_eq!(store.sweep_orphan_blobs(Some(job)).await.unwrap(), 0);
    store.set_job_state(job, JobState::Running).await.unwrap();
    let recovered = store.load_running_job(job).await.unwrap().unwrap();
    assert_eq!(recovered.job.model_blob_key.as_deref(), Some(key.as_str()));
    assert_eq!(recovered.machine_state_json, None);
    assert_eq!(store.get_model(&key).await.unwrap(), vec![0, 0, 128, 63]);
    // Once a round committed, the initial model cannot be set any more.
    let committed = commit(&store, job, 1, 1).await.unwrap();
    assert!(matches!(
        store.set_initial_model(job, &key).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(
        store.get_job(job).await.unwrap().model_blob_key,
        Some(committed)
    );
    assert!(matches!(
        store.set_initial_model(JobId(999), &key).await,
        Err(StoreError::JobNotFound(_))
    ));
}

async fn evaluation_is_recorded_after_the_commit(db: TestDb) {
    let store = db.open().await;
    let job = running_job(&store, "acme", 1).await;
    let eval = json!({"eval_accuracy": 0.9, "eval_samples": 360});
    assert!(matches!(
        store.record_round_eval(job, 1, &eval).await,
        Err(StoreError::RoundNotCommitted { round: 1, .. })
    ));
    assert!(matches!(
        store.record_round_eval(JobId(999), 1, &eval).await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.record_round_eval(job, 1, &json!([1])).await,
        Err(StoreError::InvalidArgument(_))
    ));
    commit(&store, job, 1, 1).await.unwrap();
    // The last round completed the job: it can still be evaluated.
    assert_eq!(store.get_job(job).await.unwrap().state, JobState::Completed);
    store.record_round_eval(job, 1, &eval).await.unwrap();
    let want = json!({"loss": 1.0, "attempt": 1, "eval_accuracy": 0.9, "eval_samples": 360});
    assert_eq!(store.job_history(job).await.unwrap()[0].metrics, want);
    assert_eq!(
        store.get_round(job, 1).await.unwrap().unwrap().metrics,
        want
    );
    // A second evaluation replaces the first; the commit's own keys are never overwritten.
    store
        .record_round_eval(job, 1, &json!({"eval_accuracy": 0.5, "loss": 7.0}))
        .await
        .unwrap();
    assert_eq!(
        store.job_history(job).await.unwrap()[0].metrics,
        json!({"loss": 1.0, "attempt": 1, "eval_accuracy": 0.5})
    );
}
