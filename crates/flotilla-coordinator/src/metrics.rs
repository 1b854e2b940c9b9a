//! Counters exposed by `GET /v1/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Process-wide counters, each described at its [`MetricsSnapshot`] field.
#[derive(Debug, Default)]
pub struct Metrics {
    /// See [`MetricsSnapshot::checkins`].
    pub checkins: AtomicU64,
    /// See [`MetricsSnapshot::tasks`].
    pub tasks: AtomicU64,
    /// See [`MetricsSnapshot::retry_afters`].
    pub retry_afters: AtomicU64,
    /// See [`MetricsSnapshot::enrollments`].
    pub enrollments: AtomicU64,
    /// See [`MetricsSnapshot::downloads`].
    pub downloads: AtomicU64,
    /// See [`MetricsSnapshot::uploads_accepted`].
    pub uploads_accepted: AtomicU64,
    /// See [`MetricsSnapshot::uploads_duplicate`].
    pub uploads_duplicate: AtomicU64,
    /// See [`MetricsSnapshot::uploads_incomplete`].
    pub uploads_incomplete: AtomicU64,
    /// See [`MetricsSnapshot::rounds_committed`].
    pub rounds_committed: AtomicU64,
    /// See [`MetricsSnapshot::rounds_abandoned`].
    pub rounds_abandoned: AtomicU64,
    /// See [`MetricsSnapshot::auth_failures`].
    pub auth_failures: AtomicU64,
    /// See [`MetricsSnapshot::tls_handshake_failures`].
    pub tls_handshake_failures: AtomicU64,
    /// See [`MetricsSnapshot::task_failures`].
    pub task_failures: AtomicU64,
    /// See [`MetricsSnapshot::jobs_halted`].
    pub jobs_halted: AtomicU64,
    /// See [`MetricsSnapshot::jobs_healed`].
    pub jobs_healed: AtomicU64,
    rejections: Mutex<BTreeMap<String, u64>>,
}

/// The coordinator's counters at one moment, as `GET /v1/metrics` answers them; all are
/// monotonic since the process started.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSnapshot {
    /// Check-ins answered (task or retry).
    pub checkins: u64,
    /// Tasks handed out.
    pub tasks: u64,
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

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused request under `reason`.
    pub fn reject(&self, reason: &str) {
        if let Ok(mut m) = self.rejections.lock() {
            *m.entry(reason.to_owned()).or_default() += 1;
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            checkins: g(&self.checkins),
            tasks: g(&self.tasks),
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
            rejections: self
                .rejections
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
        }
    }
}
