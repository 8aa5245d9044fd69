//! Opaque refresh tokens.
//!
//! A refresh token is 256 random bits, base64url-encoded, and means nothing by
//! itself: it is only a key to a row. The database keeps its SHA-256 hash, never
//! the token, so a leaked database cannot be replayed as live tokens. A plain
//! (unsalted, fast) hash is right here because the input has full entropy.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::sealing::SealingKey;

/// Length of the encoded token: 32 bytes in unpadded base64url.
pub const ENCODED_LEN: usize = 43;

/// A new refresh token and the hash to store for it.
pub struct IssuedRefreshToken {
    pub token: String,
    pub hash: [u8; 32],
}

pub fn generate() -> IssuedRefreshToken {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash(&token);
    IssuedRefreshToken { token, hash }
}

/// The storage key of a presented token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a presented value could be one of our tokens at all; anything else
/// is refused without a database round trip.
pub fn looks_valid(token: &str) -> bool {
    token.len() == ENCODED_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key that seals a token's successor: derived from the token itself, so
/// only whoever presents the token can open what is kept beside its hash,
/// and a copy of the database opens nothing.
fn successor_key(presented: &str) -> SealingKey {
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"authgate refresh successor v1\0")
        .chain_update(presented.as_bytes())
        .finalize()
        .into();
    SealingKey::from_bytes(&key)
}

/// `next`, sealed for whoever presents `presented` again within the reuse
/// grace window.
pub fn seal_successor(presented: &str, next: &str) -> Vec<u8> {
    successor_key(presented).seal(next.as_bytes(), b"successor")
}

/// The successor [`seal_successor`] sealed, if `presented` opens it.
pub fn open_successor(presented: &str, sealed: &[u8]) -> Option<String> {
    let plain = successor_key(presented).open(sealed, b"successor").ok()?;
    String::from_utf8(plain).ok().filter(|t| looks_valid(t))
}

/// The `jti` of the access token issued beside a refresh token: derived, so
/// that the pair given again within the grace window is the same pair.
pub fn access_token_id(refresh_token: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"authgate access token id v1\0")
        .chain_update(refresh_token.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_well_formed_and_hash_to_their_stored_key() {
        let a = generate();
        let b = generate();
        assert_ne!(a.token, b.token);
        assert!(looks_valid(&a.token), "{}", a.token);
        assert_eq!(hash(&a.token), a.hash);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn odd_values_do_not_look_like_tokens() {
        assert!(!looks_valid(""));
        assert!(!looks_valid("eyJhbGciOiJIUzI1NiJ9.e30.abc"));
        assert!(!looks_valid(&"a".repeat(44)));
        assert!(!looks_valid(&format!("{}+", "a".repeat(42))));
    }

    #[test]
    fn a_successor_opens_only_with_the_token_it_was_sealed_for() {
        let (parent, next, other) = (generate(), generate(), generate());
        let sealed = seal_successor(&parent.token, &next.token);
        assert_eq!(
            open_successor(&parent.token, &sealed),
            Some(next.token.clone())
        );
        assert_eq!(open_successor(&other.token, &sealed), None);
        assert!(
            !sealed
                .windows(8)
                .any(|w| next.token.as_bytes().windows(8).any(|n| n == w))
        );
    }

    #[test]
    fn the_access_token_id_follows_from_its_refresh_token() {
        let (a, b) = (generate(), generate());
        assert_eq!(access_token_id(&a.token), access_token_id(&a.token));
        assert_ne!(access_token_id(&a.token), access_token_id(&b.token));
        assert_eq!(access_token_id(&a.token).get_version_num(), 4);
    }
}
