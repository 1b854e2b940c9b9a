//! The results of a run as `flotilla sim --out` writes them and `flotilla.simulate` (Python)
//! returns them: one definition, so both carry the same fields and values.

use serde_json::{Value, json};

use crate::{Scenario, SimOutcome};

/// Peak resident set size of this process (Linux `VmHWM`), if the platform tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The results document of `outcome`: the scenario's settings, accuracy per evaluated round, the
/// history, privacy, timing (`wall_seconds`, `peak_rss_bytes`, measured by the caller) and the
/// final model's `model_sha256`. `scenario_file` names where the scenario came from; `plot` the
/// convergence plot written beside the results, if any.
pub fn results_json(
    scenario: &Scenario,
    scenario_file: &str,
    outcome: &SimOutcome,
    wall_seconds: f64,
    peak_rss_bytes: Option<u64>,
    plot: Option<&str>,
) -> Value {
    let evaluated: Vec<_> = outcome
        .history
        .iter()
        .filter(|r| r.test_accuracy.is_some())
        .collect();
    json!({
        "scenario": scenario.name,
        "scenario_file": scenario_file,
        "dataset": scenario.data.dataset.to_string(),
        "model": scenario.model.kind.to_string(),
        "num_params": outcome.layout.len(),
        "seed": scenario.seed,
        "rounds": outcome.history.len(),
        "clients": scenario.clients,
        "clients_per_round": scenario.clients_per_round,
        "local_epochs": scenario.train.local_epochs,
        "batch_size": scenario.train.batch_size,
        "learning_rate": scenario.train.learning_rate,
        "train_samples": outcome.train_samples,
        "test_samples": outcome.test_samples,
        "initial_accuracy": outcome.initial_accuracy,
        "final_accuracy": outcome.final_accuracy,
        "final_loss": outcome.final_loss,
        "accuracy_per_round": evaluated.iter().filter_map(|r| r.test_accuracy).collect::<Vec<_>>(),
        "evaluated_rounds": evaluated.iter().map(|r| r.round).collect::<Vec<_>>(),
        "strategy": scenario.strategy,
        "attack": scenario.attack.map(|a| format!("{:?} on {:.0}% of clients", a.kind, a.fraction * 100.0)),
        "attackers": outcome.attackers,
        "final_backdoor_success": outcome.final_backdoor_success,
        "quarantined_total": outcome.history.iter().map(|r| r.quarantined.len()).sum::<usize>(),
        "quarantined_attackers_total": outcome.history.iter().filter_map(|r| r.quarantined_attackers).sum::<usize>(),
        "abandoned_attempts": outcome.abandoned_attempts,
        "late_reports": outcome.late_reports,
        "privacy": outcome.privacy,
        "epsilon_spent": outcome.privacy.as_ref().map(|p| p.epsilon_spent),
        "delta": outcome.privacy.as_ref().map(|p| p.delta),
        "stopped_reason": outcome.privacy.as_ref().and_then(|p| p.stopped_reason.clone()),
        "stale_reports": outcome.stale_reports,
        "upload": outcome.upload,
        "bytes_per_update": outcome.upload.map(|u| u.bytes_per_update),
        "history": outcome.history,
        "wall_seconds": wall_seconds,
        "seconds_per_round": wall_seconds / outcome.history.len().max(1) as f64,
        "peak_rss_bytes": peak_rss_bytes,
        "model_sha256": outcome.model_sha256,
        "plot": plot,
        "flotilla_version": env!("CARGO_PKG_VERSION"),
    })
}
