//! Rebuilding a job from its last durable commit: at startup for every running job, and for a job
//! a storage fault halted, once the store accepts writes again (`heal`). Whatever the process held
//! beyond that commit is abandoned: the job resumes at a new attempt of the next round, numbered
//! above every attempt any incarnation may have handed tasks out for.

use std::sync::Arc;

use flotilla_core::round::RoundMachine;
use flotilla_store::RecoveredJob;

use crate::models::JobModel;
use crate::spec::JobSpec;
use crate::state::{JobRuntime, Shared};
use crate::submit::{ProvideError, fresh_machine};

/// Why a job could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoverError {
    /// This job cannot be rebuilt now (unreadable snapshot, store unavailable, …).
    #[error("{0}")]
    Job(String),
    /// A blocking task failed: the process is in trouble, not the job.
    #[error("{0}")]
    Task(String),
}

impl Shared {
    /// The model of a job's last committed version, from the blob store.
    async fn committed_model(&self, job: &flotilla_store::JobRecord) -> Result<Vec<f32>, String> {
        let key = job
            .model_blob_key
            .as_deref()
            .ok_or("the job has a snapshot but no committed model")?;
        let bytes = self.store.get_model(key).await.map_err(|e| e.to_string())?;
        flotilla_core::params_from_le_bytes(&bytes)
            .ok_or_else(|| "the stored model is not f32 data".to_owned())
    }

    /// The initial model of a job given by `[model] initial`, before its first commit: the
    /// version-0 blob its row names, in the layout stored with it.
    async fn given_initial_model(&self, rj: &RecoveredJob) -> Result<JobModel, String> {
        let key = rj
            .job
            .model_blob_key
            .as_deref()
            .ok_or("the job names no initial model blob")?;
        let layout = rj.layout.clone().ok_or("the job has no stored layout")?;
        let bytes = self.store.get_model(key).await.map_err(|e| e.to_string())?;
        let initial = flotilla_core::params_from_le_bytes(&bytes)
            .ok_or_else(|| "the stored initial model is not f32 data".to_owned())?;
        if initial.len() != layout.len() {
            return Err(format!(
                "the stored initial model has {} values, the job's layout {}",
                initial.len(),
                layout.len()
            ));
        }
        Ok(JobModel { layout, initial })
    }

    /// Restores every running job from the store: snapshot (+ committed model) → `recover()` → continue.
    pub async fn recover_jobs(&self) -> Result<usize, crate::error::CoordinatorError> {
        let recovered = self.store.load_running_jobs().await?;
        let mut n = 0;
        for rj in recovered {
            let (id, rounds_completed) = (rj.job.id, rj.job.rounds_completed);
            match self.recover_job(rj).await {
                Ok(rt) => {
                    let (round, attempt) = rt
                        .inner
                        .try_lock()
                        .map(|i| i.machine.current_round())
                        .unwrap_or_default();
                    tracing::info!(job = id.0, rounds_completed, round, attempt, "job resumed");
                    self.insert_job(rt);
                    n += 1;
                }
                Err(RecoverError::Job(e)) => tracing::error!(job = id.0, "{e}; job left as is"),
                Err(RecoverError::Task(e)) => return Err(crate::error::CoordinatorError::Task(e)),
            }
        }
        Ok(n)
    }

    /// Rebuilds one running job from its last durable commit, exactly as at startup: the machine
    /// snapshot saved with the commit and the committed model → `RoundMachine::recover` (or a new
    /// machine if no round committed), then the attempt raised above the highest one recorded as
    /// issued, and the new attempt recorded before the runtime exists (so before any of its tasks
    /// can be handed out). The caller inserts the runtime.
    pub(crate) async fn recover_job(
        &self,
        rj: RecoveredJob,
    ) -> Result<Arc<JobRuntime>, RecoverError> {
        let id = rj.job.id;
        let fail =
            |what: &str, e: &dyn std::fmt::Display| RecoverError::Job(format!("{what}: {e}"));
        let spec: JobSpec = serde_json::from_value(rj.job.spec.clone())
            .map_err(|e| fail("stored job spec is unreadable", &e))?;
        let machine = match &rj.machine_state_json {
            Some(s) => {
                let mut m = serde_json::from_str::<RoundMachine>(s)
                    .map_err(|e| fail("stored machine snapshot is unreadable", &e))?;
                if m.rounds_committed() != rj.job.rounds_completed {
                    return Err(RecoverError::Job(format!(
                        "snapshot is at round {} but the store at {}",
                        m.rounds_committed(),
                        rj.job.rounds_completed
                    )));
                }
                // The snapshot holds no model: it is the blob of the last committed version.
                let global = self
                    .committed_model(&rj.job)
                    .await
                    .map_err(|e| fail("cannot load the job's committed model", &e))?;
                m.recover(global)
                    .map_err(|e| fail("the committed model does not fit the job", &e))?;
                Some(m)
            }
            None => None,
        };
        // A model given by `[model] initial` and no round committed: its parameters are the
        // version-0 blob the job row names, its layout the one stored with the job.
        let given =
            match (&machine, spec.is_custom()) {
                (None, true) => Some(self.given_initial_model(&rj).await.map_err(|e| {
                    fail("cannot load the job's initial model (model.initial)", &e)
                })?),
                _ => None,
            };
        // The provider is asked for the initial model only if no round committed (the snapshot
        // and the committed blob are the model otherwise) and the job's model is not given, and
        // for the evaluator if any.
        let want_model = machine.is_none() && given.is_none();
        let provided = match self.provide(&spec, want_model, true).await {
            Ok(p) => p,
            Err(ProvideError::Refused(e)) => {
                return Err(fail("cannot rebuild the job's model", &e));
            }
            Err(ProvideError::Task(e)) => return Err(RecoverError::Task(e)),
        };
        let mut machine = match (machine, given.or(provided.model)) {
            (Some(m), _) => m,
            // No round committed: the job starts over from its initial model, at a new attempt.
            (None, Some(model)) => fresh_machine(&spec, model)
                .map_err(|e| fail("cannot rebuild the job's machine", &e))?,
            (None, None) => return Err(fail("cannot rebuild the job's model", &"not provided")),
        };
        // The layout stored with the job (jobs created before layouts were stored have none) is
        // what its clients and committed models were built for.
        if let Some(stored) = &rj.layout
            && stored != machine.layout()
        {
            return Err(RecoverError::Job(
                "the job's model no longer has the layout stored with it".into(),
            ));
        }
        let (round, _) = machine.current_round();
        if let Some((issued_round, issued_attempt)) = rj.issued_attempt
            && issued_round == round
        {
            machine
                .raise_attempt(issued_attempt.saturating_add(1))
                .map_err(|e| fail("cannot move past the attempts already issued", &e))?;
        }
        let (round, attempt) = machine.current_round();
        if !machine.is_finished() && machine.failure().is_none() {
            self.record_attempt(id, round, attempt).await.map_err(|e| {
                RecoverError::Job(format!(
                    "could not record attempt {attempt} of round {round}: {e}"
                ))
            })?;
        }
        self.runtime(id, spec, machine, provided.evaluator)
            .map_err(|e| fail("cannot resume job", &e))
    }
}
