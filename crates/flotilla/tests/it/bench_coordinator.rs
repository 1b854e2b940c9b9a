//! `flotilla bench coordinator` against a real coordinator process (TLS, SQLite): a short run whose
//! counts and JSON shape are checked. Nothing here depends on how fast anything is.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Procs, bin, free_port, last_line, scratch_with_certs};

const ADMIN_TOKEN: &str = "bench-test-admin-token";

fn admin(dir: &std::path::Path, admin_port: u16, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args(["--admin-url", &format!("https://127.0.0.1:{admin_port}")])
        .arg("--ca-cert")
        .arg(dir.join("certs/ca.pem"))
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap()
}

#[test]
fn bench_coordinator_counts_every_call_and_commits_the_round() {
    let dir: PathBuf = scratch_with_certs("bench", "coord");
    let (grpc, admin_port) = (free_port(), free_port());
    let certs = dir.join("certs");
    let server = Procs(vec![
        Command::new(bin())
            .args(["server", "--data-dir"])
            .arg(dir.join("server"))
            .args([
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .arg("--tls-cert")
            .arg(certs.join("server.pem"))
            .arg("--tls-key")
            .arg(certs.join("server-key.pem"))
            .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin(&dir, admin_port, &["job", "list"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "coordinator did not come up; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let clients = 12;
    let token = last_line(&admin(
        &dir,
        admin_port,
        &["enroll-token", "create", "--uses", "12", "--expires", "1h"],
    ));
    let out = Command::new(bin())
        .args([
            "bench",
            "coordinator",
            "--coordinator",
            &format!("https://127.0.0.1:{grpc}"),
        ])
        .args(["--admin-url", &format!("https://127.0.0.1:{admin_port}")])
        .arg("--ca-cert")
        .arg(certs.join("ca.pem"))
        .args([
            "--token",
            &token,
            "--clients",
            &clients.to_string(),
            "--connections",
            "2",
        ])
        .args([
            "--checkin-seconds",
            "0.3",
            "--checkin-concurrency",
            "4",
            "--checkin-rate",
            "40",
        ])
        .args([
            "--params",
            "1000",
            "--chunk-bytes",
            "1000",
            "--upload-concurrency",
            "3",
        ])
        .args([
            "--scale-rounds",
            "3",
            "--clients-per-round",
            "5",
            "--scale-params",
            "100",
            "--checkin-interval-ms",
            "50",
        ])
        .args(["--server-pid", &server.0[0].id().to_string(), "--json"])
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object on one line: {stdout}"
    );
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();

    assert_eq!(r["clients"], clients);
    assert_eq!(r["connections"], 2);
    for key in ["closed_loop", "open_loop"] {
        let c = &r["checkin"][key];
        assert_eq!(c["errors"], 0, "{key}: {c}");
        assert_eq!(c["tasks"], 0, "the check-in job never starts a round: {c}");
        let count = c["count"].as_u64().unwrap();
        assert!(count >= 1, "{key}: {c}");
        assert_eq!(
            c["retry_after"].as_u64().unwrap(),
            count,
            "{key}: every check-in answered RetryAfter"
        );
        for p in ["p50", "p90", "p99", "max"] {
            assert!(
                c["latency_ms"][p].as_f64().is_some(),
                "{key}.latency_ms.{p}: {c}"
            );
        }
    }
    assert_eq!(r["checkin"]["closed_loop"]["concurrency"], 4);
    // The open loop sends exactly rate × seconds check-ins, whatever the timing.
    assert_eq!(r["checkin"]["open_loop"]["count"], 12);

    let i = &r["ingest"];
    assert_eq!(i["uploads"], clients, "{i}");
    assert_eq!(i["accepted"], clients, "{i}");
    assert_eq!(i["errors"], 0, "{i}");
    assert_eq!(i["not_accepted"], 0, "{i}");
    assert_eq!(i["payload_bytes"], clients * 4000, "{i}");
    assert_eq!(i["round_committed"], true, "{i}");
    assert_eq!(i["job_state"], "completed", "{i}");
    assert!(i["mb_per_s"].as_f64().is_some_and(|v| v > 0.0), "{i}");
    let rss = &i["server_rss"];
    assert!(rss["peak_bytes"].as_u64().is_some_and(|v| v > 0), "{rss}");
    assert!(rss["vm_hwm_bytes"].as_u64().is_some_and(|v| v > 0), "{rss}");
    assert_eq!(rss["model_bytes"], 4000);

    // The scale phase: the idle figure, then every round committed by 5 of the 12 clients.
    let sc = &r["scale"];
    assert_eq!(sc["clients"], clients, "{sc}");
    assert_eq!(sc["idle"]["checkin_errors"], 0, "{sc}");
    assert!(
        sc["idle"]["bytes_per_idle_client"].as_f64().is_some(),
        "{sc}"
    );
    let rp = &sc["rounds_phase"];
    assert_eq!(rp["job_state"], "completed", "{rp}");
    assert_eq!(rp["rounds_completed"], 3, "{rp}");
    assert_eq!(rp["errors"], 0, "{rp}");
    assert!(rp["uploads_accepted"].as_u64().unwrap() >= 15, "{rp}");
    assert!(rp["rounds_per_minute"].as_f64().unwrap() > 0.0, "{rp}");

    // The coordinator agrees: one committed round with every client in it; the check-in job is gone.
    let job = i["job_id"].as_str().unwrap();
    let status: Value = serde_json::from_str(&last_line(&admin(
        &dir,
        admin_port,
        &["job", "status", job, "--json"],
    )))
    .unwrap();
    assert_eq!(status["rounds_completed"], 1);
    assert_eq!(
        status["history"][0]["participants"]
            .as_array()
            .map(Vec::len),
        Some(clients)
    );
    let checkin_job = r["checkin"]["job_id"].as_str().unwrap();
    let status: Value = serde_json::from_str(&last_line(&admin(
        &dir,
        admin_port,
        &["job", "status", checkin_job, "--json"],
    )))
    .unwrap();
    assert_eq!(status["state"], "cancelled");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
