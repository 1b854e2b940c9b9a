//! State changes that carry a reason for people: why a job failed or who cancelled it.

use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::types::{JobId, JobState};
use crate::{Store, now_ms};

/// Longest [`crate::JobRecord::state_reason`] stored, bytes. Longer reasons are cut at a character
/// boundary and end with `…`: a reason is for people, and losing the state change because its
/// explanation is long would be worse.
pub const MAX_STATE_REASON_BYTES: usize = 2048;

/// `reason` as stored: one line (control characters become spaces), trimmed, at most
/// [`MAX_STATE_REASON_BYTES`]; `None` if nothing is left.
pub(crate) fn clean(reason: &str) -> Option<String> {
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = one_line.trim();
    if text.is_empty() {
        return None;
    }
    if text.len() <= MAX_STATE_REASON_BYTES {
        return Some(text.to_owned());
    }
    let ellipsis = '…';
    let mut end = MAX_STATE_REASON_BYTES - ellipsis.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}{ellipsis}", &text[..end]))
}

impl Store {
    /// [`Store::set_job_state`], recording `reason` as the job's
    /// [`crate::JobRecord::state_reason`] in the same statement. The same transitions are allowed;
    /// staying in the current state is a no-op that keeps the reason recorded first (a second
    /// cancel does not rewrite who cancelled). `reason` is stored as one line of at most
    /// [`MAX_STATE_REASON_BYTES`] (see there); an empty one is stored as NULL.
    ///
    /// A change is audited in the same transaction (`job.started`, `job.cancelled`, `job.failed`,
    /// or `job.budget_stopped` for a reason that starts with `privacy budget:`) with `actor` as
    /// who did it (`system` for the coordinator itself); a no-op writes no entry.
    pub async fn set_job_state_with_reason(
        &self,
        job_id: JobId,
        to: JobState,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let from = to.allowed_from();
        let reason = reason.and_then(clean);
        if !from.is_empty() {
            // The IN list is made of this crate's constants, never of caller input.
            let list: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
            let now = now_ms();
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(&format!(
                "UPDATE jobs SET state = $2, updated_at_ms = $3, state_reason = $4 WHERE id = $1 AND state IN ({}) RETURNING tenant",
                list.join(", ")
            ))
            .bind(job_id.to_db()?)
            .bind(to.as_str())
            .bind(now)
            .bind(reason.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = done {
                let tenant: String = row.try_get("tenant")?;
                let change = crate::audit_wiring::JobChange {
                    job_id,
                    tenant: &tenant,
                    to,
                    reason: reason.as_deref(),
                    actor,
                };
                crate::audit_wiring::job_state(&mut tx, &change, now).await?;
                tx.commit().await?;
                return Ok(());
            }
        }
        let current = self.get_job(job_id).await?.state;
        if current == to {
            Ok(())
        } else {
            Err(StoreError::InvalidTransition {
                job_id,
                from: current,
                to,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(
            clean("  cancelled by alice\n: x\u{1b}[31m "),
            Some("cancelled by alice : x [31m".to_owned())
        );
        assert_eq!(clean(" \n\t"), None);
        let long = "é".repeat(MAX_STATE_REASON_BYTES);
        let c = clean(&long).unwrap();
        assert!(c.len() <= MAX_STATE_REASON_BYTES, "{}", c.len());
        assert!(c.ends_with('…'));
        assert!(c.starts_with("éé"));
    }
}
