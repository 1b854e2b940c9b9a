//! Sans-IO protocol core of Flotilla: parameter layouts, update validation, aggregation strategies and the
//! round state machine. Nothing here touches a socket, a clock, a file or a global random source.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod params;

pub use params::{
    ParamLayout, TensorSpec, params_digest, params_from_le_bytes, params_sha256, params_to_le_bytes,
};
pub mod aggregate;
pub mod config_toml;
pub mod dp;
pub mod error;
pub mod limits;
pub mod names;
pub mod norms;
pub mod robust;
pub mod round;
pub mod strategy;

pub use aggregate::FedAvg;
pub use error::{AggregateError, ConfigError};
