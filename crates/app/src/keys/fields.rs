//! Field-level encryption of personal data: XChaCha20-Poly1305 under a keyring data-encryption key,
//! with the row's table, column and id as associated data, and an HMAC-SHA256 blind index for
//! equality lookups.
//!
//! A sealed value is `0x01 ‖ len(key id) ‖ key id ‖ 24-byte nonce ‖ ciphertext and tag`: it names its
//! key, so rows stay readable while a rotation re-encrypts them in the background.

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use portcullis_domain::Email;
use portcullis_store::{BlindIndex, Sealed};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::AppError;

const VERSION: u8 = 1;
const NONCE_BYTES: usize = 24;

/// Where a sealed value lives; bound into its ciphertext so it cannot be moved to another row or
/// column and still open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    pub table: &'static str,
    pub column: &'static str,
    pub row: &'a str,
}

impl Place<'_> {
    fn associated_data(&self) -> Vec<u8> {
        [
            b"portcullis/field/v1\0".as_slice(),
            self.table.as_bytes(),
            b".",
            self.column.as_bytes(),
            b"\0",
            self.row.as_bytes(),
        ]
        .concat()
    }
}

/// The unwrapped personal-data keys and blind-index keys this node holds.
#[derive(Default)]
pub(crate) struct FieldKeys {
    active_pii: Option<String>,
    pii: HashMap<String, Zeroizing<[u8; 32]>>,
    active_index: Option<String>,
    /// Blind-index keys, the active one first: a lookup during a rebuild tries each.
    index: Vec<(String, Zeroizing<[u8; 32]>)>,
}

impl std::fmt::Debug for FieldKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldKeys")
            .field("active_pii", &self.active_pii)
            .field("pii", &self.pii.keys().collect::<Vec<_>>())
            .field("active_index", &self.active_index)
            .field("index", &self.index.iter().map(|(id, _)| id).collect::<Vec<_>>())
            .finish()
    }
}

/// 32 bytes of key material from an unwrapped secret.
pub(crate) fn key_bytes(secret: &[u8], id: &str) -> Result<Zeroizing<[u8; 32]>, AppError> {
    let bytes: [u8; 32] =
        secret.try_into().map_err(|_| AppError::Keyring(format!("keyring key {id} is not 32 bytes")))?;
    Ok(Zeroizing::new(bytes))
}

impl FieldKeys {
    pub(crate) fn add_pii(&mut self, id: &str, key: Zeroizing<[u8; 32]>, active: bool) {
        if active {
            self.active_pii = Some(id.to_owned());
        }
        self.pii.insert(id.to_owned(), key);
    }

    pub(crate) fn add_index(&mut self, id: &str, key: Zeroizing<[u8; 32]>, active: bool) {
        if active {
            self.active_index = Some(id.to_owned());
            self.index.insert(0, (id.to_owned(), key));
        } else {
            self.index.push((id.to_owned(), key));
        }
    }

    /// The key new data is sealed under.
    pub(crate) fn active_pii_id(&self) -> Result<&str, AppError> {
        self.active_pii.as_deref().ok_or_else(|| AppError::Keyring("no personal-data key is active".into()))
    }

    /// The key new blind indexes are computed with.
    pub(crate) fn active_index_id(&self) -> Result<&str, AppError> {
        self.active_index.as_deref().ok_or_else(|| AppError::Keyring("no blind-index key is active".into()))
    }

    /// The active blind-index key itself, for other keyed digests of personal data (login addresses).
    pub(crate) fn active_index_key(&self) -> Result<&[u8; 32], AppError> {
        let id = self.active_index_id()?;
        self.index
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| &**key)
            .ok_or_else(|| AppError::Keyring(format!("blind-index key {id} is not loaded")))
    }

    /// Whether this node holds the personal-data key `id`.
    pub(crate) fn has_pii(&self, id: &str) -> bool {
        self.pii.contains_key(id)
    }

    /// Seals `plaintext` at `place` under the active key.
    pub(crate) fn seal(&self, plaintext: &[u8], place: Place<'_>) -> Result<Sealed, AppError> {
        let id = self.active_pii_id()?;
        self.seal_under(id, plaintext, place)
    }

    /// Seals under a named key (the re-encryption job names the active one explicitly).
    pub(crate) fn seal_under(
        &self,
        id: &str,
        plaintext: &[u8],
        place: Place<'_>,
    ) -> Result<Sealed, AppError> {
        let key = self
            .pii
            .get(id)
            .ok_or_else(|| AppError::Keyring(format!("personal-data key {id} is not loaded")))?;
        seal_with(key, id, plaintext, place)
    }

    /// Opens a sealed value stored at `place`. A value moved from another row or column, altered, or
    /// sealed under a key this node does not hold is an error, never wrong data.
    pub(crate) fn open(&self, sealed: &Sealed, place: Place<'_>) -> Result<Zeroizing<Vec<u8>>, AppError> {
        let (id, nonce, ciphertext) = parse(&sealed.0).ok_or_else(|| {
            AppError::Keyring(format!(
                "{}.{} of row {} is not a sealed value",
                place.table, place.column, place.row
            ))
        })?;
        let key = self.pii.get(id).ok_or_else(|| {
            AppError::Keyring(format!(
                "{}.{} is sealed under key {id}, which is not loaded",
                place.table, place.column
            ))
        })?;
        decrypt(key, nonce, ciphertext, place)
    }

    /// Opens a sealed UTF-8 text.
    pub(crate) fn open_text(&self, sealed: &Sealed, place: Place<'_>) -> Result<String, AppError> {
        let bytes = self.open(sealed, place)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| AppError::Keyring("a sealed text is not UTF-8".into()))
    }

    /// The blind index of an address under the active blind-index key.
    pub(crate) fn email_index(&self, email: &Email) -> Result<(String, BlindIndex), AppError> {
        let id = self.active_index_id()?;
        let index = self.email_index_under(id, email)?;
        Ok((id.to_owned(), index))
    }

    /// The blind index of an address under the named key.
    pub(crate) fn email_index_under(&self, id: &str, email: &Email) -> Result<BlindIndex, AppError> {
        let (_, key) = self
            .index
            .iter()
            .find(|(known, _)| known == id)
            .ok_or_else(|| AppError::Keyring(format!("blind-index key {id} is not loaded")))?;
        Ok(blind_index(key, email))
    }

    /// The address's blind index under every blind-index key this node holds, the active one first:
    /// while the index is rebuilt, a row may still carry one computed with the previous key.
    pub(crate) fn email_indexes(&self, email: &Email) -> Vec<BlindIndex> {
        self.index.iter().map(|(_, key)| blind_index(key, email)).collect()
    }
}

fn blind_index(key: &[u8; 32], email: &Email) -> BlindIndex {
    // HMAC accepts any key length; a 32-byte key cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(b"portcullis/blind-index/email/v1\0");
    mac.update(email.key().as_bytes());
    BlindIndex(mac.finalize().into_bytes().into())
}

#[allow(clippy::panic, reason = "HMAC-SHA256 takes keys of every length; this cannot happen")]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC rejected a 32-byte key")
}

/// Seals `plaintext` at `place` under `key`, naming it `id` (a keyring key, or a person's own key).
pub(crate) fn seal_with(
    key: &[u8; 32],
    id: &str,
    plaintext: &[u8],
    place: Place<'_>,
) -> Result<Sealed, AppError> {
    let id_len = u8::try_from(id.len()).map_err(|_| AppError::Keyring("a key id is too long".into()))?;
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| AppError::Internal(Box::new(e)))?;
    let ciphertext = XChaCha20Poly1305::new(key.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &place.associated_data() })
        .map_err(|_| AppError::Internal("sealing a field failed".into()))?;
    let mut out = Vec::with_capacity(2 + id.len() + NONCE_BYTES + ciphertext.len());
    out.push(VERSION);
    out.push(id_len);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(Sealed(out))
}

/// Opens a value sealed with [`seal_with`] under `key`, which must be the key it names `id`.
pub(crate) fn open_with(
    key: &[u8; 32],
    id: &str,
    sealed: &Sealed,
    place: Place<'_>,
) -> Result<Zeroizing<Vec<u8>>, AppError> {
    match parse(&sealed.0) {
        Some((named, nonce, ciphertext)) if named == id => decrypt(key, nonce, ciphertext, place),
        _ => Err(AppError::Keyring(format!(
            "{}.{} of row {} is not a value sealed under {id}",
            place.table, place.column, place.row
        ))),
    }
}

fn decrypt(
    key: &[u8; 32],
    nonce: &[u8],
    ciphertext: &[u8],
    place: Place<'_>,
) -> Result<Zeroizing<Vec<u8>>, AppError> {
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &place.associated_data() })
        .map(Zeroizing::new)
        .map_err(|_| {
            AppError::Keyring(format!(
                "{}.{} of row {} does not decrypt: it was altered or belongs to another row",
                place.table, place.column, place.row
            ))
        })
}

/// The key id, nonce and ciphertext of a sealed value.
fn parse(bytes: &[u8]) -> Option<(&str, &[u8], &[u8])> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&id_len, rest) = rest.split_first()?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_BYTES + 16 {
        return None;
    }
    let (id, rest) = rest.split_at(id_len);
    let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
    Some((std::str::from_utf8(id).ok()?, nonce, ciphertext))
}

/// The key id a sealed value names, if it is well formed.
#[cfg(test)]
pub(crate) fn sealed_key_id(sealed: &Sealed) -> Option<&str> {
    parse(&sealed.0).map(|(id, _, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_store::PiiTable;

    fn keys() -> FieldKeys {
        let mut keys = FieldKeys::default();
        keys.add_pii("pii-old", Zeroizing::new([1; 32]), false);
        keys.add_pii("pii-new", Zeroizing::new([2; 32]), true);
        keys.add_index("bi-new", Zeroizing::new([3; 32]), true);
        keys.add_index("bi-old", Zeroizing::new([4; 32]), false);
        keys
    }

    const HERE: Place<'static> = Place { table: PiiTable::Users.name(), column: "email", row: "user-1" };

    #[test]
    fn a_sealed_value_opens_only_in_its_own_row_and_column_and_names_its_key() {
        let keys = keys();
        let sealed = keys.seal(b"ada@example.com", HERE).unwrap();
        assert_eq!(sealed_key_id(&sealed), Some("pii-new"));
        assert_eq!(keys.open(&sealed, HERE).unwrap().as_slice(), b"ada@example.com");
        assert!(!sealed.0.windows(3).any(|w| w == b"ada"), "no plaintext in the ciphertext");
        for elsewhere in [
            Place { row: "user-2", ..HERE },
            Place { column: "display_name", ..HERE },
            Place { table: PiiTable::OneTimeTokens.name(), ..HERE },
        ] {
            assert!(matches!(keys.open(&sealed, elsewhere), Err(AppError::Keyring(_))));
        }
        let mut tampered = sealed.clone();
        let last = tampered.0.len() - 1;
        tampered.0[last] ^= 1;
        assert!(keys.open(&tampered, HERE).is_err());
        for junk in [vec![], vec![1], vec![2, 0], vec![1, 200, 0]] {
            assert!(keys.open(&Sealed(junk), HERE).is_err());
        }
    }

    #[test]
    fn sealing_the_same_value_twice_uses_a_fresh_nonce_each_time() {
        let keys = keys();
        let nonces: std::collections::HashSet<Vec<u8>> = (0..1_000)
            .map(|_| {
                let sealed = keys.seal(b"same", HERE).unwrap();
                let (_, nonce, _) = parse(&sealed.0).unwrap();
                nonce.to_vec()
            })
            .collect();
        assert_eq!(nonces.len(), 1_000, "192-bit random nonces never repeat in practice");
    }

    #[test]
    fn values_under_a_retired_key_still_open_and_an_unknown_key_is_an_error() {
        let keys = keys();
        let old = keys.seal_under("pii-old", b"x", HERE).unwrap();
        assert_eq!(keys.open(&old, HERE).unwrap().as_slice(), b"x");
        let mut other = FieldKeys::default();
        other.add_pii("pii-new", Zeroizing::new([2; 32]), true);
        assert!(matches!(other.open(&old, HERE), Err(AppError::Keyring(_))));
    }

    #[test]
    fn the_blind_index_ignores_case_and_differs_by_key() {
        let keys = keys();
        let a = Email::parse("Ada@Example.com").unwrap();
        let b = Email::parse("ada@example.com").unwrap();
        assert_eq!(keys.email_index(&a).unwrap(), keys.email_index(&b).unwrap());
        let indexes = keys.email_indexes(&a);
        assert_eq!(indexes.len(), 2);
        assert_eq!(indexes[0], keys.email_index(&a).unwrap().1, "the active key comes first");
        assert_ne!(indexes[0], indexes[1]);
    }
}
