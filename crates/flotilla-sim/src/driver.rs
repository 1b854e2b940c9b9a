//! The simulator's one event loop, shared by plain, secure-aggregation and FedBuff runs.
//!
//! A [`Driver`] owns the [`RoundMachine`], the worker trainers, the virtual clock, one queue of
//! future events ordered by (virtual time, sequence), the batch of tasks the machine configured and
//! not yet carried out, and the outcome bookkeeping (history, last evaluation, abandoned attempts,
//! late and stale reports, privacy accounting). Every action of the machine is carried out by one
//! [`Driver::apply`]; what differs between the modes is how the simulated clients carry out a batch
//! of tasks, behind [`Clients`]:
//!
//! - plain rounds (`crate::plain`): the cohort trains together, reports, then the dropped are lost
//!   and everyone checks in again;
//! - secure aggregation (`crate::secagg`): one SecAgg+ stage of the cohort; all clients check in
//!   again when an attempt ends;
//! - FedBuff (`crate::fedbuff`): the tasks train from the current global model and their reports are
//!   queued to arrive after a seeded random number of ticks.
//!
//! The loop: while the job runs, a configured batch is carried out first; otherwise the earliest
//! queued event (a timer, a FedBuff check-in or finished training) fires, the clock advancing to it.

use std::collections::BTreeMap;
use std::time::Instant;

use flotilla_core::round::{
    Action, ClientId, CommitInfo, Event, RejectReason, ReportMetrics, RoundMachine, Task, Timer,
};
use flotilla_core::{ParamLayout, params_sha256};
use flotilla_ml::Trainer;

use crate::attack::Attackers;
use crate::engine::{
    Fitted, Prepared, RoundRecord, Setup, SimEvent, SimOutcome, evaluate_commit, samples, setup,
};
use crate::error::SimError;
use crate::privacy::SimPrivacy;
use crate::scenario::{Scenario, round_policy};

/// A future event on the virtual clock.
pub(crate) enum Due {
    /// A client checks in (FedBuff: back after being told to retry later).
    CheckIn(ClientId),
    /// One of the machine's timers.
    Timer(Timer),
    /// A client finished training (`None`: it dropped out instead); it then checks in again.
    Finished(ClientId, Task, Option<Fitted>),
}

/// How a refused message of an honest simulated client is counted.
pub(crate) enum Refused {
    /// Its round, stage or task had already closed: the protocol working.
    Late,
    /// FedBuff: its base model was too old.
    Stale,
}

/// What one mode's simulated clients do; everything else is the [`Driver`]'s.
pub(crate) trait Clients {
    /// Wraps the machine before the run (secure aggregation installs its server here).
    fn install(&mut self, machine: RoundMachine) -> Result<RoundMachine, SimError> {
        Ok(machine)
    }

    /// The simulated attackers, if any (evaluation measures backdoors and counts them).
    fn attackers(&self) -> Option<&Attackers> {
        None
    }

    /// How a refusal is counted; `None` when an honest simulated client should never see it, which
    /// then fails the run as a bug.
    fn refused(&self, reason: &RejectReason) -> Option<Refused>;

    /// Sees every task the machine configures, before it joins the batch.
    fn on_configure(&mut self, _task: &Task) {}

    /// Whether a client told to retry later comes back then. Otherwise simulated clients stay
    /// checked in (their check-ins never expire) and the advice has nothing to do.
    fn returns_on_retry(&self) -> bool {
        false
    }

    /// Whether every client checks in again once an attempt ends (commit or abandon).
    fn check_in_after_attempt(&self) -> bool {
        false
    }

    /// Brings every client in at the start: by default they check in at once, in id order.
    fn start(&mut self, d: &mut Driver<'_>) -> Result<(), SimError>
    where
        Self: Sized,
    {
        for c in 0..d.scenario.clients as u64 {
            d.feed(
                self,
                Event::CheckIn {
                    client: ClientId(c),
                },
            )?;
        }
        Ok(())
    }

    /// Carries out one batch of configured tasks, feeding what follows to the driver.
    fn run_batch(
        &mut self,
        d: &mut Driver<'_>,
        batch: Vec<(ClientId, Task)>,
    ) -> Result<(), SimError>;

    /// At the end of the run, adds what the clients counted to the privacy accounting.
    fn finish(&mut self, _privacy: Option<&mut SimPrivacy>) {}

    /// The bytes the clients uploaded, if they count them.
    fn upload_bytes(&self) -> Option<crate::UploadBytes> {
        None
    }
}

/// The shared state of a run (see the module documentation).
pub(crate) struct Driver<'a> {
    pub(crate) scenario: &'a Scenario,
    pub(crate) prepared: &'a Prepared,
    pub(crate) machine: RoundMachine,
    pub(crate) trainers: Vec<Box<dyn Trainer>>,
    /// Virtual time, in ms.
    pub(crate) now: u64,
    observe: &'a mut dyn FnMut(&SimEvent),
    started: Instant,
    test_idx: Vec<u32>,
    queue: BTreeMap<(u64, u64), Due>,
    seq: u64,
    pending: Vec<(ClientId, Task)>,
    finished: bool,
    privacy: Option<SimPrivacy>,
    history: Vec<RoundRecord>,
    last_eval: (f64, f64),
    last_backdoor: Option<f64>,
    abandoned: u64,
    late_reports: u64,
    stale_reports: u64,
}

/// Runs a scenario on at most `max_workers` trainer threads, its simulated clients made by
/// `make_clients` for the model's layout.
pub(crate) fn run<C: Clients>(
    scenario: &Scenario,
    prepared: &Prepared,
    max_workers: usize,
    observe: &mut dyn FnMut(&SimEvent),
    make_clients: impl FnOnce(&ParamLayout) -> Result<C, SimError>,
) -> Result<SimOutcome, SimError> {
    let started = Instant::now();
    let Setup {
        trainers,
        layout,
        initial,
        test_idx,
        init_eval,
    } = setup(scenario, prepared, max_workers, observe)?;
    let mut clients = make_clients(&layout)?;
    let clients = &mut clients;
    let machine = clients.install(RoundMachine::with_strategy(
        round_policy(scenario),
        layout.clone(),
        initial,
        scenario.seed,
        scenario.strategy.clone(),
    )?)?;
    // A first round that would already exceed the budget is refused before anything is trained.
    let (privacy, refused_first) = SimPrivacy::start(scenario)?;
    let mut d = Driver {
        scenario,
        prepared,
        machine,
        trainers,
        now: 0,
        observe,
        started,
        test_idx,
        queue: BTreeMap::new(),
        seq: 0,
        pending: Vec::new(),
        finished: refused_first,
        privacy,
        history: Vec::new(),
        last_eval: (init_eval.accuracy, init_eval.loss),
        last_backdoor: None,
        abandoned: 0,
        late_reports: 0,
        stale_reports: 0,
    };
    if !d.finished {
        clients.start(&mut d)?;
    }
    while !d.finished {
        if !d.pending.is_empty() {
            let batch = std::mem::take(&mut d.pending);
            clients.run_batch(&mut d, batch)?;
        } else if let Some(((at, _), due)) = d.queue.pop_first() {
            d.now = d.now.max(at);
            match due {
                Due::CheckIn(client) => d.feed(clients, Event::CheckIn { client })?,
                Due::Timer(timer) => d.feed(clients, Event::TimerFired(timer))?,
                Due::Finished(client, task, result) => {
                    d.finish_task(clients, client, &task, result.as_ref())?
                }
            }
        } else {
            return Err(SimError::JobFailed(
                "simulation stalled: no work and no timer pending".into(),
            ));
        }
    }

    clients.finish(d.privacy.as_mut());
    let final_params = d.machine.global().to_vec();
    let train = &prepared.data.train;
    let test = &prepared.data.test;
    Ok(SimOutcome {
        final_backdoor_success: d.last_backdoor,
        attackers: clients
            .attackers()
            .map(|a| a.clients.iter().copied().collect())
            .unwrap_or_default(),
        model_sha256: params_sha256(&final_params),
        initial_accuracy: init_eval.accuracy,
        final_accuracy: d.last_eval.0,
        final_loss: d.last_eval.1,
        history: d.history,
        final_params,
        layout,
        abandoned_attempts: d.abandoned,
        late_reports: d.late_reports,
        stale_reports: d.stale_reports,
        train_samples: train.len(),
        test_samples: test.len(),
        privacy: d.privacy.as_ref().map(SimPrivacy::summary),
        upload: clients.upload_bytes(),
    })
}

impl Driver<'_> {
    /// Queues `due` at virtual time `at`, after everything already queued for that time.
    pub(crate) fn push(&mut self, at: u64, due: Due) {
        self.seq += 1;
        self.queue.insert((at, self.seq), due);
    }

    /// Feeds `event` to the machine now and carries out its actions; if that ended an attempt and
    /// the mode wants it, every client checks in again.
    pub(crate) fn feed<C: Clients>(
        &mut self,
        clients: &mut C,
        event: Event<'_>,
    ) -> Result<(), SimError> {
        let actions = self.machine.handle(self.now, event);
        let ended = self.apply(clients, actions)?;
        if ended && !self.finished && clients.check_in_after_attempt() {
            for c in 0..self.scenario.clients as u64 {
                let actions = self.machine.handle(
                    self.now,
                    Event::CheckIn {
                        client: ClientId(c),
                    },
                );
                self.apply(clients, actions)?;
            }
        }
        Ok(())
    }

    /// A queued training finished: the report (or the loss of the client) and the client's check-in
    /// are handled together, then their actions carried out.
    fn finish_task<C: Clients>(
        &mut self,
        clients: &mut C,
        client: ClientId,
        task: &Task,
        result: Option<&Fitted>,
    ) -> Result<(), SimError> {
        let mut actions = match result {
            Some((params, report)) => self.machine.handle(
                self.now,
                Event::Report {
                    client,
                    round: task.round,
                    attempt: task.attempt,
                    stage: task.stage,
                    num_samples: report.num_samples as u64,
                    update: params,
                    metrics: ReportMetrics {
                        train_loss: report.mean_loss,
                        eval: None,
                    },
                },
            ),
            None => self.machine.handle(self.now, Event::ClientLost { client }),
        };
        // Done (or back after dropping out): available for another task at once.
        actions.extend(self.machine.handle(self.now, Event::CheckIn { client }));
        self.apply(clients, actions)?;
        Ok(())
    }

    /// Carries out the machine's actions. Returns whether an attempt ended (commit or abandon).
    fn apply<C: Clients>(
        &mut self,
        clients: &mut C,
        actions: Vec<Action>,
    ) -> Result<bool, SimError> {
        let mut ended = false;
        for a in actions {
            match a {
                Action::Configure { client, task } => {
                    clients.on_configure(&task);
                    self.pending.push((client, task));
                }
                Action::SetTimer { timer, at_ms } => self.push(at_ms, Due::Timer(timer)),
                Action::RetryAfter { client, after_ms } => {
                    if clients.returns_on_retry() {
                        self.push(self.now + after_ms, Due::CheckIn(client));
                    }
                }
                Action::Accepted { .. } => {}
                Action::Commit(info) => {
                    self.commit(clients.attackers(), &info)?;
                    ended = true;
                }
                Action::RoundAbandoned {
                    round,
                    attempt,
                    reports,
                    needed,
                    ..
                } => {
                    self.abandoned += 1;
                    (self.observe)(&SimEvent::RoundAbandoned {
                        round,
                        attempt,
                        reports,
                        needed,
                    });
                    ended = true;
                }
                Action::JobFinished => self.finished = true,
                Action::JobFailed { reason } => return Err(SimError::JobFailed(reason)),
                Action::Reject { client, reason } => match clients.refused(&reason) {
                    Some(Refused::Late) => self.late_reports += 1,
                    Some(Refused::Stale) => self.stale_reports += 1,
                    // An honest simulated client was refused: a bug worth surfacing.
                    None => {
                        return Err(SimError::JobFailed(format!(
                            "simulated {client} was refused: {reason}"
                        )));
                    }
                },
            }
        }
        Ok(ended)
    }

    /// A commit: evaluates the new model if due, records privacy (the budget is checked before the
    /// next round is trained), and reports the round.
    fn commit(&mut self, attackers: Option<&Attackers>, info: &CommitInfo) -> Result<(), SimError> {
        let test_view = samples(&self.prepared.data.test, &self.test_idx);
        let mut record = evaluate_commit(
            self.scenario,
            info,
            &self.machine,
            &mut self.trainers,
            &test_view,
            attackers,
            self.started,
        )?;
        if let Some(p) = &mut self.privacy {
            let (r, stop) = p.on_commit(info.dp.as_ref(), info.round, self.scenario.rounds)?;
            record.privacy = Some(r);
            self.finished |= stop;
        }
        if let (Some(a), Some(l)) = (record.test_accuracy, record.test_loss) {
            self.last_eval = (a, l);
        }
        if record.backdoor_success.is_some() {
            self.last_backdoor = record.backdoor_success;
        }
        (self.observe)(&SimEvent::Round(record.clone()));
        self.history.push(record);
        Ok(())
    }
}
