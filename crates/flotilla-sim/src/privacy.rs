//! Differential privacy in the simulator: the `[privacy]` table, the budget check before every round,
//! the accounting after every commit, and the clients' noise shares in distributed mode.
//!
//! The mechanism itself (clipping, noise, fixed denominator, adaptive clip) runs inside the round
//! machine's strategy (`flotilla_core::dp`); this module only does what a driver must: compose the
//! rounds in an accountant (`flotilla_privacy`) and refuse a round that would exceed the budget
//! *before* it is trained.
//!
//! **Sampling rate.** The machine samples a cohort of `ceil(clients_per_round × over_selection)`
//! clients uniformly without replacement from the clients that checked in (in the simulator: all of
//! them), so a client takes part in a round with probability `q = selected / clients`. The accountant
//! treats rounds as Poisson-sampled with that `q` — the usual approximation of DP-FedAvg
//! implementations (TensorFlow Federated, Opacus) for fixed-size uniform sampling.

use flotilla_core::dp::{DpMode, DpRoundInfo, DpSpec, PrivacySpec};
use flotilla_core::round::RoundPolicy;
use flotilla_privacy::{Budget, JobPrivacy, PrivacyError};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::error::SimError;

/// The privacy of one committed round, as the results report it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoundPrivacy {
    /// Cumulative ε after this round, at `delta`.
    pub epsilon_spent: f64,
    /// δ.
    pub delta: f64,
    /// ε of this round on its own, at `delta`.
    pub round_epsilon: f64,
    /// The clip norm used this round.
    pub dp_clip_norm: f64,
    /// Standard deviation of the server's noise on the sum (0 in distributed mode).
    pub dp_noise_std: f64,
    /// Fraction of reports whose delta was within the clip norm (central mode).
    pub dp_unclipped_fraction: f64,
}

/// The run's privacy: accountant, budget and why it stopped early, if it did.
#[derive(Debug, Clone)]
pub struct SimPrivacy {
    job: JobPrivacy,
    spec: PrivacySpec,
    /// Sampling rate per round.
    pub q: f64,
    /// Set when the budget refused a round: the run ends before it.
    pub stopped_reason: Option<String>,
    /// Distributed DP over secure aggregation: noised values outside `±clip_range`.
    clamped: u64,
}

/// What the results JSON shows about privacy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivacySummary {
    /// `central` or `distributed`.
    pub mode: DpMode,
    /// Cumulative ε of the committed rounds at `delta`.
    pub epsilon_spent: f64,
    /// δ.
    pub delta: f64,
    /// The budget, if any.
    pub max_epsilon: Option<f64>,
    /// Sampling rate per round.
    pub sampling_rate: f64,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// Rounds accounted.
    pub rounds: u64,
    /// Why the run stopped before its last round (budget), if it did.
    pub stopped_reason: Option<String>,
    /// Distributed DP over secure aggregation: noised client values that fell outside
    /// `±secagg.clip_range` and were clamped by the encoding (expected 0; see `flotilla_core::dp`).
    pub clamped_values: u64,
}

impl SimPrivacy {
    /// Accounting for a run of `scenario_clients` clients under `policy`.
    pub fn new(
        spec: PrivacySpec,
        policy: &RoundPolicy,
        scenario_clients: usize,
    ) -> Result<Self, SimError> {
        let q = (policy.selection_size() as f64 / scenario_clients.max(1) as f64).min(1.0);
        // No budget: account without a limit.
        let budget =
            Budget::new(spec.max_epsilon.unwrap_or(f64::MAX), spec.delta).map_err(privacy_error)?;
        Ok(Self {
            job: JobPrivacy::new("simulation", budget),
            spec,
            q,
            stopped_reason: None,
            clamped: 0,
        })
    }

    /// The scenario's accounting, started: `None` without `[privacy]`; otherwise the accountant and
    /// whether the budget already refuses the first round (then nothing is trained).
    pub fn start(scenario: &crate::scenario::Scenario) -> Result<(Option<Self>, bool), SimError> {
        let Some(spec) = scenario.privacy else {
            return Ok((None, false));
        };
        let mut p = Self::new(
            spec,
            &crate::scenario::round_policy(scenario),
            scenario.clients,
        )?;
        let refused_first = !p.admit_next_round()?;
        Ok((Some(p), refused_first))
    }

    /// After round `round` of `rounds` committed: records it and, unless it was the last, checks the
    /// next round against the budget. Returns the round's record and whether the run must stop here
    /// (the explanation is then in the results).
    pub fn on_commit(
        &mut self,
        info: Option<&DpRoundInfo>,
        round: u64,
        rounds: u64,
    ) -> Result<(RoundPrivacy, bool), SimError> {
        let record = self.record(info)?;
        let stop = round < rounds && !self.admit_next_round()?;
        Ok((record, stop))
    }

    /// Checks the next round against the budget; on refusal records the explanation and returns false.
    pub fn admit_next_round(&mut self) -> Result<bool, SimError> {
        match self.job.check_round(self.q, self.spec.dp.noise_multiplier) {
            Ok(_) => Ok(true),
            Err(e @ PrivacyError::BudgetExceeded { .. }) => {
                self.stopped_reason = Some(format!("privacy budget: {e}"));
                Ok(false)
            }
            Err(e) => Err(privacy_error(e)),
        }
    }

    /// Records a committed round.
    pub fn record(&mut self, info: Option<&DpRoundInfo>) -> Result<RoundPrivacy, SimError> {
        let check = self
            .job
            .record_round(self.q, self.spec.dp.noise_multiplier)
            .map_err(privacy_error)?;
        let round_epsilon =
            flotilla_privacy::epsilon(self.q, self.spec.dp.noise_multiplier, 1, self.spec.delta)
                .map_err(privacy_error)?
                .epsilon;
        let info = info.copied().unwrap_or(DpRoundInfo {
            clip_norm: self.spec.dp.initial_clip_norm(),
            noise_std: 0.0,
            unclipped: 0,
            reports: 0,
            next_clip_norm: self.spec.dp.initial_clip_norm(),
        });
        Ok(RoundPrivacy {
            epsilon_spent: check.epsilon_after,
            delta: self.spec.delta,
            round_epsilon,
            dp_clip_norm: info.clip_norm,
            dp_noise_std: info.noise_std,
            dp_unclipped_fraction: if info.reports == 0 {
                0.0
            } else {
                info.unclipped as f64 / info.reports as f64
            },
        })
    }

    /// The summary for the results.
    pub fn summary(&self) -> PrivacySummary {
        let spent = self.job.spent();
        PrivacySummary {
            mode: self.spec.dp.mode,
            epsilon_spent: spent.epsilon,
            delta: self.spec.delta,
            max_epsilon: self.spec.max_epsilon,
            sampling_rate: self.q,
            noise_multiplier: self.spec.dp.noise_multiplier,
            rounds: spent.steps,
            stopped_reason: self.stopped_reason.clone(),
            clamped_values: self.clamped,
        }
    }

    /// Distributed DP over secure aggregation: counts noised values the encoding will clamp.
    pub fn add_clamped(&mut self, values: u64) {
        self.clamped += values;
    }

    /// Distributed mode: the simulated client clips its delta and adds its noise share before
    /// reporting. The RNG is seeded from the task seed, which is fine in a simulation (no adversary,
    /// reproducible runs) and wrong on a real client (the server knows the task seed).
    pub fn client_share(dp: &DpSpec, global: &[f32], params: &mut [f32], task_seed: u64) {
        if dp.mode != DpMode::Distributed {
            return;
        }
        let mut delta: Vec<f32> = params.iter().zip(global).map(|(p, g)| p - g).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(task_seed ^ 0xD1_5751_B07E);
        flotilla_core::dp::privatize_client_update(&mut delta, dp, &mut rng);
        for ((p, g), d) in params.iter_mut().zip(global).zip(&delta) {
            *p = g + d;
        }
    }
}

fn privacy_error(e: PrivacyError) -> SimError {
    SimError::JobFailed(format!("privacy accounting: {e}"))
}
