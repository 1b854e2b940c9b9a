//! Fair, bounded upload admission: which upload streams may take one of the
//! [`Limits::upload_concurrency`] slots in which payloads are assembled, and in what order.
//!
//! An upload reaches [`Admission::admit`] only after its header passed the job's pre-check
//! (`RoundMachine::precheck_upload`: the sender is in the current stage's cohort, or holds its
//! FedBuff task), so a client that is not wanted never waits for, let alone holds, a slot. Then:
//!
//! - **Per client**: at most [`Limits::upload_per_client`] streams (default 1), waiting or holding a
//!   slot; a further one is refused at once (`RESOURCE_EXHAUSTED`, reason `client_busy`).
//! - **Per tenant**: at most [`Limits::upload_tenant_slots`] slots (default half the slots), so the
//!   clients of one tenant cannot take every slot from the others.
//! - **A bounded, fair queue**: when no slot is free the stream waits in FIFO order (tokio's
//!   semaphores are fair) for at most [`Limits::upload_slot_wait`] and never past the stage's
//!   deadline (reason `busy`); at most [`Limits::upload_queue`] streams wait, a further one is
//!   refused at once (reason `queue_full`).
//! - **Throttling**: refusals that only a misbehaving client earns (not in the cohort, a second
//!   stream, a stream too slow to keep its slot) are *strikes*; [`STRIKE_LIMIT`] strikes within
//!   [`STRIKE_WINDOW`] throttle the client for [`THROTTLE_FOR`]: each of its uploads is refused
//!   at once (reason `throttled`) with the time to wait in the message.
//!
//! Memory: the per-client stream counts and per-tenant semaphores exist only while a client or
//! tenant has an upload past its header (bounded by the open streams); the strike records are an
//! LRU map of at most [`CONDUCT_MAX_CLIENTS`] clients (the least recently struck is forgotten).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashlink::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use crate::limits::Limits;

/// Strikes within [`STRIKE_WINDOW`] that throttle a client.
pub(crate) const STRIKE_LIMIT: u32 = 8;
/// The window strikes are counted in.
pub(crate) const STRIKE_WINDOW: Duration = Duration::from_secs(60);
/// How long a throttled client's uploads are refused.
pub(crate) const THROTTLE_FOR: Duration = Duration::from_secs(30);
/// Clients whose strikes are remembered at once (least recently struck forgotten first).
pub(crate) const CONDUCT_MAX_CLIENTS: usize = 65_536;

/// Why an upload was not given a slot. Every variant is `RESOURCE_EXHAUSTED`: retry later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdmissionError {
    /// The client earned too many strikes recently.
    #[error("too many refused uploads from this client; retry in {retry_after_secs} s")]
    Throttled {
        /// Seconds until the throttle ends.
        retry_after_secs: u64,
    },
    /// The client already has its maximum of uploads in progress.
    #[error(
        "this client already has {max} upload(s) in progress; finish that one before starting another"
    )]
    ClientBusy {
        /// [`Limits::upload_per_client`].
        max: usize,
    },
    /// The wait queue is full.
    #[error("{max} uploads are already waiting for a slot; retry later")]
    QueueFull {
        /// [`Limits::upload_queue`].
        max: usize,
    },
    /// No slot became free within the wait bound.
    #[error("too many concurrent uploads (no slot free within {waited_ms} ms); retry later")]
    Busy {
        /// How long the upload waited.
        waited_ms: u64,
    },
}

impl AdmissionError {
    /// The `rejections` reason it is counted under.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            AdmissionError::Throttled { .. } => "throttled",
            AdmissionError::ClientBusy { .. } => "client_busy",
            AdmissionError::QueueFull { .. } => "queue_full",
            AdmissionError::Busy { .. } => "busy",
        }
    }

    /// The gRPC status the client gets.
    pub(crate) fn status(&self) -> Status {
        Status::resource_exhausted(self.to_string())
    }
}

/// A client's recent strikes.
#[derive(Debug, Clone, Copy)]
struct Conduct {
    window_start: Instant,
    strikes: u32,
    throttled_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// Streams past admission (waiting or holding a slot) per client; no entry at 0.
    streams: HashMap<u64, usize>,
    /// Each tenant's slot semaphore while one of its uploads is admitted or waiting.
    tenants: HashMap<String, Arc<Semaphore>>,
    conduct: Option<LruCache<u64, Conduct>>,
}

/// Upload admission state, shared by every upload stream. See the module documentation.
pub(crate) struct Admission {
    per_client: usize,
    per_tenant: usize,
    queue: usize,
    slot_wait: Duration,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    state: Mutex<State>,
}

/// A slot: the stream may assemble its payload while it holds this. Dropping it frees the slot,
/// the tenant's slot and the client's stream count.
pub(crate) struct UploadSlot {
    admission: Arc<Admission>,
    client: u64,
    tenant: String,
    tenant_permit: Option<OwnedSemaphorePermit>,
    global_permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        // Permits first, so the tenant's semaphore is unused when its entry is checked below.
        self.global_permit.take();
        self.tenant_permit.take();
        let Ok(mut st) = self.admission.state.lock() else {
            return;
        };
        if let Some(n) = st.streams.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.streams.remove(&self.client);
            }
        }
        if st
            .tenants
            .get(&self.tenant)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            st.tenants.remove(&self.tenant);
        }
    }
}

/// Counts a stream in the wait queue while it lives.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// Admission under `limits` (already validated).
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            per_client: limits.upload_per_client.max(1),
            per_tenant: limits.tenant_slots(),
            queue: limits.upload_queue,
            slot_wait: limits.upload_slot_wait,
            slots: Arc::new(Semaphore::new(limits.upload_concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// `Err(Throttled)` while `client` is throttled. Cheap: call it before reading the header.
    pub(crate) fn check_throttle(&self, client: u64) -> Result<(), AdmissionError> {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return Ok(());
        };
        let Some(c) = st.conduct.as_mut().and_then(|m| m.get(&client)) else {
            return Ok(());
        };
        match c.throttled_until {
            Some(until) if until > now => Err(AdmissionError::Throttled {
                retry_after_secs: (until - now).as_secs_f64().ceil() as u64,
            }),
            _ => Ok(()),
        }
    }

    /// Records a refusal only a misbehaving client earns; the [`STRIKE_LIMIT`]th within
    /// [`STRIKE_WINDOW`] throttles it for [`THROTTLE_FOR`]. Returns whether it is now throttled.
    pub(crate) fn strike(&self, client: u64) -> bool {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let map = st
            .conduct
            .get_or_insert_with(|| LruCache::new(CONDUCT_MAX_CLIENTS));
        let fresh = Conduct {
            window_start: now,
            strikes: 0,
            throttled_until: None,
        };
        let mut c = map.remove(&client).unwrap_or(fresh);
        if now.duration_since(c.window_start) > STRIKE_WINDOW {
            c.window_start = now;
            c.strikes = 0;
        }
        c.strikes += 1;
        let throttled = c.strikes >= STRIKE_LIMIT;
        if throttled {
            c = Conduct {
                window_start: now,
                strikes: 0,
                throttled_until: Some(now + THROTTLE_FOR),
            };
        }
        // `insert` puts the client at the most recent end and evicts the least recent when full.
        map.insert(client, c);
        throttled
    }

    /// A slot for an upload of `client` (of `tenant`), waiting in the fair queue if none is free,
    /// until `deadline` at the latest (the stage's deadline). Strikes the client when it already
    /// has its maximum of streams.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        client: u64,
        tenant: &str,
        deadline: Option<Instant>,
    ) -> Result<UploadSlot, AdmissionError> {
        let tenant_slots = {
            let Ok(mut st) = self.state.lock() else {
                return Err(AdmissionError::Busy { waited_ms: 0 });
            };
            let n = st.streams.entry(client).or_insert(0);
            if *n >= self.per_client {
                drop(st);
                self.strike(client);
                return Err(AdmissionError::ClientBusy {
                    max: self.per_client,
                });
            }
            *n += 1;
            st.tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        let mut slot = UploadSlot {
            admission: self.clone(),
            client,
            tenant: tenant.to_owned(),
            tenant_permit: None,
            global_permit: None,
        };
        // A free slot now: no queue. (A fair semaphore hands released permits to its waiters
        // first, so this never overtakes a waiting upload.)
        slot.tenant_permit = tenant_slots.clone().try_acquire_owned().ok();
        if slot.tenant_permit.is_some() {
            slot.global_permit = self.slots.clone().try_acquire_owned().ok();
            if slot.global_permit.is_some() {
                return Ok(slot);
            }
        }
        let queued = Queued(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
            drop(queued);
            return Err(AdmissionError::QueueFull { max: self.queue });
        }
        let start = Instant::now();
        let until = deadline.map_or(start + self.slot_wait, |d| d.min(start + self.slot_wait));
        let have_tenant = slot.tenant_permit.is_some();
        let global = self.slots.clone();
        let wait = async move {
            let t = if have_tenant {
                None
            } else {
                Some(tenant_slots.acquire_owned().await.ok()?)
            };
            let g = global.acquire_owned().await.ok()?;
            Some((t, g))
        };
        let got = tokio::time::timeout_at(until, wait).await;
        drop(queued);
        match got {
            Ok(Some((t, g))) => {
                if t.is_some() {
                    slot.tenant_permit = t;
                }
                slot.global_permit = Some(g);
                Ok(slot)
            }
            _ => Err(AdmissionError::Busy {
                waited_ms: start.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Streams waiting for a slot now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(slots: usize, tenant: usize, queue: usize) -> Limits {
        Limits {
            upload_concurrency: slots,
            upload_tenant_slots: Some(tenant),
            upload_queue: queue,
            upload_slot_wait: Duration::from_secs(5),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn one_stream_per_client_and_strikes_throttle() {
        let a = Arc::new(Admission::new(&limits(4, 4, 4)));
        let first = a.admit(1, "t", None).await.expect("first stream");
        assert_eq!(
            a.admit(1, "t", None).await.err(),
            Some(AdmissionError::ClientBusy { max: 1 })
        );
        // Another client is not affected.
        let other = a.admit(2, "t", None).await.expect("other client");
        drop(first);
        let again = a
            .admit(1, "t", None)
            .await
            .expect("slot freed with the stream");
        drop((again, other));
        assert!(
            a.state.lock().unwrap().streams.is_empty(),
            "no entry left for idle clients"
        );
        assert!(
            a.state.lock().unwrap().tenants.is_empty(),
            "no entry left for idle tenants"
        );
        // The refused second stream above was the first strike.
        for _ in 0..STRIKE_LIMIT - 2 {
            assert!(!a.strike(1));
        }
        assert!(a.check_throttle(1).is_ok());
        assert!(a.strike(1), "the {STRIKE_LIMIT}th strike throttles");
        assert!(matches!(
            a.check_throttle(1),
            Err(AdmissionError::Throttled {
                retry_after_secs: 30
            })
        ));
        assert!(a.check_throttle(2).is_ok());
    }

    #[tokio::test]
    async fn tenant_cap_queue_bound_and_fifo() {
        let a = Arc::new(Admission::new(&limits(2, 1, 1)));
        let t1 = a.admit(1, "a", None).await.unwrap();
        // Tenant "a" has its one slot: client 2 of "a" waits (the queue holds 1)...
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(2, "a", None).await.map(|_| ()) })
        };
        while a.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // ...tenant "b" still gets the other slot at once, without queueing...
        let t2 = a
            .admit(3, "b", None)
            .await
            .expect("another tenant is not blocked");
        // ...and with the queue full a further waiter is refused at once.
        assert_eq!(
            a.admit(4, "b", None).await.err(),
            Some(AdmissionError::QueueFull { max: 1 })
        );
        drop(t1);
        waiter
            .await
            .unwrap()
            .expect("the waiter got the freed tenant slot");
        drop(t2);
    }

    #[tokio::test]
    async fn the_wait_ends_at_the_deadline() {
        let a = Arc::new(Admission::new(&limits(1, 1, 4)));
        let _held = a.admit(1, "a", None).await.unwrap();
        let t = Instant::now();
        let e = a
            .admit(2, "a", Some(Instant::now() + Duration::from_millis(50)))
            .await
            .err();
        assert!(matches!(e, Some(AdmissionError::Busy { .. })), "{e:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "waited {:?}, past the 50 ms deadline",
            t.elapsed()
        );
        assert_eq!(a.waiting(), 0);
    }
}
