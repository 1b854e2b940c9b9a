//! A federated evaluation task (`STAGE_EVALUATE`): download the model it names (a registered
//! version or a job's committed model, SHA-256 and layout checked), evaluate it with
//! [`LocalTrainer::evaluate`] on the blocking thread, and report loss, accuracy, sample count and
//! this client's cohort labels with `SubmitEvaluation`. A trainer that makes no evaluation (or a
//! failed or unusable one) reports nothing: the task is logged and dropped.
//!
//! [`LocalTrainer::evaluate`]: crate::LocalTrainer::evaluate

use std::sync::Arc;

use flotilla_proto::v1;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tracing::Instrument;

use super::task::check_eval_task;
use super::*;

impl Session<'_> {
    pub(super) async fn do_evaluation(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: v1::Task,
    ) -> Result<(), ClientError> {
        let (info, evaluation_id, receiver) = match check_eval_task(&task, SystemTime::now()) {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(%reason, "skipping evaluation task");
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        tracing::info!(evaluation = %evaluation_id.escape_debug(), job = %info.job_id.escape_debug(), model_version = info.model_version, "evaluation task received");
        let deadline = info.deadline.map(|d| d + DEADLINE_GRACE);
        let global = match self
            .download(bearer, &task, v1::ModelPart::Global, receiver, deadline)
            .instrument(tracing::info_span!("download", part = "evaluated"))
            .await?
        {
            Done::Ok(p) => Arc::new(p),
            Done::Abandoned | Done::Outdated => {
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        let info = Arc::new(info);
        let Some(mut trainer) = self.trainer.take() else {
            return Err(ClientError::TrainerPanicked("trainer missing".into()));
        };
        let (i, g) = (Arc::clone(&info), Arc::clone(&global));
        let joined = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let r = trainer.evaluate(&i, &g);
            (trainer, r, started.elapsed())
        })
        .instrument(tracing::info_span!("evaluate"))
        .await;
        let evaluated = match joined {
            Ok((trainer, r, took)) => {
                self.trainer = Some(trainer);
                self.stats.train_time += took;
                r
            }
            Err(e) => return Err(ClientError::TrainerPanicked(e.to_string())),
        };
        if matches!(evaluated, Ok(None)) {
            tracing::warn!(evaluation = %evaluation_id.escape_debug(), "the trainer makes no evaluation (LocalTrainer::evaluate returned None); evaluation task dropped");
            self.pause_after_failed_task().await;
            return Ok(());
        }
        let Some(eval) = eval::checked(&info, evaluated) else {
            self.stats.evaluations_dropped += 1;
            self.pause_after_failed_task().await;
            return Ok(());
        };
        let report = v1::EvaluationReport {
            evaluation_id: evaluation_id.clone(),
            loss: eval.loss,
            accuracy: eval.accuracy,
            samples: eval.samples,
            cohorts: self
                .client
                .config
                .cohorts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let mut retries = Retries::new(deadline);
        loop {
            let mut req = Request::new(report.clone());
            req.set_timeout(UNARY_TIMEOUT);
            let mut rpc = self.rpc(bearer);
            match rpc.submit_evaluation(req).await {
                Ok(_) => {
                    self.succeeded();
                    self.stats.tasks_done += 1;
                    self.stats.evaluation_tasks += 1;
                    tracing::info!(evaluation = %evaluation_id.escape_debug(), loss = eval.loss, accuracy = eval.accuracy, samples = eval.samples, "evaluation reported");
                    return Ok(());
                }
                Err(status) => match self.classify(&status) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient => {
                        retries.transient += 1;
                        if retries.exhausted() {
                            tracing::warn!(evaluation = %evaluation_id.escape_debug(), "the coordinator stays unreachable; evaluation dropped");
                            self.pause_after_failed_task().await;
                            return Ok(());
                        }
                        self.back_off("SubmitEvaluation", &status).await;
                    }
                    Failure::Refused => {
                        tracing::warn!(code = ?status.code(), error = %status_text(&status), "evaluation report refused");
                        self.pause_after_failed_task().await;
                        return Ok(());
                    }
                },
            }
        }
    }
}
