//! `kill -9` at the storage level: a child process commits rounds as fast as it can, the test
//! kills it with SIGKILL mid-stream, reopens the store and checks that every acknowledged round is
//! there exactly once, with its model, and the job is consistent. Run against both backends.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{TestDb, both_backends};
use flotilla_store::{ClientId, JobId, JobState, RoundCommit, Store, StoreConfig};
use serde_json::json;

const CHILD_ENV: &str = "FLOTILLA_STORE_CRASH_CHILD";

both_backends!(kill_dash_nine_loses_nothing_committed);

/// In the child process (and only there): commit rounds until killed, acknowledging each on stdout.
#[tokio::test]
async fn crash_child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '\n');
    let (job, db, blobs) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let job = JobId(job.parse().unwrap());
    let store = Store::open(&StoreConfig::new(db, blobs)).await.unwrap();
    for round in 1..=10_000u64 {
        let key = store
            .put_model(job, round, model_bytes(round))
            .await
            .unwrap();
        let machine = json!({"next_round": round + 1}).to_string();
        store
            .commit_round(
                job,
                round,
                &RoundCommit {
                    attempt: 1,
                    participants: &[ClientId(round)],
                    metrics: &json!({"round": round}),
                    model_blob_key: &key,
                    dp_charge: None,
                    machine_state_json: &machine,
                },
            )
            .await
            .unwrap();
        println!("committed {round}");
    }
}

fn model_bytes(round: u64) -> Vec<u8> {
    (0..4096u64)
        .flat_map(|i| (i * round).to_le_bytes())
        .collect()
}

async fn kill_dash_nine_loses_nothing_committed(db: TestDb) {
    let store = db.open().await;
    let job = store
        .create_job("acme", "crash", &json!({}), 10_000)
        .await
        .unwrap();
    store.set_job_state(job, JobState::Running).await.unwrap();
    store.close().await;
    drop(store);

    // The child is this test binary running only `crash_child_writer` (named by its module path in
    // the crate's one test binary).
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash::crash_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!(
                "{}\n{}\n{}",
                job.0, db.config.database_url, db.config.blob_url
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read acknowledgements on a plain thread; SIGKILL the child after the 20th.
    let acknowledged = std::thread::spawn(move || {
        let mut last = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("committed ") {
                last = n.trim().parse().unwrap();
                if last == 20 {
                    child.kill().unwrap(); // SIGKILL on Unix
                }
            }
        }
        child.wait().unwrap();
        last
    })
    .join()
    .unwrap();
    assert!(
        acknowledged >= 20,
        "child acknowledged only {acknowledged} rounds"
    );

    let store = db.open().await;
    let rec = store.get_job(job).await.unwrap();
    let n = rec.rounds_completed;
    assert!(
        n >= acknowledged,
        "acknowledged {acknowledged} rounds, only {n} survived"
    );
    assert_eq!(rec.model_version, n);
    eprintln!(
        "{:?}: {acknowledged} rounds acknowledged before SIGKILL, {n} committed",
        db.kind
    );
    let history = store.job_history(job).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.round).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    for r in &history {
        assert_eq!(
            store.get_model(&r.model_blob_key).await.unwrap(),
            model_bytes(r.round)
        );
    }
    let recovered = store.load_running_jobs().await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].last_round.as_ref().map(|r| r.round), Some(n));
    assert_eq!(
        recovered[0].machine_state_json,
        Some(json!({"next_round": n + 1}).to_string())
    );
    assert_eq!(
        rec.model_blob_key,
        history.last().map(|r| r.model_blob_key.clone())
    );
    // And the job goes on from there.
    let key = store
        .put_model(job, n + 1, model_bytes(n + 1))
        .await
        .unwrap();
    store
        .commit_round(
            job,
            n + 1,
            &RoundCommit {
                attempt: 1,
                participants: &[],
                metrics: &json!({}),
                model_blob_key: &key,
                dp_charge: None,
                machine_state_json: "{}",
            },
        )
        .await
        .unwrap();
}
