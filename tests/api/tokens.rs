use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{TEST_SECRET, TestApp, claims_of, header_of, problem, spawn_app},
    on_both_databases,
};

on_both_databases!(
    a_valid_access_token_opens_users_me,
    a_missing_token_is_401_without_an_error_code,
    a_malformed_authorization_header_is_401_invalid_token,
    a_token_with_alg_none_is_refused,
    a_token_with_tampered_claims_is_refused,
    a_token_signed_with_another_key_is_refused,
    a_token_of_the_wrong_type_issuer_audience_or_algorithm_is_refused,
    a_refresh_token_used_as_an_access_token_is_refused,
    an_access_token_expires_after_its_ttl,
    tokens_carry_typ_kid_and_the_standard_claims,
    an_access_token_never_outlives_its_session,
    a_token_from_the_future_or_living_too_long_is_refused_even_with_the_key,
);

/// Signs `claims` with the test key (or `secret`) and the given header fields.
fn sign(claims: &Value, alg: Algorithm, typ: &str, kid: &str, secret: &[u8]) -> String {
    let mut header = Header::new(alg);
    header.typ = Some(typ.into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

async fn invalid_token(app: &TestApp, token: &str) {
    let res = app.get("/users/me", Some(token)).await;
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    let body = problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "invalid_token");
}

async fn logged_in(app: &TestApp, name: &str) -> String {
    app.create_user(name).await;
    app.tokens(name).await.access
}

async fn a_valid_access_token_opens_users_me(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_user("alice").await;
    let access = app.tokens("alice").await.access;
    let res = app.get("/users/me", Some(&access)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me, created);
}

async fn a_missing_token_is_401_without_an_error_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/users/me", None).await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let body = problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "missing_token");
}

async fn a_malformed_authorization_header_is_401_invalid_token(backend: Backend) {
    let app = spawn_app(backend).await;
    for value in [
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer",
        "Bearer not.a.jwt",
        "Bearer ###",
    ] {
        let res = app
            .client
            .get(app.url("/users/me"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{value}");
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#,
            "{value}"
        );
    }
}

async fn a_token_with_alg_none_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let real = logged_in(&app, "bob").await;
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": header_of(&real)["kid"]});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        real.split('.').nth(1).unwrap()
    );
    invalid_token(&app, &unsigned).await;
}

async fn a_token_with_tampered_claims_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let real = logged_in(&app, "carol").await;
    let mut claims = claims_of(&real);
    claims["roles"] = json!(["admin", "user"]);
    let parts: Vec<_> = real.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    invalid_token(&app, &tampered).await;
    assert_eq!(
        app.get("/admin/users", Some(&tampered)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn a_token_signed_with_another_key_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let real = logged_in(&app, "dave").await;
    let kid = header_of(&real)["kid"].as_str().unwrap().to_owned();
    let forged = sign(
        &claims_of(&real),
        Algorithm::HS256,
        "at+jwt",
        &kid,
        b"another-secret-that-is-32-bytes-long!!",
    );
    invalid_token(&app, &forged).await;
}

async fn a_token_of_the_wrong_type_issuer_audience_or_algorithm_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let real = logged_in(&app, "erin").await;
    let kid = header_of(&real)["kid"].as_str().unwrap().to_owned();
    let claims = claims_of(&real);
    let secret = TEST_SECRET.as_bytes();
    // The control: re-signing the same claims with the same key is accepted.
    let resigned = sign(&claims, Algorithm::HS256, "at+jwt", &kid, secret);
    assert_eq!(app.me_status(&resigned).await, StatusCode::OK);

    invalid_token(&app, &sign(&claims, Algorithm::HS256, "JWT", &kid, secret)).await;
    invalid_token(
        &app,
        &sign(&claims, Algorithm::HS384, "at+jwt", &kid, secret),
    )
    .await;
    let mut other = claims.clone();
    other["iss"] = json!("someone-else");
    invalid_token(
        &app,
        &sign(&other, Algorithm::HS256, "at+jwt", &kid, secret),
    )
    .await;
    let mut other = claims.clone();
    other["aud"] = json!("another-api");
    invalid_token(
        &app,
        &sign(&other, Algorithm::HS256, "at+jwt", &kid, secret),
    )
    .await;
    let mut other = claims.clone();
    other["exp"] = json!(claims["iat"].as_i64().unwrap() - 10);
    invalid_token(
        &app,
        &sign(&other, Algorithm::HS256, "at+jwt", &kid, secret),
    )
    .await;
}

async fn a_refresh_token_used_as_an_access_token_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("frank").await;
    let tokens = app.tokens("frank").await;
    invalid_token(&app, &tokens.refresh).await;
}

async fn an_access_token_expires_after_its_ttl(backend: Backend) {
    let app = TestApp::builder()
        .arg("--access-token-ttl", "5m")
        .spawn(backend)
        .await;
    let access = logged_in(&app, "gina").await;
    app.advance(Duration::from_secs(290));
    assert_eq!(app.me_status(&access).await, StatusCode::OK);
    app.advance(Duration::from_secs(11));
    invalid_token(&app, &access).await;
}

async fn tokens_carry_typ_kid_and_the_standard_claims(backend: Backend) {
    let app = TestApp::builder()
        .arg("--issuer", "https://auth.example.com")
        .arg("--audience", "orders-api")
        .spawn(backend)
        .await;
    let access = logged_in(&app, "hank").await;
    let header = header_of(&access);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "at+jwt");
    assert!(header["kid"].is_string());
    let claims = claims_of(&access);
    assert_eq!(claims["iss"], "https://auth.example.com");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(claims["roles"], json!(["user"]));
    for claim in ["sub", "sid", "jti"] {
        assert!(
            uuid::Uuid::parse_str(claims[claim].as_str().unwrap()).is_ok(),
            "{claim}"
        );
    }
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
}

async fn an_access_token_never_outlives_its_session(backend: Backend) {
    let app = TestApp::builder()
        .arg("--session-max-age", "10m")
        .arg("--refresh-token-ttl", "10m")
        .arg("--access-token-ttl", "1h")
        .spawn(backend)
        .await;
    app.create_user("ivan").await;
    let tokens = app.tokens("ivan").await;
    let expires_in = tokens.body["expires_in"].as_u64().unwrap();
    assert!((599..=600).contains(&expires_in), "{expires_in}");
    let claims = claims_of(&tokens.access);
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!((599..=600).contains(&lifetime), "{lifetime}");
}

async fn a_token_from_the_future_or_living_too_long_is_refused_even_with_the_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let real = logged_in(&app, "gina").await;
    let kid = header_of(&real)["kid"].as_str().unwrap().to_owned();
    let claims = claims_of(&real);
    let secret = TEST_SECRET.as_bytes();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    let ten_years = 10 * 365 * 86_400;

    let mut future = claims.clone();
    future["iat"] = json!(iat + ten_years);
    future["exp"] = json!(exp + ten_years);
    invalid_token(
        &app,
        &sign(&future, Algorithm::HS256, "at+jwt", &kid, secret),
    )
    .await;

    let mut long = claims.clone();
    long["exp"] = json!(iat + 10 * 86_400);
    invalid_token(&app, &sign(&long, Algorithm::HS256, "at+jwt", &kid, secret)).await;

    // The control: the same claims as issued still work.
    let resigned = sign(&claims, Algorithm::HS256, "at+jwt", &kid, secret);
    assert_eq!(app.me_status(&resigned).await, StatusCode::OK);
}
