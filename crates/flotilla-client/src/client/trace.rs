//! Tracing of a client's work: the `task` span (one per check-in that brought a task, from the
//! check-in to the acknowledged upload) with `check_in`, `download`, `train`, `upload` children,
//! and W3C trace context (`traceparent`) in the metadata of every call, so the coordinator's `rpc`
//! spans join the client's trace.
//!
//! The SDK only makes spans and asks the globally installed OpenTelemetry propagator to write the
//! context: the program decides whether anything is recorded or exported (`flotilla client
//! --otlp-endpoint`). With no subscriber, or none with an OpenTelemetry layer, nothing is written
//! and a call costs a check of whether the current span is enabled.

use opentelemetry::propagation::Injector;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span of one check-in and, if it brings one, the task it brings. `job`, `round`, `attempt`,
/// `stage` are recorded when the task arrives ([`record_task`]), `outcome` when it is over.
/// A check-in without a task keeps the name `task` in logs but is exported as `check_in`, so
/// that traces named `task` are tasks.
pub(super) fn task_span() -> tracing::Span {
    tracing::info_span!(
        "task",
        job = Empty,
        round = Empty,
        attempt = Empty,
        stage = Empty,
        outcome = Empty,
        otel.name = Empty,
    )
}

/// Records the task a `task` span carries out.
pub(super) fn record_task(span: &tracing::Span, job: &str, round: u64, attempt: u32, stage: u32) {
    if span.is_disabled() {
        return;
    }
    span.record("job", job);
    span.record("round", round);
    span.record("attempt", attempt);
    span.record("stage", stage);
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into `metadata`.
pub(super) fn inject(metadata: &mut MetadataMap) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Metadata(metadata));
    });
}

/// gRPC metadata as a carrier for the propagator.
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes only its own well-formed ASCII headers; anything else is dropped.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}
