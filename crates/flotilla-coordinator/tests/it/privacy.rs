//! Differential privacy through the real coordinator: central DP-FedAvg, the job budget and the tenant
//! ledger refusing rounds before they start, status fields, and accounting that survives a restart.

use crate::common;

use common::*;
use flotilla_coordinator::TenantPrivacy;
use flotilla_proto::v1;

const LEN: usize = 10;

/// `job_toml` with a `[privacy]` table (q = 1: 4 clients selected from a population of 4).
fn dp_job(rounds: u64, max_epsilon: f64) -> String {
    format!(
        "{}[privacy]\nnoise_multiplier = 1.0\nclip_norm = 0.5\ndelta = 1e-5\npopulation = 4\nmax_epsilon = {max_epsilon}\n",
        job_toml(rounds, 4)
    )
}

fn eps(rounds: u64) -> f64 {
    flotilla_privacy::epsilon(1.0, 1.0, rounds, 1e-5)
        .unwrap()
        .epsilon
}

/// One round where every client uploads; returns the committed model.
async fn dp_round(clients: &mut [Client], round: u64) -> Vec<f32> {
    let tasks = wait_tasks(clients).await;
    let mut global = Vec::new();
    for (i, (c, t)) in clients.iter_mut().zip(&tasks).enumerate() {
        assert_eq!(t.round, round);
        global = c.download(t).await;
        let r = c
            .upload(t, &update(i, round, LEN), samples(i))
            .await
            .expect("upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    }
    global
}

async fn status(h: &Harness, job: u64) -> serde_json::Value {
    let (code, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(code, 200, "{st}");
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_refuse_rounds_before_they_start_and_survive_a_restart() {
    let (_dir, data, certs) = tmp();
    // The tenant may spend what 3 rounds cost; job 1 may spend what 2 rounds cost.
    let tenant = TenantPrivacy {
        max_epsilon: eps(3) + 1e-9,
        delta: 1e-5,
    };
    let h = start_with(&data, &certs, |c| c.tenant_privacy = Some(tenant)).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }
    let job1 = h.submit(&dp_job(5, eps(2) + 1e-9)).await;
    dp_round(&mut clients, 1).await;
    // Round 2's clients train from model version 1.
    let v1_model = dp_round(&mut clients, 2).await;
    // Round 3 is refused before any client is configured for it: the job ends.
    let st = status(&h, job1).await;
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["rounds_completed"], 2);
    let why = st["stopped_reason"]
        .as_str()
        .expect("stopped_reason")
        .to_owned();
    assert!(
        why.contains("round 3") && why.contains("refused") && why.contains("budget"),
        "{why}"
    );
    assert!(
        (st["epsilon_spent"].as_f64().unwrap() - eps(2)).abs() < 1e-9,
        "{st}"
    );
    assert_eq!(st["delta"], 1e-5);
    let hist = st["history"].as_array().unwrap();
    assert!(
        (hist[0]["epsilon_spent"].as_f64().unwrap() - eps(1)).abs() < 1e-9,
        "{st}"
    );
    assert_eq!(hist[0]["metrics"]["privacy"]["q"], 1.0);
    assert_eq!(hist[0]["metrics"]["privacy"]["noise_std"], 0.5, "σ·C");
    // The committed model is the noised, clipped mean: not the plain weighted mean of the uploads.
    let ups: Vec<(Vec<f32>, u64)> = (0..4).map(|i| (update(i, 1, LEN), samples(i))).collect();
    let plain = weighted_mean(&ups);
    assert!(v1_model.iter().all(|v| v.is_finite()));
    assert!(
        v1_model
            .iter()
            .zip(&plain)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "{v1_model:?} vs {plain:?}"
    );

    // Job 2 (no job budget of its own to speak of) hits the tenant's: round 1 fits (2 + 1 = 3
    // rounds), round 2 does not.
    let job2 = h.submit(&dp_job(5, 1000.0)).await;
    dp_round(&mut clients, 1).await;
    let st = status(&h, job2).await;
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["rounds_completed"], 1);
    let why = st["stopped_reason"].as_str().unwrap().to_owned();
    assert!(why.contains("tenant") && why.contains("round 4"), "{why}");
    h.stop().await;

    // After a restart the spend is rebuilt from the committed rounds: the tenant is still at its
    // budget, so a new DP job is refused at submission, with the reason; a job without DP is not.
    let h = start_with(&data, &certs, |c| c.tenant_privacy = Some(tenant)).await;
    let st = status(&h, job1).await;
    assert!(
        (st["epsilon_spent"].as_f64().unwrap() - eps(2)).abs() < 1e-9,
        "{st}"
    );
    let why = st["stopped_reason"]
        .as_str()
        .expect("reason recomputed after the restart")
        .to_owned();
    assert!(why.contains("round 3") && why.contains("budget"), "{why}");
    assert!(
        (st["privacy"]["tenant_epsilon_spent"].as_f64().unwrap() - eps(3)).abs() < 1e-9,
        "{st}"
    );
    let (code, body) = h.admin("POST", "/v1/jobs", &dp_job(5, 1000.0)).await;
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("tenant") && msg.contains("refused"), "{msg}");
    let (code, body) = h.admin("POST", "/v1/jobs", &job_toml(1, 4)).await;
    assert_eq!(code, 200, "{body}");
    h.stop().await;
}

async fn refuse_in(h: &Harness, extra: &str) -> String {
    let text = format!("{}[privacy]\n{extra}", job_toml(3, 4));
    let (code, body) = h.admin("POST", "/v1/jobs", &text).await;
    assert_eq!(code, 400, "{extra}: {body}");
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_privacy_sections_are_refused_with_the_parameter() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let m = refuse_in(&h, "mode = \"distributed\"\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 10\n").await;
    assert!(
        m.starts_with("privacy.mode") && m.contains("[secagg]"),
        "{m}"
    );
    let m = refuse_in(
        &h,
        "noise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\n",
    )
    .await;
    assert!(m.starts_with("privacy.population"), "{m}");
    let m = refuse_in(
        &h,
        "noise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 2\n",
    )
    .await;
    assert!(
        m.starts_with("privacy.population") && m.contains("≥ the 4"),
        "{m}"
    );
    let m = refuse_in(
        &h,
        "noise_multiplier = 0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 10\n",
    )
    .await;
    assert!(m.starts_with("privacy.noise_multiplier"), "{m}");
    // A first round over the job's own budget: refused at submission.
    let m = refuse_in(&h, "noise_multiplier = 0.5\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 4\nmax_epsilon = 0.1\n").await;
    assert!(m.contains("round 1") && m.contains("refused"), "{m}");
    let (code, list) = h.admin("GET", "/v1/jobs", "").await;
    assert_eq!(code, 200);
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "refused jobs leave no trace: {list}"
    );
    h.stop().await;
}
