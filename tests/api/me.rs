//! `/users/me`: a user's own sessions, password and account.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, Tokens, problem, spawn_app},
    on_both_databases,
};

on_both_databases!(
    the_session_list_shows_each_login_newest_first_with_its_client,
    ending_a_session_refuses_its_tokens_and_another_users_session_is_404,
    changing_the_password_ends_every_other_session,
    a_wrong_current_password_is_403_and_throttled_like_a_login,
    deleting_the_account_ends_everything_and_frees_its_names,
    the_last_admin_cannot_delete_itself,
    no_login_racing_a_password_change_or_a_deletion_outlives_it,
);

const NEW_PASSWORD: &str = "a brand new passphrase";

async fn login_as(app: &TestApp, name: &str, user_agent: &str) -> Tokens {
    let res = app
        .client
        .post(app.url("/auth/login"))
        .header("user-agent", user_agent)
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    Tokens::from(res.json::<Value>().await.unwrap())
}

async fn sessions(app: &TestApp, access: &str) -> Vec<Value> {
    let res = app.get("/users/me/sessions", Some(access)).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["sessions"]
        .as_array()
        .unwrap()
        .clone()
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    access: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app
        .client
        .request(method, app.url(path))
        .bearer_auth(access);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

async fn change_password(app: &TestApp, access: &str, current: &str) -> reqwest::Response {
    let body = json!({"current_password": current, "new_password": NEW_PASSWORD});
    send(
        app,
        reqwest::Method::POST,
        "/users/me/password",
        access,
        Some(body),
    )
    .await
}

async fn the_session_list_shows_each_login_newest_first_with_its_client(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("alice").await;
    let laptop = login_as(&app, "alice", "Laptop/1.0").await;
    let phone = login_as(&app, "alice", "Phone/2.0").await;
    let listed = sessions(&app, &phone.access).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["user_agent"], "Phone/2.0", "newest first");
    assert_eq!(listed[0]["current"], true);
    assert_eq!(listed[1]["user_agent"], "Laptop/1.0");
    assert_eq!(listed[1]["current"], false);
    assert_eq!(listed[0]["ip"], "127.0.0.1");
    assert!(listed[1]["last_used_at"].is_null(), "never refreshed");
    for field in ["id", "created_at", "expires_at"] {
        assert!(listed[0][field].is_string(), "{field}");
    }
    // A refresh is a use.
    app.advance(Duration::from_secs(60));
    let res = app.refresh(&laptop.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let listed = sessions(&app, &phone.access).await;
    assert!(listed[1]["last_used_at"].is_string(), "{listed:?}");
}

async fn ending_a_session_refuses_its_tokens_and_another_users_session_is_404(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("bob").await;
    app.create_user("carol").await;
    let bob_old = app.tokens("bob").await;
    let bob_new = app.tokens("bob").await;
    let carol = app.tokens("carol").await;
    let old_id = sessions(&app, &bob_old.access)
        .await
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let carol_id = sessions(&app, &carol.access).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Someone else's session, an unknown one and a malformed id look the same.
    for id in [
        carol_id.as_str(),
        "0190a5e2-0000-7000-8000-000000000000",
        "nope",
    ] {
        let path = format!("/users/me/sessions/{id}");
        let res = send(&app, reqwest::Method::DELETE, &path, &bob_new.access, None).await;
        assert_eq!(
            problem(res, StatusCode::NOT_FOUND).await["code"],
            "not_found"
        );
    }
    assert_eq!(app.me_status(&carol.access).await, StatusCode::OK);

    let path = format!("/users/me/sessions/{old_id}");
    let res = send(&app, reqwest::Method::DELETE, &path, &bob_new.access, None).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    app.assert_refused_within(&bob_old.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&bob_old.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(sessions(&app, &bob_new.access).await.len(), 1);
    // Ending it twice: it is no longer a live session.
    let res = send(&app, reqwest::Method::DELETE, &path, &bob_new.access, None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

async fn changing_the_password_ends_every_other_session(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("dave").await;
    let here = app.tokens("dave").await;
    let elsewhere = app.tokens("dave").await;
    let weak = json!({"current_password": PASSWORD, "new_password": "password"});
    let res = send(
        &app,
        reqwest::Method::POST,
        "/users/me/password",
        &here.access,
        Some(weak),
    )
    .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "new_password");

    let res = change_password(&app, &here.access, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.me_status(&here.access).await,
        StatusCode::OK,
        "this session goes on"
    );
    app.assert_refused_within(&elsewhere.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&elsewhere.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.refresh(&here.refresh).await.status(), StatusCode::OK);
    assert_eq!(
        app.login("dave", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("dave", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn a_wrong_current_password_is_403_and_throttled_like_a_login(backend: Backend) {
    let app = TestApp::builder()
        .arg("--login-free-failures", "3")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("erin").await;
    let tokens = app.tokens("erin").await;
    for _ in 0..3 {
        let res = change_password(&app, &tokens.access, "not my password").await;
        assert_eq!(
            problem(res, StatusCode::FORBIDDEN).await["code"],
            "wrong_password"
        );
    }
    let res = change_password(&app, &tokens.access, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    // The same counter as logins to that account.
    assert_eq!(
        app.login("erin", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn deleting_the_account_ends_everything_and_frees_its_names(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("frank").await;
    let tokens = app.tokens("frank").await;
    let other = app.tokens("frank").await;
    let wrong = json!({"current_password": "not my password"});
    let res = send(
        &app,
        reqwest::Method::DELETE,
        "/users/me",
        &tokens.access,
        Some(wrong),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "wrong_password"
    );

    let right = json!({"current_password": PASSWORD});
    let res = send(
        &app,
        reqwest::Method::DELETE,
        "/users/me",
        &tokens.access,
        Some(right),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for access in [&tokens.access, &other.access] {
        app.assert_refused_within(access, Duration::from_secs(1))
            .await;
    }
    assert_eq!(
        app.refresh(&other.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("frank", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The username and the email are free again.
    app.create_user("frank").await;
    assert_eq!(app.login("frank", PASSWORD).await.status(), StatusCode::OK);
}

async fn the_last_admin_cannot_delete_itself(backend: Backend) {
    let app = TestApp::builder()
        .arg("--admin-email", "root@example.com")
        .arg("--admin-password", "a long admin passphrase")
        .spawn(backend)
        .await;
    let res = app
        .login("root@example.com", "a long admin passphrase")
        .await;
    let access = Tokens::from(res.json::<Value>().await.unwrap()).access;
    let body = json!({"current_password": "a long admin passphrase"});
    let res = send(
        &app,
        reqwest::Method::DELETE,
        "/users/me",
        &access,
        Some(body),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::CONFLICT).await["code"],
        "last_admin"
    );
    assert_eq!(app.me_status(&access).await, StatusCode::OK);
}

async fn no_login_racing_a_password_change_or_a_deletion_outlives_it(backend: Backend) {
    let app = TestApp::builder()
        .arg("--login-free-failures", "1000")
        .arg("--login-account-per-minute", "1000")
        .arg("--login-per-minute", "1000")
        .arg("--hash-workers", "2")
        .spawn(backend)
        .await;
    app.create_user("hal").await;
    let victim = app.tokens("hal").await;
    // Logins with the old password in flight while the password changes.
    let logins = futures::future::join_all((0..12).map(|_| app.login("hal", PASSWORD)));
    let change = change_password(&app, &victim.access, PASSWORD);
    let (logins, change) = tokio::join!(logins, change);
    assert_eq!(change.status(), StatusCode::NO_CONTENT);
    assert_none_outlived(&app, logins).await;
    // Logins in flight while the account is deleted: refused, never a 500.
    let logins = futures::future::join_all((0..12).map(|_| app.login("hal", NEW_PASSWORD)));
    let body = json!({"current_password": NEW_PASSWORD});
    let delete = send(
        &app,
        reqwest::Method::DELETE,
        "/users/me",
        &victim.access,
        Some(body),
    );
    let (logins, delete) = tokio::join!(logins, delete);
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    assert_none_outlived(&app, logins).await;
}

/// Each login that raced the change was refused (never a 500), or its
/// session has ended with the change: its tokens work no more.
async fn assert_none_outlived(app: &TestApp, logins: Vec<reqwest::Response>) {
    for res in logins {
        assert!(
            [StatusCode::OK, StatusCode::UNAUTHORIZED].contains(&res.status()),
            "{}",
            res.status()
        );
        if res.status() == StatusCode::OK {
            let raced = Tokens::from(res.json::<Value>().await.unwrap());
            app.assert_refused_within(&raced.access, Duration::from_secs(1))
                .await;
            assert_eq!(
                app.refresh(&raced.refresh).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
    }
}
