//! The Flotilla simulator: a whole federation in one process, on real data, driving the same sans-IO
//! round state machine as the coordinator. Deterministic from the scenario's seed.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attack;
mod compress;
mod driver;
pub mod engine;
pub mod error;
pub mod fedbuff;
mod plain;
pub mod privacy;
pub mod results;
mod run;
pub mod scenario;
pub mod secagg;
mod settings;

pub use compress::{MAX_FEEDBACK_BYTES, UploadBytes};
pub use engine::{Prepared, RoundRecord, SimEvent, SimOutcome, prepare};
pub use error::{ScenarioError, SimError};
pub use run::{run, run_prepared};
pub use scenario::Scenario;
pub use scenario::round_policy;
