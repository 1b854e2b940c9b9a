//! ε against Google's `dp-accounting` 0.6.0, over the table `scripts/dp_reference.py` writes.

use flotilla_privacy::{RdpAccountant, epsilon};

struct Row {
    q: f64,
    sigma: f64,
    steps: u64,
    delta: f64,
    epsilon: f64,
    order: f64,
}

fn table() -> Vec<Row> {
    let text = include_str!("../data/dp_accounting_reference.csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("sampling_rate,noise_multiplier,steps,delta,epsilon,order"),
        "unexpected header"
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "bad row {line:?}");
            let num = |i: usize| {
                f[i].parse::<f64>()
                    .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            };
            Row {
                q: num(0),
                sigma: num(1),
                steps: f[2].parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
                delta: num(3),
                epsilon: num(4),
                order: num(5),
            }
        })
        .collect()
}

#[test]
fn epsilon_within_one_percent_of_dp_accounting() {
    let rows = table();
    assert!(rows.len() >= 40, "the table has {} rows", rows.len());
    let mut worst = (0.0f64, String::new());
    let mut order_mismatches = 0;
    for r in &rows {
        let got = epsilon(r.q, r.sigma, r.steps, r.delta).expect("valid row");
        let rel = (got.epsilon - r.epsilon).abs() / r.epsilon.abs().max(1e-12);
        let what = format!(
            "q={} sigma={} steps={} delta={}: ours {} (order {}), dp-accounting {} (order {})",
            r.q, r.sigma, r.steps, r.delta, got.epsilon, got.order, r.epsilon, r.order
        );
        assert!(rel <= 0.01, "{what}: relative error {rel:e}");
        if got.order != r.order {
            order_mismatches += 1;
        }
        if rel >= worst.0 {
            worst = (rel, what);
        }
    }
    println!(
        "{} rows; max relative error {:e} at {}; {} optimal orders differ",
        rows.len(),
        worst.0,
        worst.1,
        order_mismatches
    );
}

#[test]
fn the_table_covers_the_required_box() {
    let rows = table();
    let min_max = |f: &dyn Fn(&Row) -> f64| {
        rows.iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            })
    };
    assert_eq!(min_max(&|r| r.q), (0.001, 0.2));
    assert_eq!(min_max(&|r| r.sigma), (0.5, 6.0));
    assert_eq!(min_max(&|r| r.steps as f64), (1.0, 20_000.0));
    assert_eq!(min_max(&|r| r.delta), (1e-7, 1e-5));
}

#[test]
fn composing_round_by_round_matches_composing_at_once() {
    // The table composes T steps at once; a job composes one round at a time.
    for r in table().iter().filter(|r| r.steps <= 2000) {
        let mut a = RdpAccountant::new();
        for _ in 0..r.steps {
            a.compose(r.q, r.sigma, 1).expect("valid");
        }
        let (eps, _) = a.epsilon(r.delta).expect("valid delta");
        assert!(
            (eps - r.epsilon).abs() <= 0.01 * r.epsilon,
            "{eps} vs {}",
            r.epsilon
        );
    }
}
