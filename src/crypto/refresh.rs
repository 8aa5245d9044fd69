//! Opaque refresh tokens.
//!
//! A refresh token is 256 random bits, base64url-encoded, and means nothing by
//! itself: it is only a key to a row. The database keeps its SHA-256 hash, never
//! the token, so a leaked database cannot be replayed as live tokens. A plain
//! (unsalted, fast) hash is right here because the input has full entropy.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

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
}
