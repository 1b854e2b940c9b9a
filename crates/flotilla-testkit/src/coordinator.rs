//! A real coordinator in-process on loopback with TLS (dev certificates), a tonic client and a
//! small HTTPS client for the admin API; helpers for jobs, tasks and uploads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_coordinator::api::{JobStatus, JobSubmitted, TokenIssued, TokenRequest};
use flotilla_coordinator::spec::JobSpec;
use flotilla_coordinator::{JobModel, ModelProvider, Server, ServerConfig, TlsMode};
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use flotilla_proto::{ModelReceiver, payload_sha256, upload_messages, v1};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Status};

use crate::certs::dev_certs_in;

/// The admin token of every harness coordinator.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The built-in models (`flotilla_ml::build`), as `flotilla server` provides them, without
/// server-side evaluation.
#[derive(Debug)]
pub struct BuiltinModels;

impl ModelProvider for BuiltinModels {
    fn model(&self, spec: &JobSpec) -> Result<JobModel, String> {
        let ml = spec.ml_spec().map_err(|e| e.to_string())?;
        let t = flotilla_ml::build(&ml, spec.seed).map_err(|e| e.to_string())?;
        Ok(JobModel {
            layout: t.layout().clone(),
            initial: t.parameters(),
        })
    }
}

/// A running coordinator; [`Harness::stop`] shuts it down (dropping it aborts nothing: the runtime
/// ending does).
#[derive(Debug)]
pub struct Harness {
    /// The gRPC listener.
    pub grpc_addr: SocketAddr,
    /// The admin API listener.
    pub admin_addr: SocketAddr,
    /// The CA certificate clients trust.
    pub ca_pem: Vec<u8>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), flotilla_coordinator::CoordinatorError>>>,
}

/// Starts a TLS coordinator on `data_dir` (certificates in `certs_dir`, created if absent).
pub async fn start(data_dir: &Path, certs_dir: &Path, database_url: Option<String>) -> Harness {
    start_with(data_dir, certs_dir, |c| c.database_url = database_url).await
}

/// [`start`] with a configuration adjusted by `configure`.
pub async fn start_with(
    data_dir: &Path,
    certs_dir: &Path,
    configure: impl FnOnce(&mut ServerConfig),
) -> Harness {
    let certs = dev_certs_in(certs_dir, &["localhost", "127.0.0.1"]);
    let mut config = ServerConfig::new(data_dir, ADMIN_TOKEN);
    config.models = Some(Arc::new(BuiltinModels));
    config.tls = TlsMode::Files {
        cert: certs.server_cert.clone(),
        key: certs.server_key.clone(),
    };
    configure(&mut config);
    let server = Server::bind(config).await.expect("bind");
    let (stop, rx) = oneshot::channel();
    let (grpc_addr, admin_addr) = (server.grpc_addr(), server.admin_addr());
    let handle = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Harness {
        grpc_addr,
        admin_addr,
        ca_pem: std::fs::read(&certs.ca_cert).expect("ca"),
        stop: Some(stop),
        handle: Some(handle),
    }
}

impl Harness {
    /// Shuts the coordinator down and waits for it (its `run` must end cleanly).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("server run");
        }
    }

    /// A new gRPC client over TLS that trusts the harness CA.
    pub async fn grpc(&self) -> CoordinatorClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        let ch = Channel::from_shared(format!("https://localhost:{}", self.grpc_addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("connect gRPC");
        CoordinatorClient::new(ch)
    }

    /// An admin API call: (status, JSON body).
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.admin_with(method, path, body, Some(ADMIN_TOKEN)).await
    }

    /// An admin API call with `token` as the bearer token (or none): (status, JSON body).
    pub async fn admin_with(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        self.admin_body(method, path, None, body.as_bytes().to_vec(), token)
            .await
    }

    /// An admin API call with a body of any bytes and, if given, its `content-type` (e.g.
    /// `multipart/form-data; boundary=…`): (status, JSON body).
    pub async fn admin_body(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.admin_addr)
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("admin TLS");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, json)
    }

    /// `GET /v1/metrics`.
    pub async fn metrics(&self) -> Value {
        self.admin("GET", "/v1/metrics", "").await.1
    }

    /// Creates an enrollment token through the admin API and enrolls a client with it.
    pub async fn enroll(&self, name: &str) -> Client {
        self.enroll_in("default", name).await
    }

    /// [`Harness::enroll`] into `tenant`.
    pub async fn enroll_in(&self, tenant: &str, name: &str) -> Client {
        let req = TokenRequest {
            tenant: Some(tenant.to_owned()),
            uses: Some(1),
            expires_in_seconds: None,
        };
        let req = serde_json::to_string(&req).unwrap();
        let (code, body) = self.admin("POST", "/v1/enrollment-tokens", &req).await;
        assert_eq!(code, 200, "{body}");
        let token = serde_json::from_value::<TokenIssued>(body).unwrap().token;
        let mut g = self.grpc().await;
        let r = g
            .enroll(v1::EnrollRequest {
                enrollment_token: token,
                client_name: name.into(),
                attributes: Default::default(),
            })
            .await
            .expect("enroll")
            .into_inner();
        Client {
            id: r.client_id.parse().unwrap(),
            credential: r.credential,
            grpc: g,
        }
    }

    /// Submits a job spec through the admin API; its id.
    pub async fn submit(&self, toml: &str) -> u64 {
        let (code, body) = self.admin("POST", "/v1/jobs", toml).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_value::<JobSubmitted>(body).unwrap().job_id
    }

    /// `GET /v1/jobs/{id}`, typed (panics unless it answers 200 with a job status).
    pub async fn job_status(&self, id: u64) -> JobStatus {
        let (code, body) = self.admin("GET", &format!("/v1/jobs/{id}"), "").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_value(body).expect("a job status")
    }
}

/// An enrolled client speaking raw gRPC.
#[derive(Debug)]
pub struct Client {
    /// Its client id.
    pub id: u64,
    /// Its bearer credential.
    pub credential: String,
    /// Its gRPC connection.
    pub grpc: CoordinatorClient<Channel>,
}

/// `msg` with `cred` as its bearer credential.
pub fn authed<T>(msg: T, cred: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {cred}").parse().unwrap());
    r
}

impl Client {
    /// One check-in offering `num_samples`.
    pub async fn check_in(
        &mut self,
        num_samples: u64,
    ) -> Result<v1::check_in_response::Outcome, Status> {
        let req = authed(
            v1::CheckInRequest {
                num_samples,
                job_ids: vec![],
                attributes: Default::default(),
            },
            &self.credential,
        );
        Ok(self
            .grpc
            .check_in(req)
            .await?
            .into_inner()
            .outcome
            .expect("outcome"))
    }

    /// Checks in until a task arrives (at most 15 s).
    pub async fn wait_task(&mut self, num_samples: u64) -> v1::Task {
        for _ in 0..300 {
            if let v1::check_in_response::Outcome::Task(t) =
                self.check_in(num_samples).await.expect("check in")
            {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("client {} got no task", self.id);
    }

    /// Downloads and verifies the task's model.
    pub async fn download(&mut self, task: &v1::Task) -> Vec<f32> {
        let info = task.model.clone().expect("model info");
        let req = authed(
            v1::DownloadRequest {
                job_id: task.job_id.clone(),
                model_version: task.model_version,
                offset: 0,
                ..Default::default()
            },
            &self.credential,
        );
        let mut stream = self
            .grpc
            .download_model(req)
            .await
            .expect("download")
            .into_inner();
        let mut rx = ModelReceiver::new(&info, 1 << 30).expect("receiver");
        while let Some(chunk) = stream.message().await.expect("chunk") {
            rx.push(&chunk).expect("push");
        }
        rx.finish().expect("verified model")
    }

    /// Uploads `params` under `header` in 16-byte chunks.
    pub async fn upload_header(
        &mut self,
        header: v1::UpdateHeader,
        params: &[f32],
    ) -> Result<v1::UploadResponse, Status> {
        let msgs: Vec<_> = upload_messages(header, params, 16, 0).collect();
        let req = authed(tokio_stream::iter(msgs), &self.credential);
        Ok(self.grpc.upload_update(req).await?.into_inner())
    }

    /// Uploads `params` as the answer to `task` (header from [`header`]).
    pub async fn upload(
        &mut self,
        task: &v1::Task,
        params: &[f32],
        num_samples: u64,
    ) -> Result<v1::UploadResponse, Status> {
        let h = header(task, params, num_samples);
        self.upload_header(h, params).await
    }
}

/// Checks every client in, round-robin, until each has a task (at most 15 s).
pub async fn wait_tasks(clients: &mut [Client]) -> Vec<v1::Task> {
    let mut tasks: Vec<Option<v1::Task>> = vec![None; clients.len()];
    for _ in 0..300 {
        for (i, c) in clients.iter_mut().enumerate() {
            if tasks[i].is_none()
                && let v1::check_in_response::Outcome::Task(t) =
                    c.check_in(samples(i)).await.expect("check in")
            {
                tasks[i] = Some(t);
            }
        }
        if tasks.iter().all(Option::is_some) {
            return tasks.into_iter().flatten().collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not every client got a task");
}

/// The upload header of `params` answering `task`.
pub fn header(task: &v1::Task, params: &[f32], num_samples: u64) -> v1::UpdateHeader {
    let info = task.model.as_ref().expect("model");
    v1::UpdateHeader {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage: v1::Stage::Train as i32,
        num_samples,
        metrics: [("train_loss".to_owned(), 0.25)].into_iter().collect(),
        total_bytes: 4 * params.len() as u64,
        layout_fingerprint: info.layout_fingerprint.clone(),
        sha256: payload_sha256(params).to_vec(),
        upload_id: format!("j{}-r{}-a{}", task.job_id, task.round, task.attempt),
        base_model_version: task.model_version,
        stage_index: task.stage_index,
        ..Default::default()
    }
}

/// The upload status of an answer.
pub fn status_of(r: &v1::UploadResponse) -> v1::UploadStatus {
    v1::UploadStatus::try_from(r.status).unwrap_or(v1::UploadStatus::Unspecified)
}

/// A job over a 10-parameter logistic regression (input [4], 2 classes).
pub fn job_toml(rounds: u64, clients: usize) -> String {
    format!(
        r#"
name = "tiny"
seed = 7
rounds = {rounds}
clients_per_round = {clients}
[round]
deadline_seconds = 60
min_report_fraction = 0.5
selection_window_ms = 100
retry_after_ms = 50
[model]
kind = "logreg"
input_shape = [4]
num_classes = 2
[train]
local_epochs = 1
batch_size = 8
learning_rate = 0.1
[eligibility]
min_samples = 5
"#
    )
}

/// The update client `i` sends in `round`.
pub fn update(i: usize, round: u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|k| (i as f32 + 1.0) * 0.125 + k as f32 * 0.01 + round as f32)
        .collect()
}

/// The sample count client `i` reports.
pub fn samples(i: usize) -> u64 {
    10 * (i as u64 + 1)
}

/// Sample-weighted mean, computed in f64 like FedAvg.
pub fn weighted_mean(updates: &[(Vec<f32>, u64)]) -> Vec<f32> {
    let len = updates[0].0.len();
    let total: f64 = updates.iter().map(|(_, n)| *n as f64).sum();
    (0..len)
        .map(|k| {
            (updates
                .iter()
                .map(|(u, n)| u[k] as f64 * *n as f64)
                .sum::<f64>()
                / total) as f32
        })
        .collect()
}

/// A temporary directory with the paths of a coordinator's data and certificates inside it.
pub fn tmp() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let certs = dir.path().join("certs");
    (dir, data, certs)
}

/// Model version `version` of job `job` as committed, read from the blob store of the
/// coordinator's data directory (`models/job-<id>/v<version>-<sha256>.bin`): works for running
/// and finished jobs (a finished job's model is not served over gRPC).
pub fn committed_model(data_dir: &Path, job: &str, version: u64) -> Vec<f32> {
    let dir = data_dir.join(format!("models/job-{job}"));
    let prefix = format!("v{version}-");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().starts_with(&prefix))
        .unwrap_or_else(|| panic!("no blob of version {version} in {}", dir.display()));
    flotilla_core::params_from_le_bytes(&std::fs::read(file.path()).unwrap()).expect("model bytes")
}
