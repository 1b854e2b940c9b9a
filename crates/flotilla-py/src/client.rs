//! `flotilla.Client`: the Rust client SDK driven from Python.
//!
//! `run` starts the SDK on a tokio runtime and waits with the GIL released, waking every 100 ms to
//! let Python handle signals: Ctrl-C (SIGINT) stops the client gracefully — the SDK drops what is in
//! flight, an interrupted `fit` is discarded — and `run` returns its counters. `stop()` from another
//! thread does the same.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use flotilla_client::{ClientConfig, ClientStats};
use flotilla_core::{ParamLayout, TensorSpec};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::Notify;

use crate::errors::{FlotillaError, flotilla_error};
use crate::trainer::PyTrainer;

/// How often `run` takes the GIL back to let Python run its signal handlers.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// A Flotilla client: `Client(coordinator, state_dir, ca_cert=…, token=…).run(trainer)`.
#[pyclass(module = "flotilla._native", frozen)]
pub(crate) struct Client {
    config: ClientConfig,
    stop: Arc<Notify>,
}

#[pymethods]
impl Client {
    /// A client of the coordinator at `coordinator` (`https://host:port`), keeping its credential in
    /// `state_dir`. `token` is the one-time enrollment token, needed on the first start only;
    /// `ca_cert` the PEM file of the CA that signed the coordinator's certificate. `insecure=True`
    /// allows a plain `http://` coordinator (development only). `jobs` limits the jobs served;
    /// `attributes` are announced at every check-in for the coordinator's eligibility policies;
    /// `cohorts` (e.g. `{"region": "eu"}`) are sent with every federated evaluation report.
    #[new]
    #[pyo3(signature = (coordinator, state_dir, *, ca_cert=None, token=None, name=None, jobs=None, insecure=false, attributes=None, cohorts=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        coordinator: String,
        state_dir: PathBuf,
        ca_cert: Option<PathBuf>,
        token: Option<String>,
        name: Option<String>,
        jobs: Option<Vec<String>>,
        insecure: bool,
        attributes: Option<std::collections::BTreeMap<String, String>>,
        cohorts: Option<std::collections::BTreeMap<String, String>>,
    ) -> PyResult<Self> {
        let mut config = ClientConfig::new(coordinator, state_dir);
        config.ca_cert = ca_cert;
        config.enrollment_token = token;
        config.insecure = insecure;
        if let Some(name) = name {
            config.client_name = name;
        }
        config.job_ids = jobs.unwrap_or_default();
        config.attributes = attributes.unwrap_or_default();
        config.cohorts = cohorts.unwrap_or_default();
        // Validate now (address, TLS files, stored credential), so a mistake shows at once.
        flotilla_client::Client::new(config.clone()).map_err(|e| flotilla_error(&e))?;
        Ok(Self {
            config,
            stop: Arc::new(Notify::new()),
        })
    }

    /// Serves the coordinator with `trainer` until Ctrl-C, `stop()`, or a fatal error, and returns
    /// the run's counters as a dict. An exception raised by the trainer (or an invalid return value,
    /// `InvalidUpdate`) ends the run and is raised here; a fatal SDK error raises `FlotillaError`.
    fn run(&self, py: Python<'_>, trainer: &Bound<'_, PyAny>) -> PyResult<Py<PyDict>> {
        init_logging();
        let failure = Arc::new(Mutex::new(None));
        let user_nanos = Arc::new(AtomicU64::new(0));
        let trainer = PyTrainer::new(
            trainer,
            failure.clone(),
            self.stop.clone(),
            user_nanos.clone(),
        )?;
        let client =
            flotilla_client::Client::new(self.config.clone()).map_err(|e| flotilla_error(&e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| flotilla_error(&e))?;
        let restore = sigterm_as_interrupt(py);
        let (done_tx, done_rx) = channel();
        // `detach` needs `Sync` captures; the receiver is only ever used from this thread.
        let done_rx = Mutex::new(done_rx);
        let stop = self.stop.clone();
        runtime.spawn(async move {
            let result = client
                .run(trainer, async move { stop.notified().await })
                .await;
            let _ = done_tx.send(result);
        });
        let mut interrupted: Option<PyErr> = None;
        let result = loop {
            match py.detach(|| {
                done_rx
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv_timeout(SIGNAL_POLL)
            }) {
                Ok(result) => break result,
                Err(RecvTimeoutError::Timeout) => {
                    if interrupted.is_none()
                        && let Err(e) = py.check_signals()
                    {
                        tracing::info!("interrupted: stopping the client");
                        interrupted = Some(e);
                        self.stop.notify_one();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(FlotillaError::new_err(
                        "the client task ended without a result (it panicked; see the log above)",
                    ));
                }
            }
        };
        // An interrupted fit may still hold (or wait for) the GIL: do not wait for it.
        py.detach(|| runtime.shutdown_background());
        if let Some(previous) = restore {
            let _ = py
                .import("signal")
                .and_then(|s| s.call_method1("signal", (s.getattr("SIGTERM")?, previous)));
        }
        if let Some(err) = failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(err);
        }
        if let Some(e) = interrupted
            && !e.is_instance_of::<PyKeyboardInterrupt>(py)
        {
            return Err(e);
        }
        let (stats, error) = match result {
            Ok(stats) => (stats, None),
            Err(e) => (e.stats.clone(), Some(e)),
        };
        if let Some(e) = error {
            return Err(flotilla_error(&e));
        }
        let user = Duration::from_nanos(user_nanos.load(Ordering::Relaxed));
        stats_dict(py, &stats, user)
    }

    /// Fetches the version of registered model `name` this client is served now (production, or
    /// the canary for a canary rollout's share), enrolling first if needed; returns
    /// `(version, canary, {tensor name: numpy.ndarray})`. The download is checked against the
    /// version's layout and SHA-256. Raises `FlotillaError` (e.g. "digits has no production
    /// version yet").
    fn pull_model(&self, py: Python<'_>, name: String) -> PyResult<(u64, bool, Py<PyDict>)> {
        init_logging();
        let config = self.config.clone();
        let pulled = py.detach(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let mut client = flotilla_client::Client::new(config).map_err(|e| e.to_string())?;
            runtime
                .block_on(client.pull_model(&name))
                .map_err(|e| e.to_string())
        });
        let m = pulled.map_err(FlotillaError::new_err)?;
        let arrays = crate::arrays::to_python(py, &m.layout, m.params)?;
        Ok((m.version, m.canary, arrays.unbind()))
    }

    /// Asks a running `run` (in another thread) to stop, as Ctrl-C does.
    fn stop(&self) {
        self.stop.notify_one();
    }

    /// The client id once enrolled (read from `state_dir`), else `None`.
    #[getter]
    fn client_id(&self) -> Option<String> {
        flotilla_client::Client::new(self.config.clone())
            .ok()
            .and_then(|c| c.client_id().map(str::to_owned))
    }
}

/// Checks `params` (`{name: numpy.ndarray}`) against a layout given as `[(name, shape), …]`, as
/// `Client.run` checks what `fit` returns; raises `InvalidUpdate` naming the tensor. For tests and
/// for adapters (`flotilla.flower`) that want to fail before a federation starts.
#[pyfunction]
pub(crate) fn _check_update(
    params: &Bound<'_, PyAny>,
    layout: Vec<(String, Vec<usize>)>,
) -> PyResult<()> {
    let layout = ParamLayout::new(
        layout
            .into_iter()
            .map(|(n, s)| TensorSpec::new(n, s))
            .collect(),
    );
    crate::arrays::from_python(params, &layout, "fit").map(|_| ())
}

/// The run's counters; `task_seconds − user_seconds` is the SDK's time (network, crypto, the
/// Python boundary) outside the user's `fit`/`evaluate`.
fn stats_dict(py: Python<'_>, s: &ClientStats, user: Duration) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("check_ins", s.check_ins)?;
    d.set_item("tasks_received", s.tasks_received)?;
    d.set_item("tasks_done", s.tasks_done)?;
    d.set_item("tasks_failed", s.tasks_failed)?;
    d.set_item("uploads_accepted", s.uploads_accepted)?;
    d.set_item("uploads_duplicate", s.uploads_duplicate)?;
    d.set_item("uploads_rejected", s.uploads_rejected)?;
    d.set_item("download_resumes", s.download_resumes)?;
    d.set_item("upload_resumes", s.upload_resumes)?;
    d.set_item("reconnects", s.reconnects)?;
    d.set_item("enrolled", s.enrolled)?;
    d.set_item("task_seconds", s.task_time.as_secs_f64())?;
    d.set_item("train_seconds", s.train_time.as_secs_f64())?;
    d.set_item("user_seconds", user.as_secs_f64())?;
    Ok(d.unbind())
}

/// Makes SIGTERM (what `kill` and service managers send) stop the client as Ctrl-C does, while
/// `run` runs: only on the main thread and only if the program left SIGTERM at its default
/// (which would kill the process mid-upload). Returns the handler to restore.
fn sigterm_as_interrupt(py: Python<'_>) -> Option<Py<PyAny>> {
    let signal = py.import("signal").ok()?;
    let threading = py.import("threading").ok()?;
    let main = threading.call_method0("main_thread").ok()?;
    let current = threading.call_method0("current_thread").ok()?;
    if !main.is(&current) {
        return None;
    }
    let sigterm = signal.getattr("SIGTERM").ok()?;
    let handler = signal.call_method1("getsignal", (&sigterm,)).ok()?;
    if !handler.eq(signal.getattr("SIG_DFL").ok()?).unwrap_or(false) {
        return None;
    }
    let interrupt = signal.getattr("default_int_handler").ok()?;
    signal.call_method1("signal", (&sigterm, interrupt)).ok()?;
    Some(handler.unbind())
}

/// Logs of the SDK to stderr, filtered by `RUST_LOG` (default `info`); once per process, and
/// only if the embedding program has not installed a subscriber.
fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    });
}
