//! Removing model blobs no committed round references: what a commit that failed (or a crash
//! between `put_model` and `commit_round`) leaves in the blob store.

use std::collections::HashSet;

use sqlx::Row;

use crate::Store;
use crate::error::Result;
use crate::types::JobId;

impl Store {
    /// Deletes every model blob (of one job, if given) that no committed round and no job
    /// references, and, for a whole-store sweep, the leftovers of interrupted writes. Returns how
    /// many objects were removed.
    ///
    /// Only call it while no model of the jobs concerned is being put and committed (at startup,
    /// before jobs resume; for a halted job, before it resumes): a blob put for a commit that has
    /// not happened yet is unreferenced too. The blob store must belong to this database alone.
    pub async fn sweep_orphan_blobs(&self, job: Option<JobId>) -> Result<usize> {
        let keys = self.blobs.list_keys(job).await?;
        let mut removed = 0;
        if !keys.is_empty() {
            let rows = match job {
                Some(j) => {
                    sqlx::query(
                        "SELECT model_blob_key FROM rounds WHERE job_id = $1 \
                         UNION SELECT model_blob_key FROM jobs WHERE id = $1 AND model_blob_key IS NOT NULL",
                    )
                    .bind(j.to_db()?)
                    .fetch_all(&self.pool)
                    .await?
                }
                None => {
                    sqlx::query(
                        "SELECT model_blob_key FROM rounds \
                         UNION SELECT model_blob_key FROM jobs WHERE model_blob_key IS NOT NULL",
                    )
                    .fetch_all(&self.pool)
                    .await?
                }
            };
            let referenced: HashSet<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>("model_blob_key"))
                .collect::<std::result::Result<_, _>>()?;
            for key in keys.iter().filter(|k| !referenced.contains(*k)) {
                self.blobs.delete(key).await?;
                removed += 1;
            }
        }
        if job.is_none() {
            removed += self.blobs.remove_leftovers().await?;
        }
        Ok(removed)
    }

    /// Whether a model of `len` bytes can be stored now: writes and deletes a scratch object of
    /// that size (a full disk or an unreachable bucket fails here).
    pub async fn probe_blob_write(&self, len: usize) -> Result<()> {
        self.blobs.probe(len).await
    }
}
