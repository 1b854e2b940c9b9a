//! Verifying the audit chain together with its signed checkpoints.
//!
//! [`Store::audit_verify`] proves the rows are a consistent chain up to the head row. That alone
//! does not stop someone with write access to the database who recomputes every hash after a
//! change, or who deletes the tail and rewrites the head row to match: the checkpoints do. Each is
//! signed with a key the database never holds, so a recomputed chain no longer matches the hashes
//! its checkpoints signed, and a checkpoint kept elsewhere (the server's memory, the
//! `flotilla_audit_checkpoint_seq` metric, an operator's copy) names an entry a truncated chain no
//! longer reaches.

use sqlx::Row;

use crate::Store;
use crate::audit::{AuditProblem, AuditVerification};
use crate::audit_sign::{CHECKPOINT_ACTION, Checkpoint};
use crate::error::Result;

/// Checkpoint entries read per page.
const PAGE: i64 = 1000;

/// What [`Store::audit_verify_signed`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedVerification {
    /// The chain, with the first problem of the chain or of its checkpoints.
    pub chain: AuditVerification,
    /// Checkpoint entries checked.
    pub checkpoints: u64,
    /// The last checkpoint in the log, if any.
    pub last_checkpoint: Option<Checkpoint>,
}

fn problem(seq: u64, kind: &str, message: String) -> Option<AuditProblem> {
    Some(AuditProblem {
        seq,
        kind: kind.to_owned(),
        message,
    })
}

impl Store {
    /// [`Store::audit_verify`], then every `audit.checkpoint` entry: its signature must verify
    /// (with the key `pinned`, hex, if given) and the entry it signed must still have the hash it
    /// signed. `known` is a checkpoint kept outside the database (e.g. the last one this server
    /// signed): the chain must still reach its entry with its hash, or the tail was removed.
    pub async fn audit_verify_signed(
        &self,
        pinned: Option<&str>,
        known: Option<&Checkpoint>,
    ) -> Result<SignedVerification> {
        let mut v = SignedVerification {
            chain: self.audit_verify().await?,
            checkpoints: 0,
            last_checkpoint: None,
        };
        if v.chain.problem.is_some() {
            return Ok(v);
        }
        let first = v.chain.first_seq.unwrap_or(1);
        let mut after: i64 = 0;
        'pages: loop {
            let rows = sqlx::query(
                "SELECT seq, details_json FROM audit_log WHERE action = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
            )
            .bind(CHECKPOINT_ACTION)
            .bind(after)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                after = row.try_get("seq")?;
                let seq = after as u64;
                let text: String = row.try_get("details_json")?;
                let Ok(cp) = serde_json::from_str::<Checkpoint>(&text) else {
                    v.chain.problem = problem(
                        seq,
                        "bad_checkpoint",
                        format!("audit entry {seq} is a checkpoint whose details are unreadable"),
                    );
                    break 'pages;
                };
                if let Err(why) = cp.check(pinned) {
                    v.chain.problem = problem(
                        seq,
                        "bad_checkpoint",
                        format!(
                            "audit checkpoint {seq} (of entry {}) is not valid: {why}",
                            cp.seq
                        ),
                    );
                    break 'pages;
                }
                if cp.seq >= seq {
                    v.chain.problem = problem(
                        seq,
                        "bad_checkpoint",
                        format!("audit checkpoint {seq} signs a later entry ({})", cp.seq),
                    );
                    break 'pages;
                }
                // Entries before the first stored one were deleted by retention: nothing to compare.
                if cp.seq >= first
                    && let Some(p) = self
                        .signed_hash_differs(&cp, &format!("checkpoint {seq}"))
                        .await?
                {
                    v.chain.problem = Some(p);
                    break 'pages;
                }
                v.checkpoints += 1;
                v.last_checkpoint = Some(cp);
            }
        }
        if v.chain.problem.is_none()
            && let Some(k) = known
        {
            let last = v.chain.last_seq.unwrap_or(0);
            if k.seq > last {
                v.chain.problem = problem(
                    last + 1,
                    "removed",
                    format!(
                        "audit entry {} was removed: the log ends at entry {last}, but entry {} was \
                         signed in a checkpoint (hash {})",
                        last + 1,
                        k.seq,
                        k.hash
                    ),
                );
            } else if k.seq >= first {
                v.chain.problem = self
                    .signed_hash_differs(k, "the last checkpoint this server signed")
                    .await?;
            }
        }
        Ok(v)
    }

    /// A problem if the entry `cp` signed is missing or no longer has the signed hash.
    async fn signed_hash_differs(&self, cp: &Checkpoint, by: &str) -> Result<Option<AuditProblem>> {
        let row = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(i64::try_from(cp.seq).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            None => problem(
                cp.seq,
                "removed",
                format!("audit entry {} was removed ({by} signed it)", cp.seq),
            ),
            Some(r) if r.try_get::<String, _>("hash")? != cp.hash => problem(
                cp.seq,
                "altered",
                format!(
                    "audit entry {} was altered: its hash is not the one {by} signed (the chain \
                     was recomputed after a change)",
                    cp.seq
                ),
            ),
            Some(_) => None,
        })
    }
}
