//! # FedBuff: buffered asynchronous aggregation
//!
//! With a FedBuff strategy ([`FedBuffSpec`]) the machine runs no rounds. A checking-in client gets a
//! task at once while fewer than `concurrency` are in flight (otherwise `RetryAfter`); the task's
//! `model_version` is its base model and `round` is that version + 1. A report must answer the
//! client's outstanding task ([`RejectReason::NoTask`], or [`RejectReason::Duplicate`] for its last
//! accepted one) and be at most `max_staleness` versions behind ([`RejectReason::TooStale`]), besides
//! the usual checks; a refused report changes nothing. An accepted report adds `s(τ)·(params − base)`
//! to an `f64` buffer; every `buffer_size` accepted reports the machine hands the mean
//! `Σ s(τᵢ)·Δᵢ / Σ s(τᵢ)` to the strategy's server optimizer (SGD by default:
//! `global += server_lr × mean`; momentum or an adaptive optimizer with `server_optimizer`) and emits
//! [`Action::Commit`] with each update's staleness in [`CommitInfo::staleness`]. When a step moves
//! the global model more than `max_staleness` versions past a task's base, that task can never be
//! accepted: it is dropped at once, freeing its concurrency slot, and its late report is still named
//! [`RejectReason::TooStale`]. An old model is kept only while an in-flight task started from it and
//! it is within `max_staleness` (O((max_staleness + 1) × model) memory at worst). A `Deadline` timer
//! drops every task older than the stage deadline. [`RoundMachine::recover`] abandons in-flight
//! tasks and the partly filled buffer (neither the buffer sum nor old models are in a snapshot); the
//! optimizer's state is in the snapshot. A report's federated evaluation is of its task's base
//! model; a step's [`CommitInfo::federated_eval`] averages those of its buffered updates, whose
//! bases may differ by up to `max_staleness` versions.

use super::*;

/// FedBuff: buffered asynchronous aggregation (see [`FedBuffSpec`] and the module documentation).
impl RoundMachine {
    /// Whether a report from `client` naming `round` and `attempt` could be accepted now, judged
    /// before its payload is read (changes nothing). Round-based jobs: the round and attempt must be
    /// the current ones. FedBuff: they must name the client's outstanding task, whose base model is
    /// at most `max_staleness` versions old.
    pub fn precheck_report(
        &self,
        client: ClientId,
        round: u64,
        attempt: u32,
    ) -> Result<(), RejectReason> {
        let Some(fb) = self.fedbuff_spec() else {
            if (round, attempt) != (self.round, self.attempt) {
                return Err(RejectReason::WrongRound {
                    round: self.round,
                    attempt: self.attempt,
                    got_round: round,
                    got_attempt: attempt,
                });
            }
            return Ok(());
        };
        if matches!(self.phase, Phase::Finished | Phase::Failed(_)) {
            return Err(RejectReason::NotAccepting(self.phase.name()));
        }
        self.precheck_async(fb, client, round, attempt).map(|_| ())
    }

    /// The payload-free checks of a FedBuff report; returns the task's base version and the
    /// report's staleness.
    fn precheck_async(
        &self,
        fb: FedBuffSpec,
        client: ClientId,
        round: u64,
        attempt: u32,
    ) -> Result<(u64, u64), RejectReason> {
        let st = &self.fedbuff;
        let Some(t) = st.in_flight.get(&client) else {
            if st.done.get(&client) == Some(&(round, attempt)) {
                return Err(RejectReason::Duplicate);
            }
            // A task dropped when the global model moved past `max_staleness`: say so, rather than
            // `NoTask`, so the client knows to fetch fresh work.
            if let Some(&(r, a, base)) = st.expired.get(&client)
                && (r, a) == (round, attempt)
            {
                let staleness = self.committed.saturating_sub(base);
                return Err(RejectReason::TooStale {
                    staleness,
                    base,
                    max: fb.max_staleness,
                });
            }
            return Err(RejectReason::NoTask);
        };
        let t = &t.task;
        if (round, attempt) != (t.round, t.attempt) {
            return Err(RejectReason::WrongRound {
                round: t.round,
                attempt: t.attempt,
                got_round: round,
                got_attempt: attempt,
            });
        }
        let staleness = self.committed.saturating_sub(t.model_version);
        if staleness > fb.max_staleness
            || (t.model_version != self.committed && !st.bases.contains_key(&t.model_version))
        {
            return Err(RejectReason::TooStale {
                staleness,
                base: t.model_version,
                max: fb.max_staleness,
            });
        }
        Ok((t.model_version, staleness))
    }

    /// FedBuff: updates accepted into the buffer of the next server step (0 for round-based jobs).
    pub fn buffered_updates(&self) -> usize {
        self.fedbuff.contributors.len()
    }

    pub(super) fn handle_async(
        &mut self,
        fb: FedBuffSpec,
        now_ms: u64,
        event: Event<'_>,
        out: &mut Vec<Action>,
    ) {
        if matches!(self.phase, Phase::Finished | Phase::Failed(_)) {
            match event {
                Event::CheckIn { client } => self.retry_after(client, out),
                Event::Report { client, .. } | Event::StageMessage { client, .. } => {
                    out.push(Action::Reject {
                        client,
                        reason: RejectReason::NotAccepting(self.phase.name()),
                    })
                }
                _ => {}
            }
            return;
        }
        match event {
            Event::CheckIn { client } => self.async_check_in(fb, now_ms, client, out),
            Event::Report {
                client,
                round,
                attempt,
                stage,
                num_samples,
                update,
                metrics,
            } => {
                match self.check_async_report(
                    fb,
                    client,
                    (round, attempt, stage),
                    (num_samples, &metrics),
                    update,
                ) {
                    Err(reason) => out.push(Action::Reject { client, reason }),
                    Ok((base, staleness)) => self.accept_async(
                        fb,
                        client,
                        base,
                        staleness,
                        num_samples,
                        update,
                        metrics,
                        out,
                    ),
                }
            }
            Event::StageMessage { client, stage, .. } => out.push(Action::Reject {
                client,
                reason: RejectReason::WrongStageKind {
                    stage,
                    kind: StageKind::Train.name(),
                },
            }),
            Event::TaskFailed {
                client,
                round,
                attempt,
                stage,
            } => self.async_task_failed(fb, client, (round, attempt, stage), out),
            Event::ClientLost { client } => {
                if self.fedbuff.in_flight.remove(&client).is_some() {
                    self.prune_bases(fb);
                }
            }
            Event::TimerFired(Timer::Deadline { attempt, .. }) if attempt == self.attempt => {
                // Drop every task older than the stage deadline: its slot is free again.
                let deadline = self.policy.stage_deadline_ms;
                let before = self.fedbuff.in_flight.len();
                self.fedbuff
                    .in_flight
                    .retain(|_, t| now_ms < t.started_ms.saturating_add(deadline));
                if self.fedbuff.in_flight.len() != before {
                    self.prune_bases(fb);
                }
            }
            Event::TimerFired(_) => {}
        }
    }

    fn async_check_in(
        &mut self,
        fb: FedBuffSpec,
        now_ms: u64,
        client: ClientId,
        out: &mut Vec<Action>,
    ) {
        if let Some(t) = self.fedbuff.in_flight.get(&client) {
            if self.committed - t.task.model_version <= fb.max_staleness {
                // A reconnecting client gets the same task again: idempotent.
                out.push(Action::Configure {
                    client,
                    task: t.task.clone(),
                });
                return;
            }
            // Its task can no longer be accepted: replace it.
            self.fedbuff.in_flight.remove(&client);
            self.prune_bases(fb);
        }
        if self.fedbuff.in_flight.len() >= fb.concurrency {
            self.retry_after(client, out);
            return;
        }
        // A new task replaces whatever the client's last one was. FedBuff names a task by its base
        // version and attempt only, so a client that reported may get a task with the same name:
        // forget the answered one, or a late report for the new task (dropped at its deadline or
        // when it became too stale) would be mistaken for a duplicate of the old one.
        self.fedbuff.done.remove(&client);
        self.fedbuff.expired.remove(&client);
        let issued = self.fedbuff.issued;
        self.fedbuff.issued += 1;
        let task = Task {
            round: self.committed + 1,
            attempt: self.attempt,
            stage: 0,
            kind: StageKind::Train,
            model_version: self.committed,
            seed: mix(mix(self.seed ^ 0xFED_B0FF ^ issued.rotate_left(29)) ^ client.0),
        };
        self.fedbuff.in_flight.insert(
            client,
            AsyncTask {
                task: task.clone(),
                started_ms: now_ms,
            },
        );
        out.push(Action::Configure {
            client,
            task: task.clone(),
        });
        out.push(Action::SetTimer {
            timer: Timer::Deadline {
                round: task.round,
                attempt: task.attempt,
                stage: 0,
            },
            at_ms: now_ms.saturating_add(self.policy.stage_deadline_ms),
        });
    }

    /// Every check of a FedBuff report, changing nothing; returns the task's base version and the
    /// report's staleness.
    fn check_async_report(
        &self,
        fb: FedBuffSpec,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        (num_samples, metrics): (u64, &ReportMetrics),
        update: &[f32],
    ) -> Result<(u64, u64), RejectReason> {
        // First exactly what `precheck_report` checks, so a driver's pre-check and the machine
        // always name the same reason.
        let (base, staleness) = self.precheck_async(fb, client, round, attempt)?;
        if stage != 0 {
            return Err(RejectReason::WrongStage {
                expected: 0,
                got: stage,
            });
        }
        let max = self.policy.max_samples_per_report;
        if num_samples == 0 || num_samples > max {
            return Err(RejectReason::BadSampleCount {
                got: num_samples,
                max,
            });
        }
        if let Some(Err(e)) = metrics.eval.map(|e| e.validate()) {
            return Err(RejectReason::BadEval(e));
        }
        if update.len() != self.layout.len() {
            return Err(RejectReason::BadUpdate(AggregateError::Length {
                expected: self.layout.len(),
                actual: update.len(),
            }));
        }
        if let Some(index) = update.iter().position(|v| !v.is_finite()) {
            return Err(RejectReason::BadUpdate(AggregateError::NonFinite { index }));
        }
        Ok((base, staleness))
    }

    #[allow(clippy::too_many_arguments)]
    fn accept_async(
        &mut self,
        fb: FedBuffSpec,
        client: ClientId,
        base_version: u64,
        staleness: u64,
        num_samples: u64,
        update: &[f32],
        metrics: ReportMetrics,
        out: &mut Vec<Action>,
    ) {
        let w = fb.staleness_weight(staleness);
        let st = &mut self.fedbuff;
        let base: &[f32] = if base_version == self.committed {
            &self.global
        } else {
            match st.bases.get(&base_version) {
                Some(b) => b,
                None => return, // excluded by check_async_report
            }
        };
        if st.sum.len() != update.len() {
            st.sum = vec![0.0; update.len()];
        }
        for ((acc, &p), &b) in st.sum.iter_mut().zip(update).zip(base) {
            *acc += w * (f64::from(p) - f64::from(b));
        }
        st.weight += w;
        if let Some(t) = st.in_flight.remove(&client) {
            st.done.insert(client, (t.task.round, t.task.attempt));
        }
        st.contributors.push(client);
        st.staleness.push(staleness);
        st.num_samples += num_samples;
        let loss = if metrics.train_loss.is_finite() {
            metrics.train_loss
        } else {
            f64::NAN
        };
        st.loss_weighted += loss * num_samples as f64;
        if let Some(e) = metrics.eval {
            st.evals.push(e);
        }
        out.push(Action::Accepted { client });
        if st.contributors.len() >= fb.buffer_size {
            self.async_commit(fb, out);
        } else {
            self.prune_bases(fb);
        }
    }

    /// The server step: the strategy's server optimizer applied to the mean `Σ s(τᵢ)·Δᵢ / Σ s(τᵢ)`
    /// (SGD: `global += server_lr × mean`), then a new version.
    fn async_commit(&mut self, fb: FedBuffSpec, out: &mut Vec<Action>) {
        let st = std::mem::take(&mut self.fedbuff);
        let mean: Vec<f32> = st.sum.iter().map(|s| (s / st.weight) as f32).collect();
        let result = match self.strategy.apply_mean_delta(&self.global, &mean) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("server step {} failed: {e}", self.committed + 1);
                self.phase = Phase::Failed(reason.clone());
                out.push(Action::JobFailed { reason });
                return;
            }
        };
        let old = std::mem::replace(&mut self.global, result.global);
        let old_version = self.committed;
        self.committed += 1;
        self.round = self.committed + 1;
        self.fedbuff = AsyncState {
            issued: st.issued,
            in_flight: st.in_flight,
            done: st.done,
            expired: st.expired,
            bases: st.bases,
            ..AsyncState::default()
        };
        // Tasks whose base is now more than `max_staleness` versions old can no longer produce an
        // acceptable report: free their slots at once (their late reports are refused `TooStale`).
        let oldest = self.committed.saturating_sub(fb.max_staleness);
        let expired: Vec<ClientId> = self
            .fedbuff
            .in_flight
            .iter()
            .filter(|(_, t)| t.task.model_version < oldest)
            .map(|(c, _)| *c)
            .collect();
        for client in expired {
            if let Some(t) = self.fedbuff.in_flight.remove(&client) {
                self.fedbuff
                    .expired
                    .insert(client, (t.task.round, t.task.attempt, t.task.model_version));
            }
        }
        if self
            .fedbuff
            .in_flight
            .values()
            .any(|t| t.task.model_version == old_version)
        {
            self.fedbuff.bases.insert(old_version, old);
        }
        self.prune_bases(fb);
        let mut participants = st.contributors;
        participants.sort();
        out.push(Action::Commit(CommitInfo {
            round: self.committed,
            attempt: self.attempt,
            model_version: self.committed,
            participants,
            num_samples: st.num_samples,
            train_loss: st.loss_weighted / st.num_samples.max(1) as f64,
            quarantined: Vec::new(),
            // `[privacy]` is refused with FedBuff (`StrategySpec::with_privacy`).
            dp: None,
            staleness: st.staleness,
            federated_eval: FederatedEval::over(&st.evals),
        }));
        if self.committed >= self.policy.rounds {
            self.phase = Phase::Finished;
            self.fedbuff.in_flight.clear();
            self.fedbuff.bases.clear();
            out.push(Action::JobFinished);
        }
    }

    /// Keeps only the old models that an outstanding task started from and that are still within
    /// `max_staleness` versions.
    fn prune_bases(&mut self, fb: FedBuffSpec) {
        let oldest = self.committed.saturating_sub(fb.max_staleness);
        let st = &mut self.fedbuff;
        let in_flight = &st.in_flight;
        st.bases
            .retain(|v, _| *v >= oldest && in_flight.values().any(|t| t.task.model_version == *v));
    }

    /// FedBuff: the client's outstanding task is dropped, freeing its concurrency slot.
    pub(super) fn async_task_failed(
        &mut self,
        fb: FedBuffSpec,
        client: ClientId,
        (round, attempt, stage): (u64, u32, u32),
        out: &mut Vec<Action>,
    ) {
        if let Err(reason) = self.check_task_failure(client, round, attempt, stage) {
            out.push(Action::Reject { client, reason });
            return;
        }
        self.fedbuff.in_flight.remove(&client);
        self.prune_bases(fb);
        out.push(Action::Accepted { client });
    }
}
