//! Key derivation, share encryption, commitments and mask expansion. Every primitive comes from a
//! RustCrypto / dalek crate: X25519 (`x25519-dalek`), HKDF-SHA-256 (`hkdf`, `sha2`),
//! ChaCha20-Poly1305 (`chacha20poly1305`) for the shares, and AES-128 in counter mode (`aes`, `ctr`)
//! as the masks' PRG.
//!
//! # The PRG (protocol version `flotilla-secagg/v2`)
//!
//! A mask is the AES-128-CTR keystream (`ctr::Ctr128BE<aes::Aes128>`, all-zero initial counter
//! block) under a 128-bit key, read as little-endian `u32` words: coordinate `i` is bytes
//! `4i..4i+4` of the keystream. Why this is a sound PRG here:
//!
//! - AES-128 is modelled as a pseudorandom permutation; by the PRP/PRF switching lemma it is a PRF
//!   up to `q²/2^129` for `q` blocks. A vector of at most 2^28 words is `q ≤ 2^26` blocks, so the
//!   keystream of one key is indistinguishable from uniform up to `2^-77` plus AES's own advantage.
//! - Every key is used for exactly one stream: pair keys are HKDF-SHA-256 outputs bound to the domain
//!   string, the round and the (ordered) pair, self-mask keys to the round and the owner. A new
//!   round, attempt or pair gives a new key, and within a stream the counter only increases, so no
//!   (key, counter) block is ever produced twice for different coordinates.
//! - The HKDF input is the X25519 shared secret (pair masks) or the client's 256-bit self-mask seed,
//!   so each key is pseudorandom to anyone without that secret.
//!
//! AES-NI is detected at run time by the `aes` crate (with a constant-time software fallback). v1
//! expanded masks with ChaCha20; v2 peers refuse v1 messages by their domain-separated keys and AAD.

use aes::Aes128;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::ClientId;

/// Protocol domain string: binds every derived key, AAD and commitment to this protocol version.
const DOMAIN: &[u8] = b"flotilla-secagg/v2";

/// The masks' PRG: AES-128 in big-endian 128-bit counter mode.
type MaskPrg = ctr::Ctr128BE<Aes128>;

/// A key of the masks' PRG (AES-128).
pub type MaskKey = [u8; 16];

/// Length of one Shamir share of a 32-byte secret: identifier byte + 32 bytes.
pub(crate) const SHARE_LEN: usize = 33;
/// Plaintext of an encrypted share pair: the self-mask-seed share then the mask-key share.
pub(crate) const SHARE_PAIR_LEN: usize = 2 * SHARE_LEN;
/// AEAD tag length.
pub(crate) const TAG_LEN: usize = 16;
/// Ciphertext length of an encrypted share pair.
pub(crate) const SEALED_LEN: usize = SHARE_PAIR_LEN + TAG_LEN;

fn hkdf<const N: usize>(ikm: &[u8], label: &[u8], round: u64, a: ClientId, b: ClientId) -> [u8; N] {
    let hk = Hkdf::<Sha256>::new(Some(DOMAIN), ikm);
    let mut out = [0u8; N];
    let info = [
        label,
        &round.to_le_bytes(),
        &a.0.to_le_bytes(),
        &b.0.to_le_bytes(),
    ];
    // N is 16 or 32, far below HKDF-SHA-256's 8160-byte limit: this cannot fail.
    if hk.expand_multi_info(&info, &mut out).is_err() {
        unreachable!("HKDF output length is fixed at 16 or 32 bytes");
    }
    out
}

fn hkdf32(ikm: &[u8], label: &[u8], round: u64, a: ClientId, b: ClientId) -> [u8; 32] {
    hkdf::<32>(ikm, label, round, a, b)
}

/// PRG key of the pairwise mask between `u` and `v` (symmetric in `u`, `v`).
pub(crate) fn pair_mask_key(shared: &[u8; 32], round: u64, u: ClientId, v: ClientId) -> MaskKey {
    let (a, b) = if u < v { (u, v) } else { (v, u) };
    hkdf::<16>(shared, b"pair-mask", round, a, b)
}

/// PRG key of `owner`'s self mask.
pub(crate) fn self_mask_key(seed: &[u8; 32], round: u64, owner: ClientId) -> MaskKey {
    hkdf::<16>(seed, b"self-mask", round, owner, owner)
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

/// Words of keystream generated per PRG call (4 KiB): the keystream buffer and the chunk of the
/// output it is added to stay in L1 while every mask of the batch passes over them.
const CHUNK_WORDS: usize = 1024;

/// All-zero input: encrypting it in counter mode yields the raw keystream without a zeroing pass.
static ZEROS: [u8; CHUNK_WORDS * 4] = [0; CHUNK_WORDS * 4];

/// Adds (or subtracts, if `negate`) the mask expanded from `key` to `out`, where `out[0]` is
/// coordinate `start` of the vector. Arithmetic wraps modulo 2^32.
pub fn apply_mask(key: &MaskKey, negate: bool, out: &mut [u32], start: usize) {
    mask_in_place(&[(*key, negate)], out, start, |_, _| {});
}

/// One pass over `out` (coordinate `start` first): each L1-sized chunk is first filled by `init`
/// (given the chunk's offset within `out`), then every `(key, negate)` mask is added to (or
/// subtracted from) it in place, so no mask vector is ever materialised and `out` is read and
/// written once whatever the number of masks.
pub(crate) fn mask_in_place(
    masks: &[(MaskKey, bool)],
    out: &mut [u32],
    start: usize,
    mut init: impl FnMut(usize, &mut [u32]),
) {
    let mut prgs: Vec<(MaskPrg, bool)> = masks
        .iter()
        .map(|(key, negate)| {
            let mut prg = MaskPrg::new(key.into(), &[0u8; 16].into());
            prg.seek((start as u64) * 4);
            (prg, *negate)
        })
        .collect();
    let mut buf = [0u32; CHUNK_WORDS];
    for (i, chunk) in out.chunks_mut(CHUNK_WORDS).enumerate() {
        init(i * CHUNK_WORDS, chunk);
        let n = chunk.len();
        let words = &mut buf[..n];
        for (prg, negate) in &mut prgs {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(words);
            if prg.apply_keystream_b2b(&ZEROS[..n * 4], bytes).is_err() {
                unreachable!("input and output buffers have the same length");
            }
            // `from_le` is the identity on little-endian targets: the loop vectorises.
            if *negate {
                for (o, w) in chunk.iter_mut().zip(words.iter()) {
                    *o = o.wrapping_sub(u32::from_le(*w));
                }
            } else {
                for (o, w) in chunk.iter_mut().zip(words.iter()) {
                    *o = o.wrapping_add(u32::from_le(*w));
                }
            }
        }
    }
}

/// Applies every `(key, negate)` mask to `out`, splitting the coordinates over `threads` scoped
/// threads (each seeks every keystream to its own range). Pure computation: no I/O.
pub fn apply_masks(masks: &[(MaskKey, bool)], out: &mut [u32], threads: usize) {
    let threads = threads.max(1).min(out.len().div_ceil(CHUNK_WORDS).max(1));
    if threads == 1 {
        mask_in_place(masks, out, 0, |_, _| {});
        return;
    }
    // Ranges aligned to 16 words (four AES blocks) so seeks land on block boundaries.
    let per = out.len().div_ceil(threads).div_ceil(16) * 16;
    std::thread::scope(|s| {
        for (i, part) in out.chunks_mut(per).enumerate() {
            s.spawn(move || mask_in_place(masks, part, i * per, |_, _| {}));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeking_matches_streaming_and_negation_cancels() {
        let key = [9u8; 16];
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
    fn the_prg_is_aes_128_ctr_from_a_zero_counter() {
        use aes::cipher::{BlockEncrypt, KeyInit as _};
        // FIPS-197 appendix C.1 key; the first two keystream blocks are E_k(0) and E_k(1).
        let key: MaskKey = core::array::from_fn(|i| i as u8);
        let aes = Aes128::new(&key.into());
        let mut expected = Vec::new();
        for ctr in 0u128..2 {
            let mut block = ctr.to_be_bytes().into();
            aes.encrypt_block(&mut block);
            expected.extend(
                block
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            );
        }
        let mut words = vec![0u32; 8];
        apply_mask(&key, false, &mut words, 0);
        assert_eq!(words, expected);
        // Seeking to an odd coordinate lands inside the first block.
        let mut tail = vec![0u32; 3];
        apply_mask(&key, false, &mut tail, 5);
        assert_eq!(tail, expected[5..]);
    }

    #[test]
    fn one_pass_equals_mask_by_mask() {
        let masks: Vec<(MaskKey, bool)> = (0..5u8).map(|i| ([i; 16], i % 2 == 1)).collect();
        let len = 3 * CHUNK_WORDS + 17;
        let mut one = vec![0u32; len];
        mask_in_place(&masks, &mut one, 0, |at, chunk| {
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = (at + j) as u32;
            }
        });
        let mut each: Vec<u32> = (0..len as u32).collect();
        for (k, neg) in &masks {
            apply_mask(k, *neg, &mut each, 0);
        }
        assert_eq!(one, each);
        let mut threaded: Vec<u32> = (0..len as u32).collect();
        apply_masks(&masks, &mut threaded, 3);
        assert_eq!(threaded, each);
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
