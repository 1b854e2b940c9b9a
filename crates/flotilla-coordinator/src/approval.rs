//! Starting a job once an approver approved it (four eyes; the decision itself is recorded by
//! `Store::approve_job`, with its audit entry).
//!
//! An approved job starts exactly as a submitted one would: its model comes again from the
//! provider (or, for a model given by `[model] initial`, from the version-0 blob stored at
//! submission), through the same path recovery uses for a job no round of which committed; round 1
//! attempt 1 is recorded before the runtime exists; the privacy budget is checked and registered
//! now, not at submission (a waiting job holds no budget).

use flotilla_store::{JobId, JobState};

use crate::recovery::RecoverError;
use crate::spec::JobSpec;
use crate::state::Shared;

impl Shared {
    /// Starts the approved job `id` (still `pending` in the store). If it cannot start, the job is
    /// marked `failed` with why, so it does not wait forever for a start that will not come; the
    /// error is returned on one line.
    pub(crate) async fn start_approved(&self, id: JobId, approver: &str) -> Result<(), String> {
        match self.try_start_approved(id).await {
            Ok(()) => {
                tracing::info!(job = id.0, approver, "job approved and running");
                Ok(())
            }
            Err(e) => {
                let why = format!("approved by {approver} but could not be started: {e}");
                tracing::error!(job = id.0, "{why}");
                let _ = self
                    .store
                    .set_job_state_with_reason(id, JobState::Failed, Some(&why), "system")
                    .await;
                Err(why)
            }
        }
    }

    async fn try_start_approved(&self, id: JobId) -> Result<(), String> {
        let rj = self
            .store
            .load_approved_job(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("job {} is not an approved job waiting to start", id.0))?;
        let spec: JobSpec = serde_json::from_value(rj.job.spec.clone())
            .map_err(|e| format!("stored job spec is unreadable: {e}"))?;
        // The budget is taken when the job starts: other jobs may have spent it meanwhile.
        self.privacy.check_new(&self.store, &spec).await?;
        let rt = self.recover_job(rj).await.map_err(|e| match e {
            RecoverError::Job(m) | RecoverError::Task(m) => m,
        })?;
        if spec.privacy.is_some() {
            // As at submission: the central noise must not be reproducible from the job seed.
            let mut key = [0u8; 32];
            rand::Rng::fill_bytes(&mut rand::rng(), &mut key);
            rt.inner
                .try_lock()
                .map_err(|_| "the new job's runtime is busy".to_owned())?
                .machine
                .set_noise_key(key);
        }
        self.privacy.register(&self.store, id, &spec).await?;
        self.store
            .set_job_state(id, JobState::Running)
            .await
            .map_err(|e| e.to_string())?;
        self.insert_job(rt);
        Ok(())
    }
}
