//! Receiving an upload: the header's pre-check, a fair slot, the paced and resumable payload, and
//! the partial uploads kept for resume. The job's verdict is `upload_finish.rs`.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_core::round::{ClientEval, MAX_EVAL_SAMPLES, RejectReason, ReportMetrics};
use flotilla_proto::v1::{self, upload_message};
use flotilla_proto::{
    MAX_CHUNK_BYTES, TransferError, UploadAssembler, UploadLimits, validate_header,
};
use tonic::{Request, Response, Status, Streaming};

use super::upload_finish::Finished;
use super::upload_pace::{Next, Pacer, UploadProgress};
use super::{CoordinatorService, reject_name, transfer_reason, upload_refused, upload_response};
use crate::clock::now_ms;
use crate::partial_uploads::Partial;

impl CoordinatorService {
    /// `UploadUpdate`: authenticate, pre-check the header, wait for a fair upload slot, receive
    /// the payload (paced, resumable), then finish it in a task of its own.
    pub(super) async fn receive_upload(
        &self,
        req: Request<Streaming<v1::UploadMessage>>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        let caller = self.authenticate(&req).await?;
        let client = caller.id;
        let shared = &self.shared;
        let m = &shared.metrics;
        if let Err(e) = shared.admission.check_throttle(client.0) {
            return Err(self.refuse(e.reason(), e.status()));
        }
        let progress = req.extensions().get::<UploadProgress>().cloned();
        let mut stream = req.into_inner();
        // The header must come promptly too: a stream that sends none still ties up a handler.
        let Ok(first) =
            tokio::time::timeout(shared.limits.upload_idle_timeout, stream.message()).await
        else {
            shared.admission.strike(client.0);
            let msg = format!(
                "no upload header within {} ms",
                shared.limits.upload_idle_timeout.as_millis()
            );
            return Err(self.refuse("slow_upload", Status::deadline_exceeded(msg)));
        };
        let header = match first? {
            Some(v1::UploadMessage {
                kind: Some(upload_message::Kind::Header(h)),
            }) => h,
            Some(_) => {
                return Err(self.refuse(
                    "invalid_header",
                    Status::invalid_argument("the first message of an upload must be the header"),
                ));
            }
            None => {
                return Err(self.refuse(
                    "invalid_header",
                    Status::invalid_argument("empty upload stream"),
                ));
            }
        };
        let Some(job) = shared.job(&header.job_id) else {
            return Err(self.refuse(
                "unknown_job",
                shared.not_running_status(&header.job_id).await,
            ));
        };
        self.check_tenant(&caller, &job)?;
        crate::rpc_trace::record_task(job.id.0, header.round, header.attempt, header.stage_index);
        let key = (header.round, header.attempt, header.stage_index, client);
        // Cheap verdicts before any payload byte is read and before any upload slot is taken.
        let deadline_ms = {
            let inner = job.inner.lock().await;
            if let Some(sha) = inner.accepted.get(&key) {
                return Ok(if *sha == header.sha256 {
                    m.upload_duplicate();
                    upload_response(
                        v1::UploadStatus::Duplicate,
                        "this update was already accepted",
                        header.total_bytes,
                    )
                } else {
                    m.upload_rejected("conflicting_update");
                    upload_refused(
                        "conflicting_update",
                        "a different update was already accepted for this round, attempt and stage",
                    )
                });
            }
            if let Some(state) = inner.ended {
                return Ok(self.job_ended(job.id.0, state));
            }
            if inner.machine.is_finished() || inner.machine.failure().is_some() {
                m.upload_rejected("not_accepting");
                return Ok(upload_refused(
                    "not_accepting",
                    "the job is no longer running rounds",
                ));
            }
            // Round-based jobs: the current round, attempt and stage, and the client in its cohort;
            // FedBuff: the client's outstanding, not too stale task.
            if let Err(reason) = inner.machine.precheck_upload(
                client,
                header.round,
                header.attempt,
                header.stage_index,
            ) {
                if reason == RejectReason::NotSelected {
                    shared.admission.strike(client.0);
                }
                m.upload_rejected(reject_name(&reason));
                return Ok(upload_refused(reject_name(&reason), reason.to_string()));
            }
            inner.deadline_ms
        };
        let limits = UploadLimits {
            max_total_bytes: shared.limits.max_upload_bytes,
            max_chunk_bytes: MAX_CHUNK_BYTES,
            max_samples: job.spec.policy().max_samples_per_report,
            // Under `[secagg]` the compression is the masking's quantization, not an upload codec.
            compression: if job.secagg.is_some() {
                flotilla_proto::Compression::None
            } else {
                job.spec.compression
            },
        };
        if let Err(e) = validate_header(&header, &job.expected, &limits) {
            let e = TransferError::from(e);
            return Err(self.refuse(transfer_reason(&e), e.into()));
        }
        // A masked input comes in its ring's width: 2-byte words in a 16-bit ring, 4 otherwise.
        if header.stage == v1::Stage::MaskedInput as i32
            && let Some(want) = job.secagg.as_ref().map(crate::secagg_round::masked_kind)
            && header.payload_kind != want as i32
        {
            let msg = format!(
                "this job's masked inputs are {}: the ring is {} bits wide",
                want.as_str_name(),
                if want == v1::PayloadKind::MaskedU16 {
                    16
                } else {
                    32
                }
            );
            return Err(self.refuse("invalid_header", Status::invalid_argument(msg)));
        }
        // Before any payload byte: an upload whose evaluation the machine would refuse is refused
        // now, naming the metric.
        let metrics = match report_metrics(&header.metrics) {
            Ok(m) => m,
            Err(msg) => return Err(self.refuse("bad_eval", Status::invalid_argument(msg))),
        };
        // Bounded memory and fairness: at most `upload_concurrency` payloads are assembled at once,
        // admitted per client, per tenant and in FIFO order (see `admission`), waiting no longer
        // than the stage deadline.
        let deadline = deadline_ms.map(|d| {
            tokio::time::Instant::now() + Duration::from_millis(d.saturating_sub(now_ms()))
        });
        let permit = match shared
            .admission
            .admit(client.0, &caller.tenant, deadline)
            .await
        {
            Ok(slot) => slot,
            Err(e) => return Err(self.refuse(e.reason(), e.status())),
        };
        let pkey = (client.0, header.upload_id.clone());
        let previous = shared
            .partial_uploads
            .lock()
            .ok()
            .and_then(|mut p| p.take(&pkey));
        let mut part = match previous {
            Some(p) if *p.assembler.header() == header => p,
            Some(p) => {
                // Keep the original transfer; this stream is refused.
                if let Ok(mut map) = shared.partial_uploads.lock() {
                    map.put(pkey, p, shared.limits.max_partial_uploads);
                }
                return Err(self.refuse(
                    "invalid_header",
                    Status::invalid_argument(
                        "header differs from the one first sent under this upload_id",
                    ),
                ));
            }
            None => {
                let assembler = UploadAssembler::new(header.clone(), &job.expected, &limits)
                    .map_err(|e| self.refuse(transfer_reason(&e), e.into()))?;
                let cap = usize::try_from(header.total_bytes / 4).unwrap_or(0);
                Partial {
                    assembler,
                    values: Vec::with_capacity(cap),
                    seq: 0,
                }
            }
        };
        let save = |p: Partial| {
            if let Ok(mut map) = shared.partial_uploads.lock() {
                map.put(pkey.clone(), p, shared.limits.max_partial_uploads);
            }
        };
        let mut pacer = Pacer::new(&shared.limits, progress);
        loop {
            let msg = match pacer.next(&mut stream).await {
                Next::Message(Some(msg)) => msg,
                Next::Message(None) => break,
                Next::Broken(status) => {
                    // Broken stream: keep what arrived for a resume.
                    save(part);
                    m.upload_incomplete();
                    return Err(status);
                }
                Next::TooSlow(why) => {
                    // Slowloris or a dying link: free the slot, keep what arrived for a resume.
                    let received = part.assembler.received();
                    save(part);
                    m.upload_incomplete();
                    shared.admission.strike(client.0);
                    tracing::info!(client = client.0, job = job.id.0, received, why = %why, "slow upload dropped; its slot is free");
                    let msg = format!(
                        "upload too slow ({why}); dropped to free its slot, {received} bytes kept: resume from QueryUpload's offset"
                    );
                    return Err(self.refuse("slow_upload", Status::deadline_exceeded(msg)));
                }
            };
            let chunk = match msg.kind {
                Some(upload_message::Kind::Chunk(c)) => c,
                _ => {
                    save(part);
                    return Err(self.refuse(
                        "invalid_header",
                        Status::invalid_argument("only the first message may be a header"),
                    ));
                }
            };
            // Decoded straight from the chunk into the update's buffer: no intermediate copies.
            match part.assembler.push_into(&chunk, &mut part.values) {
                Ok(_) => {}
                // A non-finite value or a bad encoding: the payload can never be accepted; drop it.
                Err(e @ (TransferError::NonFinite { .. } | TransferError::BadEncoding(_))) => {
                    return Err(self.refuse(transfer_reason(&e), e.into()));
                }
                Err(e) => {
                    save(part);
                    return Err(self.refuse(transfer_reason(&e), e.into()));
                }
            }
        }
        if !part.assembler.is_complete() {
            let received = part.assembler.received();
            save(part);
            m.upload_incomplete();
            return Ok(upload_response(
                v1::UploadStatus::Incomplete,
                "stream ended before total_bytes; resume from resume_offset",
                received,
            ));
        }
        let Partial {
            assembler,
            mut values,
            ..
        } = part;
        let total = assembler.total_bytes();
        let assembler_masked = assembler.is_masked();
        let compressed = assembler.is_compressed();
        match assembler.finish() {
            Ok(rest) => values.extend_from_slice(&rest),
            Err(e) => return Err(self.refuse(transfer_reason(&e), e.into())),
        }
        // In a task of its own: a client that disconnects now must not cancel the rest halfway (a
        // commit would stop after the machine moved on and before the store or the next round's
        // timers did, leaving the job stuck; seen in the soak with clients killed at random).
        let (this, upload) = (
            self.clone(),
            Finished {
                job,
                header,
                key,
                values,
                total,
                masked: assembler_masked,
                compressed,
                metrics,
                permit,
            },
        );
        tokio::spawn(async move { this.finish_upload(upload).await })
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("the upload's task failed: {e}"))))
    }

    /// `QueryUpload`: how many bytes of an interrupted upload this coordinator holds.
    pub(super) async fn query_partial(
        &self,
        req: Request<v1::QueryUploadRequest>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        let client = self.authenticate(&req).await?.id;
        let r = req.into_inner();
        let key = (client.0, r.upload_id);
        let found = self
            .shared
            .partial_uploads
            .lock()
            .ok()
            .and_then(|p| p.received(&key));
        match found {
            Some((received, _total)) => Ok(upload_response(
                v1::UploadStatus::Incomplete,
                "upload in progress",
                received,
            )),
            None => Err(self.refuse(
                "unknown_upload",
                Status::not_found("no such upload for this client: start again from offset 0"),
            )),
        }
    }
}

/// The report metrics an upload header carries: `train_loss` (NaN when absent) and the federated
/// evaluation, present when `eval_samples` is: `eval_loss` (required with it), `eval_samples` (a
/// whole number in `1..=2^53`) and the optional `eval_accuracy` (in `[0, 1]`). `eval_loss` or
/// `eval_accuracy` without `eval_samples` have no weight and are ignored, as any other metric is.
/// Metrics are finite (`validate_header`). The error is the one-line reason to refuse the upload.
pub(crate) fn report_metrics(metrics: &HashMap<String, f64>) -> Result<ReportMetrics, String> {
    let train_loss = metrics.get("train_loss").copied().unwrap_or(f64::NAN);
    let Some(&samples) = metrics.get("eval_samples") else {
        return Ok(ReportMetrics {
            train_loss,
            eval: None,
        });
    };
    if !(samples.fract() == 0.0 && samples >= 1.0 && samples <= MAX_EVAL_SAMPLES as f64) {
        return Err(format!(
            "metric eval_samples must be a whole number in 1..={MAX_EVAL_SAMPLES}, got {samples}"
        ));
    }
    let Some(&loss) = metrics.get("eval_loss") else {
        return Err(
            "metric eval_samples needs eval_loss beside it (the evaluation's mean loss)".into(),
        );
    };
    let eval = ClientEval {
        loss,
        accuracy: metrics.get("eval_accuracy").copied(),
        samples: samples as u64,
    };
    eval.validate()
        .map_err(|e| format!("invalid federated evaluation: {e}"))?;
    Ok(ReportMetrics {
        train_loss,
        eval: Some(eval),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, f64)]) -> Result<ReportMetrics, String> {
        report_metrics(&pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
    }

    #[test]
    fn header_metrics_map_to_the_report() {
        let m = parse(&[("train_loss", 0.5)]).unwrap();
        assert_eq!((m.train_loss, m.eval), (0.5, None));
        assert!(parse(&[]).unwrap().train_loss.is_nan());
        // Without `eval_samples` an evaluation has no weight: ignored, as before this existed.
        assert_eq!(
            parse(&[("eval_loss", 0.3), ("eval_accuracy", 0.9)])
                .unwrap()
                .eval,
            None
        );
        let m = parse(&[
            ("eval_loss", 0.3),
            ("eval_samples", 40.0),
            ("eval_accuracy", 0.9),
        ])
        .unwrap();
        assert_eq!(
            m.eval,
            Some(ClientEval {
                loss: 0.3,
                accuracy: Some(0.9),
                samples: 40
            })
        );
        let m = parse(&[
            ("eval_loss", 0.3),
            ("eval_samples", 9_007_199_254_740_992.0),
        ])
        .unwrap();
        assert_eq!(m.eval.unwrap().samples, MAX_EVAL_SAMPLES);
    }

    #[test]
    fn bad_evaluations_are_refused_naming_the_metric() {
        for samples in [0.0, 2.5, -1.0, 1e300, 9_007_199_254_740_994.0] {
            let e = parse(&[("eval_loss", 0.3), ("eval_samples", samples)]).unwrap_err();
            assert!(
                e.starts_with("metric eval_samples must be a whole number"),
                "{e}"
            );
            assert!(!e.contains('\n'));
        }
        let e = parse(&[("eval_samples", 3.0)]).unwrap_err();
        assert!(e.contains("eval_loss"), "{e}");
        let e = parse(&[
            ("eval_loss", 0.3),
            ("eval_samples", 3.0),
            ("eval_accuracy", 1.5),
        ])
        .unwrap_err();
        assert!(e.contains("eval_accuracy"), "{e}");
    }
}
