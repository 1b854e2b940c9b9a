//! A job's model given as a file (`[model] initial`): the safetensors bytes submitted with the job
//! (the `initial` part of `POST /v1/jobs`), checked and turned into a layout and initial
//! parameters. No model provider is asked for such a job: the coordinator aggregates it by its
//! layout alone.
//!
//! The layout's order is the order of the tensors' data in the file (safetensors' own order;
//! Python's `save_file` writes them sorted by name), so the same file always gives the same
//! layout, and `flotilla job download` gives the tensors back under the file's names.

use flotilla_core::{ParamLayout, TensorSpec, limits};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use crate::models::JobModel;

/// Why a submitted initial model was refused: one line naming `model.initial` and, where there is
/// one, the tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InitialModelError {
    /// Not a safetensors file (header, offsets or length wrong).
    #[error(
        "model.initial: not a valid safetensors file ({0}); write it with safetensors' save_file"
    )]
    NotSafetensors(String),
    /// The file holds no tensor.
    #[error("model.initial: the file holds no tensors; save the model's parameters into it")]
    NoTensors,
    /// A tensor of another dtype than F32.
    #[error(
        "model.initial: tensor {name:?} is {dtype}; only F32 tensors are supported: convert with \
         .float() or astype(numpy.float32)"
    )]
    NotF32 {
        /// The tensor.
        name: String,
        /// Its dtype, as safetensors names it.
        dtype: String,
    },
    /// A tensor with no values.
    #[error(
        "model.initial: tensor {name:?} has shape {shape:?}, no values; remove it from the file"
    )]
    Empty {
        /// The tensor.
        name: String,
        /// Its shape (one dimension is 0).
        shape: Vec<usize>,
    },
    /// A NaN or infinite value.
    #[error(
        "model.initial: tensor {name:?} has a non-finite value ({value}) at flat index {index}; \
         initial parameters must be finite"
    )]
    NonFinite {
        /// The tensor.
        name: String,
        /// Row-major index inside the tensor.
        index: usize,
        /// The value (`NaN`, `inf`, `-inf`).
        value: f32,
    },
    /// More values than a model may have.
    #[error(
        "model.initial: the file holds {values} values; a model may have at most {max} \
         (flotilla_core::limits::MAX_MODEL_PARAMS)"
    )]
    TooLarge {
        /// Values in the file.
        values: u64,
        /// The ceiling.
        max: u64,
    },
    /// A tensor name the layout refuses (empty, too long, or too many tensors).
    #[error("model.initial: {0}")]
    Name(String),
}

/// Checks `bytes` (a safetensors file) and returns its layout (tensors in the order of their data)
/// and its parameters, flat, in that order.
pub fn parse(bytes: &[u8]) -> Result<JobModel, InitialModelError> {
    parse_with_limit(bytes, limits::MAX_MODEL_PARAMS)
}

/// [`parse`] with a ceiling of `max_values` values.
fn parse_with_limit(bytes: &[u8], max_values: u64) -> Result<JobModel, InitialModelError> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| InitialModelError::NotSafetensors(one_line(&e.to_string())))?;
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| InitialModelError::NotSafetensors(one_line(&e.to_string())))?;
    // Names in the order of their data (the header's JSON object has no order of its own).
    let names = metadata.offset_keys();
    if names.is_empty() {
        return Err(InitialModelError::NoTensors);
    }
    if names.len() > flotilla_proto::MAX_TENSORS {
        return Err(InitialModelError::Name(format!(
            "the file holds {} tensors; a model may have at most {}",
            names.len(),
            flotilla_proto::MAX_TENSORS
        )));
    }
    // Every tensor is checked before anything is allocated for the values.
    let mut values: u64 = 0;
    let mut tensors = Vec::with_capacity(names.len());
    for name in &names {
        if name.is_empty() || name.len() > flotilla_proto::MAX_NAME_LEN {
            return Err(InitialModelError::Name(format!(
                "tensor name {:?} must be 1 to {} bytes",
                name.chars().take(64).collect::<String>(),
                flotilla_proto::MAX_NAME_LEN
            )));
        }
        let view = file
            .tensor(name)
            .map_err(|e| InitialModelError::NotSafetensors(one_line(&e.to_string())))?;
        if view.dtype() != Dtype::F32 {
            return Err(InitialModelError::NotF32 {
                name: name.clone(),
                dtype: view.dtype().to_string(),
            });
        }
        let shape = view.shape().to_vec();
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        if numel == 0 {
            return Err(InitialModelError::Empty {
                name: name.clone(),
                shape,
            });
        }
        values = values.saturating_add(numel);
        tensors.push((name, view, shape));
    }
    if values > max_values {
        return Err(InitialModelError::TooLarge {
            values,
            max: max_values,
        });
    }
    let mut params = Vec::with_capacity(values as usize);
    let mut layout = Vec::with_capacity(tensors.len());
    for (name, view, shape) in tensors {
        for (index, chunk) in view.data().chunks_exact(4).enumerate() {
            let value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if !value.is_finite() {
                return Err(InitialModelError::NonFinite {
                    name: name.clone(),
                    index,
                    value,
                });
            }
            params.push(value);
        }
        layout.push(TensorSpec::new(name.clone(), shape));
    }
    Ok(JobModel {
        layout: ParamLayout::new(layout),
        initial: params,
    })
}

/// The data section of a file [`parse`] accepted: its parameters as little-endian `f32` in layout
/// order (safetensors stores the tensors' data back to back in that order, with no gap), made from
/// `bytes` in place.
pub fn data_section(mut bytes: Vec<u8>) -> Vec<u8> {
    let header = bytes
        .get(..8)
        .and_then(|n| <[u8; 8]>::try_from(n).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .map_or(bytes.len(), |n| n.saturating_add(8).min(bytes.len()));
    bytes.drain(..header);
    bytes
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::TensorView;

    use super::*;

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A file of `(name, dtype, shape, bytes)` tensors.
    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| ((*n).to_owned(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn err(bytes: &[u8]) -> String {
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.starts_with("model.initial: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn a_file_gives_its_layout_in_data_order_and_its_values() {
        let w: Vec<f32> = (0..640).map(|i| i as f32 / 640.0).collect();
        let b: Vec<f32> = (0..10).map(|i| -(i as f32)).collect();
        let bytes = file(&[
            ("fc.weight", Dtype::F32, vec![10, 64], le(&w)),
            ("fc.bias", Dtype::F32, vec![10], le(&b)),
        ]);
        let m = parse(&bytes).unwrap();
        // safetensors writes the data sorted by name: bias first.
        let names: Vec<&str> = m.layout.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["fc.bias", "fc.weight"]);
        assert_eq!(m.layout.tensors[1].shape, vec![10, 64]);
        assert_eq!(m.layout.len(), 650);
        assert_eq!(&m.initial[..10], &b[..]);
        assert_eq!(&m.initial[10..], &w[..]);
        assert_eq!(
            data_section(bytes),
            flotilla_core::params_to_le_bytes(&m.initial)
        );
        // A scalar tensor has one value.
        let m = parse(&file(&[("scale", Dtype::F32, vec![], le(&[2.0]))])).unwrap();
        assert_eq!(m.initial, vec![2.0]);
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_refused() {
        assert!(err(b"").contains("not a valid safetensors file"));
        assert!(err(b"hello world, not a model").contains("not a valid safetensors file"));
        let mut cut = file(&[("w", Dtype::F32, vec![4], le(&[1.0; 4]))]);
        cut.pop();
        assert!(err(&cut).contains("not a valid safetensors file"));
    }

    #[test]
    fn other_dtypes_are_refused_naming_the_tensor() {
        let e = err(&file(&[
            ("fc.bias", Dtype::F32, vec![2], le(&[0.0, 1.0])),
            ("fc.weight", Dtype::F64, vec![2], vec![0; 16]),
        ]));
        assert_eq!(
            e,
            "model.initial: tensor \"fc.weight\" is F64; only F32 tensors are supported: convert \
             with .float() or astype(numpy.float32)"
        );
        assert!(err(&file(&[("h", Dtype::F16, vec![2], vec![0; 4])])).contains("\"h\" is F16"));
    }

    #[test]
    fn empty_tensors_and_empty_files_are_refused() {
        let e = err(&file(&[
            ("a", Dtype::F32, vec![2], le(&[0.0, 1.0])),
            ("b", Dtype::F32, vec![3, 0], vec![]),
        ]));
        assert!(
            e.contains("tensor \"b\" has shape [3, 0], no values"),
            "{e}"
        );
        let none: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        assert!(err(&file(&none)).contains("no tensors"));
    }

    #[test]
    fn non_finite_values_are_refused_with_the_tensor_and_index() {
        let e = err(&file(&[(
            "fc.weight",
            Dtype::F32,
            vec![2, 2],
            le(&[0.0, 1.0, f32::NAN, 3.0]),
        )]));
        assert!(
            e.contains("tensor \"fc.weight\" has a non-finite value (NaN) at flat index 2"),
            "{e}"
        );
        let e = err(&file(&[("b", Dtype::F32, vec![1], le(&[f32::INFINITY]))]));
        assert!(e.contains("(inf) at flat index 0"), "{e}");
    }

    #[test]
    fn names_the_layout_refuses_are_refused() {
        let long = "x".repeat(flotilla_proto::MAX_NAME_LEN + 1);
        let e = err(&file(&[(&long, Dtype::F32, vec![1], le(&[0.0]))]));
        assert!(e.contains("must be 1 to 256 bytes"), "{e}");
        let e = err(&file(&[("", Dtype::F32, vec![1], le(&[0.0]))]));
        assert!(e.contains("tensor name \"\""), "{e}");
    }

    #[test]
    fn more_values_than_a_model_may_have_are_refused() {
        let bytes = file(&[
            ("a", Dtype::F32, vec![3], le(&[0.0; 3])),
            ("b", Dtype::F32, vec![2], le(&[0.0; 2])),
        ]);
        assert_eq!(parse_with_limit(&bytes, 5).unwrap().initial.len(), 5);
        let e = parse_with_limit(&bytes, 4).unwrap_err().to_string();
        assert!(
            e.starts_with("model.initial: the file holds 5 values; a model may have at most 4"),
            "{e}"
        );
    }
}
