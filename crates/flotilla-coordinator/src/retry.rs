//! Which store failures are worth retrying, and how often. At the bottom of the module layers (it
//! uses nothing of the crate): `jobs.rs`, `heal.rs` and the admin API all retry by these rules.

use std::time::Duration;

use flotilla_store::StoreError;

/// How often jobs halted by a storage fault are retried (`heal.rs`); also quoted in their status.
pub(crate) const HEAL_INTERVAL: Duration = Duration::from_secs(2);

/// Store operations are retried this many times on infrastructure errors.
pub(crate) const STORE_ATTEMPTS: u32 = 3;

/// Whether a store error is an infrastructure failure (database, blob store, disk) that may pass,
/// rather than an outcome of the request.
pub(crate) fn retryable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Database(_) | StoreError::Blob(_) | StoreError::Io { .. }
    )
}
