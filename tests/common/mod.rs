//! Test databases shared by the black-box and conformance suites: a fresh
//! SQLite file or a fresh PostgreSQL database per test.

#![allow(dead_code)]

use std::path::PathBuf;

use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("AUTHGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn postgres_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("AUTHGATE_TEST_REQUIRE_POSTGRES").is_some()
}

/// Whether PostgreSQL tests can run. Unreachable PostgreSQL skips them
/// locally but fails them under CI (`CI` or `AUTHGATE_TEST_REQUIRE_POSTGRES` set).
pub async fn postgres_available() -> bool {
    match PgConnection::connect(&postgres_admin_url()).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(e) if postgres_required() => {
            panic!(
                "PostgreSQL is required but unreachable at {}: {e}",
                postgres_admin_url()
            )
        }
        Err(e) => {
            eprintln!("skipping a PostgreSQL test: {e}");
            false
        }
    }
}

/// A database of its own for one test. The test that made it removes it when
/// it ends, pass or fail, so that nothing piles up on the PostgreSQL server.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    owned: Option<Owned>,
}

/// What the original handle removes on drop; attached handles own nothing.
enum Owned {
    SqliteFile(PathBuf),
    PostgresDatabase(String),
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("authgate-test-{id}.db"));
                TestDb {
                    backend,
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    owned: Some(Owned::SqliteFile(path)),
                }
            }
            Backend::Postgres => {
                let name = format!("authgate_test_{id}");
                let admin = postgres_admin_url();
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .expect("connect to PostgreSQL");
                conn.execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                    .await
                    .expect("create a test database");
                let _ = conn.close().await;
                let mut url = url::Url::parse(&admin).expect("a valid PostgreSQL URL");
                url.set_path(&name);
                TestDb {
                    backend,
                    url: url.to_string(),
                    owned: Some(Owned::PostgresDatabase(name)),
                }
            }
        }
    }
}

impl TestDb {
    /// A second handle on the same database, for a second instance. Only the
    /// original removes the database.
    pub fn attach(other: &TestDb) -> TestDb {
        TestDb {
            backend: other.backend,
            url: other.url.clone(),
            owned: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self.owned.take() {
            Some(Owned::SqliteFile(path)) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Some(Owned::PostgresDatabase(name)) => drop_postgres_database(name),
            None => {}
        }
    }
}

/// Runs on a thread with a runtime of its own because `Drop` is usually
/// called inside the test's runtime, which cannot block on another future.
/// `FORCE` ends the connections a server under test may still hold.
fn drop_postgres_database(name: String) {
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime
            .block_on(async {
                let mut conn = PgConnection::connect(&postgres_admin_url()).await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .await?;
                conn.close().await
            })
            .map_err(|e| format!("could not drop the test database {name}: {e}"))
    })
    .join();
    if let Ok(Err(e)) = dropped {
        eprintln!("{e}");
    }
}

/// Declares each listed `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::common::postgres_available().await {
                        super::$name($crate::common::Backend::Postgres).await
                    }
                }
            )+
        }
    };
}
