//! Fair, bounded upload admission against a real `flotilla server` process (issue 12, item 1).
//! Attackers and honest clients are raw gRPC clients in this test process, so a test can hold
//! streams open, send nothing or trickle bytes — what the client SDK never does.
//!
//! - Idle upload streams of clients outside the cohort (same tenant) and of a cohort member of
//!   another tenant's job do not delay an honest cohort member's upload by more than 2 s.
//! - A cohort member opening several streams gets one slot; the others are refused at once.
//! - A stream below the minimum rate, or sending nothing, is dropped and its slot freed; what it
//!   sent is kept for resume.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use flotilla_proto::{payload_sha256, upload_messages, v1};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};

/// A coordinator process started with `extra` server arguments, logging at `info`.
fn federation(name: &str, extra: &[&str]) -> Federation {
    Federation::with_server(name, None, extra, &[("RUST_LOG", "info")])
}

/// A job of `tenant` over a logistic regression with `inputs` features (2 classes).
fn job(f: &Federation, tenant: &str, clients: usize, inputs: usize) -> String {
    f.submit(&format!(
        r#"
name = "fair-{tenant}"
tenant = "{tenant}"
seed = 7
rounds = 1
clients_per_round = {clients}
[round]
deadline_seconds = 120
min_report_fraction = 1.0
selection_window_ms = 100
retry_after_ms = 50
[model]
kind = "logreg"
input_shape = [{inputs}]
num_classes = 2
[train]
local_epochs = 1
batch_size = 8
learning_rate = 0.1
[eligibility]
min_samples = 5
"#
    ))
}

fn rejections(f: &Federation, reason: &str) -> u64 {
    f.metrics()["rejections"][reason].as_u64().unwrap_or(0)
}

/// An enrolled client with its own connection.
struct Client {
    credential: String,
    rpc: CoordinatorClient<Channel>,
}

fn authed<T>(msg: T, cred: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {cred}").parse().unwrap());
    r
}

async fn connect(f: &Federation) -> CoordinatorClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(f.ca()).unwrap()))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://localhost:{}", f.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect gRPC");
    CoordinatorClient::new(ch)
}

async fn enroll(f: &Federation, tenant: &str, name: &str) -> Client {
    let token = f.last_line(&[
        "enroll-token",
        "create",
        "--tenant",
        tenant,
        "--uses",
        "1",
        "--expires",
        "1h",
    ]);
    let mut rpc = connect(f).await;
    let r = rpc
        .enroll(v1::EnrollRequest {
            enrollment_token: token,
            client_name: name.into(),
            attributes: Default::default(),
        })
        .await
        .expect("enroll")
        .into_inner();
    Client {
        credential: r.credential,
        rpc,
    }
}

impl Client {
    /// Checks in once; the task if one was handed out.
    async fn check_in(&mut self) -> Option<v1::Task> {
        let req = authed(
            v1::CheckInRequest {
                num_samples: 50,
                ..Default::default()
            },
            &self.credential,
        );
        match self
            .rpc
            .check_in(req)
            .await
            .expect("check in")
            .into_inner()
            .outcome
        {
            Some(v1::check_in_response::Outcome::Task(t)) => Some(t),
            _ => None,
        }
    }

    /// Sends `msgs` and keeps the stream open until the returned sender is dropped; the handle
    /// resolves when the coordinator answers.
    fn open_stream(
        &self,
        msgs: Vec<v1::UploadMessage>,
    ) -> (
        mpsc::Sender<v1::UploadMessage>,
        JoinHandle<Result<v1::UploadResponse, Status>>,
    ) {
        let (tx, rx) = mpsc::channel(64);
        for m in msgs {
            tx.try_send(m).unwrap();
        }
        let mut rpc = self.rpc.clone();
        let req = authed(ReceiverStream::new(rx), &self.credential);
        (
            tx,
            tokio::spawn(async move {
                rpc.upload_update(req)
                    .await
                    .map(tonic::Response::into_inner)
            }),
        )
    }

    /// A complete upload of `params` for `task`.
    async fn upload(
        &mut self,
        task: &v1::Task,
        params: &[f32],
    ) -> Result<v1::UploadResponse, Status> {
        let msgs: Vec<_> =
            upload_messages(header(task, params, "honest"), params, 1 << 16, 0).collect();
        let req = authed(tokio_stream::iter(msgs), &self.credential);
        Ok(self.rpc.upload_update(req).await?.into_inner())
    }
}

/// Checks every client in, round-robin, until each has a task (at most 20 s).
async fn tasks(clients: &mut [&mut Client]) -> Vec<v1::Task> {
    let mut got: Vec<Option<v1::Task>> = vec![None; clients.len()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "not every client got a task");
        for (i, c) in clients.iter_mut().enumerate() {
            if got[i].is_none() {
                got[i] = c.check_in().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got.into_iter().flatten().collect()
}

fn params_of(task: &v1::Task) -> Vec<f32> {
    let n = task.model.as_ref().expect("model").size_bytes as usize / 4;
    (0..n).map(|k| 0.01 * k as f32).collect()
}

fn header(task: &v1::Task, params: &[f32], tag: &str) -> v1::UpdateHeader {
    let info = task.model.as_ref().expect("model");
    v1::UpdateHeader {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage: v1::Stage::Train as i32,
        num_samples: 50,
        total_bytes: 4 * params.len() as u64,
        layout_fingerprint: info.layout_fingerprint.clone(),
        sha256: payload_sha256(params).to_vec(),
        upload_id: format!("j{}-r{}-a{}-{tag}", task.job_id, task.round, task.attempt),
        base_model_version: task.model_version,
        stage_index: task.stage_index,
        ..Default::default()
    }
}

fn head(h: v1::UpdateHeader) -> v1::UploadMessage {
    v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Header(h)),
    }
}

fn status_of(r: &v1::UploadResponse) -> v1::UploadStatus {
    v1::UploadStatus::try_from(r.status).unwrap_or(v1::UploadStatus::Unspecified)
}

/// Which of `handles` have answered by `within`: (answers, still open).
async fn settle(
    handles: Vec<JoinHandle<Result<v1::UploadResponse, Status>>>,
    within: Duration,
) -> (Vec<Result<v1::UploadResponse, Status>>, usize) {
    let deadline = tokio::time::Instant::now() + within;
    let (mut done, mut open) = (Vec::new(), 0);
    for mut h in handles {
        match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(r) => done.push(r.expect("upload task")),
            Err(_) => {
                open += 1;
                h.abort();
            }
        }
    }
    (done, open)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn idle_streams_of_outsiders_and_of_another_tenant_do_not_delay_an_honest_upload() {
    let f = federation("fair-idle", &[]);
    runtime().block_on(async {
        let mut honest = enroll(&f, "a", "honest").await;
        let outsider = enroll(&f, "a", "outsider").await;
        let mut other = enroll(&f, "b", "other-tenant").await;
        job(&f, "a", 1, 4);
        job(&f, "b", 1, 4);
        let task = tasks(&mut [&mut honest]).await.remove(0);
        let other_task = tasks(&mut [&mut other]).await.remove(0);
        assert_ne!(task.job_id, other_task.job_id, "one job per tenant");

        // The outsider (enrolled, same tenant, never selected) and the other tenant's cohort member
        // each hold 10 upload streams with a valid header for the current round, sending nothing.
        let mut held = Vec::new();
        let (mut outsider_calls, mut other_calls) = (Vec::new(), Vec::new());
        let params = params_of(&task);
        for i in 0..10 {
            let (tx, h) =
                outsider.open_stream(vec![head(header(&task, &params, &format!("x{i}")))]);
            held.push(tx);
            outsider_calls.push(h);
            let (tx, h) =
                other.open_stream(vec![head(header(&other_task, &params, &format!("y{i}")))]);
            held.push(tx);
            other_calls.push(h);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        let t = Instant::now();
        let r = honest.upload(&task, &params).await.expect("honest upload");
        let latency = t.elapsed();
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{r:?}");
        assert!(
            latency < Duration::from_secs(2),
            "the honest upload took {latency:?}"
        );

        // Every outsider stream was refused before it took a slot: `not_selected`, or throttled
        // once it had earned enough refusals.
        let (answers, open) = settle(outsider_calls, Duration::from_secs(2)).await;
        assert_eq!(open, 0, "outsider streams still open: {answers:?}");
        for a in &answers {
            match a {
                Ok(r) => assert_eq!(
                    (status_of(r), r.reason.as_str()),
                    (v1::UploadStatus::Rejected, "not_selected"),
                    "{r:?}"
                ),
                Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
            }
        }
        // The other tenant's cohort member holds one slot; its 9 other streams were refused at once.
        let (answers, open) = settle(other_calls, Duration::from_secs(2)).await;
        assert_eq!(
            open, 1,
            "exactly one stream of the other tenant's client holds a slot: {answers:?}"
        );
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Err(s) if s.code() == Code::ResourceExhausted)),
            "{answers:?}"
        );
        drop(held);

        // Misbehaviour is counted, and the outsider is now throttled for a while.
        assert!(rejections(&f, "not_selected") >= 8, "{}", f.metrics());
        assert!(rejections(&f, "client_busy") >= 1, "{}", f.metrics());
        let (_tx, h) = outsider.open_stream(vec![head(header(&task, &params, "again"))]);
        let (answers, _) = settle(vec![h], Duration::from_secs(2)).await;
        match &answers[..] {
            [Err(s)] => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("retry in"), "{s:?}");
            }
            other => panic!("the outsider is not throttled: {other:?}"),
        }
        assert!(rejections(&f, "throttled") >= 1, "{}", f.metrics());
    });
}

#[test]
fn a_cohort_member_gets_one_slot_however_many_streams_it_opens() {
    // 4 slots, so the tenant may hold 2: one for the greedy client, one left for the honest one.
    let f = federation(
        "fair-greedy",
        &["--upload-concurrency", "4", "--upload-idle-timeout", "60s"],
    );
    runtime().block_on(async {
        let mut honest = enroll(&f, "a", "honest").await;
        let mut greedy = enroll(&f, "a", "greedy").await;
        job(&f, "a", 2, 4);
        let mut ts = tasks(&mut [&mut honest, &mut greedy]).await;
        let (task, greedy_task) = (ts.remove(0), ts.remove(0));
        let params = params_of(&task);

        let mut held = Vec::new();
        let mut calls = Vec::new();
        for i in 0..5 {
            let (tx, h) =
                greedy.open_stream(vec![head(header(&greedy_task, &params, &format!("g{i}")))]);
            held.push(tx);
            calls.push(h);
        }
        let (answers, open) = settle(calls, Duration::from_secs(2)).await;
        assert_eq!(open, 1, "exactly one stream holds a slot: {answers:?}");
        assert_eq!(answers.len(), 4);
        for a in &answers {
            match a {
                Err(s) => {
                    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                    assert!(s.message().contains("already has 1 upload"), "{s:?}");
                }
                Ok(r) => panic!("a second stream was answered {r:?}"),
            }
        }
        assert_eq!(rejections(&f, "client_busy"), 4, "{}", f.metrics());

        // The tenant's second slot is still free for the honest member.
        let t = Instant::now();
        let r = honest.upload(&task, &params).await.expect("honest upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the honest upload took {:?}",
            t.elapsed()
        );
        drop(held);
    });
}

#[test]
fn a_slow_or_idle_stream_is_dropped_its_slot_freed_and_its_bytes_kept() {
    // One slot; a stream must send 200 B/s over each 2 s window and never pause 1 s.
    let f = federation(
        "fair-slow",
        &[
            "--upload-concurrency",
            "1",
            "--upload-idle-timeout",
            "1s",
            "--min-upload-rate",
            "200",
            "--upload-rate-window",
            "2s",
        ],
    );
    runtime().block_on(async {
        let mut slow = enroll(&f, "a", "slow").await;
        let mut idle = enroll(&f, "a", "idle").await;
        let mut honest = enroll(&f, "a", "honest").await;
        // 64 inputs × 2 classes + 2 biases: 520 bytes, 130 chunks of 4 bytes.
        job(&f, "a", 3, 64);
        let mut ts = tasks(&mut [&mut slow, &mut idle, &mut honest]).await;
        let (slow_task, idle_task, task) = (ts.remove(0), ts.remove(0), ts.remove(0));
        let params = params_of(&task);
        assert_eq!(params.len(), 130);

        // The slow client trickles 4 bytes every 300 ms: never idle for 1 s, but far below 200 B/s.
        let slow_header = header(&slow_task, &params, "slow");
        let upload_id = slow_header.upload_id.clone();
        let mut msgs = upload_messages(slow_header, &params, 4, 0)
            .collect::<Vec<_>>()
            .into_iter();
        let (tx, slow_call) = slow.open_stream(vec![msgs.next().unwrap()]);
        let trickle = tokio::spawn(async move {
            for m in msgs {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        // The honest upload waits for the only slot, which the slow stream holds.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let r = honest.upload(&task, &params).await.expect("honest upload");
        let waited = t.elapsed();
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{r:?}");
        // Freed by the rate check after its first 2 s window, far before the 30 s slot wait.
        assert!(
            waited < Duration::from_secs(8),
            "the honest upload waited {waited:?}"
        );

        let (answers, open) = settle(vec![slow_call], Duration::from_secs(1)).await;
        assert_eq!(open, 0);
        match &answers[..] {
            [Err(s)] => {
                assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
                assert!(
                    s.message().contains("below the minimum of 200 bytes/s"),
                    "{s:?}"
                );
            }
            other => panic!("the slow stream was not dropped: {other:?}"),
        }
        trickle.abort();
        // What it sent is kept for a resume.
        let q = slow
            .rpc
            .query_upload(authed(
                v1::QueryUploadRequest { upload_id },
                &slow.credential,
            ))
            .await
            .expect("the slow upload is kept")
            .into_inner();
        assert_eq!(status_of(&q), v1::UploadStatus::Incomplete);
        assert!(q.resume_offset > 0 && q.resume_offset < 520, "{q:?}");

        // A stream that sends its header and then nothing loses the slot after 1 s.
        let t = Instant::now();
        let (_tx, idle_call) = idle.open_stream(vec![head(header(&idle_task, &params, "idle"))]);
        let (answers, _) = settle(vec![idle_call], Duration::from_secs(5)).await;
        match &answers[..] {
            [Err(s)] => {
                assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
                assert!(s.message().contains("no data for 1000 ms"), "{s:?}");
            }
            other => panic!("the idle stream was not dropped: {other:?}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "dropped after {:?}",
            t.elapsed()
        );
        assert_eq!(rejections(&f, "slow_upload"), 2, "{}", f.metrics());
    });
}
