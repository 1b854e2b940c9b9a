//! Signed checkpoints of the audit chain.
//!
//! A checkpoint is an `audit.checkpoint` entry whose details hold `{seq, hash, public_key,
//! signature}`: an Ed25519 signature (ring's, as the TLS stack uses) by the server's audit key over
//! the bytes of `flotilla-audit-v1|<seq>|<hash>` (`seq` in decimal, `hash` the entry's SHA-256 in
//! lower-case hex). Public key and signature are lower-case hex (32 and 64 bytes). Anyone holding
//! the public key can check a checkpoint offline; a chain that ends before a checkpoint somebody
//! kept (its tail deleted) no longer contains the entry the checkpoint names.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// The action of a checkpoint entry.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// The details of an `audit.checkpoint` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The seq of the entry whose hash is signed (the head when the checkpoint was made).
    pub seq: u64,
    /// That entry's hash, lower-case hex.
    pub hash: String,
    /// The Ed25519 public key, lower-case hex (32 bytes).
    pub public_key: String,
    /// The signature over [`signed_message`], lower-case hex (64 bytes).
    pub signature: String,
}

/// The bytes a checkpoint signs: `flotilla-audit-v1|<seq>|<hash>`.
pub fn signed_message(seq: u64, hash: &str) -> String {
    format!("flotilla-audit-v1|{seq}|{hash}")
}

/// The server's audit signing key (Ed25519), read from a PKCS#8 PEM file.
#[derive(Debug)]
pub struct AuditSigner {
    key: Ed25519KeyPair,
}

impl AuditSigner {
    /// A key from the text of a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`, as `flotilla audit
    /// keygen` and `openssl genpkey -algorithm ed25519` write it).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        let bad = |why: String| {
            StoreError::InvalidArgument(format!(
                "audit signing key: {why}; expected an Ed25519 private key in PKCS#8 PEM \
                 (`flotilla audit keygen --out FILE` writes one)"
            ))
        };
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad(format!("no PKCS#8 PEM block ({e})")))?;
        // `maybe_unchecked` also accepts PKCS#8 v1 (no embedded public key; what OpenSSL writes).
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| bad(format!("not an Ed25519 key ({e})")))?;
        Ok(AuditSigner { key })
    }

    /// The public key, lower-case hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.public_key().as_ref())
    }

    /// The checkpoint of the entry `seq` whose hash is `hash`.
    pub fn checkpoint(&self, seq: u64, hash: &str) -> Checkpoint {
        let sig = self.key.sign(signed_message(seq, hash).as_bytes());
        Checkpoint {
            seq,
            hash: hash.to_owned(),
            public_key: self.public_key_hex(),
            signature: hex::encode(sig.as_ref()),
        }
    }
}

impl Checkpoint {
    /// Whether the signature is valid for the checkpoint's own public key (and that key is
    /// `pinned`, if given); `Err` says what is wrong, for the verifier's message.
    pub fn check(&self, pinned: Option<&str>) -> std::result::Result<(), String> {
        if let Some(p) = pinned
            && !p.trim().eq_ignore_ascii_case(&self.public_key)
        {
            return Err(format!(
                "signed by key {}, not by the pinned key {}",
                self.public_key,
                p.trim()
            ));
        }
        let key = hex::decode(&self.public_key).map_err(|_| "public key is not hex".to_owned())?;
        let sig = hex::decode(&self.signature).map_err(|_| "signature is not hex".to_owned())?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(signed_message(self.seq, &self.hash).as_bytes(), &sig)
            .map_err(|_| "its signature does not verify".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key as `flotilla audit keygen` writes it (rcgen over ring, PKCS#8 PEM).
    fn pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem()
    }

    #[test]
    fn a_checkpoint_verifies_and_any_change_breaks_it() {
        let signer = AuditSigner::from_pkcs8_pem(&pem()).unwrap();
        let cp = signer.checkpoint(17, &"ab".repeat(32));
        assert_eq!(cp.public_key.len(), 64);
        assert_eq!(cp.signature.len(), 128);
        cp.check(None).unwrap();
        cp.check(Some(&cp.public_key.to_uppercase())).unwrap();
        let other = AuditSigner::from_pkcs8_pem(&pem()).unwrap();
        assert!(
            cp.check(Some(&other.public_key_hex()))
                .unwrap_err()
                .contains("pinned")
        );
        let moved = Checkpoint {
            seq: 18,
            ..cp.clone()
        };
        assert!(moved.check(None).is_err());
        let rehashed = Checkpoint {
            hash: "cd".repeat(32),
            ..cp.clone()
        };
        assert!(rehashed.check(None).is_err());
        // Somebody else's key and signature over the same text: valid, but not pinned.
        let forged = other.checkpoint(17, &cp.hash);
        forged.check(None).unwrap();
        assert!(forged.check(Some(&cp.public_key)).is_err());
    }

    #[test]
    fn bad_key_files_are_refused_with_what_to_do() {
        for text in [
            "",
            "not pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let e = AuditSigner::from_pkcs8_pem(text).unwrap_err().to_string();
            assert!(e.contains("flotilla audit keygen"), "{e}");
        }
    }
}
