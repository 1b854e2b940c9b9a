//! The release gate: rules a version must pass before it is promoted to staging or production.

use serde::{Deserialize, Serialize};

use crate::eval::EvalSummary;

/// A model's release gate. Every rule is optional; an empty gate passes everything. Accuracies are
/// fractions in `[0, 1]`; regressions are in points (percentage points of accuracy: 0.02 → 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Minimum overall accuracy of the version's latest federated evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy: Option<f64>,
    /// Most the overall accuracy may fall below current production's latest evaluation, in points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_regression_points: Option<f64>,
    /// Most any cohort's accuracy may fall below production's in that cohort, in points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cohort_regression_points: Option<f64>,
    /// Most ε the job that trained it may have spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epsilon: Option<f64>,
    /// The job must have run under secure aggregation.
    #[serde(default)]
    pub require_secagg: bool,
    /// Fewest clients the latest federated evaluation must have heard from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_eval_clients: Option<u64>,
    /// Promote a newly registered version that passes to staging by itself.
    #[serde(default)]
    pub auto_staging: bool,
}

/// A gate that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GateError(pub String);

impl Gate {
    /// Checks the rules' ranges.
    pub fn validate(&self) -> Result<(), GateError> {
        let check = |name: &str, v: Option<f64>, lo: f64, hi: f64| match v {
            Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => Err(GateError(format!(
                "{name} must be between {lo} and {hi}, got {x}"
            ))),
            _ => Ok(()),
        };
        check("min_accuracy", self.min_accuracy, 0.0, 1.0)?;
        check(
            "max_regression_points",
            self.max_regression_points,
            0.0,
            100.0,
        )?;
        check(
            "max_cohort_regression_points",
            self.max_cohort_regression_points,
            0.0,
            100.0,
        )?;
        check("max_epsilon", self.max_epsilon, 0.0, 1e6)?;
        if self.min_eval_clients.is_some_and(|n| n > 1_000_000) {
            return Err(GateError("min_eval_clients must be at most 1000000".into()));
        }
        Ok(())
    }
}

/// What the gate judges a version by.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateInput<'a> {
    /// The version's latest federated evaluation, if any.
    pub candidate: Option<&'a EvalSummary>,
    /// Current production's latest federated evaluation (`None`: no production, or never
    /// evaluated: the regression rules then pass and say so).
    pub production: Option<&'a EvalSummary>,
    /// ε the version's job spent (`None`: no DP).
    pub epsilon: Option<f64>,
    /// Whether the job ran under secure aggregation.
    pub secagg: bool,
}

/// One rule's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleOutcome {
    /// The rule, as named in the gate (`min_accuracy`, …).
    pub rule: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was compared, e.g. `accuracy 0.912 ≥ 0.90`.
    pub detail: String,
}

/// The gate's verdict on a version, stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GateReport {
    /// Every rule passed.
    pub passed: bool,
    /// Each configured rule's verdict, in the gate's order.
    pub rules: Vec<RuleOutcome>,
}

impl GateReport {
    /// The first failing rule, for a one-line refusal.
    pub fn first_failure(&self) -> Option<&RuleOutcome> {
        self.rules.iter().find(|r| !r.passed)
    }
}

/// Runs `gate` over `input`.
pub fn check_gate(gate: &Gate, input: &GateInput<'_>) -> GateReport {
    let mut rules = Vec::new();
    let mut rule = |rule: &str, passed: bool, detail: String| {
        rules.push(RuleOutcome {
            rule: rule.to_owned(),
            passed,
            detail,
        })
    };
    const NO_EVAL: &str =
        "no federated evaluation of this version yet (run `flotilla model evaluate NAME@VERSION`)";
    let cand_acc = input.candidate.and_then(|c| c.overall.accuracy);
    if let Some(min) = gate.min_accuracy {
        match cand_acc {
            Some(a) => rule(
                "min_accuracy",
                a >= min,
                format!(
                    "accuracy {a:.4} {} {min:.4}",
                    if a >= min { "≥" } else { "<" }
                ),
            ),
            None => rule("min_accuracy", false, NO_EVAL.into()),
        }
    }
    if let Some(max) = gate.max_regression_points {
        let prod_acc = input.production.and_then(|p| p.overall.accuracy);
        match (cand_acc, prod_acc) {
            (_, None) => rule(
                "max_regression",
                true,
                "no evaluated production version to compare with".into(),
            ),
            (None, Some(_)) => rule("max_regression", false, NO_EVAL.into()),
            (Some(c), Some(p)) => {
                let drop = (p - c) * 100.0;
                rule(
                    "max_regression",
                    drop <= max,
                    format!(
                        "accuracy {c:.4} vs production {p:.4}: {} {:.2} points (max {max})",
                        if drop > 0.0 { "down" } else { "up" },
                        drop.abs()
                    ),
                )
            }
        }
    }
    if let Some(max) = gate.max_cohort_regression_points {
        match (input.candidate, input.production) {
            (_, None) => rule(
                "max_cohort_regression",
                true,
                "no evaluated production version to compare with".into(),
            ),
            (None, Some(_)) => rule("max_cohort_regression", false, NO_EVAL.into()),
            (Some(c), Some(p)) => {
                let worst = crate::regression::regressions(p, c, 0.0)
                    .into_iter()
                    .filter(|r| r.cohort != crate::OVERALL)
                    .max_by(|a, b| a.drop_points.total_cmp(&b.drop_points));
                match worst {
                    Some(w) if w.drop_points > max => rule(
                        "max_cohort_regression",
                        false,
                        format!(
                            "cohort {} down {:.2} points ({:.4} → {:.4}; max {max})",
                            w.cohort, w.drop_points, w.baseline, w.current
                        ),
                    ),
                    Some(w) => rule(
                        "max_cohort_regression",
                        true,
                        format!(
                            "largest cohort drop {} {:.2} points (max {max})",
                            w.cohort, w.drop_points
                        ),
                    ),
                    None => rule(
                        "max_cohort_regression",
                        true,
                        "no cohort below production".into(),
                    ),
                }
            }
        }
    }
    if let Some(max) = gate.max_epsilon {
        match input.epsilon {
            Some(e) => rule(
                "max_epsilon",
                e <= max,
                format!("ε {e:.4} {} {max}", if e <= max { "≤" } else { ">" }),
            ),
            None => rule(
                "max_epsilon",
                true,
                "the job had no differential privacy: ε not spent".into(),
            ),
        }
    }
    if gate.require_secagg {
        rule(
            "require_secagg",
            input.secagg,
            if input.secagg {
                "trained under secure aggregation".into()
            } else {
                "the job did not run under [secagg]".into()
            },
        );
    }
    if let Some(min) = gate.min_eval_clients {
        let n = input.candidate.map_or(0, |c| c.overall.clients);
        rule(
            "min_eval_clients",
            n >= min,
            format!(
                "{n} evaluating clients {} {min}",
                if n >= min { "≥" } else { "<" }
            ),
        );
    }
    GateReport {
        passed: rules.iter().all(|r| r.passed),
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{ClientEvalReport, summarize};

    fn eval(acc_eu: f64, acc_us: f64) -> EvalSummary {
        let r = |a: f64, c: &str| ClientEvalReport {
            loss: 1.0 - a,
            accuracy: Some(a),
            samples: 100,
            cohorts: [("region".to_owned(), c.to_owned())].into(),
        };
        summarize(&[r(acc_eu, "eu"), r(acc_us, "us")], None)
    }

    #[test]
    fn the_failing_rule_is_named() {
        let gate = Gate {
            min_accuracy: Some(0.8),
            max_regression_points: Some(2.0),
            max_cohort_regression_points: Some(5.0),
            max_epsilon: Some(3.0),
            require_secagg: true,
            min_eval_clients: Some(2),
            auto_staging: false,
        };
        gate.validate().unwrap();
        let prod = eval(0.9, 0.9);
        let good = eval(0.91, 0.9);
        let input = GateInput {
            candidate: Some(&good),
            production: Some(&prod),
            epsilon: Some(1.0),
            secagg: true,
        };
        let r = check_gate(&gate, &input);
        assert!(r.passed, "{r:?}");
        assert_eq!(r.rules.len(), 6);
        // One cohort falls 10 points, overall 5.
        let worse = eval(0.8, 0.9);
        let r = check_gate(
            &gate,
            &GateInput {
                candidate: Some(&worse),
                ..input
            },
        );
        assert!(!r.passed);
        assert_eq!(r.first_failure().unwrap().rule, "max_regression");
        let fails: Vec<_> = r
            .rules
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.rule.as_str())
            .collect();
        assert_eq!(fails, ["max_regression", "max_cohort_regression"]);
        let r = check_gate(
            &gate,
            &GateInput {
                candidate: None,
                ..input
            },
        );
        assert_eq!(r.first_failure().unwrap().rule, "min_accuracy");
        let r = check_gate(
            &gate,
            &GateInput {
                secagg: false,
                ..input
            },
        );
        assert_eq!(r.first_failure().unwrap().rule, "require_secagg");
        assert!(check_gate(&Gate::default(), &GateInput::default()).passed);
        assert!(
            Gate {
                min_accuracy: Some(1.5),
                ..Gate::default()
            }
            .validate()
            .is_err()
        );
    }
}
