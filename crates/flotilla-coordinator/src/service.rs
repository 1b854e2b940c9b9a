//! The gRPC `flotilla.v1.Coordinator` service.

use std::pin::Pin;
use std::sync::Arc;

use flotilla_core::round::{ClientId, Event, RejectReason};
use flotilla_proto::v1;
use flotilla_proto::v1::coordinator_server::Coordinator;
use flotilla_proto::{AuthError, DEFAULT_CHUNK_BYTES, HeaderError, TransferError, chunk_f32_from};
use flotilla_store::StoreError;
use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::state::{JobInner, JobRuntime, Shared};

mod evaluate;
mod serving;
mod task_failure;
mod upload;
mod upload_finish;
mod upload_pace;

pub(crate) use upload_pace::CountUploadBytes;

/// An authenticated caller.
pub(crate) struct Caller {
    pub id: ClientId,
    pub tenant: String,
}

/// The tonic service.
#[derive(Clone)]
pub(crate) struct CoordinatorService {
    pub shared: Arc<Shared>,
}

fn reject_name(r: &RejectReason) -> &'static str {
    match r {
        RejectReason::NotAccepting(_) => "not_accepting",
        RejectReason::WrongRound { .. } => "wrong_round",
        RejectReason::WrongStage { .. } => "wrong_stage",
        RejectReason::NotSelected => "not_selected",
        RejectReason::Duplicate => "duplicate",
        RejectReason::RoundFull => "round_full",
        RejectReason::BadSampleCount { .. } => "bad_sample_count",
        RejectReason::BadUpdate(_) => "bad_update",
        RejectReason::BadEval(_) => "bad_eval",
        RejectReason::WrongStageKind { .. } => "wrong_stage_kind",
        RejectReason::TooStale { .. } => "too_stale",
        RejectReason::NoTask => "no_task",
        RejectReason::SecureAggregation(s) => s.code,
    }
}

fn transfer_reason(e: &TransferError) -> &'static str {
    match e {
        TransferError::InvalidHeader(
            HeaderError::LayoutMismatch | HeaderError::BadFingerprintLength(_),
        ) => "layout_mismatch",
        TransferError::InvalidHeader(HeaderError::TooLarge { .. }) => "too_large",
        TransferError::InvalidHeader(HeaderError::SizeMismatch { .. }) => "size_mismatch",
        TransferError::InvalidHeader(_) | TransferError::InvalidModelInfo(_) => "invalid_header",
        TransferError::UnexpectedOffset { .. } => "unexpected_offset",
        TransferError::ConflictingChunk { .. } | TransferError::EmptyChunk { .. } => "bad_chunk",
        TransferError::ChunkTooLarge { .. } => "chunk_too_large",
        TransferError::PastEnd { .. } => "past_end",
        TransferError::Incomplete { .. } => "incomplete",
        TransferError::ShaMismatch => "sha_mismatch",
        TransferError::NonFinite { .. } => "non_finite",
        TransferError::BadEncoding(_) => "bad_encoding",
    }
}

fn upload_response(
    status: v1::UploadStatus,
    message: impl Into<String>,
    resume_offset: u64,
) -> Response<v1::UploadResponse> {
    Response::new(v1::UploadResponse {
        status: status as i32,
        message: message.into(),
        resume_offset,
        reason: String::new(),
    })
}

/// `REJECTED`, with the machine-readable `reason` (`too_stale`, `no_task`, …) and a message for humans.
fn upload_refused(reason: &str, message: impl Into<String>) -> Response<v1::UploadResponse> {
    Response::new(v1::UploadResponse {
        status: v1::UploadStatus::Rejected as i32,
        message: message.into(),
        resume_offset: 0,
        reason: reason.to_owned(),
    })
}

impl CoordinatorService {
    /// Streams `params` from byte `offset` as `ModelChunk`s (`DownloadModel`), counting them.
    fn stream_params(
        &self,
        params: std::sync::Arc<Vec<f32>>,
        offset: u64,
    ) -> Result<Response<ChunkStream>, Status> {
        let total = 4 * params.len() as u64;
        if offset > total {
            return Err(self.refuse(
                "bad_offset",
                Status::out_of_range(format!(
                    "offset {offset} is past the end of the {total}-byte model"
                )),
            ));
        }
        Metrics::inc(&self.shared.metrics.downloads);
        let sent = self.shared.metrics.sent_bytes.clone();
        let stream = futures_util::stream::unfold(offset, move |offset| {
            let params = params.clone();
            let sent = sent.clone();
            async move {
                let (off, data) = chunk_f32_from(&params, DEFAULT_CHUNK_BYTES, offset).next()?;
                let next = off + data.len() as u64;
                sent.inc_by(data.len() as u64);
                Some((Ok(v1::ModelChunk { offset: off, data }), next))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    fn refuse(&self, reason: &str, status: Status) -> Status {
        self.shared.metrics.reject(reason);
        status
    }

    /// `REJECTED` `job_ended`: the upload's job completed, failed or was cancelled before the
    /// update could be used. A normal end of a job, not an error: nothing is logged above DEBUG.
    fn job_ended(&self, job: u64, state: flotilla_store::JobState) -> Response<v1::UploadResponse> {
        self.shared.metrics.reject("job_ended");
        tracing::debug!(job, state = state.as_str(), "upload refused: its job ended");
        upload_refused(
            "job_ended",
            format!(
                "{}; the update is no longer needed",
                crate::job_end::not_running_text(job, state)
            ),
        )
    }

    /// `PERMISSION_DENIED` unless the job belongs to the caller's tenant.
    fn check_tenant(&self, caller: &Caller, job: &JobRuntime) -> Result<(), Status> {
        if job.spec.tenant == caller.tenant {
            return Ok(());
        }
        Err(self.refuse(
            "tenant_mismatch",
            Status::permission_denied(format!(
                "job {} belongs to another tenant than client {}",
                job.id, caller.id.0
            )),
        ))
    }

    /// The client behind the request's bearer credential. Refusals are `UNAUTHENTICATED` with the
    /// reason in the `flotilla-auth-error` metadata; they count in `auth_failures` and a rejection
    /// reason, and change no state.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let m = &self.shared.metrics;
        let cred = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|c| !c.is_empty() && c.len() <= 512);
        let Some(cred) = cred else {
            m.auth_failure("unauthenticated");
            return Err(self.refuse(
                "unauthenticated",
                AuthError::Missing
                    .status("missing credential: send `authorization: Bearer <credential>`"),
            ));
        };
        match self
            .shared
            .credentials
            .authenticate(&self.shared.store, cred)
            .await
        {
            Ok(c) => {
                let id = c.client_id.0;
                let now = now_ms();
                let stale = self
                    .shared
                    .last_touch
                    .lock()
                    .map(|mut t| crate::bounds::touch_due(&mut t, id, now))
                    .unwrap_or(false);
                if stale {
                    // Off the request path: `last_seen` is informational and must not put a
                    // database write into the latency of a call.
                    let (store, client_id) = (self.shared.store.clone(), c.client_id);
                    tokio::spawn(async move {
                        if let Err(e) = store.touch_client(client_id, now as i64).await {
                            tracing::debug!(error = %e, "touch_client failed");
                        }
                    });
                }
                Ok(Caller {
                    id: ClientId(id),
                    tenant: c.tenant,
                })
            }
            Err(StoreError::UnknownCredential) => {
                m.auth_failure("unauthenticated");
                Err(self.refuse(
                    "unauthenticated",
                    AuthError::Unknown.status("unknown credential"),
                ))
            }
            Err(StoreError::ClientRevoked(id)) => {
                m.auth_failure("revoked");
                Err(self.refuse(
                    "revoked",
                    AuthError::Revoked.status(format!("credential of client {id} was revoked")),
                ))
            }
            Err(StoreError::CredentialExpired { client_id, .. }) => {
                m.auth_failure("credential_expired");
                tracing::info!(client = client_id.0, "expired credential refused");
                Err(self.refuse(
                    "credential_expired",
                    AuthError::Expired.status("credential expired; enroll again"),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "authentication failed: store unavailable");
                Err(Status::unavailable(format!(
                    "store unavailable: {e}; retry later"
                )))
            }
        }
    }

    fn task_proto(
        job: &JobRuntime,
        inner: &JobInner,
        client: ClientId,
        task: &flotilla_core::round::Task,
    ) -> v1::Task {
        let t = &job.spec.train;
        v1::Task {
            job_id: job.id.to_string(),
            round: task.round,
            attempt: task.attempt,
            stage: v1::Stage::from(task.kind) as i32,
            model_version: task.model_version,
            model: Some(inner.current.info.clone()),
            training: Some(v1::TrainingConfig {
                epochs: t.local_epochs,
                batch_size: t.batch_size,
                learning_rate: t.learning_rate,
                seed: task.seed,
                proximal_mu: job.spec.strategy.proximal_mu,
                max_grad_norm: t.max_grad_norm.unwrap_or(0.0),
            }),
            deadline_unix_ms: inner.deadline_ms.unwrap_or(0),
            // Relative to now, because client clocks are not trusted; ≥ 1 so 0 keeps meaning "none".
            time_remaining_ms: inner
                .deadline_ms
                .map_or(0, |d| d.saturating_sub(now_ms()).max(1)),
            stage_index: task.stage,
            server_control: inner.current.control.as_ref().map(|(_, info)| info.clone()),
            secagg_payload: inner
                .machine
                .stage_payload(client, task.round, task.attempt, task.stage)
                .to_vec(),
            secagg: job.secagg,
            evaluation: None,
            // Only a TRAIN task's upload can be compressed.
            compression: if task.kind == flotilla_core::round::StageKind::Train {
                flotilla_proto::compression_to_proto(&job.spec.compression)
            } else {
                None
            },
        }
    }
}

pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::ModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let r = req.into_inner();
        let m = &self.shared.metrics;
        if r.enrollment_token.is_empty()
            || r.enrollment_token.len() > 512
            || r.client_name.len() > 256
        {
            return Err(self.refuse(
                "invalid_enroll",
                Status::invalid_argument(
                    "enrollment_token must be 1..=512 bytes and client_name ≤ 256 bytes",
                ),
            ));
        }
        let now = now_ms() as i64;
        let ttl_ms = i64::try_from(self.shared.credential_ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at_ms = now.saturating_add(ttl_ms);
        // Only spaces are trimmed: a newline or tab anywhere is refused below, not quietly dropped.
        let name = Some(r.client_name.trim_matches(' ')).filter(|n| !n.is_empty());
        // Names end up in logs and on operators' terminals: one documented rule, shared with the SDK.
        if let Some(Err(e)) = name.map(flotilla_core::names::check_client_name) {
            return Err(self.refuse("invalid_enroll", Status::invalid_argument(e.to_string())));
        }
        match self
            .shared
            .store
            .redeem_enrollment_token_named(
                r.enrollment_token.trim(),
                name,
                now,
                Some(expires_at_ms),
            )
            .await
        {
            Ok(e) => {
                Metrics::inc(&m.enrollments);
                // The name is the client's own text: Debug-escaped in the log.
                tracing::info!(client = e.client_id.0, tenant = ?e.tenant, name = ?name.unwrap_or_default(), "client enrolled");
                Ok(Response::new(v1::EnrollResponse {
                    client_id: e.client_id.to_string(),
                    credential: e.credential,
                }))
            }
            Err(
                e @ (StoreError::UnknownToken
                | StoreError::TokenExpired { .. }
                | StoreError::TokenUsedUp { .. }),
            ) => {
                m.auth_failure("enroll_denied");
                Err(self.refuse("enroll_denied", Status::permission_denied(e.to_string())))
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment failed on the store");
                Err(Status::unavailable(
                    "coordinator store unavailable; retry later",
                ))
            }
        }
    }

    async fn check_in(
        &self,
        req: Request<v1::CheckInRequest>,
    ) -> Result<Response<v1::CheckInResponse>, Status> {
        let Caller { id: client, tenant } = self.authenticate(&req).await?;
        let r = req.into_inner();
        let m = &self.shared.metrics;
        Metrics::inc(&m.checkins);
        if r.job_ids.len() > 1024 {
            return Err(self.refuse(
                "invalid_checkin",
                Status::invalid_argument("at most 1024 job_ids"),
            ));
        }
        if let Err(m) = flotilla_policy::check_attributes(r.attributes.iter()) {
            return Err(self.refuse("invalid_checkin", Status::invalid_argument(m)));
        }
        let wanted: Vec<&str> = r.job_ids.iter().map(String::as_str).collect();
        let mut jobs: Vec<Arc<JobRuntime>> = self
            .shared
            .job_list()
            .into_iter()
            .filter(|j| {
                j.spec.tenant == tenant
                    && (wanted.is_empty() || wanted.iter().any(|w| *w == j.id.to_string()))
            })
            .collect();
        let any_job = !jobs.is_empty();
        jobs.retain(|j| r.num_samples >= j.spec.min_samples);
        // The eligibility policies (Cedar, in memory): a job they forbid gives this client nothing.
        let denied = crate::policy::retain_eligible(
            &self.shared.policy.current().set,
            || crate::policy::client_attrs(client.0, &tenant, r.num_samples, &r.attributes),
            &mut jobs,
            |j| (j.id.0, &j.spec),
        );
        let mut retry: Option<u64> = None;
        if !jobs.is_empty() {
            // Spread load: start with a different job on every check-in.
            let start = (self
                .shared
                .rotate
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                as usize)
                % jobs.len();
            jobs.rotate_left(start);
        }
        for job in &jobs {
            let mut inner = job.inner.lock().await;
            if inner.ended.is_some() {
                continue;
            }
            if inner.halted.is_some() {
                // Resumes by itself once the store is back: come back at the job's own pace.
                let ms = inner.machine.policy().retry_after_ms;
                retry = Some(retry.map_or(ms, |r| r.min(ms)));
                continue;
            }
            if inner.machine.is_finished() || inner.machine.failure().is_some() {
                continue;
            }
            let out = self
                .shared
                .drive(job, &mut inner, Event::CheckIn { client }, Some(client))
                .await;
            if let Some(task) = out.task {
                crate::rpc_trace::record_task(job.id.0, task.round, task.attempt, task.stage);
                let t = Self::task_proto(job, &inner, client, &task);
                Metrics::inc(&m.tasks);
                return Ok(Response::new(v1::CheckInResponse {
                    outcome: Some(v1::check_in_response::Outcome::Task(t)),
                }));
            }
            if let Some(ms) = out.retry_after_ms {
                retry = Some(retry.map_or(ms, |r| r.min(ms)));
            }
        }
        // No training work: a federated evaluation of the tenant may ask this client.
        if let Some(t) = self.shared.fed_eval_task(&tenant, client).await {
            Metrics::inc(&m.tasks);
            return Ok(Response::new(v1::CheckInResponse {
                outcome: Some(v1::check_in_response::Outcome::Task(t)),
            }));
        }
        Metrics::inc(&m.retry_afters);
        let reason = match (retry, any_job) {
            (Some(_), _) => "no task for this client now".to_owned(),
            // The one job named has ended: say so (from memory only; no store query per check-in).
            (None, false) => match wanted.as_slice() {
                [one] => match self.shared.ended_recently(one) {
                    Some((id, state)) => crate::job_end::not_running_text(id, state),
                    None => "no running job matches".to_owned(),
                },
                _ => "no running job matches".to_owned(),
            },
            (None, true) if jobs.is_empty() => match denied {
                Some(d) => format!("not eligible: {d}"),
                None => {
                    "not eligible: num_samples below the jobs' eligibility.min_samples".to_owned()
                }
            },
            (None, true) => "no job has work now".to_owned(),
        };
        let retry_after_ms = retry.unwrap_or(5000);
        Ok(Response::new(v1::CheckInResponse {
            outcome: Some(v1::check_in_response::Outcome::RetryAfter(v1::RetryAfter {
                retry_after_ms,
                reason,
            })),
        }))
    }

    type DownloadModelStream = ChunkStream;

    async fn download_model(
        &self,
        req: Request<v1::DownloadRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let caller = self.authenticate(&req).await?;
        let r = req.into_inner();
        if let Some(reg) = r.registry_model {
            return self.registry_download(&caller, &reg, r.offset).await;
        }
        // A job round's model under federated evaluation, for a client holding that task (the
        // job may have ended: the campaign holds the parameters).
        if r.part == v1::ModelPart::Global as i32
            && let Some(params) =
                self.shared
                    .fed_evals
                    .round_params(caller.id.0, &r.job_id, r.model_version)
        {
            return self.stream_params(params, r.offset);
        }
        let Some(job) = self.shared.job(&r.job_id) else {
            return Err(self.refuse(
                "unknown_job",
                self.shared.not_running_status(&r.job_id).await,
            ));
        };
        self.check_tenant(&caller, &job)?;
        crate::rpc_trace::record_job(job.id.0);
        let model = match self.shared.model_version(&job, r.model_version).await {
            Ok(m) => m,
            Err(s) => return Err(self.refuse("unknown_model_version", s)),
        };
        let params = match v1::ModelPart::try_from(r.part) {
            Ok(v1::ModelPart::Global) => model.params.clone(),
            Ok(v1::ModelPart::ServerControl) => match &model.control {
                Some((c, _)) => c.clone(),
                None => {
                    let msg = format!(
                        "job {} has no server control variate for model version {}",
                        job.id, r.model_version
                    );
                    return Err(self.refuse("unknown_model_version", Status::not_found(msg)));
                }
            },
            Err(_) => {
                return Err(self.refuse(
                    "invalid_download",
                    Status::invalid_argument(format!("unknown model part {}", r.part)),
                ));
            }
        };
        self.stream_params(params, r.offset)
    }

    async fn upload_update(
        &self,
        req: Request<Streaming<v1::UploadMessage>>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        self.receive_upload(req).await
    }

    async fn submit_stage_message(
        &self,
        req: Request<v1::StageMessageRequest>,
    ) -> Result<Response<v1::StageMessageResponse>, Status> {
        let caller = self.authenticate(&req).await?;
        let r = req.into_inner();
        let Some(job) = self.shared.job(&r.job_id) else {
            return Err(self.refuse(
                "unknown_job",
                self.shared.not_running_status(&r.job_id).await,
            ));
        };
        self.check_tenant(&caller, &job)?;
        crate::rpc_trace::record_task(job.id.0, r.round, r.attempt, r.stage_index);
        // In a task of its own: the message may finish the round and commit it, which a client
        // that disconnects must not cancel halfway.
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut inner = job.inner.lock().await;
            if let Some(state) = inner.ended {
                return Err(this.refuse(
                    "unknown_job",
                    Status::not_found(crate::job_end::not_running_text(job.id.0, state)),
                ));
            }
            match crate::secagg_round::submit_stage(&this.shared, &job, &mut inner, caller.id, &r)
                .await
            {
                Ok(()) => Ok(Response::new(v1::StageMessageResponse {
                    message: "stage message accepted".into(),
                })),
                Err((reason, status)) => Err(this.refuse(reason, status)),
            }
        });
        task.await.unwrap_or_else(|e| {
            Err(Status::internal(format!(
                "the stage message's task failed: {e}"
            )))
        })
    }

    async fn report_task_failure(
        &self,
        req: Request<v1::TaskFailure>,
    ) -> Result<Response<v1::TaskFailureAck>, Status> {
        self.task_failure(req).await
    }

    async fn query_upload(
        &self,
        req: Request<v1::QueryUploadRequest>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        self.query_partial(req).await
    }

    async fn resolve_model(
        &self,
        req: Request<v1::ResolveModelRequest>,
    ) -> Result<Response<v1::ResolvedModel>, Status> {
        self.resolve_registry_model(req).await
    }

    async fn submit_evaluation(
        &self,
        req: Request<v1::EvaluationReport>,
    ) -> Result<Response<v1::EvaluationAck>, Status> {
        self.evaluation_report(req).await
    }
}
