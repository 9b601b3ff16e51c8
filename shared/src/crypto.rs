//! Envelope-free AES-256-GCM encryption of secrets at rest, under a keyring.
//!
//! Every ciphertext is stored beside the id of the key that sealed it, so the primary key can be
//! rotated: new data is sealed under the primary key, old data stays readable as long as its key
//! is still in the ring. The associated data binds a ciphertext to the row it belongs to, so a
//! ciphertext copied into another connection's row fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key is not valid base64")]
    KeyNotBase64,
    #[error("encryption key must be 32 bytes (256 bits) once base64-decoded, got {0} bytes")]
    KeyWrongLength(usize),
    #[error("no key with id `{0}` in the keyring")]
    UnknownKey(String),
    #[error("ciphertext could not be opened (wrong key, tampered data or wrong row)")]
    Open,
    #[error("ciphertext is too short")]
    Truncated,
}

/// One 256-bit key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The set of keys a service can open ciphertexts with; exactly one of them seals new data.
#[derive(Clone)]
pub struct Keyring {
    primary: Key,
    all: HashMap<String, Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.all.keys().collect();
        ids.sort();
        f.debug_struct("Keyring").field("primary", &self.primary.id).field("key_ids", &ids).finish()
    }
}

/// A sealed secret: the id of the key used and `nonce || ciphertext || tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: Vec<u8>,
}

fn parse_key(b64: &str) -> Result<[u8; 32], CryptoError> {
    let raw = STANDARD.decode(b64.trim()).map_err(|_| CryptoError::KeyNotBase64)?;
    raw.as_slice().try_into().map_err(|_| CryptoError::KeyWrongLength(raw.len()))
}

/// The id of a key when the operator gives none: a short fingerprint, so two services given the
/// same key agree on its id without further configuration, and the id says nothing of the key.
pub fn fingerprint(key: &[u8; 32]) -> String {
    let digest = Sha256::digest([b"authbridge-key-id:".as_slice(), key.as_slice()].concat());
    hex::encode(&digest[..4])
}

impl Keyring {
    /// Builds a keyring from the primary key (base64) and any older keys kept for reading.
    pub fn from_base64(primary: &str, primary_id: Option<&str>, old: &[String]) -> Result<Self, CryptoError> {
        let make = |raw: [u8; 32], id: Option<&str>| Key {
            id: id.map(str::to_owned).unwrap_or_else(|| fingerprint(&raw)),
            cipher: Aes256Gcm::new(&raw.into()),
        };
        let primary = make(parse_key(primary)?, primary_id);
        let mut all = HashMap::new();
        for b64 in old {
            let k = make(parse_key(b64)?, None);
            all.insert(k.id.clone(), k);
        }
        all.insert(primary.id.clone(), primary.clone());
        Ok(Self { primary, all })
    }

    /// A keyring with one fresh random key, for tests.
    pub fn random() -> Self {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        Self::from_base64(&STANDARD.encode(raw), None, &[]).expect("a fresh key is valid")
    }

    /// Whether this keyring holds the key of this id (it can open what it sealed).
    pub fn knows(&self, key_id: &str) -> bool {
        self.all.contains_key(key_id)
    }

    /// The ids of every key held, the primary's first.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.all.keys().filter(|k| **k != self.primary.id).cloned().collect();
        ids.sort();
        ids.insert(0, self.primary.id.clone());
        ids
    }

    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    /// Seals `plaintext` under the primary key; `aad` names what the secret belongs to.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .primary
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Sealed { key_id: self.primary.id.clone(), blob }
    }

    /// Opens a sealed secret with the key it names.
    pub fn open(&self, key_id: &str, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.all.get(key_id).ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Truncated);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        key.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| CryptoError::Open)
    }
}

/// SHA-256 of a secret, for looking secrets up without storing them (session tokens, states).
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether two digests (or other secrets, such as API keys) are equal, in a time that depends
/// on their length only.
pub fn same_digest(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A fresh unguessable token: 32 random bytes, base64url without padding.
pub fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_compared_whole() {
        for (a, b, same) in [
            (&b""[..], &b""[..], true),
            (b"abc", b"abc", true),
            (b"abc", b"abd", false),
            (b"0123456789abcdef-x", b"0123456789abcdef-x", true),
            (b"0123456789abcdef-x", b"0123456789abcdeF-x", false),
            (b"0123456789abcdef", b"0123456789abcdef-", false),
        ] {
            assert_eq!(same_digest(a, b), same, "{a:?} {b:?}");
        }
    }

    #[test]
    fn sealed_secret_opens_with_same_aad_only() {
        let ring = Keyring::random();
        let sealed = ring.seal(b"access-token", b"kartra/u1");
        assert_eq!(ring.open(&sealed.key_id, &sealed.blob, b"kartra/u1").unwrap(), b"access-token");
        assert!(matches!(ring.open(&sealed.key_id, &sealed.blob, b"kartra/u2"), Err(CryptoError::Open)));
        assert!(!sealed.blob.windows(12).any(|w| w == b"access-token"));
    }

    #[test]
    fn old_keys_still_open_after_rotation() {
        let old_b64 = STANDARD.encode([7u8; 32]);
        let new_b64 = STANDARD.encode([9u8; 32]);
        let old_ring = Keyring::from_base64(&old_b64, None, &[]).unwrap();
        let sealed = old_ring.seal(b"x", b"a");
        let rotated = Keyring::from_base64(&new_b64, None, &[old_b64]).unwrap();
        assert_ne!(rotated.primary_id(), sealed.key_id);
        assert_eq!(rotated.open(&sealed.key_id, &sealed.blob, b"a").unwrap(), b"x");
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert!(matches!(Keyring::from_base64("not base64!", None, &[]), Err(CryptoError::KeyNotBase64)));
        let short = STANDARD.encode([1u8; 16]);
        assert!(matches!(Keyring::from_base64(&short, None, &[]), Err(CryptoError::KeyWrongLength(16))));
    }
}
