//! Update compression for Flotilla, sans-IO: what a client does to its update before it leaves the
//! device, and what the server does to turn the bytes back into a dense `f32` vector.
//!
//! Three kinds, negotiated per job ([`Compression`]):
//!
//! - **`None`**: the update as little-endian `f32`s (4 bytes per coordinate).
//! - **`Quantize { bits: 8 | 4, block }`**: stochastic uniform quantization (QSGD-style, Alistarh et
//!   al. 2017; the 8/4-bit quantizers of NVIDIA FLARE). The update is cut into blocks of `block`
//!   coordinates; each block sends its minimum `lo` and step `s = (max − lo)/(2^bits − 1)` (two
//!   `f32`s) and one code `c ∈ 0..2^bits` per coordinate. A coordinate `x` with `t = (x − lo)/s`
//!   is sent as `⌊t⌋ + 1` with probability `t − ⌊t⌋` and `⌊t⌋` otherwise, so
//!   `E[lo + c·s] = lo + t·s = x`: the decoded update is **unbiased** and the server's mean of many
//!   clients' decoded updates is an unbiased estimate of the mean of their true updates. Variance
//!   per coordinate is at most `s²/4`.
//! - **`TopK { fraction }`**: the `⌈fraction·D⌉` coordinates of largest magnitude, sent as
//!   (index, value) pairs. Biased on its own; the client keeps what it did not send in an
//!   [`ErrorFeedback`] residual and adds it to its next update (Stich, Cordonnier, Jaggi 2018;
//!   Karimireddy et al. 2019), so nothing is lost, only delayed.
//!
//! Randomness comes from the caller (any `rand_core::Rng`, seeded by the caller): this crate
//! has no global RNG, no I/O, no clock and no threads.
//!
//! # Wire format (version 1)
//!
//! All integers and floats little-endian. A header, then a body whose length the header fixes:
//!
//! ```text
//! offset size  field
//! 0      1     format version = 1
//! 1      1     kind: 0 = none, 1 = quantize, 2 = topk
//! 2      4     D, the update's dimension (u32, ≤ flotilla_core::limits::MAX_MODEL_PARAMS)
//! kind none:     body = D × f32
//! kind quantize: 6 1 bits (8 or 4), 7 4 block B (u32, 1..=MAX_BLOCK);
//!                body = ⌈D/B⌉ blocks, each: lo f32, step f32, ⌈n·bits/8⌉ bytes of codes
//!                (n = B, or the tail's length for the last block; 4-bit codes two per byte,
//!                the even coordinate in the low nibble; an odd block's last high nibble is 0)
//! kind topk:     6 4 k (u32, ≤ D); body = k × (index u32, value f32), indices strictly increasing
//! ```
//!
//! Each block or entry is self-contained, so [`StreamDecoder`] decodes a byte stream chunk by chunk
//! into the caller's buffer, holding at most one partial block. Everything is validated: version,
//! kind, bits, block size, dimension (against the one expected and the ceiling), finiteness of every
//! scale and value, decoded block range finite, indices in range and strictly increasing, zero
//! padding, exact length. A refused input returns a [`DecodeError`], never panics.

#![forbid(unsafe_code)]

mod decode;
mod feedback;
mod quantize;
mod topk;

pub use decode::{StreamDecoder, decode_into};
pub use feedback::{ErrorFeedback, FeedbackError};

use rand_core::Rng;
use serde::{Deserialize, Serialize};

/// The format version this crate writes (byte 0 of every encoding).
pub const FORMAT_VERSION: u8 = 1;
/// Largest dimension an encoding may declare: the largest model Flotilla accepts.
pub const MAX_DIM: usize = flotilla_core::limits::MAX_MODEL_PARAMS as usize;
/// Largest quantization block (bounds the decoder's carry buffer: one block, ≤ 1 MiB + 8 bytes).
/// Error messages spell the ceilings out; `tests::messages_match_the_constants` keeps them in step.
pub const MAX_BLOCK: usize = 1 << 20;
/// The block size when a job gives none: 1,024 coordinates, 8 bytes of scale per block
/// (≈ 0.8% over the codes).
pub const DEFAULT_BLOCK: usize = 1024;
/// Largest magnitude a coordinate may have to be encoded: far beyond any model update, and small
/// enough that a block's `lo + (2^bits − 1)·step` cannot overflow `f32`.
pub const MAX_ABS_VALUE: f32 = 1e30;

const KIND_NONE: u8 = 0;
const KIND_QUANTIZE: u8 = 1;
const KIND_TOPK: u8 = 2;
/// Version, kind, dimension.
const PREFIX_LEN: usize = 6;

/// How a job's updates are compressed (`[compression]` in a job spec).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Compression {
    /// Dense little-endian `f32`s.
    None,
    /// Stochastic uniform quantization with a per-block min/max scale; unbiased.
    Quantize {
        /// Bits per coordinate: 8 or 4.
        bits: u8,
        /// Coordinates per block (each block carries its own `lo` and `step`).
        block: usize,
    },
    /// Top-k by magnitude, sparse (index, value) pairs; pair it with [`ErrorFeedback`].
    #[serde(rename = "topk")]
    TopK {
        /// Share of coordinates sent, in `(0, 1]`.
        fraction: f64,
    },
}

/// A [`Compression`] that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `bits` is not 8 or 4.
    #[error("bits must be 8 or 4, got {0}")]
    Bits(u8),
    /// `block` is outside `1..=MAX_BLOCK`.
    #[error("block must be in 1..=1048576, got {0}")]
    Block(usize),
    /// `fraction` is not in `(0, 1]`.
    #[error("fraction must be in (0, 1], got {0}")]
    Fraction(f64),
}

impl Compression {
    /// 8-bit quantization with [`DEFAULT_BLOCK`].
    pub const Q8: Self = Self::Quantize {
        bits: 8,
        block: DEFAULT_BLOCK,
    };

    /// Checks the parameters' ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Self::None => Ok(()),
            Self::Quantize { bits, block } => {
                if bits != 8 && bits != 4 {
                    return Err(ConfigError::Bits(bits));
                }
                if block == 0 || block > MAX_BLOCK {
                    return Err(ConfigError::Block(block));
                }
                Ok(())
            }
            Self::TopK { fraction } => {
                if fraction.is_finite() && fraction > 0.0 && fraction <= 1.0 {
                    Ok(())
                } else {
                    Err(ConfigError::Fraction(fraction))
                }
            }
        }
    }

    /// The exact encoded size in bytes of an update of `dim` coordinates (what [`encode`] returns),
    /// or `None` if the parameters are invalid.
    pub fn encoded_len(&self, dim: usize) -> Option<usize> {
        self.validate().ok()?;
        Some(match *self {
            Self::None => PREFIX_LEN + 4 * dim,
            Self::Quantize { bits, block } => {
                let full = dim / block;
                let tail = dim % block;
                let per = |n: usize| 8 + (n * bits as usize).div_ceil(8);
                PREFIX_LEN + 5 + full * per(block) + if tail > 0 { per(tail) } else { 0 }
            }
            Self::TopK { fraction } => PREFIX_LEN + 4 + 8 * topk::k_for(fraction, dim),
        })
    }

    /// The name of the kind as written in a job spec (`none`, `quantize`, `topk`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Quantize { .. } => "quantize",
            Self::TopK { .. } => "topk",
        }
    }
}

/// An encoded update: the bytes of the wire format (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Header and body.
    pub bytes: Vec<u8>,
}

impl Encoded {
    /// Size on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true for a valid encoding (the header is always there); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Why an update could not be encoded (a client-side error: the update or the config is wrong).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The compression parameters are out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A coordinate is NaN, infinite or beyond [`MAX_ABS_VALUE`].
    #[error("coordinate {index} is {value}: updates must be finite and within ±1e30")]
    NotFinite {
        /// Its position.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// More coordinates than [`MAX_DIM`].
    #[error("the update has {0} coordinates, more than the 2^28 allowed")]
    TooLarge(usize),
    /// An error-feedback residual of another dimension.
    #[error("the error-feedback residual has {residual} coordinates, the update {update}")]
    DimensionMismatch {
        /// The residual's length.
        residual: usize,
        /// The update's length.
        update: usize,
    },
}

/// Encodes `update` with `compression`, drawing the quantizer's randomness from `rng` (unused by
/// `None` and `TopK`). For top-k without losing the rest, use [`ErrorFeedback::encode`].
pub fn encode<R: Rng + ?Sized>(
    update: &[f32],
    compression: &Compression,
    rng: &mut R,
) -> Result<Encoded, EncodeError> {
    compression.validate()?;
    check_update(update)?;
    let mut bytes = Vec::with_capacity(compression.encoded_len(update.len()).unwrap_or(0));
    match *compression {
        Compression::None => {
            write_prefix(&mut bytes, KIND_NONE, update.len());
            for v in update {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        Compression::Quantize { bits, block } => {
            write_prefix(&mut bytes, KIND_QUANTIZE, update.len());
            bytes.push(bits);
            bytes.extend_from_slice(&(block as u32).to_le_bytes());
            quantize::encode_blocks(update, bits, block, rng, &mut bytes);
        }
        Compression::TopK { fraction } => {
            let chosen = topk::select(update, topk::k_for(fraction, update.len()));
            write_prefix(&mut bytes, KIND_TOPK, update.len());
            topk::write(update, &chosen, &mut bytes);
        }
    }
    Ok(Encoded { bytes })
}

/// Refuses non-finite or absurd coordinates and dimensions beyond [`MAX_DIM`].
fn check_update(update: &[f32]) -> Result<(), EncodeError> {
    if update.len() > MAX_DIM {
        return Err(EncodeError::TooLarge(update.len()));
    }
    match update
        .iter()
        .position(|v| !v.is_finite() || v.abs() > MAX_ABS_VALUE)
    {
        Some(index) => Err(EncodeError::NotFinite {
            index,
            value: update[index],
        }),
        None => Ok(()),
    }
}

fn write_prefix(bytes: &mut Vec<u8>, kind: u8, dim: usize) {
    bytes.push(FORMAT_VERSION);
    bytes.push(kind);
    // `check_update` bounded dim by MAX_DIM < 2^32.
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
}

/// Why bytes were refused by the decoder. Every variant is a malformed or unexpected input; the
/// decoder never panics on any byte string.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The version byte is not [`FORMAT_VERSION`].
    #[error("unsupported compression format version {0} (this build reads version 1)")]
    Version(u8),
    /// The kind byte is unknown.
    #[error("unknown compression kind {0}")]
    Kind(u8),
    /// The encoding is valid but not the one the job negotiated.
    #[error("the update is encoded as {got}, the job negotiated {expected}")]
    NotNegotiated {
        /// What the job asked for.
        expected: String,
        /// What the header says.
        got: String,
    },
    /// Quantization bits other than 8 or 4.
    #[error("quantization bits must be 8 or 4, got {0}")]
    Bits(u8),
    /// A block size outside `1..=MAX_BLOCK`.
    #[error("quantization block must be in 1..=1048576, got {0}")]
    Block(u32),
    /// The header's dimension is not the model's.
    #[error("the update has {got} coordinates, the model {expected}")]
    Dimension {
        /// The model's (the output buffer's) dimension.
        expected: usize,
        /// The header's.
        got: usize,
    },
    /// More top-k entries than coordinates.
    #[error("{k} top-k entries for {dim} coordinates")]
    TooManyEntries {
        /// Entries declared.
        k: usize,
        /// Dimension.
        dim: usize,
    },
    /// A block's `lo` or `step` is not finite, `step` is negative, or its top value overflows.
    #[error("quantization block {block} has an invalid scale (lo {lo}, step {step})")]
    Scale {
        /// Block index.
        block: usize,
        /// Its minimum.
        lo: f32,
        /// Its step.
        step: f32,
    },
    /// An odd 4-bit block's padding nibble is not zero.
    #[error("quantization block {0} has non-zero padding")]
    Padding(usize),
    /// A dense or top-k value is NaN or infinite.
    #[error("value at coordinate {0} is not finite")]
    NotFinite(usize),
    /// A top-k index at or beyond the dimension.
    #[error("top-k index {index} is out of range for {dim} coordinates")]
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// Dimension.
        dim: usize,
    },
    /// A top-k index not greater than the one before it.
    #[error("top-k index {index} follows {previous}: indices must be strictly increasing")]
    IndexOrder {
        /// The index.
        index: u32,
        /// The previous index.
        previous: u32,
    },
    /// The bytes ended before the header's length.
    #[error("truncated: {missing} more bytes expected")]
    Truncated {
        /// Bytes still expected (of the unit being read).
        missing: usize,
    },
    /// Bytes after the body's end.
    #[error("{0} bytes after the end of the encoding")]
    Trailing(usize),
    /// The decoder refused an earlier chunk; it reads nothing more.
    #[error("the decoder already refused this stream")]
    Poisoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_constants() {
        assert_eq!(MAX_BLOCK, 1_048_576);
        assert_eq!(MAX_DIM, 1 << 28);
        assert_eq!(MAX_ABS_VALUE, 1e30);
        assert_eq!(FORMAT_VERSION, 1);
    }
}
