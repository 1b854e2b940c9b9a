//! Key derivation, share encryption, commitments and mask expansion. Every primitive comes from a
//! RustCrypto / dalek crate: X25519 (`x25519-dalek`), HKDF-SHA-256 (`hkdf`, `sha2`),
//! ChaCha20-Poly1305 (`chacha20poly1305`), the ChaCha20 keystream (`chacha20`).

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::ClientId;

const DOMAIN: &[u8] = b"flotilla-secagg/v1";

/// Length of one Shamir share of a 32-byte secret: identifier byte + 32 bytes.
pub(crate) const SHARE_LEN: usize = 33;
/// Plaintext of an encrypted share pair: the self-mask-seed share then the mask-key share.
pub(crate) const SHARE_PAIR_LEN: usize = 2 * SHARE_LEN;
/// AEAD tag length.
pub(crate) const TAG_LEN: usize = 16;
/// Ciphertext length of an encrypted share pair.
pub(crate) const SEALED_LEN: usize = SHARE_PAIR_LEN + TAG_LEN;

fn hkdf32(ikm: &[u8], label: &[u8], round: u64, a: ClientId, b: ClientId) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(DOMAIN), ikm);
    let mut out = [0u8; 32];
    let info = [
        label,
        &round.to_le_bytes(),
        &a.0.to_le_bytes(),
        &b.0.to_le_bytes(),
    ];
    // 32 bytes is far below HKDF-SHA-256's 8160-byte limit: this cannot fail.
    if hk.expand_multi_info(&info, &mut out).is_err() {
        unreachable!("HKDF output length is fixed at 32 bytes");
    }
    out
}

/// ChaCha20 key of the pairwise mask between `u` and `v` (symmetric in `u`, `v`).
pub(crate) fn pair_mask_key(shared: &[u8; 32], round: u64, u: ClientId, v: ClientId) -> [u8; 32] {
    let (a, b) = if u < v { (u, v) } else { (v, u) };
    hkdf32(shared, b"pair-mask", round, a, b)
}

/// ChaCha20 key of `owner`'s self mask.
pub(crate) fn self_mask_key(seed: &[u8; 32], round: u64, owner: ClientId) -> [u8; 32] {
    hkdf32(seed, b"self-mask", round, owner, owner)
}

fn share_aad(round: u64, sender: ClientId, recipient: ClientId) -> [u8; 8 * 3 + 18] {
    let mut aad = [0u8; 42];
    aad[..18].copy_from_slice(DOMAIN);
    aad[18..26].copy_from_slice(&round.to_le_bytes());
    aad[26..34].copy_from_slice(&sender.0.to_le_bytes());
    aad[34..42].copy_from_slice(&recipient.0.to_le_bytes());
    aad
}

/// Encrypts `sender`'s share pair for `recipient` under a key derived from their X25519 secret.
/// The key is unique to (round, sender, recipient), so the all-zero nonce is used once per key.
pub(crate) fn seal_share(
    shared: &[u8; 32],
    round: u64,
    sender: ClientId,
    recipient: ClientId,
    plaintext: &[u8; SHARE_PAIR_LEN],
) -> Vec<u8> {
    let key = hkdf32(shared, b"share-key", round, sender, recipient);
    let aead = ChaCha20Poly1305::new(&key.into());
    let aad = share_aad(round, sender, recipient);
    match aead.encrypt(
        &[0u8; 12].into(),
        Payload {
            msg: plaintext,
            aad: &aad,
        },
    ) {
        Ok(c) => c,
        Err(_) => unreachable!("ChaCha20-Poly1305 encryption of 66 bytes cannot fail"),
    }
}

/// Decrypts and authenticates a share pair; `None` if it was not sealed by `sender` for
/// `recipient` in `round`, or was altered.
pub(crate) fn open_share(
    shared: &[u8; 32],
    round: u64,
    sender: ClientId,
    recipient: ClientId,
    ciphertext: &[u8],
) -> Option<[u8; SHARE_PAIR_LEN]> {
    if ciphertext.len() != SEALED_LEN {
        return None;
    }
    let key = hkdf32(shared, b"share-key", round, sender, recipient);
    let aead = ChaCha20Poly1305::new(&key.into());
    let aad = share_aad(round, sender, recipient);
    let plain = aead
        .decrypt(
            &[0u8; 12].into(),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()?;
    plain.try_into().ok()
}

/// Hash commitment to one share, so the server can refuse a forged share at unmasking time.
/// Shares of fewer than `t` holders are uniformly random, so the hash reveals nothing useful.
pub(crate) fn share_commitment(
    kind: &[u8],
    round: u64,
    owner: ClientId,
    holder: ClientId,
    share: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(b"share-commitment");
    h.update(kind);
    h.update(round.to_le_bytes());
    h.update(owner.0.to_le_bytes());
    h.update(holder.0.to_le_bytes());
    h.update(share);
    h.finalize().into()
}

/// Hash commitment to a self-mask seed (256 bits of entropy), checked after reconstruction.
pub(crate) fn seed_commitment(round: u64, owner: ClientId, seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(b"seed-commitment");
    h.update(round.to_le_bytes());
    h.update(owner.0.to_le_bytes());
    h.update(seed);
    h.finalize().into()
}

/// Words of keystream generated per ChaCha20 call (16 KiB, stays in L1).
const CHUNK_WORDS: usize = 4096;

/// Adds (or subtracts, if `negate`) the mask expanded from `key` to `out`, where `out[0]` is
/// coordinate `start` of the vector. The mask is the ChaCha20 keystream (zero nonce) read as
/// little-endian `u32` words; arithmetic wraps modulo 2^32.
pub fn apply_mask(key: &[u8; 32], negate: bool, out: &mut [u32], start: usize) {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    cipher.seek((start as u64) * 4);
    let mut buf = [0u8; CHUNK_WORDS * 4];
    for chunk in out.chunks_mut(CHUNK_WORDS) {
        let bytes = &mut buf[..chunk.len() * 4];
        cipher.write_keystream(bytes);
        if negate {
            for (o, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = o.wrapping_sub(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            }
        } else {
            for (o, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = o.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            }
        }
    }
}

/// Applies every `(key, negate)` mask to `out`, splitting the coordinates over `threads` scoped
/// threads (each seeks every keystream to its own range). Pure computation: no I/O.
pub fn apply_masks(masks: &[([u8; 32], bool)], out: &mut [u32], threads: usize) {
    let threads = threads.max(1).min(out.len().div_ceil(CHUNK_WORDS).max(1));
    if threads == 1 {
        for (key, neg) in masks {
            apply_mask(key, *neg, out, 0);
        }
        return;
    }
    // Ranges aligned to 16 words (one ChaCha block) so seeks land on block boundaries.
    let per = out.len().div_ceil(threads).div_ceil(16) * 16;
    std::thread::scope(|s| {
        for (i, part) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (key, neg) in masks {
                    apply_mask(key, *neg, part, i * per);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeking_matches_streaming_and_negation_cancels() {
        let key = [9u8; 32];
        let mut whole = vec![0u32; 10_007];
        apply_mask(&key, false, &mut whole, 0);
        assert!(whole.iter().any(|&w| w != 0));
        let mut parts = vec![0u32; 10_007];
        apply_masks(&[(key, false)], &mut parts, 3);
        assert_eq!(whole, parts);
        let mut tail = vec![0u32; 7];
        apply_mask(&key, false, &mut tail, 10_000);
        assert_eq!(&whole[10_000..], &tail[..]);
        apply_masks(&[(key, true)], &mut parts, 2);
        assert!(parts.iter().all(|&w| w == 0));
    }

    #[test]
    fn shares_bind_round_sender_and_recipient() {
        let shared = [1u8; 32];
        let plain = [7u8; SHARE_PAIR_LEN];
        let (a, b) = (ClientId(1), ClientId(2));
        let c = seal_share(&shared, 5, a, b, &plain);
        assert_eq!(c.len(), SEALED_LEN);
        assert_eq!(open_share(&shared, 5, a, b, &c), Some(plain));
        assert_eq!(open_share(&shared, 6, a, b, &c), None);
        assert_eq!(open_share(&shared, 5, b, a, &c), None);
        assert_eq!(open_share(&shared, 5, a, ClientId(3), &c), None);
        let mut bad = c.clone();
        bad[3] ^= 1;
        assert_eq!(open_share(&shared, 5, a, b, &bad), None);
        assert_eq!(open_share(&shared, 5, a, b, &c[..10]), None);
    }
}
