//! FedBuff end to end on the built-in digits data.

use std::path::Path;

use crate::common::Digits;

use flotilla_sim::scenario::Overrides;
use flotilla_sim::{Scenario, SimOutcome};

const DIGITS: Digits = Digits {
    name: "digits-fedbuff",
    rounds: 60,
    ..Digits::DEFAULT
};

/// Heterogeneous training times, so that updates arrive stale.
const TICKS: &str = "[simulation]\ntrain_ticks_min = 5\ntrain_ticks_max = 100\n";

fn parse(extra: &str) -> Result<Scenario, String> {
    DIGITS
        .parse(&format!("{TICKS}{extra}"))
        .map_err(|e| e.to_string())
}

fn run(extra: &str) -> SimOutcome {
    DIGITS.run(&format!("{TICKS}{extra}")).unwrap()
}

#[test]
fn digits_fedbuff_learns_with_stale_updates_and_is_deterministic() {
    let strategy =
        "[strategy]\nname = \"fedbuff\"\nbuffer_size = 5\nconcurrency = 15\nmax_staleness = 20\n";
    let out = run(strategy);
    assert_eq!(out.history.len(), 60, "one record per server step");
    assert!(
        out.history.iter().all(|r| r.participants == 5),
        "K = 5 updates per step"
    );
    assert!(
        out.final_accuracy > 0.85 && out.final_accuracy > out.initial_accuracy + 0.5,
        "fedbuff should learn digits: {} → {}",
        out.initial_accuracy,
        out.final_accuracy
    );
    // Heterogeneous training times: updates do arrive stale, and the records say how stale.
    let max = out
        .history
        .iter()
        .filter_map(|r| r.staleness_max)
        .max()
        .unwrap();
    assert!(max >= 2, "max staleness {max}");
    assert!(out.history.iter().all(|r| {
        r.staleness_mean
            .is_some_and(|m| m <= r.staleness_max.unwrap() as f64)
    }));
    assert_eq!(out.stale_reports, 0, "nothing beyond max_staleness = 20");
    let again = run(strategy);
    assert_eq!(
        again.model_sha256, out.model_sha256,
        "same seed, same model"
    );
}

#[test]
fn reports_beyond_max_staleness_are_refused() {
    let out = run(
        "[strategy]\nname = \"fedbuff\"\nbuffer_size = 2\nconcurrency = 20\nmax_staleness = 1\n",
    );
    assert!(
        out.stale_reports > 0,
        "with K = 2 and 20 clients in flight, some updates are > 1 version old"
    );
    assert!(
        out.history.iter().all(|r| r.staleness_max.unwrap() <= 1),
        "no accepted update is staler than 1"
    );
    assert_eq!(out.history.len(), 60);
}

#[test]
fn fedbuff_parameters_and_combinations_are_checked_at_load() {
    let e = parse("[strategy]\nname = \"fedbuff\"\nbuffer_size = 0\n").unwrap_err();
    assert!(
        e.contains("strategy.buffer_size") && e.contains("1..="),
        "{e}"
    );
    let e = parse("[strategy]\nname = \"fedbuff\"\nstaleness_exponent = -1.0\n").unwrap_err();
    assert!(
        e.contains("strategy.staleness_exponent") && e.contains("[0, 10]"),
        "{e}"
    );
    let e = parse("[strategy]\nname = \"fedbuff\"\nconcurrency = 0\n").unwrap_err();
    assert!(e.contains("strategy.concurrency"), "{e}");
    let e = parse("[strategy]\nname = \"fedbuff\"\nanomaly = { max_norm_z = 3.0, max_cosine_distance = 1.0 }\n").unwrap_err();
    assert!(e.contains("strategy.anomaly"), "{e}");
    let e = parse("[strategy]\nname = \"fedbuff\"\n[secagg]\nclip_range = 1.0\n").unwrap_err();
    assert!(
        e.contains("strategy.name") && e.contains("asynchronous"),
        "{e}"
    );
    let e =
        parse("[strategy]\nname = \"fedbuff\"\n[attack]\nkind = \"sign_flip\"\nfraction = 0.2\n")
            .unwrap_err();
    assert!(e.contains("attack"), "{e}");
    let e = parse("[strategy]\nname = \"krum\"\nf = 1\nmax_staleness = 3\n").unwrap_err();
    assert!(e.contains("max_staleness"), "{e}");
}

#[test]
fn the_example_scenario_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/digits-fedbuff.toml");
    let s = Scenario::load(&path, &Overrides::default()).unwrap();
    let fb = s.strategy.fedbuff.unwrap();
    assert_eq!(
        (fb.buffer_size, fb.concurrency, fb.max_staleness),
        (5, 15, 20)
    );
    assert_eq!(s.round.train_ticks, (5, 100));
}
