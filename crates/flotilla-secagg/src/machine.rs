//! SecAgg+ as the round machine's secure aggregator: [`RoundAggregator`] implements
//! `flotilla_core::round::SecureAggregator` with one [`Server`] per round attempt, so the simulator
//! and the coordinator drive secure-aggregation rounds through the same code and know nothing of
//! the stages.
//!
//! Who validates what: the round machine checks round, attempt, stage, cohort, duplicates, a full
//! stage and the sample count before it hands a message here; this module checks the payload
//! (size, decoding, the stage it belongs to, sender = authenticated client, keys, share
//! commitments, lengths). The transport checks credentials, tenant and sizes.
//!
//! The server never holds an individual unmasked update: its only vector is the running masked sum,
//! then the aggregate ([`RoundAggregator::held_vectors`]).

use std::collections::BTreeMap;

use flotilla_core::round::{
    ClientId as MachineClient, RefusalKind, SecureAggregator, StageInput, StageRefusal,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::{
    ClientId, ClientMessage, HeldVector, MaskedInput, Params, Rejected, Server, ServerMessage,
};

/// SecAgg+ behind the round machine's [`SecureAggregator`] trait: the job's [`Params`] and the
/// [`Server`] of the current round attempt.
#[derive(Debug)]
pub struct RoundAggregator {
    params: Params,
    /// `(round, attempt)` the server belongs to, and the server.
    current: Option<((u64, u32), Server)>,
}

impl RoundAggregator {
    /// An aggregator for rounds with `params`.
    pub fn new(params: Params) -> Self {
        Self {
            params,
            current: None,
        }
    }

    /// The parameters every round uses.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Every vector-valued piece of state the current server holds (for tests and audits).
    pub fn held_vectors(&self) -> Vec<HeldVector<'_>> {
        self.current
            .as_ref()
            .map(|(_, s)| s.held_vectors())
            .unwrap_or_default()
    }

    fn server(&mut self) -> Result<(u64, &mut Server), String> {
        match &mut self.current {
            Some(((round, attempt), s)) => Ok((crate::round_id(*round, *attempt), s)),
            None => Err("no secure-aggregation round has started".into()),
        }
    }
}

/// The communication graph's seed: 32 published bytes drawn from the machine's attempt seed.
fn graph_seed(attempt_seed: u64) -> [u8; 32] {
    let mut rng = ChaCha8Rng::seed_from_u64(attempt_seed);
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    seed
}

fn sid(c: MachineClient) -> ClientId {
    ClientId(c.0)
}

/// A refused message, with a stable code and the kind of fault.
fn refusal(r: &Rejected) -> StageRefusal {
    let (code, kind) = match r {
        Rejected::Decode(_) => ("secagg_malformed", RefusalKind::Malformed),
        Rejected::WrongRound { .. } => ("secagg_wrong_round", RefusalKind::Precondition),
        Rejected::WrongStage { .. } => ("secagg_wrong_stage", RefusalKind::Precondition),
        Rejected::SenderMismatch { .. } => ("secagg_sender_mismatch", RefusalKind::SenderMismatch),
        Rejected::Duplicate(_) => ("secagg_duplicate", RefusalKind::Duplicate),
        Rejected::NotInCohort(_) => ("secagg_not_in_cohort", RefusalKind::Precondition),
        _ => ("secagg_invalid", RefusalKind::Malformed),
    };
    StageRefusal::new(code, kind, r.to_string())
}

impl SecureAggregator for RoundAggregator {
    fn start(&mut self, round: u64, attempt: u32, seed: u64) {
        let server = Server::new(
            self.params,
            crate::round_id(round, attempt),
            graph_seed(seed),
        );
        self.current = Some(((round, attempt), server));
    }

    fn receive(
        &mut self,
        client: MachineClient,
        stage: u32,
        input: StageInput<'_>,
    ) -> Result<(), StageRefusal> {
        let params = self.params;
        let (rid, server) = self
            .server()
            .map_err(|e| StageRefusal::new("secagg_no_state", RefusalKind::Precondition, e))?;
        let msg = match input {
            StageInput::Message(bytes) => {
                let max = params.max_client_message_len();
                if bytes.len() > max {
                    return Err(StageRefusal::new(
                        "secagg_too_large",
                        RefusalKind::Malformed,
                        format!("payload of {} bytes exceeds {max}", bytes.len()),
                    ));
                }
                let msg = ClientMessage::from_bytes(bytes, &params)
                    .map_err(|e| refusal(&Rejected::Decode(e)))?;
                if msg.stage().index() != Some(stage) {
                    return Err(StageRefusal::new(
                        "secagg_wrong_stage",
                        RefusalKind::Malformed,
                        format!("a {:?} message sent for stage {stage}", msg.stage()),
                    ));
                }
                msg
            }
            StageInput::Masked(words) => ClientMessage::MaskedInput(MaskedInput {
                round: rid,
                sender: sid(client),
                masked: words,
            }),
        };
        server.handle(sid(client), msg).map_err(|e| refusal(&e))
    }

    fn close_stage(
        &mut self,
        stage: u32,
        survivors: &[MachineClient],
    ) -> Result<BTreeMap<MachineClient, Vec<u8>>, String> {
        let (_, server) = self.server()?;
        let id = |c: ClientId| MachineClient(c.0);
        let payloads = match stage {
            0 => server.close_advertise().map(|r| {
                let bytes = ServerMessage::Roster(r).to_bytes();
                survivors.iter().map(|s| (*s, bytes.clone())).collect()
            }),
            1 => server.close_share_keys().map(|b| {
                b.into_iter()
                    .map(|(c, b)| (id(c), ServerMessage::Shares(b).to_bytes()))
                    .collect()
            }),
            2 => server.close_masked_input().map(|r| {
                r.into_iter()
                    .map(|(c, r)| (id(c), ServerMessage::UnmaskRequest(r).to_bytes()))
                    .collect()
            }),
            s => return Err(format!("no secure-aggregation stage {s} to close")),
        };
        payloads.map_err(|e| e.to_string())
    }

    fn finish(&mut self, contributors: &[MachineClient]) -> Result<Vec<f64>, String> {
        let (_, server) = self.server()?;
        let agg = server.finish().map_err(|e| e.to_string())?;
        let theirs: Vec<u64> = agg.contributors.iter().map(|c| c.0).collect();
        let ours: Vec<u64> = contributors.iter().map(|c| c.0).collect();
        if theirs != ours {
            return Err(format!(
                "the secagg sum covers {theirs:?}, the round's contributors are {ours:?}"
            ));
        }
        Ok(agg.sum)
    }
}
