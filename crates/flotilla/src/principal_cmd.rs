//! Governance commands over the admin API: `principal create|list|revoke`, `tenant set|show`,
//! and `job approve|reject` (called from `admin_cmd`'s `job` command).

use anyhow::{Result, bail};
use flotilla_coordinator::api::{
    JobDecided, PrincipalCreated, PrincipalInfo, PrincipalRequest, RejectRequest, RoleBinding,
    TenantSettingsInfo, TenantSettingsRequest,
};

use crate::admin_cmd::{Admin, AdminArgs, JsonArg, OutputArgs, body, typed};
use crate::admin_view::{Clock, Table, clean};

/// The roles a principal can hold.
const ROLES: [&str; 6] = [
    "admin",
    "operator",
    "scientist",
    "approver",
    "auditor",
    "viewer",
];

/// `flotilla principal …`
#[derive(Debug, clap::Subcommand)]
pub enum PrincipalCommand {
    /// Create a principal (a person or a service account) with roles in a tenant; prints its
    /// token as the last line of stdout (shown once: only its hash is kept).
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// Unique name, e.g. alice or ci-pipeline
        name: String,
        /// Tenant the roles apply to (not needed when every role is `admin`, which holds in all
        /// tenants, or is given as TENANT:ROLE)
        #[arg(long)]
        tenant: Option<String>,
        /// A role: admin, operator, scientist, approver, auditor or viewer; or TENANT:ROLE.
        /// Repeat for more
        #[arg(long = "role", value_name = "ROLE", required = true)]
        roles: Vec<String>,
        /// person or service
        #[arg(long, default_value = "person", value_parser = ["person", "service"])]
        kind: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List principals and their roles (never their tokens).
    List {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Revoke a principal: its token is refused (401) from the next request on.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// Its name
        name: String,
        #[command(flatten)]
        output: JsonArg,
    },
}

/// `flotilla tenant …`
#[derive(Debug, clap::Subcommand)]
pub enum TenantCommand {
    /// Change a tenant's settings.
    Set {
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant
        tenant: String,
        /// Whether its jobs wait for an approver who is not their submitter (four eyes)
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        require_approval: String,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Show a tenant's settings.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant
        tenant: String,
        #[command(flatten)]
        output: JsonArg,
    },
}

/// The role bindings of `principal create`: each `--role` is `ROLE` (in `--tenant`) or
/// `TENANT:ROLE`; `admin` holds in every tenant (`*`).
fn bindings(tenant: Option<&str>, roles: &[String]) -> Result<Vec<RoleBinding>> {
    let mut out = Vec::new();
    for r in roles {
        let (t, role) = match r.split_once(':') {
            Some((t, role)) => (Some(t), role),
            None => (tenant, r.as_str()),
        };
        if !ROLES.contains(&role) {
            bail!(
                "--role {r}: unknown role {role:?}; use one of {}",
                ROLES.join(", ")
            );
        }
        let t = match (role, t) {
            ("admin", _) => "*",
            (_, Some(t)) => t,
            (_, None) => bail!("--role {role} needs a tenant: add --tenant T or write T:{role}"),
        };
        out.push(RoleBinding {
            tenant: t.to_owned(),
            role: role.to_owned(),
        });
    }
    Ok(out)
}

fn roles_text(roles: &[RoleBinding]) -> String {
    roles
        .iter()
        .map(|b| format!("{}:{}", clean(&b.tenant), clean(&b.role)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `principal list` table.
fn principal_table(list: &[PrincipalInfo], clock: &Clock) -> String {
    if list.is_empty() {
        return "no principals\n".into();
    }
    let mut t = Table::new(&[
        ("NAME", false),
        ("KIND", false),
        ("ROLES", false),
        ("CREATED", false),
        ("BY", false),
        ("REVOKED", false),
    ]);
    for p in list {
        t.row(vec![
            clean(&p.name),
            clean(&p.kind),
            roles_text(&p.roles),
            clock.absolute(p.created_at_ms),
            clean(&p.created_by),
            match p.revoked_at_ms {
                Some(ms) => clock.absolute(ms),
                None if p.revoked => "yes".into(),
                None => "no".into(),
            },
        ]);
    }
    t.render()
}

pub fn principal(cmd: PrincipalCommand) -> Result<()> {
    match cmd {
        PrincipalCommand::Create {
            admin,
            name,
            tenant,
            roles,
            kind,
            output,
        } => {
            let req = PrincipalRequest {
                name: name.clone(),
                kind: Some(kind),
                roles: bindings(tenant.as_deref(), &roles)?,
            };
            let v =
                Admin::new(&admin)?.call(reqwest::Method::POST, "/v1/principals", body(&req)?)?;
            let created: PrincipalCreated = typed(v.clone(), "principal")?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            if !output.quiet {
                // Context on stderr: stdout's last line is the token, for `TOKEN=$(… | tail -1)`.
                eprintln!(
                    "principal {} ({}) created with {}; its token is shown once:",
                    clean(&created.principal.name),
                    clean(&created.principal.kind),
                    roles_text(&created.principal.roles)
                );
            }
            println!("{}", created.token);
        }
        PrincipalCommand::List { admin, output } => {
            let v = Admin::new(&admin)?.call(reqwest::Method::GET, "/v1/principals", None)?;
            if output.json {
                println!("{v}");
            } else {
                let list: Vec<PrincipalInfo> = typed(v, "principal list")?;
                print!("{}", principal_table(&list, &Clock::local()));
            }
        }
        PrincipalCommand::Revoke {
            admin,
            name,
            output,
        } => {
            let v = Admin::new(&admin)?.call(
                reqwest::Method::POST,
                &format!("/v1/principals/{name}/revoke"),
                None,
            )?;
            if output.json {
                println!("{v}");
            } else {
                println!(
                    "principal {} revoked; its token is refused from now on",
                    clean(&name)
                );
            }
        }
    }
    Ok(())
}

pub fn tenant(cmd: TenantCommand) -> Result<()> {
    let (tenant, v, json) = match cmd {
        TenantCommand::Set {
            admin,
            tenant,
            require_approval,
            output,
        } => {
            let req = TenantSettingsRequest {
                require_approval: require_approval == "on",
            };
            let v = Admin::new(&admin)?.call(
                reqwest::Method::PUT,
                &format!("/v1/tenants/{tenant}"),
                body(&req)?,
            )?;
            (tenant, v, output.json)
        }
        TenantCommand::Show {
            admin,
            tenant,
            output,
        } => {
            let v = Admin::new(&admin)?.call(
                reqwest::Method::GET,
                &format!("/v1/tenants/{tenant}"),
                None,
            )?;
            (tenant, v, output.json)
        }
    };
    if json {
        println!("{v}");
        return Ok(());
    }
    let s: TenantSettingsInfo = typed(v, "tenant settings")?;
    let approval = if s.require_approval {
        "jobs wait for an approver who is not their submitter"
    } else {
        "jobs start when submitted (no approval)"
    };
    println!("tenant {}: {approval}", clean(&tenant));
    Ok(())
}

/// `flotilla job approve ID`.
pub fn approve(admin: &AdminArgs, id: &str, output: JsonArg) -> Result<()> {
    let v = Admin::new(admin)?.call(
        reqwest::Method::POST,
        &format!("/v1/jobs/{id}/approve"),
        None,
    )?;
    decided(v, id, output)
}

/// `flotilla job reject ID --reason …`.
pub fn reject(admin: &AdminArgs, id: &str, reason: Option<String>, output: JsonArg) -> Result<()> {
    let req = RejectRequest { reason };
    let v = Admin::new(admin)?.call(
        reqwest::Method::POST,
        &format!("/v1/jobs/{id}/reject"),
        body(&req)?,
    )?;
    decided(v, id, output)
}

fn decided(v: serde_json::Value, id: &str, output: JsonArg) -> Result<()> {
    if output.json {
        println!("{v}");
        return Ok(());
    }
    let d: JobDecided = typed(v, "approval")?;
    match d.approval.state.as_deref() {
        Some("rejected") => println!("job {id} rejected; it will not run"),
        _ => println!("job {id} approved; it is {}", clean(&d.state)),
    }
    Ok(())
}
