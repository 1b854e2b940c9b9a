//! Protocol messages: plain structs, encoded with `postcard` (serde). Decoding untrusted bytes checks
//! a size limit first, refuses trailing bytes, and never panics; the state machines then validate
//! every field against the round.
//!
//! Public keys are raw 32-byte X25519 Montgomery `u` coordinates; shares are byte strings. A masked
//! vector is a width byte (2 or 4) and a byte string of its words as little-endian integers of that
//! width, the narrowest that holds every word: vectors in a 16-bit ring (quantized rounds) take 2
//! bytes per coordinate. The width is lossless either way; the server checks every word against the
//! round's ring.

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::{ClientId, Params, Stage};

/// Stage 0, client → server: the client's two X25519 public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// Round identifier.
    pub round: u64,
    /// The sender.
    pub sender: ClientId,
    /// Public key for encrypting shares (`c_pk`).
    pub c_pk: [u8; 32],
    /// Public key for pairwise masks (`s_pk`).
    pub s_pk: [u8; 32],
}

/// One roster entry: a client that advertised keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// The client.
    pub client: ClientId,
    /// Its share-encryption public key.
    pub c_pk: [u8; 32],
    /// Its mask public key.
    pub s_pk: [u8; 32],
}

/// Stage 1, server → every client on the roster: who takes part and the graph seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Roster {
    /// Round identifier.
    pub round: u64,
    /// The round's parameters (a client refuses a roster whose parameters differ from its own).
    pub params: Params,
    /// Seed of the communication graph's permutation.
    pub graph_seed: [u8; 32],
    /// Clients that advertised keys, sorted by id, no duplicates.
    pub clients: Vec<RosterEntry>,
}

/// One encrypted share pair on its way from its owner to a neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingShare {
    /// The neighbour that will hold the shares.
    pub recipient: ClientId,
    /// ChaCha20-Poly1305 ciphertext of the self-mask-seed share and the mask-key share.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// Commitment to the self-mask-seed share (checked by the server at unmasking).
    pub seed_share_commitment: [u8; 32],
    /// Commitment to the mask-key share (checked by the server at unmasking).
    pub key_share_commitment: [u8; 32],
}

/// Stage 1, client → server: shares of the client's secrets for each of its neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// Round identifier.
    pub round: u64,
    /// The sender (owner of the shared secrets).
    pub sender: ClientId,
    /// Commitment to the self-mask seed, checked after reconstruction.
    pub seed_commitment: [u8; 32],
    /// One entry per neighbour, sorted by recipient.
    pub shares: Vec<OutgoingShare>,
}

/// One encrypted share pair delivered to its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingShare {
    /// The owner of the shared secrets.
    pub sender: ClientId,
    /// The ciphertext, as the owner sent it.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Stage 2, server → each client that completed stage 1: the shares its neighbours sent it. The
/// senders are exactly the client's neighbours that completed stage 1, with whom it masks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareBundle {
    /// Round identifier.
    pub round: u64,
    /// The holder.
    pub recipient: ClientId,
    /// Shares, sorted by sender.
    pub shares: Vec<IncomingShare>,
}

/// Stage 2, client → server: the masked, fixed-point-encoded update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// Round identifier.
    pub round: u64,
    /// The sender.
    pub sender: ClientId,
    /// Masked vector in the round's ring (Z_2^32, or Z_2^16 with few quantization bits; each word
    /// then below 2^16). On the wire: packed in the narrowest of 2 or 4 bytes per word.
    #[serde(with = "packed_words")]
    pub masked: Vec<u32>,
}

/// Stage 3, server → each client that sent a masked input: which of its neighbours survived
/// (reveal their self-mask-seed shares) and which dropped (reveal their mask-key shares).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Round identifier.
    pub round: u64,
    /// The client asked.
    pub recipient: ClientId,
    /// Neighbours whose masked input arrived, sorted.
    pub survivors: Vec<ClientId>,
    /// Neighbours that shared keys but whose masked input did not arrive, sorted.
    pub dropped: Vec<ClientId>,
}

/// One revealed share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    /// Whose secret.
    pub owner: ClientId,
    /// The share: identifier byte, then 32 bytes.
    #[serde(with = "serde_bytes")]
    pub share: Vec<u8>,
}

/// Stage 3, client → server: the shares the request asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// Round identifier.
    pub round: u64,
    /// The sender (holder of the shares).
    pub sender: ClientId,
    /// Shares of the survivors' self-mask seeds, in the request's order.
    pub seed_shares: Vec<RevealedShare>,
    /// Shares of the dropped clients' mask keys, in the request's order.
    pub key_shares: Vec<RevealedShare>,
}

/// Any client → server message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Stage 0.
    AdvertiseKeys(AdvertiseKeys),
    /// Stage 1.
    ShareKeys(ShareKeys),
    /// Stage 2.
    MaskedInput(MaskedInput),
    /// Stage 3.
    Unmask(UnmaskResponse),
}

/// Any server → client message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Starts stage 1.
    Roster(Roster),
    /// Starts stage 2.
    Shares(ShareBundle),
    /// Starts stage 3.
    UnmaskRequest(UnmaskRequest),
}

/// A client message as the server decodes it: like [`ClientMessage`] (same variants, same wire
/// form), but a masked input's words stay in the received bytes, so the server adds them to its
/// running sum without allocating and copying a vector per client.
#[derive(Debug, Deserialize)]
pub(crate) enum ClientMessageRef<'a> {
    AdvertiseKeys(AdvertiseKeys),
    ShareKeys(ShareKeys),
    #[serde(borrow)]
    MaskedInput(MaskedInputRef<'a>),
    Unmask(UnmaskResponse),
}

/// [`MaskedInput`] borrowing its words from the received bytes.
#[derive(Debug, Deserialize)]
pub(crate) struct MaskedInputRef<'a> {
    pub round: u64,
    pub sender: ClientId,
    /// `(width, bytes)`: little-endian words of 2 or 4 bytes (width and length not yet checked).
    #[serde(borrow)]
    pub masked: (u8, &'a [u8]),
}

impl<'a> ClientMessageRef<'a> {
    /// Decodes untrusted bytes, refusing anything over [`Params::max_client_message_len`].
    pub(crate) fn from_bytes(bytes: &'a [u8], params: &Params) -> Result<Self, DecodeError> {
        decode(bytes, params.max_client_message_len())
    }
}

impl ClientMessage {
    /// The stage this message belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            Self::AdvertiseKeys(_) => Stage::AdvertiseKeys,
            Self::ShareKeys(_) => Stage::ShareKeys,
            Self::MaskedInput(_) => Stage::MaskedInput,
            Self::Unmask(_) => Stage::Unmasking,
        }
    }

    /// Encodes to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes untrusted bytes, refusing anything over [`Params::max_client_message_len`].
    pub fn from_bytes(bytes: &[u8], params: &Params) -> Result<Self, DecodeError> {
        decode(bytes, params.max_client_message_len())
    }
}

impl ServerMessage {
    /// The stage this message starts.
    pub fn stage(&self) -> Stage {
        match self {
            Self::Roster(_) => Stage::ShareKeys,
            Self::Shares(_) => Stage::MaskedInput,
            Self::UnmaskRequest(_) => Stage::Unmasking,
        }
    }

    /// Encodes to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes untrusted bytes, refusing anything over [`Params::max_server_message_len`].
    pub fn from_bytes(bytes: &[u8], params: &Params) -> Result<Self, DecodeError> {
        decode(bytes, params.max_server_message_len())
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_allocvec(value) {
        Ok(v) => v,
        // Every message type is plain data with known lengths; postcard cannot fail on it.
        Err(e) => unreachable!("postcard encoding of a protocol message failed: {e}"),
    }
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

mod packed_words {
    use serde::de::Error as _;
    use serde::ser::SerializeTuple;
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::Bytes;

    /// `(width, bytes)`: the words as little-endian integers of `width` bytes, 2 if every word
    /// fits in 16 bits, else 4. On little-endian targets 4-byte words are the vector's own bytes
    /// (no intermediate copy of the large masked vector).
    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let narrow = v.iter().all(|&w| w <= u32::from(u16::MAX));
        let owned: Vec<u8>;
        let (width, bytes): (u8, &[u8]) = if narrow {
            owned = v.iter().flat_map(|&w| (w as u16).to_le_bytes()).collect();
            (2, &owned)
        } else if cfg!(target_endian = "little") {
            (4, bytemuck::cast_slice(v))
        } else {
            owned = v.iter().flat_map(|w| w.to_le_bytes()).collect();
            (4, &owned)
        };
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&width)?;
        t.serialize_element(Bytes::new(bytes))?;
        t.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let (width, body) = <(u8, &'de Bytes)>::deserialize(d)?;
        let body: &[u8] = body;
        match width {
            2 if body.len().is_multiple_of(2) => Ok(body
                .chunks_exact(2)
                .map(|w| u32::from(u16::from_le_bytes([w[0], w[1]])))
                .collect()),
            4 if body.len().is_multiple_of(4) => {
                // One allocation and one copy; `from_le` is the identity on little-endian targets.
                let mut words = vec![0u32; body.len() / 4];
                bytemuck::cast_slice_mut::<u32, u8>(&mut words).copy_from_slice(body);
                for w in &mut words {
                    *w = u32::from_le(*w);
                }
                Ok(words)
            }
            2 | 4 => Err(D::Error::custom(format!(
                "{} bytes is not a whole number of {width}-byte words",
                body.len()
            ))),
            _ => Err(D::Error::custom(format!(
                "masked-vector width {width} is neither 2 nor 4"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::new(10, 3, 4, 3, 1.0).unwrap()
    }

    #[test]
    fn roundtrip_and_limits() {
        let m = ClientMessage::MaskedInput(MaskedInput {
            round: 1,
            sender: ClientId(2),
            masked: vec![1, 2, u32::MAX],
        });
        let b = m.to_bytes();
        assert_eq!(ClientMessage::from_bytes(&b, &params()).unwrap(), m);
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            ClientMessage::from_bytes(&long, &params()),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            ClientMessage::from_bytes(&b[..b.len() - 1], &params()),
            Err(DecodeError::Malformed(_))
        ));
        let huge = vec![0u8; params().max_client_message_len() + 1];
        assert!(matches!(
            ClientMessage::from_bytes(&huge, &params()),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            ClientMessage::from_bytes(&[9, 9, 9], &params()),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn odd_byte_vectors_are_refused() {
        // Variant 2 (MaskedInput), round 1, sender 2, width 4 or 2, then 5 or 3 bytes; width 3.
        for bytes in [
            &[2u8, 1, 2, 4, 5, 1, 2, 3, 4, 5][..],
            &[2u8, 1, 2, 2, 3, 1, 2, 3][..],
            &[2u8, 1, 2, 3, 3, 1, 2, 3][..],
        ] {
            assert!(matches!(
                ClientMessage::from_bytes(bytes, &params()),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn words_go_on_the_wire_in_the_narrowest_width() {
        let msg = |masked: Vec<u32>| {
            ClientMessage::MaskedInput(MaskedInput {
                round: 1,
                sender: ClientId(2),
                masked,
            })
        };
        let narrow = msg(vec![0, 1, 0xFFFF]);
        let wide = msg(vec![0, 1, 0x1_0000]);
        let (nb, wb) = (narrow.to_bytes(), wide.to_bytes());
        // Header (variant, round, sender, width, length) + 2 or 4 bytes per word.
        assert_eq!(nb.len(), 5 + 3 * 2);
        assert_eq!(wb.len(), 5 + 3 * 4);
        assert_eq!(ClientMessage::from_bytes(&nb, &params()).unwrap(), narrow);
        assert_eq!(ClientMessage::from_bytes(&wb, &params()).unwrap(), wide);
    }
}
