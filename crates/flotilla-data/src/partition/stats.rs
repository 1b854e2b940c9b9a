//! Summaries of a partition: sizes, label histograms, skew.

use serde::{Deserialize, Serialize};

use super::Partition;

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
