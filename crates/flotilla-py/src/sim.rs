//! `flotilla.simulate`: the deterministic simulator from Python, with the same results as
//! `flotilla sim --out` (one definition: `flotilla_sim::results`).

use std::path::PathBuf;
use std::time::Instant;

use flotilla_sim::Scenario;
use flotilla_sim::scenario::Overrides;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::flotilla_error;

/// Runs the scenario given as TOML text and returns the results `flotilla sim --out` writes, as a
/// dict (`final_accuracy`, `model_sha256`, `history`, …; `plot` is `None`). Datasets are read
/// from `data_dir` (default `$FLOTILLA_DATA_DIR`, else `./data`; `flotilla data fetch` fills it).
/// The GIL is released while the federation runs.
#[pyfunction]
#[pyo3(signature = (scenario_toml, *, data_dir=None, rounds=None, seed=None))]
pub(crate) fn simulate(
    py: Python<'_>,
    scenario_toml: &str,
    data_dir: Option<PathBuf>,
    rounds: Option<u64>,
    seed: Option<u64>,
) -> PyResult<Py<PyAny>> {
    let scenario = Scenario::parse(scenario_toml, &Overrides { rounds, seed })
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let data_dir = data_dir.unwrap_or_else(flotilla_data::default_data_dir);
    let text = py.detach(|| {
        let t0 = Instant::now();
        let outcome =
            flotilla_sim::run(&scenario, &data_dir, &mut |_| {}).map_err(|e| flotilla_error(&e))?;
        let wall = t0.elapsed().as_secs_f64();
        let rss = flotilla_sim::results::peak_rss_bytes();
        let doc =
            flotilla_sim::results::results_json(&scenario, "<string>", &outcome, wall, rss, None);
        Ok::<_, PyErr>(doc.to_string())
    })?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}
