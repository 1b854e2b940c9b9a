//! `ReportTaskFailure`: a client gives up the task it holds and says why.

use flotilla_core::round::Event;
use flotilla_proto::v1;
use tonic::{Request, Response, Status};

use super::CoordinatorService;
use crate::metrics::Metrics;
use crate::reasons::{FailureKind, clean_client_reason};

impl CoordinatorService {
    /// Validates the report like every client message (credential, tenant, the client must hold
    /// that task now, bounded reason), records the reason against the round attempt, then feeds
    /// the machine [`Event::TaskFailed`], which counts the client as dropped out of the stage.
    pub(super) async fn task_failure(
        &self,
        req: Request<v1::TaskFailure>,
    ) -> Result<Response<v1::TaskFailureAck>, Status> {
        let caller = self.authenticate(&req).await?;
        let client = caller.id;
        let r = req.into_inner();
        let kind = FailureKind::from_wire(r.kind)
            .map_err(|m| self.refuse("invalid_task_failure", Status::invalid_argument(m)))?;
        let text = clean_client_reason(&r.reason, kind)
            .map_err(|m| self.refuse("invalid_task_failure", Status::invalid_argument(m)))?;
        let Some(job) = self.shared.job(&r.job_id) else {
            return Err(self.refuse(
                "unknown_job",
                self.shared.not_running_status(&r.job_id).await,
            ));
        };
        self.check_tenant(&caller, &job)?;
        crate::rpc_trace::record_task(job.id.0, r.round, r.attempt, r.stage_index);
        // In a task of its own: the failure may close the stage and commit the round, which a
        // client that disconnects must not cancel halfway.
        let this = self.clone();
        tokio::spawn(async move { this.record_task_failure(job, client, r, kind, text).await })
            .await
            .unwrap_or_else(|e| {
                Err(Status::internal(format!(
                    "the task failure's task failed: {e}"
                )))
            })
    }

    async fn record_task_failure(
        &self,
        job: std::sync::Arc<crate::state::JobRuntime>,
        client: flotilla_core::round::ClientId,
        r: v1::TaskFailure,
        kind: FailureKind,
        text: String,
    ) -> Result<Response<v1::TaskFailureAck>, Status> {
        let mut inner = job.inner.lock().await;
        if let Some(state) = inner.ended {
            return Err(self.refuse(
                "unknown_job",
                Status::not_found(crate::job_end::not_running_text(job.id.0, state)),
            ));
        }
        if inner.halted.is_some() {
            return Err(Status::unavailable(
                "the job is halted until the coordinator restarts; nothing to report",
            ));
        }
        if let Err(why) =
            inner
                .machine
                .check_task_failure(client, r.round, r.attempt, r.stage_index)
        {
            let msg = format!(
                "client {} holds no task for round {} attempt {} stage {} of job {}: {why}",
                client.0, r.round, r.attempt, r.stage_index, job.id
            );
            return Err(self.refuse("task_failure_refused", Status::failed_precondition(msg)));
        }
        // Recorded before the event, so that an attempt this failure ends is summarised with it.
        inner.notes.failures.record(r.round, r.attempt, kind, &text);
        Metrics::inc(&self.shared.metrics.task_failures);
        tracing::info!(
            job = job.id.0,
            client = client.0,
            round = r.round,
            attempt = r.attempt,
            stage = r.stage_index,
            kind = kind.name(),
            reason = ?text,
            "client gave up its task"
        );
        let event = Event::TaskFailed {
            client,
            round: r.round,
            attempt: r.attempt,
            stage: r.stage_index,
        };
        let out = self
            .shared
            .drive(&job, &mut inner, event, Some(client))
            .await;
        if let Some(msg) = out.persist_failed {
            return Err(Status::unavailable(format!(
                "store unavailable: {msg}; retry later"
            )));
        }
        Ok(Response::new(v1::TaskFailureAck {
            message: "task failure recorded".into(),
        }))
    }
}
