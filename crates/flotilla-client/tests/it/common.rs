//! An in-process fake coordinator: one job, a logistic-regression model on digits (input [64],
//! 10 classes), a task for round 1, one accepted upload, then `RetryAfter`. Knobs inject faults.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_client::{Backoff, ClientConfig};
use flotilla_core::ParamLayout;
use flotilla_ml::{ModelKind, ModelSpec};
use flotilla_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use flotilla_proto::v1::{self, check_in_response::Outcome};
use flotilla_proto::{
    AuthError, ExpectedLayout, UploadAssembler, UploadLimits, model_chunks, model_info,
};
use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub const TOKEN: &str = "tok-1";
pub const CLIENT_ID: &str = "client-1";
pub const CREDENTIAL: &str = "cred-1";
/// Issued by `Enroll` instead of the first identity when `Faults::first_credential_expired` is set.
pub const CLIENT_ID_2: &str = "client-2";
pub const CREDENTIAL_2: &str = "cred-2";
pub const JOB: &str = "job-1";
/// Download chunk size of the fake (the logreg model is 650 values = 2600 bytes: 6 chunks).
pub const DOWNLOAD_CHUNK: usize = 512;

/// Fault injection.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// End the first download with UNAVAILABLE after this many chunks.
    pub drop_download_after: Option<usize>,
    /// Flip one bit of the first download's payload (values stay finite; the SHA-256 does not match).
    pub corrupt_first_download: bool,
    /// Fail the first upload stream with UNAVAILABLE after this many chunks.
    pub break_upload_after: Option<usize>,
    /// Answer this many check-ins with UNAVAILABLE first.
    pub unavailable_check_ins: u32,
    /// Answer every authenticated call with UNAUTHENTICATED (credential revoked).
    pub revoked: bool,
    /// `CREDENTIAL` is refused as expired (UNAUTHENTICATED, `flotilla-auth-error: expired`);
    /// `Enroll` issues `CLIENT_ID_2` / `CREDENTIAL_2`, which works.
    pub first_credential_expired: bool,
    /// Every credential is refused as expired, including freshly enrolled ones.
    pub every_credential_expired: bool,
    /// Answer uploads with REJECTED.
    pub reject_uploads: bool,
    /// The machine-readable `reason` of those REJECTED answers (e.g. `too_stale`); empty if unset.
    pub reject_reason: &'static str,
}

/// What the fake observed.
#[derive(Debug, Default)]
pub struct Seen {
    pub enroll_calls: u32,
    pub check_ins: u32,
    pub num_samples: Vec<u64>,
    pub download_offsets: Vec<u64>,
    pub upload_offsets: Vec<u64>,
    pub queries: u32,
    pub accepted: Option<(v1::UpdateHeader, Vec<f32>)>,
    pub rejected: u32,
    pub tasks_given: u32,
    /// Calls refused because the credential expired.
    pub expired_refusals: u32,
    /// Task failures the client reported (`ReportTaskFailure`).
    pub task_failures: Vec<v1::TaskFailure>,
    download_dropped: bool,
    download_corrupted: bool,
    upload_broken: bool,
    unavailable_sent: u32,
    uploads: HashMap<String, UploadAssembler>,
}

pub struct Fake {
    pub faults: Faults,
    pub layout: ParamLayout,
    pub initial: Vec<f32>,
    info: v1::ModelInfo,
    pub seen: Mutex<Seen>,
    /// Notified at the first check-in after the upload was settled (accepted or rejected), i.e. once
    /// the client has fully processed the answer.
    pub finished: Notify,
}

impl Fake {
    pub fn new(faults: Faults) -> Arc<Self> {
        let spec = ModelSpec {
            kind: ModelKind::LogReg,
            input_shape: vec![64],
            num_classes: 10,
        };
        let model = flotilla_ml::build(&spec, 11).unwrap();
        let layout = model.layout().clone();
        let initial = model.parameters();
        let mut info = model_info(&layout, &initial);
        info.spec = Some(v1::ModelSpec {
            kind: "logreg".into(),
            input_shape: vec![64],
            num_classes: 10,
            hidden: 0,
            embed: 0,
        });
        Arc::new(Self {
            faults,
            layout,
            initial,
            info,
            seen: Mutex::new(Seen::default()),
            finished: Notify::new(),
        })
    }

    /// The identity `Enroll` hands out.
    fn identity(&self) -> (&'static str, &'static str) {
        if self.faults.first_credential_expired {
            (CLIENT_ID_2, CREDENTIAL_2)
        } else {
            (CLIENT_ID, CREDENTIAL)
        }
    }

    fn auth<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let expired = self.faults.every_credential_expired
            || (self.faults.first_credential_expired && given == Some(CREDENTIAL));
        if expired {
            self.seen.lock().unwrap().expired_refusals += 1;
            return Err(AuthError::Expired.status("credential expired; enroll again"));
        }
        let ok = given == Some(self.identity().1);
        if !ok {
            return Err(Status::unauthenticated("missing or unknown credential"));
        }
        if self.faults.revoked {
            return Err(Status::unauthenticated("credential revoked"));
        }
        Ok(())
    }

    fn task(&self) -> v1::Task {
        let deadline = SystemTime::now() + Duration::from_secs(600);
        v1::Task {
            job_id: JOB.into(),
            round: 1,
            attempt: 0,
            stage: v1::Stage::Train as i32,
            model_version: 1,
            model: Some(self.info.clone()),
            training: Some(v1::TrainingConfig {
                epochs: 2,
                batch_size: 16,
                learning_rate: 0.1,
                seed: 7,
                ..Default::default()
            }),
            deadline_unix_ms: deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
            stage_index: 0,
            time_remaining_ms: 600_000,
            ..Default::default()
        }
    }
}

fn retry(ms: u64, reason: &str) -> v1::CheckInResponse {
    v1::CheckInResponse {
        outcome: Some(Outcome::RetryAfter(v1::RetryAfter {
            retry_after_ms: ms,
            reason: reason.into(),
        })),
    }
}

fn answer(status: v1::UploadStatus, message: &str, resume_offset: u64) -> v1::UploadResponse {
    v1::UploadResponse {
        status: status as i32,
        message: message.into(),
        resume_offset,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Coordinator for Fake {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let r = req.into_inner();
        self.seen.lock().unwrap().enroll_calls += 1;
        if r.enrollment_token != TOKEN {
            return Err(Status::permission_denied("unknown enrollment token"));
        }
        assert!(!r.client_name.is_empty());
        let (client_id, credential) = self.identity();
        Ok(Response::new(v1::EnrollResponse {
            client_id: client_id.into(),
            credential: credential.into(),
        }))
    }

    async fn check_in(
        &self,
        req: Request<v1::CheckInRequest>,
    ) -> Result<Response<v1::CheckInResponse>, Status> {
        self.auth(&req)?;
        let r = req.into_inner();
        let mut s = self.seen.lock().unwrap();
        s.check_ins += 1;
        s.num_samples.push(r.num_samples);
        if s.unavailable_sent < self.faults.unavailable_check_ins {
            s.unavailable_sent += 1;
            return Err(Status::unavailable("coordinator restarting"));
        }
        if s.accepted.is_some() || s.rejected > 0 {
            self.finished.notify_one();
            return Ok(Response::new(retry(20, "job finished")));
        }
        // First check-in: pace steering before the round opens.
        if s.check_ins == 1 + s.unavailable_sent {
            return Ok(Response::new(retry(20, "no round open")));
        }
        if s.tasks_given == 0 {
            s.tasks_given += 1;
            return Ok(Response::new(v1::CheckInResponse {
                outcome: Some(Outcome::Task(self.task())),
            }));
        }
        Ok(Response::new(retry(20, "cohort full")))
    }

    type DownloadModelStream = Pin<Box<dyn Stream<Item = Result<v1::ModelChunk, Status>> + Send>>;

    async fn download_model(
        &self,
        req: Request<v1::DownloadRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        self.auth(&req)?;
        let r = req.into_inner();
        if r.job_id != JOB || r.model_version != 1 {
            return Err(Status::not_found("no such model"));
        }
        if r.offset > 4 * self.initial.len() as u64 {
            return Err(Status::out_of_range("offset past the end"));
        }
        let mut items: Vec<Result<v1::ModelChunk, Status>> =
            model_chunks(&self.initial, DOWNLOAD_CHUNK, r.offset)
                .map(Ok)
                .collect();
        let mut s = self.seen.lock().unwrap();
        s.download_offsets.push(r.offset);
        if self.faults.corrupt_first_download && !s.download_corrupted {
            s.download_corrupted = true;
            if let Some(Ok(first)) = items.first_mut() {
                first.data[0] ^= 1; // lowest mantissa bit of a little-endian f32
            }
        }
        if let Some(n) = self.faults.drop_download_after
            && !s.download_dropped
        {
            s.download_dropped = true;
            items.truncate(n);
            items.push(Err(Status::unavailable("connection reset by peer")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn upload_update(
        &self,
        req: Request<Streaming<v1::UploadMessage>>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        self.auth(&req)?;
        let mut stream = req.into_inner();
        let Some(v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Header(header)),
        }) = stream.message().await?
        else {
            return Err(Status::invalid_argument("first message must be the header"));
        };
        let existing = self.seen.lock().unwrap().uploads.remove(&header.upload_id);
        let mut a = match existing {
            Some(a) if a.header() != &header => {
                return Err(Status::invalid_argument(
                    "header differs from the first one",
                ));
            }
            Some(a) => a,
            None => UploadAssembler::new(
                header.clone(),
                &ExpectedLayout::of(&self.layout),
                &UploadLimits::default(),
            )?,
        };
        let break_after = {
            let mut s = self.seen.lock().unwrap();
            s.upload_offsets.push(a.received());
            match self.faults.break_upload_after {
                Some(n) if !s.upload_broken => {
                    s.upload_broken = true;
                    Some(n)
                }
                _ => None,
            }
        };
        let mut pushed = 0usize;
        while let Some(msg) = stream.message().await? {
            let Some(v1::upload_message::Kind::Chunk(c)) = msg.kind else {
                return Err(Status::invalid_argument("header repeated"));
            };
            a.push(&c)?;
            pushed += 1;
            if break_after == Some(pushed) {
                self.seen
                    .lock()
                    .unwrap()
                    .uploads
                    .insert(header.upload_id.clone(), a);
                return Err(Status::unavailable("connection reset by peer"));
            }
        }
        if !a.is_complete() {
            let received = a.received();
            self.seen
                .lock()
                .unwrap()
                .uploads
                .insert(header.upload_id.clone(), a);
            return Ok(Response::new(answer(
                v1::UploadStatus::Incomplete,
                "stream ended early",
                received,
            )));
        }
        let total = a.total_bytes();
        let values = a.finish()?;
        let mut s = self.seen.lock().unwrap();
        if self.faults.reject_uploads {
            s.rejected += 1;
            let mut a = answer(v1::UploadStatus::Rejected, "round closed", total);
            a.reason = self.faults.reject_reason.into();
            return Ok(Response::new(a));
        }
        if let Some((h, _)) = &s.accepted {
            return Ok(Response::new(if h.sha256 == header.sha256 {
                answer(v1::UploadStatus::Duplicate, "already counted", total)
            } else {
                answer(
                    v1::UploadStatus::Rejected,
                    "different update already accepted",
                    total,
                )
            }));
        }
        s.accepted = Some((header, values));
        Ok(Response::new(answer(
            v1::UploadStatus::Accepted,
            "counted",
            total,
        )))
    }

    async fn submit_stage_message(
        &self,
        _: Request<v1::StageMessageRequest>,
    ) -> Result<Response<v1::StageMessageResponse>, Status> {
        Err(Status::failed_precondition(
            "this fake runs no secure aggregation",
        ))
    }

    async fn report_task_failure(
        &self,
        req: Request<v1::TaskFailure>,
    ) -> Result<Response<v1::TaskFailureAck>, Status> {
        self.auth(&req)?;
        let mut s = self.seen.lock().unwrap();
        s.task_failures.push(req.into_inner());
        // The client pauses and checks in again after a failure: that check-in ends the test.
        s.rejected += 1;
        Ok(Response::new(v1::TaskFailureAck {
            message: "recorded".into(),
        }))
    }

    async fn resolve_model(
        &self,
        _: Request<v1::ResolveModelRequest>,
    ) -> Result<Response<v1::ResolvedModel>, Status> {
        Err(Status::unimplemented("resolve_model"))
    }

    async fn submit_evaluation(
        &self,
        _: Request<v1::EvaluationReport>,
    ) -> Result<Response<v1::EvaluationAck>, Status> {
        Err(Status::unimplemented("submit_evaluation"))
    }

    async fn query_upload(
        &self,
        req: Request<v1::QueryUploadRequest>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        self.auth(&req)?;
        let id = req.into_inner().upload_id;
        let mut s = self.seen.lock().unwrap();
        s.queries += 1;
        if let Some((h, _)) = &s.accepted
            && h.upload_id == id
        {
            return Ok(Response::new(answer(
                v1::UploadStatus::Accepted,
                "counted",
                h.total_bytes,
            )));
        }
        match s.uploads.get(&id) {
            Some(a) => Ok(Response::new(answer(
                v1::UploadStatus::Incomplete,
                "partial",
                a.received(),
            ))),
            None => Err(Status::not_found("no such upload")),
        }
    }
}

/// Serves `fake` over plain-text HTTP/2 on `listener` until dropped.
pub async fn serve_on(fake: Arc<Fake>, listener: tokio::net::TcpListener) {
    let _ = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::from_arc(fake))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await;
}

/// Serves `fake` on a fresh 127.0.0.1 port.
pub async fn serve(fake: Arc<Fake>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(serve_on(fake, listener)))
}

/// An insecure client configuration with fast backoff and small upload chunks.
pub fn config(addr: SocketAddr, state_dir: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(format!("http://{addr}"), state_dir);
    c.insecure = true;
    c.enrollment_token = Some(TOKEN.into());
    c.client_name = "test-client".into();
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
    };
    c.upload_chunk_bytes = 700;
    c
}

/// Checks the accepted update: layout, finite, different from the initial model, sane header.
pub fn check_accepted(fake: &Fake, expected_samples: u64) {
    let s = fake.seen.lock().unwrap();
    let (h, values) = s.accepted.as_ref().expect("no update accepted");
    assert_eq!(values.len(), fake.layout.len());
    assert!(values.iter().all(|v| v.is_finite()));
    assert_ne!(values, &fake.initial);
    assert_eq!(h.job_id, JOB);
    assert_eq!((h.round, h.attempt, h.stage_index), (1, 0, 0));
    assert_eq!(h.base_model_version, 1);
    assert_eq!(h.num_samples, expected_samples);
    assert!(h.metrics["train_loss"].is_finite());
    assert_eq!(
        h.upload_id,
        flotilla_client::upload_id(JOB, 1, 0, 0, CLIENT_ID)
    );
}
