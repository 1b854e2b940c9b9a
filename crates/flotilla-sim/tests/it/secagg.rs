//! Secure aggregation in the simulator, end to end on the built-in digits data.

use std::path::Path;

use flotilla_core::round::{Action, ClientId, Event, RoundMachine};
use flotilla_ml::{FitConfig, LocalObjective, ModelSpec, Samples};
use flotilla_sim::scenario::Overrides;
use flotilla_sim::{Scenario, SimError, SimEvent};

const BASE: &str = r#"
name = "digits-secagg"
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
learning_rate = 0.1
"#;

fn scenario(extra: &str) -> Result<Scenario, flotilla_sim::ScenarioError> {
    Scenario::parse(&format!("{BASE}{extra}"), &Overrides::default())
}

fn run(s: &Scenario) -> Result<(flotilla_sim::SimOutcome, Vec<SimEvent>), SimError> {
    let mut events = Vec::new();
    let out = flotilla_sim::run(s, Path::new("unused-for-digits"), &mut |e| {
        events.push(e.clone())
    })?;
    Ok((out, events))
}

/// Plain, uniform-weight FedAvg of one round computed by hand: every client of the scenario trains
/// from the initial model with the task seed the round machine gives it, its delta is clipped to
/// `[-r, r]`, and the deltas are averaged with equal weights.
fn uniform_fedavg_reference(s: &Scenario, r: f64) -> (Vec<f32>, usize) {
    let prepared = flotilla_sim::prepare(s, Path::new("unused-for-digits")).unwrap();
    let train = &prepared.data.train;
    let spec = ModelSpec {
        kind: s.model.kind,
        input_shape: train.feature_shape.clone(),
        num_classes: train.num_classes,
    };
    let mut trainer = flotilla_ml::build(&spec, s.seed).unwrap();
    let initial = trainer.parameters();
    // The same policy without secure aggregation configures the same tasks (same seeds).
    let mut policy = flotilla_sim::round_policy(s);
    policy.stages = vec![flotilla_core::round::StageKind::Train];
    let mut m =
        RoundMachine::new(policy, trainer.layout().clone(), initial.clone(), s.seed).unwrap();
    let mut acts = Vec::new();
    for c in 0..s.clients as u64 {
        acts.extend(m.handle(
            0,
            Event::CheckIn {
                client: ClientId(c),
            },
        ));
    }
    let timer = acts
        .iter()
        .find_map(|a| {
            if let Action::SetTimer { timer, .. } = a {
                Some(*timer)
            } else {
                None
            }
        })
        .unwrap();
    let tasks: Vec<_> = m
        .handle(0, Event::TimerFired(timer))
        .into_iter()
        .filter_map(|a| {
            if let Action::Configure { client, task } = a {
                Some((client, task))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(tasks.len(), s.clients_per_round);
    let mut sum = vec![0.0f64; initial.len()];
    let mut clipped = 0;
    for (client, task) in &tasks {
        trainer.set_parameters(&initial).unwrap();
        let idx = &prepared.partition.clients[client.0 as usize];
        let data = Samples {
            features: &train.features,
            feature_len: train.feature_len(),
            labels: &train.labels,
            indices: idx,
        };
        let cfg = FitConfig {
            epochs: s.train.local_epochs,
            batch_size: s.train.batch_size,
            learning_rate: s.train.learning_rate,
            seed: task.seed,
            max_grad_norm: None,
        };
        trainer
            .fit_with(
                &data,
                &cfg,
                &LocalObjective {
                    proximal_mu: 0.0,
                    gradient_correction: None,
                },
            )
            .unwrap();
        for ((acc, new), old) in sum.iter_mut().zip(trainer.parameters()).zip(&initial) {
            let d = f64::from(new - old);
            clipped += usize::from(d.abs() > r);
            *acc += d.clamp(-r, r);
        }
    }
    let n = tasks.len() as f64;
    let global = initial
        .iter()
        .zip(&sum)
        .map(|(g, s)| (f64::from(*g) + (s / n) as f32 as f64) as f32)
        .collect();
    (global, clipped)
}

#[test]
fn secure_round_equals_uniform_fedavg_of_clipped_deltas_within_the_quantization_bound() {
    let r = 0.02;
    // 30% of the clients vanish right after sending their masked input: their inputs still count.
    let s = scenario(&format!(
        "[secagg]\nclip_range = {r}\n[simulation]\nunmasking_dropout = 0.3\n"
    ))
    .unwrap();
    let (out, _) = run(&s).unwrap();
    assert_eq!(out.history.len(), 1);
    assert_eq!(out.history[0].attempt, 1, "the first attempt commits");
    assert_eq!(
        out.history[0].participants, 10,
        "unmasking dropouts are still contributors"
    );
    let (expected, clipped) = uniform_fedavg_reference(&s, r);
    assert!(
        clipped > 0,
        "the clip range is small enough that clipping matters"
    );
    let params = s
        .secagg
        .as_ref()
        .unwrap()
        .params(10, expected.len())
        .unwrap();
    // The decoded sum of m clients is within m/(2s); the mean within 1/(2s); plus f32 rounding.
    let bound = params.quantization_error_bound(10) / 10.0;
    let mut worst = 0.0f64;
    for (i, (a, b)) in out.final_params.iter().zip(&expected).enumerate() {
        let err = (f64::from(*a) - f64::from(*b)).abs();
        let tol = bound + 4.0 * f64::from(f32::EPSILON) * f64::from(b.abs()).max(1.0);
        assert!(
            err <= tol,
            "coordinate {i}: secure {a} vs plain {b} (error {err:e} > {tol:e})"
        );
        worst = worst.max(err);
    }
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn survivors_below_the_threshold_fail_the_run_with_the_reason() {
    // n = 5, complete graph (k = 4), t = 4: any unmasking dropout leaves a neighbourhood below t.
    let extra = "[round]\nmax_attempts = 5\n[secagg]\nclip_range = 1.0\nthreshold = 4\nneighbours = 4\n[simulation]\nunmasking_dropout = 0.5\n";
    let s = Scenario::parse(
        &format!(
            "{}{extra}",
            BASE.replace("clients = 10", "clients = 5")
                .replace("clients_per_round = 10", "clients_per_round = 5")
        ),
        &Overrides::default(),
    )
    .unwrap();
    let mut abandoned = 0;
    let err = flotilla_sim::run(&s, Path::new("unused-for-digits"), &mut |e| {
        abandoned += usize::from(matches!(e, SimEvent::RoundAbandoned { .. }))
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("round 1 failed 5 times"), "{msg}");
    assert!(
        msg.contains("secure aggregation failed") && msg.contains("threshold is 4"),
        "{msg}"
    );
    assert_eq!(abandoned, 5);
}

#[test]
fn secure_runs_train_and_are_deterministic_across_thread_counts() {
    let base = BASE
        .replace("rounds = 1", "rounds = 6")
        .replace("clients = 10", "clients = 20");
    let extra = "[strategy]\nname = \"fedavgm\"\nmomentum = 0.5\n[round]\nover_selection = 1.2\nmax_attempts = 5\n\
                 [secagg]\nclip_range = 0.5\n[simulation]\ndropout = 0.1\nunmasking_dropout = 0.2\n";
    let runs: Vec<_> = [1, 2]
        .iter()
        .map(|t| {
            let s = Scenario::parse(
                &format!("{base}{extra}threads = {t}\n"),
                &Overrides::default(),
            )
            .unwrap();
            run(&s).unwrap().0
        })
        .collect();
    assert_eq!(runs[0].model_sha256, runs[1].model_sha256);
    let out = &runs[0];
    assert_eq!(out.history.len(), 6);
    assert!(
        out.final_accuracy > out.initial_accuracy + 0.3,
        "{} → {}",
        out.initial_accuracy,
        out.final_accuracy
    );
    assert!(
        out.history
            .iter()
            .all(|r| r.participants <= 10 && r.participants >= 5),
        "{:?}",
        out.history
    );
}

#[test]
fn secagg_sections_are_validated_at_load_naming_the_key() {
    let err = |extra: &str| match scenario(extra) {
        Err(flotilla_sim::ScenarioError::Invalid { field, message }) => (field, message),
        other => panic!("{extra}: {other:?}"),
    };
    let (f, m) = err("[strategy]\nname = \"median\"\n[secagg]\nclip_range = 1.0\n");
    assert_eq!(f, "strategy.name");
    assert!(m.contains("median") && m.contains("sum"), "{m}");
    assert_eq!(
        err("[strategy]\nname = \"krum\"\nf = 1\n[secagg]\nclip_range = 1.0\n").0,
        "strategy.name"
    );
    assert_eq!(
        err("[strategy]\nname = \"trimmed_mean\"\nbeta = 0.1\n[secagg]\nclip_range = 1.0\n").0,
        "strategy.name"
    );
    assert_eq!(
        err("[strategy]\nname = \"scaffold\"\n[secagg]\nclip_range = 1.0\n").0,
        "strategy.name"
    );
    assert_eq!(
        err("[strategy]\nname = \"fedavg\"\n[strategy.anomaly]\nmax_norm_z = 3.0\nmax_cosine_distance = 1.0\n[secagg]\nclip_range = 1.0\n").0,
        "strategy.anomaly"
    );
    assert_eq!(err("[secagg]\nclip_range = 0.0\n").0, "secagg.clip_range");
    assert_eq!(
        err("[secagg]\nclip_range = 1.0\nthreshold = 99\n").0,
        "secagg.threshold"
    );
    assert_eq!(
        err("[secagg]\nclip_range = 1.0\nneighbours = 3\n").0,
        "secagg.neighbours"
    );
    assert_eq!(
        err("[secagg]\nclip_range = 1.0\n[simulation]\nunmasking_dropout = 1.0\n").0,
        "simulation.unmasking_dropout"
    );
    assert_eq!(
        err("[attack]\nkind = \"sign_flip\"\nfraction = 0.1\n[secagg]\nclip_range = 1.0\n").0,
        "attack"
    );
    assert!(matches!(
        scenario("[secagg]\nclip_range = 1.0\nbogus = 1\n"),
        Err(flotilla_sim::ScenarioError::Syntax { .. })
    ));
    // Sum-based strategies are fine.
    for ok in [
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedprox",
    ] {
        assert!(
            scenario(&format!(
                "[strategy]\nname = \"{ok}\"\n[secagg]\nclip_range = 1.0\n"
            ))
            .is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn the_secagg_example_scenario_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/digits-secagg.toml");
    let s = Scenario::load(&path, &Overrides::default()).unwrap();
    let sa = s.secagg.as_ref().expect("[secagg]");
    assert_eq!(sa.clip_range, 0.5);
    assert!(flotilla_sim::round_policy(&s).secure_aggregation());
}
