//! `/v1/policies`: apply a Cedar policy file as the next version (validated first: `400` with line
//! and column), list the versions, show one. A child of `admin` (its error type and store calls).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use flotilla_store::PolicyVersionInfo;

use super::{AdminState, ApiError, ApiResult, bounded};
use crate::api::{PolicyVersionSummary, PolicyVersionText};
use crate::authz::{Action, Actor};
use crate::policy::InForce;

fn summary(info: &PolicyVersionInfo, current: bool) -> PolicyVersionSummary {
    PolicyVersionSummary {
        version: info.version,
        sha256: info.sha256.clone(),
        applied_by: info.applied_by.clone(),
        applied_at_ms: info.applied_at_ms,
        current,
    }
}

/// `POST /v1/policies`: the body is the Cedar text.
pub(super) async fn apply(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult<PolicyVersionText> {
    super::allow(&st, &actor, Action::PolicyApply, None, "policies")?;
    if body.len() > flotilla_policy::MAX_POLICY_BYTES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the policy file is {} bytes, at most {}",
                body.len(),
                flotilla_policy::MAX_POLICY_BYTES
            ),
        ));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "body: not UTF-8 text".into()))?;
    // Validated before anything is stored: a malformed policy never becomes a version.
    let set = flotilla_policy::validate(&text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let by = actor.audit_name();
    let info = bounded(st.shared.store.apply_policy(&text, &by)).await?;
    let policies = set.ids().to_vec();
    st.shared.policy.replace(InForce {
        version: Some(info.clone()),
        set,
    });
    tracing::info!(version = info.version, sha256 = %info.sha256, by = %by, "policy applied");
    Ok(Json(PolicyVersionText {
        summary: summary(&info, true),
        policies,
        text,
    }))
}

/// `GET /v1/policies`: the versions, newest first.
pub(super) async fn list(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Vec<PolicyVersionSummary>> {
    super::allow(&st, &actor, Action::PolicyRead, None, "policies")?;
    let versions = bounded(st.shared.store.policy_versions()).await?;
    let newest = versions.first().map(|v| v.version);
    Ok(Json(
        versions
            .iter()
            .map(|v| summary(v, Some(v.version) == newest))
            .collect(),
    ))
}

/// `GET /v1/policies/{version}`, or `current`.
pub(super) async fn show(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(which): Path<String>,
) -> ApiResult<PolicyVersionText> {
    super::allow(&st, &actor, Action::PolicyRead, None, "policies")?;
    let found = if which == "current" {
        bounded(st.shared.store.current_policy())
            .await?
            .ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    "no policy applied yet (the roles alone decide); apply one with `flotilla policy apply FILE`".into(),
                )
            })?
    } else {
        let v = super::parse_id(&which, "policy version")?;
        bounded(st.shared.store.policy(v)).await?.ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no policy version {v}; `flotilla policy list` shows them"),
            )
        })?
    };
    let newest = bounded(st.shared.store.current_policy())
        .await?
        .map(|p| p.info.version);
    // An old version written against an older schema may no longer validate: no ids then.
    let policies = flotilla_policy::validate(&found.text)
        .map(|s| s.ids().to_vec())
        .unwrap_or_default();
    Ok(Json(PolicyVersionText {
        summary: summary(&found.info, Some(found.info.version) == newest),
        policies,
        text: found.text,
    }))
}
