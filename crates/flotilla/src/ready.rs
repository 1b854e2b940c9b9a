//! Telling scripts that `flotilla server` is ready: one line on stdout and an optional ready file.
//!
//! The line is printed, and the file written, once both listeners are bound: from then on the
//! kernel accepts connections for the coordinator, so a script that waits for either can start
//! clients and admin commands without racing the server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The addresses a started coordinator answers at, as URLs.
#[derive(Debug, Clone)]
pub struct Ready {
    grpc: String,
    admin: String,
    /// The `--metrics-listen` URL of `/metrics`, if any.
    metrics: Option<String>,
}

impl Ready {
    /// URLs of the bound listeners: `https://` with TLS, `http://` when `insecure`.
    pub fn new(insecure: bool, grpc: SocketAddr, admin: SocketAddr) -> Self {
        let scheme = if insecure { "http" } else { "https" };
        Self {
            grpc: format!("{scheme}://{grpc}"),
            admin: format!("{scheme}://{admin}"),
            metrics: None,
        }
    }

    /// Adds the `--metrics-listen` address (plain HTTP) to the ready file as `"metrics"`.
    pub fn with_metrics(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics = addr.map(|a| format!("http://{a}/metrics"));
        self
    }

    /// The one line printed on stdout, e.g.
    /// `coordinator ready: gRPC https://127.0.0.1:7070, admin https://127.0.0.1:7443`.
    pub fn line(&self) -> String {
        format!(
            "coordinator ready: gRPC {}, admin {}",
            self.grpc, self.admin
        )
    }

    /// Writes `{"grpc": …, "admin": …, "pid": …}` (and `"metrics": …` with `--metrics-listen`) to `path` atomically (a temporary file in the same
    /// directory, then a rename), so a reader never sees a half-written file. The returned guard
    /// removes the file when dropped, i.e. when the server stops.
    pub fn write_file(&self, path: &Path) -> Result<ReadyFile> {
        let mut doc = serde_json::json!({ "grpc": self.grpc, "admin": self.admin, "pid": std::process::id() });
        if let Some(m) = &self.metrics {
            doc["metrics"] = serde_json::Value::from(m.as_str());
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".flotilla-ready")
            .tempfile_in(dir)
            .with_context(|| {
                format!(
                    "creating a temporary file in {} for --ready-file",
                    dir.display()
                )
            })?;
        writeln!(tmp, "{doc}")
            .and_then(|()| tmp.as_file().sync_all())
            .context("writing the ready file")?;
        tmp.persist(path)
            .with_context(|| format!("writing --ready-file {}", path.display()))?;
        Ok(ReadyFile(path.to_path_buf()))
    }
}

/// Removes the ready file when dropped: a file left behind would tell the next script reading it
/// that a stopped server is ready.
#[derive(Debug)]
pub struct ReadyFile(PathBuf);

impl Drop for ReadyFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove the ready file");
        }
    }
}
