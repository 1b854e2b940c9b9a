//! A job whose model is given as a file (`[model] initial = "init.safetensors"`), against a real
//! coordinator: `flotilla job submit` sends the file with the spec, the coordinator takes its
//! layout (no model provider is asked), clients with a trainer of their own train it, and
//! `flotilla job download` gives the tensors back under the file's names. Bad files are refused
//! through the CLI, naming the tensor or the key.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use flotilla_client::{
    BoxError, CUSTOM_MODEL_KIND, Client, ClientConfig, LocalTrainer, TaskInfo, TrainOutcome,
};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

/// `fc.weight` [10, 64] and `fc.bias` [10], as a PyTorch `nn.Linear(64, 10)` would name them.
fn weight() -> Vec<f32> {
    (0..640).map(|i| ((i % 17) as f32 - 8.0) / 64.0).collect()
}

fn bias() -> Vec<f32> {
    (0..10).map(|i| i as f32 / 10.0).collect()
}

fn le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A safetensors file of `(name, dtype, shape, bytes)`.
fn safetensors_file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| ((*n).to_owned(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn good_file() -> Vec<u8> {
    safetensors_file(&[
        ("fc.weight", Dtype::F32, vec![10, 64], le(&weight())),
        ("fc.bias", Dtype::F32, vec![10], le(&bias())),
    ])
}

fn spec(initial: &str) -> String {
    format!(
        "name = \"custom-linear\"\nrounds = 2\nclients_per_round = 2\n\
         [round]\nmin_clients = 2\nmin_report_fraction = 1.0\ndeadline_seconds = 120\n\
         retry_after_ms = 200\n\n[model]\ninitial = \"{initial}\"\n\n[train]\nlearning_rate = 0.1\n"
    )
}

/// Writes `jobs/<name>.toml` naming `init` (relative) and, if given, `jobs/<init>` with `bytes`;
/// the job file's path. The CLI runs in the workspace root, so the file is found only relative to
/// the job file.
fn job_files(f: &Federation, name: &str, init: &str, bytes: Option<&[u8]>) -> PathBuf {
    let dir = f.dir.join("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(b) = bytes {
        std::fs::write(dir.join(init), b).unwrap();
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec(init)).unwrap();
    path
}

fn submit(f: &Federation, job_file: &Path) -> std::process::Output {
    f.admin_cli(&["job", "submit", job_file.to_str().unwrap()])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Returns `global + 0.5` after checking that the task is the custom layout.
struct Nudge;

impl LocalTrainer for Nudge {
    fn num_samples(&self) -> u64 {
        5
    }

    fn train(&mut self, task: &TaskInfo, global: &[f32]) -> Result<TrainOutcome, BoxError> {
        let names: Vec<&str> = task
            .layout
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        if names != ["fc.bias", "fc.weight"] || global.len() != 650 {
            return Err(format!("unexpected layout {names:?} of {} values", global.len()).into());
        }
        if task.model.as_ref().map(|m| m.kind.as_str()) != Some(CUSTOM_MODEL_KIND) {
            return Err(format!("the task's model is {:?}, not custom", task.model).into());
        }
        Ok(TrainOutcome {
            params: global.iter().map(|v| v + 0.5).collect(),
            num_samples: 5,
            ..Default::default()
        })
    }
}

#[test]
#[allow(clippy::result_large_err)]
fn a_job_given_by_its_initial_file_is_trained_by_brought_trainers_and_downloads_by_name() {
    let f = Federation::new("custom-model", None);
    let job_file = job_files(&f, "job", "init.safetensors", Some(&good_file()));
    let out = submit(&f, &job_file);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = last_line(&out);
    let s = f.status(&job);
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["rounds_completed"], 0, "{s}");

    let token = f.last_line(&["enroll-token", "create", "--uses", "2", "--expires", "1h"]);
    let clients: Vec<Client> = (0..2)
        .map(|i| {
            let mut config = ClientConfig::new(
                format!("https://127.0.0.1:{}", f.grpc),
                f.dir.join(format!("sdk-client-{i}")),
            );
            config.ca_cert = Some(f.dir.join("certs/ca.pem"));
            config.enrollment_token = Some(token.clone());
            Client::new(config).expect("client config")
        })
        .collect();
    let status = std::thread::scope(|s| {
        let mut stops = Vec::new();
        for client in clients {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            s.spawn(move || {
                let rt = tokio::runtime::Runtime::new().expect("runtime");
                rt.block_on(client.run(Nudge, async move {
                    let _ = stopped.await;
                }))
                .map(|_| ())
                .map_err(|e| e.to_string())
            });
        }
        let status = f.wait_for(
            &job,
            "the custom job to complete",
            Duration::from_secs(240),
            |s| completed(s) || s["state"] == "failed",
        );
        for stop in stops {
            let _ = stop.send(());
        }
        status
    });
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["rounds_completed"], 2, "{status}");

    // The model info shows the file's layout (data order: safetensors sorts by name) and kind.
    let out_path = f.dir.join("trained.safetensors");
    let o = f.admin_cli(&[
        "job",
        "download",
        &job,
        "--json",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["model"]["kind"], CUSTOM_MODEL_KIND, "{info}");
    assert_eq!(info["model"]["initial"], "init.safetensors", "{info}");
    let tensors: Vec<(String, Vec<usize>)> = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                serde_json::from_value(t["shape"].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tensors,
        vec![
            ("fc.bias".to_owned(), vec![10]),
            ("fc.weight".to_owned(), vec![10, 64])
        ]
    );

    // The download has the file's names; two rounds of +0.5 moved every value by 1.
    let file = std::fs::read(&out_path).unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    for (name, initial) in [("fc.weight", weight()), ("fc.bias", bias())] {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{name}");
        let got: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got.len(), initial.len(), "{name}");
        for (g, i) in got.iter().zip(&initial) {
            assert!((g - (i + 1.0)).abs() < 1e-6, "{name}: {g} vs {i} + 1");
        }
    }
}

#[test]
fn bad_initial_files_are_refused_through_the_cli_naming_the_tensor_or_key() {
    let f = Federation::new("custom-refusals", None);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "f64",
            safetensors_file(&[
                ("fc.weight", Dtype::F64, vec![10, 64], vec![0; 640 * 8]),
                ("fc.bias", Dtype::F32, vec![10], le(&bias())),
            ]),
            "model.initial: tensor \"fc.weight\" is F64; only F32 tensors are supported: \
             convert with .float() or astype(numpy.float32)",
        ),
        (
            "empty",
            safetensors_file(&[
                ("fc.weight", Dtype::F32, vec![10, 64], le(&weight())),
                ("fc.bias", Dtype::F32, vec![0], Vec::new()),
            ]),
            "model.initial: tensor \"fc.bias\" has shape [0], no values",
        ),
        (
            "nan",
            safetensors_file(&[
                ("fc.weight", Dtype::F32, vec![10, 64], le(&weight())),
                (
                    "fc.bias",
                    Dtype::F32,
                    vec![10],
                    le(&[0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
                ),
            ]),
            "model.initial: tensor \"fc.bias\" has a non-finite value (NaN) at flat index 3",
        ),
    ];
    for (name, bytes, expected) in cases {
        let job_file = job_files(&f, name, &format!("{name}.safetensors"), Some(&bytes));
        let out = submit(&f, &job_file);
        let e = stderr(&out);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(e.contains("400 Bad Request"), "{name}: {e}");
        assert!(e.contains(expected), "{name}: {e}");
    }

    // A missing file: refused by the CLI before anything is sent, with the resolved path.
    let job_file = job_files(&f, "missing", "missing.safetensors", None);
    let out = submit(&f, &job_file);
    let e = stderr(&out);
    assert!(!out.status.success());
    let resolved = f.dir.join("jobs/missing.safetensors");
    assert!(
        e.contains(&format!(
            "model.initial: {} does not exist (the path is relative to the job file)",
            resolved.display()
        )),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // Nothing was created by any of them.
    let jobs: Value =
        serde_json::from_slice(&f.admin_cli(&["job", "list", "--json"]).stdout).unwrap();
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
}
