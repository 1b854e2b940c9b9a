//! `flotilla.save_initial`: a job's initial model written as safetensors, checked as the coordinator
//! will check it (float32, non-empty, finite), so a mistake shows on the scientist's machine.

use std::path::PathBuf;

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use safetensors::tensor::{Dtype, TensorView};

use crate::arrays::type_name;
use crate::errors::{FlotillaError, InvalidUpdate};

/// Writes `params` (`{name: float32 numpy array}`) to `path` as safetensors.
#[pyfunction]
pub(crate) fn _save_safetensors(params: &Bound<'_, PyDict>, path: PathBuf) -> PyResult<()> {
    if params.is_empty() {
        return Err(InvalidUpdate::new_err(
            "model.initial: no tensors; give at least one",
        ));
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(params.len());
    for (key, value) in params.iter() {
        let name: String = key
            .extract()
            .map_err(|_| InvalidUpdate::new_err("model.initial: tensor names are str"))?;
        let array = value.cast::<PyUntypedArray>().map_err(|_| {
            InvalidUpdate::new_err(format!(
                "model.initial: tensor {name:?} is a {}, not a numpy.ndarray",
                type_name(&value)
            ))
        })?;
        let typed = array.cast::<PyArrayDyn<f32>>().map_err(|_| {
            InvalidUpdate::new_err(format!(
                "model.initial: tensor {name:?} has dtype {}; only float32 is supported (astype(numpy.float32))",
                array.dtype()
            ))
        })?;
        if array.len() == 0 {
            return Err(InvalidUpdate::new_err(format!(
                "model.initial: tensor {name:?} is empty (shape {:?})",
                array.shape()
            )));
        }
        let read = typed
            .try_readonly()
            .map_err(|e| InvalidUpdate::new_err(format!("model.initial: tensor {name:?}: {e}")))?;
        let values: Vec<f32> = read.as_array().iter().copied().collect();
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(InvalidUpdate::new_err(format!(
                "model.initial: tensor {name:?} has a non-finite value ({v}) at flat index {i}"
            )));
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, array.shape().to_vec(), bytes));
    }
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.as_str(), v))
                .map_err(|e| InvalidUpdate::new_err(format!("model.initial: tensor {n:?}: {e}")))
        })
        .collect::<PyResult<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| FlotillaError::new_err(format!("writing {}: {e}", path.display())))
}
