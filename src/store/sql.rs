//! What the two backends share: one timestamp type, the rows they read, and
//! the statements both accept, written once with `$N` placeholders (sqlx's
//! SQLite driver takes them too). [`sql_store!`] implements the store traits
//! for a backend with them, on top of what the backend does its own way
//! ([`Dialect`]).

use std::future::Future;

use sqlx::{
    Database, Decode, Encode, FromRow, Pool, Postgres, Sqlite, Transaction, Type,
    encode::IsNull,
    error::BoxDynError,
    query::{Query, QueryAs},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    AuditContext, AuditKind, AuditRecord, AuthorizationCode, Credentials, Factor, FactorKind,
    FlowToken, IssuedCode, LiveRefreshToken, MailInfo, MailStatus, NewUser, OAuthClient, Outcome,
    RefreshRequest, RevokeReason, Rotation, SessionAuth, SessionInfo, StoreError, StoreResult,
    StoredKey, StoredPasskey,
};
use crate::domain::{Roles, User};

/// A point in time as each schema stores it: `timestamptz` on PostgreSQL,
/// INTEGER milliseconds since the Unix epoch (UTC) on SQLite, where numbers
/// compare in SQL as times should. Binds and rows use it on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    /// Whole milliseconds since the Unix epoch; finer parts are dropped.
    pub(super) fn unix_millis(self) -> i64 {
        i64::try_from(self.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// The time `ms` milliseconds after the Unix epoch, in UTC.
    pub(super) fn from_unix_millis(ms: i64) -> Result<Self, time::error::ComponentRange> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map(Self)
    }
}

/// How a database stores a [`Timestamp`]: the one difference between the
/// backends' encodings of it.
pub(super) trait StoresTimestamp: Database {
    /// The value as the database reads and writes it.
    type Stored: Type<Self>;

    /// What is written for `t`.
    fn store(t: Timestamp) -> Self::Stored;

    /// What a stored value means.
    fn load(stored: Self::Stored) -> Result<Timestamp, BoxDynError>;
}

impl StoresTimestamp for Postgres {
    type Stored = OffsetDateTime;

    fn store(t: Timestamp) -> OffsetDateTime {
        t.0
    }

    fn load(stored: OffsetDateTime) -> Result<Timestamp, BoxDynError> {
        Ok(Timestamp(stored))
    }
}

impl StoresTimestamp for Sqlite {
    type Stored = i64;

    fn store(t: Timestamp) -> i64 {
        t.unix_millis()
    }

    fn load(stored: i64) -> Result<Timestamp, BoxDynError> {
        Ok(Timestamp::from_unix_millis(stored)?)
    }
}

impl<DB: StoresTimestamp> Type<DB> for Timestamp {
    fn type_info() -> DB::TypeInfo {
        DB::Stored::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        DB::Stored::compatible(ty)
    }
}

impl<'q, DB: StoresTimestamp> Encode<'q, DB> for Timestamp
where
    DB::Stored: Encode<'q, DB>,
{
    fn encode_by_ref(&self, buf: &mut DB::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        DB::store(*self).encode(buf)
    }
}

impl<'r, DB: StoresTimestamp> Decode<'r, DB> for Timestamp
where
    DB::Stored: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        DB::load(DB::Stored::decode(value)?)
    }
}

/// A user as the statements select it: `id, username, email, email_verified,
/// roles, is_active, created_at`.
#[derive(FromRow)]
pub(super) struct UserRow {
    id: Uuid,
    username: Option<String>,
    email: Option<String>,
    email_verified: bool,
    roles: String,
    is_active: bool,
    created_at: Timestamp,
}

impl TryFrom<UserRow> for User {
    type Error = sqlx::Error;

    fn try_from(row: UserRow) -> Result<Self, sqlx::Error> {
        let roles = Roles::from_column(&row.roles).map_err(|e| sqlx::Error::ColumnDecode {
            index: "roles".into(),
            source: e.into(),
        })?;
        Ok(User {
            id: row.id,
            username: row.username,
            email: row.email,
            email_verified: row.email_verified,
            roles,
            is_active: row.is_active,
            created_at: row.created_at.0,
        })
    }
}

/// A user with the password hash.
#[derive(FromRow)]
pub(super) struct CredentialsRow {
    #[sqlx(flatten, try_from = "UserRow")]
    user: User,
    password_hash: String,
}

impl From<CredentialsRow> for Credentials {
    fn from(row: CredentialsRow) -> Self {
        Credentials {
            user: row.user,
            password_hash: row.password_hash,
        }
    }
}

/// A live session and its user.
#[derive(FromRow)]
pub(super) struct SessionUserRow {
    pub session_id: Uuid,
    #[sqlx(flatten, try_from = "UserRow")]
    pub user: User,
}

/// A `LIKE` pattern (with `\\` as its escape) matching what starts with
/// `prefix`, taken literally.
/// A search prefix this long (in characters) matches few accounts: an
/// admin search finds them through the prefix indexes before it sorts.
/// Shorter ones match many, and the first in id order come soonest.
pub(super) const SELECTIVE_PREFIX: usize = 3;

pub(super) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A second factor as stored.
#[derive(FromRow)]
pub(super) struct FactorRow {
    id: Uuid,
    user_id: Uuid,
    kind: String,
    name: String,
    secret: Option<Vec<u8>>,
    confirmed_at: Option<Timestamp>,
    last_used_step: Option<i64>,
    last_used_at: Option<Timestamp>,
    created_at: Timestamp,
}

impl TryFrom<FactorRow> for Factor {
    type Error = StoreError;

    fn try_from(row: FactorRow) -> Result<Self, StoreError> {
        let kind = FactorKind::parse(&row.kind).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Decode(
                format!("unknown factor kind {:?}", row.kind).into(),
            ))
        })?;
        Ok(Factor {
            id: row.id,
            user_id: row.user_id,
            kind,
            name: row.name,
            secret: row.secret,
            confirmed_at: row.confirmed_at.map(|t| t.0),
            last_used_step: row.last_used_step,
            last_used_at: row.last_used_at.map(|t| t.0),
            created_at: row.created_at.0,
        })
    }
}

pub(super) const SELECT_FACTORS: &str = "SELECT id, user_id, kind, name, secret, confirmed_at, \
     last_used_step, last_used_at, created_at FROM mfa_factors";

/// A passkey as stored.
#[derive(FromRow)]
pub(super) struct PasskeyRow {
    id: Uuid,
    user_id: Uuid,
    credential_id: Vec<u8>,
    credential: String,
    name: String,
    created_at: Timestamp,
    last_used_at: Option<Timestamp>,
}

impl From<PasskeyRow> for StoredPasskey {
    fn from(row: PasskeyRow) -> Self {
        StoredPasskey {
            id: row.id,
            user_id: row.user_id,
            credential_id: row.credential_id,
            credential: row.credential,
            name: row.name,
            created_at: row.created_at.0,
            last_used_at: row.last_used_at.map(|t| t.0),
        }
    }
}

pub(super) const SELECT_PASSKEYS: &str = "SELECT id, user_id, credential_id, credential, name, \
     created_at, last_used_at FROM passkeys";

/// An OAuth client as stored.
#[derive(FromRow)]
pub(super) struct ClientRow {
    id: String,
    name: String,
    secret_hash: Option<Vec<u8>>,
    redirect_uris: String,
    post_logout_redirect_uris: String,
    scopes: String,
    first_party: bool,
    created_at: Timestamp,
}

impl TryFrom<ClientRow> for OAuthClient {
    type Error = sqlx::Error;

    fn try_from(row: ClientRow) -> sqlx::Result<Self> {
        let secret_hash = row
            .secret_hash
            .map(|h| {
                <[u8; 32]>::try_from(h.as_slice()).map_err(|_| {
                    sqlx::Error::Decode(
                        format!("client {} has a malformed secret hash", row.id).into(),
                    )
                })
            })
            .transpose()?;
        let list = |s: &str| {
            s.split(' ')
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(OAuthClient {
            secret_hash,
            redirect_uris: list(&row.redirect_uris),
            post_logout_redirect_uris: list(&row.post_logout_redirect_uris),
            id: row.id,
            name: row.name,
            scopes: row.scopes,
            first_party: row.first_party,
            created_at: row.created_at.0,
        })
    }
}

pub(super) const SELECT_CLIENTS: &str = "SELECT id, name, secret_hash, redirect_uris, \
     post_logout_redirect_uris, scopes, first_party, created_at FROM oauth_clients";

/// An authorization code as stored.
#[derive(FromRow)]
pub(super) struct CodeRow {
    code_hash: Vec<u8>,
    client_id: String,
    user_id: Uuid,
    redirect_uri: String,
    scope: String,
    nonce: Option<String>,
    code_challenge: String,
    aal: String,
    amr: String,
    authenticated_at: Timestamp,
    created_at: Timestamp,
    expires_at: Timestamp,
}

impl TryFrom<CodeRow> for IssuedCode {
    type Error = sqlx::Error;

    fn try_from(row: CodeRow) -> sqlx::Result<Self> {
        let code_hash = <[u8; 32]>::try_from(row.code_hash.as_slice())
            .map_err(|_| sqlx::Error::Decode("a malformed code hash".into()))?;
        Ok(IssuedCode {
            code: AuthorizationCode {
                code_hash,
                client_id: row.client_id,
                user_id: row.user_id,
                redirect_uri: row.redirect_uri,
                scope: row.scope,
                nonce: row.nonce,
                code_challenge: row.code_challenge,
                created_at: row.created_at.0,
                expires_at: row.expires_at.0,
            },
            auth: SessionAuth::from_columns(row.aal, &row.amr, row.authenticated_at.0),
        })
    }
}

/// A session as [`SessionInfo`] shows it.
#[derive(FromRow)]
pub(super) struct SessionInfoRow {
    id: Uuid,
    created_at: Timestamp,
    last_used_at: Option<Timestamp>,
    expires_at: Timestamp,
    user_agent: Option<String>,
    ip: Option<String>,
}

impl From<SessionInfoRow> for SessionInfo {
    fn from(row: SessionInfoRow) -> Self {
        SessionInfo {
            id: row.id,
            created_at: row.created_at.0,
            last_used_at: row.last_used_at.map(|t| t.0),
            expires_at: row.expires_at.0,
            user_agent: row.user_agent,
            ip: row.ip,
        }
    }
}

/// A session whose refresh token just rotated.
#[derive(FromRow)]
pub(super) struct RotatedRow {
    session_id: Uuid,
    session_expires_at: Timestamp,
    /// When the session was last authenticated.
    session_created_at: Timestamp,
    session_aal: String,
    session_amr: String,
    session_scope: Option<String>,
    #[sqlx(flatten, try_from = "UserRow")]
    user: User,
}

impl From<RotatedRow> for Rotation {
    fn from(row: RotatedRow) -> Self {
        Rotation::Rotated {
            scope: row.session_scope,
            session_id: row.session_id,
            user: row.user,
            session_expires_at: row.session_expires_at.0,
            auth: SessionAuth::from_columns(
                row.session_aal,
                &row.session_amr,
                row.session_created_at.0,
            ),
        }
    }
}

/// A session revoked because one of its refresh tokens came back after use.
#[derive(FromRow)]
pub(super) struct ReusedRow {
    pub id: Uuid,
    pub user_id: Uuid,
}

impl From<ReusedRow> for Rotation {
    fn from(row: ReusedRow) -> Self {
        Rotation::Reused {
            session_id: row.id,
            user_id: row.user_id,
        }
    }
}

/// A signing key.
#[derive(FromRow)]
pub(super) struct KeyRow {
    kid: String,
    algorithm: String,
    secret: Vec<u8>,
    sealed: bool,
    public_jwk: Option<String>,
    created_at: Timestamp,
    activates_at: Timestamp,
    revoked_at: Option<Timestamp>,
}

impl From<KeyRow> for StoredKey {
    fn from(row: KeyRow) -> Self {
        StoredKey {
            kid: row.kid,
            algorithm: row.algorithm,
            secret: row.secret,
            sealed: row.sealed,
            public_jwk: row.public_jwk,
            created_at: row.created_at.0,
            activates_at: row.activates_at.0,
            revoked_at: row.revoked_at.map(|t| t.0),
        }
    }
}

/// Every signing key, in the order they activate.
pub(super) const SELECT_KEYS: &str = "SELECT kid, algorithm, secret, sealed, public_jwk, \
     created_at, activates_at, revoked_at FROM signing_keys ORDER BY activates_at, created_at, kid";

/// A used token presented again within the grace window, with what gives
/// its successor back.
#[derive(FromRow)]
pub(super) struct RepeatedRow {
    session_id: Uuid,
    session_expires_at: Timestamp,
    session_created_at: Timestamp,
    session_aal: String,
    session_amr: String,
    session_scope: Option<String>,
    rotated_at: Timestamp,
    successor_sealed: Vec<u8>,
    next_expires_at: Timestamp,
    #[sqlx(flatten, try_from = "UserRow")]
    user: User,
}

impl From<RepeatedRow> for Rotation {
    fn from(row: RepeatedRow) -> Self {
        Rotation::Repeated {
            scope: row.session_scope,
            session_id: row.session_id,
            user: row.user,
            session_expires_at: row.session_expires_at.0,
            auth: SessionAuth::from_columns(
                row.session_aal,
                &row.session_amr,
                row.session_created_at.0,
            ),
            rotated_at: row.rotated_at.0,
            sealed_next: row.successor_sealed,
            next_expires_at: row.next_expires_at.0,
        }
    }
}

/// A live refresh token, with its session and user.
#[derive(FromRow)]
pub(super) struct LiveRefreshRow {
    session_id: Uuid,
    issued_at: Timestamp,
    token_expires_at: Timestamp,
    session_aal: String,
    session_amr: String,
    session_authenticated_at: Timestamp,
    session_client_id: Option<String>,
    #[sqlx(flatten, try_from = "UserRow")]
    user: User,
}

impl From<LiveRefreshRow> for LiveRefreshToken {
    fn from(row: LiveRefreshRow) -> Self {
        LiveRefreshToken {
            session_id: row.session_id,
            user: row.user,
            issued_at: row.issued_at.0,
            expires_at: row.token_expires_at.0,
            auth: SessionAuth::from_columns(
                row.session_aal,
                &row.session_amr,
                row.session_authenticated_at.0,
            ),
            client_id: row.session_client_id,
        }
    }
}

/// A live flow token.
#[derive(FromRow)]
pub(super) struct FlowTokenRow {
    user_id: Uuid,
    email: String,
    expires_at: Timestamp,
}

impl From<FlowTokenRow> for FlowToken {
    fn from(row: FlowTokenRow) -> Self {
        FlowToken {
            user_id: row.user_id,
            email: row.email,
            expires_at: row.expires_at.0,
        }
    }
}

fn decode_error(column: &str, what: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.into(),
        source: what.into(),
    }
}

/// A message as admins list it.
#[derive(FromRow)]
pub(super) struct MailInfoRow {
    id: Uuid,
    kind: String,
    recipient: String,
    subject: String,
    status: String,
    attempts: i32,
    created_at: Timestamp,
    next_attempt_at: Timestamp,
    sent_at: Option<Timestamp>,
    last_error: Option<String>,
}

impl TryFrom<MailInfoRow> for MailInfo {
    type Error = sqlx::Error;

    fn try_from(row: MailInfoRow) -> Result<Self, sqlx::Error> {
        Ok(MailInfo {
            id: row.id,
            kind: row.kind,
            to: row.recipient,
            subject: row.subject,
            status: MailStatus::parse(&row.status)
                .ok_or_else(|| decode_error("status", row.status.clone()))?,
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            created_at: row.created_at.0,
            next_attempt_at: row.next_attempt_at.0,
            sent_at: row.sent_at.map(|t| t.0),
            last_error: row.last_error,
        })
    }
}

/// An audit event as stored.
#[derive(FromRow)]
pub(super) struct AuditRow {
    id: Uuid,
    occurred_at: Timestamp,
    #[sqlx(rename = "type")]
    kind: String,
    outcome: String,
    actor_id: Option<Uuid>,
    user_id: Option<Uuid>,
    session_id: Option<Uuid>,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    detail: Option<String>,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = sqlx::Error;

    fn try_from(row: AuditRow) -> Result<Self, sqlx::Error> {
        Ok(AuditRecord {
            id: row.id,
            at: row.occurred_at.0,
            kind: AuditKind::parse(&row.kind)
                .ok_or_else(|| decode_error("type", row.kind.clone()))?,
            outcome: Outcome::parse(&row.outcome)
                .ok_or_else(|| decode_error("outcome", row.outcome.clone()))?,
            user_id: row.user_id,
            session_id: row.session_id,
            detail: row.detail,
            context: AuditContext {
                actor_id: row.actor_id,
                ip: row.ip,
                user_agent: row.user_agent,
                request_id: row.request_id,
            },
        })
    }
}

/// Records an audit event.
pub(super) fn insert_audit<DB: Database>(record: &AuditRecord) -> Query<'static, DB, DB::Arguments>
where
    Uuid: Bind<DB>,
    Option<Uuid>: Bind<DB>,
    Timestamp: Bind<DB>,
    &'static str: Bind<DB>,
    Option<String>: Bind<DB>,
{
    sqlx::query(
        "INSERT INTO audit_events (id, occurred_at, type, outcome, actor_id, user_id, \
         session_id, ip, user_agent, request_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(record.id)
    .bind(Timestamp(record.at))
    .bind(record.kind.as_str())
    .bind(record.outcome.as_str())
    .bind(record.context.actor_id)
    .bind(record.user_id)
    .bind(record.session_id)
    .bind(record.context.ip.clone())
    .bind(record.context.user_agent.clone())
    .bind(record.context.request_id.clone())
    .bind(record.detail.clone())
}

/// What a backend does its own way; [`sql_store!`] builds the store on it.
pub(super) trait Dialect: Send + Sync + 'static {
    type Db: Database;

    /// Appended to the claim of due mail: on PostgreSQL, rows another
    /// instance is claiming are skipped rather than waited for.
    const SKIP_LOCKED: &'static str;

    /// Rows a purge deletes in one statement: each batch is short, so
    /// requests waiting for the writer or a row lock wait little.
    const PURGE_BATCH: i64;

    /// After each full batch of the purge of expired sessions and tokens, a
    /// rest of this many times the batch's own duration (0: none), so that a
    /// purge of a large backlog leaves the database to the requests part of
    /// the time, and backs off by itself when the machine is busy.
    const PURGE_PAUSE: u32 = 0;

    /// The statement deleting one batch of a purge: the rows of `table`
    /// (keyed by `key`) that `filter`, a condition ending in its `LIMIT`,
    /// selects. By default the rows are found again by key.
    fn purge_statement(table: &str, key: &str, filter: &str) -> String {
        format!("DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {filter})")
    }

    /// Lifts the statement time limit on a connection (migrations may build
    /// indexes over big tables); empty where there is none.
    const UNBOUNDED: &'static str;

    /// The pool reads go to.
    fn reader(&self) -> &Pool<Self::Db>;

    /// The pool writes go to.
    fn writer(&self) -> &Pool<Self::Db>;

    /// The pool throttling checks go to.
    fn limits(&self) -> &Pool<Self::Db>;

    /// Every pool, by name, for the metrics.
    fn pools(&self) -> Vec<(&'static str, &Pool<Self::Db>)>;

    /// Whether the database's file is still the one opened (SQLite: deleted
    /// or replaced under the running process, every later write would be
    /// lost at the next start).
    fn check_file(&self) -> sqlx::Result<()>;

    /// Begins a write transaction on the writer pool.
    fn begin_write(
        writer: &Pool<Self::Db>,
    ) -> impl Future<Output = sqlx::Result<Transaction<'static, Self::Db>>> + Send;

    /// Runs first in `update_user`'s transaction: until the transaction ends,
    /// no concurrent change may alter user `id` or the set of active admins.
    fn lock_for_user_change(
        tx: &mut Transaction<'static, Self::Db>,
        id: Uuid,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Runs first in `create_session`'s transaction: until it ends, no
    /// change of the user (roles, password, active) may commit, so the change
    /// either sees the new session (and ends it) or comes first (and the
    /// session is not opened).
    fn lock_for_new_session(
        tx: &mut Transaction<'static, Self::Db>,
        user_id: Uuid,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Runs first in the transaction that stores the first signing key, so
    /// that of two instances starting together only one stores a key.
    fn lock_for_key_generation(
        tx: &mut Transaction<'static, Self::Db>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// [`SessionStore::rotate_refresh_token`](super::SessionStore::rotate_refresh_token).
    fn rotate(&self, refresh: Refresh) -> impl Future<Output = StoreResult<Rotation>> + Send;

    /// [`SessionStore::live_sessions`](super::SessionStore::live_sessions).
    fn live(
        &self,
        session_ids: &[Uuid],
        now: Timestamp,
    ) -> impl Future<Output = StoreResult<Vec<(Uuid, User)>>> + Send;
}

/// A refresh token presented for rotation, with who presented it.
pub(super) struct Refresh {
    pub request: RefreshRequest,
    /// Who presented it, for the audit log.
    pub by: AuditContext,
}

impl Refresh {
    pub fn now(&self) -> Timestamp {
        Timestamp(self.request.now)
    }

    pub fn next_expires_at(&self) -> Timestamp {
        Timestamp(self.request.next_expires_at)
    }

    pub fn grace_since(&self) -> Option<Timestamp> {
        self.request.grace_since.map(Timestamp)
    }

    /// Whose session the token must be of, as `COALESCE(client_id, '')`
    /// reads it: a client's id, or empty for the service's own.
    pub fn holder(&self) -> &str {
        self.request.client_id.as_deref().unwrap_or("")
    }

    /// The event recording that the token gave its successor again.
    pub fn repeated_audit(&self, repeated: &Rotation) -> Option<AuditRecord> {
        match repeated {
            Rotation::Repeated {
                user, session_id, ..
            } => Some(
                self.audit(AuditKind::Refresh, user.id, *session_id)
                    .detail("repeated within the reuse grace window"),
            ),
            _ => None,
        }
    }

    /// The event recording what became of the token.
    pub fn audit(&self, kind: AuditKind, user_id: Uuid, session_id: Uuid) -> AuditRecord {
        let record = self
            .by
            .record(kind, self.request.now)
            .user(user_id)
            .session(session_id);
        if kind == AuditKind::RefreshTokenReuse {
            // Whoever presented a used token may well be a thief: no actor.
            record.failed()
        } else {
            let mut record = record;
            record.context.actor_id = record.context.actor_id.or(Some(user_id));
            record
        }
    }
}

/// Shorthand for "`DB` can bind this", for the generic statements below.
pub(super) trait Bind<DB: Database>: for<'q> Encode<'q, DB> + Type<DB> {}

impl<DB: Database, T: for<'q> Encode<'q, DB> + Type<DB>> Bind<DB> for T {}

/// `INSERT INTO users` with the columns [`insert_user`] binds, then `$tail`.
macro_rules! insert_user_sql {
    ($($tail:literal)?) => {
        concat!(
            "INSERT INTO users (id, username, username_normalized, email, email_normalized, \
             password_hash, roles, created_at, updated_at, email_verified) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)"
            $(, " ", $tail)?
        )
    };
}

/// Inserts `user`; with `if_absent`, does nothing if the username or the
/// email is taken instead of failing.
pub(super) fn insert_user<'a, DB: Database>(
    user: &'a NewUser,
    if_absent: bool,
) -> Query<'static, DB, DB::Arguments>
where
    Uuid: Bind<DB>,
    Option<String>: Bind<DB>,
    &'a str: Bind<DB>,
    String: Bind<DB>,
    Timestamp: Bind<DB>,
    bool: Bind<DB>,
{
    let sql = if if_absent {
        insert_user_sql!("ON CONFLICT DO NOTHING")
    } else {
        insert_user_sql!()
    };
    sqlx::query(sql)
        .bind(user.id)
        .bind(user.username.as_ref().map(|u| u.as_str().to_owned()))
        .bind(user.username.as_ref().map(|u| u.normalized()))
        .bind(user.email.as_ref().map(|e| e.as_str().to_owned()))
        .bind(user.email.as_ref().map(|e| e.normalized()))
        .bind(user.password_hash.as_str())
        .bind(user.roles.to_column())
        .bind(Timestamp(user.created_at))
        .bind(user.email_verified)
}

/// Stores a refresh token of session `session_id`.
pub(super) fn insert_refresh_token<'a, DB: Database>(
    token_hash: &'a [u8; 32],
    session_id: Uuid,
    created_at: Timestamp,
    expires_at: Timestamp,
) -> Query<'static, DB, DB::Arguments>
where
    &'a [u8]: Bind<DB>,
    Uuid: Bind<DB>,
    Timestamp: Bind<DB>,
{
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&token_hash[..])
    .bind(session_id)
    .bind(created_at)
    .bind(expires_at)
}

/// Ends every live session of user `user_id`.
pub(super) fn end_user_sessions<DB: Database>(
    user_id: Uuid,
    except: Option<Uuid>,
    reason: RevokeReason,
    now: Timestamp,
) -> Query<'static, DB, DB::Arguments>
where
    Uuid: Bind<DB>,
    Option<Uuid>: Bind<DB>,
    Timestamp: Bind<DB>,
    &'static str: Bind<DB>,
{
    sqlx::query(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
         WHERE user_id = $1 AND revoked_at IS NULL AND ($4 IS NULL OR id <> $4)",
    )
    .bind(user_id)
    .bind(now)
    .bind(reason.as_str())
    .bind(except)
}

/// Deletes every link (flow token) mailed to user `user_id`: what a
/// password change, a reset or disabling the account does to them.
pub(super) fn end_user_links<DB: Database>(user_id: Uuid) -> Query<'static, DB, DB::Arguments>
where
    Uuid: Bind<DB>,
{
    sqlx::query("DELETE FROM flow_tokens WHERE user_id = $1").bind(user_id)
}

/// For a refresh token that did not rotate. RFC 9700 §4.14.2: a used token
/// presented again means it leaked; this ends the whole session (every
/// token of it, refresh and access), keeping an earlier end as it was, and
/// returns it. Nothing for a token that was never used.
pub(super) fn revoke_reused<'a, DB: Database>(
    refresh: &'a Refresh,
) -> QueryAs<'a, DB, ReusedRow, DB::Arguments>
where
    &'a [u8]: Bind<DB>,
    Timestamp: Bind<DB>,
    &'static str: Bind<DB>,
    ReusedRow: for<'r> FromRow<'r, DB::Row>,
{
    sqlx::query_as(
        "UPDATE sessions SET revoked_at = COALESCE(revoked_at, $2), \
         revoked_reason = COALESCE(revoked_reason, $3) \
         WHERE id = (SELECT session_id FROM refresh_tokens \
                     WHERE token_hash = $1 AND used_at IS NOT NULL) \
         RETURNING id, user_id",
    )
    .bind(&refresh.request.presented[..])
    .bind(refresh.now())
    .bind(RevokeReason::RefreshTokenReuse.as_str())
}

/// The successor of a token presented again within the grace window: only
/// if the token was used after `since`, its successor is still unused and
/// the session live. Reads only.
pub(super) fn repeat_within_grace<'a, DB: Database>(
    refresh: &'a Refresh,
    since: Timestamp,
) -> QueryAs<'a, DB, RepeatedRow, DB::Arguments>
where
    &'a [u8]: Bind<DB>,
    &'a str: Bind<DB>,
    Timestamp: Bind<DB>,
    RepeatedRow: for<'r> FromRow<'r, DB::Row>,
{
    sqlx::query_as(
        "SELECT s.id AS session_id, s.expires_at AS session_expires_at, \
         COALESCE(s.authenticated_at, s.created_at) AS session_created_at, \
         s.aal AS session_aal, s.amr AS session_amr, s.scope AS session_scope, \
         p.used_at AS rotated_at, p.successor_sealed, \
         c.expires_at AS next_expires_at, \
         u.id, u.username, u.email, u.email_verified, u.roles, u.is_active, u.created_at \
         FROM refresh_tokens p \
         JOIN refresh_tokens c ON c.token_hash = p.successor_hash \
         JOIN sessions s ON s.id = p.session_id \
         JOIN users u ON u.id = s.user_id \
         WHERE p.token_hash = $1 AND p.used_at > $3 AND p.successor_sealed IS NOT NULL \
           AND c.used_at IS NULL AND c.expires_at > $2 \
           AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.is_active \
           AND COALESCE(s.client_id, '') = $4",
    )
    .bind(&refresh.request.presented[..])
    .bind(refresh.now())
    .bind(since)
    .bind(refresh.holder())
}

/// Runs `batch`, a delete of at most `size` rows, until it deletes fewer;
/// how many rows in all.
pub(super) async fn until_drained<F, Fut>(size: i64, mut batch: F) -> sqlx::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<u64>>,
{
    let mut deleted = 0;
    loop {
        let done = batch().await?;
        deleted += done;
        if done < size.unsigned_abs() {
            return Ok(deleted);
        }
    }
}

/// [`until_drained`], resting after each full batch `pause` times as long as
/// the batch took.
pub(super) async fn drain_paced<F, Fut>(size: i64, pause: u32, mut batch: F) -> sqlx::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<u64>>,
{
    let mut deleted = 0;
    loop {
        let started = std::time::Instant::now();
        let done = batch().await?;
        deleted += done;
        if done < size.unsigned_abs() {
            return Ok(deleted);
        }
        if pause > 0 {
            tokio::time::sleep(started.elapsed() * pause).await;
        }
    }
}

/// Whether user $1 has a factor that counts: a confirmed TOTP factor or a
/// passkey.
pub(super) const HAS_FACTOR: &str = "SELECT 1 WHERE EXISTS (SELECT 1 FROM mfa_factors \
                                     WHERE user_id = $1 AND confirmed_at IS NOT NULL) \
                                     OR EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1)";

/// One unit of a GCRA quota, in one statement ($1 key, $2 now, $3 the
/// interval, $4 the window; milliseconds). Every `SET` sees the old row, so
/// the grant and the new arrival time are decided on the same state.
pub(super) static TAKE_UNIT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let start = "(CASE WHEN q.tat > $2 THEN q.tat ELSE $2 END)";
    let fits = format!("{start} + $3 <= $2 + $4");
    format!(
        "INSERT INTO limit_quotas AS q (key, tat, allowed) VALUES ($1, $2 + $3, TRUE) \
         ON CONFLICT (key) DO UPDATE SET \
         allowed = {fits}, \
         tat = CASE WHEN {fits} THEN {start} + $3 ELSE q.tat END \
         RETURNING tat, allowed"
    )
});

/// One attempt on a back-off key, in one statement ($1 key, $2 now, $3 free
/// failures, $4 memory, $5 base wait, $6 cap, $7 the largest doubling;
/// milliseconds). The arithmetic of `crate::limits::Failures::reserve`.
pub(super) static RESERVE_ATTEMPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let count = "(CASE WHEN $2 - f.last_at >= $4 THEN 0 ELSE f.failures END)";
    let over = format!("({count} - $3)");
    let shift = format!("CAST(CASE WHEN {over} > $7 THEN $7 ELSE {over} END AS INTEGER)");
    let doubled = format!("(CAST($5 AS BIGINT) << {shift})");
    let wait =
        format!("(CASE WHEN {over} < 0 THEN 0 WHEN {doubled} > $6 THEN $6 ELSE {doubled} END)");
    // No back-off due is never a wait, even if another instance counted the
    // last failure at a later time than this statement's `now`.
    let blocked = format!("({wait} > 0 AND f.last_at + {wait} > $2)");
    format!(
        "INSERT INTO limit_failures AS f (key, failures, last_at, allowed) \
         VALUES ($1, 1, $2, TRUE) \
         ON CONFLICT (key) DO UPDATE SET \
         failures = CASE WHEN {blocked} THEN f.failures ELSE {count} + 1 END, \
         last_at = CASE WHEN {blocked} OR f.last_at > $2 THEN f.last_at ELSE $2 END, \
         allowed = NOT {blocked} \
         RETURNING failures, last_at, allowed"
    )
});

/// Implements `Store`, `UserStore`, `SessionStore` and `KeyStore` for
/// `$store`, a [`Dialect`] whose migrations are in the folder `$migrations`.
///
/// A macro rather than methods generic over `sqlx::Database`: these bodies
/// bind and read a dozen types on pools, connections and transactions, and
/// a generic body must restate an `Encode + Type` bound for each type and
/// higher-ranked `Executor` bounds for each connection (Rust does not carry
/// them from a trait). Expanded for one concrete backend at a time they are
/// plain sqlx code, checked as if written in that backend's file. The few
/// statements run from more than one place, a backend's own code included,
/// are the generic functions above: they only build the query, so they need
/// only their binds' bounds.
macro_rules! sql_store {
    ($store:ty, migrations = $migrations:literal) => {
        const _: () = {
            use async_trait::async_trait;
            use time::OffsetDateTime;
            use uuid::Uuid;

            use $crate::{
                domain::{Email, Role, User, Username},
                store::{
                    Attempt, AuditContext, AuditFilter, AuditKind, AuditRecord, AuditStore, Credentials,
                    Added, Ceremony, CeremonyPurpose, Factor, MfaStore, NewChallenge, PasskeyStore,
                    StoredPasskey, OAuthClient, OAuthStore, AuthorizationCode, CodeCheck, CodeRedemption,
                    IssuedCode, NewClientSession, Grant,
                    Effects, FlowPurpose, FlowStore, FlowToken, KeyGuard, KeyStore,
                    LiveRefreshToken, MailInfo, MailStatus, MailStore, NewSession, NewUser, ProvedFactor,
                    QueuedMail, Redeemed, Redemption, RefreshRequest, RevokeReason, Rotation,
                    SessionAuth, SessionInfo, SessionStore, Store, StoreError, StoreResult, StoredKey,
                    UpdatePlan, UpdatedUser, UserChanges, UserFilter, UserStore, detached,
                    map_unique,
                    sql::{
                        self, AuditRow, CredentialsRow, Dialect, FlowTokenRow, KeyRow,
                        LiveRefreshRow, MailInfoRow, Refresh, SELECT_KEYS, SessionInfoRow,
                        drain_paced, until_drained,
                        Timestamp, UserRow,
                    },
                },
            };

            type Tx = sqlx::Transaction<'static, <$store as Dialect>::Db>;

            /// Deletes the rows of `table` (keyed by `key`) that expired by
            /// `now` and match `and`, in batches until none is left.
            async fn purge_expired(
                writer: &sqlx::Pool<<$store as Dialect>::Db>,
                table: &'static str,
                key: &'static str,
                and: &'static str,
                now: Timestamp,
            ) -> sqlx::Result<u64> {
                // Names from this file only, never from input.
                let statement = <$store as Dialect>::purge_statement(
                    table,
                    key,
                    &format!("expires_at <= $1{and} LIMIT $2"),
                );
                drain_paced(
                    <$store as Dialect>::PURGE_BATCH,
                    <$store as Dialect>::PURGE_PAUSE,
                    || async {
                        let done = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                            .bind(now)
                            .bind(<$store as Dialect>::PURGE_BATCH)
                            .execute(writer)
                            .await?;
                        Ok(done.rows_affected())
                    },
                )
                .await
            }

            /// Replaces the user's recovery codes, in the change's transaction.
            async fn replace_codes(tx: &mut Tx, user_id: Uuid, hashes: &[[u8; 32]]) -> StoreResult<()> {
                sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut **tx)
                    .await?;
                for hash in hashes {
                    sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                        .bind(user_id)
                        .bind(&hash[..])
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            /// Whether the user has a factor: a confirmed TOTP factor or a passkey.
            async fn has_factor(tx: &mut Tx, user_id: Uuid) -> StoreResult<bool> {
                let found: Option<i32> = sqlx::query_scalar(sql::HAS_FACTOR)
                .bind(user_id)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(found.is_some())
            }

            /// Recovery codes stand in for a factor: with no factor left (a
            /// confirmed TOTP factor or a passkey), none are kept.
            async fn drop_codes_without_factors(tx: &mut Tx, user_id: Uuid) -> StoreResult<()> {
                sqlx::query(
                    "DELETE FROM recovery_codes WHERE user_id = $1 \
                     AND NOT EXISTS (SELECT 1 FROM mfa_factors \
                                     WHERE user_id = $1 AND confirmed_at IS NOT NULL) \
                     AND NOT EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1)",
                )
                .bind(user_id)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Writes what a change brings with it, in the change's transaction.
            async fn write_effects(tx: &mut Tx, effects: &Effects) -> StoreResult<()> {
                if let Some(token) = &effects.token {
                    // A newer link of a purpose replaces the older ones.
                    sqlx::query("DELETE FROM flow_tokens WHERE user_id = $1 AND purpose = $2")
                        .bind(token.user_id)
                        .bind(token.purpose.as_str())
                        .execute(&mut **tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO flow_tokens \
                         (token_hash, purpose, user_id, email, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&token.hash[..])
                    .bind(token.purpose.as_str())
                    .bind(token.user_id)
                    .bind(token.email.as_str())
                    .bind(Timestamp(token.created_at))
                    .bind(Timestamp(token.expires_at))
                    .execute(&mut **tx)
                    .await?;
                }
                for mail in &effects.mail {
                    sqlx::query(
                        "INSERT INTO mail_outbox (id, kind, recipient, subject, body, status, \
                         attempts, created_at, next_attempt_at) \
                         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
                    )
                    .bind(mail.id)
                    .bind(mail.kind)
                    .bind(mail.to.as_str())
                    .bind(mail.subject.as_str())
                    .bind(mail.text.as_str())
                    .bind(Timestamp(mail.created_at))
                    .execute(&mut **tx)
                    .await?;
                }
                for record in &effects.audit {
                    sql::insert_audit(record).execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Runs `effects` alone in a transaction of their own.
            async fn apply_alone(writer: &sqlx::Pool<<$store as Dialect>::Db>, effects: &Effects) -> StoreResult<()> {
                let mut tx = <$store>::begin_write(writer).await?;
                write_effects(&mut tx, effects).await?;
                tx.commit().await?;
                Ok(())
            }

            #[async_trait]
            impl Store for $store {
                async fn migrate(&self) -> StoreResult<()> {
                    use sqlx::Connection as _;
                    // A connection of its own, closed afterwards, so that the
                    // lifted time limit never goes back to the pool.
                    let mut conn = self.writer().acquire().await?.detach();
                    if !Self::UNBOUNDED.is_empty() {
                        sqlx::raw_sql(Self::UNBOUNDED).execute(&mut conn).await?;
                    }
                    let migrated = sqlx::migrate!($migrations)
                        .run_direct(None, &mut conn, false)
                        .await
                        .map_err(|e| StoreError::Database(e.into()));
                    let _ = conn.close().await;
                    migrated
                }

                fn pool_use(&self) -> Vec<(&'static str, u32, usize)> {
                    self.pools()
                        .into_iter()
                        .map(|(name, pool)| (name, pool.size(), pool.num_idle()))
                        .collect()
                }

                async fn ping(&self, now: OffsetDateTime) -> StoreResult<()> {
                    self.check_file()?;
                    // The schema this build needs is there, not only a
                    // server that answers: every migration applied, and the
                    // tables every request reads.
                    let latest = sqlx::migrate!($migrations)
                        .iter()
                        .map(|m| m.version)
                        .max()
                        .unwrap_or_default();
                    let (applied,): (Option<i64>,) = sqlx::query_as(
                        "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
                    )
                    .fetch_one(self.reader())
                    .await?;
                    if applied.unwrap_or_default() < latest {
                        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                            "the schema is at migration {applied:?}, not {latest}"
                        ))));
                    }
                    sqlx::query(
                        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM users LIMIT 1) u) \
                         + (SELECT COUNT(*) FROM (SELECT 1 FROM sessions LIMIT 1) s) \
                         + (SELECT COUNT(*) FROM (SELECT 1 FROM refresh_tokens LIMIT 1) r)",
                    )
                    .execute(self.reader())
                    .await?;
                    // A committed write: on a full disk this is what fails.
                    sqlx::query(
                        "INSERT INTO readiness (id, checked_at) VALUES (1, $1) \
                         ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    )
                    .bind(Timestamp(now))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl UserStore for $store {
                async fn create_user(&self, user: &NewUser, effects: &Effects) -> StoreResult<User> {
                    let writer = self.writer().clone();
                    let (user, effects) = (user.clone(), effects.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        sql::insert_user(&user, false)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_unique)?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(user.view())
                    })
                    .await
                }

                async fn create_user_if_absent(&self, user: &NewUser) -> StoreResult<bool> {
                    let done = sql::insert_user(user, true).execute(self.writer()).await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn find_credentials(
                    &self,
                    login: &str,
                ) -> StoreResult<Option<Credentials>> {
                    let row: Option<CredentialsRow> = sqlx::query_as(
                        "SELECT id, username, email, email_verified, roles, is_active, \
                         created_at, password_hash FROM users \
                         WHERE username_normalized = $1 OR email_normalized = $1 LIMIT 1",
                    )
                    .bind(login)
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(Credentials::from))
                }

                async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
                    let row: Option<UserRow> = sqlx::query_as(
                        "SELECT id, username, email, email_verified, roles, is_active, \
                         created_at FROM users WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(User::try_from).transpose()?)
                }

                async fn get_credentials(&self, id: Uuid) -> StoreResult<Option<Credentials>> {
                    let row: Option<CredentialsRow> = sqlx::query_as(
                        "SELECT id, username, email, email_verified, roles, is_active, \
                         created_at, password_hash FROM users WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(Credentials::from))
                }

                async fn change_password(
                    &self,
                    id: Uuid,
                    hash: &str,
                    keep: Option<Uuid>,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let hash = hash.to_owned();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        let done = sqlx::query(
                            "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1",
                        )
                        .bind(id)
                        .bind(hash)
                        .bind(Timestamp(now))
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() == 0 {
                            return Ok(false);
                        }
                        sql::end_user_sessions(
                            id,
                            keep,
                            RevokeReason::PasswordChanged,
                            Timestamp(now),
                        )
                        .execute(&mut *tx)
                        .await?;
                        sql::end_user_links(id)
                            .execute(&mut *tx)
                            .await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn change_username(
                    &self,
                    id: Uuid,
                    username: &Username,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<Option<User>> {
                    let writer = self.writer().clone();
                    let (username, effects) = (username.clone(), effects.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        let row: Option<UserRow> = sqlx::query_as(
                            "UPDATE users SET username = $2, username_normalized = $3, \
                             updated_at = $4 WHERE id = $1 RETURNING id, username, email, \
                             email_verified, roles, is_active, created_at",
                        )
                        .bind(id)
                        .bind(username.as_str())
                        .bind(username.normalized())
                        .bind(Timestamp(now))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_unique)?;
                        let Some(row) = row else {
                            return Ok(None);
                        };
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(Some(User::try_from(row)?))
                    })
                    .await
                }

                async fn delete_user(&self, id: Uuid, effects: &Effects) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        Self::lock_for_user_change(&mut tx, id).await?;
                        let others: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM users WHERE id <> $1 AND is_active \
                             AND (',' || roles || ',') LIKE '%,admin,%'",
                        )
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                        let is_active_admin: Option<bool> = sqlx::query_scalar(
                            "SELECT is_active AND (',' || roles || ',') LIKE '%,admin,%' \
                             FROM users WHERE id = $1",
                        )
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        match is_active_admin {
                            None => return Ok(false),
                            Some(true) if others == 0 => return Err(StoreError::LastAdmin),
                            Some(_) => {}
                        }
                        // Sessions, refresh tokens and links go with the user
                        // (ON DELETE CASCADE).
                        sqlx::query("DELETE FROM users WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn upgrade_password_hash(
                    &self,
                    id: Uuid,
                    old: &str,
                    new: &str,
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    let done = sqlx::query(
                        "UPDATE users SET password_hash = $3, updated_at = $4 \
                         WHERE id = $1 AND password_hash = $2",
                    )
                    .bind(id)
                    .bind(old)
                    .bind(new)
                    .bind(Timestamp(now))
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn list_users(
                    &self,
                    filter: &UserFilter,
                    limit: u32,
                    after: Option<Uuid>,
                ) -> StoreResult<Vec<User>> {
                    // Only the conditions given, so the plan can use their
                    // indexes (SQLite plans `$1 IS NULL OR …` once, for any
                    // value, and then uses none). The prefix is matched
                    // literally (its % and _ escaped).
                    type Builder = sqlx::QueryBuilder<<$store as Dialect>::Db>;
                    let conditions = |query: &mut Builder| {
                        if let Some(after) = after {
                            query.push(" AND id > ").push_bind(after);
                        }
                        match &filter.role {
                            // Written as the partial index of admins is.
                            Some(role) if role.as_str() == Role::ADMIN => {
                                query.push(" AND (',' || roles || ',') LIKE '%,admin,%'");
                            }
                            Some(role) => {
                                query
                                    .push(" AND (',' || roles || ',') LIKE ")
                                    .push_bind(format!(
                                        "%,{}",
                                        sql::like_prefix(&format!("{role},"))
                                    ))
                                    .push(" ESCAPE '\\'");
                            }
                            None => {}
                        }
                        if let Some(active) = filter.is_active {
                            query.push(" AND is_active = ").push_bind(active);
                        }
                    };
                    let columns = "SELECT id, username, email, email_verified, roles, is_active, \
                                   created_at FROM users";
                    let selective = filter
                        .prefix
                        .as_ref()
                        .filter(|p| p.chars().count() >= sql::SELECTIVE_PREFIX);
                    let mut query = Builder::new("");
                    if let Some(prefix) = selective {
                        // Why the matches first: the planner's estimate of a
                        // prefix's rows can be off by a histogram bucket (20,000
                        // for 10 of a million accounts); trusting it, it reads
                        // the users in id order for the first few matches and
                        // reads them all. A prefix this long matches few, so
                        // they are found through the prefix indexes and only
                        // they are sorted.
                        let pattern = sql::like_prefix(prefix);
                        query.push(
                            "WITH matched AS MATERIALIZED (SELECT id FROM users \
                             WHERE username_normalized LIKE ",
                        );
                        query.push_bind(pattern.clone()).push(" ESCAPE '\\'");
                        conditions(&mut query);
                        query.push(" UNION SELECT id FROM users WHERE email_normalized LIKE ");
                        query.push_bind(pattern).push(" ESCAPE '\\'");
                        conditions(&mut query);
                        query
                            .push(") ")
                            .push(columns)
                            .push(" WHERE id IN (SELECT id FROM matched ORDER BY id LIMIT ")
                            .push_bind(i64::from(limit))
                            .push(") ORDER BY id");
                    } else {
                        query.push(columns).push(" WHERE 1 = 1");
                        conditions(&mut query);
                        if let Some(prefix) = &filter.prefix {
                            let pattern = sql::like_prefix(prefix);
                            query
                                .push(" AND (username_normalized LIKE ")
                                .push_bind(pattern.clone())
                                .push(" ESCAPE '\\' OR email_normalized LIKE ")
                                .push_bind(pattern)
                                .push(" ESCAPE '\\')");
                        }
                        query.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
                    }
                    // Not kept prepared: PostgreSQL would soon plan it once
                    // for any prefix (a generic plan), which cannot use the
                    // prefix indexes; unprepared, each search is planned with
                    // its own prefix.
                    let rows: Vec<UserRow> = query
                        .build_query_as()
                        .persistent(false)
                        .fetch_all(self.reader())
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(User::try_from)
                        .collect::<Result<_, _>>()?)
                }

                async fn update_user(
                    &self,
                    id: Uuid,
                    changes: &UserChanges,
                    now: OffsetDateTime,
                    by: &AuditContext,
                ) -> StoreResult<Option<UpdatedUser>> {
                    let writer = self.writer().clone();
                    let changes = changes.clone();
                    let by = by.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        Self::lock_for_user_change(&mut tx, id).await?;
                        let row: Option<UserRow> = sqlx::query_as(
                            "SELECT id, username, email, email_verified, roles, is_active, \
                             created_at FROM users WHERE id = $1",
                        )
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(row) = row else {
                            return Ok(None);
                        };
                        let current = User::try_from(row)?;
                        let plan = UpdatePlan::new(&current, &changes);
                        if !plan.changed {
                            return Ok(Some(UpdatedUser {
                                user: current,
                                sessions_ended: false,
                            }));
                        }
                        if plan.removes_admin {
                            let others: i64 = sqlx::query_scalar(
                                "SELECT COUNT(*) FROM users WHERE id <> $1 AND is_active \
                                 AND (',' || roles || ',') LIKE '%,admin,%'",
                            )
                            .bind(id)
                            .fetch_one(&mut *tx)
                            .await?;
                            if others == 0 {
                                return Err(StoreError::LastAdmin);
                            }
                        }
                        let row: UserRow = sqlx::query_as(
                            "UPDATE users SET is_active = $2, roles = $3, email_verified = $4, \
                             updated_at = $5 WHERE id = $1 RETURNING id, username, email, \
                             email_verified, roles, is_active, created_at",
                        )
                        .bind(id)
                        .bind(plan.is_active)
                        .bind(plan.roles.to_column())
                        .bind(plan.email_verified)
                        .bind(Timestamp(now))
                        .fetch_one(&mut *tx)
                        .await?;
                        let user = User::try_from(row)?;
                        if plan.ends_sessions {
                            sql::end_user_sessions(
                                id,
                                None,
                                RevokeReason::UserChanged,
                                Timestamp(now),
                            )
                            .execute(&mut *tx)
                            .await?;
                        }
                        if !plan.is_active {
                            // A disabled account's links die with its
                            // sessions: enabling it again must not revive them.
                            sql::end_user_links(id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        let audit = Effects {
                            audit: plan.audit(&current, &by, now),
                            ..Effects::default()
                        };
                        write_effects(&mut tx, &audit).await?;
                        tx.commit().await?;
                        Ok(Some(UpdatedUser {
                            user,
                            sessions_ended: plan.ends_sessions,
                        }))
                    })
                    .await
                }
            }

            #[async_trait]
            impl SessionStore for $store {
                async fn refresh_token_session(
                    &self,
                    token_hash: &[u8; 32],
                    now: OffsetDateTime,
                ) -> StoreResult<Option<LiveRefreshToken>> {
                    let row: Option<LiveRefreshRow> = sqlx::query_as(
                        "SELECT t.session_id, t.created_at AS issued_at, \
                         t.expires_at AS token_expires_at, s.aal AS session_aal, \
                         s.amr AS session_amr, \
                         COALESCE(s.authenticated_at, s.created_at) AS session_authenticated_at, \
                         s.client_id AS session_client_id, u.id, u.username, u.email, \
                         u.email_verified, u.roles, u.is_active, u.created_at \
                         FROM refresh_tokens t \
                         JOIN sessions s ON s.id = t.session_id \
                         JOIN users u ON u.id = s.user_id \
                         WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > $2 \
                           AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.is_active",
                    )
                    .bind(&token_hash[..])
                    .bind(Timestamp(now))
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(LiveRefreshToken::from))
                }

                async fn create_session(
                    &self,
                    s: &NewSession,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let s = s.clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        Self::lock_for_new_session(&mut tx, s.user_id).await?;
                        // Factor changes lock the user row as well: the
                        // factor checked here is there at the commit.
                        let (needs_factor, factor) = match s.factor {
                            None => (false, None),
                            Some(ProvedFactor::Any) => (true, None),
                            Some(ProvedFactor::This(id)) => (true, Some(id)),
                        };
                        let opened = sqlx::query(
                            "INSERT INTO sessions \
                             (id, user_id, created_at, expires_at, user_agent, ip, aal, amr, \
                              authenticated_at) \
                             SELECT $1, $2, $3, $4, $5, $6, $9, $10, $3 WHERE EXISTS ( \
                                 SELECT 1 FROM users WHERE id = $2 AND is_active \
                                 AND password_hash = $7 AND roles = $8) \
                             AND (NOT $11 \
                                  OR EXISTS (SELECT 1 FROM mfa_factors WHERE user_id = $2 \
                                             AND confirmed_at IS NOT NULL \
                                             AND ($12 IS NULL OR id = $12)) \
                                  OR EXISTS (SELECT 1 FROM passkeys WHERE user_id = $2 \
                                             AND ($12 IS NULL OR id = $12)))",
                        )
                        .bind(s.id)
                        .bind(s.user_id)
                        .bind(Timestamp(s.created_at))
                        .bind(Timestamp(s.expires_at))
                        .bind(s.user_agent)
                        .bind(s.ip)
                        .bind(s.password_hash)
                        .bind(s.roles.to_column())
                        .bind(s.level)
                        .bind(s.methods.join(","))
                        .bind(needs_factor)
                        .bind(factor)
                        .execute(&mut *tx)
                        .await?;
                        if opened.rows_affected() == 0 {
                            return Ok(false);
                        }
                        sql::insert_refresh_token(
                            &s.refresh_hash,
                            s.id,
                            Timestamp(s.created_at),
                            Timestamp(s.refresh_expires_at),
                        )
                        .execute(&mut *tx)
                        .await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn rotate_refresh(
                    &self,
                    request: &RefreshRequest,
                    by: &AuditContext,
                ) -> StoreResult<Rotation> {
                    self.rotate(Refresh {
                        request: request.clone(),
                        by: by.clone(),
                    })
                    .await
                }

                async fn revoke_session_by_refresh(
                    &self,
                    token_hash: &[u8; 32],
                    now: OffsetDateTime,
                    by: &AuditContext,
                ) -> StoreResult<Option<Uuid>> {
                    let writer = self.writer().clone();
                    let (token_hash, by) = (*token_hash, by.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        let ended: Option<(Uuid, Uuid)> = sqlx::query_as(
                            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                             WHERE id = (SELECT session_id FROM refresh_tokens \
                                         WHERE token_hash = $1) \
                             AND revoked_at IS NULL RETURNING id, user_id",
                        )
                        .bind(&token_hash[..])
                        .bind(Timestamp(now))
                        .bind(RevokeReason::Logout.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some((session_id, user_id)) = ended else {
                            return Ok(None);
                        };
                        let mut record = by
                            .record(AuditKind::Logout, now)
                            .user(user_id)
                            .session(session_id);
                        record.context.actor_id = record.context.actor_id.or(Some(user_id));
                        sql::insert_audit(&record).execute(&mut *tx).await?;
                        tx.commit().await?;
                        Ok(Some(session_id))
                    })
                    .await
                }

                async fn revoke_user_sessions(
                    &self,
                    user_id: Uuid,
                    except: Option<Uuid>,
                    reason: RevokeReason,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<u64> {
                    let writer = self.writer().clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        let done = sql::end_user_sessions(user_id, except, reason, Timestamp(now))
                            .execute(&mut *tx)
                            .await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(done.rows_affected())
                    })
                    .await
                }

                async fn revoke_session(
                    &self,
                    user_id: Uuid,
                    session_id: Uuid,
                    reason: RevokeReason,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        let done = sqlx::query(
                            "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
                             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
                             AND expires_at > $3",
                        )
                        .bind(session_id)
                        .bind(user_id)
                        .bind(Timestamp(now))
                        .bind(reason.as_str())
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() != 1 {
                            return Ok(false);
                        }
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn list_sessions(
                    &self,
                    user_id: Uuid,
                    now: OffsetDateTime,
                ) -> StoreResult<Vec<SessionInfo>> {
                    let rows: Vec<SessionInfoRow> = sqlx::query_as(
                        "SELECT id, created_at, last_used_at, expires_at, user_agent, ip \
                         FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
                         AND expires_at > $2 ORDER BY created_at DESC, id DESC",
                    )
                    .bind(user_id)
                    .bind(Timestamp(now))
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().map(SessionInfo::from).collect())
                }

                async fn live_sessions(
                    &self,
                    session_ids: &[Uuid],
                    now: OffsetDateTime,
                ) -> StoreResult<Vec<(Uuid, User)>> {
                    self.live(session_ids, Timestamp(now)).await
                }

                async fn raise_session(
                    &self,
                    session_id: Uuid,
                    user_id: Uuid,
                    auth: &SessionAuth,
                    factor: ProvedFactor,
                    effects: &Effects,
                ) -> StoreResult<Option<OffsetDateTime>> {
                    let writer = self.writer().clone();
                    let (auth, effects) = (auth.clone(), effects.clone());
                    let factor = match factor {
                        ProvedFactor::This(id) => Some(id),
                        ProvedFactor::Any => None,
                    };
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // As for a new session: the factor proved must be
                        // there at the commit (factor changes lock the user).
                        Self::lock_for_new_session(&mut tx, user_id).await?;
                        let end: Option<(Timestamp,)> = sqlx::query_as(
                            "UPDATE sessions SET aal = $3, amr = $4, authenticated_at = $5 \
                             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
                             AND expires_at > $5 \
                             AND (EXISTS (SELECT 1 FROM mfa_factors WHERE user_id = $2 \
                                          AND confirmed_at IS NOT NULL \
                                          AND ($6 IS NULL OR id = $6)) \
                                  OR EXISTS (SELECT 1 FROM passkeys WHERE user_id = $2 \
                                             AND ($6 IS NULL OR id = $6))) \
                             RETURNING expires_at",
                        )
                        .bind(session_id)
                        .bind(user_id)
                        .bind(auth.level.clone())
                        .bind(auth.methods_column())
                        .bind(Timestamp(auth.at))
                        .bind(factor)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some((end,)) = end else {
                            return Ok(None);
                        };
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(Some(end.0))
                    })
                    .await
                }

                async fn purge(
                    &self,
                    now: OffsetDateTime,
                    revoked_before: OffsetDateTime,
                ) -> StoreResult<u64> {
                    let writer = self.writer().clone();
                    let (now, revoked_before) = (Timestamp(now), Timestamp(revoked_before));
                    detached(async move {
                        // In batches, each a short statement of its own: a
                        // purge of a million rows must not hold the writer, or
                        // locks requests wait for, for long. A used token stays
                        // while its session lives: presenting it again must
                        // still be seen as reuse (RFC 9700 §4.14.2), however
                        // old it is. It goes with its session.
                        let tokens = purge_expired(
                            &writer,
                            "refresh_tokens",
                            "token_hash",
                            " AND used_at IS NULL",
                            now,
                        )
                        .await?;
                        let statement = <$store as Dialect>::purge_statement(
                            "sessions",
                            "id",
                            "expires_at <= $1 OR revoked_at < $2 LIMIT $3",
                        );
                        let sessions = drain_paced(
                            <$store as Dialect>::PURGE_BATCH,
                            <$store as Dialect>::PURGE_PAUSE,
                            || async {
                                let done = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                                    .bind(now)
                                    .bind(revoked_before)
                                    .bind(<$store as Dialect>::PURGE_BATCH)
                                    .execute(&writer)
                                    .await?;
                                Ok(done.rows_affected())
                            },
                        )
                        .await?;
                        let links =
                            purge_expired(&writer, "flow_tokens", "token_hash", "", now).await?;
                        let challenges =
                            purge_expired(&writer, "mfa_challenges", "token_hash", "", now)
                                .await?
                                + purge_expired(&writer, "webauthn_ceremonies", "id", "", now)
                                    .await?
                                + purge_expired(&writer, "oauth_codes", "code_hash", "", now)
                                    .await?;
                        let purged = tokens + sessions + links + challenges;
                        Ok(purged)
                    })
                    .await
                }
            }

            #[async_trait]
            impl MfaStore for $store {
                async fn add_factor(
                    &self,
                    factor: &Factor,
                    stale_before: OffsetDateTime,
                ) -> StoreResult<()> {
                    let writer = self.writer().clone();
                    let factor = factor.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Factor changes of one user take turns (one pending
                        // enrolment replaces another).
                        Self::lock_for_user_change(&mut tx, factor.user_id).await?;
                        // Enrolments never confirmed are dropped after a while.
                        sqlx::query(
                            "DELETE FROM mfa_factors WHERE user_id = $1 AND kind = $2 \
                             AND confirmed_at IS NULL AND created_at < $3",
                        )
                        .bind(factor.user_id)
                        .bind(factor.kind.as_str())
                        .bind(Timestamp(stale_before))
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "INSERT INTO mfa_factors (id, user_id, kind, name, secret, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(factor.id)
                        .bind(factor.user_id)
                        .bind(factor.kind.as_str())
                        .bind(factor.name.clone())
                        .bind(factor.secret.clone())
                        .bind(Timestamp(factor.created_at))
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        Ok(())
                    })
                    .await
                }

                async fn factors(&self, user_id: Uuid) -> StoreResult<Vec<Factor>> {
                    let rows: Vec<sql::FactorRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "{} WHERE user_id = $1 ORDER BY created_at, id",
                        sql::SELECT_FACTORS
                    )))
                    .bind(user_id)
                    .fetch_all(self.reader())
                    .await?;
                    rows.into_iter().map(Factor::try_from).collect()
                }

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
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let hashes = recovery_hashes.to_vec();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Factor changes of one user take turns, and with
                        // the logins that rest on a factor.
                        Self::lock_for_user_change(&mut tx, user_id).await?;
                        if first_only && has_factor(&mut tx, user_id).await? {
                            return Err(StoreError::Conflict("factor"));
                        }
                        let done = sqlx::query(
                            "UPDATE mfa_factors SET confirmed_at = $3, last_used_step = $4, \
                             last_used_at = $3 \
                             WHERE id = $1 AND user_id = $2 AND confirmed_at IS NULL",
                        )
                        .bind(factor_id)
                        .bind(user_id)
                        .bind(Timestamp(now))
                        .bind(step)
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() != 1 {
                            return Ok(false);
                        }
                        replace_codes(&mut tx, user_id, &hashes).await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn use_totp_step(
                    &self,
                    factor_id: Uuid,
                    step: i64,
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    // One statement: of racing uses of one code, one wins.
                    let done = sqlx::query(
                        "UPDATE mfa_factors SET last_used_step = $2, last_used_at = $3 \
                         WHERE id = $1 AND confirmed_at IS NOT NULL \
                         AND (last_used_step IS NULL OR last_used_step < $2)",
                    )
                    .bind(factor_id)
                    .bind(step)
                    .bind(Timestamp(now))
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn delete_factor(
                    &self,
                    user_id: Uuid,
                    factor_id: Uuid,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Factor changes of one user take turns, and with
                        // the logins that rest on a factor.
                        Self::lock_for_user_change(&mut tx, user_id).await?;
                        let done = sqlx::query(
                            "DELETE FROM mfa_factors WHERE id = $1 AND user_id = $2",
                        )
                        .bind(factor_id)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() != 1 {
                            return Ok(false);
                        }
                        drop_codes_without_factors(&mut tx, user_id).await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn delete_factors(
                    &self,
                    user_id: Uuid,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<u64> {
                    let writer = self.writer().clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Factor changes of one user take turns, and with
                        // the logins that rest on a factor.
                        Self::lock_for_user_change(&mut tx, user_id).await?;
                        let done = sqlx::query("DELETE FROM mfa_factors WHERE user_id = $1")
                            .bind(user_id)
                            .execute(&mut *tx)
                            .await?;
                        let passkeys = sqlx::query("DELETE FROM passkeys WHERE user_id = $1")
                            .bind(user_id)
                            .execute(&mut *tx)
                            .await?;
                        replace_codes(&mut tx, user_id, &[]).await?;
                        // With the factors, every session: one that a factor
                        // opened or was added from must not outlive them.
                        sql::end_user_sessions(user_id, None, RevokeReason::UserChanged, Timestamp(now))
                            .execute(&mut *tx)
                            .await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(done.rows_affected() + passkeys.rows_affected())
                    })
                    .await
                }

                async fn replace_recovery_codes(
                    &self,
                    user_id: Uuid,
                    hashes: &[[u8; 32]],
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let hashes = hashes.to_vec();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Factor changes of one user take turns, and with
                        // the logins that rest on a factor.
                        Self::lock_for_user_change(&mut tx, user_id).await?;
                        if !has_factor(&mut tx, user_id).await? {
                            return Ok(false);
                        }
                        replace_codes(&mut tx, user_id, &hashes).await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn use_recovery_code(
                    &self,
                    user_id: Uuid,
                    hash: &[u8; 32],
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    let done = sqlx::query(
                        "UPDATE recovery_codes SET used_at = $3 \
                         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
                    )
                    .bind(user_id)
                    .bind(&hash[..])
                    .bind(Timestamp(now))
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn has_factor(&self, user_id: Uuid) -> StoreResult<bool> {
                    let found: Option<i32> = sqlx::query_scalar(sql::HAS_FACTOR)
                        .bind(user_id)
                        .fetch_optional(self.reader())
                        .await?;
                    Ok(found.is_some())
                }

                async fn recovery_codes_left(&self, user_id: Uuid) -> StoreResult<u32> {
                    let (left,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
                    )
                    .bind(user_id)
                    .fetch_one(self.reader())
                    .await?;
                    Ok(u32::try_from(left).unwrap_or(u32::MAX))
                }

                async fn create_challenge(&self, challenge: &NewChallenge) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO mfa_challenges \
                         (token_hash, user_id, password_hash, created_at, expires_at) \
                         VALUES ($1, $2, $5, $3, $4)",
                    )
                    .bind(&challenge.token_hash[..])
                    .bind(challenge.user_id)
                    .bind(Timestamp(challenge.created_at))
                    .bind(Timestamp(challenge.expires_at))
                    .bind(challenge.password_hash.clone())
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn challenge_user(
                    &self,
                    token_hash: &[u8; 32],
                    now: OffsetDateTime,
                ) -> StoreResult<Option<Uuid>> {
                    let row: Option<(Uuid,)> = sqlx::query_as(
                        "SELECT user_id FROM mfa_challenges WHERE token_hash = $1 AND expires_at > $2",
                    )
                    .bind(&token_hash[..])
                    .bind(Timestamp(now))
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(|(user_id,)| user_id))
                }

                async fn attempt_challenge(
                    &self,
                    token_hash: &[u8; 32],
                    now: OffsetDateTime,
                    max_attempts: u32,
                ) -> StoreResult<Option<Attempt>> {
                    // Counted and checked in one statement: racing attempts
                    // cannot share a count.
                    let row: Option<(Uuid, String, i64, Timestamp)> = sqlx::query_as(
                        "UPDATE mfa_challenges SET attempts = attempts + 1 \
                         WHERE token_hash = $1 AND expires_at > $2 AND attempts < $3 \
                         RETURNING user_id, password_hash, attempts, created_at",
                    )
                    .bind(&token_hash[..])
                    .bind(Timestamp(now))
                    .bind(i64::from(max_attempts))
                    .fetch_optional(self.writer())
                    .await?;
                    Ok(row.map(|(user_id, password_hash, attempts, created_at)| Attempt {
                        user_id,
                        password_hash,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        created_at: created_at.0,
                    }))
                }

                async fn end_challenge(&self, token_hash: &[u8; 32]) -> StoreResult<bool> {
                    let done = sqlx::query("DELETE FROM mfa_challenges WHERE token_hash = $1")
                        .bind(&token_hash[..])
                        .execute(self.writer())
                        .await?;
                    Ok(done.rows_affected() == 1)
                }
            }

            #[async_trait]
            impl PasskeyStore for $store {
                async fn add_ceremony(&self, ceremony: &Ceremony) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO webauthn_ceremonies \
                         (id, purpose, user_id, state, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(ceremony.id)
                    .bind(ceremony.purpose.as_str())
                    .bind(ceremony.user_id)
                    .bind(ceremony.state.clone())
                    .bind(Timestamp(ceremony.created_at))
                    .bind(Timestamp(ceremony.expires_at))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn take_ceremony(
                    &self,
                    id: Uuid,
                    purpose: CeremonyPurpose,
                    now: OffsetDateTime,
                ) -> StoreResult<Option<Ceremony>> {
                    // Deleted as it is read, whatever comes of it: a state
                    // is good for one finish (no replay of a response).
                    let row: Option<(Option<Uuid>, String, Timestamp, Timestamp)> = sqlx::query_as(
                        "DELETE FROM webauthn_ceremonies WHERE id = $1 AND purpose = $2 \
                         RETURNING user_id, state, created_at, expires_at",
                    )
                    .bind(id)
                    .bind(purpose.as_str())
                    .fetch_optional(self.writer())
                    .await?;
                    Ok(row
                        .filter(|(_, _, _, expires_at)| expires_at.0 > now)
                        .map(|(user_id, state, created_at, expires_at)| Ceremony {
                            id,
                            purpose,
                            user_id,
                            state,
                            created_at: created_at.0,
                            expires_at: expires_at.0,
                        }))
                }

                async fn add_passkey(
                    &self,
                    passkey: &StoredPasskey,
                    session_id: Option<Uuid>,
                    first: Option<&[[u8; 32]]>,
                    max: u32,
                    effects: &Effects,
                ) -> StoreResult<Added> {
                    let writer = self.writer().clone();
                    let (passkey, effects) = (passkey.clone(), effects.clone());
                    let recovery_codes = first.map(<[_]>::to_vec);
                    let user_id = passkey.user_id;
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Factor changes of one user take turns: the count
                        // and the check below hold at the commit.
                        Self::lock_for_user_change(&mut tx, user_id).await?;
                        let held: i64 =
                            sqlx::query_scalar("SELECT COUNT(*) FROM passkeys WHERE user_id = $1")
                                .bind(user_id)
                                .fetch_one(&mut *tx)
                                .await?;
                        if held >= i64::from(max) {
                            return Ok(Added::TooMany);
                        }
                        // The session adding it must be live at the commit: a
                        // reset that ended it also removes what it added.
                        if let Some(session_id) = session_id {
                            let live: Option<i32> = sqlx::query_scalar(
                                "SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 \
                                 AND revoked_at IS NULL",
                            )
                            .bind(session_id)
                            .bind(user_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                            if live.is_none() {
                                return Ok(Added::SessionEnded);
                            }
                        }
                        if recovery_codes.is_some() && has_factor(&mut tx, user_id).await? {
                            return Ok(Added::NotFirst);
                        }
                        sqlx::query(
                            "INSERT INTO passkeys \
                             (id, user_id, credential_id, credential, name, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(passkey.id)
                        .bind(passkey.user_id)
                        .bind(passkey.credential_id.clone())
                        .bind(passkey.credential.clone())
                        .bind(passkey.name.clone())
                        .bind(Timestamp(passkey.created_at))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| match map_unique(e) {
                            StoreError::Conflict(_) => StoreError::Conflict("passkey"),
                            other => other,
                        })?;
                        if let Some(hashes) = &recovery_codes {
                            replace_codes(&mut tx, passkey.user_id, hashes).await?;
                        }
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(Added::Added)
                    })
                    .await
                }

                async fn passkeys(&self, user_id: Uuid) -> StoreResult<Vec<StoredPasskey>> {
                    let rows: Vec<sql::PasskeyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "{} WHERE user_id = $1 ORDER BY created_at, id",
                        sql::SELECT_PASSKEYS
                    )))
                    .bind(user_id)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().map(StoredPasskey::from).collect())
                }

                async fn passkey_by_credential(
                    &self,
                    credential_id: &[u8],
                ) -> StoreResult<Option<StoredPasskey>> {
                    let row: Option<sql::PasskeyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "{} WHERE credential_id = $1",
                        sql::SELECT_PASSKEYS
                    )))
                    .bind(credential_id.to_vec())
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(StoredPasskey::from))
                }

                async fn use_passkey(
                    &self,
                    id: Uuid,
                    read: &str,
                    credential: &str,
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    // Only over the record the login read: of two logins
                    // that read one counter, one passes.
                    let done = sqlx::query(
                        "UPDATE passkeys SET credential = $2, last_used_at = $3 \
                         WHERE id = $1 AND credential = $4",
                    )
                    .bind(id)
                    .bind(credential.to_owned())
                    .bind(Timestamp(now))
                    .bind(read.to_owned())
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn delete_passkey(
                    &self,
                    user_id: Uuid,
                    id: Uuid,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Factor changes of one user take turns, and with
                        // the logins that rest on a factor.
                        Self::lock_for_user_change(&mut tx, user_id).await?;
                        let done = sqlx::query("DELETE FROM passkeys WHERE id = $1 AND user_id = $2")
                            .bind(id)
                            .bind(user_id)
                            .execute(&mut *tx)
                            .await?;
                        if done.rows_affected() != 1 {
                            return Ok(false);
                        }
                        drop_codes_without_factors(&mut tx, user_id).await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }
            }

            #[async_trait]
            impl OAuthStore for $store {
                async fn add_client(&self, client: &OAuthClient, effects: &Effects) -> StoreResult<()> {
                    let writer = self.writer().clone();
                    let (client, effects) = (client.clone(), effects.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        sqlx::query(
                            "INSERT INTO oauth_clients (id, name, secret_hash, redirect_uris, \
                             post_logout_redirect_uris, scopes, first_party, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        )
                        .bind(client.id.clone())
                        .bind(client.name.clone())
                        .bind(client.secret_hash.map(|h| h.to_vec()))
                        .bind(client.redirect_uris.join(" "))
                        .bind(client.post_logout_redirect_uris.join(" "))
                        .bind(client.scopes.clone())
                        .bind(client.first_party)
                        .bind(Timestamp(client.created_at))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| match map_unique(e) {
                            StoreError::Conflict(_) => StoreError::Conflict("client_id"),
                            other => other,
                        })?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(())
                    })
                    .await
                }

                async fn clients(&self) -> StoreResult<Vec<OAuthClient>> {
                    let rows: Vec<sql::ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "{} ORDER BY created_at, id",
                        sql::SELECT_CLIENTS
                    )))
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(OAuthClient::try_from)
                        .collect::<sqlx::Result<_>>()?)
                }

                async fn client(&self, id: &str) -> StoreResult<Option<OAuthClient>> {
                    let row: Option<sql::ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "{} WHERE id = $1",
                        sql::SELECT_CLIENTS
                    )))
                    .bind(id.to_owned())
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(OAuthClient::try_from).transpose()?)
                }

                async fn delete_client(
                    &self,
                    id: &str,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let (id, effects) = (id.to_owned(), effects.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        let done = sqlx::query("DELETE FROM oauth_clients WHERE id = $1")
                            .bind(id.clone())
                            .execute(&mut *tx)
                            .await?;
                        if done.rows_affected() != 1 {
                            return Ok(false);
                        }
                        // Its codes and grants go with it (foreign keys);
                        // the sessions it opened end, and stay for the record.
                        sqlx::query(
                            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                             WHERE client_id = $1 AND revoked_at IS NULL",
                        )
                        .bind(id)
                        .bind(Timestamp(now))
                        .bind(RevokeReason::ClientDeleted.as_str())
                        .execute(&mut *tx)
                        .await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn add_code(&self, code: &AuthorizationCode, session_id: Uuid) -> StoreResult<bool> {
                    // The session's authentication, as it is at this moment,
                    // goes with the code into the ID token.
                    let done = sqlx::query(
                        "INSERT INTO oauth_codes (code_hash, client_id, user_id, session_id, \
                         redirect_uri, scope, nonce, code_challenge, aal, amr, authenticated_at, \
                         created_at, expires_at) \
                         SELECT $1, $2, $3, s.id, $4, $5, $6, $7, s.aal, s.amr, \
                                COALESCE(s.authenticated_at, s.created_at), $8, $9 \
                         FROM sessions s WHERE s.id = $10 AND s.user_id = $3 \
                           AND s.revoked_at IS NULL AND s.expires_at > $8",
                    )
                    .bind(&code.code_hash[..])
                    .bind(code.client_id.clone())
                    .bind(code.user_id)
                    .bind(code.redirect_uri.clone())
                    .bind(code.scope.clone())
                    .bind(code.nonce.clone())
                    .bind(code.code_challenge.clone())
                    .bind(Timestamp(code.created_at))
                    .bind(Timestamp(code.expires_at))
                    .bind(session_id)
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn redeem_code(
                    &self,
                    code_hash: &[u8; 32],
                    now: OffsetDateTime,
                    check: CodeCheck,
                    session: &NewClientSession,
                    effects: &Effects,
                ) -> StoreResult<CodeRedemption> {
                    let writer = self.writer().clone();
                    let (hash, session, effects) = (code_hash.to_vec(), session.clone(), effects.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Of racing exchanges, one sets used_at.
                        let row: Option<sql::CodeRow> = sqlx::query_as(
                            "UPDATE oauth_codes SET used_at = $2 \
                             WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                             RETURNING code_hash, client_id, user_id, redirect_uri, scope, nonce, \
                             code_challenge, aal, amr, authenticated_at, created_at, expires_at",
                        )
                        .bind(hash.clone())
                        .bind(Timestamp(now))
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(row) = row else {
                            let used: Option<Option<Uuid>> = sqlx::query_scalar(
                                "SELECT issued_session_id FROM oauth_codes \
                                 WHERE code_hash = $1 AND used_at IS NOT NULL",
                            )
                            .bind(hash)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(issued) = used else {
                                return Ok(CodeRedemption::Invalid);
                            };
                            // A code presented twice was stolen, or its
                            // exchange was: what the first exchange opened ends.
                            if let Some(session_id) = issued {
                                sqlx::query(
                                    "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                                     WHERE id = $1 AND revoked_at IS NULL",
                                )
                                .bind(session_id)
                                .bind(Timestamp(now))
                                .bind(RevokeReason::CodeReplay.as_str())
                                .execute(&mut *tx)
                                .await?;
                            }
                            tx.commit().await?;
                            return Ok(CodeRedemption::Replayed);
                        };
                        let issued = IssuedCode::try_from(row)?;
                        // The browser's session the code was issued in must
                        // still be live: a logout everywhere, a password
                        // change or a reset since then ends the code too.
                        let issuing: Option<i32> = sqlx::query_scalar(
                            "SELECT 1 FROM oauth_codes c JOIN sessions s ON s.id = c.session_id \
                             WHERE c.code_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
                        )
                        .bind(issued.code.code_hash.to_vec())
                        .bind(Timestamp(now))
                        .fetch_optional(&mut *tx)
                        .await?;
                        if issuing.is_none() {
                            tx.commit().await?;
                            return Ok(CodeRedemption::Invalid);
                        }
                        if !check(&issued.code) {
                            tx.commit().await?;
                            return Ok(CodeRedemption::Refused);
                        }
                        let user_id = issued.code.user_id;
                        Self::lock_for_new_session(&mut tx, user_id).await?;
                        let opened = sqlx::query(
                            "INSERT INTO sessions (id, user_id, created_at, expires_at, user_agent, \
                             ip, aal, amr, authenticated_at, client_id, scope) \
                             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
                             WHERE EXISTS (SELECT 1 FROM users WHERE id = $2 AND is_active)",
                        )
                        .bind(session.id)
                        .bind(user_id)
                        .bind(Timestamp(session.created_at))
                        .bind(Timestamp(session.expires_at))
                        .bind(session.user_agent.clone())
                        .bind(session.ip.clone())
                        .bind(issued.auth.level.clone())
                        .bind(issued.auth.methods_column())
                        .bind(Timestamp(issued.auth.at))
                        .bind(issued.code.client_id.clone())
                        .bind(issued.code.scope.clone())
                        .execute(&mut *tx)
                        .await?;
                        if opened.rows_affected() == 0 {
                            tx.commit().await?;
                            return Ok(CodeRedemption::Invalid);
                        }
                        sql::insert_refresh_token(
                            &session.refresh_hash,
                            session.id,
                            Timestamp(session.created_at),
                            Timestamp(session.refresh_expires_at),
                        )
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("UPDATE oauth_codes SET issued_session_id = $2 WHERE code_hash = $1")
                            .bind(issued.code.code_hash.to_vec())
                            .bind(session.id)
                            .execute(&mut *tx)
                            .await?;
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(CodeRedemption::Redeemed(Box::new(issued)))
                    })
                    .await
                }

                async fn grants(&self, user_id: Uuid) -> StoreResult<Vec<Grant>> {
                    let rows: Vec<(String, String, String, Timestamp, Timestamp)> = sqlx::query_as(
                        "SELECT g.client_id, c.name, g.scope, g.created_at, g.updated_at \
                         FROM oauth_grants g JOIN oauth_clients c ON c.id = g.client_id \
                         WHERE g.user_id = $1 ORDER BY g.created_at, g.client_id",
                    )
                    .bind(user_id)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(client_id, client_name, scope, created_at, updated_at)| Grant {
                            client_id,
                            client_name,
                            scope,
                            created_at: created_at.0,
                            updated_at: updated_at.0,
                        })
                        .collect())
                }

                async fn revoke_grant(
                    &self,
                    user_id: Uuid,
                    client_id: &str,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let (client_id, effects) = (client_id.to_owned(), effects.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        let grants = sqlx::query(
                            "DELETE FROM oauth_grants WHERE user_id = $1 AND client_id = $2",
                        )
                        .bind(user_id)
                        .bind(client_id.clone())
                        .execute(&mut *tx)
                        .await?;
                        let sessions = sqlx::query(
                            "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
                             WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL",
                        )
                        .bind(user_id)
                        .bind(client_id)
                        .bind(Timestamp(now))
                        .bind(RevokeReason::GrantRevoked.as_str())
                        .execute(&mut *tx)
                        .await?;
                        if grants.rows_affected() + sessions.rows_affected() == 0 {
                            return Ok(false);
                        }
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn grant(&self, user_id: Uuid, client_id: &str) -> StoreResult<Option<String>> {
                    Ok(sqlx::query_scalar(
                        "SELECT scope FROM oauth_grants WHERE user_id = $1 AND client_id = $2",
                    )
                    .bind(user_id)
                    .bind(client_id.to_owned())
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn save_grant(
                    &self,
                    user_id: Uuid,
                    client_id: &str,
                    scope: &str,
                    now: OffsetDateTime,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO oauth_grants (user_id, client_id, scope, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $4) \
                         ON CONFLICT (user_id, client_id) \
                         DO UPDATE SET scope = excluded.scope, updated_at = excluded.updated_at",
                    )
                    .bind(user_id)
                    .bind(client_id.to_owned())
                    .bind(scope.to_owned())
                    .bind(Timestamp(now))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl FlowStore for $store {
                async fn apply(&self, effects: &Effects) -> StoreResult<()> {
                    let writer = self.writer().clone();
                    let effects = effects.clone();
                    detached(async move { apply_alone(&writer, &effects).await }).await
                }

                async fn find_flow_token(
                    &self,
                    hash: &[u8; 32],
                    purpose: FlowPurpose,
                    now: OffsetDateTime,
                ) -> StoreResult<Option<FlowToken>> {
                    let row: Option<FlowTokenRow> = sqlx::query_as(
                        "SELECT user_id, email, expires_at FROM flow_tokens \
                         WHERE token_hash = $1 AND purpose = $2 AND expires_at > $3",
                    )
                    .bind(&hash[..])
                    .bind(purpose.as_str())
                    .bind(Timestamp(now))
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(FlowToken::from))
                }

                async fn redeem_flow_token(
                    &self,
                    hash: &[u8; 32],
                    purpose: FlowPurpose,
                    user_id: Uuid,
                    redemption: &Redemption,
                    now: OffsetDateTime,
                    effects: &Effects,
                ) -> StoreResult<Redeemed> {
                    let writer = self.writer().clone();
                    let (hash, redemption, effects) = (*hash, redemption.clone(), effects.clone());
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // Deleting it is using it up: of racing redemptions
                        // only one deletes the row. Returning early rolls back.
                        let email: Option<String> = sqlx::query_scalar(
                            "DELETE FROM flow_tokens WHERE token_hash = $1 AND purpose = $2 \
                             AND user_id = $3 AND expires_at > $4 RETURNING email",
                        )
                        .bind(&hash[..])
                        .bind(purpose.as_str())
                        .bind(user_id)
                        .bind(Timestamp(now))
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(Ok(email)) = email.as_deref().map(Email::parse) else {
                            return Ok(Redeemed::Invalid);
                        };
                        const RETURNING: &str = " RETURNING id, username, email, \
                            email_verified, roles, is_active, created_at";
                        // The address the link went to must still be the
                        // user's: a link to an old address is dead.
                        let row: Option<UserRow> = match &redemption {
                            Redemption::VerifyEmail => {
                                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                                    "UPDATE users SET email_verified = TRUE, updated_at = $3 \
                                     WHERE id = $1 AND email_normalized = $2 AND is_active{RETURNING}"
                                )))
                                .bind(user_id)
                                .bind(email.normalized())
                                .bind(Timestamp(now))
                                .fetch_optional(&mut *tx)
                                .await?
                            }
                            Redemption::ResetPassword { password_hash } => {
                                let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                                    "UPDATE users SET password_hash = $3, email_verified = TRUE, \
                                     updated_at = $4 WHERE id = $1 AND email_normalized = $2 \
                                     AND is_active{RETURNING}"
                                )))
                                .bind(user_id)
                                .bind(email.normalized())
                                .bind(password_hash.as_str())
                                .bind(Timestamp(now))
                                .fetch_optional(&mut *tx)
                                .await?;
                                if row.is_some() {
                                    sql::end_user_sessions(
                                        user_id,
                                        None,
                                        RevokeReason::PasswordReset,
                                        Timestamp(now),
                                    )
                                    .execute(&mut *tx)
                                    .await?;
                                    sql::end_user_links(user_id)
                                        .execute(&mut *tx)
                                        .await?;
                                }
                                row
                            }
                            Redemption::ChangeEmail => {
                                let changed = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                                    "UPDATE users SET email = $2, email_normalized = $3, \
                                     email_verified = TRUE, updated_at = $4 \
                                     WHERE id = $1 AND is_active{RETURNING}"
                                )))
                                .bind(user_id)
                                .bind(email.as_str())
                                .bind(email.normalized())
                                .bind(Timestamp(now))
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(map_unique);
                                match changed {
                                    Err(StoreError::Conflict(_)) => return Ok(Redeemed::EmailTaken),
                                    other => other?,
                                }
                            }
                        };
                        let Some(row) = row else {
                            return Ok(Redeemed::Invalid);
                        };
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(Redeemed::Done(User::try_from(row)?))
                    })
                    .await
                }
            }

            #[async_trait]
            impl MailStore for $store {
                async fn claim_mail(
                    &self,
                    owner: Uuid,
                    limit: u32,
                    max_attempts: u32,
                    now: OffsetDateTime,
                    lease_until: OffsetDateTime,
                ) -> StoreResult<Vec<QueuedMail>> {
                    let writer = self.writer().clone();
                    let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        // A claim whose sender vanished (a crash, a hang) runs
                        // out; on its last attempt the message is given up.
                        sqlx::query(
                            "UPDATE mail_outbox SET status = 'failed', body = NULL, \
                             lease_owner = NULL, lease_until = NULL, \
                             last_error = COALESCE(last_error, 'no outcome within the lease') \
                             WHERE status = 'pending' AND attempts >= $1 AND lease_until <= $2",
                        )
                        .bind(max_attempts)
                        .bind(Timestamp(now))
                        .execute(&mut *tx)
                        .await?;
                        let rows: Vec<(Uuid, String, String, Option<String>, i32)> =
                            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                                "UPDATE mail_outbox SET attempts = attempts + 1, \
                                 lease_owner = $1, lease_until = $2 \
                                 WHERE id IN (SELECT id FROM mail_outbox \
                                     WHERE status = 'pending' AND next_attempt_at <= $3 \
                                     AND (lease_until IS NULL OR lease_until <= $3) \
                                     AND attempts < $4 \
                                     ORDER BY next_attempt_at LIMIT $5{}) \
                                 RETURNING id, recipient, subject, body, attempts",
                                <$store as Dialect>::SKIP_LOCKED
                            )))
                            .bind(owner)
                            .bind(Timestamp(lease_until))
                            .bind(Timestamp(now))
                            .bind(max_attempts)
                            .bind(i64::from(limit))
                            .fetch_all(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok(rows
                            .into_iter()
                            .map(|(id, to, subject, text, attempts)| QueuedMail {
                                id,
                                to,
                                subject,
                                text: text.unwrap_or_default(),
                                attempts: u32::try_from(attempts).unwrap_or(0),
                            })
                            .collect())
                    })
                    .await
                }

                async fn mail_sent(
                    &self,
                    id: Uuid,
                    owner: Uuid,
                    now: OffsetDateTime,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE mail_outbox SET status = 'sent', sent_at = $3, body = NULL, \
                         lease_owner = NULL, lease_until = NULL, last_error = NULL \
                         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(Timestamp(now))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn mail_failed(
                    &self,
                    id: Uuid,
                    owner: Uuid,
                    error: &str,
                    retry_at: Option<OffsetDateTime>,
                ) -> StoreResult<()> {
                    let error: String = error.chars().take(500).collect();
                    let query = match retry_at {
                        Some(at) => sqlx::query(
                            "UPDATE mail_outbox SET next_attempt_at = $4, lease_owner = NULL, \
                             lease_until = NULL, last_error = $3 \
                             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                        )
                        .bind(id)
                        .bind(owner)
                        .bind(error)
                        .bind(Timestamp(at)),
                        None => sqlx::query(
                            "UPDATE mail_outbox SET status = 'failed', body = NULL, \
                             lease_owner = NULL, lease_until = NULL, last_error = $3 \
                             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                        )
                        .bind(id)
                        .bind(owner)
                        .bind(error),
                    };
                    query.execute(self.writer()).await?;
                    Ok(())
                }

                async fn list_mail(
                    &self,
                    status: Option<MailStatus>,
                    limit: u32,
                    before: Option<Uuid>,
                ) -> StoreResult<Vec<MailInfo>> {
                    let rows: Vec<MailInfoRow> = sqlx::query_as(
                        "SELECT id, kind, recipient, subject, status, attempts, created_at, \
                         next_attempt_at, sent_at, last_error FROM mail_outbox \
                         WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2) \
                         ORDER BY id DESC LIMIT $3",
                    )
                    .bind(status.map(MailStatus::as_str))
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(MailInfo::try_from)
                        .collect::<Result<_, _>>()?)
                }

                async fn purge_mail(&self, before: OffsetDateTime) -> StoreResult<u64> {
                    Ok(until_drained(<$store as Dialect>::PURGE_BATCH, || async {
                        let done = sqlx::query(
                            "DELETE FROM mail_outbox WHERE id IN (SELECT id FROM mail_outbox \
                             WHERE status <> 'pending' AND created_at < $1 LIMIT $2)",
                        )
                        .bind(Timestamp(before))
                        .bind(<$store as Dialect>::PURGE_BATCH)
                        .execute(self.writer())
                        .await?;
                        Ok(done.rows_affected())
                    })
                    .await?)
                }
            }

            #[async_trait]
            impl AuditStore for $store {
                async fn record(&self, record: &AuditRecord) -> StoreResult<()> {
                    sql::insert_audit(record).execute(self.writer()).await?;
                    Ok(())
                }

                async fn list_audit(
                    &self,
                    filter: &AuditFilter,
                    limit: u32,
                    before: Option<Uuid>,
                ) -> StoreResult<Vec<AuditRecord>> {
                    let rows: Vec<AuditRow> = sqlx::query_as(
                        "SELECT id, occurred_at, type, outcome, actor_id, user_id, session_id, \
                         ip, user_agent, request_id, detail FROM audit_events \
                         WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR type = $2) \
                         AND ($3 IS NULL OR occurred_at >= $3) AND ($4 IS NULL OR id < $4) \
                         ORDER BY id DESC LIMIT $5",
                    )
                    .bind(filter.user_id)
                    .bind(filter.kind.map(AuditKind::as_str))
                    .bind(filter.since.map(Timestamp))
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(AuditRecord::try_from)
                        .collect::<Result<_, _>>()?)
                }

                async fn purge_audit(&self, before: OffsetDateTime) -> StoreResult<u64> {
                    Ok(until_drained(<$store as Dialect>::PURGE_BATCH, || async {
                        let done = sqlx::query(
                            "DELETE FROM audit_events WHERE id IN \
                             (SELECT id FROM audit_events WHERE occurred_at < $1 LIMIT $2)",
                        )
                        .bind(Timestamp(before))
                        .bind(<$store as Dialect>::PURGE_BATCH)
                        .execute(self.writer())
                        .await?;
                        Ok(done.rows_affected())
                    })
                    .await?)
                }
            }

            #[async_trait]
            impl $crate::store::LimitStore for $store {
                async fn take_unit(
                    &self,
                    key: &[u8; 32],
                    now: i64,
                    interval: i64,
                    window: i64,
                ) -> StoreResult<$crate::store::QuotaState> {
                    let (tat, allowed): (i64, bool) =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql::TAKE_UNIT.as_str()))
                            .bind(&key[..])
                            .bind(now)
                            .bind(interval)
                            .bind(window)
                            .fetch_one(self.limits())
                            .await?;
                    Ok($crate::store::QuotaState { allowed, tat })
                }

                async fn reserve_attempt(
                    &self,
                    key: &[u8; 32],
                    now: i64,
                    rule: &$crate::store::BackoffRule,
                ) -> StoreResult<$crate::store::FailureState> {
                    let (failures, last_at, allowed): (i64, i64, bool) =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql::RESERVE_ATTEMPT.as_str()))
                            .bind(&key[..])
                            .bind(now)
                            .bind(rule.free)
                            .bind(rule.memory)
                            .bind(rule.base)
                            .bind(rule.cap)
                            .bind(rule.max_shift)
                            .fetch_one(self.limits())
                            .await?;
                    Ok($crate::store::FailureState { allowed, failures, last_at })
                }

                async fn release_attempt(&self, key: &[u8; 32]) -> StoreResult<()> {
                    // One statement on the path of every successful login; a
                    // row left at no failures is deleted by the next purge.
                    sqlx::query(
                        "UPDATE limit_failures SET failures = failures - 1 \
                         WHERE key = $1 AND failures > 0",
                    )
                    .bind(&key[..])
                    .execute(self.limits())
                    .await?;
                    Ok(())
                }

                async fn clear_failures(&self, key: &[u8; 32]) -> StoreResult<()> {
                    sqlx::query("DELETE FROM limit_failures WHERE key = $1")
                        .bind(&key[..])
                        .execute(self.limits())
                        .await?;
                    Ok(())
                }

                async fn purge_limits(&self, now: i64, memory: i64, batch: u32) -> StoreResult<u64> {
                    // In batches: a purge must not hold locks on a million
                    // rows that requests are checking.
                    let quotas = sqlx::query(
                        "DELETE FROM limit_quotas WHERE key IN \
                         (SELECT key FROM limit_quotas WHERE tat <= $1 LIMIT $2)",
                    )
                    .bind(now)
                    .bind(i64::from(batch))
                    .execute(self.limits())
                    .await?;
                    let failures = sqlx::query(
                        "DELETE FROM limit_failures WHERE key IN \
                         (SELECT key FROM limit_failures \
                          WHERE last_at <= $1 - $2 OR failures <= 0 LIMIT $3)",
                    )
                    .bind(now)
                    .bind(memory)
                    .bind(i64::from(batch))
                    .execute(self.limits())
                    .await?;
                    Ok(quotas.rows_affected() + failures.rows_affected())
                }
            }

            impl $store {
                /// Inserts `key` in `tx` if `guard`, seeing every key, allows it.
                async fn insert_key_if(
                    tx: &mut Tx,
                    key: &StoredKey,
                    guard: &KeyGuard,
                ) -> sqlx::Result<bool> {
                    let keys: Vec<StoredKey> = sqlx::query_as::<_, KeyRow>(SELECT_KEYS)
                        .fetch_all(&mut **tx)
                        .await?
                        .into_iter()
                        .map(StoredKey::from)
                        .collect();
                    if !guard(&keys) {
                        return Ok(false);
                    }
                    sqlx::query(
                        "INSERT INTO signing_keys \
                         (kid, algorithm, secret, sealed, public_jwk, created_at, activates_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(key.kid.clone())
                    .bind(key.algorithm.clone())
                    .bind(key.secret.clone())
                    .bind(key.sealed)
                    .bind(key.public_jwk.clone())
                    .bind(Timestamp(key.created_at))
                    .bind(Timestamp(key.activates_at))
                    .execute(&mut **tx)
                    .await?;
                    Ok(true)
                }
            }

            #[async_trait]
            impl KeyStore for $store {
                async fn signing_keys(&self) -> StoreResult<Vec<StoredKey>> {
                    let rows: Vec<KeyRow> = sqlx::query_as(SELECT_KEYS)
                        .fetch_all(self.reader())
                        .await?;
                    Ok(rows.into_iter().map(StoredKey::from).collect())
                }

                async fn insert_signing_key(
                    &self,
                    key: &StoredKey,
                    guard: KeyGuard,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    // Instances deciding together (two first starts, two
                    // scheduled rotations) must end up with one new key, not
                    // one each: the lock makes the second wait for the
                    // first's insert, and its guard then sees it.
                    let writer = self.writer().clone();
                    let key = key.clone();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        Self::lock_for_key_generation(&mut tx).await?;
                        let inserted = Self::insert_key_if(&mut tx, &key, &guard).await?;
                        if inserted {
                            write_effects(&mut tx, &effects).await?;
                        }
                        tx.commit().await?;
                        Ok(inserted)
                    })
                    .await
                }

                async fn revoke_signing_key(
                    &self,
                    kid: &str,
                    at: OffsetDateTime,
                    then: Option<(StoredKey, KeyGuard)>,
                    effects: &Effects,
                ) -> StoreResult<bool> {
                    let writer = self.writer().clone();
                    let kid = kid.to_owned();
                    let effects = effects.clone();
                    detached(async move {
                        let mut tx = Self::begin_write(&writer).await?;
                        Self::lock_for_key_generation(&mut tx).await?;
                        let found = sqlx::query(
                            "UPDATE signing_keys SET revoked_at = COALESCE(revoked_at, $2) \
                             WHERE kid = $1",
                        )
                        .bind(&kid)
                        .bind(Timestamp(at))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            > 0;
                        if !found {
                            return Ok(false);
                        }
                        if let Some((key, guard)) = &then {
                            Self::insert_key_if(&mut tx, key, guard).await?;
                        }
                        write_effects(&mut tx, &effects).await?;
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
                }

                async fn delete_signing_keys(&self, kids: &[String]) -> StoreResult<u64> {
                    let mut deleted = 0;
                    for kid in kids {
                        deleted += sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                            .bind(kid)
                            .execute(self.writer())
                            .await?
                            .rows_affected();
                    }
                    Ok(deleted)
                }
            }
        };
    };
}

pub(super) use sql_store;
