//! The scale phase of `flotilla bench coordinator` (`--scale-rounds R`): many concurrent virtual
//! clients, rounds of `--clients-per-round` through one coordinator.
//!
//! 1. **Idle clients.** Every enrolled client checks in once against a job that never starts a round
//!    (so the coordinator holds each one's credential, connection and check-in state), then the
//!    server's `VmRSS` is read: memory per idle connected client = (that − the RSS before the
//!    benchmark connected) / clients. With `--connections` equal to `--clients` every client has its
//!    own TLS connection, as real devices do.
//! 2. **Rounds.** A job of R rounds with `--clients-per-round` K (logistic regression with
//!    `--scale-params` parameters). Every client loops as the SDK does: check in, wait the
//!    `RetryAfter` the coordinator asks for (spread by a per-client offset so 10,000 clients do not
//!    call in lockstep), and when it gets a task upload an update of finite values (re-sent after a
//!    pause when the coordinator answers "retry later": its upload queue is bounded). Rounds per minute
//!    = R / the time from the job's submission to its completion; every error is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use flotilla_proto::v1;
use serde_json::{Value, json};

use super::{Admin, CoordinatorArgs, RssSampler, Virtual, payload, proc_status_bytes};

/// The scale phase's flags (flattened into `flotilla bench coordinator`).
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Run the scale phase with this many rounds (0 skips it)
    #[arg(long, value_name = "ROUNDS", default_value_t = 0)]
    pub scale_rounds: u32,
    /// Clients selected per round in the scale phase
    #[arg(long, default_value_t = 1000)]
    pub clients_per_round: usize,
    /// Parameters of the scale job's model (a multiple of 10, at least 20)
    #[arg(long, default_value_t = 10_000)]
    pub scale_params: usize,
    /// How long clients wait between check-ins while no task is offered (the job's retry_after_ms)
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub checkin_interval_ms: u64,
    /// Give up on the scale phase after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub scale_timeout: u64,
}

impl ScaleArgs {
    /// Checks the flags; errors name the flag.
    pub fn validate(&self, clients: usize) -> Result<()> {
        if self.scale_rounds == 0 {
            return Ok(());
        }
        ensure!(
            self.scale_rounds <= 10_000,
            "--scale-rounds must be at most 10000"
        );
        ensure!(
            (1..=clients).contains(&self.clients_per_round),
            "--clients-per-round must be in 1..=--clients ({clients})"
        );
        ensure!(
            self.scale_params >= 20 && self.scale_params.is_multiple_of(10),
            "--scale-params must be a multiple of 10, at least 20"
        );
        ensure!(
            (10..=60_000).contains(&self.checkin_interval_ms),
            "--checkin-interval-ms must be in 10..=60000"
        );
        ensure!(self.scale_timeout >= 1, "--scale-timeout must be ≥ 1");
        Ok(())
    }
}

/// Counters shared by every client loop.
#[derive(Default)]
struct Counts {
    checkins: AtomicU64,
    tasks: AtomicU64,
    accepted: AtomicU64,
    not_accepted: AtomicU64,
    upload_retries: AtomicU64,
    errors: AtomicU64,
}

/// Idle memory, then the rounds. `rss_before` is the server's RSS before the benchmark connected.
pub(super) async fn scale_phase(
    a: &CoordinatorArgs,
    admin: &Admin,
    clients: &[Virtual],
    rss_before: Option<u64>,
) -> Result<Value> {
    let s = &a.scale;
    let mut out = json!({
        "clients": clients.len(),
        "connections": a.connections,
        "clients_per_round": s.clients_per_round,
        "rounds": s.scale_rounds,
        "params": s.scale_params,
    });
    out["idle"] = idle_memory(a, admin, clients, rss_before).await?;
    out["rounds_phase"] = rounds(a, admin, clients).await?;
    Ok(out)
}

/// Every client checks in once on a job that never starts; then the server's RSS per client.
async fn idle_memory(
    a: &CoordinatorArgs,
    admin: &Admin,
    clients: &[Virtual],
    rss_before: Option<u64>,
) -> Result<Value> {
    let never = clients.len() + 1;
    let spec = format!(
        "name = \"bench-idle\"\nrounds = 1\nclients_per_round = {never}\n[round]\nmin_clients = {never}\n\
         checkin_ttl_seconds = 600\n\n[model]\nkind = \"logreg\"\ninput_shape = [4]\nnum_classes = 2\n\n\
         [train]\nlearning_rate = 0.1\n"
    );
    let job = admin.submit(&spec).await?;
    let errors = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for c in clients {
        let (c, job, slots, errors) = (c.clone(), job.clone(), slots.clone(), errors.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            if c.check_in(&job).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while set.join_next().await.is_some() {}
    // Let the allocator settle (freed request buffers) before reading the figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = a.server_pid.and_then(|p| proc_status_bytes(p, "VmRSS"));
    admin
        .call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{job}/cancel"),
            None,
        )
        .await?;
    let per_client = match (rss, rss_before) {
        (Some(r), Some(b)) => json!(r.saturating_sub(b) as f64 / clients.len() as f64),
        _ => Value::Null,
    };
    Ok(json!({
        "checkin_errors": errors.load(Ordering::Relaxed),
        "server_rss_before_connect_bytes": rss_before,
        "server_rss_idle_bytes": rss,
        "bytes_per_idle_client": per_client,
    }))
}

// `..Default::default()` in the header keeps this compiling when the protocol gains fields.
#[allow(clippy::needless_update)]
async fn rounds(a: &CoordinatorArgs, admin: &Admin, clients: &[Virtual]) -> Result<Value> {
    let s = &a.scale;
    let (k, r) = (s.clients_per_round, s.scale_rounds);
    let inputs = s.scale_params / 10 - 1;
    let spec = format!(
        "name = \"bench-scale\"\nrounds = {r}\nclients_per_round = {k}\n[round]\nmin_clients = {k}\n\
         deadline_seconds = 300\nmin_report_fraction = 1.0\nselection_window_ms = 200\n\
         retry_after_ms = {}\ncheckin_ttl_seconds = 600\n\n[model]\nkind = \"logreg\"\n\
         input_shape = [{inputs}]\nnum_classes = 10\n\n[train]\nlearning_rate = 0.1\n",
        s.checkin_interval_ms
    );
    let values = payload(s.scale_params);
    let sha = flotilla_proto::payload_sha256(&values).to_vec();
    let chunks: Arc<Vec<(u64, Vec<u8>)>> =
        Arc::new(flotilla_proto::chunk_f32(&values, a.chunk_bytes).collect());
    let total_bytes = 4 * s.scale_params as u64;
    drop(values);

    let sampler = a.server_pid.map(RssSampler::start);
    let start = Instant::now();
    let job = admin.submit(&spec).await?;
    let done = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let interval = s.checkin_interval_ms;
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, job, done, counts, first_error, chunks, sha) = (
            c.clone(),
            job.clone(),
            done.clone(),
            counts.clone(),
            first_error.clone(),
            chunks.clone(),
            sha.clone(),
        );
        set.spawn(async move {
            // Spread the first check-ins over one interval, as devices coming online would.
            let offset = (i as u64 * 7919) % interval;
            tokio::time::sleep(Duration::from_millis(offset)).await;
            while !done.load(Ordering::Relaxed) {
                counts.checkins.fetch_add(1, Ordering::Relaxed);
                let wait = match c.check_in(&job).await {
                    Ok(v1::check_in_response::Outcome::RetryAfter(r)) => {
                        r.retry_after_ms.clamp(10, 60_000)
                    }
                    Ok(v1::check_in_response::Outcome::Task(t)) => {
                        counts.tasks.fetch_add(1, Ordering::Relaxed);
                        let header = v1::UpdateHeader {
                            job_id: t.job_id.clone(),
                            round: t.round,
                            attempt: t.attempt,
                            stage: t.stage,
                            num_samples: 100,
                            metrics: [("train_loss".to_owned(), 0.5)].into_iter().collect(),
                            total_bytes,
                            layout_fingerprint: t
                                .model
                                .as_ref()
                                .map(|m| m.layout_fingerprint.clone())
                                .unwrap_or_default(),
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
                        // A full upload queue (RESOURCE_EXHAUSTED) or a busy coordinator
                        // (UNAVAILABLE) says "retry later": the SDK waits and re-sends the same
                        // upload, and so does this loop (counted apart from errors).
                        let mut result = upload(&c, header.clone(), &chunks).await;
                        while let Err(st) = &result
                            && matches!(
                                st.code(),
                                tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                            )
                            && !done.load(Ordering::Relaxed)
                        {
                            counts.upload_retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(interval / 4 + offset % 50))
                                .await;
                            result = upload(&c, header.clone(), &chunks).await;
                        }
                        match result {
                            Ok(v1::UploadStatus::Accepted) => {
                                counts.accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(other) => {
                                counts.not_accepted.fetch_add(1, Ordering::Relaxed);
                                note(&first_error, format!("upload status {other:?}"));
                            }
                            Err(st) => {
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                                note(
                                    &first_error,
                                    format!("upload: {}: {}", st.code(), st.message()),
                                );
                            }
                        }
                        // Back in the pool at once, like an SDK client after its report.
                        0
                    }
                    Err(st) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        note(
                            &first_error,
                            format!("check-in: {}: {}", st.code(), st.message()),
                        );
                        interval
                    }
                };
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        });
    }

    // Follow the job until it ends (or the timeout), then stop the client loops.
    let deadline = start + Duration::from_secs(s.scale_timeout);
    let status = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let st = admin
            .call(reqwest::Method::GET, &format!("/v1/jobs/{job}"), None)
            .await?;
        let state = st["state"].as_str().unwrap_or_default().to_owned();
        if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
            break st;
        }
        if Instant::now() > deadline {
            done.store(true, Ordering::Relaxed);
            return Err(anyhow!(
                "the scale job {job} did not finish within --scale-timeout {} s (state {state}, {} rounds completed)",
                s.scale_timeout,
                st["rounds_completed"]
            ));
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    let peak = sampler.map(RssSampler::finish);
    let completed = status["rounds_completed"].as_u64().unwrap_or(0);
    let first_error = first_error
        .lock()
        .map_err(|_| anyhow!("error note poisoned"))?
        .clone();
    let c = &counts;
    Ok(json!({
        "job_id": job,
        "job_state": status["state"].clone(),
        "rounds_completed": completed,
        "elapsed_seconds": elapsed,
        "rounds_per_minute": completed as f64 / elapsed * 60.0,
        "checkins": c.checkins.load(Ordering::Relaxed),
        "checkins_per_second": c.checkins.load(Ordering::Relaxed) as f64 / elapsed,
        "tasks": c.tasks.load(Ordering::Relaxed),
        "uploads_accepted": c.accepted.load(Ordering::Relaxed),
        "uploads_not_accepted": c.not_accepted.load(Ordering::Relaxed),
        "upload_retries": c.upload_retries.load(Ordering::Relaxed),
        "errors": c.errors.load(Ordering::Relaxed),
        "first_problem": first_error,
        "server_peak_rss_bytes": peak,
    }))
}

fn note(slot: &std::sync::Mutex<Option<String>>, what: String) {
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert(what);
    }
}

/// One update upload; the chunks are copied into messages as the stream is polled.
async fn upload(
    c: &Virtual,
    header: v1::UpdateHeader,
    chunks: &Arc<Vec<(u64, Vec<u8>)>>,
) -> Result<v1::UploadStatus, tonic::Status> {
    let head = v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Header(header)),
    };
    let chunks = chunks.clone();
    let body = (0..chunks.len()).map(move |k| v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Chunk(v1::UpdateChunk {
            offset: chunks[k].0,
            data: chunks[k].1.clone(),
        })),
    });
    let stream = tokio_stream::iter(std::iter::once(head).chain(body));
    let mut rpc = c.rpc.clone();
    let resp = rpc.upload_update(c.request(stream)).await?;
    v1::UploadStatus::try_from(resp.into_inner().status)
        .map_err(|_| tonic::Status::internal("unknown upload status"))
}

/// Text lines for the scale phase.
pub(super) fn print_text(s: &Value) {
    let idle = &s["idle"];
    if let Some(b) = idle["bytes_per_idle_client"].as_f64() {
        println!(
            "idle: {} clients over {} connections: {:.1} kB of server memory per idle connected client (RSS {:.1} → {:.1} MB)",
            s["clients"],
            s["connections"],
            b / 1e3,
            idle["server_rss_before_connect_bytes"]
                .as_u64()
                .unwrap_or(0) as f64
                / 1e6,
            idle["server_rss_idle_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
        );
    }
    let r = &s["rounds_phase"];
    println!(
        "scale: {} of {} rounds of {} clients in {:.1} s: {:.1} rounds/min; {} check-ins ({:.0}/s), {} uploads accepted, {} errors",
        r["rounds_completed"],
        s["rounds"],
        s["clients_per_round"],
        r["elapsed_seconds"].as_f64().unwrap_or(0.0),
        r["rounds_per_minute"].as_f64().unwrap_or(0.0),
        r["checkins"],
        r["checkins_per_second"].as_f64().unwrap_or(0.0),
        r["uploads_accepted"],
        r["errors"],
    );
    if let Some(p) = r["first_problem"].as_str() {
        println!("scale: first problem: {p}");
    }
}
