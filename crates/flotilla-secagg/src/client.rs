//! The client's state machine: one value per client per round.
//!
//! ```text
//! Client::new ─ advertise() ─▶ AdvertiseKeys
//! handle_roster(Roster)       ─▶ ShareKeys          (stage 1)
//! handle_shares(ShareBundle)  ─▶ ()                 (stage 2 starts)
//! masked_input(&update)       ─▶ MaskedInput        (stage 2)
//! handle_unmask(UnmaskRequest)─▶ UnmaskResponse     (stage 3; answered once)
//! ```
//!
//! A refused message ([`ClientError::Rejected`], [`ClientError::InvalidUpdate`]) leaves the state
//! unchanged; a [`ClientError::Round`] fails the client for the rest of the round.

use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use vsss_rs::Gf256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{self, SHARE_LEN, SHARE_PAIR_LEN};
use crate::error::{ClientError, Rejected, RoundError};
use crate::graph::Graph;
use crate::messages::{
    AdvertiseKeys, MaskedInput, OutgoingShare, RevealedShare, Roster, ShareBundle, ShareKeys,
    UnmaskRequest, UnmaskResponse,
};
use crate::{ClientId, Params, Stage};

#[derive(Clone)]
struct Peer {
    id: ClientId,
    c_pk: PublicKey,
    s_pk: PublicKey,
}

/// Shares this client holds for one neighbour.
struct Held {
    seed_share: Zeroizing<[u8; SHARE_LEN]>,
    key_share: Zeroizing<[u8; SHARE_LEN]>,
}

enum State {
    Advertised,
    SharedKeys {
        neighbours: Vec<Peer>,
        /// X25519 secrets with each neighbour's `c_pk`, in `neighbours` order, kept from stage 1
        /// so stage 2 opens the shares without computing them again (zeroized on drop).
        share_secrets: Vec<SharedSecret>,
        graph: Graph,
    },
    HaveShares {
        live: Vec<Peer>,
        held: BTreeMap<ClientId, Held>,
    },
    Masked {
        live: Vec<Peer>,
        held: BTreeMap<ClientId, Held>,
    },
    Done,
    Failed(RoundError),
}

/// One client's side of one secure-aggregation round.
pub struct Client {
    params: Params,
    id: ClientId,
    round: u64,
    c_sk: StaticSecret,
    s_sk: StaticSecret,
    /// `c_pk`, `s_pk`: computed once (each is a scalar multiplication).
    public: ([u8; 32], [u8; 32]),
    seed: Zeroizing<[u8; 32]>,
    rng: ChaCha20Rng,
    state: State,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("round", &self.round)
            .field("stage", &self.stage())
            .finish()
    }
}

impl Client {
    /// A client for `round`. All its secrets (key pairs, self-mask seed, Shamir coefficients) are
    /// drawn from `seed`, which must be secret, uniformly random and never reused (e.g. 32 bytes
    /// from the OS RNG, supplied by the driver).
    pub fn new(params: Params, id: ClientId, round: u64, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut draw = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            b
        };
        let c_sk = StaticSecret::from(draw());
        let s_sk = StaticSecret::from(draw());
        let self_seed = Zeroizing::new(draw());
        let public = (
            PublicKey::from(&c_sk).to_bytes(),
            PublicKey::from(&s_sk).to_bytes(),
        );
        Self {
            params,
            id,
            round,
            c_sk,
            s_sk,
            public,
            seed: self_seed,
            rng,
            state: State::Advertised,
        }
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The stage whose server message this client expects next ([`Stage::Finished`] when done,
    /// [`Stage::Failed`] after a round error).
    pub fn stage(&self) -> Stage {
        match self.state {
            State::Advertised => Stage::ShareKeys,
            State::SharedKeys { .. } => Stage::MaskedInput,
            State::HaveShares { .. } => Stage::MaskedInput,
            State::Masked { .. } => Stage::Unmasking,
            State::Done => Stage::Finished,
            State::Failed(_) => Stage::Failed,
        }
    }

    /// Stage 0: the public keys to advertise (may be sent again; it does not change state).
    pub fn advertise(&self) -> AdvertiseKeys {
        AdvertiseKeys {
            round: self.round,
            sender: self.id,
            c_pk: self.public.0,
            s_pk: self.public.1,
        }
    }

    fn fail(&mut self, e: RoundError) -> ClientError {
        self.state = State::Failed(e.clone());
        ClientError::Round(e)
    }

    fn check_live(&self, expected: Stage) -> Result<(), ClientError> {
        if let State::Failed(e) = &self.state {
            return Err(ClientError::Round(e.clone()));
        }
        let stage = self.stage();
        if stage != expected {
            return Err(Rejected::WrongStage {
                expected: stage,
                got: expected,
            }
            .into());
        }
        Ok(())
    }

    fn check_round(&self, round: u64) -> Result<(), Rejected> {
        if round != self.round {
            return Err(Rejected::WrongRound {
                expected: self.round,
                got: round,
            });
        }
        Ok(())
    }

    /// Stage 1: validates the roster, derives the communication graph and Shamir-shares the
    /// self-mask seed and the mask secret key (threshold t) among the neighbours, each pair of
    /// shares encrypted for its holder.
    pub fn handle_roster(&mut self, roster: &Roster) -> Result<ShareKeys, ClientError> {
        self.check_live(Stage::ShareKeys)?;
        self.check_round(roster.round)?;
        if roster.params != self.params {
            return Err(Rejected::ParamsMismatch(format!(
                "{:?} vs {:?}",
                roster.params, self.params
            ))
            .into());
        }
        let ids = validate_roster(roster, self.params.max_clients())?;
        let me = self.advertise();
        match roster.clients.binary_search_by_key(&self.id, |e| e.client) {
            Ok(i) if roster.clients[i].c_pk == me.c_pk && roster.clients[i].s_pk == me.s_pk => {}
            Ok(_) => {
                return Err(Rejected::InvalidKey {
                    client: self.id,
                    reason: "roster has other keys for this client",
                }
                .into());
            }
            Err(_) => return Err(Rejected::NotInCohort(self.id).into()),
        }
        let graph = Graph::new(&ids, self.params.neighbours(), roster.graph_seed);
        let neighbours: Vec<Peer> = graph
            .neighbours(self.id)
            .iter()
            .filter_map(|v| roster.clients.binary_search_by_key(v, |e| e.client).ok())
            .map(|i| {
                let e = &roster.clients[i];
                Peer {
                    id: e.client,
                    c_pk: PublicKey::from(e.c_pk),
                    s_pk: PublicKey::from(e.s_pk),
                }
            })
            .collect();
        let t = self.params.threshold();
        if neighbours.len() < t {
            return Err(self.fail(RoundError::BelowThreshold {
                stage: Stage::ShareKeys,
                client: self.id,
                available: neighbours.len(),
                threshold: t,
            }));
        }
        let mut shared_secrets = Vec::with_capacity(neighbours.len());
        for peer in &neighbours {
            let shared = self.c_sk.diffie_hellman(&peer.c_pk);
            if !shared.was_contributory() {
                return Err(Rejected::InvalidKey {
                    client: peer.id,
                    reason: "low-order point",
                }
                .into());
            }
            shared_secrets.push(shared);
        }
        let k = neighbours.len();
        let split =
            |secret: &[u8; 32], rng: &mut ChaCha20Rng| Gf256::split_bytes(t, k, secret, rng);
        let (seed_shares, key_shares) = match (
            split(&self.seed, &mut self.rng),
            split(self.s_sk.as_bytes(), &mut self.rng),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            // t ≥ 2, t ≤ k ≤ 255 and the secrets are 32 bytes: vsss-rs accepts these by construction.
            _ => unreachable!("Shamir split with validated parameters failed"),
        };
        let mut shares = Vec::with_capacity(k);
        for (((peer, shared), mut sb), mut sk) in neighbours
            .iter()
            .zip(&shared_secrets)
            .zip(seed_shares)
            .zip(key_shares)
        {
            let mut plain = Zeroizing::new([0u8; SHARE_PAIR_LEN]);
            plain[..SHARE_LEN].copy_from_slice(&sb);
            plain[SHARE_LEN..].copy_from_slice(&sk);
            shares.push(OutgoingShare {
                recipient: peer.id,
                ciphertext: crypto::seal_share(
                    shared.as_bytes(),
                    self.round,
                    self.id,
                    peer.id,
                    &plain,
                ),
                seed_share_commitment: crypto::share_commitment(
                    b"seed", self.round, self.id, peer.id, &sb,
                ),
                key_share_commitment: crypto::share_commitment(
                    b"key", self.round, self.id, peer.id, &sk,
                ),
            });
            sb.zeroize();
            sk.zeroize();
        }
        self.state = State::SharedKeys {
            neighbours,
            share_secrets: shared_secrets,
            graph,
        };
        Ok(ShareKeys {
            round: self.round,
            sender: self.id,
            seed_commitment: crypto::seed_commitment(self.round, self.id, &self.seed),
            shares,
        })
    }

    /// Stage 2 begins: decrypts and checks the shares the neighbours sent. Its senders are the
    /// neighbours that completed stage 1; this client masks with exactly those. Any bad entry
    /// refuses the whole bundle (state unchanged).
    pub fn handle_shares(&mut self, bundle: &ShareBundle) -> Result<(), ClientError> {
        self.check_live(Stage::MaskedInput)?;
        let (neighbours, share_secrets, graph) = match &self.state {
            State::SharedKeys {
                neighbours,
                share_secrets,
                graph,
            } => (neighbours, share_secrets, graph),
            _ => {
                return Err(Rejected::WrongStage {
                    expected: self.stage(),
                    got: Stage::MaskedInput,
                }
                .into());
            }
        };
        self.check_round(bundle.round)?;
        if bundle.recipient != self.id {
            return Err(Rejected::WrongRecipient {
                expected: self.id,
                got: bundle.recipient,
            }
            .into());
        }
        let expected_id = |owner: ClientId| graph.share_id(owner, self.id);
        let mut held = BTreeMap::new();
        let mut live = Vec::with_capacity(bundle.shares.len());
        let mut last: Option<ClientId> = None;
        for s in &bundle.shares {
            if last.is_some_and(|l| l >= s.sender) {
                return Err(Rejected::MalformedList(
                    "shares must be sorted by sender, without duplicates".into(),
                )
                .into());
            }
            last = Some(s.sender);
            let Some(at) = neighbours.iter().position(|p| p.id == s.sender) else {
                return Err(Rejected::NotNeighbour {
                    client: self.id,
                    peer: s.sender,
                }
                .into());
            };
            let bad = |reason| Rejected::BadShare {
                owner: s.sender,
                holder: self.id,
                reason,
            };
            let (peer, shared) = (&neighbours[at], &share_secrets[at]);
            let plain = Zeroizing::new(
                crypto::open_share(
                    shared.as_bytes(),
                    self.round,
                    s.sender,
                    self.id,
                    &s.ciphertext,
                )
                .ok_or_else(|| bad("does not authenticate for this sender, recipient and round"))?,
            );
            let mut seed_share = Zeroizing::new([0u8; SHARE_LEN]);
            let mut key_share = Zeroizing::new([0u8; SHARE_LEN]);
            seed_share.copy_from_slice(&plain[..SHARE_LEN]);
            key_share.copy_from_slice(&plain[SHARE_LEN..]);
            let id = expected_id(s.sender);
            if id != Some(seed_share[0]) || id != Some(key_share[0]) {
                return Err(bad("share identifier does not match this holder").into());
            }
            held.insert(
                s.sender,
                Held {
                    seed_share,
                    key_share,
                },
            );
            live.push(peer.clone());
        }
        let t = self.params.threshold();
        if live.len() < t {
            return Err(self.fail(RoundError::BelowThreshold {
                stage: Stage::MaskedInput,
                client: self.id,
                available: live.len(),
                threshold: t,
            }));
        }
        self.state = State::HaveShares { live, held };
        Ok(())
    }

    /// Stage 2: encodes `update` (clipped to `[-R, R]`; fixed point, or stochastically quantized
    /// when the parameters set `quantization_bits`), adds the self mask and the pairwise masks with
    /// every live neighbour (`+` towards larger ids, `−` towards smaller), modulo the ring.
    pub fn masked_input(&mut self, update: &[f32]) -> Result<MaskedInput, ClientError> {
        self.check_live(Stage::MaskedInput)?;
        if update.len() != self.params.vector_len() {
            return Err(ClientError::InvalidUpdate(format!(
                "length {} but the round's vector length is {}",
                update.len(),
                self.params.vector_len()
            )));
        }
        if let Some(i) = update.iter().position(|x| !x.is_finite()) {
            return Err(ClientError::InvalidUpdate(format!(
                "coordinate {i} is not finite"
            )));
        }
        let State::HaveShares { live, .. } = &self.state else {
            return Err(Rejected::WrongStage {
                expected: self.stage(),
                got: Stage::MaskedInput,
            }
            .into());
        };
        let mut pair_keys = Vec::with_capacity(live.len());
        for peer in live {
            let shared = self.s_sk.diffie_hellman(&peer.s_pk);
            if !shared.was_contributory() {
                return Err(Rejected::InvalidKey {
                    client: peer.id,
                    reason: "low-order point",
                }
                .into());
            }
            pair_keys.push((
                crypto::pair_mask_key(shared.as_bytes(), self.round, self.id, peer.id),
                self.id > peer.id,
            ));
        }
        pair_keys.push((
            crypto::self_mask_key(&self.seed, self.round, self.id),
            false,
        ));
        // One pass: each L1-sized chunk is encoded, then every mask is added to it in place.
        let mut masked = vec![0u32; update.len()];
        let (params, rng) = (&self.params, &mut self.rng);
        let quantized = params.quantization_bits().is_some();
        crypto::mask_in_place(&pair_keys, &mut masked, 0, |at, chunk| {
            let xs = &update[at..at + chunk.len()];
            if quantized {
                params.encode_stochastic_into(xs, chunk, rng);
            } else {
                params.encode_into(xs, chunk);
            }
        });
        let ring = params.ring_mask();
        if ring != u32::MAX {
            // Reduce modulo 2^16: 2^16 divides 2^32, so the masks still cancel in the ring.
            masked.iter_mut().for_each(|w| *w &= ring);
        }
        let State::HaveShares { live, held } = std::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("state checked above");
        };
        self.state = State::Masked { live, held };
        Ok(MaskedInput {
            round: self.round,
            sender: self.id,
            masked,
        })
    }

    /// Stage 3: reveals self-mask-seed shares of surviving neighbours and mask-key shares of dropped
    /// ones. The request must partition exactly the neighbours this client masked with; a request
    /// naming a peer in both lists is refused. Answered once: the shares are then erased.
    pub fn handle_unmask(&mut self, req: &UnmaskRequest) -> Result<UnmaskResponse, ClientError> {
        self.check_live(Stage::Unmasking)?;
        self.check_round(req.round)?;
        if req.recipient != self.id {
            return Err(Rejected::WrongRecipient {
                expected: self.id,
                got: req.recipient,
            }
            .into());
        }
        let State::Masked { live, held } = &self.state else {
            return Err(Rejected::WrongStage {
                expected: self.stage(),
                got: Stage::Unmasking,
            }
            .into());
        };
        let survivors: BTreeSet<ClientId> = req.survivors.iter().copied().collect();
        let dropped: BTreeSet<ClientId> = req.dropped.iter().copied().collect();
        if let Some(&both) = survivors.intersection(&dropped).next() {
            return Err(Rejected::BothSecretsRequested(both).into());
        }
        if survivors.len() != req.survivors.len() || dropped.len() != req.dropped.len() {
            return Err(Rejected::BadUnmaskRequest("duplicate ids".into()).into());
        }
        let live_ids: BTreeSet<ClientId> = live.iter().map(|p| p.id).collect();
        if let Some(&x) = survivors.union(&dropped).find(|x| !live_ids.contains(x)) {
            return Err(Rejected::NotNeighbour {
                client: self.id,
                peer: x,
            }
            .into());
        }
        if survivors.len() + dropped.len() != live_ids.len() {
            return Err(Rejected::BadUnmaskRequest(format!(
                "request covers {} of the {} neighbours this client masked with",
                survivors.len() + dropped.len(),
                live_ids.len()
            ))
            .into());
        }
        let reveal =
            |ids: &[ClientId], pick: fn(&Held) -> &[u8; SHARE_LEN]| -> Vec<RevealedShare> {
                ids.iter()
                    .filter_map(|o| {
                        held.get(o).map(|h| RevealedShare {
                            owner: *o,
                            share: pick(h).to_vec(),
                        })
                    })
                    .collect()
            };
        let seed_shares = reveal(&req.survivors, |h| &h.seed_share);
        let key_shares = reveal(&req.dropped, |h| &h.key_share);
        self.state = State::Done;
        Ok(UnmaskResponse {
            round: self.round,
            sender: self.id,
            seed_shares,
            key_shares,
        })
    }
}

/// Checks a roster's shape; returns its ids.
pub(crate) fn validate_roster(roster: &Roster, max: usize) -> Result<Vec<ClientId>, Rejected> {
    if roster.clients.len() > max {
        return Err(Rejected::WrongLength {
            what: "roster",
            expected: max,
            got: roster.clients.len(),
        });
    }
    let ids: Vec<ClientId> = roster.clients.iter().map(|e| e.client).collect();
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Rejected::MalformedList(
            "roster must be sorted by client id, without duplicates".into(),
        ));
    }
    // Low-order keys are refused by the server at stage 0, and by this client on the shared
    // secrets it actually computes (`was_contributory`); here only reuse is checked, cheaply.
    let mut keys = BTreeSet::new();
    for e in &roster.clients {
        if !keys.insert(e.c_pk) || !keys.insert(e.s_pk) {
            return Err(Rejected::InvalidKey {
                client: e.client,
                reason: "key reused",
            });
        }
    }
    Ok(ids)
}
