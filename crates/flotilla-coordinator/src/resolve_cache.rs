//! What `ResolveModel` reads, cached: a registered model's row (production, canary) for at most
//! [`MODEL_TTL`], and the description (`ModelInfo`) of its served versions, which never changes
//! once registered.
//!
//! A fleet pulling the same model would otherwise read the store once per call; with the cache a
//! model's row is read at most once per [`MODEL_TTL`] (plus the concurrent misses of the moment
//! it expires). That is also the bound on how stale an answer can be: a promotion or rollback is
//! served from the first fetch that starts more than [`MODEL_TTL`] after it committed. At most
//! [`MAX_CACHED_MODELS`] models are held; beyond that the entry read longest ago is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flotilla_proto::v1;
use flotilla_store::RegisteredModel;

/// How long a model's row is served from memory.
pub(crate) const MODEL_TTL: Duration = Duration::from_secs(1);
/// Most models held.
pub(crate) const MAX_CACHED_MODELS: usize = 1024;
/// Most version descriptions held per model (production, canary and a few recent ones).
const MAX_INFOS_PER_MODEL: usize = 4;

/// One model's cached state.
#[derive(Debug, Clone)]
pub(crate) struct CachedModel {
    /// The row, as read at `read_at`.
    pub model: RegisteredModel,
    /// Descriptions of versions already built, by version.
    pub infos: Vec<(u64, Arc<v1::ModelInfo>)>,
    read_at: Instant,
}

impl CachedModel {
    /// The cached description of `version`.
    pub(crate) fn info(&self, version: u64) -> Option<Arc<v1::ModelInfo>> {
        self.infos
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, i)| Arc::clone(i))
    }
}

/// The cache (in `Shared`).
#[derive(Debug, Default)]
pub(crate) struct ResolveCache {
    models: Mutex<HashMap<String, CachedModel>>,
}

impl ResolveCache {
    /// The row of `name` when read less than [`MODEL_TTL`] before `now`, with its descriptions.
    pub(crate) fn fresh(&self, name: &str, now: Instant) -> Option<CachedModel> {
        let map = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(name)
            .filter(|c| now.saturating_duration_since(c.read_at) < MODEL_TTL)
            .cloned()
    }

    /// Descriptions kept for `name` (even when its row is stale: they never change).
    pub(crate) fn info(&self, name: &str, version: u64) -> Option<Arc<v1::ModelInfo>> {
        let map = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(name).and_then(|c| c.info(version))
    }

    /// Stores the row of a model read at `read_at`, with `infos` built for it (added to those
    /// already held, the newest kept), evicting the oldest read beyond [`MAX_CACHED_MODELS`].
    pub(crate) fn put(
        &self,
        model: RegisteredModel,
        infos: Vec<(u64, Arc<v1::ModelInfo>)>,
        read_at: Instant,
    ) {
        let mut map = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = infos;
        if let Some(old) = map.remove(&model.name) {
            for (v, i) in old.infos {
                if !all.iter().any(|(w, _)| *w == v) {
                    all.push((v, i));
                }
            }
        }
        all.truncate(MAX_INFOS_PER_MODEL);
        if map.len() >= MAX_CACHED_MODELS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, c)| c.read_at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            model.name.clone(),
            CachedModel {
                model,
                infos: all,
                read_at,
            },
        );
    }

    /// Forgets `name` (a change made by this process is then served at once).
    pub(crate) fn forget(&self, name: &str) {
        self.models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.models.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, production: u64) -> RegisteredModel {
        RegisteredModel {
            name: name.into(),
            tenant: "default".into(),
            gate: None,
            production: Some(production),
            canary: None,
            latest_version: production,
            created_by: "t".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn rows_expire_after_the_ttl_descriptions_stay_and_the_map_is_bounded() {
        let c = ResolveCache::default();
        let t0 = Instant::now();
        let info = Arc::new(v1::ModelInfo::default());
        c.put(model("a", 1), vec![(1, info.clone())], t0);
        assert_eq!(c.fresh("a", t0).unwrap().model.production, Some(1));
        assert!(c.fresh("a", t0 + MODEL_TTL).is_none());
        assert!(c.info("a", 1).is_some());
        // A later read keeps the earlier descriptions.
        c.put(model("a", 2), vec![(2, info.clone())], t0 + MODEL_TTL);
        let fresh = c.fresh("a", t0 + MODEL_TTL).unwrap();
        assert_eq!(fresh.model.production, Some(2));
        assert!(fresh.info(1).is_some() && fresh.info(2).is_some());
        c.forget("a");
        assert!(c.info("a", 1).is_none());
        for i in 0..MAX_CACHED_MODELS + 10 {
            c.put(
                model(&format!("m{i}"), 1),
                vec![],
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(c.len(), MAX_CACHED_MODELS);
        // The oldest reads went first.
        assert!(c.fresh("m0", t0).is_none());
        assert!(
            c.fresh(&format!("m{}", MAX_CACHED_MODELS + 9), t0)
                .is_some()
        );
    }
}
