//! The evidence pack of a job (`GET /v1/jobs/{id}/evidence`): one JSON document a security or
//! privacy reviewer can sign off, built from what the coordinator stored and runs with — the spec
//! and its hash, policies and approvals, the TLS the listeners offer, SecAgg parameters, DP
//! accounting recomputed with `flotilla-privacy`, every round's participants, model hash and
//! evaluation, the audit chain's verification, and the SBOM and build of this binary.
//!
//! Nothing here is configured separately for the pack: each section reads the same value the
//! coordinator uses (the stored spec, the rustls configuration, the recorded `(q, σ)` of each
//! round), so the pack cannot drift from what ran.

use flotilla_privacy::RdpAccountant;
use flotilla_store::{ApprovalState, CommittedRound, JobId, JobRecord, StoreError};
use sha2::{Digest, Sha256};

use crate::api::RoundMetrics;
use crate::api::evidence::{
    ApprovalEvidence, AuditEvidence, AuthMode, BuildInfo, DpEvidence, DpRound, DpSegment, DpTotal,
    DropoutTolerance, EVIDENCE_FORMAT, EvidenceApprovals, EvidenceJob, EvidencePack,
    EvidencePolicies, EvidenceRound, EvidenceSpec, PolicyEvidence, SecAggEvidence, SecurityConfig,
};
use crate::spec::JobSpec;
use crate::state::Shared;

/// The CycloneDX 1.5 SBOM of this build (written by `build.rs` from `Cargo.lock`).
pub(crate) const SBOM_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/sbom.cdx.json"));

/// Most audit entries of one job a pack lists.
const MAX_JOB_ENTRIES: usize = 10_000;
/// Audit entries read per page while looking for the job's.
const AUDIT_PAGE: u32 = 1000;

/// Why a pack could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EvidenceError {
    /// The store failed or has no such job.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What is stored cannot be read back.
    #[error("{0}")]
    Corrupt(String),
}

/// How the running binary was built (`build.rs`).
pub(crate) fn build_info() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        git_sha: env!("FLOTILLA_GIT_SHA").to_owned(),
        target: env!("FLOTILLA_BUILD_TARGET").to_owned(),
        profile: env!("FLOTILLA_BUILD_PROFILE").to_owned(),
        rustc: env!("FLOTILLA_BUILD_RUSTC").to_owned(),
    }
}

/// The spec's canonical bytes (compact JSON, object keys sorted) and their hex SHA-256.
pub(crate) fn spec_hash(spec: &serde_json::Value) -> (String, String) {
    let mut v = spec.clone();
    v.sort_all_objects();
    let text = serde_json::to_string(&v).unwrap_or_default();
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    (text, sha)
}

impl Shared {
    /// The evidence pack of job `id`, generated for `actor` (the audit log's actor name), with the
    /// participants' ids when `identities`.
    pub(crate) async fn evidence_pack(
        &self,
        id: JobId,
        actor: &str,
        identities: bool,
    ) -> Result<EvidencePack, EvidenceError> {
        let job = self.store.get_job(id).await?;
        let history = self.store.job_history(id).await?;
        let spec: Option<JobSpec> = serde_json::from_value(job.spec.clone()).ok();
        let (_, sha256) = spec_hash(&job.spec);
        let mut rounds = Vec::with_capacity(history.len());
        for r in &history {
            rounds.push(self.evidence_round(r, identities).await?);
        }
        let metrics: Vec<Option<RoundMetrics>> = history
            .iter()
            .map(|r| serde_json::from_value(r.metrics.clone()).ok())
            .collect();
        let layout_len = match self.job(&id.0.to_string()) {
            Some(rt) => rt.layout.len(),
            None => self
                .store
                .job_layout(id)
                .await?
                .map_or(1, |l| l.len().max(1)),
        };
        Ok(EvidencePack {
            format: EVIDENCE_FORMAT.to_owned(),
            generated_at_ms: crate::clock::now_ms() as i64,
            generated_by: actor.to_owned(),
            job: evidence_job(&job),
            spec: EvidenceSpec {
                sha256,
                canonicalization: "compact JSON of the stored spec, object keys sorted, UTF-8"
                    .to_owned(),
                spec: job.spec.clone(),
            },
            policies: self.policies_in_force(&job).await?,
            approvals: self.approvals_of(&job).await?,
            security: self.security_config(),
            secagg: spec.as_ref().and_then(|s| secagg_section(s, layout_len)),
            privacy: match &spec {
                Some(s) => dp_section(s, &history, &metrics)?,
                None => None,
            },
            rounds,
            identities_included: identities,
            audit: self.audit_section(&job).await?,
            sbom: serde_json::from_str(SBOM_JSON)
                .map_err(|e| EvidenceError::Corrupt(format!("the embedded SBOM: {e}")))?,
            build: build_info(),
        })
    }

    async fn evidence_round(
        &self,
        r: &CommittedRound,
        identities: bool,
    ) -> Result<EvidenceRound, EvidenceError> {
        let m: Option<RoundMetrics> = serde_json::from_value(r.metrics.clone()).ok();
        // Blob keys are `job-<id>/v<version>-<sha256>.bin`: the digest, for rounds whose metrics
        // predate `model_sha256`.
        let from_key = r
            .model_blob_key
            .rsplit_once('-')
            .and_then(|(_, t)| t.strip_suffix(".bin"))
            .map(str::to_owned);
        Ok(EvidenceRound {
            round: r.round,
            attempt: r.attempt,
            committed_at_ms: r.committed_at_ms,
            participants: r.participants.len() as u64,
            participant_ids: identities.then(|| r.participants.iter().map(|c| c.0).collect()),
            model_sha256: m.as_ref().and_then(|m| m.model_sha256.clone()).or(from_key),
            model_deleted_at_ms: self.store.blob_deleted_at(&r.model_blob_key).await?,
            num_samples: m.as_ref().map_or(0, |m| m.num_samples),
            train_loss: m.as_ref().and_then(|m| m.train_loss),
            eval: m.as_ref().and_then(|m| m.eval.clone()),
            federated_eval: m.as_ref().and_then(|m| m.federated_eval.clone()),
        })
    }

    /// The TLS offer, the credential TTL and the authentication modes of this coordinator.
    fn security_config(&self) -> SecurityConfig {
        let mode = |name: &str, enabled: bool, detail: &str| AuthMode {
            name: name.to_owned(),
            enabled,
            detail: detail.to_owned(),
        };
        SecurityConfig {
            tls_enabled: self.tls_offer.is_some(),
            tls: self.tls_offer.clone(),
            credential_ttl_seconds: self.credential_ttl.as_secs(),
            authentication: vec![
                mode(
                    "client_credential",
                    true,
                    "clients enroll with a single-use enrollment token and then present a 32-byte \
                     random bearer credential (stored as SHA-256), which expires after the \
                     credential TTL and can be revoked",
                ),
                mode(
                    "admin_bearer_token",
                    true,
                    "the bootstrap admin token (FLOTILLA_ADMIN_TOKEN), compared in constant time",
                ),
                mode(
                    "console_session",
                    true,
                    "web console sessions opened with an admin token; state changes need the \
                     session's CSRF token and a same-origin request",
                ),
            ],
        }
    }

    /// The audit chain's verification and the job's entries (resource `job:ID`, read a page at a
    /// time from its tenant's entries; at most [`MAX_JOB_ENTRIES`]).
    async fn audit_section(&self, job: &JobRecord) -> Result<AuditEvidence, EvidenceError> {
        let v = self.store.audit_verify().await?;
        let verification = match &v.problem {
            Some(p) => p.message.clone(),
            None => match (v.first_seq, v.last_seq) {
                (Some(a), Some(b)) => format!(
                    "entries {a}..={b} hash-chain to the head (seq {}, hash {})",
                    v.head_seq, v.head_hash
                ),
                _ => "the audit log is empty".to_owned(),
            },
        };
        let resource = format!("job:{}", job.id);
        let mut job_entries = Vec::new();
        let mut truncated = false;
        let mut since = 0;
        'pages: loop {
            let page = self
                .store
                .audit_entries(since, Some(&job.tenant), AUDIT_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            since = last.seq;
            for e in page.iter().filter(|e| e.resource == resource) {
                if job_entries.len() == MAX_JOB_ENTRIES {
                    truncated = true;
                    break 'pages;
                }
                let mut value = serde_json::to_value(e).map_err(|err| {
                    EvidenceError::Corrupt(format!("audit entry {}: {err}", e.seq))
                })?;
                // The details as JSON for readers; `details_json` stays as hashed.
                value["details"] =
                    serde_json::from_str(&e.details_json).unwrap_or(serde_json::Value::Null);
                job_entries.push(value);
            }
            if page.len() < AUDIT_PAGE as usize {
                break;
            }
        }
        Ok(AuditEvidence {
            chain_verified: v.ok(),
            verification,
            entries_checked: v.entries,
            job_entries,
            job_entries_truncated: truncated,
        })
    }

    /// The policies in force for `job`: the version in force when it was submitted and every
    /// version applied while it could still run (each with its SHA-256, who applied it and when).
    async fn policies_in_force(&self, job: &JobRecord) -> Result<EvidencePolicies, EvidenceError> {
        let versions = self.store.policy_versions().await?;
        let until = if job.state.is_terminal() {
            job.updated_at_ms
        } else {
            i64::MAX
        };
        let at_submission = versions
            .iter()
            .filter(|v| v.applied_at_ms <= job.created_at_ms)
            .map(|v| v.version)
            .max();
        let policies: Vec<PolicyEvidence> = versions
            .iter()
            .filter(|v| {
                Some(v.version) == at_submission
                    || (v.applied_at_ms > job.created_at_ms && v.applied_at_ms <= until)
            })
            .map(|v| PolicyEvidence {
                id: format!("policy v{}", v.version),
                version: Some(v.version),
                sha256: v.sha256.clone(),
                applied_at_ms: Some(v.applied_at_ms),
                applied_by: Some(v.applied_by.clone()),
            })
            .collect();
        let note = policies.is_empty().then(|| {
            "no policy was in force: only the roles decided (flotilla policy apply FILE)".to_owned()
        });
        Ok(EvidencePolicies {
            available: true,
            note,
            policies,
        })
    }

    /// The approval or rejection of `job` (who decided, when, why).
    async fn approvals_of(&self, job: &JobRecord) -> Result<EvidenceApprovals, EvidenceError> {
        let a = self.store.job_approval(job.id).await?;
        let decisions = match (a.state, a.by, a.at_ms) {
            (
                Some(state @ (ApprovalState::Approved | ApprovalState::Rejected)),
                Some(by),
                Some(at_ms),
            ) => {
                vec![ApprovalEvidence {
                    decision: state.as_str().to_owned(),
                    by,
                    at_ms,
                    reason: a.reason,
                }]
            }
            _ => Vec::new(),
        };
        let note = match a.state {
            None => {
                Some("the job's tenant did not require approval when it was submitted".to_owned())
            }
            Some(ApprovalState::Pending) => Some("the job is waiting for approval".to_owned()),
            Some(_) => None,
        };
        Ok(EvidenceApprovals {
            available: true,
            note,
            decisions,
        })
    }
}

fn evidence_job(job: &JobRecord) -> EvidenceJob {
    EvidenceJob {
        job_id: job.id.0,
        name: job.name.clone(),
        tenant: job.tenant.clone(),
        state: job.state.as_str().to_owned(),
        state_reason: job.state_reason.clone(),
        rounds_total: job.rounds_total,
        rounds_completed: job.rounds_completed,
        created_at_ms: job.created_at_ms,
        updated_at_ms: job.updated_at_ms,
    }
}

/// SecAgg+ parameters as the coordinator installs them (`secagg_round::install`).
fn secagg_section(spec: &JobSpec, vector_len: usize) -> Option<SecAggEvidence> {
    let s = spec.secagg.as_ref()?;
    let params = s.params(spec.clients_per_round, vector_len).ok()?;
    let min_reports = spec.policy().min_reports();
    Some(SecAggEvidence {
        protocol: "SecAgg+ (Bell et al. 2020): pairwise masks over a k-regular graph, t-of-k \
                   Shamir shares of each client's secrets"
            .to_owned(),
        n: params.max_clients(),
        k: params.neighbours(),
        t: params.threshold(),
        clip_range: params.clip_range(),
        min_reports,
        dropouts_tolerated: DropoutTolerance {
            per_round: params.max_clients().saturating_sub(min_reports),
            per_neighbourhood: params.neighbours().saturating_sub(params.threshold()),
        },
    })
}

/// The DP accounting of the committed rounds, recomputed from each round's recorded `(q, σ)` with
/// the same accountant the coordinator charges rounds with.
fn dp_section(
    spec: &JobSpec,
    history: &[CommittedRound],
    metrics: &[Option<RoundMetrics>],
) -> Result<Option<DpEvidence>, EvidenceError> {
    let Some(p) = &spec.privacy else {
        return Ok(None);
    };
    let bad = |e: flotilla_privacy::PrivacyError| EvidenceError::Corrupt(format!("privacy: {e}"));
    let mut acc = RdpAccountant::new();
    let mut recorded = Vec::new();
    for (r, m) in history.iter().zip(metrics) {
        let Some(rp) = m.as_ref().and_then(|m| m.privacy.as_ref()) else {
            return Err(EvidenceError::Corrupt(format!(
                "round {} of a DP job records no privacy accounting",
                r.round
            )));
        };
        acc.compose(rp.q, rp.sigma, 1).map_err(bad)?;
        recorded.push((r.round, rp.q, rp.sigma, rp.epsilon_spent));
    }
    let per_round = acc.per_round(p.delta).map_err(bad)?;
    let rounds = recorded
        .iter()
        .zip(&per_round)
        .map(|(&(round, q, sigma, eps), e)| {
            Ok(DpRound {
                round,
                q,
                sigma,
                round_epsilon: flotilla_privacy::epsilon(q, sigma, 1, p.delta)
                    .map_err(bad)?
                    .epsilon,
                epsilon_recorded: eps,
                epsilon: e.epsilon,
            })
        })
        .collect::<Result<Vec<_>, EvidenceError>>()?;
    let mut first = 1;
    let segments: Vec<DpSegment> = acc
        .segments()
        .iter()
        .map(|s| {
            let seg = DpSegment {
                first_round: first,
                last_round: first + s.steps - 1,
                q: s.q,
                sigma: s.sigma,
                steps: s.steps,
            };
            first += s.steps;
            seg
        })
        .collect();
    let spend = acc.spend(p.delta).map_err(bad)?;
    let reproduce = match segments.as_slice() {
        [s] => Some(format!(
            "flotilla dp epsilon --sampling-rate {} --noise-multiplier {} --steps {} --delta {}",
            s.q, s.sigma, s.steps, p.delta
        )),
        _ => None,
    };
    let clip_norm = match p.dp.clip {
        flotilla_core::dp::ClipRule::Fixed { clip_norm } => Some(clip_norm),
        flotilla_core::dp::ClipRule::Adaptive { .. } => None,
    };
    let mode = match p.dp.mode {
        flotilla_core::dp::DpMode::Central => "central",
        flotilla_core::dp::DpMode::Distributed => "distributed",
    };
    Ok(Some(DpEvidence {
        mechanism: format!(
            "DP-FedAvg: each client's update clipped to L2 norm C, Gaussian noise of standard \
             deviation σ·C on the sum ({}), divided by the fixed clients_per_round; cohorts \
             accounted as Poisson samples at rate q",
            if mode == "central" {
                "added by the server"
            } else {
                "added in shares by the clients before secure aggregation"
            }
        ),
        mode: mode.to_owned(),
        noise_multiplier: p.dp.noise_multiplier,
        clip_norm,
        delta: p.delta,
        max_epsilon: p.max_epsilon,
        population: p.population,
        accountant: "rdp-poisson-gaussian-v1 (Rényi DP, as Google's dp-accounting)".to_owned(),
        orders: acc.orders().to_vec(),
        rounds,
        segments,
        total: DpTotal {
            epsilon: spend.epsilon,
            delta: spend.delta,
            order: spend.order,
            steps: spend.steps,
        },
        reproduce,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_hash_does_not_depend_on_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(spec_hash(&a), spec_hash(&b));
        assert_eq!(spec_hash(&a).0, r#"{"a":{"x":3,"y":2},"b":1}"#);
        let c: serde_json::Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":2}"#).unwrap();
        assert_ne!(spec_hash(&a).1, spec_hash(&c).1);
    }

    #[test]
    fn the_embedded_sbom_is_cyclonedx_with_components() {
        let sbom: serde_json::Value = serde_json::from_str(SBOM_JSON).unwrap();
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        assert_eq!(sbom["specVersion"], "1.5");
        let comps = sbom["components"].as_array().unwrap();
        let own = comps
            .iter()
            .find(|c| c["name"] == "flotilla-coordinator")
            .expect("the crate itself is listed");
        assert_eq!(
            own["purl"],
            format!(
                "pkg:cargo/flotilla-coordinator@{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        // A registry crate has its checksum; build metadata (`+`) is percent-encoded in purls.
        let toml = comps.iter().find(|c| c["name"] == "toml").expect("toml");
        assert_eq!(toml["hashes"][0]["alg"], "SHA-256");
        for c in comps {
            let purl = c["purl"].as_str().unwrap();
            assert!(!purl.contains('+'), "{purl}");
        }
    }
}
