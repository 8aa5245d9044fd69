//! SQLite implementation of [`Store`](super::Store): its pools, and what it
//! does its own way. The rest is [`sql_store!`].
//!
//! Timestamps are stored as INTEGER milliseconds (UTC) and UUIDs as 16-byte
//! BLOBs. SQLite lets one writer in at a time, so all writes of this process
//! go through one connection: they queue in order on the pool instead of
//! sleeping in SQLite's busy handler (which made the slowest writes wait
//! hundreds of milliseconds). Reads use their own connections and, in WAL
//! mode, never wait for the writer. Write transactions still start with
//! `BEGIN IMMEDIATE` for other processes sharing the file.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection as _, Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use super::{
    AuditKind, DB_WAIT, Rotation, StoreResult, User, detached,
    sql::{self, Dialect, Refresh, RotatedRow, SessionUserRow, Timestamp, sql_store},
};

pub struct SqliteStore {
    /// Readers.
    pool: SqlitePool,
    /// The one writer.
    writer: SqlitePool,
    /// The database file and its identity when opened (none in memory).
    file: Option<(std::path::PathBuf, (u64, u64))>,
    /// Stops the watch over the file when the store goes.
    _watch: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How often the database file is checked to still be the one opened.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Closes the writer once the file at `path` is no longer the one opened
/// (deleted or replaced under the running process): every write from then
/// on would land in a file nobody will open again and be lost at restart,
/// so writes fail (503) instead of being acknowledged. Reads go on.
async fn watch_file(
    path: std::path::PathBuf,
    opened: (u64, u64),
    writer: SqlitePool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(FILE_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut stop => return,
        }
        if same_file(&path, opened).is_err() {
            writer.close().await;
            return;
        }
    }
}

/// Whether the file at `path` is still the one `opened` identifies.
fn same_file(path: &std::path::Path, opened: (u64, u64)) -> sqlx::Result<()> {
    match std::fs::metadata(path).map(|m| file_id(&m)) {
        Ok(now) if now == opened => Ok(()),
        Ok(_) => Err(file_gone(path, "was replaced")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(file_gone(path, "was deleted")),
        Err(e) => Err(sqlx::Error::Io(e)),
    }
}

/// A file's device and inode: the same path may later name another file.
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn file_gone(path: &std::path::Path, what: &str) -> sqlx::Error {
    tracing::error!(
        path = %path.display(),
        "the SQLite database file {what} while in use: writes from now on would be lost at restart"
    );
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("the database file {} {what}", path.display()),
    ))
}

const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // A writer of another process holding the file: give up after
            // DB_WAIT (503) rather than hang.
            .busy_timeout(DB_WAIT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(DB_WAIT)
            // SQLite rolls a transaction back by itself on some errors (a
            // full disk: SQLITE_FULL); sqlx's own ROLLBACK then fails and it
            // keeps counting the connection as inside a transaction, so that
            // every later BEGIN on it fails. Such a connection is closed when
            // it comes back, and the next write opens a fresh one. The ping
            // first lets a rollback still queued on the connection finish.
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options.clone())
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(DB_WAIT)
            .connect_with(options.clone())
            .await?;
        let path = options.get_filename().to_path_buf();
        let file = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| (path, file_id(&m)));
        let watch = file.as_ref().map(|(path, opened)| {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            tokio::spawn(watch_file(path.clone(), *opened, writer.clone(), stopped));
            stop
        });
        Ok(Self {
            pool,
            writer,
            file,
            _watch: watch,
        })
    }
}

sql_store!(SqliteStore, migrations = "./migrations/sqlite");

impl Dialect for SqliteStore {
    type Db = Sqlite;

    // BEGIN IMMEDIATE serialises writers: a claim never meets another.
    const SKIP_LOCKED: &'static str = "";
    /// Every write waits for the one writer connection: a batch of 250
    /// holds it some milliseconds (about 30 µs a row with a million rows),
    /// so a refresh waits behind at most one short batch.
    const PURGE_BATCH: i64 = 250;

    const UNBOUNDED: &'static str = "";

    fn reader(&self) -> &SqlitePool {
        &self.pool
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn limits(&self) -> &SqlitePool {
        &self.writer
    }

    fn pools(&self) -> Vec<(&'static str, &SqlitePool)> {
        vec![("readers", &self.pool), ("writer", &self.writer)]
    }

    fn check_file(&self) -> sqlx::Result<()> {
        match &self.file {
            Some((path, opened)) => same_file(path, *opened),
            None => Ok(()),
        }
    }

    async fn begin_write(writer: &SqlitePool) -> sqlx::Result<Transaction<'static, Sqlite>> {
        writer.begin_with(BEGIN_WRITE).await
    }

    async fn lock_for_key_generation(_: &mut Transaction<'static, Sqlite>) -> sqlx::Result<()> {
        // Nothing to lock: BEGIN IMMEDIATE serialises writers.
        Ok(())
    }

    async fn lock_for_new_session(
        _: &mut Transaction<'static, Sqlite>,
        _: Uuid,
    ) -> sqlx::Result<()> {
        // Nothing to lock: BEGIN IMMEDIATE serialises writers.
        Ok(())
    }

    async fn lock_for_user_change(
        _: &mut Transaction<'static, Sqlite>,
        _: Uuid,
    ) -> sqlx::Result<()> {
        // Nothing to lock: BEGIN IMMEDIATE serialises writers, so the count of
        // other admins cannot change before this change commits.
        Ok(())
    }

    async fn rotate(&self, refresh: Refresh) -> StoreResult<Rotation> {
        let writer = self.writer.clone();
        detached(async move {
            // BEGIN IMMEDIATE serialises writers, so of two racing refreshes with
            // one token exactly one sees `used_at IS NULL`.
            let mut tx = Self::begin_write(&writer).await?;
            let used: Option<Uuid> = sqlx::query_scalar(
                "UPDATE refresh_tokens SET used_at = $2, successor_hash = $3, \
                 successor_sealed = $4 \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                 RETURNING session_id",
            )
            .bind(&refresh.request.presented[..])
            .bind(refresh.now())
            .bind(&refresh.request.next[..])
            .bind(refresh.request.sealed_next.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(session_id) = used else {
                // Not rotated: perhaps a used token presented again, moments
                // after its use by another tab (the grace window), or long
                // after (reuse).
                if let Some(since) = refresh.grace_since()
                    && let Some(row) = sql::repeat_within_grace(&refresh, since)
                        .fetch_optional(&mut *tx)
                        .await?
                {
                    let repeated = Rotation::from(row);
                    if let Some(record) = refresh.repeated_audit(&repeated) {
                        sql::insert_audit(&record).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    return Ok(repeated);
                }
                let reused = sql::revoke_reused(&refresh)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(reused) = reused else {
                    return Ok(Rotation::Invalid);
                };
                let record = refresh.audit(AuditKind::RefreshTokenReuse, reused.user_id, reused.id);
                sql::insert_audit(&record).execute(&mut *tx).await?;
                tx.commit().await?;
                return Ok(reused.into());
            };
            let live: Option<RotatedRow> = sqlx::query_as(
                "SELECT s.id AS session_id, s.expires_at AS session_expires_at, \
                 COALESCE(s.authenticated_at, s.created_at) AS session_created_at, \
                 s.aal AS session_aal, s.amr AS session_amr, s.scope AS session_scope, \
                 u.id, u.username, u.email, u.email_verified, u.roles, u.is_active, u.created_at \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.is_active \
                   AND COALESCE(s.client_id, '') = $3",
            )
            .bind(session_id)
            .bind(refresh.now())
            .bind(refresh.holder())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(live) = live else {
                // The session has ended: the token stays unused, and is refused.
                tx.rollback().await?;
                return Ok(Rotation::Invalid);
            };
            sql::insert_refresh_token(
                &refresh.request.next,
                session_id,
                refresh.now(),
                refresh.next_expires_at(),
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE sessions SET last_used_at = $2 WHERE id = $1")
                .bind(session_id)
                .bind(refresh.now())
                .execute(&mut *tx)
                .await?;
            let rotation = Rotation::from(live);
            if let Rotation::Rotated { user, .. } = &rotation {
                let record = refresh.audit(AuditKind::Refresh, user.id, session_id);
                sql::insert_audit(&record).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rotation)
        })
        .await
    }

    async fn live(&self, session_ids: &[Uuid], now: Timestamp) -> StoreResult<Vec<(Uuid, User)>> {
        let mut live = Vec::new();
        // Bounded statements: SQLite limits the number of bound parameters.
        for chunk in session_ids.chunks(500) {
            let placeholders = (2..chunk.len() + 2)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT s.id AS session_id, u.id, u.username, u.email, u.email_verified, u.roles, \
                 u.is_active, u.created_at \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.id IN ({placeholders}) AND s.revoked_at IS NULL AND s.expires_at > $1 \
                 AND u.is_active"
            );
            let mut query = sqlx::query_as::<_, SessionUserRow>(sqlx::AssertSqlSafe(sql)).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            let rows = query.fetch_all(&self.pool).await?;
            live.extend(rows.into_iter().map(|r| (r.session_id, r.user)));
        }
        Ok(live)
    }
}
