//! Differential privacy in the coordinator: the job's `[privacy]` table, the job and tenant budgets,
//! and the accounting of every round.
//!
//! The mechanism (clipping, Gaussian noise σ·C on the sum, fixed denominator, adaptive clip) runs in
//! the round machine's strategy (`flotilla_core::dp`). This module decides whether the *next* round may
//! run at all:
//!
//! * **Admission before selection.** A round's privacy cost is charged to the job's and the tenant's
//!   accountant when the round is admitted — at submission for round 1, right after the commit of
//!   round `r` for round `r + 1` — before any client is configured for it. A round that would exceed
//!   either budget is refused: a submission is rejected with the explanation; a running job is ended
//!   (state `failed`, since the store only reaches `completed` through the last round) and its status
//!   carries `stopped_reason`. Charging at admission reserves the budget, so concurrent jobs of one
//!   tenant can never exceed it together; spend is never refunded (a cancelled round stays charged
//!   until a restart, see below).
//! * **Sampling rate.** The cohort is `ceil(clients_per_round × over_selection)` clients drawn
//!   uniformly from the clients checked in. The coordinator cannot know how many clients *could* have
//!   been drawn, so `[privacy] population` is required, and the rate is
//!   `q = min(1, selected / min(population, clients registered to the tenant))`: an over-estimated
//!   population is capped by the enrolled (non-revoked) clients. It is still an assumption that the
//!   cohort is a uniform sample of `population` clients; set `population = clients_per_round` for
//!   no amplification by sampling (q = 1), the safe choice when few clients are online at a time.
//! * **Restart.** Nothing new is persisted: every commit records its `(q, σ)` and cumulative ε in the
//!   round's metrics, and on start the accountants are rebuilt from the committed rounds of every job,
//!   plus one admitted round for each job still running (its round in flight). A round that was
//!   admitted but never committed by a job that has since ended costs nothing after a restart — its
//!   aggregate was never released.
//! * **Tenant budget.** Configured on the server (`ServerConfig::tenant_privacy`, `flotilla server
//!   --tenant-epsilon-budget EPS --tenant-delta D`): the same (ε, δ) budget for every tenant, composed
//!   over all of a tenant's DP jobs (RDP curves add up; `flotilla_privacy::TenantLedger`).
//! * **Distributed DP** (`mode = "distributed"`) needs secure aggregation (`[secagg]`), so the
//!   coordinator only sees the sum of the clients' noised deltas; without `[secagg]` it is refused.
//!   With it, clients clip to `C` and add `N(0, (σC)²/min_reports)` from their own entropy before
//!   masking, the round machine divides the unmasked sum by `clients_per_round` and adds no noise,
//!   and admission and accounting are exactly the central mode's (same `q`, same `σ` per round).
//!   `[secagg]` with `[privacy]` requires distributed mode and a fixed clip norm
//!   (`flotilla_core::dp::DpSpec::check_secure_aggregation`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use flotilla_core::dp::{DpMode, DpRoundInfo, PrivacySpec};
use flotilla_core::round::RoundPolicy;
use flotilla_privacy::{Budget, JobPrivacy, PrivacyError, RdpAccountant, TenantLedger};
use flotilla_store::{JobId, JobRecord, JobState, Store};

use crate::api::{PrivacyStatus, RoundMetrics, RoundPrivacy};
use crate::spec::{JobSpec, SpecError};

/// A budget applied to each tenant across all its DP jobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantPrivacy {
    /// Largest ε a tenant's jobs may reach together.
    pub max_epsilon: f64,
    /// The δ it is measured at.
    pub delta: f64,
}

/// The coordinator's own rules for a job's `[privacy]` (parsed and added to the strategy by
/// `flotilla_spec`): distributed DP only over `[secagg]` (`secagg` is whether the job has it),
/// `population` required and at least the cohort, and a budget the accountant accepts.
pub(crate) fn check(
    spec: Option<&PrivacySpec>,
    policy: &RoundPolicy,
    secagg: bool,
) -> Result<(), SpecError> {
    let Some(spec) = spec else {
        return Ok(());
    };
    if spec.dp.mode == DpMode::Distributed && !secagg {
        return Err(SpecError::new(
            "privacy.mode",
            "distributed DP requires [secagg] (secure aggregation, so the coordinator only sees the sum of the \
             clients' noised updates); add a [secagg] table, or use mode = \"central\"",
        ));
    }
    let selected = policy.selection_size();
    match spec.population {
        None => {
            return Err(SpecError::new(
                "privacy.population",
                format!(
                    "is required on the coordinator: the number of clients each cohort is sampled from (q = {selected} selected / population); \
                     give a conservative (low) estimate, or {} for no amplification by sampling",
                    policy.clients_per_round
                ),
            ));
        }
        Some(p) if (p as usize) < selected => {
            return Err(SpecError::new(
                "privacy.population",
                format!(
                    "must be ≥ the {selected} clients selected per round (clients_per_round × over_selection), got {p}"
                ),
            ));
        }
        Some(_) => {}
    }
    job_budget(spec).map_err(|e| SpecError::new("privacy", e.to_string()))?;
    Ok(())
}

/// The job's own budget (unlimited ε when `max_epsilon` is not set).
fn job_budget(p: &PrivacySpec) -> Result<Budget, PrivacyError> {
    Budget::new(p.max_epsilon.unwrap_or(f64::MAX), p.delta)
}

/// Accountants of every DP job, grouped in one ledger per tenant.
pub(crate) struct PrivacyBook {
    tenant: Option<TenantPrivacy>,
    /// The tenant budget as a ledger uses it (ε unlimited when no tenant budget is configured).
    tenant_budget: Budget,
    inner: Mutex<BookInner>,
}

#[derive(Default)]
struct BookInner {
    ledgers: BTreeMap<String, TenantLedger>,
    /// Sampling rate of the admitted (in-flight) round of each running job (removed when the job
    /// ends, so at most one entry per running job).
    pending_q: HashMap<u64, f64>,
}

fn job_key(id: JobId) -> String {
    id.0.to_string()
}

impl PrivacyBook {
    /// A book with `tenant` as every tenant's budget (none: tenants are not limited).
    pub fn new(tenant: Option<TenantPrivacy>) -> Result<Self, PrivacyError> {
        let (eps, delta) = tenant.map_or((f64::MAX, 1e-5), |t| (t.max_epsilon, t.delta));
        let tenant_budget = Budget::new(eps, delta)?;
        Ok(Self {
            tenant,
            tenant_budget,
            inner: Mutex::new(BookInner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BookInner> {
        // A poisoned lock only means a panic elsewhere while holding it; the maps stay consistent
        // (every update is a single insert).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `q` for the next round of `spec`: the selected count over `min(population, registered)`;
    /// 1 (no amplification) if the clients cannot be counted.
    async fn sampling_rate(store: &Store, spec: &JobSpec, p: &PrivacySpec) -> f64 {
        let registered = match store.list_clients(Some(spec.tenant.as_str())).await {
            Ok(c) => c.iter().filter(|c| !c.revoked).count() as u64,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the tenant's clients; accounting the round with q = 1");
                return 1.0;
            }
        };
        let population = p.population.unwrap_or(1).min(registered).max(1);
        (spec.policy().selection_size() as f64 / population as f64).min(1.0)
    }

    /// Rebuilds every accountant from the store: committed rounds' recorded `(q, σ)`, plus the
    /// admitted round of each running job.
    pub async fn rebuild(&self, store: &Store) -> Result<(), flotilla_store::StoreError> {
        let jobs = store.list_jobs(None).await?;
        for job in jobs {
            let Ok(spec) = serde_json::from_value::<JobSpec>(job.spec.clone()) else {
                continue;
            };
            let Some(p) = spec.privacy else { continue };
            let Ok(budget) = job_budget(&p) else { continue };
            let history = store.job_history(job.id).await?;
            let mut acc = RdpAccountant::new();
            for r in &history {
                let rec = &r.metrics["privacy"];
                let q = rec["q"].as_f64().unwrap_or(1.0);
                let sigma = rec["sigma"].as_f64().unwrap_or(p.dp.noise_multiplier);
                if acc.compose(q, sigma, 1).is_err() {
                    tracing::error!(
                        job = job.id.0,
                        round = r.round,
                        "unreadable privacy record; counted as q = 1"
                    );
                    let _ = acc.compose(1.0, p.dp.noise_multiplier, 1);
                }
            }
            let running = job.state == JobState::Running && job.rounds_completed < job.rounds_total;
            let mut pending = None;
            if running {
                let q = Self::sampling_rate(store, &spec, &p).await;
                let _ = acc.compose(q, p.dp.noise_multiplier, 1);
                pending = Some(q);
            }
            let mut inner = self.lock();
            let budget_t = self.tenant_budget;
            let ledger = inner
                .ledgers
                .entry(job.tenant.clone())
                .or_insert_with(|| TenantLedger::new(budget_t));
            let _ = ledger.insert_job(JobPrivacy::restore(job_key(job.id), budget, acc));
            if let Some(q) = pending {
                inner.pending_q.insert(job.id.0, q);
            }
        }
        Ok(())
    }

    /// Before a job is stored: would its first round fit its own and its tenant's budget?
    pub async fn check_new(&self, store: &Store, spec: &JobSpec) -> Result<(), String> {
        let Some(p) = spec.privacy else { return Ok(()) };
        let q = Self::sampling_rate(store, spec, &p).await;
        let budget = job_budget(&p).map_err(|e| e.to_string())?;
        let inner = self.lock();
        let mut ledger = inner
            .ledgers
            .get(&spec.tenant)
            .cloned()
            .unwrap_or_else(|| TenantLedger::new(self.tenant_budget));
        ledger
            .register_job("new job", budget)
            .map_err(|e| e.to_string())?;
        ledger
            .check_round("new job", q, p.dp.noise_multiplier)
            .map(|_| ())
            .map_err(|e| refusal(&e))
    }

    /// Registers a stored job and admits its first round (charged now).
    pub async fn register(&self, store: &Store, id: JobId, spec: &JobSpec) -> Result<(), String> {
        let Some(p) = spec.privacy else { return Ok(()) };
        let q = Self::sampling_rate(store, spec, &p).await;
        let budget = job_budget(&p).map_err(|e| e.to_string())?;
        let mut inner = self.lock();
        let budget_t = self.tenant_budget;
        let ledger = inner
            .ledgers
            .entry(spec.tenant.clone())
            .or_insert_with(|| TenantLedger::new(budget_t));
        ledger
            .register_job(job_key(id), budget)
            .map_err(|e| e.to_string())?;
        ledger
            .record_round(&job_key(id), q, p.dp.noise_multiplier)
            .map_err(|e| refusal(&e))?;
        inner.pending_q.insert(id.0, q);
        Ok(())
    }

    /// After round `round` of a job committed: admits (and charges) the next round, or says why it
    /// may not run. `Ok` when the job has no privacy or no next round.
    pub async fn admit_next(
        &self,
        store: &Store,
        id: JobId,
        spec: &JobSpec,
        round: u64,
    ) -> Result<(), String> {
        let Some(p) = spec.privacy else { return Ok(()) };
        self.lock().pending_q.remove(&id.0);
        if round >= spec.rounds {
            return Ok(());
        }
        let q = Self::sampling_rate(store, spec, &p).await;
        let mut inner = self.lock();
        let result = match inner.ledgers.get_mut(&spec.tenant) {
            Some(l) => l
                .record_round(&job_key(id), q, p.dp.noise_multiplier)
                .map(|_| ())
                .map_err(|e| refusal(&e)),
            None => Err(format!("job {} is missing from the privacy ledger", id.0)),
        };
        if result.is_ok() {
            inner.pending_q.insert(id.0, q);
        }
        result
    }

    /// Forgets the round in flight of a job that ended (its charge stays in the ledger).
    pub fn forget_running(&self, id: JobId) {
        self.lock().pending_q.remove(&id.0);
    }

    /// Each tenant's charged ε (at most `max` tenants) and the tenant budget, if one is set.
    pub fn tenant_spend(&self, max: usize) -> (Vec<(String, f64)>, Option<f64>) {
        let inner = self.lock();
        let spent = inner
            .ledgers
            .iter()
            .take(max)
            .map(|(t, l)| (t.clone(), l.spent().epsilon))
            .collect();
        (spent, self.tenant.map(|t| t.max_epsilon))
    }

    /// The privacy record of a round about to be committed (stored in its metrics): its `(q, σ)`,
    /// the clip norm and noise, and the job's ε after it.
    pub fn round_metrics(
        &self,
        id: JobId,
        spec: &JobSpec,
        round: u64,
        info: Option<&DpRoundInfo>,
    ) -> Option<RoundPrivacy> {
        let p = spec.privacy?;
        let inner = self.lock();
        let q = inner.pending_q.get(&id.0).copied().unwrap_or(1.0);
        // The job's accountant holds the rounds up to this one (this one was admitted).
        let job = inner.ledgers.get(&spec.tenant)?.job(&job_key(id))?;
        if job.accountant().steps() != round {
            tracing::warn!(
                job = id.0,
                round,
                accounted = job.accountant().steps(),
                "privacy accountant is out of step with the rounds"
            );
        }
        Some(RoundPrivacy {
            q,
            sigma: p.dp.noise_multiplier,
            epsilon_spent: job.spent().epsilon,
            delta: p.delta,
            clip_norm: info.map(|i| i.clip_norm),
            noise_std: info.map(|i| i.noise_std),
            unclipped: info.map(|i| i.unclipped),
        })
    }

    /// The audit log's `dp.charge` of a round about to be committed: ε it adds to the job's
    /// total (the total after it minus the total after the round before), the total, and δ.
    pub fn round_charge(&self, id: JobId, spec: &JobSpec) -> Option<flotilla_store::DpCharge> {
        let p = spec.privacy?;
        let inner = self.lock();
        let job = inner.ledgers.get(&spec.tenant)?.job(&job_key(id))?;
        let total = job.spent().epsilon;
        // O(rounds × orders) per commit: microseconds next to a round.
        let per_round = job.accountant().per_round(p.delta).ok()?;
        let before = per_round
            .len()
            .checked_sub(2)
            .map_or(0.0, |i| per_round[i].epsilon);
        Some(flotilla_store::DpCharge {
            epsilon_round: total - before,
            epsilon_total: total,
            delta: p.delta,
        })
    }

    /// The privacy fields of `job status`: `epsilon_spent` (released rounds), `delta`, the budget,
    /// the tenant's spend, and `stopped_reason` for a job a budget ended.
    pub fn status(
        &self,
        job: &JobRecord,
        last_round_metrics: Option<&RoundMetrics>,
    ) -> Option<PrivacyStatus> {
        let spec: JobSpec = serde_json::from_value(job.spec.clone()).ok()?;
        let p = spec.privacy?;
        let inner = self.lock();
        let ledger = inner.ledgers.get(&job.tenant);
        let released = last_round_metrics
            .and_then(|m| m.privacy.as_ref())
            .map(|p| p.epsilon_spent)
            .unwrap_or(0.0);
        let charged = ledger
            .and_then(|l| l.job(&job_key(job.id)))
            .map(|j| j.spent().epsilon);
        // The refusal is the failed job's stored reason (`stop_for_privacy` records it).
        let mut stopped = job
            .state_reason
            .clone()
            .filter(|r| job.state == JobState::Failed && r.starts_with("privacy budget: "));
        if stopped.is_none()
            && job.state == JobState::Failed
            && job.rounds_completed < job.rounds_total
        {
            // After a restart: the refusal is recomputed (spend only grows, so it still refuses).
            if let Some(l) = ledger {
                let q = (spec.policy().selection_size() as f64
                    / p.population.unwrap_or(1).max(1) as f64)
                    .min(1.0);
                if let Err(e @ PrivacyError::BudgetExceeded { .. }) =
                    l.check_round(&job_key(job.id), q, p.dp.noise_multiplier)
                {
                    stopped = Some(refusal(&e));
                }
            }
        }
        Some(PrivacyStatus {
            epsilon_spent: released,
            delta: p.delta,
            max_epsilon: p.max_epsilon,
            noise_multiplier: p.dp.noise_multiplier,
            population: p.population,
            epsilon_charged: charged,
            tenant_epsilon_spent: self.tenant.and(ledger.map(|l| l.spent().epsilon)),
            tenant_max_epsilon: self.tenant.map(|t| t.max_epsilon),
            tenant_delta: self.tenant.map(|t| t.delta),
            stopped_reason: stopped,
        })
    }
}

fn refusal(e: &PrivacyError) -> String {
    format!("privacy budget: {e}")
}
