//! `[secagg]`: secure aggregation (SecAgg+) parameters, validated against the round and the
//! strategy, and the one mapping from `flotilla_secagg`'s parameter names to the keys of a file.

use flotilla_core::strategy::StrategySpec;
use flotilla_secagg::{ParamError, Params};
use serde::{Deserialize, Serialize};

use crate::SpecError;
use crate::checks::{need, size};
use crate::raw::RawSecAgg;

/// A validated `[secagg]` (stored with a coordinator's job, hence serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAggConfig {
    /// Each coordinate of a client's delta is clipped to `[-clip_range, clip_range]` before masking.
    pub clip_range: f64,
    /// Shares needed to reconstruct a secret (t); default `k/2 + 1`.
    #[serde(default)]
    pub threshold: Option<usize>,
    /// Degree k of the communication graph (even, or `clients_per_round − 1`); default
    /// ≈ 3·log2(clients_per_round).
    #[serde(default)]
    pub neighbours: Option<usize>,
    /// Bits per coordinate of stochastic quantization before masking (`Params::with_quantization_bits`),
    /// set from `[compression] kind = "quantize"`: the masked sums then live in the smallest ring
    /// that cannot overflow (16 bits for 8-bit values and ≤ 256 clients), halving the bytes of every
    /// masked input. `None`: the 32-bit fixed point. Absent from stored JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_bits: Option<u8>,
}

impl SecAggConfig {
    /// Validates `[secagg]` for rosters of `clients_per_round` and `strategy` (which must be
    /// sum-based; under distributed DP the clip range must hold the noise tails).
    pub fn from_raw(
        raw: &RawSecAgg,
        clients_per_round: usize,
        strategy: &StrategySpec,
    ) -> Result<Self, SpecError> {
        let count =
            |key: &'static str, v: Option<i64>| v.map(|v| size(key, v, 0, u64::MAX)).transpose();
        let c = Self {
            clip_range: need(raw.clip_range, "secagg.clip_range")?,
            threshold: count("secagg.threshold", raw.threshold)?,
            neighbours: count("secagg.neighbours", raw.neighbours)?,
            quantization_bits: None,
        };
        // The vector length is only known once the model is built; 1 checks everything else.
        c.params(clients_per_round, 1)?;
        strategy.check_secure_aggregation()?;
        if let Some(dp) = &strategy.dp {
            // Distributed DP: the clip range must hold a clipped coordinate plus the noise tails.
            dp.check_secure_aggregation(c.clip_range)?;
        }
        Ok(c)
    }

    /// Quantizes before masking with `bits` per coordinate (`[compression] kind = "quantize"`),
    /// checked for rosters of `clients_per_round`: refused, naming `compression.bits`, when a sum
    /// of that many clients would need more than a 32-bit ring.
    pub fn with_quantization_bits(
        mut self,
        bits: u8,
        clients_per_round: usize,
    ) -> Result<Self, SpecError> {
        self.quantization_bits = Some(bits);
        self.params(clients_per_round, 1)?;
        Ok(self)
    }

    /// The secagg parameters for rosters of up to `clients_per_round` clients and vectors of
    /// `vector_len`: `neighbours`/`threshold` as given, else [`Params::recommended`]'s (with only
    /// `neighbours` given, `t = k/2 + 1`), quantized to `quantization_bits` if set. Errors name the
    /// key of the file.
    pub fn params(&self, clients_per_round: usize, vector_len: usize) -> Result<Params, SpecError> {
        let built = match (self.neighbours, self.threshold) {
            (None, None) => Params::recommended(clients_per_round, vector_len, self.clip_range),
            (k, t) => {
                let rec_k = Params::recommended(clients_per_round.max(3), 1, 1.0)
                    .map(|p| p.neighbours())
                    .unwrap_or(2);
                let k = k.unwrap_or(rec_k);
                Params::new(
                    clients_per_round,
                    t.unwrap_or(k / 2 + 1),
                    k,
                    vector_len,
                    self.clip_range,
                )
            }
        };
        built
            .and_then(|p| p.with_quantization_bits(self.quantization_bits))
            .map_err(|e| {
                SpecError::new(config_key(&e), format!("secure aggregation: {}", e.reason))
            })
    }
}

/// The key of a file a secagg parameter is written as.
fn config_key(e: &ParamError) -> &'static str {
    match e.name {
        "n" => "clients_per_round",
        "t" => "secagg.threshold",
        "k" => "secagg.neighbours",
        "clip_range" => "secagg.clip_range",
        "quantization_bits" => "compression.bits",
        _ => "model",
    }
}
