//! FedBuff end to end with real processes: a `flotilla server` and client processes of different
//! speeds (`--train-delay-ms`) on loopback with TLS, running a `[strategy] name = "fedbuff"` job.
//! Several model versions commit, some of them aggregate stale updates (τ > 0, visible in
//! `job status --json`), accuracy rises far above the initial model's, a client that is always too
//! slow is told `too_stale` and fetches fresh work instead of retrying, and no client fails.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_ml::{ModelKind, ModelSpec, Samples};

const STEPS: u64 = 50;
const K: u64 = 3;
const MAX_STALENESS: u64 = 6;

fn job_spec() -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    let spec = base
        .replace("rounds = 20", &format!("rounds = {STEPS}"))
        .replace("clients_per_round = 10", "clients_per_round = 3")
        .replace("min_clients = 10", "min_clients = 3")
        .replace("deadline_seconds = 60", "deadline_seconds = 30")
        .replace("retry_after_ms = 500", "retry_after_ms = 100");
    assert!(
        spec.contains(&format!("rounds = {STEPS}")) && spec.contains("retry_after_ms = 100"),
        "{spec}"
    );
    format!(
        "{spec}\n[strategy]\nname = \"fedbuff\"\nbuffer_size = {K}\nconcurrency = 6\nmax_staleness = {MAX_STALENESS}\nstaleness_exponent = 0.5\n"
    )
}

/// Accuracy on the digits test split of the job's initial model (logreg built from the job seed,
/// as the coordinator builds it).
fn initial_accuracy() -> f64 {
    let spec = ModelSpec {
        kind: ModelKind::LogReg,
        input_shape: vec![64],
        num_classes: 10,
    };
    let mut model = flotilla_ml::build(&spec, 42).unwrap();
    let test = flotilla_data::load(
        flotilla_data::DatasetName::Digits,
        std::path::Path::new("."),
        &Default::default(),
    )
    .unwrap()
    .test;
    let indices: Vec<u32> = (0..test.len() as u32).collect();
    let data = Samples {
        features: &test.features,
        feature_len: test.feature_len(),
        labels: &test.labels,
        indices: &indices,
    };
    model.evaluate(&data).unwrap().accuracy
}

#[test]
fn fedbuff_job_with_clients_of_different_speeds() {
    let started = Instant::now();
    let mut f = Federation::new("fedbuff", None);
    // Five clients of different speeds (training takes a few ms; the delays make the job last
    // seconds), and one so slow (3 s per task) that the others commit far more than max_staleness
    // versions while it trains: its updates come back too stale.
    let delays = [100u64, 150, 250, 400, 600, 3000];
    let n = delays.len();
    let token = f.last_line(&[
        "enroll-token",
        "create",
        "--uses",
        &n.to_string(),
        "--expires",
        "1h",
    ]);
    let job = f.submit(&job_spec());
    for (i, d) in delays.iter().enumerate() {
        let delay = d.to_string();
        f.spawn_client_with(
            &format!("client-{i}"),
            &token,
            &format!("{i}/{n}"),
            &["--train-delay-ms", &delay],
            "info",
        );
    }
    let s = f.wait_for(
        &job,
        "all server steps, the last evaluated",
        Duration::from_secs(120),
        completed_and_evaluated,
    );
    let took = started.elapsed();

    // Every version 1..=STEPS exactly once, each a step of K updates at most MAX_STALENESS old.
    let history = s["history"].as_array().expect("history");
    let rounds: Vec<u64> = history
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, (1..=STEPS).collect::<Vec<_>>(), "{s}");
    let mut stale_updates = 0;
    for r in history {
        let participants = r["participants"].as_array().expect("participants").len() as u64;
        let staleness: Vec<u64> = r["metrics"]["staleness"]
            .as_array()
            .unwrap_or_else(|| panic!("FedBuff commits list each update's staleness: {r}"))
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(participants, K, "{r}");
        assert_eq!(staleness.len() as u64, K, "{r}");
        assert!(staleness.iter().all(|&t| t <= MAX_STALENESS), "{r}");
        assert_eq!(
            r["metrics"]["staleness_max"].as_u64(),
            staleness.iter().copied().max(),
            "{r}"
        );
        stale_updates += staleness.iter().filter(|&&t| t > 0).count();
    }
    assert!(
        stale_updates > 0,
        "clients of different speeds produce stale updates: {s}"
    );

    // The model learned: far above the initial model (chance level for 10 classes is 0.1).
    let initial = initial_accuracy();
    let last = history.last().unwrap()["metrics"]["eval_accuracy"]
        .as_f64()
        .expect("server-side accuracy");
    assert!(
        last > initial + 0.3 && last > 0.6,
        "accuracy {initial:.3} → {last:.3}"
    );

    // No client failed: all still running, no error in any log, no task given up.
    for (i, c) in f.clients.0.iter_mut().enumerate() {
        assert!(
            c.try_wait().unwrap().is_none(),
            "client {i} exited; see {}",
            f.dir.display()
        );
    }
    let logs: Vec<String> = (0..n)
        .map(|i| std::fs::read_to_string(f.dir.join(format!("client-{i}.log"))).unwrap_or_default())
        .collect();
    for (i, log) in logs.iter().enumerate() {
        for bad in ["ERROR", "task abandoned", "training failed"] {
            assert!(!log.contains(bad), "client {i} log has {bad:?}:\n{log}");
        }
        // Refusals other than "the job is over" (an update still in training when the last step
        // committed: `job_ended`, logged at INFO, or `not_accepting`) would be failures.
        for line in log
            .lines()
            .filter(|l| l.contains("update rejected by the coordinator"))
        {
            assert!(
                line.contains("reason=not_accepting"),
                "client {i}: {line}\n{log}"
            );
        }
    }
    // The slowest client's too-stale update was refused as such, not retried: it checked in for
    // fresh work and got a task on a newer version.
    let slow = &logs[n - 1];
    assert!(
        slow.contains("too_stale") && slow.contains("checking in for fresh work"),
        "slow client log:\n{slow}"
    );
    let uploads_of_first_task = slow.matches("model_version=0\n").count();
    assert!(
        uploads_of_first_task <= 1,
        "the refused task was not received again:\n{slow}"
    );
    eprintln!(
        "fedbuff e2e: {STEPS} steps, {stale_updates} stale updates, accuracy {initial:.3} → {last:.3}, {took:?}"
    );
}
