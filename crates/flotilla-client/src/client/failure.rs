//! Telling the coordinator why a task was given up (`ReportTaskFailure`), so that the round need
//! not wait for its deadline and operators see the reason in the job's status. Best effort: one
//! try with a short timeout; whatever happens, the client carries on.

use std::time::Duration;

use flotilla_proto::v1;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};

use super::{Session, status_text};
use crate::trainer::{BoxError, DatasetTrainerError};

/// Longest a failure report may take: it must never hold the client up.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reason the coordinator accepts, bytes.
const MAX_REASON_BYTES: usize = 256;

/// `reason` as one line of at most [`MAX_REASON_BYTES`], cut at a character boundary.
fn one_line(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    let mut end = line.len().min(MAX_REASON_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

/// What kind of failure a trainer error is: data that does not fit the task's model, or anything
/// else that went wrong while training.
pub(super) fn trainer_failure_kind(e: &BoxError) -> v1::FailureKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DatasetTrainerError>() {
            return match d {
                DatasetTrainerError::SpecMismatch { .. }
                | DatasetTrainerError::LayoutMismatch { .. } => v1::FailureKind::DataIncompatible,
                DatasetTrainerError::Trainer(flotilla_ml::TrainerError::InvalidData(_)) => {
                    v1::FailureKind::DataIncompatible
                }
                _ => v1::FailureKind::TrainingFailed,
            };
        }
        cur = err.source();
    }
    v1::FailureKind::TrainingFailed
}

/// The words a trainer error is reported with: for data that does not fit, only the innermost
/// reason ("input has 63 features, model expects 64"), which is what an operator acts on.
pub(super) fn trainer_failure_reason(e: &BoxError) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
    while let Some(err) = cur {
        if let Some(DatasetTrainerError::SpecMismatch { reason, .. }) =
            err.downcast_ref::<DatasetTrainerError>()
        {
            return reason.clone();
        }
        cur = err.source();
    }
    crate::config::error_chain(e.as_ref())
}

impl Session<'_> {
    /// Reports that this client gives up `task`, and why. Never fails and never waits longer than
    /// [`REPORT_TIMEOUT`]: a coordinator that is unreachable, older (`UNIMPLEMENTED`) or no longer
    /// running the task only costs a debug line.
    pub(super) async fn report_failure(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: &v1::Task,
        kind: v1::FailureKind,
        reason: &str,
    ) {
        let mut req = Request::new(v1::TaskFailure {
            job_id: task.job_id.clone(),
            round: task.round,
            attempt: task.attempt,
            stage_index: task.stage_index,
            kind: kind as i32,
            reason: one_line(reason),
        });
        req.set_timeout(REPORT_TIMEOUT);
        let mut rpc = self.rpc(bearer);
        match tokio::time::timeout(REPORT_TIMEOUT, rpc.report_task_failure(req)).await {
            Ok(Ok(_)) => {
                tracing::debug!(job = %task.job_id, round = task.round, "task failure reported to the coordinator")
            }
            Ok(Err(status)) => tracing::debug!(
                job = %task.job_id,
                code = ?status.code(),
                error = %status_text(&status),
                "the coordinator did not take the task failure report"
            ),
            Err(_) => tracing::debug!(job = %task.job_id, "task failure report timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_short_line() {
        assert_eq!(one_line(" a\nb "), "a b");
        let r = one_line(&"é".repeat(200));
        assert!(r.len() <= MAX_REASON_BYTES && r.len() >= MAX_REASON_BYTES - 1);
    }

    #[test]
    fn data_mismatch_is_told_apart() {
        let e: BoxError = Box::new(DatasetTrainerError::BadConfig(
            "epochs must be at least 1".into(),
        ));
        assert_eq!(trainer_failure_kind(&e), v1::FailureKind::TrainingFailed);
        assert_eq!(
            trainer_failure_reason(&e),
            "invalid training configuration: epochs must be at least 1"
        );
        let e: BoxError = Box::new(DatasetTrainerError::Trainer(
            flotilla_ml::TrainerError::InvalidData("x".into()),
        ));
        assert_eq!(trainer_failure_kind(&e), v1::FailureKind::DataIncompatible);
        let plain: BoxError = "boom".into();
        assert_eq!(
            trainer_failure_kind(&plain),
            v1::FailureKind::TrainingFailed
        );
    }
}
