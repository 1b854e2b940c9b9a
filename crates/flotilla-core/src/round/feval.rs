//! Federated evaluation: clients evaluate the global model they received on their own held-out
//! data before they train, and report it with their update ([`ReportMetrics::eval`]); a commit
//! carries the sample-weighted mean over the reports in its aggregate ([`CommitInfo::federated_eval`]).
//!
//! This is how a job whose model the server cannot run (a user's own model) is evaluated at all;
//! for a built-in model it complements the server's own evaluation on a central test split.
//!
//! An evaluation is validated with the report ([`ClientEval::validate`]): a report carrying an
//! invalid one is **refused** ([`RejectReason::BadEval`]), changing nothing, like a report with a
//! bad sample count. Refusing rather than dropping the evaluation keeps every accepted report
//! honest and tells the client at once; an SDK client never sends an invalid one (it leaves out an
//! evaluation it cannot vouch for). An evaluation never changes the aggregate: it only feeds
//! [`CommitInfo::federated_eval`].
//!
//! [`ReportMetrics::eval`]: super::ReportMetrics::eval
//! [`CommitInfo::federated_eval`]: super::CommitInfo::federated_eval
//! [`RejectReason::BadEval`]: super::RejectReason::BadEval

use serde::{Deserialize, Serialize};

/// Largest sample count an evaluation may claim: 2^53, the largest integer every `f64` metric up to
/// it represents exactly (evaluations travel as `f64` metrics).
pub const MAX_EVAL_SAMPLES: u64 = 1 << 53;

/// One client's evaluation of the global model it started from, on its own held-out data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClientEval {
    /// Mean loss over the evaluated samples; must be finite.
    pub loss: f64,
    /// Accuracy over the evaluated samples, in `[0, 1]`, if the client measured one.
    pub accuracy: Option<f64>,
    /// Samples evaluated, in `1..=`[`MAX_EVAL_SAMPLES`]: the evaluation's weight.
    pub samples: u64,
}

/// Why a client's evaluation is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The loss is NaN or infinite.
    #[error("eval_loss must be finite, got {0}")]
    Loss(f64),
    /// The sample count is zero or above [`MAX_EVAL_SAMPLES`].
    #[error("eval_samples {got} must be in 1..={max}")]
    Samples {
        /// Claimed count.
        got: u64,
        /// Largest allowed ([`MAX_EVAL_SAMPLES`]).
        max: u64,
    },
    /// The accuracy is not a number in `[0, 1]`.
    #[error("eval_accuracy must be in [0, 1], got {0}")]
    Accuracy(f64),
}

impl ClientEval {
    /// Checks the evaluation: finite loss, `1 ≤ samples ≤ 2^53`, accuracy (if any) in `[0, 1]`.
    pub fn validate(&self) -> Result<(), EvalError> {
        if !self.loss.is_finite() {
            return Err(EvalError::Loss(self.loss));
        }
        if self.samples == 0 || self.samples > MAX_EVAL_SAMPLES {
            return Err(EvalError::Samples {
                got: self.samples,
                max: MAX_EVAL_SAMPLES,
            });
        }
        if let Some(a) = self.accuracy
            && !(0.0..=1.0).contains(&a)
        {
            return Err(EvalError::Accuracy(a));
        }
        Ok(())
    }
}

/// What the clients whose reports went into a commit said about the model they started from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FederatedEval {
    /// Sample-weighted mean of the clients' losses (finite unless the losses are near `f64::MAX`).
    pub loss: f64,
    /// Sample-weighted mean accuracy over the clients that measured one; `None` if none did.
    pub accuracy: Option<f64>,
    /// Samples evaluated, over all the clients (saturating).
    pub samples: u64,
    /// Reports that carried an evaluation.
    pub clients: u64,
}

impl FederatedEval {
    /// The sample-weighted means of `evals` (validated ones), summed in the given order, so the
    /// result is deterministic; `None` if there are none.
    pub fn over<'a>(evals: impl IntoIterator<Item = &'a ClientEval>) -> Option<Self> {
        let evals: Vec<&ClientEval> = evals.into_iter().collect();
        if evals.is_empty() {
            return None;
        }
        // `Σ xᵢsᵢ / Σ sᵢ` (one rounding of the division: exact for equal values); if a product
        // overflows where the mean does not, weights as fractions of the total instead.
        let mean = |items: &[(f64, u64)]| -> Option<f64> {
            let total: f64 = items.iter().map(|&(_, s)| s as f64).sum();
            if total <= 0.0 {
                return None;
            }
            let direct = items.iter().map(|&(x, s)| x * s as f64).sum::<f64>() / total;
            Some(if direct.is_finite() {
                direct
            } else {
                items.iter().map(|&(x, s)| x * (s as f64 / total)).sum()
            })
        };
        let losses: Vec<(f64, u64)> = evals.iter().map(|e| (e.loss, e.samples)).collect();
        let accuracies: Vec<(f64, u64)> = evals
            .iter()
            .filter_map(|e| e.accuracy.map(|a| (a, e.samples)))
            .collect();
        Some(FederatedEval {
            loss: mean(&losses).unwrap_or(f64::NAN),
            // Rounding may step a hair outside [0, 1]; an accuracy never does.
            accuracy: mean(&accuracies).map(|a| a.clamp(0.0, 1.0)),
            samples: evals
                .iter()
                .fold(0u64, |acc, e| acc.saturating_add(e.samples)),
            clients: evals.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(loss: f64, accuracy: Option<f64>, samples: u64) -> ClientEval {
        ClientEval {
            loss,
            accuracy,
            samples,
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert_eq!(ev(0.5, Some(0.9), 10).validate(), Ok(()));
        assert_eq!(ev(-2.0, None, MAX_EVAL_SAMPLES).validate(), Ok(()));
        assert!(matches!(
            ev(f64::NAN, None, 1).validate(),
            Err(EvalError::Loss(_))
        ));
        assert_eq!(
            ev(f64::INFINITY, None, 1).validate(),
            Err(EvalError::Loss(f64::INFINITY))
        );
        assert_eq!(
            ev(0.5, None, 0).validate(),
            Err(EvalError::Samples {
                got: 0,
                max: MAX_EVAL_SAMPLES
            })
        );
        assert!(ev(0.5, None, MAX_EVAL_SAMPLES + 1).validate().is_err());
        assert_eq!(
            ev(0.5, Some(1.5), 1).validate(),
            Err(EvalError::Accuracy(1.5))
        );
        assert!(ev(0.5, Some(-0.1), 1).validate().is_err());
        assert!(ev(0.5, Some(f64::NAN), 1).validate().is_err());
        let msg = ev(0.5, Some(2.0), 1).validate().unwrap_err().to_string();
        assert_eq!(msg, "eval_accuracy must be in [0, 1], got 2");
    }

    #[test]
    fn sample_weighted_means() {
        assert_eq!(FederatedEval::over(&[] as &[ClientEval]), None);
        let evals = [
            ev(1.0, Some(0.5), 100),
            ev(4.0, None, 200),
            ev(0.0, Some(1.0), 300),
        ];
        let f = FederatedEval::over(&evals).unwrap();
        // (1·100 + 4·200 + 0·300) / 600 = 1.5; accuracy over the two that gave one:
        // (0.5·100 + 1·300) / 400 = 0.875.
        assert!((f.loss - 1.5).abs() < 1e-12, "{f:?}");
        assert!((f.accuracy.unwrap() - 0.875).abs() < 1e-12, "{f:?}");
        assert_eq!((f.samples, f.clients), (600, 3));
        let none = FederatedEval::over(&[ev(2.0, None, 5)]).unwrap();
        assert_eq!(none.accuracy, None);
        assert_eq!(none.loss, 2.0);
    }

    #[test]
    fn huge_losses_and_counts_do_not_overflow() {
        let evals = [
            ev(1e300, Some(1.0), MAX_EVAL_SAMPLES),
            ev(1e300, Some(1.0), MAX_EVAL_SAMPLES),
        ];
        let f = FederatedEval::over(&evals).unwrap();
        assert!(f.loss.is_finite() && (f.loss / 1e300 - 1.0).abs() < 1e-12);
        assert_eq!(f.accuracy, Some(1.0));
        assert_eq!(f.samples, 2 * MAX_EVAL_SAMPLES);
    }
}
