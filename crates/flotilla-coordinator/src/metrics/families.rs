//! The Prometheus families of the coordinator beyond plain counters: per job, per tenant, timing
//! histograms, the build info, and the rejection counts (kept in one map that both `/metrics` and
//! `GET /v1/metrics` read).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::{L1, L2};

/// A gauge holding an `f64`.
pub(crate) type FGauge = Gauge<f64, AtomicU64>;

/// The states a job can be in, as `flotilla_job_state{state}` names them.
pub(crate) const JOB_STATES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

/// 0.5 ms .. ~16 s: RPCs and store operations.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 10 ms .. ~5.8 h: rounds and secure-aggregation stages.
fn long() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

/// Families labelled by job, RPC, store operation or secure-aggregation stage.
#[derive(Debug)]
pub(crate) struct JobFamilies {
    pub rpc_duration: Family<L1, Histogram, fn() -> Histogram>,
    pub store_duration: Family<L1, Histogram, fn() -> Histogram>,
    pub rounds_committed: Family<L1, Counter>,
    pub rounds_abandoned: Family<L2, Counter>,
    pub round_duration: Family<L1, Histogram, fn() -> Histogram>,
    pub participants: Family<L1, Gauge>,
    pub state: Family<L2, Gauge>,
    pub round: Family<L1, Gauge>,
    pub eval_accuracy: Family<L1, FGauge>,
    pub eval_loss: Family<L1, FGauge>,
    pub dp_spent: Family<L1, FGauge>,
    pub dp_budget: Family<L1, FGauge>,
    pub deadline: Family<L1, FGauge>,
    pub last_commit: Family<L1, FGauge>,
    pub secagg_stage: Family<L1, Histogram, fn() -> Histogram>,
    pub secagg_dropouts: Family<L1, Counter>,
}

impl JobFamilies {
    pub(crate) fn register(r: &mut Registry) -> Self {
        let f = Self {
            rpc_duration: Family::new_with_constructor(latency),
            store_duration: Family::new_with_constructor(latency),
            rounds_committed: Family::default(),
            rounds_abandoned: Family::default(),
            round_duration: Family::new_with_constructor(long),
            participants: Family::default(),
            state: Family::default(),
            round: Family::default(),
            eval_accuracy: Family::default(),
            eval_loss: Family::default(),
            dp_spent: Family::default(),
            dp_budget: Family::default(),
            deadline: Family::default(),
            last_commit: Family::default(),
            secagg_stage: Family::new_with_constructor(long),
            secagg_dropouts: Family::default(),
        };
        r.register(
            "flotilla_rpc_duration_seconds",
            "gRPC call duration until the answer (streams: until the response starts)",
            f.rpc_duration.clone(),
        );
        r.register(
            "flotilla_store_operation_duration_seconds",
            "Duration of the store operations the coordinator makes",
            f.store_duration.clone(),
        );
        r.register(
            "flotilla_rounds_committed",
            "Rounds committed",
            f.rounds_committed.clone(),
        );
        r.register(
            "flotilla_rounds_abandoned",
            "Round attempts abandoned, by reason",
            f.rounds_abandoned.clone(),
        );
        r.register(
            "flotilla_round_duration_seconds",
            "Time from the previous commit (or the job's start in this process) to a round's commit",
            f.round_duration.clone(),
        );
        r.register(
            "flotilla_round_participants",
            "Reports aggregated by the last committed round",
            f.participants.clone(),
        );
        r.register(
            "flotilla_job_state",
            "1 for the job's current state, 0 for the others",
            f.state.clone(),
        );
        r.register(
            "flotilla_job_round",
            "Rounds the job has committed",
            f.round.clone(),
        );
        r.register(
            "flotilla_model_eval_accuracy",
            "Server-side evaluation accuracy of the last evaluated model (jobs with [evaluation])",
            f.eval_accuracy.clone(),
        );
        r.register(
            "flotilla_model_eval_loss",
            "Server-side evaluation loss of the last evaluated model (jobs with [evaluation])",
            f.eval_loss.clone(),
        );
        r.register(
            "flotilla_dp_epsilon_spent",
            "Differential-privacy epsilon the job has released",
            f.dp_spent.clone(),
        );
        r.register(
            "flotilla_dp_epsilon_budget",
            "The job's [privacy] max_epsilon",
            f.dp_budget.clone(),
        );
        r.register(
            "flotilla_job_round_deadline_seconds",
            "The job's round (stage) deadline",
            f.deadline.clone(),
        );
        r.register(
            "flotilla_last_commit_timestamp_seconds",
            "Unix time of the job's last commit (its start in this process before one)",
            f.last_commit.clone(),
        );
        r.register(
            "flotilla_secagg_stage_duration_seconds",
            "Duration of secure-aggregation stages, by stage",
            f.secagg_stage.clone(),
        );
        r.register(
            "flotilla_secagg_dropouts",
            "Selected clients missing when a secure-aggregation stage closed short, by stage",
            f.secagg_dropouts.clone(),
        );
        f
    }

    /// Sets `flotilla_job_state{job}` to 1 for `state`, 0 for the others.
    pub(crate) fn set_state(&self, job: &str, state: &str) {
        for s in JOB_STATES {
            self.state
                .get_or_create(&[("job", job.into()), ("state", s.into())])
                .set(i64::from(s == state));
        }
    }

    /// Removes every series of `job`.
    pub(crate) fn remove(&self, job: &str) {
        let j: L1 = [("job", job.into())];
        self.rounds_committed.remove(&j);
        self.round_duration.remove(&j);
        self.participants.remove(&j);
        self.round.remove(&j);
        self.eval_accuracy.remove(&j);
        self.eval_loss.remove(&j);
        self.dp_spent.remove(&j);
        self.dp_budget.remove(&j);
        self.deadline.remove(&j);
        self.last_commit.remove(&j);
        for s in JOB_STATES {
            self.state
                .remove(&[("job", job.into()), ("state", s.into())]);
        }
        for reason in crate::metrics::ABANDON_REASONS {
            self.rounds_abandoned
                .remove(&[("job", job.into()), ("reason", reason.into())]);
        }
    }
}

/// Gauges per tenant, set at scrape time from a cached count of the store's clients.
#[derive(Debug)]
pub(crate) struct TenantFamilies {
    pub enrolled: Family<L1, Gauge>,
    pub active: Family<L1, Gauge>,
    pub epsilon_spent: Family<L1, FGauge>,
    pub epsilon_budget: Family<L1, FGauge>,
    /// `notAfter` of the served certificate (TLS mode only).
    pub cert_expiry: Family<[(&'static str, String); 0], FGauge>,
    /// The audit log's head and last signed checkpoint (`audit_flush`).
    pub audit_head_seq: Gauge,
    pub audit_checkpoint_seq: Gauge,
    /// Accuracy drop of a production model against its baseline, by model and cohort
    /// (`model_watch.rs`; ≤ 256 models × 17 cohorts).
    pub model_regression: Family<L2, FGauge>,
}

impl TenantFamilies {
    pub(crate) fn register(r: &mut Registry) -> Self {
        let f = Self {
            enrolled: Family::default(),
            active: Family::default(),
            epsilon_spent: Family::default(),
            epsilon_budget: Family::default(),
            cert_expiry: Family::default(),
            audit_head_seq: Gauge::default(),
            audit_checkpoint_seq: Gauge::default(),
            model_regression: Family::default(),
        };
        r.register(
            "flotilla_model_regression",
            "Accuracy drop in points of a production model against its baseline evaluation beyond the gate's tolerance, by model and cohort (0: none)",
            f.model_regression.clone(),
        );
        r.register(
            "flotilla_audit_head_seq",
            "Seq of the last entry of the audit log",
            f.audit_head_seq.clone(),
        );
        r.register(
            "flotilla_audit_checkpoint_seq",
            "Seq the last signed audit checkpoint covers (0: none)",
            f.audit_checkpoint_seq.clone(),
        );
        r.register(
            "flotilla_clients_enrolled",
            "Enrolled clients not revoked, by tenant",
            f.enrolled.clone(),
        );
        r.register(
            "flotilla_clients_active",
            "Clients seen within the check-in TTL, by tenant",
            f.active.clone(),
        );
        r.register(
            "flotilla_tenant_epsilon_spent",
            "Epsilon charged to the tenant's budget",
            f.epsilon_spent.clone(),
        );
        r.register(
            "flotilla_tenant_epsilon_budget",
            "The tenant budget (--tenant-epsilon-budget)",
            f.epsilon_budget.clone(),
        );
        r.register(
            "flotilla_tls_cert_expiry_timestamp_seconds",
            "notAfter of the served TLS certificate, Unix seconds",
            f.cert_expiry.clone(),
        );
        f
    }
}

/// Registers `flotilla_build_info{version,git_sha}`.
pub(crate) fn register_build_info(r: &mut Registry) {
    let info = Info::new(vec![
        ("version", env!("CARGO_PKG_VERSION")),
        ("git_sha", env!("FLOTILLA_GIT_SHA")),
    ]);
    r.register(
        "flotilla_build",
        "The coordinator's version and git commit",
        info,
    );
}

/// Refused requests by reason: one map, read by `GET /v1/metrics` and encoded on each scrape as
/// `flotilla_rejections_total{reason}`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rejections(pub Arc<Mutex<BTreeMap<String, u64>>>);

impl Rejections {
    pub(crate) fn inc(&self, reason: &str) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match m.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                m.insert(reason.to_owned(), 1);
            }
        }
    }

    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Collector for Rejections {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        let c = ConstCounter::new(0u64);
        let mut m = encoder.encode_descriptor(
            "flotilla_rejections",
            "Refused requests by reason",
            None,
            c.metric_type(),
        )?;
        for (reason, n) in &counts {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
