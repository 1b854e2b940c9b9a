//! Admin endpoints of retention, erasure and evidence (a child module of `admin`, whose state,
//! errors, authorization and id parsing it shares; the work is in `retention.rs` and
//! `evidence.rs`):
//!
//! * `POST /v1/retention/run` (`{"dry_run": true}`: the plan; otherwise deletes exactly the plan it
//!   computes and answers what went) — `Action::RetentionRun`, installation-wide;
//! * `POST /v1/clients/{id}/forget` (the right to erasure) — `Action::ClientForget` in the
//!   client's tenant;
//! * `GET /v1/jobs/{id}/evidence[?identities=true]` — `Action::EvidenceRead` in the job's tenant.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use flotilla_store::{AuditEvent, ClientId, JobId};

use super::{AdminState, ApiError, ApiResult, allow, bounded, parse_id};
use crate::api::evidence::EvidencePack;
use crate::api::retention::{ClientForgotten, RetentionReport, RetentionRunRequest};
use crate::authz::{Action, Actor};
use crate::evidence::EvidenceError;

/// Longest a retention run or an evidence pack may take before the request is answered `503`
/// (a run that has committed finishes its blob deletes in the background regardless).
const SLOW_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `POST /v1/retention/run`.
pub(super) async fn retention_run(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult<RetentionReport> {
    allow(&st, &actor, Action::RetentionRun, None, "retention")?;
    let req: RetentionRunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RetentionRunRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))?
    };
    // In a task of its own: a caller that disconnects must not stop a run between its commit and
    // the blob deletes.
    let (shared, name) = (st.shared.clone(), actor.audit_name());
    let run = tokio::spawn(async move { shared.retention_run(req.dry_run, &name).await });
    match tokio::time::timeout(SLOW_CALL_TIMEOUT, run).await {
        Ok(Ok(report)) => Ok(Json(report?)),
        Ok(Err(e)) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the retention run's task failed: {e}"),
        )),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the retention run took longer than {} s; it goes on in the background: run \
                 `flotilla retention run --dry-run` later to see what is left",
                SLOW_CALL_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// `POST /v1/clients/{id}/forget`.
pub(super) async fn forget_client(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<ClientForgotten> {
    let id = ClientId(parse_id(&id, "client id")?);
    // The client's tenant decides who may erase it (404 for a caller outside it).
    let client = bounded(st.shared.store.get_client(id)).await?;
    allow(
        &st,
        &actor,
        Action::ClientForget,
        Some(&client.tenant),
        &format!("client {id}"),
    )?;
    Ok(Json(
        bounded(st.shared.erase_client_record(id, &actor.audit_name())).await?,
    ))
}

/// `GET /v1/jobs/{id}/evidence[?identities=true]`. Generating a pack is audited (`job.evidence`):
/// it may name participants.
pub(super) async fn evidence(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<EvidencePack> {
    let id = JobId(parse_id(&id, "job id")?);
    let identities = parse_identities(query.as_deref())?;
    let job = bounded(st.shared.store.get_job(id)).await?;
    allow(
        &st,
        &actor,
        Action::EvidenceRead,
        Some(&job.tenant),
        &format!("job {id}"),
    )?;
    let name = actor.audit_name();
    let pack = tokio::time::timeout(
        SLOW_CALL_TIMEOUT,
        st.shared.evidence_pack(id, &name, identities),
    )
    .await
    .map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the evidence pack took longer than {} s; retry later",
                SLOW_CALL_TIMEOUT.as_secs()
            ),
        )
    })?
    .map_err(|e| match e {
        EvidenceError::Store(e) => ApiError::from(e),
        EvidenceError::Corrupt(m) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, m),
    })?;
    let ev = AuditEvent::new(name, "job.evidence", format!("job:{id}"))
        .tenant(job.tenant.clone())
        .details(serde_json::json!({ "identities": identities }));
    bounded(st.shared.store.audit(&ev)).await?;
    Ok(Json(pack))
}

/// `identities=true|false` from the query; anything else is refused (a typo must not silently
/// leave identities out, or in).
fn parse_identities(query: Option<&str>) -> Result<bool, ApiError> {
    let mut identities = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("identities", "true") => identities = true,
            ("identities", "false") => identities = false,
            _ => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter {:?} (only identities=true|false is accepted)",
                        pair.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
    }
    Ok(identities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_asked_for_exactly() {
        assert!(matches!(parse_identities(None), Ok(false)));
        assert!(matches!(
            parse_identities(Some("identities=true")),
            Ok(true)
        ));
        assert!(matches!(
            parse_identities(Some("identities=false")),
            Ok(false)
        ));
        for bad in ["identity=true", "identities=yes", "identities"] {
            let Err(ApiError(code, text)) = parse_identities(Some(bad)) else {
                panic!("{bad} accepted");
            };
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert!(text.contains("identities=true|false"), "{text}");
        }
    }
}
