//! `/auth/introspect` (RFC 7662) and `/auth/revoke` (RFC 7009).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, TestDb},
    helpers::{TestApp, TestAppBuilder, Tokens},
    on_both_databases,
};

on_both_databases!(
    introspection_needs_client_credentials_or_an_admin_token,
    wrong_client_secrets_back_off_like_failed_logins,
    a_live_access_token_is_described_and_never_cached,
    an_access_token_of_an_ended_session_is_inactive_at_once,
    a_refresh_token_is_active_until_it_is_used,
    anything_else_is_only_active_false,
    revoking_a_refresh_token_ends_its_session_and_always_answers_200,
    revoking_an_access_token_ends_its_session_too,
    a_revocation_on_one_instance_is_refused_on_another_within_a_second,
);

const CLIENT: &str = "orders-api";
const SECRET: &str = "orders-api-introspection-secret";

fn with_client() -> TestAppBuilder {
    TestApp::builder()
        .with_admin()
        .arg("--introspection-clients", &format!("{CLIENT}:{SECRET}"))
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn introspect_req(app: &TestApp, form: &[(&str, &str)]) -> RequestBuilder {
    app.client.post(app.url("/auth/introspect")).form(form)
}

/// Introspects `token` as the configured client; the answer's body.
async fn introspect(app: &TestApp, token: &str) -> Value {
    let res = introspect_req(app, &[("token", token)])
        .header("authorization", basic(CLIENT, SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

async fn revoke(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/auth/revoke"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

async fn user(app: &TestApp, name: &str) -> Tokens {
    app.create_user(name).await;
    app.tokens(name).await
}

async fn introspection_needs_client_credentials_or_an_admin_token(backend: Backend) {
    let app = with_client().spawn(backend).await;
    let ada = user(&app, "ada").await;
    let form = [("token", ada.access.as_str())];
    let res = introspect_req(&app, &form).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    for wrong in [
        basic(CLIENT, "orders-api-introspection-secreT"),
        basic("someone", SECRET),
        "Basic !!!".to_owned(),
        "Bearer not-a-token".to_owned(),
    ] {
        let res = introspect_req(&app, &form)
            .header("authorization", &wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // A user's own token is not enough; an admin's is.
    let res = introspect_req(&app, &form)
        .bearer_auth(&ada.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let admin = app.admin_token().await;
    let res = introspect_req(&app, &form)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
    // Credentials in the form work too.
    let res = introspect_req(
        &app,
        &[
            ("token", &ada.access),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
    // A body without a token, or not a form, is invalid_request.
    let res = introspect_req(&app, &[("token_type_hint", "access_token")])
        .header("authorization", basic(CLIENT, SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
    let res = app
        .client
        .post(app.url("/auth/introspect"))
        .header("authorization", basic(CLIENT, SECRET))
        .json(&json!({"token": ada.access}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

async fn a_live_access_token_is_described_and_never_cached(backend: Backend) {
    let app = with_client().spawn(backend).await;
    let ada = user(&app, "ada").await;
    let me: Value = app
        .get("/users/me", Some(&ada.access))
        .await
        .json()
        .await
        .unwrap();
    let body = introspect(&app, &ada.access).await;
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "access_token");
    assert_eq!(body["sub"], me["id"]);
    assert_eq!(body["username"], "ada");
    assert_eq!(body["roles"], json!(["user"]));
    assert_eq!(body["iss"], "http://127.0.0.1:8010");
    assert_eq!(body["aud"], "authgate");
    for claim in ["sid", "jti"] {
        assert!(body[claim].is_string(), "{claim}: {body}");
    }
    for claim in ["exp", "iat"] {
        assert!(body[claim].is_i64(), "{claim}: {body}");
    }
}

async fn an_access_token_of_an_ended_session_is_inactive_at_once(backend: Backend) {
    let app = with_client().spawn(backend).await;
    let ada = user(&app, "ada").await;
    assert_eq!(introspect(&app, &ada.access).await["active"], true);
    let res = app
        .post_json("/auth/logout", &json!({"refresh_token": ada.refresh}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        introspect(&app, &ada.access).await,
        json!({"active": false})
    );
}

async fn a_refresh_token_is_active_until_it_is_used(backend: Backend) {
    let app = with_client().spawn(backend).await;
    let ada = user(&app, "ada").await;
    let res = introspect_req(
        &app,
        &[
            ("token", &ada.refresh),
            ("token_type_hint", "refresh_token"),
        ],
    )
    .header("authorization", basic(CLIENT, SECRET))
    .send()
    .await
    .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "refresh_token");
    assert_eq!(body["username"], "ada");
    // A wrong hint is only a hint.
    let body = introspect(&app, &ada.refresh).await;
    assert_eq!(body["token_type"], "refresh_token");
    assert_eq!(app.refresh(&ada.refresh).await.status(), StatusCode::OK);
    assert_eq!(
        introspect(&app, &ada.refresh).await,
        json!({"active": false})
    );
}

async fn anything_else_is_only_active_false(backend: Backend) {
    let app = with_client().spawn(backend).await;
    let ada = user(&app, "ada").await;
    let mut tampered = ada.access.clone();
    tampered.pop();
    let other = TestApp::builder_with_generated_key().spawn(backend).await;
    let foreign = user(&other, "ada").await;
    for token in [
        "garbage",
        tampered.as_str(),
        foreign.access.as_str(),
        &"A".repeat(43),
        &"x".repeat(5000),
    ] {
        assert_eq!(introspect(&app, token).await, json!({"active": false}));
    }
    app.advance(Duration::from_secs(16 * 60));
    assert_eq!(
        introspect(&app, &ada.access).await,
        json!({"active": false})
    );
}

async fn revoking_a_refresh_token_ends_its_session_and_always_answers_200(backend: Backend) {
    let app = with_client().spawn(backend).await;
    let ada = user(&app, "ada").await;
    let res = revoke(&app, &ada.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap().is_empty());
    app.assert_refused_within(&ada.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&ada.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, &ada.access).await,
        json!({"active": false})
    );
    // Again, unknown or garbage: still 200.
    for token in [ada.refresh.as_str(), &"B".repeat(43), "garbage"] {
        assert_eq!(revoke(&app, token).await.status(), StatusCode::OK);
    }
    let res = app
        .client
        .post(app.url("/auth/revoke"))
        .form(&[("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
}

async fn revoking_an_access_token_ends_its_session_too(backend: Backend) {
    let app = with_client().spawn(backend).await;
    let ada = user(&app, "ada").await;
    let other = app.tokens("ada").await;
    assert_eq!(revoke(&app, &ada.access).await.status(), StatusCode::OK);
    assert_eq!(app.me_status(&ada.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&ada.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Only that session: the other login lives on.
    assert_eq!(app.me_status(&other.access).await, StatusCode::OK);
}

async fn a_revocation_on_one_instance_is_refused_on_another_within_a_second(backend: Backend) {
    let a = with_client().spawn(backend).await;
    let b = with_client().spawn_on(TestDb::attach(a.db())).await;
    let ada = user(&a, "ada").await;
    assert_eq!(b.me_status(&ada.access).await, StatusCode::OK);
    assert_eq!(revoke(&a, &ada.refresh).await.status(), StatusCode::OK);
    b.assert_refused_within(&ada.access, Duration::from_secs(1))
        .await;
    assert_eq!(introspect(&b, &ada.access).await, json!({"active": false}));
}

async fn wrong_client_secrets_back_off_like_failed_logins(backend: Backend) {
    let app = with_client().spawn(backend).await;
    app.stop_clock();
    let wrong = basic(CLIENT, "not-the-secret-at-all");
    for _ in 0..10 {
        let res = introspect_req(&app, &[("token", "x")])
            .header("authorization", &wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // Backing off now: even the right secret waits, so a guess learns nothing.
    for auth in [&wrong, &basic(CLIENT, SECRET)] {
        let res = introspect_req(&app, &[("token", "x")])
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key("retry-after"));
    }
    app.advance(Duration::from_secs(2));
    assert_eq!(introspect(&app, "x").await, json!({"active": false}));
}
