//! A trivial query for readiness probes.

use crate::Store;
use crate::error::Result;

impl Store {
    /// Asks the database a trivial query (`SELECT 1`): whether it answers at all.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
