//! The coordinator's error type.

use std::path::PathBuf;

/// Everything that can stop the coordinator from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The persistence layer failed.
    #[error("store: {0}")]
    Store(#[from] flotilla_store::StoreError),
    /// A socket could not be bound or served.
    #[error("{what} on {addr}: {source}")]
    Net {
        /// What was being done.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS material is missing or invalid.
    #[error("TLS: {0}")]
    Tls(String),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A stored job could not be resumed.
    #[error("job {job}: {message}")]
    Job {
        /// The job id.
        job: u64,
        /// What went wrong.
        message: String,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(String),
    /// A background task panicked or was cancelled.
    #[error("task: {0}")]
    Task(String),
}
