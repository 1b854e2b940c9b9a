//! Secure aggregation for Flotilla: SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation
//! with (Poly)Logarithmic Overhead", building on Bonawitz et al. 2017) as sans-IO client and server
//! state machines.
//!
//! No networking, clocks, files or global randomness: a [`Client`] draws every secret from a seed
//! its driver passes, the [`Server`] from nothing (its graph seed is passed in), and both only turn
//! messages into messages. The round has four client-visible stages ([`Stage`]), matching the
//! stages of `flotilla_core::round::RoundMachine`:
//!
//! | stage | client → server | server → client |
//! |---|---|---|
//! | 0 `AdvertiseKeys` | [`AdvertiseKeys`]: X25519 `c_pk`, `s_pk` | — |
//! | 1 `ShareKeys` | [`ShareKeys`]: Shamir shares (threshold t) of the self-mask seed `b_u` and of `s_sk`, ChaCha20-Poly1305-encrypted per neighbour | [`Roster`] (broadcast): clients, graph seed |
//! | 2 `MaskedInput` | [`MaskedInput`]: `encode(clip(x)) + PRG(b_u) ± Σ PRG(s_uv)` in Z_2^32 | [`ShareBundle`]: the shares addressed to the client |
//! | 3 `Unmasking` | [`UnmaskResponse`]: shares of `b_v` for surviving and of `s_sk_v` for dropped neighbours | [`UnmaskRequest`]: who survived, who dropped |
//!
//! The server then reconstructs the needed secrets, strips every mask from the running sum, and
//! decodes the sum of the clipped updates ([`Aggregate`]). See [`params`] for the ring, encoding,
//! error bound and the choice of k and t.
//!
//! [`RoundAggregator`] is SecAgg+ as the round machine's pluggable secure aggregator
//! (`flotilla_core::round::SecureAggregator`): the machine owns it, so drivers never see a stage.
//!
//! Threat model: honest-but-curious server and clients (Bell et al.'s semi-honest setting). A
//! client refuses to reveal both secrets of one peer; shares carry hash commitments so the server
//! refuses forged shares; reconstructed secrets are checked against commitments. The transport
//! must authenticate clients (the driver passes the authenticated [`ClientId`]); the
//! signature-based consistency round of the malicious-server variant is not implemented.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod crypto;
pub mod error;
pub mod graph;
pub mod machine;
pub mod messages;
pub mod params;
pub mod server;

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

pub use client::Client;
pub use error::{ClientError, DecodeError, ParamError, Rejected, RoundError};
pub use machine::RoundAggregator;
pub use messages::{
    AdvertiseKeys, ClientMessage, IncomingShare, MaskedInput, OutgoingShare, RevealedShare, Roster,
    RosterEntry, ServerMessage, ShareBundle, ShareKeys, UnmaskRequest, UnmaskResponse,
};
pub use params::Params;
pub use server::{Aggregate, HeldVector, Server};

/// Identity of a client, as authenticated by the driver (maps 1:1 to the round machine's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client-{}", self.0)
    }
}

/// A client-visible stage of a secure-aggregation round, plus the two end states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// 0: clients advertise public keys.
    AdvertiseKeys,
    /// 1: clients share their secrets among their neighbours.
    ShareKeys,
    /// 2: clients send masked inputs.
    MaskedInput,
    /// 3: survivors reveal the shares needed to unmask the sum.
    Unmasking,
    /// The aggregate has been produced.
    Finished,
    /// The round failed with a [`RoundError`].
    Failed,
}

impl Stage {
    /// Index of a client-visible stage (0..=3), as the round machine numbers stages.
    pub fn index(self) -> Option<u32> {
        match self {
            Stage::AdvertiseKeys => Some(0),
            Stage::ShareKeys => Some(1),
            Stage::MaskedInput => Some(2),
            Stage::Unmasking => Some(3),
            Stage::Finished | Stage::Failed => None,
        }
    }
}

/// Refuses low-order X25519 public keys (their shared secrets are all-zero whatever the peer's key).
pub(crate) fn check_public_key(client: ClientId, pk: &[u8; 32]) -> Result<(), Rejected> {
    // Clamped scalars are multiples of 8, so any scalar sends a low-order point to the identity.
    let probe = StaticSecret::from([0x55; 32]);
    if !probe
        .diffie_hellman(&PublicKey::from(*pk))
        .was_contributory()
    {
        return Err(Rejected::InvalidKey {
            client,
            reason: "low-order point",
        });
    }
    Ok(())
}

/// The secure-aggregation round number of a round machine's `(round, attempt)`: `round · 2^32 +
/// attempt`. Every attempt gets its own number, so messages of an abandoned attempt are refused as
/// another round's, and the client and server drivers agree on it without talking.
pub fn round_id(round: u64, attempt: u32) -> u64 {
    (round << 32) | u64::from(attempt)
}
