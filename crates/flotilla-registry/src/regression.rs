//! Regression detection: which cohorts lost accuracy against a baseline.

use serde::{Deserialize, Serialize};

use crate::eval::{CohortStats, EvalSummary, OVERALL};

/// A drop in accuracy of one cohort (or [`OVERALL`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// `key=value`, or [`OVERALL`].
    pub cohort: String,
    /// The baseline's accuracy.
    pub baseline: f64,
    /// The current accuracy.
    pub current: f64,
    /// `(baseline − current) × 100`.
    pub drop_points: f64,
}

/// Cohorts (and [`OVERALL`] first) whose accuracy in `current` is more than `tolerance_points`
/// below `baseline`'s. Cohorts missing from either side, or without accuracy, are not compared.
pub fn regressions(
    baseline: &EvalSummary,
    current: &EvalSummary,
    tolerance_points: f64,
) -> Vec<Regression> {
    let compare = |name: &str, b: &CohortStats, c: &CohortStats| {
        let (b, c) = (b.accuracy?, c.accuracy?);
        let drop = (b - c) * 100.0;
        (drop > tolerance_points).then(|| Regression {
            cohort: name.to_owned(),
            baseline: b,
            current: c,
            drop_points: drop,
        })
    };
    let mut out: Vec<Regression> = compare(OVERALL, &baseline.overall, &current.overall)
        .into_iter()
        .collect();
    for (name, b) in &baseline.cohorts {
        if let Some(c) = current.cohorts.get(name)
            && let Some(r) = compare(name, b, c)
        {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{ClientEvalReport, summarize};

    #[test]
    fn only_drops_beyond_the_tolerance_count() {
        let r = |a: f64, c: &str| ClientEvalReport {
            loss: 0.0,
            accuracy: Some(a),
            samples: 10,
            cohorts: [("region".to_owned(), c.to_owned())].into(),
        };
        let base = summarize(&[r(0.9, "eu"), r(0.9, "us")], None);
        let now = summarize(&[r(0.7, "eu"), r(0.89, "us")], None);
        let regs = regressions(&base, &now, 2.0);
        let names: Vec<_> = regs.iter().map(|r| r.cohort.as_str()).collect();
        assert_eq!(names, [OVERALL, "region=eu"]);
        assert!((regs[1].drop_points - 20.0).abs() < 1e-9);
        assert!(regressions(&base, &base, 0.0).is_empty());
    }
}
