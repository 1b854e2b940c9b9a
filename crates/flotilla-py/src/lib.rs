//! `flotilla._native`: the compiled part of Flotilla's Python package (PyO3, abi3 for CPython ≥ 3.9).
//!
//! The Python package (`python/flotilla/`) re-exports these and adds what is plain Python: the
//! PyTorch helpers (`flotilla.torch`) and the Flower adapter (`flotilla.flower`).
//!
//! - `client::Client` runs the Rust client SDK (`flotilla-client`) with a Python trainer: every
//!   protocol feature (enrollment, resumable transfer, SecAgg+, distributed DP, FedProx/SCAFFOLD
//!   fields, retries) is the SDK's; Python only sees `fit`/`evaluate` calls with numpy arrays. The
//!   GIL is released while the SDK does network I/O and crypto.
//! - `admin::Admin` calls the coordinator's admin HTTP API.
//! - `sim::simulate` runs the deterministic simulator and returns what `flotilla sim --out` writes.
//!
//! Everything a user passes in is checked here, before anything reaches a coordinator: returned
//! parameters must have the job's tensor names, shapes and dtype (float32) and be finite
//! (`arrays`), metrics must be finite numbers.

mod admin;
mod arrays;
mod client;
mod data;
mod errors;
mod initial;
mod sim;
mod trainer;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<admin::Admin>()?;
    m.add_function(wrap_pyfunction!(sim::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(data::load_partition, m)?)?;
    m.add_function(wrap_pyfunction!(data::load_test, m)?)?;
    m.add_function(wrap_pyfunction!(client::_check_update, m)?)?;
    m.add_function(wrap_pyfunction!(initial::_save_safetensors, m)?)?;
    m.add("FlotillaError", m.py().get_type::<errors::FlotillaError>())?;
    m.add("InvalidUpdate", m.py().get_type::<errors::InvalidUpdate>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
