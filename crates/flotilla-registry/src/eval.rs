//! Federated evaluation summaries: overall and per cohort, sample-weighted, with a fairness view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The key under which [`EvalSummary::cohorts`] is never stored but regressions name the whole
/// population.
pub const OVERALL: &str = "overall";

/// Most cohort labels one client may announce.
pub const MAX_COHORT_LABELS: usize = 16;
/// Longest cohort label key or value, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// Largest sample count one report may claim (counts stay exact in an `f64`).
const MAX_SAMPLES: u64 = 1 << 53;

/// What one client reported for one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEvalReport {
    /// Mean loss over its samples (finite).
    pub loss: f64,
    /// Accuracy in `[0, 1]`, if the model has one.
    pub accuracy: Option<f64>,
    /// Samples evaluated (1 ..= 2^53).
    pub samples: u64,
    /// Its cohort labels, e.g. `region → eu`.
    pub cohorts: BTreeMap<String, String>,
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A field is out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
}

/// Checks cohort labels: at most [`MAX_COHORT_LABELS`], keys and values 1–64 bytes of printable
/// ASCII without `=` in keys (a cohort is shown as `key=value`).
pub fn check_cohorts<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), EvalError> {
    let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    let mut n = 0;
    for (k, v) in labels {
        n += 1;
        if n > MAX_COHORT_LABELS {
            return Err(EvalError::Invalid(format!(
                "at most {MAX_COHORT_LABELS} cohort labels"
            )));
        }
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_LABEL_BYTES && printable(s);
        if !ok(k) || k.contains('=') || !ok(v) {
            return Err(EvalError::Invalid(format!(
                "cohort label {:?}={:?}: keys and values are 1–{MAX_LABEL_BYTES} bytes of printable ASCII, keys without '='",
                k.chars().take(70).collect::<String>(),
                v.chars().take(70).collect::<String>()
            )));
        }
    }
    Ok(())
}

impl ClientEvalReport {
    /// Checks the report as received from a client.
    pub fn validate(&self) -> Result<(), EvalError> {
        if !self.loss.is_finite() {
            return Err(EvalError::Invalid("loss must be finite".into()));
        }
        if let Some(a) = self.accuracy
            && !(0.0..=1.0).contains(&a)
        {
            return Err(EvalError::Invalid("accuracy must be in [0, 1]".into()));
        }
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return Err(EvalError::Invalid(
                "samples must be between 1 and 2^53".into(),
            ));
        }
        check_cohorts(&self.cohorts)
    }
}

/// Sample-weighted results of a group of clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CohortStats {
    /// Clients that reported.
    pub clients: u64,
    /// Samples they evaluated.
    pub samples: u64,
    /// Sample-weighted mean loss.
    pub loss: f64,
    /// Sample-weighted mean accuracy over the clients that reported one (`None`: none did).
    pub accuracy: Option<f64>,
}

/// The fairness view of an evaluation: how the cohorts compare on accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Fairness {
    /// The cohort with the lowest accuracy, and that accuracy.
    pub worst: Option<(String, f64)>,
    /// Highest minus lowest cohort accuracy (0 with one cohort).
    pub spread: Option<f64>,
    /// The threshold `below` was computed against, if one was given.
    pub threshold: Option<f64>,
    /// Cohorts whose accuracy is below `threshold`.
    pub below: Vec<String>,
}

/// A federated evaluation's result: overall and per cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EvalSummary {
    /// All reporting clients together.
    pub overall: CohortStats,
    /// Per cohort `key=value` (a client with labels region=eu and device=phone counts in both
    /// `region=eu` and `device=phone`).
    pub cohorts: BTreeMap<String, CohortStats>,
    /// How the cohorts compare.
    pub fairness: Fairness,
}

/// Running sums of one group.
#[derive(Default)]
struct Sums {
    clients: u64,
    samples: u64,
    loss: f64,
    acc: f64,
    acc_samples: u64,
}

impl Sums {
    fn add(&mut self, r: &ClientEvalReport) {
        self.clients += 1;
        self.samples += r.samples;
        self.loss += r.loss * r.samples as f64;
        if let Some(a) = r.accuracy {
            self.acc += a * r.samples as f64;
            self.acc_samples += r.samples;
        }
    }

    fn stats(&self) -> CohortStats {
        CohortStats {
            clients: self.clients,
            samples: self.samples,
            loss: if self.samples == 0 {
                0.0
            } else {
                self.loss / self.samples as f64
            },
            accuracy: (self.acc_samples > 0).then(|| self.acc / self.acc_samples as f64),
        }
    }
}

/// Aggregates validated reports: overall and per cohort, sample-weighted; the fairness view lists
/// cohorts whose accuracy is below `threshold` (when given).
pub fn summarize(reports: &[ClientEvalReport], threshold: Option<f64>) -> EvalSummary {
    let mut overall = Sums::default();
    let mut cohorts: BTreeMap<String, Sums> = BTreeMap::new();
    for r in reports {
        overall.add(r);
        for (k, v) in &r.cohorts {
            cohorts.entry(format!("{k}={v}")).or_default().add(r);
        }
    }
    let cohorts: BTreeMap<String, CohortStats> =
        cohorts.into_iter().map(|(k, s)| (k, s.stats())).collect();
    let with_acc: Vec<(&String, f64)> = cohorts
        .iter()
        .filter_map(|(k, s)| s.accuracy.map(|a| (k, a)))
        .collect();
    let worst = with_acc
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, a)| ((*k).clone(), *a));
    let best = with_acc.iter().map(|(_, a)| *a).max_by(f64::total_cmp);
    let fairness = Fairness {
        spread: worst.as_ref().zip(best).map(|((_, w), b)| b - w),
        worst,
        threshold,
        below: threshold
            .map(|t| {
                with_acc
                    .iter()
                    .filter(|(_, a)| *a < t)
                    .map(|(k, _)| (*k).clone())
                    .collect()
            })
            .unwrap_or_default(),
    };
    EvalSummary {
        overall: overall.stats(),
        cohorts,
        fairness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rep(acc: f64, samples: u64, region: &str) -> ClientEvalReport {
        ClientEvalReport {
            loss: 1.0 - acc,
            accuracy: Some(acc),
            samples,
            cohorts: [("region".to_owned(), region.to_owned())].into(),
        }
    }

    #[test]
    fn cohorts_are_sample_weighted_and_the_worst_is_named() {
        let s = summarize(
            &[rep(0.9, 100, "eu"), rep(0.5, 300, "eu"), rep(0.8, 50, "us")],
            Some(0.7),
        );
        let eu = &s.cohorts["region=eu"];
        assert_eq!((eu.clients, eu.samples), (2, 400));
        assert!((eu.accuracy.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(s.overall.clients, 3);
        assert_eq!(s.fairness.worst.as_ref().unwrap().0, "region=eu");
        assert!((s.fairness.spread.unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(s.fairness.below, vec!["region=eu".to_owned()]);
    }

    #[test]
    fn bad_reports_are_refused() {
        let mut r = rep(0.5, 1, "eu");
        assert!(r.validate().is_ok());
        r.loss = f64::NAN;
        assert!(r.validate().is_err());
        let mut r = rep(1.5, 1, "eu");
        assert!(r.validate().is_err());
        r = rep(0.5, 0, "eu");
        assert!(r.validate().is_err());
        r = rep(0.5, 1, "eu");
        r.cohorts.insert("a=b".into(), "c".into());
        assert!(r.validate().is_err());
    }

    proptest! {
        /// The overall accuracy is the sample-weighted mean, and lies between the cohorts' worst
        /// and best when every client has exactly one label.
        #[test]
        fn overall_is_the_weighted_mean(
            reports in prop::collection::vec((0.0f64..=1.0, 1u64..10_000, 0usize..3), 1..40)
        ) {
            let reports: Vec<_> = reports
                .iter()
                .map(|&(a, n, c)| rep(a, n, ["a", "b", "c"][c]))
                .collect();
            let s = summarize(&reports, None);
            let n: u64 = reports.iter().map(|r| r.samples).sum();
            let mean = reports.iter().map(|r| r.accuracy.unwrap() * r.samples as f64).sum::<f64>()
                / n as f64;
            prop_assert!((s.overall.accuracy.unwrap() - mean).abs() < 1e-9);
            prop_assert_eq!(s.overall.samples, n);
            let worst = s.fairness.worst.as_ref().unwrap().1;
            prop_assert!(worst <= mean + 1e-9);
            prop_assert!(worst + s.fairness.spread.unwrap() >= mean - 1e-9);
        }
    }
}
