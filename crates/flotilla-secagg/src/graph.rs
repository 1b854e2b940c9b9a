//! The communication graph: a Harary graph `H(r, k)` over a seeded random permutation of the roster
//! (Bell et al. 2020), or the complete graph when the roster has at most `k + 1` clients.
//!
//! Everyone derives the same graph from the roster (sorted client ids) and the seed the server
//! publishes with it, so the graph itself never travels.

use std::collections::BTreeMap;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::ClientId;

/// Neighbour lists of every client on the roster, each sorted by client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    neighbours: BTreeMap<ClientId, Vec<ClientId>>,
}

impl Graph {
    /// Builds the graph of degree `min(k, r − 1)` over `roster` (sorted, distinct ids; `r` of them).
    /// `k` must be even unless `k ≥ r − 1` (then the graph is complete).
    pub fn new(roster: &[ClientId], k: usize, seed: [u8; 32]) -> Self {
        let r = roster.len();
        let mut neighbours = BTreeMap::new();
        if r <= k + 1 {
            for &u in roster {
                neighbours.insert(u, roster.iter().copied().filter(|&v| v != u).collect());
            }
            return Self { neighbours };
        }
        let mut order: Vec<ClientId> = roster.to_vec();
        let mut rng = ChaCha20Rng::from_seed(seed);
        // Fisher–Yates with unbiased bounded draws (rejection sampling).
        for i in (1..r).rev() {
            let j = uniform_below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let half = k / 2;
        for (pos, &u) in order.iter().enumerate() {
            let mut list = Vec::with_capacity(k);
            for d in 1..=half {
                list.push(order[(pos + d) % r]);
                list.push(order[(pos + r - d) % r]);
            }
            list.sort_unstable();
            neighbours.insert(u, list);
        }
        Self { neighbours }
    }

    /// Neighbours of `u`, sorted; empty if `u` is not on the roster.
    pub fn neighbours(&self, u: ClientId) -> &[ClientId] {
        self.neighbours.get(&u).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether `u` and `v` are neighbours.
    pub fn are_neighbours(&self, u: ClientId, v: ClientId) -> bool {
        self.neighbours(u).binary_search(&v).is_ok()
    }

    /// Position of `holder` in `owner`'s neighbour list, plus one: the Shamir share identifier
    /// `owner` gives `holder`.
    pub fn share_id(&self, owner: ClientId, holder: ClientId) -> Option<u8> {
        let i = self.neighbours(owner).binary_search(&holder).ok()?;
        u8::try_from(i + 1).ok()
    }
}

fn uniform_below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<ClientId> {
        (0..n).map(|i| ClientId(i * 7 + 3)).collect()
    }

    #[test]
    fn regular_symmetric_and_seeded() {
        for (n, k) in [(10u64, 4usize), (101, 10), (1000, 30), (31, 2)] {
            let g = Graph::new(&ids(n), k, [5; 32]);
            for &u in &ids(n) {
                let nb = g.neighbours(u);
                assert_eq!(nb.len(), k, "degree of {u}");
                assert!(!nb.contains(&u));
                for &v in nb {
                    assert!(g.are_neighbours(v, u), "asymmetric {u} {v}");
                }
            }
            assert_eq!(g, Graph::new(&ids(n), k, [5; 32]));
            assert_ne!(g, Graph::new(&ids(n), k, [6; 32]));
        }
    }

    #[test]
    fn small_rosters_are_complete() {
        let g = Graph::new(&ids(5), 4, [0; 32]);
        assert_eq!(g.neighbours(ClientId(3)).len(), 4);
        let g = Graph::new(&ids(3), 10, [0; 32]);
        assert_eq!(g.neighbours(ClientId(3)), &[ClientId(10), ClientId(17)]);
        assert_eq!(g.share_id(ClientId(3), ClientId(17)), Some(2));
        assert_eq!(g.share_id(ClientId(3), ClientId(3)), None);
    }
}
