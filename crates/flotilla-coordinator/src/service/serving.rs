//! Serving registered models to clients: `ResolveModel` (which version this client gets: production,
//! or the canary for the canary's share) and `DownloadModel` of a registry version.

use std::sync::Arc;

use flotilla_proto::v1;
use tonic::{Request, Response, Status};

use super::{Caller, ChunkStream, CoordinatorService};

impl CoordinatorService {
    /// `ResolveModel`.
    pub(super) async fn resolve_registry_model(
        &self,
        req: Request<v1::ResolveModelRequest>,
    ) -> Result<Response<v1::ResolvedModel>, Status> {
        let _caller = self.authenticate(&req).await?;
        Err(Status::unimplemented("ResolveModel is not implemented yet"))
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
