//! Distributed differential privacy over secure aggregation in the simulator (`[privacy] mode =
//! "distributed"` with `[secagg]`), end to end on the built-in digits data.

use std::path::Path;

use flotilla_sim::scenario::Overrides;
use flotilla_sim::{Scenario, ScenarioError, SimOutcome};

const BASE: &str = r#"
name = "digits-secagg-dp"
seed = 7
rounds = 1
clients = 10
clients_per_round = 10
[partition]
kind = "iid"
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 16
"#;

fn scenario(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, &Overrides::default())
}

fn run(s: &Scenario) -> SimOutcome {
    flotilla_sim::run(s, Path::new("unused-for-digits"), &mut |_| {}).unwrap()
}

fn privacy(mode: &str, sigma: f64, clip: f64) -> String {
    format!(
        "[privacy]\nmode = \"{mode}\"\nnoise_multiplier = {sigma:e}\nclip_norm = {clip}\ndelta = 1e-5\n"
    )
}

/// With a negligible σ, the secure round commits what central DP-FedAvg commits — the clipped deltas
/// summed unweighted over the fixed denominator — within the fixed-point quantization bound.
#[test]
fn tiny_sigma_secure_round_equals_the_central_clipped_mean_within_the_quantization_bound() {
    let c = 0.05;
    let base = format!("{BASE}learning_rate = 0.1\n[round]\nmin_report_fraction = 1.0\n");
    let central = scenario(&format!("{base}{}", privacy("central", 1e-9, c))).unwrap();
    let r = 1.01 * c;
    let secure = scenario(&format!(
        "{base}{}[secagg]\nclip_range = {r}\n",
        privacy("distributed", 1e-9, c)
    ))
    .unwrap();
    let (a, b) = (run(&secure), run(&central));
    assert_eq!((a.history.len(), b.history.len()), (1, 1));
    assert_eq!(a.history[0].participants, 10);
    let unclipped = b.history[0].privacy.unwrap().dp_unclipped_fraction;
    assert!(
        unclipped < 1.0,
        "C = {c} is small enough that clipping matters ({unclipped})"
    );
    let pa = a.history[0].privacy.unwrap();
    assert_eq!(
        pa.dp_noise_std, 0.0,
        "the server adds no noise in distributed mode"
    );
    assert!(
        pa.epsilon_spent > 0.0 && pa.epsilon_spent == b.history[0].privacy.unwrap().epsilon_spent
    );
    let params = secure
        .secagg
        .as_ref()
        .unwrap()
        .params(10, a.final_params.len())
        .unwrap();
    let bound = params.quantization_error_bound(10) / 10.0;
    let mut worst = 0.0f64;
    for (i, (x, y)) in a.final_params.iter().zip(&b.final_params).enumerate() {
        let err = (f64::from(*x) - f64::from(*y)).abs();
        let tol = bound + 1e-9 + 4.0 * f64::from(f32::EPSILON) * f64::from(y.abs()).max(1.0);
        assert!(
            err <= tol,
            "coordinate {i}: secure {x} vs central {y} (error {err:e} > {tol:e})"
        );
        worst = worst.max(err);
    }
    // Really the same round: a missing or different clipping would be far off.
    assert!(worst < 1e-6, "{worst}");
    assert_eq!(a.privacy.as_ref().unwrap().clamped_values, 0);
}

/// With a real σ and (almost) no training signal, the committed model change *is* the noise of the
/// aggregate: `Σ shares / m` with `k` contributors of std `σC/√n_min` each, i.e. std
/// `σC·√(k/n_min)/m` per coordinate. Dropouts make `k < m`, so dividing by the survivors instead of
/// the fixed `m`, or sizing the shares by `m` instead of `n_min`, is caught.
#[test]
fn aggregate_noise_has_std_sigma_c_over_the_fixed_denominator() {
    let (sigma, c, m, n_min) = (1.0, 0.05, 10.0f64, 5.0f64);
    let mut z = Vec::new();
    let mut ks = Vec::new();
    for seed in [7u64, 8, 9, 10] {
        // learning_rate 1e-30: the trained deltas are ~1e-31, far below the noise (5e-3).
        let text = format!(
            "{}learning_rate = 1e-30\n[round]\nmin_report_fraction = 0.5\nmax_attempts = 5\n[simulation]\ndropout = 0.3\n{}[secagg]\nclip_range = 0.3\n",
            BASE.replace("seed = 7", &format!("seed = {seed}")),
            privacy("distributed", sigma, c),
        );
        let s = scenario(&text).unwrap();
        let out = run(&s);
        assert_eq!(out.history.len(), 1);
        let k = out.history[0].participants as f64;
        ks.push(k);
        let initial = {
            let prepared = flotilla_sim::prepare(&s, Path::new("unused-for-digits")).unwrap();
            let train = &prepared.data.train;
            let spec = flotilla_ml::ModelSpec {
                kind: s.model.kind,
                input_shape: train.feature_shape.clone(),
                num_classes: train.num_classes,
            };
            flotilla_ml::build(&spec, s.seed).unwrap().parameters()
        };
        let want = sigma * c * (k / n_min).sqrt() / m;
        z.extend(
            out.final_params
                .iter()
                .zip(&initial)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)) / want),
        );
        assert_eq!(out.privacy.as_ref().unwrap().clamped_values, 0);
    }
    assert!(
        ks.iter().any(|k| *k < m),
        "dropouts left fewer than m contributors in some run: {ks:?}"
    );
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let sd = (z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // ~2,600 standard-normal samples: the sample std is within ±1.5% (1σ) of 1, the mean within ±0.02.
    assert!((sd - 1.0).abs() < 0.08, "normalized std {sd} (k = {ks:?})");
    assert!(mean.abs() < 0.1, "normalized mean {mean}");
}

#[test]
fn the_budget_stops_a_secure_run_before_the_round_that_would_exceed_it() {
    let text = |eps: f64| {
        format!(
            "{}learning_rate = 0.1\n{}max_epsilon = {eps}\n[secagg]\nclip_range = 1.0\n",
            BASE.replace("rounds = 1", "rounds = 6")
                .replace("clients = 10", "clients = 20"),
            privacy("distributed", 1.0, 0.05),
        )
    };
    // One round at q = 0.5, σ = 1 costs a few ε; find the spend after 2 rounds, then budget just above it.
    let two = run(&scenario(&text(1e3).replace("rounds = 6", "rounds = 2")).unwrap());
    let eps2 = two.privacy.as_ref().unwrap().epsilon_spent;
    assert!(eps2 > 0.0);
    let out = run(&scenario(&text(eps2 * 1.0001)).unwrap());
    assert_eq!(
        out.history.len(),
        2,
        "rounds 1 and 2 fit the budget, round 3 does not"
    );
    let p = out.privacy.as_ref().unwrap();
    assert!((p.epsilon_spent - eps2).abs() < 1e-9 && p.epsilon_spent <= eps2 * 1.0001);
    let why = p.stopped_reason.as_deref().expect("stopped_reason");
    assert!(why.contains("privacy budget"), "{why}");
    // A budget the first round already exceeds: nothing is trained.
    let none = run(&scenario(&text(1e-3)).unwrap());
    assert!(none.history.is_empty());
    assert!(none.privacy.as_ref().unwrap().stopped_reason.is_some());
}

#[test]
fn incompatible_privacy_and_secagg_settings_are_refused_at_load_naming_the_key() {
    let err = |extra: &str| match scenario(&format!(
        "{BASE}learning_rate = 0.1\n[round]\nmin_report_fraction = 0.5\n{extra}"
    )) {
        Err(ScenarioError::Invalid { field, message }) => (field, message),
        other => panic!("{extra}: {other:?}"),
    };
    // Adaptive clipping needs a count secure aggregation hides — in either mode.
    let adaptive = "[privacy]\nnoise_multiplier = 1.0\ndelta = 1e-5\n[privacy.adaptive]\ncount_noise_std = 1.0\n";
    for mode in ["", "mode = \"distributed\"\n"] {
        let text = adaptive.replace("[privacy]\n", &format!("[privacy]\n{mode}"));
        let (f, m) = err(&format!("{text}[secagg]\nclip_range = 10.0\n"));
        assert_eq!(f, "privacy.adaptive", "{mode}: {m}");
        assert!(m.contains("[secagg]"), "{m}");
    }
    // Central noise would be the server's: distributed mode is required.
    let (f, m) = err(&format!(
        "{}[secagg]\nclip_range = 10.0\n",
        privacy("central", 1.0, 0.1)
    ));
    assert_eq!(f, "privacy.mode");
    assert!(m.contains("distributed"), "{m}");
    // σ = 1, C = 0.1, n_min = 5 (min_report_fraction 0.5 × 10): the range must be ≥ 0.1 + 10 × 0.1/√5 ≈ 0.5472.
    let (f, m) = err(&format!(
        "{}[secagg]\nclip_range = 0.5\n",
        privacy("distributed", 1.0, 0.1)
    ));
    assert_eq!(f, "secagg.clip_range");
    assert!(
        m.contains("0.54721")
            && m.contains("privacy.clip_norm")
            && m.contains("privacy.noise_multiplier"),
        "{m}"
    );
    assert!(
        scenario(&format!(
            "{BASE}learning_rate = 0.1\n[round]\nmin_report_fraction = 0.5\n{}[secagg]\nclip_range = 0.55\n",
            privacy("distributed", 1.0, 0.1)
        ))
        .is_ok()
    );
}

#[test]
fn the_secagg_dp_example_scenario_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/digits-secagg-dp.toml");
    let s = Scenario::load(&path, &Overrides::default()).unwrap();
    assert!(s.secagg.is_some());
    assert_eq!(
        s.privacy.unwrap().dp.mode,
        flotilla_core::dp::DpMode::Distributed
    );
    assert!(flotilla_sim::round_policy(&s).secure_aggregation());
}
