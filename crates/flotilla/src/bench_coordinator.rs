//! `flotilla bench coordinator`: a load generator for a running coordinator (`flotilla server`).
//!
//! It runs as its own process and speaks the real protocol (`flotilla-proto`'s tonic client, TLS
//! verified against `--ca-cert`). It enrolls `--clients` virtual clients with one enrollment token,
//! spread over `--connections` HTTP/2 connections (tonic multiplexes many calls on one connection),
//! then measures:
//!
//! 1. **Check-ins.** It submits a job that never starts a round (its `min_clients` is above the number
//!    of clients), so every check-in is authenticated, looked up in the job list and fed to that job's
//!    round machine, and answered with `RetryAfter`. `--checkin-concurrency` loops call `CheckIn` back
//!    to back for `--checkin-seconds` (closed loop: the maximum rate). With `--checkin-rate R` it then
//!    offers R check-ins/s on a fixed schedule for the same time (open loop), and each latency is
//!    counted from the *scheduled* send time, so queueing in the load generator or the server is not
//!    hidden. The check-in job is cancelled afterwards.
//! 2. **Ingest.** It submits a one-round job whose model is logistic regression with `--params`
//!    parameters (no server-side evaluation); every client checks in until it gets its task, then all
//!    upload an update of finite values, `--upload-concurrency` streams at a time. Ingest MB/s is the
//!    payload bytes (4 × params × clients) divided by the time from the first upload request to the
//!    last response (the round commits inside the last accepted upload). With `--server-pid`, the
//!    server's `/proc/PID/status` is sampled every 10 ms during the phase (`VmRSS`).
//!
//! 3. **Scale** (`--scale-rounds R`, `bench_scale.rs`): memory per idle connected client, then R
//!    rounds of `--clients-per-round` among all the clients, in rounds per minute.
//!
//! Clients do not download the model or train: the point is the coordinator's cost per check-in and
//! per update byte. One payload is encoded and hashed once and sent by every client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use flotilla_proto::v1::{self, coordinator_client::CoordinatorClient};
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[path = "bench_admin.rs"]
mod admin;
#[path = "bench_scale.rs"]
mod scale;

use admin::Admin;

/// Arguments of `flotilla bench coordinator`.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Coordinator gRPC URL, e.g. https://127.0.0.1:7070
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// Admin API URL (the benchmark submits and cancels its own jobs), e.g. https://127.0.0.1:7443
    #[arg(long, env = "FLOTILLA_ADMIN_URL", value_name = "URL")]
    admin_url: String,
    /// Admin token [default: $FLOTILLA_ADMIN_TOKEN]
    #[arg(
        long,
        env = "FLOTILLA_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: String,
    /// CA certificate (PEM) that signed the coordinator's certificate (both URLs)
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Allow plain-text http:// URLs (development only)
    #[arg(long)]
    insecure: bool,
    /// Enrollment token with at least --clients uses left
    #[arg(long, value_name = "TOKEN")]
    token: String,
    /// Virtual clients to enroll
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// HTTP/2 connections the clients share
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Length of each check-in measurement; 0 skips the check-in phase
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    checkin_seconds: f64,
    /// Check-ins in flight in the closed-loop measurement (each loop cycles through its clients)
    #[arg(long, default_value_t = 64)]
    checkin_concurrency: usize,
    /// Also offer this many check-ins per second on a fixed schedule (open loop)
    #[arg(long, value_name = "PER_SECOND")]
    checkin_rate: Option<f64>,
    /// Parameters of the ingest job's model (a multiple of 10: logistic regression, 10 classes)
    #[arg(long, default_value_t = 1_000_000)]
    params: usize,
    /// Payload bytes per upload chunk
    #[arg(long, default_value_t = flotilla_proto::DEFAULT_CHUNK_BYTES)]
    chunk_bytes: usize,
    /// Upload streams in flight at once (the coordinator assembles 8 at a time by default)
    #[arg(long, default_value_t = 8)]
    upload_concurrency: usize,
    /// Skip the ingest phase
    #[arg(long)]
    no_ingest: bool,
    /// Process id of the coordinator, to sample its memory during ingest (Linux /proc)
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    scale: scale::ScaleArgs,
}

/// Runs the benchmark and prints its result.
pub fn run(args: CoordinatorArgs) -> Result<()> {
    validate(&args)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = crate::net_cmd::runtime()?;
    let report = rt.block_on(bench(&args))?;
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(())
}

fn validate(a: &CoordinatorArgs) -> Result<()> {
    ensure!(a.clients >= 1, "--clients must be ≥ 1");
    ensure!(a.connections >= 1, "--connections must be ≥ 1");
    ensure!(
        a.checkin_seconds.is_finite() && a.checkin_seconds >= 0.0,
        "--checkin-seconds must be ≥ 0"
    );
    ensure!(
        a.checkin_concurrency >= 1,
        "--checkin-concurrency must be ≥ 1"
    );
    if let Some(r) = a.checkin_rate {
        ensure!(r.is_finite() && r > 0.0, "--checkin-rate must be > 0");
    }
    ensure!(
        a.params >= 20 && a.params.is_multiple_of(10),
        "--params must be a multiple of 10, at least 20"
    );
    ensure!(
        (1..=flotilla_proto::MAX_CHUNK_BYTES).contains(&a.chunk_bytes),
        "--chunk-bytes must be in 1..={}",
        flotilla_proto::MAX_CHUNK_BYTES
    );
    ensure!(
        a.upload_concurrency >= 1,
        "--upload-concurrency must be ≥ 1"
    );
    ensure!(
        a.connections <= a.clients,
        "--connections must be at most --clients"
    );
    a.scale.validate(a.clients)
}

/// One enrolled virtual client.
#[derive(Clone)]
struct Virtual {
    id: String,
    auth: MetadataValue<Ascii>,
    rpc: CoordinatorClient<Channel>,
}

impl Virtual {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        req
    }

    async fn check_in(&self, job: &str) -> Result<v1::check_in_response::Outcome, tonic::Status> {
        let req = self.request(v1::CheckInRequest {
            num_samples: 100,
            job_ids: vec![job.to_owned()],
            ..Default::default()
        });
        let mut rpc = self.rpc.clone();
        let resp = rpc.check_in(req).await?.into_inner();
        resp.outcome
            .ok_or_else(|| tonic::Status::internal("check-in answer without an outcome"))
    }
}

async fn bench(a: &CoordinatorArgs) -> Result<Value> {
    let admin = Admin::new(a)?;
    let endpoint = endpoint(a)?;
    let rss_before = a.server_pid.and_then(|p| proc_status_bytes(p, "VmRSS"));
    // TLS handshakes, 32 at a time (one connection per client is what `--scale-rounds` measures).
    let mut set = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..a.connections {
        let (endpoint, slots) = (endpoint.clone(), slots.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            Ok::<_, anyhow::Error>((i, endpoint.connect().await?))
        });
    }
    let mut channels: Vec<Option<Channel>> = vec![None; a.connections];
    while let Some(r) = set.join_next().await {
        let (i, ch) = r
            .context("connect task")?
            .with_context(|| format!("connecting to {}", a.coordinator))?;
        channels[i] = Some(ch);
    }
    let channels: Vec<Channel> = channels.into_iter().flatten().collect();
    let t = Instant::now();
    let clients = enroll(a, &channels).await?;
    let enroll_s = t.elapsed().as_secs_f64();

    let mut report = json!({
        "clients": a.clients,
        "connections": a.connections,
        "enroll_seconds": enroll_s,
    });
    if a.checkin_seconds > 0.0 {
        report["checkin"] = checkin_phase(a, &admin, &clients).await?;
    }
    if !a.no_ingest {
        report["ingest"] = ingest_phase(a, &admin, &clients).await?;
    }
    if a.scale.scale_rounds > 0 {
        report["scale"] = scale::scale_phase(a, &admin, &clients, rss_before).await?;
    }
    Ok(report)
}

fn endpoint(a: &CoordinatorArgs) -> Result<Endpoint> {
    let url = a.coordinator.trim().to_owned();
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .with_context(|| format!("--coordinator {url}"))?;
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("--coordinator {url}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .buffer_size(64 * 1024);
    match uri.scheme_str() {
        Some("https") => {
            let ca = a
                .ca_cert
                .as_ref()
                .ok_or_else(|| anyhow!("--ca-cert is required for an https:// coordinator"))?;
            let pem =
                std::fs::read(ca).with_context(|| format!("reading --ca-cert {}", ca.display()))?;
            let host = uri
                .host()
                .ok_or_else(|| anyhow!("--coordinator {url} has no host"))?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
            endpoint.tls_config(tls).context("setting up TLS")
        }
        Some("http") if a.insecure => Ok(endpoint),
        Some("http") => bail!("--coordinator {url} is plain text; use https:// or pass --insecure"),
        _ => {
            bail!("--coordinator must start with https:// (or http:// with --insecure), got {url}")
        }
    }
}

/// Enrolls every virtual client, 32 enrollments in flight.
async fn enroll(a: &CoordinatorArgs, channels: &[Channel]) -> Result<Vec<Virtual>> {
    let mut set = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..a.clients {
        let mut rpc = CoordinatorClient::new(channels[i % channels.len()].clone());
        let token = a.token.clone();
        let slots = slots.clone();
        set.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let req = v1::EnrollRequest {
                enrollment_token: token,
                client_name: format!("bench-{i}"),
                ..Default::default()
            };
            // UNAVAILABLE ("retry later", e.g. a busy store under an enrollment storm) is retried
            // with a growing pause, as the SDK does; anything else ends the benchmark.
            let mut attempt = 0u64;
            let r = loop {
                match rpc.enroll(req.clone()).await {
                    Ok(r) => break r.into_inner(),
                    Err(s) if s.code() == tonic::Code::Unavailable && attempt < 20 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    }
                    Err(s) => bail!("enrolling client {i}: {}: {}", s.code(), s.message()),
                }
            };
            let auth: MetadataValue<Ascii> = format!("Bearer {}", r.credential)
                .parse()
                .map_err(|_| anyhow!("the coordinator sent a credential that is not ASCII"))?;
            Ok::<_, anyhow::Error>((
                i,
                Virtual {
                    id: r.client_id,
                    auth,
                    rpc,
                },
            ))
        });
    }
    let mut out: Vec<Option<Virtual>> = vec![None; a.clients];
    while let Some(r) = set.join_next().await {
        let (i, v) = r.context("enrollment task")??;
        out[i] = Some(v);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Latency summary in milliseconds, from microsecond samples.
fn latency_json(mut us: Vec<u64>) -> Value {
    us.sort_unstable();
    let pct = |q: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
        us[rank - 1] as f64 / 1000.0
    };
    json!({
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": us.last().map_or(0.0, |v| *v as f64 / 1000.0),
    })
}

async fn checkin_phase(a: &CoordinatorArgs, admin: &Admin, clients: &[Virtual]) -> Result<Value> {
    // A job that never starts a round: every check-in goes through its machine and gets RetryAfter.
    let never = clients.len() + 1;
    let spec = format!(
        "name = \"bench-checkin\"\nrounds = 1\nclients_per_round = {never}\n[round]\nmin_clients = {never}\n\
         checkin_ttl_seconds = 600\n\n[model]\nkind = \"logreg\"\ninput_shape = [4]\nnum_classes = 2\n\n\
         [train]\nlearning_rate = 0.1\n"
    );
    let job = admin.submit(&spec).await?;
    let result = async {
        let duration = Duration::from_secs_f64(a.checkin_seconds);
        let mut out = json!({ "job_id": job, "seconds": a.checkin_seconds });
        out["closed_loop"] = closed_loop(clients, &job, a.checkin_concurrency, duration).await?;
        if let Some(rate) = a.checkin_rate {
            out["open_loop"] = open_loop(clients, &job, rate, duration).await?;
        }
        Ok::<_, anyhow::Error>(out)
    }
    .await;
    admin
        .call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{job}/cancel"),
            None,
        )
        .await?;
    result
}

/// Tally of one check-in measurement.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    retry_after: u64,
    tasks: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(
        &mut self,
        started: Instant,
        r: Result<v1::check_in_response::Outcome, tonic::Status>,
    ) {
        self.latencies_us.push(started.elapsed().as_micros() as u64);
        match r {
            Ok(v1::check_in_response::Outcome::RetryAfter(_)) => self.retry_after += 1,
            Ok(v1::check_in_response::Outcome::Task(_)) => self.tasks += 1,
            Err(s) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{}: {}", s.code(), s.message()));
            }
        }
    }

    fn merge(&mut self, o: Tally) {
        self.latencies_us.extend(o.latencies_us);
        self.retry_after += o.retry_after;
        self.tasks += o.tasks;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn into_json(self, elapsed: f64, extra: Value) -> Value {
        let n = self.latencies_us.len() as u64;
        let mut v = json!({
            "count": n,
            "retry_after": self.retry_after,
            "tasks": self.tasks,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_seconds": elapsed,
            "per_second": if elapsed > 0.0 { (n - self.errors) as f64 / elapsed } else { 0.0 },
            "latency_ms": latency_json(self.latencies_us),
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        v
    }
}

/// `concurrency` loops, each cycling through its share of the clients, for `duration`.
async fn closed_loop(
    clients: &[Virtual],
    job: &str,
    concurrency: usize,
    duration: Duration,
) -> Result<Value> {
    let concurrency = concurrency.min(clients.len()).max(1);
    let start = Instant::now();
    let end = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let mine: Vec<Virtual> = clients
            .iter()
            .skip(w)
            .step_by(concurrency)
            .cloned()
            .collect();
        let job = job.to_owned();
        set.spawn(async move {
            let mut t = Tally::default();
            let mut i = 0;
            while Instant::now() < end {
                let started = Instant::now();
                let r = mine[i % mine.len()].check_in(&job).await;
                t.record(started, r);
                i += 1;
            }
            t
        });
    }
    let mut total = Tally::default();
    while let Some(t) = set.join_next().await {
        total.merge(t.context("check-in loop")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(total.into_json(elapsed, json!({ "concurrency": concurrency })))
}

/// Check-ins sent at `rate` per second on a fixed schedule; latency from the scheduled time.
async fn open_loop(clients: &[Virtual], job: &str, rate: f64, duration: Duration) -> Result<Value> {
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let job: Arc<str> = Arc::from(job);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let c = clients[(i as usize) % clients.len()].clone();
        let (tally, job, in_flight, max_in_flight) = (
            tally.clone(),
            job.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
        );
        set.spawn(async move {
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            max_in_flight.fetch_max(now, Ordering::Relaxed);
            let r = c.check_in(&job).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Ok(mut t) = tally.lock() {
                t.record(at, r);
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.lock().map_err(|_| anyhow!("tally poisoned"))?);
    Ok(t.into_json(elapsed, json!({ "offered_per_second": rate, "max_in_flight": max_in_flight.load(Ordering::Relaxed) })))
}

/// Samples `VmRSS` of a process every 10 ms on a thread until dropped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// A `kB` field of `/proc/PID/status`, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Deterministic finite update values.
fn payload(params: usize) -> Vec<f32> {
    (0..params)
        .map(|i| ((i % 2001) as f32 - 1000.0) * 1e-4)
        .collect()
}

// `..Default::default()` in the header keeps this compiling when the protocol gains fields.
#[allow(clippy::needless_update)]
async fn ingest_phase(a: &CoordinatorArgs, admin: &Admin, clients: &[Virtual]) -> Result<Value> {
    let n = clients.len();
    let inputs = a.params / 10 - 1;
    let spec = format!(
        "name = \"bench-ingest\"\nrounds = 1\nclients_per_round = {n}\n[round]\nmin_clients = {n}\n\
         deadline_seconds = 600\nmin_report_fraction = 1.0\nselection_window_ms = 200\n\
         retry_after_ms = 100\ncheckin_ttl_seconds = 600\n\n[model]\nkind = \"logreg\"\n\
         input_shape = [{inputs}]\nnum_classes = 10\n\n[train]\nlearning_rate = 0.1\n"
    );
    let job = admin.submit(&spec).await?;

    // Every client checks in until it holds its task (selection happens once all have checked in).
    let mut set = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    let deadline = Instant::now() + Duration::from_secs(300);
    for (i, c) in clients.iter().enumerate() {
        let (c, job, slots) = (c.clone(), job.clone(), slots.clone());
        set.spawn(async move {
            loop {
                let outcome = {
                    let _slot = slots.acquire().await?;
                    c.check_in(&job).await.map_err(|s| {
                        anyhow!("check-in of client {i}: {}: {}", s.code(), s.message())
                    })?
                };
                match outcome {
                    v1::check_in_response::Outcome::Task(t) => {
                        return Ok::<_, anyhow::Error>((i, t));
                    }
                    v1::check_in_response::Outcome::RetryAfter(r) => {
                        ensure!(
                            Instant::now() < deadline,
                            "client {i} got no task within 300 s ({})",
                            r.reason
                        );
                        tokio::time::sleep(Duration::from_millis(r.retry_after_ms.clamp(10, 200)))
                            .await;
                    }
                }
            }
        });
    }
    let mut tasks: Vec<Option<v1::Task>> = vec![None; n];
    while let Some(r) = set.join_next().await {
        let (i, t) = r.context("check-in task")??;
        tasks[i] = Some(t);
    }
    let tasks: Vec<v1::Task> = tasks.into_iter().flatten().collect();
    let model = tasks
        .first()
        .and_then(|t| t.model.clone())
        .ok_or_else(|| anyhow!("the task carries no model info"))?;
    let total_bytes = 4 * a.params as u64;
    ensure!(
        model.size_bytes == total_bytes,
        "the ingest job's model has {} bytes, expected {total_bytes} (4 × --params)",
        model.size_bytes
    );

    // One payload, encoded and hashed once, sent by every client.
    let values = payload(a.params);
    let sha = flotilla_proto::payload_sha256(&values).to_vec();
    let chunks: Arc<Vec<(u64, Vec<u8>)>> =
        Arc::new(flotilla_proto::chunk_f32(&values, a.chunk_bytes).collect());
    drop(values);

    let baseline_rss = a.server_pid.and_then(|p| proc_status_bytes(p, "VmRSS"));
    let sampler = a.server_pid.map(RssSampler::start);
    let slots = Arc::new(tokio::sync::Semaphore::new(a.upload_concurrency));
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for (c, t) in clients.iter().zip(&tasks) {
        let (c, slots, chunks) = (c.clone(), slots.clone(), chunks.clone());
        let header = v1::UpdateHeader {
            job_id: t.job_id.clone(),
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
            num_samples: 100,
            metrics: [("train_loss".to_owned(), 0.5)].into_iter().collect(),
            total_bytes,
            layout_fingerprint: model.layout_fingerprint.clone(),
            sha256: sha.clone(),
            upload_id: flotilla_client::upload_id(
                &t.job_id,
                t.round,
                t.attempt,
                t.stage_index,
                &c.id,
            ),
            base_model_version: t.model_version,
            stage_index: t.stage_index,
            ..Default::default()
        };
        set.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let head = v1::UploadMessage {
                kind: Some(v1::upload_message::Kind::Header(header)),
            };
            // Chunks are copied into messages lazily, as the stream is polled.
            let body = (0..chunks.len()).map(move |k| v1::UploadMessage {
                kind: Some(v1::upload_message::Kind::Chunk(v1::UpdateChunk {
                    offset: chunks[k].0,
                    data: chunks[k].1.clone(),
                })),
            });
            let stream = tokio_stream::iter(std::iter::once(head).chain(body));
            let mut rpc = c.rpc.clone();
            let r = rpc.upload_update(c.request(stream)).await;
            Ok::<_, anyhow::Error>(match r {
                Ok(resp) => v1::UploadStatus::try_from(resp.into_inner().status)
                    .map_err(|_| "unknown upload status".to_owned()),
                Err(s) => Err(format!("{}: {}", s.code(), s.message())),
            })
        });
    }
    let (mut accepted, mut other, mut errors, mut first_problem) =
        (0u64, 0u64, 0u64, None::<String>);
    while let Some(r) = set.join_next().await {
        match r.context("upload task")?? {
            Ok(v1::UploadStatus::Accepted) => accepted += 1,
            Ok(s) => {
                other += 1;
                first_problem.get_or_insert_with(|| format!("upload status {s:?}"));
            }
            Err(e) => {
                errors += 1;
                first_problem.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let peak_rss = sampler.map(RssSampler::finish);
    let hwm = a.server_pid.and_then(|p| proc_status_bytes(p, "VmHWM"));

    let status = admin
        .call(reqwest::Method::GET, &format!("/v1/jobs/{job}"), None)
        .await?;
    let committed = status["rounds_completed"].as_u64().unwrap_or(0) >= 1;
    let payload_bytes = total_bytes * n as u64;
    let model_bytes = total_bytes as f64;
    Ok(json!({
        "job_id": job,
        "params": a.params,
        "uploads": n,
        "accepted": accepted,
        "not_accepted": other,
        "errors": errors,
        "first_problem": first_problem,
        "upload_concurrency": a.upload_concurrency,
        "chunk_bytes": a.chunk_bytes,
        "payload_bytes": payload_bytes,
        "elapsed_seconds": elapsed,
        "mb_per_s": payload_bytes as f64 / 1e6 / elapsed,
        "round_committed": committed,
        "job_state": status["state"].clone(),
        "server_rss": {
            "baseline_bytes": baseline_rss,
            "peak_bytes": peak_rss,
            "vm_hwm_bytes": hwm,
            "model_bytes": total_bytes,
            "peak_over_baseline_in_models": match (peak_rss, baseline_rss) {
                (Some(p), Some(b)) => json!(p.saturating_sub(b) as f64 / model_bytes),
                _ => Value::Null,
            },
        },
    }))
}

fn print_text(r: &Value) {
    println!(
        "clients {} over {} connections (enrolled in {:.2} s)",
        r["clients"],
        r["connections"],
        r["enroll_seconds"].as_f64().unwrap_or(0.0)
    );
    for (name, key) in [("closed loop", "closed_loop"), ("open loop", "open_loop")] {
        let c = &r["checkin"][key];
        if c.is_null() {
            continue;
        }
        let l = &c["latency_ms"];
        println!(
            "check-ins, {name}: {:.0}/s ({} calls, {} errors); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            c["per_second"].as_f64().unwrap_or(0.0),
            c["count"],
            c["errors"],
            l["p50"].as_f64().unwrap_or(0.0),
            l["p90"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0),
        );
    }
    let i = &r["ingest"];
    if !i.is_null() {
        println!(
            "ingest: {} uploads of {} params, {} accepted, {} errors: {:.0} MB/s ({:.2} s); round committed: {}",
            i["uploads"],
            i["params"],
            i["accepted"],
            i["errors"],
            i["mb_per_s"].as_f64().unwrap_or(0.0),
            i["elapsed_seconds"].as_f64().unwrap_or(0.0),
            i["round_committed"],
        );
        let m = &i["server_rss"];
        if let Some(p) = m["peak_bytes"].as_u64() {
            println!(
                "server RSS: baseline {:.1} MB, peak {:.1} MB during ingest ({:.1} × the 4-byte model above baseline)",
                m["baseline_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
                p as f64 / 1e6,
                m["peak_over_baseline_in_models"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if !r["scale"].is_null() {
        scale::print_text(&r["scale"]);
    }
}
