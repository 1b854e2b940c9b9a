//! The metrics stored with every committed round (the store keeps them as opaque JSON; these are
//! its shape) and shown in `GET /v1/jobs/{id}` under `history[].metrics`.

use flotilla_core::strategy::Quarantined;
use serde::{Deserialize, Serialize};

/// What a committed round recorded. Written at the commit; the evaluation fields are merged in
/// later (`Store::record_round_eval`), when the coordinator has evaluated the round's model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundMetrics {
    /// The attempt that committed.
    pub attempt: u32,
    /// Total samples behind the aggregate.
    pub num_samples: u64,
    /// Sample-weighted mean training loss of the participants (`null` when not finite).
    pub train_loss: Option<f64>,
    /// Hex SHA-256 of the committed model's little-endian `f32` bytes (absent from commits made
    /// before the metrics carried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// Under `[privacy]`: the round's accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<RoundPrivacy>,
    /// FedBuff: the staleness τ of each aggregated update, in acceptance order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staleness: Vec<u64>,
    /// FedBuff: the largest τ (the simulator's name for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_max: Option<u64>,
    /// FedBuff: the mean τ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_mean: Option<f64>,
    /// Robust strategies: the reporters left out of the aggregate, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
    /// Federated evaluation: what the clients whose updates went into this round measured on
    /// their own held-out data with the model they started from; absent when none reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_eval: Option<FederatedEvalMetrics>,
    /// The evaluation of the round's model, once recorded (its fields sit at the top level).
    #[serde(flatten)]
    pub eval: Option<EvalMetrics>,
    /// Fields this version does not know (a stored round written by another version): kept, so
    /// that the status shows what the store has. Free-form by nature, hence JSON values.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The `privacy` part of a round's metrics: every field is present, the last three `null` when
/// the strategy reported no DP details.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundPrivacy {
    /// Sampling rate the round was accounted with.
    pub q: f64,
    /// Noise multiplier σ.
    pub sigma: f64,
    /// The job's ε after this round.
    pub epsilon_spent: f64,
    /// The δ ε is measured at.
    pub delta: f64,
    /// The clip norm used this round.
    pub clip_norm: Option<f64>,
    /// Standard deviation of the noise the server added to the sum (0 in distributed mode).
    pub noise_std: Option<f64>,
    /// Reports whose delta was within the clip norm.
    pub unclipped: Option<u64>,
}

/// A round's federated evaluation (`federated_eval`): the sample-weighted means of the evaluations
/// the round's aggregated reports carried (`eval_loss`, `eval_accuracy`, `eval_samples` in the
/// upload header). Unlike [`EvalMetrics`] it is of the model the round *started from*.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FederatedEvalMetrics {
    /// The global model version the clients evaluated: the one the round started from (the
    /// round's own version − 1). FedBuff: the step's previous version; buffered updates may have
    /// started from versions up to `max_staleness` older.
    pub model_version: u64,
    /// Sample-weighted mean loss (`null` when not finite).
    pub loss: Option<f64>,
    /// Sample-weighted mean accuracy over the clients that measured one (`null` if none did).
    pub accuracy: Option<f64>,
    /// Samples evaluated, over all the clients.
    pub samples: u64,
    /// Reports that carried an evaluation.
    pub clients: u64,
}

impl FederatedEvalMetrics {
    /// The metrics of a commit's federated evaluation of `model_version`.
    pub fn new(model_version: u64, f: &flotilla_core::round::FederatedEval) -> Self {
        FederatedEvalMetrics {
            model_version,
            loss: f.loss.is_finite().then_some(f.loss),
            accuracy: f.accuracy.filter(|a| a.is_finite()),
            samples: f.samples,
            clients: f.clients,
        }
    }
}

/// The evaluation of a round's model on the job's evaluation dataset. All three fields are
/// present once a round is evaluated; a non-finite value is `null`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalMetrics {
    /// Accuracy on the test split, 0..=1.
    pub eval_accuracy: Option<f64>,
    /// Mean loss on the test split.
    pub eval_loss: Option<f64>,
    /// Samples evaluated.
    pub eval_samples: u64,
}

impl RoundMetrics {
    /// The metrics of a commit, without privacy, staleness, quarantine or evaluation (a
    /// non-finite `train_loss` is recorded as `null`).
    pub fn new(attempt: u32, num_samples: u64, train_loss: f64, model_sha256: String) -> Self {
        RoundMetrics {
            attempt,
            num_samples,
            train_loss: train_loss.is_finite().then_some(train_loss),
            model_sha256: Some(model_sha256),
            privacy: None,
            staleness: Vec::new(),
            staleness_max: None,
            staleness_mean: None,
            quarantined: Vec::new(),
            federated_eval: None,
            eval: None,
            other: serde_json::Map::new(),
        }
    }

    /// FedBuff: records each aggregated update's staleness τ and their maximum and mean (nothing
    /// when `staleness` is empty).
    pub fn set_staleness(&mut self, staleness: Vec<u64>) {
        if staleness.is_empty() {
            return;
        }
        self.staleness_max = staleness.iter().copied().max();
        self.staleness_mean = Some(staleness.iter().sum::<u64>() as f64 / staleness.len() as f64);
        self.staleness = staleness;
    }
}

impl EvalMetrics {
    /// An evaluation's metrics; a non-finite accuracy or loss is recorded as `null`.
    pub fn new(accuracy: f64, loss: f64, num_samples: u64) -> Self {
        let finite = |x: f64| x.is_finite().then_some(x);
        EvalMetrics {
            eval_accuracy: finite(accuracy),
            eval_loss: finite(loss),
            eval_samples: num_samples,
        }
    }
}
