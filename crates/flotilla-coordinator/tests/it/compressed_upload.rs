//! `[compression]` over the wire: a job's tasks carry its codec, a compressed delta is decoded
//! while it arrives and the global model added back, so the committed model is the weighted mean
//! of `global + decoded delta`; dense uploads still count; the wire counter sees the smaller
//! payloads; a wrong codec, a stale base or a compressed upload to a job without compression is
//! refused by name and the job goes on.

use crate::common;

use common::*;
use flotilla_proto::{Compression, upload_byte_messages, upload_messages, v1};
use prost::Message;
use rand_chacha::rand_core::SeedableRng;
use sha2::{Digest, Sha256};

const LEN: usize = 10; // logreg [4] -> 2

fn compressed_job(rounds: u64, clients: usize, section: &str) -> String {
    format!("{}\n[compression]\n{section}\n", job_toml(rounds, clients))
}

/// Bytes of the request body that carries `msgs`: each message with gRPC's 5-byte prefix.
fn wire_len(msgs: &[v1::UploadMessage]) -> u64 {
    msgs.iter().map(|m| 5 + m.encoded_len() as u64).sum()
}

/// Encodes `params − global` with `c` and uploads it as a compressed delta answering `task`;
/// also what the server decodes and the request body's size.
async fn upload_compressed(
    c: &mut Client,
    task: &v1::Task,
    params: &[f32],
    global: &[f32],
    codec: Compression,
    num_samples: u64,
) -> (Result<v1::UploadResponse, tonic::Status>, Vec<f32>, u64) {
    let delta: Vec<f32> = params.iter().zip(global).map(|(p, g)| p - g).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(task.round);
    let bytes = flotilla_compress::encode(&delta, &codec, &mut rng)
        .unwrap()
        .bytes;
    let mut decoded = vec![0.0; delta.len()];
    flotilla_compress::decode_into(&bytes, &mut decoded).unwrap();
    let server_sees: Vec<f32> = global.iter().zip(&decoded).map(|(g, d)| g + d).collect();
    let mut h = header(task, params, num_samples);
    h.payload_kind = v1::PayloadKind::CompressedDelta as i32;
    h.total_bytes = bytes.len() as u64;
    h.sha256 = Sha256::digest(&bytes).to_vec();
    let msgs: Vec<_> = upload_byte_messages(h, &bytes, 16, 0).collect();
    let wire = wire_len(&msgs);
    let req = authed(tokio_stream::iter(msgs), &c.credential);
    let r = c.grpc.upload_update(req).await.map(|r| r.into_inner());
    (r, server_sees, wire)
}

fn received_bytes(exposition: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix("flotilla_received_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("flotilla_received_bytes_total") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_deltas_are_decoded_onto_the_global_model() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let codec = Compression::Quantize { bits: 8, block: 4 };
    let job = h
        .submit(&compressed_job(
            2,
            3,
            "kind = \"quantize\"\nbits = 8\nblock = 4",
        ))
        .await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }
    let mut before = 0;
    let mut expected = Vec::new();
    let mut wire = (0, 0);
    for round in 1..=2u64 {
        let tasks = wait_tasks(&mut clients).await;
        let mut ups = Vec::new();
        for (i, (c, t)) in clients.iter_mut().zip(&tasks).enumerate() {
            // The task names the job's codec.
            let tc = t.compression.expect("the task carries the compression");
            assert_eq!(flotilla_proto::compression_from_proto(Some(&tc)), Ok(codec));
            let global = c.download(t).await;
            let params = update(i, round, LEN);
            if i == 2 {
                // A client that does not compress still takes part.
                let dense: Vec<_> =
                    upload_messages(header(t, &params, samples(i)), &params, 16, 0).collect();
                wire.1 = wire_len(&dense);
                let r = c.upload(t, &params, samples(i)).await.unwrap();
                assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
                ups.push((params, samples(i)));
                continue;
            }
            let (r, seen, w) = upload_compressed(c, t, &params, &global, codec, samples(i)).await;
            wire.0 = w;
            let r = r.unwrap();
            assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
            ups.push((seen, samples(i)));
        }
        expected = weighted_mean(&ups);
        if round == 1 {
            let (_, body) = h.admin("GET", "/metrics", "").await;
            before = received_bytes(body.as_str().unwrap());
        }
    }
    assert_eq!(h.job_status(job).await.job.rounds_completed, 2);
    let got = committed_model(&data, &job.to_string(), 2);
    for (a, b) in got.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{got:?} vs {expected:?}"
        );
    }
    // Round 2 on the wire: two compressed uploads and one dense, request bodies byte for byte.
    let (_, body) = h.admin("GET", "/metrics", "").await;
    let round2 = received_bytes(body.as_str().unwrap()) - before;
    assert_eq!(round2, 2 * wire.0 + wire.1, "bytes counted on the wire");
    // (With 10 parameters and 4-value blocks the encoding is no smaller than dense; the real-process
    // test in `flotilla` measures the saving on a real model.)
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codecs_stale_bases_and_unnegotiated_compression_are_refused() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let job = h
        .submit(&compressed_job(1, 1, "kind = \"quantize\"\nbits = 8"))
        .await;
    let mut clients = vec![h.enroll("c0").await];
    let t = wait_tasks(&mut clients).await.remove(0);
    let c = &mut clients[0];
    let global = c.download(&t).await;
    let params = update(0, 1, LEN);
    // 4 bits where the job negotiated 8: refused while it arrives.
    let (r, _, _) = upload_compressed(
        c,
        &t,
        &params,
        &global,
        Compression::Quantize {
            bits: 4,
            block: 1024,
        },
        10,
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("negotiated"), "{}", e.message());
    // A delta claiming another base model version.
    let mut stale = t.clone();
    stale.model_version += 5;
    let (r, _, _) = upload_compressed(c, &stale, &params, &global, Compression::Q8, 10).await;
    let r = r.unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected, "{}", r.message);
    assert_eq!(r.reason, "stale_base", "{}", r.message);
    // The job goes on: the right upload is accepted.
    let (r, _, _) = upload_compressed(c, &t, &params, &global, Compression::Q8, 10).await;
    let r = r.unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    assert_eq!(h.job_status(job).await.job.rounds_completed, 1);

    // A job without `[compression]`: its tasks carry none and a compressed upload is refused.
    let job2 = h.submit(&job_toml(1, 1)).await;
    let t = wait_tasks(&mut clients).await.remove(0);
    assert_eq!(t.job_id, job2.to_string());
    assert_eq!(t.compression, None);
    let c = &mut clients[0];
    let global = c.download(&t).await;
    let (r, _, _) = upload_compressed(c, &t, &params, &global, Compression::Q8, 10).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("negotiated no compression"),
        "{}",
        e.message()
    );
    h.stop().await;
}
