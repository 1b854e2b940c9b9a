//! Unit tests of the partitioners.

use super::*;

fn digits_train_labels() -> Vec<u32> {
    crate::load(
        crate::DatasetName::Digits,
        std::path::Path::new("."),
        &Default::default(),
    )
    .expect("digits")
    .train
    .labels
}

#[test]
fn reference_dirichlet_scenario() {
    let labels = digits_train_labels();
    assert_eq!(labels.len(), 1437);
    let spec = PartitionSpec::Dirichlet {
        alpha: 0.5,
        min_samples: 2,
    };
    let p = partition(&labels, None, 10, 100, &spec, 42).expect("reference scenario");
    assert_eq!(p.num_clients(), 100);
    assert_eq!(p.num_samples(), 1437);
    let s = stats(&p, &labels, 10);
    assert!(s.min_size >= 2);
    assert!(s.mean_tv_distance > 0.3, "{}", s.mean_tv_distance);
    assert_eq!(
        p,
        partition(&labels, None, 10, 100, &spec, 42).expect("again")
    );
}

#[test]
fn shards_give_few_classes() {
    let labels = digits_train_labels();
    let p = partition(
        &labels,
        None,
        10,
        50,
        &PartitionSpec::Shards {
            classes_per_client: 2,
        },
        1,
    )
    .expect("shards");
    let s = stats(&p, &labels, 10);
    assert!(
        s.mean_classes_per_client <= 3.0,
        "{}",
        s.mean_classes_per_client
    );
    assert_eq!(s.total_samples, 1437);
    assert!(s.max_size - s.min_size <= 2);
}

#[test]
fn iid_sizes_and_stats() {
    let labels: Vec<u32> = (0..103).map(|i| i % 4).collect();
    let p = partition(&labels, None, 4, 10, &PartitionSpec::Iid, 3).expect("iid");
    let s = stats(&p, &labels, 4);
    assert_eq!((s.min_size, s.max_size), (10, 11));
    assert_eq!(s.total_samples, 103);
    assert!((s.mean_size - 10.3).abs() < 1e-9);
    assert!((s.median_size - 10.0).abs() < 1e-9);
    assert_eq!(s.empty_clients, 0);
}

#[test]
fn quantity_skew_respects_minimum() {
    let labels: Vec<u32> = (0..1000).map(|i| i % 10).collect();
    let spec = PartitionSpec::QuantitySkew {
        alpha: 0.3,
        min_samples: 5,
    };
    let p = partition(&labels, None, 10, 40, &spec, 9).expect("qs");
    let s = stats(&p, &labels, 10);
    assert!(s.min_size >= 5);
    assert_eq!(s.total_samples, 1000);
    assert!(s.max_size > 3 * s.min_size);
    let one = partition(&labels, None, 10, 1, &spec, 9).expect("one client");
    assert_eq!(one.clients[0].len(), 1000);
}

#[test]
fn natural_groups() {
    let labels = vec![0u32; 10];
    let groups = vec![0u32, 0, 0, 1, 1, 2, 2, 2, 2, 3];
    let spec = PartitionSpec::Natural { min_samples: 2 };
    let p = partition(&labels, Some(&groups), 1, 3, &spec, 0).expect("natural");
    assert_eq!(p.clients, vec![vec![0, 1, 2], vec![3, 4], vec![5, 6, 7, 8]]);
    let p = partition(&labels, Some(&groups), 1, 2, &spec, 0).expect("subset");
    assert_eq!(p.num_clients(), 2);
    let err = partition(&labels, Some(&groups), 1, 4, &spec, 0).expect_err("too many");
    assert_eq!(
        err,
        PartitionError::NotEnoughGroups {
            requested: 4,
            available: 3,
            min_samples: 2
        }
    );
    assert!(err.to_string().contains("3 natural groups"));
    assert_eq!(
        partition(&labels, None, 1, 2, &spec, 0),
        Err(PartitionError::GroupsRequired)
    );
    assert!(matches!(
        partition(&labels, Some(&groups[..5]), 1, 2, &spec, 0),
        Err(PartitionError::GroupsLengthMismatch { .. })
    ));
}

#[test]
fn errors_name_the_field() {
    let labels: Vec<u32> = (0..20).map(|i| i % 2).collect();
    let cases: Vec<(usize, PartitionSpec, &str)> = vec![
        (0, PartitionSpec::Iid, "num_clients"),
        (21, PartitionSpec::Iid, "num_clients"),
        (
            2,
            PartitionSpec::Dirichlet {
                alpha: 0.0,
                min_samples: 0,
            },
            "alpha",
        ),
        (
            2,
            PartitionSpec::Dirichlet {
                alpha: f64::NAN,
                min_samples: 0,
            },
            "alpha",
        ),
        (
            2,
            PartitionSpec::QuantitySkew {
                alpha: f64::INFINITY,
                min_samples: 0,
            },
            "alpha",
        ),
        (
            2,
            PartitionSpec::QuantitySkew {
                alpha: -1.0,
                min_samples: 0,
            },
            "alpha",
        ),
        (
            2,
            PartitionSpec::Shards {
                classes_per_client: 0,
            },
            "classes_per_client",
        ),
        (
            2,
            PartitionSpec::Shards {
                classes_per_client: 3,
            },
            "classes_per_client",
        ),
        (
            20,
            PartitionSpec::Shards {
                classes_per_client: 2,
            },
            "classes_per_client",
        ),
        (
            5,
            PartitionSpec::Dirichlet {
                alpha: 1.0,
                min_samples: 5,
            },
            "min_samples",
        ),
        (
            5,
            PartitionSpec::QuantitySkew {
                alpha: 1.0,
                min_samples: 5,
            },
            "min_samples",
        ),
        (
            20,
            PartitionSpec::Dirichlet {
                alpha: 0.01,
                min_samples: 1,
            },
            "min_samples",
        ),
    ];
    for (k, spec, field) in cases {
        let err = partition(&labels, None, 2, k, &spec, 0).expect_err("invalid");
        assert!(
            err.to_string().contains(&format!("`{field}`")),
            "{spec:?}: {err}"
        );
    }
    let err = partition(&[0, 5], None, 2, 1, &PartitionSpec::Iid, 0).expect_err("label");
    assert!(err.to_string().contains("num_classes"), "{err}");
}

#[test]
fn stats_of_degenerate_partitions() {
    let s = stats(&Partition::default(), &[], 3);
    assert_eq!((s.min_size, s.max_size, s.total_samples), (0, 0, 0));
    let p = Partition {
        clients: vec![vec![], vec![0, 1, 99]],
    };
    let s = stats(&p, &[0, 1], 2);
    assert_eq!(s.sizes, vec![0, 3]);
    assert_eq!(s.label_histograms, vec![vec![0, 0], vec![1, 1]]);
    assert_eq!(s.empty_clients, 1);
    assert_eq!(s.mean_tv_distance, 0.0);
}

#[test]
fn spec_serde() {
    let spec = PartitionSpec::Dirichlet {
        alpha: 0.5,
        min_samples: 2,
    };
    let json = serde_json::to_string(&spec).expect("json");
    assert_eq!(json, r#"{"kind":"dirichlet","alpha":0.5,"min_samples":2}"#);
    assert_eq!(
        serde_json::from_str::<PartitionSpec>(&json).expect("back"),
        spec
    );
}

#[test]
fn sampled_serves_more_clients_than_samples() {
    let labels: Vec<u32> = (0..50).map(|i| i % 5).collect();
    let spec = PartitionSpec::Sampled {
        samples_per_client: 7,
    };
    let p = partition(&labels, None, 5, 500, &spec, 3).expect("sampled");
    assert_eq!(p.num_clients(), 500);
    assert!(p.clients.iter().all(|c| c.len() == 7));
    let lazy = SampledPartition::new(50, 500, 7, 3).expect("valid");
    assert_eq!(p.clients[499], lazy.client(499));
    assert_eq!(
        p,
        partition(&labels, None, 5, 500, &spec, 3).expect("again")
    );
    let err = partition(
        &labels,
        None,
        5,
        2,
        &PartitionSpec::Sampled {
            samples_per_client: 51,
        },
        3,
    )
    .expect_err("more than the data set");
    assert_eq!(
        err.to_string(),
        "`samples_per_client` must be in 1..=50 (the training set's size), got 51"
    );
}

#[test]
fn impossible_splits_are_refused_by_arithmetic_naming_keys_and_numbers() {
    // Each would otherwise redraw (Dirichlet: up to DIRICHLET_MAX_TRIES times) before giving up.
    let labels = digits_train_labels();
    let cases: Vec<(usize, PartitionSpec, &str)> = vec![
        (
            1000,
            PartitionSpec::Dirichlet {
                alpha: 0.5,
                min_samples: 2,
            },
            "`min_samples` (2) * `num_clients` (1000) exceeds the number of samples (1437)",
        ),
        (
            500,
            PartitionSpec::QuantitySkew {
                alpha: 0.5,
                min_samples: 3,
            },
            "`min_samples` (3) * `num_clients` (500) exceeds the number of samples (1437)",
        ),
        (
            800,
            PartitionSpec::Shards {
                classes_per_client: 2,
            },
            "`num_clients` * `classes_per_client` = 1600 shards, but there are only 1437 samples",
        ),
        (
            1438,
            PartitionSpec::Iid,
            "`num_clients` (1438) exceeds the number of samples (1437)",
        ),
    ];
    for (k, spec, msg) in cases {
        let err = partition(&labels, None, 10, k, &spec, 0).expect_err("impossible");
        assert_eq!(err.to_string(), msg, "{spec:?}");
    }
}
