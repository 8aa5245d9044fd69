use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, problem, spawn_app},
    on_both_databases,
};

on_both_databases!(
    login_returns_a_token_pair_that_no_cache_may_store,
    login_accepts_the_email_in_any_case_in_either_field,
    wrong_password_and_unknown_user_get_the_identical_401,
    a_login_without_username_or_email_is_422,
    repeated_failures_back_off_per_account_and_ip_with_retry_after,
    back_off_for_one_account_does_not_lock_out_another,
    many_failures_from_one_ip_back_off_that_ip_across_accounts,
    the_oauth2_token_endpoint_issues_tokens_for_the_password_grant,
    the_oauth2_token_endpoint_answers_errors_in_rfc6749_form,
    a_stored_hash_with_old_parameters_is_upgraded_on_login,
    a_login_flood_beyond_the_hashing_queue_gets_503_with_retry_after,
);

async fn login_returns_a_token_pair_that_no_cache_may_store(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("alice").await;
    let res = app.login("alice", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 15 * 60);
    assert_eq!(body["refresh_expires_in"], 7 * 24 * 3600);
    assert_eq!(body["access_token"].as_str().unwrap().split('.').count(), 3);
    assert!(
        body["refresh_token"].as_str().unwrap().len() >= 43,
        "≥ 256 bits"
    );

    let me: Value = app
        .get("/users/me", body["access_token"].as_str())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "alice");
}

async fn login_accepts_the_email_in_any_case_in_either_field(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("bob").await;
    assert_eq!(
        app.login("BOB@EXAMPLE.COM", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.login("Bob", PASSWORD).await.status(), StatusCode::OK);
    let res = app
        .post_json(
            "/auth/login",
            &json!({"email": "bob@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn wrong_password_and_unknown_user_get_the_identical_401(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("carol").await;
    let wrong = app.login("carol", "not the password at all").await;
    let unknown = app.login("nobody", "not the password at all").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let wrong = problem(wrong, StatusCode::UNAUTHORIZED).await;
    let unknown = problem(unknown, StatusCode::UNAUTHORIZED).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["code"], "invalid_credentials");
}

async fn a_login_without_username_or_email_is_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .post_json("/auth/login", &json!({"password": PASSWORD}))
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
}

async fn repeated_failures_back_off_per_account_and_ip_with_retry_after(backend: Backend) {
    let app = TestApp::builder()
        .arg("--login-free-failures", "3")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("dave").await;
    for _ in 0..3 {
        assert_eq!(
            app.login("dave", "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Backing off: even the right password waits, so guessing gains nothing.
    let res = app.login("dave", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // The back-off is temporary, not a lock-out.
    app.advance(Duration::from_secs(retry));
    assert_eq!(app.login("dave", PASSWORD).await.status(), StatusCode::OK);
}

async fn back_off_for_one_account_does_not_lock_out_another(backend: Backend) {
    let app = TestApp::builder()
        .arg("--login-free-failures", "1")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("erin").await;
    app.create_user("frank").await;
    for _ in 0..3 {
        app.login("erin", "wrong password!").await;
    }
    assert_eq!(
        app.login("erin", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(app.login("frank", PASSWORD).await.status(), StatusCode::OK);
}

async fn many_failures_from_one_ip_back_off_that_ip_across_accounts(backend: Backend) {
    let app = TestApp::builder()
        .arg("--login-free-failures", "100")
        .arg("--login-ip-free-failures", "3")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("kate").await;
    for name in ["x1", "x2", "x3", "x4"] {
        app.login(name, "wrong password!").await;
    }
    let res = app.login("kate", PASSWORD).await;
    assert!(res.headers().contains_key("retry-after"));
    problem(res, StatusCode::TOO_MANY_REQUESTS).await;
}

async fn the_oauth2_token_endpoint_issues_tokens_for_the_password_grant(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("gina").await;
    let res = app
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "password"),
                ("username", "gina"),
                ("password", PASSWORD),
                ("scope", ""),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(
        app.me_status(body["access_token"].as_str().unwrap()).await,
        StatusCode::OK
    );

    let res = app
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", body["refresh_token"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn the_oauth2_token_endpoint_answers_errors_in_rfc6749_form(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("hank").await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("grant_type", "password"),
                ("username", "hank"),
                ("password", "wrong password!"),
            ],
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "not-a-token"),
            ],
            "invalid_grant",
        ),
        (
            &[("grant_type", "client_credentials")],
            "unsupported_grant_type",
        ),
        (&[("username", "hank")], "invalid_request"),
    ];
    for (form, error) in cases {
        let res = app.post_form("/auth/token", form).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{form:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], error, "{form:?}");
        assert!(body["error_description"].is_string());
    }
}

async fn a_stored_hash_with_old_parameters_is_upgraded_on_login(backend: Backend) {
    let old = TestApp::builder()
        .arg("--argon2-memory-kib", "8192")
        .spawn(backend)
        .await;
    old.create_user("ivan").await;
    let before = old
        .store()
        .await
        .find_credentials("ivan")
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert!(before.contains("m=8192"), "{before}");

    let (db, _) = old.stop().await;
    let new = TestApp::builder().spawn_on(db).await;
    assert_eq!(new.login("ivan", PASSWORD).await.status(), StatusCode::OK);
    let after = new
        .store()
        .await
        .find_credentials("ivan")
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert!(after.contains("m=19456,t=2,p=1"), "{after}");
    assert_eq!(new.login("ivan", PASSWORD).await.status(), StatusCode::OK);
}

async fn a_login_flood_beyond_the_hashing_queue_gets_503_with_retry_after(backend: Backend) {
    // Parallel attempts are counted before they are checked: the back-off
    // must not be what refuses them here.
    let app = TestApp::builder()
        .arg("--hash-workers", "1")
        .arg("--hash-queue", "1")
        .arg("--login-free-failures", "100")
        .spawn(backend)
        .await;
    app.create_user("judy").await;
    let logins = (0..20).map(|_| app.login("judy", PASSWORD));
    let results = futures::future::join_all(logins).await;
    let ok = results
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let busy: Vec<_> = results
        .iter()
        .filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(ok >= 1, "some logins get through");
    assert!(!busy.is_empty(), "the rest are refused at once");
    assert_eq!(ok + busy.len(), 20);
    for r in busy {
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
