//! The governance endpoints of the admin API: principals (`/v1/principals`), tenant settings
//! (`/v1/tenants/{tenant}`) and job approval (`/v1/jobs/{id}/approve`, `/reject`). A child of
//! `admin` (its `ApiError`, `bounded` and state).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use flotilla_store::{
    ALL_TENANTS, ApprovalState, JobApproval, JobId, JobState, PrincipalKind, PrincipalRecord,
    RoleGrant, TenantSettings,
};

use super::{AdminState, ApiError, ApiResult, allow, bounded, parse_id};
use crate::api::{
    ApprovalInfo, JobDecided, PrincipalCreated, PrincipalInfo, PrincipalRequest, RejectRequest,
    RoleBinding, TenantSettingsInfo, TenantSettingsRequest,
};
use crate::authz::{Action, Actor};

/// A JSON body, or an empty one as the default.
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

fn info(p: &PrincipalRecord) -> PrincipalInfo {
    PrincipalInfo {
        name: p.name.clone(),
        kind: p.kind.as_str().to_owned(),
        roles: p
            .roles
            .iter()
            .map(|g| RoleBinding {
                tenant: g.tenant.clone(),
                role: g.role.clone(),
            })
            .collect(),
        created_by: p.created_by.clone(),
        created_at_ms: p.created_at_ms,
        revoked: p.revoked,
        revoked_at_ms: p.revoked_at_ms,
    }
}

/// `POST /v1/principals` (admins): a new principal and its token, shown once.
pub(super) async fn create_principal(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult<PrincipalCreated> {
    allow(&st, &actor, Action::PrincipalManage, None, "principals")?;
    let req: PrincipalRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let kind = match req.kind.as_deref().unwrap_or("person") {
        "person" => PrincipalKind::Person,
        "service" => PrincipalKind::Service,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "kind: {:?} is not person or service",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
    };
    let mut roles = Vec::with_capacity(req.roles.len());
    for b in req.roles {
        // `admin` is installation-wide whatever tenant was named; no other role is.
        let tenant = if b.role == "admin" {
            ALL_TENANTS.to_owned()
        } else if b.tenant == ALL_TENANTS {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "roles: {} cannot be granted in every tenant (*); name a tenant",
                    b.role.chars().take(32).collect::<String>()
                ),
            ));
        } else {
            b.tenant
        };
        roles.push(RoleGrant {
            tenant,
            role: b.role,
        });
    }
    let new = bounded(st.shared.store.create_principal(
        &req.name,
        kind,
        &roles,
        &actor.audit_name(),
    ))
    .await?;
    tracing::info!(principal = %new.principal.name, by = %actor.audit_name(), "principal created");
    Ok(Json(PrincipalCreated {
        principal: info(&new.principal),
        token: new.token,
    }))
}

/// `GET /v1/principals` (admins).
pub(super) async fn list_principals(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Vec<PrincipalInfo>> {
    allow(&st, &actor, Action::PrincipalRead, None, "principals")?;
    let mut list = bounded(st.shared.store.list_principals()).await?;
    // A non-admin (an auditor) sees the principals holding a role in its tenants.
    if let Some(visible) = actor.tenants_for(Action::PrincipalRead) {
        list.retain(|p| p.roles.iter().any(|g| visible.contains(&g.tenant)));
    }
    Ok(Json(list.iter().map(info).collect()))
}

/// `POST /v1/principals/{name}/revoke` (admins): its token is refused from the next request on.
pub(super) async fn revoke_principal(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<PrincipalInfo> {
    allow(&st, &actor, Action::PrincipalManage, None, "principals")?;
    let p = bounded(st.shared.store.revoke_principal(&name, &actor.audit_name())).await?;
    // After the store has it, so a lookup racing with this cannot cache the principal as valid.
    st.shared.principals.forget_all();
    st.console
        .end_sessions_of(&crate::authz::ActorId::Principal(p.name.clone()));
    tracing::info!(principal = %p.name, by = %actor.audit_name(), "principal revoked");
    Ok(Json(info(&p)))
}

fn settings_info(s: TenantSettings) -> TenantSettingsInfo {
    TenantSettingsInfo {
        tenant: s.tenant,
        require_approval: s.require_approval,
        updated_by: s.updated_by,
        updated_at_ms: s.updated_at_ms,
    }
}

fn check_tenant_path(tenant: &str) -> Result<(), ApiError> {
    flotilla_core::names::check_tenant(tenant)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `PUT /v1/tenants/{tenant}` (admins): `{"require_approval": true}`.
pub(super) async fn put_tenant(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<TenantSettingsInfo> {
    check_tenant_path(&tenant)?;
    allow(
        &st,
        &actor,
        Action::TenantConfigure,
        Some(&tenant),
        &format!("tenant {tenant}"),
    )?;
    let req: TenantSettingsRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let s = bounded(st.shared.store.set_tenant_settings(
        &tenant,
        req.require_approval,
        &actor.audit_name(),
    ))
    .await?;
    tracing::info!(tenant = %tenant, require_approval = req.require_approval, "tenant settings changed");
    Ok(Json(settings_info(s)))
}

/// `GET /v1/tenants/{tenant}` (anyone with a role in the tenant).
pub(super) async fn get_tenant(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> ApiResult<TenantSettingsInfo> {
    check_tenant_path(&tenant)?;
    // Anyone with a role in the tenant may read its settings (every role reads jobs).
    allow(
        &st,
        &actor,
        Action::JobRead,
        Some(&tenant),
        &format!("tenant {tenant}"),
    )?;
    Ok(Json(settings_info(
        bounded(st.shared.store.tenant_settings(&tenant)).await?,
    )))
}

/// The approval part of a job's status.
pub(super) fn approval_info(a: &JobApproval) -> ApprovalInfo {
    ApprovalInfo {
        submitted_by: a.submitted_by.clone(),
        state: a.state.map(|s| s.as_str().to_owned()),
        by: a.by.clone(),
        at_ms: a.at_ms,
        reason: a.reason.clone(),
    }
}

/// The state a job is shown in: `pending_approval` while it waits, `rejected` once rejected.
pub(super) fn shown_state(state: JobState, approval: Option<&JobApproval>) -> String {
    match (state, approval.and_then(|a| a.state)) {
        (JobState::Pending, Some(ApprovalState::Pending)) => "pending_approval".to_owned(),
        (JobState::Cancelled, Some(ApprovalState::Rejected)) => "rejected".to_owned(),
        (s, _) => s.as_str().to_owned(),
    }
}

/// The job `id` if the actor may see it (`404` as if it did not exist otherwise) and may do
/// `action` on it (`403`).
async fn job_for(
    st: &AdminState,
    actor: &Actor,
    id: &str,
    action: Action,
) -> Result<flotilla_store::JobRecord, ApiError> {
    let id = JobId(parse_id(id, "job id")?);
    let job = bounded(st.shared.store.get_job(id)).await?;
    allow(st, actor, action, Some(&job.tenant), &format!("job {id}"))?;
    Ok(job)
}

/// `403` if `by` submitted the job (four eyes: its submitter neither approves nor rejects it).
async fn four_eyes(st: &AdminState, job: JobId, by: &str) -> Result<(), ApiError> {
    let current = bounded(st.shared.store.job_approval(job)).await?;
    if current.submitted_by.as_deref() == Some(by) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "job {job} was submitted by {by}: its submitter cannot approve or reject it (four \
                 eyes); ask another approver of its tenant"
            ),
        ));
    }
    Ok(())
}

/// `POST /v1/jobs/{id}/approve` (an approver of the job's tenant who did not submit it): the
/// job starts as a submitted one would.
pub(super) async fn approve_job(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<JobDecided> {
    let job = job_for(&st, &actor, &id, Action::JobApprove).await?;
    let by = actor.audit_name();
    four_eyes(&st, job.id, &by).await?;
    let approval = bounded(st.shared.store.approve_job(job.id, &by)).await?;
    let state = match st.shared.start_approved(job.id, &by).await {
        Ok(()) => JobState::Running,
        Err(why) => return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, why)),
    };
    Ok(Json(JobDecided {
        job_id: job.id.0,
        state: state.as_str().to_owned(),
        approval: approval_info(&approval),
    }))
}

/// `POST /v1/jobs/{id}/reject` `{"reason": …}`: the job is cancelled and never runs.
pub(super) async fn reject_job(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<JobDecided> {
    let job = job_for(&st, &actor, &id, Action::JobApprove).await?;
    let req: RejectRequest = json_body(&body)?;
    let reason = req.reason.unwrap_or_default();
    if reason.len() > flotilla_store::MAX_STATE_REASON_BYTES {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "reason: longer than {} bytes",
                flotilla_store::MAX_STATE_REASON_BYTES
            ),
        ));
    }
    let by = actor.audit_name();
    four_eyes(&st, job.id, &by).await?;
    let approval = bounded(st.shared.store.reject_job(job.id, &by, &reason)).await?;
    tracing::info!(job = job.id.0, by = %by, "job rejected");
    Ok(Json(JobDecided {
        job_id: job.id.0,
        state: "rejected".to_owned(),
        approval: approval_info(&approval),
    }))
}
