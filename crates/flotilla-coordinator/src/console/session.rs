//! Console sessions: who logged in with the admin token, and the CSRF rules for what they send.
//!
//! A session is a random 256-bit id in an `HttpOnly; Secure; SameSite=Strict` cookie, held in
//! memory only (a restart logs everyone out). The map is bounded ([`MAX_SESSIONS`], the least
//! recently used session is dropped first) and a session ends after [`IDLE_MS`] without a request
//! or [`ABSOLUTE_MS`] after login, whichever comes first.
//!
//! A request that changes state (anything but `GET`/`HEAD`) must also carry the session's CSRF
//! token in [`CSRF_HEADER`] and come from the console's own origin (`Sec-Fetch-Site:
//! same-origin`, or an `Origin` whose host is the request's `Host`). The cookie alone is never
//! enough: `SameSite=Strict` already keeps other sites from sending it, and the token and origin
//! checks hold even for a browser that ignores `SameSite`.

use std::sync::Mutex;

use axum::http::{HeaderMap, Method, Uri, header};
use hashlink::LinkedHashMap;
use subtle::ConstantTimeEq;

use crate::authz::Actor;

/// Name of the session cookie.
pub(crate) const COOKIE: &str = "flotilla_session";
/// Header carrying the session's CSRF token on state-changing requests.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// Most sessions held at once; logging in beyond it ends the least recently used one.
pub(crate) const MAX_SESSIONS: usize = 1024;
/// A session ends after this long without a request, milliseconds (1 h).
pub(crate) const IDLE_MS: u64 = 3_600_000;
/// A session ends this long after its login whatever happens, milliseconds (12 h).
pub(crate) const ABSOLUTE_MS: u64 = 12 * 3_600_000;

struct Session {
    csrf: String,
    created_ms: u64,
    last_ms: u64,
    /// Who logged in: every request of the session acts as them, with the same checks.
    actor: Actor,
}

impl Session {
    fn alive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_ms) < IDLE_MS
            && now_ms.saturating_sub(self.created_ms) < ABSOLUTE_MS
    }
}

/// A new session: its cookie value and its CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct NewSession {
    pub id: String,
    pub csrf: String,
}

/// What a request's cookie and headers amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admit {
    /// No cookie, or one naming no live session.
    NoSession,
    /// A live session; for a state-changing request, its CSRF token and origin checked out.
    /// Carries the session's CSRF token.
    Session(String),
    /// A live session, but the request fails the CSRF rules: why, on one line.
    Refused(&'static str),
}

/// The live sessions, least recently used first.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<LinkedHashMap<String, Session>>,
}

/// 256 random bits, hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    /// Starts a session of the bootstrap admin (tests).
    #[cfg(test)]
    pub(crate) fn create(&self, now_ms: u64) -> NewSession {
        self.create_as(now_ms, Actor::bootstrap())
    }

    /// Starts a session acting as `actor` (after its token was checked).
    pub(crate) fn create_as(&self, now_ms: u64, actor: Actor) -> NewSession {
        let new = NewSession {
            id: random_hex(),
            csrf: random_hex(),
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.alive(now_ms));
        while map.len() >= MAX_SESSIONS {
            map.pop_front();
        }
        map.insert(
            new.id.clone(),
            Session {
                csrf: new.csrf.clone(),
                created_ms: now_ms,
                last_ms: now_ms,
                actor,
            },
        );
        new
    }

    /// The CSRF token of the live session `id`, marking it used now; an expired one is removed.
    pub(crate) fn touch(&self, id: &str, now_ms: u64) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let alive = map.get(id).map(|s| s.alive(now_ms))?;
        if !alive {
            map.remove(id);
            return None;
        }
        map.to_back(id);
        let s = map.get_mut(id)?;
        s.last_ms = now_ms;
        Some(s.csrf.clone())
    }

    /// The actor of the live session `id`.
    pub(crate) fn actor(&self, id: &str, now_ms: u64) -> Option<Actor> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|s| s.alive(now_ms))
            .map(|s| s.actor.clone())
    }

    /// Ends every session acting as `id`.
    pub(crate) fn end_actor(&self, id: &crate::authz::ActorId) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| &s.actor.id != id);
    }

    /// Ends the session `id` (logout); whether there was one.
    pub(crate) fn remove(&self, id: &str) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id).is_some()
    }

    /// Sessions held (live or not yet swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Applies the session and CSRF rules to a request.
    pub(crate) fn admit(&self, method: &Method, headers: &HeaderMap, now_ms: u64) -> Admit {
        let Some(id) = session_id(headers) else {
            return Admit::NoSession;
        };
        let Some(csrf) = self.touch(&id, now_ms) else {
            return Admit::NoSession;
        };
        if method == Method::GET || method == Method::HEAD {
            return Admit::Session(csrf);
        }
        if let Err(why) = same_origin(headers) {
            return Admit::Refused(why);
        }
        let given = headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(csrf.as_bytes())) {
            Admit::Session(csrf)
        } else {
            Admit::Refused("missing or wrong X-CSRF-Token header for the console session")
        }
    }
}

/// The session id in the request's `Cookie` header(s), if any.
pub(crate) fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

/// Whether a request comes from the page's own origin: `Sec-Fetch-Site` (if sent) must be
/// `same-origin`, and `Origin` (if sent) must name the request's `Host`; one of them must be sent
/// (every browser sends `Origin` on a `POST`).
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if site.is_some_and(|s| s != b"same-origin") {
        return Err("cross-site request refused (Sec-Fetch-Site is not same-origin)");
    }
    let origin = headers.get(header::ORIGIN);
    if let Some(origin) = origin {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<Uri>().ok())
            .and_then(|u| u.authority().map(|a| a.as_str().to_ascii_lowercase()));
        match (origin_host, host) {
            (Some(o), Some(h)) if o == h.to_ascii_lowercase() => {}
            _ => return Err("cross-site request refused (Origin is not this console)"),
        }
    }
    if site.is_none() && origin.is_none() {
        return Err("request refused: neither Origin nor Sec-Fetch-Site header was sent");
    }
    Ok(())
}

/// The `Set-Cookie` value of a new session.
pub(crate) fn set_cookie(id: &str) -> String {
    cookie::Cookie::build((COOKIE, id.to_owned()))
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Strict)
        .path("/")
        .build()
        .to_string()
}

/// The `Set-Cookie` value that removes the session cookie (logout).
pub(crate) fn clear_cookie() -> String {
    cookie::Cookie::build((COOKIE, ""))
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_httponly_secure_samesite_strict_for_the_whole_site() {
        let c = set_cookie("abc");
        assert!(c.starts_with("flotilla_session=abc"), "{c}");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(c.split("; ").any(|a| a == attr), "{attr} missing in {c}");
        }
        assert!(clear_cookie().contains("Max-Age=0"), "{}", clear_cookie());
    }

    #[test]
    fn session_ids_and_csrf_tokens_are_256_random_bits() {
        let s = Sessions::default();
        let (a, b) = (s.create(0), s.create(0));
        assert_eq!(a.id.len(), 64);
        assert_eq!(a.csrf.len(), 64);
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, a.csrf);
    }

    #[test]
    fn gets_need_only_the_cookie_and_state_changes_need_csrf_and_origin() {
        let s = Sessions::default();
        let new = s.create(1_000);
        let cookie = format!("other=1; {COOKIE}={}", new.id);
        let get = headers(&[("cookie", &cookie)]);
        assert_eq!(
            s.admit(&Method::GET, &get, 2_000),
            Admit::Session(new.csrf.clone())
        );
        assert_eq!(
            s.admit(&Method::GET, &headers(&[]), 2_000),
            Admit::NoSession
        );
        let wrong = headers(&[("cookie", &format!("{COOKIE}=nope"))]);
        assert_eq!(s.admit(&Method::POST, &wrong, 2_000), Admit::NoSession);
        let good = [
            ("cookie", cookie.as_str()),
            ("host", "127.0.0.1:8443"),
            ("origin", "https://127.0.0.1:8443"),
            ("sec-fetch-site", "same-origin"),
            ("x-csrf-token", new.csrf.as_str()),
        ];
        assert_eq!(
            s.admit(&Method::POST, &headers(&good), 2_000),
            Admit::Session(new.csrf.clone())
        );
        // Missing or wrong CSRF header.
        let missing = headers(&good[..4]);
        assert!(matches!(
            s.admit(&Method::POST, &missing, 2_000),
            Admit::Refused(m) if m.contains("X-CSRF-Token")
        ));
        let mut wrong_token = good;
        wrong_token[4] = ("x-csrf-token", "0000");
        assert!(matches!(
            s.admit(&Method::POST, &headers(&wrong_token), 2_000),
            Admit::Refused(_)
        ));
        // Right token, but from another site.
        let mut cross = good;
        cross[2] = ("origin", "https://evil.example");
        cross[3] = ("sec-fetch-site", "cross-site");
        assert!(matches!(
            s.admit(&Method::POST, &headers(&cross), 2_000),
            Admit::Refused(m) if m.contains("cross-site")
        ));
        let mut other_origin = good;
        other_origin[2] = ("origin", "https://evil.example");
        assert!(matches!(
            s.admit(&Method::DELETE, &headers(&other_origin), 2_000),
            Admit::Refused(m) if m.contains("Origin")
        ));
        // Neither Origin nor Sec-Fetch-Site.
        let bare = headers(&[good[0], good[1], good[4]]);
        assert!(matches!(
            s.admit(&Method::POST, &headers(&[]), 2_000),
            Admit::NoSession
        ));
        assert!(matches!(
            s.admit(&Method::POST, &bare, 2_000),
            Admit::Refused(m) if m.contains("neither")
        ));
    }

    #[test]
    fn sessions_expire_when_idle_or_old_and_end_at_logout() {
        let s = Sessions::default();
        let a = s.create(0);
        assert!(s.touch(&a.id, IDLE_MS - 1).is_some());
        // Used at IDLE_MS - 1: alive until 2 × IDLE_MS - 1.
        assert!(s.touch(&a.id, 2 * IDLE_MS - 2).is_some());
        assert!(s.touch(&a.id, 4 * IDLE_MS).is_none(), "idle for an hour");
        assert_eq!(s.len(), 0, "an expired session is removed");
        // Kept busy, it still ends ABSOLUTE_MS after login.
        let b = s.create(0);
        let mut t = 0;
        while t + IDLE_MS / 2 < ABSOLUTE_MS {
            t += IDLE_MS / 2;
            assert!(s.touch(&b.id, t).is_some(), "at {t}");
        }
        assert!(s.touch(&b.id, ABSOLUTE_MS).is_none());
        let c = s.create(0);
        assert!(s.remove(&c.id));
        assert!(s.touch(&c.id, 1).is_none(), "logged out");
        assert!(!s.remove(&c.id));
    }

    #[test]
    fn the_map_is_bounded_and_drops_the_least_recently_used_session() {
        let s = Sessions::default();
        let first = s.create(0);
        let second = s.create(0);
        for _ in 2..MAX_SESSIONS {
            s.create(1);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        // `first` used again: `second` is now the least recently used.
        assert!(s.touch(&first.id, 2).is_some());
        s.create(3);
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.touch(&second.id, 4).is_none(), "evicted");
        assert!(s.touch(&first.id, 4).is_some(), "kept");
    }
}
