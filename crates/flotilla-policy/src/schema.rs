//! The Cedar schema: the fixed part (`flotilla.cedarschema`: entities, `admit_job`, `participate`)
//! and one action per admin action, generated from [`ADMIN_ACTIONS`].

use std::sync::OnceLock;

use cedar_policy::Schema;

/// The fixed part of the schema, without its namespace's closing brace.
const BASE: &str = include_str!("flotilla.cedarschema");

/// Every admin action a policy can name, as `Flotilla::Action::"<name>"`: the coordinator's
/// `authz::Action` names, in its order (its tests check the two lists are the same).
pub const ADMIN_ACTIONS: &[&str] = &[
    "token_create",
    "job_submit",
    "job_read",
    "job_model_read",
    "job_cancel",
    "job_approve",
    "client_read",
    "client_revoke",
    "client_forget",
    "metrics_read",
    "principal_read",
    "principal_manage",
    "tenant_configure",
    "policy_read",
    "policy_apply",
    "audit_read",
    "evidence_read",
    "retention_run",
    "model_read",
    "model_register",
    "model_promote",
    "model_evaluate",
];

/// The action of job admission.
pub const ADMIT_JOB: &str = "admit_job";
/// The action of client eligibility.
pub const PARTICIPATE: &str = "participate";

/// The whole schema text, as `flotilla policy schema` prints it.
pub fn schema_text() -> String {
    let mut s = String::from(BASE);
    s.push_str(
        "\n  // Admin actions, on top of the roles: the resource is the tenant the request is about,\n  \
         // or the installation for one that concerns no tenant.\n",
    );
    for a in ADMIN_ACTIONS {
        s.push_str(&format!(
            "  action \"{a}\" appliesTo {{ principal: [Principal], resource: [Tenant, Installation] }};\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// The parsed schema, built once.
pub(crate) fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The text is this crate's constant: a unit test parses it, so this cannot fail at run time.
        Schema::from_cedarschema_str(&schema_text())
            .map(|(s, _warnings)| s)
            .unwrap_or_else(|e| panic!("Flotilla's built-in Cedar schema is invalid: {e}"))
    })
}
