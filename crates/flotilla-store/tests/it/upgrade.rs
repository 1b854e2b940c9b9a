//! Schema upgrades: a database created by an older release opens with the current one, keeps its
//! data, and its clients keep working. Run against SQLite and PostgreSQL.

use crate::common;

use std::path::Path;

use common::{TestDb, both_backends, now_ms};
use flotilla_store::{JobId, JobState};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::migrate::Migrator;

both_backends!(upgrade_0001_to_current_keeps_clients_and_jobs);

/// The migrations directory of this backend.
fn migrations_dir(db: &TestDb) -> std::path::PathBuf {
    let backend = match db.kind {
        common::Kind::Sqlite => "sqlite",
        common::Kind::Postgres => "postgres",
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend)
}

/// Brings the database to the schema of release 0001 exactly as that release did: the same
/// migration file, recorded by sqlx with the same checksum, so the current migrator sees it as
/// applied and runs only what came after.
async fn create_at_0001(db: &TestDb, pool: &sqlx::AnyPool) {
    let only_0001 = db.dir.path().join("migrations-0001");
    std::fs::create_dir_all(&only_0001).expect("dir");
    std::fs::copy(
        migrations_dir(db).join("0001_initial.sql"),
        only_0001.join("0001_initial.sql"),
    )
    .expect("copy 0001");
    let migrator = Migrator::new(only_0001.as_path())
        .await
        .expect("0001 migrator");
    assert_eq!(migrator.iter().count(), 1);
    migrator.run(pool).await.expect("apply 0001");
}

async fn upgrade_0001_to_current_keeps_clients_and_jobs(db: TestDb) {
    if db.kind == common::Kind::Sqlite {
        // `Store::open` creates the database's directory; here nothing has yet.
        std::fs::create_dir_all(db.dir.path().join("data")).expect("data dir");
    }
    let pool = db.raw().await;
    create_at_0001(&db, &pool).await;

    // Data written by release 0001: an enrolled client (its credential only as a hash), a second,
    // revoked one, and a running job with one committed round.
    let now = now_ms();
    let credential = "flt_client_issued_by_release_0001";
    let hash = hex::encode(Sha256::digest(credential.as_bytes()));
    sqlx::query("INSERT INTO clients (tenant, credential_sha256, revoked, created_at_ms) VALUES ($1, $2, 0, $3)")
        .bind("acme")
        .bind(&hash)
        .bind(now)
        .execute(&pool)
        .await
        .expect("insert client");
    let revoked = "flt_client_revoked_in_release_0001";
    sqlx::query("INSERT INTO clients (tenant, credential_sha256, revoked, created_at_ms) VALUES ($1, $2, 1, $3)")
        .bind("acme")
        .bind(hex::encode(Sha256::digest(revoked.as_bytes())))
        .bind(now)
        .execute(&pool)
        .await
        .expect("insert revoked client");
    sqlx::query(
        "INSERT INTO jobs (tenant, name, spec_json, state, rounds_total, rounds_completed, model_version, \
         model_blob_key, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, 'running', 5, 1, 1, 'm/1', $4, $4)",
    )
    .bind("acme")
    .bind("legacy-job")
    .bind(r#"{"rounds":5}"#)
    .bind(now)
    .execute(&pool)
    .await
    .expect("insert job");
    sqlx::query(
        "INSERT INTO rounds (job_id, round, attempt, model_version, participants_json, metrics_json, \
         model_blob_key, committed_at_ms) VALUES (1, 1, 1, 1, '[1]', '{\"accuracy\":0.5}', 'm/1', $1)",
    )
    .bind(now)
    .execute(&pool)
    .await
    .expect("insert round");
    // The 0001 schema has no credential expiry yet.
    assert!(
        sqlx::query("SELECT credential_expires_at_ms FROM clients")
            .fetch_all(&pool)
            .await
            .is_err()
    );

    // The current release opens it: the later migrations run, nothing is lost.
    let store = db.open().await;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .expect("migrations table")
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
    let current = Migrator::new(migrations_dir(&db).as_path())
        .await
        .expect("current migrator");
    let expected: Vec<i64> = current.iter().map(|m| m.version).collect();
    assert_eq!(applied, expected, "every migration applied once, in order");
    assert!(expected.len() >= 2);

    // A credential issued before expiry existed never expires: upgrading locks no client out.
    let client = store
        .authenticate(credential)
        .await
        .expect("old credential still authenticates");
    assert_eq!(client.tenant, "acme");
    assert_eq!(client.credential_expires_at_ms, None);
    assert!(
        store
            .authenticate_at(credential, i64::MAX / 2)
            .await
            .is_ok()
    );
    // A revocation made before the upgrade still holds.
    assert!(store.authenticate(revoked).await.is_err());
    assert_eq!(
        store.list_clients(Some("acme")).await.expect("list").len(),
        2
    );

    // The job and its history are intact and usable.
    let job = store.get_job(JobId(1)).await.expect("job");
    assert_eq!(
        (job.state, job.rounds_total, job.rounds_completed),
        (JobState::Running, 5, 1)
    );
    assert_eq!(
        job.state_reason, None,
        "jobs from before 0003 have no recorded reason"
    );
    let history = store.job_history(JobId(1)).await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].round, 1);
    // Jobs from before 0006 have no recorded layout; their rounds can still be evaluated.
    assert_eq!(store.job_layout(JobId(1)).await.expect("layout"), None);
    store
        .record_round_eval(JobId(1), 1, &serde_json::json!({"eval_accuracy": 0.75}))
        .await
        .expect("evaluate an old round");
    let history = store.job_history(JobId(1)).await.expect("history");
    assert_eq!(
        history[0].metrics,
        serde_json::json!({"accuracy": 0.5, "eval_accuracy": 0.75})
    );

    // New writes work on the upgraded schema, and opening again changes nothing.
    store
        .touch_client(client.client_id, now + 1)
        .await
        .expect("touch");
    store
        .revoke_client(client.client_id, "admin")
        .await
        .expect("revoke");
    store
        .set_job_state_with_reason(
            JobId(1),
            JobState::Cancelled,
            Some("cancelled by an admin"),
            "admin",
        )
        .await
        .expect("cancel with a reason");
    drop(store);
    let again = db.open().await;
    assert!(
        again.authenticate(credential).await.is_err(),
        "revocation persisted"
    );
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count")
        .get(0);
    assert_eq!(count as usize, expected.len());
}
