//! Server-side evaluation of committed models, off the round's critical path.
//!
//! A round is committed (model blob, then `commit_round`) with its training metrics only. Once it
//! is durable, the committed model is handed to [`Evaluations::submit`], which evaluates it on a
//! blocking thread — holding no job lock, so check-ins, uploads and the next round never wait for
//! it — and records the result with [`flotilla_store::Store::record_round_eval`]. From then on the
//! round's metrics (`job status`, the admin API) carry `eval_accuracy`, `eval_loss` and
//! `eval_samples`.
//!
//! Bounded per job: at most one evaluation runs and one waits. A model committed while another
//! waits replaces it (the newest wins), so **a round committed faster than its predecessor could
//! be evaluated is simply not evaluated**, and its metrics never show evaluation. Memory is
//! therefore at most two models per job beyond the evaluator's own, however fast rounds commit.
//! The last round of a job is evaluated after the job has completed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_store::{JobId, Store};

use crate::api::EvalMetrics;
use crate::metrics::Metrics;
use crate::models::{EvalReport, Evaluate};
use crate::retry::{STORE_ATTEMPTS, retryable};

/// A job's evaluator and its queue of at most one waiting model.
pub(crate) struct Evaluations {
    evaluator: Arc<Mutex<Box<dyn Evaluate>>>,
    queue: Mutex<Queue>,
}

/// What is running and what waits.
#[derive(Default)]
struct Queue {
    /// An evaluation task is running (and will take `pending` when it is done).
    running: bool,
    /// The newest committed model not yet evaluated: (round, parameters).
    pending: Option<(u64, Arc<Vec<f32>>)>,
}

impl Evaluations {
    pub(crate) fn new(evaluator: Box<dyn Evaluate>) -> Arc<Self> {
        Arc::new(Self {
            evaluator: Arc::new(Mutex::new(evaluator)),
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Evaluates committed round `round` (model `params`) soon: at once if nothing runs, else after
    /// the running evaluation, unless a newer round is submitted meanwhile. Never waits.
    pub(crate) fn submit(
        self: &Arc<Self>,
        store: &Store,
        metrics: &Arc<Metrics>,
        job: JobId,
        round: u64,
        params: Arc<Vec<f32>>,
    ) {
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if q.running {
                if let Some((skipped, _)) = q.pending.replace((round, params)) {
                    tracing::debug!(
                        job = job.0,
                        round = skipped,
                        "round not evaluated: a newer round was committed first"
                    );
                }
                return;
            }
            q.running = true;
        }
        let (me, store, metrics) = (self.clone(), store.clone(), metrics.clone());
        tokio::spawn(me.run(store, metrics, job, round, params));
    }

    /// Evaluates and records `round`, then whatever waits, until nothing does.
    async fn run(
        self: Arc<Self>,
        store: Store,
        metrics: Arc<Metrics>,
        job: JobId,
        mut round: u64,
        mut params: Arc<Vec<f32>>,
    ) {
        loop {
            let evaluator = self.evaluator.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut e = evaluator.lock().unwrap_or_else(PoisonError::into_inner);
                e.evaluate(&params)
            })
            .await;
            match done {
                Ok(Ok(report)) => {
                    let finite = |x: f64| x.is_finite().then_some(x);
                    metrics.model_eval(job.0, finite(report.accuracy), finite(report.loss));
                    record(&store, job, round, &report).await
                }
                Ok(Err(e)) => tracing::warn!(job = job.0, round, error = %e, "evaluation failed"),
                Err(e) => tracing::warn!(job = job.0, round, error = %e, "evaluation task failed"),
            }
            let next = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let next = q.pending.take();
                q.running = next.is_some();
                next
            };
            match next {
                Some(next) => (round, params) = next,
                None => return,
            }
        }
    }
}

/// The metrics an evaluation adds to its round (a non-finite loss is recorded as `null`).
pub(crate) fn eval_metrics(r: &EvalReport) -> EvalMetrics {
    EvalMetrics::new(r.accuracy, r.loss, r.num_samples as u64)
}

/// Records an evaluation, retrying infrastructure errors; a failure leaves the round unevaluated.
async fn record(store: &Store, job: JobId, round: u64, report: &EvalReport) {
    // The store merges an opaque JSON object into the round's metrics.
    let metrics = match serde_json::to_value(eval_metrics(report)) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(job = job.0, round, error = %e, "could not encode the evaluation");
            return;
        }
    };
    for attempt in 1..=STORE_ATTEMPTS {
        match store.record_round_eval(job, round, &metrics).await {
            Ok(()) => {
                tracing::debug!(
                    job = job.0,
                    round,
                    accuracy = report.accuracy,
                    "round evaluated"
                );
                return;
            }
            Err(e) if retryable(&e) && attempt < STORE_ATTEMPTS => {
                tracing::warn!(job = job.0, round, error = %e, "recording the evaluation failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::warn!(job = job.0, round, error = %e, "could not record the evaluation");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use flotilla_store::{JobState, RoundCommit};
    use serde_json::json;

    use super::*;

    /// Evaluates once per message on `gate`; records what it saw.
    struct Gated {
        gate: mpsc::Receiver<()>,
        seen: Arc<Mutex<Vec<f32>>>,
    }

    impl Evaluate for Gated {
        fn evaluate(&mut self, params: &[f32]) -> Result<EvalReport, String> {
            self.gate.recv().map_err(|e| e.to_string())?;
            self.seen.lock().unwrap().push(params[0]);
            Ok(EvalReport {
                num_samples: 1,
                loss: f64::from(params[0]),
                accuracy: 1.0,
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_runs_one_waits_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_dir(dir.path()).await.unwrap();
        let job = store
            .create_job("default", "j", &json!({}), 3)
            .await
            .unwrap();
        store.set_job_state(job, JobState::Running).await.unwrap();
        for r in 1..=3u64 {
            let key = store.put_model(job, r, vec![0; 4]).await.unwrap();
            let commit = RoundCommit {
                attempt: 1,
                participants: &[],
                metrics: &json!({"round": r}),
                model_blob_key: &key,
                machine_state_json: "{}",
                dp_charge: None,
            };
            store.commit_round(job, r, &commit).await.unwrap();
        }
        let (go, gate) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ev = Evaluations::new(Box::new(Gated {
            gate,
            seen: seen.clone(),
        }));
        // Round 1 starts (and blocks on the gate); 2 waits; 3 replaces it. None of this waits.
        let metrics = Arc::new(Metrics::new(true));
        for r in 1..=3u64 {
            ev.submit(&store, &metrics, job, r, Arc::new(vec![r as f32]));
        }
        go.send(()).unwrap();
        go.send(()).unwrap();
        let loss = |r: u64| {
            let store = store.clone();
            async move { store.get_round(job, r).await.unwrap().unwrap().metrics["eval_loss"].as_f64() }
        };
        for _ in 0..500 {
            if loss(3).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(loss(3).await, Some(3.0));
        assert_eq!(loss(1).await, Some(1.0));
        assert_eq!(loss(2).await, None, "round 2 was replaced by round 3");
        assert_eq!(*seen.lock().unwrap(), vec![1.0, 3.0]);
        // Nothing runs any more: the next model starts a new task at once.
        for _ in 0..500 {
            if !ev.queue.lock().unwrap().running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!ev.queue.lock().unwrap().running);
    }

    #[test]
    fn metrics_keep_the_names_and_null_a_non_finite_loss() {
        let r = EvalReport {
            num_samples: 360,
            loss: f64::NAN,
            accuracy: 0.5,
        };
        assert_eq!(
            serde_json::to_value(eval_metrics(&r)).unwrap(),
            serde_json::json!({"eval_accuracy": 0.5, "eval_loss": null, "eval_samples": 360})
        );
    }
}
