//! Serving registered models with real processes, on SQLite and PostgreSQL: a 2-round digits job
//! trains the model; its rounds become `digits@1` (production) and `digits@2` (a canary at 10 %).
//! 200 clients (one enrollment token with 200 uses) pull the model through the SDK
//! (`Client::pull_model`, concurrently in the test: 200 processes would take longer than the
//! rest of the test), and two of them with `flotilla client model pull`: 10 % ± 3 % of them get
//! v2. After a rollback every client pulls v1 on its next fetch.
//!
//! The registry is set up through the store the server uses (opened beside it), the way the
//! `flotilla model` commands would: what is tested here is what clients are served.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ClientConfig, PulledModel};
use flotilla_registry::{Lineage, ModelName, Stage};
use flotilla_store::{JobId, NewModelVersion};
use sha2::Digest;

const CLIENTS: usize = 200;

fn job_spec() -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("rounds = 20", "rounds = 2")
        .replace("clients_per_round = 10", "clients_per_round = 2")
        .replace("min_clients = 10", "min_clients = 2")
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0")
}

/// Runs `body` on the store the server uses, opened beside it.
fn with_store<T: Send + 'static>(
    f: &Federation,
    body: impl FnOnce(
        flotilla_store::Store,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
    + Send
    + 'static,
) -> T {
    let db = f.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            f.dir.join("server/flotilla.db").display()
        )
    });
    let blobs = f.dir.join("server/models").display().to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = flotilla_store::Store::open(&flotilla_store::StoreConfig::new(db, blobs))
                .await
                .unwrap();
            let out = body(store.clone()).await;
            store.close().await;
            out
        })
    })
    .join()
    .unwrap()
}

/// Registers each committed round of `job` as a version of `digits`; their SHA-256s.
fn register_rounds(f: &Federation, job: u64) -> Vec<String> {
    with_store(f, move |s| {
        Box::pin(async move {
            let name = ModelName::new("digits").unwrap();
            let layout = s.job_layout(JobId(job)).await.unwrap().unwrap();
            let mut shas = Vec::new();
            for r in s.job_history(JobId(job)).await.unwrap() {
                // Blob keys are `job-<id>/v<version>-<sha256>.bin`.
                let sha = r
                    .model_blob_key
                    .rsplit_once('-')
                    .and_then(|(_, t)| t.strip_suffix(".bin"))
                    .unwrap()
                    .to_owned();
                let lineage = Lineage {
                    job_id: job,
                    round: r.round,
                    ..Lineage::default()
                };
                let v = s
                    .register_model_version(
                        &NewModelVersion {
                            name: &name,
                            tenant: "default",
                            job_id: JobId(job),
                            round: r.round,
                            model_blob_key: &r.model_blob_key,
                            model_sha256: &sha,
                            layout: &layout,
                            lineage: &lineage,
                        },
                        "test",
                    )
                    .await
                    .unwrap();
                assert_eq!(v.version, r.round);
                shas.push(sha);
            }
            shas
        })
    })
}

/// Pulls `digits` as each of `CLIENTS` clients (state in `pull-I/`, enrolling with `token` the
/// first time), 32 at a time.
fn pull_all(f: &Federation, token: &str) -> Vec<(String, PulledModel)> {
    let (url, ca, dir, token) = (
        format!("https://127.0.0.1:{}", f.grpc),
        f.ca(),
        f.dir.clone(),
        token.to_owned(),
    );
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(32));
            let mut set = tokio::task::JoinSet::new();
            for i in 0..CLIENTS {
                let mut config = ClientConfig::new(url.clone(), dir.join(format!("pull-{i}")));
                config.ca_cert = Some(ca.clone().into());
                config.enrollment_token = Some(token.clone());
                let gate = gate.clone();
                set.spawn(async move {
                    let _slot = gate.acquire().await.unwrap();
                    let mut client = Client::new(config).unwrap();
                    let m = client.pull_model("digits").await.unwrap();
                    (client.client_id().unwrap().to_owned(), m)
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        })
    })
    .join()
    .unwrap()
}

fn cli_pull(f: &Federation, client: usize, out: &std::path::Path) -> std::process::Output {
    std::process::Command::new(bin())
        .args(["client", "model", "pull", "digits"])
        .args(["--coordinator", &format!("https://127.0.0.1:{}", f.grpc)])
        .args(["--ca-cert", &f.ca()])
        .arg("--state-dir")
        .arg(f.dir.join(format!("pull-{client}")))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn run(name: &str, database_url: Option<String>) {
    let mut f = Federation::with_server(name, database_url, &["--model-eval-interval", "0"], &[]);
    f.start_clients(2);
    let job = f.submit(&job_spec());
    f.wait_for(
        &job,
        "the job to complete",
        Duration::from_secs(180),
        completed,
    );
    let shas = register_rounds(&f, job.parse().unwrap());
    assert_eq!(shas.len(), 2);

    // Before any production version: a pull says so.
    let token = f.last_line(&[
        "enroll-token",
        "create",
        "--uses",
        &CLIENTS.to_string(),
        "--expires",
        "1h",
    ]);
    let early = std::process::Command::new(bin())
        .args(["client", "model", "pull", "digits"])
        .args(["--coordinator", &format!("https://127.0.0.1:{}", f.grpc)])
        .args(["--ca-cert", &f.ca(), "--token", &token])
        .arg("--state-dir")
        .arg(f.dir.join("pull-0"))
        .arg("--out")
        .arg(f.dir.join("early.safetensors"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success());
    assert!(
        stderr.contains("digits has no production version yet"),
        "{stderr}"
    );

    with_store(&f, |s| {
        Box::pin(async move {
            s.promote_model_version("digits", 1, Stage::Production, None, "test")
                .await
                .unwrap();
            s.set_model_canary("digits", 2, 10, None, "test")
                .await
                .unwrap();
        })
    });
    // The coordinator reads the registry at most a second late.
    std::thread::sleep(Duration::from_millis(1100));

    let started = Instant::now();
    let pulled = pull_all(&f, &token);
    eprintln!("{CLIENTS} pulls in {:?}", started.elapsed());
    assert_eq!(pulled.len(), CLIENTS);
    let canaries: Vec<&(String, PulledModel)> =
        pulled.iter().filter(|(_, m)| m.version == 2).collect();
    assert!(
        (14..=26).contains(&canaries.len()),
        "{} of {CLIENTS} clients got the canary",
        canaries.len()
    );
    for (_, m) in &pulled {
        assert_eq!(m.canary, m.version == 2);
        assert_eq!(m.sha256, shas[m.version as usize - 1]);
        assert_eq!(m.params.len(), m.layout.len());
        let bytes: Vec<u8> = m.params.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), m.sha256);
    }
    // The same clients get the same versions on their next fetch (a stable share).
    let again = pull_all(&f, &token);
    let versions = |p: &[(String, PulledModel)]| -> Vec<(String, u64)> {
        p.iter().map(|(id, m)| (id.clone(), m.version)).collect()
    };
    assert_eq!(versions(&again), versions(&pulled));

    // The CLI, as a client in the canary.
    let in_canary = (0..CLIENTS)
        .find(|i| {
            let cred =
                std::fs::read_to_string(f.dir.join(format!("pull-{i}/credential.json"))).unwrap();
            let id = serde_json::from_str::<serde_json::Value>(&cred).unwrap()["client_id"]
                .as_str()
                .unwrap()
                .to_owned();
            canaries.iter().any(|(c, _)| *c == id)
        })
        .unwrap();
    let file = f.dir.join("canary.safetensors");
    let out = cli_pull(&f, in_canary, &file);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line.starts_with("pulled digits@2 (canary) → "), "{line}");
    assert!(line.contains(&format!("sha256 {}", shas[1])), "{line}");
    assert!(std::fs::metadata(&file).unwrap().len() > 4 * 650);

    // Rollback: every client pulls production v1 on its next fetch.
    with_store(&f, |s| {
        Box::pin(async move {
            let r = s.rollback_model("digits", "test", "test").await.unwrap();
            assert!(r.ended_canary);
        })
    });
    std::thread::sleep(Duration::from_millis(1100));
    let after = pull_all(&f, &token);
    assert!(after.iter().all(|(_, m)| m.version == 1 && !m.canary));
    let out = cli_pull(&f, in_canary, &f.dir.join("after.safetensors"));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with("pulled digits@1 → "), "{line}");
}

#[test]
fn a_canary_reaches_a_tenth_of_clients_and_a_rollback_reaches_all_sqlite() {
    run("rollout-sqlite", None);
}

#[test]
fn a_canary_reaches_a_tenth_of_clients_and_a_rollback_reaches_all_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_roll") else {
        return;
    };
    run("rollout-postgres", Some(schema.url().to_owned()));
}
