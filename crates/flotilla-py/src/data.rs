//! Flotilla's datasets from Python, split exactly as the Rust client splits them, so that Python
//! and Rust clients of one federation hold disjoint shares of the same data.

use std::path::PathBuf;
use std::str::FromStr;

use flotilla_client::DatasetTrainer;
use flotilla_data::{Dataset, DatasetName, LoadOptions};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::flotilla_error;

/// `(features, labels)` of `rows` of `data`: float32 `[n, *sample_shape]` and int64 `[n]`.
type Arrays<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

fn arrays<'py>(py: Python<'py>, data: &Dataset, rows: Option<&[u32]>) -> PyResult<Arrays<'py>> {
    let width = data.feature_len();
    let (features, labels): (Vec<f32>, Vec<i64>) = match rows {
        Some(rows) => (
            rows.iter()
                .flat_map(|&r| data.sample(r as usize).unwrap_or_default().iter().copied())
                .collect(),
            rows.iter()
                .map(|&r| i64::from(data.labels[r as usize]))
                .collect(),
        ),
        None => (
            data.features.clone(),
            data.labels.iter().map(|&l| i64::from(l)).collect(),
        ),
    };
    let n = labels.len();
    let mut shape = vec![n];
    shape.extend_from_slice(&data.feature_shape);
    debug_assert_eq!(features.len(), n * width);
    let x = PyArray1::from_vec(py, features).reshape(shape)?.into_any();
    let y = PyArray1::from_vec(py, labels).into_any();
    Ok((x, y))
}

fn dataset(name: &str) -> PyResult<DatasetName> {
    DatasetName::from_str(name).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Client `index`'s share (of `of`) of the dataset's training split: the IID partition that
/// `flotilla client --dataset NAME --partition INDEX/OF` trains on. Returns `(x, y)`: float32
/// features shaped `[n, *sample_shape]` and int64 labels. Fetch the data first with
/// `flotilla data fetch NAME` (into `data_dir`, default `$FLOTILLA_DATA_DIR`, else `./data`).
#[pyfunction]
#[pyo3(signature = (name, index, of, *, data_dir=None))]
pub(crate) fn load_partition<'py>(
    py: Python<'py>,
    name: &str,
    index: usize,
    of: usize,
    data_dir: Option<PathBuf>,
) -> PyResult<Arrays<'py>> {
    let name = dataset(name)?;
    let dir = data_dir.unwrap_or_else(flotilla_data::default_data_dir);
    let trainer = py
        .detach(|| DatasetTrainer::from_partition(name, &dir, index, of))
        .map_err(|e| flotilla_error(&e))?;
    arrays(py, trainer.dataset(), Some(trainer.indices()))
}

/// The dataset's test split as `(x, y)` (as the coordinator's server-side evaluation uses it).
#[pyfunction]
#[pyo3(signature = (name, *, data_dir=None))]
pub(crate) fn load_test<'py>(
    py: Python<'py>,
    name: &str,
    data_dir: Option<PathBuf>,
) -> PyResult<Arrays<'py>> {
    let name = dataset(name)?;
    let dir = data_dir.unwrap_or_else(flotilla_data::default_data_dir);
    let split = py
        .detach(|| flotilla_data::load(name, &dir, &LoadOptions::default()))
        .map_err(|e| flotilla_error(&e))?;
    arrays(py, &split.test, None)
}
