//! Typed errors. Everything that comes off the wire is checked and reported through these; nothing
//! panics on client- or server-controlled input.

use tonic::Code;

/// Longest string an error message quotes from the wire (longer ones are cut).
const QUOTE_MAX: usize = 64;

/// Cuts a wire-controlled string to at most [`QUOTE_MAX`] bytes on a character boundary.
pub(crate) fn quote(s: &str) -> String {
    if s.len() <= QUOTE_MAX {
        return s.to_owned();
    }
    let mut end = QUOTE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A structurally invalid [`crate::v1::UpdateHeader`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `job_id` is empty.
    #[error("job_id is empty")]
    EmptyJobId,
    /// `job_id` is longer than [`crate::MAX_ID_LEN`] bytes.
    #[error("job_id is longer than {max} bytes")]
    JobIdTooLong {
        /// The limit.
        max: usize,
    },
    /// `upload_id` is empty, too long or uses characters outside `A-Z a-z 0-9 . _ -`.
    #[error("upload_id must be 1..={max} characters from A-Z a-z 0-9 . _ -")]
    BadUploadId {
        /// The length limit.
        max: usize,
    },
    /// The stage is unspecified, unknown, or does not match the payload kind (parameters go with
    /// STAGE_TRAIN, a masked input with STAGE_MASKED_INPUT).
    #[error(
        "stage {0} is not supported for this payload kind (STAGE_TRAIN with PAYLOAD_KIND_PARAMETERS_F32 or PAYLOAD_KIND_COMPRESSED_DELTA, STAGE_MASKED_INPUT with PAYLOAD_KIND_MASKED_U32)"
    )]
    UnsupportedStage(i32),
    /// `num_samples` is zero.
    #[error("num_samples must be greater than 0")]
    ZeroSamples,
    /// `num_samples` is above the configured limit.
    #[error("num_samples {got} exceeds the limit of {max}")]
    TooManySamples {
        /// Declared sample count.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// `total_bytes` is not a whole number of `f32` values.
    #[error("total_bytes {0} is not a multiple of 4")]
    NotF32Aligned(u64),
    /// `total_bytes` is above the configured limit.
    #[error("total_bytes {got} exceeds the limit of {max}")]
    TooLarge {
        /// Declared size.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// `total_bytes` is not 4 × the model layout's number of values.
    #[error("total_bytes {got} does not match the model layout ({expected} bytes)")]
    SizeMismatch {
        /// Declared size.
        got: u64,
        /// 4 × the layout's number of values.
        expected: u64,
    },
    /// `layout_fingerprint` is not 32 bytes long.
    #[error("layout_fingerprint must be 32 bytes, got {0}")]
    BadFingerprintLength(usize),
    /// `layout_fingerprint` differs from the model's.
    #[error("layout_fingerprint does not match the model's layout")]
    LayoutMismatch,
    /// `sha256` is not 32 bytes long.
    #[error("sha256 must be 32 bytes, got {0}")]
    BadShaLength(usize),
    /// More metrics than [`crate::MAX_METRICS`].
    #[error("{got} metrics exceed the limit of {max}")]
    TooManyMetrics {
        /// Number of metrics sent.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A metric name is empty or longer than [`crate::MAX_NAME_LEN`] bytes.
    #[error("metric name {0:?} is empty or too long")]
    BadMetricName(String),
    /// A metric value is NaN or infinite.
    #[error("metric {0:?} is not finite")]
    NonFiniteMetric(String),
    /// `PAYLOAD_KIND_COMPRESSED_DELTA` for a job that negotiated no compression.
    #[error(
        "the payload is compressed but the job negotiated no compression: upload PAYLOAD_KIND_PARAMETERS_F32"
    )]
    CompressionNotNegotiated,
    /// A compressed payload's `total_bytes` is 0 or above the largest encoding of the job's
    /// compression for the layout.
    #[error("total_bytes {got} of a compressed update is not in 1..={max} (the job's compression)")]
    CompressedSize {
        /// Declared size.
        got: u64,
        /// The largest valid encoding, in bytes.
        max: u64,
    },
}

/// A [`crate::v1::ParamLayout`] that cannot be a Flotilla parameter layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// More tensors than [`crate::MAX_TENSORS`].
    #[error("{got} tensors exceed the limit of {max}")]
    TooManyTensors {
        /// Number of tensors sent.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A tensor name is empty or longer than [`crate::MAX_NAME_LEN`] bytes.
    #[error("tensor name {0:?} is empty or too long")]
    BadName(String),
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateName(String),
    /// The number of values overflows, or exceeds the caller's limit.
    #[error("layout holds more than {max} values")]
    TooManyValues {
        /// The limit.
        max: u64,
    },
}

/// A [`crate::v1::ModelInfo`] that does not describe a downloadable `f32` payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelInfoError {
    /// `layout` is absent.
    #[error("model layout is missing")]
    MissingLayout,
    /// `layout` is invalid.
    #[error("model layout: {0}")]
    Layout(#[from] LayoutError),
    /// `size_bytes` is not 4 × the layout's number of values.
    #[error("size_bytes {got} does not match the layout ({expected} bytes)")]
    SizeMismatch {
        /// Declared size.
        got: u64,
        /// 4 × the layout's number of values.
        expected: u64,
    },
    /// `size_bytes` exceeds the receiver's limit.
    #[error("size_bytes {got} exceeds the limit of {max}")]
    TooLarge {
        /// Declared size.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// `sha256` is not 32 bytes long.
    #[error("sha256 must be 32 bytes, got {0}")]
    BadShaLength(usize),
}

/// Why a chunked transfer (upload or download) failed. [`TransferError::grpc_code`] gives the status
/// code the service answers with; `impl From<TransferError> for tonic::Status` does the whole mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The upload header is invalid.
    #[error("invalid update header: {0}")]
    InvalidHeader(#[from] HeaderError),
    /// The model description is invalid.
    #[error("invalid model info: {0}")]
    InvalidModelInfo(#[from] ModelInfoError),
    /// A chunk does not start at the next expected byte (a gap, an overlap, or a re-send of anything
    /// but the most recent chunk). The sender should resume from `expected`.
    #[error("chunk at offset {got} but the next expected byte is {expected}")]
    UnexpectedOffset {
        /// The resume offset (bytes received so far).
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },
    /// The most recent chunk was re-sent with the same offset and length but different bytes.
    #[error("chunk re-sent at offset {offset} with different contents")]
    ConflictingChunk {
        /// The chunk's offset.
        offset: u64,
    },
    /// A chunk carries no bytes.
    #[error("empty chunk at offset {offset}")]
    EmptyChunk {
        /// The chunk's offset.
        offset: u64,
    },
    /// A chunk is larger than the limit.
    #[error("chunk of {len} bytes exceeds the limit of {max}")]
    ChunkTooLarge {
        /// The chunk's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A chunk runs past the declared end of the payload.
    #[error(
        "chunk at offset {offset} of {len} bytes runs past the end of the {total}-byte payload"
    )]
    PastEnd {
        /// The chunk's offset.
        offset: u64,
        /// The chunk's length.
        len: usize,
        /// Declared payload size.
        total: u64,
    },
    /// The payload is not complete yet.
    #[error("payload incomplete: {received} of {total} bytes")]
    Incomplete {
        /// Bytes received.
        received: u64,
        /// Declared payload size.
        total: u64,
    },
    /// The payload's SHA-256 differs from the declared one. The transfer must restart from 0.
    #[error("payload SHA-256 does not match the declared one")]
    ShaMismatch,
    /// A value of the payload is NaN or infinite.
    #[error("value {index} of the payload is not finite")]
    NonFinite {
        /// Index of the value in the flat vector.
        index: u64,
    },
    /// A compressed payload is not a valid encoding of the job's compression for the layout. The
    /// upload can never complete; start a new one.
    #[error("compressed update refused: {0}")]
    BadEncoding(String),
}

impl TransferError {
    /// The gRPC status code for this error.
    ///
    /// `UnexpectedOffset` is `ABORTED` (query the resume offset and retry), `ShaMismatch` is
    /// `DATA_LOSS` (restart from 0), `PastEnd` is `OUT_OF_RANGE`, oversize chunks are
    /// `RESOURCE_EXHAUSTED`, `Incomplete` is `FAILED_PRECONDITION`, everything else
    /// `INVALID_ARGUMENT`.
    pub fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidHeader(HeaderError::TooLarge { .. }) => Code::ResourceExhausted,
            Self::InvalidHeader(_) | Self::InvalidModelInfo(_) => Code::InvalidArgument,
            Self::UnexpectedOffset { .. } => Code::Aborted,
            Self::ConflictingChunk { .. } | Self::EmptyChunk { .. } => Code::InvalidArgument,
            Self::ChunkTooLarge { .. } => Code::ResourceExhausted,
            Self::PastEnd { .. } => Code::OutOfRange,
            Self::Incomplete { .. } => Code::FailedPrecondition,
            Self::ShaMismatch => Code::DataLoss,
            Self::NonFinite { .. } | Self::BadEncoding(_) => Code::InvalidArgument,
        }
    }
}

impl From<TransferError> for tonic::Status {
    fn from(e: TransferError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}
