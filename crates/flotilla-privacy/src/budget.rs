//! Privacy budgets: a job's own (ε, δ) budget and a tenant's ledger over all its jobs.
//!
//! **When to call what.** Before a round starts (before clients are even configured), call
//! `check_round(q, σ)`: it refuses — with an explanation naming the numbers — a round whose
//! composition would take ε above the budget, and changes nothing. When the round's noised
//! aggregate is released (the commit), call `record_round(q, σ)`, which re-checks and then
//! composes. A round abandoned before release released nothing and is not recorded.
//!
//! **Tenant composition.** A tenant's jobs train on the same population of clients, so their
//! releases compose sequentially (and adaptively: a later job may depend on an earlier one's
//! model). Rényi DP composes additively under adaptive composition, so the ledger adds the jobs'
//! RDP curves order by order and converts the sum once, at the tenant's δ. That is sound for any
//! interleaving of the jobs' rounds, and tighter than the other sound option, basic composition
//! (summing each job's ε, and its δ). It assumes every job uses the same accounting (Poisson
//! sampling, add/remove-one client adjacency), which is the only one this crate offers. Spend is
//! never refunded: a finished or cancelled job stays in the ledger.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::accountant::{RdpAccountant, Spend};
use crate::error::{Param, PrivacyError, Scope, check_delta, positive};
use crate::rdp::{DEFAULT_ORDERS, epsilon_from_rdp};

/// A privacy budget: at most `max_epsilon` at `delta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BudgetRaw")]
pub struct Budget {
    #[serde(with = "crate::exact_f64")]
    max_epsilon: f64,
    #[serde(with = "crate::exact_f64")]
    delta: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetRaw {
    #[serde(with = "crate::exact_f64")]
    max_epsilon: f64,
    #[serde(with = "crate::exact_f64")]
    delta: f64,
}

impl TryFrom<BudgetRaw> for Budget {
    type Error = PrivacyError;
    fn try_from(raw: BudgetRaw) -> Result<Self, PrivacyError> {
        Budget::new(raw.max_epsilon, raw.delta)
    }
}

impl Budget {
    /// A budget of `max_epsilon` (finite, > 0) at `delta ∈ (0, 1)`.
    pub fn new(max_epsilon: f64, delta: f64) -> Result<Self, PrivacyError> {
        positive(Param::Epsilon, max_epsilon)?;
        check_delta(delta)?;
        Ok(Self { max_epsilon, delta })
    }

    /// The maximum ε.
    pub fn max_epsilon(&self) -> f64 {
        self.max_epsilon
    }

    /// The δ at which ε is measured.
    pub fn delta(&self) -> f64 {
        self.delta
    }
}

/// The outcome of a budget check for one round in one scope (a job, or a tenant).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundCheck {
    /// The 1-based number the round has in that scope.
    pub round: u64,
    /// The round's sampling rate.
    pub q: f64,
    /// The round's noise multiplier.
    pub sigma: f64,
    /// ε spent before the round, at `delta`.
    pub epsilon_before: f64,
    /// ε spent including the round, at `delta`.
    pub epsilon_after: f64,
    /// The Rényi order that attains `epsilon_after`.
    pub order: f64,
    /// The budget's δ.
    pub delta: f64,
    /// The budget's maximum ε.
    pub max_epsilon: f64,
}

impl RoundCheck {
    /// ε left after the round.
    pub fn remaining(&self) -> f64 {
        self.max_epsilon - self.epsilon_after
    }
}

fn decide(
    scope: impl FnOnce() -> Scope,
    budget: &Budget,
    rounds_spent: u64,
    q: f64,
    sigma: f64,
    epsilon_before: f64,
    (epsilon_after, order): (f64, f64),
) -> Result<RoundCheck, PrivacyError> {
    let round = rounds_spent
        .checked_add(1)
        .ok_or(PrivacyError::StepOverflow)?;
    // A NaN (should one ever appear) is refused too.
    if epsilon_after.is_nan() || epsilon_after > budget.max_epsilon {
        return Err(PrivacyError::BudgetExceeded {
            scope: scope(),
            round,
            q,
            sigma,
            epsilon_before,
            epsilon_after,
            delta: budget.delta,
            max_epsilon: budget.max_epsilon,
            rounds_spent,
        });
    }
    Ok(RoundCheck {
        round,
        q,
        sigma,
        epsilon_before,
        epsilon_after,
        order,
        delta: budget.delta,
        max_epsilon: budget.max_epsilon,
    })
}

/// One job's budget and accountant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "JobPrivacyRaw")]
pub struct JobPrivacy {
    job_id: String,
    budget: Budget,
    accountant: RdpAccountant,
    /// ε spent at the budget's δ: derived from the accountant, kept to save a conversion per check.
    #[serde(skip)]
    spent: Spend,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobPrivacyRaw {
    job_id: String,
    budget: Budget,
    accountant: RdpAccountant,
}

impl TryFrom<JobPrivacyRaw> for JobPrivacy {
    type Error = PrivacyError;
    fn try_from(raw: JobPrivacyRaw) -> Result<Self, PrivacyError> {
        let spent = spend_of(&raw.accountant, raw.budget.delta);
        Ok(Self {
            job_id: raw.job_id,
            budget: raw.budget,
            accountant: raw.accountant,
            spent,
        })
    }
}

fn spend_of(accountant: &RdpAccountant, delta: f64) -> Spend {
    // δ is a valid budget δ, so the conversion cannot fail.
    let (epsilon, order) = epsilon_from_rdp(accountant.rdp(), delta);
    Spend {
        epsilon,
        delta,
        order,
        steps: accountant.steps(),
    }
}

/// The spend after a recorded round: the check already converted exactly the RDP curve the
/// accountant now holds (same fold, same bits — tested against a fresh conversion).
fn spent_after(check: &RoundCheck, steps: u64) -> Spend {
    Spend {
        epsilon: check.epsilon_after,
        delta: check.delta,
        order: check.order,
        steps,
    }
}

impl JobPrivacy {
    /// A job with nothing spent.
    pub fn new(job_id: impl Into<String>, budget: Budget) -> Self {
        let accountant = RdpAccountant::new();
        let spent = spend_of(&accountant, budget.delta);
        Self {
            job_id: job_id.into(),
            budget,
            accountant,
            spent,
        }
    }

    /// A job whose past rounds are `accountant`, e.g. rebuilt from the rounds a coordinator committed
    /// after a restart. Spend already released is kept as it is, even if it exceeds `budget` (a budget
    /// lowered since): every further round is then refused.
    pub fn restore(job_id: impl Into<String>, budget: Budget, accountant: RdpAccountant) -> Self {
        let spent = spend_of(&accountant, budget.delta);
        Self {
            job_id: job_id.into(),
            budget,
            accountant,
            spent,
        }
    }

    /// The job's id (used in refusals).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The job's budget.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The job's accountant (history, RDP, per-round reports).
    pub fn accountant(&self) -> &RdpAccountant {
        &self.accountant
    }

    /// ε spent so far at the budget's δ.
    pub fn spent(&self) -> Spend {
        self.spent
    }

    /// Refuses a round with `(q, sigma)` if it would take the job over its budget; changes
    /// nothing either way. Call it before the round starts.
    pub fn check_round(&self, q: f64, sigma: f64) -> Result<RoundCheck, PrivacyError> {
        let rdp_after = self.accountant.rdp_after(q, sigma, 1)?;
        self.check_with(q, sigma, &rdp_after)
    }

    /// The check, given the job's RDP curve after the round.
    fn check_with(
        &self,
        q: f64,
        sigma: f64,
        rdp_after: &[f64],
    ) -> Result<RoundCheck, PrivacyError> {
        let after = epsilon_from_rdp(rdp_after, self.budget.delta);
        decide(
            || Scope::Job(self.job_id.clone()),
            &self.budget,
            self.accountant.steps(),
            q,
            sigma,
            self.spent().epsilon,
            after,
        )
    }

    /// Checks the round like [`check_round`](Self::check_round) and, if it fits, records it.
    /// Call it when the round's noised aggregate is released.
    pub fn record_round(&mut self, q: f64, sigma: f64) -> Result<RoundCheck, PrivacyError> {
        self.accountant.prepare(q, sigma)?;
        let check = self.check_round(q, sigma)?;
        self.accountant.compose(q, sigma, 1)?;
        self.spent = spent_after(&check, self.accountant.steps());
        Ok(check)
    }

    /// Rounds of `(q, sigma)` that still fit in the budget (a planning aid: how many more rounds
    /// the job may run with its current settings). Stops counting at `limit`.
    pub fn rounds_left(&self, q: f64, sigma: f64, limit: u64) -> Result<u64, PrivacyError> {
        // ε is monotone in steps: binary search on the count.
        let fits = |n: u64| -> Result<bool, PrivacyError> {
            Ok(self
                .accountant
                .epsilon_after(q, sigma, n, self.budget.delta)?
                .0
                <= self.budget.max_epsilon)
        };
        if limit == 0 {
            return Ok(0);
        }
        // fits(1) also validates q and sigma.
        if !fits(1)? {
            return Ok(0);
        }
        let (mut lo, mut hi) = (1u64, limit);
        if fits(hi)? {
            return Ok(hi);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? { lo = mid } else { hi = mid }
        }
        Ok(lo)
    }
}

/// A tenant's ledger: its budget, and every job that spends from it.
///
/// The tenant's spend is the RDP sum over its jobs converted at the tenant's δ (see the module
/// documentation for why that is the sound composition). A round must fit both its job's budget
/// and the tenant's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LedgerRaw", into = "LedgerRaw")]
pub struct TenantLedger {
    budget: Budget,
    jobs: BTreeMap<String, JobPrivacy>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerRaw {
    budget: Budget,
    jobs: Vec<JobPrivacy>,
}

impl From<TenantLedger> for LedgerRaw {
    fn from(ledger: TenantLedger) -> Self {
        LedgerRaw {
            budget: ledger.budget,
            jobs: ledger.jobs.into_values().collect(),
        }
    }
}

impl TryFrom<LedgerRaw> for TenantLedger {
    type Error = PrivacyError;
    fn try_from(raw: LedgerRaw) -> Result<Self, PrivacyError> {
        let mut ledger = TenantLedger::new(raw.budget);
        for job in raw.jobs {
            if ledger.jobs.contains_key(&job.job_id) {
                return Err(PrivacyError::DuplicateJob(job.job_id));
            }
            ledger.jobs.insert(job.job_id.clone(), job);
        }
        Ok(ledger)
    }
}

/// A round checked against both its job's budget and the tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LedgerCheck {
    /// The check against the job's budget.
    pub job: RoundCheck,
    /// The check against the tenant's budget.
    pub tenant: RoundCheck,
}

impl TenantLedger {
    /// A ledger with no jobs.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            jobs: BTreeMap::new(),
        }
    }

    /// The tenant's budget.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Registers a job with its own budget. Ids are unique for the ledger's lifetime.
    pub fn register_job(
        &mut self,
        job_id: impl Into<String>,
        budget: Budget,
    ) -> Result<(), PrivacyError> {
        let job_id = job_id.into();
        if self.jobs.contains_key(&job_id) {
            return Err(PrivacyError::DuplicateJob(job_id));
        }
        self.jobs
            .insert(job_id.clone(), JobPrivacy::new(job_id, budget));
        Ok(())
    }

    /// Registers a job with its past spend (see [`JobPrivacy::restore`]).
    pub fn insert_job(&mut self, job: JobPrivacy) -> Result<(), PrivacyError> {
        if self.jobs.contains_key(&job.job_id) {
            return Err(PrivacyError::DuplicateJob(job.job_id));
        }
        self.jobs.insert(job.job_id.clone(), job);
        Ok(())
    }

    /// A registered job.
    pub fn job(&self, job_id: &str) -> Option<&JobPrivacy> {
        self.jobs.get(job_id)
    }

    /// All registered jobs, by id.
    pub fn jobs(&self) -> impl Iterator<Item = &JobPrivacy> {
        self.jobs.values()
    }

    /// Rounds recorded over all jobs.
    pub fn rounds(&self) -> u64 {
        self.jobs
            .values()
            .map(|j| j.accountant.steps())
            .fold(0u64, u64::saturating_add)
    }

    /// The tenant's composed RDP: the sum of its jobs' curves.
    pub fn rdp(&self) -> Vec<f64> {
        let mut sum = vec![0.0; DEFAULT_ORDERS.len()];
        for job in self.jobs.values() {
            for (s, r) in sum.iter_mut().zip(job.accountant.rdp()) {
                *s += r;
            }
        }
        sum
    }

    /// ε spent by the tenant at its budget's δ.
    pub fn spent(&self) -> Spend {
        let (epsilon, order) = epsilon_from_rdp(&self.rdp(), self.budget.delta);
        Spend {
            epsilon,
            delta: self.budget.delta,
            order,
            steps: self.rounds(),
        }
    }

    /// Refuses a round of `job_id` with `(q, sigma)` if it would exceed the job's budget or the
    /// tenant's; changes nothing either way. The job's budget is checked first.
    pub fn check_round(
        &self,
        job_id: &str,
        q: f64,
        sigma: f64,
    ) -> Result<LedgerCheck, PrivacyError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| PrivacyError::UnknownJob(job_id.to_owned()))?;
        let job_after = job.accountant.rdp_after(q, sigma, 1)?;
        let job_check = job.check_with(q, sigma, &job_after)?;
        // The tenant's sum with this job's curve replaced by its curve after the round.
        let mut sum = vec![0.0; DEFAULT_ORDERS.len()];
        for (id, other) in &self.jobs {
            let curve: &[f64] = if id == job_id {
                &job_after
            } else {
                other.accountant.rdp()
            };
            for (s, r) in sum.iter_mut().zip(curve) {
                *s += r;
            }
        }
        let after = epsilon_from_rdp(&sum, self.budget.delta);
        let tenant_check = decide(
            || Scope::Tenant,
            &self.budget,
            self.rounds(),
            q,
            sigma,
            self.spent().epsilon,
            after,
        )?;
        Ok(LedgerCheck {
            job: job_check,
            tenant: tenant_check,
        })
    }

    /// Checks the round like [`check_round`](Self::check_round) and, if it fits both budgets,
    /// records it in the job's accountant.
    pub fn record_round(
        &mut self,
        job_id: &str,
        q: f64,
        sigma: f64,
    ) -> Result<LedgerCheck, PrivacyError> {
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| PrivacyError::UnknownJob(job_id.to_owned()))?;
        job.accountant.prepare(q, sigma)?;
        let check = self.check_round(job_id, q, sigma)?;
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| PrivacyError::UnknownJob(job_id.to_owned()))?;
        job.accountant.compose(q, sigma, 1)?;
        job.spent = spent_after(&check.job, job.accountant.steps());
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_refused_before_it_exceeds_its_budget() {
        let mut job = JobPrivacy::new("digits", Budget::new(1.0, 1e-5).unwrap());
        let mut recorded = 0;
        let err = loop {
            match job.record_round(0.1, 3.0) {
                Ok(check) => {
                    assert!(check.epsilon_after <= 1.0);
                    recorded += 1;
                }
                Err(e) => break e,
            }
        };
        assert!(recorded >= 1);
        assert!(job.spent().epsilon <= 1.0);
        assert_eq!(job.accountant().steps(), recorded);
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("round {} (sampling rate q = 0.1, noise multiplier sigma = 3) refused: it would raise the job \"digits\"'s epsilon from", recorded + 1)), "{msg}");
        assert!(
            msg.contains("at delta = 1e-5, over its budget of epsilon <= 1"),
            "{msg}"
        );
        // A check changes nothing, and rounds_left agrees with what happened.
        let fresh = JobPrivacy::new("digits", Budget::new(1.0, 1e-5).unwrap());
        assert_eq!(fresh.rounds_left(0.1, 3.0, 1_000_000).unwrap(), recorded);
        assert_eq!(fresh.rounds_left(0.1, 3.0, 1).unwrap(), 1);
    }

    #[test]
    fn a_restored_job_equals_the_one_that_recorded_its_rounds() {
        let budget = Budget::new(4.0, 1e-5).unwrap();
        let mut live = JobPrivacy::new("j", budget);
        for _ in 0..5 {
            live.record_round(0.1, 1.2).unwrap();
        }
        let mut acc = RdpAccountant::new();
        acc.compose(0.1, 1.2, 5).unwrap();
        let restored = JobPrivacy::restore("j", budget, acc);
        assert_eq!(restored, live);
        assert_eq!(
            restored.spent().epsilon.to_bits(),
            live.spent().epsilon.to_bits()
        );
        // Past spend over a (lowered) budget is kept, and refuses every further round.
        let mut big = RdpAccountant::new();
        big.compose(0.5, 0.5, 100).unwrap();
        let over = JobPrivacy::restore("k", Budget::new(1.0, 1e-5).unwrap(), big);
        assert!(over.spent().epsilon > 1.0);
        assert!(matches!(
            over.check_round(0.1, 1.2),
            Err(PrivacyError::BudgetExceeded { .. })
        ));
        let mut ledger = TenantLedger::new(Budget::new(100.0, 1e-5).unwrap());
        ledger.insert_job(restored.clone()).unwrap();
        assert_eq!(
            ledger.insert_job(restored),
            Err(PrivacyError::DuplicateJob("j".into()))
        );
        assert_eq!(ledger.rounds(), 5);
    }

    #[test]
    fn a_tenant_is_refused_when_jobs_together_exceed_its_budget() {
        let mut ledger = TenantLedger::new(Budget::new(2.0, 1e-5).unwrap());
        ledger
            .register_job("a", Budget::new(1.5, 1e-5).unwrap())
            .unwrap();
        ledger
            .register_job("b", Budget::new(1.5, 1e-5).unwrap())
            .unwrap();
        assert_eq!(
            ledger
                .register_job("a", Budget::new(1.0, 1e-5).unwrap())
                .unwrap_err(),
            PrivacyError::DuplicateJob("a".into())
        );
        while ledger.record_round("a", 0.1, 3.0).is_ok() {}
        assert!(ledger.job("a").unwrap().spent().epsilon <= 1.5);
        let err = loop {
            if let Err(e) = ledger.record_round("b", 0.1, 3.0) {
                break e;
            }
        };
        assert!(
            matches!(
                err,
                PrivacyError::BudgetExceeded {
                    scope: Scope::Tenant,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("tenant's epsilon"), "{err}");
        assert!(ledger.spent().epsilon <= 2.0);
        // The ledger's ε is at most the basic composition bound (sum of the jobs' ε).
        let sum: f64 = ledger.jobs().map(|j| j.spent().epsilon).sum();
        assert!(ledger.spent().epsilon <= sum);
        assert_eq!(
            ledger.check_round("c", 0.1, 1.0).unwrap_err(),
            PrivacyError::UnknownJob("c".into())
        );
        let json = serde_json::to_string(&ledger).unwrap();
        let back: TenantLedger = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ledger);
        assert_eq!(
            back.spent().epsilon.to_bits(),
            ledger.spent().epsilon.to_bits()
        );
    }

    #[test]
    fn bad_budgets_are_refused() {
        assert!(Budget::new(0.0, 1e-5).is_err());
        assert!(Budget::new(f64::INFINITY, 1e-5).is_err());
        assert!(Budget::new(1.0, 1.0).is_err());
        assert!(serde_json::from_str::<Budget>(r#"{"max_epsilon":"8","delta":"2"}"#).is_err());
        let b: Budget = serde_json::from_str(r#"{"max_epsilon":"8","delta":"1e-5"}"#).unwrap();
        assert_eq!(b, Budget::new(8.0, 1e-5).unwrap());
    }
}
