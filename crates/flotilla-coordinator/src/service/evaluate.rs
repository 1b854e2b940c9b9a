//! `SubmitEvaluation`: a client's result of a federated evaluation task (`STAGE_EVALUATE`).

use flotilla_proto::v1;
use tonic::{Request, Response, Status};

use super::CoordinatorService;

impl CoordinatorService {
    /// `SubmitEvaluation`.
    pub(super) async fn evaluation_report(
        &self,
        req: Request<v1::EvaluationReport>,
    ) -> Result<Response<v1::EvaluationAck>, Status> {
        let _caller = self.authenticate(&req).await?;
        Err(Status::unimplemented(
            "SubmitEvaluation is not implemented yet",
        ))
    }
}
