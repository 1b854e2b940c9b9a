//! Plain rounds in the simulator: the clients of one configured batch (a round attempt's cohort)
//! train together on the worker threads, then report in cohort order; the dropped are lost; then the
//! whole cohort checks in again. Attackers, SCAFFOLD control variates and local DP shares are applied
//! here, per client, before its report. The loop itself is [`crate::driver`].

use std::collections::BTreeMap;

use flotilla_core::round::{ClientId, Event, RejectReason, ReportMetrics, Task};
use flotilla_core::strategy::{scaffold_client_update, scaffold_correction};
use flotilla_ml::FitReport;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::attack::Attackers;
use crate::compress::SimCompression;
use crate::driver::{Clients, Driver, Refused};
use crate::engine::{ClientJob, Prepared, train_cohort};
use crate::error::SimError;
use crate::privacy::SimPrivacy;
use crate::scenario::Scenario;

/// Clients trained per worker thread before their reports are fed: enough to keep every worker
/// busy between feeds, few enough that a chunk's trained models (threads × this × model size) stay
/// small whatever the cohort.
const CHUNK_PER_THREAD: usize = 4;

/// The simulated clients of plain (synchronous, unmasked) rounds.
pub(crate) struct PlainClients {
    attackers: Option<Attackers>,
    /// SCAFFOLD client control variates cᵢ, kept by each simulated client across rounds.
    controls: BTreeMap<u64, Vec<f32>>,
    dropout_rng: ChaCha8Rng,
    compression: SimCompression,
}

impl PlainClients {
    /// The clients of `scenario` training a model of `num_params` parameters, its attackers among
    /// them. Refused if their compression state would not fit (see [`SimCompression::new`]).
    pub(crate) fn new(
        scenario: &Scenario,
        prepared: &Prepared,
        num_params: usize,
    ) -> Result<Self, SimError> {
        let train = &prepared.data.train;
        let test = &prepared.data.test;
        Ok(Self {
            attackers: scenario.attack.map(|a| {
                Attackers::new(a, scenario.seed, train, test, prepared.num_clients(), |c| {
                    prepared.client_samples(c)
                })
            }),
            controls: BTreeMap::new(),
            dropout_rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xD_2090_u64),
            compression: SimCompression::new(scenario, num_params)?,
        })
    }
}

impl PlainClients {
    /// Feeds one trained client's report: an attacker tampers with it, a local-DP client adds its
    /// noise share, a SCAFFOLD client updates its cᵢ (from the batch's server control `c`) and
    /// appends Δcᵢ. The model an attacker or DP share is relative to is the machine's current one,
    /// as it always was.
    fn report(
        &mut self,
        d: &mut Driver<'_>,
        client: ClientId,
        task: &Task,
        mut params: Vec<f32>,
        report: &FitReport,
        server_control: Option<&[f32]>,
    ) -> Result<(), SimError> {
        let scenario = d.scenario;
        if let Some(a) = &mut self.attackers
            && a.is_attacker(client.0)
        {
            a.tamper(d.machine.global(), &mut params);
        }
        if let Some(dp) = &scenario.strategy.dp {
            SimPrivacy::client_share(dp, d.machine.global(), &mut params, task.seed);
        }
        // The update crosses the wire here (before SCAFFOLD appends its control delta).
        self.compression
            .upload(client.0, task.seed, d.machine.global(), &mut params)?;
        if let Some(c) = server_control {
            // SCAFFOLD option II: cᵢ⁺ = cᵢ − c + (x − yᵢ)/(K·η); report Δcᵢ = cᵢ⁺ − cᵢ after
            // the parameters.
            let ci = self.controls.entry(client.0).or_default();
            let delta_c = scaffold_client_update(
                ci,
                c,
                d.machine.global(),
                &params,
                report.steps,
                scenario.train.learning_rate,
            );
            params.extend_from_slice(&delta_c);
        }
        d.feed(
            self,
            Event::Report {
                client,
                round: task.round,
                attempt: task.attempt,
                stage: task.stage,
                num_samples: report.num_samples as u64,
                update: &params,
                metrics: ReportMetrics {
                    train_loss: report.mean_loss,
                    eval: None,
                },
            },
        )
    }
}

impl Clients for PlainClients {
    fn attackers(&self) -> Option<&Attackers> {
        self.attackers.as_ref()
    }

    fn upload_bytes(&self) -> Option<crate::UploadBytes> {
        Some(self.compression.summary())
    }

    /// Over-selected clients that finish after the round filled up are refused as late: that is
    /// the protocol working. Anything else is a bug.
    fn refused(&self, reason: &RejectReason) -> Option<Refused> {
        matches!(
            reason,
            RejectReason::RoundFull
                | RejectReason::NotAccepting(_)
                | RejectReason::WrongRound { .. }
        )
        .then_some(Refused::Late)
    }

    fn run_batch(
        &mut self,
        d: &mut Driver<'_>,
        cohort: Vec<(ClientId, Task)>,
    ) -> Result<(), SimError> {
        let (scenario, prepared) = (d.scenario, d.prepared);
        let train = &prepared.data.train;
        // Each selected client drops out with probability `dropout`, decided in cohort order.
        let drops: Vec<bool> = cohort
            .iter()
            .map(|_| self.dropout_rng.random_bool(scenario.round.dropout))
            .collect();
        let work: Vec<(ClientId, Task)> = cohort
            .iter()
            .zip(&drops)
            .filter(|(_, d)| !**d)
            .map(|(c, _)| c.clone())
            .collect();
        // Everyone trains from the model, server control and proximal term as they stood when the
        // batch was configured, even when the round commits (and they move) while the cohort's
        // reports are still being fed.
        let directive = d.machine.strategy().client_directive();
        let global = d.machine.global().to_vec();
        let server_control = directive.server_control.map(<[f32]>::to_vec);
        let proximal_mu = directive.proximal_mu as f32;
        d.now += 1;
        // Train a chunk, feed its reports in cohort order, then the next chunk: at most
        // `threads × CHUNK_PER_THREAD` trained models are alive at once, not the whole cohort's.
        // The order reports are fed (so the machine's fold order) is cohort order, as before.
        let chunk = d.trainers.len().max(1) * CHUNK_PER_THREAD;
        for part in work.chunks(chunk) {
            let jobs: Vec<ClientJob<'_>> = part
                .iter()
                .map(|(client, task)| {
                    let data = match &self.attackers {
                        Some(a) if a.is_attacker(client.0) => {
                            a.poisoned_train.as_ref().unwrap_or(train)
                        }
                        _ => train,
                    };
                    // SCAFFOLD: local gradients are corrected by c − cᵢ (cᵢ = 0 before the first
                    // round). A client is in a cohort once, so feeding earlier chunks never moved
                    // this client's cᵢ.
                    let correction = server_control.as_deref().map(|c| {
                        scaffold_correction(c, self.controls.get(&client.0).map(Vec::as_slice))
                    });
                    ClientJob {
                        client: *client,
                        seed: task.seed,
                        data,
                        correction,
                    }
                })
                .collect();
            let results = train_cohort(
                scenario,
                prepared,
                &global,
                proximal_mu,
                &jobs,
                &mut d.trainers,
            )?;
            drop(jobs);
            for ((client, task), (params, report)) in part.iter().zip(results) {
                self.report(d, *client, task, params, &report, server_control.as_deref())?;
            }
        }
        for ((client, _), _) in cohort.iter().zip(&drops).filter(|(_, d)| **d) {
            d.feed(self, Event::ClientLost { client: *client })?;
        }
        // Everyone in the cohort, dropped or not, is available again for later rounds.
        for (client, _) in &cohort {
            d.feed(self, Event::CheckIn { client: *client })?;
        }
        Ok(())
    }
}
