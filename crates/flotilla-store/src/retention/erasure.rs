//! The right to erasure: [`Store::forget_client`] (and retention of inactive clients) remove what
//! the store knows about a client.
//!
//! What a client's record holds and what happens to it:
//!
//! * **removed**: the `clients` row — tenant, the SHA-256 of its credential, its self-given name,
//!   enrollment and last-seen times, credential expiry, revocation flag, and the link to the
//!   enrollment token it used. Its credential stops working at once (unknown credential).
//! * **rewritten**: the participant lists of committed rounds (`rounds.participants_json`, a JSON
//!   array of client ids) have the client's id replaced by `0`, an id no client ever has. Rounds
//!   keep *how many* clients took part (what the round's weighting, the evidence pack and the job
//!   status report need), no longer *who*.
//! * **kept**: the audit log's entries that name the client id (its enrollment, revocation, this
//!   erasure). The log is append-only and hash-chained — rewriting it is exactly what it exists to
//!   detect — and with the row gone the id is a number that leads to no person or device. Model
//!   blobs hold aggregates, never one client's update.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use crate::error::{Result, StoreError};
use crate::types::{ClientId, ClientRecord};
use crate::{CLIENT_COLUMNS, Store, client_from_row};

/// The fields of a client's record that erasure removes (for the answer and the audit entry).
pub const ERASED_FIELDS: [&str; 8] = [
    "tenant",
    "credential_sha256",
    "client_name",
    "created_at_ms",
    "last_seen_ms",
    "credential_expires_at_ms",
    "revoked",
    "enrollment_token",
];

/// What [`Store::forget_client`] removed and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgottenClient {
    /// The record as it was just before it was erased.
    pub record: ClientRecord,
    /// The fields removed with the row ([`ERASED_FIELDS`]).
    pub removed_fields: Vec<String>,
    /// Committed rounds whose participant list named the client (its id is now `0` there).
    pub rounds_rewritten: u64,
    /// The sequence number of the audit entry that records the erasure.
    pub audit_seq: u64,
}

/// What [`erase_clients`] did.
#[derive(Debug, Default)]
pub(crate) struct ErasureSummary {
    /// Rounds rewritten, per client.
    pub rounds_of: HashMap<ClientId, u64>,
}

/// Erases `ids` inside `tx`: replaces them by `0` in every committed round's participants, then
/// deletes their rows. Rows of other tables that name a client would go here too.
pub(crate) async fn erase_clients(
    tx: &mut Transaction<'static, Any>,
    ids: &[ClientId],
) -> Result<ErasureSummary> {
    let mut summary = ErasureSummary::default();
    if ids.is_empty() {
        return Ok(summary);
    }
    let wanted: BTreeSet<u64> = ids.iter().map(|c| c.0).collect();
    // Only the rounds of the clients' tenants can name them (a task goes to its tenant's clients).
    let mut tenants = BTreeSet::new();
    for id in ids {
        let row = sqlx::query("SELECT tenant FROM clients WHERE id = $1")
            .bind(id.to_db()?)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::ClientNotFound(*id))?;
        tenants.insert(row.try_get::<String, _>("tenant")?);
    }
    for tenant in &tenants {
        let rounds = sqlx::query(
            "SELECT r.job_id, r.round, r.participants_json FROM rounds r \
             JOIN jobs j ON j.id = r.job_id WHERE j.tenant = $1",
        )
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
        for r in &rounds {
            let text: String = r.try_get("participants_json")?;
            let mut list: Vec<u64> = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("round participants: {e}")))?;
            let mut changed = false;
            for p in list.iter_mut().filter(|p| wanted.contains(p)) {
                *summary.rounds_of.entry(ClientId(*p)).or_default() += 1;
                *p = 0;
                changed = true;
            }
            if changed {
                let job: i64 = r.try_get("job_id")?;
                let round: i64 = r.try_get("round")?;
                sqlx::query(
                    "UPDATE rounds SET participants_json = $3 WHERE job_id = $1 AND round = $2",
                )
                .bind(job)
                .bind(round)
                .bind(serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()))
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    for id in ids {
        sqlx::query("DELETE FROM clients WHERE id = $1")
            .bind(id.to_db()?)
            .execute(&mut **tx)
            .await?;
    }
    Ok(summary)
}

impl Store {
    /// Erases client `id` (the right to erasure; see the module docs for what is removed,
    /// rewritten and kept), recording it in the audit log as done by `actor` in the same
    /// transaction. [`StoreError::ClientNotFound`] if there is no such client (erasing twice).
    pub async fn forget_client(
        &self,
        id: ClientId,
        actor: &str,
        now_ms: i64,
    ) -> Result<ForgottenClient> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1"
        ))
        .bind(id.to_db()?)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::ClientNotFound(id))?;
        let record = client_from_row(&row)?;
        let summary = erase_clients(&mut tx, &[id]).await?;
        let rounds_rewritten = summary.rounds_of.get(&id).copied().unwrap_or(0);
        let details = serde_json::json!({
            "removed": ERASED_FIELDS,
            "rounds_rewritten": rounds_rewritten,
        });
        let ev = super::audit_entries::event(
            actor,
            Some(&record.tenant),
            "client.forget",
            &format!("client:{id}"),
            details,
        );
        let audit_seq = crate::audit::append(&mut tx, &ev, now_ms).await?;
        tx.commit().await?;
        Ok(ForgottenClient {
            record,
            removed_fields: ERASED_FIELDS.iter().map(|s| (*s).to_owned()).collect(),
            rounds_rewritten,
            audit_seq,
        })
    }
}
