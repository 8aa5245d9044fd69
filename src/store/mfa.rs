//! Second factors: TOTP factors with their replay guard, recovery codes, and
//! the challenges of a login's second step.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Effects, StoreResult};

/// What kind of second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorKind {
    Totp,
}

impl FactorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FactorKind::Totp => "totp",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "totp" => Some(FactorKind::Totp),
            _ => None,
        }
    }
}

/// A factor as stored. `secret` is sealed: only the service opens it.
#[derive(Debug, Clone)]
pub struct Factor {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: FactorKind,
    pub name: String,
    pub secret: Option<Vec<u8>>,
    pub confirmed_at: Option<OffsetDateTime>,
    /// The last TOTP time step accepted: it and every earlier one are spent.
    pub last_used_step: Option<i64>,
    pub last_used_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

/// A login's second step, by the SHA-256 of its `mfa_token`.
#[derive(Debug, Clone)]
pub struct NewChallenge {
    pub token_hash: [u8; 32],
    pub user_id: Uuid,
    /// The password hash the first step checked.
    pub password_hash: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A live challenge after one more attempt was counted on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub user_id: Uuid,
    /// The password hash the first step checked.
    pub password_hash: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// When the password step was passed.
    pub created_at: OffsetDateTime,
}

#[async_trait]
pub trait MfaStore: Send + Sync + 'static {
    /// Stores a new, unconfirmed factor. Unconfirmed factors of the same
    /// user and kind older than `stale_before` are dropped.
    async fn add_factor(&self, factor: &Factor, stale_before: OffsetDateTime) -> StoreResult<()>;
    /// The user's factors, confirmed or not, oldest first.
    async fn factors(&self, user_id: Uuid) -> StoreResult<Vec<Factor>>;
    /// Confirms the user's unconfirmed factor, marking `step` used, and
    /// replaces the user's recovery codes with `recovery_hashes`, with
    /// `effects`, in one transaction; `false` (and nothing changed) if the
    /// user has no such unconfirmed factor. With `first_only`, a user who has
    /// a factor already is [`super::StoreError::Conflict`]`("factor")`.
    // The change's own parts: a struct for them would be used by this one
    // call alone.
    #[allow(clippy::too_many_arguments)]
    async fn confirm_factor(
        &self,
        user_id: Uuid,
        factor_id: Uuid,
        step: i64,
        now: OffsetDateTime,
        recovery_hashes: &[[u8; 32]],
        first_only: bool,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Spends TOTP time step `step` of a confirmed factor, if it is later
    /// than the last one spent: of racing calls with one code exactly one
    /// succeeds.
    async fn use_totp_step(
        &self,
        factor_id: Uuid,
        step: i64,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Deletes one factor of the user, with `effects`; when no factor is
    /// left (confirmed, or a passkey), the recovery codes go too. `false` if
    /// there was none.
    async fn delete_factor(
        &self,
        user_id: Uuid,
        factor_id: Uuid,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Deletes every factor, passkey and recovery code of the user and ends
    /// every session of the user as of `now`, with `effects`, in one change:
    /// no login that proved a factor, nor a factor added from a session, can
    /// outlive it. How many factors and passkeys.
    async fn delete_factors(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<u64>;
    /// Replaces the user's recovery codes, with `effects`, if the user has
    /// a factor (a confirmed TOTP factor or a passkey); `false` if not.
    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        hashes: &[[u8; 32]],
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Spends one unused recovery code of the user; `false` if there is no
    /// such unused code.
    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// How many unused recovery codes the user has.
    async fn recovery_codes_left(&self, user_id: Uuid) -> StoreResult<u32>;
    /// Whether the user has a factor that counts: a confirmed TOTP factor
    /// or a passkey (one query, for every password login).
    async fn has_factor(&self, user_id: Uuid) -> StoreResult<bool>;
    /// Stores a login's second step.
    async fn create_challenge(&self, challenge: &NewChallenge) -> StoreResult<()>;
    /// The user of the live challenge, without counting an attempt.
    async fn challenge_user(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<Uuid>>;
    /// Counts one attempt on the live challenge, if it has had fewer than
    /// `max_attempts`: the challenge after it, or `None` if it is unknown,
    /// expired or out of attempts. Racing calls each count.
    async fn attempt_challenge(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
        max_attempts: u32,
    ) -> StoreResult<Option<Attempt>>;
    /// Ends a challenge (it was passed); `false` if it was gone already.
    async fn end_challenge(&self, token_hash: &[u8; 32]) -> StoreResult<bool>;
}
