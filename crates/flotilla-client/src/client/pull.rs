//! Pulling a registered model for inference ([`Client::pull_model`]): which version this client
//! is served (`ResolveModel`: production, or the canary for a canary's share), then the resumable,
//! verified download of that version (`DownloadRequest.registry_model`).

use flotilla_core::ParamLayout;
use flotilla_proto::v1;
use flotilla_proto::{ModelReceiver, hex};
use tonic::Request;

use super::*;

/// A registered model's version as [`Client::pull_model`] received it, verified.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PulledModel {
    /// The model's name.
    pub name: String,
    /// The version this client is served.
    pub version: u64,
    /// Whether it is a canary version (this client is in a canary rollout's share).
    pub canary: bool,
    /// Tensor names and shapes; `params` is their concatenation in this order.
    pub layout: ParamLayout,
    /// The parameters, in layout order.
    pub params: Vec<f32>,
    /// Hex SHA-256 of the parameters as little-endian `f32` (the version's identity, checked).
    pub sha256: String,
    /// The model's architecture as the coordinator describes it (`kind` "custom" when only the
    /// layout is known).
    pub spec: Option<v1::ModelSpec>,
}

/// Most attempts at `ResolveModel` through transient failures.
const MAX_RESOLVE_ATTEMPTS: u32 = 8;

impl Client {
    /// Fetches the version of registered model `name` this client is served now: the production
    /// version, or the canary version when this client is in a canary rollout's share (stable per
    /// client and model). Enrolls first if no credential is stored (like [`Client::run`]; once
    /// more if the coordinator reports it expired and a token is configured). The download
    /// resumes after a broken stream and is checked against the version's layout and SHA-256.
    ///
    /// Each call asks again, so a rollback reaches the client on its next call (the coordinator
    /// reads the registry at most a second late).
    pub async fn pull_model(&mut self, name: &str) -> Result<PulledModel, ClientError> {
        let mut stats = ClientStats::default();
        let mut session = Session {
            client: self,
            stats: &mut stats,
            trainer: None,
            rpc: None,
            failures: 0,
            outage: OutageLog::new(OUTAGE_LOG_INTERVAL),
            fresh_credential: false,
            secagg: None,
        };
        match session.pull(name).await {
            Err(ClientError::CredentialExpired { message }) => {
                let has_token = session
                    .client
                    .config
                    .enrollment_token
                    .as_deref()
                    .is_some_and(|t| !t.is_empty());
                if !has_token || session.fresh_credential {
                    return Err(ClientError::CredentialExpired { message });
                }
                session.discard_credential()?;
                session.pull(name).await
            }
            other => other,
        }
    }
}

impl Session<'_> {
    async fn pull(&mut self, name: &str) -> Result<PulledModel, ClientError> {
        let bearer = self.ensure_enrolled().await?;
        let unavailable = |message: String| ClientError::ModelUnavailable {
            name: name.to_owned(),
            message,
        };
        let resolved = {
            let mut attempts = 0;
            loop {
                let mut req = Request::new(v1::ResolveModelRequest {
                    name: name.to_owned(),
                });
                req.set_timeout(UNARY_TIMEOUT);
                let mut rpc = self.rpc(&bearer);
                match rpc.resolve_model(req).await {
                    Ok(r) => {
                        self.succeeded();
                        self.fresh_credential = false;
                        break r.into_inner();
                    }
                    Err(status) => match self.classify(&status) {
                        Failure::Fatal(e) => return Err(e),
                        Failure::Transient if attempts < MAX_RESOLVE_ATTEMPTS => {
                            attempts += 1;
                            self.back_off("ResolveModel", &status).await;
                        }
                        Failure::Transient | Failure::Refused => {
                            return Err(unavailable(status_text(&status)));
                        }
                    },
                }
            }
        };
        let info = resolved
            .model
            .ok_or_else(|| unavailable("the coordinator described no model".into()))?;
        let receiver = ModelReceiver::new(&info, MAX_MODEL_BYTES)
            .map_err(|e| unavailable(format!("unusable model description: {e}")))?;
        if receiver.layout().fingerprint().as_slice() != info.layout_fingerprint.as_slice() {
            return Err(unavailable(
                "the model's layout does not match its fingerprint".into(),
            ));
        }
        let layout = receiver.layout().clone();
        tracing::info!(model = %name.escape_debug(), version = resolved.version, canary = resolved.canary, bytes = info.size_bytes, "pulling model");
        let req = v1::DownloadRequest {
            registry_model: Some(v1::RegistryModelRef {
                name: name.to_owned(),
                version: resolved.version,
            }),
            ..Default::default()
        };
        match self.download_request(&bearer, req, receiver, None).await? {
            Done::Ok(params) => Ok(PulledModel {
                name: name.to_owned(),
                version: resolved.version,
                canary: resolved.canary,
                layout,
                params,
                sha256: hex(&info.sha256),
                spec: info.spec,
            }),
            Done::Abandoned | Done::Outdated => Err(unavailable(format!(
                "the download of version {} kept failing or was refused (see the log)",
                resolved.version
            ))),
        }
    }
}
