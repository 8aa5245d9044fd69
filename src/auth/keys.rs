//! Signing keys and their life.
//!
//! Keys live in the database, so every instance on it signs and verifies with
//! the same ones. Each key goes through these states, derived from its times
//! so that every instance agrees without coordination:
//!
//! - **standby**: published in the JWKS, not yet signing. A new key waits
//!   here for the publish lead, so no verifier ever meets a `kid` it could
//!   not have fetched (verifiers cache the JWKS).
//! - **active**: the newest key whose activation time has come signs.
//! - **retiring**: replaced, still published and verifying until every token
//!   it signed has expired (its successor's activation + the token lifetime).
//! - **expired**: gone from the JWKS; the purge deletes it.
//! - **revoked**: refused at once, everywhere, whatever it signed.
//!
//! With `AUTHGATE_JWT_SECRET` the ring is that one HS256 key instead, and
//! nothing is stored.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::DecodingKey;
use parking_lot::RwLock;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{AuthError, AuthResult, Client, audit::Audit};
use crate::{
    clock::SharedClock,
    crypto::{
        sealing::SealingKey,
        signing::{JwtSigner, PrivateKey, SigningAlgorithm},
    },
    store::{AuditContext, AuditKind, Effects, KeyGuard, Store, StoredKey},
};

/// How long verifiers may cache the JWKS (`Cache-Control: max-age`). The
/// publish lead must be at least twice this.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);

/// How many keys may wait on standby at once.
pub const MAX_STANDBY_KEYS: usize = 3;

/// How far apart the clocks of instances and verifiers may be: a retiring
/// key stays published this much longer than its last token could live.
const CLOCK_LEEWAY: Duration = Duration::from_secs(60);

/// How the keys are chosen and rotated.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// The algorithm new keys use.
    pub algorithm: SigningAlgorithm,
    /// How long a new key is published before it signs.
    pub publish_lead: Duration,
    /// How often a new key is made; `None`: only on demand.
    pub rotation: Option<Duration>,
    /// The access tokens' lifetime: how long a replaced key keeps verifying.
    pub access_token_ttl: Duration,
}

/// Where a key is in its life (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Standby,
    Active,
    Retiring,
    Expired,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Standby => "standby",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }

    /// Whether tokens it signed verify, and the JWKS shows it.
    pub fn is_published(self) -> bool {
        matches!(
            self,
            KeyState::Standby | KeyState::Active | KeyState::Retiring
        )
    }
}

/// What the key list shows of a key: never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub state: KeyState,
    pub created_at: OffsetDateTime,
    pub activates_at: OffsetDateTime,
    /// When a replaced key leaves the JWKS.
    pub retires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// Whether the private key is stored sealed.
    pub sealed: bool,
}

/// A key of the ring, ready to use.
#[derive(Clone)]
pub struct RingKey {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub created_at: OffsetDateTime,
    pub activates_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub sealed: bool,
    /// The public JWK, for published algorithms.
    pub jwk: Option<Value>,
    pub(super) signer: Option<JwtSigner>,
    pub(super) decoding: DecodingKey,
}

impl RingKey {
    /// A stored key with what this instance can do with it.
    fn of_stored(
        key: StoredKey,
        algorithm: SigningAlgorithm,
        jwk: Option<Value>,
        signer: Option<JwtSigner>,
        decoding: DecodingKey,
    ) -> Self {
        Self {
            kid: key.kid,
            algorithm,
            created_at: key.created_at,
            activates_at: key.activates_at,
            revoked_at: key.revoked_at,
            sealed: key.sealed,
            jwk,
            signer,
            decoding,
        }
    }

    /// A usable key from its private part, signing from `activates_at`.
    pub fn new(
        kid: String,
        private: &PrivateKey,
        activates_at: OffsetDateTime,
    ) -> anyhow::Result<Self> {
        let algorithm = private.algorithm();
        Ok(Self {
            jwk: private.public_jwk(&kid),
            kid,
            algorithm,
            created_at: activates_at,
            activates_at,
            revoked_at: None,
            sealed: false,
            signer: Some(private.signer()?),
            decoding: private.decoding_key()?,
        })
    }
}

impl std::fmt::Debug for RingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// The keys as loaded at one moment, in the order they activate.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<RingKey>,
    /// How long a replaced key keeps verifying.
    retire_after: Duration,
}

impl KeySet {
    /// The state of every key at `now`, in order.
    pub fn states(&self, now: OffsetDateTime) -> Vec<KeyState> {
        (0..self.keys.len()).map(|i| self.state(i, now)).collect()
    }

    /// The `i`th key's state at `now`, without allocating: this runs for
    /// every verified token.
    fn state(&self, i: usize, now: OffsetDateTime) -> KeyState {
        key_state(
            &self.keys,
            |k| (k.activates_at, k.revoked_at),
            i,
            now,
            self.retire_after,
        )
    }

    /// The key that signs at `now`: the newest whose time has come.
    pub fn signer(&self, now: OffsetDateTime) -> Option<&RingKey> {
        let signs = |k: &&RingKey| k.revoked_at.is_none() && k.signer.is_some();
        self.keys
            .iter()
            .rev()
            .filter(signs)
            .find(|k| k.activates_at <= now)
            // A key that replaced a revoked one starts at the revoking
            // instance's clock; on a clock a little behind, it is the one to
            // sign with, not none.
            .or_else(|| {
                self.keys
                    .iter()
                    .filter(signs)
                    .find(|k| k.activates_at <= now + CLOCK_LEEWAY)
            })
    }

    /// The key with that id, if tokens it signed verify at `now`. A standby
    /// key verifies only from shortly before its activation (clocks of
    /// instances differ a little): a token it signed earlier was not signed
    /// by any instance of this service.
    pub fn verifier(&self, kid: &str, now: OffsetDateTime) -> Option<&RingKey> {
        let i = self.keys.iter().position(|k| k.kid == kid)?;
        let key = &self.keys[i];
        match self.state(i, now) {
            KeyState::Standby if key.activates_at > now + CLOCK_LEEWAY => None,
            state => state.is_published().then_some(key),
        }
    }

    /// The JWKS document (RFC 7517) at `now`: every published key of a
    /// published algorithm.
    pub fn jwks(&self, now: OffsetDateTime) -> Value {
        let keys: Vec<&Value> = self
            .keys
            .iter()
            .zip(self.states(now))
            .filter(|(_, s)| s.is_published())
            .filter_map(|(k, _)| k.jwk.as_ref())
            .collect();
        json!({ "keys": keys })
    }

    /// Every key as the key list shows it.
    pub fn infos(&self, now: OffsetDateTime) -> Vec<KeyInfo> {
        let states = self.states(now);
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyInfo {
                kid: k.kid.clone(),
                algorithm: k.algorithm,
                state: states[i],
                created_at: k.created_at,
                activates_at: k.activates_at,
                retires_at: self.retires_at(i, now),
                revoked_at: k.revoked_at,
                sealed: k.sealed,
            })
            .collect()
    }

    /// When the `i`th key, replaced, stops verifying.
    fn retires_at(&self, i: usize, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let key = &self.keys[i];
        if key.revoked_at.is_some() || key.activates_at > now {
            return None;
        }
        let successor = self.keys[i + 1..]
            .iter()
            .map(|k| k.activates_at)
            .find(|at| *at <= now)?;
        Some(successor + self.retire_after)
    }

    /// The algorithms of the keys that may sign or verify.
    pub fn algorithms(&self) -> Vec<SigningAlgorithm> {
        let mut algs: Vec<_> = self.keys.iter().map(|k| k.algorithm).collect();
        algs.sort_by_key(|a| a.as_str());
        algs.dedup();
        algs
    }

    /// What identifies this set: its keys and their revocations.
    fn fingerprint(&self) -> Vec<(String, Option<OffsetDateTime>)> {
        self.keys
            .iter()
            .map(|k| (k.kid.clone(), k.revoked_at))
            .collect()
    }
}

/// The `i`th key's state at `now`, for keys in the order they activate,
/// each read as (activation, revocation) by `times`.
fn key_state<T>(
    keys: &[T],
    times: impl Fn(&T) -> (OffsetDateTime, Option<OffsetDateTime>),
    i: usize,
    now: OffsetDateTime,
    retire_after: Duration,
) -> KeyState {
    let (activates, revoked) = times(&keys[i]);
    if revoked.is_some() {
        return KeyState::Revoked;
    }
    if activates > now {
        return KeyState::Standby;
    }
    // Activated: it signs unless a newer key's time has come. Replaced when
    // the next key activated (revoked or not: from then on this one signed
    // nothing); its tokens live at most the token lifetime after that.
    let later = &keys[i + 1..];
    let superseded = later.iter().any(|k| {
        let (at, revoked) = times(k);
        revoked.is_none() && at <= now
    });
    if !superseded {
        return KeyState::Active;
    }
    match later.iter().map(|k| times(k).0).find(|at| *at <= now) {
        Some(at) if now < at + retire_after => KeyState::Retiring,
        _ => KeyState::Expired,
    }
}

/// Each key's state at `now`, for keys given as (activation, revocation) in
/// the order they activate.
fn key_states(
    keys: &[(OffsetDateTime, Option<OffsetDateTime>)],
    now: OffsetDateTime,
    retire_after: Duration,
) -> Vec<KeyState> {
    (0..keys.len())
        .map(|i| key_state(keys, |k| *k, i, now, retire_after))
        .collect()
}

/// The key ring of the running service: the current [`KeySet`], reloaded
/// from the database so that every instance sees a rotation or revocation
/// within seconds. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    /// Where the keys live; none when they come from configuration
    /// (`AUTHGATE_JWT_SECRET`): nothing to store or rotate then.
    store: Option<Arc<dyn Store>>,
    sealing: Option<SealingKey>,
    policy: KeyPolicy,
    clock: SharedClock,
    current: Arc<RwLock<Arc<KeySet>>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("policy", &self.policy)
            .field("configured", &self.store.is_none())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// The keys from `configured_secret` if there is one; else the stored
    /// keys, after adding one of the configured algorithm if none is live: on
    /// the first start it signs at once, after a change of algorithm it waits
    /// for the publish lead like any rotation.
    pub async fn load(
        configured_secret: Option<&[u8]>,
        store: Arc<dyn Store>,
        sealing: Option<SealingKey>,
        policy: KeyPolicy,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        if let Some(secret) = configured_secret {
            return Self::fixed(vec![configured_key(secret)?], policy, clock);
        }
        let empty = KeySet {
            keys: Vec::new(),
            retire_after: policy.access_token_ttl + CLOCK_LEEWAY,
        };
        let keys = Self {
            store: Some(store),
            sealing,
            policy,
            clock,
            current: Arc::new(RwLock::new(Arc::new(empty))),
        };
        keys.ensure_key().await?;
        keys.reload_with(true).await?;
        let unsealed = keys
            .current()
            .keys
            .iter()
            .filter(|k| k.revoked_at.is_none() && !k.sealed)
            .count();
        if keys.sealing.is_none() {
            tracing::warn!(
                "AUTHGATE_KEY_ENCRYPTION_KEY is not set: private signing keys and TOTP \
                 secrets are stored unsealed in the database"
            );
        } else if unsealed > 0 {
            tracing::warn!(
                keys = unsealed,
                "some signing keys were stored before AUTHGATE_KEY_ENCRYPTION_KEY was set and \
                 are not sealed; rotate, then revoke them once retired"
            );
        }
        Ok(keys)
    }

    /// A ring of these keys, in the order they activated (the last signs),
    /// kept nowhere: configured keys, and tests.
    pub fn fixed(
        keys: Vec<RingKey>,
        policy: KeyPolicy,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let set = KeySet {
            keys,
            retire_after: policy.access_token_ttl + CLOCK_LEEWAY,
        };
        Ok(Self {
            store: None,
            sealing: None,
            policy,
            clock,
            current: Arc::new(RwLock::new(Arc::new(set))),
        })
    }

    /// The store the keys live in; refused for configured keys.
    fn store(&self) -> AuthResult<&Arc<dyn Store>> {
        self.store.as_ref().ok_or(AuthError::KeysConfigured)
    }

    /// The keys as last loaded.
    pub fn current(&self) -> Arc<KeySet> {
        self.current.read().clone()
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    /// Whether the keys come from configuration rather than the database.
    pub fn is_configured(&self) -> bool {
        self.store.is_none()
    }

    /// Adds a key of the configured algorithm unless a live one exists (one
    /// active or waiting to be).
    async fn ensure_key(&self) -> anyhow::Result<()> {
        let now = self.clock.now();
        let alg = self.policy.algorithm;
        let lead = self.policy.publish_lead;
        let retire_after = self.current().retire_after;
        // A first key signs at once: there is nothing else to sign with and
        // no verifier can have cached an older JWKS.
        let store = self.store()?;
        let first = store
            .signing_keys()
            .await
            .context("cannot load signing keys")?
            .iter()
            .all(|k| k.revoked_at.is_some());
        let activates_at = if first { now } else { now + lead };
        let key = self.new_key(alg, now, activates_at)?;
        let guard: KeyGuard = Arc::new(move |stored: &[StoredKey]| {
            !has_current_key_of(stored, alg, now, retire_after)
        });
        if store
            .insert_signing_key(&key, guard, &key_event(&key.kid, now))
            .await
            .context("cannot store a generated signing key")?
        {
            tracing::info!(kid = %key.kid, algorithm = %alg, activates_at = %key.activates_at,
                "generated a signing key and stored it in the database");
        }
        Ok(())
    }

    /// A new key of `alg`, sealed if a sealing key is set.
    fn new_key(
        &self,
        alg: SigningAlgorithm,
        now: OffsetDateTime,
        activates_at: OffsetDateTime,
    ) -> anyhow::Result<StoredKey> {
        let private = PrivateKey::generate(alg)?;
        self.stored(private, now, activates_at)
    }

    fn stored(
        &self,
        private: PrivateKey,
        now: OffsetDateTime,
        activates_at: OffsetDateTime,
    ) -> anyhow::Result<StoredKey> {
        let kid = new_kid();
        let public_jwk = private.public_jwk(&kid).map(|jwk| jwk.to_string());
        let plain = private.to_stored();
        // Why: a database dump or backup must not hand out the power to mint
        // tokens; the key id as associated data keeps a sealed key from being
        // moved to another row.
        let (secret, sealed) = match &self.sealing {
            Some(sealing) => (sealing.seal(&plain, kid.as_bytes()), true),
            None => (plain, false),
        };
        Ok(StoredKey {
            kid,
            algorithm: private.algorithm().as_str().into(),
            secret,
            sealed,
            public_jwk,
            created_at: now,
            activates_at,
            revoked_at: None,
        })
    }

    /// Reads the keys again; `true` if they changed. A set that cannot be
    /// built (a key this instance cannot open) leaves the current one.
    pub async fn reload(&self) -> anyhow::Result<bool> {
        self.reload_with(false).await
    }

    /// [`Self::reload`]; `strict`: a key that cannot be opened is an error
    /// (at start-up, where a wrong key-encryption key must stop the service)
    /// rather than a key that only verifies.
    async fn reload_with(&self, strict: bool) -> anyhow::Result<bool> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let stored = store
            .signing_keys()
            .await
            .context("cannot load signing keys")?;
        let current = self.current();
        let unchanged = stored.len() == current.keys.len()
            && stored
                .iter()
                .zip(current.fingerprint())
                .all(|(s, (kid, revoked))| s.kid == kid && s.revoked_at == revoked);
        if unchanged {
            return Ok(false);
        }
        let mut keys = Vec::with_capacity(stored.len());
        for key in stored {
            match self.ring_key(key.clone()) {
                Ok(ring_key) => keys.push(ring_key),
                Err(e) if !strict => {
                    // One key this instance cannot open (sealed under another
                    // key-encryption key) must not hold back the others'
                    // changes, revocations above all: it verifies with its
                    // public key, and never signs here.
                    tracing::error!(kid = %key.kid, error = %format!("{e:#}"),
                        "cannot open a signing key; it only verifies here");
                    if let Some(ring_key) = verify_only(key) {
                        keys.push(ring_key);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let set = KeySet {
            keys,
            retire_after: current.retire_after,
        };
        *self.current.write() = Arc::new(set);
        Ok(true)
    }

    /// A stored key made usable: unsealed, parsed.
    fn ring_key(&self, key: StoredKey) -> anyhow::Result<RingKey> {
        let algorithm: SigningAlgorithm = key
            .algorithm
            .parse()
            .map_err(|e: String| anyhow::anyhow!("signing key {}: {e}", key.kid))?;
        if key.revoked_at.is_some() {
            // Never used again: no need to open it.
            return Ok(RingKey::of_stored(
                key,
                algorithm,
                None,
                None,
                DecodingKey::from_secret(&[]),
            ));
        }
        let plain = if key.sealed {
            let sealing = self.sealing.as_ref().with_context(|| {
                format!(
                    "signing key {} is sealed: set AUTHGATE_KEY_ENCRYPTION_KEY",
                    key.kid
                )
            })?;
            sealing
                .open(&key.secret, key.kid.as_bytes())
                .with_context(|| {
                    format!(
                        "signing key {} does not open with AUTHGATE_KEY_ENCRYPTION_KEY",
                        key.kid
                    )
                })?
        } else {
            key.secret.clone()
        };
        let private = PrivateKey::from_stored(algorithm, plain)
            .with_context(|| format!("signing key {} is damaged", key.kid))?;
        let jwk = private.public_jwk(&key.kid);
        let (signer, decoding) = (private.signer()?, private.decoding_key()?);
        Ok(RingKey::of_stored(
            key,
            algorithm,
            jwk,
            Some(signer),
            decoding,
        ))
    }

    /// Adds a standby key of the configured algorithm, signing after the
    /// publish lead.
    pub async fn rotate(
        &self,
        client: &Client,
        actor: Option<Uuid>,
        audit: &Audit,
    ) -> AuthResult<KeyInfo> {
        let now = self.clock.now();
        let key = self.new_key(self.policy.algorithm, now, now + self.policy.publish_lead)?;
        self.add(key, client, actor, audit).await
    }

    /// Adds a standby key from a PEM private key.
    pub async fn import(
        &self,
        pem: &str,
        client: &Client,
        actor: Option<Uuid>,
        audit: &Audit,
    ) -> AuthResult<KeyInfo> {
        let private = PrivateKey::from_pem(pem).map_err(|e| AuthError::Invalid {
            field: "key",
            message: format!("{e:#}"),
        })?;
        let now = self.clock.now();
        let key = self.stored(private, now, now + self.policy.publish_lead)?;
        self.add(key, client, actor, audit).await
    }

    async fn add(
        &self,
        key: StoredKey,
        client: &Client,
        actor: Option<Uuid>,
        audit: &Audit,
    ) -> AuthResult<KeyInfo> {
        let kid = key.kid.clone();
        let event = audit
            .event(client, actor, AuditKind::KeyRotated)
            .detail(kid.clone());
        let now = self.clock.now();
        // Why a bound: every key waiting is published and parsed by every
        // instance; a runaway script must not grow the key set without end.
        let room: KeyGuard = Arc::new(move |stored: &[StoredKey]| {
            stored
                .iter()
                .filter(|k| k.revoked_at.is_none() && k.activates_at > now)
                .count()
                < MAX_STANDBY_KEYS
        });
        if !self
            .store()?
            .insert_signing_key(&key, room, &Effects::audit(event))
            .await?
        {
            return Err(AuthError::TooManyKeys);
        }
        self.reload().await?;
        self.info(&kid).ok_or(AuthError::NotFound)
    }

    /// Adds a key if the newest live one is older than the rotation period,
    /// once across all instances; the new key's id if one was added.
    pub async fn rotate_if_due(&self) -> anyhow::Result<Option<String>> {
        let Some(period) = self.policy.rotation else {
            return Ok(None);
        };
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let now = self.clock.now();
        let newest = self
            .current()
            .keys
            .iter()
            .filter(|k| k.revoked_at.is_none())
            .map(|k| k.created_at)
            .max();
        if newest.is_some_and(|at| now < at + period) {
            return Ok(None);
        }
        let key = self.new_key(self.policy.algorithm, now, now + self.policy.publish_lead)?;
        let kid = key.kid.clone();
        // Every instance may decide this at once; the guard, run with key
        // writers held off, lets only the first insert.
        let since = now - period;
        let guard: KeyGuard = Arc::new(move |stored: &[StoredKey]| {
            !stored
                .iter()
                .any(|k| k.revoked_at.is_none() && k.created_at > since)
        });
        let event = key_event(&kid, now);
        if !store.insert_signing_key(&key, guard, &event).await? {
            self.reload().await?;
            return Ok(None);
        }
        tracing::info!(kid = %kid, "rotated the signing key on schedule");
        self.reload().await?;
        Ok(Some(kid))
    }

    /// Revokes a key at once. If it was signing, a new key signs in its place
    /// at once: a compromised key must stop signing now, and verifiers meeting
    /// the new `kid` fetch the JWKS again.
    pub async fn revoke(
        &self,
        kid: &str,
        client: &Client,
        actor: Option<Uuid>,
        audit: &Audit,
    ) -> AuthResult<KeyInfo> {
        let store = self.store()?;
        let now = self.clock.now();
        let replacement = self.new_key(self.policy.algorithm, now, now)?;
        let revoked = kid.to_owned();
        let guard: KeyGuard = Arc::new(move |stored: &[StoredKey]| {
            // Whether the key was the one signing until this revocation.
            stored
                .iter()
                .rev()
                .find(|k| {
                    k.activates_at <= now
                        && (k.revoked_at.is_none() || k.kid == revoked && k.revoked_at == Some(now))
                })
                .is_some_and(|k| k.kid == revoked)
        });
        if !store
            .revoke_signing_key(
                kid,
                now,
                Some((replacement, guard)),
                &Effects::audit(
                    audit
                        .event(client, actor, AuditKind::KeyRevoked)
                        .detail(kid.to_owned()),
                ),
            )
            .await?
        {
            return Err(AuthError::NotFound);
        }
        self.reload().await?;
        self.info(kid).ok_or(AuthError::NotFound)
    }

    /// The time on the keys' clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The JWKS document as of now.
    pub fn jwks(&self) -> Value {
        self.current().jwks(self.clock.now())
    }

    /// The key with that id, as the list shows it.
    pub fn info(&self, kid: &str) -> Option<KeyInfo> {
        self.list().into_iter().find(|k| k.kid == kid)
    }

    /// Every key, as the list shows it.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.current().infos(self.clock.now())
    }

    /// Deletes the keys that expired or were revoked more than a token
    /// lifetime ago.
    pub async fn purge(&self) -> anyhow::Result<u64> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let now = self.clock.now();
        let set = self.current();
        let gone: Vec<String> = set
            .keys
            .iter()
            .zip(set.states(now))
            .filter(|(k, s)| match s {
                KeyState::Expired => true,
                KeyState::Revoked => k.revoked_at.is_some_and(|at| at + set.retire_after < now),
                _ => false,
            })
            .map(|(k, _)| k.kid.clone())
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let deleted = store.delete_signing_keys(&gone).await?;
        self.reload().await?;
        Ok(deleted)
    }
}

/// Whether `stored` holds a key of `alg` that is active or waiting to be.
fn has_current_key_of(
    stored: &[StoredKey],
    alg: SigningAlgorithm,
    now: OffsetDateTime,
    retire_after: Duration,
) -> bool {
    let times: Vec<_> = stored
        .iter()
        .map(|k| (k.activates_at, k.revoked_at))
        .collect();
    stored
        .iter()
        .zip(key_states(&times, now, retire_after))
        .any(|(k, s)| {
            k.algorithm == alg.as_str() && matches!(s, KeyState::Active | KeyState::Standby)
        })
}

/// A key known only by its public JWK: it verifies, and never signs.
fn verify_only(key: StoredKey) -> Option<RingKey> {
    let algorithm: SigningAlgorithm = key.algorithm.parse().ok()?;
    let jwk: Value = serde_json::from_str(key.public_jwk.as_deref()?).ok()?;
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).ok()?;
    let decoding = DecodingKey::from_jwk(&parsed).ok()?;
    Some(RingKey::of_stored(
        key,
        algorithm,
        Some(jwk),
        None,
        decoding,
    ))
}

/// The event of a key added by the service itself (the first key, a new
/// algorithm, a scheduled rotation): no actor.
fn key_event(kid: &str, at: OffsetDateTime) -> Effects {
    Effects::audit(
        AuditContext::default()
            .record(AuditKind::KeyRotated, at)
            .detail(kid),
    )
}

/// A random key id: 72 bits, URL-safe.
fn new_kid() -> String {
    let mut id = [0u8; 9];
    rand::fill(&mut id);
    URL_SAFE_NO_PAD.encode(id)
}

/// The key given in configuration. Its id is derived from a hash of the key,
/// so every instance sharing the secret agrees on it without revealing it.
fn configured_key(secret: &[u8]) -> anyhow::Result<RingKey> {
    let digest = Sha256::digest(secret);
    let private = PrivateKey::from_stored(SigningAlgorithm::Hs256, secret.to_vec())?;
    RingKey::new(
        format!("cfg-{}", URL_SAFE_NO_PAD.encode(&digest[..9])),
        &private,
        OffsetDateTime::UNIX_EPOCH,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(900);

    fn at(minutes: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(minutes)
    }

    #[test]
    fn the_newest_activated_key_signs_and_a_new_one_waits_on_standby() {
        let keys = [(at(0), None), (at(60), None)];
        assert_eq!(
            key_states(&keys, at(30), TTL),
            [KeyState::Active, KeyState::Standby]
        );
        assert_eq!(
            key_states(&keys, at(60), TTL),
            [KeyState::Retiring, KeyState::Active]
        );
    }

    #[test]
    fn a_replaced_key_verifies_until_its_last_token_has_expired() {
        let keys = [(at(0), None), (at(60), None)];
        assert_eq!(key_states(&keys, at(74), TTL)[0], KeyState::Retiring);
        assert_eq!(key_states(&keys, at(75), TTL)[0], KeyState::Expired);
    }

    #[test]
    fn a_revoked_key_neither_signs_nor_verifies_and_the_one_before_it_signs() {
        let keys = [(at(0), None), (at(60), Some(at(61)))];
        assert_eq!(
            key_states(&keys, at(62), TTL),
            [KeyState::Active, KeyState::Revoked]
        );
        assert!(!KeyState::Revoked.is_published());
    }

    #[test]
    fn a_key_replaced_by_a_revoked_one_still_retires_from_that_ones_start() {
        let keys = [(at(0), None), (at(60), Some(at(61))), (at(61), None)];
        assert_eq!(
            key_states(&keys, at(62), TTL),
            [KeyState::Retiring, KeyState::Revoked, KeyState::Active]
        );
        assert_eq!(key_states(&keys, at(75), TTL)[0], KeyState::Expired);
    }
}
