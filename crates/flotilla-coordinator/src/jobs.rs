//! Running jobs: one [`RoundMachine`](flotilla_core::round::RoundMachine) per job, driven by check-ins, uploads and timers, with every
//! commit made durable (model blob, then `commit_round` with the machine snapshot) before any other
//! action of the machine is carried out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::round::{Action, Activity, ClientId, CommitInfo, Event, Timer};
use flotilla_store::{JobId, JobState, RoundCommit, StoreError};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::retry::{STORE_ATTEMPTS, retryable};
use crate::state::{JobInner, JobRuntime, ModelVersion, Outcome, Shared, TimerEntry};

impl Shared {
    /// Feeds `event` to the job's machine at the current time and carries out the actions.
    /// `me` is the client that caused the event (its task / retry / verdict is returned).
    pub async fn drive(
        &self,
        job: &JobRuntime,
        inner: &mut JobInner,
        event: Event<'_>,
        me: Option<ClientId>,
    ) -> Outcome {
        let mut out = Outcome::default();
        self.drive_one(job, inner, event, me, &mut out).await;
        let ended = inner.ended.is_some();
        inner.trace.observe(job.id.0, &inner.machine, ended);
        let (m, now) = (&inner.machine, now_ms());
        let waiting = m.activity() == flotilla_core::round::Activity::WaitingForClients
            && inner.halted.is_none();
        let (available, needed) = (m.available_clients(now), m.policy().min_clients);
        inner
            .notes
            .observe_wait(job.id.0, now, waiting, available, needed);
        out
    }

    async fn drive_one(
        &self,
        job: &JobRuntime,
        inner: &mut JobInner,
        event: Event<'_>,
        me: Option<ClientId>,
        out: &mut Outcome,
    ) {
        if let Some(state) = inner.ended {
            out.ended = Some(state);
            return;
        }
        if let Some(h) = &inner.halted {
            out.persist_failed = Some(h.clone());
            return;
        }
        let now = now_ms();
        let at_deadline = matches!(event, Event::TimerFired(Timer::Deadline { .. }));
        let before = inner.machine.activity();
        let actions = inner.machine.handle(now, event);
        if job.secagg.is_some() {
            self.metrics
                .secagg_step(job.id.0, before, inner.machine.activity());
        }
        let job_fails = actions
            .iter()
            .any(|a| matches!(a, Action::JobFailed { .. }));
        // The snapshot is taken right after the event, before anything is acted upon: it is what a
        // restart resumes from if the commit below is the last durable thing.
        let snapshot = if actions.iter().any(|a| matches!(a, Action::Commit(_))) {
            match serde_json::to_string(&inner.machine) {
                Ok(s) => Some(s),
                Err(e) => {
                    let msg = format!("could not serialise the round machine: {e}");
                    tracing::error!(job = job.id.0, "{msg}");
                    inner.halted = Some(msg.clone());
                    out.persist_failed = Some(msg);
                    return;
                }
            }
        } else {
            None
        };
        for action in actions {
            match action {
                Action::Configure { client, task } => {
                    // FedBuff names a task by its base version (round = version + 1) and attempt, so
                    // a client that reported and is handed another task on the same version gets the
                    // same upload key: forget the earlier update's SHA-256, or the new, different
                    // update would be refused as conflicting. (Round-based jobs never configure a
                    // client again for a stage it was accepted in, so this removes nothing there.)
                    inner
                        .accepted
                        .remove(&(task.round, task.attempt, task.stage, client));
                    if Some(client) == me {
                        out.task = Some(task);
                    }
                }
                Action::RetryAfter { client, after_ms } => {
                    if Some(client) == me {
                        out.retry_after_ms = Some(after_ms);
                    }
                }
                Action::Accepted { client } => {
                    if Some(client) == me {
                        out.accepted = true;
                    }
                }
                Action::Reject { client, reason } => {
                    if Some(client) == me {
                        out.reject = Some(reason);
                    }
                }
                Action::SetTimer { timer, at_ms } => {
                    if let Timer::Deadline { .. } = timer {
                        inner.deadline_ms = Some(at_ms);
                    }
                    let _ = self.timers.send(TimerEntry {
                        at_ms,
                        job: job.id.0,
                        timer,
                    });
                }
                Action::Commit(info) => {
                    let snap = snapshot.as_deref().unwrap_or("null");
                    if let Err(msg) = self.persist_commit(job, inner, &info, snap).await {
                        // Cancelled (elsewhere than through this process's job lock) while the
                        // round was being committed: a normal end, not a storage fault.
                        if let Some(state) = self.ended_in_store(job.id).await {
                            tracing::info!(
                                job = job.id.0,
                                round = info.round,
                                state = state.as_str(),
                                "job ended while its round was being committed; round dropped"
                            );
                            self.end_job(job, inner, state);
                            out.ended = Some(state);
                            return;
                        }
                        let cause = format!("could not persist round {} ({msg})", info.round);
                        self.halt(job, inner, cause, out);
                        return;
                    }
                    self.metrics.round_committed(
                        job.id.0,
                        info.round,
                        info.participants.len(),
                        now_ms() as f64 / 1000.0,
                    );
                    tracing::info!(
                        job = job.id.0,
                        round = info.round,
                        participants = info.participants.len(),
                        "round committed"
                    );
                    // Without a server-side evaluation the federated one is what there is.
                    if let (None, Some(f)) = (&job.evaluations, &info.federated_eval) {
                        let finite = |x: f64| x.is_finite().then_some(x);
                        self.metrics.model_eval(
                            job.id.0,
                            f.accuracy.and_then(finite),
                            finite(f.loss),
                        );
                    }
                    // The round is durable: its model is evaluated on a task of its own, which
                    // neither holds this job's lock nor delays the next round.
                    if let Some(ev) = &job.evaluations {
                        ev.submit(
                            &self.store,
                            &self.metrics,
                            job.id,
                            info.round,
                            inner.current.params.clone(),
                        );
                    }
                    // `[evaluation] federated_every`: the clients evaluate the committed model. Only
                    // booked here; tasks go out at check-ins, never blocking a round.
                    self.schedule_job_fed_eval(job, info.round);
                    // The next round is admitted (and charged) by the privacy budgets before any
                    // client is configured for it; a refusal ends the job here.
                    if let Err(why) = self
                        .privacy
                        .admit_next(&self.store, job.id, &job.spec, info.round)
                        .await
                    {
                        self.stop_for_privacy(job, inner, why).await;
                        out.task = None;
                        out.ended = Some(JobState::Failed);
                        return;
                    }
                }
                Action::RoundAbandoned {
                    round,
                    attempt,
                    reports,
                    needed,
                    reason,
                    cause,
                } => {
                    self.metrics
                        .round_abandoned(job.id.0, crate::metrics::abandon_reason(cause));
                    if let (Some(_), Activity::Stage { kind, .. }) = (&job.secagg, before) {
                        let wanted = inner.machine.policy().clients_per_round;
                        self.metrics
                            .secagg_dropouts(kind, wanted.saturating_sub(reports));
                    }
                    let wanted = inner.machine.policy().clients_per_round;
                    let abandoned = crate::reasons::Abandoned {
                        round,
                        attempt,
                        reports,
                        needed,
                        wanted,
                        cause,
                        machine_reason: &reason,
                        at_deadline,
                    };
                    let mut text = abandoned.text();
                    if let Some(errors) = inner.notes.failures.summary(round, Some(attempt)) {
                        text = format!("{text}; {errors}");
                    }
                    if !job_fails {
                        text = format!("{text}; retrying as attempt {}", attempt + 1);
                    }
                    // Debug formatting: the text may quote what clients reported.
                    tracing::warn!(job = job.id.0, round, attempt, reports, needed, reason = ?text, "round attempt abandoned");
                    inner.notes.note_abandoned(crate::reasons::AbandonedNote {
                        round,
                        attempt,
                        text: text.clone(),
                        at_ms: now,
                    });
                    inner.notes.retry = Some(crate::reasons::Retry { round, text });
                    if !job_fails {
                        // The next attempt is recorded before any of its tasks can be handed out
                        // (its selection timer needs this job's lock, held here).
                        let (round, attempt) = inner.machine.current_round();
                        if let Err(msg) = self.record_attempt(job.id, round, attempt).await {
                            let cause = format!(
                                "could not record attempt {attempt} of round {round} ({msg})"
                            );
                            self.halt(job, inner, cause, out);
                            return;
                        }
                    }
                }
                Action::JobFinished => {
                    tracing::info!(job = job.id.0, "job completed");
                    // `commit_round` of the last round marked it completed in the store.
                    self.end_job(job, inner, JobState::Completed);
                    out.ended = Some(JobState::Completed);
                }
                Action::JobFailed { reason } => {
                    // What clients reported is usually the cause: it comes first.
                    let (round, _) = inner.machine.current_round();
                    let reason = match inner.notes.failures.summary(round, None) {
                        Some(errors) => format!("{errors}; {reason}"),
                        None => reason,
                    };
                    tracing::warn!(job = job.id.0, reason = ?reason, "job failed");
                    if let Err(e) = self
                        .store
                        .set_job_state_with_reason(
                            job.id,
                            JobState::Failed,
                            Some(&reason),
                            "system",
                        )
                        .await
                    {
                        tracing::error!(job = job.id.0, error = %e, "could not mark the job failed");
                    }
                    self.end_job(job, inner, JobState::Failed);
                    out.ended = Some(JobState::Failed);
                }
            }
        }
    }

    /// The job's state in the store if it is terminal (bounded wait; `None` otherwise or on error).
    async fn ended_in_store(&self, id: JobId) -> Option<JobState> {
        let lookup = tokio::time::timeout(Duration::from_secs(5), self.store.get_job(id)).await;
        lookup
            .ok()?
            .ok()
            .map(|j| j.state)
            .filter(|s| s.is_terminal())
    }

    /// Halts a job whose machine got ahead of the store: one ERROR line now; the heal task
    /// resumes it from its last durable commit (one INFO line then).
    fn halt(&self, job: &JobRuntime, inner: &mut JobInner, cause: String, out: &mut Outcome) {
        tracing::error!(
            job = job.id.0,
            "{cause}; job halted, retrying every {} s until the store accepts writes",
            crate::retry::HEAL_INTERVAL.as_secs()
        );
        Metrics::inc(&self.metrics.jobs_halted);
        inner.halted = Some(cause.clone());
        out.persist_failed = Some(cause);
    }

    /// Records that tasks of `(round, attempt)` may be handed out (see
    /// [`flotilla_store::Store::record_issued_attempt`]), retrying infrastructure errors.
    pub(crate) async fn record_attempt(
        &self,
        job: JobId,
        round: u64,
        attempt: u32,
    ) -> Result<(), String> {
        for n in 1..=STORE_ATTEMPTS {
            let call = self.store.record_issued_attempt(job, round, attempt);
            match self.metrics.store_op("record_attempt", call).await {
                Ok(()) => return Ok(()),
                Err(e) if retryable(&e) && n < STORE_ATTEMPTS => {
                    tracing::warn!(job = job.0, error = %e, "recording the attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(n))).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("recording the attempt failed".into())
    }

    async fn persist_commit(
        &self,
        job: &JobRuntime,
        inner: &mut JobInner,
        info: &CommitInfo,
        snapshot: &str,
    ) -> Result<(), String> {
        let params = inner.machine.global().to_vec();
        let bytes = flotilla_core::params_to_le_bytes(&params);
        let mut key = None;
        for attempt in 1..=STORE_ATTEMPTS {
            let put = self
                .store
                .put_model(job.id, info.model_version, bytes.clone());
            match self.metrics.store_op("put_model", put).await {
                Ok(k) => {
                    key = Some(k);
                    break;
                }
                Err(e) if retryable(&e) && attempt < STORE_ATTEMPTS => {
                    tracing::warn!(job = job.id.0, error = %e, "put_model failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => return Err(format!("storing model version {}: {e}", info.model_version)),
            }
        }
        let key = key.ok_or("storing the model failed")?;
        drop(bytes);

        let mut metrics = crate::api::RoundMetrics::new(
            info.attempt,
            info.num_samples,
            info.train_loss,
            flotilla_core::params_sha256(&params),
        );
        metrics.privacy =
            self.privacy
                .round_metrics(job.id, &job.spec, info.round, info.dp.as_ref());
        // FedBuff: each aggregated update's staleness τ, in acceptance order, and a summary under
        // the simulator's names.
        metrics.set_staleness(info.staleness.clone());
        // Robust strategies record whom they left out and why; operators see it in job status.
        metrics.quarantined = info.quarantined.clone();
        // Federated evaluation: of the model the round started from (the previous version).
        metrics.federated_eval = info.federated_eval.as_ref().map(|f| {
            crate::api::FederatedEvalMetrics::new(info.model_version.saturating_sub(1), f)
        });
        // The store keeps metrics as opaque JSON.
        let metrics = serde_json::to_value(&metrics)
            .map_err(|e| format!("encoding the metrics of round {}: {e}", info.round))?;
        let participants: Vec<flotilla_store::ClientId> = info
            .participants
            .iter()
            .map(|c| flotilla_store::ClientId(c.0))
            .collect();
        let commit = RoundCommit {
            attempt: info.attempt,
            participants: &participants,
            metrics: &metrics,
            model_blob_key: &key,
            machine_state_json: snapshot,
            dp_charge: self.privacy.round_charge(job.id, &job.spec),
        };
        for attempt in 1..=STORE_ATTEMPTS {
            let call = self.store.commit_round(job.id, info.round, &commit);
            match self.metrics.store_op("commit_round", call).await {
                Ok(_) => break,
                Err(e) if retryable(&e) && attempt < STORE_ATTEMPTS => {
                    tracing::warn!(job = job.id.0, error = %e, "commit_round failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => return Err(format!("committing round {}: {e}", info.round)),
            }
        }
        if let Some(p) = metrics.get("privacy").and_then(|p| p.get("epsilon_spent")) {
            self.metrics
                .dp_spent(job.id.0, p.as_f64().unwrap_or(f64::NAN));
        }
        let control = inner.machine.strategy().client_directive().server_control;
        let version = Arc::new(ModelVersion::new(
            info.model_version,
            params,
            &job.layout,
            &job.model_spec,
            control,
        ));
        inner.previous = Some(std::mem::replace(&mut inner.current, version));
        inner.deadline_ms = None;
        inner.notes.retry = None;
        let round = info.round;
        inner.accepted.retain(|k, _| k.0 >= round);
        Ok(())
    }

    /// Ends a job whose next round the privacy budget refused: `failed` (the store reaches
    /// `completed` only through the last round), with the reason in its status.
    async fn stop_for_privacy(&self, job: &JobRuntime, inner: &mut JobInner, why: String) {
        tracing::warn!(job = job.id.0, reason = %why, "job stopped by its privacy budget");
        if let Err(e) = self
            .store
            .set_job_state_with_reason(job.id, JobState::Failed, Some(&why), "system")
            .await
        {
            tracing::error!(job = job.id.0, error = %e, "could not mark the job failed");
        }
        inner.halted = Some(why);
        self.end_job(job, inner, JobState::Failed);
    }

    /// A committed model version of a job: from memory, else from the blob store.
    pub async fn model_version(
        &self,
        job: &JobRuntime,
        version: u64,
    ) -> Result<Arc<ModelVersion>, tonic::Status> {
        {
            let inner = job.inner.lock().await;
            if inner.current.version == version {
                return Ok(inner.current.clone());
            }
            if let Some(p) = inner.previous.as_ref().filter(|p| p.version == version) {
                return Ok(p.clone());
            }
            if let Some(o) = inner.origin.as_ref().filter(|o| o.version == version) {
                return Ok(o.clone());
            }
            if version > inner.current.version {
                return Err(tonic::Status::not_found(format!(
                    "model version {version} of job {} does not exist yet",
                    job.id
                )));
            }
        }
        let not_found = || {
            tonic::Status::not_found(format!(
                "model version {version} of job {} is not retained",
                job.id
            ))
        };
        if version == 0 {
            return Err(not_found());
        }
        // Version v is round v's model: one row, not the job's whole history.
        let unavailable = |e: StoreError| {
            tonic::Status::unavailable(format!("store unavailable: {e}; retry later"))
        };
        let round = self
            .store
            .get_round(job.id, version)
            .await
            .map_err(unavailable)?;
        let round = round
            .filter(|r| r.model_version == version)
            .ok_or_else(not_found)?;
        let bytes = self
            .store
            .get_model(&round.model_blob_key)
            .await
            .map_err(unavailable)?;
        let params = flotilla_core::params_from_le_bytes(&bytes)
            .ok_or_else(|| tonic::Status::data_loss("stored model is not f32 data"))?;
        Ok(Arc::new(ModelVersion::new(
            version,
            params,
            &job.layout,
            &job.model_spec,
            None,
        )))
    }
}

/// Fires machine timers on the real clock. One task for all jobs.
pub(crate) async fn timer_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<TimerEntry>) {
    let mut heap: BinaryHeap<Reverse<TimerEntry>> = BinaryHeap::new();
    loop {
        let wait = heap
            .peek()
            .map(|Reverse(e)| e.at_ms.saturating_sub(now_ms()));
        let sleep = async {
            match wait {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(e) => {
                    heap.push(Reverse(e));
                    crate::bounds::prune_timers(&mut heap, &shared);
                }
                None => return,
            },
            () = sleep => {
                let now = now_ms();
                while let Some(Reverse(e)) = heap.peek().copied() {
                    if e.at_ms > now {
                        break;
                    }
                    heap.pop();
                    let Some(job) = shared.jobs.read().ok().and_then(|j| j.get(&e.job).cloned()) else { continue };
                    let mut inner = job.inner.lock().await;
                    let _ = shared.drive(&job, &mut inner, Event::TimerFired(e.timer), None).await;
                }
            }
        }
    }
}
