//! `GET /v1/audit` and `GET /v1/audit/verify`: reading and verifying the audit log. Read-only by
//! construction: the API has no route that writes an entry (entries are written by the store
//! inside the transactions of the changes they record).
//!
//! Both need `Action::AuditRead` (auditors and admins). An auditor of tenant T reads T's entries
//! only (an entry without a tenant is installation-wide: admins only); verification always covers
//! the whole chain, since a hash chain cannot be checked in parts, and says nothing about the
//! entries of other tenants beyond counts, seqs and hashes.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use flotilla_store::{AuditEntry, SignedVerification};
use serde::Deserialize;

use super::{AdminState, ApiError, ApiResult, allow, bounded};
use crate::api::{AuditCheckpointView, AuditEntryView, AuditPage, AuditProblem, AuditVerification};
use crate::authz::{Action, Actor};

/// Entries per page when `limit` is not given, and the most one page may hold.
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;

/// The query of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// Entries after this seq (default 0: from the start).
    since_seq: Option<u64>,
    /// Entries at or after this time, RFC 3339 (`2026-12-01T00:00:00Z`) or a date.
    since: Option<String>,
    /// Entries at or after this time, Unix milliseconds.
    since_ms: Option<i64>,
    /// At most this many entries are read (1..=10000, default 1000).
    limit: Option<u32>,
    /// `json` (default) or `jsonl`.
    format: Option<String>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// `since` as Unix milliseconds.
fn since_ms(text: &str) -> Result<i64, ApiError> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        bad(format!(
            "since: {e}; give RFC 3339 (2026-12-01T08:00:00Z) or a date (2026-12-01)"
        ))
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad("since: before 1970"))?
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// An entry as the API shows it; details that are not JSON (an altered row) are shown as text.
fn view(e: &AuditEntry) -> AuditEntryView {
    AuditEntryView {
        seq: e.seq,
        at_ms: e.at_ms,
        actor: e.actor.clone(),
        tenant: e.tenant.clone(),
        action: e.action.clone(),
        resource: e.resource.clone(),
        outcome: e.outcome.clone(),
        details: serde_json::from_str(&e.details_json)
            .unwrap_or_else(|_| serde_json::Value::String(e.details_json.clone())),
        details_json: e.details_json.clone(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

/// `GET /v1/audit`.
pub(super) async fn list(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, Action::AuditRead, None, "audit log")?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(bad(format!("limit: must be in 1..={MAX_LIMIT}")));
    }
    let jsonl = match q.format.as_deref() {
        None | Some("json") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(bad(format!(
                "format: {:?} is not json or jsonl",
                other.chars().take(16).collect::<String>()
            )));
        }
    };
    let since = match (&q.since, q.since_ms) {
        (Some(t), _) => Some(since_ms(t)?),
        (None, ms) => ms,
    };
    let after = q.since_seq.unwrap_or(0);
    // An auditor reads only its tenants' entries: one tenant is filtered by the store, several
    // here (so a page may hold fewer entries than were read; `next_since_seq` goes on).
    let tenants = actor.tenants_for(Action::AuditRead);
    let only = match tenants.as_deref() {
        Some([one]) => Some(one.as_str()),
        _ => None,
    };
    let read = bounded(st.shared.store.audit_entries(after, only, limit)).await?;
    // A full page may have more after it; the caller continues from the last seq read (also
    // when this caller may see none of the page's entries).
    let next = (read.len() == limit as usize)
        .then(|| read.last().map(|e| e.seq))
        .flatten();
    let entries: Vec<AuditEntryView> = read
        .iter()
        .filter(|e| since.is_none_or(|s| e.at_ms >= s))
        .filter(|e| match &tenants {
            None => true,
            Some(ts) => e.tenant.as_ref().is_some_and(|t| ts.contains(t)),
        })
        .map(view)
        .collect();
    if jsonl {
        let mut body = String::new();
        for e in &entries {
            body.push_str(&serde_json::to_string(e).unwrap_or_default());
            body.push('\n');
        }
        let mut resp = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
        if let Some(n) = next {
            resp.headers_mut().insert("x-next-since-seq", n.into());
        }
        return Ok(resp);
    }
    Ok(Json(AuditPage {
        entries,
        next_since_seq: next,
    })
    .into_response())
}

/// The query of `GET /v1/audit/verify`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyQuery {
    /// Accept only checkpoints signed by this Ed25519 public key (hex).
    public_key: Option<String>,
}

/// `GET /v1/audit/verify`.
pub(super) async fn verify(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<VerifyQuery>,
) -> ApiResult<AuditVerification> {
    allow(&st, &actor, Action::AuditRead, None, "audit log")?;
    if let Some(k) = &q.public_key
        && (k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad(
            "public_key: must be 64 hex digits (an Ed25519 public key)",
        ));
    }
    let pinned = q.public_key.as_deref();
    let signed_here = st.shared.audit.last_signed();
    // The whole chain is read: allow more time than one ordinary store call.
    let call = st
        .shared
        .store
        .audit_verify_signed(pinned, signed_here.as_ref());
    let v = tokio::time::timeout(std::time::Duration::from_secs(120), call)
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log could not be read within 120 s; retry later".into(),
            )
        })?
        .map_err(ApiError::from)?;
    Ok(Json(verification(v)))
}

/// The API's form of the store's answer.
fn verification(v: SignedVerification) -> AuditVerification {
    let c = v.chain;
    AuditVerification {
        ok: c.problem.is_none(),
        entries: c.entries,
        head_seq: c.head_seq,
        head_hash: c.head_hash,
        last_checkpoint: v.last_checkpoint.map(|cp| AuditCheckpointView {
            seq: cp.seq,
            hash: cp.hash,
            public_key: cp.public_key,
        }),
        problem: c.problem.map(|p| AuditProblem {
            seq: p.seq,
            kind: p.kind,
            message: p.message,
        }),
    }
}
