//! OAuth clients: the applications that send users here to log in.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Effects, StoreResult};

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

#[async_trait]
pub trait OAuthStore: Send + Sync + 'static {
    /// Registers the client, with `effects`; [`super::StoreError::Conflict`]
    /// if the id is taken.
    async fn add_client(&self, client: &OAuthClient, effects: &Effects) -> StoreResult<()>;
    /// Every client, oldest first.
    async fn clients(&self) -> StoreResult<Vec<OAuthClient>>;
    async fn client(&self, id: &str) -> StoreResult<Option<OAuthClient>>;
    /// Deletes the client, with `effects`; `false` if there is none.
    async fn delete_client(&self, id: &str, effects: &Effects) -> StoreResult<bool>;
}
