//! The simulator end to end on the built-in digits data.

use std::path::Path;

use crate::common::{DIRICHLET, Digits, IID, LOGREG, run};

use flotilla_sim::{Scenario, SimError, SimEvent};

const DIGITS: Digits = Digits {
    clients_per_round: 8,
    ..Digits::DEFAULT
};

fn scenario(extra: &str) -> Scenario {
    DIGITS.parse(extra).unwrap()
}

#[test]
fn training_improves_accuracy_well_above_chance() {
    let out = run(&scenario("")).unwrap();
    assert_eq!(out.history.len(), 12);
    assert!(
        out.initial_accuracy < 0.3,
        "initial {}",
        out.initial_accuracy
    );
    assert!(
        out.final_accuracy > 0.75,
        "final accuracy {} should exceed 0.75 after 12 rounds",
        out.final_accuracy
    );
    assert!(out.history.iter().all(|r| r.participants == 8));
    assert_eq!(out.model_sha256.len(), 64);
}

#[test]
fn result_does_not_depend_on_thread_count() {
    let shas: Vec<String> = [1, 2, 3]
        .iter()
        .map(|t| {
            run(&scenario(&format!("[simulation]\nthreads = {t}\n")))
                .unwrap()
                .model_sha256
        })
        .collect();
    assert_eq!(shas[0], shas[1]);
    assert_eq!(shas[0], shas[2]);
}

#[test]
fn dropouts_commit_from_survivors_or_retry() {
    let out = run(&scenario(
        "[round]\nmin_report_fraction = 0.5\n[simulation]\ndropout = 0.3\n",
    ))
    .unwrap();
    assert_eq!(out.history.len(), 12, "every round commits eventually");
    assert!(
        out.history.iter().any(|r| r.participants < 8),
        "some rounds lost clients"
    );
    assert!(
        out.history.iter().all(|r| r.participants >= 4),
        "no round commits below the minimum"
    );

    // Nearly everyone drops and the minimum is high: attempts are abandoned until the job fails.
    let mut abandoned = 0;
    let err = flotilla_sim::run(
        &scenario(
            "[round]\nmin_report_fraction = 0.9\nmax_attempts = 5\n[simulation]\ndropout = 0.9\n",
        ),
        Path::new("."),
        &mut |e| {
            if matches!(e, SimEvent::RoundAbandoned { .. }) {
                abandoned += 1;
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, SimError::JobFailed(_)), "{err}");
    assert!(
        abandoned >= 5,
        "each attempt is reported before failing ({abandoned})"
    );
}

#[test]
fn over_selection_fills_the_round_despite_dropouts() {
    let out = run(&scenario(
        "[round]\nover_selection = 2.0\nmin_report_fraction = 1.0\n[simulation]\ndropout = 0.2\n",
    ))
    .unwrap();
    assert_eq!(out.history.len(), 12);
    assert!(
        out.history.iter().all(|r| r.participants == 8),
        "over-selected cohorts reach the target"
    );
    assert!(
        out.late_reports > 0,
        "the extra over-selected reports arrive late and are refused"
    );
}

#[test]
fn other_partitioners_and_models_run() {
    for (partition, model) in [
        (DIRICHLET, LOGREG),
        (IID, "kind = \"mlp\"\nhidden = 16"),
        ("kind = \"shards\"\nclasses_per_client = 2", LOGREG),
        (
            "kind = \"quantity_skew\"\nalpha = 1.0\nmin_samples = 5",
            LOGREG,
        ),
    ] {
        let digits = Digits {
            rounds: 3,
            partition,
            model,
            ..DIGITS
        };
        let out = digits.run("").unwrap();
        assert_eq!(out.history.len(), 3, "{partition:?} {model:?}");
    }
}
