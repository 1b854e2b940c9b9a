//! Bodies of the governance endpoints: principals (`/v1/principals`), tenant settings
//! (`/v1/tenants/{tenant}`) and job approval (`/v1/jobs/{id}/approve`, `/reject`).

use serde::{Deserialize, Serialize};

/// One role in one tenant; tenant `*` is every tenant (only `admin` is granted there).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleBinding {
    /// The tenant, or `*`.
    pub tenant: String,
    /// `admin`, `operator`, `scientist`, `approver`, `auditor` or `viewer`.
    pub role: String,
}

/// Body of `POST /v1/principals`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalRequest {
    /// Unique name: 1 to 64 ASCII letters, digits and `. _ - @`.
    pub name: String,
    /// `person` (default) or `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its roles (at least one).
    pub roles: Vec<RoleBinding>,
}

/// A principal as listed (never its token).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrincipalInfo {
    /// Its name.
    pub name: String,
    /// `person` or `service`.
    pub kind: String,
    /// Its roles.
    pub roles: Vec<RoleBinding>,
    /// Who created it.
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: i64,
    /// Whether its token is refused.
    pub revoked: bool,
    /// When it was revoked, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

/// Answer of `POST /v1/principals`: the principal and its token (shown this once; only its
/// SHA-256 is stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrincipalCreated {
    /// The principal.
    #[serde(flatten)]
    pub principal: PrincipalInfo,
    /// Its token, `flt_pat_…`: `authorization: Bearer <token>`.
    pub token: String,
}

/// Body of `PUT /v1/tenants/{tenant}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantSettingsRequest {
    /// Whether a job submitted in the tenant waits for an approver who is not its submitter.
    pub require_approval: bool,
}

/// A tenant's settings (answer of `PUT` and `GET /v1/tenants/{tenant}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantSettingsInfo {
    /// The tenant.
    pub tenant: String,
    /// Whether jobs of the tenant need approval.
    pub require_approval: bool,
    /// Who changed the settings last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_ms: Option<i64>,
}

/// Body of `POST /v1/jobs/{id}/reject`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Why, recorded with the job and shown in its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Who submitted a job and where its approval stands (in `GET /v1/jobs/{id}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ApprovalInfo {
    /// Who submitted the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// `pending`, `approved` or `rejected`; absent when the job needed no approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Who approved or rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer of `POST /v1/jobs/{id}/approve` and `/reject`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobDecided {
    /// The job.
    pub job_id: u64,
    /// Its state afterwards: `running` (approved), `cancelled` (rejected).
    pub state: String,
    /// The decision.
    pub approval: ApprovalInfo,
}
