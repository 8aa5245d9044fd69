//! Three instances on one database, one client's requests spread over them
//! as a load balancer would: everything that must be shared is, throttling
//! included. On PostgreSQL the shared limiter is chosen by itself; on SQLite
//! (processes sharing one file) it is asked for.

use std::{collections::HashMap, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Backend, TestDb},
    helpers::{PASSWORD, TestApp, TestAppBuilder, Tokens},
    on_both_databases,
};

on_both_databases!(
    signup_on_one_login_on_another_and_refresh_on_a_third,
    a_refresh_token_reused_on_another_instance_ends_the_session_everywhere,
    a_logout_on_one_instance_is_refused_on_the_others_within_a_second,
    guesses_spread_over_three_instances_get_the_checks_one_instance_allows,
    the_login_quota_spread_over_three_instances_allows_what_one_would,
    two_instances_racing_one_refresh_token_in_strict_mode_leave_no_live_pair,
    a_throttled_answer_names_its_policy_and_when_to_come_back,
    with_redis_the_instances_share_the_login_throttle_there,
);

fn builder(backend: Backend) -> TestAppBuilder {
    let builder = TestApp::builder();
    match backend {
        Backend::Sqlite => builder.arg("--rate-limit-store", "database"),
        Backend::Postgres => builder,
    }
}

/// Three instances with the same settings on one fresh database.
async fn three(
    backend: Backend,
    settings: impl Fn(TestAppBuilder) -> TestAppBuilder,
) -> [TestApp; 3] {
    let a = settings(builder(backend)).spawn(backend).await;
    let b = settings(builder(backend))
        .spawn_on(TestDb::attach(a.db()))
        .await;
    let c = settings(builder(backend))
        .spawn_on(TestDb::attach(a.db()))
        .await;
    [a, b, c]
}

async fn refreshed(app: &TestApp, refresh: &str) -> Tokens {
    let res = app.refresh(refresh).await;
    assert_eq!(res.status(), StatusCode::OK, "refresh on {}", app.address);
    Tokens::from(res.json::<Value>().await.unwrap())
}

fn tally(statuses: impl IntoIterator<Item = StatusCode>) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for s in statuses {
        *counts.entry(s.as_u16()).or_default() += 1;
    }
    counts
}

async fn signup_on_one_login_on_another_and_refresh_on_a_third(backend: Backend) {
    let [a, b, c] = three(backend, |b| b).await;
    a.create_user("spread").await;
    let tokens = b.tokens("spread").await;
    let next = refreshed(&c, &tokens.refresh).await;
    for app in [&a, &b, &c] {
        assert_eq!(app.me_status(&next.access).await, StatusCode::OK);
    }
    let last = refreshed(&a, &next.refresh).await;
    assert_eq!(b.me_status(&last.access).await, StatusCode::OK);
}

async fn a_refresh_token_reused_on_another_instance_ends_the_session_everywhere(backend: Backend) {
    let [a, b, c] = three(backend, |b| b.arg("--refresh-reuse-grace", "0s")).await;
    a.create_user("stolen").await;
    let first = a.tokens("stolen").await;
    let second = refreshed(&b, &first.refresh).await;
    assert_eq!(
        c.refresh(&first.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        a.refresh(&second.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    for app in [&a, &b, &c] {
        app.assert_refused_within(&second.access, Duration::from_secs(1))
            .await;
    }
}

async fn a_logout_on_one_instance_is_refused_on_the_others_within_a_second(backend: Backend) {
    let [a, b, c] = three(backend, |b| b).await;
    a.create_user("leaving").await;
    let tokens = a.tokens("leaving").await;
    // The other instances have seen the session live, and cached that.
    assert_eq!(b.me_status(&tokens.access).await, StatusCode::OK);
    assert_eq!(c.me_status(&tokens.access).await, StatusCode::OK);
    let res = a
        .post_json("/auth/logout", &json!({"refresh_token": tokens.refresh}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for app in [&b, &c] {
        app.assert_refused_within(&tokens.access, Duration::from_secs(1))
            .await;
        assert_eq!(
            app.refresh(&tokens.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

async fn guesses_spread_over_three_instances_get_the_checks_one_instance_allows(backend: Backend) {
    let apps = three(backend, |b| {
        b.arg("--login-free-failures", "5")
            .arg("--login-per-minute", "100000")
            .arg("--login-account-per-minute", "100000")
            .arg("--hash-queue-per-client", "1000")
    })
    .await;
    for app in &apps {
        app.stop_clock();
    }
    apps[0].create_user("target").await;
    let guesses = (0..60).map(|i| apps[i % 3].login("target", "wrong guess"));
    let statuses = futures::future::join_all(guesses).await;
    let counts = tally(statuses.iter().map(|r| r.status()));
    assert_eq!(counts.get(&401), Some(&5), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&55), "{counts:?}");
    for app in &apps {
        assert_eq!(
            app.login("target", PASSWORD).await.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "every instance sees the back-off"
        );
    }
}

async fn the_login_quota_spread_over_three_instances_allows_what_one_would(backend: Backend) {
    let apps = three(backend, |b| {
        b.arg("--login-per-minute", "9")
            .arg("--hash-queue-per-client", "1000")
    })
    .await;
    for app in &apps {
        app.stop_clock();
    }
    let names: Vec<String> = (0..30).map(|i| format!("nobody{i}")).collect();
    let attempts = names
        .iter()
        .enumerate()
        .map(|(i, name)| apps[i % 3].login(name, "wrong guess"));
    let statuses = futures::future::join_all(attempts).await;
    let counts = tally(statuses.iter().map(|r| r.status()));
    assert_eq!(counts.get(&401), Some(&9), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&21), "{counts:?}");
}

async fn two_instances_racing_one_refresh_token_in_strict_mode_leave_no_live_pair(
    backend: Backend,
) {
    let [a, b, _c] = three(backend, |b| b.arg("--refresh-reuse-grace", "0s")).await;
    a.create_user("racer").await;
    let tokens = a.tokens("racer").await;
    let (one, two) = tokio::join!(a.refresh(&tokens.refresh), b.refresh(&tokens.refresh));
    let statuses = [one.status(), two.status()];
    // One rotation wins; the other presentation is a reuse, which ends the
    // session, winner's pair included (RFC 9700 §4.14.2).
    assert!(
        statuses.contains(&StatusCode::OK) && statuses.contains(&StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    let winner = if one.status() == StatusCode::OK {
        one
    } else {
        two
    };
    let winner = Tokens::from(winner.json::<Value>().await.unwrap());
    assert_eq!(
        b.refresh(&winner.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    a.assert_refused_within(&winner.access, Duration::from_secs(1))
        .await;
}

async fn a_throttled_answer_names_its_policy_and_when_to_come_back(backend: Backend) {
    let [a, b, c] = three(backend, |b| b.arg("--signup-per-minute", "2")).await;
    for (app, name) in [(&a, "first"), (&b, "second")] {
        app.create_user(name).await;
    }
    let res = c
        .signup(json!({"username": "third", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = res.headers().clone();
    assert_eq!(headers["ratelimit-policy"], r#""signup";q=2;w=60"#);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(
        headers["ratelimit"].to_str().unwrap(),
        format!(r#""signup";r=0;t={retry}"#)
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
}

/// The Redis server of the tests; a test needing it fails under CI (or with
/// `AUTHGATE_TEST_REQUIRE_REDIS`) when it is unreachable, and is skipped
/// with a note otherwise.
async fn redis_url() -> Option<String> {
    let url = std::env::var("AUTHGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let probe = authgate::limits::RedisRateLimiter::connect(&url, "authgate-probe");
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(_)) => Some(url),
        _ if std::env::var_os("CI").is_some()
            || std::env::var_os("AUTHGATE_TEST_REQUIRE_REDIS").is_some() =>
        {
            panic!("Redis is required but unreachable at {url}")
        }
        _ => {
            eprintln!("note: Redis unreachable at {url}; the Redis instance test did nothing");
            None
        }
    }
}

async fn with_redis_the_instances_share_the_login_throttle_there(backend: Backend) {
    let Some(url) = redis_url().await else {
        return;
    };
    let prefix = format!("authgate-test-{}", uuid::Uuid::new_v4().simple());
    let apps = three(backend, |b| {
        b.arg("--redis-url", &url)
            .arg("--redis-prefix", &prefix)
            .arg("--login-free-failures", "4")
            .arg("--hash-queue-per-client", "1000")
    })
    .await;
    for app in &apps {
        app.stop_clock();
    }
    apps[1].create_user("cached").await;
    let guesses = (0..30).map(|i| apps[i % 3].login("cached", "wrong guess"));
    let statuses = futures::future::join_all(guesses).await;
    let counts = tally(statuses.iter().map(|r| r.status()));
    assert_eq!(counts.get(&401), Some(&4), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&26), "{counts:?}");
}
