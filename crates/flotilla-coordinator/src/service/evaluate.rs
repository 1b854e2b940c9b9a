//! `SubmitEvaluation`: a client's result of a federated evaluation task (`STAGE_EVALUATE`).

use flotilla_proto::v1;
use flotilla_registry::ClientEvalReport;
use tonic::{Request, Response, Status};

use super::CoordinatorService;
use crate::fed_eval::ReportError;

/// Longest `evaluation_id` looked at.
const MAX_EVALUATION_ID_LEN: usize = 20;

impl CoordinatorService {
    /// `SubmitEvaluation`: validated first (INVALID_ARGUMENT, one line), then recorded if the
    /// client holds that evaluation's task and has not reported yet (FAILED_PRECONDITION
    /// otherwise; NOT_FOUND for an unknown or ended evaluation). The report that completes the
    /// campaign finishes it (summary, store) in a task of its own.
    pub(super) async fn evaluation_report(
        &self,
        req: Request<v1::EvaluationReport>,
    ) -> Result<Response<v1::EvaluationAck>, Status> {
        let caller = self.authenticate(&req).await?;
        let r = req.into_inner();
        let invalid = |m: String| self.refuse("invalid_evaluation", Status::invalid_argument(m));
        let id: u64 = match r.evaluation_id.parse() {
            Ok(id) if r.evaluation_id.len() <= MAX_EVALUATION_ID_LEN => id,
            _ => {
                return Err(invalid(format!(
                    "evaluation_id {:?} is not an evaluation id: echo EvaluationTask.evaluation_id",
                    r.evaluation_id.chars().take(32).collect::<String>()
                )));
            }
        };
        // The label bound is checked before the map is copied.
        if r.cohorts.len() > flotilla_registry::MAX_COHORT_LABELS {
            return Err(invalid(format!(
                "at most {} cohort labels, got {}",
                flotilla_registry::MAX_COHORT_LABELS,
                r.cohorts.len()
            )));
        }
        let report = ClientEvalReport {
            loss: r.loss,
            accuracy: r.accuracy,
            samples: r.samples,
            cohorts: r.cohorts.into_iter().collect(),
        };
        if let Err(e) = report.validate() {
            return Err(invalid(format!("evaluation report refused: {e}")));
        }
        match self.shared.fed_evals.report(id, caller.id.0, report) {
            Ok(complete) => {
                if complete {
                    let shared = self.shared.clone();
                    tokio::spawn(async move { shared.finish_fed_eval(id).await });
                }
                Ok(Response::new(v1::EvaluationAck {}))
            }
            Err(ReportError::Unknown) => Err(self.refuse(
                "unknown_evaluation",
                Status::not_found(format!(
                    "evaluation {id} is not running (unknown or already ended)"
                )),
            )),
            Err(ReportError::NotHeld(why)) => Err(self.refuse(
                "evaluation_not_held",
                Status::failed_precondition(format!("evaluation {id}: {why}")),
            )),
        }
    }
}
