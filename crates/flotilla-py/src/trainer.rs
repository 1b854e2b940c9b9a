//! A Python object as the SDK's [`LocalTrainer`]: `fit` (and `evaluate`, if it has one) are called
//! with the GIL held, on the SDK's blocking thread; everything around them runs without the GIL.
//!
//! An exception from the user's code, or output that cannot be sent (checked in [`crate::arrays`]
//! and [`metrics_from`]), is kept and ends the run: `Client.run` raises it, with its traceback.
//! Nothing of that task is uploaded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, UNIX_EPOCH};

use flotilla_client::{BoxError, EvalOutcome, LocalTrainer, TaskInfo, TrainOutcome};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::Notify;

use crate::arrays::{self, type_name};
use crate::errors::InvalidUpdate;

/// Most metrics one task may report (the protocol's limit, `flotilla_proto::MAX_METRICS`, less the
/// evaluation metrics the SDK adds).
const MAX_METRICS: usize = 60;

/// What ended a run from inside the trainer.
pub(crate) type Failure = Arc<Mutex<Option<PyErr>>>;

/// The user's trainer, with where to put its failure and whom to wake when it fails.
pub(crate) struct PyTrainer {
    trainer: Py<PyAny>,
    has_evaluate: bool,
    failure: Failure,
    stop: Arc<Notify>,
    /// Nanoseconds spent inside the user's `fit` and `evaluate` (the rest of a task is overhead).
    user_nanos: Arc<AtomicU64>,
}

impl PyTrainer {
    /// Checks that `trainer` has `num_samples` and `fit` (and notes whether it has `evaluate`).
    pub(crate) fn new(
        trainer: &Bound<'_, PyAny>,
        failure: Failure,
        stop: Arc<Notify>,
        user_nanos: Arc<AtomicU64>,
    ) -> PyResult<Self> {
        for method in ["num_samples", "fit"] {
            if !trainer.hasattr(method)? {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "the trainer ({}) has no {method}() method; a trainer has num_samples(), \
                     fit(params, config) and optionally evaluate(params, config)",
                    type_name(trainer)
                )));
            }
        }
        Ok(Self {
            trainer: trainer.clone().unbind(),
            has_evaluate: trainer.hasattr("evaluate")?,
            failure,
            stop,
            user_nanos,
        })
    }

    /// Keeps the first failure, wakes the run so that it stops, and returns the message for the
    /// SDK's log.
    /// Calls the user's `method` and counts the time spent in it.
    fn call<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        args: (Bound<'py, PyDict>, Bound<'py, PyDict>),
    ) -> PyResult<Bound<'py, PyAny>> {
        let started = Instant::now();
        let out = self.trainer.bind(py).call_method1(method, args);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.user_nanos.fetch_add(nanos, Ordering::Relaxed);
        out
    }

    fn failed(&self, err: PyErr) -> BoxError {
        let msg = Python::attach(|py| err.value(py).to_string());
        let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(err);
        }
        self.stop.notify_one();
        msg.into()
    }

    fn fit(&self, py: Python<'_>, task: &TaskInfo, global: &[f32]) -> PyResult<TrainOutcome> {
        let params = arrays::to_python(py, &task.layout, global.to_vec())?;
        let config = task_config(py, task)?;
        let out = self.call(py, "fit", (params, config))?;
        let (params, num_samples, metrics) = triple(&out, "fit", "(params, num_samples, metrics)")?;
        let params = arrays::from_python(&params, &task.layout, "fit")?;
        let num_samples = samples(&num_samples, "fit")?;
        let metrics = metrics_from(&metrics, "fit")?;
        // SCAFFOLD needs the number of local steps; a trainer reports it as a metric.
        let local_steps = metrics
            .get("local_steps")
            .map(|&s| s as u64)
            .unwrap_or_default();
        Ok(TrainOutcome {
            params,
            num_samples,
            metrics,
            local_steps,
        })
    }

    fn eval(&self, py: Python<'_>, task: &TaskInfo, global: &[f32]) -> PyResult<EvalOutcome> {
        let params = arrays::to_python(py, &task.layout, global.to_vec())?;
        let config = task_config(py, task)?;
        let out = self.call(py, "evaluate", (params, config))?;
        let (loss, num_samples, metrics) =
            triple(&out, "evaluate", "(loss, num_samples, metrics)")?;
        let loss: f64 = loss.extract().map_err(|_| {
            InvalidUpdate::new_err(format!(
                "evaluate returned a loss of type {}; return a float",
                type_name(&loss)
            ))
        })?;
        if !loss.is_finite() {
            return Err(InvalidUpdate::new_err(format!(
                "evaluate returned a non-finite loss ({loss})"
            )));
        }
        Ok(EvalOutcome {
            loss,
            num_samples: samples(&num_samples, "evaluate")?,
            metrics: metrics_from(&metrics, "evaluate")?,
        })
    }
}

impl LocalTrainer for PyTrainer {
    fn num_samples(&self) -> u64 {
        let n = Python::attach(|py| {
            let n = self.trainer.bind(py).call_method0("num_samples")?;
            samples(&n, "num_samples()")
        });
        n.unwrap_or_else(|e| {
            let msg = self.failed(e);
            tracing::error!(error = %msg.to_string().escape_debug(), "num_samples() failed");
            0
        })
    }

    fn train(&mut self, task: &TaskInfo, global: &[f32]) -> Result<TrainOutcome, BoxError> {
        Python::attach(|py| self.fit(py, task, global)).map_err(|e| self.failed(e))
    }

    fn evaluate(
        &mut self,
        task: &TaskInfo,
        global: &[f32],
    ) -> Result<Option<EvalOutcome>, BoxError> {
        if !self.has_evaluate {
            return Ok(None);
        }
        Python::attach(|py| self.eval(py, task, global))
            .map(Some)
            .map_err(|e| self.failed(e))
    }
}

/// `(a, b, c)` out of what `what` returned.
fn triple<'py>(
    out: &Bound<'py, PyAny>,
    what: &str,
    expected: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let bad = || {
        InvalidUpdate::new_err(format!(
            "{what} returned {}; return a tuple {expected}",
            type_name(out)
        ))
    };
    let t = out.cast::<PyTuple>().map_err(|_| bad())?;
    if t.len() != 3 {
        return Err(bad());
    }
    Ok((t.get_item(0)?, t.get_item(1)?, t.get_item(2)?))
}

/// A sample count: an int ≥ 1.
fn samples(v: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    match v.extract::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(InvalidUpdate::new_err(format!(
            "{what} returned num_samples {}; return an int ≥ 1",
            v.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
        ))),
    }
}

/// `{str: float}` with finite values and at most [`MAX_METRICS`] entries (`None` = no metrics).
pub(crate) fn metrics_from(v: &Bound<'_, PyAny>, what: &str) -> PyResult<BTreeMap<String, f64>> {
    if v.is_none() {
        return Ok(BTreeMap::new());
    }
    let dict = v.cast::<PyDict>().map_err(|_| {
        InvalidUpdate::new_err(format!(
            "{what} returned metrics of type {}; return a dict of str -> float",
            type_name(v)
        ))
    })?;
    if dict.len() > MAX_METRICS {
        return Err(InvalidUpdate::new_err(format!(
            "{what} returned {} metrics; at most {MAX_METRICS} are sent",
            dict.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (k, value) in dict.iter() {
        let name: String = k.extract().map_err(|_| {
            InvalidUpdate::new_err(format!("{what} returned a metric name that is not a str"))
        })?;
        let x: f64 = value.extract().map_err(|_| {
            InvalidUpdate::new_err(format!(
                "metric {name:?} from {what} is a {}; metrics are numbers",
                type_name(&value)
            ))
        })?;
        if !x.is_finite() {
            return Err(InvalidUpdate::new_err(format!(
                "metric {name:?} from {what} is not finite ({x})"
            )));
        }
        out.insert(name, x);
    }
    Ok(out)
}

/// The task as the `config` dict `fit` and `evaluate` receive.
fn task_config<'py>(py: Python<'py>, task: &TaskInfo) -> PyResult<Bound<'py, PyDict>> {
    let c = PyDict::new(py);
    c.set_item("job_id", &task.job_id)?;
    c.set_item("round", task.round)?;
    c.set_item("attempt", task.attempt)?;
    c.set_item("model_version", task.model_version)?;
    let t = &task.training;
    c.set_item("epochs", t.epochs)?;
    c.set_item("batch_size", t.batch_size)?;
    c.set_item("learning_rate", t.learning_rate)?;
    c.set_item("seed", t.seed)?;
    c.set_item("proximal_mu", t.proximal_mu)?;
    c.set_item("max_grad_norm", t.max_grad_norm)?;
    let correction = match &task.gradient_correction {
        Some(flat) => Some(arrays::to_python(py, &task.layout, flat.clone())?),
        None => None,
    };
    c.set_item("scaffold_correction", correction)?;
    let deadline = task
        .deadline
        .and_then(|d| d.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    c.set_item("deadline", deadline)?;
    let model = match &task.model {
        Some(m) => {
            let d = PyDict::new(py);
            d.set_item("kind", &m.kind)?;
            d.set_item("input_shape", m.input_shape.clone())?;
            d.set_item("num_classes", m.num_classes)?;
            d.set_item("hidden", m.hidden)?;
            d.set_item("embed", m.embed)?;
            Some(d)
        }
        None => None,
    };
    c.set_item("model", model)?;
    Ok(c)
}
