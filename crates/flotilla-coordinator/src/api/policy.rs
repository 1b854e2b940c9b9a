//! Bodies of the policy endpoints (`/v1/policies`). The request of `POST /v1/policies` is the
//! Cedar text itself.

use serde::{Deserialize, Serialize};

/// One applied policy version, as listed by `GET /v1/policies` (newest first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyVersionSummary {
    /// 1, 2, …; the highest is in force.
    pub version: u64,
    /// Hex SHA-256 of the text.
    pub sha256: String,
    /// Who applied it (the audit log's actor).
    pub applied_by: String,
    /// When, Unix ms.
    pub applied_at_ms: i64,
    /// Whether it is the version in force.
    pub current: bool,
}

/// Answer of `POST /v1/policies` and `GET /v1/policies/{version|current}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyVersionText {
    /// Version, hash, who, when and whether it is in force.
    #[serde(flatten)]
    pub summary: PolicyVersionSummary,
    /// The policies' `@id`s, in file order.
    pub policies: Vec<String>,
    /// The Cedar text.
    pub text: String,
}
