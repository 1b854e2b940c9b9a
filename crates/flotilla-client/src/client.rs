//! The client: enrollment, the check-in loop, resumable download, training and resumable upload.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_proto::v1::{self, check_in_response::Outcome, coordinator_client::CoordinatorClient};
use flotilla_proto::{AuthError, ExpectedLayout, ModelReceiver, TransferError, UploadLimits};
use rand::RngExt;
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::{ClientConfig, error_chain};
use crate::credential::StoredCredential;
use crate::error::{ClientError, RunError};
use crate::scaffold::ControlStore;
use crate::trainer::{
    BoxError, LocalTrainer, ModelDescription, TaskInfo, TrainOutcome, TrainingConfig,
};
use flotilla_core::strategy::{scaffold_client_update, scaffold_correction};

mod failure;
mod outage_log;
mod secagg;
use outage_log::{OUTAGE_LOG_INTERVAL, OutageLog};

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
}

/// Adds `authorization: Bearer <credential>` to every call.
#[derive(Clone)]
struct Auth(MetadataValue<Ascii>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
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
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    endpoint: Endpoint,
    credential: Option<StoredCredential>,
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
        })
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

/// Failure accounting of one transfer, deciding when to give a task up.
///
/// Attempts that make no progress (or restart from zero) are bounded by [`MAX_STALLS`]; transient
/// failures (coordinator unreachable) are bounded by the task's deadline plus [`DEADLINE_GRACE`], or
/// by [`MAX_TRANSIENT`] when the task has no deadline.
struct Retries {
    deadline: Option<SystemTime>,
    stalls: u32,
    transient: u32,
}

impl Retries {
    fn new(deadline: Option<SystemTime>) -> Self {
        Self {
            deadline,
            stalls: 0,
            transient: 0,
        }
    }

    fn exhausted(&self) -> bool {
        let failed = self.stalls > 0 || self.transient > 0;
        self.stalls > MAX_STALLS
            || (failed && past(self.deadline))
            || (self.deadline.is_none() && self.transient > MAX_TRANSIENT)
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

    /// [`Session::serve`], enrolling again whenever the coordinator reports the credential expired
    /// (the stored credential is deleted first). Without an enrollment token, or if a credential
    /// enrolled moments ago is refused as expired too, the run ends with
    /// [`ClientError::CredentialExpired`].
    async fn run_loop(&mut self) -> Result<(), ClientError> {
        loop {
            let message = match self.serve().await {
                Err(ClientError::CredentialExpired { message }) => message,
                other => return other,
            };
            let fresh = self.fresh_credential;
            self.discard_credential()?;
            let has_token = self
                .client
                .config
                .enrollment_token
                .as_deref()
                .is_some_and(|t| !t.is_empty());
            if !has_token {
                return Err(ClientError::CredentialExpired {
                    message: format!("{message}; no enrollment token is configured"),
                });
            }
            if fresh {
                return Err(ClientError::CredentialExpired {
                    message: format!(
                        "{message}; a credential enrolled moments ago was refused as expired too \
                         (check the coordinator's --credential-ttl and clock)"
                    ),
                });
            }
            self.stats.re_enrollments += 1;
            tracing::warn!(coordinator_says = %message, "credential expired; enrolling again with the enrollment token");
        }
    }

    /// Deletes the stored credential (file and memory) and drops the channel that sends it.
    fn discard_credential(&mut self) -> Result<(), ClientError> {
        let path = self.client.config.credential_path();
        self.client.credential = None;
        self.rpc = None;
        self.fresh_credential = false;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "expired credential deleted");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ClientError::State { path, source }),
        }
    }

    /// Enrolls if needed, then checks in and carries out tasks until an error ends the run.
    async fn serve(&mut self) -> Result<(), ClientError> {
        let bearer = self.ensure_enrolled().await?;
        loop {
            let num_samples = self.trainer.as_ref().map_or(0, |t| t.num_samples());
            let mut req = Request::new(v1::CheckInRequest {
                num_samples,
                job_ids: self.client.config.job_ids.clone(),
                attributes: HashMap::new(),
            });
            req.set_timeout(UNARY_TIMEOUT);
            self.stats.check_ins += 1;
            let mut rpc = self.rpc(&bearer);
            match rpc.check_in(req).await {
                Ok(resp) => {
                    self.succeeded();
                    self.fresh_credential = false;
                    match resp.into_inner().outcome {
                        Some(Outcome::RetryAfter(r)) => {
                            let delay = retry_delay(r.retry_after_ms);
                            tracing::debug!(
                                reason = %r.reason,
                                delay_ms = delay.as_millis() as u64,
                                "no task; checking in again later"
                            );
                            tokio::time::sleep(delay).await;
                        }
                        Some(Outcome::Task(task)) => {
                            self.stats.tasks_received += 1;
                            self.do_task(&bearer, task).await?;
                        }
                        None => {
                            tracing::warn!("check-in answer holds neither a task nor RetryAfter");
                            tokio::time::sleep(self.client.config.backoff.delay(0)).await;
                        }
                    }
                }
                Err(status) => match self.classify(&status) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient => self.back_off("CheckIn", &status).await,
                    Failure::Refused if status.code() == Code::PermissionDenied => {
                        return Err(ClientError::PermissionDenied {
                            message: status.message().to_owned(),
                        });
                    }
                    Failure::Refused => {
                        tracing::error!(code = ?status.code(), error = %status_text(&status), "check-in failed");
                        self.back_off("CheckIn", &status).await;
                    }
                },
            }
        }
    }

    /// Returns the `authorization` value, enrolling first if needed.
    async fn ensure_enrolled(&mut self) -> Result<MetadataValue<Ascii>, ClientError> {
        let path = self.client.config.credential_path();
        if let Some(c) = &self.client.credential {
            tracing::info!(client_id = %c.client_id, "using stored credential");
            return c
                .bearer()
                .map_err(|reason| ClientError::CorruptCredential { path, reason });
        }
        let token = self
            .client
            .config
            .enrollment_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ClientError::NotEnrolled { path: path.clone() })?;
        let resp = loop {
            let mut rpc = CoordinatorClient::new(self.client.endpoint.connect_lazy());
            let mut req = Request::new(v1::EnrollRequest {
                enrollment_token: token.clone(),
                client_name: self.client.config.client_name.clone(),
                attributes: [
                    ("sdk_version", env!("CARGO_PKG_VERSION")),
                    ("os", std::env::consts::OS),
                    ("arch", std::env::consts::ARCH),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            });
            req.set_timeout(UNARY_TIMEOUT);
            match rpc.enroll(req).await {
                Ok(r) => break r.into_inner(),
                Err(status) => match self.classify(&status) {
                    Failure::Transient => self.back_off("Enroll", &status).await,
                    Failure::Fatal(
                        e @ (ClientError::Tls { .. } | ClientError::ProtocolMismatch { .. }),
                    ) => {
                        return Err(e);
                    }
                    Failure::Fatal(_) | Failure::Refused => {
                        return Err(ClientError::EnrollmentRefused {
                            code: status.code(),
                            message: status.message().to_owned(),
                        });
                    }
                },
            }
        };
        self.succeeded();
        let cred = StoredCredential {
            client_id: resp.client_id,
            credential: resp.credential,
            coordinator: self.client.config.coordinator.trim().to_owned(),
        };
        let bearer = cred.bearer().map_err(ClientError::BadEnrollment)?;
        cred.save(&path)?;
        tracing::info!(client_id = %cred.client_id, path = %path.display(), "enrolled; credential stored");
        self.client.credential = Some(cred);
        self.stats.enrolled = true;
        self.fresh_credential = true;
        Ok(bearer)
    }

    fn client_id(&self) -> &str {
        self.client
            .credential
            .as_ref()
            .map_or("", |c| c.client_id.as_str())
    }

    async fn do_task(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: v1::Task,
    ) -> Result<(), ClientError> {
        let (mut info, receiver, control_receiver) = match check_task(&task) {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(job = %task.job_id, round = task.round, %reason, "skipping task");
                self.report_failure(
                    bearer,
                    &task,
                    v1::FailureKind::Other,
                    &format!("unusable task: {reason}"),
                )
                .await;
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        match v1::Stage::try_from(task.stage) {
            Ok(v1::Stage::Train) => {}
            Ok(stage) => {
                return self
                    .do_secagg_task(bearer, task, info, receiver, stage)
                    .await;
            }
            Err(_) => return Ok(()),
        }
        tracing::info!(
            job = %info.job_id,
            round = info.round,
            attempt = info.attempt,
            model_version = info.model_version,
            "task received"
        );
        let deadline = info.deadline.map(|d| d + DEADLINE_GRACE);

        let global = match self
            .download(bearer, &task, v1::ModelPart::Global, receiver, deadline)
            .await?
        {
            Done::Ok(p) => Arc::new(p),
            Done::Abandoned | Done::Outdated => {
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        // SCAFFOLD: the server control variate `c`, and this client's own `cᵢ` (zero at first).
        let controls = ControlStore::new(&self.client.config.state_dir);
        let scaffold = match control_receiver {
            None => None,
            Some(r) => match self
                .download(bearer, &task, v1::ModelPart::ServerControl, r, deadline)
                .await?
            {
                Done::Ok(c) => {
                    let ci = controls.load(&info.job_id, c.len());
                    info.gradient_correction = Some(scaffold_correction(&c, ci.as_deref()));
                    Some((c, ci.unwrap_or_default()))
                }
                Done::Abandoned | Done::Outdated => {
                    self.pause_after_failed_task().await;
                    return Ok(());
                }
            },
        };

        let info = Arc::new(info);
        let outcome = match self.train(&info, &global).await? {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(job = %info.job_id, round = info.round, error = %error_chain(e.as_ref()), "training failed; task abandoned");
                let (kind, why) = (
                    failure::trainer_failure_kind(&e),
                    failure::trainer_failure_reason(&e),
                );
                self.report_failure(bearer, &task, kind, &why).await;
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };

        // SCAFFOLD option II: `cᵢ⁺` from this round's local steps; `Δcᵢ` is reported after the
        // parameters and `cᵢ⁺` kept only once the coordinator has accepted the report.
        let scaffold = match scaffold {
            None => None,
            Some((c, mut ci)) => {
                if outcome.local_steps == 0 || outcome.params.len() != c.len() {
                    tracing::warn!(job = %info.job_id, round = info.round, steps = outcome.local_steps, "SCAFFOLD needs the trainer to report local_steps > 0 and a full parameter vector; task abandoned");
                    let why = "SCAFFOLD needs the trainer to report local_steps > 0 and a full parameter vector";
                    self.report_failure(bearer, &task, v1::FailureKind::TrainingFailed, why)
                        .await;
                    self.pause_after_failed_task().await;
                    return Ok(());
                }
                let lr = info.training.learning_rate as f32;
                let delta = scaffold_client_update(
                    &mut ci,
                    &c,
                    &global,
                    &outcome.params,
                    outcome.local_steps,
                    lr,
                );
                Some((ci, delta))
            }
        };
        let extra = scaffold.as_ref().map(|(_, delta)| delta.as_slice());
        let (header, params) = match build_header(&info, outcome, extra, self.client_id()) {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(job = %info.job_id, round = info.round, %reason, "trainer output unusable; task abandoned");
                let why = format!("unusable trainer output: {reason}");
                self.report_failure(bearer, &task, v1::FailureKind::TrainingFailed, &why)
                    .await;
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        match self
            .upload(bearer, header, Arc::new(params), deadline)
            .await?
        {
            Done::Ok(()) => {
                self.stats.tasks_done += 1;
                if let Some((ci, _)) = &scaffold
                    && let Err(e) = controls.save(&info.job_id, ci)
                {
                    // Not fatal: the next round starts from the previous cᵢ, which only slows SCAFFOLD.
                    tracing::warn!(error = %e, "could not keep the SCAFFOLD control variate");
                }
            }
            Done::Outdated => {
                // FedBuff: the global model moved on past this task (or the task was dropped).
                // Not a failure of this client: check in again at once for work on the current
                // model, with no pause.
                self.stats.uploads_outdated += 1;
            }
            Done::Abandoned => self.pause_after_failed_task().await,
        }
        Ok(())
    }

    /// Runs the user's trainer on a blocking thread. The outer error is fatal (the trainer
    /// panicked); the inner one is the trainer's own failure, which abandons only this task.
    async fn train(
        &mut self,
        info: &Arc<TaskInfo>,
        global: &Arc<Vec<f32>>,
    ) -> Result<Result<TrainOutcome, BoxError>, ClientError> {
        let Some(mut trainer) = self.trainer.take() else {
            return Err(ClientError::TrainerPanicked("trainer missing".into()));
        };
        let (info, global) = (Arc::clone(info), Arc::clone(global));
        let joined = tokio::task::spawn_blocking(move || {
            let r = trainer.train(&info, &global);
            (trainer, r)
        })
        .await;
        match joined {
            Ok((trainer, r)) => {
                self.trainer = Some(trainer);
                Ok(r)
            }
            Err(e) => Err(ClientError::TrainerPanicked(e.to_string())),
        }
    }

    /// Downloads and verifies the task's model, resuming broken streams.
    async fn download(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: &v1::Task,
        part: v1::ModelPart,
        receiver: ModelReceiver,
        deadline: Option<SystemTime>,
    ) -> Result<Done<Vec<f32>>, ClientError> {
        let pristine = receiver.clone();
        let mut receiver = receiver;
        let mut retries = Retries::new(deadline);
        loop {
            let offset = receiver.received();
            if offset > 0 {
                self.stats.download_resumes += 1;
                tracing::info!(
                    offset,
                    total = receiver.total_bytes(),
                    "resuming model download"
                );
            }
            let req = v1::DownloadRequest {
                job_id: task.job_id.clone(),
                model_version: task.model_version,
                offset,
                part: part as i32,
            };
            let mut rpc = self.rpc(bearer);
            let result = stream_model(&mut rpc, req, &mut receiver).await;
            let progressed = receiver.received() > offset;
            if progressed {
                self.succeeded();
                retries.transient = 0;
            }
            match result {
                Ok(()) if receiver.is_complete() => {
                    match std::mem::replace(&mut receiver, pristine.clone()).finish() {
                        Ok(params) => return Ok(Done::Ok(params)),
                        Err(e) => {
                            tracing::warn!(error = %e, "downloaded model failed verification; downloading again");
                            retries.stalls += 1;
                        }
                    }
                }
                Ok(()) => {
                    tracing::warn!(
                        received = receiver.received(),
                        total = receiver.total_bytes(),
                        "model stream ended early"
                    );
                    if !progressed {
                        retries.stalls += 1;
                        let s = Status::unavailable("model stream ended without data");
                        self.back_off("DownloadModel", &s).await;
                    }
                }
                Err(StreamError::Status(status)) => match self.classify(&status) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient => {
                        retries.transient += 1;
                        self.back_off("DownloadModel", &status).await;
                    }
                    Failure::Refused if job_ended(&status) => {
                        tracing::info!(error = %status_text(&status), "the task's job is no longer running; task dropped");
                        return Ok(Done::Outdated);
                    }
                    Failure::Refused => {
                        tracing::warn!(code = ?status.code(), error = %status_text(&status), "model download refused; task abandoned");
                        return Ok(Done::Abandoned);
                    }
                },
                Err(StreamError::Idle) => {
                    retries.transient += 1;
                    let s = Status::deadline_exceeded("model stream idle");
                    self.back_off("DownloadModel", &s).await;
                }
                Err(StreamError::Transfer(TransferError::UnexpectedOffset { expected, got })) => {
                    // Nothing was changed by the bad chunk: ask again from where we are.
                    tracing::warn!(expected, got, "model chunk out of place; resuming");
                    retries.stalls += 1;
                }
                Err(StreamError::Transfer(e)) => {
                    tracing::warn!(error = %e, "bad model chunk; downloading again from the start");
                    receiver = pristine.clone();
                    retries.stalls += 1;
                }
            }
            if retries.exhausted() {
                tracing::warn!(
                    stalls = retries.stalls,
                    transient = retries.transient,
                    "model download keeps failing; task abandoned"
                );
                return Ok(Done::Abandoned);
            }
        }
    }

    /// Uploads the update, resuming with `QueryUpload` after a broken stream.
    async fn upload(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        header: v1::UpdateHeader,
        params: Arc<Vec<f32>>,
        deadline: Option<SystemTime>,
    ) -> Result<Done<()>, ClientError> {
        let total = header.total_bytes;
        let chunk = self.client.config.upload_chunk_bytes;
        let upload_id = header.upload_id.clone();
        let mut offset = 0u64;
        let mut query_first = false;
        let mut retries = Retries::new(deadline);
        loop {
            if retries.exhausted() {
                tracing::warn!(
                    %upload_id,
                    stalls = retries.stalls,
                    transient = retries.transient,
                    "upload keeps failing; task abandoned"
                );
                return Ok(Done::Abandoned);
            }
            let mut rpc = self.rpc(bearer);
            if query_first {
                let mut req = Request::new(v1::QueryUploadRequest {
                    upload_id: upload_id.clone(),
                });
                req.set_timeout(UNARY_TIMEOUT);
                match rpc.query_upload(req).await {
                    Ok(resp) => {
                        self.succeeded();
                        retries.transient = 0;
                        let resp = resp.into_inner();
                        match self.settle(&resp) {
                            Some(done) => return Ok(done),
                            None => {
                                offset = if resp.resume_offset <= total {
                                    resp.resume_offset
                                } else {
                                    0
                                };
                            }
                        }
                    }
                    Err(status) if status.code() == Code::NotFound => {
                        self.succeeded();
                        offset = 0;
                    }
                    Err(status) => match self.classify(&status) {
                        Failure::Fatal(e) => return Err(e),
                        Failure::Transient => {
                            retries.transient += 1;
                            self.back_off("QueryUpload", &status).await;
                            continue;
                        }
                        Failure::Refused => {
                            tracing::warn!(code = ?status.code(), error = %status_text(&status), "upload query refused; task abandoned");
                            return Ok(Done::Abandoned);
                        }
                    },
                }
                query_first = false;
            }
            if offset > 0 {
                self.stats.upload_resumes += 1;
                tracing::info!(%upload_id, offset, total, "resuming upload");
            }
            let messages = upload_stream(header.clone(), Arc::clone(&params), chunk, offset);
            let call = rpc.upload_update(messages);
            let result = match tokio::time::timeout(upload_timeout(total, offset), call).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("upload timed out")),
            };
            match result {
                Ok(resp) => {
                    self.succeeded();
                    retries.transient = 0;
                    let resp = resp.into_inner();
                    if let Some(done) = self.settle(&resp) {
                        return Ok(done);
                    }
                    if resp.status == v1::UploadStatus::Incomplete as i32
                        && resp.resume_offset <= total
                    {
                        if resp.resume_offset <= offset {
                            retries.stalls += 1;
                        }
                        offset = resp.resume_offset;
                    } else {
                        tracing::warn!(status = resp.status, message = %resp.message, "unexpected upload answer; asking where the upload stands");
                        retries.stalls += 1;
                        query_first = true;
                    }
                }
                Err(status) => match (status.code(), self.classify(&status)) {
                    (_, Failure::Fatal(e)) => return Err(e),
                    (Code::Aborted, _) => {
                        tracing::info!(error = %status_text(&status), "upload out of step; asking where it stands");
                        retries.stalls += 1;
                        query_first = true;
                    }
                    (_, Failure::Transient) => {
                        retries.transient += 1;
                        self.back_off("UploadUpdate", &status).await;
                        query_first = true;
                    }
                    (Code::DataLoss, _) => {
                        tracing::warn!(error = %status_text(&status), "coordinator saw a corrupted upload; restarting it");
                        retries.stalls += 1;
                        offset = 0;
                    }
                    (_, Failure::Refused) if job_ended(&status) => {
                        tracing::info!(error = %status_text(&status), "the task's job is no longer running; update dropped");
                        return Ok(Done::Outdated);
                    }
                    (_, Failure::Refused) => {
                        tracing::warn!(code = ?status.code(), error = %status_text(&status), "upload refused; task abandoned");
                        return Ok(Done::Abandoned);
                    }
                },
            }
        }
    }

    /// Final outcomes of an upload (`ACCEPTED`, `DUPLICATE`, `REJECTED`); `None` to keep going.
    fn settle(&mut self, resp: &v1::UploadResponse) -> Option<Done<()>> {
        match v1::UploadStatus::try_from(resp.status) {
            Ok(v1::UploadStatus::Accepted) => {
                self.stats.uploads_accepted += 1;
                tracing::info!(detail = %resp.message, "update accepted");
                Some(Done::Ok(()))
            }
            Ok(v1::UploadStatus::Duplicate) => {
                self.stats.uploads_duplicate += 1;
                tracing::info!(message = %resp.message, "update had already been accepted");
                Some(Done::Ok(()))
            }
            Ok(v1::UploadStatus::Rejected) if resp.reason == "job_ended" => {
                self.stats.uploads_rejected += 1;
                tracing::info!(message = %resp.message, "the task's job ended before the update was used; checking in for other work");
                Some(Done::Outdated)
            }
            Ok(v1::UploadStatus::Rejected)
                if matches!(resp.reason.as_str(), "too_stale" | "no_task") =>
            {
                self.stats.uploads_rejected += 1;
                tracing::info!(
                    reason = %resp.reason,
                    message = %resp.message,
                    "update no longer wanted (the global model moved on); checking in for fresh work"
                );
                Some(Done::Outdated)
            }
            Ok(v1::UploadStatus::Rejected) => {
                self.stats.uploads_rejected += 1;
                tracing::warn!(reason = %resp.reason, message = %resp.message, "update rejected by the coordinator");
                Some(Done::Abandoned)
            }
            _ => None,
        }
    }
}

/// Why streaming a model stopped.
enum StreamError {
    Status(Status),
    Transfer(TransferError),
    Idle,
}

/// Opens a download at `req.offset` and pushes chunks into `receiver` until the stream ends.
async fn stream_model(
    rpc: &mut Rpc,
    req: v1::DownloadRequest,
    receiver: &mut ModelReceiver,
) -> Result<(), StreamError> {
    let mut stream = match tokio::time::timeout(UNARY_TIMEOUT, rpc.download_model(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return Err(StreamError::Status(s)),
        Err(_) => return Err(StreamError::Idle),
    };
    loop {
        match tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()).await {
            Err(_) => return Err(StreamError::Idle),
            Ok(Err(s)) => return Err(StreamError::Status(s)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(chunk))) => {
                receiver.push(&chunk).map_err(StreamError::Transfer)?;
            }
        }
    }
}

/// The `UploadUpdate` messages from `offset`, produced lazily from the shared parameters.
fn upload_stream(
    header: v1::UpdateHeader,
    params: Arc<Vec<f32>>,
    chunk_bytes: usize,
    offset: u64,
) -> impl tokio_stream::Stream<Item = v1::UploadMessage> + Send + 'static {
    let mut header = Some(header);
    let mut next = offset;
    tokio_stream::iter(std::iter::from_fn(move || {
        if let Some(h) = header.take() {
            return Some(v1::UploadMessage {
                kind: Some(v1::upload_message::Kind::Header(h)),
            });
        }
        let (offset, data) = flotilla_proto::chunk_f32_from(&params, chunk_bytes, next).next()?;
        next = offset + data.len() as u64;
        Some(v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Chunk(v1::UpdateChunk {
                offset,
                data,
            })),
        })
    }))
}

/// Generous bound on one upload stream: 2 minutes plus 1 s per MiB still to send.
fn upload_timeout(total: u64, offset: u64) -> Duration {
    STREAM_IDLE_TIMEOUT + Duration::from_secs(total.saturating_sub(offset) >> 20)
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

/// Checks a task and prepares the model receiver. Errors are reasons to skip the task.
fn check_task(task: &v1::Task) -> Result<(TaskInfo, ModelReceiver, Option<ModelReceiver>), String> {
    match v1::Stage::try_from(task.stage) {
        Ok(
            v1::Stage::Train
            | v1::Stage::AdvertiseKeys
            | v1::Stage::ShareKeys
            | v1::Stage::MaskedInput
            | v1::Stage::Unmasking,
        ) => {}
        Ok(other) => return Err(format!("stage {} is not supported", other.as_str_name())),
        Err(_) => return Err(format!("unknown stage {}", task.stage)),
    }
    if task.job_id.is_empty() || task.job_id.len() > flotilla_proto::MAX_ID_LEN {
        return Err("job_id is empty or too long".into());
    }
    let model = task.model.as_ref().ok_or("the task has no model")?;
    let receiver = ModelReceiver::new(model, MAX_MODEL_BYTES).map_err(|e| e.to_string())?;
    let fingerprint: [u8; 32] = model
        .layout_fingerprint
        .as_slice()
        .try_into()
        .map_err(|_| {
            format!(
                "layout_fingerprint has {} bytes, not 32",
                model.layout_fingerprint.len()
            )
        })?;
    if fingerprint != receiver.layout().fingerprint() {
        return Err("layout_fingerprint does not match the announced layout".into());
    }
    let control = match &task.server_control {
        None => None,
        Some(c) => {
            let r = ModelReceiver::new(c, MAX_MODEL_BYTES)
                .map_err(|e| format!("server_control: {e}"))?;
            if r.layout() != receiver.layout() {
                return Err("server_control has another layout than the model".into());
            }
            Some(r)
        }
    };
    let t = task
        .training
        .as_ref()
        .ok_or("the task has no training configuration")?;
    if !(t.proximal_mu.is_finite() && t.proximal_mu >= 0.0) {
        return Err(format!(
            "proximal_mu must be finite and ≥ 0, got {}",
            t.proximal_mu
        ));
    }
    if !(t.max_grad_norm.is_finite() && t.max_grad_norm >= 0.0) {
        return Err(format!(
            "max_grad_norm must be finite and ≥ 0 (0 = none), got {}",
            t.max_grad_norm
        ));
    }
    let info = TaskInfo {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage_index: task.stage_index,
        model_version: task.model_version,
        layout: receiver.layout().clone(),
        layout_fingerprint: fingerprint,
        model: model.spec.as_ref().map(|s| ModelDescription {
            kind: s.kind.clone(),
            input_shape: s.input_shape.clone(),
            num_classes: s.num_classes,
            hidden: s.hidden,
            embed: s.embed,
        }),
        training: TrainingConfig {
            epochs: t.epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            seed: t.seed,
            proximal_mu: t.proximal_mu,
            max_grad_norm: t.max_grad_norm,
        },
        gradient_correction: None,
        // Relative first: the coordinator's clock and ours need not agree.
        deadline: if task.time_remaining_ms > 0 {
            SystemTime::now().checked_add(Duration::from_millis(task.time_remaining_ms))
        } else {
            (task.deadline_unix_ms > 0)
                .then(|| UNIX_EPOCH.checked_add(Duration::from_millis(task.deadline_unix_ms)))
                .flatten()
        },
    };
    Ok((info, receiver, control))
}

/// Deterministic upload id of a task: hex SHA-256 of (job, round, attempt, stage, stage index,
/// client id), so that re-uploading the same task's update is idempotent and resumable.
pub fn upload_id(
    job_id: &str,
    round: u64,
    attempt: u32,
    stage_index: u32,
    client_id: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"flotilla-upload-v1\0");
    h.update((job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(round.to_le_bytes());
    h.update(attempt.to_le_bytes());
    h.update((v1::Stage::Train as i32).to_le_bytes());
    h.update(stage_index.to_le_bytes());
    h.update((client_id.len() as u64).to_le_bytes());
    h.update(client_id.as_bytes());
    flotilla_proto::hex(&h.finalize())
}

/// Checks the trainer's output and builds the upload header. Non-finite or badly named metrics are
/// dropped (with a warning); at most [`flotilla_proto::MAX_METRICS`] are kept.
fn build_header(
    info: &TaskInfo,
    outcome: TrainOutcome,
    extra: Option<&[f32]>,
    client_id: &str,
) -> Result<(v1::UpdateHeader, Vec<f32>), String> {
    let TrainOutcome {
        mut params,
        num_samples,
        metrics,
        local_steps: _,
    } = outcome;
    if params.len() != info.layout.len() {
        return Err(format!(
            "trainer returned {} parameters but the layout has {}",
            params.len(),
            info.layout.len()
        ));
    }
    if let Some(i) = params.iter().position(|v| !v.is_finite()) {
        return Err(format!("parameter {i} is not finite"));
    }
    if num_samples == 0 {
        return Err("trainer reported 0 samples".into());
    }
    // SCAFFOLD's Δcᵢ follows the parameters.
    if let Some(extra) = extra {
        if extra.len() != params.len() || extra.iter().any(|v| !v.is_finite()) {
            return Err(
                "SCAFFOLD control-variate update is not a finite vector of the model's size".into(),
            );
        }
        params.extend_from_slice(extra);
    }
    let mut kept = HashMap::new();
    for (name, value) in metrics {
        let ok_name = !name.is_empty() && name.len() <= flotilla_proto::MAX_NAME_LEN;
        if !ok_name || !value.is_finite() || kept.len() >= flotilla_proto::MAX_METRICS {
            tracing::warn!(metric = %name.chars().take(64).collect::<String>(), value, "metric dropped (bad name, non-finite value or too many metrics)");
            continue;
        }
        kept.insert(name, value);
    }
    let header = v1::UpdateHeader {
        job_id: info.job_id.clone(),
        round: info.round,
        attempt: info.attempt,
        stage: v1::Stage::Train as i32,
        num_samples,
        metrics: kept,
        total_bytes: 4 * params.len() as u64,
        layout_fingerprint: info.layout_fingerprint.to_vec(),
        sha256: flotilla_proto::payload_sha256(&params).to_vec(),
        upload_id: upload_id(
            &info.job_id,
            info.round,
            info.attempt,
            info.stage_index,
            client_id,
        ),
        base_model_version: info.model_version,
        stage_index: info.stage_index,
        ..Default::default()
    };
    flotilla_proto::validate_header(
        &header,
        &ExpectedLayout {
            len: params.len() as u64,
            fingerprint: info.layout_fingerprint,
        },
        &UploadLimits::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok((header, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_id_is_deterministic_and_valid() {
        let a = upload_id("job/with spaces", 3, 1, 0, "client-7");
        assert_eq!(a, upload_id("job/with spaces", 3, 1, 0, "client-7"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        for other in [
            upload_id("job/with spaces", 4, 1, 0, "client-7"),
            upload_id("job/with spaces", 3, 2, 0, "client-7"),
            upload_id("job/with spaces", 3, 1, 1, "client-7"),
            upload_id("job/with spaces", 3, 1, 0, "client-8"),
            upload_id("job/with space", 3, 1, 0, "sclient-7"),
        ] {
            assert_ne!(a, other);
        }
    }

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
    fn task_deadline_is_relative_to_receipt() {
        let layout =
            flotilla_core::ParamLayout::new(vec![flotilla_core::TensorSpec::new("w", [3])]);
        let mut task = v1::Task {
            job_id: "j".into(),
            round: 1,
            attempt: 1,
            stage: v1::Stage::Train as i32,
            model_version: 0,
            model: Some(flotilla_proto::model_info(&layout, &[0.0; 3])),
            training: Some(v1::TrainingConfig {
                epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                seed: 0,
                ..Default::default()
            }),
            // A coordinator whose clock is wildly behind ours: its absolute deadline is long past.
            deadline_unix_ms: 1_000,
            stage_index: 0,
            time_remaining_ms: 3_600_000,
            ..Default::default()
        };
        let before = SystemTime::now();
        let deadline = check_task(&task).unwrap().0.deadline.unwrap();
        assert!(
            deadline >= before + Duration::from_secs(3600),
            "{deadline:?}"
        );
        // Without the relative field (an older coordinator), the absolute deadline is used.
        task.time_remaining_ms = 0;
        let deadline = check_task(&task).unwrap().0.deadline.unwrap();
        assert_eq!(deadline, UNIX_EPOCH + Duration::from_millis(1_000));
        task.deadline_unix_ms = 0;
        assert_eq!(check_task(&task).unwrap().0.deadline, None);
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

    #[test]
    fn header_checks_trainer_output() {
        let layout =
            flotilla_core::ParamLayout::new(vec![flotilla_core::TensorSpec::new("w", [3])]);
        let info = TaskInfo {
            job_id: "j".into(),
            round: 1,
            attempt: 0,
            stage_index: 0,
            model_version: 5,
            layout_fingerprint: layout.fingerprint(),
            layout,
            model: None,
            training: TrainingConfig {
                epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                seed: 0,
                proximal_mu: 0.0,
                max_grad_norm: 0.0,
            },
            gradient_correction: None,
            deadline: None,
        };
        let out = |params: Vec<f32>, n| TrainOutcome {
            params,
            num_samples: n,
            metrics: [("train_loss".into(), 0.5), ("bad".into(), f64::NAN)].into(),
            local_steps: 4,
        };
        let (h, p) = build_header(&info, out(vec![1.0, 2.0, 3.0], 7), None, "c").unwrap();
        assert_eq!(p, vec![1.0, 2.0, 3.0]);
        assert_eq!(h.total_bytes, 12);
        assert_eq!(h.base_model_version, 5);
        assert_eq!(h.metrics.len(), 1);
        assert!(build_header(&info, out(vec![1.0, 2.0], 7), None, "c").is_err());
        assert!(build_header(&info, out(vec![1.0, f32::NAN, 3.0], 7), None, "c").is_err());
        assert!(build_header(&info, out(vec![1.0, 2.0, 3.0], 0), None, "c").is_err());
        // SCAFFOLD: Δcᵢ follows the parameters and must match them in size and be finite.
        let (h, p) = build_header(
            &info,
            out(vec![1.0, 2.0, 3.0], 7),
            Some(&[0.5, 0.0, -0.5]),
            "c",
        )
        .unwrap();
        assert_eq!(p, vec![1.0, 2.0, 3.0, 0.5, 0.0, -0.5]);
        assert_eq!(h.total_bytes, 24);
        assert!(build_header(&info, out(vec![1.0, 2.0, 3.0], 7), Some(&[0.5]), "c").is_err());
        assert!(
            build_header(
                &info,
                out(vec![1.0, 2.0, 3.0], 7),
                Some(&[0.5, f32::INFINITY, 0.0]),
                "c"
            )
            .is_err()
        );
    }
}
