//! The model registry's admin endpoints (a child module of `admin`, whose state, errors and
//! authorization it shares):
//!
//! * `GET /v1/models`, `POST /v1/models` `{job_id, round?, name}` (→ `201`);
//! * `GET /v1/models/{name}`; `PUT /v1/models/{name}/gate`;
//! * `GET /v1/models/{name}/versions/{version}`, `…/artifact` (the parameters, raw little-endian
//!   `f32`, headers as `GET /v1/jobs/{id}/model`), `POST …/promote`;
//! * `POST /v1/models/{name}/rollback`.
//!
//! A model of a tenant where the caller holds no role answers `404`, exactly like an unknown one.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use flotilla_registry::{Gate, ModelName, Stage};
use flotilla_store::{EvalSubject, JobId, ModelVersion, RegisteredModel, StoredEvaluation};

use super::{AdminState, ApiError, ApiResult, allow, bounded, parse_id};
use crate::api::{
    CanaryInfo, GateRefusal, ModelDetail, ModelVersionInfo, PromoteRequest, PromoteResult,
    RegisterRequest, RegisteredModelInfo, RollbackRequest, RolledBack, TensorInfo, VersionDetail,
    VersionEvaluation,
};
use crate::authz::{Action, Actor};
use crate::registry::RegistryError;

/// Response header of `…/artifact`: the version number.
pub(crate) const VERSION_HEADER: &str = "x-flotilla-model-version";

/// Evaluations shown with a version.
const EVALUATIONS_SHOWN: u32 = 20;

/// Largest JSON body of these endpoints.
const MAX_BODY_BYTES: usize = 64 << 10;

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            RegistryError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            RegistryError::GateRefused { message, .. } => ApiError(StatusCode::CONFLICT, message),
            RegistryError::Store(e) => e.into(),
        }
    }
}

fn body<T: serde::de::DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.len() > MAX_BODY_BYTES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: larger than {} KiB", MAX_BODY_BYTES >> 10),
        ));
    }
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

fn model_name(s: &str) -> Result<ModelName, ApiError> {
    ModelName::new(s).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

/// The model `name`, if the caller may do `action` in its tenant (else `404`, as if unknown).
async fn model_for(
    st: &AdminState,
    actor: &Actor,
    action: Action,
    name: &str,
) -> Result<RegisteredModel, ApiError> {
    let name = model_name(name)?;
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("model {name} not found"));
    let m = bounded(st.shared.store.registered_model(name.as_str()))
        .await?
        .ok_or_else(not_found)?;
    allow(st, actor, action, Some(&m.tenant), &format!("model {name}"))?;
    Ok(m)
}

async fn version_of(
    st: &AdminState,
    m: &RegisteredModel,
    v: &str,
) -> Result<ModelVersion, ApiError> {
    let n = parse_id(v, "version")?;
    bounded(st.shared.store.model_version(&m.name, n))
        .await?
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "model {}@{n} not found (versions are 1..={})",
                    m.name, m.latest_version
                ),
            )
        })
}

fn model_info(m: &RegisteredModel) -> RegisteredModelInfo {
    RegisteredModelInfo {
        name: m.name.clone(),
        tenant: m.tenant.clone(),
        gate: m.gate.clone(),
        production: m.production,
        canary: m.canary.map(|c| CanaryInfo {
            version: c.version,
            percent: c.percent,
        }),
        latest_version: m.latest_version,
        created_by: m.created_by.clone(),
        created_at_ms: m.created_at_ms,
        updated_at_ms: m.updated_at_ms,
    }
}

fn version_info(v: &ModelVersion) -> ModelVersionInfo {
    ModelVersionInfo {
        name: v.name.clone(),
        version: v.version,
        stage: v.stage,
        job_id: v.job_id.0,
        round: v.round,
        model_sha256: v.model_sha256.clone(),
        num_params: v.layout.len() as u64,
        tensors: v
            .layout
            .offsets()
            .map(|(t, offset)| TensorInfo {
                name: t.name.clone(),
                shape: t.shape.clone(),
                offset,
                numel: t.numel(),
            })
            .collect(),
        lineage: v.lineage.clone(),
        gate_report: v.gate_report.clone(),
        registered_by: v.registered_by.clone(),
        created_at_ms: v.created_at_ms,
        stage_changed_at_ms: v.stage_changed_at_ms,
    }
}

fn evaluation_view(e: StoredEvaluation) -> VersionEvaluation {
    VersionEvaluation {
        id: e.id,
        subject: match &e.subject {
            EvalSubject::Version { name, version } => format!("{name}@{version}"),
            EvalSubject::Round { job_id, round } => format!("job {job_id} round {round}"),
        },
        kind: e.kind.as_str().to_owned(),
        requested_clients: e.requested_clients,
        summary: e.summary,
        started_at_ms: e.started_at_ms,
        finished_at_ms: e.finished_at_ms,
    }
}

/// `GET /v1/models`: the models of the tenants where the caller may read models.
pub(super) async fn list(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Vec<RegisteredModelInfo>> {
    allow(&st, &actor, Action::ModelRead, None, "models")?;
    let visible = actor.tenants_for(Action::ModelRead);
    let models = bounded(st.shared.store.registered_models(visible.as_deref())).await?;
    Ok(Json(models.iter().map(model_info).collect()))
}

/// `POST /v1/models`: registers a job's committed model (`201` with the version).
pub(super) async fn register(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    b: Bytes,
) -> Result<(StatusCode, Json<ModelVersionInfo>), ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "body: expected {\"job_id\": N, \"name\": \"NAME\"} (and \"round\": R)".into(),
        ));
    }
    let req: RegisterRequest = serde_json::from_slice(&b)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let name = model_name(&req.name)?;
    if req.round == Some(0) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "round: rounds are numbered from 1".into(),
        ));
    }
    let id = JobId(req.job_id);
    let job = bounded(st.shared.store.get_job(id)).await?;
    allow(
        &st,
        &actor,
        Action::ModelRegister,
        Some(&job.tenant),
        &format!("job {id}"),
    )?;
    let v = st
        .shared
        .register_model(&actor.audit_name(), id, req.round, &name)
        .await?;
    Ok((StatusCode::CREATED, Json(version_info(&v))))
}

/// `GET /v1/models/{name}`.
pub(super) async fn show(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<ModelDetail> {
    let m = model_for(&st, &actor, Action::ModelRead, &name).await?;
    let versions = bounded(st.shared.store.model_versions(&m.name)).await?;
    Ok(Json(ModelDetail {
        model: model_info(&m),
        versions: versions.iter().map(version_info).collect(),
    }))
}

/// `GET /v1/models/{name}/versions/{version}`.
pub(super) async fn show_version(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<VersionDetail> {
    let m = model_for(&st, &actor, Action::ModelRead, &name).await?;
    let v = version_of(&st, &m, &version).await?;
    let own = EvalSubject::Version {
        name: v.name.clone(),
        version: v.version,
    };
    let mut evals = bounded(st.shared.store.evaluations(&own, EVALUATIONS_SHOWN)).await?;
    if evals.is_empty() {
        let round = EvalSubject::Round {
            job_id: v.job_id,
            round: v.round,
        };
        evals = bounded(st.shared.store.evaluations(&round, EVALUATIONS_SHOWN)).await?;
    }
    Ok(Json(VersionDetail {
        version: version_info(&v),
        production: m.production,
        evaluations: evals.into_iter().map(evaluation_view).collect(),
    }))
}

/// `GET /v1/models/{name}/versions/{version}/artifact`: the parameters, raw little-endian `f32` in
/// layout order, checked against the version's SHA-256 before a byte is sent.
pub(super) async fn artifact(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let m = model_for(&st, &actor, Action::ModelRead, &name).await?;
    let v = version_of(&st, &m, &version).await?;
    let bytes = st.shared.store.model_version_bytes(&v).await?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if digest != v.model_sha256 || bytes.len() != v.layout.len() * 4 {
        tracing::error!(model = %v.name, version = v.version, "registered artifact does not match its SHA-256 or layout");
        return Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the stored artifact of {}@{} does not match its SHA-256 or layout",
                v.name, v.version
            ),
        ));
    }
    let compact: Vec<(&str, &[usize])> = v
        .layout
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put(super::model::SHA256_HEADER, v.model_sha256.clone());
    put(
        super::model::LAYOUT_HEADER,
        serde_json::to_string(&compact).unwrap_or_default(),
    );
    put(VERSION_HEADER, v.version.to_string());
    put("x-flotilla-dtype", "F32 little-endian".to_owned());
    Ok(resp)
}

/// `PUT /v1/models/{name}/gate`: replaces the model's release gate.
pub(super) async fn set_gate(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<RegisteredModelInfo> {
    let m = model_for(&st, &actor, Action::ModelPromote, &name).await?;
    let gate: Gate = body(&b)?;
    gate.validate()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("gate: {e}")))?;
    bounded(
        st.shared
            .store
            .set_model_gate(&m.name, &gate, &actor.audit_name()),
    )
    .await?;
    let m = bounded(st.shared.store.registered_model(&m.name))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("model {} not found", m.name)))?;
    Ok(Json(model_info(&m)))
}

/// `POST /v1/models/{name}/versions/{version}/promote`: through the release gate; a refusal is
/// `409` with the one-line reason and the gate report.
pub(super) async fn promote(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path((name, version)): Path<(String, String)>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let m = model_for(&st, &actor, Action::ModelPromote, &name).await?;
    let v = version_of(&st, &m, &version).await?;
    let req: PromoteRequest = body(&b)?;
    let stage = req.stage.unwrap_or(Stage::Production);
    if let Some(p) = req.canary_percent
        && !(1..=99).contains(&p)
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "canary_percent: a canary serves 1 to 99 % of clients (promote without it for all)"
                .into(),
        ));
    }
    match st
        .shared
        .promote_model(
            &actor.audit_name(),
            &m.name,
            v.version,
            stage,
            req.canary_percent,
        )
        .await
    {
        Ok(p) => Ok(Json(PromoteResult {
            version: version_info(&p.version),
            canary_percent: p.canary_percent,
            gate_report: p.gate_report,
        })
        .into_response()),
        Err(RegistryError::GateRefused { message, report }) => Ok((
            StatusCode::CONFLICT,
            Json(GateRefusal {
                error: message.replace('\n', " "),
                gate_report: report,
            }),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// `POST /v1/models/{name}/rollback`.
pub(super) async fn rollback(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<RolledBack> {
    let m = model_for(&st, &actor, Action::ModelPromote, &name).await?;
    let req: RollbackRequest = body(&b)?;
    let reason = req.reason.unwrap_or_default();
    if reason.chars().count() > 512 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "reason: at most 512 characters".into(),
        ));
    }
    let r = st
        .shared
        .rollback_registry_model(&actor.audit_name(), &m.name, &reason)
        .await?;
    Ok(Json(RolledBack {
        name: m.name,
        from: r.from,
        to: r.to,
        ended_canary: r.ended_canary,
    }))
}
