//! Settings a scenario derives from its job sections, checked with the simulator's own rules: the
//! secure-aggregation settings and the rules for `[privacy]`. Below the scenario parser, which uses
//! them, and the drivers.

use flotilla_core::dp::PrivacySpec;
use flotilla_privacy::Budget;
use flotilla_secagg::Params;
use flotilla_spec::SecAggConfig;

use crate::error::ScenarioError;

/// Secure-aggregation settings of a scenario: the job's `[secagg]` and the simulated
/// `[simulation] unmasking_dropout`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecAggSettings {
    /// Each coordinate of a client's delta is clipped to `[-clip_range, clip_range]` before masking.
    pub clip_range: f64,
    /// Shares needed to reconstruct a secret (t); default `k/2 + 1`.
    pub threshold: Option<usize>,
    /// Degree k of the communication graph; default ≈ 3·log2(clients_per_round), even.
    pub neighbours: Option<usize>,
    /// Chance that a client vanishes right after sending its masked input.
    pub unmasking_dropout: f64,
    /// Quantization before masking (`[compression] kind = "quantize"`), as in the job's `[secagg]`.
    pub quantization_bits: Option<u8>,
}

impl SecAggSettings {
    /// The settings of a `[secagg]` already validated by `flotilla_spec` (parameters, strategy,
    /// distributed DP), with the simulation's `unmasking_dropout`; attacks are not simulated under
    /// secure aggregation.
    pub(crate) fn new(
        config: SecAggConfig,
        unmasking_dropout: f64,
        attack: bool,
    ) -> Result<Self, ScenarioError> {
        let invalid = |field: &str, message: String| ScenarioError::Invalid {
            field: field.into(),
            message,
        };
        let u = unmasking_dropout;
        if !(u.is_finite() && (0.0..1.0).contains(&u)) {
            return Err(invalid(
                "simulation.unmasking_dropout",
                format!("must be in [0, 1), got {u}"),
            ));
        }
        if attack {
            return Err(invalid(
                "attack",
                "attacks are not simulated with [secagg]".into(),
            ));
        }
        Ok(Self {
            clip_range: config.clip_range,
            threshold: config.threshold,
            neighbours: config.neighbours,
            unmasking_dropout: u,
            quantization_bits: config.quantization_bits,
        })
    }

    /// The secagg parameters for rosters of up to `clients_per_round` clients and vectors of
    /// `vector_len` (`flotilla_spec::SecAggConfig::params`). Errors name the scenario key.
    pub fn params(
        &self,
        clients_per_round: usize,
        vector_len: usize,
    ) -> Result<Params, ScenarioError> {
        SecAggConfig {
            clip_range: self.clip_range,
            threshold: self.threshold,
            neighbours: self.neighbours,
            quantization_bits: self.quantization_bits,
        }
        .params(clients_per_round, vector_len)
        .map_err(|e| ScenarioError::Invalid {
            field: e.field,
            message: e.message,
        })
    }
}

/// The simulator's own rules for `[privacy]` (parsed, checked against the round and added to the
/// strategy by `flotilla_spec`, as on the coordinator): no `population` (the simulator samples from
/// its `clients`), and a budget the accountant accepts.
pub(crate) fn check_privacy(spec: Option<&PrivacySpec>) -> Result<(), ScenarioError> {
    let invalid = |field: &str, message: String| ScenarioError::Invalid {
        field: field.to_string(),
        message,
    };
    let Some(spec) = spec else {
        return Ok(());
    };
    if spec.population.is_some() {
        return Err(invalid(
            "privacy.population",
            "is for the coordinator; the simulator samples from its `clients`".into(),
        ));
    }
    // The accountant must accept the scenario's numbers too (q ≤ 1 always holds here).
    Budget::new(spec.max_epsilon.unwrap_or(f64::MAX), spec.delta)
        .map_err(|e| invalid("privacy", e.to_string()))?;
    Ok(())
}
