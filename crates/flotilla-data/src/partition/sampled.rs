//! The `sampled` partition: clients share the data set, and each draws its own samples when it is
//! needed, so a registered client costs a few bytes instead of a sample list.
//!
//! Client `c`'s samples are `samples_per_client` distinct indices drawn uniformly (without
//! replacement) from a ChaCha8 generator seeded with the partition seed on stream `c`: ChaCha's
//! 64-bit stream id gives every client its own independent sequence from one key, so a client's
//! draw depends only on (seed, client id) — not on which other clients were drawn before or on
//! which thread asks.

use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;

use crate::error::PartitionError;

/// Most clients a sampled partition serves (well above the simulator's own ceiling of a million;
/// each client's id must also fit a ChaCha stream id, which any `u64` does).
pub const MAX_SAMPLED_CLIENTS: usize = 1 << 24;

/// A validated `sampled` partition: every client's samples, drawn on demand by [`Self::client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledPartition {
    num_samples: usize,
    num_clients: usize,
    samples_per_client: usize,
    seed: u64,
}

impl SampledPartition {
    /// `num_clients` clients drawing `samples_per_client` of `num_samples` samples each.
    ///
    /// Refused by arithmetic, before anything is drawn: no clients, more than
    /// [`MAX_SAMPLED_CLIENTS`], or `samples_per_client` outside `1..=num_samples`.
    pub fn new(
        num_samples: usize,
        num_clients: usize,
        samples_per_client: usize,
        seed: u64,
    ) -> Result<Self, PartitionError> {
        if num_clients == 0 {
            return Err(PartitionError::ZeroClients);
        }
        if num_clients > MAX_SAMPLED_CLIENTS {
            return Err(PartitionError::TooManySampledClients {
                num_clients,
                max: MAX_SAMPLED_CLIENTS,
            });
        }
        // Indices are u32 throughout the partitioners.
        if samples_per_client == 0
            || samples_per_client > num_samples
            || num_samples > u32::MAX as usize
        {
            return Err(PartitionError::InvalidSamplesPerClient {
                samples_per_client,
                num_samples,
            });
        }
        Ok(Self {
            num_samples,
            num_clients,
            samples_per_client,
            seed,
        })
    }

    /// Number of clients.
    pub fn num_clients(&self) -> usize {
        self.num_clients
    }

    /// Samples each client draws.
    pub fn samples_per_client(&self) -> usize {
        self.samples_per_client
    }

    /// Client `client`'s sample indices, distinct and sorted ascending; the same on every call.
    /// A client id beyond `num_clients` still gets a well-defined draw (callers check ids).
    pub fn client(&self, client: u64) -> Vec<u32> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(client);
        // `new` bounded num_samples by u32::MAX, so every index fits.
        let mut idx: Vec<u32> = index::sample(&mut rng, self.num_samples, self.samples_per_client)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        idx.sort_unstable();
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refused_by_arithmetic() {
        assert_eq!(
            SampledPartition::new(10, 0, 1, 0),
            Err(PartitionError::ZeroClients)
        );
        for (n, k, spc) in [(10, 5, 0), (10, 5, 11), (0, 1, 1)] {
            let err = SampledPartition::new(n, k, spc, 0).expect_err("invalid");
            assert!(err.to_string().contains("`samples_per_client`"), "{err}");
            assert!(err.to_string().contains(&spc.to_string()), "{err}");
        }
        let err = SampledPartition::new(10, MAX_SAMPLED_CLIENTS + 1, 1, 0).expect_err("ceiling");
        assert!(err.to_string().contains("`num_clients`"), "{err}");
        // More clients than samples is the point of sharing.
        let s = SampledPartition::new(10, 1000, 10, 0).expect("shared samples");
        assert_eq!(s.client(999), (0..10).collect::<Vec<u32>>());
    }

    #[test]
    fn clients_differ_and_seeds_matter() {
        let s = SampledPartition::new(60_000, 1_000_000, 60, 7).expect("valid");
        let (a, b) = (s.client(0), s.client(1));
        assert_ne!(a, b);
        let t = SampledPartition::new(60_000, 1_000_000, 60, 8).expect("valid");
        assert_ne!(a, t.client(0));
        // Independent of the order clients are asked for.
        assert_eq!(s.client(999_999), s.client(999_999));
        assert_eq!(b, s.client(1));
    }

    proptest! {
        #[test]
        fn deterministic_in_bounds_of_size_n(
            n in 1usize..5_000,
            frac in 0.0f64..=1.0,
            client in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let spc = ((n as f64 * frac) as usize).clamp(1, n);
            let s = SampledPartition::new(n, MAX_SAMPLED_CLIENTS, spc, seed).expect("valid");
            let idx = s.client(client);
            prop_assert_eq!(idx.len(), spc);
            prop_assert!(idx.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            prop_assert!(idx.iter().all(|&i| (i as usize) < n));
            prop_assert_eq!(&idx, &s.client(client));
        }
    }
}
