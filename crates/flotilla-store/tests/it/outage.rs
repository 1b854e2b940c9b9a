//! What the coordinator needs to survive storage faults: issued attempts recorded per job, orphan
//! model blobs swept, blob writes probed, and calls that fail within the configured time.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{TestDb, both_backends};
use flotilla_store::{ClientId, JobId, JobState, RoundCommit, Store, StoreConfig, StoreError};
use serde_json::json;

both_backends!(
    issued_attempts_only_rise_and_come_back_with_the_job,
    orphan_blobs_are_swept_and_committed_ones_kept,
);

async fn running_job(store: &Store) -> JobId {
    let job = store
        .create_job("t", "digits", &json!({}), 5)
        .await
        .expect("create job");
    store
        .set_job_state(job, JobState::Running)
        .await
        .expect("start job");
    job
}

async fn commit(store: &Store, job: JobId, round: u64) -> String {
    let key = store
        .put_model(job, round, format!("model {job} v{round}").into_bytes())
        .await
        .unwrap();
    let machine = json!({"committed": round}).to_string();
    store
        .commit_round(
            job,
            round,
            &RoundCommit {
                attempt: 1,
                participants: &[ClientId(1)],
                metrics: &json!({}),
                model_blob_key: &key,
                dp_charge: None,
                machine_state_json: &machine,
            },
        )
        .await
        .unwrap();
    key
}

fn blob_dir(db: &TestDb) -> PathBuf {
    PathBuf::from(&db.config.blob_url)
}

fn files_of(dir: PathBuf) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn issued_attempts_only_rise_and_come_back_with_the_job(db: TestDb) {
    let store = db.open().await;
    let job = running_job(&store).await;
    let issued = |store: Store| async move {
        store
            .load_running_job(job)
            .await
            .unwrap()
            .unwrap()
            .issued_attempt
    };
    assert_eq!(issued(store.clone()).await, None, "nothing recorded yet");
    store.record_issued_attempt(job, 1, 1).await.unwrap();
    assert_eq!(issued(store.clone()).await, Some((1, 1)));
    store.record_issued_attempt(job, 1, 3).await.unwrap();
    store.record_issued_attempt(job, 1, 2).await.unwrap();
    assert_eq!(issued(store.clone()).await, Some((1, 3)), "never lowered");
    store.record_issued_attempt(job, 2, 1).await.unwrap();
    assert_eq!(
        issued(store.clone()).await,
        Some((2, 1)),
        "a later round is higher whatever its attempt"
    );
    store.record_issued_attempt(job, 1, 9).await.unwrap();
    assert_eq!(issued(store.clone()).await, Some((2, 1)));
    let all = store.load_running_jobs().await.unwrap();
    assert_eq!(
        all.iter().find(|j| j.job.id == job).unwrap().issued_attempt,
        Some((2, 1))
    );
    assert!(matches!(
        store.record_issued_attempt(JobId(9_999), 1, 1).await,
        Err(StoreError::JobNotFound(_))
    ));
    // Survives a reopen; a job that is not running is not reloaded.
    store.close().await;
    let store = db.open().await;
    assert_eq!(
        store
            .load_running_job(job)
            .await
            .unwrap()
            .unwrap()
            .issued_attempt,
        Some((2, 1))
    );
    store.set_job_state(job, JobState::Cancelled).await.unwrap();
    assert!(store.load_running_job(job).await.unwrap().is_none());
    assert!(matches!(
        store.load_running_job(JobId(9_999)).await,
        Err(StoreError::JobNotFound(_))
    ));
}

async fn orphan_blobs_are_swept_and_committed_ones_kept(db: TestDb) {
    let store = db.open().await;
    let a = running_job(&store).await;
    let b = running_job(&store).await;
    let k1 = commit(&store, a, 1).await;
    let k2 = commit(&store, a, 2).await;
    // A commit that failed after its model was stored, for each job.
    store
        .put_model(a, 3, b"never committed".to_vec())
        .await
        .unwrap();
    store
        .put_model(b, 1, b"never committed either".to_vec())
        .await
        .unwrap();
    let dir = blob_dir(&db);
    assert_eq!(files_of(dir.join(format!("job-{}", a.0))).len(), 3);

    assert_eq!(store.sweep_orphan_blobs(Some(a)).await.unwrap(), 1);
    assert_eq!(files_of(dir.join(format!("job-{}", a.0))).len(), 2);
    assert_eq!(
        store.get_model(&k1).await.unwrap(),
        format!("model {a} v1").into_bytes()
    );
    assert_eq!(
        store.get_model(&k2).await.unwrap(),
        format!("model {a} v2").into_bytes()
    );
    assert_eq!(
        files_of(dir.join(format!("job-{}", b.0))).len(),
        1,
        "another job's blobs are left alone"
    );

    // A whole-store sweep also takes the staging file of a write a crash interrupted.
    let staging = dir.join(format!("job-{}", a.0)).join("v4-deadbeef.bin#1");
    std::fs::write(&staging, b"half a model").unwrap();
    assert_eq!(store.sweep_orphan_blobs(None).await.unwrap(), 2);
    assert!(files_of(dir.join(format!("job-{}", b.0))).is_empty());
    assert!(!staging.exists());
    assert_eq!(
        store.sweep_orphan_blobs(None).await.unwrap(),
        0,
        "nothing left to sweep"
    );
    assert_eq!(files_of(dir.join(format!("job-{}", a.0))).len(), 2);

    // Probing writes and deletes a scratch object.
    store.probe_blob_write(4096).await.unwrap();
    assert!(files_of(dir.join("probe")).is_empty());
}

/// SQLite: a writer waits at most `acquire_timeout` for another process's write lock (it used to
/// be sqlx's 5 s busy timeout), so a stuck database fails calls quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_calls_fail_within_the_acquire_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::in_dir(dir.path());
    config.acquire_timeout = Duration::from_millis(300);
    let store = Store::open(&config).await.unwrap();
    let job = running_job(&store).await;
    // Another connection holds the write lock.
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let t = Instant::now();
    let res = store.record_issued_attempt(job, 1, 1).await;
    let took = t.elapsed();
    assert!(matches!(res, Err(StoreError::Database(_))), "{res:?}");
    assert!(
        took < Duration::from_secs(2),
        "waited {took:?} for the lock"
    );
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    store.record_issued_attempt(job, 1, 1).await.unwrap();
}
