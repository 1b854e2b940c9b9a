//! Admin endpoints that hand out a job's committed models (a child module of `admin`, whose state,
//! errors and id parsing it shares):
//!
//! * `GET /v1/jobs/{id}/model/info[?round=R]`: JSON description of round R's committed model
//!   (default: the latest committed round): tensor names and shapes from the job's layout, SHA-256,
//!   size, model kind.
//! * `GET /v1/jobs/{id}/model[?round=R]`: the model itself, `application/octet-stream`, raw
//!   little-endian `f32` in layout order, with the round, SHA-256 and layout in headers.
//!
//! Both work for running and finished jobs: committed models stay in the blob store.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use flotilla_core::ParamLayout;
use flotilla_store::{CommittedRound, JobId, JobRecord};

use super::{AdminState, ApiError, parse_id};
use crate::api::{ModelInfo, RoundMetrics, TensorInfo};
use crate::authz::{Action, Actor};
use crate::spec::JobSpec;

/// Response header: the round whose model the body is.
pub(crate) const ROUND_HEADER: &str = "x-flotilla-round";
/// Response header: hex SHA-256 of the body (the round's `model_sha256`).
pub(crate) const SHA256_HEADER: &str = "x-flotilla-model-sha256";
/// Response header: the layout, compact JSON `[["name",[d0,d1,…]],…]` in body order.
pub(crate) const LAYOUT_HEADER: &str = "x-flotilla-layout";

/// A committed model located: the job, its round, the layout and the SHA-256 of the bytes.
struct Located {
    job: JobRecord,
    spec: Option<JobSpec>,
    round: CommittedRound,
    sha256: String,
    layout: ParamLayout,
}

/// `round=R` from the query string; `None` when absent. Unknown parameters are refused so a typo
/// (`?rnd=3`) does not silently download the latest model.
fn parse_round(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut round = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "round" => {
                let r: u64 = v.parse().map_err(|_| {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "round: not a number: {:?}",
                            v.chars().take(32).collect::<String>()
                        ),
                    )
                })?;
                if r == 0 {
                    return Err(ApiError(
                        StatusCode::BAD_REQUEST,
                        "round: rounds are numbered from 1".into(),
                    ));
                }
                round = Some(r);
            }
            other => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter {:?} (only `round` is accepted)",
                        other.chars().take(32).collect::<String>()
                    ),
                ));
            }
        }
    }
    Ok(round)
}

async fn locate(
    st: &AdminState,
    actor: &Actor,
    id: &str,
    query: Option<&str>,
) -> Result<Located, ApiError> {
    let id = JobId(parse_id(id, "job id")?);
    let job = super::bounded(st.shared.store.get_job(id)).await?;
    super::allow(
        st,
        actor,
        Action::JobModelRead,
        Some(&job.tenant),
        &format!("job {id}"),
    )?;
    let wanted = parse_round(query)?;
    let history = super::bounded(st.shared.store.job_history(id)).await?;
    let round = match wanted {
        None => history.last().cloned().ok_or_else(|| {
            ApiError(StatusCode::NOT_FOUND, format!("job {id} has no committed round yet; its model can be downloaded once round 1 commits"))
        })?,
        Some(r) => history.iter().find(|c| c.round == r).cloned().ok_or_else(|| {
            let have = match (history.first(), history.last()) {
                (Some(a), Some(b)) => format!("committed rounds are {}..={}", a.round, b.round),
                _ => "no round is committed yet".to_owned(),
            };
            ApiError(StatusCode::NOT_FOUND, format!("job {id} has no committed round {r}; {have}"))
        })?,
    };
    let recorded = serde_json::from_value::<RoundMetrics>(round.metrics.clone())
        .ok()
        .and_then(|m| m.model_sha256);
    let sha256 = match recorded {
        Some(s) => s,
        // Blob keys are `job-<id>/v<version>-<sha256>.bin`: the same digest, for commits made
        // before the metrics carried it.
        None => round
            .model_blob_key
            .rsplit_once('-')
            .and_then(|(_, tail)| tail.strip_suffix(".bin"))
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("round {} of job {id} records no model SHA-256", round.round),
                )
            })?,
    };
    let spec: Option<JobSpec> = serde_json::from_value(job.spec.clone()).ok();
    let layout = match st.shared.job(&id.0.to_string()) {
        Some(rt) => rt.layout.clone(),
        None => layout_of(st, id, spec.clone()).await?,
    };
    Ok(Located {
        job,
        spec,
        round,
        sha256,
        layout,
    })
}

/// The layout of a job that is not running in this process: the one stored with it, or, for a
/// job stored before layouts were, the model provider's for its spec.
async fn layout_of(
    st: &AdminState,
    id: JobId,
    spec: Option<JobSpec>,
) -> Result<ParamLayout, ApiError> {
    if let Some(layout) = super::bounded(st.shared.store.job_layout(id)).await? {
        return Ok(layout);
    }
    let spec = spec.ok_or_else(|| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the stored spec of job {id} is unreadable"),
        )
    })?;
    let provided = st.shared.provide(&spec, true, false).await;
    match provided.map(|p| p.model) {
        Ok(Some(model)) => Ok(model.layout),
        Ok(None) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the model provider gave no layout for job {id}"),
        )),
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("job {id} has no stored layout and its model cannot be rebuilt: {e}"),
        )),
    }
}

fn tensors(layout: &ParamLayout) -> Vec<TensorInfo> {
    layout
        .offsets()
        .map(|(t, offset)| TensorInfo {
            name: t.name.clone(),
            shape: t.shape.clone(),
            offset,
            numel: t.numel(),
        })
        .collect()
}

/// `GET /v1/jobs/{id}/model/info[?round=R]`
pub(super) async fn model_info(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<ModelInfo>, ApiError> {
    let m = locate(&st, &actor, &id, q.as_deref()).await?;
    let numel = m.layout.len() as u64;
    Ok(Json(ModelInfo {
        job_id: m.job.id.0,
        name: m.job.name.clone(),
        state: m.job.state.as_str().to_owned(),
        round: m.round.round,
        attempt: m.round.attempt,
        model_version: m.round.model_version,
        committed_at_ms: m.round.committed_at_ms,
        rounds_completed: m.job.rounds_completed,
        model_sha256: m.sha256,
        dtype: "F32".to_owned(),
        byte_order: "little".to_owned(),
        num_params: numel,
        size_bytes: numel * 4,
        layout_fingerprint: m
            .layout
            .fingerprint()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        tensors: tensors(&m.layout),
        model: m.spec.map(|s| s.model),
    }))
}

/// `GET /v1/jobs/{id}/model[?round=R]`: the blob, checked against its SHA-256 by the store.
pub(super) async fn model_bytes(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let m = locate(&st, &actor, &id, q.as_deref()).await?;
    // One copy of the model in memory (the object store hands it out whole and the store verifies
    // its digest before anything is sent), moved into the body without another copy.
    let bytes = match st.shared.store.get_model(&m.round.model_blob_key).await {
        Err(e @ flotilla_store::StoreError::BlobNotFound(_)) => {
            // Gone on purpose (retention) is not a fault: say so, with `410 Gone`.
            let deleted = st
                .shared
                .store
                .blob_deleted_at(&m.round.model_blob_key)
                .await?;
            return Err(match deleted {
                Some(at) => ApiError(
                    StatusCode::GONE,
                    format!(
                        "the model of round {} of job {} was deleted by retention at {at} ms                          (Unix); its SHA-256 and metrics remain in the job's history",
                        m.round.round, m.job.id
                    ),
                ),
                None => e.into(),
            });
        }
        other => other?,
    };
    if bytes.len() != m.layout.len() * 4 {
        tracing::error!(
            job = m.job.id.0,
            round = m.round.round,
            bytes = bytes.len(),
            "stored model does not fit the job's layout"
        );
        return Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the stored model of round {} is {} bytes, the job's layout needs {}",
                m.round.round,
                bytes.len(),
                m.layout.len() * 4
            ),
        ));
    }
    let compact: Vec<(&str, &[usize])> = m
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
        // Tensor names are ASCII identifiers; a value a header cannot carry is left out rather
        // than failing the download (the info endpoint has everything).
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put(ROUND_HEADER, m.round.round.to_string());
    put(SHA256_HEADER, m.sha256.clone());
    put(
        LAYOUT_HEADER,
        serde_json::to_string(&compact).unwrap_or_default(),
    );
    put("x-flotilla-dtype", "F32 little-endian".to_owned());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_query_is_parsed_strictly() {
        assert_eq!(parse_round(None).ok(), Some(None));
        assert_eq!(parse_round(Some("")).ok(), Some(None));
        assert_eq!(parse_round(Some("round=3")).ok(), Some(Some(3)));
        assert!(parse_round(Some("round=0")).is_err());
        assert!(parse_round(Some("round=x")).is_err());
        assert!(parse_round(Some("rnd=3")).is_err());
    }
}
