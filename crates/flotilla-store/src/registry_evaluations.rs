//! Federated evaluations in the store (a child of `registry`): of a registered version or of a
//! job's committed round, with their summaries.

use flotilla_registry::EvalSummary;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{json, to_json};
use crate::error::{Result, StoreError};
use crate::types::JobId;
use crate::{Store, from_db, now_ms, to_db};

/// What an evaluation evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSubject {
    /// A registered version.
    Version {
        /// The model.
        name: String,
        /// The version.
        version: u64,
    },
    /// A job's committed round.
    Round {
        /// The job.
        job_id: JobId,
        /// The round.
        round: u64,
    },
}

/// Why an evaluation ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalKind {
    /// Asked for (`flotilla model evaluate`).
    OnDemand,
    /// The periodic evaluation of production (regression detection).
    Scheduled,
    /// A canary's comparison with production.
    Canary,
    /// A job's `[evaluation]` every K rounds.
    Job,
}

impl EvalKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EvalKind::OnDemand => "on_demand",
            EvalKind::Scheduled => "scheduled",
            EvalKind::Canary => "canary",
            EvalKind::Job => "job",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "on_demand" => EvalKind::OnDemand,
            "scheduled" => EvalKind::Scheduled,
            "canary" => EvalKind::Canary,
            "job" => EvalKind::Job,
            other => return Err(StoreError::Corrupt(format!("evaluation kind {other:?}"))),
        })
    }
}

/// A stored federated evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvaluation {
    /// Its id.
    pub id: u64,
    /// What it evaluated.
    pub subject: EvalSubject,
    /// Why.
    pub kind: EvalKind,
    /// Clients asked for.
    pub requested_clients: u64,
    /// The result.
    pub summary: EvalSummary,
    /// Started, Unix ms.
    pub started_at_ms: i64,
    /// Finished, Unix ms.
    pub finished_at_ms: i64,
}

const EVAL_COLUMNS: &str = "id, name, version, job_id, round, kind, requested_clients, summary, \
     started_at_ms, finished_at_ms";

fn eval_from_row(row: &AnyRow) -> Result<StoredEvaluation> {
    let name: Option<String> = row.try_get("name")?;
    let version: Option<i64> = row.try_get("version")?;
    let job: Option<i64> = row.try_get("job_id")?;
    let round: Option<i64> = row.try_get("round")?;
    let subject = match (name, version, job, round) {
        (Some(name), Some(v), _, _) => EvalSubject::Version {
            name,
            version: from_db(v, "version")?,
        },
        (_, _, Some(j), Some(r)) => EvalSubject::Round {
            job_id: JobId::from_db(j)?,
            round: from_db(r, "round")?,
        },
        _ => return Err(StoreError::Corrupt("evaluation without a subject".into())),
    };
    let kind: String = row.try_get("kind")?;
    let summary: String = row.try_get("summary")?;
    Ok(StoredEvaluation {
        id: from_db(row.try_get("id")?, "evaluation id")?,
        subject,
        kind: EvalKind::parse(&kind)?,
        requested_clients: from_db(row.try_get("requested_clients")?, "clients")?,
        summary: json(&summary, "evaluation summary")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

impl Store {
    /// Stores a finished federated evaluation; returns its id.
    pub async fn record_evaluation(
        &self,
        subject: &EvalSubject,
        kind: EvalKind,
        requested_clients: u64,
        summary: &EvalSummary,
        started_at_ms: i64,
    ) -> Result<u64> {
        let (name, version, job, round) = match subject {
            EvalSubject::Version { name, version } => (
                Some(name.as_str()),
                Some(to_db(*version, "version")?),
                None,
                None,
            ),
            EvalSubject::Round { job_id, round } => (
                None,
                None,
                Some(job_id.to_db()?),
                Some(to_db(*round, "round")?),
            ),
        };
        let row = sqlx::query(
            "INSERT INTO evaluations (name, version, job_id, round, kind, requested_clients, \
             summary, started_at_ms, finished_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING id",
        )
        .bind(name)
        .bind(version)
        .bind(job)
        .bind(round)
        .bind(kind.as_str())
        .bind(to_db(requested_clients, "clients")?)
        .bind(to_json(summary)?)
        .bind(started_at_ms)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?;
        from_db(row.try_get("id")?, "evaluation id")
    }

    /// The latest `limit` evaluations of `subject`, newest first.
    pub async fn evaluations(
        &self,
        subject: &EvalSubject,
        limit: u32,
    ) -> Result<Vec<StoredEvaluation>> {
        let (cond, second) = match subject {
            EvalSubject::Version { version, .. } => {
                ("name = $1 AND version = $2", to_db(*version, "version")?)
            }
            EvalSubject::Round { round, .. } => {
                ("job_id = $1 AND round = $2", to_db(*round, "round")?)
            }
        };
        let sql = format!(
            "SELECT {EVAL_COLUMNS} FROM evaluations WHERE {cond} ORDER BY id DESC LIMIT $3"
        );
        let q = sqlx::query(&sql);
        let q = match subject {
            EvalSubject::Version { name, .. } => q.bind(name.clone()),
            EvalSubject::Round { job_id, .. } => q.bind(job_id.to_db()?),
        };
        let q = q.bind(second);
        let rows = q.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(eval_from_row).collect()
    }

    /// The evaluations of a job's rounds (`[evaluation]` every K rounds), oldest first.
    pub async fn job_evaluations(&self, job_id: JobId) -> Result<Vec<StoredEvaluation>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVAL_COLUMNS} FROM evaluations WHERE job_id = $1 ORDER BY id"
        ))
        .bind(job_id.to_db()?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(eval_from_row).collect()
    }
}
