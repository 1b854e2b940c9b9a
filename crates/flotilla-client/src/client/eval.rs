//! Federated evaluation on the client: checking what [`LocalTrainer::evaluate`] returned and the
//! upload metrics that carry it (`eval_loss`, `eval_samples`, `eval_accuracy`). Pure, no IO but
//! logging.
//!
//! [`LocalTrainer::evaluate`]: crate::LocalTrainer::evaluate

use flotilla_core::round::ClientEval;

use crate::config::error_chain;
use crate::trainer::{BoxError, EvalOutcome, TaskInfo};

/// The upload metrics that carry an evaluation; reserved for it (a trainer's training metrics of
/// these names are dropped, so that no upload claims an evaluation the SDK did not check).
pub(super) const RESERVED: [&str; 3] = ["eval_loss", "eval_samples", "eval_accuracy"];

/// The evaluation to report for `info`, from what the trainer's `evaluate` returned: `None` when
/// it made none, failed, or returned an invalid outcome (the last two logged, escaped: the text
/// is the trainer's). An invalid outcome has a non-finite loss, 0 or more than 2^53 samples, or an
/// `accuracy` outside `[0, 1]` — what the coordinator would refuse.
pub(super) fn checked(
    info: &TaskInfo,
    result: Result<Option<EvalOutcome>, BoxError>,
) -> Option<ClientEval> {
    let outcome = match result {
        Ok(o) => o?,
        Err(e) => {
            let error = error_chain(e.as_ref());
            tracing::warn!(job = %info.job_id.escape_debug(), round = info.round, error = %error.escape_debug(), "evaluation failed; no evaluation reported");
            return None;
        }
    };
    let eval = ClientEval {
        loss: outcome.loss,
        accuracy: outcome.metrics.get("accuracy").copied(),
        samples: outcome.num_samples,
    };
    match eval.validate() {
        Ok(()) => Some(eval),
        Err(e) => {
            tracing::warn!(job = %info.job_id.escape_debug(), round = info.round, error = %e, "evaluation unusable; no evaluation reported");
            None
        }
    }
}

/// The upload metrics of a checked evaluation.
pub(super) fn metrics(eval: &ClientEval) -> Vec<(&'static str, f64)> {
    let mut m = vec![
        ("eval_loss", eval.loss),
        // Exact: `checked` keeps counts ≤ 2^53.
        ("eval_samples", eval.samples as f64),
    ];
    if let Some(a) = eval.accuracy {
        m.push(("eval_accuracy", a));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TaskInfo {
        let layout =
            flotilla_core::ParamLayout::new(vec![flotilla_core::TensorSpec::new("w", [1])]);
        TaskInfo {
            job_id: "j".into(),
            round: 1,
            attempt: 1,
            stage_index: 0,
            model_version: 0,
            layout_fingerprint: layout.fingerprint(),
            layout,
            model: None,
            training: crate::TrainingConfig {
                epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                seed: 0,
                proximal_mu: 0.0,
                max_grad_norm: 0.0,
            },
            gradient_correction: None,
            deadline: None,
        }
    }

    fn outcome(loss: f64, n: u64, accuracy: Option<f64>) -> Result<Option<EvalOutcome>, BoxError> {
        Ok(Some(EvalOutcome {
            loss,
            num_samples: n,
            metrics: accuracy
                .map(|a| ("accuracy".to_owned(), a))
                .into_iter()
                .collect(),
        }))
    }

    #[test]
    fn valid_outcomes_map_to_the_reserved_metrics() {
        let e = checked(&info(), outcome(0.25, 40, Some(0.75))).unwrap();
        assert_eq!(
            metrics(&e),
            vec![
                ("eval_loss", 0.25),
                ("eval_samples", 40.0),
                ("eval_accuracy", 0.75)
            ]
        );
        let e = checked(&info(), outcome(-1.0, 1 << 53, None)).unwrap();
        assert_eq!(
            metrics(&e),
            vec![
                ("eval_loss", -1.0),
                ("eval_samples", 9_007_199_254_740_992.0)
            ]
        );
        assert!(metrics(&e).iter().all(|(k, _)| RESERVED.contains(k)));
    }

    #[test]
    fn no_error_or_invalid_outcome_gives_no_evaluation() {
        assert_eq!(checked(&info(), Ok(None)), None);
        assert_eq!(
            checked(&info(), Err("disk on fire\n\u{1b}[31m".into())),
            None
        );
        for bad in [
            outcome(f64::NAN, 10, None),
            outcome(f64::INFINITY, 10, None),
            outcome(0.5, 0, None),
            outcome(0.5, (1 << 53) + 1, None),
            outcome(0.5, 10, Some(1.5)),
            outcome(0.5, 10, Some(-0.5)),
            outcome(0.5, 10, Some(f64::NAN)),
        ] {
            assert_eq!(checked(&info(), bad), None);
        }
    }
}
