//! Typed errors of the client SDK.

use std::path::PathBuf;

/// An invalid [`crate::ClientConfig`]: caught by [`crate::Client::new`] before any network traffic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The coordinator address is not a valid `https://host:port` / `http://host:port` URL.
    #[error("invalid coordinator address {url:?}: {reason}")]
    InvalidUrl {
        /// The address as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A plain-text `http://` address was given without `insecure`.
    #[error(
        "refusing plain-text coordinator address {url:?}: use https:// with a CA certificate, or set \
         `insecure` (--insecure) to allow an unencrypted connection (credentials travel in clear text)"
    )]
    InsecureNotAllowed {
        /// The address as configured.
        url: String,
    },
    /// An `https://` address was given without a CA certificate to verify the coordinator with.
    #[error(
        "coordinator address {url:?} uses TLS but no CA certificate file (ca_cert) is configured"
    )]
    MissingCaCert {
        /// The address as configured.
        url: String,
    },
    /// The CA certificate file could not be read.
    #[error("cannot read CA certificate file {}: {source}", path.display())]
    ReadCaCert {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA certificate file holds no usable PEM certificate.
    #[error("CA certificate file {} is not usable: {reason}", path.display())]
    BadCaCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration was refused by the transport.
    #[error("TLS configuration for {url:?} failed: {reason}")]
    Tls {
        /// The address as configured.
        url: String,
        /// The transport's error.
        reason: String,
    },
    /// A [`crate::Backoff`] value is out of range.
    #[error("invalid backoff: {0}")]
    InvalidBackoff(String),
    /// [`crate::ClientConfig::cohorts`] breaks the bounds of cohort labels.
    #[error("invalid cohorts: {0}")]
    InvalidCohorts(String),
    /// `client_name` is empty.
    #[error("client_name must not be empty")]
    EmptyClientName,
    /// `client_name` breaks the coordinator's rule for names (length, characters); checked before
    /// connecting, by the same function the coordinator uses.
    #[error("invalid client_name: {0}")]
    InvalidClientName(#[from] flotilla_core::names::NameError),
    /// `upload_chunk_bytes` is zero or above the protocol's chunk limit.
    #[error("upload_chunk_bytes must be in 1..={max}, got {got}")]
    InvalidChunkSize {
        /// The configured value.
        got: usize,
        /// [`flotilla_proto::MAX_CHUNK_BYTES`].
        max: usize,
    },
}

/// Why a client stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory or credential file could not be read or written.
    #[error("client state {}: {source}", path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The credential file exists but cannot be used.
    #[error("credential file {} is corrupt: {reason} (delete it to enroll again)", path.display())]
    CorruptCredential {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored credential was issued by another coordinator.
    #[error(
        "credential file {} belongs to coordinator {stored:?}, not {configured:?}; use another \
         state directory or delete the file to enroll again",
        path.display()
    )]
    CoordinatorMismatch {
        /// The file.
        path: PathBuf,
        /// The coordinator the credential was issued by.
        stored: String,
        /// The configured coordinator.
        configured: String,
    },
    /// There is no stored credential and no enrollment token to obtain one.
    #[error(
        "not enrolled: no credential in {} and no enrollment token given",
        path.display()
    )]
    NotEnrolled {
        /// The credential file that was looked for.
        path: PathBuf,
    },
    /// The coordinator refused the enrollment (token unknown, used or expired, or a bad request).
    #[error("{}", enrollment_refused(*code, message))]
    EnrollmentRefused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The coordinator's message.
        message: String,
    },
    /// The coordinator answered the enrollment with something unusable.
    #[error("invalid enrollment response: {0}")]
    BadEnrollment(String),
    /// The coordinator no longer accepts the credential (unknown or revoked): re-enroll.
    #[error(
        "the coordinator rejected this client's credential ({message}): it was revoked or is \
         unknown there; to re-enroll, delete credential.json in the state directory and start \
         the client with a new enrollment token (--token)"
    )]
    Unauthenticated {
        /// The coordinator's message.
        message: String,
    },
    /// The credential expired and the client could not enroll again by itself: no enrollment token
    /// is configured, or a credential enrolled moments before was refused as expired too. The
    /// stored credential has been deleted.
    #[error(
        "this client's credential expired and it cannot enroll again by itself ({message}); the \
         stored credential was deleted: start the client with an enrollment token (--token) to enroll again"
    )]
    CredentialExpired {
        /// What the coordinator said, and why the client did not enroll again.
        message: String,
    },
    /// The [`crate::LocalTrainer`] panicked (its state is lost, so the client cannot go on).
    #[error("the local trainer panicked: {0}")]
    TrainerPanicked(String),
    /// TLS cannot work as configured: the coordinator's certificate is not signed by the configured
    /// CA, is a CA certificate, names another host, is expired or not yet valid, or client and
    /// coordinator share no TLS version. Retrying cannot help, so the run stops.
    #[error("{hint}")]
    Tls {
        /// What is wrong and what to do, one line (from [`crate::diagnose_tls`]).
        hint: String,
    },
    /// The coordinator does not serve this client's protocol version (`flotilla.v1`): it answered
    /// `UNIMPLEMENTED`.
    #[error(
        "the coordinator does not serve this client's protocol (flotilla.v1; it answered \
         UNIMPLEMENTED: {message}): run a client and a coordinator of the same Flotilla \
         release, and check that --coordinator is the coordinator's gRPC address"
    )]
    ProtocolMismatch {
        /// The coordinator's message.
        message: String,
    },
    /// [`crate::Client::pull_model`]: the model cannot be served to this client (no such model
    /// in its tenant, no production version yet, a malformed name) or its download kept failing.
    #[error("cannot pull model {name:?}: {message}")]
    ModelUnavailable {
        /// The model's name, as asked for.
        name: String,
        /// The coordinator's message, or what went wrong.
        message: String,
    },
    /// The coordinator does not allow this client to participate.
    #[error("the coordinator denied this client: {message}")]
    PermissionDenied {
        /// The coordinator's message.
        message: String,
    },
}

/// The one-line Display of [`ClientError::EnrollmentRefused`]: what to do depends on why.
fn enrollment_refused(code: tonic::Code, message: &str) -> String {
    match code {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::NotFound => {
            format!(
                "the coordinator refused the enrollment token ({message}): create a new one with \
             `flotilla enroll-token create` and start the client with --token NEW_TOKEN"
            )
        }
        tonic::Code::InvalidArgument => format!(
            "the coordinator refused the enrollment request ({message}): check --token and --name"
        ),
        other => format!("the coordinator refused the enrollment ({other:?}): {message}"),
    }
}

/// Error of a [`crate::Client::run`] that ended early, with the counters up to that point.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunError {
    /// Why the run ended.
    #[source]
    pub error: ClientError,
    /// What the run did before it ended.
    pub stats: crate::ClientStats,
}
