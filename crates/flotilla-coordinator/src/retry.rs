//! Which store failures are worth retrying, and how often.

use flotilla_store::StoreError;

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
