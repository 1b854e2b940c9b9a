//! The audit log's answers: `GET /v1/audit` and `GET /v1/audit/verify`.

use serde::{Deserialize, Serialize};

/// One audit entry as the API shows it (the stored row, hash included, so an export can be
/// verified offline: see `docs/audit.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntryView {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// When it was written, Unix milliseconds.
    pub at_ms: i64,
    /// Who: `admin` (the bootstrap token), `principal:<name>`, `client:<id>`, `system`, …
    pub actor: String,
    /// The tenant of the resource, if it has one.
    pub tenant: Option<String>,
    /// What happened, e.g. `client.enrolled`, `job.cancelled`, `dp.charge`.
    pub action: String,
    /// What it happened to, e.g. `job:7`, `client:3`.
    pub resource: String,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    /// Free-form facts of the event (JSON).
    pub details: serde_json::Value,
    /// The details exactly as stored and hashed (what an offline verifier hashes).
    pub details_json: String,
    /// The previous entry's hash (hex; 64 zeros before the first entry).
    pub prev_hash: String,
    /// SHA-256(previous hash ‖ canonical entry), hex.
    pub hash: String,
}

/// A page of `GET /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditPage {
    /// The entries the caller may see, in seq order.
    pub entries: Vec<AuditEntryView>,
    /// Pass as `since_seq` for the next page; absent when this page reached the end of the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_since_seq: Option<u64>,
}

/// The last signed checkpoint found in the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditCheckpointView {
    /// The seq whose hash is signed.
    pub seq: u64,
    /// That entry's hash, hex.
    pub hash: String,
    /// The Ed25519 public key that signed it, hex.
    pub public_key: String,
}

/// What `GET /v1/audit/verify` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditVerification {
    /// Whether the chain is intact.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// The seq of the last entry in the chain (0 for an empty log).
    pub head_seq: u64,
    /// Its hash, hex.
    pub head_hash: String,
    /// The last signed checkpoint, if any.
    pub last_checkpoint: Option<AuditCheckpointView>,
    /// The first problem, when not ok.
    pub problem: Option<AuditProblem>,
}

/// The first thing wrong with the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditProblem {
    /// The first bad (or first missing) seq.
    pub seq: u64,
    /// `altered`, `removed`, `reordered`, `truncated` or `bad_checkpoint`.
    pub kind: String,
    /// One line for people: "audit entry 17 was altered: …".
    pub message: String,
}
