#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Flotilla's policies as code, in [Cedar](https://www.cedarpolicy.com): the schema of what policies
//! see (jobs, clients at check-in, principals, every admin action), [`validate`] with the line and
//! column of the first error, and decisions. Sans-IO: no files, clocks or network; the coordinator
//! stores the text, holds the [`PolicySet`] and asks it.
//!
//! # Semantics: guardrails on top of the roles
//!
//! Roles decide what a principal may do; policies can only take permissions away. A policy file is
//! therefore made of `forbid` rules (a `permit` is refused by [`validate`]: under Cedar's default
//! deny it would have to list everything the roles allow, and a forgotten permit would lock
//! everyone out). Each decision is evaluated against the file plus one built-in
//! `permit (principal, action, resource)` (id [`BASELINE_ID`]), so a request is denied exactly when
//! some `forbid` matches, and the refusal names that policy by its `@id("…")`, which every policy
//! must have. A policy that cannot be evaluated for a request (a runtime error: Cedar would skip
//! it) denies it too: a guardrail fails closed.
//!
//! ```
//! let set = flotilla_policy::validate(r#"
//!     @id("hospital-needs-secagg")
//!     forbid (principal, action == Flotilla::Action::"admit_job", resource)
//!     when { resource.tenant == "hospital" && !resource.secagg };
//! "#).unwrap();
//! let job = flotilla_policy::JobAttrs { tenant: "hospital".into(), ..Default::default() };
//! let who = flotilla_policy::Caller { name: "alice".into(), ..Default::default() };
//! let denied = set.admit_job(&who, &job).unwrap_err();
//! assert_eq!(denied.policy, "hospital-needs-secagg");
//! ```

mod entities;
mod location;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityUid, Policy, PolicyId,
    Request, ValidationMode, Validator,
};
use miette::Diagnostic;

pub use entities::{
    Caller, ClientAttrs, JobAttrs, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES, check_attributes,
};
pub use schema::{ADMIN_ACTIONS, ADMIT_JOB, PARTICIPATE, schema_text};

/// Largest policy file, bytes.
pub const MAX_POLICY_BYTES: usize = 256 << 10;
/// Most policies in one file.
pub const MAX_POLICIES: usize = 1000;
/// Longest `@id`, bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The id of the built-in permit every decision adds (ids starting with `flotilla.` are reserved).
pub const BASELINE_ID: &str = "flotilla.roles";

/// A policy file that is not valid: where (1-based line and column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct PolicyError {
    /// 1-based line of the first error.
    pub line: usize,
    /// 1-based column (characters) of the first error.
    pub column: usize,
    /// One line: what is wrong and, where Cedar says, what to do.
    pub message: String,
}

/// Why a request was denied: the `@id` of the policy that forbade it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match error {
    None => format!("policy {policy}"),
    Some(e) => format!("policy {policy} (could not be evaluated, so it denies: {e})"),
})]
pub struct Denial {
    /// The denying policy's `@id` (or a `flotilla.…` id for an internal failure).
    pub policy: String,
    /// Set when the policy failed to evaluate for this request rather than matched.
    pub error: Option<String>,
}

/// A validated policy file, ready for decisions. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// The file's policies under their `@id`s, plus the baseline permit.
    set: cedar_policy::PolicySet,
    /// The `@id`s in file order (a refusal names the first matching one).
    ids: Vec<String>,
    /// Actions some policy can apply to (`None`: a policy applies to any action): a decision for
    /// any other action is an allow without evaluating anything (check-in is hot).
    actions: Option<BTreeSet<String>>,
}

fn at(text: &str, offset: usize, message: impl Into<String>) -> PolicyError {
    let (line, column) = location::line_col(text, offset);
    let message: String = message.into();
    PolicyError {
        line,
        column,
        message: message.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// The first located error of a Cedar diagnostic, with its help.
fn diagnostic(text: &str, d: &dyn Diagnostic, fallback: usize) -> PolicyError {
    let offset = d
        .labels()
        .and_then(|mut l| l.next())
        .map_or(fallback, |l| l.offset());
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message = format!("{message} ({help})");
    }
    at(text, offset, message)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/ ".contains(c))
}

/// Parses `text` as a Flotilla policy file and validates it against the schema ([`schema_text`]):
/// Cedar syntax, every policy a `forbid` with a unique `@id("…")` (letters, digits and `. _ - : /`
/// or space, at most [`MAX_ID_BYTES`]), no templates, and strict validation (names, types,
/// `has` before optional attributes and tags). The error is the first one, located.
pub fn validate(text: &str) -> Result<PolicySet, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(at(
            text,
            0,
            format!(
                "the policy file is {} bytes, at most {MAX_POLICY_BYTES}",
                text.len()
            ),
        ));
    }
    // Cedar's own parser, for the policies' locations (the public API does not expose them).
    let parsed = cedar_policy_core::parser::parse_policyset(text).map_err(|e| {
        let d: &dyn Diagnostic = &e;
        diagnostic(text, d, 0)
    })?;
    let mut located: Vec<_> = parsed
        .all_templates()
        .map(|t| (t.loc().map_or(0, |l| l.span.offset()), t))
        .collect();
    located.sort_by_key(|(offset, _)| *offset);
    if located.len() > MAX_POLICIES {
        return Err(at(
            text,
            located[MAX_POLICIES].0,
            format!("more than {MAX_POLICIES} policies in one file"),
        ));
    }
    let mut ids = Vec::with_capacity(located.len());
    let mut by_cedar_id = std::collections::HashMap::new();
    for (offset, t) in &located {
        let id = t
            .annotation(
                &"id"
                    .parse()
                    .map_err(|_| at(text, 0, "internal: bad annotation key"))?,
            )
            .map(|a| a.val.to_string());
        let Some(id) = id else {
            return Err(at(
                text,
                *offset,
                "this policy has no @id(\"…\") annotation; name every policy, so a refusal can say which one denied",
            ));
        };
        if !valid_id(&id) {
            return Err(at(
                text,
                *offset,
                format!(
                    "@id({id:?}): use 1..={MAX_ID_BYTES} letters, digits, spaces and . _ - : /"
                ),
            ));
        }
        if id.starts_with("flotilla.") {
            return Err(at(
                text,
                *offset,
                format!("@id({id:?}): ids starting with \"flotilla.\" are reserved"),
            ));
        }
        if ids.contains(&id) {
            return Err(at(
                text,
                *offset,
                format!("@id({id:?}) is used twice; policy ids must be unique"),
            ));
        }
        if t.slots().count() != 0 {
            return Err(at(
                text,
                *offset,
                "templates (?principal, ?resource) are not supported; write the entity",
            ));
        }
        if t.effect() != cedar_policy_core::ast::Effect::Forbid {
            return Err(at(
                text,
                *offset,
                format!(
                    "policy {id:?} is a permit; Flotilla policies are guardrails on top of the roles, so write `forbid … unless {{ … }}` instead"
                ),
            ));
        }
        by_cedar_id.insert(t.id().to_string(), (id.clone(), *offset));
        ids.push(id);
    }
    let cedar = cedar_policy::PolicySet::from_str(text).map_err(|e| {
        let d: &dyn Diagnostic = &e;
        diagnostic(text, d, 0)
    })?;
    let mut set = cedar_policy::PolicySet::new();
    let mut actions = Some(BTreeSet::new());
    for p in cedar.policies() {
        let Some((id, offset)) = by_cedar_id.get(p.id().to_string().as_str()) else {
            return Err(at(text, 0, "internal: the two parses of the file disagree"));
        };
        match p.action_constraint() {
            ActionConstraint::Any => actions = None,
            ActionConstraint::Eq(a) => add_action(&mut actions, &a),
            ActionConstraint::In(list) => list.iter().for_each(|a| add_action(&mut actions, a)),
        }
        set.add(p.new_id(PolicyId::new(id)))
            .map_err(|e| at(text, *offset, e.to_string()))?;
    }
    let result = Validator::new(schema::schema().clone()).validate(&set, ValidationMode::Strict);
    if let Some(e) = result.validation_errors().next() {
        // A located error's policy is one of the file's; fall back to that policy's start.
        let fallback = ids
            .iter()
            .position(|i| *i == e.policy_id().to_string())
            .map_or(0, |n| located[n].0);
        let d: &dyn Diagnostic = e;
        return Err(diagnostic(text, d, fallback));
    }
    let baseline = Policy::parse(
        Some(PolicyId::new(BASELINE_ID)),
        "permit (principal, action, resource);",
    )
    .map_err(|e| at(text, 0, format!("internal: {e}")))?;
    set.add(baseline)
        .map_err(|e| at(text, 0, format!("internal: {e}")))?;
    Ok(PolicySet { set, ids, actions })
}

fn add_action(actions: &mut Option<BTreeSet<String>>, a: &EntityUid) {
    if let Some(set) = actions {
        set.insert(a.id().unescaped().to_owned());
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        Self::empty()
    }
}

impl PolicySet {
    /// No policies: everything the roles allow is allowed.
    pub fn empty() -> Self {
        PolicySet {
            set: cedar_policy::PolicySet::new(),
            ids: Vec::new(),
            actions: Some(BTreeSet::new()),
        }
    }

    /// The policies' `@id`s, in file order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Whether the file had no policy.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether some policy can apply to `action` (otherwise its decisions are allows, unevaluated).
    pub fn governs(&self, action: &str) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(action))
    }

    /// Job admission: may `caller` submit `job`?
    pub fn admit_job(&self, caller: &Caller, job: &JobAttrs) -> Result<(), Denial> {
        if !self.governs(ADMIT_JOB) {
            return Ok(());
        }
        let job_entity = job.entity("new").map_err(internal)?;
        let job_uid = job_entity.uid();
        let principal = caller.entity().map_err(internal)?;
        let p = principal.uid();
        self.decide(p, ADMIT_JOB, job_uid, vec![principal, job_entity])
    }

    /// Client eligibility: may `client` get work of job `job_id` (`job` its attributes)?
    pub fn participate(
        &self,
        client: &ClientAttrs,
        job_id: u64,
        job: &JobAttrs,
    ) -> Result<(), Denial> {
        if !self.governs(PARTICIPATE) {
            return Ok(());
        }
        let job_entity = job.entity(&job_id.to_string()).map_err(internal)?;
        let job_uid = job_entity.uid();
        let principal = client.entity().map_err(internal)?;
        let p = principal.uid();
        self.decide(p, PARTICIPATE, job_uid, vec![principal, job_entity])
    }

    /// An admin action (one of [`ADMIN_ACTIONS`]) by `caller` in `tenant` (none: an action on the
    /// installation), on top of the roles that already allowed it.
    pub fn admin(&self, caller: &Caller, action: &str, tenant: Option<&str>) -> Result<(), Denial> {
        if !self.governs(action) {
            return Ok(());
        }
        let resource = match tenant {
            Some(t) => entities::uid("Tenant", t),
            None => entities::uid("Installation", "flotilla"),
        };
        let principal = caller.entity().map_err(internal)?;
        let p = principal.uid();
        self.decide(p, action, resource, vec![principal])
    }

    fn decide(
        &self,
        principal: EntityUid,
        action: &str,
        resource: EntityUid,
        entities: Vec<Entity>,
    ) -> Result<(), Denial> {
        let schema = schema::schema();
        let entities =
            Entities::from_entities(entities, Some(schema)).map_err(|e| internal(e.to_string()))?;
        let action = EntityUid::from_type_name_and_id(
            "Flotilla::Action"
                .parse()
                .map_err(|_| internal("action type"))?,
            cedar_policy::EntityId::new(action),
        );
        let request = Request::new(principal, action, resource, Context::empty(), Some(schema))
            .map_err(|e| internal(e.to_string()))?;
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        // Cedar skips a policy that errors; a forbid that could not be evaluated denies instead.
        if let Some(e) = response.diagnostics().errors().next() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            return Err(Denial {
                policy: pe.policy_id().to_string(),
                error: Some(pe.inner().to_string()),
            });
        }
        if response.decision() == Decision::Allow {
            return Ok(());
        }
        let reasons: BTreeSet<&str> = response
            .diagnostics()
            .reason()
            .map(AsRef::<str>::as_ref)
            .collect();
        let policy = self
            .ids
            .iter()
            .find(|id| reasons.contains(id.as_str()))
            .cloned()
            .unwrap_or_else(|| "flotilla.default-deny".to_owned());
        Err(Denial {
            policy,
            error: None,
        })
    }
}

/// A decision that could not be made (a bug here, not the caller's input): denied, failing closed.
fn internal(e: impl Into<String>) -> Denial {
    Denial {
        policy: "flotilla.internal".to_owned(),
        error: Some(e.into()),
    }
}
