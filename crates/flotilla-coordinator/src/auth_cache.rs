//! An in-memory cache of successful credential lookups, so an authenticated call does not cost a
//! database query.
//!
//! Only successes are cached (unknown, revoked and expired credentials always go to the store, so
//! their errors are exactly the store's). A cached entry is used only while all of these hold:
//! - it is younger than [`CACHE_TTL_MS`] (10 s): changes made outside this process (another coordinator on
//!   the same PostgreSQL database, a manual `UPDATE`) are seen within that time;
//! - the credential's own expiry (`credential_expires_at_ms`) is still in the future: an expired
//!   credential is refused on its first call after expiry, cached or not;
//! - the client has not been revoked through this coordinator: the admin API's revoke calls
//!   [`CredentialCache::forget_client`] after the store has recorded the revocation, so the very next
//!   call is refused.
//!
//! While the store cannot be asked (an outage: the lookup fails with an infrastructure error), an
//! entry up to [`OUTAGE_GRACE_MS`] old still serves, so connected clients keep checking in and
//! resume work as soon as the store is back instead of backing off; nothing can be revoked while
//! the store is down.
//!
//! Memory is bounded by [`CACHE_MAX_ENTRIES`]; when full, the cache is emptied and refilled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_store::{ClientRecord, Store, StoreError};

use crate::clock::now_ms;

/// How long a successful lookup is trusted without asking the store again, milliseconds.
pub(crate) const CACHE_TTL_MS: u64 = 10_000;
/// How long a successful lookup still serves while the store is unavailable, milliseconds.
pub(crate) const OUTAGE_GRACE_MS: u64 = 15 * 60_000;
/// Most credentials cached at once.
pub(crate) const CACHE_MAX_ENTRIES: usize = 1 << 20;

struct Entry {
    record: ClientRecord,
    cached_at_ms: u64,
}

/// Successful credential lookups, keyed by the credential.
#[derive(Default)]
pub(crate) struct CredentialCache {
    map: Mutex<HashMap<String, Entry>>,
    /// Bumped by every [`CredentialCache::forget_client`]: a lookup that started before a
    /// revocation is not cached after it (it may have read the client before the revocation).
    epoch: AtomicU64,
}

impl CredentialCache {
    /// The client a credential belongs to: from the cache if the entry is still valid (see the
    /// module docs), else from [`Store::authenticate`], whose errors are returned unchanged.
    pub async fn authenticate(
        &self,
        store: &Store,
        credential: &str,
    ) -> Result<ClientRecord, StoreError> {
        let now = now_ms();
        if let Some(record) = self.lookup(credential, now, CACHE_TTL_MS) {
            return Ok(record);
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let record = match store.authenticate(credential).await {
            Ok(r) => r,
            Err(e) if crate::retry::retryable(&e) => {
                return self.lookup(credential, now, OUTAGE_GRACE_MS).ok_or(e);
            }
            Err(e) => return Err(e),
        };
        if let Ok(mut map) = self.map.lock()
            && self.epoch.load(Ordering::SeqCst) == epoch
        {
            if map.len() >= CACHE_MAX_ENTRIES {
                map.clear();
            }
            map.insert(
                credential.to_owned(),
                Entry {
                    record: record.clone(),
                    cached_at_ms: now,
                },
            );
        }
        Ok(record)
    }

    /// The cached record if it is younger than `max_age_ms`, unexpired and not revoked. Entries
    /// past [`OUTAGE_GRACE_MS`], expired or revoked are dropped.
    fn lookup(&self, credential: &str, now: u64, max_age_ms: u64) -> Option<ClientRecord> {
        let mut map = self.map.lock().ok()?;
        let e = map.get(credential)?;
        let age = now.saturating_sub(e.cached_at_ms);
        let unexpired = e
            .record
            .credential_expires_at_ms
            .is_none_or(|exp| i64::try_from(now).is_ok_and(|n| n < exp));
        if age < max_age_ms && unexpired && !e.record.revoked {
            return Some(e.record.clone());
        }
        if age >= OUTAGE_GRACE_MS || !unexpired || e.record.revoked {
            map.remove(credential);
        }
        None
    }

    /// Drops every cached credential of `client` (after it was revoked), so its next call goes to
    /// the store.
    pub fn forget_client(&self, client: flotilla_store::ClientId) {
        if let Ok(mut map) = self.map.lock() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            map.retain(|_, e| e.record.client_id != client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::ClientId;

    fn record(expires: Option<i64>) -> ClientRecord {
        ClientRecord {
            client_id: ClientId(7),
            tenant: "default".into(),
            revoked: false,
            created_at_ms: 0,
            last_seen_ms: None,
            credential_expires_at_ms: expires,
            name: None,
        }
    }

    fn cache_with(cred: &str, r: ClientRecord, cached_at_ms: u64) -> CredentialCache {
        let c = CredentialCache::default();
        c.map.lock().unwrap().insert(
            cred.into(),
            Entry {
                record: r,
                cached_at_ms,
            },
        );
        c
    }

    #[test]
    fn entries_are_used_only_while_fresh() {
        let c = cache_with("cred", record(None), 1_000);
        assert!(
            c.lookup("cred", 1_000 + CACHE_TTL_MS - 1, CACHE_TTL_MS)
                .is_some()
        );
        assert!(c.lookup("other", 1_000, CACHE_TTL_MS).is_none());
        assert!(
            c.lookup("cred", 1_000 + CACHE_TTL_MS, CACHE_TTL_MS)
                .is_none()
        );
        // A stale entry is kept for an outage, within its grace…
        assert!(
            c.lookup("cred", 1_000 + CACHE_TTL_MS, OUTAGE_GRACE_MS)
                .is_some()
        );
        // …and dropped after it, not kept for later.
        assert!(
            c.lookup("cred", 1_000 + OUTAGE_GRACE_MS, OUTAGE_GRACE_MS)
                .is_none()
        );
        assert!(c.lookup("cred", 1_000, OUTAGE_GRACE_MS).is_none());
    }

    #[test]
    fn an_expired_credential_is_never_served_from_the_cache() {
        let c = cache_with("cred", record(Some(5_000)), 1_000);
        assert!(c.lookup("cred", 4_999, CACHE_TTL_MS).is_some());
        assert!(
            c.lookup("cred", 5_000, OUTAGE_GRACE_MS).is_none(),
            "expiry is exclusive, as in the store"
        );
    }

    #[test]
    fn forgetting_a_client_drops_its_entries_and_blocks_lookups_in_flight() {
        let c = cache_with("cred", record(None), 1_000);
        let epoch = c.epoch.load(Ordering::SeqCst);
        c.forget_client(ClientId(8));
        assert!(
            c.lookup("cred", 1_001, CACHE_TTL_MS).is_some(),
            "another client's revocation changes nothing"
        );
        c.forget_client(ClientId(7));
        assert!(c.lookup("cred", 1_001, OUTAGE_GRACE_MS).is_none());
        assert_ne!(
            c.epoch.load(Ordering::SeqCst),
            epoch,
            "a lookup that started before is not cached"
        );
    }

    #[tokio::test]
    async fn revocation_through_the_admin_path_takes_effect_on_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_dir(dir.path()).await.unwrap();
        let token = store
            .create_enrollment_token("default", 1, i64::MAX, "admin")
            .await
            .unwrap();
        let e = store
            .redeem_enrollment_token(&token.secret, 1, None)
            .await
            .unwrap();
        let cache = CredentialCache::default();
        assert_eq!(
            cache
                .authenticate(&store, &e.credential)
                .await
                .unwrap()
                .client_id,
            e.client_id
        );
        store.revoke_client(e.client_id, "admin").await.unwrap();
        // What admin.rs does after the store has recorded the revocation.
        cache.forget_client(e.client_id);
        assert!(matches!(
            cache.authenticate(&store, &e.credential).await,
            Err(StoreError::ClientRevoked(_))
        ));
        assert!(matches!(
            cache.authenticate(&store, "flc_unknown").await,
            Err(StoreError::UnknownCredential)
        ));
    }
}
