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

/// The simulated clients' side of compression: residuals and the byte counter.
pub(crate) struct SimCompression {
    compression: Compression,
    /// Each simulated client's error-feedback residual (top-k only), as in its state directory.
    feedback: BTreeMap<u64, ErrorFeedback>,
    delta: Vec<f32>,
    updates: u64,
    bytes: u64,
    dense_len: usize,
}

impl SimCompression {
    /// Compression `c`.
    pub(crate) fn new(c: Compression) -> Self {
        Self {
            compression: c,
            feedback: BTreeMap::new(),
            delta: Vec::new(),
            updates: 0,
            bytes: 0,
            dense_len: 0,
        }
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
