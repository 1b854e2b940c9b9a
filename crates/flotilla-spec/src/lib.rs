//! Flotilla's one configuration vocabulary: the **job part** shared by a coordinator's job spec
//! and a simulator's scenario file, parsed and validated once.
//!
//! A scenario file is a job spec plus simulation-only sections. Every section means the same in
//! both files, and every default and bound lives here (ceilings from `flotilla_core::limits`):
//!
//! | section | keys | file |
//! |---|---|---|
//! | top level | `name`, `tenant`, `seed`, `rounds`, `clients_per_round` | both |
//! | `[model]` | `kind`, `dataset` *or* `input_shape` + `num_classes`, `hidden`, `embed`; *or* `initial` alone | both (`initial`: job only) |
//! | `[train]` | `local_epochs`, `batch_size`, `learning_rate`, `max_grad_norm` | both |
//! | `[round]` | `min_clients`, `over_selection`, `min_report_fraction`, `deadline_seconds`, `max_attempts`, `selection_window_ms`, `retry_after_ms`, `checkin_ttl_seconds` | both |
//! | `[strategy]`, `[privacy]`, `[secagg]` | see `flotilla_core::strategy`, `flotilla_core::dp`, [`SecAggConfig`] | both |
//! | `[compression]` | `kind` (`none`, `quantize`, `topk`), `bits`, `block`, `fraction`; see [`compression`] | simulation (the coordinator refuses it, naming it, until its upload carries compressed updates) |
//! | `[eligibility]`, `[evaluation]` | `min_samples`; `dataset`, `federated_every`, `federated_clients` | both (the simulator ignores them) |
//! | `[registry]`, `[release]` | `name`; the `flotilla_registry::Gate` fields (`min_accuracy`, `max_regression_points`, `max_cohort_regression_points`, `max_epsilon`, `require_secagg`, `min_eval_clients`, `auto_staging`) | both (the simulator ignores them) |
//! | top level | `clients`, `eval_every` | simulation only |
//! | `[data]`, `[partition]`, `[simulation]`, `[attack]` | see `flotilla-sim` | simulation only |
//!
//! The simulation-only keys are listed in [`SIMULATION_ONLY`]. The coordinator refuses them naming
//! them ([`JobConfig::from_job_toml`]); `flotilla job submit` removes them from a scenario first
//! ([`strip_simulation_only`]), so `flotilla job submit examples/digits.toml` submits the scenario's
//! job part unchanged. A key that moved is refused with its new place ([`moved`]).

#![forbid(unsafe_code)]

mod checks;
pub mod compression;
mod job;
mod model;
pub mod moved;
pub mod raw;
mod release;
mod round;
mod secagg;
mod train;

pub use compression::Compression;
pub use job::{
    DEFAULT_MIN_SAMPLES, DEFAULT_TENANT, FederatedEvaluation, JobConfig,
    MAX_FEDERATED_EVAL_CLIENTS, read,
};
pub use model::{InitialModel, MAX_INITIAL_PATH_LEN, ModelConfig, ModelSource};
pub use round::RoundConfig;
pub use round::{
    DEFAULT_CHECKIN_TTL_SECONDS, DEFAULT_DEADLINE_SECONDS, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MIN_REPORT_FRACTION, DEFAULT_OVER_SELECTION, DEFAULT_RETRY_AFTER_MS,
    DEFAULT_SELECTION_WINDOW_MS,
};
pub use secagg::SecAggConfig;
pub use train::TrainConfig;
pub use train::{DEFAULT_BATCH_SIZE, DEFAULT_LOCAL_EPOCHS};

use flotilla_core::config_toml::TomlError;

/// A value that is out of range or inconsistent. Displays as `field: message`, the field dotted as
/// in the file (`train.learning_rate: must be ≤ 1e2, got 1e300`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The offending key, dotted (`model.kind`), or `toml` for a syntax error.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl SpecError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<flotilla_core::ConfigError> for SpecError {
    fn from(e: flotilla_core::ConfigError) -> Self {
        Self::new(e.field, e.message)
    }
}

/// Why a file was refused: it is not TOML of the expected shape (with a position), or a value is
/// out of range (naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not TOML, an unknown, misplaced or moved key, or a simulation-only section in a job.
    #[error(transparent)]
    Syntax(#[from] TomlError),
    /// A value out of range or inconsistent with another.
    #[error(transparent)]
    Invalid(#[from] SpecError),
}

/// The keys only a scenario file may have: top-level keys and tables the simulator adds to the job
/// part. A coordinator job refuses them; `flotilla job submit` removes them.
pub const SIMULATION_ONLY: &[&str] = &[
    "clients",
    "eval_every",
    "data",
    "partition",
    "simulation",
    "attack",
];

/// The job part of a scenario (or job) file: `text` without its [`SIMULATION_ONLY`] keys, and the
/// keys removed (empty for a plain job file, which is then returned unchanged). The job part is
/// validated first, so the errors carry the positions of the original file.
pub fn strip_simulation_only(text: &str) -> Result<(String, Vec<&'static str>), ParseError> {
    let doc = read(text)?;
    JobConfig::from_raw(&doc)?;
    let removed = moved::simulation_keys(&doc);
    if removed.is_empty() {
        return Ok((text.to_owned(), removed));
    }
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| SpecError::new("toml", e.to_string()))?;
    for key in &removed {
        table.remove(*key);
    }
    let job = toml::to_string(&table).map_err(|e| SpecError::new("toml", e.to_string()))?;
    Ok((job, removed))
}
