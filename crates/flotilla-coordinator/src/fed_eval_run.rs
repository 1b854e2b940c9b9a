//! Running federated evaluation campaigns (`fed_eval.rs` keeps their books): starting one with its
//! deadline timer, preparing the task it hands out from its subject (a registry version or a job's
//! committed round: the model's layout, SHA-256 and architecture, loaded once per campaign),
//! handing tasks out at check-in, and finishing: the summary by cohort, stored with
//! `Store::record_evaluation`.

use std::sync::Arc;
use std::time::Duration;

use flotilla_core::round::ClientId;
use flotilla_proto::v1;
use flotilla_store::{EvalKind, EvalSubject, JobId, Store};

use crate::fed_eval::{EvalRequest, EvalStatus, FedEvals, MAX_DEADLINE, Pick, Prepared};
use crate::spec::JobSpec;
use crate::state::{JobRuntime, Shared};

impl Shared {
    /// Starts a federated evaluation campaign and the timer that ends it at its deadline; returns
    /// its id, or why not (one line).
    pub(crate) fn start_fed_eval(&self, req: EvalRequest) -> Result<u64, String> {
        let deadline = req.deadline;
        let (tenant, subject) = (req.tenant.clone(), format!("{:?}", req.subject));
        let id = self.fed_evals.start(req)?;
        tracing::info!(evaluation = id, tenant = ?tenant, subject = %subject, "federated evaluation started");
        let (store, evals) = (self.store.clone(), self.fed_evals.clone());
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            finish(&store, &evals, id).await;
        });
        Ok(id)
    }

    /// `[evaluation] federated_every = K`: after committed round `round` (every K-th, and the
    /// last) a campaign of kind `Job` on that round, asking `federated_clients` clients. Logged
    /// and skipped when the campaigns are at their bound.
    pub(crate) fn schedule_job_fed_eval(&self, job: &JobRuntime, round: u64) {
        let Some(f) = job.spec.federated_evaluation else {
            return;
        };
        if !f.due(round, job.spec.rounds) {
            return;
        }
        let req = EvalRequest {
            tenant: job.spec.tenant.clone(),
            subject: EvalSubject::Round {
                job_id: job.id,
                round,
            },
            kind: EvalKind::Job,
            clients: f.clients,
            deadline: job_eval_deadline(job.spec.round_deadline_ms),
            threshold: None,
        };
        if let Err(why) = self.start_fed_eval(req) {
            tracing::warn!(job = job.id.0, round, error = %why, "federated evaluation of the round skipped");
        }
    }

    /// An evaluation task for `client` of `tenant`, from the first campaign that still asks
    /// clients (check-in, when no job had work for it). Ends the campaigns whose deadline passed
    /// on the way.
    pub(crate) async fn fed_eval_task(
        self: &Arc<Self>,
        tenant: &str,
        client: ClientId,
    ) -> Option<v1::Task> {
        for id in self.fed_evals.due() {
            let (store, evals) = (self.store.clone(), self.fed_evals.clone());
            tokio::spawn(async move { finish(&store, &evals, id).await });
        }
        // Each round prepares at most one campaign; a few are enough to find a task.
        for _ in 0..4 {
            match self.fed_evals.pick(tenant, client.0) {
                Pick::Nothing => return None,
                Pick::Task(t) => return Some(*t),
                Pick::Prepare(id, subject) => {
                    // In a task of its own: a check-in cancelled halfway must not leave the
                    // campaign marked "preparing" for good.
                    let shared = self.clone();
                    let prepared =
                        tokio::spawn(async move { shared.prepare_fed_eval(id, &subject).await })
                            .await
                            .unwrap_or_else(|e| {
                                Err(format!("preparing the evaluation failed: {e}"))
                            });
                    if let Err(why) = &prepared {
                        tracing::warn!(evaluation = id, error = %why, "federated evaluation failed");
                    }
                    self.fed_evals.set_prepared(id, prepared);
                }
            }
        }
        None
    }

    /// The task campaign `id` hands out for `subject`, with the model's parameters.
    async fn prepare_fed_eval(&self, id: u64, subject: &EvalSubject) -> Result<Prepared, String> {
        let store_err = |e: flotilla_store::StoreError| format!("the store failed: {e}");
        let (job_id, round, model_version, registry_model, layout, bytes) = match subject {
            EvalSubject::Round { job_id, round } => {
                let history = self.store.job_history(*job_id).await.map_err(store_err)?;
                let committed = history
                    .iter()
                    .find(|c| c.round == *round)
                    .ok_or_else(|| format!("job {job_id} has no committed round {round}"))?;
                let bytes = self
                    .store
                    .get_model(&committed.model_blob_key)
                    .await
                    .map_err(|e| format!("the model of round {round} is unavailable: {e}"))?;
                let layout = match self.job(&job_id.to_string()) {
                    Some(rt) => rt.layout.clone(),
                    None => self
                        .store
                        .job_layout(*job_id)
                        .await
                        .map_err(store_err)?
                        .ok_or_else(|| format!("job {job_id} has no stored layout"))?,
                };
                (
                    *job_id,
                    *round,
                    committed.model_version,
                    None,
                    layout,
                    bytes,
                )
            }
            EvalSubject::Version { name, version } => {
                let v = self
                    .store
                    .model_version(name, *version)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| format!("no model version {name}@{version}"))?;
                let bytes = self
                    .store
                    .model_version_bytes(&v)
                    .await
                    .map_err(|e| format!("the blob of {name}@{version} is unavailable: {e}"))?;
                let r = v1::RegistryModelRef {
                    name: name.clone(),
                    version: *version,
                };
                (v.job_id, v.round, *version, Some(r), v.layout, bytes)
            }
        };
        if bytes.len() != layout.len() * 4 {
            return Err(format!(
                "the stored model is {} bytes, its layout needs {}",
                bytes.len(),
                layout.len() * 4
            ));
        }
        let params: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut info = flotilla_proto::model_info(&layout, &params);
        info.spec = Some(self.model_spec_of(job_id).await);
        Ok(Prepared {
            task: v1::Task {
                job_id: job_id.to_string(),
                round,
                attempt: 1,
                stage: v1::Stage::Evaluate as i32,
                model_version,
                model: Some(info),
                evaluation: Some(v1::EvaluationTask {
                    evaluation_id: id.to_string(),
                    registry_model,
                }),
                ..Default::default()
            },
            params: Arc::new(params),
        })
    }

    /// The architecture of job `job_id`'s model (`ModelInfo.spec`); "custom" when the job's
    /// spec cannot be read (the layout still describes the model).
    async fn model_spec_of(&self, job_id: JobId) -> v1::ModelSpec {
        if let Some(rt) = self.job(&job_id.to_string()) {
            return rt.model_spec.clone();
        }
        let spec = match self.store.get_job(job_id).await {
            Ok(j) => serde_json::from_value::<JobSpec>(j.spec).ok(),
            Err(_) => None,
        };
        spec.map(|s| s.proto_model_spec())
            .unwrap_or_else(|| v1::ModelSpec {
                kind: "custom".into(),
                ..Default::default()
            })
    }

    /// Ends campaign `id` (at its deadline, or once enough clients reported): summarizes the
    /// reports overall and per cohort and stores the summary. Does nothing if it already ended.
    pub(crate) async fn finish_fed_eval(&self, id: u64) {
        finish(&self.store, &self.fed_evals, id).await;
    }
}

/// How long a job's federated evaluation waits for its clients: twice the job's round deadline,
/// at least a minute and at most [`MAX_DEADLINE`].
fn job_eval_deadline(round_deadline_ms: u64) -> Duration {
    Duration::from_millis(round_deadline_ms.saturating_mul(2))
        .clamp(Duration::from_secs(60), MAX_DEADLINE)
}

/// See [`Shared::finish_fed_eval`] (without a `Shared`, for the deadline timers).
async fn finish(store: &Store, evals: &FedEvals, id: u64) {
    let Some(f) = evals.take_for_finish(id) else {
        return;
    };
    let summary = flotilla_registry::summarize(&f.reports, f.req.threshold);
    let stored = store
        .record_evaluation(
            &f.req.subject,
            f.req.kind,
            u64::from(f.req.clients),
            &summary,
            f.started_at_ms,
        )
        .await;
    let stored_id = match stored {
        Ok(sid) => Some(sid),
        Err(e) => {
            tracing::warn!(evaluation = id, error = %e, "federated evaluation result could not be stored");
            None
        }
    };
    tracing::info!(
        evaluation = id,
        clients = summary.overall.clients,
        accuracy = summary.overall.accuracy,
        "federated evaluation finished"
    );
    evals.finish(id, EvalStatus::Done { summary, stored_id });
}
