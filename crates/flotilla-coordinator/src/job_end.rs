//! The end of a job in memory: a job that completes, fails or is cancelled leaves the job table at
//! once (its status, history and models are served from the store), and calls that name it are
//! answered `NOT_FOUND` "job N is not running (completed)", as `coordinator.proto` says.
//!
//! A request that already holds the job's runtime when the job ends (an upload whose payload was
//! still arriving, a check-in waiting for the job's lock) sees [`JobInner::ended`] under the lock
//! and is refused as `job_ended`, never fed to the machine.

use std::time::Duration;

use flotilla_store::{JobId, JobState};
use tonic::Status;

use crate::state::{JobInner, JobRuntime, Shared};

/// How long a `NOT_FOUND` answer waits for the store to name the state of a job it does not
/// remember before it answers without it.
const STATE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// "job 7 is not running (completed)".
pub(crate) fn not_running_text(id: u64, state: JobState) -> String {
    match state {
        JobState::Running => format!(
            "job {id} is not running on this coordinator (it could not be resumed after a restart)"
        ),
        s => format!("job {id} is not running ({})", s.as_str()),
    }
}

impl Shared {
    /// Ends a job in memory: marks its runtime ended (under its lock, which the caller holds),
    /// removes it from the job table, forgets its privacy bookkeeping of rounds in flight and
    /// remembers its state for the answers to late calls. The store must already have the state.
    pub(crate) fn end_job(&self, job: &JobRuntime, inner: &mut JobInner, state: JobState) {
        inner.ended = Some(state);
        // The idempotency keys are of rounds that will never commit (the machine, with its secure
        // aggregator, goes when the last request holding the runtime lets go).
        inner.accepted.clear();
        self.recently_ended.insert(job.id.0, state);
        self.metrics.job_ended(job.id.0, state.as_str());
        self.privacy.forget_running(job.id);
        self.remove_job(job.id.0);
        if state == JobState::Completed && job.spec.registry.is_some() {
            // `[registry]`: the store has the job completed (the last commit marked it); the
            // registration runs off the job's lock and never fails the job.
            tokio::spawn(crate::registry::register_completed(
                self.store.clone(),
                job.id,
                job.spec.clone(),
                job.layout.clone(),
            ));
        }
    }

    /// The state of a job that is not in the job table, if it is known: from memory, else from the
    /// store (bounded wait; `None` on a store error or for an unknown job).
    pub(crate) async fn ended_state(&self, id: u64) -> Option<JobState> {
        if let Some(s) = self.recently_ended.get(id) {
            return Some(s);
        }
        match tokio::time::timeout(STATE_LOOKUP_TIMEOUT, self.store.get_job(JobId(id))).await {
            Ok(Ok(job)) => Some(job.state),
            _ => None,
        }
    }

    /// `NOT_FOUND` for a call naming `job_id`, which is not in the job table: "job 7 is not
    /// running (completed)", or "no job …" for an id the store does not know either.
    pub(crate) async fn not_running_status(&self, job_id: &str) -> Status {
        let shown: String = job_id.chars().take(64).collect();
        let Ok(id) = job_id.parse::<u64>() else {
            return Status::not_found(format!("no job {shown:?}"));
        };
        match self.ended_state(id).await {
            Some(state) => Status::not_found(not_running_text(id, state)),
            None => Status::not_found(format!("no running job {id}")),
        }
    }

    /// The remembered terminal state of a job (memory only: for the check-in path, which must not
    /// query the store for every named job).
    pub(crate) fn ended_recently(&self, id: &str) -> Option<(u64, JobState)> {
        let id: u64 = id.parse().ok()?;
        self.recently_ended.get(id).map(|s| (id, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_the_state() {
        assert_eq!(
            not_running_text(7, JobState::Completed),
            "job 7 is not running (completed)"
        );
        assert_eq!(
            not_running_text(7, JobState::Cancelled),
            "job 7 is not running (cancelled)"
        );
    }
}
