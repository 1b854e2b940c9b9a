//! The client: enrollment, the check-in loop, resumable download, training and resumable upload.
//!
//! [`Client`] and the state of one run ([`Session`]) live here, with what every part shares (failure
//! classification, backoff, training on a blocking thread). The parts: `session` (enrollment,
//! credentials, the check-in loop, a plain training task), `transfer` (resumable download and
//! upload), `task` (pure: a task's checks and the upload header), `eval` (federated evaluation:
//! checking the trainer's and its upload metrics), `evaluation` (a federated evaluation task:
//! download, evaluate, `SubmitEvaluation`), `secagg` (secure-aggregation stages), `failure`
//! (reporting a failed task), `pull` (a registered model for inference).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flotilla_proto::AuthError;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use rand::RngExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::{ClientConfig, error_chain};
use crate::credential::StoredCredential;
use crate::error::{ClientError, RunError};
use crate::scaffold::ControlStore;
use crate::trainer::{BoxError, LocalTrainer, TaskInfo, TrainOutcome};
use flotilla_core::round::ClientEval;
use flotilla_core::strategy::{scaffold_client_update, scaffold_correction};

mod compress;
mod eval;
mod evaluation;
mod failure;
mod outage_log;
mod pull;
mod secagg;
mod session;
mod task;
mod trace;
mod transfer;
use outage_log::{OUTAGE_LOG_INTERVAL, OutageLog};
pub use pull::PulledModel;
pub use task::upload_id;
use task::{build_header, check_task};
use transfer::{Payload, Retries};

/// Timeout of unary calls (enroll, check-in, query-upload) and of opening a download.
const UNARY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence tolerated between two messages of a download, or before an upload's answer.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest model the client downloads (1 GiB).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;
/// Longest `RetryAfter` honoured; longer requests are shortened to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How long after a task's deadline (local clock) the client keeps retrying its transfers.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(120);
/// Attempts without progress (restarted downloads, stalled uploads) before a task is abandoned.
const MAX_STALLS: u32 = 8;
/// Transient failures in a row before a task without a deadline is abandoned.
const MAX_TRANSIENT: u32 = 30;

/// Counters of what a [`Client::run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Check-in calls made (answered or not).
    pub check_ins: u64,
    /// Tasks received from the coordinator.
    pub tasks_received: u64,
    /// Tasks completed: update trained and acknowledged (`ACCEPTED` or `DUPLICATE`).
    pub tasks_done: u64,
    /// Tasks given up: unsupported or malformed task, training error, refused download or upload,
    /// or transfers still failing after the deadline.
    pub tasks_failed: u64,
    /// Uploads answered `ACCEPTED`.
    pub uploads_accepted: u64,
    /// Uploads answered `DUPLICATE` (already accepted earlier).
    pub uploads_duplicate: u64,
    /// Uploads answered `REJECTED` (including `uploads_outdated`).
    pub uploads_rejected: u64,
    /// Uploads answered `REJECTED` because the task could no longer be answered (FedBuff:
    /// `too_stale`, `no_task`). The client checks in again at once; such a task is not counted in
    /// `tasks_failed`.
    pub uploads_outdated: u64,
    /// Downloads continued from a byte offset after a broken stream.
    pub download_resumes: u64,
    /// Uploads continued from a byte offset after a broken stream.
    pub upload_resumes: u64,
    /// Times the client backed off and reconnected after a transport error or `UNAVAILABLE`.
    pub reconnects: u64,
    /// Whether this run enrolled (false when a stored credential was reused).
    pub enrolled: bool,
    /// Times this run enrolled again because the coordinator reported the credential expired.
    pub re_enrollments: u64,
    /// Tasks whose global model the trainer evaluated ([`LocalTrainer::evaluate`]) with a usable
    /// outcome, reported with the update.
    pub evaluations: u64,
    /// Evaluations that failed or returned an unusable outcome (logged; the task trained on
    /// without evaluation metrics).
    pub evaluations_dropped: u64,
    /// Federated evaluation tasks (`STAGE_EVALUATE`) whose result the coordinator acknowledged
    /// (also counted in `tasks_done`).
    pub evaluation_tasks: u64,
    /// Wall time of the completed tasks, from receiving the task to the acknowledged upload
    /// (each secure-aggregation stage is a task).
    pub task_time: Duration,
    /// Wall time spent inside the trainer's methods ([`LocalTrainer`], on the blocking thread).
    pub train_time: Duration,
    /// Update payload bytes sent in upload streams the coordinator answered (a resumed upload
    /// counts the bytes from its resume offset).
    pub upload_bytes: u64,
}

/// Called with the counters so far before every check-in of a running [`Client::run`] (so after
/// every task or retry), and once more when the run ends: see [`Client::on_stats`].
pub type StatsObserver = Arc<dyn Fn(&ClientStats) + Send + Sync>;

/// Adds `authorization: Bearer <credential>` and the current span's trace context
/// (`traceparent`, when traces are exported) to every call.
#[derive(Clone)]
struct Auth(MetadataValue<Ascii>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        trace::inject(req.metadata_mut());
        Ok(req)
    }
}

type Rpc = CoordinatorClient<InterceptedService<Channel, Auth>>;

/// A Flotilla client: give it a [`LocalTrainer`] and [`Client::run`] it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use flotilla_client::{Client, ClientConfig, DatasetTrainer};
/// use flotilla_data::DatasetName;
///
/// let mut config = ClientConfig::new("https://coordinator.example:7443", "/var/lib/flotilla");
/// config.ca_cert = Some("/etc/flotilla/ca.pem".into());
/// config.enrollment_token = std::env::var("FLOTILLA_TOKEN").ok();
/// let trainer = DatasetTrainer::from_partition(DatasetName::Digits, "data".as_ref(), 3, 10)?;
/// // Any future ends the run, e.g. `async { tokio::signal::ctrl_c().await.ok(); }`.
/// let shutdown = std::future::pending::<()>();
/// let stats = Client::new(config)?.run(trainer, shutdown).await?;
/// println!("{} tasks done", stats.tasks_done);
/// # Ok(()) }
/// ```
pub struct Client {
    config: ClientConfig,
    endpoint: Endpoint,
    credential: Option<StoredCredential>,
    observer: Option<StatsObserver>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .field("endpoint", &self.endpoint)
            .field("credential", &self.credential)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Client {
    /// Validates `config`, prepares the (TLS) endpoint and loads a stored credential if there is one.
    /// Does not touch the network.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let endpoint = config.endpoint()?;
        let path = config.credential_path();
        let credential = StoredCredential::load(&path)?;
        if let Some(c) = &credential
            && normalize(&c.coordinator) != normalize(&config.coordinator)
        {
            return Err(ClientError::CoordinatorMismatch {
                path,
                stored: c.coordinator.clone(),
                configured: config.coordinator.clone(),
            });
        }
        Ok(Self {
            config,
            endpoint,
            credential,
            observer: None,
        })
    }

    /// Calls `observer` with the counters before every check-in and when the run ends, e.g. to
    /// export them as metrics while the client runs (the SDK itself serves nothing).
    pub fn on_stats(mut self, observer: impl Fn(&ClientStats) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The client id, once enrolled (stored credential or enrollment during [`Client::run`]).
    pub fn client_id(&self) -> Option<&str> {
        self.credential.as_ref().map(|c| c.client_id.as_str())
    }

    /// Serves the coordinator until `shutdown` completes or a fatal error occurs.
    ///
    /// Enrolls first if no credential is stored (needs [`ClientConfig::enrollment_token`]), then
    /// loops: check in; on `RetryAfter` sleep that long plus a little jitter; on a `Task` download the
    /// model (resuming a broken stream from the bytes already verified, SHA-256 checked), train it
    /// with `trainer` on a blocking thread, and upload the update (resuming a broken upload after
    /// `QueryUpload`). Transport errors and `UNAVAILABLE` are retried after a jittered exponential
    /// backoff ([`ClientConfig::backoff`]). When the coordinator reports the credential expired
    /// (`UNAUTHENTICATED` with `flotilla-auth-error: expired`) the stored credential is deleted and
    /// the client enrolls again with its enrollment token (a new client id); without a token the run
    /// ends with [`ClientError::CredentialExpired`]. Any other `UNAUTHENTICATED` (credential revoked
    /// or unknown), a refused enrollment, a state-file error or a panicking trainer end the run with
    /// an error.
    ///
    /// When `shutdown` completes, whatever is in flight is dropped (an interrupted training finishes
    /// on its thread and is discarded) and the counters are returned.
    pub async fn run<T, F>(mut self, trainer: T, shutdown: F) -> Result<ClientStats, RunError>
    where
        T: LocalTrainer + 'static,
        F: Future<Output = ()>,
    {
        let mut stats = ClientStats::default();
        let result = {
            let mut session = Session {
                client: &mut self,
                stats: &mut stats,
                trainer: Some(Box::new(trainer)),
                rpc: None,
                failures: 0,
                outage: OutageLog::new(OUTAGE_LOG_INTERVAL),
                fresh_credential: false,
                secagg: None,
            };
            tokio::select! {
                biased;
                () = shutdown => {
                    tracing::info!("shutdown requested");
                    Ok(())
                }
                r = session.run_loop() => r,
            }
        };
        if let Some(o) = &self.observer {
            o(&stats);
        }
        match result {
            Ok(()) => Ok(stats),
            Err(error) => Err(RunError { error, stats }),
        }
    }
}

/// Address comparison that ignores surrounding whitespace and a trailing slash.
fn normalize(url: &str) -> &str {
    url.trim().trim_end_matches('/')
}

/// How a failed call is handled.
enum Failure {
    /// End the run.
    Fatal(ClientError),
    /// Back off, reconnect and try again.
    Transient,
    /// Give up on the current task (or, at check-in, back off and try again).
    Refused,
}

/// How a failed call is handled, judged from its status alone (see [`Session::classify`] for the
/// TLS failures found in its source chain).
/// `NOT_FOUND` "job 7 is not running (completed)": the job ended, a normal outcome for a task
/// still in flight, not a refusal worth a warning.
fn job_ended(status: &Status) -> bool {
    status.code() == Code::NotFound && status.message().contains(" is not running")
}

fn classify(status: &Status) -> Failure {
    match status.code() {
        // `Session::run_loop` turns an expired credential into a new enrollment when it can.
        Code::Unauthenticated if AuthError::of(status) == Some(AuthError::Expired) => {
            Failure::Fatal(ClientError::CredentialExpired {
                message: status.message().to_owned(),
            })
        }
        Code::Unauthenticated => Failure::Fatal(ClientError::Unauthenticated {
            message: status.message().to_owned(),
        }),
        // No flotilla.v1 service (or not this call) behind the address: no retry changes that.
        Code::Unimplemented => Failure::Fatal(ClientError::ProtocolMismatch {
            message: status.message().to_owned(),
        }),
        Code::Unavailable
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Internal
        | Code::Aborted => Failure::Transient,
        _ => Failure::Refused,
    }
}

/// [`classify`], except that a TLS failure retrying cannot fix (wrong CA, unusable server
/// certificate, no common TLS version) ends the run with [`ClientError::Tls`], whatever the code
/// (tonic reports them as `UNAVAILABLE` or `UNKNOWN`, like any failed connection).
fn classify_with_tls(status: &Status, config: &ClientConfig) -> Failure {
    match crate::diagnose_tls(status, config.ca_cert.as_deref(), &config.coordinator) {
        Some(hint) => Failure::Fatal(ClientError::Tls { hint }),
        None => classify(status),
    }
}

/// What became of a task's transfer.
enum Done<T> {
    /// It worked.
    Ok(T),
    /// The task is abandoned (already logged).
    Abandoned,
    /// The coordinator refused the update because the task can no longer be answered — FedBuff's
    /// `too_stale` (the model moved past `max_staleness`) or `no_task` (the task was dropped) — so
    /// the client should fetch fresh work at once (already logged).
    Outdated,
}

struct Session<'a> {
    client: &'a mut Client,
    stats: &'a mut ClientStats,
    /// `None` only while training on a blocking thread.
    trainer: Option<Box<dyn LocalTrainer>>,
    rpc: Option<Rpc>,
    /// Consecutive transient failures (drives the backoff); reset by every successful call.
    failures: u32,
    /// Which "coordinator unreachable" warnings of the current outage are written.
    outage: OutageLog,
    /// The credential was enrolled by this run and no check-in has succeeded with it yet.
    fresh_credential: bool,
    /// Secure aggregation: this client's state in the round attempt it takes part in.
    secagg: Option<secagg::SecAggState>,
}

impl Session<'_> {
    fn rpc(&mut self, bearer: &MetadataValue<Ascii>) -> Rpc {
        self.rpc
            .get_or_insert_with(|| {
                let channel = self.client.endpoint.connect_lazy();
                CoordinatorClient::with_interceptor(channel, Auth(bearer.clone()))
            })
            .clone()
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        if let Some(failures) = self.outage.recovered() {
            tracing::info!(failures, "coordinator reachable again");
        }
    }

    /// See [`classify_with_tls`].
    fn classify(&self, status: &Status) -> Failure {
        classify_with_tls(status, &self.client.config)
    }

    /// Backs off after a transient failure and drops the channel so the next call reconnects.
    /// The warning is rate-limited ([`OutageLog`]): first failure, then at each doubling of the
    /// failure count or after 30 s.
    async fn back_off(&mut self, what: &str, status: &Status) {
        let delay = self.client.config.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.stats.reconnects += 1;
        self.rpc = None;
        if let Some(unlogged) = self.outage.failure(Instant::now()) {
            tracing::warn!(
                call = what,
                code = ?status.code(),
                error = ?status_text(status),
                delay_ms = delay.as_millis() as u64,
                failures = self.outage.failures(),
                not_logged = unlogged,
                "coordinator unreachable; backing off before reconnecting"
            );
        }
        tokio::time::sleep(delay).await;
    }

    /// A short pause after an abandoned task, so that a coordinator handing out the same bad task
    /// again is not hammered.
    async fn pause_after_failed_task(&mut self) {
        self.stats.tasks_failed += 1;
        tokio::time::sleep(self.client.config.backoff.delay(0)).await;
    }

    fn client_id(&self) -> &str {
        self.client
            .credential
            .as_ref()
            .map_or("", |c| c.client_id.as_str())
    }

    /// Runs the user's trainer on a blocking thread: first its evaluation of `global` (federated
    /// evaluation; `None` when it made none or an unusable one, see `eval::checked`), then its
    /// training. The outer error is fatal (the trainer panicked); the inner one is the trainer's
    /// own training failure, which abandons only this task.
    async fn train(
        &mut self,
        info: &Arc<TaskInfo>,
        global: &Arc<Vec<f32>>,
    ) -> Result<(Option<ClientEval>, Result<TrainOutcome, BoxError>), ClientError> {
        let Some(mut trainer) = self.trainer.take() else {
            return Err(ClientError::TrainerPanicked("trainer missing".into()));
        };
        let (info, global) = (Arc::clone(info), Arc::clone(global));
        let joined = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let evaluated = trainer.evaluate(&info, &global);
            let made = !matches!(evaluated, Ok(None));
            let eval = eval::checked(&info, evaluated);
            let r = trainer.train(&info, &global);
            (trainer, (made, eval), r, started.elapsed())
        })
        .await;
        match joined {
            Ok((trainer, (made, eval), r, took)) => {
                self.trainer = Some(trainer);
                self.stats.train_time += took;
                if eval.is_some() {
                    self.stats.evaluations += 1;
                } else if made {
                    self.stats.evaluations_dropped += 1;
                }
                Ok((eval, r))
            }
            Err(e) => Err(ClientError::TrainerPanicked(e.to_string())),
        }
    }
}

fn past(deadline: Option<SystemTime>) -> bool {
    deadline.is_some_and(|d| SystemTime::now() > d)
}

/// `RetryAfter` delay (capped at [`MAX_RETRY_AFTER`]) plus up to 10 % + 100 ms of jitter.
fn retry_delay(ms: u64) -> Duration {
    let base = Duration::from_millis(ms).min(MAX_RETRY_AFTER);
    let spread = base.as_secs_f64() * 0.1 + 0.1;
    let u: f64 = rand::rng().random();
    base + Duration::from_secs_f64(spread * u)
}

fn status_text(s: &Status) -> String {
    match std::error::Error::source(s) {
        Some(src) if s.message().is_empty() => error_chain(src),
        Some(src) => format!("{}: {}", s.message(), error_chain(src)),
        None => s.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_capped_with_small_jitter() {
        for _ in 0..20 {
            let d = retry_delay(1000);
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
        }
        assert!(retry_delay(u64::MAX) <= MAX_RETRY_AFTER + Duration::from_secs(400));
    }

    #[test]
    fn expired_credentials_are_told_apart_from_revoked_ones() {
        let expired = AuthError::Expired.status("credential expired; enroll again");
        assert!(matches!(
            classify(&expired),
            Failure::Fatal(ClientError::CredentialExpired { .. })
        ));
        for other in [
            AuthError::Revoked.status("revoked"),
            AuthError::Unknown.status("unknown"),
            Status::unauthenticated("credential expired; enroll again"), // no metadata: not trusted
        ] {
            assert!(matches!(
                classify(&other),
                Failure::Fatal(ClientError::Unauthenticated { .. })
            ));
        }
    }

    #[test]
    fn permanent_failures_are_told_apart_from_transient_ones() {
        let mut config = ClientConfig::new("https://coord.example:7070", "/tmp/unused");
        config.ca_cert = Some("certs/ca.pem".into());
        let tls = |e: rustls::Error| {
            Status::from_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        };
        // A wrong CA, as tonic reports it: a failed connection with the rustls error deep inside.
        let wrong_ca = tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature,
        ));
        match classify_with_tls(&wrong_ca, &config) {
            Failure::Fatal(ClientError::Tls { hint }) => {
                assert!(
                    hint.contains("not signed by the CA in --ca-cert certs/ca.pem"),
                    "{hint}"
                );
            }
            _ => panic!("a wrong CA must end the run"),
        }
        let ca_as_leaf = tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                webpki::Error::CaUsedAsEndEntity,
            ))),
        ));
        assert!(matches!(
            classify_with_tls(&ca_as_leaf, &config),
            Failure::Fatal(ClientError::Tls { hint }) if hint.contains("is a CA certificate")
        ));
        // No flotilla.v1 behind the address: a protocol mismatch, whichever call found it.
        assert!(matches!(
            classify_with_tls(
                &Status::unimplemented("unknown service flotilla.v1.Coordinator"),
                &config
            ),
            Failure::Fatal(ClientError::ProtocolMismatch { .. })
        ));
        // Transport failures and an unavailable coordinator heal: back off and retry.
        let refused = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        for transient in [
            refused,
            Status::unavailable("coordinator restarting"),
            Status::deadline_exceeded("timeout"),
            // A TLS alert that is not about configuration (e.g. the server failed mid-handshake).
            tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::InternalError,
            )),
        ] {
            assert!(
                matches!(classify_with_tls(&transient, &config), Failure::Transient),
                "{transient:?}"
            );
        }
        // A refused request abandons the task but does not end the run.
        assert!(matches!(
            classify_with_tls(&Status::invalid_argument("bad header"), &config),
            Failure::Refused
        ));
    }
}
