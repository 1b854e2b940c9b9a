//! Who is calling the admin API: a bearer token resolved to the bootstrap admin
//! (`FLOTILLA_ADMIN_TOKEN`), a principal (its `flt_pat_…` token, looked up by SHA-256) or, with
//! OIDC configured, the subject of a JWT from the configured issuer (`oidc`).
//!
//! Principal lookups are cached briefly so an authenticated request does not cost a database
//! query, like client credentials (`auth_cache`), with these rules:
//! - only live principals are cached; unknown and revoked tokens always go to the store;
//! - an entry serves for at most [`PRINCIPAL_CACHE_TTL_MS`] (5 s): a revocation or a role change
//!   made by another coordinator on the same database is seen within that time;
//! - a revocation through this coordinator empties the cache ([`PrincipalCache::forget_all`])
//!   after the store has recorded it, and a lookup that started before it is not cached after it
//!   (an epoch), so the revoked token's very next request is refused;
//! - at most [`PRINCIPAL_CACHE_MAX`] entries; when full the cache is emptied and refilled.
//!
//! Entries are keyed by the token's SHA-256, so the cache holds no token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_store::{ALL_TENANTS, PRINCIPAL_TOKEN_PREFIX, PrincipalRecord, Store, StoreError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::authz::{ANY_TENANT, Actor, ActorId, Role};
use crate::clock::now_ms;

/// How long a principal lookup is trusted without asking the store again, milliseconds.
pub(crate) const PRINCIPAL_CACHE_TTL_MS: u64 = 5_000;
/// Most principals cached at once.
pub(crate) const PRINCIPAL_CACHE_MAX: usize = 4096;

/// What a principal token amounts to.
#[derive(Debug, Clone)]
pub(crate) enum PrincipalLookup {
    /// A live principal.
    Live(PrincipalRecord),
    /// The token of a revoked principal (its name).
    Revoked(String),
    /// No principal has this token.
    Unknown,
}

struct Entry {
    principal: PrincipalRecord,
    cached_at_ms: u64,
}

/// Recent successful principal lookups (see the module docs).
#[derive(Default)]
pub(crate) struct PrincipalCache {
    map: Mutex<HashMap<[u8; 32], Entry>>,
    epoch: AtomicU64,
}

/// Whether a bearer token looks like a principal token (the store is asked only for those).
pub(crate) fn is_principal_token(token: &str) -> bool {
    token.starts_with(PRINCIPAL_TOKEN_PREFIX)
}

/// The actor a live principal calls as: its roles per tenant (`*` is every tenant).
pub(crate) fn principal_actor(p: &PrincipalRecord) -> Actor {
    Actor {
        id: ActorId::Principal(p.name.clone()),
        roles: p
            .roles
            .iter()
            .filter_map(|g| {
                let tenant = if g.tenant == ALL_TENANTS {
                    ANY_TENANT.to_owned()
                } else {
                    g.tenant.clone()
                };
                Role::parse(&g.role).map(|r| (tenant, r))
            })
            .collect(),
    }
}

/// What a bearer token amounts to.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// A known, live caller.
    Actor(Actor),
    /// Refused (`401`): why, on one line.
    Refused(String),
    /// The store could not be asked (`503`).
    Unavailable(StoreError),
}

/// Resolves a bearer token: the bootstrap admin token (compared in constant time), else a
/// principal's token. A revoked principal's token is refused naming the revocation.
pub(crate) async fn resolve(
    store: &Store,
    cache: &PrincipalCache,
    bootstrap: &str,
    token: &str,
) -> Resolved {
    if bool::from(token.as_bytes().ct_eq(bootstrap.as_bytes())) {
        return Resolved::Actor(Actor::bootstrap());
    }
    if !is_principal_token(token) {
        return Resolved::Refused(
            "missing or wrong token (authorization: Bearer <FLOTILLA_ADMIN_TOKEN or a principal's \
             token>)"
                .into(),
        );
    }
    match cache.lookup(store, token).await {
        Ok(PrincipalLookup::Live(p)) => Resolved::Actor(principal_actor(&p)),
        Ok(PrincipalLookup::Revoked(name)) => Resolved::Refused(format!(
            "the token of principal {name} was revoked; ask an admin for a new principal"
        )),
        Ok(PrincipalLookup::Unknown) => Resolved::Refused(
            "unknown principal token (it may have been mistyped); ask an admin for a token".into(),
        ),
        Err(e) => Resolved::Unavailable(e),
    }
}

impl PrincipalCache {
    /// The principal `token` belongs to: from the cache while its entry is fresh, else from the
    /// store (whose errors are returned).
    pub(crate) async fn lookup(
        &self,
        store: &Store,
        token: &str,
    ) -> Result<PrincipalLookup, StoreError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_ms();
        {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map.get(&key)
                && now.saturating_sub(e.cached_at_ms) < PRINCIPAL_CACHE_TTL_MS
            {
                return Ok(PrincipalLookup::Live(e.principal.clone()));
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let Some(p) = store.principal_by_token(token).await? else {
            return Ok(PrincipalLookup::Unknown);
        };
        if p.revoked {
            return Ok(PrincipalLookup::Revoked(p.name));
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::SeqCst) == epoch {
            if map.len() >= PRINCIPAL_CACHE_MAX {
                map.clear();
            }
            map.insert(
                key,
                Entry {
                    principal: p.clone(),
                    cached_at_ms: now,
                },
            );
        }
        Ok(PrincipalLookup::Live(p))
    }

    /// Forgets every cached principal (after a revocation was stored).
    pub(crate) fn forget_all(&self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        map.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::{PrincipalKind, RoleGrant};

    #[tokio::test]
    async fn revocation_is_seen_at_once_and_only_live_principals_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_dir(dir.path()).await.unwrap();
        let grant = RoleGrant {
            tenant: "t".into(),
            role: "viewer".into(),
        };
        let new = store
            .create_principal("alice", PrincipalKind::Person, &[grant], "test")
            .await
            .unwrap();
        let cache = PrincipalCache::default();
        assert!(matches!(
            cache.lookup(&store, &new.token).await.unwrap(),
            PrincipalLookup::Live(p) if p.name == "alice"
        ));
        assert_eq!(cache.len(), 1);
        assert!(matches!(
            cache.lookup(&store, "flt_pat_nope").await.unwrap(),
            PrincipalLookup::Unknown
        ));
        assert_eq!(cache.len(), 1, "unknown tokens are not cached");
        store.revoke_principal("alice", "test").await.unwrap();
        cache.forget_all();
        assert!(matches!(
            cache.lookup(&store, &new.token).await.unwrap(),
            PrincipalLookup::Revoked(n) if n == "alice"
        ));
        assert_eq!(cache.len(), 0, "revoked principals are not cached");
    }
}
