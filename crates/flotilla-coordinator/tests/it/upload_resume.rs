//! Resumable uploads against the real coordinator (TLS, SQLite), driven with the proto crate's client
//! types: an upload stream broken part-way, `QueryUpload`, a resume from the reported offset, and
//! exactly-once acceptance.

use crate::common;

use std::time::Duration;

use common::*;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use flotilla_proto::{upload_messages, v1};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const LEN: usize = 10; // logreg [4] -> 2: 40 bytes
/// Upload chunk size: the 40-byte update is five chunks.
const CHUNK: usize = 8;
/// Chunks sent before the stream breaks.
const SENT: usize = 2;

fn chunk_msg(offset: u64, data: Vec<u8>) -> v1::UploadMessage {
    v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Chunk(v1::UpdateChunk {
            offset,
            data,
        })),
    }
}

/// Opens an upload on a connection of its own, sends the header and the first `SENT` chunks, then
/// breaks the stream: the next message is too large for the client's own encoder, so the client's
/// HTTP/2 layer resets the stream (as a dying connection would) instead of ending it cleanly.
/// Returns the error the call ended with.
async fn upload_then_break(
    h: &Harness,
    credential: &str,
    header: v1::UpdateHeader,
    params: &[f32],
) -> tonic::Status {
    let msgs: Vec<v1::UploadMessage> = upload_messages(header, params, CHUNK, 0).collect();
    assert_eq!(msgs.len(), 1 + LEN * 4 / CHUNK);
    let client: CoordinatorClient<Channel> = h.grpc().await.max_encoding_message_size(256);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut call_client = client.clone();
    let req = authed(ReceiverStream::new(rx), credential);
    let call = tokio::spawn(async move { call_client.upload_update(req).await });
    for m in &msgs[..1 + SENT] {
        tx.send(m.clone()).await.expect("stream open");
    }
    // Give the first messages a moment to leave before the stream is broken (if they do not, the
    // coordinator simply holds fewer bytes and the test resumes from there).
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(chunk_msg((SENT * CHUNK) as u64, vec![0u8; 1024]))
        .await
        .expect("stream open");
    let result = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the broken call ended")
        .expect("join");
    drop(tx);
    result.expect_err("a broken stream is not answered")
}

/// `QueryUpload` until the coordinator has noticed the broken stream and kept its bytes.
async fn query_until_held(c: &mut Client, upload_id: &str) -> v1::UploadResponse {
    for _ in 0..200 {
        let req = authed(
            v1::QueryUploadRequest {
                upload_id: upload_id.into(),
            },
            &c.credential,
        );
        match c.grpc.query_upload(req).await {
            Ok(r) => return r.into_inner(),
            Err(e) if e.code() == Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => panic!("QueryUpload failed: {e:?}"),
        }
    }
    panic!("the coordinator never reported the partial upload {upload_id}");
}

/// Sends `params` from `offset` on a fresh stream with the same header.
async fn resume(
    c: &mut Client,
    header: v1::UpdateHeader,
    params: &[f32],
    offset: u64,
) -> v1::UploadResponse {
    let msgs: Vec<v1::UploadMessage> = upload_messages(header, params, CHUNK, offset).collect();
    let first = match &msgs.get(1).and_then(|m| m.kind.clone()) {
        Some(v1::upload_message::Kind::Chunk(ch)) => ch.offset,
        _ => panic!("no chunk to resume with"),
    };
    assert_eq!(
        first, offset,
        "the resumed stream starts at the reported offset"
    );
    let req = authed(tokio_stream::iter(msgs), &c.credential);
    c.grpc
        .upload_update(req)
        .await
        .expect("resumed upload")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upload_resumes_from_the_reported_offset_and_counts_once() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let job = h.submit(&job_toml(1, 2)).await;
    let mut clients = vec![h.enroll("a").await, h.enroll("b").await];
    let tasks = wait_tasks(&mut clients).await;
    let mut b = clients.pop().unwrap();
    let mut a = clients.pop().unwrap();
    let (ua, ub) = (update(0, 1, LEN), update(1, 1, LEN));

    // Client a: the stream dies after two of five chunks.
    let ha = header(&tasks[0], &ua, samples(0));
    let e = upload_then_break(&h, &a.credential, ha.clone(), &ua).await;
    assert_ne!(e.code(), Code::Ok);
    let q = query_until_held(&mut a, &ha.upload_id).await;
    assert_eq!(status_of(&q), v1::UploadStatus::Incomplete, "{}", q.message);
    let held = q.resume_offset;
    eprintln!(
        "the coordinator held {held} of {} bytes sent before the stream broke",
        SENT * CHUNK
    );
    assert!(
        held <= (SENT * CHUNK) as u64 && held % CHUNK as u64 == 0,
        "coordinator holds {held} bytes"
    );
    let m = h.metrics().await;
    assert_eq!(m["uploads_incomplete"], 1, "{m}");
    assert_eq!(m["uploads_accepted"], 0, "{m}");
    // Resumed from exactly the reported offset: the payload's SHA-256 only matches if the bytes the
    // coordinator kept and the ones sent now join up.
    let r = resume(&mut a, ha.clone(), &ua, held).await;
    assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    assert_eq!(r.resume_offset, 4 * LEN as u64);
    // The transfer is finished: nothing left to resume.
    let req = authed(
        v1::QueryUploadRequest {
            upload_id: ha.upload_id.clone(),
        },
        &a.credential,
    );
    assert_eq!(
        a.grpc.query_upload(req).await.unwrap_err().code(),
        Code::NotFound
    );
    // A second full upload of the same update is refused as a duplicate; it is counted once.
    let r = a.upload_header(ha.clone(), &ua).await.expect("re-upload");
    assert_eq!(status_of(&r), v1::UploadStatus::Duplicate, "{}", r.message);
    let m = h.metrics().await;
    assert_eq!(
        (
            m["uploads_accepted"].as_u64(),
            m["uploads_duplicate"].as_u64()
        ),
        (Some(1), Some(1)),
        "{m}"
    );
    let (_, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(st["rounds_completed"], 0, "one of two updates in: {st}");

    // Client b: the stream is cut by a chunk out of place after two chunks (ABORTED), which the
    // protocol answers with "QueryUpload and resume": here the held offset is exact.
    let hb = header(&tasks[1], &ub, samples(1));
    let bytes = flotilla_core::params_to_le_bytes(&ub);
    let mut msgs: Vec<v1::UploadMessage> = upload_messages(hb.clone(), &ub, CHUNK, 0)
        .take(1 + SENT)
        .collect();
    msgs.push(chunk_msg(
        ((SENT + 1) * CHUNK) as u64,
        bytes[(SENT + 1) * CHUNK..(SENT + 2) * CHUNK].to_vec(),
    ));
    let req = authed(tokio_stream::iter(msgs), &b.credential);
    let e = b.grpc.upload_update(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    let q = query_until_held(&mut b, &hb.upload_id).await;
    assert_eq!(
        (status_of(&q), q.resume_offset),
        (v1::UploadStatus::Incomplete, (SENT * CHUNK) as u64)
    );
    let r = resume(&mut b, hb.clone(), &ub, q.resume_offset).await;
    assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);

    // Both updates were counted exactly once, with their full payloads: the committed model is
    // their weighted mean.
    let (_, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(st["state"], "completed", "{st}");
    let hist = st["history"].as_array().unwrap();
    assert_eq!(hist.len(), 1, "{st}");
    let mut participants: Vec<u64> = hist[0]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    participants.sort_unstable();
    assert_eq!(participants, vec![a.id.min(b.id), a.id.max(b.id)]);
    assert_eq!(hist[0]["metrics"]["num_samples"], samples(0) + samples(1));
    let expected = weighted_mean(&[(ua.clone(), samples(0)), (ub.clone(), samples(1))]);
    // The one-round job completed: its model is read from the blob store (gRPC serves only
    // running jobs).
    let got = committed_model(&data, &job.to_string(), 1);
    assert_eq!(
        hist[0]["metrics"]["model_sha256"],
        flotilla_core::params_sha256(&got),
        "{st}"
    );
    assert_eq!(got.len(), LEN);
    for (x, y) in got.iter().zip(&expected) {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs().max(1.0),
            "{got:?} vs {expected:?}"
        );
    }
    let m = h.metrics().await;
    assert_eq!(m["uploads_accepted"], 2, "{m}");
    h.stop().await;
}
