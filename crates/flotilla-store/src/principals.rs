//! Principals (people and service accounts that call the admin API with their own token), their
//! roles per tenant, and per-tenant settings.
//!
//! A principal's token is `flt_pat_` followed by 32 random bytes, hex; only its SHA-256 is stored,
//! like enrollment tokens and client credentials. A revoked principal keeps its row: its name is
//! never reused (the audit log names it) and its token is refused from then on. Every creation,
//! revocation and settings change writes its audit entry in the same transaction.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::{Result, StoreError};
use crate::{Store, check_tenant, new_secret, now_ms, sha256_hex};

/// Prefix of principal tokens (personal access tokens): makes a leaked one recognisable.
pub const PRINCIPAL_TOKEN_PREFIX: &str = "flt_pat_";
/// Longest principal name, characters.
pub const MAX_PRINCIPAL_NAME_CHARS: usize = 64;
/// Most role grants one principal may hold.
pub const MAX_ROLES_PER_PRINCIPAL: usize = 64;
/// The tenant of an installation-wide grant (an `admin` holds it).
pub const ALL_TENANTS: &str = "*";
/// The roles a principal can hold, as stored.
pub const ROLE_NAMES: [&str; 6] = [
    "admin",
    "operator",
    "scientist",
    "approver",
    "auditor",
    "viewer",
];

/// A person or a service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person.
    Person,
    /// A service account (CI, a pipeline).
    Service,
}

impl PrincipalKind {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Person => "person",
            PrincipalKind::Service => "service",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "person" => Ok(PrincipalKind::Person),
            "service" => Ok(PrincipalKind::Service),
            other => Err(StoreError::Corrupt(format!("principal kind {other:?}"))),
        }
    }
}

/// One role in one tenant (`*`: every tenant).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoleGrant {
    /// The tenant, or [`ALL_TENANTS`].
    pub tenant: String,
    /// One of [`ROLE_NAMES`].
    pub role: String,
}

/// A principal as stored (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    /// Database id.
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// Person or service account.
    pub kind: PrincipalKind,
    /// Its roles, sorted.
    pub roles: Vec<RoleGrant>,
    /// Who created it (an audit actor name).
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: i64,
    /// Whether its token is refused.
    pub revoked: bool,
    /// When it was revoked, Unix ms.
    pub revoked_at_ms: Option<i64>,
}

/// A new principal and its token (shown once, never stored).
#[derive(Debug, Clone)]
pub struct NewPrincipal {
    /// The principal.
    pub principal: PrincipalRecord,
    /// Its token, `flt_pat_…`.
    pub token: String,
}

/// A tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettings {
    /// The tenant.
    pub tenant: String,
    /// Whether a job submitted in it waits for an approver (four eyes).
    pub require_approval: bool,
    /// Who changed them last (`None`: never set, the defaults).
    pub updated_by: Option<String>,
    /// When, Unix ms.
    pub updated_at_ms: Option<i64>,
}

/// A principal's name: 1 to `MAX_PRINCIPAL_NAME_CHARS` ASCII letters, digits and `. _ - @`
/// (an e-mail address fits), not starting with `flt_` (a pasted token is not a name).
pub fn check_principal_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    let n = name.chars().count();
    if n == 0 || n > MAX_PRINCIPAL_NAME_CHARS || !name.chars().all(ok_char) {
        return Err(StoreError::InvalidArgument(format!(
            "principal name {:?}: use 1 to {MAX_PRINCIPAL_NAME_CHARS} ASCII letters, digits and . _ - @",
            name.chars().take(80).collect::<String>()
        )));
    }
    if name.starts_with("flt_") {
        return Err(StoreError::InvalidArgument(
            "principal name: must not start with flt_ (that looks like a token)".into(),
        ));
    }
    Ok(())
}

/// Checks a grant: a known role, a valid tenant or `*`.
fn check_grant(g: &RoleGrant) -> Result<()> {
    if !ROLE_NAMES.contains(&g.role.as_str()) {
        return Err(StoreError::InvalidArgument(format!(
            "role {:?}: expected one of {}",
            g.role.chars().take(32).collect::<String>(),
            ROLE_NAMES.join(", ")
        )));
    }
    if g.tenant != ALL_TENANTS {
        check_tenant(&g.tenant)?;
    }
    Ok(())
}

const PRINCIPAL_COLUMNS: &str = "id, name, kind, created_by, created_at_ms, revoked, revoked_at_ms";

fn principal_from_row(row: &AnyRow, roles: Vec<RoleGrant>) -> Result<PrincipalRecord> {
    let id: i64 = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let revoked: i64 = row.try_get("revoked")?;
    Ok(PrincipalRecord {
        id: crate::from_db(id, "principal id")?,
        name: row.try_get("name")?,
        kind: PrincipalKind::parse(&kind)?,
        roles,
        created_by: row.try_get("created_by")?,
        created_at_ms: row.try_get("created_at_ms")?,
        revoked: revoked != 0,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
    })
}

impl Store {
    /// Creates a principal with `roles` and a fresh token (only its SHA-256 is stored), recording
    /// it in the audit log as done by `actor`, in one transaction. A taken name is
    /// [`StoreError::PrincipalExists`] (revoked principals' names stay taken).
    pub async fn create_principal(
        &self,
        name: &str,
        kind: PrincipalKind,
        roles: &[RoleGrant],
        actor: &str,
    ) -> Result<NewPrincipal> {
        check_principal_name(name)?;
        if roles.is_empty() || roles.len() > MAX_ROLES_PER_PRINCIPAL {
            return Err(StoreError::InvalidArgument(format!(
                "a principal needs 1 to {MAX_ROLES_PER_PRINCIPAL} roles"
            )));
        }
        let mut roles = roles.to_vec();
        for g in &roles {
            check_grant(g)?;
        }
        roles.sort();
        roles.dedup();
        let token = new_secret(PRINCIPAL_TOKEN_PREFIX)?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let taken = sqlx::query("SELECT id FROM principals WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::PrincipalExists(name.to_owned()));
        }
        let row = sqlx::query(&format!(
            "INSERT INTO principals (name, kind, token_sha256, created_by, created_at_ms, revoked) \
             VALUES ($1, $2, $3, $4, $5, 0) RETURNING {PRINCIPAL_COLUMNS}"
        ))
        .bind(name)
        .bind(kind.as_str())
        .bind(sha256_hex(&token))
        .bind(actor)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let principal = principal_from_row(&row, roles.clone())?;
        for g in &roles {
            sqlx::query(
                "INSERT INTO principal_roles (principal_id, tenant, role) VALUES ($1, $2, $3)",
            )
            .bind(crate::to_db(principal.id, "principal id")?)
            .bind(&g.tenant)
            .bind(&g.role)
            .execute(&mut *tx)
            .await?;
        }
        let granted: Vec<String> = roles
            .iter()
            .map(|g| format!("{}:{}", g.tenant, g.role))
            .collect();
        let details = serde_json::json!({ "kind": kind.as_str(), "roles": granted });
        crate::principals::audit_record(
            &mut tx,
            actor,
            None,
            "principal.create",
            &format!("principal:{name}"),
            details,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(NewPrincipal { principal, token })
    }

    /// The principal a token belongs to, revoked or not (the caller refuses a revoked one), or
    /// `None` for an unknown token. Read-only.
    pub async fn principal_by_token(&self, token: &str) -> Result<Option<PrincipalRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE token_sha256 = $1"
        ))
        .bind(sha256_hex(token))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let id: i64 = row.try_get("id")?;
                let roles = self.roles_of(id).await?;
                Ok(Some(principal_from_row(&row, roles)?))
            }
        }
    }

    async fn roles_of(&self, id: i64) -> Result<Vec<RoleGrant>> {
        let rows = sqlx::query(
            "SELECT tenant, role FROM principal_roles WHERE principal_id = $1 ORDER BY tenant, role",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RoleGrant {
                    tenant: r.try_get("tenant")?,
                    role: r.try_get("role")?,
                })
            })
            .collect()
    }

    /// Every principal, revoked ones included, in creation order.
    pub async fn list_principals(&self) -> Result<Vec<PrincipalRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        let grants = sqlx::query(
            "SELECT principal_id, tenant, role FROM principal_roles ORDER BY tenant, role",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_id: std::collections::HashMap<i64, Vec<RoleGrant>> = Default::default();
        for g in &grants {
            by_id
                .entry(g.try_get("principal_id")?)
                .or_default()
                .push(RoleGrant {
                    tenant: g.try_get("tenant")?,
                    role: g.try_get("role")?,
                });
        }
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                principal_from_row(r, by_id.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    /// Revokes the principal `name` for good (its token is refused from then on), recording it in
    /// the audit log as done by `actor`, in one transaction. Revoking twice is not an error (and
    /// is not recorded twice); an unknown name is [`StoreError::PrincipalNotFound`].
    pub async fn revoke_principal(&self, name: &str, actor: &str) -> Result<PrincipalRecord> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE principals SET revoked = 1, revoked_at_ms = $2 WHERE name = $1 AND revoked = 0",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::PrincipalNotFound(name.to_owned()))?;
        if done.rows_affected() == 1 {
            crate::principals::audit_record(
                &mut tx,
                actor,
                None,
                "principal.revoke",
                &format!("principal:{name}"),
                serde_json::json!({}),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        let id: i64 = row.try_get("id")?;
        let roles = self.roles_of(id).await?;
        principal_from_row(&row, roles)
    }

    /// A tenant's settings (the defaults if never set).
    pub async fn tenant_settings(&self, tenant: &str) -> Result<TenantSettings> {
        let row = sqlx::query(
            "SELECT require_approval, updated_by, updated_at_ms FROM tenant_settings WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => TenantSettings {
                tenant: tenant.to_owned(),
                require_approval: false,
                updated_by: None,
                updated_at_ms: None,
            },
            Some(r) => {
                let req: i64 = r.try_get("require_approval")?;
                TenantSettings {
                    tenant: tenant.to_owned(),
                    require_approval: req != 0,
                    updated_by: r.try_get("updated_by")?,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                }
            }
        })
    }

    /// Sets whether jobs of `tenant` need approval, recording it in the audit log as done by
    /// `actor`, in one transaction. Applies to jobs submitted from then on.
    pub async fn set_tenant_settings(
        &self,
        tenant: &str,
        require_approval: bool,
        actor: &str,
    ) -> Result<TenantSettings> {
        check_tenant(tenant)?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        // Portable upsert: both backends support ON CONFLICT … DO UPDATE.
        sqlx::query(
            "INSERT INTO tenant_settings (tenant, require_approval, updated_by, updated_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO UPDATE SET \
             require_approval = excluded.require_approval, updated_by = excluded.updated_by, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(tenant)
        .bind(i64::from(require_approval))
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        crate::principals::audit_record(
            &mut tx,
            actor,
            Some(tenant),
            "tenant.settings",
            &format!("tenant:{tenant}"),
            serde_json::json!({ "require_approval": require_approval }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(TenantSettings {
            tenant: tenant.to_owned(),
            require_approval,
            updated_by: Some(actor.to_owned()),
            updated_at_ms: Some(now),
        })
    }
}

/// Appends one audit entry inside `tx` (so the change and its entry commit together).
pub(crate) async fn audit_record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    resource: &str,
    details: serde_json::Value,
    at_ms: i64,
) -> Result<()> {
    let mut ev = crate::AuditEvent::new(actor, action, resource).details(details);
    if let Some(t) = tenant {
        ev = ev.tenant(t);
    }
    crate::audit::append(tx, &ev, at_ms).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["alice", "ci-bot", "a.b@example.org", "x_1"] {
            check_principal_name(ok).unwrap();
        }
        for bad in ["", "a b", "flt_pat_abc", "é", &"a".repeat(65)] {
            assert!(check_principal_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_are_checked() {
        let g = |t: &str, r: &str| RoleGrant {
            tenant: t.into(),
            role: r.into(),
        };
        check_grant(&g("hospital", "scientist")).unwrap();
        check_grant(&g("*", "admin")).unwrap();
        assert!(check_grant(&g("hospital", "root")).is_err());
        assert!(check_grant(&g("a b", "viewer")).is_err());
    }
}
