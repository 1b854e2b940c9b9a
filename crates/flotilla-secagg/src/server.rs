//! The server's state machine: one value per round.
//!
//! ```text
//! Server::new                     stage AdvertiseKeys
//!   handle(from, AdvertiseKeys)*
//! close_advertise()   ─▶ Roster (broadcast)                        stage ShareKeys
//!   handle(from, ShareKeys)*
//! close_share_keys()  ─▶ {client → ShareBundle}                    stage MaskedInput
//!   handle(from, MaskedInput)*     (summed into one running masked sum)
//! close_masked_input()─▶ {client → UnmaskRequest}                  stage Unmasking
//!   handle(from, UnmaskResponse)*
//! finish()            ─▶ Aggregate (sum of the clipped updates)    stage Finished
//! ```
//!
//! The driver decides when a stage closes (all expected messages in, or its deadline). A refused
//! message ([`Rejected`]) changes nothing. A `close_*`/`finish` that finds a neighbourhood below
//! threshold fails the round with [`RoundError`] and the server stays failed.
//!
//! **The server never holds an individual unmasked update.** Its only vector-valued state is the
//! running sum of masked inputs (each arriving masked vector is added into it and dropped), which
//! `finish` unmasks in place into the aggregate. [`Server::held_vectors`] lists it for tests.

use std::collections::{BTreeMap, BTreeSet};

use vsss_rs::Gf256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::{self, SEALED_LEN, SHARE_LEN};
use crate::error::{DecodeError, Rejected, RoundError};
use crate::graph::Graph;
use crate::messages::{
    AdvertiseKeys, ClientMessage, ClientMessageRef, IncomingShare, MaskedInput, Roster,
    RosterEntry, ShareBundle, ShareKeys, UnmaskRequest, UnmaskResponse,
};
use crate::{ClientId, Params, Stage};

/// A dealt share as the server stores it: ciphertext, seed-share and key-share commitments.
type StoredShare = (Vec<u8>, [u8; 32], [u8; 32]);

/// What the server stored from one client's `ShareKeys`.
#[derive(Debug, Clone)]
struct SharesFrom {
    seed_commitment: [u8; 32],
    /// recipient → (ciphertext, seed-share commitment, key-share commitment)
    shares: BTreeMap<ClientId, StoredShare>,
}

/// The result of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Per coordinate, the sum of the contributors' clipped updates (within `error_bound`).
    pub sum: Vec<f64>,
    /// The clients whose updates are in the sum (those whose masked input arrived), sorted.
    pub contributors: Vec<ClientId>,
    /// Bound on the quantization error of each coordinate of `sum`.
    pub error_bound: f64,
}

/// A vector-valued piece of server state, as listed by [`Server::held_vectors`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeldVector<'a> {
    /// The running sum, modulo 2^32, of the masked inputs received so far.
    MaskedSum {
        /// How many masked inputs are in it.
        inputs: usize,
        /// The sum.
        data: &'a [u32],
    },
    /// The unmasked aggregate (after `finish`).
    Aggregate(&'a [f64]),
}

/// The server's side of one secure-aggregation round.
#[derive(Debug)]
pub struct Server {
    params: Params,
    round: u64,
    graph_seed: [u8; 32],
    threads: usize,
    stage: Stage,
    failure: Option<RoundError>,
    /// U1: clients that advertised keys.
    keys: BTreeMap<ClientId, ([u8; 32], [u8; 32])>,
    graph: Option<Graph>,
    /// U2: clients whose shares arrived.
    shares: BTreeMap<ClientId, SharesFrom>,
    /// U3: clients whose masked input arrived (and is in `masked_sum`).
    contributors: BTreeSet<ClientId>,
    masked_sum: Vec<u32>,
    /// Unmasking requests sent, by recipient.
    requests: BTreeMap<ClientId, UnmaskRequest>,
    /// U5: clients whose unmasking response arrived.
    responded: BTreeSet<ClientId>,
    /// owner → shares of its self-mask seed (verified).
    seed_shares: BTreeMap<ClientId, Vec<Vec<u8>>>,
    /// owner → shares of its mask key (verified).
    key_shares: BTreeMap<ClientId, Vec<Vec<u8>>>,
    aggregate: Option<Vec<f64>>,
}

impl Server {
    /// A server for `round`. `graph_seed` fixes the communication graph; it is published in the
    /// roster (draw it fresh per round, e.g. from the round machine's RNG).
    pub fn new(params: Params, round: u64, graph_seed: [u8; 32]) -> Self {
        Self {
            params,
            round,
            graph_seed,
            threads: 1,
            stage: Stage::AdvertiseKeys,
            failure: None,
            keys: BTreeMap::new(),
            graph: None,
            shares: BTreeMap::new(),
            contributors: BTreeSet::new(),
            masked_sum: Vec::new(),
            requests: BTreeMap::new(),
            responded: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
            aggregate: None,
        }
    }

    /// Number of threads `finish` may use to expand masks (default 1). Computation only.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The current stage ([`Stage::Failed`] after a round error).
    pub fn stage(&self) -> Stage {
        if self.failure.is_some() {
            Stage::Failed
        } else {
            self.stage
        }
    }

    /// The round's parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Every vector-valued piece of state the server holds. Individual inputs are never kept: the
    /// list holds at most the running masked sum, then the aggregate.
    pub fn held_vectors(&self) -> Vec<HeldVector<'_>> {
        let mut v = Vec::new();
        if !self.masked_sum.is_empty() {
            v.push(HeldVector::MaskedSum {
                inputs: self.contributors.len(),
                data: &self.masked_sum,
            });
        }
        if let Some(a) = &self.aggregate {
            v.push(HeldVector::Aggregate(a));
        }
        v
    }

    /// Decodes untrusted bytes from the authenticated client `from` and handles the message.
    pub fn receive(&mut self, from: ClientId, bytes: &[u8]) -> Result<(), Rejected> {
        let msg = match ClientMessageRef::from_bytes(bytes, &self.params)? {
            // The hot path: the words are added to the running sum straight from `bytes`.
            ClientMessageRef::MaskedInput(m) => {
                if self.stage() != Stage::MaskedInput {
                    return Err(Rejected::WrongStage {
                        expected: self.stage(),
                        got: Stage::MaskedInput,
                    });
                }
                let (width, bytes) = m.masked;
                if !matches!(width, 2 | 4) || !bytes.len().is_multiple_of(usize::from(width)) {
                    return Err(Rejected::Decode(DecodeError::Malformed(format!(
                        "{} bytes is not a whole number of words of width {width} (2 or 4)",
                        bytes.len()
                    ))));
                }
                let words = if width == 2 {
                    Words::Le16(bytes)
                } else {
                    Words::Le32(bytes)
                };
                return self.on_masked(from, m.round, m.sender, words);
            }
            ClientMessageRef::AdvertiseKeys(m) => ClientMessage::AdvertiseKeys(m),
            ClientMessageRef::ShareKeys(m) => ClientMessage::ShareKeys(m),
            ClientMessageRef::Unmask(m) => ClientMessage::Unmask(m),
        };
        self.handle(from, msg)
    }

    /// Handles a message from the authenticated client `from`. On error nothing changed.
    pub fn handle(&mut self, from: ClientId, msg: ClientMessage) -> Result<(), Rejected> {
        if msg.stage() != self.stage() {
            return Err(Rejected::WrongStage {
                expected: self.stage(),
                got: msg.stage(),
            });
        }
        match msg {
            ClientMessage::AdvertiseKeys(m) => self.on_advertise(from, m),
            ClientMessage::ShareKeys(m) => self.on_share_keys(from, m),
            ClientMessage::MaskedInput(m) => self.on_masked_input(from, m),
            ClientMessage::Unmask(m) => self.on_unmask(from, m),
        }
    }

    fn check_header(&self, from: ClientId, round: u64, sender: ClientId) -> Result<(), Rejected> {
        if round != self.round {
            return Err(Rejected::WrongRound {
                expected: self.round,
                got: round,
            });
        }
        if sender != from {
            return Err(Rejected::SenderMismatch {
                claimed: sender,
                authenticated: from,
            });
        }
        Ok(())
    }

    fn on_advertise(&mut self, from: ClientId, m: AdvertiseKeys) -> Result<(), Rejected> {
        self.check_header(from, m.round, m.sender)?;
        if self.keys.contains_key(&from) {
            return Err(Rejected::Duplicate(from));
        }
        crate::check_public_key(from, &m.c_pk)?;
        crate::check_public_key(from, &m.s_pk)?;
        if m.c_pk == m.s_pk
            || self
                .keys
                .values()
                .any(|(c, s)| [c, s].iter().any(|k| **k == m.c_pk || **k == m.s_pk))
        {
            return Err(Rejected::InvalidKey {
                client: from,
                reason: "key reused",
            });
        }
        if self.keys.len() >= self.params.max_clients() {
            return Err(Rejected::WrongLength {
                what: "roster",
                expected: self.params.max_clients(),
                got: self.keys.len() + 1,
            });
        }
        self.keys.insert(from, (m.c_pk, m.s_pk));
        Ok(())
    }

    fn on_share_keys(&mut self, from: ClientId, m: ShareKeys) -> Result<(), Rejected> {
        self.check_header(from, m.round, m.sender)?;
        let Some(graph) = &self.graph else {
            return Err(Rejected::NotInCohort(from));
        };
        if !self.keys.contains_key(&from) {
            return Err(Rejected::NotInCohort(from));
        }
        if self.shares.contains_key(&from) {
            return Err(Rejected::Duplicate(from));
        }
        let nb = graph.neighbours(from);
        if m.shares.len() != nb.len() {
            return Err(Rejected::WrongLength {
                what: "shares",
                expected: nb.len(),
                got: m.shares.len(),
            });
        }
        let mut shares = BTreeMap::new();
        for (s, &v) in m.shares.into_iter().zip(nb) {
            if s.recipient != v {
                return Err(if graph.are_neighbours(from, s.recipient) {
                    Rejected::MalformedList("shares must be sorted by recipient".into())
                } else {
                    Rejected::NotNeighbour {
                        client: from,
                        peer: s.recipient,
                    }
                });
            }
            if s.ciphertext.len() != SEALED_LEN {
                return Err(Rejected::BadShare {
                    owner: from,
                    holder: v,
                    reason: "ciphertext has the wrong length",
                });
            }
            shares.insert(
                v,
                (
                    s.ciphertext,
                    s.seed_share_commitment,
                    s.key_share_commitment,
                ),
            );
        }
        self.shares.insert(
            from,
            SharesFrom {
                seed_commitment: m.seed_commitment,
                shares,
            },
        );
        Ok(())
    }

    fn on_masked_input(&mut self, from: ClientId, m: MaskedInput) -> Result<(), Rejected> {
        self.on_masked(from, m.round, m.sender, Words::Owned(m.masked))
    }

    fn on_masked(
        &mut self,
        from: ClientId,
        round: u64,
        sender: ClientId,
        words: Words<'_>,
    ) -> Result<(), Rejected> {
        self.check_header(from, round, sender)?;
        if !self.shares.contains_key(&from) {
            return Err(Rejected::NotInCohort(from));
        }
        if self.contributors.contains(&from) {
            return Err(Rejected::Duplicate(from));
        }
        let d = self.params.vector_len();
        if words.len() != d {
            return Err(Rejected::WrongLength {
                what: "masked input",
                expected: d,
                got: words.len(),
            });
        }
        // Every word must be an element of the ring (below 2^16 in a 16-bit ring); 2-byte words
        // always are.
        let ring = self.params.ring_mask();
        let outside = match &words {
            Words::Owned(v) => v.iter().position(|&w| w > ring),
            Words::Le32(b) if ring != u32::MAX => b
                .chunks_exact(4)
                .position(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) > ring),
            Words::Le32(_) | Words::Le16(_) => None,
        };
        if let Some(index) = outside {
            return Err(Rejected::OutOfRing {
                client: from,
                index,
                ring_bits: self.params.ring_bits(),
            });
        }
        match words {
            Words::Owned(v) if self.masked_sum.is_empty() => self.masked_sum = v,
            Words::Owned(v) => {
                for (s, x) in self.masked_sum.iter_mut().zip(&v) {
                    *s = s.wrapping_add(*x);
                }
            }
            Words::Le32(bytes) => {
                if self.masked_sum.is_empty() {
                    self.masked_sum = vec![0; d];
                }
                for (s, x) in self.masked_sum.iter_mut().zip(bytes.chunks_exact(4)) {
                    *s = s.wrapping_add(u32::from_le_bytes([x[0], x[1], x[2], x[3]]));
                }
            }
            Words::Le16(bytes) => {
                if self.masked_sum.is_empty() {
                    self.masked_sum = vec![0; d];
                }
                for (s, x) in self.masked_sum.iter_mut().zip(bytes.chunks_exact(2)) {
                    *s = s.wrapping_add(u32::from(u16::from_le_bytes([x[0], x[1]])));
                }
            }
        }
        self.contributors.insert(from);
        Ok(())
    }

    fn on_unmask(&mut self, from: ClientId, m: UnmaskResponse) -> Result<(), Rejected> {
        self.check_header(from, m.round, m.sender)?;
        let Some(req) = self.requests.get(&from) else {
            return Err(Rejected::NotInCohort(from));
        };
        if self.responded.contains(&from) {
            return Err(Rejected::Duplicate(from));
        }
        if m.seed_shares.len() != req.survivors.len() {
            return Err(Rejected::WrongLength {
                what: "seed shares",
                expected: req.survivors.len(),
                got: m.seed_shares.len(),
            });
        }
        if m.key_shares.len() != req.dropped.len() {
            return Err(Rejected::WrongLength {
                what: "key shares",
                expected: req.dropped.len(),
                got: m.key_shares.len(),
            });
        }
        let graph = self.graph.as_ref().ok_or(Rejected::NotInCohort(from))?;
        for (list, asked, kind) in [
            (&m.seed_shares, &req.survivors, "seed"),
            (&m.key_shares, &req.dropped, "key"),
        ] {
            for (s, &owner) in list.iter().zip(asked) {
                if s.owner != owner {
                    return Err(Rejected::MalformedList(format!(
                        "{kind} shares must follow the request's order"
                    )));
                }
                let bad = |reason| Rejected::BadShare {
                    owner,
                    holder: from,
                    reason,
                };
                if s.share.len() != SHARE_LEN {
                    return Err(bad("share has the wrong length"));
                }
                if graph.share_id(owner, from) != Some(s.share[0]) {
                    return Err(bad("share identifier does not match this holder"));
                }
                let stored = self
                    .shares
                    .get(&owner)
                    .and_then(|f| f.shares.get(&from))
                    .ok_or(bad("no such share was dealt"))?;
                let commitment = if kind == "seed" { stored.1 } else { stored.2 };
                if crypto::share_commitment(kind.as_bytes(), self.round, owner, from, &s.share)
                    != commitment
                {
                    return Err(bad("share does not match the owner's commitment"));
                }
            }
        }
        for s in m.seed_shares {
            self.seed_shares.entry(s.owner).or_default().push(s.share);
        }
        for s in m.key_shares {
            self.key_shares.entry(s.owner).or_default().push(s.share);
        }
        self.responded.insert(from);
        Ok(())
    }

    fn begin_close(&self, stage: Stage, what: &'static str) -> Result<(), RoundError> {
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        if self.stage != stage {
            return Err(RoundError::WrongStage {
                stage: self.stage,
                what,
            });
        }
        Ok(())
    }

    fn fail(&mut self, e: RoundError) -> RoundError {
        self.failure = Some(e.clone());
        self.masked_sum = Vec::new();
        e
    }

    /// Every client in `owners` needs at least t neighbours in `holders`.
    fn check_neighbourhoods<'a>(
        &self,
        stage: Stage,
        owners: impl Iterator<Item = &'a ClientId>,
        holders: &BTreeSet<ClientId>,
    ) -> Result<(), RoundError> {
        let Some(graph) = &self.graph else {
            return Ok(());
        };
        let t = self.params.threshold();
        for &u in owners {
            let available = graph
                .neighbours(u)
                .iter()
                .filter(|v| holders.contains(v))
                .count();
            if available < t {
                return Err(RoundError::BelowThreshold {
                    stage,
                    client: u,
                    available,
                    threshold: t,
                });
            }
        }
        Ok(())
    }

    /// Closes stage 0: builds the roster and the graph. Fails if fewer than `t + 1` clients
    /// advertised (a client needs `t` neighbours).
    pub fn close_advertise(&mut self) -> Result<Roster, RoundError> {
        self.begin_close(Stage::AdvertiseKeys, "close_advertise")?;
        let required = self.params.threshold() + 1;
        if self.keys.len() < required {
            let e = RoundError::TooFewClients {
                stage: Stage::AdvertiseKeys,
                available: self.keys.len(),
                required,
            };
            return Err(self.fail(e));
        }
        let ids: Vec<ClientId> = self.keys.keys().copied().collect();
        self.graph = Some(Graph::new(&ids, self.params.neighbours(), self.graph_seed));
        self.stage = Stage::ShareKeys;
        Ok(Roster {
            round: self.round,
            params: self.params,
            graph_seed: self.graph_seed,
            clients: self
                .keys
                .iter()
                .map(|(&client, &(c_pk, s_pk))| RosterEntry { client, c_pk, s_pk })
                .collect(),
        })
    }

    /// Closes stage 1: routes every share to its holder. Only clients whose shares arrived (U2) get
    /// a bundle. Fails if any of them has fewer than t neighbours in U2.
    pub fn close_share_keys(&mut self) -> Result<BTreeMap<ClientId, ShareBundle>, RoundError> {
        self.begin_close(Stage::ShareKeys, "close_share_keys")?;
        let u2: BTreeSet<ClientId> = self.shares.keys().copied().collect();
        if let Err(e) = self.check_neighbourhoods(Stage::ShareKeys, u2.iter(), &u2) {
            return Err(self.fail(e));
        }
        let mut bundles: BTreeMap<ClientId, ShareBundle> = u2
            .iter()
            .map(|&v| {
                (
                    v,
                    ShareBundle {
                        round: self.round,
                        recipient: v,
                        shares: Vec::new(),
                    },
                )
            })
            .collect();
        for (&owner, from) in &self.shares {
            for (holder, (c, _, _)) in &from.shares {
                if let Some(b) = bundles.get_mut(holder) {
                    b.shares.push(IncomingShare {
                        sender: owner,
                        ciphertext: c.clone(),
                    });
                }
            }
        }
        self.stage = Stage::MaskedInput;
        Ok(bundles)
    }

    /// Closes stage 2: asks each contributor (U3) to unmask. Fails if fewer than t masked inputs
    /// arrived, or any secret that must be reconstructed has fewer than t holders left in U3.
    pub fn close_masked_input(&mut self) -> Result<BTreeMap<ClientId, UnmaskRequest>, RoundError> {
        self.begin_close(Stage::MaskedInput, "close_masked_input")?;
        let t = self.params.threshold();
        if self.contributors.len() < t {
            let e = RoundError::TooFewClients {
                stage: Stage::MaskedInput,
                available: self.contributors.len(),
                required: t,
            };
            return Err(self.fail(e));
        }
        let dropped = self.dropped_with_live_neighbours();
        let u3 = self.contributors.clone();
        if let Err(e) =
            self.check_neighbourhoods(Stage::MaskedInput, u3.iter().chain(dropped.iter()), &u3)
        {
            return Err(self.fail(e));
        }
        let Some(graph) = &self.graph else {
            unreachable!("graph exists after stage 0")
        };
        let mut requests = BTreeMap::new();
        for &v in &self.contributors {
            let (mut survivors, mut dropped) = (Vec::new(), Vec::new());
            for &u in graph.neighbours(v) {
                if self.contributors.contains(&u) {
                    survivors.push(u);
                } else if self.shares.contains_key(&u) {
                    dropped.push(u);
                }
            }
            requests.insert(
                v,
                UnmaskRequest {
                    round: self.round,
                    recipient: v,
                    survivors,
                    dropped,
                },
            );
        }
        self.requests = requests.clone();
        self.stage = Stage::Unmasking;
        Ok(requests)
    }

    /// U2 \ U3 members with at least one neighbour in U3 (their pair masks are in the sum).
    fn dropped_with_live_neighbours(&self) -> Vec<ClientId> {
        let Some(graph) = &self.graph else {
            return Vec::new();
        };
        self.shares
            .keys()
            .filter(|u| !self.contributors.contains(u))
            .filter(|&&u| {
                graph
                    .neighbours(u)
                    .iter()
                    .any(|v| self.contributors.contains(v))
            })
            .copied()
            .collect()
    }

    /// Closes stage 3: reconstructs the contributors' self-mask seeds and the dropped clients' mask
    /// keys, removes every mask from the running sum and decodes it. Fails (explicitly) if any of
    /// those secrets has fewer than t verified shares, or does not match its commitment.
    pub fn finish(&mut self) -> Result<Aggregate, RoundError> {
        self.begin_close(Stage::Unmasking, "finish")?;
        match self.unmask() {
            Ok(a) => Ok(a),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn unmask(&mut self) -> Result<Aggregate, RoundError> {
        let t = self.params.threshold();
        let dropped = self.dropped_with_live_neighbours();
        self.check_neighbourhoods(
            Stage::Unmasking,
            self.contributors.iter().chain(dropped.iter()),
            &self.responded,
        )?;
        let Some(graph) = &self.graph else {
            unreachable!("graph exists after stage 0")
        };
        let mut masks: Vec<(crypto::MaskKey, bool)> = Vec::new();
        for &u in &self.contributors {
            let shares = self.seed_shares.get(&u).map(Vec::as_slice).unwrap_or(&[]);
            let secret = combine(&shares[..t.min(shares.len())]).ok_or(
                RoundError::ReconstructionFailed {
                    client: u,
                    secret: "self-mask seed",
                },
            )?;
            let committed = self.shares.get(&u).map(|s| s.seed_commitment);
            if committed != Some(crypto::seed_commitment(self.round, u, &secret)) {
                return Err(RoundError::ReconstructionFailed {
                    client: u,
                    secret: "self-mask seed",
                });
            }
            masks.push((crypto::self_mask_key(&secret, self.round, u), true));
        }
        for &u in &dropped {
            let shares = self.key_shares.get(&u).map(Vec::as_slice).unwrap_or(&[]);
            let secret = combine(&shares[..t.min(shares.len())]).ok_or(
                RoundError::ReconstructionFailed {
                    client: u,
                    secret: "mask key",
                },
            )?;
            let s_sk = StaticSecret::from(secret);
            let s_pk = self.keys.get(&u).map(|k| k.1);
            if s_pk != Some(PublicKey::from(&s_sk).to_bytes()) {
                return Err(RoundError::ReconstructionFailed {
                    client: u,
                    secret: "mask key",
                });
            }
            for &v in graph
                .neighbours(u)
                .iter()
                .filter(|v| self.contributors.contains(v))
            {
                let Some(&(_, v_pk)) = self.keys.get(&v) else {
                    continue;
                };
                let shared = s_sk.diffie_hellman(&PublicKey::from(v_pk));
                // v added the mask with sign + if v < u, − otherwise; undo it.
                masks.push((
                    crypto::pair_mask_key(shared.as_bytes(), self.round, u, v),
                    v < u,
                ));
            }
        }
        let mut sum = std::mem::take(&mut self.masked_sum);
        crypto::apply_masks(&masks, &mut sum, self.threads);
        let m = self.contributors.len();
        // The running sum wraps modulo 2^32; reducing it modulo the ring (2^16 divides 2^32) gives
        // the sum in the ring, which holds the true sum without overflow by construction.
        let ring = self.params.ring_mask();
        let aggregate: Vec<f64> = sum
            .iter()
            .map(|&q| self.params.decode_sum(q & ring, m))
            .collect();
        self.aggregate = Some(aggregate.clone());
        self.stage = Stage::Finished;
        Ok(Aggregate {
            sum: aggregate,
            contributors: self.contributors.iter().copied().collect(),
            error_bound: self.params.quantization_error_bound(m),
        })
    }
}

/// The words of a masked input: decoded, or still in the received bytes (little-endian, 4 or 2
/// bytes each).
enum Words<'a> {
    Owned(Vec<u32>),
    Le32(&'a [u8]),
    Le16(&'a [u8]),
}

impl Words<'_> {
    fn len(&self) -> usize {
        match self {
            Words::Owned(v) => v.len(),
            Words::Le32(b) => b.len() / 4,
            Words::Le16(b) => b.len() / 2,
        }
    }
}

fn combine(shares: &[Vec<u8>]) -> Option<[u8; 32]> {
    if shares.len() < 2 {
        return None;
    }
    Gf256::combine_bytes(shares).ok()?.try_into().ok()
}
