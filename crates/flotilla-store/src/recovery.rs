//! Reloading running jobs after a restart (or after a storage fault halted one), and the attempt
//! numbers a coordinator has handed tasks out for.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::{Result, StoreError};
use crate::types::{JobId, RecoveredJob};
use crate::{Store, from_db, job_from_row, round_from_row, to_db};

/// A job with its last committed round (joined on `rounds_completed`) and its snapshot.
pub(crate) const RECOVERY_SELECT: &str = "SELECT j.id, j.tenant, j.name, j.spec_json, j.state, j.rounds_total, \
     j.rounds_completed, j.model_version, j.model_blob_key, j.created_at_ms, \
     j.updated_at_ms, j.state_reason, j.machine_state_json, j.issued_round, j.issued_attempt, \
     r.job_id AS r_job_id, r.round AS r_round, r.attempt AS r_attempt, \
     r.model_version AS r_model_version, r.participants_json AS r_participants_json, \
     r.metrics_json AS r_metrics_json, r.model_blob_key AS r_model_blob_key, \
     r.committed_at_ms AS r_committed_at_ms, r.eval_json AS r_eval_json, j.layout_json \
     FROM jobs j LEFT JOIN rounds r ON r.job_id = j.id AND r.round = j.rounds_completed";

impl Store {
    /// For recovery after a restart: every running job with its spec, last committed round (whose
    /// model key is the current global model) and the machine snapshot saved with it. One query,
    /// so each job and its last round are consistent.
    pub async fn load_running_jobs(&self) -> Result<Vec<RecoveredJob>> {
        let rows = sqlx::query(&format!(
            "{RECOVERY_SELECT} WHERE j.state = 'running' ORDER BY j.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(recovered_from_row).collect()
    }

    /// [`Store::load_running_jobs`] for one job: `None` if it is not running (any more).
    /// [`StoreError::JobNotFound`] if it does not exist.
    pub async fn load_running_job(&self, job_id: JobId) -> Result<Option<RecoveredJob>> {
        let row = sqlx::query(&format!("{RECOVERY_SELECT} WHERE j.id = $1"))
            .bind(job_id.to_db()?)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::JobNotFound(job_id))?;
        let job = recovered_from_row(&row)?;
        Ok((job.job.state == crate::JobState::Running).then_some(job))
    }

    /// Records that tasks of `(round, attempt)` may be handed out from now on. Call it before the
    /// first task of a new attempt leaves the process; recovery then starts above it. Only ever
    /// raises the recorded pair (ordered by round, then attempt): recording a lower one is a
    /// no-op. [`StoreError::JobNotFound`] if the job does not exist.
    pub async fn record_issued_attempt(
        &self,
        job_id: JobId,
        round: u64,
        attempt: u32,
    ) -> Result<()> {
        let db_job = job_id.to_db()?;
        let db_round = to_db(round, "round")?;
        let done = sqlx::query(
            "UPDATE jobs SET issued_round = $2, issued_attempt = $3 WHERE id = $1 \
             AND (issued_round < $2 OR (issued_round = $2 AND issued_attempt < $3))",
        )
        .bind(db_job)
        .bind(db_round)
        .bind(i64::from(attempt))
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            // Already at or above it, or no such job.
            self.require_job(job_id).await?;
        }
        Ok(())
    }
}

pub(crate) fn recovered_from_row(row: &AnyRow) -> Result<RecoveredJob> {
    let job = job_from_row(row, "")?;
    let r_job: Option<i64> = row.try_get("r_job_id")?;
    let last_round = match r_job {
        Some(_) => Some(round_from_row(row, "r_")?),
        None => None,
    };
    if last_round.is_none() && job.rounds_completed > 0 {
        return Err(StoreError::Corrupt(format!(
            "job {} has {} rounds completed but no row for the last one",
            job.id, job.rounds_completed
        )));
    }
    let machine_state_json: Option<String> = row.try_get("machine_state_json")?;
    let issued_round = from_db(row.try_get("issued_round")?, "issued_round")?;
    let issued_attempt: i64 = row.try_get("issued_attempt")?;
    let issued_attempt = u32::try_from(issued_attempt).map_err(|_| {
        StoreError::Corrupt(format!("issued_attempt {issued_attempt} out of range"))
    })?;
    let layout_json: Option<String> = row.try_get("layout_json")?;
    Ok(RecoveredJob {
        layout: layout_json
            .as_deref()
            .map(crate::layout_eval::layout_from_db)
            .transpose()?,
        job,
        last_round,
        machine_state_json,
        issued_attempt: (issued_round > 0 && issued_attempt > 0)
            .then_some((issued_round, issued_attempt)),
    })
}
