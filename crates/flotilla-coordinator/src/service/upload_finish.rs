//! The end of an upload, once its payload is complete: the job's verdict. Run in a task of its
//! own ([`CoordinatorService::finish_upload`]), so that a client that disconnects cannot cancel a
//! commit halfway.

use std::sync::Arc;

use flotilla_core::round::{Event, RejectReason, ReportMetrics};
use flotilla_proto::v1;
use tonic::{Response, Status};

use super::{CoordinatorService, reject_name, upload_refused, upload_response};
use crate::state::{JobRuntime, UploadKey};

/// A complete, verified upload.
pub(crate) struct Finished {
    pub job: Arc<JobRuntime>,
    pub header: v1::UpdateHeader,
    pub key: UploadKey,
    pub values: Vec<f32>,
    pub total: u64,
    /// A secure-aggregation masked input (`u32` words).
    pub masked: bool,
    /// A compressed delta (`PAYLOAD_KIND_COMPRESSED_DELTA`): `values` are `parameters − base
    /// model`, decoded; the base is added back here, under the job's lock.
    pub compressed: bool,
    /// The header's training loss and federated evaluation (`upload::report_metrics`).
    pub metrics: ReportMetrics,
    /// The upload slot, released once the update is folded in.
    pub permit: crate::admission::UploadSlot,
}

impl CoordinatorService {
    /// Feeds a complete upload to its job and answers it.
    pub(super) async fn finish_upload(
        &self,
        upload: Finished,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        let Finished {
            job,
            header,
            key,
            mut values,
            total,
            masked,
            compressed,
            metrics,
            permit,
        } = upload;
        let shared = &self.shared;
        let m = &shared.metrics;
        let client = key.3;
        let mut inner = job.inner.lock().await;
        // The job ended while the payload arrived (cancelled, completed, failed): nothing to retry.
        if let Some(state) = inner.ended {
            return Ok(self.job_ended(job.id.0, state));
        }
        if let Some(sha) = inner.accepted.get(&key) {
            let dup = *sha == header.sha256;
            return Ok(if dup {
                m.upload_duplicate();
                upload_response(
                    v1::UploadStatus::Duplicate,
                    "this update was already accepted",
                    total,
                )
            } else {
                m.upload_rejected("conflicting_update");
                upload_refused(
                    "conflicting_update",
                    "a different update was already accepted for this round, attempt and stage",
                )
            });
        }
        if masked {
            // Secure aggregation: the words go to the secagg server's running masked sum.
            let words = flotilla_proto::masked_words(&values);
            drop(values);
            let res = crate::secagg_round::accept_masked(
                shared,
                &job,
                &mut inner,
                client,
                (&header, metrics),
                words,
            )
            .await;
            drop(permit);
            return match res {
                Ok(()) => {
                    inner.accepted.insert(key, header.sha256.clone());
                    m.upload_accepted();
                    Ok(upload_response(
                        v1::UploadStatus::Accepted,
                        "masked input accepted",
                        total,
                    ))
                }
                Err((reason, status)) => Err(self.refuse(reason, status)),
            };
        }
        if compressed && let Err(refusal) = add_base(&mut values, &header, &inner.current) {
            drop(permit);
            m.upload_rejected(refusal.0);
            return Ok(upload_refused(refusal.0, refusal.1));
        }
        let event = Event::Report {
            client,
            round: header.round,
            attempt: header.attempt,
            stage: header.stage_index,
            num_samples: header.num_samples,
            update: &values,
            metrics,
        };
        let out = shared.drive(&job, &mut inner, event, Some(client)).await;
        drop(permit);
        // An update whose commit failed was not accepted after all: never `DUPLICATE` for it.
        if out.accepted && out.persist_failed.is_none() {
            inner.accepted.insert(key, header.sha256.clone());
        }
        if let (Some(state), false) = (out.ended, out.accepted) {
            return Ok(self.job_ended(job.id.0, state));
        }
        if let Some(msg) = out.persist_failed {
            return Err(Status::unavailable(format!(
                "store unavailable: {msg}; retry later"
            )));
        }
        if out.accepted {
            m.upload_accepted();
            return Ok(upload_response(
                v1::UploadStatus::Accepted,
                "update accepted",
                total,
            ));
        }
        let reason = out.reject.unwrap_or(RejectReason::NotAccepting("unknown"));
        m.upload_rejected(reject_name(&reason));
        Ok(upload_refused(reject_name(&reason), reason.to_string()))
    }
}

/// Turns a decoded compressed delta into the parameters it stands for: `base + delta`, where the
/// base must be the model version the update was trained from (for round-based jobs, the current
/// one). The refusal is the counter's reason and the one-line message.
fn add_base(
    delta: &mut [f32],
    header: &v1::UpdateHeader,
    base: &crate::state::ModelVersion,
) -> Result<(), (&'static str, String)> {
    if header.base_model_version != base.version {
        return Err((
            "stale_base",
            format!(
                "the compressed update is a delta from model version {}, but the round's model is version {}; train on the current model",
                header.base_model_version, base.version
            ),
        ));
    }
    if delta.len() != base.params.len() {
        return Err((
            "size_mismatch",
            format!(
                "the compressed update decodes to {} values, the model has {}",
                delta.len(),
                base.params.len()
            ),
        ));
    }
    for (d, b) in delta.iter_mut().zip(base.params.iter()) {
        *d += b;
    }
    // Decoded deltas are finite, but a sum near f32::MAX need not be.
    if let Some(i) = delta.iter().position(|v| !v.is_finite()) {
        return Err((
            "non_finite",
            format!("parameter {i} of the decoded update (model + delta) is not finite"),
        ));
    }
    Ok(())
}
