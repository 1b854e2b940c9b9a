//! Finished jobs leave the coordinator's memory, and calls about them are answered as
//! `coordinator.proto` says — with a real `flotilla server` process and gRPC clients written here
//! (they send updates without training, so a hundred jobs take a minute or two).

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use flotilla_proto::{payload_sha256, upload_messages, v1};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};

/// A job of a small MLP on digits (256 hidden units: 19,210 parameters, 77 KB), with server-side
/// evaluation; `clients` per round, `over` over-selection. (With a large model, evaluation's
/// activations make malloc arenas, not jobs, dominate the RSS samples.)
fn job_spec(name: &str, rounds: u64, clients: usize, over: f64) -> String {
    format!(
        r#"
name = "{name}"
seed = 3
rounds = {rounds}
clients_per_round = {clients}
[round]
min_clients = {clients}
over_selection = {over:?}
deadline_seconds = 120
min_report_fraction = 1.0
selection_window_ms = 20
retry_after_ms = 50
[model]
kind = "mlp"
dataset = "digits"
hidden = 256
[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
[eligibility]
min_samples = 1
[evaluation]
dataset = "digits"
"#
    )
}

/// An enrolled client speaking gRPC directly.
struct Grpc {
    rpc: CoordinatorClient<Channel>,
    credential: String,
}

fn authed<T>(msg: T, cred: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {cred}").parse().unwrap());
    r
}

async fn connect(f: &Federation, token: &str, name: &str) -> Grpc {
    let ca = std::fs::read(f.ca()).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://127.0.0.1:{}", f.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect gRPC");
    let mut rpc = CoordinatorClient::new(ch);
    let r = rpc
        .enroll(v1::EnrollRequest {
            enrollment_token: token.to_owned(),
            client_name: name.to_owned(),
            attributes: Default::default(),
        })
        .await
        .expect("enroll")
        .into_inner();
    Grpc {
        rpc,
        credential: r.credential,
    }
}

/// Checks every client in for `job`, round-robin, until each has a task (at most 60 s).
async fn tasks(clients: &mut [&mut Grpc], job: &str) -> Vec<v1::Task> {
    let mut tasks: Vec<Option<v1::Task>> = vec![None; clients.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for (c, slot) in clients.iter_mut().zip(tasks.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let req = authed(
                v1::CheckInRequest {
                    num_samples: 100,
                    job_ids: vec![job.to_owned()],
                    attributes: Default::default(),
                },
                &c.credential,
            );
            let out = c
                .rpc
                .check_in(req)
                .await
                .expect("check in")
                .into_inner()
                .outcome
                .expect("outcome");
            if let v1::check_in_response::Outcome::Task(t) = out {
                *slot = Some(t);
            }
        }
        if tasks.iter().all(Option::is_some) {
            return tasks.into_iter().flatten().collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not every client got a task of job {job}");
}

impl Grpc {
    async fn task(&mut self, job: &str) -> v1::Task {
        tasks(&mut [self], job).await.remove(0)
    }

    async fn upload(
        &mut self,
        task: &v1::Task,
        params: &[f32],
    ) -> Result<v1::UploadResponse, tonic::Status> {
        let msgs: Vec<_> = upload_messages(header(task, params), params, 256 << 10, 0).collect();
        Ok(self
            .rpc
            .upload_update(authed(tokio_stream::iter(msgs), &self.credential))
            .await?
            .into_inner())
    }

    async fn download(&mut self, job: &str, version: u64) -> Result<(), tonic::Status> {
        let req = v1::DownloadRequest {
            job_id: job.to_owned(),
            model_version: version,
            ..Default::default()
        };
        let mut stream = self
            .rpc
            .download_model(authed(req, &self.credential))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok(())
    }
}

/// An update of the task's model size (the values do not matter: the job is not trained).
fn update(task: &v1::Task) -> Vec<f32> {
    let n = task.model.as_ref().expect("model info").size_bytes / 4;
    (0..n).map(|i| (i % 7) as f32 * 0.01).collect()
}

fn header(task: &v1::Task, params: &[f32]) -> v1::UpdateHeader {
    let info = task.model.as_ref().expect("model");
    v1::UpdateHeader {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage: v1::Stage::Train as i32,
        num_samples: 100,
        metrics: [("train_loss".to_owned(), 0.5)].into_iter().collect(),
        total_bytes: 4 * params.len() as u64,
        layout_fingerprint: info.layout_fingerprint.clone(),
        sha256: payload_sha256(params).to_vec(),
        upload_id: format!("j{}-r{}-a{}", task.job_id, task.round, task.attempt),
        base_model_version: task.model_version,
        stage_index: task.stage_index,
        ..Default::default()
    }
}

fn accepted(r: &v1::UploadResponse) -> bool {
    r.status == v1::UploadStatus::Accepted as i32
}

/// Runs one round of `job` with `clients` (every one of them reports).
async fn run_round(clients: &mut [Grpc], job: &str) {
    let tasks = tasks(&mut clients.iter_mut().collect::<Vec<_>>(), job).await;
    for (c, t) in clients.iter_mut().zip(&tasks) {
        let r = c.upload(t, &update(t)).await.expect("upload");
        assert!(accepted(&r), "{r:?}");
    }
}

fn rss_kib(f: &Federation) -> u64 {
    let pid = f.server.0[0].id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wait_state(f: &Federation, job: &str, state: &str) -> Value {
    f.wait_for(job, state, Duration::from_secs(60), |s| s["state"] == state)
}

fn token(f: &Federation, uses: usize) -> String {
    f.last_line(&[
        "enroll-token",
        "create",
        "--uses",
        &uses.to_string(),
        "--expires",
        "1h",
    ])
}

/// `POST /v1/jobs/{id}/cancel` with an empty body: (status, JSON).
fn cancel(f: &Federation, job: &str) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(f.ca()).unwrap()).unwrap();
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let resp = http
        .post(format!("{}/v1/jobs/{job}/cancel", f.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().unwrap_or(Value::Null))
}

fn error_lines(f: &Federation) -> Vec<String> {
    let log = std::fs::read_to_string(f.dir.join("server-0.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_hundred_completed_jobs_leave_the_coordinators_memory_flat() {
    let f = Federation::new("mem-hundred", None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = token(&f, 2);
    let mut clients = rt.block_on(async {
        vec![
            connect(&f, &token, "a").await,
            connect(&f, &token, "b").await,
        ]
    });
    let (warm_up, total) = (10, 100);
    let mut baseline = 0;
    let mut samples = Vec::new();
    let started = Instant::now();
    for n in 1..=total {
        let job = f.submit(&job_spec(&format!("mem-{n}"), 1, 2, 1.0));
        rt.block_on(run_round(&mut clients, &job));
        // Evaluation is recorded after the commit: wait until the round is evaluated too.
        let s = f.wait_for(
            &job,
            "completed and evaluated",
            Duration::from_secs(60),
            completed_and_evaluated,
        );
        assert!(
            s.get("current").is_none(),
            "a completed job has no live status: {s}"
        );
        assert_eq!(s["history"].as_array().map(Vec::len), Some(1), "{s}");
        if n == warm_up {
            baseline = rss_kib(&f);
        }
        if n % 10 == 0 {
            samples.push((n, rss_kib(&f)));
        }
    }
    let end = rss_kib(&f);
    eprintln!(
        "RSS (KiB) after n jobs: {samples:?}; baseline after {warm_up}: {baseline}; end: {end}; {:?}",
        started.elapsed()
    );
    let growth = end.saturating_sub(baseline);
    assert!(
        growth < 10 * 1024,
        "RSS grew by {growth} KiB over {} completed jobs (limit 10 MiB): {samples:?}",
        total - warm_up
    );
    // Every job is still listed, from the store.
    let out = f.admin_cli(&["job", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("job list JSON");
    let done = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "completed")
        .count();
    assert_eq!(done, total, "{list}");
    assert!(error_lines(&f).is_empty(), "{:?}", error_lines(&f));
}

#[test]
fn a_completed_jobs_model_is_not_found_over_grpc_but_downloadable_by_the_admin() {
    let f = Federation::new("mem-download", None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = token(&f, 1);
    let mut c = rt.block_on(connect(&f, &token, "a"));
    let job = f.submit(&job_spec("done", 1, 1, 1.0));
    let task = rt.block_on(async {
        let t = c.task(&job).await;
        c.download(&job, t.model_version)
            .await
            .expect("download while running");
        let r = c.upload(&t, &update(&t)).await.expect("upload");
        assert!(accepted(&r), "{r:?}");
        t
    });
    wait_state(&f, &job, "completed");
    rt.block_on(async {
        for version in [0, 1] {
            let e = c
                .download(&job, version)
                .await
                .expect_err("the job is not running");
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            assert_eq!(e.message(), format!("job {job} is not running (completed)"));
        }
        let e = c
            .upload(&task, &update(&task))
            .await
            .expect_err("the job is not running");
        assert_eq!(
            (e.code(), e.message()),
            (
                Code::NotFound,
                format!("job {job} is not running (completed)").as_str()
            )
        );
        // A check-in naming it says so too.
        let req = authed(
            v1::CheckInRequest {
                num_samples: 100,
                job_ids: vec![job.clone()],
                attributes: Default::default(),
            },
            &c.credential,
        );
        match c.rpc.check_in(req).await.unwrap().into_inner().outcome {
            Some(v1::check_in_response::Outcome::RetryAfter(r)) => {
                assert_eq!(r.reason, format!("job {job} is not running (completed)"))
            }
            other => panic!("{other:?}"),
        }
    });
    // The user's way to the model keeps working.
    let out_file = f.dir.join("model.safetensors");
    let out = f.admin_cli(&["job", "download", &job, "--out", out_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&out_file).unwrap().len() > 19_210 * 4);
}

#[test]
fn cancelling_a_completed_or_cancelled_job_is_a_conflict() {
    let f = Federation::new("mem-cancel", None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = token(&f, 1);
    let mut c = rt.block_on(connect(&f, &token, "a"));
    let done = f.submit(&job_spec("done", 1, 1, 1.0));
    rt.block_on(run_round(std::slice::from_mut(&mut c), &done));
    wait_state(&f, &done, "completed");
    let (code, v) = cancel(&f, &done);
    assert_eq!(code, 409, "{v}");
    assert_eq!(
        v["error"],
        format!("job {done} is already completed; only a pending or running job can be cancelled")
    );
    assert_eq!(f.status(&done)["state"], "completed");

    let running = f.submit(&job_spec("cancel-me", 1, 5, 1.0));
    let (code, v) = cancel(&f, &running);
    assert_eq!((code, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    let (code, v) = cancel(&f, &running);
    assert_eq!(code, 409, "{v}");
    assert_eq!(
        v["error"],
        format!(
            "job {running} is already cancelled; only a pending or running job can be cancelled (cancelled by an admin)"
        )
    );
    // The CLI exits non-zero with the server's words.
    for job in [&done, &running] {
        let out = f.admin_cli(&["job", "cancel", job]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("409") && err.contains(&format!("job {job} is already")),
            "{err}"
        );
    }
}

/// Sends all of `task`'s update but its last chunk, then `before_last` happens, then the rest.
async fn upload_around(
    c: &mut Grpc,
    task: &v1::Task,
    before_last: impl std::future::Future<Output = ()>,
) -> Result<v1::UploadResponse, tonic::Status> {
    let params = update(task);
    let mut msgs: Vec<_> = upload_messages(header(task, &params), &params, 8 << 10, 0).collect();
    let last = msgs.pop().unwrap();
    // Capacity 1: a message is taken only once HTTP/2 flow control lets it go, i.e. once the
    // coordinator has read nearly everything before it (well past the header).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let (mut rpc, cred) = (c.rpc.clone(), c.credential.clone());
    let call = tokio::spawn(async move { rpc.upload_update(authed(stream, &cred)).await });
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    before_last.await;
    tx.send(last).await.unwrap();
    drop(tx);
    Ok(call.await.unwrap()?.into_inner())
}

#[test]
fn an_upload_in_flight_when_its_job_is_cancelled_is_rejected_as_job_ended() {
    let f = Federation::new("mem-inflight", None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = token(&f, 1);
    let mut c = rt.block_on(connect(&f, &token, "a"));
    let job = f.submit(&job_spec("cancel-mid-upload", 2, 1, 1.0));
    let task = rt.block_on(c.task(&job));
    let (admin_url, ca) = (f.admin_url(), f.ca());
    let job2 = job.clone();
    let r = rt
        .block_on(upload_around(&mut c, &task, async move {
            // The admin API from another thread (blocking reqwest must not run on the runtime).
            let code = tokio::task::spawn_blocking(move || {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
                let http = reqwest::blocking::Client::builder()
                    .add_root_certificate(ca)
                    .build()
                    .unwrap();
                http.post(format!("{admin_url}/v1/jobs/{job2}/cancel"))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
            .await
            .unwrap();
            assert_eq!(code, 200);
        }))
        .expect("an answer, not an error status");
    assert_eq!(r.status, v1::UploadStatus::Rejected as i32, "{r:?}");
    assert_eq!(r.reason, "job_ended", "{r:?}");
    assert!(
        r.message
            .contains(&format!("job {job} is not running (cancelled)")),
        "{r:?}"
    );
    let s = f.status(&job);
    assert_eq!(
        (s["state"].as_str(), s["rounds_completed"].as_u64()),
        (Some("cancelled"), Some(0)),
        "{s}"
    );
    assert!(error_lines(&f).is_empty(), "{:?}", error_lines(&f));
}

#[test]
fn an_upload_in_flight_when_its_job_completes_is_rejected_as_job_ended() {
    let f = Federation::new("mem-finished", None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = token(&f, 2);
    let (mut a, mut b) = rt.block_on(async {
        (
            connect(&f, &token, "a").await,
            connect(&f, &token, "b").await,
        )
    });
    // Two selected (over-selection 2), one report commits the only round.
    let job = f.submit(
        &job_spec("finish-mid-upload", 1, 1, 2.0).replace("min_clients = 1\n", "min_clients = 2\n"),
    );
    let r = rt.block_on(async {
        let mut t = tasks(&mut [&mut a, &mut b], &job).await;
        let (ta, tb) = (t.remove(0), t.remove(0));
        upload_around(&mut b, &tb, async {
            let r = a.upload(&ta, &update(&ta)).await.expect("upload");
            assert!(accepted(&r), "{r:?}");
        })
        .await
    });
    let r = r.expect("an answer, not an error status");
    assert_eq!(
        (r.status, r.reason.as_str()),
        (v1::UploadStatus::Rejected as i32, "job_ended"),
        "{r:?}"
    );
    assert!(
        r.message
            .contains(&format!("job {job} is not running (completed)")),
        "{r:?}"
    );
    wait_state(&f, &job, "completed");
    assert!(error_lines(&f).is_empty(), "{:?}", error_lines(&f));
}
