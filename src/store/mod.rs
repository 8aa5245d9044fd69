//! Persistence behind one small trait, with a PostgreSQL and a SQLite
//! implementation. Both are held to the same behaviour by one conformance
//! suite (`tests/store.rs`). Every multi-step change runs in one transaction.

mod postgres;
mod sqlite;

use std::{future::Future, sync::Arc};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    config::{Backend, DatabaseUrl},
    crypto::tokens::KeyMaterial,
    domain::{Email, Roles, Username},
};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the change; names the field.
    #[error("{0} already taken")]
    Conflict(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A user as the API shows it: never with its password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub roles: Roles,
    pub is_active: bool,
    pub created_at: OffsetDateTime,
}

/// A user with the password hash, for login only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub username: Option<Username>,
    pub email: Option<Email>,
    pub password_hash: String,
    pub roles: Roles,
    pub created_at: OffsetDateTime,
}

impl NewUser {
    /// The user as stored by a successful insert.
    pub fn view(&self) -> User {
        User {
            id: self.id,
            username: self.username.as_ref().map(|u| u.as_str().to_owned()),
            email: self.email.as_ref().map(|e| e.as_str().to_owned()),
            email_verified: false,
            roles: self.roles.clone(),
            is_active: true,
            created_at: self.created_at,
        }
    }
}

/// A new session with its first refresh token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: OffsetDateTime,
    /// Absolute end of the session: no refresh goes past it.
    pub expires_at: OffsetDateTime,
    pub refresh_hash: [u8; 32],
    pub refresh_expires_at: OffsetDateTime,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live: it is now used, and `new_hash` replaces it.
    Rotated {
        session_id: Uuid,
        user: User,
        refresh_expires_at: OffsetDateTime,
    },
    /// The token had been used before: the session is now revoked.
    Reused { session_id: Uuid, user_id: Uuid },
    /// Unknown, expired, or its session has ended.
    Invalid,
}

/// An admin's change to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub is_active: Option<bool>,
    pub roles: Option<Roles>,
}

/// Why a session ended; stored for audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    LogoutAll,
    RefreshTokenReuse,
    UserChanged,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::RefreshTokenReuse => "refresh_token_reuse",
            RevokeReason::UserChanged => "user_changed",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// A trivial round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_user(&self, user: &NewUser) -> StoreResult<User>;
    /// Creates the user unless its username or email is taken; `true` if created.
    async fn create_user_if_absent(&self, user: &NewUser) -> StoreResult<bool>;
    /// Finds a user by normalized username or normalized email.
    async fn find_credentials(&self, login: &str) -> StoreResult<Option<Credentials>>;
    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>>;
    async fn set_password_hash(&self, id: Uuid, hash: &str, now: OffsetDateTime)
    -> StoreResult<()>;
    /// Users ordered by id (time-ordered UUIDv7), after `after`.
    async fn list_users(&self, limit: u32, after: Option<Uuid>) -> StoreResult<Vec<User>>;
    /// Applies `changes` and, in the same transaction, ends the user's sessions
    /// so that no token carries stale roles or outlives a disabled account.
    async fn update_user(
        &self,
        id: Uuid,
        changes: &UserChanges,
        now: OffsetDateTime,
    ) -> StoreResult<Option<User>>;

    async fn create_session(&self, session: &NewSession) -> StoreResult<()>;
    /// Atomically uses the refresh token with hash `presented` and stores
    /// `new_hash` in its place, expiring at `min(now + ttl, session end)`.
    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        new_hash: &[u8; 32],
        refresh_ttl: time::Duration,
        now: OffsetDateTime,
    ) -> StoreResult<Rotation>;
    /// Ends the session the refresh token belongs to; its id if one was live.
    async fn revoke_session_by_refresh(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<Uuid>>;
    async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> StoreResult<u64>;
    /// The user of the session if the session is neither revoked nor expired
    /// and the user is active; `None` otherwise.
    async fn session_user(
        &self,
        session_id: Uuid,
        now: OffsetDateTime,
    ) -> StoreResult<Option<User>> {
        let live = self.live_sessions(&[session_id], now).await?;
        Ok(live.into_iter().next().map(|(_, user)| user))
    }
    /// The live sessions among `session_ids`, each with its user: one query
    /// for many sessions (absent ones are revoked, expired, gone, or their
    /// user is disabled).
    async fn live_sessions(
        &self,
        session_ids: &[Uuid],
        now: OffsetDateTime,
    ) -> StoreResult<Vec<(Uuid, User)>>;

    async fn signing_keys(&self) -> StoreResult<Vec<KeyMaterial>>;
    /// Inserts the key unless one already exists (another instance may have
    /// won the race); then returns all keys, oldest first.
    async fn insert_first_signing_key(
        &self,
        key: &KeyMaterial,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<KeyMaterial>>;

    /// Deletes expired refresh tokens and sessions, and sessions revoked before
    /// `revoked_before` (their access tokens have all expired by then).
    async fn purge(&self, now: OffsetDateTime, revoked_before: OffsetDateTime) -> StoreResult<u64>;
}

/// Connects to the database the URL names.
pub async fn connect(url: &DatabaseUrl) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match url.backend() {
        Backend::Sqlite => Arc::new(SqliteStore::connect(url.expose()).await?),
        Backend::Postgres => Arc::new(PgStore::connect(url.expose()).await?),
    })
}

/// Connects and applies pending migrations; errors name the setting.
pub async fn open(url: &DatabaseUrl) -> anyhow::Result<Arc<dyn Store>> {
    use anyhow::Context;
    let store = connect(url)
        .await
        .with_context(|| format!("cannot connect to DATABASE_URL {url}"))?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(store)
}

/// Runs a multi-statement change as a task of its own, so that it runs to its
/// commit or rollback even if the request that started it goes away. A
/// request future dropped in the middle of a transaction (the client hung
/// up) could otherwise hand its connection back to the pool still inside the
/// transaction, and later statements on it would silently never commit.
async fn detached<T: Send + 'static>(
    change: impl Future<Output = StoreResult<T>> + Send + 'static,
) -> StoreResult<T> {
    tokio::spawn(change).await.map_err(|e| {
        StoreError::Database(sqlx::Error::Protocol(format!(
            "a database change did not finish: {e}"
        )))
    })?
}

/// Maps a unique violation to the field it concerns.
fn map_unique(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err
        && db.is_unique_violation()
    {
        let what = db.constraint().unwrap_or_else(|| db.message());
        return StoreError::Conflict(if what.contains("email") {
            "email"
        } else {
            "username"
        });
    }
    StoreError::Database(err)
}

/// The smaller of the refresh token's own lifetime and the session's end.
fn refresh_expiry(
    now: OffsetDateTime,
    ttl: time::Duration,
    session_end: OffsetDateTime,
) -> OffsetDateTime {
    (now + ttl).min(session_end)
}
