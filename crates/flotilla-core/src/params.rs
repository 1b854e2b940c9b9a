//! Flat parameter vectors and their named, stable layout.
//!
//! Every model in Flotilla is exchanged as one flat `f32` vector. The [`ParamLayout`] names the tensors
//! inside it, in order, so that two parties can check they agree on what the numbers mean before any
//! arithmetic touches them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One named tensor inside a flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Stable, unique name such as `fc1.weight`.
    pub name: String,
    /// Shape in row-major order; the tensor occupies `shape.iter().product()` values.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Creates a spec from a name and a shape.
    pub fn new(name: impl Into<String>, shape: impl Into<Vec<usize>>) -> Self {
        Self {
            name: name.into(),
            shape: shape.into(),
        }
    }

    /// Number of scalar values in this tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered list of tensors that make up a model's flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ParamLayout {
    /// Tensors in the order they are laid out in the flat vector.
    pub tensors: Vec<TensorSpec>,
}

impl ParamLayout {
    /// Creates a layout from tensor specs in order.
    pub fn new(tensors: Vec<TensorSpec>) -> Self {
        Self { tensors }
    }

    /// Total number of scalar values in the flat vector.
    pub fn len(&self) -> usize {
        self.tensors.iter().map(TensorSpec::numel).sum()
    }

    /// Whether the layout holds no values at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(spec, start offset)` for each tensor, in order.
    pub fn offsets(&self) -> impl Iterator<Item = (&TensorSpec, usize)> {
        self.tensors.iter().scan(0usize, |off, t| {
            let start = *off;
            *off += t.numel();
            Some((t, start))
        })
    }

    /// A short fingerprint of names and shapes, for cheap layout comparison across the wire.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for t in &self.tensors {
            h.update((t.name.len() as u64).to_le_bytes());
            h.update(t.name.as_bytes());
            h.update((t.shape.len() as u64).to_le_bytes());
            for d in &t.shape {
                h.update((*d as u64).to_le_bytes());
            }
        }
        h.finalize().into()
    }
}

/// Parameters as their wire and blob encoding: little-endian `f32`, in order.
pub fn params_to_le_bytes(params: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * params.len());
    for v in params {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The inverse of [`params_to_le_bytes`]; `None` if the length is not a multiple of 4.
pub fn params_from_le_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// SHA-256 of parameters as little-endian `f32` bytes: the identity of a model version (and the
/// digest a wire payload carries). Hashed in blocks, so no second copy of the model is made.
pub fn params_digest(params: &[f32]) -> [u8; 32] {
    let mut h = Sha256::new();
    for block in params.chunks(4096) {
        h.update(params_to_le_bytes(block));
    }
    h.finalize().into()
}

/// [`params_digest`], hex encoded: the `model_sha256` users see.
pub fn params_sha256(params: &[f32]) -> String {
    hex::encode(params_digest(params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_len() {
        let l = ParamLayout::new(vec![
            TensorSpec::new("w", [3, 2]),
            TensorSpec::new("b", [2]),
        ]);
        assert_eq!(l.len(), 8);
        let offs: Vec<_> = l.offsets().map(|(t, o)| (t.name.clone(), o)).collect();
        assert_eq!(offs, vec![("w".into(), 0), ("b".into(), 6)]);
    }

    #[test]
    fn fingerprint_distinguishes_shapes() {
        let a = ParamLayout::new(vec![TensorSpec::new("w", [3, 2])]);
        let b = ParamLayout::new(vec![TensorSpec::new("w", [2, 3])]);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn le_bytes_round_trip() {
        let p = [1.5f32, -0.0, f32::MAX, 3.25e-20];
        let b = params_to_le_bytes(&p);
        assert_eq!(&b[..4], &1.5f32.to_le_bytes());
        let back = params_from_le_bytes(&b).unwrap();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            p.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(params_from_le_bytes(&b[..5]).is_none());
    }

    #[test]
    fn sha_of_known_vector() {
        // sha256 of 8 zero bytes
        assert_eq!(
            params_sha256(&[0.0, 0.0]),
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
    }
}
