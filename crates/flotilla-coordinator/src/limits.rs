//! The service's resource limits ([`Limits`]), re-exported at the crate root. Near the bottom of
//! the module layers: the upload admission and the shared state are built from them.

use std::time::Duration;

use crate::error::CoordinatorError;

/// How long an upload waits for a free slot by default.
pub(crate) const DEFAULT_SLOT_WAIT: Duration = Duration::from_secs(30);

/// Resource limits of the service. [`Limits::validate`] (run by [`Server::bind`](crate::Server::bind)) refuses values
/// outside the ranges given here, naming the field.
///
/// Uploads are admitted fairly (see the coordinator README, "Uploads: admission and memory"): only
/// a client whose header proves it may upload now (in the current stage's cohort, or holding its
/// FedBuff task) takes a slot; each client has at most `upload_per_client` streams and each tenant
/// at most `upload_tenant_slots` slots; streams wait for a slot in FIFO order in a queue of at most
/// `upload_queue`, for at most `upload_slot_wait` and never past the stage deadline; a stream
/// holding a slot that sends nothing for `upload_idle_timeout`, or less than
/// `min_upload_bytes_per_sec` over an `upload_rate_window`, is dropped (what it sent is kept for
/// resume) and its slot freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest update payload accepted, bytes (default 1 GiB).
    pub max_upload_bytes: u64,
    /// Uploads assembled at the same time (default 8; 1..=1024). Update memory is
    /// O((upload_concurrency + max_partial_uploads) × model size), independent of the number of clients.
    pub upload_concurrency: usize,
    /// Interrupted uploads kept for resume (default 8); the oldest is dropped first.
    pub max_partial_uploads: usize,
    /// How long an upload waits for a free slot before `RESOURCE_EXHAUSTED` (default 30 s, at
    /// most 10 min); never past the deadline of the stage it reports for.
    pub upload_slot_wait: Duration,
    /// Upload streams one client may have waiting or holding a slot (default 1; 1..=16); a
    /// further one is refused at once with `RESOURCE_EXHAUSTED` (reason `client_busy`).
    pub upload_per_client: usize,
    /// Slots the clients of one tenant may hold at once; `None`: `upload_concurrency / 2`, at
    /// least 1 (1..=upload_concurrency).
    pub upload_tenant_slots: Option<usize>,
    /// Uploads that may wait for a slot (default 32; at most 4096); a further one is refused at
    /// once with `RESOURCE_EXHAUSTED` (reason `queue_full`).
    pub upload_queue: usize,
    /// A stream holding a slot that receives no byte for this long is dropped (default 10 s;
    /// 100 ms..=10 min).
    pub upload_idle_timeout: Duration,
    /// A stream holding a slot must receive at least this many bytes per second, averaged over
    /// each `upload_rate_window`, or it is dropped (default 8 KiB/s; 0 turns the check off; at
    /// most 1 GiB/s).
    pub min_upload_bytes_per_sec: u64,
    /// The window `min_upload_bytes_per_sec` is averaged over (default 30 s; 100 ms..=10 min).
    pub upload_rate_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 1 << 30,
            upload_concurrency: 8,
            max_partial_uploads: 8,
            upload_slot_wait: DEFAULT_SLOT_WAIT,
            upload_per_client: 1,
            upload_tenant_slots: None,
            upload_queue: 32,
            upload_idle_timeout: Duration::from_secs(10),
            min_upload_bytes_per_sec: 8 << 10,
            upload_rate_window: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Slots one tenant may hold: `upload_tenant_slots`, or half the slots (at least 1).
    pub fn tenant_slots(&self) -> usize {
        self.upload_tenant_slots
            .unwrap_or(self.upload_concurrency / 2)
            .clamp(1, self.upload_concurrency.max(1))
    }

    /// Checks every field against its range; the error names the field.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        const TEN_MINUTES: Duration = Duration::from_secs(600);
        const TENTH: Duration = Duration::from_millis(100);
        let bad = |field: &str, range: &str, got: String| -> Result<(), CoordinatorError> {
            Err(CoordinatorError::Config(format!(
                "limits.{field} must be in {range}, got {got}"
            )))
        };
        if !(1..=1024).contains(&self.upload_concurrency) {
            return bad(
                "upload_concurrency",
                "1..=1024",
                self.upload_concurrency.to_string(),
            );
        }
        if self.upload_slot_wait > TEN_MINUTES {
            return bad(
                "upload_slot_wait",
                "0..=10min",
                format!("{:?}", self.upload_slot_wait),
            );
        }
        if !(1..=16).contains(&self.upload_per_client) {
            return bad(
                "upload_per_client",
                "1..=16",
                self.upload_per_client.to_string(),
            );
        }
        if let Some(t) = self.upload_tenant_slots
            && !(1..=self.upload_concurrency).contains(&t)
        {
            return bad(
                "upload_tenant_slots",
                &format!("1..={} (upload_concurrency)", self.upload_concurrency),
                t.to_string(),
            );
        }
        if self.upload_queue > 4096 {
            return bad("upload_queue", "0..=4096", self.upload_queue.to_string());
        }
        if !(TENTH..=TEN_MINUTES).contains(&self.upload_idle_timeout) {
            return bad(
                "upload_idle_timeout",
                "100ms..=10min",
                format!("{:?}", self.upload_idle_timeout),
            );
        }
        if self.min_upload_bytes_per_sec > 1 << 30 {
            return bad(
                "min_upload_bytes_per_sec",
                "0..=1073741824",
                self.min_upload_bytes_per_sec.to_string(),
            );
        }
        if !(TENTH..=TEN_MINUTES).contains(&self.upload_rate_window) {
            return bad(
                "upload_rate_window",
                "100ms..=10min",
                format!("{:?}", self.upload_rate_window),
            );
        }
        Ok(())
    }
}
