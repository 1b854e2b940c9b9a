//! Secure aggregation in the coordinator: a job with `[secagg]` runs every round through the round
//! machine's four stages (advertise keys, share keys, masked input, unmasking) while one
//! `flotilla_secagg::Server` per round attempt holds the cryptographic state.
//!
//! Who validates what:
//!
//! - the **round machine** (via `RoundMachine::check_stage_report`, then `Event::StageReport`):
//!   round, attempt, stage, cohort, duplicates, full stage, sample count at the masked input;
//! - the **secagg server** (this module): the payload — decoding, sender = authenticated caller,
//!   secagg round, stage, lengths, keys, share commitments;
//! - the **transport** (`service.rs`, `flotilla-proto`): credentials, tenant, sizes, SHA-256, and for
//!   the masked input the layout and length (but not finiteness: the words are in Z_2^32).
//!
//! A client message is checked by the machine first, absorbed by the secagg server second, and only
//! then fed to the machine as a report, so the two never disagree on who reported. When the machine
//! closes a stage ([`Action::StageClosed`](flotilla_core::round::Action::StageClosed)) this module
//! closes the secagg stage and prepares each survivor's next payload (served in its `Task`); on
//! `Finalize` it unmasks the sum and the machine commits its unweighted mean. Any secagg failure
//! (e.g. a neighbourhood below the threshold t) is fed back as `Event::AggregationFailed` and
//! abandons the attempt with the secagg server's reason.
//!
//! **Distributed DP** (`[privacy] mode = "distributed"`): every task carries the clip norm and the
//! per-client noise standard deviation (`SecAggConfig.dp_clip_norm`, `dp_noise_std`); clients clip and
//! add their noise share before masking, and the round machine divides the unmasked sum by the fixed
//! denominator `clients_per_round` (`Strategy::apply_secure_sum`). Admission and accounting are the
//! central mode's (`crate::privacy`).
//!
//! The secagg server's state lives only in memory: after a coordinator restart the machine's
//! `recover()` abandons the attempt that was in flight, and the next attempt starts a fresh server.
//! The server never holds an individual unmasked update: its only vector is the running masked sum,
//! then the aggregate (see `SecAggRound::held_vectors`).

use std::collections::BTreeMap;

use flotilla_core::round::{ClientId, Event, RejectReason, ReportMetrics, StageKind, Task};
use flotilla_proto::v1;
use flotilla_secagg::{
    ClientMessage, HeldVector, MaskedInput, Params, Rejected, Server, ServerMessage,
};
use tonic::Status;

use crate::jobs::{JobInner, JobRuntime, Shared};

/// `[secagg]` of a job spec: the shared vocabulary's [`flotilla_spec::SecAggConfig`] (parsed and
/// checked there, stored with the job).
pub use flotilla_spec::SecAggConfig as SecAggSpec;

/// What the driver must feed the machine after carrying out a batch of actions.
pub(crate) enum Followup {
    Aggregated {
        round: u64,
        attempt: u32,
        sum: Vec<f64>,
        contributors: usize,
    },
    Failed {
        round: u64,
        attempt: u32,
        reason: String,
    },
}

impl Followup {
    pub(crate) fn event(&self) -> Event<'_> {
        match self {
            Followup::Aggregated {
                round,
                attempt,
                sum,
                contributors,
            } => Event::Aggregated {
                round: *round,
                attempt: *attempt,
                sum,
                contributors: *contributors,
            },
            Followup::Failed {
                round,
                attempt,
                reason,
            } => Event::AggregationFailed {
                round: *round,
                attempt: *attempt,
                reason: reason.clone(),
            },
        }
    }
}

/// A job's secure-aggregation state: the server of the current round attempt and the payloads of
/// the current stage.
pub(crate) struct SecAggRound {
    params: Params,
    /// Distributed DP: the clip norm C and each client's noise standard deviation, sent in every task.
    dp: Option<(f64, f64)>,
    /// `(round, attempt)` the server belongs to.
    attempt: Option<(u64, u32)>,
    server: Option<Server>,
    /// Stage whose payloads `payloads` holds, and the payloads by client.
    stage: u32,
    payloads: BTreeMap<ClientId, Vec<u8>>,
}

/// 32 published bytes from the machine's attempt seed (SplitMix64 words).
fn graph_seed(seed: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut z = seed;
    for chunk in out.chunks_mut(8) {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(x ^ (x >> 31)).to_le_bytes());
    }
    out
}

fn sid(c: ClientId) -> flotilla_secagg::ClientId {
    flotilla_secagg::ClientId(c.0)
}

impl SecAggRound {
    pub(crate) fn new(params: Params) -> Self {
        Self {
            params,
            dp: None,
            attempt: None,
            server: None,
            stage: 0,
            payloads: BTreeMap::new(),
        }
    }

    /// Distributed DP: clients clip their delta to `clip_norm` and add `N(0, noise_std²)` per value
    /// before masking (sent as `SecAggConfig.dp_clip_norm` / `dp_noise_std`).
    pub(crate) fn with_dp(mut self, clip_norm: f64, noise_std: f64) -> Self {
        self.dp = Some((clip_norm, noise_std));
        self
    }

    /// The job's parameters, as sent in every secure-aggregation task.
    pub(crate) fn config_proto(&self) -> v1::SecAggConfig {
        v1::SecAggConfig {
            max_clients: u32::try_from(self.params.max_clients()).unwrap_or(u32::MAX),
            threshold: u32::try_from(self.params.threshold()).unwrap_or(u32::MAX),
            neighbours: u32::try_from(self.params.neighbours()).unwrap_or(u32::MAX),
            clip_range: self.params.clip_range(),
            dp_clip_norm: self.dp.map_or(0.0, |d| d.0),
            dp_noise_std: self.dp.map_or(0.0, |d| d.1),
        }
    }

    /// Every vector-valued piece of state the secagg server holds (for tests and audits).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn held_vectors(&self) -> Vec<HeldVector<'_>> {
        self.server
            .as_ref()
            .map(Server::held_vectors)
            .unwrap_or_default()
    }

    /// A task is being sent: a stage-0 task of a new attempt starts a fresh server.
    pub(crate) fn on_configure(&mut self, task: &Task, attempt_seed: u64) {
        if task.stage == 0 && self.attempt != Some((task.round, task.attempt)) {
            let rid = flotilla_secagg::round_id(task.round, task.attempt);
            self.server = Some(Server::new(self.params, rid, graph_seed(attempt_seed)));
            self.attempt = Some((task.round, task.attempt));
            self.stage = 0;
            self.payloads.clear();
        }
    }

    /// The server→client payload of `task` for `client` (empty at stage 0 or when there is none).
    pub(crate) fn payload(&self, client: ClientId, task: &Task) -> Vec<u8> {
        if self.attempt == Some((task.round, task.attempt)) && self.stage == task.stage {
            self.payloads.get(&client).cloned().unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    fn server_for(&mut self, round: u64, attempt: u32) -> Result<&mut Server, String> {
        match (&mut self.server, self.attempt) {
            (Some(s), Some(a)) if a == (round, attempt) => Ok(s),
            _ => Err(format!(
                "no secure-aggregation state for round {round} attempt {attempt} (coordinator restarted?)"
            )),
        }
    }

    /// The machine closed stage `stage`: close the secagg stage and prepare the next payloads.
    pub(crate) fn on_stage_closed(
        &mut self,
        round: u64,
        attempt: u32,
        stage: u32,
        survivors: &[ClientId],
    ) -> Option<Followup> {
        let fail = |reason: String| {
            Some(Followup::Failed {
                round,
                attempt,
                reason,
            })
        };
        let server = match self.server_for(round, attempt) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let payloads: Result<BTreeMap<ClientId, Vec<u8>>, flotilla_secagg::RoundError> = match stage
        {
            0 => server.close_advertise().map(|r| {
                let bytes = ServerMessage::Roster(r).to_bytes();
                survivors.iter().map(|s| (*s, bytes.clone())).collect()
            }),
            1 => server.close_share_keys().map(|b| {
                b.into_iter()
                    .map(|(id, b)| (ClientId(id.0), ServerMessage::Shares(b).to_bytes()))
                    .collect()
            }),
            2 => server.close_masked_input().map(|r| {
                r.into_iter()
                    .map(|(id, r)| (ClientId(id.0), ServerMessage::UnmaskRequest(r).to_bytes()))
                    .collect()
            }),
            s => return fail(format!("no secure-aggregation stage {s} to close")),
        };
        match payloads {
            Ok(p) => {
                self.payloads = p;
                self.stage = stage + 1;
                None
            }
            Err(e) => fail(e.to_string()),
        }
    }

    /// The machine waits for the sum: unmask it.
    pub(crate) fn on_finalize(
        &mut self,
        round: u64,
        attempt: u32,
        contributors: &[ClientId],
    ) -> Followup {
        let server = match self.server_for(round, attempt) {
            Ok(s) => s,
            Err(reason) => {
                return Followup::Failed {
                    round,
                    attempt,
                    reason,
                };
            }
        };
        match server.finish() {
            Ok(agg) => {
                let theirs: Vec<u64> = agg.contributors.iter().map(|c| c.0).collect();
                let ours: Vec<u64> = contributors.iter().map(|c| c.0).collect();
                if theirs != ours {
                    return Followup::Failed {
                        round,
                        attempt,
                        reason: format!(
                            "the secagg sum covers {theirs:?}, the round's contributors are {ours:?}"
                        ),
                    };
                }
                Followup::Aggregated {
                    round,
                    attempt,
                    contributors: agg.contributors.len(),
                    sum: agg.sum,
                }
            }
            Err(e) => Followup::Failed {
                round,
                attempt,
                reason: e.to_string(),
            },
        }
    }
}

/// A refused stage message: the rejection-counter reason and the gRPC status.
pub(crate) type Refusal = (&'static str, Status);

fn machine_refusal(r: &RejectReason) -> Refusal {
    let msg = r.to_string();
    match r {
        RejectReason::Duplicate => ("duplicate", Status::already_exists(msg)),
        RejectReason::NotAccepting(_) => ("not_accepting", Status::failed_precondition(msg)),
        RejectReason::WrongRound { .. } => ("wrong_round", Status::failed_precondition(msg)),
        RejectReason::WrongStage { .. } => ("wrong_stage", Status::failed_precondition(msg)),
        RejectReason::WrongStageKind { .. } => {
            ("wrong_stage_kind", Status::failed_precondition(msg))
        }
        RejectReason::NotSelected => ("not_selected", Status::failed_precondition(msg)),
        RejectReason::RoundFull => ("round_full", Status::failed_precondition(msg)),
        RejectReason::BadSampleCount { .. } => ("bad_sample_count", Status::invalid_argument(msg)),
        RejectReason::BadUpdate(_) => ("bad_update", Status::invalid_argument(msg)),
        // FedBuff reasons; secure aggregation never runs FedBuff.
        RejectReason::TooStale { .. } => ("too_stale", Status::failed_precondition(msg)),
        RejectReason::NoTask => ("no_task", Status::failed_precondition(msg)),
    }
}

fn secagg_refusal(r: &Rejected) -> Refusal {
    let msg = format!("secure aggregation refused the message: {r}");
    match r {
        Rejected::Decode(_) => ("secagg_malformed", Status::invalid_argument(msg)),
        Rejected::WrongRound { .. } => ("secagg_wrong_round", Status::failed_precondition(msg)),
        Rejected::WrongStage { .. } => ("secagg_wrong_stage", Status::failed_precondition(msg)),
        Rejected::SenderMismatch { .. } => {
            ("secagg_sender_mismatch", Status::permission_denied(msg))
        }
        Rejected::Duplicate(_) => ("secagg_duplicate", Status::already_exists(msg)),
        Rejected::NotInCohort(_) => ("secagg_not_in_cohort", Status::failed_precondition(msg)),
        _ => ("secagg_invalid", Status::invalid_argument(msg)),
    }
}

/// Handles `SubmitStageMessage`: the machine's check, the secagg server, then the machine's report.
pub(crate) async fn submit_stage(
    shared: &Shared,
    job: &JobRuntime,
    inner: &mut JobInner,
    client: ClientId,
    r: &v1::StageMessageRequest,
) -> Result<(), Refusal> {
    let (round, attempt, stage) = (r.round, r.attempt, r.stage_index);
    let Some(sa) = inner.secagg.as_mut() else {
        return Err((
            "not_secagg",
            Status::failed_precondition(format!("job {} does not use secure aggregation", job.id)),
        ));
    };
    let max = sa.params.max_client_message_len();
    if r.payload.len() > max {
        return Err((
            "secagg_too_large",
            Status::invalid_argument(format!(
                "payload of {} bytes exceeds {max}",
                r.payload.len()
            )),
        ));
    }
    inner
        .machine
        .check_stage_report(client, round, attempt, stage, 0)
        .map_err(|e| machine_refusal(&e))?;
    if inner.machine.current_stage().map(|(_, k)| k) == Some(StageKind::MaskedInput) {
        return Err((
            "secagg_wrong_transport",
            Status::invalid_argument(
                "the masked input goes through UploadUpdate with PAYLOAD_KIND_MASKED_U32",
            ),
        ));
    }
    let msg = ClientMessage::from_bytes(&r.payload, &sa.params)
        .map_err(|e| secagg_refusal(&Rejected::Decode(e)))?;
    if msg.stage().index() != Some(stage) {
        return Err((
            "secagg_wrong_stage",
            Status::invalid_argument(format!(
                "a {:?} message sent for stage {stage}",
                msg.stage()
            )),
        ));
    }
    let server = sa
        .server_for(round, attempt)
        .map_err(|e| ("secagg_no_state", Status::failed_precondition(e)))?;
    server
        .handle(sid(client), msg)
        .map_err(|e| secagg_refusal(&e))?;
    report(
        shared,
        job,
        inner,
        client,
        (round, attempt, stage),
        0,
        f64::NAN,
    )
    .await
}

/// Handles a completed masked-input upload (`PAYLOAD_KIND_MASKED_U32`): the machine's check, the
/// secagg server (which adds it into its running masked sum and drops it), then the machine's report.
pub(crate) async fn accept_masked(
    shared: &Shared,
    job: &JobRuntime,
    inner: &mut JobInner,
    client: ClientId,
    header: &v1::UpdateHeader,
    words: Vec<u32>,
) -> Result<(), Refusal> {
    let (round, attempt, stage) = (header.round, header.attempt, header.stage_index);
    let Some(sa) = inner.secagg.as_mut() else {
        return Err((
            "not_secagg",
            Status::failed_precondition(format!("job {} does not use secure aggregation", job.id)),
        ));
    };
    inner
        .machine
        .check_stage_report(client, round, attempt, stage, header.num_samples)
        .map_err(|e| machine_refusal(&e))?;
    if inner.machine.current_stage().map(|(_, k)| k) != Some(StageKind::MaskedInput) {
        return Err((
            "wrong_stage_kind",
            Status::failed_precondition(format!("stage {stage} takes no masked input")),
        ));
    }
    let server = sa
        .server_for(round, attempt)
        .map_err(|e| ("secagg_no_state", Status::failed_precondition(e)))?;
    let msg = MaskedInput {
        round: flotilla_secagg::round_id(round, attempt),
        sender: sid(client),
        masked: words,
    };
    server
        .handle(sid(client), ClientMessage::MaskedInput(msg))
        .map_err(|e| secagg_refusal(&e))?;
    let loss = header
        .metrics
        .get("train_loss")
        .copied()
        .unwrap_or(f64::NAN);
    report(
        shared,
        job,
        inner,
        client,
        (round, attempt, stage),
        header.num_samples,
        loss,
    )
    .await
}

async fn report(
    shared: &Shared,
    job: &JobRuntime,
    inner: &mut JobInner,
    client: ClientId,
    (round, attempt, stage): (u64, u32, u32),
    num_samples: u64,
    train_loss: f64,
) -> Result<(), Refusal> {
    let event = Event::StageReport {
        client,
        round,
        attempt,
        stage,
        num_samples,
        metrics: ReportMetrics { train_loss },
    };
    let out = shared.drive(job, inner, event, Some(client)).await;
    if let Some(msg) = out.persist_failed {
        return Err((
            "persist_failed",
            Status::unavailable(format!("store unavailable: {msg}; retry later")),
        ));
    }
    if out.accepted {
        return Ok(());
    }
    // Cannot happen after a successful check with the lock held; refuse rather than guess.
    let reason = out.reject.unwrap_or(RejectReason::NotAccepting("unknown"));
    Err(machine_refusal(&reason))
}

/// Builds a job's secagg state from its spec, if it has `[secagg]`.
pub(crate) fn for_job(
    spec: &crate::spec::JobSpec,
    vector_len: usize,
) -> Result<Option<SecAggRound>, String> {
    match &spec.secagg {
        None => Ok(None),
        Some(s) => {
            let round = SecAggRound::new(
                s.params(spec.clients_per_round, vector_len)
                    .map_err(|e| e.to_string())?,
            );
            // Distributed DP (validated at load: distributed mode, fixed clip, clip range large enough).
            Ok(Some(match &spec.strategy.dp {
                Some(dp) => round.with_dp(dp.initial_clip_norm(), dp.client_noise_std()),
                None => round,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_secagg::Client;

    fn task(stage: u32) -> Task {
        Task {
            round: 1,
            attempt: 1,
            stage,
            kind: StageKind::SECURE_AGGREGATION[stage as usize],
            model_version: 0,
            seed: 0,
        }
    }

    /// Runs a whole round through `SecAggRound` with real secagg clients, one of which vanishes after
    /// its masked input, and inspects the server-side state after every step: it never holds an
    /// individual (unmasked or masked) vector — only the running masked sum, then the aggregate.
    #[test]
    fn coordinator_state_never_holds_an_individual_update() {
        let n = 6usize;
        let len = 16usize;
        let params = Params::recommended(n, len, 1.0).unwrap();
        let mut sa = SecAggRound::new(params);
        let ids: Vec<ClientId> = (10..10 + n as u64).map(ClientId).collect();
        sa.on_configure(&task(0), 42);
        let rid = flotilla_secagg::round_id(1, 1);
        let mut clients: BTreeMap<ClientId, Client> = ids
            .iter()
            .map(|&c| (c, Client::new(params, sid(c), rid, [c.0 as u8; 32])))
            .collect();
        let updates: BTreeMap<ClientId, Vec<f32>> = ids
            .iter()
            .map(|&c| {
                (
                    c,
                    (0..len)
                        .map(|i| ((c.0 as f32) * 0.01 + i as f32 * 0.02) - 0.2)
                        .collect(),
                )
            })
            .collect();
        for (&c, cl) in &clients {
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::AdvertiseKeys(cl.advertise()))
                .unwrap();
        }
        assert!(sa.held_vectors().is_empty());
        assert!(sa.on_stage_closed(1, 1, 0, &ids).is_none());
        for (&c, cl) in clients.iter_mut() {
            let ServerMessage::Roster(r) =
                ServerMessage::from_bytes(&sa.payload(c, &task(1)), &params).unwrap()
            else {
                panic!()
            };
            let m = cl.handle_roster(&r).unwrap();
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::ShareKeys(m))
                .unwrap();
        }
        assert!(sa.on_stage_closed(1, 1, 1, &ids).is_none());
        let mut encoded_inputs = Vec::new();
        for (i, (&c, cl)) in clients.iter_mut().enumerate() {
            let ServerMessage::Shares(b) =
                ServerMessage::from_bytes(&sa.payload(c, &task(2)), &params).unwrap()
            else {
                panic!()
            };
            cl.handle_shares(&b).unwrap();
            let m = cl.masked_input(&updates[&c]).unwrap();
            encoded_inputs.push(params.encode_all(&updates[&c]));
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::MaskedInput(m))
                .unwrap();
            let held = sa.held_vectors();
            assert_eq!(held.len(), 1, "only the running sum");
            let HeldVector::MaskedSum { inputs, data } = held[0] else {
                panic!("{held:?}")
            };
            assert_eq!(inputs, i + 1);
            for e in &encoded_inputs {
                assert_ne!(data, e.as_slice(), "the server holds an unmasked input");
            }
        }
        // The last client vanishes after its masked input; the others answer the unmasking request.
        let survivors: Vec<ClientId> = ids[..n - 1].to_vec();
        assert!(sa.on_stage_closed(1, 1, 2, &ids).is_none());
        for &c in &survivors {
            let ServerMessage::UnmaskRequest(r) =
                ServerMessage::from_bytes(&sa.payload(c, &task(3)), &params).unwrap()
            else {
                panic!()
            };
            let m = clients.get_mut(&c).unwrap().handle_unmask(&r).unwrap();
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::Unmask(m))
                .unwrap();
            assert!(matches!(
                sa.held_vectors()[..],
                [HeldVector::MaskedSum { .. }]
            ));
        }
        let Followup::Aggregated {
            sum, contributors, ..
        } = sa.on_finalize(1, 1, &ids)
        else {
            panic!("finish failed")
        };
        assert_eq!(contributors, n);
        let bound = params.quantization_error_bound(n);
        for (j, s) in sum.iter().enumerate() {
            let exact: f64 = updates.values().map(|u| f64::from(u[j])).sum();
            assert!((s - exact).abs() <= bound + 1e-6, "{j}: {s} vs {exact}");
        }
        assert!(
            matches!(sa.held_vectors()[..], [HeldVector::Aggregate(_)]),
            "{:?}",
            sa.held_vectors()
        );
    }

    /// Distributed DP: each client clips and noises its delta before masking. Nothing the server
    /// holds at any step is a client's noise-free (clipped) update or its noised one; the unmasked
    /// aggregate is the sum of the *noised* inputs, far from the noise-free sum.
    #[test]
    fn under_distributed_dp_the_server_never_holds_a_noise_free_update() {
        use rand::SeedableRng;
        let n = 5usize;
        let len = 64usize;
        let (clip, std) = (1.0, 0.5);
        let params = Params::recommended(n, len, clip + 10.0 * std).unwrap();
        let mut sa = SecAggRound::new(params).with_dp(clip, std);
        assert_eq!(
            (
                sa.config_proto().dp_clip_norm,
                sa.config_proto().dp_noise_std
            ),
            (clip, std)
        );
        let ids: Vec<ClientId> = (20..20 + n as u64).map(ClientId).collect();
        sa.on_configure(&task(0), 7);
        let rid = flotilla_secagg::round_id(1, 1);
        let mut clients: BTreeMap<ClientId, Client> = ids
            .iter()
            .map(|&c| (c, Client::new(params, sid(c), rid, [c.0 as u8; 32])))
            .collect();
        let mut clean: BTreeMap<ClientId, Vec<f32>> = BTreeMap::new();
        let mut noised: BTreeMap<ClientId, Vec<f32>> = BTreeMap::new();
        for &c in &ids {
            let mut d: Vec<f32> = (0..len)
                .map(|i| (c.0 as f32 - 20.0) * 0.3 + i as f32 * 0.01)
                .collect();
            flotilla_core::dp::clip_delta(&mut d, clip);
            let mut z = d.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(c.0);
            flotilla_core::dp::clip_and_add_noise(&mut z, clip, std, &mut rng);
            clean.insert(c, d);
            noised.insert(c, z);
        }
        for (&c, cl) in &clients {
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::AdvertiseKeys(cl.advertise()))
                .unwrap();
        }
        assert!(sa.on_stage_closed(1, 1, 0, &ids).is_none());
        for (&c, cl) in clients.iter_mut() {
            let ServerMessage::Roster(r) =
                ServerMessage::from_bytes(&sa.payload(c, &task(1)), &params).unwrap()
            else {
                panic!()
            };
            let m = cl.handle_roster(&r).unwrap();
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::ShareKeys(m))
                .unwrap();
        }
        assert!(sa.on_stage_closed(1, 1, 1, &ids).is_none());
        let encoded: Vec<Vec<u32>> = clean
            .values()
            .chain(noised.values())
            .map(|v| params.encode_all(v))
            .collect();
        for (&c, cl) in clients.iter_mut() {
            let ServerMessage::Shares(b) =
                ServerMessage::from_bytes(&sa.payload(c, &task(2)), &params).unwrap()
            else {
                panic!()
            };
            cl.handle_shares(&b).unwrap();
            let m = cl.masked_input(&noised[&c]).unwrap();
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::MaskedInput(m))
                .unwrap();
            for held in sa.held_vectors() {
                let HeldVector::MaskedSum { data, .. } = held else {
                    panic!("{held:?}")
                };
                assert!(
                    encoded.iter().all(|e| data != e.as_slice()),
                    "the server holds an individual update"
                );
            }
        }
        assert!(sa.on_stage_closed(1, 1, 2, &ids).is_none());
        for (&c, cl) in clients.iter_mut() {
            let ServerMessage::UnmaskRequest(r) =
                ServerMessage::from_bytes(&sa.payload(c, &task(3)), &params).unwrap()
            else {
                panic!()
            };
            let m = cl.handle_unmask(&r).unwrap();
            sa.server_for(1, 1)
                .unwrap()
                .handle(sid(c), ClientMessage::Unmask(m))
                .unwrap();
        }
        let Followup::Aggregated {
            sum, contributors, ..
        } = sa.on_finalize(1, 1, &ids)
        else {
            panic!("finish failed")
        };
        assert_eq!(contributors, n);
        let bound = params.quantization_error_bound(n) + 1e-6;
        let mut far = 0;
        for (j, s) in sum.iter().enumerate() {
            let with_noise: f64 = noised.values().map(|u| f64::from(u[j])).sum();
            let without: f64 = clean.values().map(|u| f64::from(u[j])).sum();
            assert!((s - with_noise).abs() <= bound, "{j}: {s} vs {with_noise}");
            far += usize::from((s - without).abs() > 0.1);
        }
        // The total noise per coordinate has std 0.5·√5 ≈ 1.1: almost every coordinate is off by > 0.1.
        assert!(far > len * 3 / 4, "{far} of {len}");
    }

    #[test]
    fn a_stage_close_below_threshold_is_an_explicit_failure() {
        let params = Params::new(5, 4, 4, 4, 1.0).unwrap();
        let mut sa = SecAggRound::new(params);
        sa.on_configure(&task(0), 1);
        let rid = flotilla_secagg::round_id(1, 1);
        // Only 3 of the needed t + 1 = 5 clients advertise.
        for c in 0..3u64 {
            let cl = Client::new(params, flotilla_secagg::ClientId(c), rid, [c as u8 + 1; 32]);
            sa.server_for(1, 1)
                .unwrap()
                .handle(
                    flotilla_secagg::ClientId(c),
                    ClientMessage::AdvertiseKeys(cl.advertise()),
                )
                .unwrap();
        }
        let ids: Vec<ClientId> = (0..3).map(ClientId).collect();
        match sa.on_stage_closed(1, 1, 0, &ids) {
            Some(Followup::Failed { reason, .. }) => {
                assert!(reason.contains("at least 5"), "{reason}")
            }
            _ => panic!("expected a failure"),
        }
        // State of another attempt is refused by name, never silently used.
        assert!(
            matches!(sa.on_finalize(1, 2, &ids), Followup::Failed { reason, .. } if reason.contains("attempt 2"))
        );
    }
}
