//! Versions of the coordinator's policy file (Cedar text, validated by the coordinator before it
//! comes here): every applied version is kept, the highest is in force, and applying one writes
//! its audit entry in the same transaction.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::{Result, StoreError};
use crate::{Store, now_ms, sha256_hex};

/// Largest policy text stored, bytes (the coordinator's own limit is lower).
pub const MAX_POLICY_TEXT_BYTES: usize = 1 << 20;
/// Most versions [`Store::policy_versions`] lists (the newest).
pub const MAX_POLICY_VERSIONS_LISTED: u32 = 1000;

/// One applied version, without its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionInfo {
    /// 1, 2, …: the highest is in force.
    pub version: u64,
    /// Hex SHA-256 of the text.
    pub sha256: String,
    /// Who applied it (the audit log's actor string).
    pub applied_by: String,
    /// When, Unix milliseconds.
    pub applied_at_ms: i64,
}

/// One applied version with its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// Version, hash, who and when.
    #[serde(flatten)]
    pub info: PolicyVersionInfo,
    /// The Cedar policy file as applied.
    pub text: String,
}

const INFO_COLUMNS: &str = "version, sha256, applied_by, applied_at_ms";

fn info_from_row(row: &AnyRow) -> Result<PolicyVersionInfo> {
    let version: i64 = row.try_get("version")?;
    Ok(PolicyVersionInfo {
        version: u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("policy version {version} is negative")))?,
        sha256: row.try_get("sha256")?,
        applied_by: row.try_get("applied_by")?,
        applied_at_ms: row.try_get("applied_at_ms")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<PolicyVersion> {
    Ok(PolicyVersion {
        info: info_from_row(row)?,
        text: row.try_get("text")?,
    })
}

impl Store {
    /// Stores `text` as the next policy version, applied by `applied_by`, with its audit entry
    /// (`policy.apply`) in the same transaction. Two concurrent applies cannot both take a version:
    /// the loser fails (its transaction rolls back) and may retry.
    pub async fn apply_policy(&self, text: &str, applied_by: &str) -> Result<PolicyVersionInfo> {
        if text.len() > MAX_POLICY_TEXT_BYTES {
            return Err(StoreError::InvalidArgument(format!(
                "policy text is {} bytes, at most {MAX_POLICY_TEXT_BYTES}",
                text.len()
            )));
        }
        let at = now_ms();
        let sha256 = sha256_hex(text);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO policies (version, text, sha256, applied_by, applied_at_ms) \
             SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4 FROM policies \
             RETURNING {INFO_COLUMNS}"
        ))
        .bind(text)
        .bind(&sha256)
        .bind(applied_by)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        let info = info_from_row(&row)?;
        crate::audit::append(&mut tx, &policy_applied(&info), at).await?;
        tx.commit().await?;
        Ok(info)
    }

    /// The version in force (the highest), with its text; none before the first apply.
    pub async fn current_policy(&self) -> Result<Option<PolicyVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {INFO_COLUMNS}, text FROM policies ORDER BY version DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// The applied versions, newest first (at most [`MAX_POLICY_VERSIONS_LISTED`]), without text.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyVersionInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {INFO_COLUMNS} FROM policies ORDER BY version DESC LIMIT $1"
        ))
        .bind(i64::from(MAX_POLICY_VERSIONS_LISTED))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(info_from_row).collect()
    }

    /// One version with its text; none if no such version was applied.
    pub async fn policy(&self, version: u64) -> Result<Option<PolicyVersion>> {
        let v = i64::try_from(version).map_err(|_| {
            StoreError::InvalidArgument(format!("policy version {version} out of range"))
        })?;
        let row = sqlx::query(&format!(
            "SELECT {INFO_COLUMNS}, text FROM policies WHERE version = $1"
        ))
        .bind(v)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }
}

/// The audit entry of an applied version.
fn policy_applied(info: &PolicyVersionInfo) -> crate::audit::AuditEvent {
    crate::audit::AuditEvent::new(
        info.applied_by.clone(),
        "policy.apply",
        format!("policy:{}", info.version),
    )
    .details(serde_json::json!({ "version": info.version, "sha256": info.sha256 }))
}
