//! A job whose model is given as a file (`[model] initial`), through the admin API's multipart
//! submission: the tasks carry the file's layout and values and the kind `custom`; a coordinator
//! restarted before the first commit — without any model provider — resumes from the stored
//! version-0 blob and commits; and what the API refuses, naming `model.initial`.

use crate::common;

use common::*;
use flotilla_proto::v1;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

const BOUNDARY: &str = "flotilla-test-boundary";

/// The `(name, bytes)` parts of a multipart body.
type Parts<'a> = Vec<(&'a str, &'a [u8])>;

fn le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `w` [2, 3] and `b` [2]: data order is `b`, `w` (safetensors sorts by name).
fn file() -> (Vec<u8>, Vec<f32>) {
    let w = [0.5f32, -1.0, 2.0, 0.0, 0.25, 3.0];
    let b = [-0.5f32, 1.5];
    let (wb, bb) = (le(&w), le(&b));
    let views = vec![
        (
            "w".to_owned(),
            TensorView::new(Dtype::F32, vec![2, 3], &wb).unwrap(),
        ),
        (
            "b".to_owned(),
            TensorView::new(Dtype::F32, vec![2], &bb).unwrap(),
        ),
    ];
    let bytes = safetensors::serialize(views, None).unwrap();
    (bytes, b.iter().chain(&w).copied().collect())
}

fn spec(extra: &str) -> String {
    format!(
        "name = \"given\"\nrounds = 1\nclients_per_round = 2\n[round]\nmin_report_fraction = 1.0\n\
         deadline_seconds = 60\nselection_window_ms = 100\nretry_after_ms = 50\n\
         [model]\ninitial = \"init.safetensors\"\n[train]\nlearning_rate = 0.1\n{extra}"
    )
}

/// A `multipart/form-data` body of `(name, bytes)` parts.
fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\ncontent-type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post(h: &Harness, parts: &[(&str, &[u8])]) -> (u16, Value) {
    h.admin_body(
        "POST",
        "/v1/jobs",
        Some(&format!("multipart/form-data; boundary={BOUNDARY}")),
        multipart(parts),
        Some(ADMIN_TOKEN),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_model_is_served_resumed_from_its_blob_and_committed() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let (bytes, initial) = file();
    let (code, body) = post(&h, &[("spec", spec("").as_bytes()), ("initial", &bytes)]).await;
    assert_eq!(code, 200, "{body}");
    let job = body["job_id"].as_u64().unwrap();
    let mut clients = vec![h.enroll("c0").await, h.enroll("c1").await];
    let tasks = wait_tasks(&mut clients).await;
    let info = tasks[0].model.as_ref().unwrap();
    let kind = info.spec.as_ref().map(|s| s.kind.as_str());
    assert_eq!(kind, Some("custom"));
    let names: Vec<(&str, &[u64])> = info
        .layout
        .as_ref()
        .unwrap()
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(names, vec![("b", &[2u64][..]), ("w", &[2, 3][..])]);
    assert_eq!(clients[0].download(&tasks[0]).await, initial);
    h.stop().await;

    // Restarted with no model provider at all: the initial model can only come from the store.
    // (The old clients' connections went with the old process; two new clients finish the job.)
    drop(clients);
    let h = start_with(&data, &certs, |c| c.models = None).await;
    let mut clients = vec![h.enroll("c2").await, h.enroll("c3").await];
    let tasks = wait_tasks(&mut clients).await;
    let mut ups = Vec::new();
    for (i, (c, t)) in clients.iter_mut().zip(&tasks).enumerate() {
        assert_eq!(
            c.download(t).await,
            initial,
            "resumed from the version-0 blob"
        );
        let u: Vec<f32> = initial.iter().map(|v| v + i as f32).collect();
        let r = c.upload(t, &u, samples(i)).await.expect("upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
        ups.push((u, samples(i)));
    }
    let st = h.job_status(job).await;
    assert_eq!(st.job.state, "completed");
    assert_eq!(
        committed_model(&data, &job.to_string(), 1),
        weighted_mean(&ups)
    );
    let (code, info) = h
        .admin("GET", &format!("/v1/jobs/{job}/model/info"), "")
        .await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["model"]["kind"], "custom", "{info}");
    assert_eq!(info["model"]["initial"], "init.safetensors", "{info}");
    assert_eq!(info["tensors"][1]["name"], "w", "{info}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_that_do_not_fit_are_refused_naming_model_initial() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let (bytes, _) = file();
    let custom = spec("");
    let builtin = job_toml(1, 2);
    let f64_file = {
        let data = vec![0u8; 16];
        let views = vec![(
            "fc.weight".to_owned(),
            TensorView::new(Dtype::F64, vec![2], &data).unwrap(),
        )];
        safetensors::serialize(views, None).unwrap()
    };
    let eval = spec("[evaluation]\ndataset = \"digits\"\n");
    let cases: Vec<(Parts<'_>, &str)> = vec![
        (
            vec![("spec", custom.as_bytes())],
            "model.initial: the spec names a model file but the request has no `initial` part",
        ),
        (
            vec![("spec", builtin.as_bytes()), ("initial", &bytes)],
            "model.initial: the request has an `initial` part but the spec has no [model] initial",
        ),
        (
            vec![("spec", custom.as_bytes()), ("initial", &f64_file)],
            "model.initial: tensor \"fc.weight\" is F64; only F32 tensors are supported",
        ),
        (
            vec![("spec", custom.as_bytes()), ("initial", b"not a model")],
            "model.initial: not a valid safetensors file",
        ),
        (
            vec![("spec", eval.as_bytes()), ("initial", &bytes)],
            "evaluation.dataset: a model given by model.initial has no server-side evaluator",
        ),
        (
            vec![("initial", &bytes)],
            "multipart body: the part `spec` (the job's TOML) is required",
        ),
        (
            vec![("spec", custom.as_bytes()), ("weights", &bytes)],
            "multipart body: unknown part \"weights\"",
        ),
        (
            vec![
                ("spec", custom.as_bytes()),
                ("initial", &bytes),
                ("initial", &bytes),
            ],
            "multipart body: part `initial` is given twice",
        ),
    ];
    for (parts, expected) in cases {
        let (code, body) = post(&h, &parts).await;
        assert_eq!(code, 400, "{expected}: {body}");
        let e = body["error"].as_str().unwrap_or_default();
        assert!(e.starts_with(expected), "{expected}: {e}");
    }
    // The plain TOML body of a given model has no file.
    let (code, body) = h.admin("POST", "/v1/jobs", &custom).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("model.initial:")),
        "{body}"
    );
    // Nothing was stored by any of them.
    let (_, jobs) = h.admin("GET", "/v1/jobs", "").await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
    h.stop().await;
}
