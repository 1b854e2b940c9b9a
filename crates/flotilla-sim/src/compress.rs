//! Update compression in the simulator (`[compression]`): at the client→server boundary each
//! simulated client encodes its delta `params − global` exactly as the SDK does
//! (`flotilla_compress`, top-k with the client's own error-feedback residual), the bytes are
//! counted, and the server side decodes them back into the report's buffer. The model trains on
//! what the server would have decoded, so accuracy under compression is measured, not estimated.
//!
//! The quantizer's randomness comes from the task seed (deterministic runs); a real client draws it
//! from its own entropy.

use std::collections::BTreeMap;

use flotilla_compress::{Compression, ErrorFeedback, decode_into};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::Scenario;
use crate::error::{ScenarioError, SimError};
use crate::scenario::round_policy;

/// The most memory the simulated clients' top-k residuals may take: 2 GiB, one `f32` per model
/// parameter for every client that can upload. A scenario that could need more is refused before
/// it trains, naming `compression.kind`.
pub const MAX_FEEDBACK_BYTES: u64 = 2 << 30;

/// Refuses `[compression]` where the simulator does not apply it (FedBuff rounds), rather than
/// running uncompressed and reporting it as compressed. Under `[secagg]`, `quantize` is applied by
/// secure aggregation itself (quantized before masking, `SecAggConfig::quantization_bits`).
pub(crate) fn check_supported(scenario: &Scenario) -> Result<(), SimError> {
    if scenario.compression == Compression::None || scenario.strategy.fedbuff.is_none() {
        return Ok(());
    }
    Err(ScenarioError::Invalid {
        field: "compression.kind".into(),
        message: "the simulator does not compress FedBuff updates yet; remove [compression]".into(),
    }
    .into())
}

/// Bytes the clients uploaded over a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UploadBytes {
    /// The job's compression, as its spec kind (`none`, `quantize`, `topk`).
    pub compression: Compression,
    /// Updates uploaded.
    pub updates: u64,
    /// Bytes of their encodings (header included).
    pub bytes: u64,
    /// `bytes / updates`.
    pub bytes_per_update: f64,
    /// Bytes per update of the uncompressed encoding, for the ratio.
    pub dense_bytes_per_update: f64,
    /// `bytes_per_update / dense_bytes_per_update`.
    pub ratio: f64,
}

/// Clients of `scenario` that can upload in a run: every attempt of every round selects
/// `RoundPolicy::selection_size` of them, and there are only `clients`.
fn uploaders(scenario: &Scenario) -> u64 {
    let p = round_policy(scenario);
    let selected = (p.selection_size() as u64)
        .saturating_mul(u64::from(p.max_attempts))
        .saturating_mul(p.rounds);
    selected.min(scenario.clients as u64)
}

/// Refuses top-k when the residuals of the clients of `scenario` that can upload, `num_params`
/// values each, could exceed [`MAX_FEEDBACK_BYTES`].
fn check_feedback(scenario: &Scenario, num_params: usize) -> Result<(), SimError> {
    if !matches!(scenario.compression, Compression::TopK { .. }) {
        return Ok(());
    }
    let clients = uploaders(scenario);
    let bytes = clients.saturating_mul(num_params as u64).saturating_mul(4);
    if bytes <= MAX_FEEDBACK_BYTES {
        return Ok(());
    }
    Err(ScenarioError::Invalid {
        field: "compression.kind".into(),
        message: format!(
            "top-k keeps an error-feedback residual per client: {clients} clients can upload × \
             {num_params} parameters × 4 bytes = {:.2} GiB, over the simulator's ceiling of {} GiB \
             (MAX_FEEDBACK_BYTES); use fewer clients or rounds, a smaller model, or quantize",
            bytes as f64 / (1u64 << 30) as f64,
            MAX_FEEDBACK_BYTES >> 30
        ),
    }
    .into())
}

/// The simulated clients' side of compression: residuals and the byte counter.
pub(crate) struct SimCompression {
    compression: Compression,
    /// Each simulated client's error-feedback residual (top-k only), as in its state directory.
    /// At most [`MAX_FEEDBACK_BYTES`] of them.
    feedback: BTreeMap<u64, ErrorFeedback>,
    delta: Vec<f32>,
    updates: u64,
    bytes: u64,
    dense_len: usize,
}

impl SimCompression {
    /// The compression of `scenario`, for a model of `num_params` parameters. Refuses top-k when
    /// the residuals of the clients that can upload could exceed [`MAX_FEEDBACK_BYTES`].
    pub(crate) fn new(scenario: &Scenario, num_params: usize) -> Result<Self, SimError> {
        check_feedback(scenario, num_params)?;
        Ok(Self {
            compression: scenario.compression,
            feedback: BTreeMap::new(),
            delta: Vec::new(),
            updates: 0,
            bytes: 0,
            dense_len: 0,
        })
    }

    /// Sends `params` (the first `global.len()` values; SCAFFOLD's control delta is appended after
    /// this) through the codec: encodes `params − global`, counts the bytes, and leaves in `params`
    /// `global + decoded`, what the server receives.
    pub(crate) fn upload(
        &mut self,
        client: u64,
        task_seed: u64,
        global: &[f32],
        params: &mut [f32],
    ) -> Result<(), SimError> {
        self.updates += 1;
        self.dense_len = Compression::None.encoded_len(global.len()).unwrap_or(0);
        if self.compression == Compression::None {
            self.bytes += self.dense_len as u64;
            return Ok(());
        }
        let model = &mut params[..global.len()];
        self.delta.clear();
        self.delta
            .extend(model.iter().zip(global).map(|(p, g)| p - g));
        let mut rng = ChaCha8Rng::seed_from_u64(task_seed ^ 0xC04D_9E55);
        let encoded = match self.compression {
            Compression::TopK { .. } => self.feedback.entry(client).or_default().encode(
                &self.delta,
                &self.compression,
                &mut rng,
            )?,
            c => flotilla_compress::encode(&self.delta, &c, &mut rng)?,
        };
        self.bytes += encoded.len() as u64;
        decode_into(&encoded.bytes, &mut self.delta)?;
        for ((p, g), d) in model.iter_mut().zip(global).zip(&self.delta) {
            *p = g + d;
        }
        Ok(())
    }

    /// What was counted.
    pub(crate) fn summary(&self) -> UploadBytes {
        let per = self.bytes as f64 / self.updates.max(1) as f64;
        UploadBytes {
            compression: self.compression,
            updates: self.updates,
            bytes: self.bytes,
            bytes_per_update: per,
            dense_bytes_per_update: self.dense_len as f64,
            ratio: per / self.dense_len.max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Overrides;

    const TOPK: &str = "kind = \"topk\"\nfraction = 0.01";
    /// `examples/million.toml`'s MLP.
    const MILLION_PARAMS: usize = 1_017_610;

    fn scenario(head: &str, compression: &str) -> Scenario {
        let text = format!(
            "{head}\n[partition]\nkind = \"iid\"\n[model]\nkind = \"logreg\"\ndataset = \"digits\"\n\
             [train]\nlocal_epochs = 1\nbatch_size = 8\nlearning_rate = 0.1\n[compression]\n{compression}\n"
        );
        Scenario::parse(&text, &Overrides::default()).unwrap()
    }

    fn refusal(s: &Scenario, num_params: usize) -> String {
        match SimCompression::new(s, num_params) {
            Err(SimError::Scenario(ScenarioError::Invalid { field, message })) => {
                assert_eq!(field, "compression.kind");
                message
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn top_k_residuals_have_a_ceiling_checked_up_front() {
        // 1,000 of a million clients in each of 5 rounds, 3 attempts each at most: 15,000 clients
        // can upload, and their residuals of a 1 M-parameter model would take 57 GiB.
        let million = "rounds = 5\nclients = 1000000\nclients_per_round = 1000";
        let m = refusal(&scenario(million, TOPK), MILLION_PARAMS);
        assert!(
            m.contains("15000 clients can upload") && m.contains("ceiling of 2 GiB"),
            "{m}"
        );
        // Quantization keeps no residual; a small model's residuals fit (15,000 × 8,000 × 4 B).
        let q8 = scenario(million, "kind = \"quantize\"\nbits = 8");
        assert!(SimCompression::new(&q8, MILLION_PARAMS).is_ok());
        assert!(SimCompression::new(&scenario(million, TOPK), 8_000).is_ok());
        // However many rounds, only `clients` clients exist: 100 × P × 4 B ≤ 2 GiB up to
        // P = 5,368,709.
        let few = scenario("rounds = 1000\nclients = 100\nclients_per_round = 10", TOPK);
        assert!(SimCompression::new(&few, 5_368_709).is_ok());
        let m = refusal(&few, 5_368_710);
        assert!(m.contains("100 clients can upload"), "{m}");
    }
}
