//! Conversions between wire messages and `flotilla-core` types, and payload checksums.

use std::collections::HashSet;

use flotilla_compress::Compression;
use flotilla_core::round::StageKind;
use flotilla_core::{ParamLayout, TensorSpec};

use crate::error::{LayoutError, ModelInfoError, quote};
use crate::v1;

/// Most tensors a layout received from the wire may have.
pub const MAX_TENSORS: usize = 65_536;
/// Longest tensor or metric name accepted from the wire, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// SHA-256 of `params` encoded as the wire payload (little-endian `f32`, in order).
///
/// `hex(&payload_sha256(p))` equals `flotilla_core::params_sha256(p)`.
pub fn payload_sha256(params: &[f32]) -> [u8; 32] {
    flotilla_core::params_digest(params)
}

/// Lower-case hexadecimal encoding of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Wire form of a layout.
pub fn layout_to_proto(layout: &ParamLayout) -> v1::ParamLayout {
    v1::ParamLayout {
        tensors: layout
            .tensors
            .iter()
            .map(|t| v1::TensorSpec {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
            })
            .collect(),
    }
}

/// Checked conversion of a layout received from the wire.
///
/// Refuses more than [`MAX_TENSORS`] tensors, empty, over-long ([`MAX_NAME_LEN`]) or duplicate names,
/// and layouts whose number of values overflows or exceeds `max_values`. On success
/// `ParamLayout::len` of the result cannot overflow.
pub fn layout_from_proto(
    layout: &v1::ParamLayout,
    max_values: u64,
) -> Result<ParamLayout, LayoutError> {
    if layout.tensors.len() > MAX_TENSORS {
        return Err(LayoutError::TooManyTensors {
            got: layout.tensors.len(),
            max: MAX_TENSORS,
        });
    }
    let mut names = HashSet::with_capacity(layout.tensors.len());
    let mut total: u64 = 0;
    let mut tensors = Vec::with_capacity(layout.tensors.len());
    let too_many = LayoutError::TooManyValues { max: max_values };
    for t in &layout.tensors {
        if t.name.is_empty() || t.name.len() > MAX_NAME_LEN {
            return Err(LayoutError::BadName(quote(&t.name)));
        }
        if !names.insert(t.name.as_str()) {
            return Err(LayoutError::DuplicateName(quote(&t.name)));
        }
        let mut numel: u64 = 1;
        let mut shape = Vec::with_capacity(t.shape.len());
        for &d in &t.shape {
            numel = numel.checked_mul(d).ok_or_else(|| too_many.clone())?;
            shape.push(usize::try_from(d).map_err(|_| too_many.clone())?);
        }
        total = total
            .checked_add(numel)
            .filter(|&n| n <= max_values)
            .ok_or_else(|| too_many.clone())?;
        tensors.push(TensorSpec::new(t.name.clone(), shape));
    }
    // `ParamLayout::len` sums in `usize`; make sure that cannot overflow either.
    usize::try_from(total).map_err(|_| too_many)?;
    Ok(ParamLayout::new(tensors))
}

/// The layout an upload must match: number of `f32` values and [`ParamLayout::fingerprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExpectedLayout {
    /// Number of `f32` values in the flat vector.
    pub len: u64,
    /// `ParamLayout::fingerprint` of the layout.
    pub fingerprint: [u8; 32],
}

impl ExpectedLayout {
    /// Expectation for `layout`.
    pub fn of(layout: &ParamLayout) -> Self {
        Self {
            len: layout.len() as u64,
            fingerprint: layout.fingerprint(),
        }
    }

    /// Payload size in bytes (4 × `len`), or `None` if that overflows.
    pub fn payload_bytes(&self) -> Option<u64> {
        self.len.checked_mul(4)
    }
}

/// Describes a model version for [`v1::Task::model`]: size, layout, layout fingerprint and
/// payload SHA-256 of `params`.
///
/// `params.len()` should equal `layout.len()`; this is the sender's responsibility (the receiver
/// checks it). `spec` (what architecture to build) is left empty for the caller to set.
pub fn model_info(layout: &ParamLayout, params: &[f32]) -> v1::ModelInfo {
    v1::ModelInfo {
        size_bytes: 4 * params.len() as u64,
        layout: Some(layout_to_proto(layout)),
        sha256: payload_sha256(params).to_vec(),
        layout_fingerprint: layout.fingerprint().to_vec(),
        spec: None,
    }
}

/// Validated view of a [`v1::ModelInfo`]: core layout, size and SHA-256.
pub(crate) struct CheckedModelInfo {
    pub layout: ParamLayout,
    pub size_bytes: u64,
    pub sha256: [u8; 32],
}

impl CheckedModelInfo {
    pub(crate) fn new(info: &v1::ModelInfo, max_bytes: u64) -> Result<Self, ModelInfoError> {
        let sha256: [u8; 32] = info
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| ModelInfoError::BadShaLength(info.sha256.len()))?;
        if info.size_bytes > max_bytes {
            return Err(ModelInfoError::TooLarge {
                got: info.size_bytes,
                max: max_bytes,
            });
        }
        let wire = info.layout.as_ref().ok_or(ModelInfoError::MissingLayout)?;
        let layout = layout_from_proto(wire, max_bytes / 4)?;
        // Cannot overflow: layout_from_proto bounded the number of values by max_bytes / 4.
        let expected = 4 * layout.len() as u64;
        if info.size_bytes != expected {
            return Err(ModelInfoError::SizeMismatch {
                got: info.size_bytes,
                expected,
            });
        }
        Ok(Self {
            layout,
            size_bytes: info.size_bytes,
            sha256,
        })
    }
}

impl From<StageKind> for v1::Stage {
    fn from(kind: StageKind) -> Self {
        match kind {
            StageKind::Train => v1::Stage::Train,
            StageKind::AdvertiseKeys => v1::Stage::AdvertiseKeys,
            StageKind::ShareKeys => v1::Stage::ShareKeys,
            StageKind::MaskedInput => v1::Stage::MaskedInput,
            StageKind::Unmasking => v1::Stage::Unmasking,
        }
    }
}

impl TryFrom<v1::Stage> for StageKind {
    /// The stage, which `flotilla-core` does not know (`STAGE_UNSPECIFIED`).
    type Error = v1::Stage;

    fn try_from(stage: v1::Stage) -> Result<Self, Self::Error> {
        match stage {
            v1::Stage::Train => Ok(StageKind::Train),
            v1::Stage::AdvertiseKeys => Ok(StageKind::AdvertiseKeys),
            v1::Stage::ShareKeys => Ok(StageKind::ShareKeys),
            v1::Stage::MaskedInput => Ok(StageKind::MaskedInput),
            v1::Stage::Unmasking => Ok(StageKind::Unmasking),
            other => Err(other),
        }
    }
}

/// The [`v1::CompressionConfig`] a task carries for `c`; `None` for [`Compression::None`] (dense
/// uploads, as before compression existed).
pub fn compression_to_proto(c: &Compression) -> Option<v1::CompressionConfig> {
    match *c {
        Compression::None => None,
        Compression::Quantize { bits, block } => Some(v1::CompressionConfig {
            kind: v1::CompressionKind::Quantize as i32,
            bits: u32::from(bits),
            block: u32::try_from(block).unwrap_or(u32::MAX),
            fraction: 0.0,
        }),
        Compression::TopK { fraction } => Some(v1::CompressionConfig {
            kind: v1::CompressionKind::Topk as i32,
            bits: 0,
            block: 0,
            fraction,
        }),
    }
}

/// The compression a task's [`v1::CompressionConfig`] asks for, checked
/// ([`Compression::validate`]); absent is [`Compression::None`]. The error says what is wrong with
/// it, in one line (a client then uploads dense parameters, which every coordinator accepts).
pub fn compression_from_proto(c: Option<&v1::CompressionConfig>) -> Result<Compression, String> {
    let Some(c) = c else {
        return Ok(Compression::None);
    };
    let out = match v1::CompressionKind::try_from(c.kind) {
        Ok(v1::CompressionKind::None) => Compression::None,
        Ok(v1::CompressionKind::Quantize) => Compression::Quantize {
            bits: u8::try_from(c.bits).unwrap_or(0),
            block: c.block as usize,
        },
        Ok(v1::CompressionKind::Topk) => Compression::TopK {
            fraction: c.fraction,
        },
        Err(_) => return Err(format!("unknown compression kind {}", c.kind)),
    };
    out.validate().map_err(|e| format!("compression: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        ParamLayout::new(vec![
            TensorSpec::new("w", [3, 2]),
            TensorSpec::new("b", [2]),
        ])
    }

    #[test]
    fn sha_matches_core_identity() {
        let p = [1.0f32, -2.5, 0.0, f32::MIN_POSITIVE, 3.25e7];
        assert_eq!(hex(&payload_sha256(&p)), flotilla_core::params_sha256(&p));
        assert_eq!(hex(&payload_sha256(&[])), flotilla_core::params_sha256(&[]));
    }

    #[test]
    fn layout_round_trips() {
        let l = layout();
        let back = layout_from_proto(&layout_to_proto(&l), u64::MAX).unwrap();
        assert_eq!(back, l);
        assert_eq!(
            ExpectedLayout::of(&back),
            ExpectedLayout {
                len: 8,
                fingerprint: l.fingerprint()
            }
        );
    }

    #[test]
    fn layout_from_wire_is_checked() {
        let t = |name: &str, shape: Vec<u64>| v1::TensorSpec {
            name: name.into(),
            shape,
        };
        let wire = |ts| v1::ParamLayout { tensors: ts };
        assert_eq!(
            layout_from_proto(&wire(vec![t("", vec![1])]), 10),
            Err(LayoutError::BadName(String::new()))
        );
        assert_eq!(
            layout_from_proto(&wire(vec![t("a", vec![1]), t("a", vec![2])]), 10),
            Err(LayoutError::DuplicateName("a".into()))
        );
        assert_eq!(
            layout_from_proto(&wire(vec![t("a", vec![u64::MAX, 2])]), u64::MAX),
            Err(LayoutError::TooManyValues { max: u64::MAX })
        );
        assert_eq!(
            layout_from_proto(
                &wire(vec![t("a", vec![u64::MAX]), t("b", vec![1])]),
                u64::MAX
            ),
            Err(LayoutError::TooManyValues { max: u64::MAX })
        );
        assert_eq!(
            layout_from_proto(&wire(vec![t("a", vec![4, 3])]), 11),
            Err(LayoutError::TooManyValues { max: 11 })
        );
        let long = "é".repeat(200);
        let Err(LayoutError::BadName(q)) = layout_from_proto(&wire(vec![t(&long, vec![1])]), 10)
        else {
            panic!("long name accepted");
        };
        assert!(q.len() <= 64 + '…'.len_utf8());
    }

    #[test]
    fn model_info_checks() {
        let l = layout();
        let p = vec![0.5f32; 8];
        let info = model_info(&l, &p);
        let c = CheckedModelInfo::new(&info, 1 << 20).unwrap();
        assert_eq!(
            (c.size_bytes, c.layout, c.sha256),
            (32, l.clone(), payload_sha256(&p))
        );
        assert_eq!(info.layout_fingerprint, l.fingerprint().to_vec());

        let mut bad = info.clone();
        bad.size_bytes = 28;
        assert_eq!(
            CheckedModelInfo::new(&bad, 1 << 20).err(),
            Some(ModelInfoError::SizeMismatch {
                got: 28,
                expected: 32
            })
        );
        let mut bad = info.clone();
        bad.sha256.pop();
        assert_eq!(
            CheckedModelInfo::new(&bad, 1 << 20).err(),
            Some(ModelInfoError::BadShaLength(31))
        );
        let mut bad = info.clone();
        bad.layout = None;
        assert_eq!(
            CheckedModelInfo::new(&bad, 1 << 20).err(),
            Some(ModelInfoError::MissingLayout)
        );
        assert_eq!(
            CheckedModelInfo::new(&info, 31).err(),
            Some(ModelInfoError::TooLarge { got: 32, max: 31 })
        );
    }

    #[test]
    fn stage_conversions() {
        assert_eq!(v1::Stage::from(StageKind::Train), v1::Stage::Train);
        assert_eq!(StageKind::try_from(v1::Stage::Train), Ok(StageKind::Train));
        for kind in StageKind::SECURE_AGGREGATION {
            assert_eq!(StageKind::try_from(v1::Stage::from(kind)), Ok(kind));
        }
        assert_eq!(
            StageKind::try_from(v1::Stage::Unspecified),
            Err(v1::Stage::Unspecified)
        );
    }
}
