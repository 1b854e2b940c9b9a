//! One committed round by its number, without reading a job's whole history (which grows with
//! every round: callers on a hot path must not be O(rounds)).

use crate::error::Result;
use crate::types::{CommittedRound, JobId};
use crate::{ROUND_COLUMNS, Store, round_from_row, to_db};

impl Store {
    /// Round `round` of a job, if it is committed (`None` for an unknown job or round).
    pub async fn get_round(&self, job_id: JobId, round: u64) -> Result<Option<CommittedRound>> {
        let row = sqlx::query(&format!(
            "SELECT {ROUND_COLUMNS} FROM rounds WHERE job_id = $1 AND round = $2"
        ))
        .bind(job_id.to_db()?)
        .bind(to_db(round, "round")?)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| round_from_row(&r, "")).transpose()
    }
}
