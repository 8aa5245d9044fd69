//! OAuth clients: the applications that send users here to log in.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Effects, SessionAuth, StoreResult};

/// A registered client as stored. The secret is kept only as its SHA-256
/// (it is 256 random bits, so a fast hash is enough); a public client has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub id: String,
    pub name: String,
    pub secret_hash: Option<[u8; 32]>,
    /// Exactly as registered, compared byte for byte.
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// The scopes it may ask for, space-separated.
    pub scopes: String,
    /// Trusted by the operator: its users are not asked for consent.
    pub first_party: bool,
    pub created_at: OffsetDateTime,
}

impl OAuthClient {
    /// Whether the client holds no secret (a SPA, a mobile app).
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }
}

/// An authorization code as issued, by the SHA-256 of the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationCode {
    pub code_hash: [u8; 32],
    pub client_id: String,
    pub user_id: Uuid,
    pub redirect_uri: String,
    /// Space-separated.
    pub scope: String,
    pub nonce: Option<String>,
    /// The PKCE challenge (S256), base64url.
    pub code_challenge: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A code as stored, with how its user's session was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCode {
    pub code: AuthorizationCode,
    pub auth: SessionAuth,
}

/// The session an exchanged code opens for its client. Its user, roles and
/// authentication come from the code (and the user as the exchange finds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClientSession {
    pub id: Uuid,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub refresh_hash: [u8; 32],
    pub refresh_expires_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// What a user allowed a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub client_id: String,
    pub client_name: String,
    /// Space-separated.
    pub scope: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What presenting a code led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRedemption {
    /// The code was live and passed the check: it is used now, and the
    /// session is open.
    Redeemed(Box<IssuedCode>),
    /// The code was live but failed the check (another client, another
    /// redirect URI, a wrong PKCE verifier): it is used up all the same.
    Refused,
    /// The code had been exchanged before: the session that exchange
    /// opened is ended now (RFC 6749 §4.1.2).
    Replayed,
    /// Unknown or expired, or its user is gone or disabled.
    Invalid,
}

/// What a code must pass before a session opens for it.
pub type CodeCheck = std::sync::Arc<dyn Fn(&AuthorizationCode) -> bool + Send + Sync>;

#[async_trait]
pub trait OAuthStore: Send + Sync + 'static {
    /// Registers the client, with `effects`; [`super::StoreError::Conflict`]
    /// if the id is taken.
    async fn add_client(&self, client: &OAuthClient, effects: &Effects) -> StoreResult<()>;
    /// Every client, oldest first.
    async fn clients(&self) -> StoreResult<Vec<OAuthClient>>;
    async fn client(&self, id: &str) -> StoreResult<Option<OAuthClient>>;
    /// Deletes the client, its codes and grants, and ends the sessions it
    /// opened, with `effects`; `false` if there is none.
    async fn delete_client(
        &self,
        id: &str,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Stores a code for the live session `session_id` of its user, taking
    /// the session's authentication; `false` (nothing stored) if the
    /// session has ended.
    async fn add_code(&self, code: &AuthorizationCode, session_id: Uuid) -> StoreResult<bool>;
    /// Uses up the code with that hash, once: of racing calls one gets it.
    /// If it passes `check`, opens `session` for its client and user (if the
    /// user is still active) in the same transaction.
    async fn redeem_code(
        &self,
        code_hash: &[u8; 32],
        now: OffsetDateTime,
        check: CodeCheck,
        session: &NewClientSession,
        effects: &Effects,
    ) -> StoreResult<CodeRedemption>;
    /// The scopes the user allowed the client, space-separated.
    async fn grant(&self, user_id: Uuid, client_id: &str) -> StoreResult<Option<String>>;
    /// What the user allowed, oldest first.
    async fn grants(&self, user_id: Uuid) -> StoreResult<Vec<Grant>>;
    /// Takes back what the user allowed the client and ends the sessions
    /// the client holds for the user, with `effects`, in one transaction;
    /// `false` if there was neither.
    async fn revoke_grant(
        &self,
        user_id: Uuid,
        client_id: &str,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Records that the user allowed the client `scope` (replacing what
    /// was allowed before).
    async fn save_grant(
        &self,
        user_id: Uuid,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> StoreResult<()>;
}
