//! Who submitted a job, and its approval (four eyes).
//!
//! A job submitted in a tenant that requires approval is stored in state `pending` with approval
//! `pending`: nothing runs it (recovery loads running jobs only), until an approver who is not the
//! submitter approves it (it then starts like any job) or rejects it (it ends `cancelled` with the
//! rejection as its reason, so it never runs). The `jobs.state` CHECK of SQLite cannot change
//! without a table rebuild, so the approval is a column of its own and the API presents
//! `pending_approval` / `rejected`. Every submission and decision writes its audit entry in the
//! same transaction.

use std::collections::HashMap;

use flotilla_core::ParamLayout;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::{Result, StoreError};
use crate::types::JobId;
use crate::{Store, check_tenant, now_ms, to_db};

/// Where a job's approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for an approver; the job does not run.
    Pending,
    /// Approved: the job started.
    Approved,
    /// Rejected: the job was cancelled and never ran.
    Rejected,
}

impl ApprovalState {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(ApprovalState::Pending),
            "approved" => Ok(ApprovalState::Approved),
            "rejected" => Ok(ApprovalState::Rejected),
            other => Err(StoreError::Corrupt(format!("job approval {other:?}"))),
        }
    }
}

/// A job's submitter and approval record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobApproval {
    /// Who submitted it (an audit actor name); `None` for jobs submitted before it was recorded.
    pub submitted_by: Option<String>,
    /// `None`: the job needed no approval.
    pub state: Option<ApprovalState>,
    /// Who approved or rejected it.
    pub by: Option<String>,
    /// When, Unix ms.
    pub at_ms: Option<i64>,
    /// The rejection's reason.
    pub reason: Option<String>,
}

/// A job to create (see [`Store::create_submitted_job`]).
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Its tenant.
    pub tenant: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The spec, opaque to the store.
    pub spec: &'a serde_json::Value,
    /// Rounds to run (≥ 1).
    pub rounds_total: u64,
    /// Its parameter layout.
    pub layout: Option<&'a ParamLayout>,
}

const APPROVAL_COLUMNS: &str =
    "id, submitted_by, approval, approval_by, approval_at_ms, approval_reason";

fn approval_from_row(row: &AnyRow) -> Result<JobApproval> {
    let state: Option<String> = row.try_get("approval")?;
    Ok(JobApproval {
        submitted_by: row.try_get("submitted_by")?,
        state: state.as_deref().map(ApprovalState::parse).transpose()?,
        by: row.try_get("approval_by")?,
        at_ms: row.try_get("approval_at_ms")?,
        reason: row.try_get("approval_reason")?,
    })
}

impl Store {
    /// Creates a job in state [`crate::JobState::Pending`] submitted by `submitted_by` (an audit
    /// actor name), waiting for approval if `needs_approval`, and records the submission in the
    /// audit log, in one transaction.
    pub async fn create_submitted_job(
        &self,
        job: &NewJob<'_>,
        submitted_by: &str,
        needs_approval: bool,
    ) -> Result<JobId> {
        check_tenant(job.tenant)?;
        if job.rounds_total == 0 {
            return Err(StoreError::InvalidArgument(
                "a job needs at least one round".into(),
            ));
        }
        let spec_json = serde_json::to_string(job.spec)
            .map_err(|e| StoreError::InvalidArgument(format!("job spec: {e}")))?;
        let layout_json = job
            .layout
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::InvalidArgument(format!("layout: {e}")))?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO jobs (tenant, name, spec_json, state, rounds_total, rounds_completed, \
             model_version, created_at_ms, updated_at_ms, layout_json, submitted_by, approval) \
             VALUES ($1, $2, $3, 'pending', $4, 0, 0, $5, $5, $6, $7, $8) RETURNING id",
        )
        .bind(job.tenant)
        .bind(job.name)
        .bind(spec_json)
        .bind(to_db(job.rounds_total, "rounds_total")?)
        .bind(now)
        .bind(layout_json)
        .bind(submitted_by)
        .bind(needs_approval.then_some("pending"))
        .fetch_one(&mut *tx)
        .await?;
        let id = JobId::from_db(row.try_get("id")?)?;
        crate::principals::audit_record(
            &mut tx,
            submitted_by,
            Some(job.tenant),
            "job.submit",
            &format!("job:{}", id.0),
            serde_json::json!({
                "name": job.name,
                "rounds": job.rounds_total,
                "approval": if needs_approval { "pending" } else { "not required" },
            }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A job's submitter and approval.
    pub async fn job_approval(&self, job_id: JobId) -> Result<JobApproval> {
        let row = sqlx::query(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM jobs WHERE id = $1"
        ))
        .bind(job_id.to_db()?)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::JobNotFound(job_id))?;
        approval_from_row(&row)
    }

    /// The approvals of every job (of one tenant, if given) that has a submitter or an approval
    /// recorded.
    pub async fn job_approvals(&self, tenant: Option<&str>) -> Result<HashMap<JobId, JobApproval>> {
        let base = format!(
            "SELECT {APPROVAL_COLUMNS} FROM jobs WHERE (submitted_by IS NOT NULL OR approval IS NOT NULL)"
        );
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!("{base} AND tenant = $1"))
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query(&base).fetch_all(&self.pool).await?,
        };
        rows.iter()
            .map(|r| Ok((JobId::from_db(r.try_get("id")?)?, approval_from_row(r)?)))
            .collect()
    }

    /// An approved job that has not started yet (still `pending`), as recovery loads a running
    /// one, so it starts exactly like one no round of which committed; `None` otherwise.
    pub async fn load_approved_job(&self, job_id: JobId) -> Result<Option<crate::RecoveredJob>> {
        let row = sqlx::query(&format!(
            "{} WHERE j.id = $1 AND j.state = 'pending' AND j.approval = 'approved'",
            crate::recovery::RECOVERY_SELECT
        ))
        .bind(job_id.to_db()?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(crate::recovery::recovered_from_row)
            .transpose()
    }

    /// Approves a job waiting for approval, as `by`, recording it in the audit log in the same
    /// transaction. The job stays `pending` until the caller starts it. Refused with
    /// [`StoreError::ApprovalRefused`] if the job is not waiting for approval or `by` submitted it
    /// (four eyes); [`StoreError::JobNotFound`] if there is no such job.
    pub async fn approve_job(&self, job_id: JobId, by: &str) -> Result<JobApproval> {
        self.decide(job_id, by, None).await
    }

    /// Rejects a job waiting for approval, as `by`, with `reason`: it ends `cancelled` (reason
    /// "rejected by BY: REASON") and never runs; recorded in the audit log in the same
    /// transaction. Refused like [`Store::approve_job`].
    pub async fn reject_job(&self, job_id: JobId, by: &str, reason: &str) -> Result<JobApproval> {
        self.decide(job_id, by, Some(reason)).await
    }

    async fn decide(&self, job_id: JobId, by: &str, reject: Option<&str>) -> Result<JobApproval> {
        let db_job = job_id.to_db()?;
        let now = now_ms();
        let reason = reject.map(|r| crate::job_reason::clean(r).unwrap_or_default());
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {APPROVAL_COLUMNS}, tenant, state FROM jobs WHERE id = $1"
        ))
        .bind(db_job)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::JobNotFound(job_id))?;
        let current = approval_from_row(&row)?;
        let tenant: String = row.try_get("tenant")?;
        let state: String = row.try_get("state")?;
        if current.state != Some(ApprovalState::Pending) || state != "pending" {
            let what = match current.state {
                None => "needs no approval".to_owned(),
                Some(s) => format!("is already {}", s.as_str()),
            };
            return Err(StoreError::ApprovalRefused(format!(
                "job {} {what}; only a job waiting for approval can be approved or rejected",
                job_id.0
            )));
        }
        if current.submitted_by.as_deref() == Some(by) {
            return Err(StoreError::ApprovalRefused(format!(
                "job {} was submitted by {by}: its submitter cannot approve or reject it (four eyes); ask another approver",
                job_id.0
            )));
        }
        let (approval, state_reason) = match &reason {
            None => ("approved", None),
            Some(r) if r.is_empty() => ("rejected", Some(format!("rejected by {by}"))),
            Some(r) => ("rejected", Some(format!("rejected by {by}: {r}"))),
        };
        let new_state = if reason.is_some() {
            "cancelled"
        } else {
            "pending"
        };
        let state_reason = state_reason.and_then(|s| crate::job_reason::clean(&s));
        // Guarded by the approval still pending: a concurrent decision loses.
        let done = sqlx::query(
            "UPDATE jobs SET approval = $2, approval_by = $3, approval_at_ms = $4, \
             approval_reason = $5, state = $6, state_reason = COALESCE($7, state_reason), \
             updated_at_ms = $4 WHERE id = $1 AND approval = 'pending' AND state = 'pending'",
        )
        .bind(db_job)
        .bind(approval)
        .bind(by)
        .bind(now)
        .bind(reason.as_deref().filter(|r| !r.is_empty()))
        .bind(new_state)
        .bind(state_reason)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::ApprovalRefused(format!(
                "job {} was decided by someone else meanwhile",
                job_id.0
            )));
        }
        crate::principals::audit_record(
            &mut tx,
            by,
            Some(&tenant),
            if reason.is_some() {
                "job.reject"
            } else {
                "job.approve"
            },
            &format!("job:{}", job_id.0),
            match &reason {
                Some(r) => serde_json::json!({ "reason": r }),
                None => serde_json::json!({}),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(JobApproval {
            submitted_by: current.submitted_by,
            state: Some(ApprovalState::parse(approval)?),
            by: Some(by.to_owned()),
            at_ms: Some(now),
            reason: reason.filter(|r| !r.is_empty()),
        })
    }
}
