//! Typed errors of the simulator. Each one displays as a single line.

use thiserror::Error;

/// A scenario that cannot be read or is not valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {message}")]
    Read {
        /// The path given.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Syntax {
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// The parser's message (it names the key).
        message: String,
    },
    /// A value is out of range or unknown.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, with its table (`partition.alpha`).
        field: String,
        /// What is wrong and what is valid.
        message: String,
    },
}

/// Why a simulation could not run to the end.
#[derive(Debug, Error)]
pub enum SimError {
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The dataset could not be loaded (the message names the command to fetch it).
    #[error(transparent)]
    Data(#[from] flotilla_data::DataError),
    /// The training set could not be partitioned as asked.
    #[error("partition: {0}")]
    Partition(#[from] flotilla_data::PartitionError),
    /// The model could not be built or trained.
    #[error("model: {0}")]
    Model(#[from] flotilla_ml::TrainerError),
    /// The round policy derived from the scenario is invalid.
    #[error(transparent)]
    Config(#[from] flotilla_core::ConfigError),
    /// The job failed (for example, too many dropouts for too long).
    #[error("job failed: {0}")]
    JobFailed(String),
}
