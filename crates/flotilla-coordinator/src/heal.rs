//! Healing jobs a storage fault halted. A commit that fails after its retries (database down, blob
//! disk full, data directory read-only) halts its job: the in-memory machine is ahead of the store.
//! Every [`HEAL_INTERVAL`] this task checks whether the store accepts writes again — a scratch blob
//! of the model's size is written and deleted, the job is reloaded and its next attempt recorded —
//! and then replaces the halted runtime by one rebuilt from the last durable commit, exactly as a
//! restart would (`recovery.rs`). The attempt whose commit failed is abandoned (its clients'
//! uploads are refused as stale and they retrain), and the model blobs no committed round
//! references are removed first. One ERROR line is logged at the halt, one INFO line at the heal;
//! failed checks in between only at DEBUG.

use std::sync::Arc;

use flotilla_store::JobState;

use crate::metrics::Metrics;
use crate::recovery::RecoverError;
use crate::retry::HEAL_INTERVAL;
use crate::state::{JobRuntime, Shared};

/// Retries halted jobs every [`HEAL_INTERVAL`], for as long as the server runs.
pub(crate) async fn heal_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEAL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for job in shared.job_list() {
            // A job whose lock is busy is making progress (or halting right now): next time.
            let halted = job
                .inner
                .try_lock()
                .ok()
                .and_then(|i| i.halted.clone().map(|h| (h, i.current.version)));
            if let Some((cause, durable)) = halted {
                shared.heal(&job, &cause, durable).await;
            }
        }
    }
}

impl Shared {
    /// One attempt to resume a halted job. The halted runtime takes no events (its `halted` stays
    /// set), so its lock is not held meanwhile and clients and admin calls are not held up.
    /// `durable` is the model version this process last committed for it.
    async fn heal(&self, job: &Arc<JobRuntime>, cause: &str, durable: u64) {
        let id = job.id;
        let model_bytes = job.layout.len() * 4;
        if let Err(e) = self.store.probe_blob_write(model_bytes).await {
            tracing::debug!(job = id.0, error = %e, "still halted: the blob store does not accept writes");
            return;
        }
        let rj = match self.store.load_running_job(id).await {
            Ok(Some(rj)) => rj,
            Ok(None) => {
                // Cancelled while halted, or the commit that seemed to fail had landed and was the
                // last one: nothing to resume. Ended like any other job (state remembered for late
                // calls, privacy bookkeeping forgotten) when the store names its state.
                match self.ended_state(id.0).await.filter(|s| s.is_terminal()) {
                    Some(state) => self.end_job(job, &mut *job.inner.lock().await, state),
                    None => {
                        self.replace_job(job, None);
                    }
                }
                tracing::info!(
                    job = id.0,
                    "halted job is no longer running in the store; dropped"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(job = id.0, error = %e, "still halted: the database does not answer");
                return;
            }
        };
        // The failed commit's model (and any other unreferenced one) goes before the job resumes.
        match self.store.sweep_orphan_blobs(Some(id)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                job = id.0,
                removed = n,
                "removed model blobs no committed round references"
            ),
            Err(e) => {
                tracing::warn!(job = id.0, error = %e, "could not remove orphan model blobs; a restart sweeps them")
            }
        }
        let rounds_completed = rj.job.rounds_completed;
        if rounds_completed > durable {
            // The commit reported as failed had in fact landed: admit the next round as a
            // successful commit does.
            if let Err(why) = self
                .privacy
                .admit_next(&self.store, id, &job.spec, rounds_completed)
                .await
            {
                tracing::warn!(job = id.0, reason = %why, "job stopped by its privacy budget");
                if let Err(e) = self
                    .store
                    .set_job_state_with_reason(id, JobState::Failed, Some(&why), "system")
                    .await
                {
                    tracing::debug!(job = id.0, error = %e, "could not mark the job failed; retrying");
                    return;
                }
                self.end_job(job, &mut *job.inner.lock().await, JobState::Failed);
                return;
            }
        }
        match self.recover_job(rj).await {
            Ok(rt) => {
                let (round, attempt) = rt
                    .inner
                    .try_lock()
                    .map(|i| i.machine.current_round())
                    .unwrap_or_default();
                if self.replace_job(job, Some(rt)) {
                    Metrics::inc(&self.metrics.jobs_healed);
                    tracing::info!(
                        job = id.0,
                        rounds_completed,
                        round,
                        attempt,
                        halted_by = ?cause,
                        "store accepts writes again; job resumed from its last committed round"
                    );
                }
            }
            Err(RecoverError::Job(e) | RecoverError::Task(e)) => {
                tracing::debug!(job = id.0, error = %e, "still halted: the job could not be rebuilt");
            }
        }
    }

    /// Puts `new` (or nothing) in place of `old` if `old` is still the job's runtime (a cancel
    /// may have removed it meanwhile). Whether it did.
    fn replace_job(&self, old: &Arc<JobRuntime>, new: Option<Arc<JobRuntime>>) -> bool {
        let Ok(mut jobs) = self.jobs.write() else {
            return false;
        };
        match jobs.get(&old.id.0) {
            Some(cur) if Arc::ptr_eq(cur, old) => {
                match new {
                    Some(rt) => jobs.insert(old.id.0, rt),
                    None => jobs.remove(&old.id.0),
                };
                true
            }
            _ => false,
        }
    }
}
