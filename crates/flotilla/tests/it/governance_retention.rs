//! Retention and the right to erasure with real processes, on SQLite and PostgreSQL: a
//! coordinator keeping the last model version of each job and erasing clients idle for 3 s runs a
//! 4-round job with 3 clients; then `client forget` erases one client (audited, its id gone from
//! the rounds), `retention run --dry-run` lists what would go and `retention run` deletes exactly
//! that — blobs gone from disk, client rows gone, one audit entry naming each deletion.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use flotilla_coordinator::api::retention::{ClientForgotten, RetentionKind, RetentionReport};
use serde_json::Value;

fn job_spec() -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("rounds = 20", "rounds = 4")
        .replace("clients_per_round = 10", "clients_per_round = 3")
        .replace("min_clients = 10", "min_clients = 3")
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0")
}

/// The store the server uses, opened beside it (SQLite in WAL mode and PostgreSQL both allow it).
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

/// Every audit entry, as JSON.
fn audit_entries(f: &Federation) -> Vec<Value> {
    with_store(f, |store| {
        Box::pin(async move {
            store
                .audit_entries(0, None, 100_000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| {
                    let mut v = serde_json::to_value(&e).unwrap();
                    v["details"] = serde_json::from_str(&e.details_json).unwrap();
                    v
                })
                .collect()
        })
    })
}

fn run_json(f: &Federation, dry_run: bool) -> RetentionReport {
    let mut args = vec!["retention", "run", "--json"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = f.admin_cli(&args);
    assert!(
        out.status.success(),
        "retention run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("retention run --json prints the report")
}

fn item_set(r: &RetentionReport) -> BTreeSet<(String, String)> {
    r.items
        .iter()
        .map(|i| (i.kind.as_str().to_owned(), i.id.clone()))
        .collect()
}

fn run(name: &str, database_url: Option<String>) {
    let mut f = Federation::with_server(
        name,
        database_url,
        &[
            "--retain-model-versions",
            "1",
            "--retain-inactive-clients",
            "3s",
            "--retention-interval",
            "off",
        ],
        &[],
    );
    f.start_clients(3);
    let job = f.submit(&job_spec());
    let status = f.wait_for(&job, "4 rounds", Duration::from_secs(240), completed);
    // The clients stop: from now on nothing is seen, nothing is committed.
    for c in &mut f.clients.0 {
        let _ = c.kill();
        let _ = c.wait();
    }
    let history = status["history"].as_array().unwrap().clone();
    assert_eq!(history.len(), 4);
    let in_round_1: Vec<u64> = history[0]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let forgotten = in_round_1[0];

    // Right to erasure: the record goes, its rounds keep counts only, and it is audited.
    let out = f.admin_cli(&["client", "forget", &forgotten.to_string(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone: ClientForgotten = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gone.client_id, forgotten);
    assert_eq!(gone.rounds_rewritten, 4, "it took part in every round");
    assert!(gone.removed.iter().any(|r| r == "credential_sha256"));
    let clients = f.last_line(&["client", "list", "--json"]);
    assert!(
        !serde_json::from_str::<Vec<Value>>(&clients)
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == forgotten),
        "{clients}"
    );
    let after = f.status(&job);
    for r in after["history"].as_array().unwrap() {
        let p: Vec<u64> = r["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(p.len(), 3, "the count stays");
        assert!(!p.contains(&forgotten) && p.contains(&0), "{p:?}");
    }
    // A second erasure finds nothing; the text form says what went.
    let again = f.admin_cli(&["client", "forget", &forgotten.to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("404"));

    // Idle long enough for the inactive-client rule (3 s; last_seen is written at most every few
    // seconds, so it is at least as old as the last call).
    std::thread::sleep(Duration::from_secs(4));
    let plan = run_json(&f, true);
    assert!(plan.dry_run);
    let planned = item_set(&plan);
    let blob_keys: Vec<String> = history[..3]
        .iter()
        .map(|r| {
            let sha = r["metrics"]["model_sha256"].as_str().unwrap();
            format!("job-{job}/v{}-{sha}.bin", r["round"])
        })
        .collect();
    let mut want: BTreeSet<(String, String)> = blob_keys
        .iter()
        .map(|k| ("model_blob".to_owned(), k.clone()))
        .collect();
    for c in in_round_1.iter().filter(|c| **c != forgotten) {
        want.insert(("client".to_owned(), c.to_string()));
    }
    assert_eq!(
        planned, want,
        "the plan: rounds 1-3's models and the two idle clients"
    );
    let models = f.dir.join("server/models");
    for k in &blob_keys {
        assert!(models.join(k).exists(), "{k} is on disk before the run");
    }
    let text = f.admin_cli(&["retention", "run", "--dry-run"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("would delete 5 item(s)"), "{text}");
    assert!(text.contains("retain-model-versions 1"), "{text}");

    let done = run_json(&f, false);
    assert!(!done.dry_run);
    assert_eq!(
        item_set(&done),
        planned,
        "deletes exactly what the dry run listed"
    );
    assert!(
        done.skipped.is_empty() && done.blob_errors.is_empty(),
        "{done:?}"
    );
    for k in &blob_keys {
        assert!(!models.join(k).exists(), "{k} is gone from disk");
    }
    let last = format!(
        "job-{job}/v4-{}.bin",
        history[3]["metrics"]["model_sha256"].as_str().unwrap()
    );
    assert!(models.join(&last).exists(), "the final model is kept");
    let clients: Vec<Value> =
        serde_json::from_str(&f.last_line(&["client", "list", "--json"])).unwrap();
    assert!(
        clients.is_empty(),
        "every client record is erased: {clients:?}"
    );
    // The final model still downloads; a deleted one says why it cannot.
    let out = f.admin_cli(&[
        "job",
        "download",
        &job,
        "--out",
        f.dir.join("final.safetensors").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = f.admin_cli(&[
        "job",
        "download",
        &job,
        "--round",
        "1",
        "--out",
        f.dir.join("r1.safetensors").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("410") && err.contains("deleted by retention"),
        "{err}"
    );

    // Each deletion is in the audit log, in the entries the run reported, and the chain holds.
    let entries = audit_entries(&f);
    let by_seq = |seq: u64| {
        entries
            .iter()
            .find(|e| e["seq"] == seq)
            .unwrap_or_else(|| panic!("audit entry {seq}"))
            .clone()
    };
    let reported: Vec<Value> = done.audit_seqs.iter().map(|s| by_seq(*s)).collect();
    for i in &done.items {
        let hit = reported.iter().any(|e| match i.kind {
            RetentionKind::ModelBlob => {
                e["action"] == "retention.delete_model_blobs"
                    && e["details"]["keys"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == i.id.as_str()))
            }
            RetentionKind::Client => {
                e["action"] == "retention.erase_client"
                    && e["resource"] == format!("client:{}", i.id)
            }
            RetentionKind::AuditEntries => false,
        });
        assert!(hit, "no audit entry records {i:?}; entries {reported:?}");
    }
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "client.forget"
                && e["resource"] == format!("client:{forgotten}")),
        "the erasure is audited"
    );
    let verified = with_store(&f, |s| {
        Box::pin(async move { s.audit_verify().await.unwrap().ok() })
    });
    assert!(verified, "the audit chain verifies after the deletions");

    // Nothing is due any more.
    assert!(run_json(&f, true).items.is_empty());
}

#[test]
fn retention_deletes_what_the_dry_run_listed_and_audits_it_sqlite() {
    run("retention-sqlite", None);
}

#[test]
fn retention_deletes_what_the_dry_run_listed_and_audits_it_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_ret") else {
        return;
    };
    run("retention-postgres", Some(schema.url().to_owned()));
}
