//! The release gate's verdicts stored with a version (a child of `registry`): a refused promotion
//! changes no stage but keeps its report, so `model show` says why the version was refused.

use flotilla_registry::GateReport;

use super::{audit, to_json, version_in};
use crate::error::Result;
use crate::{Store, now_ms, to_db};

impl Store {
    /// Stores `report` (a verdict of the release gate, usually a refusal) with `name@version`,
    /// replacing the previous one; audited as `model.gate_check` with the verdict and the first
    /// failing rule. [`crate::StoreError::ModelNotFound`] for an unknown version.
    pub async fn record_gate_report(
        &self,
        name: &str,
        version: u64,
        report: &GateReport,
        actor: &str,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let m = super::model_in(&mut tx, name).await?;
        version_in(&mut tx, name, version).await?;
        sqlx::query(
            "UPDATE registry_versions SET gate_report = $1 WHERE name = $2 AND version = $3",
        )
        .bind(to_json(report)?)
        .bind(name)
        .bind(to_db(version, "version")?)
        .execute(&mut *tx)
        .await?;
        let failed = report.first_failure().map(|r| r.rule.clone());
        audit(
            &mut tx,
            actor,
            &m.tenant,
            "model.gate_check",
            format!("model:{name}@{version}"),
            serde_json::json!({ "passed": report.passed, "first_failure": failed }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
