//! Watching registered models in production (`flotilla server --model-eval-interval`): every
//! interval, a federated evaluation of each model's served versions over its tenant's clients
//! (`fed_eval.rs`).
//!
//! * A model with a canary: the canary version and production are evaluated side by side (kind
//!   `canary`) and compared per cohort ([`flotilla_registry::regressions`]). A canary that lost
//!   more than the gate's `max_regression_points` overall, or `max_cohort_regression_points` in
//!   a cohort (each [`DEFAULT_TOLERANCE_POINTS`] without a gate), is rolled back by itself
//!   (`model.rollback` by `system`, the reason naming the cohort and points).
//! * A production version without canary: evaluated (kind `scheduled`) and compared with its
//!   baseline, the first evaluation after it became production. A drop beyond the tolerance in
//!   any cohort sets `flotilla_model_regression{model,cohort}` to the drop in points (0 again when
//!   it recovers), logs a warning and writes a `model.regression` audit entry when it starts.
//!
//! Bounded: at most [`MAX_WATCHED_MODELS`] models per pass, at most `MAX_COHORT_LABELS + 1`
//! cohort series per model (`overall` included).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_registry::{EvalSummary, Gate, OVERALL, Regression};
use flotilla_store::{AuditEvent, EvalKind, EvalSubject, RegisteredModel};

use crate::fed_eval::{EvalRequest, EvalStatus};
use crate::state::Shared;

/// Tolerance in points when the model has no gate (or the gate leaves it unset).
pub(crate) const DEFAULT_TOLERANCE_POINTS: f64 = 2.0;
/// Most models watched (and exported) per pass.
pub(crate) const MAX_WATCHED_MODELS: usize = 256;
/// Most cohort series exported per model, `overall` included.
pub(crate) const MAX_COHORT_SERIES: usize = flotilla_registry::MAX_COHORT_LABELS + 1;
/// The actor of automatic rollbacks and regression entries.
const ACTOR: &str = "system";
/// Evaluations of one version read to find its baseline.
const BASELINE_SCAN: u32 = 1000;

/// The watch's configuration (`ServerConfig::model_eval_interval`, `model_eval_clients`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchConfig {
    /// Time between passes.
    pub every: Duration,
    /// Clients each evaluation asks for.
    pub clients: u32,
}

impl WatchConfig {
    /// How long one evaluation waits for its clients: the interval, at least 10 s and at most
    /// 10 min (a pass ends when its evaluations do; the next starts an interval later).
    fn deadline(&self) -> Duration {
        self.every
            .clamp(Duration::from_secs(10), Duration::from_secs(600))
    }
}

/// Tolerances (overall, cohorts) in points from the model's gate.
pub(crate) fn tolerances(gate: Option<&Gate>) -> (f64, f64) {
    (
        gate.and_then(|g| g.max_regression_points)
            .unwrap_or(DEFAULT_TOLERANCE_POINTS),
        gate.and_then(|g| g.max_cohort_regression_points)
            .unwrap_or(DEFAULT_TOLERANCE_POINTS),
    )
}

/// Drops of `current` against `baseline` beyond the gate's tolerances: overall against the
/// overall tolerance, each cohort against the cohort tolerance.
pub(crate) fn drops(
    baseline: &EvalSummary,
    current: &EvalSummary,
    gate: Option<&Gate>,
) -> Vec<Regression> {
    let (overall, cohort) = tolerances(gate);
    let low = overall.min(cohort);
    flotilla_registry::regressions(baseline, current, low)
        .into_iter()
        .filter(|r| {
            let tol = if r.cohort == OVERALL { overall } else { cohort };
            r.drop_points > tol
        })
        .collect()
}

/// Why a canary must roll back, in one line (`None`: it holds up). Names the worst drop first.
pub(crate) fn canary_verdict(
    production: &EvalSummary,
    canary: &EvalSummary,
    gate: Option<&Gate>,
    canary_version: u64,
) -> Option<String> {
    let mut regs = drops(production, canary, gate);
    regs.sort_by(|a, b| b.drop_points.total_cmp(&a.drop_points));
    let worst = regs.first()?;
    let (overall, cohort) = tolerances(gate);
    let tol = if worst.cohort == OVERALL {
        overall
    } else {
        cohort
    };
    let more = match regs.len() {
        1 => String::new(),
        n => format!(" (and {} more cohort(s))", n - 1),
    };
    Some(format!(
        "canary v{canary_version} regressed in {}: accuracy {:.2}% vs production {:.2}%, {:.2} points down, beyond the tolerance of {tol} points{more}",
        worst.cohort,
        worst.current * 100.0,
        worst.baseline * 100.0,
        worst.drop_points,
    ))
}

/// Runs a pass every `cfg.every` until the task is aborted (with the server).
pub(crate) async fn schedule(shared: Arc<Shared>, cfg: WatchConfig) {
    let mut watch = Watch::default();
    loop {
        tokio::time::sleep(cfg.every).await;
        watch.pass(&shared, cfg).await;
    }
}

/// What the watch remembers between passes.
#[derive(Default)]
struct Watch {
    /// Per model: the production version watched and the cohorts flagged as regressed, with the
    /// cohorts that have a series (so they are set back to 0 or removed).
    models: BTreeMap<String, Watched>,
}

#[derive(Default)]
struct Watched {
    version: u64,
    flagged: BTreeSet<String>,
    series: BTreeSet<String>,
}

impl Watch {
    async fn pass(&mut self, shared: &Arc<Shared>, cfg: WatchConfig) {
        let models = match shared.store.registered_models(None).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "model watch: could not list registered models; trying again next interval");
                return;
            }
        };
        let mut seen = BTreeSet::new();
        for m in models.into_iter().take(MAX_WATCHED_MODELS) {
            if m.production.is_some() {
                seen.insert(m.name.clone());
            }
            match (m.canary, m.production) {
                (Some(c), Some(p)) => watch_canary(shared, cfg, &m, c.version, p).await,
                (None, Some(p)) => self.watch_production(shared, cfg, &m, p).await,
                _ => {}
            }
        }
        // Models gone, without production, or beyond the bound: their series go.
        let gone: Vec<String> = self
            .models
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(w) = self.models.remove(&name) {
                shared.metrics.model_regression_clear(&name, &w.series);
            }
        }
    }

    async fn watch_production(
        &mut self,
        shared: &Arc<Shared>,
        cfg: WatchConfig,
        m: &RegisteredModel,
        version: u64,
    ) {
        let subject = EvalSubject::Version {
            name: m.name.clone(),
            version,
        };
        let Some(current) = evaluate(shared, cfg, m, &subject, EvalKind::Scheduled).await else {
            return;
        };
        let since = match shared.store.model_version(&m.name, version).await {
            Ok(Some(v)) => v.stage_changed_at_ms,
            _ => return,
        };
        let baseline = match shared.store.evaluations(&subject, BASELINE_SCAN).await {
            // Newest first: the last one started after the promotion is the first.
            Ok(evals) => evals
                .into_iter()
                .rfind(|e| e.started_at_ms >= since && e.summary.overall.clients > 0)
                .map(|e| e.summary),
            Err(e) => {
                tracing::warn!(error = %e, model = %m.name, "model watch: could not read evaluations");
                return;
            }
        };
        let Some(baseline) = baseline else { return };
        let regs = drops(&baseline, &current, m.gate.as_ref());
        let w = self.models.entry(m.name.clone()).or_default();
        if w.version != version {
            // A new production version has a new baseline: start over.
            shared.metrics.model_regression_clear(&m.name, &w.series);
            *w = Watched {
                version,
                ..Default::default()
            };
        }
        // Every cohort of the baseline gets a series (0 when it holds up), within the bound.
        let cohorts: Vec<String> = std::iter::once(OVERALL.to_owned())
            .chain(baseline.cohorts.keys().cloned())
            .take(MAX_COHORT_SERIES)
            .collect();
        for cohort in &cohorts {
            let drop = regs
                .iter()
                .find(|r| &r.cohort == cohort)
                .map_or(0.0, |r| r.drop_points);
            shared.metrics.model_regression_set(&m.name, cohort, drop);
            w.series.insert(cohort.clone());
            let was = w.flagged.contains(cohort);
            if drop > 0.0 && !was {
                w.flagged.insert(cohort.clone());
                let r = regs.iter().find(|r| &r.cohort == cohort);
                let (b, c) = r.map_or((0.0, 0.0), |r| (r.baseline, r.current));
                tracing::warn!(
                    model = %m.name,
                    version,
                    cohort = %cohort.escape_debug(),
                    drop_points = drop,
                    baseline = b,
                    current = c,
                    "production model regressed against its baseline"
                );
                let ev = AuditEvent::new(
                    ACTOR,
                    "model.regression",
                    format!("model:{}@{version}", m.name),
                )
                .tenant(m.tenant.clone())
                .details(serde_json::json!({
                    "cohort": cohort, "drop_points": drop, "baseline": b, "current": c,
                }));
                if let Err(e) = shared.store.audit(&ev).await {
                    tracing::warn!(error = %e, "model watch: could not audit a regression");
                }
            } else if drop == 0.0 && was {
                w.flagged.remove(cohort);
                tracing::info!(model = %m.name, version, cohort = %cohort.escape_debug(), "production model recovered");
            }
        }
    }
}

/// Evaluates the canary and production side by side and rolls the canary back if it regressed.
async fn watch_canary(
    shared: &Arc<Shared>,
    cfg: WatchConfig,
    m: &RegisteredModel,
    canary: u64,
    production: u64,
) {
    let subject = |version| EvalSubject::Version {
        name: m.name.clone(),
        version,
    };
    let (cs, ps) = (subject(canary), subject(production));
    let (c, p) = tokio::join!(
        evaluate(shared, cfg, m, &cs, EvalKind::Canary),
        evaluate(shared, cfg, m, &ps, EvalKind::Canary),
    );
    let (Some(c), Some(p)) = (c, p) else { return };
    let Some(reason) = canary_verdict(&p, &c, m.gate.as_ref(), canary) else {
        tracing::info!(model = %m.name, canary, production, "canary holds up against production");
        return;
    };
    // Only the canary that was evaluated: an operator may have promoted or ended it meanwhile.
    match shared.store.registered_model(&m.name).await {
        Ok(Some(now)) if now.canary.map(|c| c.version) == Some(canary) => {}
        _ => return,
    }
    match shared.store.rollback_model(&m.name, ACTOR, &reason).await {
        Ok(r) => {
            shared.resolve_cache.forget(&m.name);
            tracing::warn!(model = %m.name, from = r.from, to = r.to, reason = %reason.escape_debug(), "canary rolled back by itself");
        }
        Err(e) => {
            tracing::warn!(model = %m.name, error = %e, "model watch: could not roll the canary back")
        }
    }
}

/// One federated evaluation of `subject` over `m`'s tenant; `None` (logged) when it could not
/// start, failed, or no client reported.
async fn evaluate(
    shared: &Arc<Shared>,
    cfg: WatchConfig,
    m: &RegisteredModel,
    subject: &EvalSubject,
    kind: EvalKind,
) -> Option<EvalSummary> {
    let req = EvalRequest {
        tenant: m.tenant.clone(),
        subject: subject.clone(),
        kind,
        clients: cfg.clients,
        deadline: cfg.deadline(),
        threshold: None,
    };
    let id = match shared.start_fed_eval(req) {
        Ok(id) => id,
        Err(why) => {
            tracing::info!(model = %m.name, %why, "model watch: evaluation not started");
            return None;
        }
    };
    match shared.fed_evals.wait(id).await {
        Some(EvalStatus::Done { summary, .. }) if summary.overall.clients > 0 => Some(summary),
        Some(EvalStatus::Failed(why)) => {
            tracing::info!(model = %m.name, why = %why.escape_debug(), "model watch: evaluation failed");
            None
        }
        _ => {
            tracing::info!(model = %m.name, "model watch: no client reported; nothing compared");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_registry::{ClientEvalReport, summarize};

    fn summary(eu: f64, us: f64) -> EvalSummary {
        let r = |a: f64, c: &str| ClientEvalReport {
            loss: 0.5,
            accuracy: Some(a),
            samples: 100,
            cohorts: [("region".to_owned(), c.to_owned())].into(),
        };
        summarize(&[r(eu, "eu"), r(us, "us")], None)
    }

    #[test]
    fn a_canary_that_loses_a_cohort_beyond_the_tolerance_rolls_back_and_says_why() {
        let prod = summary(0.90, 0.90);
        // 1 point down everywhere: within the default 2 points.
        assert_eq!(canary_verdict(&prod, &summary(0.89, 0.89), None, 2), None);
        // eu down 10 points, overall 5: the worst (eu) is named.
        let why = canary_verdict(&prod, &summary(0.80, 0.90), None, 2).unwrap();
        assert!(why.starts_with("canary v2 regressed in region=eu"), "{why}");
        assert!(why.contains("10.00 points down"), "{why}");
        assert!(why.contains("and 1 more"), "{why}");
        // A gate that tolerates 12 points per cohort but 1 overall: overall is the culprit.
        let gate = Gate {
            max_regression_points: Some(1.0),
            max_cohort_regression_points: Some(12.0),
            ..Gate::default()
        };
        let why = canary_verdict(&prod, &summary(0.80, 0.90), Some(&gate), 2).unwrap();
        assert!(why.contains("regressed in overall"), "{why}");
        assert!(!why.contains("more"), "{why}");
        // A better canary passes.
        assert_eq!(
            canary_verdict(&prod, &summary(0.95, 0.95), Some(&gate), 2),
            None
        );
    }

    #[test]
    fn drops_use_the_overall_and_cohort_tolerances_separately() {
        let base = summary(0.90, 0.90);
        let now = summary(0.87, 0.90);
        let gate = Gate {
            max_regression_points: Some(2.0),
            max_cohort_regression_points: Some(5.0),
            ..Gate::default()
        };
        // eu: 3 points (< 5), overall 1.5 (< 2): nothing.
        assert!(drops(&base, &now, Some(&gate)).is_empty());
        // Default 2 points both: eu (3) only.
        let d = drops(&base, &now, None);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].cohort, "region=eu");
        assert_eq!(tolerances(None), (2.0, 2.0));
    }
}
