//! The audit entries of the store's own changes, each appended inside the transaction of the
//! change it records (so there is no change without its entry, and no entry without its change):
//! enrollment tokens, enrollments, credential expiry, revocations, job state changes, and the DP
//! charge and completion written by [`Store::commit_round`]. Also the signed checkpoints
//! ([`Store::audit_checkpoint`]) and the head the coordinator publishes ([`Store::audit_state`]).

use serde_json::json;
use sqlx::{Any, Row, Transaction};

use crate::audit::{self, AuditEvent, AuditOutcome};
use crate::audit_sign::{AuditSigner, CHECKPOINT_ACTION, Checkpoint};
use crate::error::Result;
use crate::types::{ClientId, ClientRecord, JobId, JobState, RoundCommit, TokenId};
use crate::{Store, now_ms};

type Tx = Transaction<'static, Any>;

/// The actor of the coordinator's own decisions.
pub(crate) const SYSTEM: &str = "system";

fn event(
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    resource: String,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        actor: actor.to_owned(),
        tenant: tenant.map(str::to_owned),
        action: action.to_owned(),
        resource,
        outcome: AuditOutcome::Success,
        details,
    }
}

pub(crate) async fn token_created(
    tx: &mut Tx,
    actor: &str,
    tenant: &str,
    id: TokenId,
    uses: u32,
    expires_at_ms: i64,
    now: i64,
) -> Result<()> {
    let ev = event(
        actor,
        Some(tenant),
        "enrollment_token.created",
        format!("enrollment-token:{}", id.0),
        json!({ "uses": uses, "expires_at_ms": expires_at_ms }),
    );
    audit::append(tx, &ev, now).await.map(drop)
}

pub(crate) async fn enrolled(
    tx: &mut Tx,
    client: ClientId,
    tenant: &str,
    token_id: i64,
    name: Option<&str>,
    now: i64,
) -> Result<()> {
    let ev = event(
        &format!("client:{}", client.0),
        Some(tenant),
        "client.enrolled",
        format!("client:{}", client.0),
        json!({ "enrollment_token": token_id, "name": name }),
    );
    audit::append(tx, &ev, now).await.map(drop)
}

pub(crate) async fn revoked(
    tx: &mut Tx,
    actor: &str,
    client: ClientId,
    tenant: &str,
) -> Result<()> {
    let ev = event(
        actor,
        Some(tenant),
        "client.revoked",
        format!("client:{}", client.0),
        json!({}),
    );
    audit::append(tx, &ev, now_ms()).await.map(drop)
}

/// A job's state change, as [`job_state`] records it.
pub(crate) struct JobChange<'a> {
    pub job_id: JobId,
    pub tenant: &'a str,
    pub to: JobState,
    pub reason: Option<&'a str>,
    pub actor: &'a str,
}

/// The prefix of the reason the coordinator gives a job its privacy budget stopped.
const BUDGET_REASON: &str = "privacy budget:";

pub(crate) async fn job_state(tx: &mut Tx, c: &JobChange<'_>, now: i64) -> Result<()> {
    let action = match c.to {
        JobState::Running => "job.started",
        JobState::Cancelled => "job.cancelled",
        JobState::Failed if c.reason.is_some_and(|r| r.starts_with(BUDGET_REASON)) => {
            "job.budget_stopped"
        }
        JobState::Failed => "job.failed",
        JobState::Completed => "job.completed",
        JobState::Pending => "job.pending",
    };
    let ev = event(
        c.actor,
        Some(c.tenant),
        action,
        format!("job:{}", c.job_id.0),
        json!({ "state": c.to.as_str(), "reason": c.reason }),
    );
    audit::append(tx, &ev, now).await.map(drop)
}

/// `dp.charge` of a DP round and `job.completed` after the last round, inside `commit_round`.
pub(crate) async fn round_committed(
    tx: &mut Tx,
    job_id: JobId,
    round: u64,
    commit: &RoundCommit<'_>,
    now: i64,
) -> Result<()> {
    let row = sqlx::query("SELECT tenant, state FROM jobs WHERE id = $1")
        .bind(job_id.to_db()?)
        .fetch_one(&mut **tx)
        .await?;
    let tenant: String = row.try_get("tenant")?;
    let state: String = row.try_get("state")?;
    if let Some(c) = commit.dp_charge {
        let ev = event(
            SYSTEM,
            Some(&tenant),
            "dp.charge",
            format!("job:{}", job_id.0),
            json!({
                "round": round,
                "epsilon_round": c.epsilon_round,
                "epsilon_total": c.epsilon_total,
                "delta": c.delta,
            }),
        );
        audit::append(tx, &ev, now).await?;
    }
    if state == JobState::Completed.as_str() {
        let change = JobChange {
            job_id,
            tenant: &tenant,
            to: JobState::Completed,
            reason: None,
            actor: SYSTEM,
        };
        job_state(tx, &change, now).await?;
    }
    Ok(())
}

/// The head of the chain and its last signed checkpoint, for metrics and the verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditState {
    /// The seq of the last entry (0 for an empty log).
    pub head_seq: u64,
    /// Its hash, hex.
    pub head_hash: String,
    /// The details of the last `audit.checkpoint` entry, if any.
    pub checkpoint: Option<Checkpoint>,
}

/// The last checkpoint entry's details (`None` if there is none or it is unreadable: the verifier
/// reports that, the metrics only show 0).
async fn last_checkpoint<'e, E>(db: E) -> Result<Option<Checkpoint>>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT details_json FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(CHECKPOINT_ACTION)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(r) => serde_json::from_str(&r.try_get::<String, _>("details_json")?).ok(),
        None => None,
    })
}

impl Store {
    /// Writes the audit entry of an expired credential's refusal, once per credential: later
    /// refusals find it written (a read, no write), so a client retrying with an expired
    /// credential cannot fill the log.
    pub(crate) async fn audit_credential_expired(
        &self,
        client: &ClientRecord,
        expired_at_ms: i64,
        now: i64,
    ) -> Result<()> {
        let id = client.client_id.to_db()?;
        let done: i64 = sqlx::query("SELECT credential_expiry_audited FROM clients WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if done != 0 {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let first = sqlx::query(
            "UPDATE clients SET credential_expiry_audited = 1 WHERE id = $1 AND credential_expiry_audited = 0",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 1 {
            let ev = AuditEvent {
                outcome: AuditOutcome::Denied,
                ..event(
                    &format!("client:{}", client.client_id.0),
                    Some(&client.tenant),
                    "client.credential_expired",
                    format!("client:{}", client.client_id.0),
                    json!({ "expired_at_ms": expired_at_ms }),
                )
            };
            audit::append(&mut tx, &ev, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The head and the last checkpoint.
    pub async fn audit_state(&self) -> Result<AuditState> {
        let (head_seq, head_hash) = self.audit_head().await?;
        Ok(AuditState {
            head_seq,
            head_hash,
            checkpoint: last_checkpoint(&self.pool).await?,
        })
    }

    /// Appends an `audit.checkpoint` entry signing the current head with `signer`, unless the
    /// head is already a checkpoint (nothing happened since the last one) or the log is empty:
    /// `None` then.
    pub async fn audit_checkpoint(
        &self,
        signer: &AuditSigner,
        at_ms: i64,
    ) -> Result<Option<Checkpoint>> {
        let mut tx = self.begin_write().await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let seq: i64 = head.try_get("seq")?;
        let hash: String = head.try_get("hash")?;
        let last_action: Option<String> =
            sqlx::query("SELECT action FROM audit_log WHERE seq = $1")
                .bind(seq)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("action"))
                .transpose()?;
        // Nothing new, an empty log, or a head whose entry is gone (a deleted tail): signing that
        // would vouch for a log that was tampered with.
        if seq <= 0
            || last_action
                .as_deref()
                .is_none_or(|a| a == CHECKPOINT_ACTION)
        {
            return Ok(None);
        }
        let cp = signer.checkpoint(seq as u64, &hash);
        let ev = event(
            SYSTEM,
            None,
            CHECKPOINT_ACTION,
            format!("audit:{seq}"),
            serde_json::to_value(&cp).expect("a checkpoint is JSON"),
        );
        audit::append(&mut tx, &ev, at_ms).await?;
        tx.commit().await?;
        Ok(Some(cp))
    }
}
