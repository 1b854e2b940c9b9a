//! What a job's model looks like and how its rounds' models evaluated: the parameter layout kept
//! with the job (so a finished job's model can be served, and a job resumed, without rebuilding
//! the model) and the evaluation metrics recorded after a round committed.
//!
//! Evaluation is recorded apart from the commit on purpose: the coordinator commits a round
//! without waiting for it, and evaluates the committed model later, off the round's critical path.
//! Readers ([`Store::job_history`], [`Store::get_round`], recovery) see the evaluation merged into
//! the round's metrics once it is recorded.

use flotilla_core::ParamLayout;
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::types::JobId;
use crate::{Store, check_tenant, now_ms, to_db};

impl Store {
    /// Creates a job in state [`crate::JobState::Pending`], recording its parameter `layout` (if
    /// given) in the same statement; [`Store::job_layout`] and
    /// [`crate::RecoveredJob::layout`] return it.
    pub async fn create_job_with_layout(
        &self,
        tenant: &str,
        name: &str,
        spec: &serde_json::Value,
        rounds_total: u64,
        layout: Option<&ParamLayout>,
    ) -> Result<JobId> {
        check_tenant(tenant)?;
        if rounds_total == 0 {
            return Err(StoreError::InvalidArgument(
                "a job needs at least one round".into(),
            ));
        }
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| StoreError::InvalidArgument(format!("job spec: {e}")))?;
        let layout_json = layout
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::InvalidArgument(format!("layout: {e}")))?;
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO jobs (tenant, name, spec_json, state, rounds_total, rounds_completed, \
             model_version, created_at_ms, updated_at_ms, layout_json) \
             VALUES ($1, $2, $3, 'pending', $4, 0, 0, $5, $5, $6) RETURNING id",
        )
        .bind(tenant)
        .bind(name)
        .bind(spec_json)
        .bind(to_db(rounds_total, "rounds_total")?)
        .bind(now)
        .bind(layout_json)
        .fetch_one(&self.writer)
        .await?;
        JobId::from_db(row.try_get("id")?)
    }

    /// Names `key` (a blob stored with [`Store::put_model`] at version 0) as the model of a job no
    /// round of which has committed: the initial parameters of a job whose model was submitted
    /// with it. Recovery before the first commit reads it from [`crate::JobRecord::model_blob_key`]
    /// and [`Store::sweep_orphan_blobs`] keeps it; the first commit replaces it. Put the blob
    /// first. Refused ([`StoreError::InvalidArgument`]) once a round has committed;
    /// [`StoreError::JobNotFound`] if the job does not exist.
    pub async fn set_initial_model(&self, job_id: JobId, key: &str) -> Result<()> {
        let db_job = job_id.to_db()?;
        let done = sqlx::query(
            "UPDATE jobs SET model_blob_key = $2, updated_at_ms = $3 \
             WHERE id = $1 AND rounds_completed = 0",
        )
        .bind(db_job)
        .bind(key)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            self.require_job(job_id).await?;
            return Err(StoreError::InvalidArgument(format!(
                "job {} has committed rounds: its initial model cannot be set",
                job_id.0
            )));
        }
        Ok(())
    }

    /// The parameter layout recorded when the job was created; `None` if it was created without
    /// one. [`StoreError::JobNotFound`] if the job does not exist.
    pub async fn job_layout(&self, job_id: JobId) -> Result<Option<ParamLayout>> {
        let row = sqlx::query("SELECT layout_json FROM jobs WHERE id = $1")
            .bind(job_id.to_db()?)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::JobNotFound(job_id))?;
        let text: Option<String> = row.try_get("layout_json")?;
        text.as_deref().map(layout_from_db).transpose()
    }

    /// Records the evaluation metrics of committed round `round` (a JSON object, e.g.
    /// `{"eval_accuracy": 0.9, "eval_loss": 0.3, "eval_samples": 360}`), replacing any recorded
    /// before. From then on the round's [`crate::CommittedRound::metrics`] include these keys
    /// (the commit's own keys win on a clash). Allowed in any job state: a round committed by a
    /// job that has since completed or been cancelled may still be evaluated.
    ///
    /// Refused: metrics that are not a JSON object ([`StoreError::InvalidArgument`]), an unknown
    /// job ([`StoreError::JobNotFound`]) and a round that is not committed
    /// ([`StoreError::RoundNotCommitted`]).
    pub async fn record_round_eval(
        &self,
        job_id: JobId,
        round: u64,
        metrics: &serde_json::Value,
    ) -> Result<()> {
        if !metrics.is_object() {
            return Err(StoreError::InvalidArgument(
                "evaluation metrics must be a JSON object".into(),
            ));
        }
        let text = serde_json::to_string(metrics)
            .map_err(|e| StoreError::InvalidArgument(format!("evaluation metrics: {e}")))?;
        let db_job = job_id.to_db()?;
        let done = sqlx::query("UPDATE rounds SET eval_json = $3 WHERE job_id = $1 AND round = $2")
            .bind(db_job)
            .bind(to_db(round, "round")?)
            .bind(text)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        self.require_job(job_id).await?;
        Err(StoreError::RoundNotCommitted { job_id, round })
    }
}

/// A stored layout.
pub(crate) fn layout_from_db(text: &str) -> Result<ParamLayout> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("job layout: {e}")))
}

/// A round's metrics with its recorded evaluation (if any) merged in; the commit's keys win.
pub(crate) fn with_eval(
    mut metrics: serde_json::Value,
    eval: Option<&str>,
) -> Result<serde_json::Value> {
    let Some(eval) = eval else {
        return Ok(metrics);
    };
    let eval: serde_json::Value = serde_json::from_str(eval)
        .map_err(|e| StoreError::Corrupt(format!("round evaluation: {e}")))?;
    if let (Some(m), serde_json::Value::Object(e)) = (metrics.as_object_mut(), eval) {
        for (k, v) in e {
            m.entry(k).or_insert(v);
        }
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn evaluation_is_merged_without_overwriting_the_commit() {
        let m = json!({"attempt": 1, "train_loss": 0.5});
        assert_eq!(with_eval(m.clone(), None).unwrap(), m);
        let merged = with_eval(m, Some(r#"{"eval_accuracy": 0.9, "attempt": 7}"#)).unwrap();
        assert_eq!(
            merged,
            json!({"attempt": 1, "train_loss": 0.5, "eval_accuracy": 0.9})
        );
        assert!(with_eval(json!({}), Some("not json")).is_err());
    }
}
