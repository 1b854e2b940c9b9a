//! Differential privacy end to end in the simulator, on the built-in digits data.

use crate::common::{Digits, IID};

use flotilla_sim::SimOutcome;

const DIGITS: Digits = Digits {
    name: "digits-dp",
    seed: 7,
    rounds: 10,
    clients_per_round: 20,
    partition: IID,
    ..Digits::DEFAULT
};

fn run(extra: &str) -> SimOutcome {
    DIGITS.run(extra).unwrap()
}

const CENTRAL: &str = "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 2.0\ndelta = 1e-5\n";

#[test]
fn central_dp_accounts_every_round_and_is_reproducible() {
    let a = run(CENTRAL);
    let b = run(CENTRAL);
    assert_eq!(
        a.model_sha256, b.model_sha256,
        "noise is seeded: same scenario, same model"
    );
    assert_eq!(a.history.len(), 10);
    let p = a.privacy.as_ref().unwrap();
    // q = 20/40 for 10 rounds at σ = 1: the accountant's own closed form.
    let want = flotilla_privacy::epsilon(0.5, 1.0, 10, 1e-5)
        .unwrap()
        .epsilon;
    assert!(
        (p.epsilon_spent - want).abs() < 1e-12,
        "{} vs {want}",
        p.epsilon_spent
    );
    assert_eq!((p.sampling_rate, p.rounds, p.delta), (0.5, 10, 1e-5));
    let per_round: Vec<f64> = a
        .history
        .iter()
        .map(|r| r.privacy.unwrap().epsilon_spent)
        .collect();
    assert!(
        per_round.windows(2).all(|w| w[0] < w[1]),
        "ε grows every round: {per_round:?}"
    );
    assert_eq!(*per_round.last().unwrap(), p.epsilon_spent);
    let r = a.history[0].privacy.unwrap();
    assert_eq!((r.dp_clip_norm, r.dp_noise_std), (2.0, 2.0));
    // The noise changes the model: it differs from the same run without DP.
    let plain = run("");
    assert_ne!(plain.model_sha256, a.model_sha256);
    assert!(plain.privacy.is_none());
}

#[test]
fn a_round_over_budget_is_refused_before_it_starts() {
    // Find how many rounds fit in ε ≤ budget and check the run stops exactly there.
    let budget = flotilla_privacy::epsilon(0.5, 1.0, 4, 1e-5)
        .unwrap()
        .epsilon
        + 1e-9;
    let out = run(&format!("{CENTRAL}max_epsilon = {budget}\n"));
    assert_eq!(out.history.len(), 4, "rounds 1–4 fit, round 5 would not");
    let p = out.privacy.unwrap();
    assert!(p.epsilon_spent <= budget);
    let why = p.stopped_reason.expect("the run says why it stopped");
    assert!(
        why.contains("round 5") && why.contains("refused") && why.contains("budget"),
        "{why}"
    );
    // A budget too small for even one round trains nothing.
    let none = run(&format!("{CENTRAL}max_epsilon = 0.01\n"));
    assert!(none.history.is_empty());
    assert_eq!(none.privacy.unwrap().epsilon_spent, 0.0);
}

#[test]
fn distributed_and_adaptive_modes_run_and_learn_with_little_noise() {
    let plain = run("");
    let dist = run(
        "[privacy]\nmode = \"distributed\"\nnoise_multiplier = 0.05\nclip_norm = 5.0\ndelta = 1e-5\n",
    );
    assert!(dist.privacy.as_ref().unwrap().epsilon_spent > 0.0);
    assert_eq!(
        dist.history[0].privacy.unwrap().dp_noise_std,
        0.0,
        "the server adds nothing in distributed mode"
    );
    assert!(
        dist.final_accuracy > plain.final_accuracy - 0.1,
        "distributed {} vs plain {}",
        dist.final_accuracy,
        plain.final_accuracy
    );
    let adaptive = run(
        "[privacy]\nnoise_multiplier = 0.05\ndelta = 1e-5\n[privacy.adaptive]\ninitial_clip_norm = 0.1\n",
    );
    let clips: Vec<f64> = adaptive
        .history
        .iter()
        .map(|r| r.privacy.unwrap().dp_clip_norm)
        .collect();
    assert_eq!(clips[0], 0.1);
    assert!(
        clips[9] > 0.1,
        "deltas are far above 0.1, so C grows: {clips:?}"
    );
}

#[test]
fn invalid_privacy_settings_are_refused_by_name() {
    let field = |extra: &str| match DIGITS.parse(extra) {
        Err(flotilla_sim::ScenarioError::Invalid { field, .. }) => field,
        other => panic!("{extra}: {other:?}"),
    };
    assert_eq!(
        field("[privacy]\nclip_norm = 1.0\ndelta = 1e-5\n"),
        "privacy.noise_multiplier"
    );
    assert_eq!(
        field("[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 2.0\n"),
        "privacy.delta"
    );
    assert_eq!(
        field(&format!("{CENTRAL}population = 100\n")),
        "privacy.population"
    );
    assert_eq!(
        field(&format!("[strategy]\nname = \"median\"\n{CENTRAL}")),
        "privacy"
    );
    assert_eq!(
        field(&format!("[strategy]\nname = \"scaffold\"\n{CENTRAL}")),
        "privacy"
    );
    assert!(
        DIGITS
            .parse(&format!("[strategy]\nname = \"fedavgm\"\n{CENTRAL}"))
            .is_ok()
    );
}
