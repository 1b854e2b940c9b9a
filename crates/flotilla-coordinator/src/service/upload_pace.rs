//! Slow-stream protection of uploads: a stream that holds an upload slot must keep sending, or it
//! is dropped and its slot freed (slowloris).
//!
//! Progress is measured in bytes received on the HTTP/2 stream, not in decoded chunks, so a slow
//! but honest link sending a large chunk is judged by what it actually delivers: [`CountUploadBytes`]
//! wraps the gRPC service and counts the request body bytes of every `UploadUpdate` call into an
//! [`UploadProgress`] the handler finds in the request's extensions. [`Pacer`] then drops a stream
//! that received nothing for [`Limits::upload_idle_timeout`], or less than
//! [`Limits::min_upload_bytes_per_sec`] × [`Limits::upload_rate_window`] in any window.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use flotilla_proto::v1;
use tokio::time::Instant;
use tonic::Streaming;
use tonic::body::Body;
use tonic::codegen::http::Request;
use tonic::codegen::{Bytes, Service};
use tonic::server::NamedService;

use crate::limits::Limits;

/// The gRPC path whose request bodies are counted.
const UPLOAD_PATH: &str = "/flotilla.v1.Coordinator/UploadUpdate";

/// Bytes received so far on one `UploadUpdate` stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct UploadProgress(Arc<AtomicU64>);

impl UploadProgress {
    fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request body that counts its data bytes into an [`UploadProgress`].
struct CountingBody {
    inner: Body,
    progress: UploadProgress,
    /// `flotilla_received_bytes_total`.
    total: prometheus_client::metrics::counter::Counter,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.progress
                .0
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            self.total.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps the gRPC service: `UploadUpdate` requests get a counting body and its [`UploadProgress`]
/// in their extensions; every call is timed into `flotilla_rpc_duration_seconds{rpc}` (until its
/// response starts).
#[derive(Clone)]
pub(crate) struct CountUploadBytes<S>(pub S, pub Arc<crate::metrics::Metrics>);

impl<S: NamedService> NamedService for CountUploadBytes<S> {
    const NAME: &'static str = S::NAME;
}

/// The `rpc` label of a gRPC path: the method name, from a fixed list.
fn rpc_name(path: &str) -> &'static str {
    const RPCS: [&str; 7] = [
        "Enroll",
        "CheckIn",
        "DownloadModel",
        "UploadUpdate",
        "QueryUpload",
        "SubmitStageMessage",
        "ReportTaskFailure",
    ];
    let method = path.rsplit('/').next().unwrap_or_default();
    RPCS.into_iter().find(|r| *r == method).unwrap_or("other")
}

impl<S> Service<Request<Body>> for CountUploadBytes<S>
where
    S: Service<Request<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let rpc = rpc_name(req.uri().path());
        let fut = if req.uri().path() != UPLOAD_PATH {
            self.0.call(req)
        } else {
            let (mut parts, inner) = req.into_parts();
            let progress = UploadProgress::default();
            parts.extensions.insert(progress.clone());
            let total = self.1.received_bytes.clone();
            self.0.call(Request::from_parts(
                parts,
                Body::new(CountingBody {
                    inner,
                    progress,
                    total,
                }),
            ))
        };
        let metrics = self.1.clone();
        let started = std::time::Instant::now();
        Box::pin(async move {
            let out = fut.await;
            metrics.rpc_done(rpc, started);
            out
        })
    }
}

/// What the next message of an upload stream turned out to be.
pub(crate) enum Next {
    /// A message, or `None` at the end of the stream.
    Message(Option<v1::UploadMessage>),
    /// The stream broke (the client went away, a transport error).
    Broken(tonic::Status),
    /// The stream is too slow to keep its slot; the text says how.
    TooSlow(String),
}

/// Watches one upload stream's progress while it holds a slot. See the module documentation.
pub(crate) struct Pacer {
    progress: Option<UploadProgress>,
    /// Chunk bytes, for a stream without transport progress (a service not wrapped).
    decoded: u64,
    idle: Duration,
    min_rate: u64,
    window: Duration,
    last_bytes: u64,
    last_activity: Instant,
    window_start: Instant,
    window_bytes: u64,
}

impl Pacer {
    /// Starts watching now (when the stream got its slot).
    pub(crate) fn new(limits: &Limits, progress: Option<UploadProgress>) -> Self {
        let now = Instant::now();
        let bytes = progress.as_ref().map_or(0, UploadProgress::bytes);
        Self {
            progress,
            decoded: 0,
            idle: limits.upload_idle_timeout,
            min_rate: limits.min_upload_bytes_per_sec,
            window: limits.upload_rate_window,
            last_bytes: bytes,
            last_activity: now,
            window_start: now,
            window_bytes: bytes,
        }
    }

    fn bytes(&self) -> u64 {
        self.progress
            .as_ref()
            .map_or(self.decoded, UploadProgress::bytes)
    }

    /// When the stream must next be judged.
    fn next_check(&self) -> Instant {
        let idle = self.last_activity + self.idle;
        if self.min_rate == 0 {
            idle
        } else {
            idle.min(self.window_start + self.window)
        }
    }

    /// Judges the stream at `now`: `Err` with the reason when it is too slow.
    fn check(&mut self, now: Instant) -> Result<(), String> {
        let bytes = self.bytes();
        if bytes > self.last_bytes {
            self.last_bytes = bytes;
            self.last_activity = now;
        }
        if now.duration_since(self.last_activity) >= self.idle {
            return Err(format!("no data for {} ms", self.idle.as_millis()));
        }
        if self.min_rate > 0 && now.duration_since(self.window_start) >= self.window {
            let got = bytes - self.window_bytes;
            let need = (self.min_rate as f64 * self.window.as_secs_f64()) as u64;
            if got < need {
                return Err(format!(
                    "{got} bytes in {} ms, below the minimum of {} bytes/s",
                    self.window.as_millis(),
                    self.min_rate
                ));
            }
            self.window_start = now;
            self.window_bytes = bytes;
        }
        Ok(())
    }

    /// The next message of `stream`, or [`Next::TooSlow`] as soon as the stream falls below the
    /// minimum pace.
    pub(crate) async fn next(&mut self, stream: &mut Streaming<v1::UploadMessage>) -> Next {
        loop {
            let now = Instant::now();
            if now >= self.next_check()
                && let Err(why) = self.check(now)
            {
                return Next::TooSlow(why);
            }
            // `Streaming::message` keeps its state in the stream, so abandoning it at the
            // timeout loses nothing.
            match tokio::time::timeout_at(self.next_check(), stream.message()).await {
                Ok(Ok(msg)) => {
                    if let Some(v1::UploadMessage {
                        kind: Some(v1::upload_message::Kind::Chunk(c)),
                    }) = &msg
                    {
                        self.decoded += c.data.len() as u64;
                    }
                    return Next::Message(msg);
                }
                Ok(Err(status)) => return Next::Broken(status),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(idle_ms: u64, rate: u64, window_ms: u64) -> (Pacer, UploadProgress) {
        let limits = Limits {
            upload_idle_timeout: Duration::from_millis(idle_ms),
            min_upload_bytes_per_sec: rate,
            upload_rate_window: Duration::from_millis(window_ms),
            ..Limits::default()
        };
        let p = UploadProgress::default();
        (Pacer::new(&limits, Some(p.clone())), p)
    }

    #[test]
    fn idle_stream_is_too_slow() {
        let (mut pc, p) = pacer(1000, 0, 1000);
        let t0 = pc.last_activity;
        assert!(pc.check(t0 + Duration::from_millis(500)).is_ok());
        p.0.fetch_add(10, Ordering::Relaxed);
        assert!(
            pc.check(t0 + Duration::from_millis(900)).is_ok(),
            "bytes arrived: activity"
        );
        assert!(
            pc.check(t0 + Duration::from_millis(1800)).is_ok(),
            "900 ms since the last byte"
        );
        let e = pc.check(t0 + Duration::from_millis(1900)).unwrap_err();
        assert!(e.contains("no data for 1000 ms"), "{e}");
    }

    #[test]
    fn trickle_below_the_rate_is_too_slow_and_a_fast_stream_is_not() {
        let (mut pc, p) = pacer(10_000, 100, 2000);
        let t0 = pc.window_start;
        for i in 1..=19 {
            p.0.fetch_add(10, Ordering::Relaxed);
            assert!(pc.check(t0 + Duration::from_millis(100 * i)).is_ok());
        }
        // 190 bytes in the 2 s window: below 100 B/s.
        let e = pc.check(t0 + Duration::from_millis(2000)).unwrap_err();
        assert!(e.contains("below the minimum of 100 bytes/s"), "{e}");

        let (mut pc, p) = pacer(10_000, 100, 2000);
        let t0 = pc.window_start;
        for w in 1..=3 {
            p.0.fetch_add(250, Ordering::Relaxed);
            assert!(
                pc.check(t0 + Duration::from_millis(2000 * w)).is_ok(),
                "window {w}"
            );
        }
    }
}
