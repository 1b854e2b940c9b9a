//! Moving models: the resumable, verified download of a task's model and the resumable,
//! idempotent upload of an update, with the failure accounting that decides when to give a task up.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_proto::v1;
use flotilla_proto::{ModelReceiver, TransferError};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request, Status};

use super::*;

/// What an upload carries: parameters (or a masked input's words) as `f32`s, or bytes already
/// encoded (a compressed delta). Shared, so a resumed stream re-reads it without a copy.
#[derive(Debug, Clone)]
pub(super) enum Payload {
    /// Little-endian `f32` values.
    Values(Arc<Vec<f32>>),
    /// The payload's bytes as they go on the wire.
    Encoded(Arc<Vec<u8>>),
}

impl Payload {
    /// The chunk of at most `chunk_bytes` bytes starting at byte `offset`, if any is left.
    fn chunk(&self, chunk_bytes: usize, offset: u64) -> Option<(u64, Vec<u8>)> {
        match self {
            Self::Values(v) => flotilla_proto::chunk_f32_from(v, chunk_bytes, offset).next(),
            Self::Encoded(b) => {
                let start = usize::try_from(offset).ok().filter(|s| *s < b.len())?;
                let end = start.saturating_add(chunk_bytes.max(1)).min(b.len());
                Some((offset, b[start..end].to_vec()))
            }
        }
    }
}

/// Failure accounting of one transfer, deciding when to give a task up.
///
/// Attempts that make no progress (or restart from zero) are bounded by [`MAX_STALLS`]; transient
/// failures (coordinator unreachable) are bounded by the task's deadline plus [`DEADLINE_GRACE`], or
/// by [`MAX_TRANSIENT`] when the task has no deadline.
pub(super) struct Retries {
    deadline: Option<SystemTime>,
    pub(super) stalls: u32,
    pub(super) transient: u32,
}

impl Retries {
    pub(super) fn new(deadline: Option<SystemTime>) -> Self {
        Self {
            deadline,
            stalls: 0,
            transient: 0,
        }
    }

    pub(super) fn exhausted(&self) -> bool {
        let failed = self.stalls > 0 || self.transient > 0;
        self.stalls > MAX_STALLS
            || (failed && past(self.deadline))
            || (self.deadline.is_none() && self.transient > MAX_TRANSIENT)
    }
}

impl Session<'_> {
    /// Downloads and verifies the task's model, resuming broken streams.
    pub(super) async fn download(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: &v1::Task,
        part: v1::ModelPart,
        receiver: ModelReceiver,
        deadline: Option<SystemTime>,
    ) -> Result<Done<Vec<f32>>, ClientError> {
        let req = v1::DownloadRequest {
            job_id: task.job_id.clone(),
            model_version: task.model_version,
            offset: 0,
            part: part as i32,
            // A federated evaluation of a registered model version: the registry serves it.
            registry_model: task
                .evaluation
                .as_ref()
                .and_then(|e| e.registry_model.clone()),
        };
        self.download_request(bearer, req, receiver, deadline).await
    }

    /// Downloads and verifies what `base` names (its offset is set for every attempt: resuming a
    /// broken stream from the bytes already received).
    pub(super) async fn download_request(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        base: v1::DownloadRequest,
        receiver: ModelReceiver,
        deadline: Option<SystemTime>,
    ) -> Result<Done<Vec<f32>>, ClientError> {
        let pristine = receiver.clone();
        let mut receiver = receiver;
        let mut retries = Retries::new(deadline);
        loop {
            let offset = receiver.received();
            if offset > 0 {
                self.stats.download_resumes += 1;
                tracing::info!(
                    offset,
                    total = receiver.total_bytes(),
                    "resuming model download"
                );
            }
            let req = v1::DownloadRequest {
                offset,
                ..base.clone()
            };
            let mut rpc = self.rpc(bearer);
            let result = stream_model(&mut rpc, req, &mut receiver).await;
            let progressed = receiver.received() > offset;
            if progressed {
                self.succeeded();
                retries.transient = 0;
            }
            match result {
                Ok(()) if receiver.is_complete() => {
                    match std::mem::replace(&mut receiver, pristine.clone()).finish() {
                        Ok(params) => return Ok(Done::Ok(params)),
                        Err(e) => {
                            tracing::warn!(error = %e, "downloaded model failed verification; downloading again");
                            retries.stalls += 1;
                        }
                    }
                }
                Ok(()) => {
                    tracing::warn!(
                        received = receiver.received(),
                        total = receiver.total_bytes(),
                        "model stream ended early"
                    );
                    if !progressed {
                        retries.stalls += 1;
                        let s = Status::unavailable("model stream ended without data");
                        self.back_off("DownloadModel", &s).await;
                    }
                }
                Err(StreamError::Status(status)) => match self.classify(&status) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient => {
                        retries.transient += 1;
                        self.back_off("DownloadModel", &status).await;
                    }
                    Failure::Refused if job_ended(&status) => {
                        tracing::info!(error = %status_text(&status), "the task's job is no longer running; task dropped");
                        return Ok(Done::Outdated);
                    }
                    Failure::Refused => {
                        tracing::warn!(code = ?status.code(), error = %status_text(&status), "model download refused; task abandoned");
                        return Ok(Done::Abandoned);
                    }
                },
                Err(StreamError::Idle) => {
                    retries.transient += 1;
                    let s = Status::deadline_exceeded("model stream idle");
                    self.back_off("DownloadModel", &s).await;
                }
                Err(StreamError::Transfer(TransferError::UnexpectedOffset { expected, got })) => {
                    // Nothing was changed by the bad chunk: ask again from where we are.
                    tracing::warn!(expected, got, "model chunk out of place; resuming");
                    retries.stalls += 1;
                }
                Err(StreamError::Transfer(e)) => {
                    tracing::warn!(error = %e, "bad model chunk; downloading again from the start");
                    receiver = pristine.clone();
                    retries.stalls += 1;
                }
            }
            if retries.exhausted() {
                tracing::warn!(
                    stalls = retries.stalls,
                    transient = retries.transient,
                    "model download keeps failing; task abandoned"
                );
                return Ok(Done::Abandoned);
            }
        }
    }

    /// Uploads the update, resuming with `QueryUpload` after a broken stream.
    pub(super) async fn upload(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        header: v1::UpdateHeader,
        payload: Payload,
        deadline: Option<SystemTime>,
    ) -> Result<Done<()>, ClientError> {
        let total = header.total_bytes;
        let chunk = self.client.config.upload_chunk_bytes;
        let upload_id = header.upload_id.clone();
        let mut offset = 0u64;
        let mut query_first = false;
        let mut retries = Retries::new(deadline);
        loop {
            if retries.exhausted() {
                tracing::warn!(
                    %upload_id,
                    stalls = retries.stalls,
                    transient = retries.transient,
                    "upload keeps failing; task abandoned"
                );
                return Ok(Done::Abandoned);
            }
            let mut rpc = self.rpc(bearer);
            if query_first {
                let mut req = Request::new(v1::QueryUploadRequest {
                    upload_id: upload_id.clone(),
                });
                req.set_timeout(UNARY_TIMEOUT);
                match rpc.query_upload(req).await {
                    Ok(resp) => {
                        self.succeeded();
                        retries.transient = 0;
                        let resp = resp.into_inner();
                        match self.settle(&resp) {
                            Some(done) => return Ok(done),
                            None => {
                                offset = if resp.resume_offset <= total {
                                    resp.resume_offset
                                } else {
                                    0
                                };
                            }
                        }
                    }
                    Err(status) if status.code() == Code::NotFound => {
                        self.succeeded();
                        offset = 0;
                    }
                    Err(status) => match self.classify(&status) {
                        Failure::Fatal(e) => return Err(e),
                        Failure::Transient => {
                            retries.transient += 1;
                            self.back_off("QueryUpload", &status).await;
                            continue;
                        }
                        Failure::Refused => {
                            tracing::warn!(code = ?status.code(), error = %status_text(&status), "upload query refused; task abandoned");
                            return Ok(Done::Abandoned);
                        }
                    },
                }
                query_first = false;
            }
            if offset > 0 {
                self.stats.upload_resumes += 1;
                tracing::info!(%upload_id, offset, total, "resuming upload");
            }
            let messages = upload_stream(header.clone(), payload.clone(), chunk, offset);
            let call = rpc.upload_update(messages);
            let result = match tokio::time::timeout(upload_timeout(total, offset), call).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("upload timed out")),
            };
            match result {
                Ok(resp) => {
                    self.succeeded();
                    retries.transient = 0;
                    // The stream carried the payload from `offset` to the end.
                    self.stats.upload_bytes += total.saturating_sub(offset);
                    let resp = resp.into_inner();
                    if let Some(done) = self.settle(&resp) {
                        return Ok(done);
                    }
                    if resp.status == v1::UploadStatus::Incomplete as i32
                        && resp.resume_offset <= total
                    {
                        if resp.resume_offset <= offset {
                            retries.stalls += 1;
                        }
                        offset = resp.resume_offset;
                    } else {
                        tracing::warn!(status = resp.status, message = %resp.message, "unexpected upload answer; asking where the upload stands");
                        retries.stalls += 1;
                        query_first = true;
                    }
                }
                Err(status) => match (status.code(), self.classify(&status)) {
                    (_, Failure::Fatal(e)) => return Err(e),
                    (Code::Aborted, _) => {
                        tracing::info!(error = %status_text(&status), "upload out of step; asking where it stands");
                        retries.stalls += 1;
                        query_first = true;
                    }
                    (_, Failure::Transient) => {
                        retries.transient += 1;
                        self.back_off("UploadUpdate", &status).await;
                        query_first = true;
                    }
                    (Code::DataLoss, _) => {
                        tracing::warn!(error = %status_text(&status), "coordinator saw a corrupted upload; restarting it");
                        retries.stalls += 1;
                        offset = 0;
                    }
                    (_, Failure::Refused) if job_ended(&status) => {
                        tracing::info!(error = %status_text(&status), "the task's job is no longer running; update dropped");
                        return Ok(Done::Outdated);
                    }
                    (_, Failure::Refused) => {
                        tracing::warn!(code = ?status.code(), error = %status_text(&status), "upload refused; task abandoned");
                        return Ok(Done::Abandoned);
                    }
                },
            }
        }
    }

    /// Final outcomes of an upload (`ACCEPTED`, `DUPLICATE`, `REJECTED`); `None` to keep going.
    fn settle(&mut self, resp: &v1::UploadResponse) -> Option<Done<()>> {
        match v1::UploadStatus::try_from(resp.status) {
            Ok(v1::UploadStatus::Accepted) => {
                self.stats.uploads_accepted += 1;
                tracing::info!(detail = %resp.message, "update accepted");
                Some(Done::Ok(()))
            }
            Ok(v1::UploadStatus::Duplicate) => {
                self.stats.uploads_duplicate += 1;
                tracing::info!(message = %resp.message, "update had already been accepted");
                Some(Done::Ok(()))
            }
            Ok(v1::UploadStatus::Rejected) if resp.reason == "job_ended" => {
                self.stats.uploads_rejected += 1;
                tracing::info!(message = %resp.message, "the task's job ended before the update was used; checking in for other work");
                Some(Done::Outdated)
            }
            Ok(v1::UploadStatus::Rejected)
                if matches!(resp.reason.as_str(), "too_stale" | "no_task") =>
            {
                self.stats.uploads_rejected += 1;
                tracing::info!(
                    reason = %resp.reason,
                    message = %resp.message,
                    "update no longer wanted (the global model moved on); checking in for fresh work"
                );
                Some(Done::Outdated)
            }
            Ok(v1::UploadStatus::Rejected) => {
                self.stats.uploads_rejected += 1;
                tracing::warn!(reason = %resp.reason, message = %resp.message, "update rejected by the coordinator");
                Some(Done::Abandoned)
            }
            _ => None,
        }
    }
}

/// Why streaming a model stopped.
enum StreamError {
    Status(Status),
    Transfer(TransferError),
    Idle,
}

/// Opens a download at `req.offset` and pushes chunks into `receiver` until the stream ends.
async fn stream_model(
    rpc: &mut Rpc,
    req: v1::DownloadRequest,
    receiver: &mut ModelReceiver,
) -> Result<(), StreamError> {
    let mut stream = match tokio::time::timeout(UNARY_TIMEOUT, rpc.download_model(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return Err(StreamError::Status(s)),
        Err(_) => return Err(StreamError::Idle),
    };
    loop {
        match tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()).await {
            Err(_) => return Err(StreamError::Idle),
            Ok(Err(s)) => return Err(StreamError::Status(s)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(chunk))) => {
                receiver.push(&chunk).map_err(StreamError::Transfer)?;
            }
        }
    }
}

/// The `UploadUpdate` messages from `offset`, produced lazily from the shared parameters.
fn upload_stream(
    header: v1::UpdateHeader,
    payload: Payload,
    chunk_bytes: usize,
    offset: u64,
) -> impl tokio_stream::Stream<Item = v1::UploadMessage> + Send + 'static {
    let mut header = Some(header);
    let mut next = offset;
    tokio_stream::iter(std::iter::from_fn(move || {
        if let Some(h) = header.take() {
            return Some(v1::UploadMessage {
                kind: Some(v1::upload_message::Kind::Header(h)),
            });
        }
        let (offset, data) = payload.chunk(chunk_bytes, next)?;
        next = offset + data.len() as u64;
        Some(v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Chunk(v1::UpdateChunk {
                offset,
                data,
            })),
        })
    }))
}

/// Generous bound on one upload stream: 2 minutes plus 1 s per MiB still to send.
fn upload_timeout(total: u64, offset: u64) -> Duration {
    STREAM_IDLE_TIMEOUT + Duration::from_secs(total.saturating_sub(offset) >> 20)
}
