//! Error feedback for top-k: the client adds what it has not sent yet to its next update, and keeps
//! what it does not send this time. The residual lives with the client between rounds (its state
//! directory, as SCAFFOLD's control variate does), serialised by [`ErrorFeedback::to_bytes`].

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::{Compression, EncodeError, Encoded, MAX_DIM, encode, topk};

/// Magic and version of [`ErrorFeedback::to_bytes`].
const MAGIC: &[u8; 4] = b"FLEF";
const VERSION: u8 = 1;

/// A client's error-feedback residual: the part of its corrected updates it has not sent.
///
/// With top-k, `encode` sends the top coordinates of `update + residual` and keeps the others as
/// the new residual, so `sent + new residual == update + old residual` exactly (each coordinate
/// is either sent or kept, never split). With `None` or `Quantize` (unbiased already) the residual
/// is neither used nor changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorFeedback {
    /// What has not been sent, one value per coordinate (empty before the first update).
    pub residual: Vec<f32>,
}

/// A stored residual that cannot be read back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    /// Not a residual file of this version, or cut short / too long.
    #[error("not an error-feedback residual: {0}")]
    Format(&'static str),
    /// A stored value is not finite.
    #[error("error-feedback residual value {0} is not finite")]
    NotFinite(usize),
}

impl ErrorFeedback {
    /// A zero residual for updates of `dim` coordinates.
    pub fn new(dim: usize) -> Self {
        Self {
            residual: vec![0.0; dim],
        }
    }

    /// Encodes `update` with `compression`; under top-k, with error feedback (see the type docs).
    /// An empty residual starts at zero; one of another dimension is an error (the caller decides
    /// whether to reset it, e.g. when the job's model changed).
    pub fn encode<R: Rng + ?Sized>(
        &mut self,
        update: &[f32],
        compression: &Compression,
        rng: &mut R,
    ) -> Result<Encoded, EncodeError> {
        let Compression::TopK { fraction } = *compression else {
            return encode(update, compression, rng);
        };
        compression.validate()?;
        if self.residual.is_empty() {
            self.residual = vec![0.0; update.len()];
        }
        if self.residual.len() != update.len() {
            return Err(EncodeError::DimensionMismatch {
                residual: self.residual.len(),
                update: update.len(),
            });
        }
        let corrected: Vec<f32> = update
            .iter()
            .zip(&self.residual)
            .map(|(u, r)| u + r)
            .collect();
        crate::check_update(&corrected)?;
        let chosen = topk::select(&corrected, topk::k_for(fraction, corrected.len()));
        let mut bytes = Vec::with_capacity(compression.encoded_len(update.len()).unwrap_or(0));
        crate::write_prefix(&mut bytes, crate::KIND_TOPK, corrected.len());
        topk::write(&corrected, &chosen, &mut bytes);
        // Only now, with the encoding made, does the residual change.
        self.residual = corrected;
        for &i in &chosen {
            self.residual[i as usize] = 0.0;
        }
        Ok(Encoded { bytes })
    }

    /// The residual as bytes for the client's state directory: `FLEF`, version 1, the length as
    /// u32 and the values as `f32`, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(9 + 4 * self.residual.len());
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        // A residual is as long as an update, ≤ MAX_DIM < 2^32.
        b.extend_from_slice(&(self.residual.len() as u32).to_le_bytes());
        for v in &self.residual {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Reads [`ErrorFeedback::to_bytes`]'s output back, validating magic, version, length and
    /// finiteness.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FeedbackError> {
        let Some((head, body)) = bytes.split_at_checked(9) else {
            return Err(FeedbackError::Format("shorter than its header"));
        };
        if &head[..4] != MAGIC || head[4] != VERSION {
            return Err(FeedbackError::Format("bad magic or version"));
        }
        let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if len > MAX_DIM || body.len() != 4 * len {
            return Err(FeedbackError::Format("length does not match the values"));
        }
        let mut residual = Vec::with_capacity(len);
        for (i, b) in body.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !v.is_finite() {
                return Err(FeedbackError::NotFinite(i));
            }
            residual.push(v);
        }
        Ok(Self { residual })
    }
}
