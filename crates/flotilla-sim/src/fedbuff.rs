//! The simulator's FedBuff loop: the same [`RoundMachine`] in its asynchronous mode, on a virtual
//! clock where each task's local training takes a seeded random number of ticks
//! (`[round] train_ticks_min..=train_ticks_max`), so clients finish out of order and their updates
//! arrive stale.
//!
//! Determinism: events run in (virtual time, sequence) order; a client's training starts from the
//! global model at the moment it is configured, with its task seed; tasks configured by the same
//! event are trained together (on the worker threads) and come back in configuration order.

use std::collections::BTreeMap;
use std::time::Instant;

use flotilla_core::params_sha256;
use flotilla_core::round::{
    Action, ClientId, Event, RejectReason, ReportMetrics, RoundMachine, Task, Timer,
};
use flotilla_core::strategy::FedBuffSpec;
use flotilla_ml::FitReport;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::engine::{
    ClientJob, Prepared, Setup, SimEvent, SimOutcome, evaluate_commit, round_policy, samples,
    setup, train_cohort,
};
use crate::error::SimError;
use crate::scenario::Scenario;

enum Due {
    CheckIn(ClientId),
    Timer(Timer),
    /// A client finished training (`None`: it dropped out instead).
    Finished(ClientId, Task, Option<(Vec<f32>, FitReport)>),
}

/// Runs a FedBuff scenario (see the module documentation).
pub fn run_prepared(
    scenario: &Scenario,
    fb: FedBuffSpec,
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
    } = setup(scenario, prepared, fb.concurrency, observe)?;
    let test_view = samples(test, &test_idx);
    let mut machine = RoundMachine::with_strategy(
        round_policy(scenario),
        layout.clone(),
        initial,
        scenario.seed,
        scenario.strategy.clone(),
    )?;

    let mut dropout_rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xD_2090_u64);
    let (lo, hi) = scenario.round.train_ticks;
    let mut queue: BTreeMap<(u64, u64), Due> = BTreeMap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BTreeMap<(u64, u64), Due>, at: u64, due: Due| {
        seq += 1;
        queue.insert((at, seq), due);
    };
    let mut history = Vec::new();
    let (mut late_reports, mut stale_reports) = (0u64, 0u64);
    let mut last_eval = (init_eval.accuracy, init_eval.loss);
    let mut now = 0u64;
    for c in 0..scenario.clients as u64 {
        push(&mut queue, 0, Due::CheckIn(ClientId(c)));
    }

    let mut finished = false;
    while !finished {
        let Some(((at, _), due)) = queue.pop_first() else {
            return Err(SimError::JobFailed(
                "simulation stalled: no work and no timer pending".into(),
            ));
        };
        now = now.max(at);
        let actions = match due {
            Due::CheckIn(client) => machine.handle(now, Event::CheckIn { client }),
            Due::Timer(timer) => machine.handle(now, Event::TimerFired(timer)),
            Due::Finished(client, task, result) => {
                let mut acts = match &result {
                    Some((params, report)) => machine.handle(
                        now,
                        Event::Report {
                            client,
                            round: task.round,
                            attempt: task.attempt,
                            stage: task.stage,
                            num_samples: report.num_samples as u64,
                            update: params,
                            metrics: ReportMetrics {
                                train_loss: report.mean_loss,
                            },
                        },
                    ),
                    None => machine.handle(now, Event::ClientLost { client }),
                };
                // Done (or back after dropping out): available for another task at once.
                acts.extend(machine.handle(now, Event::CheckIn { client }));
                acts
            }
        };
        let mut configured: Vec<(ClientId, Task)> = Vec::new();
        for a in actions {
            match a {
                Action::Configure { client, task } => configured.push((client, task)),
                Action::SetTimer { timer, at_ms } => push(&mut queue, at_ms, Due::Timer(timer)),
                Action::RetryAfter { client, after_ms } => {
                    push(&mut queue, now + after_ms, Due::CheckIn(client))
                }
                Action::Commit(info) => {
                    let record = evaluate_commit(
                        scenario,
                        &info,
                        &machine,
                        &mut trainers,
                        &test_view,
                        None,
                        started,
                    )?;
                    if let (Some(a), Some(l)) = (record.test_accuracy, record.test_loss) {
                        last_eval = (a, l);
                    }
                    observe(&SimEvent::Round(record.clone()));
                    history.push(record);
                }
                Action::JobFinished => finished = true,
                Action::JobFailed { reason } => return Err(SimError::JobFailed(reason)),
                Action::Reject {
                    reason: RejectReason::TooStale { .. },
                    ..
                } => stale_reports += 1,
                Action::Reject {
                    reason: RejectReason::NoTask | RejectReason::NotAccepting(_),
                    ..
                } => late_reports += 1,
                Action::Reject { client, reason } => {
                    return Err(SimError::JobFailed(format!(
                        "simulated {client} was refused: {reason}"
                    )));
                }
                Action::Accepted { .. } | Action::RoundAbandoned { .. } => {}
            }
        }
        if finished || configured.is_empty() {
            continue;
        }
        let drops: Vec<bool> = configured
            .iter()
            .map(|_| dropout_rng.random_bool(scenario.round.dropout))
            .collect();
        let jobs: Vec<ClientJob<'_>> = configured
            .iter()
            .zip(&drops)
            .filter(|(_, d)| !**d)
            .map(|((client, task), _)| ClientJob {
                client: *client,
                seed: task.seed,
                data: train,
                correction: None,
            })
            .collect();
        let mut results = train_cohort(
            scenario,
            prepared,
            machine.global(),
            0.0,
            &jobs,
            &mut trainers,
        )?
        .into_iter();
        for ((client, task), dropped) in configured.into_iter().zip(drops) {
            let ticks = ChaCha8Rng::seed_from_u64(task.seed ^ 0x7_1C45).random_range(lo..=hi);
            let result = if dropped { None } else { results.next() };
            push(&mut queue, now + ticks, Due::Finished(client, task, result));
        }
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
        abandoned_attempts: 0,
        late_reports,
        stale_reports,
        // `[privacy]` is refused with FedBuff (`StrategySpec::with_privacy`).
        privacy: None,
        train_samples: train.len(),
        test_samples: test.len(),
    })
}
