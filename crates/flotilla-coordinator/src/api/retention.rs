//! Bodies of the retention and erasure endpoints: `POST /v1/retention/run` and
//! `POST /v1/clients/{id}/forget`.

use serde::{Deserialize, Serialize};

pub use flotilla_store::{RetentionItem, RetentionKind, RetentionRules};

/// Body of `POST /v1/retention/run` (an empty body is a real run).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRunRequest {
    /// Only compute and return the plan; delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// An item of the plan that a real run did not delete, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SkippedItem {
    /// The item as planned.
    pub item: RetentionItem,
    /// Why it stayed.
    pub why: String,
}

/// Answer of `POST /v1/retention/run`: the plan (dry run) or what was deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetentionReport {
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// The time the plan was computed for, Unix ms.
    pub computed_at_ms: i64,
    /// The server's rules (`flotilla server --retain-…`); unset rules keep everything.
    pub rules: RetentionRules,
    /// Dry run: everything the run would delete. Real run: everything it deleted.
    pub items: Vec<RetentionItem>,
    /// Real run: items of the plan it did not delete (a client seen again meanwhile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedItem>,
    /// Bytes of model blobs in `items`.
    pub bytes: u64,
    /// Real run: the audit entries that record the deletions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_seqs: Vec<u64>,
    /// Real run: blobs whose removal from the blob store failed after the commit (the next run
    /// retries them; their rounds already say they are deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blob_errors: Vec<String>,
}

/// Answer of `POST /v1/clients/{id}/forget`: what the erasure removed and what it kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientForgotten {
    /// The client.
    pub client_id: u64,
    /// Its tenant (now removed with the record).
    pub tenant: String,
    /// The name it had given itself, if any (now removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The fields of its record that were removed.
    pub removed: Vec<String>,
    /// Committed rounds whose participant list named it: its id there is now `0`.
    pub rounds_rewritten: u64,
    /// What was kept, and why, one sentence each.
    pub kept: Vec<String>,
    /// The audit entry that records the erasure.
    pub audit_seq: u64,
}
