//! The store's error type.

use crate::types::{ClientId, JobId, JobState, TokenId};

/// Everything that can go wrong in [`crate::Store`].
///
/// The variants from [`StoreError::UnknownToken`] on are *outcomes* a caller is expected to
/// handle (an enrollment that must be refused, a duplicate commit to ignore); the ones before it
/// are infrastructure failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL names no supported backend.
    #[error("unsupported database URL {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedDatabaseUrl(String),
    /// The blob store URL names no supported (or no compiled-in) object store.
    #[error("unsupported blob store URL {url:?}: {reason}")]
    UnsupportedBlobUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The blob store URL is well formed but the store cannot be used as configured (missing
    /// credentials, an unreachable endpoint, a bucket that refuses writes).
    #[error("blob store {url}: {reason}")]
    BlobStoreUnusable {
        /// The URL as given.
        url: String,
        /// What is wrong and what to set, one line.
        reason: String,
    },
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Running the embedded migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The object store reported an error.
    #[error("blob store error: {0}")]
    Blob(#[source] object_store::Error),
    /// A local file or directory operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("could not read randomness from the operating system: {0}")]
    Random(String),
    /// A stored value could not be decoded (the database was changed outside this crate).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),

    /// No enrollment token has this secret.
    #[error("unknown enrollment token")]
    UnknownToken,
    /// The enrollment token's expiry time has passed.
    #[error("enrollment token {token_id} expired at {expires_at_ms} ms")]
    TokenExpired {
        /// The token.
        token_id: TokenId,
        /// Its expiry, Unix milliseconds.
        expires_at_ms: i64,
    },
    /// The enrollment token has no uses left.
    #[error("enrollment token {token_id} has no uses left")]
    TokenUsedUp {
        /// The token.
        token_id: TokenId,
    },
    /// No client has this credential.
    #[error("unknown client credential")]
    UnknownCredential,
    /// The client's credential was revoked.
    #[error("client {0} is revoked")]
    ClientRevoked(ClientId),
    /// The client's credential has expired; the client must enroll again.
    #[error("the credential of client {client_id} expired at {expired_at_ms} ms")]
    CredentialExpired {
        /// The client.
        client_id: ClientId,
        /// Its credential's expiry, Unix milliseconds.
        expired_at_ms: i64,
    },
    /// No client has this id.
    #[error("client {0} not found")]
    ClientNotFound(ClientId),
    /// No job has this id.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    /// The job cannot move from its current state to the requested one.
    #[error("job {job_id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The job.
        job_id: JobId,
        /// Its current state.
        from: JobState,
        /// The requested state.
        to: JobState,
    },
    /// Rounds can only be committed while the job is running.
    #[error("job {job_id} is {state}, not running: no round can be committed")]
    JobNotRunning {
        /// The job.
        job_id: JobId,
        /// Its current state.
        state: JobState,
    },
    /// This round of this job is already committed; the refused commit changed nothing.
    #[error("round {round} of job {job_id} is already committed")]
    AlreadyCommitted {
        /// The job.
        job_id: JobId,
        /// The round.
        round: u64,
    },
    /// Rounds are committed in order 1, 2, 3, … with no gaps.
    #[error("job {job_id} expects round {expected} to be committed next, not round {got}")]
    RoundOutOfOrder {
        /// The job.
        job_id: JobId,
        /// The next round the job can commit.
        expected: u64,
        /// The round that was offered.
        got: u64,
    },
    /// The round has not been committed (so it cannot be evaluated).
    #[error("round {round} of job {job_id} is not committed")]
    RoundNotCommitted {
        /// The job.
        job_id: JobId,
        /// The round that was named.
        round: u64,
    },
    /// A model blob key was not produced by [`crate::Store::put_model`].
    #[error("invalid model blob key {0:?}")]
    InvalidBlobKey(String),
    /// No model blob is stored under this key.
    #[error("model blob {0:?} not found")]
    BlobNotFound(String),
    /// The blob's content does not match the SHA-256 in its key.
    #[error("model blob {0:?} does not match its SHA-256")]
    BlobCorrupt(String),
    /// An argument was out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No principal has this name.
    #[error("principal {0:?} not found")]
    PrincipalNotFound(String),
    /// A principal with this name exists (revoked principals' names stay taken).
    #[error("principal {0:?} already exists; choose another name")]
    PrincipalExists(String),
    /// A job cannot be approved or rejected now (not waiting, already decided, or by its own
    /// submitter): why, on one line.
    #[error("{0}")]
    ApprovalRefused(String),
    /// No registered model (or `NAME@VERSION`) by this name, in the caller's tenant.
    #[error("model {0} not found")]
    ModelNotFound(String),
    /// A registry stage change that cannot happen now: why, on one line.
    #[error("{0}")]
    StageConflict(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        StoreError::Blob(e)
    }
}

/// Shorthand for `Result<T, StoreError>`.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
