//! Retention's side of the audit log: the entries that record deletions and erasures, and the
//! deletion of old audit entries themselves (only those before the last signed checkpoint).

use sqlx::{Any, Row, Transaction};

use super::{RetentionItem, RetentionKind, human_ms};
use crate::Store;
use crate::audit::{AuditEvent, AuditOutcome};
use crate::error::{Result, StoreError};

/// The action of the audit helper's signed checkpoints (the head hash, signed).
const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// An audit event of a successful deletion.
pub(crate) fn event(
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    resource: &str,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        actor: actor.to_owned(),
        tenant: tenant.map(str::to_owned),
        action: action.to_owned(),
        resource: resource.to_owned(),
        outcome: AuditOutcome::Success,
        details,
    }
}

/// `FIRST..=LAST` of an audit range item.
pub(crate) fn parse_range(id: &str) -> Result<(u64, u64)> {
    let bad = || StoreError::InvalidArgument(format!("audit range {id:?} is not FIRST..=LAST"));
    let (a, b) = id.split_once("..=").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Deletes the audit entries `first..=last`; how many there were.
pub(crate) async fn delete_range(
    tx: &mut Transaction<'static, Any>,
    first: u64,
    last: u64,
) -> Result<u64> {
    let done = sqlx::query("DELETE FROM audit_log WHERE seq >= $1 AND seq <= $2")
        .bind(crate::to_db(first, "seq")?)
        .bind(crate::to_db(last, "seq")?)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

impl Store {
    /// Audit entries older than `limit_ms` and before the last checkpoint, as one range item
    /// (none without a checkpoint: nothing vouches for a log cut short then).
    pub(crate) async fn plan_audit(
        &self,
        limit_ms: u64,
        now_ms: i64,
    ) -> Result<Vec<RetentionItem>> {
        let checkpoint = sqlx::query("SELECT MAX(seq) AS seq FROM audit_log WHERE action = $1")
            .bind(CHECKPOINT_ACTION)
            .fetch_one(&self.pool)
            .await?;
        let Some(checkpoint): Option<i64> = checkpoint.try_get("seq")? else {
            return Ok(Vec::new());
        };
        let cutoff = now_ms.saturating_sub(i64::try_from(limit_ms).unwrap_or(i64::MAX));
        let row = sqlx::query(
            "SELECT MIN(seq) AS first, MAX(seq) AS last, COUNT(*) AS n FROM audit_log \
             WHERE seq < $1 AND at_ms < $2",
        )
        .bind(checkpoint)
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await?;
        let (Some(first), Some(last)): (Option<i64>, Option<i64>) =
            (row.try_get("first")?, row.try_get("last")?)
        else {
            return Ok(Vec::new());
        };
        let n: i64 = row.try_get("n")?;
        Ok(vec![RetentionItem {
            kind: RetentionKind::AuditEntries,
            id: format!("{first}..={last}"),
            tenant: None,
            job_id: None,
            reason: format!(
                "{n} audit entries older than {} and before checkpoint entry {checkpoint} \
                 (retain-audit {})",
                human_ms(limit_ms),
                human_ms(limit_ms)
            ),
            bytes: None,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_strictly() {
        assert_eq!(parse_range("3..=9").unwrap(), (3, 9));
        assert!(parse_range("9..=3").is_err());
        assert!(parse_range("3..9").is_err());
        assert!(parse_range("x..=9").is_err());
    }
}
