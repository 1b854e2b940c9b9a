//! `flotilla job download` against a real coordinator and clients: the trained model comes out as
//! safetensors (or raw f32) whose bytes are the round's committed `model_sha256`, with the layout's
//! names and shapes. Also the human output of `job status` and `client list` on a real federation.

use crate::common;

use std::time::Duration;

use common::*;
use flotilla_ml::{ModelKind, ModelSpec};
use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn spec() -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("name = \"digits\"", "name = \"digits-mlp\"")
        .replace("rounds = 20", "rounds = 2")
        .replace("clients_per_round = 10", "clients_per_round = 3")
        .replace("min_clients = 10", "min_clients = 3")
        .replace("kind = \"logreg\"", "kind = \"mlp\"\nhidden = 16")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_finished_jobs_model_downloads_verified_as_safetensors_and_raw() {
    let mut f = Federation::new("download", None);
    let token = f.last_line(&["enroll-token", "create", "--uses", "3", "--expires", "1h"]);
    for i in 0..3 {
        f.spawn_client_with(
            &format!("client-{i}"),
            &token,
            &format!("{i}/3"),
            &["--name", &format!("site-{i}")],
            "warn",
        );
    }
    let job = f.submit(&spec());
    let s = f.wait_for(&job, "2 rounds", Duration::from_secs(240), completed);
    let history = s["history"].as_array().unwrap();
    let sha = |i: usize| {
        history[i]["metrics"]["model_sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Latest round, safetensors.
    let out = f.dir.join("model.safetensors");
    let o = f.admin_cli(&["job", "download", &job, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("round 2 of 2") && text.contains(&sha(1)) && text.contains("fc1.weight"),
        "{text}"
    );
    let file = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&file).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(
        (
            meta["job_id"].as_str(),
            meta["round"].as_str(),
            meta["model_kind"].as_str()
        ),
        (job.as_str(), "2", "mlp")
    );
    assert_eq!(meta["model_sha256"], sha(1));

    // Names and shapes are the model's layout, built independently from the same model spec.
    let info: Value = serde_json::from_slice(
        &f.admin_cli(&[
            "job",
            "download",
            &job,
            "--json",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout,
    )
    .unwrap();
    let input_shape: Vec<usize> =
        serde_json::from_value(info["model"]["input_shape"].clone()).unwrap();
    let layout = flotilla_ml::build(
        &ModelSpec {
            kind: ModelKind::Mlp { hidden: 16 },
            input_shape,
            num_classes: 10,
        },
        42,
    )
    .unwrap()
    .layout()
    .clone();
    let order: Vec<&str> = meta["tensor_order"].split(',').collect();
    assert_eq!(
        order,
        layout
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(st.len(), layout.tensors.len());
    let mut flat = Vec::new();
    for t in &layout.tensors {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(
            (v.dtype(), v.shape()),
            (safetensors::Dtype::F32, t.shape.as_slice()),
            "{}",
            t.name
        );
        flat.extend_from_slice(v.data());
    }
    assert_eq!(
        sha256_hex(&flat),
        sha(1),
        "the tensors, concatenated in layout order, are the committed model"
    );

    // Round 1, raw f32: the bytes are round 1's model, not the latest.
    let raw = f.dir.join("round1.f32");
    let o = f.admin_cli(&[
        "job",
        "download",
        &job,
        "--round",
        "1",
        "--format",
        "raw",
        "--out",
        raw.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(bytes.len(), layout.len() * 4);
    assert_eq!(sha256_hex(&bytes), sha(0));
    assert_ne!(sha(0), sha(1));

    // An unknown round: one line saying so, nothing written.
    let missing = f.dir.join("missing.safetensors");
    let o = f.admin_cli(&[
        "job",
        "download",
        &job,
        "--round",
        "9",
        "--out",
        missing.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no committed round 9") && err.contains("1..=2"),
        "{err}"
    );
    assert!(!missing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&f.dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".flotilla-download")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Human status: progress, the rounds table and where the model is.
    let o = f.admin_cli(&["job", "status", &job]);
    let text = stdout(&o);
    assert!(
        text.contains("state      completed") && text.contains("2/2 rounds committed"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "flotilla job download {job} --out digits-mlp-round2.safetensors"
        )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("2 ") && l.contains(" %")),
        "{text}"
    );
    assert!(!text.contains("\"metrics\""), "no raw JSON: {text}");

    // Clients are listed with the names they enrolled with.
    let o = f.admin_cli(&["client", "list"]);
    let text = stdout(&o);
    assert!(text.starts_with("ID  NAME"), "{text}");
    for i in 0..3 {
        assert!(text.contains(&format!("site-{i}")), "{text}");
    }
    let o = f.admin_cli(&["client", "list", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v.as_array().unwrap().iter().any(|c| c["name"] == "site-0"),
        "{v}"
    );
}

#[test]
fn a_job_without_a_committed_round_has_no_model() {
    let f = Federation::new("download-none", None);
    // No clients: the job never commits.
    let job = f.submit(&spec());
    let out = f.dir.join("model.safetensors");
    let o = f.admin_cli(&["job", "download", &job, "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no committed round yet") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!out.exists());
    // Human status of a job that waits: no rounds yet, current round 1.
    let text = stdout(&f.admin_cli(&["job", "status", &job]));
    assert!(
        text.contains("no round committed yet") && text.contains("round 1/2, attempt 1"),
        "{text}"
    );
    // --quiet submit prints the id alone; cancel records who did it.
    let path = f.dir.join("job2.toml");
    std::fs::write(&path, spec()).unwrap();
    let o = f.admin_cli(&["job", "submit", path.to_str().unwrap(), "--quiet"]);
    assert!(
        o.status.success() && stderr(&o).is_empty(),
        "{}",
        stderr(&o)
    );
    let id2 = stdout(&o).trim().to_owned();
    assert!(id2.parse::<u64>().is_ok(), "{id2:?}");
    let o = f.admin_cli(&["job", "cancel", &id2, "--reason", "testing"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(f.status(&id2)["state"], "cancelled");
}
