//! Serving registered models to clients: `ResolveModel` (which version this client gets: production,
//! or the canary for the canary's share) and `DownloadModel` of a registry version.

use std::sync::Arc;
use std::time::Instant;

use flotilla_proto::v1;
use tonic::{Request, Response, Status};

use super::{Caller, ChunkStream, CoordinatorService};
use crate::resolve_cache::CachedModel;

impl CoordinatorService {
    /// `ResolveModel`: the canary version when this client is in the canary's share
    /// ([`flotilla_registry::in_canary`] of its id and the model's name), else production. The
    /// model's row comes from [`crate::resolve_cache`] (read at most once a second per model), so
    /// a rollback reaches every client on its first fetch after that second.
    pub(super) async fn resolve_registry_model(
        &self,
        req: Request<v1::ResolveModelRequest>,
    ) -> Result<Response<v1::ResolvedModel>, Status> {
        let caller = self.authenticate(&req).await?;
        let name = flotilla_registry::ModelName::new(&req.get_ref().name)
            .map_err(|e| self.refuse("invalid_resolve", Status::invalid_argument(e.to_string())))?;
        let cached = self.cached_model(name.as_str()).await?;
        let model = cached
            .as_ref()
            .map(|c| &c.model)
            .filter(|m| m.tenant == caller.tenant)
            .ok_or_else(|| {
                self.refuse(
                    "unknown_model",
                    Status::not_found(format!(
                        "no model {name} in this tenant; check the name with `flotilla model list`"
                    )),
                )
            })?;
        let canary = model
            .canary
            .filter(|c| flotilla_registry::in_canary(caller.id.0, name.as_str(), c.percent));
        let (version, in_canary) = match (canary, model.production) {
            (Some(c), _) => (c.version, true),
            (None, Some(p)) => (p, false),
            (None, None) => {
                return Err(self.refuse(
                    "no_production_model",
                    Status::not_found(format!(
                        "{name} has no production version yet; promote one with `flotilla model promote {name}@VERSION --full`"
                    )),
                ));
            }
        };
        let info = match cached.as_ref().and_then(|c| c.info(version)) {
            Some(i) => i,
            None => self.version_info(name.as_str(), version).await?,
        };
        Ok(Response::new(v1::ResolvedModel {
            name: name.to_string(),
            version,
            model: Some((*info).clone()),
            canary: in_canary,
            stage: if in_canary { "canary" } else { "production" }.into(),
        }))
    }

    /// The row of `name` (and the descriptions of its production and canary versions), from the
    /// cache when read less than a second ago, else from the store (and then cached).
    async fn cached_model(&self, name: &str) -> Result<Option<CachedModel>, Status> {
        let cache = &self.shared.resolve_cache;
        let now = Instant::now();
        if let Some(c) = cache.fresh(name, now) {
            return Ok(Some(c));
        }
        let Some(model) = self
            .shared
            .store
            .registered_model(name)
            .await
            .map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))?
        else {
            cache.forget(name);
            return Ok(None);
        };
        let mut infos = Vec::new();
        for v in model
            .production
            .into_iter()
            .chain(model.canary.map(|c| c.version))
        {
            let info = match cache.info(name, v) {
                Some(i) => i,
                None => self.version_info(name, v).await?,
            };
            infos.push((v, info));
        }
        cache.put(model, infos, now);
        Ok(cache.fresh(name, now))
    }

    /// Describes `name@version`: size, layout and its fingerprint, SHA-256, and the model spec
    /// of the job that trained it (kind `custom` if that job's spec is unreadable).
    async fn version_info(&self, name: &str, version: u64) -> Result<Arc<v1::ModelInfo>, Status> {
        let store = &self.shared.store;
        let unavailable = |e: flotilla_store::StoreError| {
            Status::unavailable(format!("the store is unavailable: {e}"))
        };
        let v = store
            .model_version(name, version)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::not_found(format!("no model {name}@{version}; try again")))?;
        let sha256 = hex::decode(&v.model_sha256)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                Status::internal(format!(
                    "{name}@{version} has a malformed SHA-256 in the store"
                ))
            })?;
        let spec = match store.get_job(v.job_id).await {
            Ok(job) => serde_json::from_value::<crate::spec::JobSpec>(job.spec)
                .ok()
                .map(|s| s.proto_model_spec()),
            // Job retention may have removed the job: the version's layout still says it all.
            Err(flotilla_store::StoreError::JobNotFound(_)) => None,
            Err(e) => return Err(unavailable(e)),
        }
        .unwrap_or_else(|| v1::ModelSpec {
            kind: crate::spec::CUSTOM_KIND.into(),
            ..Default::default()
        });
        Ok(Arc::new(v1::ModelInfo {
            size_bytes: 4 * v.layout.len() as u64,
            layout: Some(flotilla_proto::layout_to_proto(&v.layout)),
            sha256,
            layout_fingerprint: v.layout.fingerprint().to_vec(),
            spec: Some(spec),
        }))
    }

    /// `DownloadModel` of `NAME@VERSION` from the registry: only a model of the caller's tenant
    /// (another tenant's is NOT_FOUND, as if it did not exist); the bytes are checked against the
    /// version's SHA-256 by the store before a byte is sent.
    pub(super) async fn registry_download(
        &self,
        caller: &Caller,
        r: &v1::RegistryModelRef,
        offset: u64,
    ) -> Result<Response<ChunkStream>, Status> {
        let name = flotilla_registry::ModelName::new(&r.name).map_err(|e| {
            self.refuse("invalid_download", Status::invalid_argument(e.to_string()))
        })?;
        let not_found = || {
            self.refuse(
                "unknown_model_version",
                Status::not_found(format!("no model {name}@{} in this tenant", r.version)),
            )
        };
        let model = self
            .shared
            .store
            .registered_model(name.as_str())
            .await
            .map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))?
            .filter(|m| m.tenant == caller.tenant)
            .ok_or_else(not_found)?;
        let version = self
            .shared
            .store
            .model_version(&model.name, r.version)
            .await
            .map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))?
            .ok_or_else(not_found)?;
        let bytes = self
            .shared
            .store
            .model_version_bytes(&version)
            .await
            .map_err(|e| Status::unavailable(format!("the model's blob is unavailable: {e}")))?;
        let params: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        self.stream_params(Arc::new(params), offset)
    }
}
