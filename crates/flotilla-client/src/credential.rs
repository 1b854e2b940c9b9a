//! The persisted enrollment: `state_dir/credential.json`, written atomically with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};

use crate::error::ClientError;

/// File name of the credential inside the state directory.
pub const CREDENTIAL_FILE: &str = "credential.json";

/// Longest client id or credential accepted from the coordinator, in bytes.
const MAX_SECRET_LEN: usize = 4096;

/// What enrollment produced: the client's identity and its long-lived secret.
///
/// `Debug` redacts the credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCredential {
    /// Identifier assigned by the coordinator.
    pub client_id: String,
    /// Secret sent as `authorization: Bearer <credential>`.
    pub credential: String,
    /// The coordinator address the credential was issued by.
    pub coordinator: String,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("client_id", &self.client_id)
            .field("credential", &"<redacted>")
            .field("coordinator", &self.coordinator)
            .finish()
    }
}

impl StoredCredential {
    /// Checks the fields and returns the `authorization` header value (marked sensitive).
    pub(crate) fn bearer(&self) -> Result<MetadataValue<Ascii>, String> {
        if self.client_id.is_empty() || self.client_id.len() > MAX_SECRET_LEN {
            return Err(format!("client_id must be 1..={MAX_SECRET_LEN} bytes"));
        }
        if self.credential.is_empty() || self.credential.len() > MAX_SECRET_LEN {
            return Err(format!("credential must be 1..={MAX_SECRET_LEN} bytes"));
        }
        // Visible ASCII only, so that it is a valid header value and cannot smuggle whitespace.
        if !self.credential.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("credential must be printable ASCII without spaces".into());
        }
        let mut v: MetadataValue<Ascii> = format!("Bearer {}", self.credential)
            .parse()
            .map_err(|_| "credential is not a valid header value".to_string())?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// Loads the credential file; `Ok(None)` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, ClientError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ClientError::State {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        warn_if_readable_by_others(path);
        let cred: Self =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::CorruptCredential {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        cred.bearer()
            .map_err(|reason| ClientError::CorruptCredential {
                path: path.to_owned(),
                reason,
            })?;
        Ok(Some(cred))
    }

    /// Writes the credential file atomically (temporary file with mode 0600, fsync, rename, fsync
    /// of the directory), creating the directory (mode 0700) if needed.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let err = |p: &Path| {
            let p = p.to_owned();
            move |source| ClientError::State { path: p, source }
        };
        create_private_dir(dir).map_err(err(dir))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| ClientError::State {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        let mut json = json;
        json.push(b'\n');
        write_private_atomic(path, &json).map_err(err(path))
    }
}

/// Replaces `path` with `bytes` atomically (temporary file with mode 0600, fsync, rename, fsync of
/// the directory): after a crash the file holds either the old or the new bytes, never a mix.
/// The directory must exist.
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| CREDENTIAL_FILE.into());
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(unix)]
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|f| {
            // `mode` is filtered by the umask and ignored for an existing file: set it explicitly.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            Ok(f)
        })
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) {}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", m.permissions().mode() & 0o777),
            "credential file is accessible by other users; it should be mode 0600"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred() -> StoredCredential {
        StoredCredential {
            client_id: "c-1".into(),
            credential: "s3cr3t-token".into(),
            coordinator: "https://coord:7443".into(),
        }
    }

    #[test]
    fn round_trip_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sub").join(CREDENTIAL_FILE);
        assert_eq!(StoredCredential::load(&path).unwrap(), None);
        cred().save(&path).unwrap();
        assert_eq!(StoredCredential::load(&path).unwrap(), Some(cred()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Overwrite; no temporary file is left behind.
        let mut c2 = cred();
        c2.client_id = "c-2".into();
        c2.save(&path).unwrap();
        assert_eq!(StoredCredential::load(&path).unwrap(), Some(c2));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CREDENTIAL_FILE)]);
    }

    #[test]
    fn debug_redacts_and_corrupt_files_are_errors() {
        assert!(!format!("{:?}", cred()).contains("s3cr3t"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CREDENTIAL_FILE);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            StoredCredential::load(&path),
            Err(ClientError::CorruptCredential { .. })
        ));
        let mut bad = cred();
        bad.credential = "has space".into();
        std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(matches!(
            StoredCredential::load(&path),
            Err(ClientError::CorruptCredential { .. })
        ));
    }
}
