//! Federated evaluation with real processes: a coordinator and four `flotilla client` processes
//! on digits, two announcing `--cohort region=eu` and two `region=us`, train a 2-round job whose
//! spec asks for a federated evaluation of its last round (`[evaluation] federated_every`); then
//! `flotilla job evaluate JOB --round 2 --clients 4` evaluates round 2 on demand. Each cohort's
//! accuracy and loss equal (within 1e-6) a direct computation here: the job's model downloaded
//! and evaluated with `DatasetTrainer`s built exactly as those clients built theirs. A malformed
//! report sent over raw gRPC is refused with INVALID_ARGUMENT and the server stays up.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{DatasetTrainer, ModelDescription, TaskInfo, TrainingConfig};
use flotilla_coordinator::api::evaluations::{EvalKind, EvaluationView, JobEvaluations};
use flotilla_data::DatasetName;
use flotilla_ml::{ModelKind, ModelSpec};
use flotilla_proto::v1;
use serde_json::Value;

const CLIENTS: usize = 4;

fn spec() -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("name = \"digits\"", "name = \"digits-feval\"")
        .replace("rounds = 20", "rounds = 2")
        .replace("clients_per_round = 10", "clients_per_round = 4")
        .replace("min_clients = 10", "min_clients = 4")
        .replace(
            "[evaluation]\n",
            "[evaluation]\nfederated_every = 2\nfederated_clients = 4\n",
        )
}

fn region(i: usize) -> &'static str {
    if i < 2 { "eu" } else { "us" }
}

/// Loss and accuracy of `params` on client `i`'s evaluation rows, sample-weighted per cohort:
/// `cohort → (loss, accuracy, samples)`.
fn direct(params: &[f32]) -> BTreeMap<String, (f64, f64, u64)> {
    let spec = ModelSpec {
        kind: ModelKind::LogReg,
        input_shape: vec![64],
        num_classes: 10,
    };
    let layout = flotilla_ml::build(&spec, 0).unwrap().layout().clone();
    assert_eq!(layout.len(), params.len(), "the model is the job's logreg");
    let task = TaskInfo {
        job_id: "direct".into(),
        round: 2,
        attempt: 1,
        stage_index: 0,
        model_version: 2,
        layout_fingerprint: layout.fingerprint(),
        layout,
        model: Some(ModelDescription {
            kind: "logreg".into(),
            input_shape: vec![64],
            num_classes: 10,
            hidden: 0,
            embed: 0,
        }),
        training: TrainingConfig {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            seed: 0,
            proximal_mu: 0.0,
            max_grad_norm: 0.0,
        },
        gradient_correction: None,
        deadline: None,
    };
    let mut sums: BTreeMap<String, (f64, f64, u64)> = BTreeMap::new();
    for i in 0..CLIENTS {
        // As `flotilla client --dataset digits --partition i/4` builds its trainer.
        let mut t = DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), i, CLIENTS)
            .unwrap();
        let e = t.evaluate_task(&task, params).unwrap();
        let acc = e.metrics["accuracy"];
        let s = sums.entry(format!("region={}", region(i))).or_default();
        s.0 += e.loss * e.num_samples as f64;
        s.1 += acc * e.num_samples as f64;
        s.2 += e.num_samples;
    }
    sums.into_iter()
        .map(|(k, (l, a, n))| (k, (l / n as f64, a / n as f64, n)))
        .collect()
}

fn check_cohorts(
    summary: &flotilla_coordinator::api::evaluations::EvalSummary,
    expected: &BTreeMap<String, (f64, f64, u64)>,
) {
    assert_eq!(summary.overall.clients, CLIENTS as u64, "{summary:?}");
    assert_eq!(
        summary.cohorts.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, (loss, acc, n)) in expected {
        let c = &summary.cohorts[name];
        assert_eq!((c.clients, c.samples), (2, *n), "{name}");
        let got = c.accuracy.unwrap();
        assert!((got - acc).abs() < 1e-6, "{name}: accuracy {got} vs {acc}");
        assert!(
            (c.loss - loss).abs() < 1e-6,
            "{name}: loss {} vs {loss}",
            c.loss
        );
    }
    let worst = expected
        .iter()
        .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .unwrap();
    assert_eq!(&summary.fairness.worst.as_ref().unwrap().0, worst.0);
}

/// A raw `SubmitEvaluation` with client 0's credential.
fn submit_raw(f: &Federation, report: v1::EvaluationReport) -> tonic::Status {
    let cred: Value = serde_json::from_slice(
        &std::fs::read(f.dir.join("client-0").join("credential.json")).unwrap(),
    )
    .unwrap();
    let bearer = format!("Bearer {}", cred["credential"].as_str().unwrap());
    let ca = std::fs::read(f.ca()).unwrap();
    let url = format!("https://127.0.0.1:{}", f.grpc);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut rpc = v1::coordinator_client::CoordinatorClient::new(channel);
        let mut req = tonic::Request::new(report);
        req.metadata_mut()
            .insert("authorization", bearer.parse().unwrap());
        rpc.submit_evaluation(req).await.unwrap_err()
    })
}

fn run(name: &str, database_url: Option<String>) {
    let mut f = Federation::new(name, database_url);
    let token = f.last_line(&["enroll-token", "create", "--uses", "4", "--expires", "1h"]);
    for i in 0..CLIENTS {
        let cohort = format!("region={}", region(i));
        f.spawn_client_with(
            &format!("client-{i}"),
            &token,
            &format!("{i}/{CLIENTS}"),
            &["--cohort", &cohort],
            "warn",
        );
    }
    let job = f.submit(&spec());
    f.wait_for(&job, "2 rounds", Duration::from_secs(240), completed);

    // The job's round-2 model, as committed, and what the clients' data say of it.
    let raw = f.dir.join("round2.f32");
    let o = f.admin_cli(&[
        "job",
        "download",
        &job,
        "--round",
        "2",
        "--format",
        "raw",
        "--out",
        raw.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let params: Vec<f32> = std::fs::read(&raw)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let expected = direct(&params);

    // On demand.
    let started = Instant::now();
    let o = f.admin_cli(&[
        "job",
        "evaluate",
        &job,
        "--round",
        "2",
        "--clients",
        "4",
        "--deadline",
        "90s",
        "--json",
    ]);
    assert!(
        o.status.success(),
        "{}; logs in {}",
        String::from_utf8_lossy(&o.stderr),
        f.dir.display()
    );
    let view: EvaluationView = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view.status, "done", "{view:?}");
    assert!(
        started.elapsed() < Duration::from_secs(80),
        "ended when 4 clients reported, not at the deadline"
    );
    check_cohorts(view.summary.as_ref().unwrap(), &expected);
    assert!(view.stored_id.is_some());

    // The job's own evaluation of its last round (`federated_every = 2`), stored with the job and
    // shown by `job status`.
    let deadline = Instant::now() + Duration::from_secs(150);
    let stored = loop {
        let o = f.admin_cli(&["job", "status", &job]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let j = fetch_job_evaluations(&f, &job);
        if let Some(e) = j.evaluations.iter().find(|e| e.kind == EvalKind::Job) {
            assert!(text.contains("federated evaluation:"), "{text}");
            assert!(text.contains("round 2: accuracy"), "{text}");
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the job's federated evaluation never ended; logs in {}",
            f.dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    check_cohorts(&stored.summary, &expected);

    // Malformed reports: refused, one line each, and the server stays up.
    let report = |loss: f64, accuracy: Option<f64>, labels: usize| v1::EvaluationReport {
        evaluation_id: view.id.to_string(),
        loss,
        accuracy,
        samples: 10,
        cohorts: (0..labels)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect(),
    };
    for (bad, what) in [
        (report(0.5, Some(1.5), 1), "accuracy"),
        (report(f64::NAN, Some(0.5), 1), "loss"),
        (report(0.5, Some(0.5), 17), "cohort labels"),
    ] {
        let s = submit_raw(&f, bad);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().contains(what) && !s.message().contains('\n'),
            "{s:?}"
        );
    }
    // A well-formed report for an evaluation that has ended.
    let s = submit_raw(&f, report(0.5, Some(0.5), 1));
    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
    assert!(f.admin_cli(&["job", "list"]).status.success());
}

/// `GET /v1/jobs/{id}/evaluations`.
fn fetch_job_evaluations(f: &Federation, job: &str) -> JobEvaluations {
    let (url, ca) = (
        format!("{}/v1/jobs/{job}/evaluations", f.admin_url()),
        std::fs::read(f.ca()).unwrap(),
    );
    std::thread::spawn(move || {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        http.get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .unwrap()
            .json::<JobEvaluations>()
            .unwrap()
    })
    .join()
    .unwrap()
}

#[test]
fn cohorts_match_a_direct_computation_sqlite() {
    run("feval-sqlite", None);
}

#[test]
fn cohorts_match_a_direct_computation_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_feval") else {
        return;
    };
    run("feval-postgres", Some(schema.url().to_owned()));
}
