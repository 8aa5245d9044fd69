//! Prometheus metrics on their own listener: requests by route and status,
//! outcomes of the flows, limits, hashing, pools and the session cache; and
//! never a user in a label.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, spawn_app},
    on_both_databases,
};

on_both_databases!(
    metrics_are_served_on_their_own_listener_only,
    metrics_count_requests_outcomes_limits_hashing_pools_and_the_cache,
);

async fn metrics_are_served_on_their_own_listener_only(backend: Backend) {
    let app = spawn_app(backend).await;
    assert!(app.metrics.is_none(), "off unless asked for");
    assert_eq!(
        app.get("/metrics", None).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn metrics_count_requests_outcomes_limits_hashing_pools_and_the_cache(backend: Backend) {
    let app = TestApp::builder()
        .arg("--metrics-listen", "127.0.0.1:0")
        .arg("--signup-per-minute", "2")
        .spawn(backend)
        .await;
    app.create_user("metered").await;
    let tokens = app.tokens("metered").await;
    assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);
    assert_eq!(
        app.login("metered", "not the password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app.refresh(&tokens.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    app.create_user("second-metered").await;
    let res = app
        .signup(json!({"username": "third-metered", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // Pools are sampled every few seconds; the first sample is at start.
    let url = app.metrics.clone().expect("a metrics listener");
    let res = app.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    for expected in [
        r#"authgate_http_requests_total{route="/auth/login",method="POST",status="200"}"#,
        r#"authgate_http_requests_total{route="/users/me",method="GET",status="200"}"#,
        r#"authgate_http_request_duration_seconds_bucket{route="/auth/login",method="POST""#,
        r#"authgate_logins_total{outcome="success"}"#,
        r#"authgate_logins_total{outcome="invalid_credentials"}"#,
        r#"authgate_signups_total{outcome="success"}"#,
        r#"authgate_signups_total{outcome="throttled"}"#,
        r#"authgate_refreshes_total{outcome="success"}"#,
        r#"authgate_throttled_total{policy="signup"}"#,
        "authgate_hash_wait_seconds_bucket",
        "authgate_hash_queue_depth",
        r#"authgate_db_connections{pool="#,
        r#"authgate_session_cache_total{result="#,
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    for private in ["metered", "example.com", &tokens.access[..20]] {
        assert!(!text.contains(private), "{private} in the metrics");
    }
}
