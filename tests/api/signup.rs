use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, error_fields, problem, spawn_app},
    on_both_databases,
};

on_both_databases!(
    signup_with_username_and_email_returns_201_and_the_user,
    signup_with_only_an_email_or_only_a_username_works,
    signup_without_username_or_email_is_422,
    a_username_taken_in_another_case_is_409,
    an_email_taken_in_another_case_is_409,
    each_invalid_field_is_named_in_the_422,
    weak_passwords_are_refused_with_a_reason,
    malformed_json_is_400_and_a_wrong_type_is_422,
    a_body_without_json_content_type_is_415,
    a_body_over_64_kib_is_413,
    fifty_concurrent_signups_of_one_name_create_exactly_one_account,
    signups_are_throttled_per_ip_with_retry_after,
    forwarded_addresses_count_only_behind_a_trusted_proxy,
    look_alike_emails_are_refused_and_never_reach_another_account,
    names_that_pass_for_the_service_are_reserved,
);

async fn signup_with_username_and_email_returns_201_and_the_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .signup(json!({"username": "Alice", "email": "Alice@Example.com", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["username"], "Alice");
    assert_eq!(user["email"], "Alice@Example.com");
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["roles"], json!(["user"]));
    assert_eq!(user["is_active"], true);
    assert!(uuid::Uuid::parse_str(user["id"].as_str().unwrap()).is_ok());
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<_> = user.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys.len(),
        7,
        "exactly id, username, email, email_verified, roles, is_active, created_at: {keys:?}"
    );
    assert!(!user.to_string().contains("argon2"), "no hash leaks");
}

async fn signup_with_only_an_email_or_only_a_username_works(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .signup(json!({"email": "solo@example.com", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["username"], Value::Null);

    let res = app
        .signup(json!({"username": "solo", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["email"], Value::Null);
}

async fn signup_without_username_or_email_is_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = problem(
        app.signup(json!({"password": PASSWORD})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(error_fields(&body), ["username"]);
}

async fn a_username_taken_in_another_case_is_409(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("bob").await;
    let res = app
        .signup(json!({"username": "BOB", "password": PASSWORD}))
        .await;
    let body = problem(res, StatusCode::CONFLICT).await;
    assert_eq!(body["code"], "conflict");
    assert!(body["detail"].as_str().unwrap().contains("username"));
}

async fn an_email_taken_in_another_case_is_409(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("carol").await;
    let res = app
        .signup(json!({"username": "carol2", "email": "CAROL@example.COM", "password": PASSWORD}))
        .await;
    let body = problem(res, StatusCode::CONFLICT).await;
    assert!(body["detail"].as_str().unwrap().contains("email"));
}

async fn each_invalid_field_is_named_in_the_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .signup(json!({"username": "no spaces!", "email": "not-an-email", "password": "short"}))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let mut fields = error_fields(&body);
    fields.sort();
    assert_eq!(fields, ["email", "password", "username"]);
    for e in body["errors"].as_array().unwrap() {
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
}

async fn weak_passwords_are_refused_with_a_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        ("dave1", "1234567", "at least 8"),
        ("dave2", "password123", "too common"),
        ("dave3", "Dave3", "at least 8"),
        ("dave.long.name", "DAVE.LONG.NAME", "same as the username"),
    ];
    for (username, password, reason) in cases {
        let res = app
            .signup(json!({"username": username, "password": password}))
            .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&body), ["password"], "{password}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{password}: {message}");
    }
    let too_long = "x".repeat(1025);
    let res = app
        .signup(json!({"username": "dave5", "password": too_long}))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1024")
    );
}

async fn malformed_json_is_400_and_a_wrong_type_is_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .client
        .post(app.url("/auth/signup"))
        .header("content-type", "application/json")
        .body(r#"{"username": "erin", "password": "#)
        .send()
        .await
        .unwrap();
    let body = problem(res, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["code"], "bad_request");

    let res = app
        .signup(json!({"username": 42, "password": PASSWORD}))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&body), ["username"]);

    let res = app.signup(json!({"username": "erin"})).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&body), ["password"]);
}

async fn a_body_without_json_content_type_is_415(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .client
        .post(app.url("/auth/signup"))
        .header("content-type", "text/plain")
        .body(r#"{"username": "frank", "password": "correct horse battery staple"}"#)
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

async fn a_body_over_64_kib_is_413(backend: Backend) {
    let app = spawn_app(backend).await;
    let huge = "x".repeat(70 * 1024);
    let res = app
        .signup(json!({"username": "gina", "password": huge}))
        .await;
    let body = problem(res, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(body["code"], "payload_too_large");
}

async fn fifty_concurrent_signups_of_one_name_create_exactly_one_account(backend: Backend) {
    let app = TestApp::builder()
        .arg("--signup-per-minute", "1000")
        .arg("--hash-workers", "2")
        .arg("--hash-queue-per-client", "64")
        .spawn(backend)
        .await;
    let attempts = (0..50).map(|i| {
        let body =
            json!({"username": if i % 2 == 0 { "Hydra" } else { "hydra" }, "password": PASSWORD});
        app.signup(body)
    });
    let results = futures::future::join_all(attempts).await;
    let created = results
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    let conflicts = results
        .iter()
        .filter(|r| r.status() == StatusCode::CONFLICT)
        .count();
    assert_eq!(created, 1);
    assert_eq!(conflicts, 49);
    let page = app
        .state
        .services
        .accounts
        .list(Default::default(), 100, None)
        .await
        .unwrap()
        .users;
    assert_eq!(page.len(), 1);
}

async fn signups_are_throttled_per_ip_with_retry_after(backend: Backend) {
    let app = TestApp::builder()
        .arg("--signup-per-minute", "2")
        .spawn(backend)
        .await;
    app.create_user("ivan1").await;
    app.create_user("ivan2").await;
    let res = app
        .signup(json!({"username": "ivan3", "password": PASSWORD}))
        .await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let body = problem(res, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["code"], "rate_limited");
}

async fn signup_from(app: &TestApp, name: &str, forwarded_for: &str) -> StatusCode {
    app.client
        .post(app.url("/auth/signup"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn forwarded_addresses_count_only_behind_a_trusted_proxy(backend: Backend) {
    let behind_proxy = TestApp::builder()
        .arg("--signup-per-minute", "1")
        .arg("--trusted-proxies", "127.0.0.0/8,::1/128")
        .spawn(backend)
        .await;
    assert_eq!(
        signup_from(&behind_proxy, "jack1", "198.51.100.1").await,
        StatusCode::CREATED
    );
    assert_eq!(
        signup_from(&behind_proxy, "jack2", "198.51.100.2").await,
        StatusCode::CREATED
    );
    assert_eq!(
        signup_from(&behind_proxy, "jack3", "198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Without a trusted proxy the header is the client's own claim: ignored.
    let direct = TestApp::builder()
        .arg("--signup-per-minute", "1")
        .spawn(backend)
        .await;
    assert_eq!(
        signup_from(&direct, "kim1", "198.51.100.1").await,
        StatusCode::CREATED
    );
    assert_eq!(
        signup_from(&direct, "kim2", "198.51.100.2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn look_alike_emails_are_refused_and_never_reach_another_account(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("kate").await;
    for look_alike in [
        "\u{FF4B}ate@example.com", // full-width k
        "\u{212A}ate@example.com", // Kelvin sign, which lower-cases to k
        "kate@ex\u{0430}mple.com", // Cyrillic a
        "k\u{0430}te@example.com", // Cyrillic a in the local part
        "\"kate\"@example.com",    // the same mailbox, quoted
        "\"kate@example.com\"@evil.test",
        "kate@[127.0.0.1]",
        "kate@127.0.0.1",
        "kate@localhost",
    ] {
        let res = app
            .signup(json!({"email": look_alike, "password": PASSWORD}))
            .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&body), ["email"], "{look_alike:?}");
        // Nor does it log into Kate's account.
        assert_eq!(
            app.login(look_alike, PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED,
            "{look_alike:?}"
        );
    }
    let res = app
        .signup(json!({"email": "KATE@Example.COM", "password": PASSWORD}))
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CONFLICT,
        "case is not a new account"
    );
}

async fn names_that_pass_for_the_service_are_reserved(backend: Backend) {
    let app = spawn_app(backend).await;
    for name in [
        "admin",
        "Admin",
        "ad.min",
        "ROOT",
        "sup-port",
        "authgate",
        "adm1n",
        "4dmin",
        "admin1",
        "r00t",
        "supp0rt",
        "administrat0r",
    ] {
        let res = app
            .signup(json!({"username": name, "password": PASSWORD}))
            .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&body), ["username"], "{name}");
    }
    let res = app
        .signup(json!({"username": "admins-fan", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // The list is a setting.
    let open = TestApp::builder()
        .arg("--reserved-usernames", "")
        .spawn(backend)
        .await;
    let res = open
        .signup(json!({"username": "admin", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}
