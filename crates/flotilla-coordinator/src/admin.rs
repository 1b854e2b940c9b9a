//! The admin HTTP/JSON API (axum). Every `/v1/…` request needs `authorization: Bearer <admin
//! token>` or a web console session (`console`); the console's page and login and the health
//! probes (`probes`) need neither.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use flotilla_store::{ClientId, ClientRecord, JobId, JobRecord, JobState, StoreError};

use crate::api::{
    AbandonedAttempt, CancelRequest, ClientRevoked, CurrentRound, ErrorBody, JobCancelled,
    JobStatus, JobSubmitted, JobSummary, RoundMetrics, RoundRecord, TokenIssued, TokenRequest,
};
use crate::authz::{self, Action, Actor, Denied};
use crate::clock::now_ms;
use crate::console::session::Admit;
use crate::metrics::MetricsSnapshot;
use crate::principal_auth::Resolved;
use crate::state::Shared;
use crate::submit::SubmitError;

#[path = "admin_audit.rs"]
mod audit;
#[path = "admin_evaluations.rs"]
mod evaluations;
#[path = "admin_governance.rs"]
mod governance;
#[path = "admin_model.rs"]
mod model;
#[path = "admin_policy.rs"]
mod policies;
#[path = "admin_principals.rs"]
mod principals;
#[path = "admin_registry.rs"]
mod registry;

#[derive(Clone)]
pub(crate) struct AdminState {
    shared: Arc<Shared>,
    token: Arc<str>,
    console: Arc<crate::console::Console>,
}

/// An error answer: `{"error": "<one line>"}` with a status code.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let msg = self.1.replace('\n', " ");
        (self.0, Json(ErrorBody { error: msg })).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if crate::retry::retryable(&e) {
            // The database or blob store is down or full: the request may succeed later. Not an
            // ERROR line per request: a halted job logs the outage once.
            tracing::warn!(error = %e, "admin request failed: store unavailable");
            return ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store unavailable: {e}; retry later"),
            );
        }
        let code = match &e {
            StoreError::JobNotFound(_)
            | StoreError::ClientNotFound(_)
            | StoreError::PrincipalNotFound(_)
            | StoreError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidTransition { .. }
            | StoreError::StageConflict(_)
            | StoreError::JobNotRunning { .. }
            | StoreError::PrincipalExists(_)
            | StoreError::ApprovalRefused(_) => StatusCode::CONFLICT,
            StoreError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "admin request failed on the store");
        }
        ApiError(code, e.to_string())
    }
}

/// Longest an admin request waits for one store call (the pool's acquire timeout, 2 s, normally
/// answers first): while the store is down, calls fail fast with `503 store unavailable`.
const STORE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Longest an admin request waits for a running job's lock (held while a round commits).
const JOB_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A store call bounded by [`STORE_CALL_TIMEOUT`]; its errors as API errors.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(STORE_CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => {
            tracing::warn!("admin request failed: the store did not answer in time");
            Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "store unavailable: no answer within {} s; retry later",
                    STORE_CALL_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

/// An answer of type `T`, or an error answer.
type ApiResult<T> = Result<Json<T>, ApiError>;

/// Whether `actor` may do `action` on a resource of `tenant` (`None`: installation-wide or a
/// list): the roles first (`authz`), then the Cedar policies on top. `resource` names the resource
/// in a `404` ("job 7"), which reads exactly like the answer for a resource that does not exist.
pub(crate) fn allow(
    st: &AdminState,
    actor: &Actor,
    action: Action,
    tenant: Option<&str>,
    resource: &str,
) -> Result<(), ApiError> {
    match authz::authorize(actor, action, tenant) {
        Ok(()) => {}
        Err(Denied::NotFound) => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("{resource} not found"),
            ));
        }
        Err(Denied::Forbidden) => {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not {} here (roles: {}); ask an admin for a role that allows it",
                    actor.audit_name(),
                    action.as_str().replace('_', " "),
                    roles_text(actor)
                ),
            ));
        }
    }
    // Cedar admin policies (issue 16 §4) are evaluated here, on top of the roles.
    let caller = crate::policy::caller(actor, tenant);
    if let Err(d) = st
        .shared
        .policy
        .current()
        .set
        .admin(&caller, action.as_str(), tenant)
    {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not {} here: refused by {d}",
                actor.audit_name(),
                action.as_str().replace('_', " ")
            ),
        ));
    }
    Ok(())
}

/// An actor's roles as `tenant:role, …` for messages.
fn roles_text(actor: &Actor) -> String {
    if actor.roles.is_empty() {
        return "none".into();
    }
    actor
        .roles
        .iter()
        .map(|(t, r)| format!("{t}:{r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves the caller (`Actor`) and puts it into the request's extensions for the handlers
/// (`Extension<Actor>`), or answers `401`: a bearer token (the bootstrap admin token or a
/// principal's, `principal_auth`), else a console session (which carries the actor that logged
/// in). `GET /metrics` (a service of its own) is authorized here.
async fn auth(State(st): State<AdminState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let actor = match given {
        None => {
            // No bearer token: a browser with a console session (CSRF rules for state changes).
            match st.console.admit(req.method(), req.headers()) {
                Admit::Session(_) => match st.console.session_actor(req.headers()) {
                    Some(a) => a,
                    None => {
                        return unauthenticated(
                            &st,
                            "session_ended",
                            "the console session ended; log in again",
                        );
                    }
                },
                Admit::Refused(why) => {
                    return ApiError(StatusCode::FORBIDDEN, why.into()).into_response();
                }
                Admit::NoSession => {
                    return unauthenticated(
                        &st,
                        "missing_token",
                        "missing token (authorization: Bearer <FLOTILLA_ADMIN_TOKEN or a principal's token>)",
                    );
                }
            }
        }
        Some(t) => match crate::principal_auth::resolve(
            &st.shared.store,
            &st.shared.principals,
            &st.token,
            &t,
        )
        .await
        {
            Resolved::Actor(a) => a,
            Resolved::Refused(why) => return unauthenticated(&st, "bad_token", &why),
            Resolved::Unavailable(e) => return ApiError::from(e).into_response(),
        },
    };
    if req.uri().path() == "/metrics"
        && let Err(e) = allow(&st, &actor, Action::MetricsRead, None, "/metrics")
    {
        return e.into_response();
    }
    req.extensions_mut().insert(actor);
    next.run(req).await
}

/// `401` with `why`, counted as a failed admin authentication of `kind`.
fn unauthenticated(st: &AdminState, kind: &str, why: &str) -> Response {
    // Counted here and flushed to the audit log in aggregate (a flood cannot fill the disk).
    st.shared.audit.failed.record(kind, None);
    st.shared.metrics.auth_failure("admin_unauthenticated");
    st.shared.metrics.reject("admin_unauthenticated");
    ApiError(StatusCode::UNAUTHORIZED, why.to_owned()).into_response()
}

/// The admin router; `prometheus` (the `GET /metrics` route) is served behind the token (or a
/// console session) too.
pub(crate) fn router(shared: Arc<Shared>, token: &str, prometheus: Option<Router>) -> Router {
    let token: Arc<str> = Arc::from(token);
    let console = Arc::new(crate::console::Console::new(shared.clone(), token.clone()));
    let st = AdminState {
        shared: shared.clone(),
        token,
        console: console.clone(),
    };
    let mut r = Router::new()
        .route("/v1/enrollment-tokens", post(create_token))
        .route(
            "/v1/jobs",
            post(submit_job)
                .layer(DefaultBodyLimit::max(MAX_JOB_SUBMISSION_BYTES))
                .get(list_jobs),
        )
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/model", get(model::model_bytes))
        .route("/v1/jobs/{id}/model/info", get(model::model_info))
        .route("/v1/clients", get(list_clients))
        .route("/v1/clients/{id}/revoke", post(revoke_client))
        .route("/v1/metrics", get(metrics))
        .route(
            "/v1/principals",
            post(principals::create_principal).get(principals::list_principals),
        )
        .route(
            "/v1/principals/{name}/revoke",
            post(principals::revoke_principal),
        )
        .route(
            "/v1/tenants/{tenant}",
            get(principals::get_tenant).put(principals::put_tenant),
        )
        .route("/v1/jobs/{id}/approve", post(principals::approve_job))
        .route("/v1/jobs/{id}/reject", post(principals::reject_job))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/policies", post(policies::apply).get(policies::list))
        .route("/v1/policies/{version}", get(policies::show))
        .route("/v1/clients/{id}/forget", post(governance::forget_client))
        .route("/v1/retention/run", post(governance::retention_run))
        .route("/v1/jobs/{id}/evidence", get(governance::evidence))
        .route("/v1/models", get(registry::list).post(registry::register))
        .route("/v1/models/{name}", get(registry::show))
        .route("/v1/models/{name}/gate", put(registry::set_gate))
        .route("/v1/models/{name}/rollback", post(registry::rollback))
        .route(
            "/v1/models/{name}/versions/{version}",
            get(registry::show_version),
        )
        .route(
            "/v1/models/{name}/versions/{version}/artifact",
            get(registry::artifact),
        )
        .route(
            "/v1/models/{name}/versions/{version}/promote",
            post(registry::promote),
        )
        .route("/v1/evaluations", post(evaluations::start))
        .route("/v1/evaluations/{id}", get(evaluations::show))
        .route(
            "/v1/jobs/{id}/evaluations",
            get(evaluations::job_evaluations),
        );
    if let Some(p) = prometheus {
        r = r.route_service("/metrics", p);
    }
    r.fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        .with_state(st)
        // Added after the token layer, so outside it.
        .merge(crate::console::router(console))
        .merge(crate::probes::router(shared))
}

async fn create_token(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult<TokenIssued> {
    let req: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))?
    };
    let tenant = req.tenant.unwrap_or_else(|| "default".to_owned());
    allow(
        &st,
        &actor,
        Action::TokenCreate,
        Some(&tenant),
        &format!("tenant {tenant}"),
    )?;
    let uses = req.uses.unwrap_or(1);
    let secs = req.expires_in_seconds.unwrap_or(86_400);
    if secs == 0 || secs > 10 * 365 * 86_400 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expires_in_seconds: must be in 1..=315360000".into(),
        ));
    }
    let expires_at_ms = now_ms().saturating_add(secs * 1000) as i64;
    let t = bounded(st.shared.store.create_enrollment_token(
        &tenant,
        uses,
        expires_at_ms,
        &actor.audit_name(),
    ))
    .await?;
    Ok(Json(TokenIssued {
        token: t.secret,
        token_id: t.id.0,
        tenant,
        uses,
        expires_at_ms,
    }))
}

/// Largest `POST /v1/jobs` request, bytes (1 GiB): the job spec and, for a model given by
/// `[model] initial`, its safetensors file. A larger request is refused with `413`.
pub const MAX_JOB_SUBMISSION_BYTES: usize = 1 << 30;

/// Largest job spec (TOML), bytes: a plain body or the `spec` part.
const MAX_SPEC_BYTES: usize = 2 << 20;

/// `413` for a request over [`MAX_JOB_SUBMISSION_BYTES`], naming `model.initial` (what makes a
/// job submission large).
fn too_large() -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "model.initial: the request is larger than {} MiB, the most a job submission may be \
             (MAX_JOB_SUBMISSION_BYTES); a model may have at most {} f32 values",
            MAX_JOB_SUBMISSION_BYTES >> 20,
            flotilla_core::limits::MAX_MODEL_PARAMS
        ),
    )
}

fn spec_text(body: Bytes) -> Result<String, ApiError> {
    if body.len() > MAX_SPEC_BYTES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "toml: the job spec is larger than {} MiB",
                MAX_SPEC_BYTES >> 20
            ),
        ));
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "toml: body is not UTF-8".into()))
}

/// The parts of a `multipart/form-data` submission: `spec` (the TOML, required) and `initial`
/// (the safetensors file of a model given by `[model] initial`).
async fn submission_parts(mut parts: Multipart) -> Result<(String, Option<Vec<u8>>), ApiError> {
    let part_error = |e: MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("multipart body: {}", e.body_text()),
            )
        }
    };
    let (mut spec, mut initial) = (None, None);
    while let Some(part) = parts.next_field().await.map_err(part_error)? {
        let name = part.name().unwrap_or_default().to_owned();
        let twice = || {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("multipart body: part `{name}` is given twice"),
            )
        };
        match name.as_str() {
            "spec" if spec.is_some() => return Err(twice()),
            "spec" => spec = Some(spec_text(part.bytes().await.map_err(part_error)?)?),
            "initial" if initial.is_some() => return Err(twice()),
            // Moved out of the body buffer, not copied (a model may be large).
            "initial" => initial = Some(Vec::from(part.bytes().await.map_err(part_error)?)),
            other => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "multipart body: unknown part {:?} (the parts are `spec` and `initial`)",
                        other.chars().take(32).collect::<String>()
                    ),
                ));
            }
        }
    }
    let spec = spec.ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "multipart body: the part `spec` (the job's TOML) is required".into(),
        )
    })?;
    Ok((spec, initial))
}

/// `POST /v1/jobs`: the job's TOML as the body, or `multipart/form-data` with the parts `spec`
/// and, for a model given by `[model] initial`, `initial` (the safetensors file).
async fn submit_job(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    req: Request,
) -> ApiResult<JobSubmitted> {
    // Refused before the body is read if the actor may submit nowhere.
    allow(&st, &actor, Action::JobSubmit, None, "tenant")?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    let (text, initial) = if multipart {
        let parts = Multipart::from_request(req, &st)
            .await
            .map_err(|e| ApiError(e.status(), format!("multipart body: {}", e.body_text())))?;
        submission_parts(parts).await?
    } else {
        let body = axum::body::to_bytes(req.into_body(), MAX_SPEC_BYTES)
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "toml: the job spec is larger than {} MiB (or the body could not be read)",
                        MAX_SPEC_BYTES >> 20
                    ),
                )
            })?;
        (spec_text(body)?, None)
    };
    // The tenant is in the spec: an unreadable spec is refused by the submission with its error.
    if let Ok(spec) = crate::spec::JobSpec::from_toml(&text) {
        let t = &spec.tenant;
        allow(
            &st,
            &actor,
            Action::JobSubmit,
            Some(t),
            &format!("tenant {t}"),
        )?;
    }
    match st.shared.submit_job(&actor, text, initial).await {
        Ok(id) => Ok(Json(JobSubmitted { job_id: id.0 })),
        Err(SubmitError::Invalid(m)) => Err(ApiError(StatusCode::BAD_REQUEST, m)),
        Err(SubmitError::Forbidden(m)) => Err(ApiError(StatusCode::FORBIDDEN, m)),
        Err(e @ SubmitError::Unavailable(_)) => {
            tracing::warn!(error = %e, "job submission failed");
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
        Err(SubmitError::Internal(m)) => {
            tracing::error!(error = %m, "job submission failed");
            Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, m))
        }
    }
}

/// A job as listed. `live` is the reason of a running job ([`job_reason`]); `halted` the cause of
/// its halt, if a storage fault halted it.
fn job_summary(j: &JobRecord, live: Option<String>, halted: Option<&str>) -> JobSummary {
    let reason = match j.state {
        JobState::Failed | JobState::Cancelled => j.state_reason.clone(),
        JobState::Running => live,
        JobState::Pending | JobState::Completed => None,
    };
    JobSummary {
        job_id: j.id.0,
        name: j.name.clone(),
        tenant: j.tenant.clone(),
        state: j.state.as_str().to_owned(),
        rounds_completed: j.rounds_completed,
        rounds_total: j.rounds_total,
        model_version: j.model_version,
        created_at_ms: j.created_at_ms,
        updated_at_ms: j.updated_at_ms,
        reason,
        halted: halted
            .filter(|_| j.state == JobState::Running)
            .map(str::to_owned),
    }
}

/// Why a running job is not simply making progress (waiting, retrying, halted), from its runtime;
/// with its live status for `current`. A job the store has as running but this process does not
/// run could not be resumed after a restart.
async fn job_reason(st: &AdminState, j: &JobRecord) -> (Option<String>, Option<Live>) {
    if j.state != JobState::Running {
        return (None, None);
    }
    let Some(rt) = st.shared.job(&j.id.0.to_string()) else {
        return (Some("not running on this coordinator: the job could not be resumed after a restart; see the server log".into()), None);
    };
    let Ok(inner) = tokio::time::timeout(JOB_LOCK_TIMEOUT, rt.inner.lock()).await else {
        return (Some("busy: a round is being committed".into()), None);
    };
    let live = crate::live::live_status(&inner, now_ms());
    let (round, attempt) = inner.machine.current_round();
    (
        live.reason.clone(),
        Some(Live {
            status: live,
            round,
            attempt,
            halted: inner.halted.clone(),
            abandoned: inner
                .notes
                .abandoned
                .iter()
                .map(|n| AbandonedAttempt {
                    round: n.round,
                    attempt: n.attempt,
                    reason: n.text.clone(),
                    at_ms: n.at_ms,
                })
                .collect(),
        }),
    )
}

/// A running job's `current` object (and its recently abandoned attempts).
struct Live {
    status: crate::live::LiveStatus,
    round: u64,
    attempt: u32,
    halted: Option<String>,
    abandoned: Vec<AbandonedAttempt>,
}

async fn list_jobs(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Vec<JobSummary>> {
    allow(&st, &actor, Action::JobRead, None, "jobs")?;
    let visible = actor.tenants_for(Action::JobRead);
    let jobs = bounded(st.shared.store.list_jobs(None)).await?;
    let approvals = bounded(st.shared.store.job_approvals(None)).await?;
    let mut out = Vec::with_capacity(jobs.len());
    for j in &jobs {
        if visible.as_ref().is_some_and(|v| !v.contains(&j.tenant)) {
            continue;
        }
        let (reason, live) = job_reason(&st, j).await;
        let mut summary = job_summary(j, reason, live.as_ref().and_then(|l| l.halted.as_deref()));
        summary.state = principals::shown_state(j.state, approvals.get(&j.id));
        out.push(summary);
    }
    Ok(Json(out))
}

fn parse_id(s: &str, what: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "{what}: not a number: {:?}",
                s.chars().take(32).collect::<String>()
            ),
        )
    })
}

async fn get_job(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<JobStatus> {
    let id = JobId(parse_id(&id, "job id")?);
    let job = bounded(st.shared.store.get_job(id)).await?;
    allow(
        &st,
        &actor,
        Action::JobRead,
        Some(&job.tenant),
        &format!("job {id}"),
    )?;
    let approval = bounded(st.shared.store.job_approval(id)).await?;
    let history = bounded(st.shared.store.job_history(id)).await?;
    let (reason, mut live) = job_reason(&st, &job).await;
    let mut summary = job_summary(
        &job,
        reason,
        live.as_ref().and_then(|l| l.halted.as_deref()),
    );
    summary.state = principals::shown_state(job.state, Some(&approval));
    let mut rounds = Vec::with_capacity(history.len());
    for r in &history {
        // The store keeps metrics as opaque JSON; this coordinator wrote them as `RoundMetrics`.
        let metrics: RoundMetrics = serde_json::from_value(r.metrics.clone()).map_err(|e| {
            tracing::error!(job = id.0, round = r.round, error = %e, "unreadable round metrics");
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the stored metrics of round {} of job {id} are unreadable: {e}",
                    r.round
                ),
            )
        })?;
        let privacy = metrics.privacy.as_ref();
        rounds.push(RoundRecord {
            round: r.round,
            attempt: r.attempt,
            participants: r.participants.iter().map(|c| c.0).collect(),
            epsilon_spent: privacy.map(|p| p.epsilon_spent),
            delta: privacy.map(|p| p.delta),
            metrics,
            committed_at_ms: r.committed_at_ms,
        });
    }
    let privacy = st
        .shared
        .privacy
        .status(&job, rounds.last().map(|r| &r.metrics));
    let abandoned = live
        .as_mut()
        .map(|l| std::mem::take(&mut l.abandoned))
        .unwrap_or_default();
    let current = live.map(|l| CurrentRound {
        round: l.round,
        attempt: l.attempt,
        halted: l.halted,
        phase: l.status.phase.to_owned(),
        available_clients: l.status.available_clients,
        needed_clients: l.status.needed_clients,
        deadline_ms: l.status.deadline_ms,
    });
    Ok(Json(JobStatus {
        job: summary,
        history: rounds,
        epsilon_spent: privacy.as_ref().map(|p| p.epsilon_spent),
        delta: privacy.as_ref().map(|p| p.delta),
        stopped_reason: privacy.as_ref().and_then(|p| p.stopped_reason.clone()),
        privacy,
        current,
        abandoned,
        spec: Some(job.spec.clone()),
        approval: (approval.submitted_by.is_some() || approval.state.is_some())
            .then(|| principals::approval_info(&approval)),
    }))
}

async fn cancel_job(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<JobCancelled> {
    let id = JobId(parse_id(&id, "job id")?);
    let tenant = bounded(st.shared.store.get_job(id)).await?.tenant;
    allow(
        &st,
        &actor,
        Action::JobCancel,
        Some(&tenant),
        &format!("job {id}"),
    )?;
    let mut req: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body: {e}")))?
    };
    // A principal cancels under its own name, whatever the body says.
    if let crate::authz::ActorId::Principal(name) = &actor.id {
        req.by = Some(name.clone());
    }
    let text = crate::reasons::cancel_text(req.by.as_deref(), req.reason.as_deref())
        .map_err(|m| ApiError(StatusCode::BAD_REQUEST, m))?;
    let terminal = move |job: &JobRecord| {
        let mut msg = format!(
            "job {} is already {}; only a pending or running job can be cancelled",
            id.0,
            job.state.as_str()
        );
        if let Some(r) = &job.state_reason {
            msg = format!("{msg} ({r})");
        }
        ApiError(StatusCode::CONFLICT, msg)
    };
    let job = bounded(st.shared.store.get_job(id)).await?;
    if job.state.is_terminal() {
        return Err(terminal(&job));
    }
    match st.shared.job(&id.0.to_string()) {
        Some(rt) => {
            // Under the job's lock: no round of it is being driven or committed meanwhile, and a
            // request that holds the runtime afterwards sees it ended. In a task of its own, so
            // that an admin client that disconnects cannot stop it between the store and memory.
            let (shared, text2, who) = (st.shared.clone(), text.clone(), actor.audit_name());
            let task = tokio::spawn(async move {
                let mut inner = rt.inner.lock().await;
                if inner.ended.is_some() {
                    return Err(terminal(&bounded(shared.store.get_job(id)).await?));
                }
                bounded(shared.store.set_job_state_with_reason(
                    id,
                    JobState::Cancelled,
                    Some(&text2),
                    &who,
                ))
                .await?;
                shared.end_job(&rt, &mut inner, JobState::Cancelled);
                Ok::<(), ApiError>(())
            });
            task.await.map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the cancel's task failed: {e}"),
                )
            })??;
        }
        None => {
            bounded(st.shared.store.set_job_state_with_reason(
                id,
                JobState::Cancelled,
                Some(&text),
                &actor.audit_name(),
            ))
            .await?
        }
    }
    tracing::info!(job = id.0, reason = ?text, "job cancelled");
    Ok(Json(JobCancelled {
        job_id: id.0,
        state: JobState::Cancelled.as_str().to_owned(),
        reason: text,
    }))
}

async fn list_clients(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Vec<ClientRecord>> {
    allow(&st, &actor, Action::ClientRead, None, "clients")?;
    let mut clients = bounded(st.shared.store.list_clients(None)).await?;
    if let Some(visible) = actor.tenants_for(Action::ClientRead) {
        clients.retain(|c| visible.contains(&c.tenant));
    }
    Ok(Json(clients))
}

async fn revoke_client(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<ClientRevoked> {
    let id = ClientId(parse_id(&id, "client id")?);
    let tenant = bounded(st.shared.store.get_client(id)).await?.tenant;
    allow(
        &st,
        &actor,
        Action::ClientRevoke,
        Some(&tenant),
        &format!("client {id}"),
    )?;
    bounded(st.shared.store.revoke_client(id, &actor.audit_name())).await?;
    // After the store has it, so a concurrent call cannot re-cache the credential as valid.
    st.shared.credentials.forget_client(id);
    tracing::info!(client = id.0, "client revoked");
    Ok(Json(ClientRevoked {
        client_id: id.0,
        revoked: true,
    }))
}

async fn metrics(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<MetricsSnapshot> {
    allow(&st, &actor, Action::MetricsRead, None, "metrics")?;
    Ok(Json(st.shared.metrics.snapshot()))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    /// The answer to a multipart `body` read by [`submission_parts`] behind a body limit of
    /// `limit` bytes (the route's [`MAX_JOB_SUBMISSION_BYTES`], scaled down).
    async fn parts(limit: usize, body: Vec<u8>) -> (StatusCode, String) {
        async fn probe(parts: Multipart) -> Result<String, ApiError> {
            let (spec, initial) = submission_parts(parts).await?;
            Ok(format!("{spec} {}", initial.map_or(0, |i| i.len())))
        }
        let app = Router::new()
            .route("/", post(probe))
            .layer(DefaultBodyLimit::max(limit));
        let req = Request::post("/")
            .header("content-type", "multipart/form-data; boundary=B")
            .body(Body::from(body))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn body(initial: usize) -> Vec<u8> {
        let mut b = b"--B\r\ncontent-disposition: form-data; name=\"spec\"\r\n\r\nrounds = 1\r\n\
                      --B\r\ncontent-disposition: form-data; name=\"initial\"\r\n\r\n"
            .to_vec();
        b.extend(std::iter::repeat_n(7u8, initial));
        b.extend_from_slice(b"\r\n--B--\r\n");
        b
    }

    #[tokio::test]
    async fn a_submission_over_the_ceiling_is_413_naming_model_initial() {
        let (status, text) = parts(4096, body(1000)).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "rounds = 1 1000"));
        let (status, text) = parts(4096, body(8000)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
        let error: ErrorBody = serde_json::from_str(&text).unwrap();
        assert!(
            error
                .error
                .starts_with("model.initial: the request is larger than 1024 MiB"),
            "{text}"
        );
        assert!(!error.error.contains('\n'));
    }
}
