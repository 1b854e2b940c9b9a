//! FedBuff in the simulator: the same [`RoundMachine`](flotilla_core::round::RoundMachine) in its
//! asynchronous mode, on a virtual clock where each task's local training takes a seeded random
//! number of ticks (`[round] train_ticks_min..=train_ticks_max`), so clients finish out of order and
//! their updates arrive stale.
//!
//! Determinism: events run in (virtual time, sequence) order (`crate::driver`'s queue); a client's
//! training starts from the global model at the moment it is configured, with its task seed; tasks
//! configured by the same event are trained together (on the worker threads) and their reports are
//! queued in configuration order. A finished client reports (or, if it dropped out, is lost) and
//! checks in again at once; a client told to retry later comes back then.

use flotilla_core::round::{ClientId, RejectReason, Task};
use flotilla_core::strategy::FedBuffSpec;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::driver::{Clients, Driver, Due, Refused};
use crate::engine::{ClientJob, Prepared, SimEvent, SimOutcome, train_cohort};
use crate::error::SimError;
use crate::scenario::Scenario;

/// The simulated clients of a FedBuff run.
pub(crate) struct FedBuffClients {
    dropout: f64,
    train_ticks: (u64, u64),
    dropout_rng: ChaCha8Rng,
}

impl FedBuffClients {
    /// The clients of `scenario`.
    pub(crate) fn new(scenario: &Scenario) -> Self {
        Self {
            dropout: scenario.round.dropout,
            train_ticks: scenario.round.train_ticks,
            dropout_rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xD_2090_u64),
        }
    }
}

impl Clients for FedBuffClients {
    fn refused(&self, reason: &RejectReason) -> Option<Refused> {
        match reason {
            RejectReason::TooStale { .. } => Some(Refused::Stale),
            // Its task was dropped at its deadline, or the job stopped accepting.
            RejectReason::NoTask | RejectReason::NotAccepting(_) => Some(Refused::Late),
            _ => None,
        }
    }

    fn returns_on_retry(&self) -> bool {
        true
    }

    /// Every client checks in at time 0, through the queue.
    fn start(&mut self, d: &mut Driver<'_>) -> Result<(), SimError> {
        for c in 0..d.scenario.clients as u64 {
            d.push(0, Due::CheckIn(ClientId(c)));
        }
        Ok(())
    }

    /// Trains the tasks configured by one event from the current global model; each report is
    /// queued after its task's training ticks.
    fn run_batch(
        &mut self,
        d: &mut Driver<'_>,
        configured: Vec<(ClientId, Task)>,
    ) -> Result<(), SimError> {
        let drops: Vec<bool> = configured
            .iter()
            .map(|_| self.dropout_rng.random_bool(self.dropout))
            .collect();
        let (scenario, prepared) = (d.scenario, d.prepared);
        let jobs: Vec<ClientJob<'_>> = configured
            .iter()
            .zip(&drops)
            .filter(|(_, d)| !**d)
            .map(|((client, task), _)| ClientJob {
                client: *client,
                seed: task.seed,
                data: &prepared.data.train,
                correction: None,
            })
            .collect();
        let mut results = train_cohort(
            scenario,
            prepared,
            d.machine.global(),
            0.0,
            &jobs,
            &mut d.trainers,
        )?
        .into_iter();
        let (lo, hi) = self.train_ticks;
        for ((client, task), dropped) in configured.into_iter().zip(drops) {
            let ticks = ChaCha8Rng::seed_from_u64(task.seed ^ 0x7_1C45).random_range(lo..=hi);
            let result = if dropped { None } else { results.next() };
            d.push(d.now + ticks, Due::Finished(client, task, result));
        }
        Ok(())
    }
}

/// Runs a FedBuff scenario (see the module documentation); [`crate::run_prepared`] calls it
/// for scenarios with `[strategy] fedbuff`.
pub fn run_prepared(
    scenario: &Scenario,
    fb: FedBuffSpec,
    prepared: &Prepared,
    observe: &mut dyn FnMut(&SimEvent),
) -> Result<SimOutcome, SimError> {
    crate::driver::run(scenario, prepared, fb.concurrency, observe, |_| {
        Ok(FedBuffClients::new(scenario))
    })
}
