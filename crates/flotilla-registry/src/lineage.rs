//! A version's stage and lineage.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a version stands: `candidate → staging → production → archived`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Just registered.
    Candidate,
    /// Passed the gate, not yet served.
    Staging,
    /// Served to clients (at most one version per model).
    Production,
    /// No longer served; kept for lineage and rollback.
    Archived,
}

/// An unknown stage name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage {0:?}: use candidate, staging, production or archived")]
pub struct StageError(pub String);

impl Stage {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Candidate => "candidate",
            Stage::Staging => "staging",
            Stage::Production => "production",
            Stage::Archived => "archived",
        }
    }

    /// Whether promoting to this stage runs the release gate (staging and production do).
    pub fn gated(self) -> bool {
        matches!(self, Stage::Staging | Stage::Production)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = StageError;
    fn from_str(s: &str) -> Result<Self, StageError> {
        match s {
            "candidate" => Ok(Stage::Candidate),
            "staging" => Ok(Stage::Staging),
            "production" => Ok(Stage::Production),
            "archived" => Ok(Stage::Archived),
            other => Err(StageError(other.chars().take(40).collect())),
        }
    }
}

/// Where a registered version came from: enough to reproduce it and to review it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Lineage {
    /// The tenant of the job (and of the model).
    pub tenant: String,
    /// The job that trained it.
    pub job_id: u64,
    /// The job's name.
    pub job_name: String,
    /// The committed round whose model this is.
    pub round: u64,
    /// Rounds the job was to run.
    pub rounds_total: u64,
    /// Hex SHA-256 of the job's spec as stored (canonical JSON).
    pub spec_sha256: String,
    /// The aggregation strategy, e.g. `fedavg`, `fedadam`, `trimmed_mean`.
    pub strategy: String,
    /// Whether the job ran under secure aggregation.
    pub secagg: bool,
    /// Clients whose updates each committed round aggregated, rounds 1 ..= `round`.
    pub participants: Vec<u64>,
    /// DP: ε spent by the job up to `round` (`None`: the job had no DP).
    pub epsilon: Option<f64>,
    /// DP: the δ of that ε.
    pub delta: Option<f64>,
    /// The coordinator's version that registered it (`flotilla --version`, with its git revision
    /// when known).
    pub code_version: String,
    /// The version registered before this one under the same name (its parent), if any.
    pub parent_version: Option<u64>,
}
