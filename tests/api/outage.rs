//! The database going away: requests that need it answer 503 with
//! `Retry-After` in bounded time (never a 500, never a hang), readiness
//! means "can serve", what needs no database keeps working, and the service
//! recovers by itself with nothing half written.
//!
//! The test that stops the PostgreSQL cluster is ignored in the ordinary
//! run (it would disturb every other test); `.ci/run` runs it on its own
//! afterwards with `--ignored`.

use std::time::{Duration, Instant};

use futures::FutureExt;
use libtest_mimic::Trial;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::{
    common::{Backend, TestDb, trial},
    helpers::{PASSWORD, TestApp, Tokens, problem, spawn_app},
    on_both_databases,
};

on_both_databases!(readiness_fails_when_the_schema_is_gone);

pub fn more_trials(pg: bool) -> Vec<Trial> {
    let module = module_path!();
    let mut trials = vec![
        trial(
            module,
            Backend::Sqlite,
            "readiness_fails_when_the_database_file_is_deleted",
            pg,
            |_| readiness_fails_when_the_database_file_is_deleted(),
        ),
        trial(
            module,
            Backend::Sqlite,
            "a_writer_lock_held_by_another_process_gives_503_in_bounded_time",
            pg,
            |_| a_writer_lock_held_by_another_process_gives_503_in_bounded_time(),
        ),
        trial(
            module,
            Backend::Postgres,
            "a_table_lock_gives_503_in_bounded_time_not_a_hang",
            pg,
            |_| a_table_lock_gives_503_in_bounded_time_not_a_hang(),
        ),
    ];
    let cluster = trial(
        module,
        Backend::Postgres,
        "the_cluster_stopping_under_load_gives_503_and_recovery_loses_nothing",
        pg,
        |_| the_cluster_stopping_under_load_gives_503_and_recovery_loses_nothing(),
    );
    trials.push(cluster.with_ignored_flag(true));
    trials
}

/// The longest a request may take while the database is away: the
/// database wait (5 s) and some room for a slow machine.
const BOUND: Duration = Duration::from_secs(9);

async fn assert_unavailable(res: Response) {
    assert!(res.headers().contains_key("retry-after"));
    let body = problem(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["code"], "unavailable");
}

async fn readiness_fails_when_the_schema_is_gone(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);
    let sql = "DROP TABLE refresh_tokens";
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.db().url)
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.db().url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
    // A passing probe stands for a second.
    app.advance(Duration::from_secs(2));
    assert_eq!(
        app.get("/readyz", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

async fn readiness_fails_when_the_database_file_is_deleted() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);
    let path = app.db().url.trim_start_matches("sqlite://");
    let path = path.split('?').next().unwrap().to_owned();
    app.create_user("before").await;
    std::fs::remove_file(&path).unwrap();
    app.advance(Duration::from_secs(2));
    assert_eq!(
        app.get("/readyz", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "writes from now on would be lost at restart"
    );
    // Within the file check's second, writes are refused, not acknowledged
    // and lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let res = app
        .signup(serde_json::json!({"username": "after", "password": PASSWORD}))
        .await;
    assert_unavailable(res).await;
    // A login writes a session: refused too.
    assert_unavailable(app.login("before", PASSWORD).await).await;
}

async fn a_writer_lock_held_by_another_process_gives_503_in_bounded_time() {
    let app = spawn_app(Backend::Sqlite).await;
    app.create_user("waiting").await;
    // Another process takes the write lock and keeps it.
    let mut other = sqlx::SqliteConnection::connect(&app.db().url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = Instant::now();
    let res = app
        .signup(json!({"username": "blocked", "password": PASSWORD}))
        .await;
    assert!(started.elapsed() < BOUND, "{:?}", started.elapsed());
    assert_unavailable(res).await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    app.create_user("afterwards").await;
}

async fn a_table_lock_gives_503_in_bounded_time_not_a_hang() {
    let app = spawn_app(Backend::Postgres).await;
    app.create_user("locked").await;
    let mut other = sqlx::PgConnection::connect(&app.db().url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = Instant::now();
    let res = app.login("locked", PASSWORD).await;
    assert!(started.elapsed() < BOUND, "{:?}", started.elapsed());
    assert_unavailable(res).await;
    tx.rollback().await.unwrap();
    assert_eq!(app.login("locked", PASSWORD).await.status(), StatusCode::OK);
}

/// `pg_ctlcluster VERSION main ACTION` on the local cluster.
fn cluster(action: &str) {
    let versions = std::fs::read_dir("/etc/postgresql")
        .expect("a local PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect::<Vec<_>>();
    let version = versions.first().expect("a cluster version");
    let mut cmd = std::process::Command::new("pg_ctlcluster");
    cmd.args(["--skip-systemctl-redirect", version, "main", action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    let status = cmd.status().expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster {action}");
}

/// Every session has a refresh token, and no session has two unused ones:
/// no login or rotation was half written.
async fn assert_nothing_half_written(db: &TestDb) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (bare,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM sessions s \
         WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = s.id)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(bare, 0, "sessions without a refresh token");
    let (forked,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM (SELECT session_id FROM refresh_tokens WHERE used_at IS NULL \
         GROUP BY session_id HAVING COUNT(*) > 1) f",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(forked, 0, "sessions with two live refresh tokens");
}

async fn the_cluster_stopping_under_load_gives_503_and_recovery_loses_nothing() {
    let app = TestApp::builder_with_generated_key()
        .arg("--refresh-per-minute", "100000")
        .arg("--login-per-minute", "100000")
        .arg("--signup-per-minute", "100000")
        .spawn(Backend::Postgres)
        .await;
    app.create_user("steady").await;
    let cached = app.tokens("steady").await;
    assert_eq!(app.me_status(&cached.access).await, StatusCode::OK);

    // A client refreshing in a loop, and one signing up, while the cluster
    // stops and starts again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, base, stop) = (app.client.clone(), app.address.clone(), stop.clone());
        let mut refresh = app.tokens("steady").await.refresh;
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut signed_up = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let res = client
                    .post(format!("{base}/auth/refresh"))
                    .json(&json!({"refresh_token": refresh}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(res.status());
                if res.status() == StatusCode::OK {
                    refresh = Tokens::from(res.json::<Value>().await.unwrap()).refresh;
                }
                let name = format!("load{i}");
                let res = client
                    .post(format!("{base}/auth/signup"))
                    .json(&json!({"username": name, "password": PASSWORD}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(res.status());
                if res.status() == StatusCode::CREATED {
                    signed_up.push(name);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (statuses, signed_up)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster("stop");
    // Whatever happens while it is down, the cluster starts again before
    // the test goes on or fails: the other tests need it.
    let outcome = std::panic::AssertUnwindSafe(async {
        // What needs the database: 503 with Retry-After, in bounded time.
        for (path, body) in [
            (
                "/auth/login",
                json!({"username": "steady", "password": PASSWORD}),
            ),
            (
                "/auth/signup",
                json!({"username": "during", "password": PASSWORD}),
            ),
            ("/auth/refresh", json!({"refresh_token": cached.refresh})),
            ("/auth/logout", json!({"refresh_token": cached.refresh})),
        ] {
            let started = Instant::now();
            let res = app.post_json(path, &body).await;
            assert!(started.elapsed() < BOUND, "{path}: {:?}", started.elapsed());
            assert_unavailable(res).await;
        }
        assert_eq!(
            app.get("/readyz", None).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // What needs none: still served.
        assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
        assert_eq!(
            app.get("/.well-known/jwks.json", None).await.status(),
            StatusCode::OK
        );
        // A token whose session was seen live moments ago is still
        // accepted until the cache ages; then the answer is 503, not 401.
        let res = app.get("/users/me", Some(&cached.access)).await;
        assert!(
            [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(&res.status()),
            "{}",
            res.status()
        );
    })
    .catch_unwind()
    .await;
    cluster("start");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    // Back by itself, without a restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/readyz", None).await.status() != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "not ready 30 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (statuses, signed_up) = load.await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| !s.is_server_error() || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "the outage was seen"
    );
    assert_eq!(app.login("steady", PASSWORD).await.status(), StatusCode::OK);
    for name in &signed_up {
        assert_eq!(
            app.login(name, PASSWORD).await.status(),
            StatusCode::OK,
            "{name}"
        );
    }
    assert_nothing_half_written(app.db()).await;
}
