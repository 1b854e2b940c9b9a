//! Logs and traces of `flotilla server` and `flotilla client`: the log subscriber (text, escaped by
//! `log_escape`, or JSON lines) and, when an OTLP endpoint is configured, an OpenTelemetry layer
//! that exports the spans over OTLP/gRPC, with W3C trace context propagation.
//!
//! Without an endpoint there is no OpenTelemetry layer and no propagator at all: the spans of the
//! libraries cost what the log subscriber makes of them, nothing more.

use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::Layered;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; text from clients and job specs is escaped.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the event and of its spans (job, round, …).
    Json,
}

/// The logging and tracing options of the networked commands.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317 [default: the
    /// standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; none: no export]
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// Longest wait for the last spans to be exported when the process stops.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed exporter, if any: [`Telemetry::shutdown`] (or dropping it) exports what is still
/// buffered. Must happen while the Tokio runtime that [`init`] was given still runs.
#[must_use = "dropping it at once stops the trace export"]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the buffered spans and stops the exporter (bounded wait).
    pub(crate) fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(error = %e, "could not export the last spans");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The OTLP endpoint: `--otlp-endpoint`, else the standard variables; empty counts as unset.
fn endpoint(args: &TelemetryArgs) -> Option<String> {
    let env = |k: &str| std::env::var(k).ok();
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if disabled {
        return None;
    }
    [
        args.otlp_endpoint.clone(),
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        env("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ]
    .into_iter()
    .flatten()
    .map(|s| s.trim().to_owned())
    .find(|s| !s.is_empty())
}

/// A layer under the one `RUST_LOG` filter, which decides for the logs and the export alike.
type Boxed = Box<dyn Layer<Layered<EnvFilter, Registry>> + Send + Sync>;

/// Installs the process's subscriber: `RUST_LOG` filter (default `info`), text or JSON lines on
/// stderr, and the OTLP exporter when an endpoint is configured, its `service.name` from
/// `OTEL_SERVICE_NAME`, else `service`. The exporter's connection is made on `rt`.
pub(crate) fn init(
    args: &TelemetryArgs,
    service: &'static str,
    rt: &tokio::runtime::Runtime,
) -> Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt: Boxed = match args.log_format {
        LogFormat::Text => {
            // Colour codes only on a terminal: logs redirected to files stay plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            // Every field and message escaped (newlines, ESC, bidi controls): see `log_escape`.
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .fmt_fields(crate::log_escape::fields())
                .with_writer(std::io::stderr)
                .boxed()
        }
        // serde_json escapes every string; the spans' fields (job, round, …) come with each line.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let Some(url) = endpoint(args) else {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
        return Ok(Telemetry { provider: None });
    };
    // tonic's channel spawns its connection task on the runtime it is made in.
    let _entered = rt.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("configuring the OTLP exporter for {url}"))?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    let resource = Resource::builder()
        .with_service_name(name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let otel: Boxed = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("flotilla"))
        .boxed();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(vec![fmt, otel])
        .try_init();
    tracing::info!(endpoint = %url, service = %name, "exporting traces over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}
