//! Models by injection: a coordinator whose job model (layout, initial parameters, evaluator)
//! comes from the caller's `ModelProvider`, not from a built-in model, driven by real SDK clients
//! with a trivial `LocalTrainer`; evaluation is recorded after the commit; and a coordinator
//! without a provider refuses jobs with a one-line reason.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use flotilla_client::{BoxError, Client, ClientConfig, LocalTrainer, TaskInfo, TrainOutcome};
use flotilla_coordinator::models::{EvalReport, Evaluate};
use flotilla_coordinator::spec::JobSpec;
use flotilla_coordinator::{JobModel, ModelProvider};
use flotilla_core::{ParamLayout, TensorSpec};
use serde_json::Value;
use tokio::sync::watch;

/// Two tensors, `a [3]` and `b [2, 2]`: no built-in model looks like this.
fn layout() -> ParamLayout {
    ParamLayout::new(vec![
        TensorSpec::new("a", [3]),
        TensorSpec::new("b", [2, 2]),
    ])
}

const INITIAL: [f32; 7] = [0.5, -1.0, 2.0, 0.0, 0.25, 3.0, -0.5];

/// The caller's models: always the layout above; an evaluator whose "loss" is the sum of the
/// parameters, so the test can tell which model it saw.
#[derive(Debug)]
struct CallerModels;

struct SumEvaluator;

impl Evaluate for SumEvaluator {
    fn evaluate(&mut self, params: &[f32]) -> Result<EvalReport, String> {
        Ok(EvalReport {
            num_samples: params.len(),
            loss: params.iter().map(|&p| f64::from(p)).sum(),
            accuracy: 0.5,
        })
    }
}

impl ModelProvider for CallerModels {
    fn model(&self, _spec: &JobSpec) -> Result<JobModel, String> {
        Ok(JobModel {
            layout: layout(),
            initial: INITIAL.to_vec(),
        })
    }

    fn evaluator(&self, _spec: &JobSpec) -> Result<Box<dyn Evaluate>, String> {
        Ok(Box::new(SumEvaluator))
    }
}

/// Adds `step` to every parameter of the global model; reports `samples` samples.
struct AddStep {
    step: f32,
    samples: u64,
}

impl LocalTrainer for AddStep {
    fn num_samples(&self) -> u64 {
        self.samples
    }

    fn train(&mut self, task: &TaskInfo, global: &[f32]) -> Result<TrainOutcome, BoxError> {
        assert_eq!(
            task.layout,
            layout(),
            "the task carries the provider's layout"
        );
        Ok(TrainOutcome {
            params: global.iter().map(|g| g + self.step).collect(),
            num_samples: self.samples,
            metrics: Default::default(),
            local_steps: 1,
        })
    }
}

/// A job for two clients; the `[model]` section must name a built-in family to pass validation,
/// but the provider decides what the model is. Evaluation on "digits" (its shape fits the spec).
fn spec(rounds: u64) -> String {
    format!(
        r#"
name = "injected"
seed = 3
rounds = {rounds}
clients_per_round = 2
[round]
deadline_seconds = 60
min_report_fraction = 1.0
selection_window_ms = 100
retry_after_ms = 50
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 8
learning_rate = 0.1
[eligibility]
min_samples = 1
[evaluation]
dataset = "digits"
"#
    )
}

fn client_config(h: &Harness, certs: &Path, state: &Path, token: &str) -> ClientConfig {
    let mut c = ClientConfig::new(format!("https://localhost:{}", h.grpc_addr.port()), state);
    c.ca_cert = Some(certs.join("ca.pem"));
    c.enrollment_token = Some(token.to_owned());
    c
}

async fn status(h: &Harness, job: u64) -> Value {
    h.admin("GET", &format!("/v1/jobs/{job}"), "").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_the_callers_model_and_commits_the_fedavg_of_the_reports() {
    let (_dir, data, certs) = tmp();
    let h = start_with(&data, &certs, |c| c.models = Some(Arc::new(CallerModels))).await;
    let req = serde_json::json!({"uses": 2}).to_string();
    let (code, body) = h.admin("POST", "/v1/enrollment-tokens", &req).await;
    assert_eq!(code, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let job = h.submit(&spec(2)).await;

    let (stop, stopped) = watch::channel(false);
    let run = |i: usize, step: f32, samples: u64| {
        let config = client_config(&h, &certs, &data.join(format!("client-{i}")), &token);
        let mut stopped = stopped.clone();
        async move {
            Client::new(config)
                .unwrap()
                .run(AddStep { step, samples }, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
                .expect("client run")
        }
    };
    let wait = async {
        // Both rounds committed and the last one evaluated (after its commit, so polled).
        for _ in 0..600 {
            let s = status(&h, job).await;
            let last = &s["history"][1]["metrics"];
            if s["state"] == "completed" && last["eval_loss"].is_number() {
                let _ = stop.send(true);
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(true);
        panic!("the job did not complete: {}", status(&h, job).await);
    };
    let (_, _, s) = tokio::join!(run(0, 1.0, 10), run(1, -0.5, 30), wait);

    // FedAvg: round r adds the sample-weighted mean step (10 × 1 + 30 × −0.5) / 40 = −0.125.
    let expected: Vec<f32> = INITIAL.iter().map(|p| p - 0.25).collect();
    let committed = committed_model(&data, &job.to_string(), 2);
    assert_eq!(committed.len(), 7);
    for (k, (c, e)) in committed.iter().zip(&expected).enumerate() {
        assert!((c - e).abs() < 1e-6, "coordinate {k}: {c} vs {e}");
    }
    // The evaluation saw the committed model and went into the round's metrics.
    let sum: f64 = committed.iter().map(|&p| f64::from(p)).sum();
    let m = &s["history"][1]["metrics"];
    assert!((m["eval_loss"].as_f64().unwrap() - sum).abs() < 1e-9, "{s}");
    assert_eq!(m["eval_samples"], 7, "{s}");
    assert_eq!(m["eval_accuracy"], 0.5, "{s}");

    // The finished job's model is described with the stored layout (nothing is rebuilt).
    let (code, info) = h
        .admin("GET", &format!("/v1/jobs/{job}/model/info"), "")
        .await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["num_params"], 7, "{info}");
    let tensors: Vec<(String, Value)> = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["shape"].clone()))
        .collect();
    assert_eq!(
        tensors,
        vec![
            ("a".to_owned(), serde_json::json!([3])),
            ("b".to_owned(), serde_json::json!([2, 2]))
        ]
    );
    h.stop().await;

    // A coordinator without any provider still serves it: the layout is stored with the job.
    let h = start_with(&data, &certs, |c| c.models = None).await;
    let (code, again) = h
        .admin("GET", &format!("/v1/jobs/{job}/model/info"), "")
        .await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["tensors"], info["tensors"]);
    let s = status(&h, job).await;
    assert_eq!(s["history"][1]["metrics"]["eval_samples"], 7, "{s}");
    h.stop().await;
}

/// A provider that serves no spec.
#[derive(Debug)]
struct Refuses;

impl ModelProvider for Refuses {
    fn model(&self, spec: &JobSpec) -> Result<JobModel, String> {
        Err(format!(
            "model: this provider has no {:?} model\n(second line)",
            spec.model.kind
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_that_serves_the_spec_submission_fails_with_one_line() {
    let (_dir, data, certs) = tmp();
    let h = start_with(&data, &certs, |c| c.models = None).await;
    let (code, body) = h.admin("POST", "/v1/jobs", &job_toml(1, 2)).await;
    assert_eq!(code, 400, "{body}");
    let text = body["error"].as_str().unwrap();
    assert!(
        text.starts_with("model: this coordinator has no model provider"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
    let (code, jobs) = h.admin("GET", "/v1/jobs", "").await;
    assert_eq!(code, 200);
    assert_eq!(jobs.as_array().map_or(0, Vec::len), 0, "no trace: {jobs}");
    h.stop().await;

    let (_dir, data, certs) = tmp();
    let h = start_with(&data, &certs, |c| c.models = Some(Arc::new(Refuses))).await;
    let (code, body) = h.admin("POST", "/v1/jobs", &job_toml(1, 2)).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["error"].as_str(),
        Some("model: this provider has no \"logreg\" model (second line)"),
        "{body}"
    );
    // The provider of the test harness has no evaluator: a job asking for one is refused too.
    let (_dir2, data2, _) = tmp();
    let h2 = start_with(&data2, &certs, |_| {}).await;
    let (code, body) = h2.admin("POST", "/v1/jobs", &spec(1)).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["error"].as_str(),
        Some("evaluation.dataset: this coordinator has no server-side evaluator"),
        "{body}"
    );
    h2.stop().await;
    h.stop().await;
}
