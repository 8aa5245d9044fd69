//! Sealing secrets at rest with AES-256-GCM.
//!
//! Private signing keys live in the database. With a key-encryption key
//! configured, they are sealed before they are written, so that a copy of the
//! database (a backup, a replica, a dump) holds nothing that signs tokens
//! without that key, which is kept elsewhere.
//!
//! A sealed value is `version (1 byte) || nonce (12 bytes) || ciphertext ||
//! tag (16 bytes)`. The caller's associated data (the key id) and the version
//! byte are authenticated with it, so a value moved to another row, or
//! relabelled as another format, does not open.

use std::fmt;
use std::sync::Arc;

use anyhow::{Context, anyhow, ensure};
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use secrecy::zeroize::Zeroizing;

/// The length of a key-encryption key.
pub const KEY_LEN: usize = 32;

/// The first byte of every sealed value: AES-256-GCM, random 96-bit nonce.
const VERSION_1: u8 = 1;

const TAG_LEN: usize = 16;

/// How to make a key, for error messages.
const HOW_TO_MAKE_ONE: &str = "make one with `openssl rand -base64 32`";

/// The key that seals stored secrets (AUTHGATE_KEY_ENCRYPTION_KEY): 32 bytes.
#[derive(Clone)]
pub struct SealingKey(Arc<RandomizedNonceKey>);

impl SealingKey {
    /// Reads a key given as base64 (standard or URL-safe, padded or not) or as
    /// 64 hexadecimal digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!(
                "the key-encryption key is empty; it must be {KEY_LEN} bytes in base64 or as 64 hex digits; {HOW_TO_MAKE_ONE}"
            ));
        }
        let is_hex = text.bytes().all(|b| b.is_ascii_hexdigit());
        // 43 or 44 hex digits are also base64 of 32 bytes; any other run of
        // hex digits is meant as hex.
        let bytes = if is_hex && !matches!(text.len(), 43 | 44) {
            if text.len() != 2 * KEY_LEN {
                return Err(format!(
                    "the key-encryption key must be {KEY_LEN} bytes (64 hex digits), not {} hex digits; {HOW_TO_MAKE_ONE}",
                    text.len()
                ));
            }
            decode_hex(text)
        } else {
            STANDARD_PAD_INDIFFERENT
                .decode(text)
                .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(text))
                .map(Zeroizing::new)
                .map_err(|_| {
                    format!(
                        "the key-encryption key must be {KEY_LEN} bytes in base64 or as 64 hex digits; {HOW_TO_MAKE_ONE}"
                    )
                })?
        };
        let bytes: &[u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "the key-encryption key must be {KEY_LEN} bytes, it decodes to {}; {HOW_TO_MAKE_ONE}",
                bytes.len()
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// A random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(bytes.as_mut_slice()).expect("the system random generator works");
        Self::from_bytes(&bytes)
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .expect("AES-256-GCM accepts any 32-byte key");
        Self(Arc::new(key))
    }

    /// Encrypts and authenticates `plaintext`, binding it to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(plaintext);
        // The nonce is drawn at random by aws-lc for every seal: 96 bits are
        // safe for far more values than one key will ever seal (NIST SP
        // 800-38D allows 2^32), and no counter has to be kept anywhere.
        let nonce = self
            .0
            .seal_in_place_append_tag(Aad::from(bound_aad(VERSION_1, aad)), &mut in_out)
            .expect("AES-GCM sealing fails only if the system random generator does");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        sealed.push(VERSION_1);
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&in_out);
        sealed
    }

    /// Checks and decrypts a value [`Self::seal`] made with the same key and
    /// `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (&version, rest) = sealed.split_first().context("the sealed value is empty")?;
        ensure!(
            version == VERSION_1,
            "the sealed value has an unknown format (version {version})"
        );
        ensure!(
            rest.len() >= NONCE_LEN + TAG_LEN,
            "the sealed value is truncated"
        );
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow!("the sealed value is truncated"))?;
        // On failure the buffer may hold partly decrypted bytes: wipe it.
        let mut in_out = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .0
            .open_in_place(nonce, Aad::from(bound_aad(version, aad)), &mut in_out)
            .map_err(|_| {
                anyhow!(
                    "the sealed value does not open: another key-encryption key sealed it, \
                     it belongs to another key id, or it was altered"
                )
            })?
            .len();
        in_out.truncate(len);
        Ok(std::mem::take(&mut *in_out))
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// The associated data actually authenticated: the version byte, then the
/// caller's. One fixed-size byte in front keeps the two apart.
fn bound_aad(version: u8, aad: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(1 + aad.len());
    bound.push(version);
    bound.extend_from_slice(aad);
    bound
}

/// Hex digits (already checked) to bytes.
fn decode_hex(text: &str) -> Zeroizing<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    };
    Zeroizing::new(
        text.as_bytes()
            .chunks_exact(2)
            .map(|pair| digit(pair[0]) << 4 | digit(pair[1]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    use super::*;

    const KID: &[u8] = b"gen-abc123";

    #[test]
    fn a_sealed_value_opens_with_its_key_and_aad() {
        let key = SealingKey::generate();
        for plaintext in [&b""[..], b"x", &[0x30; 1200]] {
            let sealed = key.seal(plaintext, KID);
            assert_eq!(sealed.len(), 1 + 12 + plaintext.len() + 16);
            assert_eq!(sealed[0], VERSION_1);
            assert_eq!(key.open(&sealed, KID).unwrap(), plaintext);
            assert_eq!(key.clone().open(&sealed, KID).unwrap(), plaintext);
        }
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_own_kid_and_key() {
        let key = SealingKey::generate();
        let sealed = key.seal(b"private key", KID);
        assert!(key.open(&sealed, b"gen-other").is_err());
        assert!(key.open(&sealed, b"").is_err());
        let error = SealingKey::generate().open(&sealed, KID).unwrap_err();
        assert!(error.to_string().contains("does not open"), "{error}");
    }

    #[test]
    fn any_altered_bit_or_missing_byte_is_detected() {
        let key = SealingKey::generate();
        let sealed = key.seal(b"private key", KID);
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut altered = sealed.clone();
                altered[byte] ^= 1 << bit;
                assert!(key.open(&altered, KID).is_err(), "byte {byte} bit {bit}");
            }
        }
        for len in 0..sealed.len() {
            assert!(key.open(&sealed[..len], KID).is_err(), "length {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(key.open(&longer, KID).is_err());

        let error = key.open(&[], KID).unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
        let mut version_2 = sealed.clone();
        version_2[0] = 2;
        let error = key.open(&version_2, KID).unwrap_err();
        assert!(error.to_string().contains("version 2"), "{error}");
    }

    #[test]
    fn sealing_the_same_value_twice_gives_different_results() {
        let key = SealingKey::generate();
        let a = key.seal(b"private key", KID);
        let b = key.seal(b"private key", KID);
        assert_ne!(a, b);
        assert_ne!(a[1..13], b[1..13], "nonces differ");
    }

    #[test]
    fn a_key_parses_from_base64_in_either_alphabet_or_from_hex() {
        // Bytes chosen so that standard and URL-safe base64 differ.
        let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) | 0xf8).collect();
        let sealed = SealingKey::parse(&STANDARD.encode(&bytes))
            .unwrap()
            .seal(b"secret", KID);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        for text in [
            STANDARD.encode(&bytes),
            STANDARD_NO_PAD.encode(&bytes),
            URL_SAFE.encode(&bytes),
            URL_SAFE_NO_PAD.encode(&bytes),
            format!("  {}\n", STANDARD.encode(&bytes)),
            hex.clone(),
            hex.to_uppercase(),
        ] {
            let key = SealingKey::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(key.open(&sealed, KID).unwrap(), b"secret", "{text:?}");
        }
        assert!(STANDARD.encode(&bytes).contains(['+', '/']));
    }

    #[test]
    fn a_key_of_the_wrong_size_or_not_encoded_is_refused_with_advice() {
        let hex_31: String = "ab".repeat(31);
        let hex_33: String = "ab".repeat(33);
        for text in [
            STANDARD.encode([7u8; 31]),
            STANDARD.encode([7u8; 33]),
            URL_SAFE_NO_PAD.encode([7u8; 16]),
            hex_31,
            hex_33,
            String::new(),
            "   ".into(),
            "not base64 at all!".into(),
            format!("{}*", STANDARD_NO_PAD.encode([7u8; 32])),
            "correct horse battery staple".into(),
        ] {
            let error = SealingKey::parse(&text).unwrap_err();
            assert!(error.contains("32 bytes"), "{text:?}: {error}");
            assert!(
                error.contains("openssl rand -base64 32"),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn debug_never_prints_the_key() {
        let text = STANDARD.encode([0x42u8; 32]);
        let key = SealingKey::parse(&text).unwrap();
        let printed = format!("{key:?}");
        assert_eq!(printed, "SealingKey(..)");
    }

    #[test]
    fn the_key_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<SealingKey>();
    }
}
