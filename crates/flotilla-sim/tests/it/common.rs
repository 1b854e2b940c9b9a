//! What the test files share: a scenario on the built-in digits data set (so no data files are
//! read), described by the few values the files vary, and quiet runs of it.

use std::path::Path;

use flotilla_sim::scenario::Overrides;
use flotilla_sim::{Scenario, ScenarioError, SimError, SimOutcome};

/// `[partition]`: Dirichlet(0.5) label skew, at least 2 samples a client.
pub const DIRICHLET: &str = "kind = \"dirichlet\"\nalpha = 0.5\nmin_samples = 2";
/// `[partition]`: the same distribution on every client.
pub const IID: &str = "kind = \"iid\"";
/// `[model]`: logistic regression.
pub const LOGREG: &str = "kind = \"logreg\"";

/// A digits scenario: its head, `[partition]`, `[model]` and `[train]` (batches of 16, learning
/// rate 0.1). Tables such as `[strategy]` or `[compression]` are added per run (`extra`).
#[derive(Debug, Clone, Copy)]
pub struct Digits {
    pub name: &'static str,
    pub seed: u64,
    pub rounds: u64,
    pub clients: u64,
    pub clients_per_round: u64,
    /// The lines of `[partition]`.
    pub partition: &'static str,
    /// The lines of `[model]` besides `dataset = "digits"`.
    pub model: &'static str,
    pub local_epochs: u32,
}

impl Digits {
    /// 12 rounds of 10 out of 40 clients with Dirichlet(0.5) label skew, logistic regression, 2
    /// local epochs, seed 42.
    pub const DEFAULT: Digits = Digits {
        name: "digits-test",
        seed: 42,
        rounds: 12,
        clients: 40,
        clients_per_round: 10,
        partition: DIRICHLET,
        model: LOGREG,
        local_epochs: 2,
    };

    /// The scenario file, `extra` last.
    pub fn toml(&self, extra: &str) -> String {
        let Digits {
            name,
            seed,
            rounds,
            clients,
            clients_per_round,
            partition,
            model,
            local_epochs,
        } = self;
        format!(
            "name = \"{name}\"\nseed = {seed}\nrounds = {rounds}\nclients = {clients}\n\
             clients_per_round = {clients_per_round}\n[partition]\n{partition}\n\
             [model]\n{model}\ndataset = \"digits\"\n\
             [train]\nlocal_epochs = {local_epochs}\nbatch_size = 16\nlearning_rate = 0.1\n{extra}"
        )
    }

    /// The scenario with `extra`, parsed without overrides.
    pub fn parse(&self, extra: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(&self.toml(extra), &Overrides::default())
    }

    /// Runs the scenario with `extra`; a scenario that does not parse is a [`SimError::Scenario`].
    pub fn run(&self, extra: &str) -> Result<SimOutcome, SimError> {
        run(&self.parse(extra)?)
    }
}

/// Runs a scenario, ignoring its events.
pub fn run(s: &Scenario) -> Result<SimOutcome, SimError> {
    flotilla_sim::run(s, Path::new("unused-for-digits"), &mut |_| {})
}
