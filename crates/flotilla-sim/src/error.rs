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
    /// The TOML is malformed, has an unknown key or a value of the wrong type. Displays as
    /// `FILE:LINE:COLUMN: message` when read from a file, `line L, column C: message` otherwise.
    #[error("{}", path.as_deref().map_or_else(|| error.to_string(), |p| error.in_file(p)))]
    Syntax {
        /// The file, when the scenario was read from one.
        path: Option<String>,
        /// Where and what (it names the key, and the nearest known one for a typo).
        error: flotilla_core::config_toml::TomlError,
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
    /// A client's update could not be compressed (`[compression]`).
    #[error("compression: {0}")]
    Encode(#[from] flotilla_compress::EncodeError),
    /// A compressed update could not be decoded.
    #[error("compression: {0}")]
    Decode(#[from] flotilla_compress::DecodeError),
    /// The job failed (for example, too many dropouts for too long).
    #[error("job failed: {0}")]
    JobFailed(String),
}
