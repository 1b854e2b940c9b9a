//! Splitting a dataset among federated clients, deterministically from a seed.
//!
//! All randomness comes from one ChaCha8 RNG seeded with the `seed` argument,
//! so the same inputs always give the same [`Partition`].

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use rand_distr::multi::Dirichlet;
use serde::{Deserialize, Serialize};

use crate::error::PartitionError;

/// Number of Dirichlet draws tried before [`PartitionError::DirichletGaveUp`].
pub const DIRICHLET_MAX_TRIES: usize = 10_000;

/// How to split samples among clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PartitionSpec {
    /// Shuffle and deal into near-equal parts (sizes differ by at most one).
    Iid,
    /// Label skew: per class, proportions ~ Dirichlet(alpha·1) cut that class's
    /// shuffled samples among clients; redrawn (continuing the same RNG stream)
    /// until every client has at least `min_samples` samples, at most
    /// [`DIRICHLET_MAX_TRIES`] times. Smaller `alpha` means more skew.
    Dirichlet {
        /// Concentration (> 0).
        alpha: f64,
        /// Minimum samples per client.
        min_samples: usize,
    },
    /// Pathological non-IID (McMahan et al.): samples sorted by label are cut
    /// into `num_clients * classes_per_client` near-equal shards, and each
    /// client gets `classes_per_client` random shards.
    Shards {
        /// Shards (≈ classes) per client, in `1..=num_classes`.
        classes_per_client: usize,
    },
    /// One client per natural group (e.g. a Shakespeare role). Groups with
    /// fewer than `min_samples` samples are dropped; if fewer clients than
    /// eligible groups are asked for, a seeded random choice of groups is
    /// used. Clients are ordered by ascending group id; client `i`'s group is
    /// `groups[clients[i][0]]`.
    Natural {
        /// Minimum samples for a group to be eligible.
        min_samples: usize,
    },
    /// Quantity skew: each client gets `min_samples` plus a share of the rest
    /// proportional to a Dirichlet(alpha·1) draw (largest-remainder
    /// rounding); labels are IID.
    QuantitySkew {
        /// Concentration (> 0).
        alpha: f64,
        /// Minimum samples per client.
        min_samples: usize,
    },
}

/// Sample indices per client, each list sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Partition {
    /// `clients[i]` holds the sample indices of client `i`.
    pub clients: Vec<Vec<u32>>,
}

impl Partition {
    /// Number of clients.
    pub fn num_clients(&self) -> usize {
        self.clients.len()
    }

    /// Total number of assigned samples.
    pub fn num_samples(&self) -> usize {
        self.clients.iter().map(Vec::len).sum()
    }
}

fn check_alpha(alpha: f64) -> Result<(), PartitionError> {
    // Dirichlet::new also rejects subnormal values.
    if alpha.is_finite() && alpha > 0.0 && alpha.is_normal() {
        Ok(())
    } else {
        Err(PartitionError::InvalidAlpha { alpha })
    }
}

/// Splits `labels.len()` samples among `num_clients` clients.
///
/// `groups` (one group id per sample) is needed only by
/// [`PartitionSpec::Natural`]. Every label must be below `num_classes`.
pub fn partition(
    labels: &[u32],
    groups: Option<&[u32]>,
    num_classes: usize,
    num_clients: usize,
    spec: &PartitionSpec,
    seed: u64,
) -> Result<Partition, PartitionError> {
    let n = labels.len();
    if num_clients == 0 {
        return Err(PartitionError::ZeroClients);
    }
    if num_clients > n {
        return Err(PartitionError::TooManyClients {
            num_clients,
            num_samples: n,
        });
    }
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= num_classes)
    {
        return Err(PartitionError::LabelOutOfRange {
            index,
            label,
            num_classes,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut clients = match *spec {
        PartitionSpec::Iid => iid(n, num_clients, &mut rng),
        PartitionSpec::Dirichlet { alpha, min_samples } => {
            check_alpha(alpha)?;
            check_min(min_samples, num_clients, n)?;
            dirichlet(
                labels,
                num_classes,
                num_clients,
                alpha,
                min_samples,
                &mut rng,
            )?
        }
        PartitionSpec::Shards { classes_per_client } => shards(
            labels,
            num_classes,
            num_clients,
            classes_per_client,
            &mut rng,
        )?,
        PartitionSpec::Natural { min_samples } => {
            natural(labels, groups, num_clients, min_samples, &mut rng)?
        }
        PartitionSpec::QuantitySkew { alpha, min_samples } => {
            check_alpha(alpha)?;
            check_min(min_samples, num_clients, n)?;
            quantity_skew(n, num_clients, alpha, min_samples, &mut rng)?
        }
    };
    for c in &mut clients {
        c.sort_unstable();
    }
    Ok(Partition { clients })
}

fn check_min(min_samples: usize, num_clients: usize, n: usize) -> Result<(), PartitionError> {
    if min_samples.saturating_mul(num_clients) > n {
        return Err(PartitionError::MinSamplesUnsatisfiable {
            min_samples,
            num_clients,
            num_samples: n,
        });
    }
    Ok(())
}

/// Deals `items` into `k` contiguous near-equal chunks (first ones larger).
fn deal(items: &[u32], k: usize) -> Vec<Vec<u32>> {
    let n = items.len();
    (0..k)
        .map(|i| items[i * n / k..(i + 1) * n / k].to_vec())
        .collect()
}

fn iid(n: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<u32>> {
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(rng);
    deal(&idx, k)
}

/// One Dirichlet(alpha·1_k) draw, normalised; `None` if it came out degenerate.
fn draw_proportions(
    dist: Option<&Dirichlet<f64>>,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Option<Vec<f64>> {
    let Some(dist) = dist else {
        return Some(vec![1.0]); // k == 1
    };
    let p: Vec<f64> = dist.sample(rng);
    let sum: f64 = p.iter().sum();
    if p.len() != k
        || !sum.is_finite()
        || sum <= 0.0
        || p.iter().any(|v| !v.is_finite() || *v < 0.0)
    {
        return None;
    }
    Some(p.into_iter().map(|v| v / sum).collect())
}

fn make_dirichlet(alpha: f64, k: usize) -> Result<Option<Dirichlet<f64>>, PartitionError> {
    if k < 2 {
        return Ok(None);
    }
    Dirichlet::new(&vec![alpha; k])
        .map(Some)
        .map_err(|_| PartitionError::InvalidAlpha { alpha })
}

fn dirichlet(
    labels: &[u32],
    num_classes: usize,
    k: usize,
    alpha: f64,
    min_samples: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    let dist = make_dirichlet(alpha, k)?;
    let mut by_class = crate::dataset::indices_by_class(labels, num_classes);
    by_class.retain(|c| !c.is_empty());
    for _ in 0..DIRICHLET_MAX_TRIES {
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); k];
        let mut degenerate = false;
        for class in &by_class {
            let mut idx = class.clone();
            idx.shuffle(rng);
            let Some(p) = draw_proportions(dist.as_ref(), k, rng) else {
                degenerate = true;
                break;
            };
            // cuts = floor(cumsum(p) * len) for the first k-1 clients.
            let len = idx.len();
            let mut cum = 0.0;
            let mut start = 0usize;
            for (client, part) in parts.iter_mut().enumerate() {
                let end = if client + 1 == k {
                    len
                } else {
                    cum += p[client];
                    ((cum * len as f64) as usize).clamp(start, len)
                };
                part.extend_from_slice(&idx[start..end]);
                start = end;
            }
        }
        if !degenerate && parts.iter().all(|p| p.len() >= min_samples) {
            return Ok(parts);
        }
    }
    Err(PartitionError::DirichletGaveUp {
        tries: DIRICHLET_MAX_TRIES,
        min_samples,
        num_clients: k,
        alpha,
    })
}

fn shards(
    labels: &[u32],
    num_classes: usize,
    k: usize,
    classes_per_client: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    if classes_per_client == 0 || classes_per_client > num_classes {
        return Err(PartitionError::InvalidClassesPerClient {
            classes_per_client,
            num_classes,
        });
    }
    let n = labels.len();
    let num_shards = k.saturating_mul(classes_per_client);
    if num_shards > n {
        return Err(PartitionError::TooManyShards {
            shards: num_shards,
            num_samples: n,
        });
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(rng);
    idx.sort_by_key(|&i| labels[i as usize]); // stable: random order within a class
    let shard_list = deal(&idx, num_shards);
    let mut order: Vec<usize> = (0..num_shards).collect();
    order.shuffle(rng);
    Ok(order
        .chunks(classes_per_client)
        .map(|chunk| {
            chunk
                .iter()
                .flat_map(|&s| shard_list[s].iter().copied())
                .collect()
        })
        .collect())
}

fn natural(
    labels: &[u32],
    groups: Option<&[u32]>,
    k: usize,
    min_samples: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    let groups = groups.ok_or(PartitionError::GroupsRequired)?;
    if groups.len() != labels.len() {
        return Err(PartitionError::GroupsLengthMismatch {
            groups: groups.len(),
            labels: labels.len(),
        });
    }
    let mut members: std::collections::BTreeMap<u32, Vec<u32>> = std::collections::BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i as u32);
    }
    let mut eligible: Vec<u32> = members
        .iter()
        .filter(|(_, m)| m.len() >= min_samples.max(1))
        .map(|(&g, _)| g)
        .collect();
    if k > eligible.len() {
        return Err(PartitionError::NotEnoughGroups {
            requested: k,
            available: eligible.len(),
            min_samples,
        });
    }
    if k < eligible.len() {
        eligible.shuffle(rng);
        eligible.truncate(k);
        eligible.sort_unstable();
    }
    Ok(eligible
        .iter()
        .map(|g| members.remove(g).unwrap_or_default())
        .collect())
}

fn quantity_skew(
    n: usize,
    k: usize,
    alpha: f64,
    min_samples: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    let dist = make_dirichlet(alpha, k)?;
    let mut p = None;
    for _ in 0..DIRICHLET_MAX_TRIES {
        p = draw_proportions(dist.as_ref(), k, rng);
        if p.is_some() {
            break;
        }
    }
    let p = p.ok_or(PartitionError::DirichletGaveUp {
        tries: DIRICHLET_MAX_TRIES,
        min_samples,
        num_clients: k,
        alpha,
    })?;
    let rest = n - min_samples * k;
    let mut sizes: Vec<usize> = Vec::with_capacity(k);
    let mut rems: Vec<(f64, usize)> = Vec::with_capacity(k);
    for (i, &pi) in p.iter().enumerate() {
        let exact = pi * rest as f64;
        let fl = exact.floor() as usize;
        sizes.push(fl);
        rems.push((exact - fl as f64, i));
    }
    let assigned: usize = sizes.iter().sum();
    let left = rest.saturating_sub(assigned);
    rems.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().cycle().take(left) {
        sizes[i] += 1;
    }
    // Float rounding could overshoot by a few; take from the largest.
    let mut total: usize = sizes.iter().sum();
    while total > rest {
        if let Some(max) = sizes.iter_mut().max() {
            *max -= 1;
        }
        total -= 1;
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(rng);
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for s in sizes {
        let end = start + s + min_samples;
        out.push(idx[start..end].to_vec());
        start = end;
    }
    // Leftover from rounding (should not happen) goes to the last client.
    if let Some(last) = out.last_mut() {
        last.extend_from_slice(&idx[start..]);
    }
    Ok(out)
}

/// Summary of a partition (for logs and reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStats {
    /// Samples per client.
    pub sizes: Vec<usize>,
    /// Per-client label histogram (`num_classes` counts each).
    pub label_histograms: Vec<Vec<usize>>,
    /// Total assigned samples.
    pub total_samples: usize,
    /// Smallest client.
    pub min_size: usize,
    /// Median client size.
    pub median_size: f64,
    /// Mean client size.
    pub mean_size: f64,
    /// Largest client.
    pub max_size: usize,
    /// Clients with no samples.
    pub empty_clients: usize,
    /// Mean number of distinct labels per client.
    pub mean_classes_per_client: f64,
    /// Mean total-variation distance between each non-empty client's label
    /// distribution and the label distribution of all assigned samples
    /// (0 = identical, 1 = disjoint support).
    pub mean_tv_distance: f64,
    /// Largest such distance.
    pub max_tv_distance: f64,
}

/// Computes [`PartitionStats`]. Indices beyond `labels` and labels not below
/// `num_classes` count towards sizes but not histograms.
pub fn stats(p: &Partition, labels: &[u32], num_classes: usize) -> PartitionStats {
    let sizes: Vec<usize> = p.clients.iter().map(Vec::len).collect();
    let label_histograms: Vec<Vec<usize>> = p
        .clients
        .iter()
        .map(|c| {
            let mut h = vec![0usize; num_classes];
            for &i in c {
                if let Some(slot) = labels.get(i as usize).and_then(|&l| h.get_mut(l as usize)) {
                    *slot += 1;
                }
            }
            h
        })
        .collect();
    let total_samples: usize = sizes.iter().sum();
    let k = sizes.len();
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    let median_size = match k {
        0 => 0.0,
        _ if k % 2 == 1 => sorted[k / 2] as f64,
        _ => (sorted[k / 2 - 1] + sorted[k / 2]) as f64 / 2.0,
    };
    let mean_size = if k == 0 {
        0.0
    } else {
        total_samples as f64 / k as f64
    };
    let mut global = vec![0usize; num_classes];
    for h in &label_histograms {
        for (g, c) in global.iter_mut().zip(h) {
            *g += c;
        }
    }
    let global_total: usize = global.iter().sum();
    let mut tv_sum = 0.0;
    let mut tv_max: f64 = 0.0;
    let mut tv_count = 0usize;
    for h in &label_histograms {
        let t: usize = h.iter().sum();
        if t == 0 || global_total == 0 {
            continue;
        }
        let tv = 0.5
            * h.iter()
                .zip(&global)
                .map(|(&a, &b)| (a as f64 / t as f64 - b as f64 / global_total as f64).abs())
                .sum::<f64>();
        tv_sum += tv;
        tv_max = tv_max.max(tv);
        tv_count += 1;
    }
    let mean_classes_per_client = if k == 0 {
        0.0
    } else {
        label_histograms
            .iter()
            .map(|h| h.iter().filter(|&&c| c > 0).count())
            .sum::<usize>() as f64
            / k as f64
    };
    PartitionStats {
        min_size: sorted.first().copied().unwrap_or(0),
        max_size: sorted.last().copied().unwrap_or(0),
        median_size,
        mean_size,
        empty_clients: sizes.iter().filter(|&&s| s == 0).count(),
        sizes,
        label_histograms,
        total_samples,
        mean_classes_per_client,
        mean_tv_distance: if tv_count == 0 {
            0.0
        } else {
            tv_sum / tv_count as f64
        },
        max_tv_distance: tv_max,
    }
}

#[cfg(test)]
mod tests {
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
}
