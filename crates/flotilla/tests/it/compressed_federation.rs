//! `[compression]` end to end with real processes: a `flotilla server` and three `flotilla client`
//! processes on loopback with TLS run a top-k job and then an 8-bit job. Every upload is a
//! compressed delta (the server's wire counter, which counts whole request bodies, is uploads × the
//! codec's encoding plus a header's worth of framing each), the models learn, and the clients keep
//! their top-k residuals in their state directories.

use crate::common;

use std::time::Duration;

use common::*;
use flotilla_proto::Compression;

const CLIENTS: usize = 3;
const ROUNDS: u64 = 6;
/// Logistic regression on digits: 64 × 10 weights and 10 biases.
const PARAMS: usize = 650;
/// Bytes of an upload's request body besides its payload: the header message (ids, metrics,
/// SHA-256, fingerprint) and gRPC framing, generously.
const OVERHEAD: u64 = 600;

/// Checks that `bytes` received for `uploads` uploads are `payload` bytes each plus framing.
fn assert_wire(bytes: u64, uploads: u64, payload: u64) {
    assert!(
        bytes >= uploads * payload && bytes <= uploads * (payload + OVERHEAD),
        "{bytes} bytes on the wire for {uploads} uploads of {payload} payload bytes"
    );
}

fn job_spec(name: &str, compression: &str) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    let spec = base
        .replace("name = \"digits\"", &format!("name = \"{name}\""))
        .replace("rounds = 20", &format!("rounds = {ROUNDS}"))
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {CLIENTS}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {CLIENTS}"))
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0")
        .replace("retry_after_ms = 500", "retry_after_ms = 100");
    assert!(spec.contains(&format!("rounds = {ROUNDS}")), "{spec}");
    format!("{spec}\n[compression]\n{compression}\n")
}

/// Runs `spec` to completion; the job id, its status and the payload bytes received meanwhile.
fn run(f: &Federation, spec: &str) -> (String, serde_json::Value, u64, u64) {
    let before = f.metrics();
    let job = f.submit(spec);
    let s = f.wait_for(
        &job,
        "a compressed job to complete",
        Duration::from_secs(120),
        completed_and_evaluated,
    );
    let after = f.metrics();
    let diff = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    (job, s, diff("received_bytes"), diff("uploads_accepted"))
}

fn accuracy(s: &serde_json::Value) -> f64 {
    s["history"].as_array().unwrap().last().unwrap()["metrics"]["eval_accuracy"]
        .as_f64()
        .expect("server-side accuracy")
}

#[test]
fn topk_and_quantized_jobs_upload_compressed_deltas() {
    let mut f = Federation::new("compressed", None);
    f.start_clients(CLIENTS);

    // Top-k with error feedback: a quarter of the coordinates per upload.
    let topk = Compression::TopK { fraction: 0.25 };
    let (job, s, bytes, uploads) = run(
        &f,
        &job_spec("digits-topk", "kind = \"topk\"\nfraction = 0.25"),
    );
    assert_eq!(uploads, ROUNDS * CLIENTS as u64, "{s}");
    let one = topk.encoded_len(PARAMS).unwrap() as u64;
    assert_wire(bytes, uploads, one);
    // (index, value) pairs for a quarter of the coordinates: about half of dense.
    assert!(
        one < 4 * PARAMS as u64 * 51 / 100,
        "{one} bytes against {} dense",
        4 * PARAMS
    );
    let acc = accuracy(&s);
    assert!(acc > 0.6, "top-k job accuracy {acc}: {s}");
    // Each client kept its residual (what it has not sent yet) for the job.
    let hex_job = hex::encode(job.as_bytes());
    for i in 0..CLIENTS {
        let path = f.dir.join(format!("client-{i}/compression/{hex_job}.f32"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(bytes.len(), 4 * PARAMS, "{}", path.display());
        assert!(
            bytes.iter().any(|b| *b != 0),
            "a residual of zeros in {}",
            path.display()
        );
    }

    // 8-bit stochastic quantization: about a quarter of dense.
    let q8 = Compression::Quantize {
        bits: 8,
        block: 1024,
    };
    let (_, s, bytes, uploads) = run(&f, &job_spec("digits-q8", "kind = \"quantize\"\nbits = 8"));
    assert_eq!(uploads, ROUNDS * CLIENTS as u64, "{s}");
    let one = q8.encoded_len(PARAMS).unwrap() as u64;
    assert_wire(bytes, uploads, one);
    // Not dense: a dense upload alone would exceed the bound.
    assert!(one + OVERHEAD < 4 * PARAMS as u64);
    let acc = accuracy(&s);
    assert!(acc > 0.8, "8-bit job accuracy {acc}: {s}");

    // No client failed or fell back to dense uploads.
    for (i, c) in f.clients.0.iter_mut().enumerate() {
        assert!(c.try_wait().unwrap().is_none(), "client {i} exited");
        let log = std::fs::read_to_string(f.dir.join(format!("client-{i}.log"))).unwrap();
        assert!(
            !log.contains("ERROR") && !log.contains("dense"),
            "client {i}: {log}"
        );
    }
}
