//! Property tests of the partitioners.

use std::collections::BTreeSet;

use flotilla_data::{PartitionSpec, partition, stats};
use proptest::prelude::*;

fn spec_strategy() -> impl Strategy<Value = PartitionSpec> {
    prop_oneof![
        Just(PartitionSpec::Iid),
        (0.05f64..5.0, 0usize..3)
            .prop_map(|(alpha, min_samples)| PartitionSpec::Dirichlet { alpha, min_samples }),
        (1usize..=4).prop_map(|classes_per_client| PartitionSpec::Shards { classes_per_client }),
        (0.05f64..5.0, 0usize..3)
            .prop_map(|(alpha, min_samples)| PartitionSpec::QuantitySkew { alpha, min_samples }),
    ]
}

/// Labels in 0..num_classes (at least `n_min` samples) and a client count.
fn data_strategy() -> impl Strategy<Value = (Vec<u32>, usize, usize)> {
    (4usize..=10, 40usize..400).prop_flat_map(|(num_classes, n)| {
        (
            proptest::collection::vec(0u32..num_classes as u32, n),
            Just(num_classes),
            1usize..=12,
        )
    })
}

fn check_disjoint_complete(
    clients: &[Vec<u32>],
    expected: &BTreeSet<u32>,
) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    for c in clients {
        prop_assert!(
            c.windows(2).all(|w| w[0] < w[1]),
            "client list not sorted/unique"
        );
        for &i in c {
            prop_assert!(seen.insert(i), "index {} assigned twice", i);
        }
    }
    prop_assert_eq!(&seen, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

    #[test]
    fn disjoint_complete_and_seed_stable(
        (labels, num_classes, k) in data_strategy(),
        spec in spec_strategy(),
        seed in any::<u64>(),
    ) {
        let p = match partition(&labels, None, num_classes, k, &spec, seed) {
            Ok(p) => p,
            // Dirichlet may legitimately give up on tiny data with min_samples > 0
            Err(flotilla_data::PartitionError::DirichletGaveUp { .. }) => return Ok(()),
            // More shards than samples (up to 12 × 4 = 48 against 40) is refused by design.
            Err(flotilla_data::PartitionError::TooManyShards { shards, num_samples })
                if shards > num_samples && shards == k * match spec {
                    PartitionSpec::Shards { classes_per_client } => classes_per_client,
                    _ => 0,
                } => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("{spec:?}: {e}"))),
        };
        prop_assert_eq!(p.clients.len(), k);
        let all: BTreeSet<u32> = (0..labels.len() as u32).collect();
        check_disjoint_complete(&p.clients, &all)?;
        let again = partition(&labels, None, num_classes, k, &spec, seed).expect("same inputs");
        prop_assert_eq!(&again, &p);
        match spec {
            PartitionSpec::Dirichlet { min_samples, .. } | PartitionSpec::QuantitySkew { min_samples, .. } => {
                prop_assert!(p.clients.iter().all(|c| c.len() >= min_samples));
            }
            PartitionSpec::Iid => {
                let s = stats(&p, &labels, num_classes);
                prop_assert!(s.max_size - s.min_size <= 1);
            }
            _ => {}
        }
    }

    #[test]
    fn natural_is_complete_over_chosen_groups(
        groups in proptest::collection::vec(0u32..15, 30..300),
        min_samples in 0usize..6,
        k in 1usize..15,
        seed in any::<u64>(),
    ) {
        let labels: Vec<u32> = groups.iter().map(|g| g % 3).collect();
        let spec = PartitionSpec::Natural { min_samples };
        let eligible: BTreeSet<u32> = groups
            .iter()
            .copied()
            .filter(|g| groups.iter().filter(|x| *x == g).count() >= min_samples.max(1))
            .collect();
        match partition(&labels, Some(&groups), 3, k, &spec, seed) {
            Err(flotilla_data::PartitionError::NotEnoughGroups { available, .. }) => {
                prop_assert!(k > eligible.len());
                prop_assert_eq!(available, eligible.len());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
            Ok(p) => {
                prop_assert_eq!(p.clients.len(), k);
                let chosen: BTreeSet<u32> = p.clients.iter().map(|c| groups[c[0] as usize]).collect();
                prop_assert_eq!(chosen.len(), k);
                prop_assert!(chosen.is_subset(&eligible));
                for c in &p.clients {
                    let g = groups[c[0] as usize];
                    prop_assert!(c.iter().all(|&i| groups[i as usize] == g));
                }
                let expected: BTreeSet<u32> = (0..groups.len() as u32)
                    .filter(|&i| chosen.contains(&groups[i as usize]))
                    .collect();
                check_disjoint_complete(&p.clients, &expected)?;
                prop_assert_eq!(&partition(&labels, Some(&groups), 3, k, &spec, seed).expect("again"), &p);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(16), ..ProptestConfig::default() })]

    #[test]
    fn different_seeds_usually_differ(seed in any::<u64>()) {
        let labels: Vec<u32> = (0..500).map(|i| (i * 7 % 10) as u32).collect();
        for spec in [
            PartitionSpec::Iid,
            PartitionSpec::Dirichlet { alpha: 0.5, min_samples: 1 },
            PartitionSpec::Shards { classes_per_client: 2 },
            PartitionSpec::QuantitySkew { alpha: 1.0, min_samples: 1 },
        ] {
            let a = partition(&labels, None, 10, 10, &spec, seed).expect("a");
            let b = partition(&labels, None, 10, 10, &spec, seed.wrapping_add(1)).expect("b");
            prop_assert_ne!(a, b, "{:?}", spec);
        }
    }

    #[test]
    fn skew_grows_as_alpha_shrinks(seed in any::<u64>()) {
        let labels: Vec<u32> = (0..2000).map(|i| (i % 10) as u32).collect();
        let tv = |alpha: f64| {
            let spec = PartitionSpec::Dirichlet { alpha, min_samples: 0 };
            let p = partition(&labels, None, 10, 20, &spec, seed).expect("dirichlet");
            stats(&p, &labels, 10).mean_tv_distance
        };
        let (low, high) = (tv(0.1), tv(10.0));
        prop_assert!(low > high, "TV at alpha 0.1 = {}, at 10 = {}", low, high);
    }
}
