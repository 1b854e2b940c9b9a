//! The tamper-evident audit log: one hash-chained row per security-relevant event, appended in the
//! same transaction as the change it records (no change without its entry).
//!
//! # Chain
//! Entry `n`'s hash is `SHA-256(prev ‖ canonical(n))`, where `prev` is the 32-byte hash of entry
//! `n - 1` (all zeros before the first entry) and `canonical(n)` is the UTF-8 JSON array
//! `[seq, at_ms, actor, tenant, action, resource, outcome, details_json]` as serde_json writes it
//! (no spaces; `tenant` may be `null`; `details_json` is the stored text, a string). Hashes are
//! stored as lowercase hex. The `audit_head` row holds the last seq and hash and is updated in the
//! same transaction as every append: its row lock makes concurrent appenders queue (one chain,
//! never a fork), and a tail deleted from `audit_log` no longer reaches it.
//!
//! [`Store::audit_verify`] recomputes the chain and names the first entry that was altered,
//! removed or reordered.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store, StoreError, now_ms};

/// The hash before the first entry: 32 zero bytes, hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest actor, tenant, action or resource text kept in an entry, characters (longer is cut and
/// marked `…`): an entry records who and what, not arbitrary client-chosen payloads.
const MAX_FIELD_CHARS: usize = 256;
/// Largest `details` of one entry, bytes of JSON.
pub const MAX_DETAILS_BYTES: usize = 64 * 1024;
/// Entries read per page while verifying (memory stays bounded however long the log is).
const VERIFY_PAGE: i64 = 1000;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// The action took effect.
    Success,
    /// The action was refused (authentication, authorization, policy).
    Denied,
    /// The action was attempted and failed.
    Failed,
}

impl AuditOutcome {
    /// The stored text: `success`, `denied` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// An event to append: who did what to which resource, and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Who: `admin-token` (the bootstrap token), `principal:NAME`, `oidc:SUBJECT`,
    /// `client:ID`, or `system` (the coordinator itself).
    pub actor: String,
    /// The tenant the resource belongs to; `None` for installation-wide events.
    pub tenant: Option<String>,
    /// Dotted verb, e.g. `job.submit`, `client.revoke`, `principal.create`.
    pub action: String,
    /// What it was done to, e.g. `job:7`, `client:12`, `principal:alice`.
    pub resource: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Anything else worth keeping (a JSON object; never a secret).
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A successful `action` by `actor` on `resource`, with no tenant and empty details.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        AuditEvent {
            actor: actor.into(),
            tenant: None,
            action: action.into(),
            resource: resource.into(),
            outcome: AuditOutcome::Success,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// The event in `tenant`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The event with `outcome`.
    pub fn outcome(mut self, outcome: AuditOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// The event with `details`.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// One stored entry, as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// The resource's tenant, if any.
    pub tenant: Option<String>,
    /// What.
    pub action: String,
    /// To what.
    pub resource: String,
    /// `success`, `denied` or `failed`.
    pub outcome: String,
    /// The details as stored (JSON text; hashed as is).
    pub details_json: String,
    /// The previous entry's hash (hex).
    pub prev_hash: String,
    /// This entry's hash (hex).
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry's fields give after `prev_hash` (hex); equal to [`AuditEntry::hash`]
    /// unless the entry was altered.
    pub fn expected_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.seq,
            self.at_ms,
            &self.actor,
            self.tenant.as_deref(),
            &self.action,
            &self.resource,
            &self.outcome,
            &self.details_json,
        )
    }
}

/// What [`Store::audit_verify`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditVerification {
    /// Entries checked.
    pub entries: u64,
    /// The first entry's seq (above 1 when older entries were deleted by retention), if any.
    pub first_seq: Option<u64>,
    /// The last entry's seq, if any.
    pub last_seq: Option<u64>,
    /// The head row: the last seq and hash every append recorded.
    pub head_seq: u64,
    /// The head row's hash (hex).
    pub head_hash: String,
    /// The first problem, if the chain is broken.
    pub problem: Option<AuditProblem>,
}

impl AuditVerification {
    /// Whether the whole chain verified.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// The first break in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditProblem {
    /// The first bad entry's seq.
    pub seq: u64,
    /// `altered`, `removed`, `reordered` or `head`.
    pub kind: String,
    /// One line for people, naming the entry.
    pub message: String,
}

impl AuditProblem {
    fn new(seq: u64, kind: &str, message: String) -> Self {
        AuditProblem {
            seq,
            kind: kind.to_owned(),
            message,
        }
    }
}

#[allow(clippy::too_many_arguments)] // the entry's fields, in canonical order
fn chain_hash(
    prev_hex: &str,
    seq: u64,
    at_ms: i64,
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    resource: &str,
    outcome: &str,
    details_json: &str,
) -> String {
    // A malformed stored prev hash hashes as its text: the entry then fails verification.
    let prev = hex::decode(prev_hex).unwrap_or_else(|_| prev_hex.as_bytes().to_vec());
    let canonical = serde_json::to_vec(&(
        seq,
        at_ms,
        actor,
        tenant,
        action,
        resource,
        outcome,
        details_json,
    ))
    .expect("a tuple of numbers and strings serialises");
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// `s` cut to [`MAX_FIELD_CHARS`] characters.
fn bounded(s: &str) -> String {
    if s.chars().count() <= MAX_FIELD_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_FIELD_CHARS - 1).collect();
        t.push('…');
        t
    }
}

/// Appends `ev` at `at_ms` inside `tx`, the transaction of the change it records; returns its seq.
/// The entry commits or rolls back with that change.
pub(crate) async fn append(
    tx: &mut Transaction<'_, Any>,
    ev: &AuditEvent,
    at_ms: i64,
) -> Result<u64> {
    let details = serde_json::to_string(&ev.details)
        .map_err(|e| StoreError::InvalidArgument(format!("audit details: {e}")))?;
    if details.len() > MAX_DETAILS_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "audit details of {} bytes exceed {MAX_DETAILS_BYTES}",
            details.len()
        )));
    }
    // Takes the head's row lock (PostgreSQL) / the write lock (SQLite) until the commit, so
    // appends are serialised into one chain.
    let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut **tx)
        .await?;
    let seq_db: i64 = head.try_get("seq")?;
    let prev: String = head.try_get("hash")?;
    let seq = u64::try_from(seq_db)
        .map_err(|_| StoreError::Corrupt(format!("audit head seq {seq_db}")))?;
    let (actor, action, resource) = (
        bounded(&ev.actor),
        bounded(&ev.action),
        bounded(&ev.resource),
    );
    let tenant = ev.tenant.as_deref().map(bounded);
    let outcome = ev.outcome.as_str();
    let hash = chain_hash(
        &prev,
        seq,
        at_ms,
        &actor,
        tenant.as_deref(),
        &action,
        &resource,
        outcome,
        &details,
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor, tenant, action, resource, outcome, details_json, \
         prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(seq_db)
    .bind(at_ms)
    .bind(&actor)
    .bind(tenant.as_deref())
    .bind(&action)
    .bind(&resource)
    .bind(outcome)
    .bind(&details)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    Ok(seq)
}

const ENTRY_COLUMNS: &str =
    "seq, at_ms, actor, tenant, action, resource, outcome, details_json, prev_hash, hash";

fn entry_from_row(row: &AnyRow) -> Result<AuditEntry> {
    let seq: i64 = row.try_get("seq")?;
    Ok(AuditEntry {
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?,
        at_ms: row.try_get("at_ms")?,
        actor: row.try_get("actor")?,
        tenant: row.try_get("tenant")?,
        action: row.try_get("action")?,
        resource: row.try_get("resource")?,
        outcome: row.try_get("outcome")?,
        details_json: row.try_get("details_json")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl Store {
    /// Appends `ev` now, in a transaction of its own: for events that change nothing else (a
    /// refused request, a flushed count of failed logins). Returns its seq.
    pub async fn audit(&self, ev: &AuditEvent) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let seq = append(&mut tx, ev, now_ms()).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Up to `limit` entries after `since_seq` in seq order, only `tenant`'s if given.
    pub async fn audit_entries(
        &self,
        since_seq: u64,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let since = i64::try_from(since_seq).unwrap_or(i64::MAX);
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 AND tenant = $2 \
                     ORDER BY seq LIMIT $3"
                ))
                .bind(since)
                .bind(t)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
                ))
                .bind(since)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(entry_from_row).collect()
    }

    /// The chain's head: the last appended seq (0 before any) and its hash.
    pub async fn audit_head(&self) -> Result<(u64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let seq: i64 = row.try_get("seq")?;
        Ok((
            u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit head {seq}")))?,
            row.try_get("hash")?,
        ))
    }

    /// Recomputes the whole chain, a page at a time, and reports the first entry that was altered,
    /// removed or reordered, or a head that the last entry does not reach (a deleted tail).
    ///
    /// The first stored entry's link to its predecessor is taken as given (retention may have
    /// deleted older entries; signed checkpoints vouch for where it starts).
    pub async fn audit_verify(&self) -> Result<AuditVerification> {
        let (head_seq, head_hash) = self.audit_head().await?;
        let mut v = AuditVerification {
            entries: 0,
            first_seq: None,
            last_seq: None,
            head_seq,
            head_hash: head_hash.clone(),
            problem: None,
        };
        let mut last: Option<(u64, String)> = None;
        let mut after: i64 = 0;
        'pages: loop {
            let rows = sqlx::query(&format!(
                "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after)
            .bind(VERIFY_PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let e = entry_from_row(row)?;
                after = i64::try_from(e.seq).unwrap_or(i64::MAX);
                v.entries += 1;
                v.first_seq.get_or_insert(e.seq);
                if let Some((prev_seq, prev_hash)) = &last {
                    if e.seq != prev_seq + 1 {
                        let missing = prev_seq + 1;
                        v.problem = Some(AuditProblem::new(
                            missing,
                            "removed",
                            format!(
                                "audit entry {missing} was removed (entry {prev_seq} is followed by \
                                 entry {})",
                                e.seq
                            ),
                        ));
                        break 'pages;
                    }
                    if &e.prev_hash != prev_hash {
                        v.problem = Some(AuditProblem::new(
                            e.seq,
                            "reordered",
                            format!(
                                "audit entry {} does not follow entry {prev_seq}: its link to the \
                                 previous hash is broken (altered, replaced or reordered)",
                                e.seq
                            ),
                        ));
                        break 'pages;
                    }
                } else if e.seq == 1 && e.prev_hash != GENESIS_HASH {
                    v.problem = Some(AuditProblem::new(
                        1,
                        "altered",
                        "audit entry 1 does not start the chain (its previous hash is not the \
                         genesis hash)"
                            .into(),
                    ));
                    break 'pages;
                }
                if e.expected_hash() != e.hash {
                    v.problem = Some(AuditProblem::new(
                        e.seq,
                        "altered",
                        format!(
                            "audit entry {} was altered: its fields no longer hash to its stored \
                             hash ({} {} by {})",
                            e.seq, e.action, e.resource, e.actor
                        ),
                    ));
                    break 'pages;
                }
                last = Some((e.seq, e.hash));
            }
        }
        v.last_seq = last.as_ref().map(|(s, _)| *s);
        if v.problem.is_none() {
            match &last {
                Some((seq, _)) if *seq < head_seq => {
                    v.problem = Some(AuditProblem::new(
                        seq + 1,
                        "removed",
                        format!(
                            "audit entries {}..={head_seq} were removed: the log ends at entry {seq} \
                             but the head records {head_seq}",
                            seq + 1
                        ),
                    ));
                }
                None if head_seq > 0 => {
                    v.problem = Some(AuditProblem::new(
                        1,
                        "removed",
                        format!("the audit log is empty but the head records {head_seq} entries"),
                    ));
                }
                Some((seq, hash)) if *seq > head_seq || *hash != head_hash => {
                    v.problem = Some(AuditProblem::new(
                        *seq,
                        "head",
                        format!(
                            "audit entry {seq} does not match the head (seq {head_seq}): the log or \
                             its head was altered"
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(v)
    }
}
