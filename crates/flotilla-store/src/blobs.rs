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
            return open_s3(url, rest).await;
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

    /// Stores `bytes` as version `version` of the registered model `name` (already checked by
    /// [`flotilla_registry::ModelName`]); returns its key `registry/NAME/vN-SHA256.bin`. Idempotent
    /// like [`Blobs::put`].
    pub(crate) async fn put_registry(
        &self,
        name: &str,
        version: u64,
        bytes: Vec<u8>,
    ) -> Result<String> {
        let sha = hex::encode(Sha256::digest(&bytes));
        let key = format!("registry/{name}/v{version}-{sha}.bin");
        let location = self.location(&key)?;
        match self.store.head(&location).await {
            Ok(meta) if meta.size == bytes.len() as u64 => return Ok(key),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.put(&location, PutPayload::from(bytes)).await?;
        if let Some(root) = &self.local_root {
            let file = root.join(&key);
            tokio::task::spawn_blocking(move || sync_file_and_parents(&file, 3))
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

    /// The size of the blob under `key`, bytes; `None` if there is none.
    pub(crate) async fn size(&self, key: &str) -> Result<Option<u64>> {
        let location = self.location(key)?;
        match self.store.head(&location).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object under `job-<id>/` directories (of one job, if given), as keys relative to the
    /// store's prefix: model blobs, and anything else left there. Two levels of
    /// `list_with_delimiter`, which is all the layout has.
    pub(crate) async fn list_keys(&self, job: Option<JobId>) -> Result<Vec<String>> {
        let dirs: Vec<Path> = match job {
            Some(j) => vec![self.prefix.clone().join(format!("job-{}", j.0))],
            None => {
                let root = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
                let top = self.store.list_with_delimiter(root).await?;
                top.common_prefixes
                    .into_iter()
                    .filter(|p| p.filename().is_some_and(|f| f.starts_with("job-")))
                    .collect()
            }
        };
        let mut keys = Vec::new();
        for dir in dirs {
            let listed = match self.store.list_with_delimiter(Some(&dir)).await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for meta in listed.objects {
                let rel = meta.location.prefix_match(&self.prefix).map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_owned())
                        .collect::<Vec<_>>()
                        .join("/")
                });
                if let Some(rel) = rel {
                    keys.push(rel);
                }
            }
        }
        Ok(keys)
    }

    /// Deletes the object under `key` (relative to the store's prefix; any key [`Blobs::list_keys`]
    /// returned). A missing object is not an error.
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let location = key
            .split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part));
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `len` bytes to a scratch object and deletes it: whether a model of that size can be
    /// stored now (a full disk or an unreachable bucket fails here).
    pub(crate) async fn probe(&self, len: usize) -> Result<()> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Random(e.to_string()))?;
        let location = self
            .prefix
            .clone()
            .join(PROBE_DIR)
            .join(format!("{}.probe", hex::encode(nonce)));
        let put = self
            .store
            .put(&location, PutPayload::from(vec![0u8; len]))
            .await;
        let deleted = self.store.delete(&location).await;
        put?;
        match deleted {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes what a crash can leave in the store besides orphan models: scratch objects of
    /// [`Blobs::probe`] and, in a local directory, the staging files (`…#N`) of interrupted
    /// writes. Only while nothing writes to the store.
    pub(crate) async fn remove_leftovers(&self) -> Result<usize> {
        let mut removed = 0;
        let probes = self.prefix.clone().join(PROBE_DIR);
        if let Ok(l) = self.store.list_with_delimiter(Some(&probes)).await {
            for meta in l.objects {
                if self.store.delete(&meta.location).await.is_ok() {
                    removed += 1;
                }
            }
        }
        if let Some(root) = self.local_root.clone() {
            removed += tokio::task::spawn_blocking(move || remove_staging_files(&root))
                .await
                .map_err(|e| StoreError::Io {
                    path: "blob store".into(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        }
        Ok(removed)
    }
}

/// Directory of [`Blobs::probe`]'s scratch objects.
const PROBE_DIR: &str = "probe";

/// Deletes `job-*/…#N` staging files object_store leaves when a process dies mid-write.
fn remove_staging_files(root: &FsPath) -> Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(root, e)),
    };
    for dir in entries.flatten() {
        let name = dir.file_name();
        if !name.to_string_lossy().starts_with("job-") || !dir.path().is_dir() {
            continue;
        }
        let files = std::fs::read_dir(dir.path()).map_err(|e| io_err(&dir.path(), e))?;
        for f in files.flatten() {
            if f.file_name().to_string_lossy().contains('#') {
                std::fs::remove_file(f.path()).map_err(|e| io_err(&f.path(), e))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Keys look like `job-<id>/v<version>-<sha256 hex>.bin`, or for a registered model's version
/// `registry/<name>/v<version>-<sha256 hex>.bin`.
fn validate_key(key: &str) -> Result<()> {
    let bad = || StoreError::InvalidBlobKey(key.to_owned());
    if let Some(rest) = key.strip_prefix("registry/") {
        let (name, file) = rest.split_once('/').ok_or_else(bad)?;
        flotilla_registry::ModelName::new(name).map_err(|_| bad())?;
        return validate_file(key, file);
    }
    let (dir, file) = key.split_once('/').ok_or_else(bad)?;
    let job = dir.strip_prefix("job-").ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(job) {
        return Err(bad());
    }
    validate_file(key, file)
}

/// The file part of a key: `v<version>-<sha256 hex>.bin`.
fn validate_file(key: &str, file: &str) -> Result<()> {
    let bad = || StoreError::InvalidBlobKey(key.to_owned());
    let file = file
        .strip_prefix('v')
        .and_then(|f| f.strip_suffix(".bin"))
        .ok_or_else(bad)?;
    let (version, sha) = file.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex64 = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if digits(version) && hex64 {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Whether `key` is a job's model blob key (`job-<id>/v<version>-<sha256>.bin`), not a leftover.
pub(crate) fn is_model_key(key: &str) -> bool {
    key.starts_with("job-") && validate_key(key).is_ok()
}

/// [`StoreError::InvalidBlobKey`] unless `key` is a model blob's key.
pub(crate) fn check_key(key: &str) -> Result<()> {
    validate_key(key)
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

/// Where the credentials for S3 can come from: the environment variables object_store's
/// `AmazonS3Builder::from_env` reads. Without any of them it would fall back to the EC2 instance
/// metadata endpoint, which off EC2 only times out minutes later; so that fallback must be asked
/// for (`AWS_METADATA_ENDPOINT`), and its absence is a one-line error at startup instead.
#[cfg(feature = "s3")]
const S3_CREDENTIAL_SOURCES: &[&[&str]] = &[
    &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    &["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"],
    &["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"],
    &[
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ],
    &["AWS_METADATA_ENDPOINT"],
    &["AWS_SKIP_SIGNATURE"],
];

/// `None` when the environment (`var`) names a complete credential source for S3; otherwise what
/// to set, one line.
#[cfg(feature = "s3")]
fn s3_credentials_problem(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    if S3_CREDENTIAL_SOURCES
        .iter()
        .any(|source| source.iter().all(|k| set(k)))
    {
        return None;
    }
    // Half a pair is the likeliest mistake: name the missing half.
    for source in S3_CREDENTIAL_SOURCES.iter().filter(|s| s.len() == 2) {
        if let (true, false) | (false, true) = (set(source[0]), set(source[1])) {
            let (given, missing) = if set(source[0]) {
                (source[0], source[1])
            } else {
                (source[1], source[0])
            };
            return Some(format!("{given} is set but {missing} is not: set it too"));
        }
    }
    Some(
        "no AWS credentials in the environment: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
         (plus AWS_REGION, and AWS_ENDPOINT_URL for a server other than AWS S3), or \
         AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or AWS_METADATA_ENDPOINT to use an EC2 \
         instance role"
            .to_owned(),
    )
}

/// [`s3_credentials_problem`], and a plain-HTTP endpoint without `AWS_ALLOW_HTTP` (object_store
/// would refuse each request with a bare "builder error").
#[cfg(feature = "s3")]
fn s3_env_problem(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
    let allowed = var("AWS_ALLOW_HTTP").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if endpoint.is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("http://")) && !allowed {
        return Some(
            "AWS_ENDPOINT_URL is plain http://: set AWS_ALLOW_HTTP=true (only for a server on a \
             trusted network) or use https://"
                .to_owned(),
        );
    }
    s3_credentials_problem(var)
}

/// An error message on one line and of bounded length: object_store's S3 errors can carry an
/// XML response body over several lines.
#[cfg(feature = "s3")]
fn one_line(message: &str) -> String {
    let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 400 {
        let mut end = 400;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

#[cfg(feature = "s3")]
async fn open_s3(url: &str, rest: &str) -> Result<Blobs> {
    use object_store::RetryConfig;
    use object_store::aws::AmazonS3Builder;
    let bucket_end = rest.find('/').unwrap_or(rest.len());
    let (bucket, prefix) = rest.split_at(bucket_end);
    let unsupported = |reason: String| StoreError::UnsupportedBlobUrl {
        url: url.to_owned(),
        reason,
    };
    if bucket.is_empty() {
        return Err(unsupported(
            "no bucket name: write s3://BUCKET/PREFIX".to_owned(),
        ));
    }
    let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| unsupported(e.to_string()))?;
    let unusable = |reason: String| StoreError::BlobStoreUnusable {
        url: url.to_owned(),
        reason,
    };
    if let Some(problem) = s3_env_problem(|k| std::env::var(k).ok()) {
        return Err(unusable(problem));
    }
    // object_store's HTTP client is reqwest over rustls without a built-in crypto provider (no
    // aws-lc-rs in the build), and reqwest panics when the process has none: ring, as the rest of
    // the stack uses. A provider the process installed already is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Credentials, region and endpoint (for S3-compatible servers such as MinIO) come from the
    // usual AWS_* environment variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    // AWS_ENDPOINT_URL, AWS_ALLOW_HTTP (see `S3_CREDENTIAL_SOURCES` for the other credentials).
    let builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let store = builder
        .clone()
        .build()
        .map_err(|e| unusable(one_line(&e.to_string())))?;
    // A wrong endpoint, bucket or key is found out now, in one line, not at the first commit.
    // The check has a short retry budget of its own; the store keeps object_store's default.
    let check = builder
        .with_retry(RetryConfig {
            max_retries: 1,
            retry_timeout: std::time::Duration::from_secs(10),
            ..RetryConfig::default()
        })
        .build()
        .map_err(|e| unusable(one_line(&e.to_string())))?;
    let blobs = Blobs {
        store: Arc::new(check),
        prefix,
        local_root: None,
        description: format!("S3 bucket {bucket}"),
    };
    blobs.probe(0).await.map_err(|e| {
        unusable(one_line(&format!(
            "cannot write to the bucket ({e}): check AWS_ENDPOINT_URL, AWS_REGION, the \
             credentials and that the bucket exists (AWS_ALLOW_HTTP=true for a plain-HTTP \
             endpoint)"
        )))
    })?;
    Ok(Blobs {
        store: Arc::new(store),
        ..blobs
    })
}

#[cfg(not(feature = "s3"))]
async fn open_s3(url: &str, _rest: &str) -> Result<Blobs> {
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

    #[cfg(feature = "s3")]
    #[test]
    fn s3_credentials_are_checked_before_anything_is_tried() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            s3_credentials_problem(env(&[
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s")
            ])),
            None
        );
        assert_eq!(
            s3_credentials_problem(env(&[("AWS_METADATA_ENDPOINT", "http://169.254.169.254")])),
            None
        );
        let none = s3_credentials_problem(env(&[("AWS_REGION", "eu-west-1")])).unwrap();
        assert!(
            none.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            "{none}"
        );
        assert!(!none.contains('\n'));
        let half = s3_credentials_problem(env(&[("AWS_ACCESS_KEY_ID", "k")])).unwrap();
        assert_eq!(
            half,
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set it too"
        );
        // An empty value is not a credential.
        let http = s3_env_problem(env(&[
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ]))
        .unwrap();
        assert!(http.contains("set AWS_ALLOW_HTTP=true"), "{http}");
        assert_eq!(
            s3_env_problem(env(&[
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("AWS_ALLOW_HTTP", "true"),
            ])),
            None
        );
        let blank = s3_credentials_problem(env(&[
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", " "),
        ]))
        .unwrap();
        assert!(blank.contains("AWS_SECRET_ACCESS_KEY is not"), "{blank}");
    }

    #[cfg(feature = "s3")]
    #[test]
    fn errors_are_one_bounded_line() {
        assert_eq!(
            one_line("a\n  <Error>\r\n b</Error>\n"),
            "a <Error> b</Error>"
        );
        let long = one_line(&"é".repeat(500));
        assert!(long.len() <= 400 + '…'.len_utf8() && long.ends_with('…'));
    }
}
