//! The coordinator's metrics: one [`prometheus_client`] registry per [`crate::Server`] (several
//! coordinators may run in one process, so there is no global recorder). `GET /metrics` encodes
//! the registry as Prometheus/OpenMetrics text; `GET /v1/metrics` answers the JSON
//! [`MetricsSnapshot`], read from the same counters.
//!
//! Label sets are bounded: job ids (of the running jobs and the [`MAX_ENDED_JOBS`] that ended
//! last), tenants (at most [`MAX_TENANTS`]), and fixed vocabularies (reasons, stages, RPCs,
//! store operations). No client id is ever a label.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use flotilla_core::round::{Activity, StageKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;

#[path = "metrics/families.rs"]
mod families;
#[path = "metrics/process.rs"]
mod process;

pub(crate) use families::{JobFamilies, TenantFamilies};

/// Per-job series are kept for the running jobs and this many jobs that ended most recently;
/// older ones are removed from every per-job family, so the exposition stays bounded.
pub(crate) const MAX_ENDED_JOBS: usize = 256;
/// Per-tenant series beyond this many tenants are not exported.
pub(crate) const MAX_TENANTS: usize = 256;

/// The `reason` of `flotilla_rounds_abandoned_total`.
pub(crate) const ABANDON_REASONS: [&str; 3] =
    ["too_few_reports", "all_quarantined", "aggregation_failed"];

/// The [`ABANDON_REASONS`] name of `cause`.
pub(crate) fn abandon_reason(cause: flotilla_core::round::AbandonCause) -> &'static str {
    use flotilla_core::round::AbandonCause as C;
    match cause {
        C::AllQuarantined => ABANDON_REASONS[1],
        C::AggregationFailed => ABANDON_REASONS[2],
        // `TooFewReports`, and any cause a later core adds.
        _ => ABANDON_REASONS[0],
    }
}

/// A label set of one label, e.g. `[("rpc", "CheckIn")]`.
pub(crate) type L1 = [(&'static str, String); 1];
/// A label set of two labels.
pub(crate) type L2 = [(&'static str, String); 2];

/// Process-wide counters (each described at its [`MetricsSnapshot`] field) and the Prometheus
/// families the coordinator records into.
#[derive(Debug)]
pub struct Metrics {
    /// See [`MetricsSnapshot::checkins`].
    pub checkins: Counter,
    /// See [`MetricsSnapshot::tasks`].
    pub tasks: Counter,
    /// See [`MetricsSnapshot::retry_afters`].
    pub retry_afters: Counter,
    /// See [`MetricsSnapshot::enrollments`].
    pub enrollments: Counter,
    /// See [`MetricsSnapshot::downloads`].
    pub downloads: Counter,
    uploads_accepted: Counter,
    uploads_duplicate: Counter,
    uploads_incomplete: Counter,
    rounds_committed: Counter,
    rounds_abandoned: Counter,
    auth_failures: Counter,
    /// See [`MetricsSnapshot::tls_handshake_failures`].
    pub tls_handshake_failures: Counter,
    /// See [`MetricsSnapshot::task_failures`].
    pub task_failures: Counter,
    /// See [`MetricsSnapshot::jobs_halted`].
    pub jobs_halted: Counter,
    /// See [`MetricsSnapshot::jobs_healed`].
    pub jobs_healed: Counter,
    /// Bytes of upload request bodies received.
    pub received_bytes: Counter,
    /// Bytes of model chunks sent.
    pub sent_bytes: Counter,
    rejections: families::Rejections,
    uploads: Family<L2, Counter>,
    auth_failures_by_kind: Family<L1, Counter>,
    /// Per-job and per-stage families.
    pub(crate) jobs: JobFamilies,
    /// Per-tenant gauges, refreshed at scrape time.
    pub(crate) tenants: TenantFamilies,
    /// Timing histograms (RPCs, store operations) and per-job gauges are recorded only when on
    /// (`ServerConfig::telemetry`); the counters of `GET /v1/metrics` always are.
    enabled: bool,
    registry: Registry,
    /// Ended jobs whose series are still exported, oldest first.
    ended: Mutex<VecDeque<String>>,
    /// When each running job's current round (or its running secure-aggregation stage) started.
    round_started: Mutex<HashMap<u64, Instant>>,
    /// When each secure-aggregation job's running stage started.
    stage_started: Mutex<HashMap<u64, Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(true)
    }
}

/// The coordinator's counters at one moment, as `GET /v1/metrics` answers them; all are
/// monotonic since the process started.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSnapshot {
    /// Check-ins answered (task or retry).
    pub checkins: u64,
    /// Tasks handed out.
    pub tasks: u64,
    /// Bytes of upload request bodies received (headers, chunks and gRPC framing, as they arrived;
    /// compressed payloads count compressed).
    pub received_bytes: u64,
    /// Payload bytes of model chunks sent.
    pub sent_bytes: u64,
    /// `RetryAfter` answers.
    pub retry_afters: u64,
    /// Enrollments that succeeded.
    pub enrollments: u64,
    /// Model downloads started.
    pub downloads: u64,
    /// Updates accepted into an aggregate.
    pub uploads_accepted: u64,
    /// Re-uploads answered `DUPLICATE`.
    pub uploads_duplicate: u64,
    /// Upload streams that ended early (`INCOMPLETE`).
    pub uploads_incomplete: u64,
    /// Rounds committed.
    pub rounds_committed: u64,
    /// Round attempts abandoned below their minimum.
    pub rounds_abandoned: u64,
    /// Requests refused for a missing, unknown or revoked credential (or a bad admin token).
    pub auth_failures: u64,
    /// TLS handshakes that failed (garbage bytes, wrong protocol, timeouts).
    pub tls_handshake_failures: u64,
    /// Task failures clients reported (`ReportTaskFailure`) and the coordinator recorded.
    pub task_failures: u64,
    /// Jobs halted because a commit (or a new attempt) could not be persisted.
    pub jobs_halted: u64,
    /// Halted jobs resumed by themselves once the store accepted writes again.
    pub jobs_healed: u64,
    /// Refused requests by reason (e.g. `unauthenticated`, `wrong_round`, `non_finite`).
    pub rejections: BTreeMap<String, u64>,
}

fn l1(k: &'static str, v: impl Into<String>) -> L1 {
    [(k, v.into())]
}

impl Metrics {
    /// A registry with every family registered; `enabled` says whether the timing histograms
    /// and per-job gauges are recorded.
    pub fn new(enabled: bool) -> Self {
        let mut r = Registry::default();
        let c = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let checkins = c(
            &mut r,
            "flotilla_checkins",
            "Check-ins answered (task or retry)",
        );
        let tasks = c(&mut r, "flotilla_tasks_issued", "Tasks handed out");
        let retry_afters = c(&mut r, "flotilla_retry_afters", "RetryAfter answers");
        let enrollments = c(&mut r, "flotilla_enrollments", "Enrollments that succeeded");
        let downloads = c(&mut r, "flotilla_downloads", "Model downloads started");
        let tls_handshake_failures = c(
            &mut r,
            "flotilla_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
        );
        let task_failures = c(
            &mut r,
            "flotilla_task_failures",
            "Task failures clients reported",
        );
        let jobs_halted = c(
            &mut r,
            "flotilla_jobs_halted",
            "Jobs halted because the store refused a commit",
        );
        let jobs_healed = c(
            &mut r,
            "flotilla_jobs_healed",
            "Halted jobs that resumed once the store was back",
        );
        let received_bytes = c(
            &mut r,
            "flotilla_received_bytes",
            "Bytes of upload request bodies received",
        );
        let sent_bytes = c(&mut r, "flotilla_sent_bytes", "Bytes of model chunks sent");
        let rejections = families::Rejections::default();
        r.register_collector(Box::new(rejections.clone()));
        let uploads = Family::<L2, Counter>::default();
        r.register(
            "flotilla_uploads",
            "Finished uploads by outcome (accepted, duplicate, incomplete, rejected) and reason",
            uploads.clone(),
        );
        let auth_failures_by_kind = Family::<L1, Counter>::default();
        r.register(
            "flotilla_auth_failures",
            "Requests refused for their credential or admin token, by kind",
            auth_failures_by_kind.clone(),
        );
        let jobs = JobFamilies::register(&mut r);
        let tenants = TenantFamilies::register(&mut r);
        families::register_build_info(&mut r);
        r.register_collector(Box::new(process::ProcessCollector));
        Metrics {
            checkins,
            tasks,
            retry_afters,
            enrollments,
            downloads,
            uploads_accepted: Counter::default(),
            uploads_duplicate: Counter::default(),
            uploads_incomplete: Counter::default(),
            rounds_committed: Counter::default(),
            rounds_abandoned: Counter::default(),
            auth_failures: Counter::default(),
            tls_handshake_failures,
            task_failures,
            jobs_halted,
            jobs_healed,
            received_bytes,
            sent_bytes,
            rejections,
            uploads,
            auth_failures_by_kind,
            jobs,
            tenants,
            enabled,
            registry: r,
            ended: Mutex::default(),
            round_started: Mutex::default(),
            stage_started: Mutex::default(),
        }
    }

    /// Adds one to a counter.
    pub fn inc(counter: &Counter) {
        counter.inc();
    }

    /// Sets `flotilla_model_regression{model,cohort}` (the caller bounds the label sets).
    pub(crate) fn model_regression_set(&self, model: &str, cohort: &str, points: f64) {
        self.tenants
            .model_regression
            .get_or_create(&[("model", model.to_owned()), ("cohort", cohort.to_owned())])
            .set(points);
    }

    /// Removes the `flotilla_model_regression` series of `model` in `cohorts`.
    pub(crate) fn model_regression_clear<'a>(
        &self,
        model: &str,
        cohorts: impl IntoIterator<Item = &'a String>,
    ) {
        for c in cohorts {
            self.tenants
                .model_regression
                .remove(&[("model", model.to_owned()), ("cohort", c.clone())]);
        }
    }

    /// Counts a refused request under `reason` (a fixed vocabulary: never a client's text).
    pub fn reject(&self, reason: &str) {
        self.rejections.inc(reason);
    }

    /// Counts a refused credential (or admin token) of `kind` (the caller counts the rejection).
    pub fn auth_failure(&self, kind: &'static str) {
        self.auth_failures.inc();
        self.auth_failures_by_kind
            .get_or_create(&l1("kind", kind))
            .inc();
    }

    fn upload(&self, outcome: &'static str, reason: &str) {
        self.uploads
            .get_or_create(&[("outcome", outcome.into()), ("reason", reason.into())])
            .inc();
    }

    /// An update accepted into an aggregate.
    pub fn upload_accepted(&self) {
        self.uploads_accepted.inc();
        self.upload("accepted", "none");
    }

    /// A re-upload answered `DUPLICATE`.
    pub fn upload_duplicate(&self) {
        self.uploads_duplicate.inc();
        self.upload("duplicate", "duplicate");
        self.reject("duplicate");
    }

    /// An upload stream that ended early.
    pub fn upload_incomplete(&self) {
        self.uploads_incomplete.inc();
        self.upload("incomplete", "incomplete");
    }

    /// An upload refused for `reason`, also counted as a rejection.
    pub fn upload_rejected(&self, reason: &str) {
        self.upload("rejected", reason);
        self.reject(reason);
    }

    /// Observes how long a call of `rpc` took.
    pub fn rpc_done(&self, rpc: &'static str, started: Instant) {
        if self.enabled {
            self.jobs
                .rpc_duration
                .get_or_create(&l1("rpc", rpc))
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Runs the store call `fut`, timing it as operation `op`.
    pub async fn store_op<T>(&self, op: &'static str, fut: impl Future<Output = T>) -> T {
        if !self.enabled {
            return fut.await;
        }
        let t = Instant::now();
        let out = fut.await;
        self.jobs
            .store_duration
            .get_or_create(&l1("op", op))
            .observe(t.elapsed().as_secs_f64());
        out
    }

    /// Round `round` of `job` committed, with `participants` reports, at `now_s` (Unix seconds).
    pub fn round_committed(&self, job: u64, round: u64, participants: usize, now_s: f64) {
        self.rounds_committed.inc();
        let j = l1("job", job.to_string());
        self.jobs.rounds_committed.get_or_create(&j).inc();
        self.jobs.round.get_or_create(&j).set(round as i64);
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let mut started = self
            .round_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = started.insert(job, now) {
            self.jobs
                .round_duration
                .get_or_create(&j)
                .observe(now.duration_since(t).as_secs_f64());
        }
        self.jobs
            .participants
            .get_or_create(&j)
            .set(participants as i64);
        self.jobs.last_commit.get_or_create(&j).set(now_s);
    }

    /// `job`'s value of `flotilla_dp_epsilon_spent` after a commit.
    pub fn dp_spent(&self, job: u64, epsilon: f64) {
        if self.enabled {
            self.jobs
                .dp_spent
                .get_or_create(&l1("job", job.to_string()))
                .set(epsilon);
        }
    }

    /// The server-side evaluation of `job`'s latest evaluated model.
    pub fn model_eval(&self, job: u64, accuracy: Option<f64>, loss: Option<f64>) {
        let j = l1("job", job.to_string());
        if let Some(a) = accuracy {
            self.jobs.eval_accuracy.get_or_create(&j).set(a);
        }
        if let Some(l) = loss {
            self.jobs.eval_loss.get_or_create(&j).set(l);
        }
    }

    /// A secure-aggregation job's machine went from `before` to `after`: a stage that closed is
    /// observed in `flotilla_secagg_stage_duration_seconds`, one that opened starts its clock.
    pub fn secagg_step(&self, job: u64, before: Activity, after: Activity) {
        if !self.enabled || before == after {
            return;
        }
        let now = Instant::now();
        let mut started = self
            .stage_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let (Activity::Stage { kind, .. }, Some(t)) = (before, started.remove(&job)) {
            self.jobs
                .secagg_stage
                .get_or_create(&l1("stage", kind.name()))
                .observe(now.duration_since(t).as_secs_f64());
        }
        if let Activity::Stage { .. } = after {
            started.insert(job, now);
        }
    }

    /// `missing` selected clients had not reported when a secure-aggregation attempt was
    /// abandoned in stage `kind`.
    pub fn secagg_dropouts(&self, kind: StageKind, missing: usize) {
        self.jobs
            .secagg_dropouts
            .get_or_create(&l1("stage", kind.name()))
            .inc_by(missing as u64);
    }

    /// A round attempt of `job` was abandoned for `reason` (a fixed vocabulary).
    pub fn round_abandoned(&self, job: u64, reason: &'static str) {
        self.rounds_abandoned.inc();
        self.jobs
            .rounds_abandoned
            .get_or_create(&[("job", job.to_string()), ("reason", reason.into())])
            .inc();
    }

    /// A job runs (submitted or resumed, with `round` rounds committed and `epsilon_budget` its
    /// `[privacy] max_epsilon`): its round clock starts now, its state is `running`.
    pub fn job_running(
        &self,
        job: u64,
        round: u64,
        round_deadline_s: f64,
        epsilon_budget: Option<f64>,
        now_s: f64,
    ) {
        self.round_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job, Instant::now());
        let j = l1("job", job.to_string());
        self.jobs.set_state(&j[0].1, "running");
        self.jobs.deadline.get_or_create(&j).set(round_deadline_s);
        self.jobs.round.get_or_create(&j).set(round as i64);
        if let Some(b) = epsilon_budget {
            self.jobs.dp_budget.get_or_create(&j).set(b);
            let _ = self.jobs.dp_spent.get_or_create(&j);
        }
        // Created at 0 so the family exists before the first commit.
        let _ = self.jobs.rounds_committed.get_or_create(&j);
        // "No commit yet" counts from the start, so a job that never commits is seen as stalled.
        let last = self.jobs.last_commit.get_or_create(&j);
        if last.get() == 0.0 {
            last.set(now_s);
        }
    }

    /// A job ended in `state`: its series stay for [`MAX_ENDED_JOBS`] more job ends.
    pub fn job_ended(&self, job: u64, state: &'static str) {
        self.round_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&job);
        self.stage_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&job);
        let id = job.to_string();
        self.jobs.set_state(&id, state);
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.retain(|j| *j != id);
        ended.push_back(id);
        while ended.len() > MAX_ENDED_JOBS {
            if let Some(old) = ended.pop_front() {
                self.jobs.remove(&old);
            }
        }
    }

    /// Encodes the registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &Counter| c.get();
        MetricsSnapshot {
            checkins: g(&self.checkins),
            tasks: g(&self.tasks),
            received_bytes: g(&self.received_bytes),
            sent_bytes: g(&self.sent_bytes),
            retry_afters: g(&self.retry_afters),
            enrollments: g(&self.enrollments),
            downloads: g(&self.downloads),
            uploads_accepted: g(&self.uploads_accepted),
            uploads_duplicate: g(&self.uploads_duplicate),
            uploads_incomplete: g(&self.uploads_incomplete),
            rounds_committed: g(&self.rounds_committed),
            rounds_abandoned: g(&self.rounds_abandoned),
            auth_failures: g(&self.auth_failures),
            tls_handshake_failures: g(&self.tls_handshake_failures),
            task_failures: g(&self.task_failures),
            jobs_halted: g(&self.jobs_halted),
            jobs_healed: g(&self.jobs_healed),
            rejections: self.rejections.counts(),
        }
    }
}

#[cfg(test)]
#[path = "metrics/tests.rs"]
mod tests;
