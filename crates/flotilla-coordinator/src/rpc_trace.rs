//! A `tracing` span around every gRPC call ([`RpcTrace`]), parented on the caller's trace when the
//! request carries a W3C `traceparent` (the client SDK sends one), so that one trace shows a
//! client's task across both processes.
//!
//! The span is `rpc` with the fields `rpc` (the method, from a fixed list), `job`, `round`,
//! `attempt`, `stage` (recorded by the handlers once they know them, see [`record_task`]) and the
//! OpenTelemetry hints `otel.name` (`flotilla.v1.Coordinator/<Method>`) and `otel.kind = "server"`.
//! Which subscriber (if any) sees it is the embedding program's choice: with none, or with one that
//! filters `rpc` out, the span is disabled and a call costs one method-name match and no
//! allocation, formatting or header parsing.

use std::task::{Context, Poll};

use opentelemetry::propagation::Extractor;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{HeaderMap, Request};
use tonic::server::NamedService;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The paths of `flotilla.v1.Coordinator`'s methods. Anything else is `other` (a bounded field:
/// a caller cannot put its own text into span names).
const PATHS: [&str; 7] = [
    "/flotilla.v1.Coordinator/Enroll",
    "/flotilla.v1.Coordinator/CheckIn",
    "/flotilla.v1.Coordinator/DownloadModel",
    "/flotilla.v1.Coordinator/UploadUpdate",
    "/flotilla.v1.Coordinator/QueryUpload",
    "/flotilla.v1.Coordinator/SubmitStageMessage",
    "/flotilla.v1.Coordinator/ReportTaskFailure",
];

/// The method (`UploadUpdate`) and OpenTelemetry span name (`flotilla.v1.Coordinator/UploadUpdate`)
/// of a request path.
fn method(path: &str) -> (&'static str, &'static str) {
    match PATHS.iter().find(|p| **p == path) {
        Some(p) => (&p[p.rfind('/').unwrap_or(0) + 1..], &p[1..]),
        None => ("other", "flotilla.v1.Coordinator/other"),
    }
}

/// Reads W3C trace context headers (`traceparent`, `tracestate`) for the propagator.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Wraps the gRPC service: every call runs inside an `rpc` span (see the module documentation).
#[derive(Clone)]
pub(crate) struct RpcTrace<S>(pub S);

impl<S: NamedService> NamedService for RpcTrace<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for RpcTrace<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (rpc, name) = method(req.uri().path());
        let span = tracing::info_span!(
            "rpc",
            rpc,
            job = Empty,
            round = Empty,
            attempt = Empty,
            stage = Empty,
            otel.name = name,
            otel.kind = "server",
        );
        // Only a subscriber with an OpenTelemetry layer can use a remote parent: without one (or
        // with the span disabled) the headers are not even looked at.
        if !span.is_disabled() && req.headers().contains_key("traceparent") {
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&Headers(req.headers()))
            });
            // Fails only without an OpenTelemetry layer, where there is nothing to parent.
            let _ = span.set_parent(parent);
        }
        self.0.call(req).instrument(span)
    }
}

/// Records the task a call is about on the current `rpc` span (a no-op when the span is disabled).
pub(crate) fn record_task(job: u64, round: u64, attempt: u32, stage: u32) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("job", job);
    span.record("round", round);
    span.record("attempt", attempt);
    span.record("stage", stage);
}

/// Records only the job of the current `rpc` span (calls that name a job but no task).
pub(crate) fn record_job(job: u64) {
    tracing::Span::current().record("job", job);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_fixed_set() {
        assert_eq!(
            method("/flotilla.v1.Coordinator/UploadUpdate"),
            ("UploadUpdate", "flotilla.v1.Coordinator/UploadUpdate")
        );
        assert_eq!(method("/evil\n/Path").0, "other");
        assert_eq!(method("/flotilla.v1.Coordinator/Enroll").0, "Enroll");
    }
}
