//! The coordinator's shared state, as types: the process-wide [`Shared`], a running job's
//! [`JobRuntime`] and the [`JobInner`] behind its lock, and the small records passed around with
//! them. Only plain constructors and accessors live here; what the coordinator *does* with this
//! state is in the modules above it (`jobs.rs` drives a job, `job_end.rs` ends one, `heal.rs`
//! resumes a halted one, …), so every module can name these types without depending on that logic
//! (see the layering at the top of `lib.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex as StdMutex, PoisonError, RwLock};
use std::time::Duration;

use flotilla_core::ParamLayout;
use flotilla_core::round::{ClientId, RejectReason, RoundMachine, Task, Timer};
use flotilla_proto::{ExpectedLayout, v1};
use flotilla_store::{JobId, JobState, Store};
use tokio::sync::{Mutex, mpsc};

use crate::metrics::Metrics;
use crate::spec::JobSpec;

/// One committed model version held in memory for downloads.
#[derive(Debug)]
pub(crate) struct ModelVersion {
    pub version: u64,
    pub params: Arc<Vec<f32>>,
    pub info: v1::ModelInfo,
    /// SCAFFOLD's server control variate paired with this version, and its description (kept for
    /// the versions held in memory only: a task is always for the current version).
    pub control: Option<(Arc<Vec<f32>>, v1::ModelInfo)>,
}

impl ModelVersion {
    pub(crate) fn new(
        version: u64,
        params: Vec<f32>,
        layout: &ParamLayout,
        spec: &v1::ModelSpec,
        control: Option<&[f32]>,
    ) -> Self {
        let mut info = flotilla_proto::model_info(layout, &params);
        info.spec = Some(spec.clone());
        let control =
            control.map(|c| (Arc::new(c.to_vec()), flotilla_proto::model_info(layout, c)));
        Self {
            version,
            params: Arc::new(params),
            info,
            control,
        }
    }
}

/// Idempotency key of an update: (round, attempt, stage, client) within a job.
pub(crate) type UploadKey = (u64, u32, u32, ClientId);

/// Mutable state of a running job, behind the job's lock.
pub(crate) struct JobInner {
    pub machine: RoundMachine,
    pub current: Arc<ModelVersion>,
    pub previous: Option<Arc<ModelVersion>>,
    /// FedBuff jobs started in this process: version 0, which the blob store does not hold, for
    /// tasks that started from it and download after later versions were committed.
    pub origin: Option<Arc<ModelVersion>>,
    /// Deadline (Unix ms) of the stage currently collecting reports.
    pub deadline_ms: Option<u64>,
    /// SHA-256 of every accepted update of the current and previous round.
    pub accepted: HashMap<UploadKey, Vec<u8>>,
    /// Set when a commit (or a new attempt) could not be persisted: the in-memory machine is
    /// ahead of the database, so the job takes no more events; the heal task (`heal.rs`) replaces
    /// it by a runtime rebuilt from the last durable commit once the store accepts writes again.
    /// The text is the cause, for `job status` ("could not persist round 5 (…)").
    pub halted: Option<String>,
    /// What the job remembers to explain itself: client-reported failures, the last abandoned
    /// attempt, when its wait for clients was logged.
    pub notes: crate::reasons::JobNotes,
    /// Set when the job completed, failed or was cancelled: the runtime has left the job table,
    /// and a request that still holds it is refused (`job_ended`) without touching the machine.
    pub ended: Option<JobState>,
    /// The tracing spans of the current round attempt and stage.
    pub trace: crate::round_trace::RoundTrace,
}

/// A job being run by this process.
pub(crate) struct JobRuntime {
    pub id: JobId,
    pub spec: JobSpec,
    pub model_spec: v1::ModelSpec,
    pub layout: ParamLayout,
    pub expected: ExpectedLayout,
    /// `[secagg]` jobs: the parameters every task carries.
    pub secagg: Option<v1::SecAggConfig>,
    pub inner: Mutex<JobInner>,
    /// Server-side evaluation of committed models (jobs with `[evaluation]`), run after each
    /// commit is durable and off the job lock.
    pub evaluations: Option<Arc<crate::evaluation::Evaluations>>,
}

/// What feeding one event produced for the client that caused it.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub task: Option<Task>,
    pub retry_after_ms: Option<u64>,
    pub accepted: bool,
    pub reject: Option<RejectReason>,
    /// The event led to a commit that could not be persisted.
    pub persist_failed: Option<String>,
    /// The job had ended (or ended because of this event's commit): its state.
    pub ended: Option<JobState>,
}

/// A timer to fire for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerEntry {
    pub at_ms: u64,
    pub job: u64,
    pub timer: Timer,
}

/// Process-wide state shared by the gRPC service, the admin API and the timer task.
pub(crate) struct Shared {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub jobs: RwLock<BTreeMap<u64, Arc<JobRuntime>>>,
    pub timers: mpsc::UnboundedSender<TimerEntry>,
    /// Upload slots, per-client and per-tenant caps, the wait queue and throttling.
    pub admission: Arc<crate::admission::Admission>,
    pub partial_uploads: StdMutex<crate::partial_uploads::PartialUploads>,
    pub limits: crate::limits::Limits,
    /// Where jobs' models come from (`ServerConfig::models`); none: no job can be submitted.
    pub models: Option<Arc<dyn crate::models::ModelProvider>>,
    /// When each client's `last_seen` was last written (Unix ms); bounded by the eviction rule
    /// of `bounds::touch_due` (which works on this map, not on `Shared`).
    pub last_touch: StdMutex<HashMap<u64, u64>>,
    pub rotate: AtomicU64,
    /// Successful credential lookups, so authenticated calls skip the database.
    pub credentials: crate::auth_cache::CredentialCache,
    /// Recent principal token lookups of the admin API (bounded; emptied on a revocation).
    pub principals: crate::principal_auth::PrincipalCache,
    /// Lifetime of the credentials `Enroll` issues.
    pub credential_ttl: Duration,
    /// Differential-privacy accountants and budgets of jobs and tenants.
    pub privacy: crate::privacy::PrivacyBook,
    /// The states of the jobs that ended most recently, for the answers to late calls.
    pub recently_ended: RecentlyEnded,
    /// Failed admin logins to flush and checkpoints signed (`audit_flush`).
    pub audit: crate::audit_flush::AuditHandle,
    /// The Cedar policy in force (`policy.rs`), read by every decision without a store call.
    pub policy: crate::policy::Policies,
    /// Retention rules (`ServerConfig::retention`), applied by `retention.rs`.
    pub retention: flotilla_store::RetentionRules,
    /// What the TLS listeners offer (for evidence packs); `None` without TLS.
    pub tls_offer: Option<crate::tls::TlsOffer>,
    /// Federated evaluation campaigns (`fed_eval.rs`), bounded.
    pub fed_evals: Arc<crate::fed_eval::FedEvals>,
    /// Registered models' rows and version descriptions for `ResolveModel` (bounded, 1 s).
    pub resolve_cache: crate::resolve_cache::ResolveCache,
}

/// Jobs remembered as recently ended, so that the calls of clients still working on them are
/// answered without a database query; older ones are looked up in the store.
pub(crate) const MAX_RECENTLY_ENDED: usize = 1024;

/// The terminal states of the jobs that ended most recently in this process, by job id (at most
/// [`MAX_RECENTLY_ENDED`]; the lowest ids, i.e. the oldest jobs, are forgotten first). Filled by
/// `job_end.rs`.
#[derive(Default)]
pub(crate) struct RecentlyEnded(StdMutex<BTreeMap<u64, JobState>>);

impl RecentlyEnded {
    /// Remembers that job `id` ended in `state`, forgetting the oldest beyond the bound.
    pub(crate) fn insert(&self, id: u64, state: JobState) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(id, state);
        while map.len() > MAX_RECENTLY_ENDED {
            map.pop_first();
        }
    }

    /// The remembered state of job `id`.
    pub(crate) fn get(&self, id: u64) -> Option<JobState> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
    }
}

impl Shared {
    /// Running jobs, in id order.
    pub fn job_list(&self) -> Vec<Arc<JobRuntime>> {
        self.jobs
            .read()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A running job by its wire id.
    pub fn job(&self, id: &str) -> Option<Arc<JobRuntime>> {
        let id: u64 = id.parse().ok()?;
        self.jobs.read().ok()?.get(&id).cloned()
    }

    /// Adds a running job to the job table (and its series to the metrics).
    pub fn insert_job(&self, job: Arc<JobRuntime>) {
        // Just built: nobody else holds its lock.
        let committed = job
            .inner
            .try_lock()
            .map(|i| i.machine.current_round().0.saturating_sub(1))
            .unwrap_or_default();
        self.metrics.job_running(
            job.id.0,
            committed,
            job.spec.policy().stage_deadline_ms as f64 / 1000.0,
            job.spec.privacy.and_then(|p| p.max_epsilon),
            crate::clock::now_ms() as f64 / 1000.0,
        );
        if let Ok(mut j) = self.jobs.write() {
            j.insert(job.id.0, job);
        }
    }

    /// Removes a job from the job table.
    pub fn remove_job(&self, id: u64) -> Option<Arc<JobRuntime>> {
        self.jobs.write().ok()?.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_ended_jobs_are_forgotten_first() {
        let r = RecentlyEnded::default();
        for id in 0..(MAX_RECENTLY_ENDED as u64 + 10) {
            r.insert(id, JobState::Completed);
        }
        assert_eq!(r.0.lock().unwrap().len(), MAX_RECENTLY_ENDED);
        assert_eq!(r.get(9), None);
        assert_eq!(r.get(10), Some(JobState::Completed));
    }
}
