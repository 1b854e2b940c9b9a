//! Policies as code: the Cedar policy set in force (`flotilla-policy`), held in memory for the
//! decisions — admin actions on top of the roles, job admission, client eligibility at check-in
//! (no store call per check-in) — and loaded at start from `--policy FILE` or the store's current
//! version. A server never starts with a malformed policy: it would either refuse everything or,
//! worse, nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use flotilla_policy::{Caller, ClientAttrs, Denial, JobAttrs, PolicyError, PolicySet};
use flotilla_store::{AuditEvent, AuditOutcome, PolicyVersionInfo, Store};

use crate::authz::{ANY_TENANT, Actor, ActorId};
use crate::error::CoordinatorError;
use crate::spec::JobSpec;

/// A policy file given to the server at start (`flotilla server --policy FILE`): applied as a new
/// version unless it is the text already in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// How errors name it (the path as given).
    pub name: String,
    /// Its Cedar text.
    pub text: String,
}

/// The policy set in force and which stored version it is.
#[derive(Debug, Default)]
pub(crate) struct InForce {
    /// The stored version; none before the first apply (no policies: the roles alone decide).
    pub version: Option<PolicyVersionInfo>,
    pub set: PolicySet,
}

/// The policy in force, replaced as a whole when a version is applied; readers take an `Arc`.
#[derive(Debug, Default)]
pub(crate) struct Policies(RwLock<Arc<InForce>>);

impl Policies {
    /// The policy in force now.
    pub(crate) fn current(&self) -> Arc<InForce> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `next` in force unless a newer version already is (two applies racing: the store
    /// numbered them, the higher wins here too).
    pub(crate) fn replace(&self, next: InForce) {
        let mut cur = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let newer = match (&cur.version, &next.version) {
            (Some(c), Some(n)) => n.version > c.version,
            _ => true,
        };
        if newer {
            *cur = Arc::new(next);
        }
    }
}

/// `FILE:LINE:COL: message`, as a compiler reports it.
pub(crate) fn located(name: &str, e: &PolicyError) -> String {
    format!("{name}:{}:{}: {}", e.line, e.column, e.message)
}

/// The policy to start with: `file` applied (as `actor`) if given and different from the stored
/// current version, else the stored current version; refused if either is malformed.
pub(crate) async fn load(
    store: &Store,
    file: Option<&PolicyFile>,
    actor: &str,
) -> Result<InForce, CoordinatorError> {
    let stored = store.current_policy().await?;
    if let Some(f) = file {
        let set = flotilla_policy::validate(&f.text)
            .map_err(|e| CoordinatorError::Config(format!("--policy {}", located(&f.name, &e))))?;
        let same = stored.as_ref().is_some_and(|s| s.text == f.text);
        let version = match stored {
            Some(s) if same => s.info,
            _ => {
                let v = store.apply_policy(&f.text, actor).await?;
                tracing::info!(version = v.version, sha256 = %v.sha256, file = %f.name, "policy applied");
                v
            }
        };
        return Ok(InForce {
            version: Some(version),
            set,
        });
    }
    let Some(stored) = stored else {
        return Ok(InForce::default());
    };
    let set = flotilla_policy::validate(&stored.text).map_err(|e| {
        CoordinatorError::Config(format!(
            "the policy in force (version {}) is malformed at line {}, column {}: {}; start with \
             --policy FILE to apply a valid one",
            stored.info.version, e.line, e.column, e.message
        ))
    })?;
    Ok(InForce {
        version: Some(stored.info),
        set,
    })
}

/// What policies see of an admin caller ([`Caller`]) acting in `tenant`: its name (`admin` for the
/// bootstrap token, `oidc:SUBJECT` for an OIDC subject), its roles there (all its roles for an
/// installation-wide request; `admin` wherever it is an admin) and the tenants it holds roles in.
pub(crate) fn caller(actor: &Actor, tenant: Option<&str>) -> Caller {
    let name = match &actor.id {
        ActorId::BootstrapAdmin => "admin".to_owned(),
        ActorId::Principal(n) => n.clone(),
        ActorId::Oidc(s) => format!("oidc:{s}"),
    };
    let mut roles: Vec<String> = actor
        .roles
        .iter()
        .filter(|(t, _)| t == ANY_TENANT || tenant.is_none_or(|want| t == want))
        .map(|(_, r)| r.as_str().to_owned())
        .collect();
    roles.sort();
    roles.dedup();
    let mut tenants: Vec<String> = actor
        .roles
        .iter()
        .filter(|(t, _)| t != ANY_TENANT)
        .map(|(t, _)| t.clone())
        .collect();
    tenants.sort();
    tenants.dedup();
    Caller {
        name,
        roles,
        tenants,
    }
}

/// Records that a policy refused `action` (a dotted audit verb) by `actor` on `resource`. The
/// refusal stands whether or not the entry could be written (then it is logged).
pub(crate) async fn audit_denied(
    store: &Store,
    actor: &Actor,
    action: &str,
    tenant: Option<&str>,
    resource: &str,
    denial: &Denial,
) {
    let mut ev = AuditEvent::new(actor.audit_name(), action, resource)
        .outcome(AuditOutcome::Denied)
        .details(serde_json::json!({
            "policy": denial.policy,
            "error": denial.error,
        }));
    if let Some(t) = tenant {
        ev = ev.tenant(t);
    }
    if let Err(e) = store.audit(&ev).await {
        tracing::warn!(error = %e, action, resource, "could not audit a policy refusal");
    }
}

/// What policies see of a job ([`JobAttrs`]), from its spec.
pub(crate) fn job_attrs(spec: &JobSpec) -> JobAttrs {
    JobAttrs {
        tenant: spec.tenant.clone(),
        name: spec.name.clone(),
        rounds: spec.rounds,
        clients_per_round: spec.clients_per_round as u64,
        min_clients: spec.min_clients as u64,
        min_samples: spec.min_samples,
        local_epochs: u64::from(spec.train.local_epochs),
        model_kind: spec.model.kind.clone(),
        strategy: spec.strategy.name.clone(),
        secagg: spec.secagg.is_some(),
        dp: spec.privacy.is_some(),
        max_epsilon: spec.privacy.as_ref().and_then(|p| p.max_epsilon),
        evaluation: spec.evaluation_dataset.is_some(),
    }
}

/// What policies see of a client at check-in ([`ClientAttrs`]); the attributes must have passed
/// [`flotilla_policy::check_attributes`].
pub(crate) fn client_attrs(
    id: u64,
    tenant: &str,
    samples: u64,
    attributes: &HashMap<String, String>,
) -> ClientAttrs {
    ClientAttrs {
        id,
        tenant: tenant.to_owned(),
        samples,
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Keeps the jobs (`id_and_spec` of each) that `set` lets `client` participate in; the first
/// refusal, for the check-in's answer (`client` is built only if some policy governs eligibility).
pub(crate) fn retain_eligible<T>(
    set: &PolicySet,
    client: impl FnOnce() -> ClientAttrs,
    jobs: &mut Vec<T>,
    id_and_spec: impl Fn(&T) -> (u64, &JobSpec),
) -> Option<Denial> {
    if !set.governs(flotilla_policy::PARTICIPATE) || jobs.is_empty() {
        return None;
    }
    let client = client();
    let mut first = None;
    jobs.retain(|j| {
        let (id, spec) = id_and_spec(j);
        match set.participate(&client, id, &job_attrs(spec)) {
            Ok(()) => true,
            Err(d) => {
                first.get_or_insert(d);
                false
            }
        }
    });
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Action, Role};

    #[test]
    fn the_policy_schema_names_every_admin_action_in_order() {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, flotilla_policy::ADMIN_ACTIONS);
    }

    #[test]
    fn callers_carry_their_roles_in_the_tenant_asked_about() {
        let alice = Actor {
            id: ActorId::Principal("alice".into()),
            roles: vec![
                ("hospital".into(), Role::Scientist),
                ("retail".into(), Role::Operator),
            ],
        };
        let c = caller(&alice, Some("hospital"));
        assert_eq!(c.name, "alice");
        assert_eq!(c.roles, ["scientist"]);
        assert_eq!(c.tenants, ["hospital", "retail"]);
        assert_eq!(caller(&alice, None).roles, ["operator", "scientist"]);
        let admin = caller(&Actor::bootstrap(), Some("hospital"));
        assert_eq!(
            (admin.name.as_str(), admin.roles),
            ("admin", vec!["admin".to_owned()])
        );
        assert!(admin.tenants.is_empty());
    }

    #[test]
    fn a_job_spec_becomes_the_attributes_policies_see() {
        let text = include_str!("../../../examples/job-digits.toml").replace(
            "name = \"digits\"",
            "name = \"xray\"\ntenant = \"hospital\"",
        );
        let a = job_attrs(&JobSpec::from_toml(&text).unwrap());
        assert_eq!(
            (
                a.tenant.as_str(),
                a.name.as_str(),
                a.rounds,
                a.clients_per_round
            ),
            ("hospital", "xray", 20, 10)
        );
        assert!(a.evaluation);
        assert_eq!(a.model_kind, "logreg");
        assert!(!a.secagg && !a.dp && a.max_epsilon.is_none());
    }
}
