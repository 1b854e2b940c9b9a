//! Admin endpoints of federated evaluation (a child module of `admin`, whose state, errors and
//! authorization it shares):
//!
//! * `POST /v1/evaluations` `{model: "NAME@V"} | {job_id, round?}` with `clients`,
//!   `deadline_secs`, `threshold`, `wait`: starts a campaign (`Action::ModelEvaluate` in the
//!   subject's tenant);
//! * `GET /v1/evaluations/{id}`: where it stands, with the summary once done (`ModelRead`);
//! * `GET /v1/jobs/{id}/evaluations`: the stored evaluations of a job's rounds (`JobRead`).
//!
//! A caller without a role in the subject's tenant gets `404`, as if it did not exist.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use flotilla_registry::ModelRef;
use flotilla_store::{EvalKind, EvalSubject, JobId};

use super::{AdminState, ApiError, ApiResult, allow, bounded, parse_id};
use crate::api::evaluations::{
    DEFAULT_EVAL_DEADLINE_SECS, EvaluationRequest, EvaluationView, JobEvaluations,
};
use crate::authz::{Action, Actor};
use crate::fed_eval::{EvalRequest, EvalStatus, MAX_DEADLINE, MAX_EVAL_CLIENTS};

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m.into())
}

fn view(id: u64, req: &EvalRequest, status: EvalStatus) -> EvaluationView {
    let mut v = EvaluationView {
        id,
        tenant: req.tenant.clone(),
        subject: req.subject.clone(),
        kind: req.kind,
        clients: req.clients,
        deadline_secs: req.deadline.as_secs(),
        status: String::new(),
        asked: None,
        reported: None,
        summary: None,
        stored_id: None,
        error: None,
    };
    match status {
        EvalStatus::Running { asked, reported } => {
            v.status = "running".into();
            v.asked = Some(asked);
            v.reported = Some(reported);
        }
        EvalStatus::Done { summary, stored_id } => {
            v.status = "done".into();
            v.summary = Some(summary);
            v.stored_id = stored_id;
        }
        EvalStatus::Failed(why) => {
            v.status = "failed".into();
            v.error = Some(why);
        }
    }
    v
}

/// The subject of a request and its tenant, authorized for `ModelEvaluate`.
async fn subject(
    st: &AdminState,
    actor: &Actor,
    req: &EvaluationRequest,
) -> Result<(EvalSubject, String), ApiError> {
    match (&req.model, req.job_id) {
        (Some(m), None) => {
            if req.round.is_some() {
                return Err(bad("round: only with job_id"));
            }
            let r: ModelRef = m.parse().map_err(|e| bad(format!("model: {e}")))?;
            let name = r.name.as_str();
            let not_found = || ApiError(StatusCode::NOT_FOUND, format!("model {name} not found"));
            let model = bounded(st.shared.store.registered_model(name))
                .await?
                .ok_or_else(not_found)?;
            allow(
                st,
                actor,
                Action::ModelEvaluate,
                Some(&model.tenant),
                &format!("model {name}"),
            )?;
            let version = match r.version {
                Some(v) => v,
                None => model.production.ok_or_else(|| {
                    bad(format!(
                        "model {name} has no production version: name one, {name}@VERSION"
                    ))
                })?,
            };
            bounded(st.shared.store.model_version(name, version))
                .await?
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::NOT_FOUND,
                        format!("model {name} has no version {version}"),
                    )
                })?;
            Ok((
                EvalSubject::Version {
                    name: name.to_owned(),
                    version,
                },
                model.tenant,
            ))
        }
        (None, Some(job)) => {
            let id = JobId(job);
            let record = bounded(st.shared.store.get_job(id)).await?;
            allow(
                st,
                actor,
                Action::ModelEvaluate,
                Some(&record.tenant),
                &format!("job {id}"),
            )?;
            let history = bounded(st.shared.store.job_history(id)).await?;
            let round = match req.round {
                Some(r) => history.iter().find(|c| c.round == r),
                None => history.last(),
            }
            .map(|c| c.round)
            .ok_or_else(|| {
                let what = req.round.map_or("no committed round yet".to_owned(), |r| {
                    format!("no committed round {r}")
                });
                ApiError(StatusCode::NOT_FOUND, format!("job {id} has {what}"))
            })?;
            Ok((EvalSubject::Round { job_id: id, round }, record.tenant))
        }
        _ => Err(bad(
            "give either model (NAME@VERSION) or job_id (with round), not both",
        )),
    }
}

/// `POST /v1/evaluations`
pub(super) async fn start(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult<EvaluationView> {
    let req: EvaluationRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    if !(1..=MAX_EVAL_CLIENTS).contains(&req.clients) {
        return Err(bad(format!(
            "clients: must be between 1 and {MAX_EVAL_CLIENTS}, got {}",
            req.clients
        )));
    }
    let secs = req.deadline_secs.unwrap_or(DEFAULT_EVAL_DEADLINE_SECS);
    if !(1..=MAX_DEADLINE.as_secs()).contains(&secs) {
        return Err(bad(format!(
            "deadline_secs: must be between 1 and {}, got {secs}",
            MAX_DEADLINE.as_secs()
        )));
    }
    if let Some(t) = req.threshold
        && !(0.0..=1.0).contains(&t)
    {
        return Err(bad(format!("threshold: must be in [0, 1], got {t}")));
    }
    let (subject, tenant) = subject(&st, &actor, &req).await?;
    let ereq = EvalRequest {
        tenant,
        subject,
        kind: EvalKind::OnDemand,
        clients: req.clients,
        deadline: Duration::from_secs(secs),
        threshold: req.threshold,
    };
    let id = st
        .shared
        .start_fed_eval(ereq.clone())
        .map_err(|e| ApiError(StatusCode::TOO_MANY_REQUESTS, e))?;
    tracing::info!(evaluation = id, actor = %actor.audit_name().escape_debug(), "federated evaluation requested");
    let status = if req.wait {
        // The campaign ends at its deadline at the latest; the margin covers storing it.
        let limit = Duration::from_secs(secs + 15);
        match tokio::time::timeout(limit, st.shared.fed_evals.wait(id)).await {
            Ok(Some(s)) => s,
            _ => st.shared.fed_evals.status(id).ok_or_else(|| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("evaluation {id} was forgotten"),
                )
            })?,
        }
    } else {
        st.shared
            .fed_evals
            .status(id)
            .unwrap_or(EvalStatus::Running {
                asked: 0,
                reported: 0,
            })
    };
    Ok(Json(view(id, &ereq, status)))
}

/// `GET /v1/evaluations/{id}`
pub(super) async fn show(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<EvaluationView> {
    let id = parse_id(&id, "evaluation id")?;
    let not_found = || {
        ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "evaluation {id} not found (this coordinator remembers its latest {} evaluations; \
                 stored results are listed per job and per model version)",
                crate::fed_eval::MAX_FINISHED
            ),
        )
    };
    let (req, status) = st.shared.fed_evals.get(id).ok_or_else(not_found)?;
    allow(
        &st,
        &actor,
        Action::ModelRead,
        Some(&req.tenant),
        &format!("evaluation {id}"),
    )?;
    Ok(Json(view(id, &req, status)))
}

/// `GET /v1/jobs/{id}/evaluations`
pub(super) async fn job_evaluations(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<JobEvaluations> {
    let id = JobId(parse_id(&id, "job id")?);
    let job = bounded(st.shared.store.get_job(id)).await?;
    allow(
        &st,
        &actor,
        Action::JobRead,
        Some(&job.tenant),
        &format!("job {id}"),
    )?;
    let evaluations = bounded(st.shared.store.job_evaluations(id)).await?;
    Ok(Json(JobEvaluations {
        job_id: id.0,
        evaluations,
    }))
}
