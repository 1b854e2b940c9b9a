//! The decoder: bytes in arbitrary chunks (as they come off the wire) straight into the caller's
//! dense `f32` buffer, so a server holds one buffer per upload and never a second dense copy.
//!
//! The decoder reads *units* — the header's two parts, then a quantization block, a run of top-k
//! entries or a run of dense values — and decodes each as soon as it is whole. A unit that lies
//! entirely inside a chunk is decoded in place; only a unit split across chunks is copied, into a
//! carry buffer of at most one unit (≤ 8 + [`MAX_BLOCK`] bytes). Every coordinate of the output is
//! written exactly once (top-k's unsent coordinates are written 0), so the buffer needs no clearing.

use crate::quantize::{code_bytes, decode_block};
use crate::topk::k_for;
use crate::{
    Compression, DecodeError, FORMAT_VERSION, KIND_NONE, KIND_QUANTIZE, KIND_TOPK, MAX_BLOCK,
    MAX_DIM, PREFIX_LEN,
};

/// Dense values decoded per unit (64 KiB of input).
const DENSE_RUN: usize = 16 * 1024;
/// Top-k entries decoded per unit (64 KiB of input).
const ENTRY_RUN: usize = 8 * 1024;

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Expecting version, kind and dimension.
    Prefix,
    /// Expecting the quantization header (bits, block).
    QuantizeHeader,
    /// Expecting the top-k header (k).
    TopKHeader,
    /// Dense values; `pos` coordinates written.
    Dense { pos: usize },
    /// Quantization blocks; `pos` coordinates written.
    Quantize { bits: u8, block: usize, pos: usize },
    /// Top-k entries; `read` of `k` read, coordinates below `pos` written.
    TopK {
        k: usize,
        read: usize,
        pos: usize,
        previous: Option<u32>,
    },
    /// Everything read and written.
    Done,
    /// A chunk was refused.
    Failed,
}

/// Decodes one encoded update delivered in chunks (see the module docs).
///
/// ```
/// # use flotilla_compress::{Compression, StreamDecoder, encode};
/// # use rand_chacha::rand_core::SeedableRng;
/// let update = vec![0.5f32, -1.0, 2.0, 0.0, 3.5];
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
/// let bytes = encode(&update, &Compression::Quantize { bits: 8, block: 2 }, &mut rng)?.bytes;
/// let mut out = vec![f32::NAN; update.len()];
/// let mut dec = StreamDecoder::new(update.len());
/// for piece in bytes.chunks(3) {
///     dec.feed(piece, &mut out)?;
/// }
/// dec.finish()?;
/// assert!(out.iter().zip(&update).all(|(o, u)| (o - u).abs() <= 4.5 / 255.0 + 1e-6));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    dim: usize,
    expected: Option<Compression>,
    state: State,
    carry: Vec<u8>,
    block_index: usize,
}

impl StreamDecoder {
    /// A decoder for an update of `dim` coordinates, accepting any valid encoding.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            expected: None,
            state: State::Prefix,
            carry: Vec::new(),
            block_index: 0,
        }
    }

    /// A decoder that also refuses any encoding but `negotiated` (kind, bits and block equal; for
    /// top-k, no more entries than `negotiated`'s fraction gives): what a job's server uses.
    pub fn expecting(dim: usize, negotiated: Compression) -> Self {
        Self {
            expected: Some(negotiated),
            ..Self::new(dim)
        }
    }

    /// Whether the whole encoding has been read and decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `chunk`, the next bytes of the stream, into `out` (the whole update's buffer, of the
    /// decoder's dimension). On an error the stream is refused for good and `out` holds a partial,
    /// meaningless result.
    pub fn feed(&mut self, chunk: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        if self.state == State::Failed {
            return Err(DecodeError::Poisoned);
        }
        let result = self.feed_inner(chunk, out);
        if result.is_err() {
            self.state = State::Failed;
            self.carry = Vec::new();
        }
        result
    }

    /// Checks that the stream ended exactly at the end of the encoding.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.state {
            State::Done => Ok(()),
            State::Failed => Err(DecodeError::Poisoned),
            _ => Err(DecodeError::Truncated {
                missing: self.unit_len().unwrap_or(0) - self.carry.len(),
            }),
        }
    }

    fn feed_inner(&mut self, mut chunk: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        if out.len() != self.dim {
            return Err(DecodeError::Dimension {
                expected: self.dim,
                got: out.len(),
            });
        }
        while !chunk.is_empty() {
            let Some(need) = self.unit_len() else {
                return Err(DecodeError::Trailing(chunk.len()));
            };
            if self.carry.is_empty() && chunk.len() >= need {
                let (unit, rest) = chunk.split_at(need);
                self.process(unit, out)?;
                chunk = rest;
            } else {
                let take = (need - self.carry.len()).min(chunk.len());
                self.carry.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.carry.len() == need {
                    let unit = std::mem::take(&mut self.carry);
                    self.process(&unit, out)?;
                    // Keep the allocation for the next split unit.
                    self.carry = unit;
                    self.carry.clear();
                }
            }
        }
        Ok(())
    }

    /// Bytes of the next unit, `None` when the encoding is complete.
    fn unit_len(&self) -> Option<usize> {
        match self.state {
            State::Prefix => Some(PREFIX_LEN),
            State::QuantizeHeader => Some(5),
            State::TopKHeader => Some(4),
            State::Dense { pos } => Some(4 * (self.dim - pos).min(DENSE_RUN)),
            State::Quantize { bits, block, pos } => {
                Some(8 + code_bytes((self.dim - pos).min(block), bits))
            }
            State::TopK { k, read, .. } => Some(8 * (k - read).min(ENTRY_RUN)),
            State::Done | State::Failed => None,
        }
    }

    /// Decodes one whole unit and moves to the next state.
    fn process(&mut self, unit: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        let u32_at =
            |i: usize| u32::from_le_bytes([unit[i], unit[i + 1], unit[i + 2], unit[i + 3]]);
        self.state = match self.state {
            State::Prefix => {
                if unit[0] != FORMAT_VERSION {
                    return Err(DecodeError::Version(unit[0]));
                }
                let got = u32_at(2) as usize;
                if got != self.dim || got > MAX_DIM {
                    return Err(DecodeError::Dimension {
                        expected: self.dim,
                        got,
                    });
                }
                match unit[1] {
                    KIND_NONE => {
                        self.check_negotiated(Compression::None, None)?;
                        State::Dense { pos: 0 }
                    }
                    KIND_QUANTIZE => State::QuantizeHeader,
                    KIND_TOPK => State::TopKHeader,
                    k => return Err(DecodeError::Kind(k)),
                }
            }
            State::QuantizeHeader => {
                let bits = unit[0];
                if bits != 8 && bits != 4 {
                    return Err(DecodeError::Bits(bits));
                }
                let block = u32_at(1);
                if block == 0 || block as usize > MAX_BLOCK {
                    return Err(DecodeError::Block(block));
                }
                let block = block as usize;
                self.check_negotiated(Compression::Quantize { bits, block }, None)?;
                State::Quantize {
                    bits,
                    block,
                    pos: 0,
                }
            }
            State::TopKHeader => {
                let k = u32_at(0) as usize;
                if k > self.dim {
                    return Err(DecodeError::TooManyEntries { k, dim: self.dim });
                }
                self.check_negotiated(Compression::TopK { fraction: 1.0 }, Some(k))?;
                State::TopK {
                    k,
                    read: 0,
                    pos: 0,
                    previous: None,
                }
            }
            State::Dense { pos } => {
                let n = unit.len() / 4;
                for (i, (o, b)) in out[pos..pos + n]
                    .iter_mut()
                    .zip(unit.chunks_exact(4))
                    .enumerate()
                {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if !v.is_finite() {
                        return Err(DecodeError::NotFinite(pos + i));
                    }
                    *o = v;
                }
                State::Dense { pos: pos + n }
            }
            State::Quantize { bits, block, pos } => {
                let n = (self.dim - pos).min(block);
                decode_block(unit, bits, self.block_index, &mut out[pos..pos + n])?;
                self.block_index += 1;
                State::Quantize {
                    bits,
                    block,
                    pos: pos + n,
                }
            }
            State::TopK {
                k,
                read,
                mut pos,
                mut previous,
            } => {
                for e in unit.chunks_exact(8) {
                    let index = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                    let value = f32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                    if let Some(p) = previous
                        && index <= p
                    {
                        return Err(DecodeError::IndexOrder { index, previous: p });
                    }
                    let i = index as usize;
                    if i >= self.dim {
                        return Err(DecodeError::IndexOutOfRange {
                            index,
                            dim: self.dim,
                        });
                    }
                    if !value.is_finite() {
                        return Err(DecodeError::NotFinite(i));
                    }
                    out[pos..i].fill(0.0);
                    out[i] = value;
                    pos = i + 1;
                    previous = Some(index);
                }
                State::TopK {
                    k,
                    read: read + unit.len() / 8,
                    pos,
                    previous,
                }
            }
            State::Done | State::Failed => unreachable!("no unit is read when done or failed"),
        };
        self.settle(out);
        Ok(())
    }

    /// Moves a state whose body is complete to `Done` (top-k writes its unsent tail as zeros).
    fn settle(&mut self, out: &mut [f32]) {
        let done = match self.state {
            State::Dense { pos } | State::Quantize { pos, .. } => pos == self.dim,
            State::TopK { k, read, pos, .. } if read == k => {
                out[pos..].fill(0.0);
                true
            }
            _ => false,
        };
        if done {
            self.state = State::Done;
        }
    }

    /// Refuses `got` unless it is the negotiated compression (top-k: at most its `k` entries).
    fn check_negotiated(&self, got: Compression, k: Option<usize>) -> Result<(), DecodeError> {
        let Some(expected) = self.expected else {
            return Ok(());
        };
        let ok = match (expected, got) {
            (Compression::TopK { fraction }, Compression::TopK { .. }) => {
                k.unwrap_or(0) <= k_for(fraction, self.dim)
            }
            (e, g) => e == g,
        };
        if ok {
            return Ok(());
        }
        let expected_text = match expected {
            Compression::TopK { fraction } => {
                format!("topk with at most {} entries", k_for(fraction, self.dim))
            }
            c => format!("{c:?}"),
        };
        let got_text = match (got, k) {
            (Compression::TopK { .. }, Some(k)) => format!("topk with {k} entries"),
            (c, _) => format!("{c:?}"),
        };
        Err(DecodeError::NotNegotiated {
            expected: expected_text,
            got: got_text,
        })
    }
}

/// Decodes a whole encoding of `out.len()` coordinates into `out` (any valid encoding; use
/// [`StreamDecoder::expecting`] to insist on a negotiated one).
pub fn decode_into(bytes: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
    let mut d = StreamDecoder::new(out.len());
    d.feed(bytes, out)?;
    d.finish()
}
