//! Real federations over the network, with real processes: a coordinator (`flotilla server`) and
//! client processes (`flotilla client`) on loopback with TLS, driven through the CLI exactly as the
//! README describes.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn job_spec(rounds: u64, clients: usize, deadline_s: u64, min_fraction: f64) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {clients}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {clients}"))
        .replace(
            "deadline_seconds = 60",
            &format!("deadline_seconds = {deadline_s}"),
        )
        .replace(
            "min_report_fraction = 0.8",
            &format!("min_report_fraction = {min_fraction}"),
        )
}

/// Every round 1..=n appears exactly once, in order, with participants.
fn assert_history(status: &Value, n: u64, min_participants: u64) {
    let history = status["history"].as_array().expect("history");
    let rounds: Vec<u64> = history
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rounds,
        (1..=n).collect::<Vec<_>>(),
        "each round exactly once: {status}"
    );
    for r in history {
        let p = r["participants"]
            .as_u64()
            .or_else(|| r["participants"].as_array().map(|a| a.len() as u64));
        assert!(p.unwrap_or(0) >= min_participants, "round {r}");
    }
}

fn run_ten_clients(name: &str, database_url: Option<String>) {
    let mut f = Federation::new(name, database_url);
    f.start_clients(10);
    let job = f.submit(&job_spec(5, 10, 60, 0.8));
    let s = f.wait_for(
        &job,
        "5 rounds, the last evaluated",
        Duration::from_secs(240),
        completed_and_evaluated,
    );
    assert_eq!(s["rounds_completed"], 5);
    assert_eq!(s["rounds_total"], 5);
    assert_history(&s, 5, 8);
    let acc = s["history"][4]["metrics"]["eval_accuracy"]
        .as_f64()
        .expect("server-side evaluation accuracy");
    assert!(acc > 0.6, "accuracy after 5 rounds {acc}");
}

#[test]
fn ten_clients_five_rounds_tls_sqlite() {
    run_ten_clients("sqlite", None);
}

#[test]
fn ten_clients_five_rounds_tls_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_e2e") else {
        return;
    };
    run_ten_clients("postgres", Some(schema.url().to_owned()));
}

#[test]
fn coordinator_killed_mid_job_resumes_and_commits_each_round_once() {
    let mut f = Federation::new("kill9", None);
    f.start_clients(6);
    let job = f.submit(&job_spec(6, 6, 30, 0.5));
    f.wait_for(&job, "round 2 committed", Duration::from_secs(180), |s| {
        s["rounds_completed"].as_u64().unwrap_or(0) >= 2
    });
    f.kill_server();
    std::thread::sleep(Duration::from_millis(500));
    f.start_server();
    let s = f.wait_for(
        &job,
        "completion after restart",
        Duration::from_secs(300),
        completed,
    );
    assert_history(&s, 6, 3);
}

#[test]
fn dropouts_commit_from_survivors_above_the_minimum() {
    let mut f = Federation::new("dropout", None);
    f.start_clients(10);
    // Short deadline so the round with dead clients closes quickly; 7 of 10 ≥ 0.6.
    let job = f.submit(&job_spec(3, 10, 8, 0.6));
    f.wait_for(&job, "round 1 committed", Duration::from_secs(180), |s| {
        s["rounds_completed"].as_u64().unwrap_or(0) >= 1
    });
    // 30% of the clients die.
    for c in f.clients.0.iter_mut().take(3) {
        let _ = c.kill();
        let _ = c.wait();
    }
    let s = f.wait_for(
        &job,
        "round 2 from the survivors",
        Duration::from_secs(180),
        |s| s["rounds_completed"].as_u64().unwrap_or(0) >= 2,
    );
    let participants = |s: &Value, i: usize| {
        s["history"][i]["participants"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(participants(&s, 0) == 10, "round 1 had everyone: {s}");
    let p2 = participants(&s, 1);
    assert!(
        (6..=7).contains(&p2),
        "round 2 commits from the 7 survivors (≥ 6 needed): {s}"
    );
    // With 7 live clients and clients_per_round = 10 the next round waits; three newcomers let it
    // run. They bring their own data as CSV files (`--data`), here rows of the digits train split.
    let train = flotilla_data::load(
        flotilla_data::DatasetName::Digits,
        Path::new("."),
        &flotilla_data::LoadOptions::default(),
    )
    .unwrap()
    .train;
    let first_new = f.clients.0.len();
    let token = f.last_line(&["enroll-token", "create", "--uses", "3"]);
    for i in 0..3 {
        let csv: String = (i * 100..i * 100 + 100)
            .map(|r| {
                let x = &train.features[r * 64..(r + 1) * 64];
                let cols: Vec<String> = x.iter().map(|v| v.to_string()).collect();
                format!("{},{}\n", cols.join(","), train.labels[r])
            })
            .collect();
        let csv_path = f.dir.join(format!("own-{i}.csv"));
        std::fs::write(&csv_path, csv).unwrap();
        let child = Command::new(bin())
            .args([
                "client",
                "--coordinator",
                &format!("https://127.0.0.1:{}", f.grpc),
            ])
            .args(["--ca-cert", &f.ca(), "--token", &token])
            .arg("--state-dir")
            .arg(f.dir.join(format!("client-new-{i}")))
            .arg("--data")
            .arg(&csv_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        f.clients.0.push(child);
    }
    assert_eq!(f.clients.0.len(), first_new + 3);
    let s = f.wait_for(&job, "completion", Duration::from_secs(180), completed);
    assert_history(&s, 3, 6);
}

#[test]
fn a_round_below_the_minimum_is_abandoned_and_retried() {
    let mut f = Federation::new("retry", None);
    f.start_clients(10);
    // 10 per round and at least 8 reports (0.8) to commit. A 4 s deadline closes the crippled
    // attempt quickly; a 3 s selection window leaves time to kill clients after a commit and before
    // the next round's cohort is chosen.
    let spec = job_spec(3, 10, 4, 0.8).replace("[model]", "selection_window_ms = 3000\n\n[model]");
    assert!(spec.contains("selection_window_ms = 3000"));
    let job = f.submit(&spec);
    f.wait_for(&job, "round 1 committed", Duration::from_secs(180), |s| {
        s["rounds_completed"].as_u64().unwrap_or(0) >= 1
    });
    // 3 of the 10 die. They checked in after their round-1 upload, so round 2 selects all 10
    // available clients; only the 7 survivors report: below the minimum of 8.
    for c in f.clients.0.iter_mut().take(3) {
        let _ = c.kill();
        let _ = c.wait();
    }
    // At the deadline the attempt is abandoned and round 2 is retried as attempt 2, which waits for
    // 10 live clients: the dead are not available any more.
    let s = f.wait_for(
        &job,
        "round 2 retried as attempt 2",
        Duration::from_secs(180),
        |s| s["current"]["round"] == 2 && s["current"]["attempt"].as_u64().unwrap_or(0) >= 2,
    );
    assert_eq!(s["current"]["attempt"], 2, "{s}");
    assert_eq!(
        s["rounds_completed"], 1,
        "the abandoned attempt committed nothing: {s}"
    );
    assert_eq!(s["history"].as_array().map(Vec::len), Some(1), "{s}");
    // Three newcomers join the seven survivors; the retry runs and the job completes.
    let token = f.last_line(&["enroll-token", "create", "--uses", "3"]);
    for i in 0..3 {
        f.spawn_client(&format!("client-new-{i}"), &token, &format!("{i}/10"));
    }
    let s = f.wait_for(&job, "completion", Duration::from_secs(180), completed);
    assert_history(&s, 3, 8);
    // `job status --json` shows the retry: round 2 was committed by its second attempt.
    assert_eq!(s["history"][1]["attempt"], 2, "{s}");
    assert_eq!(s["history"][1]["metrics"]["attempt"], 2, "{s}");
}

/// FedProx and SCAFFOLD through the coordinator: μ travels in the task's training configuration,
/// SCAFFOLD's server control variate is a second download and `Δcᵢ` the second half of each upload.
/// Both jobs run at once on the same five client processes, and both learn.
#[test]
fn fedprox_and_scaffold_jobs_run_side_by_side() {
    let mut f = Federation::new("prox-scaffold", None);
    f.start_clients(5);
    let base = job_spec(4, 5, 60, 0.8);
    let prox = f.submit(&format!(
        "{base}\n[strategy]\nname = \"fedprox\"\nmu = 0.01\n"
    ));
    let scaffold = f.submit(&format!("{base}\n[strategy]\nname = \"scaffold\"\n"));
    // A third job whose clients clip every local gradient to a norm too small to learn anything:
    // shows `train.max_grad_norm` reaches real clients' trainers.
    let frozen = f.submit(&base.replace(
        "learning_rate = 0.1",
        "learning_rate = 0.1\nmax_grad_norm = 1e-6",
    ));
    let mut learned_loss = 0.0f64;
    for (job, what) in [(&prox, "fedprox"), (&scaffold, "scaffold")] {
        let s = f.wait_for(job, what, Duration::from_secs(300), completed_and_evaluated);
        assert_history(&s, 4, 4);
        let acc = s["history"][3]["metrics"]["eval_accuracy"]
            .as_f64()
            .expect("server-side evaluation accuracy");
        assert!(acc > 0.6, "{what}: accuracy after 4 rounds {acc}");
        learned_loss = learned_loss.max(
            s["history"][3]["metrics"]["eval_loss"]
                .as_f64()
                .expect("eval loss"),
        );
    }
    // Accuracy of a linear model is scale-free (tiny steps in the right direction already classify),
    // so compare the loss: 4 rounds of steps of length ≤ lr·1e-6 leave it where it started.
    let s = f.wait_for(
        &frozen,
        "max_grad_norm",
        Duration::from_secs(300),
        completed_and_evaluated,
    );
    assert_history(&s, 4, 4);
    let loss = s["history"][3]["metrics"]["eval_loss"]
        .as_f64()
        .expect("eval loss");
    assert!(
        loss > 2.2 && loss > learned_loss + 0.3,
        "clients clipped to a 1e-6 gradient norm still moved the model: eval loss {loss} (unclipped jobs: ≤ {learned_loss})"
    );
    // Every client that served the SCAFFOLD job keeps its own control variate cᵢ for it.
    let kept = (0..5)
        .filter(|i| {
            f.dir
                .join(format!("client-{i}/scaffold"))
                .read_dir()
                .is_ok_and(|d| d.count() == 1)
        })
        .count();
    assert!(
        kept >= 4,
        "{kept} of 5 clients kept a SCAFFOLD control variate"
    );
}
