//! `GET /metrics`: the Prometheus (OpenMetrics text) exposition of [`crate::metrics::Metrics`],
//! on the admin listener (behind the admin token unless `metrics_public`) and, with
//! `metrics_listen`, on a plain-HTTP listener of its own that serves nothing else.
//!
//! Gauges that come from the store (clients enrolled and active per tenant) are refreshed at
//! most every [`STORE_REFRESH`], whatever the scrape rate; the others are kept up to date as
//! events happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::{L1, MAX_TENANTS};
use crate::state::Shared;

/// The content type `prometheus_client`'s text encoder produces.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest the store-derived gauges are reused before a scrape reads the store again.
pub(crate) const STORE_REFRESH: Duration = Duration::from_secs(5);

/// Longest a scrape waits for the store before answering with the previous values.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the `/metrics` handlers share: the coordinator state and when the store was last read.
#[derive(Clone)]
pub(crate) struct Scrape {
    shared: Arc<Shared>,
    /// A tokio mutex: concurrent scrapes wait for one refresh instead of reading the store twice.
    refreshed: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl Scrape {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            refreshed: Arc::default(),
        }
    }

    /// The exposition text, after refreshing the store-derived gauges if they are stale.
    pub(crate) async fn render(&self) -> String {
        let mut last = self.refreshed.lock().await;
        if last.is_none_or(|t| t.elapsed() >= STORE_REFRESH) {
            *last = Some(Instant::now());
            self.refresh().await;
        }
        self.shared.metrics.encode()
    }

    async fn refresh(&self) {
        let s = &self.shared;
        let m = &s.metrics;
        let (spent, budget) = s.privacy.tenant_spend(MAX_TENANTS);
        for (tenant, eps) in spent {
            let t: L1 = [("tenant", tenant)];
            m.tenants.epsilon_spent.get_or_create(&t).set(eps);
            if let Some(b) = budget {
                m.tenants.epsilon_budget.get_or_create(&t).set(b);
            }
        }
        let list = m.store_op("list_clients", s.store.list_clients(None));
        let clients = match tokio::time::timeout(STORE_TIMEOUT, list).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metrics: could not count the clients");
                return;
            }
            Err(_) => return,
        };
        // Active: seen within the longest check-in TTL of the running jobs (the policy default
        // without any), plus the interval at which `last_seen` is written.
        let ttl = s
            .job_list()
            .iter()
            .map(|j| j.spec.policy().checkin_ttl_ms)
            .max()
            .unwrap_or(flotilla_core::round::RoundPolicy::new(1, 1).checkin_ttl_ms);
        let since = crate::clock::now_ms().saturating_sub(ttl + crate::bounds::TOUCH_INTERVAL_MS);
        let mut counts = std::collections::BTreeMap::<String, (i64, i64)>::new();
        for c in clients.iter().filter(|c| !c.revoked) {
            if counts.len() >= MAX_TENANTS && !counts.contains_key(&c.tenant) {
                continue;
            }
            let e = counts.entry(c.tenant.clone()).or_default();
            e.0 += 1;
            if c.last_seen_ms.is_some_and(|t| t >= since as i64) {
                e.1 += 1;
            }
        }
        for (tenant, (enrolled, active)) in counts {
            let t: L1 = [("tenant", tenant)];
            m.tenants.enrolled.get_or_create(&t).set(enrolled);
            m.tenants.active.get_or_create(&t).set(active);
        }
    }
}

async fn metrics(State(scrape): State<Scrape>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        scrape.render().await,
    )
        .into_response()
}

/// The `GET /metrics` route (the caller decides whether it sits behind the admin token).
pub(crate) fn router(scrape: Scrape) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(scrape)
}
