//! Splitting a dataset among federated clients, deterministically from a seed.
//!
//! All randomness comes from one ChaCha8 RNG seeded with the `seed` argument,
//! so the same inputs always give the same [`Partition`]. The list-making kinds
//! (`kinds`) deal every sample to one client; [`PartitionSpec::Sampled`] lets
//! clients share samples, each drawing its own from (seed, client id) when asked
//! ([`SampledPartition`]), so a registered client costs no sample list.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::PartitionError;

mod kinds;
mod sampled;
mod stats;

pub use sampled::{MAX_SAMPLED_CLIENTS, SampledPartition};
pub use stats::{PartitionStats, stats};

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
    /// Clients share the data set: each client draws its own `samples_per_client`
    /// distinct sample indices, uniformly, from a ChaCha8 stream keyed by
    /// (seed, client id) — lazily, when it is needed ([`SampledPartition`]), so
    /// any data set can serve up to [`MAX_SAMPLED_CLIENTS`] clients.
    Sampled {
        /// Samples each client draws, in `1..=` the data set's size.
        samples_per_client: usize,
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
    // Clients of `sampled` share samples, so only the list-making kinds need a sample per client.
    let sampled = matches!(spec, PartitionSpec::Sampled { .. });
    if num_clients > n && !sampled {
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
        PartitionSpec::Sampled { samples_per_client } => {
            // Every list at once only because the caller asked for all of them; the simulator
            // draws one client's at a time through `SampledPartition`.
            let s = SampledPartition::new(n, num_clients, samples_per_client, seed)?;
            (0..num_clients as u64).map(|c| s.client(c)).collect()
        }
        PartitionSpec::Iid => kinds::iid(n, num_clients, &mut rng),
        PartitionSpec::Dirichlet { alpha, min_samples } => {
            check_alpha(alpha)?;
            check_min(min_samples, num_clients, n)?;
            kinds::dirichlet(
                labels,
                num_classes,
                num_clients,
                alpha,
                min_samples,
                &mut rng,
            )?
        }
        PartitionSpec::Shards { classes_per_client } => kinds::shards(
            labels,
            num_classes,
            num_clients,
            classes_per_client,
            &mut rng,
        )?,
        PartitionSpec::Natural { min_samples } => {
            kinds::natural(labels, groups, num_clients, min_samples, &mut rng)?
        }
        PartitionSpec::QuantitySkew { alpha, min_samples } => {
            check_alpha(alpha)?;
            check_min(min_samples, num_clients, n)?;
            kinds::quantity_skew(n, num_clients, alpha, min_samples, &mut rng)?
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

#[cfg(test)]
mod tests;
