//! An in-process driver for tests: runs one round with chosen dropouts, through encoded bytes.
#![allow(dead_code, clippy::enum_variant_names)]

use std::collections::{BTreeMap, BTreeSet};

use flotilla_secagg::{
    Aggregate, Client, ClientId, ClientMessage, Params, RoundError, Server, ServerMessage,
};

/// When a client disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Never advertises keys.
    BeforeAdvertise,
    /// Advertises, never shares keys.
    BeforeShareKeys,
    /// Shares keys, never sends its masked input.
    BeforeMaskedInput,
    /// Sends its masked input, never answers the unmasking request.
    BeforeUnmasking,
}

pub fn seed_for(round: u64, id: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&id.to_le_bytes());
    s[8..16].copy_from_slice(&round.to_le_bytes());
    s[31] = 0xa5;
    s
}

/// Deterministic update of client `id`: values in roughly [-1.5R, 1.5R] so some get clipped.
pub fn update_for(id: u64, len: usize, r: f64) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
                >> 11;
            let u = h as f64 / (1u64 << 53) as f64; // [0, 1)
            ((u * 3.0 - 1.5) * r) as f32
        })
        .collect()
}

pub fn clipped_sum(ids: impl IntoIterator<Item = u64>, len: usize, r: f64) -> Vec<f64> {
    let mut sum = vec![0.0f64; len];
    for id in ids {
        for (s, x) in sum.iter_mut().zip(update_for(id, len, r)) {
            *s += f64::from(x).clamp(-r, r);
        }
    }
    sum
}

pub struct Round {
    pub params: Params,
    pub round: u64,
    pub server: Server,
    pub clients: BTreeMap<ClientId, Client>,
    pub drops: BTreeMap<ClientId, Drop>,
    /// Each client's update: `(id, len, clip range) → values` ([`update_for`] unless a test sets it).
    pub update: fn(u64, usize, f64) -> Vec<f32>,
}

impl Round {
    pub fn new(params: Params, round: u64, n: u64, drops: BTreeMap<ClientId, Drop>) -> Self {
        let server = Server::new(params, round, [round as u8 ^ 0x3c; 32]);
        let clients = (0..n)
            .map(|i| {
                let id = ClientId(100 + 3 * i);
                (id, Client::new(params, id, round, seed_for(round, id.0)))
            })
            .collect();
        Self {
            params,
            round,
            server,
            clients,
            drops,
            update: update_for,
        }
    }

    fn alive(&self, id: ClientId, stage: Drop) -> bool {
        match self.drops.get(&id) {
            None => true,
            Some(d) => (*d as u8) > (stage as u8),
        }
    }

    pub fn advertise(&mut self) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            if self.alive(id, Drop::BeforeAdvertise) {
                let m = ClientMessage::AdvertiseKeys(self.clients[&id].advertise());
                self.server
                    .receive(id, &m.to_bytes())
                    .expect("advertise accepted");
            }
        }
    }

    pub fn share_keys(&mut self) -> Result<BTreeMap<ClientId, Vec<u8>>, RoundError> {
        let roster = self.server.close_advertise()?;
        let roster_bytes = ServerMessage::Roster(roster).to_bytes();
        let mut out = BTreeMap::new();
        let drops = &self.drops;
        for (&id, c) in self.clients.iter_mut() {
            if drops
                .get(&id)
                .is_some_and(|d| (*d as u8) <= Drop::BeforeShareKeys as u8)
            {
                continue;
            }
            let ServerMessage::Roster(r) =
                ServerMessage::from_bytes(&roster_bytes, &self.params).unwrap()
            else {
                panic!("roster")
            };
            let m = c.handle_roster(&r).expect("roster accepted");
            out.insert(id, ClientMessage::ShareKeys(m).to_bytes());
        }
        Ok(out)
    }

    pub fn send_all(&mut self, msgs: &BTreeMap<ClientId, Vec<u8>>) {
        for (&id, b) in msgs {
            self.server.receive(id, b).expect("accepted");
        }
    }

    pub fn masked_inputs(&mut self) -> Result<BTreeMap<ClientId, Vec<u8>>, RoundError> {
        let bundles = self.server.close_share_keys()?;
        let mut out = BTreeMap::new();
        for (id, bundle) in bundles {
            if !self.alive(id, Drop::BeforeMaskedInput) {
                continue;
            }
            let bytes = ServerMessage::Shares(bundle).to_bytes();
            let ServerMessage::Shares(b) = ServerMessage::from_bytes(&bytes, &self.params).unwrap()
            else {
                panic!()
            };
            let c = self.clients.get_mut(&id).unwrap();
            c.handle_shares(&b).expect("bundle accepted");
            let m = c
                .masked_input(&(self.update)(
                    id.0,
                    self.params.vector_len(),
                    self.params.clip_range(),
                ))
                .unwrap();
            out.insert(id, ClientMessage::MaskedInput(m).to_bytes());
        }
        Ok(out)
    }

    pub fn unmask(&mut self) -> Result<BTreeMap<ClientId, Vec<u8>>, RoundError> {
        let requests = self.server.close_masked_input()?;
        let mut out = BTreeMap::new();
        for (id, req) in requests {
            if !self.alive(id, Drop::BeforeUnmasking) {
                continue;
            }
            let bytes = ServerMessage::UnmaskRequest(req).to_bytes();
            let ServerMessage::UnmaskRequest(r) =
                ServerMessage::from_bytes(&bytes, &self.params).unwrap()
            else {
                panic!()
            };
            let m = self
                .clients
                .get_mut(&id)
                .unwrap()
                .handle_unmask(&r)
                .expect("request answered");
            out.insert(id, ClientMessage::Unmask(m).to_bytes());
        }
        Ok(out)
    }

    /// Runs the whole round.
    pub fn run(mut self) -> (Result<Aggregate, RoundError>, Server) {
        let r = (|| {
            self.advertise();
            let m = self.share_keys()?;
            self.send_all(&m);
            let m = self.masked_inputs()?;
            self.send_all(&m);
            let m = self.unmask()?;
            self.send_all(&m);
            self.server.finish()
        })();
        (r, self.server)
    }

    pub fn contributors(&self) -> BTreeSet<u64> {
        self.clients
            .keys()
            .filter(|id| {
                self.drops
                    .get(id)
                    .is_none_or(|d| *d == Drop::BeforeUnmasking)
            })
            .map(|id| id.0)
            .collect()
    }
}

pub fn assert_close(agg: &Aggregate, expected: &[f64]) {
    assert_eq!(agg.sum.len(), expected.len());
    for (i, (a, e)) in agg.sum.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        assert!(
            err <= agg.error_bound * (1.0 + 1e-6) + 1e-9,
            "coordinate {i}: {a} vs {e}, error {err} > {}",
            agg.error_bound
        );
    }
}
