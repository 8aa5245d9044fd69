//! PostgreSQL implementation of [`Store`](super::Store): its pools, and what
//! it does its own way. The rest is [`sql_store!`].

use std::str::FromStr;

use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use super::{
    AuditKind, DB_WAIT, Rotation, StoreResult, User,
    sql::{self, Dialect, Refresh, RotatedRow, SessionUserRow, Timestamp, sql_store},
};

pub struct PgStore {
    pool: PgPool,
    /// Session checks only. Every protected request may depend on one, so they
    /// must not queue behind writes waiting for their commits to reach disk.
    checks: PgPool,
    /// Throttling checks: one short statement each, on the path of every
    /// login and refresh, kept from queueing behind multi-statement writes.
    limits: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        // No statement may wait longer than DB_WAIT, for a lock held by
        // someone else included: a request answers 503 in bounded time
        // instead of hanging with the database.
        let wait = format!("{}ms", DB_WAIT.as_millis());
        let options = PgConnectOptions::from_str(url)?.options([
            ("statement_timeout", wait.as_str()),
            ("lock_timeout", wait.as_str()),
        ]);
        let pool = |size| {
            PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(DB_WAIT)
                .connect_with(options.clone())
        };
        let (pool, checks, limits) = (pool(16).await?, pool(4).await?, pool(4).await?);
        Ok(Self {
            pool,
            checks,
            limits,
        })
    }
}

sql_store!(PgStore, migrations = "./migrations/postgres");

impl Dialect for PgStore {
    type Db = Postgres;

    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    /// Deletes lock only their rows, but share the machine's I/O and CPU
    /// with the requests: a batch of 1,000 takes a few milliseconds, so a
    /// refresh running beside the purge waits little (5,000 pushed its p99
    /// from 4 to 24 ms at a moderate load).
    const PURGE_BATCH: i64 = 1_000;
    /// A purge of a large backlog (2 million rows after a long stop) is
    /// paced to half of one connection's time: at full speed, refreshes
    /// running beside it (2 connections, a loaded database) went from 1.1–1.6
    /// to 2.8–3.6 ms at the median and fell to 40–60 % of their rate. A
    /// routine purge, a few batches, barely notices the rest.
    const PURGE_PAUSE: u32 = 1;

    /// By row address: the rows the batch's condition finds are deleted
    /// where they lie, instead of being looked up again by key. For refresh
    /// tokens, whose key is a random hash, that lookup read a random page of
    /// a primary key larger than the default shared buffers for every row
    /// deleted, through the cache that requests need, and wrote out as many
    /// dirty pages to make room (a cold batch of 1,000 with a million
    /// accounts: 109 ms, 1,170 pages read and 1,078 written, against 1.8 ms
    /// and 17 and 7 by address). A row changed meanwhile has another address
    /// and is left to the next purge.
    fn purge_statement(table: &str, _key: &str, filter: &str) -> String {
        format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {filter}))"
        )
    }

    const UNBOUNDED: &'static str = "SET statement_timeout = 0; SET lock_timeout = 0";

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn limits(&self) -> &PgPool {
        &self.limits
    }

    fn check_file(&self) -> sqlx::Result<()> {
        Ok(())
    }

    fn pools(&self) -> Vec<(&'static str, &PgPool)> {
        vec![
            ("main", &self.pool),
            ("session_checks", &self.checks),
            ("limits", &self.limits),
        ]
    }

    async fn begin_write(writer: &PgPool) -> sqlx::Result<Transaction<'static, Postgres>> {
        writer.begin().await
    }

    async fn lock_for_key_generation(tx: &mut Transaction<'static, Postgres>) -> sqlx::Result<()> {
        // Under READ COMMITTED two inserts "if the table is empty" could both
        // see it empty; a lock held to the commit makes them take turns.
        sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn lock_for_new_session(
        tx: &mut Transaction<'static, Postgres>,
        user_id: Uuid,
    ) -> sqlx::Result<()> {
        // FOR SHARE waits for a change of the user row in flight (which holds
        // FOR NO KEY UPDATE) and holds such a change off until this commits.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR SHARE")
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(())
    }

    async fn lock_for_user_change(
        tx: &mut Transaction<'static, Postgres>,
        id: Uuid,
    ) -> sqlx::Result<()> {
        // Every active admin's row is locked, with the user's own, so that
        // concurrent changes to admins run one after the other and two admins
        // cannot demote each other at once, leaving none.
        sqlx::query(
            "SELECT id FROM users \
             WHERE id = $1 OR (is_active AND (',' || roles || ',') LIKE '%,admin,%') \
             ORDER BY id FOR UPDATE",
        )
        .bind(id)
        .fetch_all(&mut **tx)
        .await?;
        Ok(())
    }

    async fn rotate(&self, refresh: Refresh) -> StoreResult<Rotation> {
        // One statement, so one round trip and one commit. The conditional
        // UPDATE is the atomic step: of two racing refreshes with one token,
        // the row lock lets exactly one see `used_at IS NULL`. Only a token of
        // a live session is used up; the session's row is locked too, so that
        // a logout committing meanwhile is seen (the rotation waits for it and
        // then finds the session revoked) rather than answered with a pair
        // that is already dead.
        let rotated: Option<RotatedRow> = sqlx::query_as(
            "WITH live AS ( \
                 SELECT s.id AS session_id, s.expires_at AS session_expires_at, \
                        COALESCE(s.authenticated_at, s.created_at) AS session_created_at, \
                        s.aal AS session_aal, s.amr AS session_amr, s.scope AS session_scope, \
                        u.id, u.username, u.email, u.email_verified, u.roles, u.is_active, u.created_at \
                 FROM refresh_tokens t \
                 JOIN sessions s ON s.id = t.session_id \
                 JOIN users u ON u.id = s.user_id \
                 WHERE t.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.is_active \
                   AND COALESCE(s.client_id, '') = $12 \
                 FOR UPDATE OF s \
             ), used AS ( \
                 UPDATE refresh_tokens SET used_at = $2, successor_hash = $3, \
                     successor_sealed = $11 \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                   AND session_id IN (SELECT session_id FROM live) \
                 RETURNING session_id \
             ), inserted AS ( \
                 INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
                 SELECT $3, live.session_id, $2, $4 FROM live JOIN used USING (session_id) \
             ), touched AS ( \
                 UPDATE sessions SET last_used_at = $2 WHERE id IN (SELECT session_id FROM used) \
             ), audited AS ( \
                 INSERT INTO audit_events (id, occurred_at, type, outcome, actor_id, user_id, \
                     session_id, ip, user_agent, request_id) \
                 SELECT $5, $2, $6, 'success', COALESCE($7, live.id), live.id, live.session_id, \
                     $8, $9, $10 \
                 FROM live JOIN used USING (session_id) \
             ) \
             SELECT live.* FROM live JOIN used USING (session_id)",
        )
        .bind(&refresh.request.presented[..])
        .bind(refresh.now())
        .bind(&refresh.request.next[..])
        .bind(refresh.next_expires_at())
        .bind(Uuid::now_v7())
        .bind(AuditKind::Refresh.as_str())
        .bind(refresh.by.actor_id)
        .bind(refresh.by.ip.as_deref())
        .bind(refresh.by.user_agent.as_deref())
        .bind(refresh.by.request_id.as_deref())
        .bind(refresh.request.sealed_next.as_deref())
        .bind(refresh.holder())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = rotated {
            return Ok(row.into());
        }
        // Not rotated: perhaps a used token presented again, moments after
        // its use by another tab (the grace window), or long after (reuse).
        if let Some(since) = refresh.grace_since()
            && let Some(row) = sql::repeat_within_grace(&refresh, since)
                .fetch_optional(&self.pool)
                .await?
        {
            let repeated = Rotation::from(row);
            if let Some(record) = refresh.repeated_audit(&repeated) {
                sql::insert_audit(&record).execute(&self.pool).await?;
            }
            return Ok(repeated);
        }
        let mut tx = self.pool.begin().await?;
        let reused = sql::revoke_reused(&refresh)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(reused) = reused else {
            return Ok(Rotation::Invalid);
        };
        let record = refresh.audit(AuditKind::RefreshTokenReuse, reused.user_id, reused.id);
        sql::insert_audit(&record).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(reused.into())
    }

    async fn live(&self, session_ids: &[Uuid], now: Timestamp) -> StoreResult<Vec<(Uuid, User)>> {
        let rows: Vec<SessionUserRow> = sqlx::query_as(
            "SELECT s.id AS session_id, u.id, u.username, u.email, u.email_verified, u.roles, \
             u.is_active, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = ANY($1) AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.is_active",
        )
        .bind(session_ids)
        .bind(now)
        .fetch_all(&self.checks)
        .await?;
        Ok(rows.into_iter().map(|r| (r.session_id, r.user)).collect())
    }
}
