//! Secure aggregation on the client: the four SecAgg+ stages of a `[secagg]` job.
//!
//! | task stage | what the client does |
//! |---|---|
//! | `ADVERTISE_KEYS` | draws a fresh 32-byte secret seed from the operating system's CSPRNG (never from the task seed, which the coordinator knows), creates a `flotilla_secagg::Client` and sends its public keys |
//! | `SHARE_KEYS` | reads the roster from `Task.secagg_payload`, sends encrypted Shamir shares |
//! | `MASKED_INPUT` | reads its share bundle, downloads the model, trains, forms its delta `new − global`; under distributed DP (`SecAggConfig.dp_clip_norm > 0`) clips it to that L2 norm and adds `N(0, dp_noise_std²)` per value from the OS-seeded thread CSPRNG; masks it (clipped to `±clip_range`, fixed-point, or quantized to `quantization_bits`) and uploads the words with `PAYLOAD_KIND_MASKED_U32`, or `PAYLOAD_KIND_MASKED_U16` in a 16-bit ring |
//! | `UNMASKING` | reads the unmasking request and reveals the requested shares |
//!
//! Small messages go through `SubmitStageMessage`; a message the coordinator already accepted
//! (`ALREADY_EXISTS`, e.g. after a lost response) counts as sent. Anything malformed from the
//! coordinator (payload, parameters, a stage without the earlier ones) skips the task; the round
//! goes on without this client.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use flotilla_proto::v1;
use flotilla_secagg::{
    Client as SecAggClient, ClientId as SecAggId, ClientMessage, Params, ServerMessage,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request};

use super::{Done, Failure, Payload, Retries, Session, UNARY_TIMEOUT, build_header, status_text};
use crate::error::ClientError;
use crate::trainer::TaskInfo;
use flotilla_proto::ModelReceiver;

/// This client's secagg state for the round attempt it is in.
pub(super) struct SecAggState {
    job_id: String,
    round: u64,
    attempt: u32,
    client: SecAggClient,
}

/// The task's secagg parameters, with the model layout's length as the vector length.
fn task_params(task: &v1::Task, vector_len: usize) -> Result<Params, String> {
    let c = task
        .secagg
        .as_ref()
        .ok_or("a secure-aggregation task without secagg parameters")?;
    let bits = match c.quantization_bits {
        0 => None,
        b => Some(u8::try_from(b).map_err(|_| format!("quantization_bits {b} is out of range"))?),
    };
    Params::new(
        c.max_clients as usize,
        c.threshold as usize,
        c.neighbours as usize,
        vector_len,
        c.clip_range,
    )
    .and_then(|p| p.with_quantization_bits(bits))
    .map_err(|e| format!("secagg parameters: {e}"))
}

/// Distributed DP parameters of a secure-aggregation task: `(clip_norm, noise_std)` when the job
/// asks for them (`dp_clip_norm > 0`), `None` without DP; an error for values no honest coordinator
/// sends (non-finite, negative, or noise without a clip norm).
fn dp_share(task: &v1::Task) -> Result<Option<(f64, f64)>, String> {
    let Some(c) = task.secagg.as_ref() else {
        return Ok(None);
    };
    let (clip, std) = (c.dp_clip_norm, c.dp_noise_std);
    if !(clip.is_finite() && clip >= 0.0 && std.is_finite() && std >= 0.0) {
        return Err(format!(
            "invalid distributed-DP parameters (dp_clip_norm = {clip}, dp_noise_std = {std})"
        ));
    }
    match (clip > 0.0, std > 0.0) {
        (false, false) => Ok(None),
        (false, true) => Err(format!("dp_noise_std = {std} without a dp_clip_norm")),
        (true, _) => Ok(Some((clip, std))),
    }
}

/// Distributed DP on this client: clips `delta` to `clip_norm`, then adds its noise share
/// `N(0, noise_std²)` per value from the thread-local CSPRNG (`rand::rng()`, seeded and reseeded from
/// the operating system: nothing the coordinator knows, such as the task seed, determines it), before
/// anything is encoded or masked. Returns what clipping did and how many noised values lie outside
/// `±clip_range` (the encoding clamps them).
fn privatize_delta(
    delta: &mut [f32],
    clip_norm: f64,
    noise_std: f64,
    clip_range: f64,
) -> (flotilla_core::dp::ClipOutcome, u64) {
    let out = flotilla_core::dp::clip_and_add_noise(delta, clip_norm, noise_std, &mut rand::rng());
    (out, flotilla_core::dp::count_outside(delta, clip_range))
}

impl Session<'_> {
    /// Skips a secure-aggregation task that cannot be carried out.
    async fn skip_secagg(&mut self, task: &v1::Task, reason: &str) -> Result<(), ClientError> {
        tracing::warn!(job = %task.job_id, round = task.round, stage = task.stage_index, %reason, "secure-aggregation task skipped");
        self.pause_after_failed_task().await;
        Ok(())
    }

    fn secagg_state(&mut self, task: &v1::Task) -> Option<&mut SecAggState> {
        self.secagg.as_mut().filter(|s| {
            s.job_id == task.job_id && s.round == task.round && s.attempt == task.attempt
        })
    }

    /// Carries out one secure-aggregation stage task.
    pub(super) async fn do_secagg_task(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: v1::Task,
        info: TaskInfo,
        receiver: ModelReceiver,
        stage: v1::Stage,
    ) -> Result<(), ClientError> {
        let deadline = info.deadline.map(|d| d + super::DEADLINE_GRACE);
        let params = match task_params(&task, info.layout.len()) {
            Ok(p) => p,
            Err(reason) => return self.skip_secagg(&task, &reason).await,
        };
        let Ok(me) = self.client_id().parse::<u64>() else {
            return self.skip_secagg(&task, "client id is not numeric").await;
        };
        let decode = |bytes: &[u8]| {
            ServerMessage::from_bytes(bytes, &params).map_err(|e| format!("secagg payload: {e}"))
        };
        let msg = match stage {
            v1::Stage::AdvertiseKeys => {
                let mut seed = [0u8; 32];
                rand::fill(&mut seed[..]);
                let rid = flotilla_secagg::round_id(task.round, task.attempt);
                let client = SecAggClient::new(params, SecAggId(me), rid, seed);
                let m = ClientMessage::AdvertiseKeys(client.advertise());
                self.secagg = Some(SecAggState {
                    job_id: task.job_id.clone(),
                    round: task.round,
                    attempt: task.attempt,
                    client,
                });
                m
            }
            v1::Stage::ShareKeys => {
                let roster = match decode(&task.secagg_payload) {
                    Ok(ServerMessage::Roster(r)) => r,
                    Ok(_) => return self.skip_secagg(&task, "expected a roster").await,
                    Err(e) => return self.skip_secagg(&task, &e).await,
                };
                let Some(st) = self.secagg_state(&task) else {
                    return self
                        .skip_secagg(&task, "no keys were advertised for this round attempt")
                        .await;
                };
                match st.client.handle_roster(&roster) {
                    Ok(m) => ClientMessage::ShareKeys(m),
                    Err(e) => return self.skip_secagg(&task, &e.to_string()).await,
                }
            }
            v1::Stage::MaskedInput => {
                return self
                    .masked_input(bearer, task, info, receiver, &params, deadline)
                    .await;
            }
            v1::Stage::Unmasking => {
                let req = match decode(&task.secagg_payload) {
                    Ok(ServerMessage::UnmaskRequest(r)) => r,
                    Ok(_) => {
                        return self
                            .skip_secagg(&task, "expected an unmasking request")
                            .await;
                    }
                    Err(e) => return self.skip_secagg(&task, &e).await,
                };
                let Some(st) = self.secagg_state(&task) else {
                    return self
                        .skip_secagg(&task, "no masked input was sent in this round attempt")
                        .await;
                };
                match st.client.handle_unmask(&req) {
                    Ok(m) => ClientMessage::Unmask(m),
                    Err(e) => return self.skip_secagg(&task, &e.to_string()).await,
                }
            }
            v1::Stage::Train | v1::Stage::Evaluate | v1::Stage::Unspecified => {
                return self
                    .skip_secagg(&task, "not a secure-aggregation stage")
                    .await;
            }
        };
        let last = stage == v1::Stage::Unmasking;
        match self
            .send_stage(bearer, &task, msg.to_bytes(), deadline)
            .await?
        {
            Done::Ok(()) => {
                self.stats.tasks_done += 1;
                if last {
                    // The round's secrets are no longer needed.
                    self.secagg = None;
                }
            }
            Done::Abandoned | Done::Outdated => self.pause_after_failed_task().await,
        }
        Ok(())
    }

    /// `SubmitStageMessage`, retried on transient failures until the task's deadline.
    async fn send_stage(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: &v1::Task,
        payload: Vec<u8>,
        deadline: Option<std::time::SystemTime>,
    ) -> Result<Done<()>, ClientError> {
        let mut retries = Retries::new(deadline);
        loop {
            if retries.exhausted() {
                tracing::warn!(job = %task.job_id, round = task.round, "stage message keeps failing; task abandoned");
                return Ok(Done::Abandoned);
            }
            let mut req = Request::new(v1::StageMessageRequest {
                job_id: task.job_id.clone(),
                round: task.round,
                attempt: task.attempt,
                stage_index: task.stage_index,
                payload: payload.clone(),
            });
            req.set_timeout(UNARY_TIMEOUT);
            let mut rpc = self.rpc(bearer);
            match rpc.submit_stage_message(req).await {
                Ok(_) => {
                    self.succeeded();
                    return Ok(Done::Ok(()));
                }
                // Accepted earlier; the answer was lost.
                Err(s) if s.code() == Code::AlreadyExists => {
                    self.succeeded();
                    return Ok(Done::Ok(()));
                }
                Err(status) => match self.classify(&status) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient => {
                        retries.transient += 1;
                        self.back_off("SubmitStageMessage", &status).await;
                    }
                    Failure::Refused => {
                        tracing::warn!(job = %task.job_id, round = task.round, code = ?status.code(), error = %status_text(&status), "stage message refused; task abandoned");
                        return Ok(Done::Abandoned);
                    }
                },
            }
        }
    }

    /// Stage 2: shares in, train, mask the delta, upload the words.
    async fn masked_input(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: v1::Task,
        info: TaskInfo,
        receiver: ModelReceiver,
        params: &Params,
        deadline: Option<std::time::SystemTime>,
    ) -> Result<(), ClientError> {
        let bundle = match ServerMessage::from_bytes(&task.secagg_payload, params) {
            Ok(ServerMessage::Shares(b)) => b,
            Ok(_) => return self.skip_secagg(&task, "expected a share bundle").await,
            Err(e) => {
                return self
                    .skip_secagg(&task, &format!("secagg payload: {e}"))
                    .await;
            }
        };
        let Some(st) = self.secagg_state(&task) else {
            return self
                .skip_secagg(&task, "no keys were shared in this round attempt")
                .await;
        };
        if let Err(e) = st.client.handle_shares(&bundle) {
            return self.skip_secagg(&task, &e.to_string()).await;
        }
        let global = match self
            .download(bearer, &task, v1::ModelPart::Global, receiver, deadline)
            .await?
        {
            Done::Ok(p) => Arc::new(p),
            Done::Abandoned | Done::Outdated => {
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        let info = Arc::new(info);
        let (eval, trained) = self.train(&info, &global).await?;
        let outcome = match trained {
            Ok(o) => o,
            Err(e) => {
                let (kind, why) = (
                    super::failure::trainer_failure_kind(&e),
                    super::failure::trainer_failure_reason(&e),
                );
                self.report_failure(bearer, &task, kind, &why).await;
                return self
                    .skip_secagg(&task, &format!("training failed: {e}"))
                    .await;
            }
        };
        // Checks the trainer's output (length, finiteness, samples, metrics) as for a plain upload.
        let (mut header, new) = match build_header(&info, (outcome, eval), None, self.client_id()) {
            Ok(x) => x,
            Err(reason) => return self.skip_secagg(&task, &reason).await,
        };
        let mut delta: Vec<f32> = new.iter().zip(global.iter()).map(|(n, g)| n - g).collect();
        match dp_share(&task) {
            Ok(None) => {}
            Ok(Some((clip_norm, noise_std))) => {
                let (out, clamped) =
                    privatize_delta(&mut delta, clip_norm, noise_std, params.clip_range());
                tracing::debug!(job = %task.job_id, round = task.round, norm = out.norm, clipped = out.clipped, "distributed DP: delta clipped and noised");
                if clamped > 0 {
                    tracing::warn!(job = %task.job_id, round = task.round, clamped, clip_range = params.clip_range(), "distributed DP: noised values outside the secure-aggregation clip range are clamped");
                }
            }
            Err(reason) => return self.skip_secagg(&task, &reason).await,
        }
        let Some(st) = self.secagg_state(&task) else {
            return self
                .skip_secagg(&task, "secure-aggregation state lost")
                .await;
        };
        let masked = match st.client.masked_input(&delta) {
            Ok(m) => m.masked,
            Err(e) => return self.skip_secagg(&task, &e.to_string()).await,
        };
        header.stage = v1::Stage::MaskedInput as i32;
        let payload = if params.ring_bits() == 16 {
            // A 16-bit ring: every word is below 2^16 and travels in 2 bytes.
            let bytes: Vec<u8> = masked
                .iter()
                .flat_map(|w| (*w as u16).to_le_bytes())
                .collect();
            header.payload_kind = v1::PayloadKind::MaskedU16 as i32;
            header.total_bytes = bytes.len() as u64;
            header.sha256 = Sha256::digest(&bytes).to_vec();
            Payload::Encoded(Arc::new(bytes))
        } else {
            // Little-endian u32; as f32 bit patterns the words reuse the parameters' path.
            let words: Vec<f32> = masked.into_iter().map(f32::from_bits).collect();
            header.payload_kind = v1::PayloadKind::MaskedU32 as i32;
            header.sha256 = flotilla_proto::payload_sha256(&words).to_vec();
            Payload::Values(Arc::new(words))
        };
        match self.upload(bearer, header, payload, deadline).await? {
            Done::Ok(()) => self.stats.tasks_done += 1,
            Done::Abandoned | Done::Outdated => self.pause_after_failed_task().await,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(clip: f64, std: f64) -> v1::Task {
        v1::Task {
            secagg: Some(v1::SecAggConfig {
                dp_clip_norm: clip,
                dp_noise_std: std,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn dp_parameters_are_read_and_checked() {
        assert_eq!(dp_share(&v1::Task::default()), Ok(None));
        assert_eq!(dp_share(&task(0.0, 0.0)), Ok(None));
        assert_eq!(dp_share(&task(0.5, 0.25)), Ok(Some((0.5, 0.25))));
        assert_eq!(dp_share(&task(0.5, 0.0)), Ok(Some((0.5, 0.0))));
        for (c, s) in [
            (0.0, 0.1),
            (-1.0, 0.1),
            (f64::NAN, 0.1),
            (0.5, f64::INFINITY),
            (0.5, -0.1),
        ] {
            assert!(dp_share(&task(c, s)).is_err(), "{c} {s}");
        }
    }

    #[test]
    fn the_noise_share_is_fresh_and_has_the_requested_spread() {
        // A large delta is clipped to C = 1 first; the noise then has std 0.2 around it.
        let clean: Vec<f32> = (0..20_000)
            .map(|i| if i == 0 { 100.0 } else { 0.0 })
            .collect();
        let (mut a, mut b) = (clean.clone(), clean.clone());
        let (out, clamped) = privatize_delta(&mut a, 1.0, 0.2, 10.0);
        privatize_delta(&mut b, 1.0, 0.2, 10.0);
        assert!(out.clipped && (out.norm - 100.0).abs() < 1e-9);
        assert_eq!(clamped, 0);
        assert_ne!(
            a, b,
            "two draws for the same input differ: the noise does not come from the input or a fixed seed"
        );
        let sd = (a[1..].iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / (a.len() - 1) as f64)
            .sqrt();
        assert!((sd / 0.2 - 1.0).abs() < 0.05, "{sd}");
        assert!(
            (f64::from(a[0]) - 1.0).abs() < 1.0,
            "the clipped coordinate is near C: {}",
            a[0]
        );
        // A range too small for the noise: the values that will be clamped are counted.
        let mut c = clean;
        assert!(privatize_delta(&mut c, 1.0, 0.2, 0.1).1 > 1000);
    }
}
