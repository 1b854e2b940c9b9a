//! What the audit log gets from the coordinator on a timer rather than inside a store
//! transaction: failed admin authentications, aggregated, and signed checkpoints of the chain.
//!
//! * **Failed admin authentications** are counted in memory per (kind, tenant) by
//!   [`FailedAuth::record`] (the admin API's `auth` middleware calls it on every `401`) and written as
//!   ONE `admin.auth_failed` entry per key and minute, with the count and the first and last time.
//!   A flood of bad tokens therefore costs one entry per minute, not one per request, and the map
//!   holds at most [`MAX_FAILED_AUTH_KEYS`] keys (beyond, counts go to the key `("other", none)`).
//! * **Checkpoints.** With `--audit-signing-key`, every [`AuditTimer::interval`] (60 s) in which the
//!   head moved, and once at shutdown, an `audit.checkpoint` entry signs the head (see
//!   `flotilla_store::audit_sign`). The head and the last checkpoint are published as the gauges
//!   `flotilla_audit_head_seq` and `flotilla_audit_checkpoint_seq`, and the last checkpoint this
//!   process signed is kept, so `GET /v1/audit/verify` notices a tail deleted after it was signed
//!   even if the deleted rows took the checkpoint entry with them.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_store::{AuditEvent, AuditOutcome, AuditSigner, Checkpoint, Store};
use prometheus_client::metrics::gauge::Gauge;

use crate::clock::now_ms;

/// Most (kind, tenant) keys of failed authentications held between two flushes.
pub(crate) const MAX_FAILED_AUTH_KEYS: usize = 256;

/// How often failed authentications are flushed and the head is checkpointed.
pub const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(60);

/// Failed authentications of one key since the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    count: u64,
    first_ms: u64,
    last_ms: u64,
}

/// Failed admin authentications, counted per (kind, tenant) until the next flush.
#[derive(Debug, Default)]
pub(crate) struct FailedAuth {
    map: Mutex<HashMap<(String, Option<String>), Tally>>,
}

impl FailedAuth {
    /// Counts one failed authentication of `kind` (e.g. `missing_token`, `bad_token`,
    /// `revoked_principal`) against `tenant`, if one is known.
    pub(crate) fn record(&self, kind: &str, tenant: Option<&str>) {
        self.record_at(kind, tenant, now_ms());
    }

    fn record_at(&self, kind: &str, tenant: Option<&str>, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = (clip(kind), tenant.map(clip));
        if !map.contains_key(&key) && map.len() >= MAX_FAILED_AUTH_KEYS - 1 {
            // One slot stays free for the overflow key, so the map never exceeds the bound.
            key = ("other".to_owned(), None);
        }
        let t = map.entry(key).or_insert(Tally {
            count: 0,
            first_ms: now,
            last_ms: now,
        });
        t.count += 1;
        t.first_ms = t.first_ms.min(now);
        t.last_ms = t.last_ms.max(now);
    }

    /// Everything counted so far, emptying the map.
    fn take(&self) -> Vec<((String, Option<String>), Tally)> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = map.drain().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Puts tallies back after a failed write (merged with what arrived meanwhile).
    fn restore(&self, items: Vec<((String, Option<String>), Tally)>) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, t) in items {
            if map.len() >= MAX_FAILED_AUTH_KEYS && !map.contains_key(&k) {
                continue;
            }
            match map.entry(k) {
                Entry::Occupied(mut o) => {
                    let e = o.get_mut();
                    e.count += t.count;
                    e.first_ms = e.first_ms.min(t.first_ms);
                    e.last_ms = e.last_ms.max(t.last_ms);
                }
                Entry::Vacant(v) => {
                    v.insert(t);
                }
            }
        }
    }
}

/// Names and tenants come from requests: at most 64 characters, printable.
fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
}

/// The coordinator's audit state kept in memory (in `Shared`).
#[derive(Debug)]
pub(crate) struct AuditHandle {
    /// Failed admin logins since the last flush.
    pub failed: Arc<FailedAuth>,
    /// The checkpoint key, if the server has one.
    pub signer: Option<Arc<AuditSigner>>,
    /// How often the timer runs.
    pub interval: Duration,
    /// The last checkpoint this process signed.
    pub last_signed: Arc<Mutex<Option<Checkpoint>>>,
}

impl AuditHandle {
    /// Reads the signing key (if any); a missing or malformed key file is a configuration error.
    pub(crate) fn new(key: Option<&std::path::Path>, interval: Duration) -> Result<Self, String> {
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&interval) {
            return Err(format!(
                "audit interval must be in 1s..=1h, got {}",
                humantime::format_duration(interval)
            ));
        }
        let signer = match key {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("--audit-signing-key {}: {e}", path.display()))?;
                let s = AuditSigner::from_pkcs8_pem(&pem)
                    .map_err(|e| format!("--audit-signing-key {}: {e}", path.display()))?;
                Some(Arc::new(s))
            }
        };
        Ok(AuditHandle {
            failed: Arc::default(),
            signer,
            interval,
            last_signed: Arc::default(),
        })
    }

    /// The last checkpoint this process signed.
    pub(crate) fn last_signed(&self) -> Option<Checkpoint> {
        self.last_signed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The timer that flushes and checkpoints for this handle.
    pub(crate) fn timer(&self, store: Store, head: Gauge, checkpoint: Gauge) -> AuditTimer {
        AuditTimer {
            store,
            failed: self.failed.clone(),
            signer: self.signer.clone(),
            interval: self.interval,
            head_gauge: head,
            checkpoint_gauge: checkpoint,
            last_signed: self.last_signed.clone(),
        }
    }
}

/// What the timer writes with and where it publishes.
pub(crate) struct AuditTimer {
    store: Store,
    failed: Arc<FailedAuth>,
    signer: Option<Arc<AuditSigner>>,
    interval: Duration,
    head_gauge: Gauge,
    checkpoint_gauge: Gauge,
    last_signed: Arc<Mutex<Option<Checkpoint>>>,
}

impl AuditTimer {
    /// Flushes and checkpoints every `interval` until `stop` turns true, then once more.
    pub(crate) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        self.publish_head().await;
        // The guard `wait_for` returns is not `Send`: dropped inside this future.
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = tick.tick() => self.once().await,
                () = &mut stopped => break,
            }
        }
        self.once().await;
    }

    /// One flush of the failed authentications and, if the head moved, one checkpoint.
    pub(crate) async fn once(&self) {
        self.flush_failed().await;
        if let Some(signer) = &self.signer {
            // A head below what this process signed means the tail was deleted and the head row
            // rewritten: never sign that (verify reports it against the kept checkpoint).
            let signed = self
                .last_signed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|c| c.seq);
            if let (Some(signed), Ok(state)) = (signed, self.store.audit_state().await)
                && state.head_seq < signed
            {
                tracing::error!(
                    head = state.head_seq,
                    signed,
                    "the audit log's head is below the last signed checkpoint: entries were removed; not signing"
                );
                self.publish_head().await;
                return;
            }
            match self.store.audit_checkpoint(signer, now_ms() as i64).await {
                Ok(Some(cp)) => {
                    tracing::debug!(seq = cp.seq, "audit checkpoint signed");
                    *self
                        .last_signed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(cp);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not write the audit checkpoint"),
            }
        }
        self.publish_head().await;
    }

    async fn flush_failed(&self) {
        let items = self.failed.take();
        for (i, ((kind, tenant), t)) in items.iter().enumerate() {
            let ev = failed_auth_event(kind, tenant.as_deref(), *t);
            if let Err(e) = self.store.audit(&ev).await {
                tracing::warn!(error = %e, "could not write failed authentications to the audit log; kept for the next minute");
                self.failed.restore(items[i..].to_vec());
                return;
            }
        }
    }

    async fn publish_head(&self) {
        match self.store.audit_state().await {
            Ok(s) => {
                self.head_gauge.set(s.head_seq as i64);
                self.checkpoint_gauge
                    .set(s.checkpoint.map_or(0, |c| c.seq as i64));
            }
            Err(e) => tracing::debug!(error = %e, "could not read the audit head"),
        }
    }
}

/// The one entry of a minute's failed authentications of one key.
fn failed_auth_event(kind: &str, tenant: Option<&str>, t: Tally) -> AuditEvent {
    AuditEvent {
        actor: "anonymous".to_owned(),
        tenant: tenant.map(str::to_owned),
        action: "admin.auth_failed".to_owned(),
        resource: "admin-api".to_owned(),
        outcome: AuditOutcome::Denied,
        details: serde_json::json!({
            "kind": kind,
            "count": t.count,
            "first_ms": t.first_ms,
            "last_ms": t.last_ms,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_tally_per_key_and_the_map_is_bounded() {
        let f = FailedAuth::default();
        for i in 0..10_000u64 {
            f.record_at("bad_token", None, 1_000 + i);
        }
        f.record_at("bad_token", Some("acme"), 5);
        let items = f.take();
        assert_eq!(items.len(), 2);
        let none = items.iter().find(|(k, _)| k.1.is_none()).unwrap().1;
        assert_eq!(
            none,
            Tally {
                count: 10_000,
                first_ms: 1_000,
                last_ms: 10_999
            }
        );
        assert!(f.take().is_empty(), "take empties the map");

        for i in 0..10 * MAX_FAILED_AUTH_KEYS {
            f.record_at("bad_token", Some(&format!("t{i}")), 1);
        }
        let items = f.take();
        assert_eq!(items.len(), MAX_FAILED_AUTH_KEYS);
        let other = items.iter().find(|(k, _)| k.0 == "other").unwrap().1;
        assert_eq!(
            other.count as usize,
            10 * MAX_FAILED_AUTH_KEYS - (MAX_FAILED_AUTH_KEYS - 1)
        );
    }

    #[test]
    fn restored_tallies_merge_with_new_ones() {
        let f = FailedAuth::default();
        f.record_at("bad_token", None, 10);
        let items = f.take();
        f.record_at("bad_token", None, 20);
        f.restore(items);
        let t = f.take()[0].1;
        assert_eq!((t.count, t.first_ms, t.last_ms), (2, 10, 20));
    }

    #[test]
    fn request_text_is_clipped() {
        let f = FailedAuth::default();
        f.record_at(&"x".repeat(500), Some("a\nb"), 1);
        let items = f.take();
        assert_eq!(items[0].0.0.len(), 64);
        assert_eq!(items[0].0.1.as_deref(), Some("ab"));
    }
}
