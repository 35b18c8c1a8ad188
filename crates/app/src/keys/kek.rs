//! Key-encryption keys (KEKs): configured secrets that wrap every keyring key and never reach the
//! database. Several can be configured at once, the first being the one that wraps, so the KEK can
//! be rotated (`portcullis keys rotate-kek`) without rewriting a single data row.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use portcullis_store::KeyPurpose;
use zeroize::Zeroizing;

use crate::AppError;

/// Bytes of a KEK (256 bits).
pub const KEK_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// HKDF-SHA256 `info` for the key that authenticates backup manifests (docs/decisions/0012-backups.md):
/// a key of its own per KEK, so the MAC key is never the key that wraps the keyring.
const BACKUP_MAC_INFO: &[u8] = b"portcullis backup manifest v1";

/// One KEK: an operator-chosen id and 32 secret bytes.
pub struct Kek {
    id: String,
    key: Zeroizing<[u8; KEK_BYTES]>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({}, ..)", self.id)
    }
}

/// The configured KEKs: the first wraps, the others only unwrap (older KEKs kept during a rotation).
#[derive(Debug)]
pub struct KekSet {
    keks: Vec<Kek>,
}

impl KekSet {
    /// Parses `id:key` entries separated by commas or whitespace, the active one first. `key` is 32
    /// bytes in base64 (standard or URL-safe, padding optional); an id is 1 to 32 characters of
    /// `A-Z a-z 0-9 - _ .`. Messages name the entry by position and id, never the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keks: Vec<Kek> = Vec::new();
        for (n, entry) in
            text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()).enumerate()
        {
            let position = n + 1;
            let Some((id, encoded)) = entry.split_once(':') else {
                return Err(format!("entry {position} is not `id:base64-key`"));
            };
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !id_ok {
                return Err(format!("entry {position}: the id must be 1-32 characters of A-Z a-z 0-9 - _ ."));
            }
            let trimmed = encoded.trim_end_matches('=');
            let decoded = Zeroizing::new(
                URL_SAFE_NO_PAD
                    .decode(trimmed)
                    .or_else(|_| STANDARD.decode(encoded))
                    .map_err(|_| format!("KEK `{id}` is not valid base64"))?,
            );
            let key: [u8; KEK_BYTES] = decoded
                .as_slice()
                .try_into()
                .map_err(|_| format!("KEK `{id}` is {} bytes; it must be {KEK_BYTES}", decoded.len()))?;
            if keks.iter().any(|k| k.id == id) {
                return Err(format!("KEK id `{id}` is listed twice"));
            }
            keks.push(Kek { id: id.to_owned(), key: Zeroizing::new(key) });
        }
        if keks.is_empty() {
            return Err("no KEK is configured".into());
        }
        Ok(Self { keks })
    }

    /// A fresh `id:key` entry with 256 random bits (for a development data dir, or `keys generate-kek`).
    pub fn generate_entry(id: &str) -> Result<Zeroizing<String>, AppError> {
        let mut key = Zeroizing::new([0u8; KEK_BYTES]);
        getrandom::fill(key.as_mut()).map_err(|e| AppError::Internal(Box::new(e)))?;
        Ok(Zeroizing::new(format!("{id}:{}", URL_SAFE_NO_PAD.encode(key.as_ref()))))
    }

    /// The id of the KEK that wraps new keys.
    pub fn active_id(&self) -> &str {
        self.keks.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    /// Whether a KEK with this id is configured.
    pub fn has(&self, id: &str) -> bool {
        self.keks.iter().any(|k| k.id == id)
    }

    /// The key that authenticates backup manifests made under KEK `id` (HKDF-SHA256 of the KEK, RFC
    /// 5869, with its own `info`); `None` when keys.kek does not list `id`.
    pub fn backup_mac_key(&self, id: &str) -> Option<Zeroizing<[u8; 32]>> {
        let kek = self.keks.iter().find(|k| k.id == id)?;
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(None, kek.key.as_ref()).expand(BACKUP_MAC_INFO, key.as_mut()).ok()?;
        Some(key)
    }

    /// Wraps a keyring key's secret under the active KEK; returns the KEK id and the wrapped bytes.
    pub(crate) fn wrap(
        &self,
        secret: &[u8],
        key_id: &str,
        purpose: KeyPurpose,
    ) -> Result<(String, Vec<u8>), AppError> {
        let kek = self.keks.first().ok_or_else(|| AppError::Keyring("no KEK is configured".into()))?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| AppError::Internal(Box::new(e)))?;
        let aad = associated_data(key_id, purpose);
        let sealed = XChaCha20Poly1305::new(kek.key.as_ref().into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: &aad })
            .map_err(|_| AppError::Internal("wrapping a keyring key failed".into()))?;
        Ok((kek.id.clone(), [nonce.as_slice(), &sealed].concat()))
    }

    /// Unwraps a keyring key's secret with the KEK it names. A missing KEK or one that does not open
    /// the key is a [`AppError::Keyring`] that says which, so a wrong KEK at start is plain.
    pub(crate) fn unwrap(
        &self,
        wrapped: &[u8],
        kek_id: &str,
        key_id: &str,
        purpose: KeyPurpose,
    ) -> Result<Zeroizing<Vec<u8>>, AppError> {
        let kek = self.keks.iter().find(|k| k.id == kek_id).ok_or_else(|| {
            AppError::Keyring(format!(
                "keyring key {key_id} ({}) is wrapped under KEK `{kek_id}`, which keys.kek does not list; \
                 configure it (after the active KEK) or restore the right configuration",
                purpose.as_str()
            ))
        })?;
        if wrapped.len() < NONCE_BYTES {
            return Err(AppError::Keyring(format!("keyring key {key_id} is truncated")));
        }
        let (nonce, ciphertext) = wrapped.split_at(NONCE_BYTES);
        let aad = associated_data(key_id, purpose);
        XChaCha20Poly1305::new(kek.key.as_ref().into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| {
                AppError::Keyring(format!(
                    "KEK `{kek_id}` does not open keyring key {key_id} ({}): the configured key is not \
                     the one it was wrapped with",
                    purpose.as_str()
                ))
            })
    }
}

/// Binds a wrapped key to its id and purpose, so a wrapped secret moved to another row does not open.
fn associated_data(key_id: &str, purpose: KeyPurpose) -> Vec<u8> {
    [b"portcullis/keyring/v1\0".as_slice(), purpose.as_str().as_bytes(), b"\0", key_id.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, byte: u8) -> String {
        format!("{id}:{}", URL_SAFE_NO_PAD.encode([byte; 32]))
    }

    #[test]
    fn a_kek_list_parses_with_the_first_entry_active_and_rejects_bad_entries_without_echoing_them() {
        let set = KekSet::parse(&format!("{}, {}\n", entry("k2", 2), entry("k1", 1))).unwrap();
        assert_eq!(set.active_id(), "k2");
        assert!(set.has("k1") && !set.has("k3"));
        let secret = URL_SAFE_NO_PAD.encode([7u8; 31]);
        for bad in [
            String::new(),
            "nocolon".to_owned(),
            format!("k1:{secret}"),
            format!("bad id:{}", URL_SAFE_NO_PAD.encode([1u8; 32])),
            format!("{},{}", entry("k1", 1), entry("k1", 2)),
            "k1:!!!notbase64".to_owned(),
        ] {
            let message = KekSet::parse(&bad).unwrap_err();
            assert!(!message.contains(&secret), "{message}");
        }
        let padded = format!("k:{}", base64::engine::general_purpose::STANDARD.encode([3u8; 32]));
        assert!(KekSet::parse(&padded).is_ok());
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_kek_id_and_purpose() {
        let set = KekSet::parse(&format!("{},{}", entry("new", 2), entry("old", 1))).unwrap();
        let (kek, wrapped) = set.wrap(b"dek bytes", "pii-1", KeyPurpose::Pii).unwrap();
        assert_eq!(kek, "new");
        assert_eq!(set.unwrap(&wrapped, "new", "pii-1", KeyPurpose::Pii).unwrap().as_slice(), b"dek bytes");
        assert!(matches!(set.unwrap(&wrapped, "old", "pii-1", KeyPurpose::Pii), Err(AppError::Keyring(_))));
        assert!(matches!(set.unwrap(&wrapped, "new", "pii-2", KeyPurpose::Pii), Err(AppError::Keyring(_))));
        assert!(matches!(
            set.unwrap(&wrapped, "new", "pii-1", KeyPurpose::BlindIndex),
            Err(AppError::Keyring(_))
        ));
        let Err(AppError::Keyring(message)) = set.unwrap(&wrapped, "gone", "pii-1", KeyPurpose::Pii) else {
            panic!("a missing KEK must be a keyring error")
        };
        assert!(message.contains("`gone`"), "{message}");
        let wrong = KekSet::parse(&entry("new", 9)).unwrap();
        assert!(matches!(wrong.unwrap(&wrapped, "new", "pii-1", KeyPurpose::Pii), Err(AppError::Keyring(_))));
    }

    #[test]
    fn a_backup_mac_key_is_derived_per_kek_and_is_not_the_kek_itself() {
        let set = KekSet::parse(&format!("{},{}", entry("new", 2), entry("old", 1))).unwrap();
        let new = set.backup_mac_key("new").unwrap();
        assert_eq!(new, set.backup_mac_key("new").unwrap(), "deterministic");
        assert_ne!(new, set.backup_mac_key("old").unwrap());
        assert_ne!(*new, [2u8; 32]);
        assert!(set.backup_mac_key("gone").is_none());
    }
}
