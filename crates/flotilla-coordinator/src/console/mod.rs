//! The web console: a page served at `/` on the admin listener, its script and stylesheet
//! (embedded in the binary: coordinators often run without internet), and the login that turns
//! the admin token into a session cookie.
//!
//! The console has no data endpoints of its own: its script calls the admin API (`/v1/…`), which
//! accepts the session cookie instead of the bearer token (with the CSRF rules of [`session`] for
//! anything that changes state). Every console response carries a strict Content-Security-Policy
//! (`default-src 'self'`, no inline script), `X-Frame-Options: DENY` and `Referrer-Policy:
//! no-referrer`.

pub(crate) mod session;

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::clock::now_ms;
use crate::state::Shared;
use session::{Admit, Sessions};

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// Content-Security-Policy of every console response: only the console's own files, no inline
/// script or style, no framing, forms post only to the console.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The console's state: the admin token it logs in with, its sessions, the shared counters.
pub(crate) struct Console {
    shared: Arc<Shared>,
    token: Arc<str>,
    sessions: Sessions,
}

impl Console {
    /// A console logging in with `token`.
    pub(crate) fn new(shared: Arc<Shared>, token: Arc<str>) -> Self {
        Console {
            shared,
            token,
            sessions: Sessions::default(),
        }
    }

    /// Whether a request without a bearer token is admitted by a console session (see
    /// [`Sessions::admit`]). A refusal is counted as an authentication failure.
    pub(crate) fn admit(&self, method: &Method, headers: &HeaderMap) -> Admit {
        let admit = self.sessions.admit(method, headers, now_ms());
        if let Admit::Refused(why) = &admit {
            self.shared.metrics.auth_failure("console_csrf");
            self.shared.metrics.reject("console_csrf");
            tracing::warn!(reason = why, "console request refused");
        }
        admit
    }

    /// Ends every session of `id` (its principal was revoked: at once, not at the session's end).
    pub(crate) fn end_sessions_of(&self, id: &crate::authz::ActorId) {
        self.sessions.end_actor(id);
    }

    /// The actor of the request's console session (see [`Sessions::actor`]).
    pub(crate) fn session_actor(&self, headers: &HeaderMap) -> Option<crate::authz::Actor> {
        self.sessions
            .actor(&session::session_id(headers)?, now_ms())
    }
}

/// The console's routes (no bearer token: the login is how one gets in).
pub(crate) fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/session", get(session_info))
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small, and must change with the binary: revalidate every time.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `{"error": …}` with a status, the admin API's error shape.
fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

/// The login form: the admin token.
#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /console/login` (form `token=…`): a session cookie and the session's CSRF token for the
/// right admin token; `401` with a one-line error and no cookie otherwise.
async fn login(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // A login posted from another site is refused before the token is looked at.
    if session::same_origin(&headers).is_err() {
        return error(StatusCode::FORBIDDEN, "cross-site login refused");
    }
    let Ok(Form(form)) = form else {
        return error(
            StatusCode::BAD_REQUEST,
            "the login form must be application/x-www-form-urlencoded with a `token` field",
        );
    };
    // The admin token or a principal's token; the session then acts as that principal, with the
    // same checks as its bearer token.
    let actor = match crate::principal_auth::resolve(
        &c.shared.store,
        &c.shared.principals,
        &c.token,
        form.token.trim(),
    )
    .await
    {
        crate::principal_auth::Resolved::Actor(a) => a,
        crate::principal_auth::Resolved::Unavailable(e) => {
            tracing::warn!(error = %e, "console login failed: store unavailable");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable: the token cannot be checked now; retry later",
            );
        }
        crate::principal_auth::Resolved::Refused(_) => {
            c.shared.metrics.auth_failure("console_unauthenticated");
            c.shared.metrics.reject("console_unauthenticated");
            tracing::warn!("console login with a wrong token");
            return error(StatusCode::UNAUTHORIZED, "wrong admin token");
        }
    };
    tracing::info!(actor = %actor.audit_name(), "console login");
    let new = c.sessions.create_as(now_ms(), actor);
    (
        [
            (header::SET_COOKIE, session::set_cookie(&new.id)),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Json(json!({ "csrf_token": new.csrf })),
    )
        .into_response()
}

/// `POST /console/logout`: ends the session (CSRF rules apply) and clears the cookie.
async fn logout(State(c): State<Arc<Console>>, method: Method, headers: HeaderMap) -> Response {
    match c.admit(&method, &headers) {
        Admit::Session(_) => {
            if let Some(id) = session::session_id(&headers) {
                c.sessions.remove(&id);
            }
            (
                [(header::SET_COOKIE, session::clear_cookie())],
                Json(json!({ "logged_out": true })),
            )
                .into_response()
        }
        Admit::Refused(why) => error(StatusCode::FORBIDDEN, why),
        Admit::NoSession => error(StatusCode::UNAUTHORIZED, "not logged in"),
    }
}

/// `GET /console/session`: the CSRF token of the caller's session, or `401` (the page then shows
/// the login form). Not counted as a failure: every first visit asks.
async fn session_info(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.sessions.admit(&Method::GET, &headers, now_ms()) {
        Admit::Session(csrf) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "csrf_token": csrf })),
        )
            .into_response(),
        _ => error(StatusCode::UNAUTHORIZED, "not logged in"),
    }
}
