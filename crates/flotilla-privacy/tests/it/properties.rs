//! Invariants of the accountant and the budgets (clipping and noise are tested in flotilla-core's `dp`).

use flotilla_privacy::{Budget, JobPrivacy, PrivacyError, RdpAccountant, TenantLedger, epsilon};
use proptest::prelude::*;

fn q() -> impl Strategy<Value = f64> {
    0.001f64..=0.2
}

fn sigma() -> impl Strategy<Value = f64> {
    0.5f64..=6.0
}

fn delta() -> impl Strategy<Value = f64> {
    prop_oneof![Just(1e-7), Just(1e-6), Just(1e-5), 1e-8f64..1e-3]
}

/// Jobs run a few settings, not a new one every round (each new setting costs an RDP curve).
fn pool_q() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![0.01, 0.02, 0.05, 0.1, 0.2])
}

fn pool_sigma() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![0.8, 1.0, 1.5, 2.0, 4.0])
}

fn eps(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
    epsilon(q, sigma, steps, delta)
        .expect("valid parameters")
        .epsilon
}

/// Allows for the last-place noise of the series; monotonicity itself is what is checked.
fn le(a: f64, b: f64) -> bool {
    a <= b + 1e-9 * b.abs()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

    #[test]
    fn epsilon_grows_with_steps(q in q(), sigma in sigma(), t1 in 1u64..5000, dt in 0u64..5000, delta in delta()) {
        prop_assert!(eps(q, sigma, t1, delta) <= eps(q, sigma, t1 + dt, delta));
    }

    #[test]
    fn epsilon_grows_with_the_sampling_rate(q1 in q(), q2 in q(), sigma in sigma(), steps in 1u64..3000, delta in delta()) {
        let (lo, hi) = if q1 <= q2 { (q1, q2) } else { (q2, q1) };
        let (a, b) = (eps(lo, sigma, steps, delta), eps(hi, sigma, steps, delta));
        prop_assert!(le(a, b), "q {lo} -> {a}, q {hi} -> {b}");
    }

    #[test]
    fn epsilon_falls_with_the_noise(q in q(), s1 in sigma(), s2 in sigma(), steps in 1u64..3000, delta in delta()) {
        let (lo, hi) = if s1 <= s2 { (s1, s2) } else { (s2, s1) };
        let (a, b) = (eps(q, lo, steps, delta), eps(q, hi, steps, delta));
        prop_assert!(le(b, a), "sigma {lo} -> {a}, sigma {hi} -> {b}");
    }

    #[test]
    fn epsilon_falls_as_delta_grows(q in q(), sigma in sigma(), steps in 1u64..3000, d1 in delta(), d2 in delta()) {
        let (lo, hi) = if d1 <= d2 { (d1, d2) } else { (d2, d1) };
        prop_assert!(eps(q, sigma, steps, hi) <= eps(q, sigma, steps, lo));
    }

    #[test]
    fn restore_is_bit_exact_and_continues_identically(
        rounds in prop::collection::vec((any::<u32>(), any::<u32>(), 1u64..200), 1..12),
        extra in (any::<u32>(), any::<u32>(), 1u64..50),
    ) {
        // Arbitrary-precision q and σ (all 17 significant digits matter), from a small pool so
        // that runs repeat and merge.
        let param = |a: u32, b: u32| {
            let q = [0.01, 1.0 / 3.0, 0.123_456_789_012_345_67, 1.0][(a % 4) as usize];
            let sigma = [1.1, std::f64::consts::PI, 0.7 + f64::EPSILON * 4.0][(b % 3) as usize];
            (q, sigma)
        };
        let mut live = RdpAccountant::new();
        for &(a, b, steps) in &rounds {
            let (q, sigma) = param(a, b);
            live.compose(q, sigma, steps).unwrap();
        }
        let json = serde_json::to_string(&live).unwrap();
        let mut restored: RdpAccountant = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&restored, &live);
        let bits = |a: &RdpAccountant| a.rdp().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&restored), bits(&live));
        let (q, sigma) = param(extra.0, extra.1);
        live.compose(q, sigma, extra.2).unwrap();
        restored.compose(q, sigma, extra.2).unwrap();
        prop_assert_eq!(bits(&restored), bits(&live));
        prop_assert_eq!(restored.epsilon(1e-5).unwrap().0.to_bits(), live.epsilon(1e-5).unwrap().0.to_bits());
        prop_assert_eq!(restored.steps(), live.steps());
    }

    #[test]
    fn any_input_is_an_error_or_a_sane_epsilon(q in any::<f64>(), sigma in any::<f64>(), steps in any::<u64>(), delta in any::<f64>()) {
        let mut a = RdpAccountant::new();
        a.compose(0.01, 1.0, 3).unwrap();
        let before = a.clone();
        match a.compose(q, sigma, steps) {
            Ok(()) => prop_assert!(q > 0.0 && q <= 1.0 && sigma > 0.0 && sigma.is_finite() && steps >= 1),
            Err(_) => prop_assert_eq!(&a, &before),
        }
        match a.epsilon(delta) {
            Ok((eps, order)) => prop_assert!(eps >= 0.0 && !eps.is_nan() && order > 1.0),
            Err(_) => prop_assert!(!(delta > 0.0 && delta < 1.0)),
        }
    }

    #[test]
    fn composition_order_does_not_matter(a in (q(), sigma(), 1u64..500), b in (q(), sigma(), 1u64..500)) {
        let mut ab = RdpAccountant::new();
        ab.compose(a.0, a.1, a.2).unwrap();
        ab.compose(b.0, b.1, b.2).unwrap();
        let mut ba = RdpAccountant::new();
        ba.compose(b.0, b.1, b.2).unwrap();
        ba.compose(a.0, a.1, a.2).unwrap();
        let (x, y) = (ab.epsilon(1e-5).unwrap().0, ba.epsilon(1e-5).unwrap().0);
        prop_assert!((x - y).abs() <= 1e-12 * x.max(y), "{x} vs {y}");
    }

    #[test]
    fn a_job_never_spends_past_its_budget(
        max_epsilon in 0.2f64..5.0,
        rounds in prop::collection::vec((pool_q(), pool_sigma()), 1..60),
    ) {
        let mut job = JobPrivacy::new("j", Budget::new(max_epsilon, 1e-5).unwrap());
        for (q, sigma) in rounds {
            let before = job.clone();
            match job.record_round(q, sigma) {
                Ok(check) => {
                    prop_assert!(check.epsilon_after <= max_epsilon);
                    prop_assert_eq!(check.epsilon_after.to_bits(), job.spent().epsilon.to_bits());
                }
                Err(PrivacyError::BudgetExceeded { epsilon_after, .. }) => {
                    prop_assert!(epsilon_after > max_epsilon);
                    prop_assert_eq!(&job, &before);
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            prop_assert!(job.spent().epsilon <= max_epsilon);
        }
        // The cached spend equals a fresh conversion (deserialising recomputes it).
        let restored: JobPrivacy = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        prop_assert_eq!(restored.spent().epsilon.to_bits(), job.spent().epsilon.to_bits());
        prop_assert_eq!(restored.spent(), job.spent());
        prop_assert_eq!(&restored, &job);
    }

    #[test]
    fn a_tenant_never_spends_past_its_budget(
        max_epsilon in 0.5f64..4.0,
        rounds in prop::collection::vec((0usize..3, pool_q(), pool_sigma()), 1..60),
    ) {
        let mut ledger = TenantLedger::new(Budget::new(max_epsilon, 1e-6).unwrap());
        for id in ["a", "b", "c"] {
            ledger.register_job(id, Budget::new(max_epsilon * 0.7, 1e-5).unwrap()).unwrap();
        }
        for (job, q, sigma) in rounds {
            let id = ["a", "b", "c"][job];
            let before = ledger.clone();
            if ledger.record_round(id, q, sigma).is_err() {
                prop_assert_eq!(&ledger, &before);
            }
            prop_assert!(ledger.spent().epsilon <= max_epsilon);
            prop_assert!(ledger.jobs().all(|j| j.spent().epsilon <= max_epsilon * 0.7));
        }
    }

}
