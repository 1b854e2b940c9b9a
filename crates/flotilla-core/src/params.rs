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
        Self { name: name.into(), shape: shape.into() }
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

/// SHA-256 of parameters as little-endian `f32` bytes, hex encoded: the identity of a model version.
pub fn params_sha256(params: &[f32]) -> String {
    let mut h = Sha256::new();
    for chunk in params.chunks(4096) {
        let mut buf = Vec::with_capacity(chunk.len() * 4);
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        h.update(&buf);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_len() {
        let l = ParamLayout::new(vec![TensorSpec::new("w", [3, 2]), TensorSpec::new("b", [2])]);
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
    fn sha_of_known_vector() {
        // sha256 of 8 zero bytes
        assert_eq!(
            params_sha256(&[0.0, 0.0]),
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
    }
}
