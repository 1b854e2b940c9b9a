//! Error types of the data crate.

use std::path::PathBuf;

use crate::name::DatasetName;

pub use crate::name::UnknownDatasetError;

/// Everything that can go wrong while fetching or loading a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The dataset's files are not in the data directory.
    #[error("dataset `{dataset}` not found in {}; run `flotilla data fetch {dataset}`", dir.display())]
    Missing {
        /// The dataset that was asked for.
        dataset: DatasetName,
        /// The data directory that was searched.
        dir: PathBuf,
    },
    /// A name that is not a known dataset.
    #[error(transparent)]
    UnknownDataset(#[from] UnknownDatasetError),
    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A data file does not have the expected format.
    #[error("malformed {file}: {message}")]
    Malformed {
        /// The file (or embedded asset) being parsed.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file's SHA-256 digest differs from the pinned one.
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// The file whose digest was checked.
        file: String,
        /// The pinned digest (lower-case hex).
        expected: String,
        /// The digest of the bytes found (lower-case hex).
        actual: String,
    },
    /// An external program needed to fetch a dataset is not installed.
    #[error("`{tool}` was not found on PATH; it is needed to fetch `{dataset}` ({hint})")]
    ToolMissing {
        /// The program that is missing.
        tool: String,
        /// The dataset being fetched.
        dataset: DatasetName,
        /// How to get the tool.
        hint: String,
    },
    /// An external program ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error output.
        stderr: String,
    },
    /// An archive could not be read.
    #[error("cannot read archive {}: {message}", path.display())]
    Archive {
        /// The archive file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A load option is out of range.
    #[error("invalid load option `{field}`: {message}")]
    InvalidOption {
        /// The offending field of [`crate::LoadOptions`].
        field: &'static str,
        /// Why the value is rejected.
        message: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(file: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Malformed {
            file: file.into(),
            message: message.into(),
        }
    }
}

/// Everything that can go wrong while partitioning a dataset among clients.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionError {
    /// `num_clients` is zero.
    #[error("`num_clients` must be at least 1")]
    ZeroClients,
    /// More clients than samples.
    #[error("`num_clients` ({num_clients}) exceeds the number of samples ({num_samples})")]
    TooManyClients {
        /// Requested number of clients.
        num_clients: usize,
        /// Number of samples available.
        num_samples: usize,
    },
    /// `alpha` is not a finite positive number.
    #[error("`alpha` must be finite and > 0, got {alpha}")]
    InvalidAlpha {
        /// The value given.
        alpha: f64,
    },
    /// `classes_per_client` is 0 or larger than `num_classes`.
    #[error("`classes_per_client` must be in 1..={num_classes}, got {classes_per_client}")]
    InvalidClassesPerClient {
        /// The value given.
        classes_per_client: usize,
        /// Number of classes of the dataset.
        num_classes: usize,
    },
    /// `num_clients * classes_per_client` shards do not fit in the data.
    #[error(
        "`num_clients` * `classes_per_client` = {shards} shards, but there are only {num_samples} samples"
    )]
    TooManyShards {
        /// Number of shards required.
        shards: usize,
        /// Number of samples available.
        num_samples: usize,
    },
    /// A label is not below `num_classes`.
    #[error("label {label} of sample {index} is not below `num_classes` ({num_classes})")]
    LabelOutOfRange {
        /// Sample index.
        index: usize,
        /// Its label.
        label: u32,
        /// Number of classes given.
        num_classes: usize,
    },
    /// `min_samples` cannot be met even in principle.
    #[error(
        "`min_samples` ({min_samples}) * `num_clients` ({num_clients}) exceeds the number of samples ({num_samples})"
    )]
    MinSamplesUnsatisfiable {
        /// Requested minimum per client.
        min_samples: usize,
        /// Requested number of clients.
        num_clients: usize,
        /// Number of samples available.
        num_samples: usize,
    },
    /// The Dirichlet partition never gave every client `min_samples` samples.
    #[error(
        "could not draw a Dirichlet partition with >= {min_samples} samples per client \
         (`min_samples`) for {num_clients} clients at alpha {alpha} after {tries} tries; \
         lower `min_samples` or `num_clients`, or raise `alpha`"
    )]
    DirichletGaveUp {
        /// Number of draws made.
        tries: usize,
        /// Requested minimum per client.
        min_samples: usize,
        /// Requested number of clients.
        num_clients: usize,
        /// Concentration parameter.
        alpha: f64,
    },
    /// `sampled`: `samples_per_client` is 0 or larger than the data set.
    #[error(
        "`samples_per_client` must be in 1..={num_samples} (the training set's size), got {samples_per_client}"
    )]
    InvalidSamplesPerClient {
        /// The value given.
        samples_per_client: usize,
        /// Number of samples available.
        num_samples: usize,
    },
    /// `sampled`: more clients than the ceiling.
    #[error("`num_clients` ({num_clients}) exceeds the ceiling of {max} sampled clients")]
    TooManySampledClients {
        /// Requested number of clients.
        num_clients: usize,
        /// The ceiling, [`crate::partition::MAX_SAMPLED_CLIENTS`].
        max: usize,
    },
    /// The natural partition needs per-sample groups.
    #[error("the natural partition needs per-sample `groups`, but none were given")]
    GroupsRequired,
    /// `groups` and `labels` have different lengths.
    #[error("`groups` has {groups} entries but `labels` has {labels}")]
    GroupsLengthMismatch {
        /// Length of `groups`.
        groups: usize,
        /// Length of `labels`.
        labels: usize,
    },
    /// Fewer eligible groups than clients.
    #[error(
        "`num_clients` ({requested}) exceeds the {available} natural groups with at least \
         {min_samples} samples (`min_samples`)"
    )]
    NotEnoughGroups {
        /// Requested number of clients.
        requested: usize,
        /// Groups with at least `min_samples` samples.
        available: usize,
        /// The `min_samples` threshold.
        min_samples: usize,
    },
}
