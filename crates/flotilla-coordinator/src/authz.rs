//! Who may do what on the admin API: roles per tenant, the actions they allow, and the rule that a
//! caller with no role in a resource's tenant is told the resource does not exist (`404`), while a
//! caller with a role there that does not allow the action is refused (`403`).
//!
//! Pure functions over an [`Actor`]; the admin router resolves the actor from the request (the
//! bootstrap admin token, a principal's token, an OIDC token or a console session) and every
//! handler asks [`authorize`] before it reads or changes anything. Cedar policies (issue 16 §4) are
//! evaluated on top of the roles by the admin router, never instead of them.

// Foundation of issue 16: the handlers adopt it as the issue lands (remove this then).
#![allow(dead_code)]

use std::fmt;

/// A role a principal holds in one tenant (`admin` is installation-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Role {
    /// Everything, in every tenant.
    Admin,
    /// Jobs' lifecycle, clients and enrollment tokens of its tenants.
    Operator,
    /// Submits jobs; reads its tenants' jobs and models.
    Scientist,
    /// Approves or rejects its tenants' jobs (never its own); reads them.
    Approver,
    /// Reads everything of its tenants, the audit log and evidence packs included; changes nothing.
    Auditor,
    /// Reads its tenants' jobs and their status.
    Viewer,
}

impl Role {
    /// Every role, in the order tables list them.
    pub(crate) const ALL: [Role; 6] = [
        Role::Admin,
        Role::Operator,
        Role::Scientist,
        Role::Approver,
        Role::Auditor,
        Role::Viewer,
    ];

    /// The role's name as the API and the CLI spell it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Scientist => "scientist",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    /// The role named `s`.
    pub(crate) fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role allows `action` (within a tenant it holds it in).
    pub(crate) fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(
                action,
                TokenCreate
                    | JobRead
                    | JobModelRead
                    | JobCancel
                    | ClientRead
                    | ClientRevoke
                    | ClientForget
                    | MetricsRead
                    | PolicyRead
                    | ModelRead
                    | ModelRegister
                    | ModelPromote
                    | ModelEvaluate
            ),
            Role::Scientist => matches!(
                action,
                JobSubmit | JobRead | JobModelRead | ModelRead | ModelRegister | ModelEvaluate
            ),
            // Promotion is a release decision: the approver's, as job approval is.
            Role::Approver => matches!(action, JobApprove | JobRead | ModelRead | ModelPromote),
            Role::Auditor => matches!(
                action,
                JobRead
                    | JobModelRead
                    | ClientRead
                    | MetricsRead
                    | PolicyRead
                    | AuditRead
                    | EvidenceRead
                    | PrincipalRead
                    | ModelRead
            ),
            Role::Viewer => matches!(action, JobRead | ModelRead),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every action of the admin API (one per endpoint or group of endpoints that mean the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Action {
    /// Create an enrollment token.
    TokenCreate,
    /// Submit a job.
    JobSubmit,
    /// List jobs, read a job's status.
    JobRead,
    /// Download a job's model or its description.
    JobModelRead,
    /// Cancel a job.
    JobCancel,
    /// Approve or reject a job waiting for approval.
    JobApprove,
    /// List clients.
    ClientRead,
    /// Revoke a client's credential.
    ClientRevoke,
    /// Erase a client's record (right to erasure).
    ClientForget,
    /// Read the coordinator's metrics (`/v1/metrics`, `/metrics`).
    MetricsRead,
    /// List principals.
    PrincipalRead,
    /// Create or revoke principals and their roles.
    PrincipalManage,
    /// Change a tenant's settings (e.g. whether its jobs need approval).
    TenantConfigure,
    /// Read the policies and their versions.
    PolicyRead,
    /// Apply a new policy version.
    PolicyApply,
    /// Read and verify the audit log.
    AuditRead,
    /// Read a job's evidence pack.
    EvidenceRead,
    /// Run retention (or plan it).
    RetentionRun,
    /// List registered models, read versions, lineage, evaluations, download artifacts.
    ModelRead,
    /// Register a job's model as a version; set a model's release gate.
    ModelRegister,
    /// Promote (through the gate), start a canary, roll back.
    ModelPromote,
    /// Start a federated evaluation.
    ModelEvaluate,
}

impl Action {
    /// Every action, in the order tables list them.
    pub(crate) const ALL: [Action; 22] = [
        Action::TokenCreate,
        Action::JobSubmit,
        Action::JobRead,
        Action::JobModelRead,
        Action::JobCancel,
        Action::JobApprove,
        Action::ClientRead,
        Action::ClientRevoke,
        Action::ClientForget,
        Action::MetricsRead,
        Action::PrincipalRead,
        Action::PrincipalManage,
        Action::TenantConfigure,
        Action::PolicyRead,
        Action::PolicyApply,
        Action::AuditRead,
        Action::EvidenceRead,
        Action::RetentionRun,
        Action::ModelRead,
        Action::ModelRegister,
        Action::ModelPromote,
        Action::ModelEvaluate,
    ];

    /// The action's name (`snake_case`): the Cedar action id and the audit log's verb stem.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::TokenCreate => "token_create",
            Action::JobSubmit => "job_submit",
            Action::JobRead => "job_read",
            Action::JobModelRead => "job_model_read",
            Action::JobCancel => "job_cancel",
            Action::JobApprove => "job_approve",
            Action::ClientRead => "client_read",
            Action::ClientRevoke => "client_revoke",
            Action::ClientForget => "client_forget",
            Action::MetricsRead => "metrics_read",
            Action::PrincipalRead => "principal_read",
            Action::PrincipalManage => "principal_manage",
            Action::TenantConfigure => "tenant_configure",
            Action::PolicyRead => "policy_read",
            Action::PolicyApply => "policy_apply",
            Action::AuditRead => "audit_read",
            Action::EvidenceRead => "evidence_read",
            Action::RetentionRun => "retention_run",
            Action::ModelRead => "model_read",
            Action::ModelRegister => "model_register",
            Action::ModelPromote => "model_promote",
            Action::ModelEvaluate => "model_evaluate",
        }
    }
}

/// Who is calling the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor {
    /// The identity.
    pub id: ActorId,
    /// Roles held, per tenant; [`Role::Admin`] is held installation-wide (its tenant is `*`).
    pub roles: Vec<(String, Role)>,
}

/// The identity behind an [`Actor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ActorId {
    /// The bootstrap token (`FLOTILLA_ADMIN_TOKEN`): admin everywhere.
    BootstrapAdmin,
    /// A named principal (person or service account) with an API token.
    Principal(String),
    /// An OIDC subject, from a JWT the configured issuer signed.
    Oidc(String),
}

/// The tenant under which [`Role::Admin`] is held: every tenant.
pub(crate) const ANY_TENANT: &str = "*";

impl Actor {
    /// The bootstrap admin (the `FLOTILLA_ADMIN_TOKEN`).
    pub(crate) fn bootstrap() -> Actor {
        Actor {
            id: ActorId::BootstrapAdmin,
            roles: vec![(ANY_TENANT.to_owned(), Role::Admin)],
        }
    }

    /// The actor as the audit log names it: `admin-token`, `principal:NAME` or `oidc:SUBJECT`.
    pub(crate) fn audit_name(&self) -> String {
        match &self.id {
            ActorId::BootstrapAdmin => "admin-token".to_owned(),
            ActorId::Principal(n) => format!("principal:{n}"),
            ActorId::Oidc(s) => format!("oidc:{s}"),
        }
    }

    /// Whether the actor is an admin (installation-wide).
    pub(crate) fn is_admin(&self) -> bool {
        self.roles.iter().any(|(_, r)| *r == Role::Admin)
    }

    /// The tenants in which the actor may do `action`; `None` means every tenant (an admin).
    /// List endpoints show only these tenants' resources.
    pub(crate) fn tenants_for(&self, action: Action) -> Option<Vec<String>> {
        if self.is_admin() {
            return None;
        }
        let mut t: Vec<String> = self
            .roles
            .iter()
            .filter(|(_, r)| r.allows(action))
            .map(|(t, _)| t.clone())
            .collect();
        t.sort();
        t.dedup();
        Some(t)
    }
}

/// Why [`authorize`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The actor has no role in the resource's tenant: answer as if it did not exist (`404`).
    NotFound,
    /// The actor has a role there, but none that allows the action (`403`).
    Forbidden,
}

/// Whether `actor` may do `action` on a resource of `tenant` (`None`: an installation-wide
/// resource, which any role allowing the action in some tenant may use, e.g. `/v1/metrics`, or
/// a list the handler then filters with [`Actor::tenants_for`]).
pub(crate) fn authorize(actor: &Actor, action: Action, tenant: Option<&str>) -> Result<(), Denied> {
    if actor.is_admin() {
        return Ok(());
    }
    match tenant {
        Some(t) => {
            let mut held = actor.roles.iter().filter(|(rt, _)| rt == t).peekable();
            if held.peek().is_none() {
                return Err(Denied::NotFound);
            }
            if held.any(|(_, r)| r.allows(action)) {
                Ok(())
            } else {
                Err(Denied::Forbidden)
            }
        }
        None if actor.roles.iter().any(|(_, r)| r.allows(action)) => Ok(()),
        None => Err(Denied::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[(&str, Role)]) -> Actor {
        Actor {
            id: ActorId::Principal("p".into()),
            roles: roles.iter().map(|(t, r)| ((*t).to_owned(), *r)).collect(),
        }
    }

    #[test]
    fn outside_the_tenant_is_not_found_inside_without_the_role_is_forbidden() {
        let sci = principal(&[("acme", Role::Scientist)]);
        assert_eq!(authorize(&sci, Action::JobSubmit, Some("acme")), Ok(()));
        assert_eq!(
            authorize(&sci, Action::JobSubmit, Some("globex")),
            Err(Denied::NotFound)
        );
        assert_eq!(
            authorize(&sci, Action::JobCancel, Some("acme")),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            authorize(&sci, Action::PrincipalManage, None),
            Err(Denied::Forbidden)
        );
        assert_eq!(sci.tenants_for(Action::JobRead), Some(vec!["acme".into()]));
        assert_eq!(sci.tenants_for(Action::ClientRead), Some(vec![]));
    }

    #[test]
    fn the_bootstrap_admin_may_do_everything_everywhere() {
        let a = Actor::bootstrap();
        for action in Action::ALL {
            assert_eq!(authorize(&a, action, Some("any")), Ok(()));
            assert_eq!(authorize(&a, action, None), Ok(()));
        }
        assert_eq!(a.tenants_for(Action::JobRead), None);
        assert_eq!(a.audit_name(), "admin-token");
    }

    #[test]
    fn roles_round_trip_and_only_admin_manages_principals() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.allows(Action::PrincipalManage), r == Role::Admin, "{r}");
        }
        assert_eq!(Role::parse("root"), None);
    }
}
