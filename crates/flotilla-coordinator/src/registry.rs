//! The model registry's service side: registering a job's committed model with its lineage,
//! promoting a version through the release gate, rolling back, and the `[registry]` hook that
//! registers a job's final model when the job completes.
//!
//! Authorization is the caller's (`admin`); this module decides and stores. The decisions
//! themselves (the gate's rules) are `flotilla_registry`'s, the persistence `flotilla_store`'s.
//!
//! A version's `spec_sha256` is the hex SHA-256 of the job's spec as stored: the compact JSON
//! `serde_json::to_string` writes for the stored value, keys sorted (serde_json's map is ordered
//! by key), no whitespace. `code_version` is the coordinator's crate version with its git commit
//! in parentheses when the build knew it.

use flotilla_core::ParamLayout;
use flotilla_registry::{
    EvalSummary, Gate, GateInput, GateReport, Lineage, ModelName, Stage, check_gate,
};
use flotilla_store::{
    CommittedRound, EvalSubject, JobId, JobRecord, ModelVersion, NewModelVersion, Rollback, Store,
    StoreError,
};
use sha2::{Digest, Sha256};

use crate::api::RoundMetrics;
use crate::spec::JobSpec;
use crate::state::Shared;

/// The actor of what the coordinator does by itself (`[registry]`, `auto_staging`).
pub(crate) const SYSTEM: &str = "system";

/// Why a registry operation was refused. The admin API maps each kind to its status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// An unknown job, round, model or version (404).
    #[error("{0}")]
    NotFound(String),
    /// A request that cannot be right (400).
    #[error("{0}")]
    Invalid(String),
    /// The release gate refused the promotion (409): the one-line message names the first failing
    /// rule; the full report is stored with the version and returned.
    #[error("{message}")]
    GateRefused {
        /// `gate refused digits@2: max_regression: …`.
        message: String,
        /// Every rule's verdict.
        report: GateReport,
    },
    /// The store refused or failed (mapped like every store error).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a promotion did.
#[derive(Debug, Clone)]
pub(crate) struct Promoted {
    /// The version after the change.
    pub version: ModelVersion,
    /// The gate's verdict (gated stages and canaries).
    pub gate_report: Option<GateReport>,
    /// The canary share, when a canary was started.
    pub canary_percent: Option<u8>,
}

/// The SHA-256 of a committed round's model: recorded in its metrics, else the digest its blob
/// key ends with (`job-<id>/v<version>-<sha256>.bin`, commits made before the metrics carried it).
fn round_sha256(round: &CommittedRound) -> Option<String> {
    serde_json::from_value::<RoundMetrics>(round.metrics.clone())
        .ok()
        .and_then(|m| m.model_sha256)
        .or_else(|| {
            round
                .model_blob_key
                .rsplit_once('-')
                .and_then(|(_, tail)| tail.strip_suffix(".bin"))
                .map(str::to_owned)
        })
}

/// The coordinator's version for a lineage: `0.1.0 (abc1234)`.
fn code_version() -> String {
    let sha = env!("FLOTILLA_GIT_SHA");
    if sha.is_empty() || sha == "unknown" {
        env!("CARGO_PKG_VERSION").to_owned()
    } else {
        format!("{} ({sha})", env!("CARGO_PKG_VERSION"))
    }
}

/// The lineage of round `round` of `job` (`history`: the job's committed rounds, oldest first).
fn lineage(
    job: &JobRecord,
    spec: Option<&JobSpec>,
    history: &[CommittedRound],
    round: u64,
) -> Lineage {
    let spec_text = serde_json::to_string(&job.spec).unwrap_or_default();
    let upto: Vec<&CommittedRound> = history.iter().filter(|c| c.round <= round).collect();
    // ε after the round: its own metrics carry the job's total so far (released rounds only).
    let privacy = upto.iter().rev().find_map(|c| {
        serde_json::from_value::<RoundMetrics>(c.metrics.clone())
            .ok()
            .and_then(|m| m.privacy)
    });
    let dp = spec.and_then(|s| s.privacy.as_ref());
    Lineage {
        tenant: job.tenant.clone(),
        job_id: job.id.0,
        job_name: job.name.clone(),
        round,
        rounds_total: job.rounds_total,
        spec_sha256: hex::encode(Sha256::digest(spec_text.as_bytes())),
        strategy: spec.map_or_else(|| "unknown".to_owned(), |s| s.strategy.name.clone()),
        secagg: spec.is_some_and(|s| s.secagg.is_some()),
        participants: upto.iter().map(|c| c.participants.len() as u64).collect(),
        epsilon: dp.map(|_| privacy.as_ref().map_or(0.0, |p| p.epsilon_spent)),
        delta: dp.map(|d| privacy.as_ref().map_or(d.delta, |p| p.delta)),
        code_version: code_version(),
        parent_version: None,
    }
}

/// The model's latest evaluation of `subject`, if any.
async fn latest_eval(
    store: &Store,
    subject: EvalSubject,
) -> Result<Option<EvalSummary>, StoreError> {
    Ok(store
        .evaluations(&subject, 1)
        .await?
        .into_iter()
        .next()
        .map(|e| e.summary))
}

/// The latest evaluation of a version: of the version itself, else of its job round (the same
/// parameters, e.g. a job's `[evaluation]` every K rounds).
async fn version_eval(store: &Store, v: &ModelVersion) -> Result<Option<EvalSummary>, StoreError> {
    let own = EvalSubject::Version {
        name: v.name.clone(),
        version: v.version,
    };
    if let Some(s) = latest_eval(store, own).await? {
        return Ok(Some(s));
    }
    latest_eval(
        store,
        EvalSubject::Round {
            job_id: v.job_id,
            round: v.round,
        },
    )
    .await
}

/// Registers round `round` (default: the last committed) of job `job_id` under `name`; the job
/// need not have ended. `layout`: the job's layout when it is running here (else the stored one).
async fn register_in(
    store: &Store,
    actor: &str,
    job_id: JobId,
    round: Option<u64>,
    name: &ModelName,
    running_layout: Option<ParamLayout>,
) -> Result<ModelVersion, RegistryError> {
    let job = store.get_job(job_id).await.map_err(|e| match e {
        StoreError::JobNotFound(_) => RegistryError::NotFound(format!("job {job_id} not found")),
        e => e.into(),
    })?;
    let history = store.job_history(job_id).await?;
    let committed = match round {
        None => history.last().ok_or_else(|| {
            RegistryError::Invalid(format!(
                "job {job_id} has no committed round yet; register it once round 1 commits"
            ))
        })?,
        Some(r) => history.iter().find(|c| c.round == r).ok_or_else(|| {
            let have = match (history.first(), history.last()) {
                (Some(a), Some(b)) => format!("committed rounds are {}..={}", a.round, b.round),
                _ => "no round is committed yet".to_owned(),
            };
            RegistryError::NotFound(format!("job {job_id} has no committed round {r}; {have}"))
        })?,
    };
    let sha = round_sha256(committed).ok_or_else(|| {
        RegistryError::Invalid(format!(
            "round {} of job {job_id} records no model SHA-256",
            committed.round
        ))
    })?;
    let layout = match running_layout {
        Some(l) => l,
        None => store.job_layout(job_id).await?.ok_or_else(|| {
            RegistryError::Invalid(format!(
                "job {job_id} has no stored layout (it predates stored layouts): its model cannot be registered"
            ))
        })?,
    };
    let spec: Option<JobSpec> = serde_json::from_value(job.spec.clone()).ok();
    let lineage = lineage(&job, spec.as_ref(), &history, committed.round);
    let new = NewModelVersion {
        name,
        tenant: &job.tenant,
        job_id,
        round: committed.round,
        model_blob_key: &committed.model_blob_key,
        model_sha256: &sha,
        layout: &layout,
        lineage: &lineage,
    };
    let v = store.register_model_version(&new, actor).await?;
    tracing::info!(
        model = %name,
        version = v.version,
        job = job_id.0,
        round = committed.round,
        actor = ?actor,
        "model version registered"
    );
    Ok(v)
}

/// The release gate's verdict on `v` of a model with `gate` whose production is `production`.
async fn gate_report(
    store: &Store,
    gate: &Gate,
    v: &ModelVersion,
    production: Option<u64>,
) -> Result<GateReport, StoreError> {
    let candidate = version_eval(store, v).await?;
    let prod = match production.filter(|&p| p != v.version) {
        Some(p) => match store.model_version(&v.name, p).await? {
            Some(pv) => version_eval(store, &pv).await?,
            None => None,
        },
        None => None,
    };
    Ok(check_gate(
        gate,
        &GateInput {
            candidate: candidate.as_ref(),
            production: prod.as_ref(),
            epsilon: v.lineage.epsilon,
            secagg: v.lineage.secagg,
        },
    ))
}

/// Moves `name@version` to `stage` (or starts a canary at `canary` %), through the release gate
/// for staging, production and canaries.
async fn promote_in(
    store: &Store,
    actor: &str,
    name: &str,
    version: u64,
    stage: Stage,
    canary: Option<u8>,
) -> Result<Promoted, RegistryError> {
    let model = store
        .registered_model(name)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("model {name} not found")))?;
    let v = store
        .model_version(name, version)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("model {name}@{version} not found")))?;
    if canary.is_some() && stage != Stage::Production {
        return Err(RegistryError::Invalid(
            "a canary rolls a version out towards production: leave the stage out (or production)"
                .into(),
        ));
    }
    let report = if stage.gated() || canary.is_some() {
        let gate = model.gate.clone().unwrap_or_default();
        let report = gate_report(store, &gate, &v, model.production).await?;
        if let Some(fail) = report.first_failure() {
            store
                .record_gate_report(name, version, &report, actor)
                .await?;
            let message = format!(
                "gate refused {name}@{version}: {}: {}",
                fail.rule, fail.detail
            );
            tracing::info!(model = name, version, rule = %fail.rule, "promotion refused by the release gate");
            return Err(RegistryError::GateRefused { message, report });
        }
        Some(report)
    } else {
        None
    };
    let version = match canary {
        Some(p) => {
            store
                .set_model_canary(name, version, p, report.as_ref(), actor)
                .await?;
            store.model_version(name, version).await?.ok_or_else(|| {
                RegistryError::NotFound(format!("model {name}@{version} not found"))
            })?
        }
        None => {
            store
                .promote_model_version(name, version, stage, report.as_ref(), actor)
                .await?
        }
    };
    Ok(Promoted {
        version,
        gate_report: report,
        canary_percent: canary,
    })
}

/// After a registration: with `auto_staging` in the model's gate, a version that passes the gate
/// goes to staging as [`SYSTEM`]; a refusal is stored with the version (not an error).
async fn auto_stage(store: &Store, v: &ModelVersion) -> Result<(), RegistryError> {
    let Some(model) = store.registered_model(&v.name).await? else {
        return Ok(());
    };
    if !model.gate.as_ref().is_some_and(|g| g.auto_staging) {
        return Ok(());
    }
    match promote_in(store, SYSTEM, &v.name, v.version, Stage::Staging, None).await {
        Ok(_) => {
            tracing::info!(model = %v.name, version = v.version, "auto_staging: promoted to staging");
            Ok(())
        }
        Err(RegistryError::GateRefused { message, .. }) => {
            tracing::info!(model = %v.name, version = v.version, reason = ?message, "auto_staging: stays a candidate");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The `[registry]` hook: registers the final model of a job that just completed (durably) as
/// [`SYSTEM`], sets its `[release]` gate, and stages it under `auto_staging`. Never fails the
/// job: an error is logged (and the registration can be done by hand, `flotilla model register`).
pub(crate) async fn register_completed(
    store: Store,
    job_id: JobId,
    spec: JobSpec,
    layout: ParamLayout,
) {
    let Some(raw) = spec.registry.as_deref() else {
        return;
    };
    let result = async {
        let name = ModelName::new(raw).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let v = register_in(&store, SYSTEM, job_id, None, &name, Some(layout)).await?;
        if let Some(gate) = &spec.release {
            store.set_model_gate(name.as_str(), gate, SYSTEM).await?;
        }
        auto_stage(&store, &v).await?;
        Ok::<_, RegistryError>(v)
    }
    .await;
    if let Err(e) = result {
        // Debug formatting: the text may quote a name from the job's spec.
        tracing::error!(
            job = job_id.0,
            model = ?raw,
            error = ?e.to_string(),
            "[registry]: the completed job's model could not be registered; register it with `flotilla model register`"
        );
    }
}

impl Shared {
    /// Registers round `round` (default: the last committed) of job `job_id` under `name` as
    /// `actor`; with `auto_staging` in the model's gate, a version that passes goes to staging.
    pub(crate) async fn register_model(
        &self,
        actor: &str,
        job_id: JobId,
        round: Option<u64>,
        name: &ModelName,
    ) -> Result<ModelVersion, RegistryError> {
        let running = self.job(&job_id.0.to_string()).map(|rt| rt.layout.clone());
        let v = register_in(&self.store, actor, job_id, round, name, running).await?;
        auto_stage(&self.store, &v).await?;
        // Re-read: auto_staging may have moved it.
        Ok(self
            .store
            .model_version(name.as_str(), v.version)
            .await?
            .unwrap_or(v))
    }

    /// Promotes `name@version` to `stage`, or starts a canary of it at `canary` % of clients,
    /// through the release gate (staging, production, canaries).
    pub(crate) async fn promote_model(
        &self,
        actor: &str,
        name: &str,
        version: u64,
        stage: Stage,
        canary: Option<u8>,
    ) -> Result<Promoted, RegistryError> {
        promote_in(&self.store, actor, name, version, stage, canary).await
    }

    /// Rolls `name` back (ends a canary, else returns production to the previous production
    /// version) as `actor`, recording `reason`.
    pub(crate) async fn rollback_registry_model(
        &self,
        actor: &str,
        name: &str,
        reason: &str,
    ) -> Result<Rollback, RegistryError> {
        let r = self.store.rollback_model(name, actor, reason).await?;
        tracing::info!(model = name, from = r.from, to = r.to, ended_canary = r.ended_canary, reason = ?reason, "model rolled back");
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_version_names_the_crate_version() {
        assert!(code_version().starts_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn the_round_digest_falls_back_to_the_blob_key() {
        let r = CommittedRound {
            job_id: JobId(1),
            round: 2,
            attempt: 1,
            model_version: 2,
            participants: vec![],
            metrics: serde_json::json!({}),
            model_blob_key: "job-1/v2-abcdef.bin".into(),
            committed_at_ms: 0,
        };
        assert_eq!(round_sha256(&r).as_deref(), Some("abcdef"));
    }
}
