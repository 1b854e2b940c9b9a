//! Strategies and attackers end to end on the built-in digits data.

use crate::common::{Digits, IID};

use flotilla_sim::SimOutcome;

const DIGITS: Digits = Digits {
    name: "digits-strategies",
    ..Digits::DEFAULT
};

fn run(extra: &str) -> SimOutcome {
    DIGITS.run(extra).unwrap()
}

const SIGN_FLIP: &str = "[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0\n";

#[test]
fn sign_flip_hurts_fedavg_and_the_median_resists_it() {
    // IID, where the median's breakdown guarantee applies cleanly. (Under strong label skew the
    // honest deltas disagree per coordinate and a 20% minority moves the median too: BENCHMARKS.md.)
    let iid = Digits {
        partition: IID,
        ..DIGITS
    };
    let run_iid = |extra: &str| iid.run(extra).unwrap();
    let clean = run_iid("");
    let attacked = run_iid(SIGN_FLIP);
    let median = run_iid(&format!("[strategy]\nname = \"median\"\n{SIGN_FLIP}"));
    assert_eq!(attacked.attackers.len(), 8, "20% of 40 clients");
    assert!(
        attacked.final_accuracy < clean.final_accuracy - 0.1,
        "sign flip should degrade FedAvg: clean {} attacked {}",
        clean.final_accuracy,
        attacked.final_accuracy
    );
    assert!(
        median.final_accuracy > attacked.final_accuracy + 0.1,
        "median {} should beat attacked FedAvg {}",
        median.final_accuracy,
        attacked.final_accuracy
    );
}

#[test]
fn anomaly_filter_quarantines_mostly_attackers_and_records_why() {
    let out = run(&format!(
        "[strategy]\nname = \"fedavg\"\nanomaly = {{ max_norm_z = 3.0, max_cosine_distance = 1.0 }}\n{SIGN_FLIP}"
    ));
    let quarantined: usize = out.history.iter().map(|r| r.quarantined.len()).sum();
    let attackers: usize = out
        .history
        .iter()
        .filter_map(|r| r.quarantined_attackers)
        .sum();
    assert!(quarantined > 0, "something was quarantined");
    assert!(
        attackers * 3 >= quarantined * 2,
        "{attackers} of {quarantined} quarantined were attackers"
    );
    assert!(
        out.history
            .iter()
            .flat_map(|r| &r.quarantined)
            .all(|q| !q.reason.is_empty())
    );
    assert!(out.final_accuracy > 0.7, "final {}", out.final_accuracy);
}

#[test]
fn server_optimizers_and_scaffold_train() {
    // FedAvg reaches ≈ 0.88 here; chance is 0.1. Krum and the median discard most of the (label-skewed)
    // information by design, so their bar is lower.
    for (extra, bar) in [
        (
            "[strategy]\nname = \"fedavgm\"\nserver_lr = 0.1\nmomentum = 0.9\n",
            0.7,
        ),
        ("[strategy]\nname = \"fedadam\"\nserver_lr = 0.05\n", 0.7),
        ("[strategy]\nname = \"fedyogi\"\nserver_lr = 0.05\n", 0.7),
        ("[strategy]\nname = \"fedadagrad\"\nserver_lr = 0.05\n", 0.7),
        ("[strategy]\nname = \"fedprox\"\nmu = 0.1\n", 0.7),
        ("[strategy]\nname = \"scaffold\"\n", 0.7),
        ("[strategy]\nname = \"trimmed_mean\"\nbeta = 0.1\n", 0.7),
        ("[strategy]\nname = \"median\"\n", 0.6),
        (
            "[round]\nmin_report_fraction = 1.0\n[strategy]\nname = \"krum\"\nf = 2\nm = 4\n",
            0.55,
        ),
    ] {
        let out = run(extra);
        assert_eq!(out.history.len(), 12, "{extra}");
        assert!(
            out.final_accuracy > bar,
            "{extra}: final accuracy {} ≤ {bar}",
            out.final_accuracy
        );
    }
}

#[test]
fn fedprox_with_large_mu_stays_closer_to_the_start() {
    // μ → large pins local models to the global one, so the model moves less per round.
    let norm = |o: &SimOutcome| {
        o.final_params
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let plain = run("[strategy]\nname = \"fedprox\"\nmu = 0.0\n");
    let strong = run("[strategy]\nname = \"fedprox\"\nmu = 5.0\n");
    assert!(
        norm(&strong) < norm(&plain) * 0.8,
        "μ=5: {} vs μ=0: {}",
        norm(&strong),
        norm(&plain)
    );
}

#[test]
fn backdoor_success_is_measured_and_label_flip_runs() {
    let out =
        run("[attack]\nkind = \"backdoor\"\nfraction = 0.3\ntarget = 0\npoison_fraction = 1.0\n");
    let b = out
        .final_backdoor_success
        .expect("backdoor success measured");
    assert!((0.0..=1.0).contains(&b));
    assert!(
        out.history
            .last()
            .and_then(|r| r.backdoor_success)
            .is_some()
    );
    let flipped = run("[attack]\nkind = \"label_flip\"\nfraction = 0.2\n");
    assert!(flipped.final_backdoor_success.is_none());
}

#[test]
fn bad_strategy_and_attack_parameters_name_the_field() {
    let err = |extra: &str| DIGITS.parse(extra).unwrap_err().to_string();
    assert!(err("[strategy]\nname = \"trimmed_mean\"\nbeta = 0.5\n").starts_with("strategy.beta"));
    assert!(
        err("[round]\nmin_report_fraction = 0.5\n[strategy]\nname = \"krum\"\nf = 2\n")
            .starts_with("strategy.f"),
        "min reports 5 → f ≤ 1"
    );
    assert!(err("[strategy]\nname = \"fedprox\"\nmu = -1.0\n").starts_with("strategy.mu"));
    assert!(
        err("[strategy]\nname = \"fedadam\"\nserver_lr = 0.0\n").starts_with("strategy.server_lr")
    );
    assert!(err("[strategy]\nname = \"median\"\nbeta = 0.1\n").starts_with("strategy"));
    assert!(err("[strategy]\nname = \"nope\"\n").starts_with("strategy.name"));
    assert!(err("[attack]\nkind = \"sign_flip\"\nfraction = 1.5\n").starts_with("attack.fraction"));
    assert!(
        err("[attack]\nkind = \"gaussian\"\nfraction = 0.1\nscale = 2.0\n")
            .starts_with("attack.scale")
    );
    assert!(
        err("[attack]\nkind = \"backdoor\"\nfraction = 0.1\ntarget = 10\n")
            .starts_with("attack.target")
    );
    assert!(err("[attack]\nkind = \"teleport\"\nfraction = 0.1\n").starts_with("attack.kind"));
}
