//! `flotilla server` and `flotilla dev-certs`: the coordinator process.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use flotilla_coordinator::{ServerConfig, TlsMode};

use crate::net_cmd::{runtime, shutdown_signal};
use crate::ready::Ready;

/// Arguments of `flotilla server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Directory for the embedded database, model blobs and evaluation data
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// gRPC address for clients
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// HTTP/JSON admin API address
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    admin_listen: SocketAddr,
    /// postgres://… to keep state in PostgreSQL instead of SQLite inside --data-dir
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Model blob store: a directory, file:///…, or s3://bucket/prefix [default: DIR/models]
    #[arg(long, value_name = "URL")]
    blob_url: Option<String>,
    /// TLS certificate chain (PEM)
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "insecure"
    )]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        conflicts_with = "insecure"
    )]
    tls_key: Option<PathBuf>,
    /// Serve plain text (development only; logged as a warning)
    #[arg(long)]
    insecure: bool,
    /// How long a client credential issued at enrollment stays valid (e.g. 30d, 12h); an expired
    /// client must enroll again with an enrollment token
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration)]
    credential_ttl: std::time::Duration,
    /// Differential privacy: the ε budget each tenant's DP jobs share (composed over all of them);
    /// a round that would exceed it is refused before it starts. Needs --tenant-delta
    #[arg(long, value_name = "EPS", requires = "tenant_delta")]
    tenant_epsilon_budget: Option<f64>,
    /// The δ at which --tenant-epsilon-budget is measured, in (0, 1)
    #[arg(long, value_name = "D", requires = "tenant_epsilon_budget")]
    tenant_delta: Option<f64>,
    /// Update uploads assembled at once (memory: this × model size), 1..=1024
    #[arg(long, value_name = "N", default_value_t = 8)]
    upload_concurrency: usize,
    /// Upload slots the clients of one tenant may hold at once [default: half of
    /// --upload-concurrency, at least 1]
    #[arg(long, value_name = "N")]
    upload_tenant_slots: Option<usize>,
    /// Uploads that may wait for a slot (FIFO); beyond, RESOURCE_EXHAUSTED at once. At most 4096
    #[arg(long, value_name = "N", default_value_t = 32)]
    upload_queue: usize,
    /// Longest wait for an upload slot (never past the stage deadline), at most 10m
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    upload_slot_wait: std::time::Duration,
    /// An upload holding a slot that sends no byte for this long is dropped (kept for resume) and
    /// its slot freed; 100ms..=10m
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    upload_idle_timeout: std::time::Duration,
    /// An upload holding a slot that sends fewer bytes per second than this, averaged over
    /// --upload-rate-window, is dropped (kept for resume) and its slot freed; 0 turns it off
    #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = 8192)]
    min_upload_rate: u64,
    /// The window --min-upload-rate is averaged over; 100ms..=10m
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    upload_rate_window: std::time::Duration,
    /// Once both listeners accept connections, write {"grpc": URL, "admin": URL, "pid": N} to this
    /// file (atomically); it is removed when the server stops. The same moment prints one
    /// `coordinator ready: …` line on stdout
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Cedar policy file to apply at start (a new version unless it is already in force); the
    /// server does not start if it, or the stored policy in force, is malformed
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    telemetry: crate::telemetry::TelemetryArgs,
    /// Serve GET /metrics (Prometheus) on the admin listener without the admin token (default:
    /// the token is required there)
    #[arg(long)]
    metrics_public: bool,
    /// Also serve GET /metrics, without a token, on this plain-HTTP address (e.g. a scrape
    /// network or a sidecar); nothing else is served there
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Record the timing histograms and per-job series of /metrics (off: only the counters of
    /// GET /v1/metrics; for measuring the overhead with `flotilla bench coordinator`)
    #[arg(
        long = "telemetry",
        value_enum,
        value_name = "on|off",
        default_value = "on"
    )]
    record: Telemetry,
    /// Sign the audit log's head with this Ed25519 key (PKCS#8 PEM, e.g. from `flotilla audit
    /// keygen`) every --audit-interval in which it moved, and at shutdown
    #[arg(long, value_name = "FILE")]
    audit_signing_key: Option<PathBuf>,
    /// How often failed admin logins are written to the audit log (one entry per kind) and the
    /// head is checkpointed; 1s..=1h
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    audit_interval: std::time::Duration,
    #[command(flatten)]
    retention: crate::admin_cmd::retention_cmd::RetentionArgs,
    /// How often registered models in production are evaluated by their tenant's clients: a
    /// canary that regressed rolls back by itself, a production regression is exported as
    /// flotilla_model_regression; 0 = never
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    model_eval_interval: std::time::Duration,
    /// Clients each of those evaluations asks for
    #[arg(long, value_name = "N", default_value_t = flotilla_coordinator::DEFAULT_MODEL_EVAL_CLIENTS)]
    model_eval_clients: u32,
}

/// `--telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Telemetry {
    /// Record everything.
    On,
    /// Only the counters.
    Off,
}

/// Arguments of `flotilla dev-certs`.
#[derive(Debug, clap::Args)]
pub struct DevCertsArgs {
    /// Directory to write ca.pem, server.pem and server-key.pem into
    dir: PathBuf,
    /// Host names and IP addresses the server certificate is valid for
    #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
    hosts: Vec<String>,
}

pub fn server(args: ServerArgs) -> Result<()> {
    let rt = runtime()?;
    let telemetry = crate::telemetry::init(&args.telemetry, "flotilla-coordinator", &rt)?;
    let admin_token = std::env::var("FLOTILLA_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            anyhow!("FLOTILLA_ADMIN_TOKEN must be set to the token the admin API will require")
        })?;
    let tls = match (args.tls_cert, args.tls_key, args.insecure) {
        (Some(cert), Some(key), false) => TlsMode::Files { cert, key },
        (None, None, true) => TlsMode::Insecure,
        _ => bail!("give --tls-cert and --tls-key, or --insecure for plain text"),
    };
    let (insecure, ready_file) = (args.insecure, args.ready_file);
    let policy = args
        .policy
        .as_deref()
        .map(crate::policy_cmd::policy_file)
        .transpose()?;
    let mut config = ServerConfig::new(&args.data_dir, admin_token);
    // The built-in models; evaluation datasets from $FLOTILLA_DATA_DIR, else DATA_DIR/data.
    let eval_data = match std::env::var_os("FLOTILLA_DATA_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => args.data_dir.join("data"),
    };
    config.models = Some(std::sync::Arc::new(crate::server_models::BuiltinModels {
        data_dir: eval_data,
    }));
    config.listen = args.listen;
    config.admin_listen = args.admin_listen;
    config.database_url = args.database_url;
    config.blob_url = args.blob_url;
    config.tls = tls;
    config.credential_ttl = args.credential_ttl;
    config.metrics_public = args.metrics_public;
    config.metrics_listen = args.metrics_listen;
    config.telemetry = args.record == Telemetry::On;
    config.audit_signing_key = args.audit_signing_key;
    config.audit_interval = args.audit_interval;
    config.policy = policy;
    config.retention = args.retention.config();
    config.model_eval_interval = args.model_eval_interval;
    config.model_eval_clients = args.model_eval_clients;
    let limits = &mut config.limits;
    limits.upload_concurrency = args.upload_concurrency;
    limits.upload_tenant_slots = args.upload_tenant_slots;
    limits.upload_queue = args.upload_queue;
    limits.upload_slot_wait = args.upload_slot_wait;
    limits.upload_idle_timeout = args.upload_idle_timeout;
    limits.min_upload_bytes_per_sec = args.min_upload_rate;
    limits.upload_rate_window = args.upload_rate_window;
    if let (Some(max_epsilon), Some(delta)) = (args.tenant_epsilon_budget, args.tenant_delta) {
        config.tenant_privacy = Some(flotilla_coordinator::TenantPrivacy { max_epsilon, delta });
    }
    let result = rt.block_on(async move {
        let server = flotilla_coordinator::Server::bind(config).await.context("starting the coordinator")?;
        tracing::info!(grpc = %server.grpc_addr(), admin = %server.admin_addr(), "coordinator listening");
        // Both sockets are listening: connections made from now on are queued, then served by `run`.
        let ready = Ready::new(insecure, server.grpc_addr(), server.admin_addr())
            .with_metrics(server.metrics_addr());
        let _ready_file = ready_file.map(|path| ready.write_file(&path)).transpose()?;
        // Not `println!`: a closed stdout (nobody reads the line) must not stop the server.
        let _ = writeln!(std::io::stdout(), "{}", ready.line());
        server.run(shutdown_signal()).await.context("coordinator stopped")
    });
    // The last spans are exported while the runtime still runs.
    telemetry.shutdown();
    result
}

pub fn dev_certs(args: DevCertsArgs) -> Result<()> {
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    let certs = crate::dev_certs::write_dev_certs(&args.dir, &hosts)
        .with_context(|| format!("writing certificates to {}", args.dir.display()))?;
    println!(
        "CA certificate (give clients --ca-cert): {}",
        certs.ca_cert.display()
    );
    println!(
        "server certificate (--tls-cert): {}",
        certs.server_cert.display()
    );
    println!("server key (--tls-key): {}", certs.server_key.display());
    Ok(())
}
