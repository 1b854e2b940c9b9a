//! Every job state change that is not progress says why, with real processes: a job waiting for
//! more clients than are online, a job failed by clients whose data does not fit the model, and a
//! job cancelled by someone.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The digits example job with `clients_per_round = min_clients = clients`, 3 rounds.
fn job_spec(name: &str, clients: usize) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("name = \"digits\"", &format!("name = \"{name}\""))
        .replace("rounds = 20", "rounds = 3")
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {clients}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {clients}"))
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0")
}

fn reason(s: &Value) -> &str {
    s["reason"].as_str().unwrap_or_default()
}

#[test]
fn a_job_waiting_for_clients_says_how_many_it_waits_for() {
    let mut f = Federation::new("reasons-wait", None);
    f.start_clients(9);
    let job = f.submit(&job_spec("wait", 20));
    let s = f.wait_for(&job, "9 clients checked in", Duration::from_secs(60), |s| {
        reason(s).contains("9 checked in")
    });
    assert_eq!(s["state"], "running", "{s}");
    assert!(
        reason(&s).contains("waiting for 20 available clients"),
        "{s}"
    );
    let cur = &s["current"];
    assert_eq!(cur["phase"], "waiting", "{s}");
    assert_eq!(cur["available_clients"], 9, "{s}");
    assert_eq!(cur["needed_clients"], 20, "{s}");
    assert!(cur.get("deadline_ms").is_none(), "no stage is running: {s}");
    // The job list carries the reason too.
    let out = f.admin_cli(&["job", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("job list JSON");
    let listed = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["job_id"].as_u64() == job.parse::<u64>().ok())
        .expect("job listed");
    assert!(reason(listed).contains("waiting for 20"), "{listed}");
    // And the human status shows it.
    let out = f.admin_cli(&["job", "status", &job]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("waiting for 20 available clients"),
        "{human}"
    );
}

#[test]
fn clients_whose_data_does_not_fit_fail_the_job_with_their_reason() {
    let mut f = Federation::new("reasons-features", None);
    // 63 features per row against the digits model's 64.
    let csv = f.dir.join("wrong-width.csv");
    let mut file = std::fs::File::create(&csv).unwrap();
    for row in 0..40 {
        let features: Vec<String> = (0..63).map(|i| format!("{}", (row * 7 + i) % 16)).collect();
        writeln!(file, "{},{}", features.join(","), row % 10).unwrap();
    }
    drop(file);
    let token = f.last_line(&["enroll-token", "create", "--uses", "3", "--expires", "1h"]);
    for i in 0..3 {
        // `--data` instead of the harness's `--dataset digits --partition`.
        let name = format!("client-{i}");
        let child = Command::new(bin())
            .args([
                "client",
                "--coordinator",
                &format!("https://127.0.0.1:{}", f.grpc),
            ])
            .args(["--ca-cert", &f.ca(), "--token", &token])
            .arg("--state-dir")
            .arg(f.dir.join(&name))
            .arg("--data")
            .arg(&csv)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(f.dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        f.clients.0.push(child);
    }
    let job = f.submit(&job_spec("wrong-width", 3));
    let s = f.wait_for(&job, "the job to fail", Duration::from_secs(180), |s| {
        s["state"] == "failed"
    });
    let why = reason(&s);
    assert!(why.starts_with("clients reported errors: "), "{s}");
    assert!(
        why.contains("input has 63 features, model expects 64 (3 clients)"),
        "{s}"
    );
    assert!(why.contains("round 1 failed 3 times"), "{s}");
    assert_eq!(s["rounds_completed"], 0, "{s}");
    let out = f.admin_cli(&["job", "status", &job]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("input has 63 features, model expects 64"),
        "{human}"
    );
    // The reason is in the store: a restarted coordinator serves it unchanged.
    f.kill_server();
    f.start_server();
    assert_eq!(reason(&f.status(&job)), why);
}

/// `POST /v1/jobs/{id}/cancel` with `body` (JSON), as an operator's tool would send it.
fn cancel(f: &Federation, job: &str, body: Option<Value>) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(f.ca()).unwrap()).unwrap();
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let mut req = http
        .post(format!("{}/v1/jobs/{job}/cancel", f.admin_url()))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().unwrap_or(Value::Null))
}

#[test]
fn a_cancelled_job_says_who_cancelled_it_and_why() {
    let f = Federation::new("reasons-cancel", None);
    let job = f.submit(&job_spec("cancel-me", 5));
    // Refused bodies change nothing.
    let (code, v) = cancel(&f, &job, Some(json!({ "by": "x".repeat(65) })));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("by: at most 64 characters"),
        "{v}"
    );
    let (code, v) = cancel(&f, &job, Some(json!({ "who": "alice" })));
    assert_eq!(code, 400, "{v}");
    assert_eq!(f.status(&job)["state"], "running");

    let (code, v) = cancel(
        &f,
        &job,
        Some(json!({ "by": "alice", "reason": "wrong dataset" })),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["reason"], "cancelled by alice: wrong dataset");
    let s = f.status(&job);
    assert_eq!(
        (s["state"].as_str(), reason(&s)),
        (Some("cancelled"), "cancelled by alice: wrong dataset"),
        "{s}"
    );
    // A second cancel is a conflict and keeps who cancelled first.
    let (code, v) = cancel(&f, &job, Some(json!({ "by": "bob" })));
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .ends_with("(cancelled by alice: wrong dataset)"),
        "{v}"
    );
    assert_eq!(reason(&f.status(&job)), "cancelled by alice: wrong dataset");

    // `flotilla job cancel` names the operator ($USER, else "admin").
    let other = f.submit(&job_spec("cancel-me-too", 5));
    let out = f.admin_cli(&["job", "cancel", &other, "--reason", "wrong dataset"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who = std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "admin".to_owned());
    assert_eq!(
        reason(&f.status(&other)),
        format!("cancelled by {who}: wrong dataset")
    );

    // An empty body (any other client of the admin API): an admin.
    let third = f.submit(&job_spec("cancel-me-three", 5));
    let (code, v) = cancel(&f, &third, None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(reason(&f.status(&third)), "cancelled by an admin");
}
