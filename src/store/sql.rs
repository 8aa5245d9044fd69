//! What the two backends share: one timestamp type and the rows both read.

use sqlx::{
    Database, Decode, Encode, FromRow, Postgres, Sqlite, Type, encode::IsNull, error::BoxDynError,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Credentials, Rotation, StoredKey};
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

/// A user as both backends select it: [`USER_COLUMNS`], or the same names
/// from a join.
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

/// The columns of [`UserRow`], for statements on `users` alone.
pub(super) const USER_COLUMNS: &str =
    "id, username, email, email_verified, roles, is_active, created_at";

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

/// A session whose refresh token just rotated.
#[derive(FromRow)]
pub(super) struct RotatedRow {
    session_id: Uuid,
    session_expires_at: Timestamp,
    #[sqlx(flatten, try_from = "UserRow")]
    user: User,
}

impl From<RotatedRow> for Rotation {
    fn from(row: RotatedRow) -> Self {
        Rotation::Rotated {
            session_id: row.session_id,
            user: row.user,
            session_expires_at: row.session_expires_at.0,
        }
    }
}

/// A session revoked because one of its refresh tokens came back after use.
#[derive(FromRow)]
pub(super) struct ReusedRow {
    id: Uuid,
    user_id: Uuid,
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
    created_at: Timestamp,
}

impl From<KeyRow> for StoredKey {
    fn from(row: KeyRow) -> Self {
        StoredKey {
            kid: row.kid,
            algorithm: row.algorithm,
            secret: row.secret,
            created_at: row.created_at.0,
        }
    }
}
