//! Retention: what the coordinator deletes on purpose, and when.
//!
//! [`Store::retention_plan`] computes the exact list of what the configured [`RetentionRules`]
//! would delete now (a [`RetentionItem`] per model blob, client record or range of audit entries,
//! each with why and how many bytes); [`Store::retention_apply`] deletes exactly such a plan:
//!
//! * in **one transaction**: the tombstones of the deleted blobs (`retention_deleted_blobs`), the
//!   deleted client records (see `erasure`), the deleted audit entries, and one audit entry
//!   per job, client or audit range saying what went and why. So no deletion is ever without its
//!   entry, and a failed run deletes nothing.
//! * **after the commit**: the blobs themselves. A blob whose delete fails stays in the store until
//!   a later run retries it (its tombstone says `removed = 0`); an object nobody wants is harmless.
//!
//! Eligibility only ever grows with time (rounds are added, jobs end for good, audit entries age),
//! so every item of a plan is still eligible when it is applied, except a client seen again in
//! between: that one is re-checked in the `DELETE` and reported as skipped.

pub(crate) mod audit_entries;
pub(crate) mod erasure;

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::types::{ClientId, JobId, JobState};
use crate::{Store, from_db};

/// How long things are kept. `None` keeps that kind of thing forever (the default for all four).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRules {
    /// Keep only the last N committed model versions of every job (N ≥ 1). The job's current
    /// (final) model is always kept.
    pub model_versions: Option<u64>,
    /// Delete every model blob of a job that ended (completed, failed, cancelled) this long ago,
    /// milliseconds. Its rounds, hashes and metrics stay.
    pub finished_job_blobs_ms: Option<u64>,
    /// Erase the records of clients not seen (or, never seen, enrolled) for this long,
    /// milliseconds: revoked, expired and silent clients alike (see [`Store::forget_client`]).
    pub inactive_clients_ms: Option<u64>,
    /// Delete audit entries older than this, milliseconds, but only those before the last
    /// `audit.checkpoint` entry (whose signed head hash vouches for them); none without one.
    pub audit_ms: Option<u64>,
}

impl RetentionRules {
    /// Whether no rule is set: nothing is ever deleted.
    pub fn keeps_everything(&self) -> bool {
        *self == RetentionRules::default()
    }

    /// Refuses rules that make no sense (`model_versions = 0` would delete current models).
    pub fn validate(&self) -> Result<()> {
        if self.model_versions == Some(0) {
            return Err(StoreError::InvalidArgument(
                "retain-model-versions must be at least 1 (the current model is always kept)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// What a [`RetentionItem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionKind {
    /// A committed model version's blob (`id` is its blob key).
    ModelBlob,
    /// A client's record (`id` is the client id): erased as by [`Store::forget_client`].
    Client,
    /// A range of audit entries (`id` is `FIRST..=LAST`, sequence numbers).
    AuditEntries,
}

impl RetentionKind {
    /// The kind's name on the wire and in tables (`model_blob`, `client`, `audit_entries`).
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionKind::ModelBlob => "model_blob",
            RetentionKind::Client => "client",
            RetentionKind::AuditEntries => "audit_entries",
        }
    }
}

/// One thing retention deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionItem {
    /// What it is.
    pub kind: RetentionKind,
    /// Which: a blob key, a client id, or an audit range `FIRST..=LAST`.
    pub id: String,
    /// The tenant it belongs to (none for audit entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The job a model blob belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    /// Why it goes, for people (names the rule and the numbers).
    pub reason: String,
    /// Bytes freed in the blob store (model blobs only; `None` when the store did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// The outcome of [`Store::retention_apply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionApplied {
    /// What was deleted (in the plan's order).
    pub deleted: Vec<RetentionItem>,
    /// Items of the plan that were not deleted, with why (a client seen again since the plan).
    pub skipped: Vec<(RetentionItem, String)>,
    /// Sequence numbers of the audit entries that record the deletions.
    pub audit_seqs: Vec<u64>,
    /// Blobs whose delete failed after the commit (retried by the next run).
    pub blob_errors: Vec<String>,
}

/// Most blob keys one audit entry lists (a job with more deleted versions gets several entries):
/// 128 keys of ~90 bytes stay well inside an entry's `MAX_DETAILS_BYTES`.
const KEYS_PER_ENTRY: usize = 128;
/// Most earlier-failed blob deletes one run retries.
const RETRY_PENDING: i64 = 1000;

/// `ms` for people: `3d 4h`, `5h 2m`, `40s`.
pub(crate) fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) if s == 0 => format!("{ms}ms"),
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

impl Store {
    /// The exact list of what `rules` delete at time `now_ms` (Unix ms), without deleting it:
    /// model blobs of old versions and of long-finished jobs, records of inactive clients, and
    /// audit entries older than the retention period and the last checkpoint. Reads only (plus a
    /// size lookup per blob).
    pub async fn retention_plan(
        &self,
        rules: &RetentionRules,
        now_ms: i64,
    ) -> Result<Vec<RetentionItem>> {
        rules.validate()?;
        let mut items = self.plan_blobs(rules, now_ms).await?;
        if let Some(limit) = rules.inactive_clients_ms {
            items.extend(self.plan_clients(limit, now_ms).await?);
        }
        if let Some(limit) = rules.audit_ms {
            items.extend(self.plan_audit(limit, now_ms).await?);
        }
        Ok(items)
    }

    /// Model blobs: old versions (`model_versions`) and everything of finished jobs
    /// (`finished_job_blobs_ms`), minus what an earlier run already deleted.
    async fn plan_blobs(&self, rules: &RetentionRules, now_ms: i64) -> Result<Vec<RetentionItem>> {
        if rules.model_versions.is_none() && rules.finished_job_blobs_ms.is_none() {
            return Ok(Vec::new());
        }
        let gone: HashSet<String> = sqlx::query("SELECT blob_key FROM retention_deleted_blobs")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("blob_key"))
            .collect::<std::result::Result<_, _>>()?;
        let jobs = sqlx::query(
            "SELECT id, tenant, state, model_blob_key, updated_at_ms FROM jobs ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        // Every round's key, newest first per job.
        let rounds = sqlx::query(
            "SELECT job_id, round, model_blob_key FROM rounds ORDER BY job_id, round DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_job: BTreeMap<i64, Vec<(u64, String)>> = BTreeMap::new();
        for r in &rounds {
            by_job.entry(r.try_get("job_id")?).or_default().push((
                from_db(r.try_get("round")?, "round")?,
                r.try_get("model_blob_key")?,
            ));
        }
        let mut items = Vec::new();
        for j in &jobs {
            let db_id: i64 = j.try_get("id")?;
            let job = JobId::from_db(db_id)?;
            let tenant: String = j.try_get("tenant")?;
            let state: String = j.try_get("state")?;
            let state: JobState = state
                .parse()
                .map_err(|e: crate::ParseJobStateError| StoreError::Corrupt(e.to_string()))?;
            let current: Option<String> = j.try_get("model_blob_key")?;
            let updated: i64 = j.try_get("updated_at_ms")?;
            let rounds = by_job.remove(&db_id).unwrap_or_default();
            let ended_ago = now_ms.saturating_sub(updated).max(0) as u64;
            let finished_expired = state.is_terminal()
                && rules
                    .finished_job_blobs_ms
                    .is_some_and(|limit| ended_ago > limit);
            let mut picked: Vec<(String, String)> = Vec::new();
            if finished_expired {
                let limit = rules.finished_job_blobs_ms.unwrap_or(0);
                let why = format!(
                    "job {job} {state} {} ago (retain-finished-job-blobs {})",
                    human_ms(ended_ago),
                    human_ms(limit)
                );
                // What the store holds for the job (orphans included), and what its rows name.
                let mut keys: Vec<String> = self.blobs.list_keys(Some(job)).await?;
                keys.retain(|k| crate::blobs::is_model_key(k));
                keys.extend(rounds.iter().map(|(_, k)| k.clone()));
                keys.extend(current.clone());
                keys.sort();
                keys.dedup();
                picked.extend(keys.into_iter().map(|k| (k, why.clone())));
            } else if let Some(n) = rules.model_versions {
                for (round, key) in rounds.iter().skip(n as usize) {
                    if Some(key) == current.as_ref() {
                        continue;
                    }
                    picked.push((
                        key.clone(),
                        format!(
                            "round {round} of job {job}: older than the last {n} versions \
                             (retain-model-versions {n})"
                        ),
                    ));
                }
                // Oldest first reads better.
                picked.reverse();
            }
            for (key, reason) in picked {
                if gone.contains(&key) {
                    continue;
                }
                let bytes = self.blobs.size(&key).await?;
                // A blob already missing (never written, swept) frees nothing and needs no tombstone
                // unless a row names it; rows do name every picked key except orphans, so only an
                // orphan that vanished meanwhile is skipped.
                if bytes.is_none()
                    && !rounds.iter().any(|(_, k)| *k == key)
                    && current.as_ref() != Some(&key)
                {
                    continue;
                }
                items.push(RetentionItem {
                    kind: RetentionKind::ModelBlob,
                    id: key,
                    tenant: Some(tenant.clone()),
                    job_id: Some(job.0),
                    reason,
                    bytes,
                });
            }
        }
        Ok(items)
    }

    /// Clients whose last sign of life (last seen, else enrolled) is older than `limit_ms`.
    async fn plan_clients(&self, limit_ms: u64, now_ms: i64) -> Result<Vec<RetentionItem>> {
        let cutoff = now_ms.saturating_sub(i64::try_from(limit_ms).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT id, tenant, revoked, created_at_ms, last_seen_ms, credential_expires_at_ms \
             FROM clients WHERE COALESCE(last_seen_ms, created_at_ms) < $1 ORDER BY id",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let id = ClientId::from_db(r.try_get("id")?)?;
            let revoked: i64 = r.try_get("revoked")?;
            let seen: Option<i64> = r.try_get("last_seen_ms")?;
            let created: i64 = r.try_get("created_at_ms")?;
            let expires: Option<i64> = r.try_get("credential_expires_at_ms")?;
            let status = if revoked != 0 {
                "revoked, "
            } else if expires.is_some_and(|e| e <= now_ms) {
                "credential expired, "
            } else {
                ""
            };
            let idle = |t: i64| human_ms(now_ms.saturating_sub(t).max(0) as u64);
            let since = match seen {
                Some(t) => format!("last seen {} ago", idle(t)),
                None => format!("never seen, enrolled {} ago", idle(created)),
            };
            items.push(RetentionItem {
                kind: RetentionKind::Client,
                id: id.to_string(),
                tenant: Some(r.try_get("tenant")?),
                job_id: None,
                reason: format!(
                    "client {id}: {status}{since} (retain-inactive-clients {})",
                    human_ms(limit_ms)
                ),
                bytes: None,
            });
        }
        Ok(items)
    }

    /// Deletes exactly `plan` (as [`Store::retention_plan`] computed it), recording each job's,
    /// client's and audit range's deletion in the audit log with `actor` in the same transaction,
    /// then removes the deleted blobs from the blob store. `now_ms` is the time the plan was
    /// computed for (clients seen since are skipped).
    pub async fn retention_apply(
        &self,
        plan: &[RetentionItem],
        rules: &RetentionRules,
        actor: &str,
        now_ms: i64,
    ) -> Result<RetentionApplied> {
        let mut deleted = Vec::new();
        let mut skipped = Vec::new();
        let mut audit_seqs = Vec::new();
        let mut blob_keys: Vec<String> = Vec::new();
        let mut tx = self.begin_write().await?;

        // Model blobs: tombstones, and one audit entry per job (per KEYS_PER_ENTRY keys).
        let mut per_job: BTreeMap<u64, Vec<&RetentionItem>> = BTreeMap::new();
        for item in plan.iter().filter(|i| i.kind == RetentionKind::ModelBlob) {
            let job = item.job_id.ok_or_else(|| {
                StoreError::InvalidArgument(format!("model blob {} names no job", item.id))
            })?;
            crate::blobs::check_key(&item.id)?;
            per_job.entry(job).or_default().push(item);
        }
        for (job, items) in &per_job {
            for chunk in items.chunks(KEYS_PER_ENTRY) {
                for item in chunk {
                    sqlx::query(
                        "INSERT INTO retention_deleted_blobs (blob_key, job_id, deleted_at_ms, removed) \
                         VALUES ($1, $2, $3, 0) ON CONFLICT (blob_key) DO NOTHING",
                    )
                    .bind(&item.id)
                    .bind(JobId(*job).to_db()?)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                    blob_keys.push(item.id.clone());
                    deleted.push((*item).clone());
                }
                let bytes: u64 = chunk.iter().filter_map(|i| i.bytes).sum();
                // The reasons of one job's chunk differ only in the round named: the first stands
                // for the rule.
                let details = serde_json::json!({
                    "keys": chunk.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
                    "bytes": bytes,
                    "reason": chunk[0].reason,
                });
                let ev = audit_entries::event(
                    actor,
                    chunk[0].tenant.as_deref(),
                    "retention.delete_model_blobs",
                    &format!("job:{job}"),
                    details,
                );
                audit_seqs.push(crate::audit::append(&mut tx, &ev, now_ms).await?);
            }
        }

        // Client records: re-checked (a client seen since the plan stays), erased, one entry each.
        if let Some(limit) = rules.inactive_clients_ms {
            let cutoff = now_ms.saturating_sub(i64::try_from(limit).unwrap_or(i64::MAX));
            let mut erased: Vec<(ClientId, &RetentionItem)> = Vec::new();
            for item in plan.iter().filter(|i| i.kind == RetentionKind::Client) {
                let id = ClientId(item.id.parse().map_err(|_| {
                    StoreError::InvalidArgument(format!("client id {:?} is not a number", item.id))
                })?);
                let still = sqlx::query(
                    "SELECT id FROM clients WHERE id = $1 AND COALESCE(last_seen_ms, created_at_ms) < $2",
                )
                .bind(id.to_db()?)
                .bind(cutoff)
                .fetch_optional(&mut *tx)
                .await?;
                if still.is_none() {
                    skipped.push((
                        item.clone(),
                        "seen again (or already erased) since the plan was computed".to_owned(),
                    ));
                    continue;
                }
                erased.push((id, item));
            }
            let ids: Vec<ClientId> = erased.iter().map(|(id, _)| *id).collect();
            let summary = erasure::erase_clients(&mut tx, &ids).await?;
            for (id, item) in erased {
                let details = serde_json::json!({
                    "reason": item.reason,
                    "removed": erasure::ERASED_FIELDS,
                    "rounds_rewritten": summary.rounds_of.get(&id).copied().unwrap_or(0),
                });
                let ev = audit_entries::event(
                    actor,
                    item.tenant.as_deref(),
                    "retention.erase_client",
                    &format!("client:{id}"),
                    details,
                );
                audit_seqs.push(crate::audit::append(&mut tx, &ev, now_ms).await?);
                deleted.push(item.clone());
            }
        } else if let Some(i) = plan.iter().find(|i| i.kind == RetentionKind::Client) {
            return Err(StoreError::InvalidArgument(format!(
                "the plan erases client {} but no inactive-client rule is set",
                i.id
            )));
        }

        // Audit ranges.
        for item in plan
            .iter()
            .filter(|i| i.kind == RetentionKind::AuditEntries)
        {
            let (first, last) = audit_entries::parse_range(&item.id)?;
            let n = audit_entries::delete_range(&mut tx, first, last).await?;
            let details = serde_json::json!({
                "first_seq": first, "last_seq": last, "entries": n, "reason": item.reason,
            });
            let ev = audit_entries::event(
                actor,
                None,
                "retention.delete_audit_entries",
                &format!("audit:{first}..={last}"),
                details,
            );
            audit_seqs.push(crate::audit::append(&mut tx, &ev, now_ms).await?);
            deleted.push(item.clone());
        }
        tx.commit().await?;

        // After the commit: the objects. Plus earlier deletes that failed.
        let pending = sqlx::query(
            "SELECT blob_key FROM retention_deleted_blobs WHERE removed = 0 ORDER BY blob_key LIMIT $1",
        )
        .bind(RETRY_PENDING)
        .fetch_all(&self.pool)
        .await?;
        for r in &pending {
            let key: String = r.try_get("blob_key")?;
            if !blob_keys.contains(&key) {
                blob_keys.push(key);
            }
        }
        let mut blob_errors = Vec::new();
        for key in &blob_keys {
            match self.blobs.delete(key).await {
                Ok(()) => {
                    sqlx::query(
                        "UPDATE retention_deleted_blobs SET removed = 1 WHERE blob_key = $1",
                    )
                    .bind(key)
                    .execute(&self.writer)
                    .await?;
                }
                Err(e) => blob_errors.push(format!("{key}: {e}")),
            }
        }
        Ok(RetentionApplied {
            deleted,
            skipped,
            audit_seqs,
            blob_errors,
        })
    }

    /// When retention deleted the blob `key` (Unix ms), if it did: a round whose model is gone on
    /// purpose answers "deleted by retention", not "missing".
    pub async fn blob_deleted_at(&self, key: &str) -> Result<Option<i64>> {
        let row =
            sqlx::query("SELECT deleted_at_ms FROM retention_deleted_blobs WHERE blob_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("deleted_at_ms")?),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(40_500), "40s");
        assert_eq!(human_ms(125_000), "2m 5s");
        assert_eq!(human_ms(5 * 3_600_000 + 2 * 60_000), "5h 2m");
        assert_eq!(human_ms(3 * 86_400_000 + 4 * 3_600_000 + 1), "3d 4h");
    }

    #[test]
    fn zero_model_versions_is_refused() {
        let rules = RetentionRules {
            model_versions: Some(0),
            ..RetentionRules::default()
        };
        assert!(rules.validate().is_err());
        assert!(RetentionRules::default().keeps_everything());
    }
}
