//! The Flotilla simulator: a whole federation in one process, on real data, driving the same sans-IO
//! round state machine as the coordinator. Deterministic from the scenario's seed.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attack;
mod driver;
pub mod engine;
pub mod error;
pub mod fedbuff;
mod plain;
pub mod privacy;
pub mod scenario;
pub mod secagg;

pub use engine::{
    Prepared, RoundRecord, SimEvent, SimOutcome, prepare, round_policy, run, run_prepared,
};
pub use error::{ScenarioError, SimError};
pub use scenario::Scenario;
