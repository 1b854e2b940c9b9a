//! Parameters across the boundary. The global model goes to Python as one float32 buffer (moved,
//! not copied) with a named, shaped view of it per tensor; what Python returns is checked against
//! the job's layout — names, dtype, shape, finiteness — before it becomes an update, and a
//! contiguous float32 array is read in place.

use flotilla_core::ParamLayout;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySlice, PyTuple};

use crate::errors::InvalidUpdate;

/// `{name: numpy.ndarray}` in layout order, every array a writable view into one buffer holding
/// `flat`.
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    layout: &ParamLayout,
    flat: Vec<f32>,
) -> PyResult<Bound<'py, PyDict>> {
    let buffer = PyArray1::from_vec(py, flat);
    let dict = PyDict::new(py);
    for (t, start) in layout.offsets() {
        let end = start + t.numel();
        let slice = PySlice::new(py, index(start)?, index(end)?, 1);
        let view = buffer.as_any().get_item(slice)?;
        let shape = PyTuple::new(py, t.shape.iter().copied())?;
        dict.set_item(&t.name, view.call_method1("reshape", (shape,))?)?;
    }
    Ok(dict)
}

fn index(i: usize) -> PyResult<isize> {
    isize::try_from(i).map_err(|_| InvalidUpdate::new_err(format!("offset {i} is too large")))
}

/// The flat update in layout order from `params`, a `{name: numpy.ndarray}` mapping that `what`
/// (e.g. `"fit"`) returned. Refused with [`InvalidUpdate`] naming the tensor: not a mapping, an
/// unknown or missing name, not a numpy array, a dtype other than float32, another shape, a
/// non-finite value.
pub(crate) fn from_python(
    params: &Bound<'_, PyAny>,
    layout: &ParamLayout,
    what: &str,
) -> PyResult<Vec<f32>> {
    let dict = params.cast::<PyDict>().map_err(|_| {
        InvalidUpdate::new_err(format!(
            "{what} returned params of type {}; return a dict of tensor name -> numpy.ndarray \
             (flotilla.torch.params_from_module converts a PyTorch module)",
            type_name(params)
        ))
    })?;
    for key in dict.keys() {
        let name: String = key.extract().map_err(|_| {
            InvalidUpdate::new_err(format!(
                "{what} returned a params key of type {}; tensor names are str",
                type_name(&key)
            ))
        })?;
        if !layout.tensors.iter().any(|t| t.name == name) {
            return Err(InvalidUpdate::new_err(format!(
                "{what} returned tensor {name:?}, which the job's model does not have (it has {})",
                names(layout)
            )));
        }
    }
    let mut flat = Vec::with_capacity(layout.len());
    for t in &layout.tensors {
        let value = dict.get_item(&t.name)?.ok_or_else(|| {
            InvalidUpdate::new_err(format!(
                "{what} returned no tensor {:?} (shape {:?}); return every tensor of the job's model",
                t.name, t.shape
            ))
        })?;
        let array = value.cast::<PyUntypedArray>().map_err(|_| {
            InvalidUpdate::new_err(format!(
                "tensor {:?} from {what} is a {}, not a numpy.ndarray (a torch tensor: \
                 .detach().cpu().numpy())",
                t.name,
                type_name(&value)
            ))
        })?;
        let typed = array.cast::<PyArrayDyn<f32>>().map_err(|_| {
            InvalidUpdate::new_err(format!(
                "tensor {:?} from {what} has dtype {}; return float32 (astype(numpy.float32))",
                t.name,
                array.dtype()
            ))
        })?;
        if array.shape() != t.shape.as_slice() {
            return Err(InvalidUpdate::new_err(format!(
                "tensor {:?} from {what} has shape {:?}; the job's model has {:?}",
                t.name,
                array.shape(),
                t.shape
            )));
        }
        let start = flat.len();
        let read = typed
            .try_readonly()
            .map_err(|e| InvalidUpdate::new_err(format!("tensor {:?} from {what}: {e}", t.name)))?;
        match read.as_slice() {
            Ok(values) => flat.extend_from_slice(values),
            // Not contiguous (a transposed view, say): read it element by element, in C order.
            Err(_) => flat.extend(read.as_array().iter().copied()),
        }
        if let Some((i, v)) = flat[start..]
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(InvalidUpdate::new_err(format!(
                "tensor {:?} from {what} has a non-finite value ({v}) at flat index {i}",
                t.name
            )));
        }
    }
    Ok(flat)
}

/// The tensor names of `layout`, for an error (at most 8).
fn names(layout: &ParamLayout) -> String {
    let mut s: Vec<String> = layout
        .tensors
        .iter()
        .take(8)
        .map(|t| format!("{:?}", t.name))
        .collect();
    if layout.tensors.len() > 8 {
        s.push(format!("… {} in all", layout.tensors.len()));
    }
    s.join(", ")
}

/// The Python type name of `v`, for an error.
pub(crate) fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}
