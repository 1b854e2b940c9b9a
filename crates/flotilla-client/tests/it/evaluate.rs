//! Federated evaluation: a [`LocalTrainer`] that implements `evaluate` against the in-process
//! fake coordinator. The SDK evaluates the downloaded global model before training, on the same
//! thread, and reports the outcome in the upload header; a failed or invalid evaluation is
//! dropped and the task trains on.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use common::{Fake, Faults};
use flotilla_client::{
    BoxError, Client, ClientStats, DatasetTrainer, EvalOutcome, LocalTrainer, TaskInfo,
    TrainOutcome,
};
use flotilla_data::DatasetName;

/// What the trainer was called with, in order: `("evaluate" | "train", thread, global model)`.
type Calls = Arc<Mutex<Vec<(&'static str, ThreadId, Vec<f32>)>>>;

/// What `evaluate` answers.
type Answer = fn() -> Result<Option<EvalOutcome>, BoxError>;

/// Digits part 0 of 10, evaluating with a fixed answer.
struct Evaluating {
    inner: DatasetTrainer,
    answer: Answer,
    calls: Calls,
}

impl LocalTrainer for Evaluating {
    fn num_samples(&self) -> u64 {
        self.inner.num_samples()
    }

    fn train(&mut self, task: &TaskInfo, global: &[f32]) -> Result<TrainOutcome, BoxError> {
        let t = std::thread::current().id();
        self.calls
            .lock()
            .unwrap()
            .push(("train", t, global.to_vec()));
        let mut out = self.inner.train(task, global)?;
        // A training metric under a reserved name never reaches the coordinator.
        out.metrics.insert("eval_samples".into(), 0.5);
        Ok(out)
    }

    fn evaluate(
        &mut self,
        _task: &TaskInfo,
        global: &[f32],
    ) -> Result<Option<EvalOutcome>, BoxError> {
        let t = std::thread::current().id();
        self.calls
            .lock()
            .unwrap()
            .push(("evaluate", t, global.to_vec()));
        (self.answer)()
    }
}

async fn run_with(answer: Answer) -> (Arc<Fake>, ClientStats, Calls) {
    let fake = Fake::new(Faults::default());
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let trainer = Evaluating {
        inner: part(),
        answer,
        calls: Arc::clone(&calls),
    };
    let client = Client::new(common::config(addr, dir.path())).unwrap();
    let f = Arc::clone(&fake);
    let stats = tokio::time::timeout(
        Duration::from_secs(120),
        client.run(trainer, async move { f.finished.notified().await }),
    )
    .await
    .expect("client run timed out")
    .unwrap();
    server.abort();
    (fake, stats, calls)
}

/// Digits part 0 of 10.
fn part() -> DatasetTrainer {
    DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 0, 10).unwrap()
}

fn samples() -> u64 {
    part().indices().len() as u64
}

fn eval_metrics(fake: &Fake) -> BTreeMap<String, f64> {
    let s = fake.seen.lock().unwrap();
    let (h, _) = s.accepted.as_ref().expect("no update accepted");
    h.metrics
        .iter()
        .filter(|(k, _)| k.starts_with("eval_"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_model_is_evaluated_before_training_and_reported() {
    let (fake, stats, calls) = run_with(|| {
        Ok(Some(EvalOutcome {
            loss: 2.25,
            num_samples: 36,
            metrics: [("accuracy".to_owned(), 0.125), ("f1".to_owned(), 0.5)].into(),
        }))
    })
    .await;
    common::check_accepted(&fake, samples());
    assert_eq!(
        eval_metrics(&fake),
        [
            ("eval_accuracy".to_owned(), 0.125),
            ("eval_loss".to_owned(), 2.25),
            ("eval_samples".to_owned(), 36.0),
        ]
        .into()
    );
    assert_eq!((stats.evaluations, stats.evaluations_dropped), (1, 0));
    let calls = calls.lock().unwrap();
    let names: Vec<&str> = calls.iter().map(|c| c.0).collect();
    assert_eq!(names, ["evaluate", "train"]);
    assert_eq!(calls[0].1, calls[1].1, "on the same blocking thread");
    assert_eq!(calls[0].2, fake.initial, "the downloaded global model");
    assert_eq!(calls[1].2, fake.initial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_invalid_evaluation_is_dropped_and_the_task_trains_on() {
    let failing: [Answer; 3] = [
        || Err("evaluation data missing\n\u{1b}[2J".into()),
        || {
            Ok(Some(EvalOutcome {
                loss: 0.5,
                num_samples: 10,
                metrics: [("accuracy".to_owned(), 1.5)].into(),
            }))
        },
        || {
            Ok(Some(EvalOutcome {
                loss: f64::NAN,
                num_samples: 10,
                metrics: BTreeMap::new(),
            }))
        },
    ];
    for answer in failing {
        let (fake, stats, _) = run_with(answer).await;
        common::check_accepted(&fake, samples());
        assert_eq!(eval_metrics(&fake), BTreeMap::new());
        assert_eq!((stats.evaluations, stats.evaluations_dropped), (0, 1));
        assert_eq!((stats.tasks_done, stats.tasks_failed), (1, 0));
    }
    // No evaluation at all: nothing dropped either.
    let (fake, stats, _) = run_with(|| Ok(None)).await;
    assert_eq!(eval_metrics(&fake), BTreeMap::new());
    assert_eq!((stats.evaluations, stats.evaluations_dropped), (0, 0));
}
