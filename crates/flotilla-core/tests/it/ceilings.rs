//! Issue 12 item 5: every ceiling of the shared spec types — `RoundPolicy`, `StrategySpec`,
//! `PrivacySpec` — refuses a value just over it, naming the key and the rule, and accepts the
//! ceiling itself.

use flotilla_core::dp::{PrivacyConfig, PrivacySpec};
use flotilla_core::limits::*;
use flotilla_core::round::RoundPolicy;
use flotilla_core::strategy::{StrategyConfig, StrategySpec};

fn policy_error(edit: impl Fn(&mut RoundPolicy)) -> String {
    let mut p = RoundPolicy::new(10, 5);
    edit(&mut p);
    p.validate()
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn round_policy_ceilings() {
    assert_eq!(policy_error(|_| {}), "");
    type Edit = Box<dyn Fn(&mut RoundPolicy)>;
    let cases: Vec<(&str, Edit, Edit)> = vec![
        (
            "rounds",
            Box::new(|p| p.rounds = MAX_ROUNDS),
            Box::new(|p| p.rounds = i64::MAX as u64),
        ),
        (
            "clients_per_round",
            Box::new(|p| {
                p.clients_per_round = MAX_CLIENTS_PER_ROUND;
                p.min_clients = MAX_CLIENTS_PER_ROUND;
            }),
            Box::new(|p| {
                p.clients_per_round = i64::MAX as usize;
                p.min_clients = i64::MAX as usize;
            }),
        ),
        (
            "min_clients",
            Box::new(|p| p.min_clients = MAX_CLIENTS),
            Box::new(|p| p.min_clients = MAX_CLIENTS + 1),
        ),
        (
            "over_selection",
            Box::new(|p| p.over_selection = MAX_OVER_SELECTION),
            Box::new(|p| p.over_selection = 1e300),
        ),
        (
            "round_deadline",
            Box::new(|p| p.stage_deadline_ms = MAX_DEADLINE_MS),
            Box::new(|p| p.stage_deadline_ms = MAX_DEADLINE_MS + 1),
        ),
        (
            "max_attempts",
            Box::new(|p| p.max_attempts = MAX_ATTEMPTS),
            Box::new(|p| p.max_attempts = u32::MAX),
        ),
        (
            "checkin_ttl",
            Box::new(|p| p.checkin_ttl_ms = CHECKIN_TTL_NEVER),
            Box::new(|p| p.checkin_ttl_ms = u64::MAX),
        ),
        (
            "selection_window_ms",
            Box::new(|p| p.selection_window_ms = MAX_SELECTION_WINDOW_MS),
            Box::new(|p| p.selection_window_ms = MAX_SELECTION_WINDOW_MS + 1),
        ),
        (
            "retry_after_ms",
            Box::new(|p| p.retry_after_ms = MAX_RETRY_AFTER_MS),
            Box::new(|p| p.retry_after_ms = u64::MAX),
        ),
        (
            "max_samples_per_report",
            Box::new(|p| p.max_samples_per_report = MAX_SAMPLES),
            Box::new(|p| p.max_samples_per_report = u64::MAX),
        ),
    ];
    for (key, at, over) in cases {
        assert_eq!(policy_error(&*at), "", "{key} at its ceiling");
        let e = policy_error(&*over);
        assert!(e.starts_with(&format!("{key}: must be")), "{key}: {e}");
        assert!(e.contains('≤') || e.contains("in [1, 10]"), "{key}: {e}");
    }
}

fn strategy_error(toml: &str) -> String {
    let cfg: StrategyConfig = flotilla_core::config_toml::from_str(toml).unwrap();
    StrategySpec::from_config(&cfg, 10)
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn strategy_ceilings() {
    for (key, ok, over) in [
        (
            "strategy.server_lr",
            "name = \"fedavgm\"\nserver_lr = 100",
            "name = \"fedavgm\"\nserver_lr = 1e300",
        ),
        (
            "strategy.tau",
            "name = \"fedadam\"\ntau = 1000",
            "name = \"fedadam\"\ntau = 1e300",
        ),
        (
            "strategy.mu",
            "name = \"fedprox\"\nmu = 1000",
            "name = \"fedprox\"\nmu = 1e300",
        ),
        (
            "strategy.clip_norm",
            "name = \"fedavg\"\nclip_norm = 1e6",
            "name = \"fedavg\"\nclip_norm = 1e300",
        ),
        (
            "strategy.max_norm",
            "name = \"norm_bound\"\nmax_norm = 1e6",
            "name = \"norm_bound\"\nmax_norm = 1e300",
        ),
        (
            "strategy.concurrency",
            "name = \"fedbuff\"\nconcurrency = 1000000",
            "name = \"fedbuff\"\nconcurrency = 1000001",
        ),
        (
            "strategy.buffer_size",
            "name = \"fedbuff\"\nbuffer_size = 1000000",
            "name = \"fedbuff\"\nbuffer_size = 1000001",
        ),
        (
            "strategy.max_staleness",
            "name = \"fedbuff\"\nmax_staleness = 1000",
            "name = \"fedbuff\"\nmax_staleness = 1001",
        ),
        (
            "strategy.anomaly.max_norm_z",
            "name = \"fedavg\"\n[anomaly]\nmax_norm_z = 1000\nmax_cosine_distance = 1.0",
            "name = \"fedavg\"\n[anomaly]\nmax_norm_z = 1e300\nmax_cosine_distance = 1.0",
        ),
    ] {
        assert_eq!(strategy_error(ok), "", "{key} at its ceiling");
        let e = strategy_error(over);
        assert!(e.starts_with(&format!("{key}: must be")), "{key}: {e}");
    }
}

fn privacy_error(toml: &str) -> String {
    let cfg: PrivacyConfig = flotilla_core::config_toml::from_str(toml).unwrap();
    PrivacySpec::from_config(&cfg, 10, 8)
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn privacy_ceilings() {
    let base = |extra: &str, sigma: &str, clip: &str, delta: &str| {
        format!("noise_multiplier = {sigma}\n{clip}delta = {delta}\n{extra}")
    };
    let fixed = "clip_norm = 1.0\n";
    assert_eq!(
        privacy_error(&base("", "1000", fixed, "1e-12")),
        "",
        "σ and δ at their ceilings"
    );
    assert_eq!(
        privacy_error(&base(
            "max_epsilon = 1000\npopulation = 10000000000\n",
            "1",
            "clip_norm = 1e6\n",
            "0.1"
        )),
        ""
    );
    for (key, text) in [
        ("privacy.noise_multiplier", base("", "1e300", fixed, "1e-5")),
        ("privacy.noise_multiplier", base("", "inf", fixed, "1e-5")),
        ("privacy.delta", base("", "1", fixed, "1e-300")),
        ("privacy.delta", base("", "1", fixed, "0.5")),
        (
            "privacy.clip_norm",
            base("", "1", "clip_norm = 1e300\n", "1e-5"),
        ),
        (
            "privacy.max_epsilon",
            base("max_epsilon = 1e300\n", "1", fixed, "1e-5"),
        ),
        (
            "privacy.population",
            base("population = 10000000001\n", "1", fixed, "1e-5"),
        ),
        (
            "privacy.adaptive.initial_clip_norm",
            base("[adaptive]\ninitial_clip_norm = 1e300\n", "1", "", "1e-5"),
        ),
        (
            "privacy.adaptive.learning_rate",
            base("[adaptive]\nlearning_rate = 1e300\n", "1", "", "1e-5"),
        ),
        (
            "privacy.adaptive.count_noise_std",
            base("[adaptive]\ncount_noise_std = 1e300\n", "1", "", "1e-5"),
        ),
    ] {
        let e = privacy_error(&text);
        assert!(
            e.starts_with(&format!("{key}: must be")),
            "{key}: {e}\n{text}"
        );
    }
}
