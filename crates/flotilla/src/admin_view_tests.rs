//! Renderings of fixed admin answers.

use super::*;
use serde_json::{Value, json};

/// 2026-12-06 12:00:00 UTC.
const NOW: i64 = 1_796_558_400_000;

fn clock() -> Clock {
    Clock {
        now_ms: NOW,
        utc: true,
    }
}

fn status_json(rounds: u64) -> Value {
    let history: Vec<Value> = (1..=rounds)
        .map(|r| {
            json!({
                "round": r, "attempt": if r == 3 { 2 } else { 1 },
                "participants": [1, 2, 3, 4, 5, 6, 7, 8],
                "metrics": {"attempt": 1, "num_samples": 800, "eval_accuracy": 0.5 + r as f64 / 100.0,
                            "eval_loss": 0.312_345_678_901_234_5, "eval_samples": 360,
                            "train_loss": 0.4, "model_sha256": "ab".repeat(32)},
                "committed_at_ms": NOW - 60_000 + (r as i64) * 2_100,
            })
        })
        .collect();
    json!({
        "job_id": 3, "name": "digits", "tenant": "default", "state": "running",
        "rounds_completed": rounds, "rounds_total": 20, "model_version": rounds,
        "created_at_ms": NOW - 60_000, "updated_at_ms": NOW - 5_000,
        "history": history,
        "current": {"round": rounds + 1, "attempt": 1, "halted": null, "phase": "collecting reports",
                    "available_clients": 9, "needed_clients": 20, "deadline_ms": NOW + 42_000},
        "reason": "waiting for 20 available clients, 9 checked in",
    })
}

#[test]
fn job_status_shows_progress_current_round_clients_and_rounds() {
    let s: JobStatus = serde_json::from_value(status_json(12)).unwrap();
    let out = job_status(&s, &clock());
    assert!(
        out.contains("state      running: waiting for 20 available clients, 9 checked in"),
        "{out}"
    );
    assert!(out.contains("12/20 rounds committed (60 %)"), "{out}");
    assert!(
        out.contains("round 13/20, attempt 1, collecting reports"),
        "{out}"
    );
    assert!(out.contains("9 available, 20 needed"), "{out}");
    assert!(
        out.contains("deadline   2026-12-06 12:00:42 UTC (in 42 s)"),
        "{out}"
    );
    assert!(
        out.contains("started    2026-12-06 11:59:00 UTC (1 min ago)"),
        "{out}"
    );
    // The last 10 rounds only, rounded numbers with units, durations between commits.
    assert!(!out.contains("\n    2 "), "{out}");
    assert!(out.contains("(the last 10 of 12 committed rounds"), "{out}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("12 "))
        .unwrap();
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells,
        [
            "12",
            "1",
            "8",
            "62.0 %",
            "0.3123",
            "0.4000",
            "2.1 s",
            "2026-12-06 11:59:25 UTC"
        ],
        "{row}"
    );
    assert!(!out.contains("0.31234"), "no 16-digit floats: {out}");
    assert!(
        out.contains("flotilla job download 3 --out digits-round12.safetensors"),
        "{out}"
    );
}

#[test]
fn job_status_without_rounds_or_optional_fields() {
    let v = json!({"job_id": 1, "name": "x\u{1b}[2J", "tenant": "t", "state": "failed", "rounds_completed": 0,
                   "rounds_total": 3, "model_version": 0, "created_at_ms": NOW, "updated_at_ms": NOW, "history": []});
    let s: JobStatus = serde_json::from_value(v).unwrap();
    let out = job_status(&s, &clock());
    assert!(out.contains("state      failed\n"), "{out}");
    assert!(out.contains("no round committed yet"), "{out}");
    assert!(
        !out.contains('\u{1b}'),
        "control characters are escaped: {out:?}"
    );
    assert!(!out.contains("current"), "{out}");
}

#[test]
fn job_status_shows_federated_evaluation() {
    // Without it (above), no federated columns; with it, columns and the latest as a line.
    let plain = job_status(&serde_json::from_value(status_json(2)).unwrap(), &clock());
    assert!(
        !plain.contains("FED ") && !plain.contains("federated"),
        "{plain}"
    );
    let mut v = status_json(3);
    for r in 1..3 {
        v["history"][r]["metrics"]["federated_eval"] = json!({"model_version": r, "loss": 0.25 * r as f64,
            "accuracy": 0.8 + r as f64 / 100.0, "samples": 1500, "clients": 8});
    }
    v["history"][2]["metrics"]["federated_eval"]["accuracy"] = Value::Null;
    let s: JobStatus = serde_json::from_value(v).unwrap();
    let out = job_status(&s, &clock());
    assert!(out.contains("FED ACCURACY  FED LOSS"), "{out}");
    let cells = |round: &str| -> Vec<String> {
        let row = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{round} ")))
            .unwrap();
        row.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(cells("1")[5..7], ["-", "-"], "{out}");
    assert_eq!(cells("2")[5..7], ["81.0 %", "0.2500"], "{out}");
    assert_eq!(cells("3")[5..7], ["-", "0.5000"], "{out}");
    assert!(
        out.contains(
            "federated  eval of version 2 by 8 clients (round 3): loss 0.5000, 1,500 samples"
        ),
        "{out}"
    );
}

#[test]
fn job_status_shows_privacy() {
    let mut v = status_json(2);
    v["epsilon_spent"] = json!(1.234_567_89);
    v["delta"] = json!(1e-5);
    v["privacy"] = json!({"epsilon_spent": 1.234_567_89, "delta": 1e-5, "max_epsilon": 8.0,
                          "noise_multiplier": 1.1});
    let s: JobStatus = serde_json::from_value(v).unwrap();
    let out = job_status(&s, &clock());
    assert!(
        out.contains("privacy    ε 1.235 spent at δ 1.00e-5 of a budget of 8.000"),
        "{out}"
    );
}

#[test]
fn client_list_shows_names_and_human_times() {
    let v = json!([
        {"client_id": 1, "tenant": "default", "revoked": false, "created_at_ms": NOW - 3_600_000,
         "last_seen_ms": NOW - 180_000, "credential_expires_at_ms": NOW + 86_400_000 * 30, "name": "hospital-a"},
        {"client_id": 12, "tenant": "default", "revoked": true, "created_at_ms": NOW - 7_200_000,
         "last_seen_ms": null, "credential_expires_at_ms": null},
    ]);
    let clients: Vec<ClientEntry> = serde_json::from_value(v).unwrap();
    let out = client_list(&clients, &clock());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID  NAME        TENANT   ENROLLED"),
        "{out}"
    );
    assert!(
        lines[1].contains("hospital-a") && lines[1].contains("2026-12-06 11:00:00 UTC"),
        "{out}"
    );
    assert!(
        lines[1].contains("3 min ago") && lines[1].contains("in 30 d") && lines[1].ends_with("no"),
        "{out}"
    );
    assert!(lines[2].starts_with("12  -"), "{out}");
    assert!(
        lines[2].contains("never") && lines[2].ends_with("yes"),
        "{out}"
    );
    // Columns line up: every row's tenant starts where the header's does.
    let col = lines[0].find("TENANT").unwrap();
    assert!(
        lines.iter().skip(1).all(|l| &l[col..col + 7] == "default"),
        "{out}"
    );
}

#[test]
fn job_list_is_a_table() {
    let v = json!([{"job_id": 1, "name": "digits", "tenant": "default", "state": "completed", "rounds_completed": 20,
                    "rounds_total": 20, "model_version": 20, "created_at_ms": NOW - 600_000, "updated_at_ms": NOW - 300_000}]);
    let jobs: Vec<JobSummary> = serde_json::from_value(v).unwrap();
    let out = job_list(&jobs, &clock());
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with(" 1  digits  default  completed   20/20  "),
        "{out}"
    );
    assert!(out.contains("5 min ago"), "{out}");
    assert_eq!(job_list(&[], &clock()), "no jobs\n");
}

#[test]
fn a_halted_job_says_so_in_the_list_and_in_its_status() {
    let cause = "could not persist round 5 (committing round 5: database error: pool timed out)";
    let v = json!([{"job_id": 3, "name": "digits", "tenant": "default", "state": "running", "rounds_completed": 4,
                    "rounds_total": 40, "model_version": 4, "halted": cause, "created_at_ms": NOW - 600_000, "updated_at_ms": NOW - 300_000}]);
    let jobs: Vec<JobSummary> = serde_json::from_value(v).unwrap();
    let out = job_list(&jobs, &clock());
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.contains(" running (halted) ") && row.contains(" 4/40 "),
        "{out}"
    );
    let mut s = status_json(4);
    s["state"] = json!("running");
    s["reason"] = json!(format!("halted: {cause}; retrying every 2 s"));
    s["current"]["halted"] = json!(cause);
    let s: JobStatus = serde_json::from_value(s).unwrap();
    let out = job_status(&s, &clock());
    assert!(
        out.contains(&format!(
            "state      running: halted: {cause}; retrying every 2 s"
        )),
        "{out}"
    );
}

#[test]
fn numbers_and_durations() {
    assert_eq!(num(0.312_345_678_901_234_5), "0.3123");
    assert_eq!(num(12.345_67), "12.346");
    assert_eq!(num(0.0), "0.0000");
    assert_eq!(num(1e-5), "1.00e-5");
    assert_eq!(duration_short(850), "850 ms");
    assert_eq!(duration_short(63_500), "1 min 03 s");
    assert_eq!(duration_words(7_500_000), "2 h 5 min");
    assert_eq!(bytes_human(512), "512 B");
    assert_eq!(bytes_human(208_552), "203.7 KiB");
    assert_eq!(thousands(52_138), "52,138");
    assert_eq!(thousands(999), "999");
    assert_eq!(file_stem("my job/v2"), "my-job-v2");
    assert_eq!(clock().relative(NOW - 500), "just now");
}
