//! `flotilla client --metrics-listen ADDR`: the client process's own `GET /metrics` (plain HTTP),
//! fed by the SDK's counters ([`Client::on_stats`](flotilla_client::Client::on_stats)); the SDK
//! serves nothing itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use axum::Router;
use axum::http::header;
use axum::routing::get;
use flotilla_client::ClientStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Outcome = [(&'static str, &'static str); 1];

/// The client's metrics, updated from successive [`ClientStats`].
#[derive(Debug)]
pub struct ClientMetrics {
    registry: Registry,
    tasks: Family<Outcome, Counter>,
    train: Histogram,
    upload_bytes: Counter,
    retries: Counter,
    failures: Family<Outcome, Counter>,
    last: Mutex<ClientStats>,
}

impl ClientMetrics {
    /// Every family registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<Outcome, Counter>::default();
        let train = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let (upload_bytes, retries) = (Counter::default(), Counter::default());
        let failures = Family::<Outcome, Counter>::default();
        registry.register(
            "flotilla_client_tasks",
            "Tasks finished, by outcome (done, failed, outdated)",
            tasks.clone(),
        );
        registry.register(
            "flotilla_client_train_seconds",
            "Time spent in the trainer per task",
            train.clone(),
        );
        registry.register(
            "flotilla_client_upload_bytes",
            "Update payload bytes sent in answered upload streams",
            upload_bytes.clone(),
        );
        registry.register(
            "flotilla_client_retries",
            "Back-offs and reconnections after transport errors or UNAVAILABLE",
            retries.clone(),
        );
        registry.register(
            "flotilla_client_failures",
            "Failures by kind (task, upload_rejected, evaluation)",
            failures.clone(),
        );
        for o in ["done", "failed", "outdated"] {
            let _ = tasks.get_or_create(&[("outcome", o)]);
        }
        for k in ["task", "upload_rejected", "evaluation"] {
            let _ = failures.get_or_create(&[("kind", k)]);
        }
        Self {
            registry,
            tasks,
            train,
            upload_bytes,
            retries,
            failures,
            last: Mutex::default(),
        }
    }

    /// Adds what changed since the previous call. The SDK reports before every check-in, so a
    /// change of `train_time` is the training of the task (or secure-aggregation stage) that
    /// just finished.
    pub fn observe(&self, s: &ClientStats) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let d = |new: u64, old: u64| new.saturating_sub(old);
        let inc = |f: &Family<Outcome, Counter>, l: Outcome, by: u64| {
            if by > 0 {
                f.get_or_create(&l).inc_by(by);
            }
        };
        inc(
            &self.tasks,
            [("outcome", "done")],
            d(s.tasks_done, last.tasks_done),
        );
        inc(
            &self.tasks,
            [("outcome", "failed")],
            d(s.tasks_failed, last.tasks_failed),
        );
        let outdated = d(s.uploads_outdated, last.uploads_outdated);
        inc(&self.tasks, [("outcome", "outdated")], outdated);
        inc(
            &self.failures,
            [("kind", "task")],
            d(s.tasks_failed, last.tasks_failed),
        );
        let rejected = d(s.uploads_rejected, last.uploads_rejected);
        inc(&self.failures, [("kind", "upload_rejected")], rejected);
        let dropped = d(s.evaluations_dropped, last.evaluations_dropped);
        inc(&self.failures, [("kind", "evaluation")], dropped);
        self.upload_bytes
            .inc_by(d(s.upload_bytes, last.upload_bytes));
        self.retries.inc_by(d(s.reconnects, last.reconnects));
        let trained = s.train_time.saturating_sub(last.train_time);
        if !trained.is_zero() {
            self.train.observe(trained.as_secs_f64());
        }
        *last = s.clone();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` and serves `GET /metrics` from `metrics` on the current runtime until the
/// process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<ClientMetrics>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_the_stats_by_difference() {
        let m = ClientMetrics::new();
        let mut s = ClientStats::default();
        s.tasks_done = 2;
        s.upload_bytes = 400;
        s.train_time = std::time::Duration::from_millis(300);
        m.observe(&s);
        s.tasks_done = 3;
        s.tasks_failed = 1;
        s.reconnects = 2;
        s.upload_bytes = 600;
        s.train_time = std::time::Duration::from_millis(500);
        m.observe(&s);
        m.observe(&s);
        let text = m.encode();
        for line in [
            "flotilla_client_tasks_total{outcome=\"done\"} 3",
            "flotilla_client_tasks_total{outcome=\"failed\"} 1",
            "flotilla_client_failures_total{kind=\"task\"} 1",
            "flotilla_client_upload_bytes_total 600",
            "flotilla_client_retries_total 2",
            "flotilla_client_train_seconds_count 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
