//! The key ring: the keys that sign and verify access tokens, by key id.
//!
//! A key comes from configuration (`AUTHGATE_JWT_SECRET`) or, by default, is
//! generated on the first start and kept in the database, so that a restart
//! (or a second instance) keeps accepting the tokens already issued.

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::store::{KeyStore, StoredKey};

/// The algorithm of every key this ring holds today.
const HS256: &str = "HS256";

/// A symmetric signing key and its id.
#[derive(Clone)]
pub struct KeyMaterial {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl KeyMaterial {
    /// A key given in configuration. Its id is derived from a hash of the key,
    /// so every instance sharing the secret agrees on it without revealing it.
    pub fn from_configured_secret(secret: &[u8]) -> Self {
        let digest = Sha256::digest(secret);
        Self {
            kid: format!("cfg-{}", URL_SAFE_NO_PAD.encode(&digest[..9])),
            secret: secret.to_vec(),
        }
    }

    /// A fresh 256-bit key with a random id.
    pub fn generate() -> Self {
        let mut secret = vec![0u8; 32];
        rand::fill(&mut secret[..]);
        let mut id = [0u8; 9];
        rand::fill(&mut id);
        Self {
            kid: format!("gen-{}", URL_SAFE_NO_PAD.encode(id)),
            secret,
        }
    }

    fn stored(&self, created_at: OffsetDateTime) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            algorithm: HS256.into(),
            secret: self.secret.clone(),
            created_at,
        }
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The key that signs, and the other keys that still verify.
#[derive(Debug, Clone)]
pub struct KeyRing {
    pub signing: KeyMaterial,
    pub verifying: Vec<KeyMaterial>,
}

impl KeyRing {
    /// The configured secret if there is one; else the stored keys, after
    /// generating and storing the first one if there are none.
    pub async fn load(
        configured: Option<&[u8]>,
        store: &dyn KeyStore,
        now: OffsetDateTime,
    ) -> anyhow::Result<Self> {
        if let Some(secret) = configured {
            return Ok(Self {
                signing: KeyMaterial::from_configured_secret(secret),
                verifying: Vec::new(),
            });
        }
        let mut stored = store
            .signing_keys()
            .await
            .context("cannot load signing keys")?;
        if stored.is_empty() {
            stored = store
                .insert_first_signing_key(&KeyMaterial::generate().stored(now))
                .await
                .context("cannot store a generated signing key")?;
            tracing::info!("generated a signing key and stored it in the database");
        }
        let mut keys: Vec<KeyMaterial> = stored
            .into_iter()
            .filter(|k| k.algorithm == HS256)
            .map(|k| KeyMaterial {
                kid: k.kid,
                secret: k.secret,
            })
            .collect();
        // The newest key signs; older ones keep verifying tokens they signed.
        let signing = keys.pop().context("no signing key available")?;
        Ok(Self {
            signing,
            verifying: keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_keys_get_a_stable_id_that_does_not_reveal_them() {
        let a = KeyMaterial::from_configured_secret(b"0123456789abcdef0123456789abcdef");
        let b = KeyMaterial::from_configured_secret(b"0123456789abcdef0123456789abcdef");
        assert_eq!(a.kid, b.kid);
        assert!(!a.kid.contains("0123"));
        assert!(!format!("{a:?}").contains("0123"));
    }
}
