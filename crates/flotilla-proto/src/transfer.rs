//! Sans-IO chunked transfer of `f32` payloads: the sending side ([`chunk_f32`], [`upload_messages`],
//! [`model_chunks`]) and the receiving side ([`UploadAssembler`], [`ModelReceiver`]).
//!
//! Both receivers apply the same chunk rules: a chunk must be non-empty, at most the chunk limit, start
//! exactly at the next expected byte and end within the declared size. Re-sending the most recent
//! chunk unchanged (same offset, same bytes) is ignored; re-sending it with different bytes is
//! [`TransferError::ConflictingChunk`]; anything else out of place is
//! [`TransferError::UnexpectedOffset`], carrying the offset to resume from. Bytes are hashed as they
//! arrive; the SHA-256 and the total length are verified at the end.

use flotilla_compress::{Compression, StreamDecoder};
use sha2::{Digest, Sha256};

use crate::convert::{CheckedModelInfo, ExpectedLayout, MAX_NAME_LEN};
use crate::error::{HeaderError, TransferError, quote};
use crate::v1;
use flotilla_core::ParamLayout;

/// Default payload bytes per chunk (1 MiB), well under gRPC's default 4 MiB message limit.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// Largest chunk a receiver accepts by default: 4 MiB minus 1 KiB for protobuf framing.
pub const MAX_CHUNK_BYTES: usize = (4 << 20) - 1024;
/// Longest `job_id` accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest `upload_id` accepted, in bytes.
pub const MAX_UPLOAD_ID_LEN: usize = 128;
/// Most metrics an update header may carry.
pub const MAX_METRICS: usize = 64;

/// Values decoded per batch by [`UploadAssembler::drain_f32`].
const DRAIN_BATCH: usize = 16 * 1024;

/// Limits the coordinator applies to uploads, and the compression the job negotiated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadLimits {
    /// Largest accepted payload, in bytes.
    pub max_total_bytes: u64,
    /// Largest accepted chunk, in bytes.
    pub max_chunk_bytes: usize,
    /// Largest accepted `num_samples` (the round policy's `max_samples_per_report`).
    pub max_samples: u64,
    /// The job's update compression: with anything but [`Compression::None`], TRAIN uploads may
    /// also be `PAYLOAD_KIND_COMPRESSED_DELTA` encodings of exactly this compression.
    pub compression: Compression,
}

impl Default for UploadLimits {
    /// 1 GiB payloads, [`MAX_CHUNK_BYTES`] chunks, no sample limit, no compression.
    fn default() -> Self {
        Self {
            max_total_bytes: 1 << 30,
            max_chunk_bytes: MAX_CHUNK_BYTES,
            max_samples: u64::MAX,
            compression: Compression::None,
        }
    }
}

/// Structural validation of an update header against the model it claims to update.
///
/// Checks: `job_id` non-empty and at most [`MAX_ID_LEN`] bytes; `upload_id` 1..=[`MAX_UPLOAD_ID_LEN`]
/// characters from `A-Z a-z 0-9 . _ -`; stage `STAGE_TRAIN` with parameters (or, when
/// `limits.compression` is set, a compressed delta) or `STAGE_MASKED_INPUT` with a masked input;
/// `0 < num_samples <= limits.max_samples`; `total_bytes` at most `limits.max_total_bytes` and
/// equal to 4 × `expected.len` (a compressed delta: in 1 ..= the largest encoding of the job's
/// compression for `expected.len` values); a 32-byte `layout_fingerprint` equal to
/// `expected.fingerprint`; a 32-byte `sha256`; at most [`MAX_METRICS`] metrics with names of
/// 1..=[`MAX_NAME_LEN`] bytes and finite values.
///
/// Whether the job, round, attempt and stage are *current* for this client is the round machine's
/// business, not this function's.
pub fn validate_header(
    h: &v1::UpdateHeader,
    expected: &ExpectedLayout,
    limits: &UploadLimits,
) -> Result<(), HeaderError> {
    if h.job_id.is_empty() {
        return Err(HeaderError::EmptyJobId);
    }
    if h.job_id.len() > MAX_ID_LEN {
        return Err(HeaderError::JobIdTooLong { max: MAX_ID_LEN });
    }
    let id_ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    if h.upload_id.is_empty()
        || h.upload_id.len() > MAX_UPLOAD_ID_LEN
        || !h.upload_id.bytes().all(id_ok)
    {
        return Err(HeaderError::BadUploadId {
            max: MAX_UPLOAD_ID_LEN,
        });
    }
    let plain = h.stage == v1::Stage::Train as i32
        && h.payload_kind == v1::PayloadKind::ParametersF32 as i32;
    let masked = h.stage == v1::Stage::MaskedInput as i32
        && h.payload_kind == v1::PayloadKind::MaskedU32 as i32;
    let compressed = h.stage == v1::Stage::Train as i32
        && h.payload_kind == v1::PayloadKind::CompressedDelta as i32;
    let masked16 = h.stage == v1::Stage::MaskedInput as i32
        && h.payload_kind == v1::PayloadKind::MaskedU16 as i32;
    if !(plain || masked || compressed || masked16) {
        return Err(HeaderError::UnsupportedStage(h.stage));
    }
    if compressed && limits.compression == Compression::None {
        return Err(HeaderError::CompressionNotNegotiated);
    }
    if h.num_samples == 0 {
        return Err(HeaderError::ZeroSamples);
    }
    if h.num_samples > limits.max_samples {
        return Err(HeaderError::TooManySamples {
            got: h.num_samples,
            max: limits.max_samples,
        });
    }
    if !compressed && !masked16 && !h.total_bytes.is_multiple_of(4) {
        return Err(HeaderError::NotF32Aligned(h.total_bytes));
    }
    if h.total_bytes > limits.max_total_bytes {
        return Err(HeaderError::TooLarge {
            got: h.total_bytes,
            max: limits.max_total_bytes,
        });
    }
    if compressed {
        // The exact length depends on the encoding (top-k may send fewer entries); the decoder
        // checks the bytes themselves. The bound keeps the declared size honest up front.
        let max = usize::try_from(expected.len)
            .ok()
            .and_then(|dim| limits.compression.encoded_len(dim))
            .map_or(0, |n| n as u64);
        if h.total_bytes == 0 || h.total_bytes > max {
            return Err(HeaderError::CompressedSize {
                got: h.total_bytes,
                max,
            });
        }
    } else {
        let expected_bytes = if masked16 {
            expected.len.checked_mul(2)
        } else {
            expected.payload_bytes()
        };
        match expected_bytes {
            Some(e) if e == h.total_bytes => {}
            e => {
                return Err(HeaderError::SizeMismatch {
                    got: h.total_bytes,
                    expected: e.unwrap_or(u64::MAX),
                });
            }
        }
    }
    if h.layout_fingerprint.len() != 32 {
        return Err(HeaderError::BadFingerprintLength(
            h.layout_fingerprint.len(),
        ));
    }
    if h.layout_fingerprint.as_slice() != expected.fingerprint.as_slice() {
        return Err(HeaderError::LayoutMismatch);
    }
    if h.sha256.len() != 32 {
        return Err(HeaderError::BadShaLength(h.sha256.len()));
    }
    if h.metrics.len() > MAX_METRICS {
        return Err(HeaderError::TooManyMetrics {
            got: h.metrics.len(),
            max: MAX_METRICS,
        });
    }
    for (name, value) in &h.metrics {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(HeaderError::BadMetricName(quote(name)));
        }
        if !value.is_finite() {
            return Err(HeaderError::NonFiniteMetric(quote(name)));
        }
    }
    Ok(())
}

/// What a successful `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The chunk's bytes were appended.
    Appended {
        /// Number of bytes appended.
        bytes: usize,
    },
    /// The chunk repeated the most recent one exactly and was ignored.
    Duplicate,
}

/// What identifies the most recent accepted chunk: its place, the hash state before it and the
/// digest of everything up to its end. A re-sent chunk is the same bytes exactly when hashing it
/// from `before` gives `digest` again (SHA-256 collision resistance), so no copy of the bytes is kept.
#[derive(Debug, Clone)]
struct LastChunk {
    offset: u64,
    len: usize,
    before: Sha256,
    digest: [u8; 32],
}

/// Offset-checked, size-limited, hashing reassembly of a byte stream; shared by both receivers.
#[derive(Debug, Clone)]
struct Reassembly {
    total: u64,
    received: u64,
    max_chunk: usize,
    expected_sha: [u8; 32],
    hasher: Sha256,
    /// The most recent accepted chunk, to recognise an exact re-send without keeping a copy of it.
    last: Option<LastChunk>,
    /// Bytes received but not yet decoded into `f32` values.
    pending: Vec<u8>,
    /// Number of `f32` values decoded and handed out so far.
    decoded: u64,
    /// The payload is raw 32-bit words (a secure-aggregation masked input), not parameters: any bit
    /// pattern is valid, so the finiteness checks are off. Values still travel as `f32` whose bits
    /// are the words (`f32::to_bits` recovers them exactly; no arithmetic touches them).
    raw_words: bool,
}

impl Reassembly {
    fn new(total: u64, max_chunk: usize, expected_sha: [u8; 32]) -> Self {
        Self {
            total,
            received: 0,
            max_chunk,
            expected_sha,
            hasher: Sha256::new(),
            last: None,
            pending: Vec::new(),
            decoded: 0,
            raw_words: false,
        }
    }

    fn push(&mut self, offset: u64, data: &[u8]) -> Result<PushOutcome, TransferError> {
        let outcome = self.admit(offset, data)?;
        if let PushOutcome::Appended { .. } = outcome {
            self.pending.extend_from_slice(data);
        }
        Ok(outcome)
    }

    /// `push`'s checks and bookkeeping (offsets, limits, hash, duplicate detection) without keeping
    /// the bytes: the caller consumes an `Appended` chunk itself.
    fn admit(&mut self, offset: u64, data: &[u8]) -> Result<PushOutcome, TransferError> {
        if data.is_empty() {
            return Err(TransferError::EmptyChunk { offset });
        }
        if data.len() > self.max_chunk {
            return Err(TransferError::ChunkTooLarge {
                len: data.len(),
                max: self.max_chunk,
            });
        }
        if offset != self.received {
            if let Some(last) = &self.last
                && last.offset == offset
                && last.len == data.len()
            {
                let mut h = last.before.clone();
                h.update(data);
                let digest: [u8; 32] = h.finalize().into();
                return if digest == last.digest {
                    Ok(PushOutcome::Duplicate)
                } else {
                    Err(TransferError::ConflictingChunk { offset })
                };
            }
            return Err(TransferError::UnexpectedOffset {
                expected: self.received,
                got: offset,
            });
        }
        let past_end = TransferError::PastEnd {
            offset,
            len: data.len(),
            total: self.total,
        };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| past_end.clone())?;
        if end > self.total {
            return Err(past_end);
        }
        self.accept(offset, data, end);
        Ok(PushOutcome::Appended { bytes: data.len() })
    }

    /// Records an accepted chunk (already checked by `push`'s rules): hash, resume offset, last chunk.
    fn accept(&mut self, offset: u64, data: &[u8], end: u64) {
        let before = self.hasher.clone();
        self.hasher.update(data);
        // Finalising a clone only pads the last block: cheap next to hashing the chunk.
        let digest: [u8; 32] = self.hasher.clone().finalize().into();
        self.last = Some(LastChunk {
            offset,
            len: data.len(),
            before,
            digest,
        });
        self.received = end;
    }

    /// `push` followed by decoding every whole value straight from `data` into `out`, without
    /// buffering the chunk: the receiving fast path. Values appended to `out` are finite; on a
    /// non-finite value `out` keeps only the values before it and the error names its index.
    fn push_into(
        &mut self,
        offset: u64,
        data: &[u8],
        out: &mut Vec<f32>,
    ) -> Result<PushOutcome, TransferError> {
        // Values still buffered by an earlier `push` go first.
        if self.pending.len() >= 4 {
            self.drain(&mut |vs| out.extend_from_slice(vs))?;
        }
        if data.is_empty() || offset != self.received || data.len() > self.max_chunk {
            // Not the next bytes: `push` gives the verdict (duplicate, conflict or error) and, for a
            // duplicate, accepts nothing.
            return self
                .push(offset, data)
                .inspect(|o| debug_assert_eq!(*o, PushOutcome::Duplicate));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.total)
            .ok_or(TransferError::PastEnd {
                offset,
                len: data.len(),
                total: self.total,
            })?;
        self.accept(offset, data, end);
        let mut rest = data;
        if !self.pending.is_empty() {
            // Complete the value split across the previous chunk and this one.
            let take = (4 - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == 4 {
                let v = f32::from_le_bytes([
                    self.pending[0],
                    self.pending[1],
                    self.pending[2],
                    self.pending[3],
                ]);
                if !self.raw_words && !v.is_finite() {
                    return Err(TransferError::NonFinite {
                        index: self.decoded,
                    });
                }
                self.pending.clear();
                out.push(v);
                self.decoded += 1;
            }
        }
        let whole = rest.len() / 4;
        let start = out.len();
        out.extend(
            rest[..4 * whole]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        if !self.raw_words && !out[start..].iter().all(|v| v.is_finite()) {
            let i = out[start..]
                .iter()
                .position(|v| !v.is_finite())
                .unwrap_or(0);
            out.truncate(start + i);
            self.decoded += i as u64;
            return Err(TransferError::NonFinite {
                index: self.decoded,
            });
        }
        self.decoded += whole as u64;
        self.pending.extend_from_slice(&rest[4 * whole..]);
        Ok(PushOutcome::Appended { bytes: data.len() })
    }

    /// Decodes every whole 4-byte group of `pending`, in batches; each batch is checked for
    /// non-finite values before it is handed to `sink`. Returns the number of values handed out.
    fn drain(&mut self, sink: &mut impl FnMut(&[f32])) -> Result<usize, TransferError> {
        let whole = self.pending.len() / 4;
        let mut batch = Vec::with_capacity(whole.min(DRAIN_BATCH));
        let mut done = 0usize;
        let mut result = Ok(());
        for group in self.pending[..4 * whole].chunks(4 * DRAIN_BATCH) {
            batch.clear();
            batch.extend(
                group
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            if let Some(i) = batch.iter().position(|v| !self.raw_words && !v.is_finite()) {
                result = Err(TransferError::NonFinite {
                    index: self.decoded + (done + i) as u64,
                });
                break;
            }
            sink(&batch);
            done += batch.len();
        }
        self.pending.drain(..4 * done);
        self.decoded += done as u64;
        result.map(|()| done)
    }

    fn check_complete(&self) -> Result<(), TransferError> {
        if self.received != self.total {
            return Err(TransferError::Incomplete {
                received: self.received,
                total: self.total,
            });
        }
        let sha: [u8; 32] = self.hasher.clone().finalize().into();
        if sha != self.expected_sha {
            return Err(TransferError::ShaMismatch);
        }
        Ok(())
    }
}

/// Coordinator side of `UploadUpdate`: reassembles, limits, hashes and decodes one update payload.
///
/// Keep the assembler across streams (keyed by `upload_id`) to support resume: a new stream for the
/// same upload repeats the header (compare with [`UploadAssembler::header`]) and continues at
/// [`UploadAssembler::received`].
///
/// Values can be consumed incrementally with [`UploadAssembler::drain_f32`] so that a consumer need
/// not hold the whole update; note that the SHA-256 can only be verified by
/// [`UploadAssembler::finish`], after the last byte, so anything drained earlier must be folded
/// somewhere it can be discarded from if `finish` fails. Each drained value is already known to be
/// finite.
///
/// A compressed delta (`PAYLOAD_KIND_COMPRESSED_DELTA`, see [`UploadAssembler::is_compressed`]) is
/// decoded as it arrives by a [`StreamDecoder`] that accepts only the job's compression: into the
/// caller's buffer with [`UploadAssembler::push_into`] (resized to the layout's length), or into the
/// assembler's own with [`UploadAssembler::push`], returned by `finish`. Its values are the *delta*
/// from the base model, complete only at the end: `drain_f32` hands none out.
#[derive(Debug, Clone)]
pub struct UploadAssembler {
    header: v1::UpdateHeader,
    inner: Reassembly,
    /// Payloads that are not 4-byte values: decoded here rather than by `inner`.
    special: Option<Special>,
}

/// The decoding of a payload whose values are not little-endian 4-byte groups.
#[derive(Debug, Clone)]
enum Special {
    /// `PAYLOAD_KIND_COMPRESSED_DELTA`: the job's codec; `own` holds the delta decoded by `push`.
    Delta {
        decoder: StreamDecoder,
        dim: usize,
        own: Vec<f32>,
    },
    /// `PAYLOAD_KIND_MASKED_U16`: 2-byte words, at most one byte carried between chunks; `own`
    /// holds the words decoded by `push` (as `f32` bits, like a 32-bit masked input).
    Words16 { carry: Option<u8>, own: Vec<f32> },
}

impl Special {
    /// Decodes an admitted chunk into `out` (`None`: into `own`).
    fn feed(&mut self, data: &[u8], out: Option<&mut Vec<f32>>) -> Result<(), TransferError> {
        match self {
            Self::Delta { decoder, dim, own } => {
                let out = out.unwrap_or(own);
                if out.len() != *dim {
                    out.clear();
                    out.resize(*dim, 0.0);
                }
                decoder
                    .feed(data, out)
                    .map_err(|e| TransferError::BadEncoding(e.to_string()))
            }
            Self::Words16 { carry, own } => {
                let out = out.unwrap_or(own);
                let word = |lo: u8, hi: u8| f32::from_bits(u32::from(u16::from_le_bytes([lo, hi])));
                let mut rest = data;
                if let (Some(lo), Some((&hi, tail))) = (*carry, rest.split_first()) {
                    out.push(word(lo, hi));
                    *carry = None;
                    rest = tail;
                }
                let pairs = rest.chunks_exact(2);
                *carry = pairs.remainder().first().copied();
                out.extend(pairs.map(|b| word(b[0], b[1])));
                Ok(())
            }
        }
    }

    /// Checks the payload ended cleanly and returns what `push` decoded.
    fn finish(self) -> Result<Vec<f32>, TransferError> {
        match self {
            Self::Delta { decoder, own, .. } => {
                decoder
                    .finish()
                    .map_err(|e| TransferError::BadEncoding(e.to_string()))?;
                Ok(own)
            }
            // `total_bytes` is even (2 × the layout), so a complete payload carries nothing.
            Self::Words16 { own, .. } => Ok(own),
        }
    }
}

impl UploadAssembler {
    /// Starts an upload after [`validate_header`] accepts `header`.
    pub fn new(
        header: v1::UpdateHeader,
        expected: &ExpectedLayout,
        limits: &UploadLimits,
    ) -> Result<Self, TransferError> {
        validate_header(&header, expected, limits)?;
        let sha: [u8; 32] = header
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| HeaderError::BadShaLength(header.sha256.len()))?;
        let mut inner = Reassembly::new(header.total_bytes, limits.max_chunk_bytes, sha);
        let kind = v1::PayloadKind::try_from(header.payload_kind);
        inner.raw_words = matches!(
            kind,
            Ok(v1::PayloadKind::MaskedU32 | v1::PayloadKind::MaskedU16)
        );
        let special = match kind {
            Ok(v1::PayloadKind::CompressedDelta) => {
                // `validate_header` bounded the size by the compression's encoding of
                // `expected.len` values, which exists only for a length that fits in `usize`.
                let dim = usize::try_from(expected.len).unwrap_or(0);
                Some(Special::Delta {
                    decoder: StreamDecoder::expecting(dim, limits.compression),
                    dim,
                    own: Vec::new(),
                })
            }
            Ok(v1::PayloadKind::MaskedU16) => Some(Special::Words16 {
                carry: None,
                own: Vec::new(),
            }),
            _ => None,
        };
        Ok(Self {
            header,
            inner,
            special,
        })
    }

    /// Whether the payload is a secure-aggregation masked input (`PAYLOAD_KIND_MASKED_U32` or
    /// `PAYLOAD_KIND_MASKED_U16`): words with no finiteness check. The decoded "values" are then
    /// `f32`s carrying the words' bits; recover the words with [`masked_words`].
    pub fn is_masked(&self) -> bool {
        self.inner.raw_words
    }

    /// Whether the payload is a compressed delta (`PAYLOAD_KIND_COMPRESSED_DELTA`): the decoded
    /// values are `parameters − base model`, to be added back by the receiver.
    pub fn is_compressed(&self) -> bool {
        matches!(self.special, Some(Special::Delta { .. }))
    }

    /// The validated header this upload was started with.
    pub fn header(&self) -> &v1::UpdateHeader {
        &self.header
    }

    /// Bytes received so far, contiguous from 0: the resume offset.
    pub fn received(&self) -> u64 {
        self.inner.received
    }

    /// Declared payload size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.inner.total
    }

    /// Whether every byte has arrived (not yet verified: see [`UploadAssembler::finish`]).
    pub fn is_complete(&self) -> bool {
        self.inner.received == self.inner.total
    }

    /// Accepts the next chunk. See the module docs for the offset rules. A failed push changes
    /// nothing, except [`TransferError::BadEncoding`], after which the upload can never complete.
    pub fn push(&mut self, chunk: &v1::UpdateChunk) -> Result<PushOutcome, TransferError> {
        match &mut self.special {
            None => self.inner.push(chunk.offset, &chunk.data),
            Some(special) => {
                let outcome = self.inner.admit(chunk.offset, &chunk.data)?;
                if let PushOutcome::Appended { .. } = outcome {
                    special.feed(&chunk.data, None)?;
                }
                Ok(outcome)
            }
        }
    }

    /// [`UploadAssembler::push`] and [`UploadAssembler::drain_f32`] in one step, without buffering the
    /// chunk: the values it completes are decoded straight into `out` (appended, in order). The fast
    /// path for a receiver that keeps the values anyway. For a compressed delta, `out` is the whole
    /// delta's buffer (resized to the layout's length on the first chunk) and the decoder writes
    /// wherever the chunk's coordinates belong.
    ///
    /// Offset and size errors change nothing (as `push`). On [`TransferError::NonFinite`] (`out`
    /// ends with the last finite value before it) or [`TransferError::BadEncoding`] the upload can
    /// never complete; drop it.
    pub fn push_into(
        &mut self,
        chunk: &v1::UpdateChunk,
        out: &mut Vec<f32>,
    ) -> Result<PushOutcome, TransferError> {
        match &mut self.special {
            None => self.inner.push_into(chunk.offset, &chunk.data, out),
            Some(special) => {
                let outcome = self.inner.admit(chunk.offset, &chunk.data)?;
                if let PushOutcome::Appended { .. } = outcome {
                    special.feed(&chunk.data, Some(out))?;
                }
                Ok(outcome)
            }
        }
    }

    /// Hands every complete value received so far to `sink` (possibly in several calls, in order) and
    /// forgets their bytes. Returns how many values were handed out. Fails with
    /// [`TransferError::NonFinite`] at the first NaN or infinity, before handing out the batch that
    /// holds it; the values before that batch have been handed out. A compressed delta hands out
    /// nothing (its values are complete only at the end).
    pub fn drain_f32(&mut self, sink: &mut impl FnMut(&[f32])) -> Result<usize, TransferError> {
        match &mut self.special {
            None => self.inner.drain(sink),
            Some(Special::Delta { .. }) => Ok(0),
            Some(Special::Words16 { own, .. }) => {
                let n = own.len();
                sink(own);
                own.clear();
                Ok(n)
            }
        }
    }

    /// Number of values handed out by [`UploadAssembler::drain_f32`] so far.
    pub fn drained(&self) -> u64 {
        self.inner.decoded
    }

    /// Verifies the upload — every byte present, SHA-256 equal to the header's, every value finite
    /// (a compressed delta: a complete, valid encoding) — and returns the values not yet drained
    /// (all of them if `drain_f32` was never called; for a compressed delta, the delta decoded by
    /// `push`, empty if the chunks went through `push_into`).
    ///
    /// Call it once [`UploadAssembler::is_complete`]; it consumes the assembler, so an early call
    /// loses the partial upload ([`TransferError::Incomplete`]).
    pub fn finish(mut self) -> Result<Vec<f32>, TransferError> {
        self.inner.check_complete()?;
        if let Some(special) = self.special {
            return special.finish();
        }
        let mut rest = Vec::with_capacity(self.inner.pending.len() / 4);
        self.inner.drain(&mut |vs| rest.extend_from_slice(vs))?;
        Ok(rest)
    }
}

/// The `u32` words of a masked-input upload, from the `f32` values an [`UploadAssembler`] decoded
/// (bit-exact: `f32::from_le_bytes` followed by `to_bits` returns the original word, NaN patterns
/// included).
pub fn masked_words(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Client side of `DownloadModel`: reassembles, hashes and decodes a model payload described by a
/// [`v1::ModelInfo`].
///
/// After a broken stream, request the model again with `offset` = [`ModelReceiver::received`] and keep
/// pushing into the same receiver.
#[derive(Debug, Clone)]
pub struct ModelReceiver {
    layout: ParamLayout,
    values: Vec<f32>,
    inner: Reassembly,
}

impl ModelReceiver {
    /// Prepares to receive the model `info` describes. Refuses a malformed description or one larger
    /// than `max_bytes`; chunks may be up to [`MAX_CHUNK_BYTES`].
    pub fn new(info: &v1::ModelInfo, max_bytes: u64) -> Result<Self, TransferError> {
        let c = CheckedModelInfo::new(info, max_bytes)?;
        Ok(Self {
            layout: c.layout,
            values: Vec::new(),
            inner: Reassembly::new(c.size_bytes, MAX_CHUNK_BYTES, c.sha256),
        })
    }

    /// The model's layout (checked).
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Bytes received so far: the `offset` to resume the download from.
    pub fn received(&self) -> u64 {
        self.inner.received
    }

    /// Payload size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.inner.total
    }

    /// Whether every byte has arrived (not yet verified: see [`ModelReceiver::finish`]).
    pub fn is_complete(&self) -> bool {
        self.inner.received == self.inner.total
    }

    /// Accepts the next chunk and decodes its whole values. Fails on an offset, size or non-finite
    /// value error; on an offset or size error nothing changes.
    pub fn push(&mut self, chunk: &v1::ModelChunk) -> Result<PushOutcome, TransferError> {
        let outcome = self.inner.push(chunk.offset, &chunk.data)?;
        if self.values.capacity() == 0 {
            // Bounded by the checked size of the model (≤ max_bytes).
            self.values
                .reserve_exact(usize::try_from(self.inner.total / 4).unwrap_or(0));
        }
        let values = &mut self.values;
        self.inner.drain(&mut |vs| values.extend_from_slice(vs))?;
        Ok(outcome)
    }

    /// Verifies length and SHA-256 and returns the parameters in layout order. Call it once
    /// [`ModelReceiver::is_complete`]; it consumes the receiver.
    pub fn finish(mut self) -> Result<Vec<f32>, TransferError> {
        self.inner.check_complete()?;
        // Normally a no-op; re-raises a non-finite value if an earlier `push` error was ignored.
        let values = &mut self.values;
        self.inner.drain(&mut |vs| values.extend_from_slice(vs))?;
        Ok(self.values)
    }
}

/// Splits `params`, encoded as little-endian `f32` bytes, into chunks of `chunk_bytes` bytes (the last
/// may be shorter), yielding `(offset, bytes)`. A `chunk_bytes` of 0 is treated as 1. Chunks are
/// produced lazily, so the whole payload is never materialised.
pub fn chunk_f32(params: &[f32], chunk_bytes: usize) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
    chunk_f32_from(params, chunk_bytes, 0)
}

/// Like [`chunk_f32`] but starting at byte `offset` (any byte, not only a multiple of 4), to resume a
/// transfer. An offset at or past the end yields nothing.
pub fn chunk_f32_from(
    params: &[f32],
    chunk_bytes: usize,
    offset: u64,
) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
    let step = chunk_bytes.max(1) as u64;
    let total = 4 * params.len() as u64;
    let mut next = offset;
    std::iter::from_fn(move || {
        if next >= total {
            return None;
        }
        let start = next;
        let end = start.saturating_add(step).min(total);
        next = end;
        // Both bounds are ≤ 4 × params.len(), which fits in usize.
        let (first, last) = ((start / 4) as usize, end.div_ceil(4) as usize);
        let mut bytes = Vec::with_capacity(4 * (last - first));
        for v in &params[first..last] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let skip = (start % 4) as usize;
        bytes.truncate(skip + (end - start) as usize);
        bytes.drain(..skip);
        Some((start, bytes))
    })
}

/// The messages of an `UploadUpdate` stream: `header`, then the chunks of `params` from `offset`
/// (0 for a fresh upload, `UploadResponse.resume_offset` to resume).
pub fn upload_messages(
    header: v1::UpdateHeader,
    params: &[f32],
    chunk_bytes: usize,
    offset: u64,
) -> impl Iterator<Item = v1::UploadMessage> + '_ {
    let head = v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Header(header)),
    };
    std::iter::once(head).chain(chunk_f32_from(params, chunk_bytes, offset).map(
        |(offset, data)| v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Chunk(v1::UpdateChunk {
                offset,
                data,
            })),
        },
    ))
}

/// The messages of an `UploadUpdate` stream whose payload is already bytes (a compressed delta):
/// `header`, then the chunks of `payload` from `offset`. A `chunk_bytes` of 0 is treated as 1.
pub fn upload_byte_messages(
    header: v1::UpdateHeader,
    payload: &[u8],
    chunk_bytes: usize,
    offset: u64,
) -> impl Iterator<Item = v1::UploadMessage> + '_ {
    let head = v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Header(header)),
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(payload.len());
    let chunks = payload[start..]
        .chunks(chunk_bytes.max(1))
        .scan(offset, |next, data| {
            let at = *next;
            *next += data.len() as u64;
            Some(v1::UploadMessage {
                kind: Some(v1::upload_message::Kind::Chunk(v1::UpdateChunk {
                    offset: at,
                    data: data.to_vec(),
                })),
            })
        });
    std::iter::once(head).chain(chunks)
}

/// The `ModelChunk`s of a `DownloadModel` response starting at `offset`.
pub fn model_chunks(
    params: &[f32],
    chunk_bytes: usize,
    offset: u64,
) -> impl Iterator<Item = v1::ModelChunk> + '_ {
    chunk_f32_from(params, chunk_bytes, offset)
        .map(|(offset, data)| v1::ModelChunk { offset, data })
}
