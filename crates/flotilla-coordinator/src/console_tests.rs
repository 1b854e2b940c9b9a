//! The console's login, its sessions on the admin API and the health probes, through the admin
//! router of a real coordinator (SQLite in a temp dir).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use tower::ServiceExt;

use crate::{Server, ServerConfig};

const TOKEN: &str = "console-test-token";
const HOST: &str = "127.0.0.1:9443";
const ORIGIN: &str = "https://127.0.0.1:9443";

/// A coordinator on SQLite in a temp dir, and its admin router (built once: the router holds
/// the console's sessions).
async fn server() -> (Server, Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::bind(ServerConfig::new(dir.path(), TOKEN))
        .await
        .unwrap();
    let app = crate::admin::router(s.shared.clone(), TOKEN, None);
    (s, app, dir)
}

async fn call(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

async fn text(resp: Response) -> String {
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

fn login_req(token: &str) -> Request<Body> {
    Request::post("/console/login")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, ORIGIN)
        .header("sec-fetch-site", "same-origin")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .unwrap()
}

/// Logs in; the cookie pair (`flotilla_session=…`) and the CSRF token.
async fn login(app: &Router) -> (String, String) {
    let resp = call(app, login_req(TOKEN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, body["csrf_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn probes_answer_without_a_token_and_readiness_follows_the_store() {
    let (s, app, _dir) = server().await;
    let resp = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, "ok");
    let resp = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, r#"{"status":"ready"}"#);
    assert_eq!(s.metrics().auth_failures, 0);
    // The store gone: unready, with the reason on one line.
    s.shared.store.close().await;
    let resp = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(body["status"], "unready");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.starts_with("store unavailable: "), "{reason}");
    assert!(!reason.contains('\n'));
}

#[tokio::test]
async fn a_wrong_token_sets_no_cookie_and_counts_as_an_auth_failure() {
    let (s, app, _dir) = server().await;
    let resp = call(&app, login_req("not-the-token")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(text(resp).await, r#"{"error":"wrong admin token"}"#);
    let m = s.metrics();
    assert_eq!(m.auth_failures, 1);
    assert_eq!(m.rejections.get("console_unauthenticated"), Some(&1));
    // Posted from another site: refused before the token is looked at.
    let mut req = login_req(TOKEN);
    req.headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    let resp = call(&app, req).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn the_right_token_gives_a_strict_cookie_that_the_admin_api_accepts() {
    let (s, app, _dir) = server().await;
    let resp = call(&app, login_req(TOKEN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing: {set}");
    }
    let (cookie, csrf) = login(&app).await;
    // Reading needs only the cookie.
    let get = |path: &str, cookie: &str| {
        Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap()
    };
    let resp = call(&app, get("/v1/jobs", &cookie)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, "[]");
    let resp = call(&app, get("/console/session", &cookie)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(text(resp).await.contains(&csrf));
    // Neither cookie nor token: refused as before.
    let resp = call(&app, get("/v1/jobs", "flotilla_session=forged")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A state change: the CSRF header and the origin are both required.
    let post = |csrf: Option<&str>, origin: &str, site: &str| {
        let mut r = Request::post("/v1/enrollment-tokens")
            .header(header::COOKIE, cookie.as_str())
            .header(header::HOST, HOST)
            .header(header::ORIGIN, origin)
            .header("sec-fetch-site", site);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.body(Body::from(r#"{"tenant":"t1","uses":2}"#)).unwrap()
    };
    let before = s.metrics().auth_failures;
    for (req, why) in [
        (post(None, ORIGIN, "same-origin"), "X-CSRF-Token"),
        (post(Some("wrong"), ORIGIN, "same-origin"), "X-CSRF-Token"),
        (
            post(Some(&csrf), "https://evil.example", "cross-site"),
            "cross-site",
        ),
        (
            post(Some(&csrf), "https://evil.example", "same-origin"),
            "Origin",
        ),
    ] {
        let resp = call(&app, req).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = text(resp).await;
        assert!(body.contains(why), "{body}");
    }
    assert_eq!(s.metrics().auth_failures, before + 4);
    assert_eq!(s.metrics().rejections.get("console_csrf"), Some(&4));
    let resp = call(&app, post(Some(&csrf), ORIGIN, "same-origin")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(text(resp).await.contains(r#""tenant":"t1""#));
    // Logout (CSRF rules too) ends the session.
    let logout = Request::post("/console/logout")
        .header(header::COOKIE, cookie.as_str())
        .header(header::HOST, HOST)
        .header(header::ORIGIN, ORIGIN)
        .header("x-csrf-token", csrf.as_str())
        .body(Body::empty())
        .unwrap();
    let resp = call(&app, logout).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let resp = call(&app, get("/v1/jobs", &cookie)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_console_page_is_served_with_a_strict_content_security_policy() {
    let (s, app, _dir) = server().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let resp = call(&app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers();
        assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    }
    let html = text(call(&app, Request::get("/").body(Body::empty()).unwrap()).await).await;
    assert!(html.contains(r#"<script src="/console/app.js""#));
    assert!(!html.contains("<script>"), "no inline script");
    // Nothing of the page needs a token, so nothing counted as a failure.
    assert_eq!(s.metrics().auth_failures, 0);
}
