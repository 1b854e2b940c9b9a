//! The simulator: many virtual clients in one process, driving the same [`RoundMachine`] the
//! coordinator drives, on a virtual clock.
//!
//! This module holds what every mode shares, below the drivers: loading and partitioning the data,
//! the setup a run starts with (trainers, initial evaluation), evaluating a commit, and training a
//! batch of clients on the worker threads. The entry points (`crate::run`) pick the scenario's
//! simulated clients — plain rounds (`crate::plain`), secure aggregation (`crate::secagg`) or
//! FedBuff (`crate::fedbuff`) — and run them in the one event loop, `crate::driver`; the round
//! policy on a virtual clock is the scenario's (`crate::scenario::round_policy`).
//!
//! Determinism: client selection and per-client seeds come from the machine (seeded by the scenario),
//! each client's training depends only on the global model, its own data and its task seed, and
//! reports are fed back in cohort order whatever thread trained them. So one scenario and seed give a
//! bit-identical final model, with any number of worker threads.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use flotilla_core::ParamLayout;
use flotilla_core::round::{ClientId, CommitInfo, RoundMachine};
use flotilla_core::strategy::Quarantined;
use flotilla_data::{Dataset, LoadOptions, Partition, PartitionSpec, SampledPartition, TrainTest};
use flotilla_ml::{FitConfig, FitReport, LocalObjective, ModelSpec, Samples, Trainer};
use serde::Serialize;

use crate::attack::Attackers;
use crate::error::SimError;
use crate::privacy::{PrivacySummary, RoundPrivacy};
use crate::scenario::Scenario;

/// A scenario's data, loaded and partitioned: what `flotilla data partition-stats` shows.
pub struct Prepared {
    /// Train and test sets.
    pub data: TrainTest,
    /// Sample indices of the training set per client — empty under `[partition] kind =
    /// "sampled"`, whose clients draw theirs when selected ([`Self::sampled`]); read a client's
    /// samples through [`Self::client_samples`] and the whole split through
    /// [`Self::partition_lists`].
    pub partition: Partition,
    /// `kind = "sampled"`: the lazily drawn partition (a few bytes for any number of clients).
    pub sampled: Option<SampledPartition>,
}

impl Prepared {
    /// Number of clients the data is split among.
    pub fn num_clients(&self) -> usize {
        self.sampled
            .map_or(self.partition.num_clients(), |s| s.num_clients())
    }

    /// Training-set indices of `client` (drawn now under `sampled`); empty for an unknown client.
    pub fn client_samples(&self, client: u64) -> Cow<'_, [u32]> {
        match &self.sampled {
            Some(s) if (client as usize) < s.num_clients() => Cow::Owned(s.client(client)),
            Some(_) => Cow::Borrowed(&[]),
            None => Cow::Borrowed(
                usize::try_from(client)
                    .ok()
                    .and_then(|c| self.partition.clients.get(c))
                    .map_or(&[][..], Vec::as_slice),
            ),
        }
    }

    /// Every client's sample list, drawn now under `sampled` (for statistics: O(clients × N)).
    pub fn partition_lists(&self) -> Cow<'_, Partition> {
        match &self.sampled {
            Some(s) => Cow::Owned(Partition {
                clients: (0..s.num_clients() as u64).map(|c| s.client(c)).collect(),
            }),
            None => Cow::Borrowed(&self.partition),
        }
    }
}

/// Loads the scenario's dataset from `data_dir` and partitions its training set; a `sampled`
/// partition is only validated here, its clients draw their samples when selected.
pub fn prepare(scenario: &Scenario, data_dir: &Path) -> Result<Prepared, SimError> {
    let opts = LoadOptions {
        test_fraction: scenario.data.test_fraction,
        split_seed: scenario.data.split_seed,
    };
    let data = flotilla_data::load(scenario.data.dataset, data_dir, &opts)?;
    if let PartitionSpec::Sampled { samples_per_client } = scenario.partition.spec {
        let sampled = SampledPartition::new(
            data.train.len(),
            scenario.clients,
            samples_per_client,
            scenario.partition.seed,
        )?;
        return Ok(Prepared {
            data,
            partition: Partition::default(),
            sampled: Some(sampled),
        });
    }
    let partition = flotilla_data::partition(
        &data.train.labels,
        data.train.groups.as_deref(),
        data.train.num_classes,
        scenario.clients,
        &scenario.partition.spec,
        scenario.partition.seed,
    )?;
    Ok(Prepared {
        data,
        partition,
        sampled: None,
    })
}

/// One committed round as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: u64,
    /// Attempts the round took (more than 1 when dropouts forced a retry).
    pub attempt: u32,
    /// Clients whose updates were aggregated.
    pub participants: usize,
    /// Samples behind the aggregate.
    pub num_samples: u64,
    /// Sample-weighted mean of the participants' training loss.
    pub train_loss: f64,
    /// Test accuracy of the new global model, if this round was evaluated.
    pub test_accuracy: Option<f64>,
    /// Test loss of the new global model, if this round was evaluated.
    pub test_loss: Option<f64>,
    /// Backdoor attacks: fraction of triggered test inputs classified as the target, if evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backdoor_success: Option<f64>,
    /// Reporters the strategy left out of the aggregate, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
    /// Of the quarantined, how many were simulated attackers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined_attackers: Option<usize>,
    /// Under `[privacy]`: cumulative (ε, δ) after this round, and the round's clip norm and noise.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<RoundPrivacy>,
    /// FedBuff: mean staleness τ of the updates in this server step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness_mean: Option<f64>,
    /// FedBuff: largest staleness τ of the updates in this server step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness_max: Option<u64>,
    /// Wall-clock seconds since the simulation started.
    pub elapsed_seconds: f64,
}

/// What the simulator reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// Data is loaded and partitioned; training starts.
    Started {
        /// Training samples.
        train_samples: usize,
        /// Test samples.
        test_samples: usize,
        /// Model parameters.
        num_params: usize,
        /// Accuracy of the initial model on the test set.
        initial_accuracy: f64,
    },
    /// A round committed (and was evaluated if it was due).
    Round(RoundRecord),
    /// A round attempt ended below its minimum report fraction and is retried.
    RoundAbandoned {
        /// Round number.
        round: u64,
        /// The failed attempt.
        attempt: u32,
        /// Reports received.
        reports: usize,
        /// Reports needed.
        needed: usize,
    },
}

/// The result of a finished simulation.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    /// Every committed round, in order.
    pub history: Vec<RoundRecord>,
    /// Accuracy of the initial model.
    pub initial_accuracy: f64,
    /// Test accuracy of the final model.
    pub final_accuracy: f64,
    /// Test loss of the final model.
    pub final_loss: f64,
    /// Backdoor success rate of the final model (backdoor attacks only).
    pub final_backdoor_success: Option<f64>,
    /// The simulated attackers' ids (empty without `[attack]`).
    pub attackers: Vec<u64>,
    /// The final global parameters.
    pub final_params: Vec<f32>,
    /// Their layout.
    pub layout: ParamLayout,
    /// SHA-256 of the final parameters as little-endian f32 bytes.
    pub model_sha256: String,
    /// Round attempts abandoned along the way.
    pub abandoned_attempts: u64,
    /// Reports refused because their round had already closed (over-selected stragglers), or,
    /// under FedBuff, because their task had been dropped at its deadline.
    pub late_reports: u64,
    /// FedBuff: reports refused because their base model was more than `max_staleness` versions old.
    pub stale_reports: u64,
    /// Training samples.
    pub train_samples: usize,
    /// Test samples.
    pub test_samples: usize,
    /// Under `[privacy]`: ε spent, δ, and why the run stopped early if the budget ended it.
    pub privacy: Option<PrivacySummary>,
    /// Plain rounds: the bytes the clients' (possibly compressed) updates took.
    pub upload: Option<crate::UploadBytes>,
}

pub(crate) fn samples<'a>(d: &'a Dataset, indices: &'a [u32]) -> Samples<'a> {
    Samples {
        features: &d.features,
        feature_len: d.feature_len(),
        labels: &d.labels,
        indices,
    }
}

/// What every simulation driver starts with: one trainer per worker thread (at most `max_workers`,
/// each built from the scenario seed), the model's layout and initial parameters, the test split's
/// indices and the initial model's evaluation, announced through `observe` as [`SimEvent::Started`].
pub(crate) struct Setup {
    pub trainers: Vec<Box<dyn Trainer>>,
    pub layout: ParamLayout,
    pub initial: Vec<f32>,
    pub test_idx: Vec<u32>,
    pub init_eval: flotilla_ml::EvalReport,
}

/// Builds a driver's [`Setup`].
pub(crate) fn setup(
    scenario: &Scenario,
    prepared: &Prepared,
    max_workers: usize,
    observe: &mut dyn FnMut(&SimEvent),
) -> Result<Setup, SimError> {
    let train = &prepared.data.train;
    let test = &prepared.data.test;
    let spec = ModelSpec {
        kind: scenario.model.kind,
        input_shape: train.feature_shape.clone(),
        num_classes: train.num_classes,
    };
    let threads = match scenario.simulation.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(max_workers.max(1));
    let mut trainers: Vec<Box<dyn Trainer>> = (0..threads)
        .map(|_| flotilla_ml::build(&spec, scenario.seed))
        .collect::<Result<_, _>>()?;
    let layout = trainers[0].layout().clone();
    let initial = trainers[0].parameters();
    let test_idx: Vec<u32> = (0..test.len() as u32).collect();
    let init_eval = trainers[0].evaluate(&samples(test, &test_idx))?;
    observe(&SimEvent::Started {
        train_samples: train.len(),
        test_samples: test.len(),
        num_params: layout.len(),
        initial_accuracy: init_eval.accuracy,
    });
    Ok(Setup {
        trainers,
        layout,
        initial,
        test_idx,
        init_eval,
    })
}

pub(crate) fn evaluate_commit(
    scenario: &Scenario,
    info: &CommitInfo,
    machine: &RoundMachine,
    trainers: &mut [Box<dyn Trainer>],
    test_view: &Samples<'_>,
    attackers: Option<&Attackers>,
    started: Instant,
) -> Result<RoundRecord, SimError> {
    let due = info.round.is_multiple_of(scenario.eval_every) || info.round == scenario.rounds;
    let (mut acc, mut loss, mut backdoor) = (None, None, None);
    if due {
        trainers[0].set_parameters(machine.global())?;
        let e = trainers[0].evaluate(test_view)?;
        acc = Some(e.accuracy);
        loss = Some(e.loss);
        if let Some(t) = attackers.and_then(|a| a.backdoor_test.as_ref()) {
            let idx: Vec<u32> = (0..t.len() as u32).collect();
            backdoor = Some(trainers[0].evaluate(&samples(t, &idx))?.accuracy);
        }
    }
    let quarantined_attackers = attackers.map(|a| {
        info.quarantined
            .iter()
            .filter(|q| a.is_attacker(q.client))
            .count()
    });
    Ok(RoundRecord {
        round: info.round,
        attempt: info.attempt,
        participants: info.participants.len(),
        num_samples: info.num_samples,
        train_loss: info.train_loss,
        test_accuracy: acc,
        test_loss: loss,
        backdoor_success: backdoor,
        quarantined: info.quarantined.clone(),
        quarantined_attackers,
        privacy: None,
        staleness_mean: (!info.staleness.is_empty())
            .then(|| info.staleness.iter().sum::<u64>() as f64 / info.staleness.len() as f64),
        staleness_max: info.staleness.iter().max().copied(),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// A client's new parameters and its training report.
pub(crate) type Fitted = (Vec<f32>, FitReport);

/// One selected client's training work.
pub(crate) struct ClientJob<'a> {
    pub(crate) client: ClientId,
    pub(crate) seed: u64,
    /// The training set it reads (the poisoned copy for data-poisoning attackers).
    pub(crate) data: &'a Dataset,
    /// SCAFFOLD gradient correction `c − cᵢ`.
    pub(crate) correction: Option<Vec<f32>>,
}

/// Trains every client of `work` from `global`, spread over the worker trainers; results come back in
/// `work` order, whichever thread produced them.
pub(crate) fn train_cohort(
    scenario: &Scenario,
    prepared: &Prepared,
    global: &[f32],
    proximal_mu: f32,
    work: &[ClientJob<'_>],
    trainers: &mut [Box<dyn Trainer>],
) -> Result<Vec<Fitted>, SimError> {
    let n_threads = trainers.len();
    let fit_one = |trainer: &mut Box<dyn Trainer>, job: &ClientJob<'_>| {
        let idx = prepared.client_samples(job.client.0);
        trainer.set_parameters(global)?;
        let cfg = FitConfig {
            epochs: scenario.train.local_epochs,
            batch_size: scenario.train.batch_size,
            learning_rate: scenario.train.learning_rate,
            seed: job.seed,
            max_grad_norm: scenario.train.max_grad_norm,
        };
        let objective = LocalObjective {
            proximal_mu,
            gradient_correction: job.correction.as_deref(),
        };
        let report = trainer.fit_with(&samples(job.data, &idx), &cfg, &objective)?;
        Ok::<_, SimError>((trainer.parameters(), report))
    };
    if n_threads == 1 || work.len() == 1 {
        return work.iter().map(|w| fit_one(&mut trainers[0], w)).collect();
    }
    let mut slots: Vec<Option<Result<Fitted, SimError>>> = (0..work.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = trainers
            .iter_mut()
            .enumerate()
            .map(|(t, trainer)| {
                let fit_one = &fit_one;
                scope.spawn(move || {
                    // Static assignment: worker t trains clients t, t+T, t+2T, …
                    work.iter()
                        .enumerate()
                        .skip(t)
                        .step_by(n_threads)
                        .map(|(i, w)| (i, fit_one(trainer, w)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panicked worker leaves its slots empty; they become errors below.
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    slots[i] = Some(r);
                }
            }
        }
    });
    slots
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(SimError::JobFailed("a training worker panicked".into()))))
        .collect()
}
