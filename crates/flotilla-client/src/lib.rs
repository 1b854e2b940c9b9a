#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Flotilla's client SDK: join a federation, train locally, send updates — raw data never leaves.
//!
//! A [`Client`] talks to a coordinator over gRPC (`flotilla.v1`, see `flotilla-proto`):
//!
//! 1. **Enrollment** (first start only): a one-time enrollment token is exchanged for a client id and
//!    a long-lived credential, stored in `state_dir/credential.json` (atomic write, mode 0600). Later
//!    starts reuse it; every call then carries `authorization: Bearer <credential>`.
//! 2. **Check-in loop**: the client announces how many samples it holds and which jobs it serves. The
//!    coordinator answers `RetryAfter` (the client sleeps that long plus jitter) or a `Task`.
//! 3. **Task**: download the global model (resumable, SHA-256 verified), evaluate it on local
//!    held-out data if the trainer implements [`LocalTrainer::evaluate`] (federated evaluation),
//!    train it with the user's [`LocalTrainer`] on a blocking thread, upload the new parameters
//!    with the evaluation's metrics (resumable and idempotent: the upload id is derived from job,
//!    round, attempt, stage and client id).
//!
//! Transport errors and `UNAVAILABLE` (e.g. a coordinator restart) are retried after a jittered
//! exponential [`Backoff`], with a rate-limited warning; errors no retry can fix end the run with
//! a one-line [`ClientError`] that says what to do: a TLS failure such as a wrong CA or a CA
//! certificate used as the server's ([`ClientError::Tls`], see [`diagnose_tls`]), a coordinator that
//! does not serve `flotilla.v1` ([`ClientError::ProtocolMismatch`]), a refused enrollment, or a
//! revoked credential (`UNAUTHENTICATED`, [`ClientError::Unauthenticated`]). An expired credential is deleted and the client enrolls again
//! with its enrollment token, or stops with [`ClientError::CredentialExpired`] if it has none.
//!
//! TLS is the default: `https://` addresses are verified against the CA certificate file in
//! [`ClientConfig::ca_cert`]. Plain `http://` is refused unless [`ClientConfig::insecure`] is set.
//!
//! Bring your own model and data by implementing [`LocalTrainer`], or use [`DatasetTrainer`], which
//! trains `flotilla-ml`'s reference models on a partition of a `flotilla-data` dataset.
//!
//! The library logs through `tracing` and prints nothing.

mod client;
mod config;
mod credential;
mod error;
mod scaffold;
mod tls_diagnosis;
mod trainer;

pub use client::{
    Client, ClientStats, DEADLINE_GRACE, MAX_MODEL_BYTES, MAX_RETRY_AFTER, PulledModel,
    StatsObserver, upload_id,
};
pub use config::{Backoff, ClientConfig, error_chain};
pub use credential::{CREDENTIAL_FILE, StoredCredential};
pub use error::{ClientError, ConfigError, RunError};
pub use tls_diagnosis::{diagnose_tls, find_rustls_error};
pub use trainer::{
    BoxError, CUSTOM_MODEL_KIND, DatasetTrainer, DatasetTrainerError, EvalOutcome, LocalTrainer,
    ModelDescription, PARTITION_SEED, TaskInfo, TrainOutcome, TrainingConfig,
};
