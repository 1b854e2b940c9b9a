//! The coordinator's clock. At the bottom of the module layers (it uses nothing of the crate), so
//! every module may read the time the machines are driven with.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds: the clock the machines are driven with.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
