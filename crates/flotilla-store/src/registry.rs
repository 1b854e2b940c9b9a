//! The model registry's persistence: registered models, their versions with lineage and stage,
//! the production history that rollback walks back, canary state, and federated evaluations.
//!
//! Decisions (the release gate, canary assignment, regressions) are `flotilla-registry`'s; this
//! module stores their inputs and verdicts. Every change writes its audit entry in the same
//! transaction. A version's parameters are copied into the blob store under
//! `registry/NAME/vN-SHA256.bin` before the row that names them is written, so job retention never
//! takes a registered model away.

use flotilla_core::ParamLayout;
use flotilla_registry::{Gate, GateReport, Lineage, ModelName, Stage};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::{Result, StoreError};
use crate::types::JobId;
use crate::{Store, check_tenant, from_db, now_ms, to_db};

#[path = "registry_evaluations.rs"]
mod evaluations;
#[path = "registry_gate.rs"]
mod gate;

pub use evaluations::{EvalKind, EvalSubject, StoredEvaluation};

/// A version to register (see [`Store::register_model_version`]).
#[derive(Debug, Clone, Copy)]
pub struct NewModelVersion<'a> {
    /// The model; created in `tenant` on its first version.
    pub name: &'a ModelName,
    /// The tenant of the job, which must be the model's.
    pub tenant: &'a str,
    /// The job that trained it.
    pub job_id: JobId,
    /// Its committed round.
    pub round: u64,
    /// The round's model blob key (copied into the registry).
    pub model_blob_key: &'a str,
    /// Hex SHA-256 of the parameters (the round's `model_sha256`).
    pub model_sha256: &'a str,
    /// The job's layout.
    pub layout: &'a ParamLayout,
    /// Its lineage; `parent_version` is set by the store (the latest version before this one).
    pub lineage: &'a Lineage,
}

/// A canary rollout in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The version served to the canary share.
    pub version: u64,
    /// Share of the tenant's clients, 1–99 %.
    pub percent: u8,
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredModel {
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its release gate, if one was set.
    pub gate: Option<Gate>,
    /// The production version.
    pub production: Option<u64>,
    /// A canary rollout in progress.
    pub canary: Option<Canary>,
    /// The highest version number.
    pub latest_version: u64,
    /// Who registered its first version.
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: i64,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
}

/// A registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// The model's name.
    pub name: String,
    /// Numbered from 1 per name.
    pub version: u64,
    /// The job that trained it.
    pub job_id: JobId,
    /// Its committed round.
    pub round: u64,
    /// Hex SHA-256 of its parameters (little-endian f32 in layout order).
    pub model_sha256: String,
    /// Its blob key in the registry.
    pub blob_key: String,
    /// Tensor names and shapes.
    pub layout: ParamLayout,
    /// Where it came from.
    pub lineage: Lineage,
    /// Where it stands.
    pub stage: Stage,
    /// The gate's verdict at its last gated promotion.
    pub gate_report: Option<GateReport>,
    /// Who registered it.
    pub registered_by: String,
    /// When, Unix ms.
    pub created_at_ms: i64,
    /// When its stage last changed, Unix ms.
    pub stage_changed_at_ms: i64,
}

/// What a rollback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The version that was served (production, or the canary that was ended).
    pub from: u64,
    /// The version served now.
    pub to: u64,
    /// Whether it ended a canary (production unchanged) rather than reverting production.
    pub ended_canary: bool,
}

/// Most versions kept per model name.
pub const MAX_VERSIONS_PER_MODEL: u64 = 100_000;

const MODEL_COLUMNS: &str = "name, tenant, gate, production_version, canary_version, \
     canary_percent, created_by, created_at_ms, updated_at_ms, \
     (SELECT COALESCE(MAX(v.version), 0) FROM registry_versions v WHERE v.name = registry_models.name) AS latest";
const VERSION_COLUMNS: &str = "name, version, job_id, round, model_sha256, blob_key, layout, \
     lineage, stage, gate_report, registered_by, created_at_ms, stage_changed_at_ms";
fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

fn model_from_row(row: &AnyRow) -> Result<RegisteredModel> {
    let gate: Option<String> = row.try_get("gate")?;
    let production: Option<i64> = row.try_get("production_version")?;
    let canary: Option<i64> = row.try_get("canary_version")?;
    let percent: i64 = row.try_get("canary_percent")?;
    Ok(RegisteredModel {
        name: row.try_get("name")?,
        tenant: row.try_get("tenant")?,
        gate: gate.as_deref().map(|g| json(g, "model gate")).transpose()?,
        production: production.map(|v| from_db(v, "version")).transpose()?,
        canary: canary
            .map(|v| -> Result<Canary> {
                Ok(Canary {
                    version: from_db(v, "version")?,
                    percent: u8::try_from(percent)
                        .map_err(|_| StoreError::Corrupt(format!("canary percent {percent}")))?,
                })
            })
            .transpose()?,
        latest_version: from_db(row.try_get("latest")?, "version")?,
        created_by: row.try_get("created_by")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<ModelVersion> {
    let stage: String = row.try_get("stage")?;
    let report: Option<String> = row.try_get("gate_report")?;
    let layout: String = row.try_get("layout")?;
    let lineage: String = row.try_get("lineage")?;
    Ok(ModelVersion {
        name: row.try_get("name")?,
        version: from_db(row.try_get("version")?, "version")?,
        job_id: JobId::from_db(row.try_get("job_id")?)?,
        round: from_db(row.try_get("round")?, "round")?,
        model_sha256: row.try_get("model_sha256")?,
        blob_key: row.try_get("blob_key")?,
        layout: json(&layout, "version layout")?,
        lineage: json(&lineage, "version lineage")?,
        stage: stage
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("version stage: {e}")))?,
        gate_report: report
            .as_deref()
            .map(|r| json(r, "gate report"))
            .transpose()?,
        registered_by: row.try_get("registered_by")?,
        created_at_ms: row.try_get("created_at_ms")?,
        stage_changed_at_ms: row.try_get("stage_changed_at_ms")?,
    })
}

fn not_found(name: &str) -> StoreError {
    StoreError::ModelNotFound(name.to_owned())
}

fn version_not_found(name: &str, version: u64) -> StoreError {
    StoreError::ModelNotFound(format!("{name}@{version}"))
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

async fn model_in(tx: &mut Tx, name: &str) -> Result<RegisteredModel> {
    let row = sqlx::query(&format!(
        "SELECT {MODEL_COLUMNS} FROM registry_models WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| not_found(name))?;
    model_from_row(&row)
}

async fn version_in(tx: &mut Tx, name: &str, version: u64) -> Result<ModelVersion> {
    let row = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM registry_versions WHERE name = $1 AND version = $2"
    ))
    .bind(name)
    .bind(to_db(version, "version")?)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| version_not_found(name, version))?;
    version_from_row(&row)
}

async fn set_stage(tx: &mut Tx, name: &str, version: u64, stage: Stage, at: i64) -> Result<()> {
    sqlx::query(
        "UPDATE registry_versions SET stage = $1, stage_changed_at_ms = $2 \
         WHERE name = $3 AND version = $4",
    )
    .bind(stage.as_str())
    .bind(at)
    .bind(name)
    .bind(to_db(version, "version")?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn audit(
    tx: &mut Tx,
    actor: &str,
    tenant: &str,
    action: &str,
    resource: String,
    details: serde_json::Value,
    at: i64,
) -> Result<()> {
    crate::principals::audit_record(tx, actor, Some(tenant), action, &resource, details, at).await
}

impl Store {
    /// Registers a new version of `new.name` (creating the model in `new.tenant` on its first
    /// version) as a `candidate`: copies the round's parameters into the registry's blob key,
    /// then writes the version and its `model.register` audit entry in one transaction.
    /// [`StoreError::ModelNotFound`] if the name belongs to another tenant (as if it did not
    /// exist there).
    pub async fn register_model_version(
        &self,
        new: &NewModelVersion<'_>,
        actor: &str,
    ) -> Result<ModelVersion> {
        check_tenant(new.tenant)?;
        let name = new.name.as_str();
        let bytes = self.blobs.get(new.model_blob_key).await?;
        if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != new.model_sha256 {
            return Err(StoreError::BlobCorrupt(new.model_blob_key.to_owned()));
        }
        if bytes.len() as u64 != 4 * new.layout.len() as u64 {
            return Err(StoreError::InvalidArgument(format!(
                "the model has {} bytes, its layout {} values",
                bytes.len(),
                new.layout.len()
            )));
        }
        // The number is known only inside the transaction; the blob is written first under the
        // number the transaction will take (an aborted registration leaves an unreferenced copy,
        // which the next registration of that number overwrites, idempotently by content).
        let next = self.next_model_version(name, new.tenant).await?;
        let key = self.blobs.put_registry(name, next, bytes).await?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query(&format!(
            "SELECT {MODEL_COLUMNS} FROM registry_models WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| model_from_row(&r))
        .transpose()?;
        let parent = match &existing {
            Some(m) if m.tenant != new.tenant => return Err(not_found(name)),
            Some(m) => (m.latest_version > 0).then_some(m.latest_version),
            None => {
                sqlx::query(
                    "INSERT INTO registry_models (name, tenant, canary_percent, created_by, \
                     created_at_ms, updated_at_ms) VALUES ($1, $2, 0, $3, $4, $4)",
                )
                .bind(name)
                .bind(new.tenant)
                .bind(actor)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                None
            }
        };
        let version = parent.map_or(1, |p| p + 1);
        if version != next {
            // A concurrent registration took the number: the caller retries.
            return Err(StoreError::InvalidArgument(format!(
                "model {name} was registered concurrently; try again"
            )));
        }
        if version > MAX_VERSIONS_PER_MODEL {
            return Err(StoreError::InvalidArgument(format!(
                "model {name} has {MAX_VERSIONS_PER_MODEL} versions, the most kept: register under a new name"
            )));
        }
        let mut lineage = new.lineage.clone();
        lineage.parent_version = parent;
        lineage.tenant = new.tenant.to_owned();
        sqlx::query(
            "INSERT INTO registry_versions (name, version, job_id, round, model_sha256, blob_key, \
             layout, lineage, stage, registered_by, created_at_ms, stage_changed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'candidate', $9, $10, $10)",
        )
        .bind(name)
        .bind(to_db(version, "version")?)
        .bind(new.job_id.to_db()?)
        .bind(to_db(new.round, "round")?)
        .bind(new.model_sha256)
        .bind(&key)
        .bind(to_json(new.layout)?)
        .bind(to_json(&lineage)?)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE registry_models SET updated_at_ms = $1 WHERE name = $2")
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            new.tenant,
            "model.register",
            format!("model:{name}@{version}"),
            serde_json::json!({
                "job_id": new.job_id.0, "round": new.round, "model_sha256": new.model_sha256,
            }),
            now,
        )
        .await?;
        let v = version_in(&mut tx, name, version).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn next_model_version(&self, name: &str, tenant: &str) -> Result<u64> {
        match self.registered_model(name).await? {
            Some(m) if m.tenant != tenant => Err(not_found(name)),
            Some(m) => Ok(m.latest_version + 1),
            None => Ok(1),
        }
    }

    /// Registered models, by name; only those of `tenants` when given.
    pub async fn registered_models(
        &self,
        tenants: Option<&[String]>,
    ) -> Result<Vec<RegisteredModel>> {
        let rows = sqlx::query(&format!(
            "SELECT {MODEL_COLUMNS} FROM registry_models ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let m = model_from_row(row)?;
            if tenants.is_none_or(|t| t.iter().any(|t| *t == m.tenant || t == "*")) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The registered model `name`, if any.
    pub async fn registered_model(&self, name: &str) -> Result<Option<RegisteredModel>> {
        sqlx::query(&format!(
            "SELECT {MODEL_COLUMNS} FROM registry_models WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| model_from_row(&r))
        .transpose()
    }

    /// The versions of `name`, oldest first.
    pub async fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM registry_versions WHERE name = $1 ORDER BY version"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    /// Version `version` of `name`, if any.
    pub async fn model_version(&self, name: &str, version: u64) -> Result<Option<ModelVersion>> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM registry_versions WHERE name = $1 AND version = $2"
        ))
        .bind(name)
        .bind(to_db(version, "version")?)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| version_from_row(&r))
        .transpose()
    }

    /// The parameters of `v` (little-endian f32 in layout order), checked against its SHA-256.
    pub async fn model_version_bytes(&self, v: &ModelVersion) -> Result<Vec<u8>> {
        self.blobs.get(&v.blob_key).await
    }

    /// Sets (replaces) the release gate of `name`; audited as `model.gate`.
    pub async fn set_model_gate(&self, name: &str, gate: &Gate, actor: &str) -> Result<()> {
        gate.validate()
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let m = model_in(&mut tx, name).await?;
        sqlx::query("UPDATE registry_models SET gate = $1, updated_at_ms = $2 WHERE name = $3")
            .bind(to_json(gate)?)
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let details = serde_json::to_value(gate).unwrap_or_default();
        audit(
            &mut tx,
            actor,
            &m.tenant,
            "model.gate",
            format!("model:{name}"),
            details,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves `name@version` to `to` (staging, production or archived), storing `gate_report`
    /// (the gate's verdict, for gated stages) with it; audited as `model.promote`.
    ///
    /// To production: the previous production version becomes `archived`, the promotion is pushed
    /// on the production history, and a canary of this version ends (it is now served to all).
    /// A production version cannot be archived or sent back to staging (roll back first); nothing
    /// goes back to candidate.
    pub async fn promote_model_version(
        &self,
        name: &str,
        version: u64,
        to: Stage,
        gate_report: Option<&GateReport>,
        actor: &str,
    ) -> Result<ModelVersion> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let m = model_in(&mut tx, name).await?;
        let v = version_in(&mut tx, name, version).await?;
        let refuse = |why: String| Err(StoreError::StageConflict(why));
        match (v.stage, to) {
            (_, Stage::Candidate) => {
                return refuse(format!("{name}@{version}: nothing goes back to candidate"));
            }
            (Stage::Production, _) => {
                return refuse(format!(
                    "{name}@{version} is production; promote another version or roll back first"
                ));
            }
            (from, to) if from == to => {
                return refuse(format!("{name}@{version} is already {to}"));
            }
            _ => {}
        }
        if to == Stage::Production {
            if let Some(old) = m.production {
                set_stage(&mut tx, name, old, Stage::Archived, now).await?;
            }
            sqlx::query(
                "INSERT INTO registry_production (name, version, at_ms, by_actor, rolled_back) \
                 VALUES ($1, $2, $3, $4, 0)",
            )
            .bind(name)
            .bind(to_db(version, "version")?)
            .bind(now)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            let ends_canary = m.canary.is_some_and(|c| c.version == version);
            sqlx::query(&format!(
                "UPDATE registry_models SET production_version = $1, updated_at_ms = $2{} \
                 WHERE name = $3",
                if ends_canary {
                    ", canary_version = NULL, canary_percent = 0"
                } else {
                    ""
                }
            ))
            .bind(to_db(version, "version")?)
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        } else if m.canary.is_some_and(|c| c.version == version) {
            sqlx::query(
                "UPDATE registry_models SET canary_version = NULL, canary_percent = 0, \
                 updated_at_ms = $1 WHERE name = $2",
            )
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        set_stage(&mut tx, name, version, to, now).await?;
        if let Some(r) = gate_report {
            sqlx::query(
                "UPDATE registry_versions SET gate_report = $1 WHERE name = $2 AND version = $3",
            )
            .bind(to_json(r)?)
            .bind(name)
            .bind(to_db(version, "version")?)
            .execute(&mut *tx)
            .await?;
        }
        audit(
            &mut tx,
            actor,
            &m.tenant,
            "model.promote",
            format!("model:{name}@{version}"),
            serde_json::json!({ "from": v.stage.as_str(), "to": to.as_str(),
                                "previous_production": m.production }),
            now,
        )
        .await?;
        let v = version_in(&mut tx, name, version).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Starts (or changes) a canary: `name@version` is served to `percent`% (1–99) of the
    /// tenant's clients, production to the rest. Needs a production version to compare with;
    /// audited as `model.canary`.
    pub async fn set_model_canary(
        &self,
        name: &str,
        version: u64,
        percent: u8,
        gate_report: Option<&GateReport>,
        actor: &str,
    ) -> Result<()> {
        if !(1..=99).contains(&percent) {
            return Err(StoreError::InvalidArgument(
                "a canary serves 1 to 99 % of clients (use --full for all)".into(),
            ));
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let m = model_in(&mut tx, name).await?;
        let v = version_in(&mut tx, name, version).await?;
        let Some(prod) = m.production else {
            return Err(StoreError::StageConflict(format!(
                "{name} has no production version for a canary to be compared with; promote {name}@{version} --full"
            )));
        };
        if prod == version || v.stage == Stage::Archived {
            return Err(StoreError::StageConflict(format!(
                "{name}@{version} is {}: a canary needs a candidate or staging version",
                v.stage
            )));
        }
        sqlx::query(
            "UPDATE registry_models SET canary_version = $1, canary_percent = $2, \
             updated_at_ms = $3 WHERE name = $4",
        )
        .bind(to_db(version, "version")?)
        .bind(i64::from(percent))
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if let Some(r) = gate_report {
            sqlx::query(
                "UPDATE registry_versions SET gate_report = $1 WHERE name = $2 AND version = $3",
            )
            .bind(to_json(r)?)
            .bind(name)
            .bind(to_db(version, "version")?)
            .execute(&mut *tx)
            .await?;
        }
        audit(
            &mut tx,
            actor,
            &m.tenant,
            "model.canary",
            format!("model:{name}@{version}"),
            serde_json::json!({ "percent": percent, "production": prod }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rolls `name` back, at once for every client's next fetch: a canary in progress ends
    /// (production unchanged; the canary version goes back to `staging`); otherwise production
    /// returns to the previous production version (the current one becomes `archived`).
    /// Audited as `model.rollback` with `reason`. [`StoreError::StageConflict`] when there is
    /// nothing to roll back to.
    pub async fn rollback_model(&self, name: &str, actor: &str, reason: &str) -> Result<Rollback> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let m = model_in(&mut tx, name).await?;
        let reason: String = reason.chars().take(512).collect();
        let done = if let Some(c) = m.canary {
            sqlx::query(
                "UPDATE registry_models SET canary_version = NULL, canary_percent = 0, \
                 updated_at_ms = $1 WHERE name = $2",
            )
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            set_stage(&mut tx, name, c.version, Stage::Staging, now).await?;
            Rollback {
                from: c.version,
                to: m.production.unwrap_or(0),
                ended_canary: true,
            }
        } else {
            let Some(current) = m.production else {
                return Err(StoreError::StageConflict(format!(
                    "{name} has no production version to roll back"
                )));
            };
            let rows = sqlx::query(
                "SELECT id, version FROM registry_production WHERE name = $1 AND rolled_back = 0 \
                 ORDER BY id DESC",
            )
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
            let mut history = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = r.try_get("id")?;
                let v: i64 = r.try_get("version")?;
                history.push((id, from_db(v, "version")?));
            }
            // The newest entry is the current production; the previous one is the first older
            // entry of another version.
            let Some(&(_, previous)) = history.iter().skip(1).find(|(_, v)| *v != current) else {
                return Err(StoreError::StageConflict(format!(
                    "{name}@{current} is the first production version: there is none to roll back to"
                )));
            };
            if let Some(&(id, _)) = history.first() {
                sqlx::query("UPDATE registry_production SET rolled_back = 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            set_stage(&mut tx, name, current, Stage::Archived, now).await?;
            set_stage(&mut tx, name, previous, Stage::Production, now).await?;
            sqlx::query(
                "UPDATE registry_models SET production_version = $1, updated_at_ms = $2 \
                 WHERE name = $3",
            )
            .bind(to_db(previous, "version")?)
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            Rollback {
                from: current,
                to: previous,
                ended_canary: false,
            }
        };
        audit(
            &mut tx,
            actor,
            &m.tenant,
            "model.rollback",
            format!("model:{name}"),
            serde_json::json!({ "from": done.from, "to": done.to,
                                "ended_canary": done.ended_canary, "reason": reason }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(done)
    }
}
