//! Test databases shared by the black-box and conformance suites: a fresh
//! SQLite file or a fresh PostgreSQL database per test.

#![allow(dead_code)]

pub mod smtp;

use std::{path::PathBuf, time::Duration};

use libtest_mimic::Trial;
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

/// Whether PostgreSQL tests can run, asked once per test binary. Locally an
/// unreachable server marks them ignored, with a note; under CI (`CI` or
/// `AUTHGATE_TEST_REQUIRE_POSTGRES` set) it is an error, never a skip.
pub fn postgres_reachable() -> bool {
    let url = postgres_admin_url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let reached = runtime.block_on(async {
        let connect = PgConnection::connect(&url);
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(conn)) => conn.close().await.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".into()),
        }
    });
    let shown = without_password(&url);
    match reached {
        Ok(()) => true,
        Err(e) if postgres_required() => {
            panic!("PostgreSQL is required but unreachable at {shown}: {e}")
        }
        Err(e) => {
            eprintln!(
                "note: PostgreSQL tests ignored, unreachable at {shown}: {e} \
                 (set AUTHGATE_TEST_REQUIRE_POSTGRES=1 to fail instead)"
            );
            false
        }
    }
}

fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "AUTHGATE_TEST_POSTGRES_URL (not a valid URL)".into(),
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
    /// A SQLite database in `dir`, removed when the test ends.
    pub fn sqlite_in(dir: &std::path::Path) -> Self {
        let path = dir.join(format!("authgate-test-{}.db", Uuid::new_v4().simple()));
        TestDb {
            backend: Backend::Sqlite,
            url: format!("sqlite://{}?mode=rwc", path.display()),
            owned: Some(Owned::SqliteFile(path)),
        }
    }

    /// Every byte the refresh token table holds in its binary columns, row
    /// after row: what a copy of the database would reveal of tokens.
    pub async fn refresh_token_bytes(&self) -> Vec<u8> {
        use sqlx::Connection;
        const SQL: &str = "SELECT token_hash, successor_hash, successor_sealed FROM refresh_tokens";
        type Row = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);
        let rows: Vec<Row> = match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap()
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap()
            }
        };
        rows.into_iter()
            .flat_map(|(a, b, c)| [a, b.unwrap_or_default(), c.unwrap_or_default()].concat())
            .collect()
    }

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

/// One test on one backend, named `<module>::<backend>::<name>`, on a runtime
/// of its own as `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`
/// gave it. PostgreSQL tests are ignored when `pg` (the server is reachable) is
/// false.
pub fn trial<F>(
    module: &str,
    backend: Backend,
    name: &str,
    pg: bool,
    test: impl FnOnce(Backend) -> F + Send + 'static,
) -> Trial
where
    F: Future<Output = ()>,
{
    let label = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let full_name = match module.split_once("::") {
        Some((_crate, module)) => format!("{module}::{label}::{name}"),
        None => format!("{label}::{name}"),
    };
    Trial::test(full_name, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(test(backend));
        Ok(())
    })
    .with_ignored_flag(backend == Backend::Postgres && !pg)
}

/// Declares each listed `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`, returned by the module's
/// `trials(pg)` for the binary's `main` to run.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        pub fn trials(pg: bool) -> Vec<::libtest_mimic::Trial> {
            use $crate::common::{trial, Backend};
            vec![
                $(trial(module_path!(), Backend::Sqlite, stringify!($name), pg, $name),)+
                $(trial(module_path!(), Backend::Postgres, stringify!($name), pg, $name),)+
            ]
        }
    };
}

/// Declares each listed `async fn name()` as the test `postgres::name`,
/// returned by the module's `postgres_only_trials(pg)`.
#[macro_export]
macro_rules! only_on_postgres {
    ($($name:ident),+ $(,)?) => {
        pub fn postgres_only_trials(pg: bool) -> Vec<::libtest_mimic::Trial> {
            use $crate::common::{trial, Backend};
            vec![$(trial(module_path!(), Backend::Postgres, stringify!($name), pg, |_| $name()),)+]
        }
    };
}
