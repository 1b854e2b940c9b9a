//! What a decision is about, as plain Rust values ([`JobAttrs`], [`ClientAttrs`], [`Caller`]), and
//! their Cedar entities. The coordinator fills these from its job spec and the check-in; this crate
//! knows neither.

use std::collections::BTreeMap;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

/// Most attributes one check-in may announce.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key, bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
/// Longest attribute value, bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 256;

/// The attributes of a job that policies see (entity `Flotilla::Job`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobAttrs {
    /// The job's tenant.
    pub tenant: String,
    /// The job's name.
    pub name: String,
    /// Rounds to commit.
    pub rounds: u64,
    /// Reports for a full round.
    pub clients_per_round: u64,
    /// Live clients needed before a round starts.
    pub min_clients: u64,
    /// `eligibility.min_samples`.
    pub min_samples: u64,
    /// `train.local_epochs`.
    pub local_epochs: u64,
    /// `model.kind` (`custom` for a model given by `[model] initial`).
    pub model_kind: String,
    /// The strategy's name (`fedavg`, …).
    pub strategy: String,
    /// The job has `[secagg]`.
    pub secagg: bool,
    /// The job has `[privacy]`.
    pub dp: bool,
    /// `privacy.max_epsilon`, if the job has a budget. Policies see it as a Cedar `decimal` rounded
    /// up to 4 decimals (a guardrail must not let 8.00001 pass as 8).
    pub max_epsilon: Option<f64>,
    /// The job has `[evaluation]`.
    pub evaluation: bool,
}

/// A client at check-in (entity `Flotilla::Client`): its tenant, `num_samples` and the attributes
/// it announced ([`check_attributes`] first: this type trusts nothing but does not bound sizes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientAttrs {
    /// The client's id (its entity id).
    pub id: u64,
    /// The client's tenant.
    pub tenant: String,
    /// `num_samples` of the check-in.
    pub samples: u64,
    /// The announced attributes (`platform`, `app_version`, `charging`, `unmetered`, `idle`,
    /// `region`, `labels`, and any others, which policies read as tags).
    pub attributes: BTreeMap<String, String>,
}

/// Who calls the admin API (entity `Flotilla::Principal`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Caller {
    /// The principal's name (`admin` for the bootstrap admin token).
    pub name: String,
    /// The roles it holds in the tenant the request is about (`admin` for an installation-wide
    /// admin).
    pub roles: Vec<String>,
    /// The tenants it holds any role in (its entity's parents).
    pub tenants: Vec<String>,
}

/// Checks announced attributes against the bounds ([`MAX_ATTRIBUTES`], [`MAX_ATTRIBUTE_KEY_BYTES`],
/// [`MAX_ATTRIBUTE_VALUE_BYTES`]; keys non-empty and without control characters): the one-line
/// reason of the first violation.
pub fn check_attributes<'a>(
    attrs: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "attributes: {} given, at most {MAX_ATTRIBUTES}",
            attrs.len()
        ));
    }
    for (k, v) in attrs {
        let shown: String = k.chars().take(32).collect();
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES || k.chars().any(char::is_control) {
            return Err(format!(
                "attributes: key {shown:?} must be 1..={MAX_ATTRIBUTE_KEY_BYTES} bytes without control characters"
            ));
        }
        if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(format!(
                "attributes: the value of {shown:?} is {} bytes, at most {MAX_ATTRIBUTE_VALUE_BYTES}",
                v.len()
            ));
        }
    }
    Ok(())
}

/// `Flotilla::<kind>::"<id>"`.
pub(crate) fn uid(kind: &str, id: &str) -> EntityUid {
    // The type names are this crate's constants; `EntityId` takes any string.
    let ty: EntityTypeName = format!("Flotilla::{kind}")
        .parse()
        .unwrap_or_else(|e| panic!("bad built-in entity type {kind}: {e}"));
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}

fn long(v: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX))
}

fn string(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

/// ε as a Cedar decimal literal: rounded up to 4 decimals, within decimal's range.
pub(crate) fn decimal_text(x: f64) -> String {
    // Cedar decimals are i64 ten-thousandths: ±922337203685477.5807.
    const MAX: f64 = 900_000_000_000_000.0;
    let x = if x.is_nan() { MAX } else { x.clamp(-MAX, MAX) };
    let up = (x * 10_000.0).ceil() / 10_000.0;
    format!("{up:.4}")
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

impl JobAttrs {
    pub(crate) fn entity(&self, id: &str) -> Result<Entity, String> {
        let mut attrs = vec![
            ("tenant", string(&self.tenant)),
            ("name", string(&self.name)),
            ("rounds", long(self.rounds)),
            ("clients_per_round", long(self.clients_per_round)),
            ("min_clients", long(self.min_clients)),
            ("min_samples", long(self.min_samples)),
            ("local_epochs", long(self.local_epochs)),
            ("model_kind", string(&self.model_kind)),
            ("strategy", string(&self.strategy)),
            ("secagg", RestrictedExpression::new_bool(self.secagg)),
            ("dp", RestrictedExpression::new_bool(self.dp)),
            (
                "evaluation",
                RestrictedExpression::new_bool(self.evaluation),
            ),
        ];
        if let Some(eps) = self.max_epsilon {
            attrs.push((
                "max_epsilon",
                RestrictedExpression::new_decimal(decimal_text(eps)),
            ));
        }
        Entity::new_with_tags(
            uid("Job", id),
            attrs.into_iter().map(|(k, v)| (k.to_owned(), v)),
            [uid("Tenant", &self.tenant)],
            [],
        )
        .map_err(|e| format!("job entity: {e}"))
    }
}

impl ClientAttrs {
    pub(crate) fn entity(&self) -> Result<Entity, String> {
        let a = &self.attributes;
        let text = |k: &str| string(a.get(k).map_or("", String::as_str));
        let labels = a
            .get("labels")
            .map(|l| {
                l.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let attrs = [
            ("tenant", string(&self.tenant)),
            ("platform", text("platform")),
            ("app_version", text("app_version")),
            (
                "charging",
                RestrictedExpression::new_bool(truthy(a.get("charging"))),
            ),
            (
                "unmetered",
                RestrictedExpression::new_bool(truthy(a.get("unmetered"))),
            ),
            (
                "idle",
                RestrictedExpression::new_bool(truthy(a.get("idle"))),
            ),
            ("region", text("region")),
            ("labels", RestrictedExpression::new_set(labels)),
            ("samples", long(self.samples)),
        ];
        Entity::new_with_tags(
            uid("Client", &self.id.to_string()),
            attrs.into_iter().map(|(k, v)| (k.to_owned(), v)),
            [uid("Tenant", &self.tenant)],
            a.iter().map(|(k, v)| (k.clone(), string(v))),
        )
        .map_err(|e| format!("client entity: {e}"))
    }
}

impl Caller {
    pub(crate) fn entity(&self) -> Result<Entity, String> {
        Entity::new_with_tags(
            uid("Principal", &self.name),
            [
                ("name".to_owned(), string(&self.name)),
                (
                    "roles".to_owned(),
                    RestrictedExpression::new_set(self.roles.iter().map(|r| string(r))),
                ),
            ],
            self.tenants.iter().map(|t| uid("Tenant", t)),
            [],
        )
        .map_err(|e| format!("principal entity: {e}"))
    }
}
