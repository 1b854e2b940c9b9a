//! Model blobs in an object store, content-addressed by SHA-256.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::types::JobId;

/// Where model blobs live.
#[derive(Clone)]
pub(crate) struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store (empty for a local directory, the URL path for S3).
    prefix: Path,
    /// Root directory when the store is the local filesystem: blobs are fsynced there.
    local_root: Option<PathBuf>,
    description: String,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Blobs {
    /// Opens the blob store named by `url`: a filesystem path, `file:///abs/path`, or (with the
    /// `s3` feature) `s3://bucket/prefix`.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            return open_s3(url, rest);
        }
        let dir = if url.starts_with("file:") {
            let parsed = url::Url::parse(url).map_err(|e| StoreError::UnsupportedBlobUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
            parsed
                .to_file_path()
                .map_err(|()| StoreError::UnsupportedBlobUrl {
                    url: url.to_owned(),
                    reason: "not an absolute local file URL".to_owned(),
                })?
        } else if url.contains("://") {
            return Err(StoreError::UnsupportedBlobUrl {
                url: url.to_owned(),
                reason: "expected a directory, file:///dir or s3://bucket/prefix".to_owned(),
            });
        } else {
            PathBuf::from(url)
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| io_err(&dir, source))?;
        let store = LocalFileSystem::new_with_prefix(&dir)?;
        Ok(Blobs {
            store: Arc::new(store),
            prefix: Path::default(),
            local_root: Some(dir.clone()),
            description: format!("local directory {}", dir.display()),
        })
    }

    fn location(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        Ok(key
            .split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part)))
    }

    /// Stores `bytes` as version `version` of `job_id`'s model; returns its key. Idempotent:
    /// the key is derived from the content, and an existing blob of the right size is kept.
    pub(crate) async fn put(&self, job_id: JobId, version: u64, bytes: Vec<u8>) -> Result<String> {
        let sha = hex::encode(Sha256::digest(&bytes));
        let key = format!("job-{}/v{}-{}.bin", job_id.0, version, sha);
        let location = self.location(&key)?;
        match self.store.head(&location).await {
            Ok(meta) if meta.size == bytes.len() as u64 => return Ok(key),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.put(&location, PutPayload::from(bytes)).await?;
        if let Some(root) = &self.local_root {
            let file = root.join(&key);
            tokio::task::spawn_blocking(move || sync_file_and_parents(&file, 2))
                .await
                .map_err(|e| StoreError::Io {
                    path: key.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        }
        Ok(key)
    }

    /// Reads the blob under `key` and checks it against the SHA-256 in the key.
    pub(crate) async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let location = self.location(key)?;
        let bytes = match self.store.get(&location).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::BlobNotFound(key.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        if hex::encode(Sha256::digest(&bytes)) != key_sha(key)? {
            return Err(StoreError::BlobCorrupt(key.to_owned()));
        }
        Ok(bytes.into())
    }

    /// Whether a blob exists under `key`.
    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        let location = self.location(key)?;
        match self.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Keys look like `job-<id>/v<version>-<sha256 hex>.bin`.
fn validate_key(key: &str) -> Result<()> {
    let bad = || StoreError::InvalidBlobKey(key.to_owned());
    let (dir, file) = key.split_once('/').ok_or_else(bad)?;
    let job = dir.strip_prefix("job-").ok_or_else(bad)?;
    let file = file
        .strip_prefix('v')
        .and_then(|f| f.strip_suffix(".bin"))
        .ok_or_else(bad)?;
    let (version, sha) = file.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex64 = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if digits(job) && digits(version) && hex64 {
        Ok(())
    } else {
        Err(bad())
    }
}

fn key_sha(key: &str) -> Result<&str> {
    key.strip_suffix(".bin")
        .and_then(|k| k.rsplit_once('-'))
        .map(|(_, sha)| sha)
        .ok_or_else(|| StoreError::InvalidBlobKey(key.to_owned()))
}

fn io_err(path: &FsPath, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// fsyncs `file` and `levels` of its parent directories, so a blob survives power loss once
/// `put_model` returns (object_store's local backend writes and renames but does not fsync).
fn sync_file_and_parents(file: &FsPath, levels: usize) -> Result<()> {
    let sync = |p: &FsPath| {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(p, e))
    };
    sync(file)?;
    let mut dir = file.parent();
    for _ in 0..levels {
        match dir {
            Some(d) => {
                sync(d)?;
                dir = d.parent();
            }
            None => break,
        }
    }
    Ok(())
}

#[cfg(feature = "s3")]
fn open_s3(url: &str, rest: &str) -> Result<Blobs> {
    use object_store::aws::AmazonS3Builder;
    let bucket_end = rest.find('/').unwrap_or(rest.len());
    let (bucket, prefix) = rest.split_at(bucket_end);
    if bucket.is_empty() {
        return Err(StoreError::UnsupportedBlobUrl {
            url: url.to_owned(),
            reason: "no bucket name".to_owned(),
        });
    }
    // Credentials, region and endpoint (for S3-compatible servers such as MinIO) come from the
    // usual AWS_* environment variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    // AWS_ENDPOINT, AWS_ALLOW_HTTP.
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()?;
    let prefix =
        Path::parse(prefix.trim_matches('/')).map_err(|e| StoreError::UnsupportedBlobUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Blobs {
        store: Arc::new(store),
        prefix,
        local_root: None,
        description: format!("S3 bucket {bucket}"),
    })
}

#[cfg(not(feature = "s3"))]
fn open_s3(url: &str, _rest: &str) -> Result<Blobs> {
    Err(StoreError::UnsupportedBlobUrl {
        url: url.to_owned(),
        reason: "S3 support is not compiled in (enable flotilla-store's `s3` feature)".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        let sha = "a".repeat(64);
        assert!(validate_key(&format!("job-1/v0-{sha}.bin")).is_ok());
        for bad in [
            String::new(),
            format!("job-1/v0-{sha}"),
            format!("job-x/v0-{sha}.bin"),
            format!("../job-1/v0-{sha}.bin"),
            format!("job-1/v0-{}.bin", "A".repeat(64)),
            format!("job-1/v0-{sha}.bin/extra"),
            "job-1/v0-abc.bin".to_owned(),
        ] {
            assert!(
                matches!(validate_key(&bad), Err(StoreError::InvalidBlobKey(_))),
                "{bad}"
            );
        }
    }
}
