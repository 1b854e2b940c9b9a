//! Health probes for orchestrators (Kubernetes liveness and readiness), without a token.
//!
//! - `GET /healthz`: the process serves HTTP (`200 ok`).
//! - `GET /readyz`: `200 {"status":"ready"}` when the store answers a trivial query within
//!   [`READY_STORE_TIMEOUT`]; `503 {"status":"unready","reason":"…"}` otherwise. Jobs are
//!   recovered and both listeners bound before the admin listener serves anything
//!   (`Server::bind`), so an answer at all means those hold.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::Shared;

/// Longest `/readyz` waits for the store.
pub(crate) const READY_STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// The probe routes, for the admin listener (and any other plain listener that wants them).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let unready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": reason.replace('\n', " ") })),
        )
            .into_response()
    };
    match tokio::time::timeout(READY_STORE_TIMEOUT, shared.store.ping()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => unready(format!("store unavailable: {e}")),
        Err(_) => unready(format!(
            "store unavailable: no answer within {} ms",
            READY_STORE_TIMEOUT.as_millis()
        )),
    }
}
