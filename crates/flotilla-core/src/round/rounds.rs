//! Round-based jobs: selection, a round's stages, closing a stage, commit.
//!
//! # Secure-aggregation rounds
//!
//! The machine runs a secure-aggregation round with the [`SecureAggregator`] it owns
//! ([`RoundMachine::set_secure_aggregator`]; `flotilla-secagg` implements it), so this crate stays
//! free of cryptography and drivers stay free of the stages:
//!
//! 1. When a round attempt's first stage opens, the aggregator [starts](SecureAggregator::start)
//!    afresh with the attempt's seed.
//! 2. A client's stage message ([`Event::StageMessage`]) is first checked by the machine (round,
//!    attempt, stage, cohort, duplicate, full stage, the form of the input; the sample count at the
//!    `MaskedInput` stage, where clients train), then validated and absorbed by the aggregator, and
//!    recorded only if both accept it. Checking the machine first matters: otherwise the aggregator
//!    could hold keys or a masked vector from a client the machine then refuses (an over-selected
//!    client after the stage filled up), and its roster or sum would cover other clients than the
//!    machine's survivors. The machine never sees a vector of a secure-aggregation round.
//! 3. When a stage closes with enough reports, the aggregator [closes](SecureAggregator::close_stage)
//!    it too and returns each survivor's payload for the next stage (roster, share bundle,
//!    unmasking request), which the machine holds for the driver ([`RoundMachine::stage_payload`])
//!    before the next stage's [`Action::Configure`]s.
//! 4. When the unmasking stage closes, the aggregator [unmasks](SecureAggregator::finish) the sum of
//!    the contributors' clipped deltas (the clients whose masked input was accepted, including those
//!    that dropped out during unmasking); the strategy divides it by their number (an *unweighted*
//!    mean) or, under distributed DP, by the fixed denominator `clients_per_round`, and takes its
//!    server step ([`Strategy::apply_secure_sum`]), and the round commits.
//!
//! Any aggregator failure (a neighbourhood below the secagg threshold t, an unusable sum) abandons
//! the attempt with its reason ([`AbandonCause::AggregationFailed`]).
//! The minimum report count ([`RoundPolicy::min_reports`]) applies to every stage up to the masked
//! input; the unmasking stage needs one answer, because whether the answers suffice is decided per
//! neighbourhood by the secagg threshold, which only the aggregator can check.
//! Only sum-based strategies can run under secure aggregation
//! ([`StrategySpec::check_secure_aggregation`]). The aggregator's state is not persisted:
//! [`RoundMachine::recover`] abandons an in-flight secure-aggregation attempt like any other.

use std::collections::BTreeSet;

use rand::seq::index;

use super::*;

/// Pools at least this large are pruned of expired check-ins (amortised: at every power of two).
const PRUNE_FROM: usize = 64;

/// A secure-aggregation round's training tally, carried from stage to stage: the contributors, the
/// loss-weighted sum, the samples and the federated evaluations of the masked-input stage.
#[derive(Default)]
struct Carry {
    contributors: BTreeSet<ClientId>,
    loss_weighted: f64,
    num_samples: u64,
    evals: BTreeMap<ClientId, ClientEval>,
}

/// Round-based jobs: selection, stages, closing, commit.
impl RoundMachine {
    fn live_pool(&self, now_ms: u64) -> Vec<ClientId> {
        let ttl = self.policy.checkin_ttl_ms;
        self.pool
            .iter()
            .filter(|(_, seen)| now_ms.saturating_sub(**seen) <= ttl)
            .map(|(c, _)| *c)
            .collect()
    }

    fn task_for(&self, client: ClientId, stage: u32) -> Task {
        Task {
            round: self.round,
            attempt: self.attempt,
            stage,
            kind: self.policy.stages[stage as usize],
            model_version: self.committed,
            seed: mix(
                mix(self.seed ^ self.round.rotate_left(32) ^ u64::from(self.attempt)) ^ client.0,
            ),
        }
    }

    pub(super) fn on_check_in(&mut self, now_ms: u64, client: ClientId, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Finished | Phase::Failed(_) => {
                self.retry_after(client, out);
                return;
            }
            Phase::Running(s)
                if s.cohort.contains(&client)
                    && !s.reported.contains(&client)
                    && !s.failed.contains(&client) =>
            {
                // A reconnecting member of the cohort gets the same task again: idempotent.
                let task = self.task_for(client, s.index);
                if let Phase::Running(s) = &mut self.phase {
                    s.dropped.remove(&client);
                }
                out.push(Action::Configure { client, task });
                return;
            }
            _ => {}
        }
        self.pool.insert(client, now_ms);
        self.prune_pool(now_ms);
        match self.phase {
            Phase::Waiting => {
                if self.live_pool(now_ms).len() >= self.policy.min_clients {
                    self.phase = Phase::SelectionPending;
                    out.push(Action::SetTimer {
                        timer: Timer::Selection {
                            round: self.round,
                            attempt: self.attempt,
                        },
                        at_ms: now_ms + self.policy.selection_window_ms,
                    });
                }
                self.retry_after(client, out);
            }
            _ => self.retry_after(client, out),
        }
    }

    pub(super) fn on_timer(&mut self, now_ms: u64, timer: Timer, out: &mut Vec<Action>) {
        match (timer, &self.phase) {
            (Timer::Selection { round, attempt }, Phase::SelectionPending)
                if round == self.round && attempt == self.attempt =>
            {
                self.select(now_ms, out)
            }
            (
                Timer::Deadline {
                    round,
                    attempt,
                    stage,
                },
                Phase::Running(s),
            ) if round == self.round && attempt == self.attempt && stage == s.index => {
                self.close_stage(now_ms, out)
            }
            // Timers of rounds, attempts or stages that are over are stale: ignore them.
            _ => {}
        }
    }

    fn select(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let live = self.live_pool(now_ms);
        if live.len() < self.policy.min_clients {
            self.phase = Phase::Waiting;
            return;
        }
        let k = self.policy.selection_size().min(live.len());
        let mut chosen: Vec<ClientId> = index::sample(&mut self.select_rng, live.len(), k)
            .into_iter()
            .map(|i| live[i])
            .collect();
        chosen.sort();
        for c in &chosen {
            self.pool.remove(c);
        }
        self.start_stage(now_ms, 0, chosen.into_iter().collect(), out);
    }

    fn start_stage(
        &mut self,
        now_ms: u64,
        index: u32,
        cohort: BTreeSet<ClientId>,
        out: &mut Vec<Action>,
    ) {
        self.start_stage_with(now_ms, index, cohort, Carry::default(), out);
    }

    /// Opens stage `index` for `cohort`, carrying the round's training tally so far (contributors,
    /// loss-weighted sum, samples, evaluations) from the previous stage of a secure-aggregation
    /// round.
    fn start_stage_with(
        &mut self,
        now_ms: u64,
        index: u32,
        cohort: BTreeSet<ClientId>,
        carry: Carry,
        out: &mut Vec<Action>,
    ) {
        let Carry {
            contributors,
            loss_weighted,
            num_samples,
            evals,
        } = carry;
        if index == 0 && self.policy.secure_aggregation() {
            let seed = self.attempt_seed();
            let (round, attempt) = (self.round, self.attempt);
            self.secure.payloads = None;
            match self.secure.aggregator.as_mut() {
                Some(agg) => agg.start(round, attempt, seed),
                None => {
                    let reason = "the job runs secure aggregation but its driver installed no \
                                  secure aggregator"
                        .to_string();
                    self.phase = Phase::Failed(reason.clone());
                    out.push(Action::JobFailed { reason });
                    return;
                }
            }
        }
        for &client in &cohort {
            out.push(Action::Configure {
                client,
                task: self.task_for(client, index),
            });
        }
        out.push(Action::SetTimer {
            timer: Timer::Deadline {
                round: self.round,
                attempt: self.attempt,
                stage: index,
            },
            at_ms: now_ms + self.policy.stage_deadline_ms,
        });
        self.phase = Phase::Running(Box::new(StageState {
            index,
            cohort,
            reported: BTreeSet::new(),
            dropped: BTreeSet::new(),
            failed: BTreeSet::new(),
            aggregate: self.strategy.begin_round_at(self.round, self.attempt),
            loss_weighted,
            num_samples,
            contributors,
            evals,
        }));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_report(
        &mut self,
        now_ms: u64,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        num_samples: u64,
        update: &[f32],
        metrics: ReportMetrics,
        out: &mut Vec<Action>,
    ) {
        let max_samples = self.policy.max_samples_per_report;
        let reject = |reason| Action::Reject { client, reason };
        if let Err(reason) = self.check_report(client, (round, attempt, stage), true) {
            out.push(reject(reason));
            return;
        }
        let Phase::Running(s) = &mut self.phase else {
            return;
        };
        if num_samples == 0 || num_samples > max_samples {
            out.push(reject(RejectReason::BadSampleCount {
                got: num_samples,
                max: max_samples,
            }));
            return;
        }
        if let Some(Err(e)) = metrics.eval.map(|e| e.validate()) {
            out.push(reject(RejectReason::BadEval(e)));
            return;
        }
        let loss = if metrics.train_loss.is_finite() {
            metrics.train_loss
        } else {
            f64::NAN
        };
        if let Err(e) = self.strategy.accept(
            &mut s.aggregate,
            &self.global,
            client.0,
            update,
            num_samples as f64,
        ) {
            out.push(reject(RejectReason::BadUpdate(e)));
            return;
        }
        s.reported.insert(client);
        s.dropped.remove(&client);
        s.num_samples += num_samples;
        s.loss_weighted += loss * num_samples as f64;
        if let Some(e) = metrics.eval {
            s.evals.insert(client, e);
        }
        out.push(Action::Accepted { client });
        self.maybe_close_early(now_ms, out);
    }

    /// The checks every report passes, plain or secure-aggregation: a stage is running, the report
    /// names the current round, attempt and stage, the stage takes this kind of report (`plain`:
    /// a `Report` with parameters), the client is in the cohort and has not reported, and the stage
    /// is not full.
    fn check_report(
        &self,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        plain: bool,
    ) -> Result<(), RejectReason> {
        let Phase::Running(s) = &self.phase else {
            return Err(RejectReason::NotAccepting(self.phase.name()));
        };
        if round != self.round || attempt != self.attempt {
            return Err(RejectReason::WrongRound {
                round: self.round,
                attempt: self.attempt,
                got_round: round,
                got_attempt: attempt,
            });
        }
        if stage != s.index {
            return Err(RejectReason::WrongStage {
                expected: s.index,
                got: stage,
            });
        }
        let kind = self.policy.stages[s.index as usize];
        if (kind == StageKind::Train) != plain {
            return Err(RejectReason::WrongStageKind {
                stage,
                kind: kind.name(),
            });
        }
        if !s.cohort.contains(&client) {
            return Err(RejectReason::NotSelected);
        }
        if s.reported.contains(&client) {
            return Err(RejectReason::Duplicate);
        }
        if s.reported.len() >= self.policy.clients_per_round {
            return Err(RejectReason::RoundFull);
        }
        Ok(())
    }

    /// The machine's checks of a stage message (before the aggregator sees it): those of every
    /// report, the form of the input for the stage, and the sample count and the federated
    /// evaluation at a training stage.
    fn check_stage_message(
        &self,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        input: &StageInput<'_>,
        (num_samples, metrics): (u64, &ReportMetrics),
    ) -> Result<(), RejectReason> {
        self.check_report(client, (round, attempt, stage), false)?;
        let kind = self.policy.stages[stage as usize];
        if matches!(input, StageInput::Masked(_)) != (kind == StageKind::MaskedInput) {
            return Err(RejectReason::WrongStageKind {
                stage,
                kind: kind.name(),
            });
        }
        let max = self.policy.max_samples_per_report;
        if kind.trains() && (num_samples == 0 || num_samples > max) {
            return Err(RejectReason::BadSampleCount {
                got: num_samples,
                max,
            });
        }
        if kind.trains()
            && let Some(Err(e)) = metrics.eval.map(|e| e.validate())
        {
            return Err(RejectReason::BadEval(e));
        }
        Ok(())
    }

    pub(super) fn on_stage_message(
        &mut self,
        now_ms: u64,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        input: StageInput<'_>,
        (num_samples, metrics): (u64, ReportMetrics),
        out: &mut Vec<Action>,
    ) {
        let checked = self
            .check_stage_message(
                client,
                (round, attempt, stage),
                &input,
                (num_samples, &metrics),
            )
            .and_then(|()| match self.secure.aggregator.as_mut() {
                Some(agg) => agg
                    .receive(client, stage, input)
                    .map_err(RejectReason::SecureAggregation),
                None => Err(RejectReason::SecureAggregation(StageRefusal::new(
                    "secagg_no_state",
                    RefusalKind::Precondition,
                    "no secure aggregator is installed",
                ))),
            });
        if let Err(reason) = checked {
            out.push(Action::Reject { client, reason });
            return;
        }
        let trains = self.policy.stages[stage as usize].trains();
        let Phase::Running(s) = &mut self.phase else {
            return;
        };
        if trains {
            let loss = if metrics.train_loss.is_finite() {
                metrics.train_loss
            } else {
                f64::NAN
            };
            s.num_samples += num_samples;
            s.loss_weighted += loss * num_samples as f64;
            if let Some(e) = metrics.eval {
                s.evals.insert(client, e);
            }
        }
        s.reported.insert(client);
        s.dropped.remove(&client);
        out.push(Action::Accepted { client });
        self.maybe_close_early(now_ms, out);
    }

    /// Closes a secure-aggregation stage that had enough reports: the aggregator closes it too and
    /// hands over the next stage's payloads, or, after the last stage, unmasks the sum, which
    /// commits.
    fn close_secure_stage(&mut self, now_ms: u64, s: StageState, out: &mut Vec<Action>) {
        let kind = self.policy.stages[s.index as usize];
        let contributors = if kind == StageKind::MaskedInput {
            s.reported.clone()
        } else {
            s.contributors
        };
        let last = (s.index as usize) + 1 == self.policy.stages.len();
        let reports = s.reported.len();
        let Some(agg) = self.secure.aggregator.as_mut() else {
            // Unreachable: the first stage does not open without an aggregator.
            let why = "secure aggregation failed: no secure aggregator is installed";
            let needed = self.policy.min_reports();
            return self.abandon_attempt(
                now_ms,
                reports,
                needed,
                why,
                AbandonCause::AggregationFailed,
                out,
            );
        };
        if !last {
            let survivors: Vec<ClientId> = s.reported.iter().copied().collect();
            match agg.close_stage(s.index, &survivors) {
                Ok(payloads) => {
                    let next = s.index + 1;
                    self.secure.payloads = Some(((self.round, self.attempt, next), payloads));
                    let carry = Carry {
                        contributors,
                        loss_weighted: s.loss_weighted,
                        num_samples: s.num_samples,
                        evals: s.evals,
                    };
                    self.start_stage_with(now_ms, next, s.reported, carry, out);
                }
                Err(reason) => self.secure_failed(now_ms, reports, &reason, out),
            }
            return;
        }
        self.secure.payloads = None;
        let ids: Vec<ClientId> = contributors.iter().copied().collect();
        let n = ids.len();
        let result = agg.finish(&ids).and_then(|sum| {
            if sum.len() != self.layout.len() {
                return Err(format!(
                    "the unmasked sum has {} values, the layout has {}",
                    sum.len(),
                    self.layout.len()
                ));
            }
            // The strategy divides: by the contributors (unweighted mean), or under distributed DP
            // by the fixed denominator `clients_per_round`.
            self.strategy
                .apply_secure_sum(&self.global, &sum, n)
                .map_err(|e| format!("it produced an unusable mean: {e}"))
        });
        // Every contributor's masked input is in the sum, so every evaluation counts.
        let feval = FederatedEval::over(ids.iter().filter_map(|c| s.evals.get(c)));
        match result {
            Ok(r) => {
                let tally = (s.num_samples, s.loss_weighted);
                self.commit(now_ms, r, ids, tally, feval, out)
            }
            Err(reason) => self.secure_failed(now_ms, n, &reason, out),
        }
    }

    /// Abandons the attempt because the aggregator could not go on.
    fn secure_failed(&mut self, now_ms: u64, reports: usize, reason: &str, out: &mut Vec<Action>) {
        self.secure.payloads = None;
        let why = format!("secure aggregation failed: {reason}");
        let needed = self.policy.min_reports();
        self.abandon_attempt(
            now_ms,
            reports,
            needed,
            &why,
            AbandonCause::AggregationFailed,
            out,
        );
    }

    pub(super) fn on_lost(&mut self, now_ms: u64, client: ClientId, out: &mut Vec<Action>) {
        self.pool.remove(&client);
        if let Phase::Running(s) = &mut self.phase
            && s.cohort.contains(&client)
            && !s.reported.contains(&client)
        {
            s.dropped.insert(client);
            self.maybe_close_early(now_ms, out);
        }
    }

    /// Closes the stage before its deadline when waiting cannot change the outcome: all needed reports
    /// are in, or every selected client has either reported or dropped.
    fn maybe_close_early(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if let Phase::Running(s) = &self.phase {
            let pending = s.cohort.len() - s.reported.len() - s.dropped.len();
            if s.reported.len() >= self.policy.clients_per_round || pending == 0 {
                self.close_stage(now_ms, out);
            }
        }
    }

    fn close_stage(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Phase::Running(s) = std::mem::replace(&mut self.phase, Phase::Waiting) else {
            return;
        };
        let needed = self.policy.min_reports_at(s.index);
        let kind = self.policy.stages[s.index as usize];
        if s.reported.len() < needed {
            let why = format!(
                "fewer than {} of {} clients reported at stage {} ({})",
                needed,
                self.policy.clients_per_round,
                s.index,
                kind.name()
            );
            self.abandon_attempt(
                now_ms,
                s.reported.len(),
                needed,
                &why,
                AbandonCause::TooFewReports,
                out,
            );
            return;
        }
        if kind != StageKind::Train {
            return self.close_secure_stage(now_ms, *s, out);
        }
        if (s.index as usize) + 1 < self.policy.stages.len() {
            // Survivors of this stage are the cohort of the next one.
            self.start_stage(now_ms, s.index + 1, s.reported.clone(), out);
            return;
        }
        let result = match self.strategy.finish(&s.aggregate, &self.global) {
            Ok(r) => r,
            Err(AggregateError::Empty) => {
                // Every report was quarantined: nothing usable, so the attempt is abandoned like one
                // that received too few reports.
                self.abandon_attempt(
                    now_ms,
                    0,
                    needed,
                    "every report was quarantined",
                    AbandonCause::AllQuarantined,
                    out,
                );
                return;
            }
            Err(e) => {
                let reason = format!("round {} aggregation failed: {e}", self.round);
                self.phase = Phase::Failed(reason.clone());
                out.push(Action::JobFailed { reason });
                return;
            }
        };
        let quarantined: BTreeSet<u64> = result.quarantined.iter().map(|q| q.client).collect();
        let participants: Vec<ClientId> = s
            .reported
            .iter()
            .copied()
            .filter(|c| !quarantined.contains(&c.0))
            .collect();
        // Over the aggregate's reports only: a quarantined client's evaluation is as suspect as
        // its update.
        let feval = FederatedEval::over(participants.iter().filter_map(|c| s.evals.get(c)));
        let tally = (s.num_samples, s.loss_weighted);
        self.commit(now_ms, result, participants, tally, feval, out);
    }

    /// Installs the new global model and moves to the next round (or finishes the job).
    fn commit(
        &mut self,
        now_ms: u64,
        result: RoundResult,
        participants: Vec<ClientId>,
        (num_samples, loss_weighted): (u64, f64),
        federated_eval: Option<FederatedEval>,
        out: &mut Vec<Action>,
    ) {
        self.global = result.global;
        self.committed += 1;
        let info = CommitInfo {
            round: self.round,
            attempt: self.attempt,
            model_version: self.committed,
            participants,
            num_samples,
            train_loss: loss_weighted / num_samples.max(1) as f64,
            quarantined: result.quarantined,
            dp: result.dp,
            staleness: Vec::new(),
            federated_eval,
        };
        out.push(Action::Commit(info));
        if self.committed >= self.policy.rounds {
            self.phase = Phase::Finished;
            out.push(Action::JobFinished);
            return;
        }
        self.round += 1;
        self.attempt = 1;
        self.failed_attempts = 0;
        self.after_round(now_ms, out);
    }

    /// Ends the current attempt without a commit; the job fails once `max_attempts` attempts of this
    /// round have been abandoned (`why` completes "round R failed N times: …").
    fn abandon_attempt(
        &mut self,
        now_ms: u64,
        reports: usize,
        needed: usize,
        why: &str,
        cause: AbandonCause,
        out: &mut Vec<Action>,
    ) {
        // Payloads of an attempt that is over are never served again: drop them now.
        self.secure.payloads = None;
        out.push(Action::RoundAbandoned {
            round: self.round,
            attempt: self.attempt,
            reports,
            needed,
            reason: why.to_string(),
            cause,
        });
        self.failed_attempts += 1;
        if self.failed_attempts >= self.policy.max_attempts {
            let reason = format!(
                "round {} failed {} times: {why}",
                self.round, self.failed_attempts
            );
            self.phase = Phase::Failed(reason.clone());
            out.push(Action::JobFailed { reason });
            return;
        }
        self.attempt += 1;
        self.after_round(now_ms, out);
    }

    fn after_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.phase = Phase::Waiting;
        if self.live_pool(now_ms).len() >= self.policy.min_clients {
            self.phase = Phase::SelectionPending;
            out.push(Action::SetTimer {
                timer: Timer::Selection {
                    round: self.round,
                    attempt: self.attempt,
                },
                at_ms: now_ms + self.policy.selection_window_ms,
            });
        }
    }

    /// Forgets check-ins older than `checkin_ttl_ms` once the pool is large, so its memory (and the
    /// snapshot) is bounded by the clients seen within the TTL. Changes no decision: expired
    /// check-ins are never counted or selected.
    pub(super) fn prune_pool(&mut self, now_ms: u64) {
        let n = self.pool.len();
        if n >= PRUNE_FROM && n.is_power_of_two() {
            let ttl = self.policy.checkin_ttl_ms;
            self.pool
                .retain(|_, seen| now_ms.saturating_sub(*seen) <= ttl);
        }
    }

    pub(super) fn on_task_failed(
        &mut self,
        now_ms: u64,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        out: &mut Vec<Action>,
    ) {
        if let Err(reason) = self.check_task_failure(client, round, attempt, stage) {
            out.push(Action::Reject { client, reason });
            return;
        }
        if let Phase::Running(s) = &mut self.phase {
            s.failed.insert(client);
            s.dropped.insert(client);
        }
        out.push(Action::Accepted { client });
        self.maybe_close_early(now_ms, out);
    }
}
