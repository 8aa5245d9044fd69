//! PostgreSQL implementation of [`Store`].

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgPool, postgres::PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Credentials, KeyStore, NewSession, NewUser, RevokeReason, Rotation, SessionStore, Store,
    StoreError, StoreResult, StoredKey, UpdatePlan, UpdatedUser, User, UserChanges, UserStore,
    detached, map_unique,
    sql::{
        CredentialsRow, KeyRow, ReusedRow, RotatedRow, SessionUserRow, Timestamp, USER_COLUMNS,
        UserRow,
    },
};

pub struct PgStore {
    pool: PgPool,
    /// Session checks only. Every protected request may depend on one, so they
    /// must not queue behind writes waiting for their commits to reach disk.
    checks: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        let checks = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool, checks })
    }
}

fn user_query(filter: &'static str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users {filter}"))
}

async fn insert_user<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    user: &NewUser,
    on_conflict: &'static str,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "INSERT INTO users (id, username, username_normalized, email, email_normalized, \
         password_hash, roles, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) {on_conflict}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user.id)
        .bind(user.username.as_ref().map(|u| u.as_str().to_owned()))
        .bind(user.username.as_ref().map(|u| u.normalized()))
        .bind(user.email.as_ref().map(|e| e.as_str().to_owned()))
        .bind(user.email.as_ref().map(|e| e.normalized()))
        .bind(&user.password_hash)
        .bind(user.roles.to_column())
        .bind(Timestamp(user.created_at))
        .execute(exec)
        .await
        .map(|r| r.rows_affected())
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        insert_user(&self.pool, user, "")
            .await
            .map_err(map_unique)?;
        Ok(user.view())
    }

    async fn create_user_if_absent(&self, user: &NewUser) -> StoreResult<bool> {
        let n = insert_user(&self.pool, user, "ON CONFLICT DO NOTHING").await?;
        Ok(n == 1)
    }

    async fn find_credentials(&self, login: &str) -> StoreResult<Option<Credentials>> {
        let row: Option<CredentialsRow> = sqlx::query_as(
            "SELECT id, username, email, email_verified, roles, is_active, created_at, password_hash \
             FROM users WHERE username_normalized = $1 OR email_normalized = $1 LIMIT 1",
        )
        .bind(login)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Credentials::from))
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as(user_query("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(User::try_from).transpose()?)
    }

    async fn set_password_hash(
        &self,
        id: Uuid,
        hash: &str,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(hash)
            .bind(Timestamp(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_users(&self, limit: u32, after: Option<Uuid>) -> StoreResult<Vec<User>> {
        let rows: Vec<UserRow> = match after {
            Some(after) => {
                sqlx::query_as(user_query("WHERE id > $1 ORDER BY id LIMIT $2"))
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_as(user_query("ORDER BY id LIMIT $1"))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
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
    ) -> StoreResult<Option<UpdatedUser>> {
        let pool = self.pool.clone();
        let changes = changes.clone();
        detached(async move {
            let mut tx = pool.begin().await?;
            // Every active admin's row is locked first, so that concurrent
            // changes to admins run one after the other and two admins cannot
            // demote each other at once, leaving none.
            sqlx::query(
                "SELECT id FROM users WHERE is_active AND (',' || roles || ',') LIKE '%,admin,%' \
                 ORDER BY id FOR UPDATE",
            )
            .fetch_all(&mut *tx)
            .await?;
            let row: Option<UserRow> = sqlx::query_as(user_query("WHERE id = $1 FOR UPDATE"))
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
                    changed: false,
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
            let row: UserRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE users SET is_active = $2, roles = $3, updated_at = $4 \
                 WHERE id = $1 RETURNING {USER_COLUMNS}"
            )))
            .bind(id)
            .bind(plan.is_active)
            .bind(plan.roles.to_column())
            .bind(Timestamp(now))
            .fetch_one(&mut *tx)
            .await?;
            let user = User::try_from(row)?;
            sqlx::query(
                "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(Timestamp(now))
            .bind(RevokeReason::UserChanged.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(UpdatedUser {
                user,
                changed: true,
            }))
        })
        .await
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn create_session(&self, s: &NewSession) -> StoreResult<()> {
        let pool = self.pool.clone();
        let s = s.clone();
        detached(async move {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(s.id)
            .bind(s.user_id)
            .bind(Timestamp(s.created_at))
            .bind(Timestamp(s.expires_at))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&s.refresh_hash[..])
            .bind(s.id)
            .bind(Timestamp(s.created_at))
            .bind(Timestamp(s.refresh_expires_at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        next: &[u8; 32],
        next_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Rotation> {
        // One statement, so one round trip and one commit. The conditional
        // UPDATE is the atomic step: of two racing refreshes with one token,
        // the row lock lets exactly one see `used_at IS NULL`. Only a token of
        // a live session is used up.
        let row: Option<RotatedRow> = sqlx::query_as(
            "WITH live AS ( \
                 SELECT s.id AS session_id, s.expires_at AS session_expires_at, \
                        u.id, u.username, u.email, u.email_verified, u.roles, u.is_active, u.created_at \
                 FROM refresh_tokens t \
                 JOIN sessions s ON s.id = t.session_id \
                 JOIN users u ON u.id = s.user_id \
                 WHERE t.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.is_active \
             ), used AS ( \
                 UPDATE refresh_tokens SET used_at = $2 \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                   AND session_id IN (SELECT session_id FROM live) \
                 RETURNING session_id \
             ), inserted AS ( \
                 INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
                 SELECT $3, live.session_id, $2, $4 FROM live JOIN used USING (session_id) \
             ) \
             SELECT live.* FROM live JOIN used USING (session_id)",
        )
        .bind(&presented[..])
        .bind(Timestamp(now))
        .bind(&next[..])
        .bind(Timestamp(next_expires_at))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(row.into());
        }
        // Not rotated. RFC 9700 §4.14.2: a used token presented again means it
        // leaked; end the whole session (every token of it, refresh and access).
        let reused: Option<ReusedRow> = sqlx::query_as(
            "UPDATE sessions s SET revoked_at = COALESCE(s.revoked_at, $2), \
             revoked_reason = COALESCE(s.revoked_reason, $3) \
             FROM refresh_tokens t \
             WHERE t.token_hash = $1 AND t.used_at IS NOT NULL AND s.id = t.session_id \
             RETURNING s.id, s.user_id",
        )
        .bind(&presented[..])
        .bind(Timestamp(now))
        .bind(RevokeReason::RefreshTokenReuse.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(reused.map_or(Rotation::Invalid, Rotation::from))
    }

    async fn revoke_session_by_refresh(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<Uuid>> {
        let id = sqlx::query_scalar(
            "UPDATE sessions s SET revoked_at = $2, revoked_reason = $3 \
             FROM refresh_tokens t \
             WHERE t.token_hash = $1 AND s.id = t.session_id AND s.revoked_at IS NULL \
             RETURNING s.id",
        )
        .bind(&token_hash[..])
        .bind(Timestamp(now))
        .bind(RevokeReason::Logout.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(Timestamp(now))
        .bind(reason.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn live_sessions(
        &self,
        session_ids: &[Uuid],
        now: OffsetDateTime,
    ) -> StoreResult<Vec<(Uuid, User)>> {
        let rows: Vec<SessionUserRow> = sqlx::query_as(
            "SELECT s.id AS session_id, u.id, u.username, u.email, u.email_verified, u.roles, \
             u.is_active, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = ANY($1) AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.is_active",
        )
        .bind(session_ids)
        .bind(Timestamp(now))
        .fetch_all(&self.checks)
        .await?;
        Ok(rows.into_iter().map(|r| (r.session_id, r.user)).collect())
    }

    async fn purge(&self, now: OffsetDateTime, revoked_before: OffsetDateTime) -> StoreResult<u64> {
        let pool = self.pool.clone();
        detached(async move {
            let mut tx = pool.begin().await?;
            let tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= $1")
                .bind(Timestamp(now))
                .execute(&mut *tx)
                .await?;
            let sessions =
                sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR revoked_at < $2")
                    .bind(Timestamp(now))
                    .bind(Timestamp(revoked_before))
                    .execute(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(tokens.rows_affected() + sessions.rows_affected())
        })
        .await
    }
}

#[async_trait]
impl KeyStore for PgStore {
    async fn signing_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT kid, algorithm, secret, created_at FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(StoredKey::from).collect())
    }

    async fn insert_first_signing_key(&self, key: &StoredKey) -> StoreResult<Vec<StoredKey>> {
        // Only if the table is empty: two instances starting together on one
        // database must end up with one key, not one each.
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, secret, created_at) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM signing_keys)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&key.secret)
        .bind(Timestamp(key.created_at))
        .execute(&self.pool)
        .await?;
        self.signing_keys().await
    }
}
