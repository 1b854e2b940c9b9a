//! Every audited store change writes its entry in its own transaction (and a refused change writes
//! none); signed checkpoints catch what the plain chain cannot: a recomputed chain and a tail
//! deleted together with the head. SQLite and PostgreSQL.

use crate::common;

use common::{TestDb, both_backends};
use flotilla_store::{
    AuditEntry, AuditSigner, ClientId, DpCharge, JobState, RoundCommit, StoreError,
};
use serde_json::{Value, json};

both_backends!(
    each_change_writes_one_entry_and_refusals_none,
    checkpoints_catch_recomputed_chains_and_rewritten_heads,
    concurrent_changes_make_one_chain
);

const FAR: i64 = i64::MAX / 2;

fn details(e: &AuditEntry) -> Value {
    serde_json::from_str(&e.details_json).unwrap()
}

async fn entries(store: &flotilla_store::Store) -> Vec<AuditEntry> {
    store.audit_entries(0, None, 10_000).await.unwrap()
}

async fn each_change_writes_one_entry_and_refusals_none(db: TestDb) {
    let store = db.open().await;
    let token = store
        .create_enrollment_token("acme", 2, FAR, "principal:olga")
        .await
        .unwrap();
    let a = store
        .redeem_enrollment_token_named(&token.secret, Some("phone"), 1_000, Some(5_000))
        .await
        .unwrap();
    let b = store
        .redeem_enrollment_token(&token.secret, 1_000, None)
        .await
        .unwrap();
    // Refused: used up, unknown, bad tenant, unknown client. Nothing is written.
    let before = entries(&store).await.len();
    assert!(
        store
            .redeem_enrollment_token(&token.secret, 1_000, None)
            .await
            .is_err()
    );
    assert!(
        store
            .redeem_enrollment_token("flt_enroll_x", 1_000, None)
            .await
            .is_err()
    );
    assert!(
        store
            .create_enrollment_token("", 1, FAR, "admin-token")
            .await
            .is_err()
    );
    assert!(matches!(
        store.revoke_client(ClientId(999), "admin-token").await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert_eq!(entries(&store).await.len(), before);

    // An expired credential: audited on its first refusal only.
    for now in [5_000, 6_000, 7_000] {
        assert!(matches!(
            store.authenticate_at(&a.credential, now).await,
            Err(StoreError::CredentialExpired { .. })
        ));
    }
    // Revoked twice: one entry.
    store
        .revoke_client(b.client_id, "principal:olga")
        .await
        .unwrap();
    store
        .revoke_client(b.client_id, "principal:olga")
        .await
        .unwrap();

    // A DP job: a charge per round, completion after the last; a cancelled and a budget-stopped
    // job; a refused transition writes nothing.
    let job = store.create_job("acme", "dp", &json!({}), 2).await.unwrap();
    store.set_job_state(job, JobState::Running).await.unwrap();
    for (round, eps) in [(1u64, 0.5), (2, 0.8)] {
        let key = store
            .put_model(job, round, vec![round as u8])
            .await
            .unwrap();
        let commit = RoundCommit {
            attempt: 1,
            participants: &[a.client_id],
            metrics: &json!({}),
            model_blob_key: &key,
            machine_state_json: "{}",
            dp_charge: Some(DpCharge {
                epsilon_round: if round == 1 { 0.5 } else { 0.3 },
                epsilon_total: eps,
                delta: 1e-5,
            }),
        };
        store.commit_round(job, round, &commit).await.unwrap();
    }
    let cancelled = store.create_job("acme", "c", &json!({}), 5).await.unwrap();
    store
        .set_job_state_with_reason(
            cancelled,
            JobState::Cancelled,
            Some("by olga"),
            "principal:olga",
        )
        .await
        .unwrap();
    let before = entries(&store).await.len();
    assert!(
        store
            .set_job_state_with_reason(cancelled, JobState::Running, None, "system")
            .await
            .is_err()
    );
    store
        .set_job_state_with_reason(cancelled, JobState::Cancelled, Some("again"), "principal:x")
        .await
        .unwrap();
    assert_eq!(
        entries(&store).await.len(),
        before,
        "refusal and no-op write nothing"
    );
    let stopped = store.create_job("acme", "s", &json!({}), 5).await.unwrap();
    store
        .set_job_state(stopped, JobState::Running)
        .await
        .unwrap();
    store
        .set_job_state_with_reason(
            stopped,
            JobState::Failed,
            Some("privacy budget: epsilon 8 would exceed 7"),
            "system",
        )
        .await
        .unwrap();

    let all = entries(&store).await;
    let got: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str(), e.resource.as_str()))
        .collect();
    let (ca, cb, j, jc, js) = (a.client_id.0, b.client_id.0, job.0, cancelled.0, stopped.0);
    let (ca, cb) = (format!("client:{ca}"), format!("client:{cb}"));
    let (j, jc, js) = (format!("job:{j}"), format!("job:{jc}"), format!("job:{js}"));
    let t = format!("enrollment-token:{}", token.id.0);
    let want: Vec<(&str, &str, &str)> = vec![
        ("enrollment_token.created", "principal:olga", &t),
        ("client.enrolled", &ca, &ca),
        ("client.enrolled", &cb, &cb),
        ("client.credential_expired", &ca, &ca),
        ("client.revoked", "principal:olga", &cb),
        ("job.started", "system", &j),
        ("dp.charge", "system", &j),
        ("dp.charge", "system", &j),
        ("job.completed", "system", &j),
        ("job.cancelled", "principal:olga", &jc),
        ("job.started", "system", &js),
        ("job.budget_stopped", "system", &js),
    ];
    assert_eq!(got, want);
    assert!(all.iter().all(|e| e.tenant.as_deref() == Some("acme")));
    assert_eq!(details(&all[0])["uses"], 2);
    assert_eq!(details(&all[1])["name"], "phone");
    assert_eq!(details(&all[3])["expired_at_ms"], 5_000);
    assert_eq!(all[3].outcome, "denied");
    assert_eq!(
        details(&all[7]),
        json!({"round": 2, "epsilon_round": 0.3, "epsilon_total": 0.8, "delta": 1e-5})
    );
    assert_eq!(details(&all[9])["reason"], "by olga");
    assert!(store.audit_verify().await.unwrap().ok());
}

fn signer() -> AuditSigner {
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_pem();
    AuditSigner::from_pkcs8_pem(&pem).unwrap()
}

async fn checkpoints_catch_recomputed_chains_and_rewritten_heads(db: TestDb) {
    let store = db.open().await;
    let key = signer();
    assert_eq!(
        store.audit_checkpoint(&key, 1).await.unwrap(),
        None,
        "empty log"
    );
    for i in 0..4 {
        store
            .create_enrollment_token("acme", 1, FAR, &format!("principal:p{i}"))
            .await
            .unwrap();
    }
    let cp = store
        .audit_checkpoint(&key, 2)
        .await
        .unwrap()
        .expect("head moved");
    assert_eq!(cp.seq, 4);
    assert_eq!(
        store.audit_checkpoint(&key, 3).await.unwrap(),
        None,
        "head did not move"
    );
    store
        .create_enrollment_token("acme", 1, FAR, "principal:p4")
        .await
        .unwrap();
    let state = store.audit_state().await.unwrap();
    assert_eq!((state.head_seq, state.checkpoint.as_ref()), (6, Some(&cp)));

    let v = store
        .audit_verify_signed(Some(&key.public_key_hex()), Some(&cp))
        .await
        .unwrap();
    assert!(v.chain.ok(), "{v:?}");
    assert_eq!((v.checkpoints, v.last_checkpoint.as_ref()), (1, Some(&cp)));
    let other = signer();
    let v = store
        .audit_verify_signed(Some(&other.public_key_hex()), None)
        .await
        .unwrap();
    let p = v.chain.problem.expect("another key is refused");
    assert_eq!((p.seq, p.kind.as_str()), (5, "bad_checkpoint"));
    assert!(p.message.contains("pinned"), "{}", p.message);

    // Entry 3 changed and every hash from it on recomputed: the plain chain verifies, the
    // checkpoint does not.
    let raw = db.raw().await;
    sqlx::query("UPDATE audit_log SET actor = 'principal:mallory' WHERE seq = 3")
        .execute(&raw)
        .await
        .unwrap();
    let mut all = entries(&store).await;
    for i in 2..all.len() {
        all[i].prev_hash = all[i - 1].hash.clone();
        all[i].hash = all[i].expected_hash();
        sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(&all[i].prev_hash)
            .bind(&all[i].hash)
            .bind(all[i].seq as i64)
            .execute(&raw)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(&all.last().unwrap().hash)
        .execute(&raw)
        .await
        .unwrap();
    assert!(
        store.audit_verify().await.unwrap().ok(),
        "the plain chain is fooled"
    );
    let p = store
        .audit_verify_signed(None, None)
        .await
        .unwrap()
        .chain
        .problem
        .expect("the checkpoint is not");
    assert_eq!((p.seq, p.kind.as_str()), (4, "altered"), "{}", p.message);

    // A fresh log: the tail deleted and the head rewritten to match.
    let db2 = TestDb::new(db.kind).await.unwrap();
    let store = db2.open().await;
    for i in 0..3 {
        store
            .create_enrollment_token("acme", 1, FAR, &format!("principal:p{i}"))
            .await
            .unwrap();
    }
    let cp = store.audit_checkpoint(&key, 4).await.unwrap().unwrap();
    let raw = db2.raw().await;
    let h2: String = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = 2")
        .fetch_one(&raw)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq > 2")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_head SET seq = 2, hash = $1")
        .bind(&h2)
        .execute(&raw)
        .await
        .unwrap();
    assert!(
        store.audit_verify().await.unwrap().ok(),
        "the plain chain is fooled"
    );
    let p = store
        .audit_verify_signed(None, Some(&cp))
        .await
        .unwrap()
        .chain
        .problem
        .expect("the kept checkpoint is not");
    assert_eq!((p.seq, p.kind.as_str()), (3, "removed"), "{}", p.message);
    assert!(
        p.message.starts_with("audit entry 3 was removed"),
        "{}",
        p.message
    );
}

async fn concurrent_changes_make_one_chain(db: TestDb) {
    let store = db.open().await;
    let token = store
        .create_enrollment_token("acme", 40, FAR, "admin-token")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (store, secret) = (store.clone(), token.secret.clone());
        tasks.push(tokio::spawn(async move {
            let e = store
                .redeem_enrollment_token(&secret, 1_000, None)
                .await
                .unwrap();
            if i % 2 == 0 {
                store
                    .revoke_client(e.client_id, "admin-token")
                    .await
                    .unwrap();
            }
            store
                .create_enrollment_token("acme", 1, FAR, "admin-token")
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = entries(&store).await;
    assert_eq!(all.len(), 1 + 20 + 10 + 20);
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=51).collect::<Vec<_>>());
    let v = store.audit_verify().await.unwrap();
    assert!(v.ok(), "{v:?}");
}
