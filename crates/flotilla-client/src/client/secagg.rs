//! Secure aggregation on the client: the four SecAgg+ stages of a `[secagg]` job.
//!
//! | task stage | what the client does |
//! |---|---|
//! | `ADVERTISE_KEYS` | draws a fresh 32-byte secret seed from the operating system's CSPRNG (never from the task seed, which the coordinator knows), creates a `flotilla_secagg::Client` and sends its public keys |
//! | `SHARE_KEYS` | reads the roster from `Task.secagg_payload`, sends encrypted Shamir shares |
//! | `MASKED_INPUT` | reads its share bundle, downloads the model, trains, masks its delta `new − global` (clipped to `±clip_range`, fixed-point) and uploads the `u32` words with `PAYLOAD_KIND_MASKED_U32` |
//! | `UNMASKING` | reads the unmasking request and reveals the requested shares |
//!
//! Small messages go through `SubmitStageMessage`; a message the coordinator already accepted
//! (`ALREADY_EXISTS`, e.g. after a lost response) counts as sent. Anything malformed from the
//! coordinator (payload, parameters, a stage without the earlier ones) skips the task; the round
//! goes on without this client.

use std::sync::Arc;

use flotilla_proto::v1;
use flotilla_secagg::{Client as SecAggClient, ClientId as SecAggId, ClientMessage, Params, ServerMessage};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request};

use super::{Done, Failure, Retries, Session, UNARY_TIMEOUT, build_header, classify, status_text};
use crate::error::ClientError;
use crate::trainer::TaskInfo;
use flotilla_proto::ModelReceiver;

/// Hidden, for tests only: when set to `1`, the process exits right after its masked input was
/// accepted, before the unmasking stage (a client that dies mid-round).
pub const EXIT_AFTER_MASKED_INPUT_ENV: &str = "FLOTILLA_TEST_EXIT_AFTER_MASKED_INPUT";

/// This client's secagg state for the round attempt it is in.
pub(super) struct SecAggState {
    job_id: String,
    round: u64,
    attempt: u32,
    client: SecAggClient,
}

/// The task's secagg parameters, with the model layout's length as the vector length.
fn task_params(task: &v1::Task, vector_len: usize) -> Result<Params, String> {
    let c = task.secagg.as_ref().ok_or("a secure-aggregation task without secagg parameters")?;
    Params::new(c.max_clients as usize, c.threshold as usize, c.neighbours as usize, vector_len, c.clip_range)
        .map_err(|e| format!("secagg parameters: {e}"))
}

impl Session<'_> {
    /// Skips a secure-aggregation task that cannot be carried out.
    async fn skip_secagg(&mut self, task: &v1::Task, reason: &str) -> Result<(), ClientError> {
        tracing::warn!(job = %task.job_id, round = task.round, stage = task.stage_index, %reason, "secure-aggregation task skipped");
        self.pause_after_failed_task().await;
        Ok(())
    }

    fn secagg_state(&mut self, task: &v1::Task) -> Option<&mut SecAggState> {
        self.secagg
            .as_mut()
            .filter(|s| s.job_id == task.job_id && s.round == task.round && s.attempt == task.attempt)
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
        let decode = |bytes: &[u8]| ServerMessage::from_bytes(bytes, &params).map_err(|e| format!("secagg payload: {e}"));
        let msg = match stage {
            v1::Stage::AdvertiseKeys => {
                let mut seed = [0u8; 32];
                rand::fill(&mut seed[..]);
                let rid = flotilla_secagg::round_id(task.round, task.attempt);
                let client = SecAggClient::new(params, SecAggId(me), rid, seed);
                let m = ClientMessage::AdvertiseKeys(client.advertise());
                self.secagg = Some(SecAggState { job_id: task.job_id.clone(), round: task.round, attempt: task.attempt, client });
                m
            }
            v1::Stage::ShareKeys => {
                let roster = match decode(&task.secagg_payload) {
                    Ok(ServerMessage::Roster(r)) => r,
                    Ok(_) => return self.skip_secagg(&task, "expected a roster").await,
                    Err(e) => return self.skip_secagg(&task, &e).await,
                };
                let Some(st) = self.secagg_state(&task) else {
                    return self.skip_secagg(&task, "no keys were advertised for this round attempt").await;
                };
                match st.client.handle_roster(&roster) {
                    Ok(m) => ClientMessage::ShareKeys(m),
                    Err(e) => return self.skip_secagg(&task, &e.to_string()).await,
                }
            }
            v1::Stage::MaskedInput => return self.masked_input(bearer, task, info, receiver, &params, deadline).await,
            v1::Stage::Unmasking => {
                let req = match decode(&task.secagg_payload) {
                    Ok(ServerMessage::UnmaskRequest(r)) => r,
                    Ok(_) => return self.skip_secagg(&task, "expected an unmasking request").await,
                    Err(e) => return self.skip_secagg(&task, &e).await,
                };
                let Some(st) = self.secagg_state(&task) else {
                    return self.skip_secagg(&task, "no masked input was sent in this round attempt").await;
                };
                match st.client.handle_unmask(&req) {
                    Ok(m) => ClientMessage::Unmask(m),
                    Err(e) => return self.skip_secagg(&task, &e.to_string()).await,
                }
            }
            v1::Stage::Train | v1::Stage::Unspecified => return self.skip_secagg(&task, "not a secure-aggregation stage").await,
        };
        let last = stage == v1::Stage::Unmasking;
        match self.send_stage(bearer, &task, msg.to_bytes(), deadline).await? {
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
                Err(status) => match classify(&status) {
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
            Err(e) => return self.skip_secagg(&task, &format!("secagg payload: {e}")).await,
        };
        let Some(st) = self.secagg_state(&task) else {
            return self.skip_secagg(&task, "no keys were shared in this round attempt").await;
        };
        if let Err(e) = st.client.handle_shares(&bundle) {
            return self.skip_secagg(&task, &e.to_string()).await;
        }
        let global = match self.download(bearer, &task, v1::ModelPart::Global, receiver, deadline).await? {
            Done::Ok(p) => Arc::new(p),
            Done::Abandoned | Done::Outdated => {
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        let info = Arc::new(info);
        let outcome = match self.train(&info, &global).await? {
            Ok(o) => o,
            Err(e) => return self.skip_secagg(&task, &format!("training failed: {e}")).await,
        };
        // Checks the trainer's output (length, finiteness, samples, metrics) as for a plain upload.
        let (mut header, new) = match build_header(&info, outcome, None, self.client_id()) {
            Ok(x) => x,
            Err(reason) => return self.skip_secagg(&task, &reason).await,
        };
        let delta: Vec<f32> = new.iter().zip(global.iter()).map(|(n, g)| n - g).collect();
        let Some(st) = self.secagg_state(&task) else {
            return self.skip_secagg(&task, "secure-aggregation state lost").await;
        };
        let masked = match st.client.masked_input(&delta) {
            Ok(m) => m.masked,
            Err(e) => return self.skip_secagg(&task, &e.to_string()).await,
        };
        // The words travel as little-endian u32; as f32 bit patterns they reuse the upload path.
        let words: Vec<f32> = masked.into_iter().map(f32::from_bits).collect();
        header.stage = v1::Stage::MaskedInput as i32;
        header.payload_kind = v1::PayloadKind::MaskedU32 as i32;
        header.sha256 = flotilla_proto::payload_sha256(&words).to_vec();
        match self.upload(bearer, header, Arc::new(words), deadline).await? {
            Done::Ok(()) => {
                self.stats.tasks_done += 1;
                if std::env::var(EXIT_AFTER_MASKED_INPUT_ENV).is_ok_and(|v| v == "1") {
                    tracing::warn!("{EXIT_AFTER_MASKED_INPUT_ENV}=1: exiting right after the masked input");
                    std::process::exit(0);
                }
            }
            Done::Abandoned | Done::Outdated => self.pause_after_failed_task().await,
        }
        Ok(())
    }
}
