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

/// A database of its own for one test; SQLite files are removed on drop.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    sqlite_path: Option<PathBuf>,
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
                    sqlite_path: Some(path),
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
                    sqlite_path: None,
                }
            }
        }
    }
}

impl TestDb {
    /// A second handle on the same database, for a second instance. Only the
    /// original removes the files.
    pub fn attach(other: &TestDb) -> TestDb {
        TestDb {
            backend: other.backend,
            url: other.url.clone(),
            sqlite_path: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(path) = &self.sqlite_path {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
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
