//! Secure aggregation in the simulator (`[secagg]` in a scenario).
//!
//! Every round runs the round machine's four secure-aggregation stages with in-process
//! `flotilla_secagg` clients, through the same encoded messages the network carries. The machine
//! owns the server side (`flotilla_secagg::RoundAggregator`, installed here), exactly as in the
//! coordinator; this module plays the clients (`SecAggClients`, one stage of the cohort per batch
//! of the shared event loop, `crate::driver`):
//!
//! | stage | a simulated client |
//! |---|---|
//! | 0 advertise keys | `Client::new` (secrets from the scenario seed), `advertise` |
//! | 1 share keys | `handle_roster` (the payload the machine holds for it) |
//! | 2 masked input | `handle_shares`, trains, masks its delta `new − global` |
//! | 3 unmasking | `handle_unmask` |
//!
//! Each client message is fed as [`Event::StageMessage`]; a refused one is counted as late when the
//! stage had already closed (an over-selected client), and is a bug otherwise. When an attempt ends
//! (commit or abandon) every client checks in again: they are all available for the next one.
//! Dropouts: `round.dropout` is the chance a selected client vanishes before sending its masked
//! input (its pairwise masks are then recovered from its mask-key shares);
//! `[secagg].unmasking_dropout` the chance a client vanishes right *after* sending its masked input
//! (its input still counts; its self mask is recovered from its neighbours' shares). If a
//! neighbourhood falls below the threshold t the attempt is abandoned with the secagg server's
//! reason, and after `max_attempts` the run fails with it.
//!
//! **Distributed DP** (`[privacy] mode = "distributed"` with `[secagg]`): at stage 2 each simulated
//! client clips its delta to `privacy.clip_norm` and adds its noise share `N(0, (σC)²/min_reports)`
//! (`flotilla_core::dp::privatize_client_update`) before masking; the share is drawn from a seed
//! derived from the scenario seed, the client and the round attempt (deterministic runs; never the
//! task seed), where a real client uses OS entropy. The machine divides the unmasked sum by
//! `clients_per_round` and adds nothing; the budget is checked before every round and ε recorded
//! after every commit, as in plain rounds (`crate::privacy`). Noised values outside `±clip_range`
//! (which the load-time check makes astronomically unlikely) are counted in the privacy summary.
//!
//! Without DP the machine commits the **unweighted** mean of the contributors' deltas, each clipped to
//! `[-clip_range, clip_range]` per coordinate and fixed-point encoded; the decoded mean is within
//! `1 / (2s) = clip_range / M` (M = ⌊(2^32 − 1) / clients_per_round⌋) of the exact mean of the clipped
//! deltas (`flotilla_secagg::Params::quantization_error_bound` divided by the contributors).

use std::collections::BTreeMap;

use flotilla_core::dp::DpSpec;
use flotilla_core::round::{
    ClientId, Event, RejectReason, ReportMetrics, RoundMachine, StageInput, Task,
};
use flotilla_secagg::{Client, ClientMessage, Params, RoundAggregator, ServerMessage};
use rand::{RngExt, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};

use crate::driver::{Clients, Driver, Refused};
use crate::engine::{ClientJob, train_cohort};
use crate::error::SimError;
use crate::privacy::SimPrivacy;
use crate::scenario::Scenario;
pub use crate::settings::SecAggSettings;

/// The simulated clients of one round attempt.
struct Attempt {
    round: u64,
    attempt: u32,
    clients: BTreeMap<ClientId, Client>,
}

/// A client's 32-byte secret seed: derived from the scenario seed (the simulator is deterministic;
/// a real client draws it from the operating system).
fn client_seed(scenario_seed: u64, client: ClientId, round_id: u64) -> [u8; 32] {
    let mut rng = ChaCha8Rng::seed_from_u64(
        scenario_seed ^ 0x5EC_C11E_u64 ^ client.0.rotate_left(29) ^ round_id.rotate_left(7),
    );
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&rng.random::<u64>().to_le_bytes());
    }
    seed
}

/// Distributed DP: the seed of a simulated client's noise share, derived like its secagg secret from
/// the scenario seed, the client and the round attempt — never from the task seed. (The simulator is
/// deterministic; a real client draws its noise from the operating system, see the client SDK.)
fn noise_seed(scenario_seed: u64, client: ClientId, round_id: u64) -> [u8; 32] {
    let mut seed = client_seed(scenario_seed ^ 0xD15_7B1B_u64, client, round_id);
    seed[31] ^= 0x5A;
    seed
}

fn bug(what: impl std::fmt::Display) -> SimError {
    SimError::JobFailed(format!("secure aggregation: {what}"))
}

/// The simulated SecAgg+ clients of a `[secagg]` run (see the module documentation).
pub(crate) struct SecAggClients {
    params: Params,
    scenario_seed: u64,
    dropout: f64,
    unmasking_dropout: f64,
    clip_range: f64,
    /// Distributed DP: each client clips and adds its noise share before masking.
    dp: Option<DpSpec>,
    drop_rng: ChaCha8Rng,
    current: Option<Attempt>,
    /// Noised values outside `±clip_range`, for the privacy summary.
    clamped: u64,
}

impl SecAggClients {
    /// The clients of `scenario` for models of `vector_len` parameters.
    pub(crate) fn new(
        scenario: &Scenario,
        sa: &SecAggSettings,
        vector_len: usize,
    ) -> Result<Self, SimError> {
        Ok(Self {
            params: sa.params(scenario.clients_per_round, vector_len)?,
            scenario_seed: scenario.seed,
            dropout: scenario.round.dropout,
            unmasking_dropout: sa.unmasking_dropout,
            clip_range: sa.clip_range,
            dp: scenario.strategy.dp,
            drop_rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xD_2090_u64),
            current: None,
            clamped: 0,
        })
    }

    /// Stage 2: the clients that stay decode their shares, train, and mask their (DP-noised) delta.
    fn masked_inputs(
        &mut self,
        d: &mut Driver<'_>,
        cohort: &[(ClientId, Task)],
        out: &mut Vec<Outgoing>,
        lost: &mut Vec<ClientId>,
    ) -> Result<(), SimError> {
        let (scenario, prepared) = (d.scenario, d.prepared);
        let Some(att) = self.current.as_mut() else {
            return Err(bug("tasks without a round attempt"));
        };
        let rid = flotilla_secagg::round_id(att.round, att.attempt);
        let at = (att.round, att.attempt, 2);
        let mut work = Vec::new();
        for (id, task) in cohort {
            if self.drop_rng.random_bool(self.dropout) {
                lost.push(*id);
                continue;
            }
            let ServerMessage::Shares(b) = payload(d, &self.params, *id, at)? else {
                return Err(bug("expected shares"));
            };
            att.client(*id)?.handle_shares(&b).map_err(bug)?;
            work.push((*id, task.clone()));
        }
        let jobs: Vec<ClientJob<'_>> = work
            .iter()
            .map(|(c, t)| ClientJob {
                client: *c,
                seed: t.seed,
                data: &prepared.data.train,
                correction: None,
            })
            .collect();
        let mu = d.machine.strategy().client_directive().proximal_mu as f32;
        let results = train_cohort(
            scenario,
            prepared,
            d.machine.global(),
            mu,
            &jobs,
            &mut d.trainers,
        )?;
        for ((id, task), (new, report)) in work.into_iter().zip(results) {
            let mut delta: Vec<f32> = new
                .iter()
                .zip(d.machine.global())
                .map(|(n, g)| n - g)
                .collect();
            if let Some(dp) = &self.dp {
                // The client's share of the noise, added before the delta is masked.
                let mut rng = ChaCha20Rng::from_seed(noise_seed(self.scenario_seed, id, rid));
                flotilla_core::dp::privatize_client_update(&mut delta, dp, &mut rng);
                self.clamped += flotilla_core::dp::count_outside(&delta, self.clip_range);
            }
            let m = att.client(id)?.masked_input(&delta).map_err(bug)?;
            out.push((
                id,
                task,
                ClientMessage::MaskedInput(m),
                report.num_samples as u64,
                report.mean_loss,
            ));
        }
        Ok(())
    }
}

/// A client message to submit: (client, task, message, samples, training loss).
type Outgoing = (ClientId, Task, ClientMessage, u64, f64);

impl Attempt {
    fn client(&mut self, id: ClientId) -> Result<&mut Client, SimError> {
        self.clients
            .get_mut(&id)
            .ok_or_else(|| bug(format!("{id} has no secagg client")))
    }
}

/// The stage payload the machine holds for `id` (its roster, shares or unmask request), decoded.
fn payload(
    d: &Driver<'_>,
    params: &Params,
    id: ClientId,
    (round, attempt, stage): (u64, u32, u32),
) -> Result<ServerMessage, SimError> {
    let bytes = d.machine.stage_payload(id, round, attempt, stage);
    if bytes.is_empty() {
        return Err(bug(format!("no payload for {id} at stage {stage}")));
    }
    ServerMessage::from_bytes(bytes, params).map_err(bug)
}

impl Clients for SecAggClients {
    /// The machine owns the secagg server, as in the coordinator.
    fn install(&mut self, machine: RoundMachine) -> Result<RoundMachine, SimError> {
        Ok(machine.with_secure_aggregator(Box::new(RoundAggregator::new(self.params))))
    }

    /// Over-selected clients after the stage filled up (and closed), or an attempt that ended.
    fn refused(&self, reason: &RejectReason) -> Option<Refused> {
        matches!(
            reason,
            RejectReason::RoundFull
                | RejectReason::NotAccepting(_)
                | RejectReason::WrongRound { .. }
                | RejectReason::WrongStage { .. }
        )
        .then_some(Refused::Late)
    }

    /// A stage-0 task of a new attempt starts its set of clients.
    fn on_configure(&mut self, task: &Task) {
        if task.stage == 0
            && self
                .current
                .as_ref()
                .is_none_or(|c| (c.round, c.attempt) != (task.round, task.attempt))
        {
            self.current = Some(Attempt {
                round: task.round,
                attempt: task.attempt,
                clients: BTreeMap::new(),
            });
        }
    }

    /// They are all available for the next attempt.
    fn check_in_after_attempt(&self) -> bool {
        true
    }

    fn run_batch(
        &mut self,
        d: &mut Driver<'_>,
        cohort: Vec<(ClientId, Task)>,
    ) -> Result<(), SimError> {
        d.now += 1;
        let Some(att) = self.current.as_mut() else {
            return Err(bug("tasks without a round attempt"));
        };
        let stage = cohort[0].1.stage;
        if cohort.iter().any(|(_, t)| t.stage != stage) {
            return Err(bug("one batch of tasks spans two stages"));
        }
        let rid = flotilla_secagg::round_id(att.round, att.attempt);
        let at = (att.round, att.attempt, stage);
        // What to submit, in cohort order; and who vanished.
        let mut out: Vec<Outgoing> = Vec::new();
        let mut lost: Vec<ClientId> = Vec::new();
        match stage {
            0 => {
                for (id, task) in &cohort {
                    let client = Client::new(
                        self.params,
                        flotilla_secagg::ClientId(id.0),
                        rid,
                        client_seed(self.scenario_seed, *id, rid),
                    );
                    let msg = ClientMessage::AdvertiseKeys(client.advertise());
                    out.push((*id, task.clone(), msg, 0, 0.0));
                    att.clients.insert(*id, client);
                }
            }
            1 => {
                for (id, task) in &cohort {
                    let ServerMessage::Roster(r) = payload(d, &self.params, *id, at)? else {
                        return Err(bug("expected a roster"));
                    };
                    let shares = att.client(*id)?.handle_roster(&r).map_err(bug)?;
                    out.push((*id, task.clone(), ClientMessage::ShareKeys(shares), 0, 0.0));
                }
            }
            2 => self.masked_inputs(d, &cohort, &mut out, &mut lost)?,
            3 => {
                for (id, task) in &cohort {
                    // Sent its masked input, then vanished.
                    if self.drop_rng.random_bool(self.unmasking_dropout) {
                        lost.push(*id);
                        continue;
                    }
                    let ServerMessage::UnmaskRequest(r) = payload(d, &self.params, *id, at)? else {
                        return Err(bug("expected a request"));
                    };
                    let unmask = att.client(*id)?.handle_unmask(&r).map_err(bug)?;
                    out.push((*id, task.clone(), ClientMessage::Unmask(unmask), 0, 0.0));
                }
            }
            s => return Err(bug(format!("no stage {s}"))),
        }
        for (id, task, msg, n, loss) in out {
            let bytes;
            let input = match msg {
                ClientMessage::MaskedInput(m) => StageInput::Masked(m.masked),
                m => {
                    bytes = m.to_bytes();
                    StageInput::Message(&bytes)
                }
            };
            d.feed(
                self,
                Event::StageMessage {
                    client: id,
                    round: task.round,
                    attempt: task.attempt,
                    stage: task.stage,
                    input,
                    num_samples: n,
                    metrics: ReportMetrics {
                        train_loss: loss,
                        eval: None,
                    },
                },
            )?;
        }
        for id in lost {
            d.feed(self, Event::ClientLost { client: id })?;
        }
        Ok(())
    }

    fn finish(&mut self, privacy: Option<&mut SimPrivacy>) {
        if let Some(p) = privacy {
            p.add_clamped(self.clamped);
        }
    }
}
