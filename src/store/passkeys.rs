//! Passkeys (WebAuthn credentials) and the state of their ceremonies
//! between a `start` and its `finish`.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Effects, StoreResult};

/// A passkey as stored. `credential` is the WebAuthn library's record of
/// it (public key, counter, flags), as JSON; `credential_id` is the id the
/// authenticator gave it, by which a login finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub credential_id: Vec<u8>,
    pub credential: String,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

/// What a ceremony's state is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyPurpose {
    /// Registering a passkey for a logged-in user.
    Register,
    /// Logging in with a passkey.
    Login,
    /// A passkey as the second step of a password login.
    SecondFactor,
}

impl CeremonyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyPurpose::Register => "register",
            CeremonyPurpose::Login => "login",
            CeremonyPurpose::SecondFactor => "second_factor",
        }
    }
}

/// A ceremony between its `start` and its `finish`: the library's state,
/// as JSON, for one use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceremony {
    pub id: Uuid,
    pub purpose: CeremonyPurpose,
    /// Whose ceremony it is, when that is known at the start.
    pub user_id: Option<Uuid>,
    pub state: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// What came of adding a passkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Added,
    /// The user holds as many passkeys as allowed.
    TooMany,
    /// Asked to be the first factor, but the user has one.
    NotFirst,
    /// The session adding it has ended.
    SessionEnded,
}

#[async_trait]
pub trait PasskeyStore: Send + Sync + 'static {
    /// Stores a ceremony's state until its finish.
    async fn add_ceremony(&self, ceremony: &Ceremony) -> StoreResult<()>;
    /// Takes a ceremony of `purpose` for its finish: it is gone afterwards,
    /// whatever the finish decides (the library does not make a state
    /// single-use), so of racing finishes one gets it. `None` if it is
    /// unknown, of another purpose, or expired by `now`.
    async fn take_ceremony(
        &self,
        id: Uuid,
        purpose: CeremonyPurpose,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Ceremony>>;
    /// Stores a new passkey, with `effects`, from the user's session
    /// `session_id` if it is still live, unless the user holds `max` already. With `first`, only as the user's first factor, and with
    /// these recovery codes in place of any. A credential id already stored
    /// (for any user) is [`super::StoreError::Conflict`].
    async fn add_passkey(
        &self,
        passkey: &StoredPasskey,
        session_id: Option<Uuid>,
        first: Option<&[[u8; 32]]>,
        max: u32,
        effects: &Effects,
    ) -> StoreResult<Added>;
    /// The user's passkeys, oldest first.
    async fn passkeys(&self, user_id: Uuid) -> StoreResult<Vec<StoredPasskey>>;
    /// The passkey with this credential id, whoever's it is.
    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> StoreResult<Option<StoredPasskey>>;
    /// Records a use: the credential as the login left it (its counter),
    /// and when, if the stored credential is still `read`, as the login read
    /// it. `false` if it changed meanwhile (another login counted) or the
    /// passkey is gone.
    async fn use_passkey(
        &self,
        id: Uuid,
        read: &str,
        credential: &str,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Deletes one passkey of the user, with `effects` (and the recovery
    /// codes, if no factor is left); `false` if the user has no such passkey.
    async fn delete_passkey(&self, user_id: Uuid, id: Uuid, effects: &Effects)
    -> StoreResult<bool>;
}
