#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Flotilla's networked coordinator: the gRPC `flotilla.v1.Coordinator` service that drives one
//! sans-IO [`flotilla_core::round::RoundMachine`] per job with real clients, the admin HTTP/JSON API,
//! persistence through `flotilla-store` and recovery after a crash.
//!
//! The coordinator links no training framework: the models of jobs come from the
//! [`ModelProvider`] the embedding program puts in [`ServerConfig::models`] (see [`models`]);
//! `flotilla server` provides the built-in burn models.
//!
//! ```no_run
//! # async fn demo(provider: std::sync::Arc<dyn flotilla_coordinator::ModelProvider>)
//! #     -> Result<(), flotilla_coordinator::CoordinatorError> {
//! use flotilla_coordinator::{Server, ServerConfig, TlsMode};
//! let config = ServerConfig {
//!     tls: TlsMode::Files { cert: "certs/server.pem".into(), key: "certs/server-key.pem".into() },
//!     models: Some(provider),
//!     ..ServerConfig::new("data", "secret-admin-token")
//! };
//! let server = Server::bind(config).await?;
//! println!("gRPC on {}, admin on {}", server.grpc_addr(), server.admin_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! See `README.md` next to this crate's `Cargo.toml` for the admin API, the job TOML, the status
//! code mapping and the memory bound of uploads.
//!
//! Module layers, bottom-up (a module uses only modules of its own or lower layers, by path or by
//! calling an `impl Shared` method, and there is no cycle; `tests/it/module_layers.rs` checks it):
//! 1. `clock`, `retry`, `error`, `metrics`, `spec` (types), `reasons`, `partial_uploads`,
//!    `round_trace`, `rpc_trace` (tracing spans): no other module;
//! 2. `api` (the admin API's JSON types), `audit_flush` (failed logins and checkpoints),
//!    `limits`, `admission`, `models`, `initial_model` (a model given as a safetensors file),
//!    `privacy`, `auth_cache`, `authz` (roles and actions), `principal_auth` (bearer tokens →
//!    actors), `evaluation`, `fed_eval` (federated evaluation campaigns), `job_toml` (the spec parser), `tls`, `policy` (the Cedar policy in
//!    force), `resolve_cache` (what `ResolveModel` reads);
//! 3. `state`: the shared types (`Shared`, `JobRuntime`, `JobInner`, …), no logic;
//! 4. the logic on that state, each calling only those before it: `bounds`, `live`, `registry`
//!    (registering, promoting and rolling back model versions), `job_end`,
//!    `fed_eval_run` (running federated evaluation campaigns),
//!    `jobs` (driving and committing), `secagg_round`, `runtime`, `submit`, `recovery`, `heal`,
//!    `approval` (starting an approved job), `retention` (retention runs and erasure), `evidence`
//!    (evidence packs), `model_watch` (canary comparison and regression detection);
//! 5. the APIs: `service` (gRPC), `probes` (health), `console` (the web console's page and
//!    sessions), `prom` (`GET /metrics`) and `admin` (with `admin_model.rs`,
//!    `admin_governance.rs`, `admin_registry.rs` and `admin_evaluations.rs`), which mounts the console and the probes;
//!    then this root.

mod admin;
mod admission;
pub mod api;
mod approval;
mod audit_flush;
mod auth_cache;
mod authz;
mod bounds;
mod clock;
mod console;
#[cfg(test)]
mod console_tests;
mod error;
mod evaluation;
mod evidence;
mod fed_eval;
mod fed_eval_run;
mod heal;
mod initial_model;
mod job_end;
mod job_toml;
mod jobs;
mod limits;
mod live;
mod metrics;
mod model_watch;
pub mod models;
mod partial_uploads;
mod policy;
mod principal_auth;
mod privacy;
mod probes;
mod prom;
mod reasons;
mod recovery;
mod registry;
mod resolve_cache;
mod retention;
mod retry;
mod round_trace;
mod rpc_trace;
mod runtime;
pub mod secagg_round;
mod service;
pub mod spec;
mod state;
mod submit;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::coordinator_server::CoordinatorServer;
use flotilla_store::{Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

pub use admin::MAX_JOB_SUBMISSION_BYTES;
pub use error::CoordinatorError;
/// The audit checkpoint key (`--audit-signing-key`), for `flotilla audit keygen` to check its output.
pub use flotilla_store::AuditSigner;
pub use limits::Limits;
pub use metrics::MetricsSnapshot;
pub use models::{Evaluate, JobModel, ModelProvider};
pub use policy::PolicyFile;
pub use privacy::TenantPrivacy;
pub use retention::RetentionConfig;
pub use spec::{JobSpec, SpecError};

/// HTTP/2 streams (concurrent calls) one client connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// HTTP/2 receive window of one stream, bytes: how much of an upload the coordinator buffers before
/// it reads it. The connection window is this × [`MAX_STREAMS_PER_CONNECTION`], so uploads that wait
/// for an upload slot (and are not read meanwhile) can never use up the window of those being read
/// on the same connection; HTTP/2 buffering stays ≤ 64 KiB per open stream.
pub const STREAM_WINDOW_BYTES: u32 = 64 << 10;

/// How the gRPC and admin listeners are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS with this PEM certificate chain and private key (both listeners).
    Files {
        /// Certificate chain, PEM.
        cert: PathBuf,
        /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Plain text on both listeners. Only for local experiments; logged as a warning.
    Insecure,
}

/// Configuration of [`Server::bind`] / [`serve`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory for the default SQLite database (`flotilla.db`) and model blobs (`models/`).
    pub data_dir: PathBuf,
    /// gRPC listen address (port 0 picks a free port; see [`Server::grpc_addr`]).
    pub listen: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`; default SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Model blob store (directory, `file:///…`, `s3://…`); default `data_dir/models`.
    pub blob_url: Option<String>,
    /// TLS or plain text.
    pub tls: TlsMode,
    /// The bearer token the admin API requires (`FLOTILLA_ADMIN_TOKEN`). Must not be empty.
    pub admin_token: String,
    /// Resource limits.
    pub limits: Limits,
    /// How long a credential issued by `Enroll` is valid (default [`DEFAULT_CREDENTIAL_TTL`], 30
    /// days). Once it has expired every call with it fails with `UNAUTHENTICATED` ("credential
    /// expired; enroll again") and the client must enroll again with an enrollment token.
    pub credential_ttl: Duration,
    /// A differential-privacy budget every tenant's DP jobs share (`--tenant-epsilon-budget`,
    /// `--tenant-delta`); none: only each job's own `[privacy] max_epsilon` applies.
    pub tenant_privacy: Option<TenantPrivacy>,
    /// Where the models of jobs come from: their layout, initial parameters and server-side
    /// evaluator. None (the default): every job submission is refused with a one-line reason,
    /// and only jobs whose model is already stored can be resumed or served.
    pub models: Option<Arc<dyn ModelProvider>>,
    /// Serve `GET /metrics` on the admin listener without the admin token (`--metrics-public`;
    /// default: the token is required, as for every admin route).
    pub metrics_public: bool,
    /// An extra plain-HTTP listener that serves only `GET /metrics`, without a token
    /// (`--metrics-listen`), e.g. for a scrape network or a sidecar.
    pub metrics_listen: Option<SocketAddr>,
    /// Record the timing histograms and per-job gauges of `/metrics` (default on). Off, only the
    /// counters `GET /v1/metrics` reports are kept: for measuring the overhead (`flotilla bench
    /// coordinator --telemetry off`).
    pub telemetry: bool,
    /// The Ed25519 key (PKCS#8 PEM file) that signs the audit log's checkpoints
    /// (`--audit-signing-key`); none: no checkpoints are written.
    pub audit_signing_key: Option<PathBuf>,
    /// How often failed admin logins are flushed to the audit log and the head is checkpointed
    /// (default 60 s).
    pub audit_interval: Duration,
    /// A Cedar policy file to apply at start (`--policy FILE`); none: the stored policy in force,
    /// if any. [`Server::bind`] fails if either is malformed.
    pub policy: Option<PolicyFile>,
    /// What is deleted when (`--retain-…`) and how often retention runs by itself; the default
    /// keeps everything.
    pub retention: RetentionConfig,
    /// How often registered models in production are evaluated by their tenants' clients
    /// (`--model-eval-interval`, default [`DEFAULT_MODEL_EVAL_INTERVAL`]; zero: never): a canary
    /// that regressed against production rolls back by itself, and a production version that
    /// regressed against its baseline is exported as `flotilla_model_regression`.
    pub model_eval_interval: Duration,
    /// Clients each of those evaluations asks for (`--model-eval-clients`, default 20).
    pub model_eval_clients: u32,
}

/// Default [`ServerConfig::model_eval_interval`]: 10 minutes.
pub const DEFAULT_MODEL_EVAL_INTERVAL: Duration = Duration::from_secs(600);
/// Default [`ServerConfig::model_eval_clients`].
pub const DEFAULT_MODEL_EVAL_CLIENTS: u32 = 20;

/// Default [`ServerConfig::credential_ttl`]: 30 days.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Longest [`ServerConfig::credential_ttl`] accepted: 10 years.
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

impl ServerConfig {
    /// A configuration with the defaults: both listeners on `127.0.0.1:0`, SQLite and blobs in
    /// `data_dir`, **insecure** (set `tls` for production), default limits.
    pub fn new(data_dir: impl Into<PathBuf>, admin_token: impl Into<String>) -> Self {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: data_dir.into(),
            listen: local,
            admin_listen: local,
            database_url: None,
            blob_url: None,
            tls: TlsMode::Insecure,
            admin_token: admin_token.into(),
            limits: Limits::default(),
            credential_ttl: DEFAULT_CREDENTIAL_TTL,
            tenant_privacy: None,
            models: None,
            metrics_public: false,
            metrics_listen: None,
            telemetry: true,
            audit_signing_key: None,
            audit_interval: audit_flush::DEFAULT_AUDIT_INTERVAL,
            policy: None,
            retention: RetentionConfig::default(),
            model_eval_interval: DEFAULT_MODEL_EVAL_INTERVAL,
            model_eval_clients: DEFAULT_MODEL_EVAL_CLIENTS,
        }
    }
}

/// A coordinator whose sockets are bound and whose jobs are recovered, ready to [`Server::run`].
pub struct Server {
    shared: Arc<state::Shared>,
    timer_rx: mpsc::UnboundedReceiver<state::TimerEntry>,
    grpc: TcpListener,
    admin: TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>,
    admin_token: String,
    metrics_public: bool,
    /// The `--metrics-listen` listener and its address.
    metrics: Option<(TcpListener, SocketAddr)>,
    /// How often retention runs by itself (`None`: never, or no rule is set).
    retention_every: Option<Duration>,
    /// The model watch (`None`: off).
    model_watch: Option<model_watch::WatchConfig>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// Aborts background tasks when the server stops (or its future is dropped).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

impl Server {
    /// Opens the store (running migrations), resumes every running job from its last commit,
    /// loads TLS material and binds both listeners.
    pub async fn bind(config: ServerConfig) -> Result<Server, CoordinatorError> {
        if config.admin_token.trim().is_empty() {
            return Err(CoordinatorError::Config(
                "the admin token must not be empty".into(),
            ));
        }
        config.limits.validate()?;
        if config.credential_ttl.is_zero() || config.credential_ttl > MAX_CREDENTIAL_TTL {
            return Err(CoordinatorError::Config(format!(
                "credential_ttl must be in 1 ms..={} days, got {:?}",
                MAX_CREDENTIAL_TTL.as_secs() / 86_400,
                config.credential_ttl
            )));
        }
        if !(1..=fed_eval::MAX_EVAL_CLIENTS).contains(&config.model_eval_clients) {
            return Err(CoordinatorError::Config(format!(
                "model_eval_clients must be in 1..={}, got {}",
                fed_eval::MAX_EVAL_CLIENTS,
                config.model_eval_clients
            )));
        }
        config
            .retention
            .rules
            .validate()
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let tls = match &config.tls {
            TlsMode::Files { cert, key } => Some((
                tls::server_config(cert, key, &[b"h2"])?,
                tls::server_config(cert, key, &[b"http/1.1"])?,
            )),
            TlsMode::Insecure => {
                tracing::warn!(
                    "running WITHOUT TLS (insecure mode): credentials and models travel in plain text"
                );
                None
            }
        };
        let mut store_cfg = StoreConfig::in_dir(&config.data_dir);
        if let Some(url) = &config.database_url {
            store_cfg.database_url = url.clone();
        }
        if let Some(url) = &config.blob_url {
            store_cfg.blob_url = url.clone();
        }
        let privacy = privacy::PrivacyBook::new(config.tenant_privacy)
            .map_err(|e| CoordinatorError::Config(format!("tenant privacy budget: {e}")))?;
        let audit = audit_flush::AuditHandle::new(
            config.audit_signing_key.as_deref(),
            config.audit_interval,
        )
        .map_err(CoordinatorError::Config)?;
        let store = Store::open(&store_cfg).await?;
        let in_force = policy::load(&store, config.policy.as_ref(), "server --policy").await?;
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(state::Shared {
            store,
            metrics: Arc::new(metrics::Metrics::new(config.telemetry)),
            jobs: Default::default(),
            timers: timer_tx,
            admission: Arc::new(admission::Admission::new(&config.limits)),
            partial_uploads: Default::default(),
            limits: config.limits.clone(),
            models: config.models.clone(),
            last_touch: Default::default(),
            rotate: Default::default(),
            credentials: Default::default(),
            principals: Default::default(),
            credential_ttl: config.credential_ttl,
            privacy,
            recently_ended: Default::default(),
            audit,
            policy: Default::default(),
            retention: config.retention.rules,
            tls_offer: tls.as_ref().map(|(_, admin)| tls::offer(admin)),
            fed_evals: Default::default(),
            resolve_cache: Default::default(),
        });
        shared.policy.replace(in_force);
        // Before any job resumes (nothing writes blobs yet): models of commits that failed or
        // never happened (a crash between storing the model and committing the round).
        match shared.store.sweep_orphan_blobs(None).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "removed model blobs no committed round references"
            ),
            Err(e) => tracing::warn!(error = %e, "could not sweep orphan model blobs"),
        }
        // Privacy spend is rebuilt from the committed rounds before any job resumes.
        shared.privacy.rebuild(&shared.store).await?;
        let n = shared.recover_jobs().await?;
        if n > 0 {
            tracing::info!(jobs = n, "resumed running jobs");
        }
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| CoordinatorError::Net {
                    what,
                    addr: addr.to_string(),
                    source,
                })
        };
        let grpc = bind(config.listen, "binding the gRPC listener").await?;
        let admin = bind(config.admin_listen, "binding the admin listener").await?;
        let addr_of = |l: &TcpListener, what: &'static str, a: SocketAddr| {
            l.local_addr().map_err(|source| CoordinatorError::Net {
                what,
                addr: a.to_string(),
                source,
            })
        };
        let grpc_addr = addr_of(&grpc, "gRPC listener address", config.listen)?;
        let admin_addr = addr_of(&admin, "admin listener address", config.admin_listen)?;
        let metrics = match config.metrics_listen {
            Some(a) => {
                let l = bind(a, "binding the metrics listener").await?;
                let addr = addr_of(&l, "metrics listener address", a)?;
                Some((l, addr))
            }
            None => None,
        };
        if let TlsMode::Files { cert, .. } = &config.tls
            && let Some(t) = tls::cert_not_after(cert)
        {
            shared
                .metrics
                .tenants
                .cert_expiry
                .get_or_create(&[])
                .set(t as f64);
        }
        Ok(Server {
            shared,
            timer_rx,
            grpc,
            admin,
            grpc_addr,
            admin_addr,
            tls,
            admin_token: config.admin_token,
            metrics_public: config.metrics_public,
            metrics,
            retention_every: config
                .retention
                .interval
                .filter(|_| !config.retention.rules.keeps_everything()),
            model_watch: (!config.model_eval_interval.is_zero()).then_some(
                model_watch::WatchConfig {
                    every: config.model_eval_interval,
                    clients: config.model_eval_clients,
                },
            ),
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound `--metrics-listen` address, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// and closes the store. Nothing is lost by stopping mid-round: the next start resumes
    /// every job from its last committed round.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CoordinatorError> {
        let Server {
            shared,
            timer_rx,
            grpc,
            admin,
            grpc_addr,
            admin_addr,
            tls,
            admin_token,
            metrics_public,
            metrics,
            retention_every,
            model_watch,
        } = self;
        let mut tasks = AbortOnDrop(Vec::new());
        tasks
            .0
            .push(tokio::spawn(jobs::timer_loop(shared.clone(), timer_rx)));
        tasks.0.push(tokio::spawn(heal::heal_loop(shared.clone())));
        if let Some(every) = retention_every {
            tasks
                .0
                .push(tokio::spawn(retention::schedule(shared.clone(), every)));
        }
        if let Some(cfg) = model_watch {
            tasks
                .0
                .push(tokio::spawn(model_watch::schedule(shared.clone(), cfg)));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let tenants = &shared.metrics.tenants;
        let audit_timer = shared.audit.timer(
            shared.store.clone(),
            tenants.audit_head_seq.clone(),
            tenants.audit_checkpoint_seq.clone(),
        );
        let audit_task = tokio::spawn(audit_timer.run(stop_rx.clone()));
        tasks.0.push(tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        }));
        let service = rpc_trace::RpcTrace(service::CountUploadBytes(
            CoordinatorServer::new(service::CoordinatorService {
                shared: shared.clone(),
            })
            .max_decoding_message_size(flotilla_proto::MAX_CHUNK_BYTES + (64 << 10)),
            shared.metrics.clone(),
        ));
        let scrape = prom::Scrape::new(shared.clone());
        let router = if metrics_public {
            prom::router(scrape.clone()).merge(admin::router(shared.clone(), &admin_token, None))
        } else {
            admin::router(
                shared.clone(),
                &admin_token,
                Some(prom::router(scrape.clone())),
            )
        };
        if let Some((listener, addr)) = metrics {
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz (plain HTTP, no token)");
            let mut stop = stop_rx.clone();
            let app = prom::router(scrape).merge(probes::router(shared.clone()));
            tasks.0.push(tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            }));
        }
        let grpc_builder = || {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .timeout(Duration::from_secs(600))
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .initial_stream_window_size(STREAM_WINDOW_BYTES)
                .initial_connection_window_size(MAX_STREAMS_PER_CONNECTION * STREAM_WINDOW_BYTES)
                .add_service(service.clone())
        };
        tracing::info!(%grpc_addr, %admin_addr, tls = tls.is_some(), "coordinator listening");
        // One serve path for both listener kinds: only the accept loops differ (TLS handshakes
        // or plain TCP); what is served on the accepted streams is the same code.
        let (grpc_res, admin_res) = match tls {
            Some((grpc_tls, admin_tls)) => {
                let (grx, gh) = tls::spawn_tls_accept(grpc, grpc_tls, shared.metrics.clone());
                let (arx, ah) = tls::spawn_tls_accept(admin, admin_tls, shared.metrics.clone());
                tasks.0.extend([gh, ah]);
                serve_accepted(grpc_builder(), router, grx, arx, admin_addr, stop_rx).await
            }
            None => {
                let (grx, gh) = tls::spawn_plain_accept(grpc);
                let (arx, ah) = tls::spawn_plain_accept(admin);
                tasks.0.extend([gh, ah]);
                serve_accepted(grpc_builder(), router, grx, arx, admin_addr, stop_rx).await
            }
        };
        // The last failed logins and a checkpoint of the final head, before the store closes.
        if tokio::time::timeout(Duration::from_secs(10), audit_task)
            .await
            .is_err()
        {
            tracing::warn!("the audit log's last checkpoint did not finish within 10 s");
        }
        drop(tasks);
        shared.store.close().await;
        tracing::info!("coordinator stopped");
        grpc_res.map_err(|e| CoordinatorError::Grpc(e.to_string()))?;
        admin_res.map_err(|source| CoordinatorError::Net {
            what: "serving the admin API",
            addr: admin_addr.to_string(),
            source,
        })?;
        Ok(())
    }

    /// Counters (the same as `GET /v1/metrics`).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }
}

/// Serves gRPC and the admin API on connections the accept loops hand over (TLS or plain
/// streams alike) until `stop` turns true.
async fn serve_accepted<IO>(
    grpc: tonic::transport::server::Router,
    admin: axum::Router,
    grpc_rx: tokio::sync::mpsc::Receiver<(IO, SocketAddr)>,
    admin_rx: tokio::sync::mpsc::Receiver<(IO, SocketAddr)>,
    admin_addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> (Result<(), tonic::transport::Error>, std::io::Result<()>)
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let incoming = ReceiverStream::new(grpc_rx).map(|(io, _)| Ok::<_, std::io::Error>(io));
    let listener = tls::ChannelListener {
        rx: admin_rx,
        addr: admin_addr,
    };
    tokio::join!(
        grpc.serve_with_incoming_shutdown(incoming, stopped(stop.clone())),
        axum::serve(listener, admin)
            .with_graceful_shutdown(stopped(stop))
            .into_future()
    )
}

/// [`Server::bind`] then [`Server::run`].
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    Server::bind(config).await?.run(shutdown).await
}
