//! Persistence, the only place SQL lives: one trait per aggregate
//! ([`UserStore`], [`SessionStore`], [`KeyStore`]), joined by [`Store`], with a
//! PostgreSQL and a SQLite implementation. Both are held to the same
//! behaviour by one conformance suite (`tests/store.rs`). Every multi-step
//! change runs in one transaction. The backends share their SQL (`sql.rs`);
//! each keeps only what differs.

mod lifecycle;
mod mfa;
mod oauth;
mod passkeys;
mod postgres;
mod sql;
mod sqlite;

use std::{future::Future, sync::Arc};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    config::{Backend, DatabaseUrl},
    domain::{Email, Role, Roles, User, Username},
};

pub use lifecycle::{
    AuditContext, AuditFilter, AuditKind, AuditRecord, Effects, FlowPurpose, FlowToken, MailInfo,
    MailStatus, NewFlowToken, OutboxMail, Outcome, QueuedMail, Redeemed, Redemption,
};
pub use mfa::{Attempt, Factor, FactorKind, MfaStore, NewChallenge};
pub use oauth::{
    AuthorizationCode, CodeCheck, CodeRedemption, Grant, IssuedCode, NewClientSession, OAuthClient,
    OAuthStore,
};
pub use passkeys::{Added, Ceremony, CeremonyPurpose, PasskeyStore, StoredPasskey};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the change; names the field.
    #[error("{0} already taken")]
    Conflict(&'static str),
    /// The change would leave no active admin.
    #[error("the last active admin cannot be demoted or disabled")]
    LastAdmin,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The longest a request waits for the database: for a connection, for a
/// statement, for a lock. Beyond it the request fails as unavailable (503).
pub const DB_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl StoreError {
    /// Whether the database could not be reached or could not take the
    /// request now (down, restarting, out of connections, locked, out of
    /// disk, a statement over its time), as opposed to refusing the request
    /// itself: the request may succeed if retried later.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(err) = self else {
            return false;
        };
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
            _ => false,
        }
    }
}

/// SQLSTATE codes (PostgreSQL) and result codes (SQLite) of a database that
/// cannot serve now.
fn unavailable_code(code: &str) -> bool {
    // PostgreSQL: connection exceptions (08…), insufficient resources
    // (53…: disk full, out of memory, too many connections), shutting down
    // or starting up (57P0…), a statement or lock wait over its time
    // (57014, 55P03), a read-only standby (25006).
    if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
        return true;
    }
    if matches!(code, "57014" | "55P03" | "25006") {
        return true;
    }
    // SQLite: the extended code's primary part: BUSY, LOCKED, READONLY
    // (the file was moved or deleted), IOERR, FULL, CANTOPEN.
    code.parse::<i32>()
        .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
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
    /// Whether the address counts as verified from the start (an admin
    /// account set up by the operator).
    pub email_verified: bool,
    pub created_at: OffsetDateTime,
}

impl NewUser {
    /// The user as stored by a successful insert.
    pub fn view(&self) -> User {
        User {
            id: self.id,
            username: self.username.as_ref().map(|u| u.as_str().to_owned()),
            email: self.email.as_ref().map(|e| e.as_str().to_owned()),
            email_verified: self.email_verified,
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
    /// Absolute end of the session: no refresh token of it works past it.
    pub expires_at: OffsetDateTime,
    pub refresh_hash: [u8; 32],
    pub refresh_expires_at: OffsetDateTime,
    /// The client's `User-Agent`, as sent (bounded by the caller).
    pub user_agent: Option<String>,
    /// The client's IP address.
    pub ip: Option<String>,
    /// The user's password hash and roles as the login saw them: the session
    /// is opened only if they are still so (and the user active), so that a
    /// password or role change committed during the login is not outlived.
    pub password_hash: String,
    pub roles: Roles,
    /// How the login authenticated (its time is `created_at`).
    pub level: String,
    pub methods: Vec<String>,
    /// The factor the login proved, which must still be there: a reset or
    /// removal committed during the login is not outlived either.
    pub factor: Option<ProvedFactor>,
}

/// A factor a new session rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvedFactor {
    /// This confirmed TOTP factor or passkey.
    This(Uuid),
    /// Any factor of the user (a recovery code stands in for one).
    Any,
}

/// A live session as its user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: Uuid,
    pub created_at: OffsetDateTime,
    /// The last refresh; `None` before the first.
    pub last_used_at: Option<OffsetDateTime>,
    pub expires_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// How a session was authenticated, kept with it so that the tokens it is
/// refreshed into say the same: the assurance level (`aal1`, `aal2`), the
/// RFC 8176 methods, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAuth {
    pub level: String,
    pub methods: Vec<String>,
    pub at: OffsetDateTime,
}

impl SessionAuth {
    /// As the columns hold it: the methods comma-separated.
    pub(crate) fn from_columns(level: String, methods: &str, at: OffsetDateTime) -> Self {
        Self {
            level,
            methods: methods
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
            at,
        }
    }

    pub(crate) fn methods_column(&self) -> String {
        self.methods.join(",")
    }
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live: it is now used, and the new hash replaces it.
    Rotated {
        session_id: Uuid,
        user: User,
        /// The absolute end of the session.
        session_expires_at: OffsetDateTime,
        /// How the session was authenticated.
        auth: SessionAuth,
        /// The scopes of a session an OAuth client holds.
        scope: Option<String>,
    },
    /// The token had been used before: the session is now revoked.
    Reused { session_id: Uuid, user_id: Uuid },
    /// The token was used moments ago (within the grace window) and its
    /// successor is still unused: that successor, sealed for the presented
    /// token, to be given again. Nothing changed.
    Repeated {
        session_id: Uuid,
        user: User,
        session_expires_at: OffsetDateTime,
        auth: SessionAuth,
        scope: Option<String>,
        /// When the token was used: the successor pair's issue time.
        rotated_at: OffsetDateTime,
        sealed_next: Vec<u8>,
        next_expires_at: OffsetDateTime,
    },
    /// Unknown, expired, or its session has ended.
    Invalid,
}

/// A refresh token presented for rotation, and what to store in its place.
#[derive(Debug, Clone)]
pub struct RefreshRequest {
    pub presented: [u8; 32],
    pub next: [u8; 32],
    pub next_expires_at: OffsetDateTime,
    pub now: OffsetDateTime,
    /// The next token sealed for the presented one, kept beside the used
    /// token for the reuse grace window; none in strict mode.
    pub sealed_next: Option<Vec<u8>>,
    /// Tokens used after this may be presented again (the grace window).
    pub grace_since: Option<OffsetDateTime>,
    /// The OAuth client the session must be held by; none: the service's
    /// own sessions only. A token of another kind of session is invalid.
    pub client_id: Option<String>,
}

/// A live refresh token and its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRefreshToken {
    pub session_id: Uuid,
    pub user: User,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// How the session was authenticated.
    pub auth: SessionAuth,
    /// The OAuth client holding the session; none for the service's own.
    pub client_id: Option<String>,
}

/// An admin's change to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub is_active: Option<bool>,
    /// Replaces the roles.
    pub roles: Option<Roles>,
    /// Added to the roles (after `roles`, if both): the user's roles as of
    /// the change itself, not as a caller read them before.
    pub add_role: Option<Role>,
    pub email_verified: Option<bool>,
}

/// A user after [`UserStore::update_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatedUser {
    pub user: User,
    /// Whether the roles or the active flag really changed, and the user's
    /// sessions were therefore ended.
    pub sessions_ended: bool,
}

/// Which users a listing shows; `None` is no condition.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// A prefix of the normalized username or email.
    pub prefix: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

/// Why a session ended; stored for audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    LogoutAll,
    RefreshTokenReuse,
    UserChanged,
    /// The user ended it from another session.
    EndedByUser,
    PasswordChanged,
    /// A password reset link was used.
    PasswordReset,
    /// The OAuth client that opened it was deleted.
    ClientDeleted,
    /// The authorization code it was opened with was presented again.
    CodeReplay,
    /// The user took back what they allowed its client.
    GrantRevoked,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::RefreshTokenReuse => "refresh_token_reuse",
            RevokeReason::UserChanged => "user_changed",
            RevokeReason::EndedByUser => "ended_by_user",
            RevokeReason::PasswordChanged => "password_changed",
            RevokeReason::PasswordReset => "password_reset",
            RevokeReason::ClientDeleted => "client_deleted",
            RevokeReason::CodeReplay => "code_replay",
            RevokeReason::GrantRevoked => "grant_revoked",
        }
    }
}

/// A signing key as stored: bytes and times, interpreted by the key ring.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    /// The JOSE algorithm name (`EdDSA`, `ES256`, `RS256`, `HS256`).
    pub algorithm: String,
    /// The private key (or the HMAC secret); sealed if `sealed`.
    pub secret: Vec<u8>,
    pub sealed: bool,
    /// The public key as a JWK (JSON text); none for a symmetric key.
    pub public_jwk: Option<String>,
    pub created_at: OffsetDateTime,
    /// When it starts signing.
    pub activates_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// Whether a key may be inserted, decided with every stored key in view
/// while no other writer can insert or revoke one.
pub type KeyGuard = Arc<dyn Fn(&[StoredKey]) -> bool + Send + Sync>;

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Accounts.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Creates the user, with `effects` in the same transaction.
    async fn create_user(&self, user: &NewUser, effects: &Effects) -> StoreResult<User>;
    /// Creates the user unless its username or email is taken; `true` if created.
    async fn create_user_if_absent(&self, user: &NewUser) -> StoreResult<bool>;
    /// Finds a user by normalized username or normalized email.
    async fn find_credentials(&self, login: &str) -> StoreResult<Option<Credentials>>;
    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>>;
    /// The user with that id and its password hash.
    async fn get_credentials(&self, id: Uuid) -> StoreResult<Option<Credentials>>;
    /// Sets a new password hash and, in the same transaction, ends every
    /// session of the user but `keep` and every link sent to them (a reset
    /// link must not outlive the password it was for); `false` if there is
    /// no such user.
    async fn change_password(
        &self,
        id: Uuid,
        hash: &str,
        keep: Option<Uuid>,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Sets the username; `None` if there is no such user,
    /// [`StoreError::Conflict`] if another account has it.
    async fn change_username(
        &self,
        id: Uuid,
        username: &Username,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<Option<User>>;
    /// Deletes the user, its sessions and tokens; `false` if there is no such
    /// user. Refuses ([`StoreError::LastAdmin`]) to delete the last active admin.
    async fn delete_user(&self, id: Uuid, effects: &Effects) -> StoreResult<bool>;
    /// Replaces the password hash `old` by `new` (a re-hash with current
    /// parameters); nothing if the hash is no longer `old`, so that a
    /// password changed meanwhile is never undone.
    async fn upgrade_password_hash(
        &self,
        id: Uuid,
        old: &str,
        new: &str,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Users matching `filter`, ordered by id (time-ordered UUIDv7), after `after`.
    async fn list_users(
        &self,
        filter: &UserFilter,
        limit: u32,
        after: Option<Uuid>,
    ) -> StoreResult<Vec<User>>;
    /// Applies `changes`. When the roles or the active flag really change, it
    /// ends the user's sessions in the same transaction, so that no token
    /// carries stale roles or outlives a disabled account; a change to nothing
    /// (or to `email_verified` alone) ends nothing. Refuses ([`StoreError::LastAdmin`]) to leave no active
    /// admin, also against concurrent changes. `None` if there is no such user.
    /// Each real change is audited as done by `by`.
    async fn update_user(
        &self,
        id: Uuid,
        changes: &UserChanges,
        now: OffsetDateTime,
        by: &AuditContext,
    ) -> StoreResult<Option<UpdatedUser>>;
}

/// Sessions and their refresh tokens.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Opens the session with its first refresh token; `false` (and nothing
    /// stored) if the user is gone, disabled, or its password hash or roles
    /// are no longer those in `session`. `effects` are written with the session.
    async fn create_session(&self, session: &NewSession, effects: &Effects) -> StoreResult<bool>;
    /// Atomically uses the live refresh token with hash `presented` and stores
    /// `next` in its place, expiring at `next_expires_at`. Of racing calls with
    /// one token exactly one rotates; presenting a used token revokes its session.
    /// The rotation or the reuse is audited with `by`.
    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        next: &[u8; 32],
        next_expires_at: OffsetDateTime,
        now: OffsetDateTime,
        by: &AuditContext,
    ) -> StoreResult<Rotation> {
        let request = RefreshRequest {
            presented: *presented,
            next: *next,
            next_expires_at,
            now,
            sealed_next: None,
            grace_since: None,
            client_id: None,
        };
        self.rotate_refresh(&request, by).await
    }
    /// [`SessionStore::rotate_refresh_token`], keeping the successor sealed
    /// beside the used token; and a used token presented again whose use
    /// came after `grace_since` and whose successor is unused gives back
    /// [`Rotation::Repeated`] instead of counting as reuse.
    async fn rotate_refresh(
        &self,
        request: &RefreshRequest,
        by: &AuditContext,
    ) -> StoreResult<Rotation>;
    /// The live session of an unused, unexpired refresh token, without
    /// using it (introspection).
    async fn refresh_token_session(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<LiveRefreshToken>>;
    /// Ends the session the refresh token belongs to, audited with `by`; its
    /// id if one was live.
    async fn revoke_session_by_refresh(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
        by: &AuditContext,
    ) -> StoreResult<Option<Uuid>>;
    /// Ends every live session of the user but `except`; how many.
    async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
        reason: RevokeReason,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<u64>;
    /// Ends one live session of the user; `false` if the user has no such
    /// live session (it may be another user's: the caller cannot tell).
    async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: RevokeReason,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Records that the live session of the user was authenticated again,
    /// as `auth` says (a second factor: step-up), with `effects`, if the
    /// `factor` proved is still there; the session's end, or `None` if it is
    /// not live or the factor is gone.
    async fn raise_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        auth: &SessionAuth,
        factor: ProvedFactor,
        effects: &Effects,
    ) -> StoreResult<Option<OffsetDateTime>>;
    /// The user's live sessions, newest first.
    async fn list_sessions(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<SessionInfo>>;
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
    /// Deletes expired refresh tokens that were never used, expired sessions
    /// (with all their tokens), and sessions revoked before `revoked_before`
    /// (their access tokens have all expired by then). Used tokens stay as
    /// long as their session, so that reuse is detected however late. Also
    /// expired links, login challenges and WebAuthn ceremonies, and messages
    /// sent or given up before `revoked_before`.
    async fn purge(&self, now: OffsetDateTime, revoked_before: OffsetDateTime) -> StoreResult<u64>;
}

/// Token signing keys.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Every stored key, revoked ones included, in the order they activate.
    async fn signing_keys(&self) -> StoreResult<Vec<StoredKey>>;
    /// Inserts `key` if `guard` allows it; `true` if inserted. Of instances
    /// racing to insert, each sees what the others inserted before it.
    /// With `effects` in the same transaction, if inserted.
    async fn insert_signing_key(
        &self,
        key: &StoredKey,
        guard: KeyGuard,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Marks the key revoked at `at` (unless it already is), then inserts
    /// `then`'s key if its guard allows, with `effects`, in one transaction.
    /// `false` if there is no such key (and nothing changes).
    async fn revoke_signing_key(
        &self,
        kid: &str,
        at: OffsetDateTime,
        then: Option<(StoredKey, KeyGuard)>,
        effects: &Effects,
    ) -> StoreResult<bool>;
    /// Deletes these keys (their tokens have all expired).
    async fn delete_signing_keys(&self, kids: &[String]) -> StoreResult<u64>;
}

/// Single-use links, and changes with no other home.
#[async_trait]
pub trait FlowStore: Send + Sync + 'static {
    /// Writes `effects` in one transaction.
    async fn apply(&self, effects: &Effects) -> StoreResult<()>;
    /// The live token of that purpose with that hash, without using it.
    async fn find_flow_token(
        &self,
        hash: &[u8; 32],
        purpose: FlowPurpose,
        now: OffsetDateTime,
    ) -> StoreResult<Option<FlowToken>>;
    /// Uses up the live token of that purpose, hash and user and does what
    /// `redemption` says, with `effects`, all in one transaction; of racing
    /// calls with one token at most one succeeds.
    async fn redeem_flow_token(
        &self,
        hash: &[u8; 32],
        purpose: FlowPurpose,
        user_id: Uuid,
        redemption: &Redemption,
        now: OffsetDateTime,
        effects: &Effects,
    ) -> StoreResult<Redeemed>;
}

/// The mail outbox. Several instances may send from one database: a message
/// is claimed with a lease, so it is sent by one of them.
#[async_trait]
pub trait MailStore: Send + Sync + 'static {
    /// Claims up to `limit` messages due by `now` for `owner` until
    /// `lease_until`, counting an attempt for each. Messages out of attempts
    /// (`max_attempts`) whose lease ran out are given up.
    async fn claim_mail(
        &self,
        owner: Uuid,
        limit: u32,
        max_attempts: u32,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> StoreResult<Vec<QueuedMail>>;
    /// Records a send; nothing if `owner` no longer holds the lease.
    async fn mail_sent(&self, id: Uuid, owner: Uuid, now: OffsetDateTime) -> StoreResult<()>;
    /// Records a failed attempt: tried again at `retry_at`, or given up.
    async fn mail_failed(
        &self,
        id: Uuid,
        owner: Uuid,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> StoreResult<()>;
    /// Messages newest first, with that status, before `before`.
    async fn list_mail(
        &self,
        status: Option<MailStatus>,
        limit: u32,
        before: Option<Uuid>,
    ) -> StoreResult<Vec<MailInfo>>;
    /// Deletes messages sent or given up, created before `before`; how many.
    async fn purge_mail(&self, before: OffsetDateTime) -> StoreResult<u64>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Records an event that changes nothing else (a failed login).
    async fn record(&self, record: &AuditRecord) -> StoreResult<()>;
    /// Events newest first, matching `filter`, before `before`.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        before: Option<Uuid>,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// Deletes events older than `before`; how many.
    async fn purge_audit(&self, before: OffsetDateTime) -> StoreResult<u64>;
}

/// The back-off rule a failure count is checked against, in milliseconds;
/// the limiter's (`crate::limits`), restated for the statement that applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffRule {
    /// Failures allowed before the first wait.
    pub free: i64,
    /// The first wait; each further failure doubles it …
    pub base: i64,
    /// … at most this many times …
    pub max_shift: i64,
    /// … and never beyond this.
    pub cap: i64,
    /// Failures are forgotten this long after the last.
    pub memory: i64,
}

/// A quota's state after a take: whether the unit was granted, and the
/// key's theoretical arrival time (GCRA), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub allowed: bool,
    pub tat: i64,
}

/// A back-off key's state after a reservation: whether it was granted, the
/// failures counted and when the last was (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureState {
    pub allowed: bool,
    pub failures: i64,
    pub last_at: i64,
}

/// Throttling state every instance shares. Each check is one atomic
/// statement, so instances racing on one key see each other's units. Keys
/// are digests: no login name or address is stored in the clear.
#[async_trait]
pub trait LimitStore: Send + Sync + 'static {
    /// Takes one unit of a GCRA quota of one unit per `interval`, reaching at
    /// most `window` ahead of `now`.
    async fn take_unit(
        &self,
        key: &[u8; 32],
        now: i64,
        interval: i64,
        window: i64,
    ) -> StoreResult<QuotaState>;
    /// Counts one attempt unless the key is backing off under `rule`.
    async fn reserve_attempt(
        &self,
        key: &[u8; 32],
        now: i64,
        rule: &BackoffRule,
    ) -> StoreResult<FailureState>;
    /// Takes one counted attempt back.
    async fn release_attempt(&self, key: &[u8; 32]) -> StoreResult<()>;
    /// Forgets a key's failures.
    async fn clear_failures(&self, key: &[u8; 32]) -> StoreResult<()>;
    /// Deletes up to `batch` rows that no longer affect a decision at `now`
    /// (full buckets, failures older than `memory`); how many.
    async fn purge_limits(&self, now: i64, memory: i64, batch: u32) -> StoreResult<u64>;
}

/// The whole database: every aggregate's store, and its upkeep.
#[async_trait]
pub trait Store:
    UserStore
    + SessionStore
    + KeyStore
    + FlowStore
    + MailStore
    + AuditStore
    + LimitStore
    + MfaStore
    + PasskeyStore
    + OAuthStore
{
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Readiness: a read and a committed write both succeed.
    async fn ping(&self, now: OffsetDateTime) -> StoreResult<()>;
    /// Each connection pool's name, open connections and idle ones.
    fn pool_use(&self) -> Vec<(&'static str, u32, usize)>;
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

/// What an admin's change does to a user, decided the same way by both backends.
struct UpdatePlan {
    is_active: bool,
    roles: Roles,
    email_verified: bool,
    /// Anything to write at all.
    changed: bool,
    /// The roles or the active flag change: the user's sessions must end.
    ends_sessions: bool,
    /// The user is an active admin now and would not be after the change.
    removes_admin: bool,
}

impl UpdatePlan {
    /// The events the change records.
    fn audit(&self, current: &User, by: &AuditContext, now: OffsetDateTime) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        let event = |kind| by.record(kind, now).user(current.id);
        if self.roles != current.roles {
            records.push(event(AuditKind::RolesChanged).detail(format!(
                "{} -> {}",
                current.roles.to_column(),
                self.roles.to_column()
            )));
        }
        if self.is_active != current.is_active {
            records.push(event(if self.is_active {
                AuditKind::UserEnabled
            } else {
                AuditKind::UserDisabled
            }));
        }
        if self.email_verified != current.email_verified {
            records.push(
                event(AuditKind::EmailVerified).detail(if self.email_verified {
                    "set by admin"
                } else {
                    "cleared by admin"
                }),
            );
        }
        records
    }

    fn new(current: &User, changes: &UserChanges) -> Self {
        let is_active = changes.is_active.unwrap_or(current.is_active);
        let mut roles = changes
            .roles
            .clone()
            .unwrap_or_else(|| current.roles.clone());
        if let Some(role) = &changes.add_role {
            roles = roles.with(role.clone());
        }
        let email_verified = changes.email_verified.unwrap_or(current.email_verified);
        let ends_sessions = is_active != current.is_active || roles != current.roles;
        let changed = ends_sessions || email_verified != current.email_verified;
        let removes_admin =
            current.is_active_admin() && !(is_active && roles.contains(Role::ADMIN));
        Self {
            is_active,
            roles,
            email_verified,
            changed,
            ends_sessions,
            removes_admin,
        }
    }
}
