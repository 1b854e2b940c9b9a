//! Secure aggregation in the simulator (`[secagg]` in a scenario).
//!
//! Every round runs the round machine's four secure-aggregation stages with in-process
//! `flotilla_secagg` clients, through the same encoded messages the network carries. The machine
//! owns the server side (`flotilla_secagg::RoundAggregator`, installed here), exactly as in the
//! coordinator; this module plays the clients:
//!
//! | stage | a simulated client |
//! |---|---|
//! | 0 advertise keys | `Client::new` (secrets from the scenario seed), `advertise` |
//! | 1 share keys | `handle_roster` (the payload the machine holds for it) |
//! | 2 masked input | `handle_shares`, trains, masks its delta `new − global` |
//! | 3 unmasking | `handle_unmask` |
//!
//! Each client message is fed as [`Event::StageMessage`]; a refused one is counted as late when the
//! stage had already closed (an over-selected client), and is a bug otherwise. Dropouts: `round.dropout` is the
//! chance a selected client vanishes before sending its masked input (its pairwise masks are then
//! recovered from its mask-key shares); `[secagg].unmasking_dropout` the chance a client vanishes
//! right *after* sending its masked input (its input still counts; its self mask is recovered from
//! its neighbours' shares). If a neighbourhood falls below the threshold t the attempt is abandoned
//! with the secagg server's reason, and after `max_attempts` the run fails with it.
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
use std::time::Instant;

use flotilla_core::params_sha256;
use flotilla_core::round::{
    Action, ClientId, Event, RejectReason, ReportMetrics, RoundMachine, StageInput, Task, Timer,
};
use flotilla_secagg::{Client, ClientMessage, Params, RoundAggregator, ServerMessage};
use flotilla_spec::SecAggConfig;
use rand::{RngExt, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};

use crate::engine::{
    ClientJob, Prepared, Setup, SimEvent, SimOutcome, evaluate_commit, round_policy, samples,
    setup, train_cohort,
};
use crate::error::{ScenarioError, SimError};
use crate::privacy::SimPrivacy;
use crate::scenario::Scenario;

/// Secure-aggregation settings of a scenario: the job's `[secagg]` and the simulated
/// `[simulation] unmasking_dropout`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecAggSettings {
    /// Each coordinate of a client's delta is clipped to `[-clip_range, clip_range]` before masking.
    pub clip_range: f64,
    /// Shares needed to reconstruct a secret (t); default `k/2 + 1`.
    pub threshold: Option<usize>,
    /// Degree k of the communication graph; default ≈ 3·log2(clients_per_round), even.
    pub neighbours: Option<usize>,
    /// Chance that a client vanishes right after sending its masked input.
    pub unmasking_dropout: f64,
}

impl SecAggSettings {
    /// The settings of a `[secagg]` already validated by `flotilla_spec` (parameters, strategy,
    /// distributed DP), with the simulation's `unmasking_dropout`; attacks are not simulated under
    /// secure aggregation.
    pub(crate) fn new(
        config: SecAggConfig,
        unmasking_dropout: f64,
        attack: bool,
    ) -> Result<Self, ScenarioError> {
        let invalid = |field: &str, message: String| ScenarioError::Invalid {
            field: field.into(),
            message,
        };
        let u = unmasking_dropout;
        if !(u.is_finite() && (0.0..1.0).contains(&u)) {
            return Err(invalid(
                "simulation.unmasking_dropout",
                format!("must be in [0, 1), got {u}"),
            ));
        }
        if attack {
            return Err(invalid(
                "attack",
                "attacks are not simulated with [secagg]".into(),
            ));
        }
        Ok(Self {
            clip_range: config.clip_range,
            threshold: config.threshold,
            neighbours: config.neighbours,
            unmasking_dropout: u,
        })
    }

    /// The secagg parameters for rosters of up to `clients_per_round` clients and vectors of
    /// `vector_len` (`flotilla_spec::SecAggConfig::params`). Errors name the scenario key.
    pub fn params(
        &self,
        clients_per_round: usize,
        vector_len: usize,
    ) -> Result<Params, ScenarioError> {
        SecAggConfig {
            clip_range: self.clip_range,
            threshold: self.threshold,
            neighbours: self.neighbours,
        }
        .params(clients_per_round, vector_len)
        .map_err(|e| ScenarioError::Invalid {
            field: e.field,
            message: e.message,
        })
    }
}

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

/// Runs a scenario with `[secagg]`; called by [`crate::engine::run_prepared`].
pub(crate) fn run_prepared(
    scenario: &Scenario,
    sa: &SecAggSettings,
    prepared: &Prepared,
    observe: &mut dyn FnMut(&SimEvent),
) -> Result<SimOutcome, SimError> {
    let started = Instant::now();
    let train = &prepared.data.train;
    let test = &prepared.data.test;
    let Setup {
        mut trainers,
        layout,
        initial,
        test_idx,
        init_eval,
    } = setup(scenario, prepared, scenario.clients_per_round, observe)?;
    let test_view = samples(test, &test_idx);
    let params = sa.params(scenario.clients_per_round, layout.len())?;
    let mut machine = RoundMachine::with_strategy(
        round_policy(scenario),
        layout.clone(),
        initial,
        scenario.seed,
        scenario.strategy.clone(),
    )?
    .with_secure_aggregator(Box::new(RoundAggregator::new(params)));
    // Distributed DP: clients clip and add their noise share before masking; the machine divides
    // the unmasked sum by the fixed denominator. Accounting and budget as in plain rounds.
    let dp_spec = scenario.strategy.dp;
    // A first round that would already exceed the budget is refused before anything is trained.
    let (mut privacy, refused_first) = SimPrivacy::start(scenario)?;

    let mut drop_rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xD_2090_u64);
    let mut timers: BTreeMap<(u64, u64), Timer> = BTreeMap::new();
    let mut timer_seq = 0u64;
    let mut pending: Vec<(ClientId, Task)> = Vec::new();
    let mut current: Option<Attempt> = None;
    let mut history = Vec::new();
    let (mut abandoned, mut late_reports) = (0u64, 0u64);
    let mut last_eval = (init_eval.accuracy, init_eval.loss);
    let mut now = 0u64;
    let mut finished = refused_first;
    let mut clamped = 0u64;

    // Carries out the machine's actions. Returns whether the attempt ended (commit or abandon), so
    // the simulated clients check in again.
    let mut apply = |actions: Vec<Action>,
                     machine: &RoundMachine,
                     trainers: &mut [Box<dyn flotilla_ml::Trainer>],
                     current: &mut Option<Attempt>,
                     pending: &mut Vec<(ClientId, Task)>,
                     timers: &mut BTreeMap<(u64, u64), Timer>,
                     finished: &mut bool|
     -> Result<bool, SimError> {
        let mut ended = false;
        for a in actions {
            match a {
                Action::Configure { client, task } => {
                    if task.stage == 0
                        && current
                            .as_ref()
                            .is_none_or(|c| (c.round, c.attempt) != (task.round, task.attempt))
                    {
                        *current = Some(Attempt {
                            round: task.round,
                            attempt: task.attempt,
                            clients: BTreeMap::new(),
                        });
                    }
                    pending.push((client, task));
                }
                Action::SetTimer { timer, at_ms } => {
                    timer_seq += 1;
                    timers.insert((at_ms, timer_seq), timer);
                }
                Action::Commit(info) => {
                    let mut record = evaluate_commit(
                        scenario, &info, machine, trainers, &test_view, None, started,
                    )?;
                    if let Some(p) = &mut privacy {
                        // The budget is checked before the next round starts.
                        let (r, stop) =
                            p.on_commit(info.dp.as_ref(), info.round, scenario.rounds)?;
                        record.privacy = Some(r);
                        *finished |= stop;
                    }
                    if let (Some(a), Some(l)) = (record.test_accuracy, record.test_loss) {
                        last_eval = (a, l);
                    }
                    observe(&SimEvent::Round(record.clone()));
                    history.push(record);
                    ended = true;
                }
                Action::RoundAbandoned {
                    round,
                    attempt,
                    reports,
                    needed,
                    ..
                } => {
                    abandoned += 1;
                    observe(&SimEvent::RoundAbandoned {
                        round,
                        attempt,
                        reports,
                        needed,
                    });
                    ended = true;
                }
                Action::JobFinished => *finished = true,
                Action::JobFailed { reason } => return Err(SimError::JobFailed(reason)),
                Action::RetryAfter { .. } | Action::Accepted { .. } => {}
                Action::Reject { client, reason } => {
                    return Err(bug(format!(
                        "simulated {client} was refused after a successful check: {reason}"
                    )));
                }
            }
        }
        Ok(ended)
    };

    // Feeds `event`, carries out what follows, and lets every client check in again once an attempt
    // ended (they are all available for the next one).
    macro_rules! feed_actions {
        ($acts:expr) => {{
            let acts = $acts;
            let ended = apply(
                acts,
                &machine,
                &mut trainers,
                &mut current,
                &mut pending,
                &mut timers,
                &mut finished,
            )?;
            if ended && !finished {
                for c in 0..scenario.clients as u64 {
                    let acts = machine.handle(
                        now,
                        Event::CheckIn {
                            client: ClientId(c),
                        },
                    );
                    apply(
                        acts,
                        &machine,
                        &mut trainers,
                        &mut current,
                        &mut pending,
                        &mut timers,
                        &mut finished,
                    )?;
                }
            }
        }};
    }
    macro_rules! feed {
        ($event:expr) => {{
            feed_actions!(machine.handle(now, $event))
        }};
    }

    if !finished {
        for c in 0..scenario.clients as u64 {
            feed!(Event::CheckIn {
                client: ClientId(c)
            });
        }
    }
    while !finished {
        if !pending.is_empty() {
            let cohort = std::mem::take(&mut pending);
            now += 1;
            let Some(att) = current.as_mut() else {
                return Err(bug("tasks without a round attempt"));
            };
            let stage = cohort[0].1.stage;
            if cohort.iter().any(|(_, t)| t.stage != stage) {
                return Err(bug("one batch of tasks spans two stages"));
            }
            let rid = flotilla_secagg::round_id(att.round, att.attempt);
            // (client, task, message, samples, loss) to submit, in cohort order; and who vanished.
            let mut out: Vec<(ClientId, Task, ClientMessage, u64, f64)> = Vec::new();
            let mut lost: Vec<ClientId> = Vec::new();
            let (round, attempt) = (att.round, att.attempt);
            let payload = |machine: &RoundMachine, id: ClientId| -> Result<ServerMessage, SimError> {
                let bytes = machine.stage_payload(id, round, attempt, stage);
                if bytes.is_empty() {
                    return Err(bug(format!("no payload for {id} at stage {stage}")));
                }
                ServerMessage::from_bytes(bytes, &params).map_err(bug)
            };
            match stage {
                0 => {
                    for (id, task) in &cohort {
                        let client = Client::new(
                            params,
                            flotilla_secagg::ClientId(id.0),
                            rid,
                            client_seed(scenario.seed, *id, rid),
                        );
                        out.push((
                            *id,
                            task.clone(),
                            ClientMessage::AdvertiseKeys(client.advertise()),
                            0,
                            0.0,
                        ));
                        att.clients.insert(*id, client);
                    }
                }
                1 => {
                    for (id, task) in &cohort {
                        let ServerMessage::Roster(r) = payload(&machine, *id)? else {
                            return Err(bug("expected a roster"));
                        };
                        let c = att
                            .clients
                            .get_mut(id)
                            .ok_or_else(|| bug(format!("{id} has no secagg client")))?;
                        out.push((
                            *id,
                            task.clone(),
                            ClientMessage::ShareKeys(c.handle_roster(&r).map_err(bug)?),
                            0,
                            0.0,
                        ));
                    }
                }
                2 => {
                    let mut work = Vec::new();
                    for (id, task) in &cohort {
                        if drop_rng.random_bool(scenario.round.dropout) {
                            lost.push(*id);
                            continue;
                        }
                        let ServerMessage::Shares(b) = payload(&machine, *id)? else {
                            return Err(bug("expected shares"));
                        };
                        let c = att
                            .clients
                            .get_mut(id)
                            .ok_or_else(|| bug(format!("{id} has no secagg client")))?;
                        c.handle_shares(&b).map_err(bug)?;
                        work.push((*id, task.clone()));
                    }
                    let jobs: Vec<ClientJob<'_>> = work
                        .iter()
                        .map(|(c, t)| ClientJob {
                            client: *c,
                            seed: t.seed,
                            data: train,
                            correction: None,
                        })
                        .collect();
                    let mu = machine.strategy().client_directive().proximal_mu as f32;
                    let results = train_cohort(
                        scenario,
                        prepared,
                        machine.global(),
                        mu,
                        &jobs,
                        &mut trainers,
                    )?;
                    for ((id, task), (new, report)) in work.into_iter().zip(results) {
                        let mut delta: Vec<f32> = new
                            .iter()
                            .zip(machine.global())
                            .map(|(n, g)| n - g)
                            .collect();
                        if let Some(dp) = &dp_spec {
                            // The client's share of the noise, added before the delta is masked.
                            let mut rng =
                                ChaCha20Rng::from_seed(noise_seed(scenario.seed, id, rid));
                            flotilla_core::dp::privatize_client_update(&mut delta, dp, &mut rng);
                            clamped += flotilla_core::dp::count_outside(&delta, sa.clip_range);
                        }
                        let c = att
                            .clients
                            .get_mut(&id)
                            .ok_or_else(|| bug(format!("{id} has no secagg client")))?;
                        let m = c.masked_input(&delta).map_err(bug)?;
                        out.push((
                            id,
                            task,
                            ClientMessage::MaskedInput(m),
                            report.num_samples as u64,
                            report.mean_loss,
                        ));
                    }
                }
                3 => {
                    for (id, task) in &cohort {
                        // Sent its masked input, then vanished.
                        if drop_rng.random_bool(sa.unmasking_dropout) {
                            lost.push(*id);
                            continue;
                        }
                        let ServerMessage::UnmaskRequest(r) = payload(&machine, *id)? else {
                            return Err(bug("expected a request"));
                        };
                        let c = att
                            .clients
                            .get_mut(id)
                            .ok_or_else(|| bug(format!("{id} has no secagg client")))?;
                        out.push((
                            *id,
                            task.clone(),
                            ClientMessage::Unmask(c.handle_unmask(&r).map_err(bug)?),
                            0,
                            0.0,
                        ));
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
                let acts = machine.handle(
                    now,
                    Event::StageMessage {
                        client: id,
                        round: task.round,
                        attempt: task.attempt,
                        stage: task.stage,
                        input,
                        num_samples: n,
                        metrics: ReportMetrics { train_loss: loss },
                    },
                );
                if let Some(Action::Reject { reason, .. }) = acts.first() {
                    match reason {
                        // Over-selected clients after the stage filled up (and closed), or an
                        // attempt that ended.
                        RejectReason::RoundFull
                        | RejectReason::NotAccepting(_)
                        | RejectReason::WrongRound { .. }
                        | RejectReason::WrongStage { .. } => {
                            late_reports += 1;
                            continue;
                        }
                        e => return Err(bug(format!("simulated {id} was refused: {e}"))),
                    }
                }
                feed_actions!(acts);
            }
            for id in lost {
                feed!(Event::ClientLost { client: id });
            }
        } else if let Some(((at, _), timer)) = timers.pop_first() {
            now = now.max(at);
            feed!(Event::TimerFired(timer));
        } else {
            return Err(SimError::JobFailed(
                "simulation stalled: no work and no timer pending".into(),
            ));
        }
    }

    if let Some(p) = &mut privacy {
        p.add_clamped(clamped);
    }
    let final_params = machine.global().to_vec();
    Ok(SimOutcome {
        final_backdoor_success: None,
        attackers: Vec::new(),
        model_sha256: params_sha256(&final_params),
        initial_accuracy: init_eval.accuracy,
        final_accuracy: last_eval.0,
        final_loss: last_eval.1,
        history,
        final_params,
        layout,
        abandoned_attempts: abandoned,
        late_reports,
        privacy: privacy.as_ref().map(SimPrivacy::summary),
        stale_reports: 0,
        train_samples: train.len(),
        test_samples: test.len(),
    })
}
