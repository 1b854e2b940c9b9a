//! Per-job vectors a client keeps in its state directory so that they survive restarts: SCAFFOLD's
//! client control variate `cᵢ` (it accumulates across every round the client serves) and the
//! top-k compression's error-feedback residual (what the client has not sent yet).
//!
//! The file `state_dir/<scaffold|compression>/<hex job id>.f32` holds the values little-endian. It
//! is replaced atomically and only after the coordinator has accepted the update it belongs to, so
//! the client's state and the server's never disagree about a round that did not count.

use std::path::{Path, PathBuf};

use crate::credential::{create_private_dir, write_private_atomic};
use crate::error::ClientError;

/// Where one client keeps one kind of per-job vector (control variates or residuals).
#[derive(Debug, Clone)]
pub(crate) struct ControlStore {
    dir: PathBuf,
}

impl ControlStore {
    /// The SCAFFOLD control variates inside a client's state directory.
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("scaffold"),
        }
    }

    /// The top-k error-feedback residuals inside a client's state directory.
    pub(crate) fn residuals(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("compression"),
        }
    }

    fn path(&self, job_id: &str) -> PathBuf {
        // Hex: a job id from the coordinator is never trusted as a file name.
        self.dir
            .join(format!("{}.f32", flotilla_proto::hex(job_id.as_bytes())))
    }

    /// The stored `cᵢ` of `job_id` if it has `len` finite values; `None` (start from zero) if there
    /// is none or it cannot be used (logged).
    pub(crate) fn load(&self, job_id: &str, len: usize) -> Option<Vec<f32>> {
        let path = self.path(job_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "per-job state unreadable (SCAFFOLD control variate or compression residual); starting from zero");
                return None;
            }
        };
        match flotilla_core::params_from_le_bytes(&bytes) {
            Some(v) if v.len() == len && v.iter().all(|x| x.is_finite()) => Some(v),
            _ => {
                tracing::warn!(path = %path.display(), expected = len, "per-job state (SCAFFOLD control variate or compression residual) has the wrong size or non-finite values; starting from zero");
                None
            }
        }
    }

    /// Replaces the stored `cᵢ` of `job_id`.
    pub(crate) fn save(&self, job_id: &str, control: &[f32]) -> Result<(), ClientError> {
        let state = |path: &Path| {
            let path = path.to_owned();
            move |source| ClientError::State { path, source }
        };
        create_private_dir(&self.dir).map_err(state(&self.dir))?;
        let path = self.path(job_id);
        write_private_atomic(&path, &flotilla_core::params_to_le_bytes(control))
            .map_err(state(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unusable_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::new(dir.path());
        assert_eq!(store.load("7", 3), None);
        store.save("7", &[1.0, -2.5, 0.0]).unwrap();
        assert_eq!(store.load("7", 3), Some(vec![1.0, -2.5, 0.0]));
        // Another job, or the wrong length, starts from zero.
        assert_eq!(store.load("8", 3), None);
        assert_eq!(store.load("7", 4), None);
        // Hostile job ids stay inside the directory.
        store.save("../../etc/x", &[1.0]).unwrap();
        assert!(dir.path().join("scaffold").read_dir().unwrap().count() == 2);
        std::fs::write(store.path("9"), [0u8, 0, 0xc0, 0x7f]).unwrap(); // NaN
        assert_eq!(store.load("9", 1), None);
    }
}
