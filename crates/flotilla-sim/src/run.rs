//! The simulator's entry points: load and partition the data, pick the clients of the scenario's
//! mode (plain, secure aggregation, FedBuff), and run the one event loop (`crate::driver`).

use std::path::Path;

use crate::engine::{Prepared, SimEvent, SimOutcome, prepare};
use crate::error::SimError;
use crate::plain::PlainClients;
use crate::scenario::Scenario;
use crate::secagg::SecAggClients;

/// Runs the scenario's federation with its data already prepared, reporting progress to `observe`.
pub fn run_prepared(
    scenario: &Scenario,
    prepared: &Prepared,
    observe: &mut dyn FnMut(&SimEvent),
) -> Result<SimOutcome, SimError> {
    crate::compress::check_supported(scenario)?;
    if let Some(sa) = &scenario.secagg {
        return crate::driver::run(
            scenario,
            prepared,
            scenario.clients_per_round,
            observe,
            |layout| SecAggClients::new(scenario, sa, layout.len()),
        );
    }
    if let Some(fb) = scenario.strategy.fedbuff {
        return crate::fedbuff::run_prepared(scenario, fb, prepared, observe);
    }
    crate::driver::run(
        scenario,
        prepared,
        scenario.clients_per_round,
        observe,
        |layout| PlainClients::new(scenario, prepared, layout.len()),
    )
}

/// Loads, partitions and runs a scenario.
pub fn run(
    scenario: &Scenario,
    data_dir: &Path,
    observe: &mut dyn FnMut(&SimEvent),
) -> Result<SimOutcome, SimError> {
    let prepared = prepare(scenario, data_dir)?;
    run_prepared(scenario, &prepared, observe)
}
