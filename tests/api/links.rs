//! Mailed links: email verification, password reset, the change of a user's
//! email address and username, and accounts an admin creates without a
//! password. The mail is read where it arrives: at the SMTP sink.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, smtp::Received},
    helpers::{PASSWORD, TestApp, Tokens, error_fields, problem, spawn_app},
    on_both_databases,
};

on_both_databases!(
    signing_up_mails_a_link_that_verifies_the_address_once,
    a_newer_verification_link_replaces_the_older_one,
    a_verified_user_gets_no_new_link_and_a_user_without_email_is_422,
    a_session_in_use_while_its_address_is_verified_gets_no_new_link,
    a_session_in_use_sees_its_users_changes_at_once,
    a_verification_link_works_for_a_day_and_no_longer,
    forgot_answers_alike_whether_or_not_an_account_has_the_address,
    a_password_reset_ends_every_session_and_swaps_the_password,
    a_reset_link_works_once_and_survives_a_refused_weak_password,
    a_reset_link_works_for_thirty_minutes_and_no_longer,
    changing_the_password_kills_an_outstanding_reset_link,
    a_disabled_account_gets_no_reset_mail,
    signing_up_again_and_again_cannot_flood_an_inbox,
    forgot_is_throttled_per_recipient_whether_or_not_the_account_exists,
    forgot_is_throttled_per_client_address,
    with_verification_required_a_signup_needs_an_email,
    with_verification_required_only_the_right_password_learns_the_email_is_unverified,
    with_verification_required_the_token_endpoint_refuses_an_unverified_user,
    a_new_username_applies_at_once_and_frees_the_old_one,
    a_username_change_is_refused_when_taken_unconfirmed_or_invalid,
    a_username_can_change_its_case_alone,
    a_new_email_changes_only_through_the_link_mailed_to_it,
    an_email_change_link_works_for_an_hour_and_no_longer,
    an_address_taken_before_its_link_is_used_is_409_and_nothing_changes,
    an_account_created_without_a_password_is_entered_through_its_mailed_link,
    an_admin_cannot_create_an_account_without_a_password_and_an_email,
    garbage_tokens_are_invalid_links_never_server_errors,
    a_link_works_only_at_the_endpoint_of_its_purpose,
    a_mailed_link_opens_a_page_whose_button_spends_it,
    the_reset_page_sets_a_new_password_once,
);

/// How long a test waits for a mail to arrive.
const WAIT: Duration = Duration::from_secs(10);
const NEW_PASSWORD: &str = "a brand new passphrase";
const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "a long admin passphrase";

const VERIFY_SUBJECT: &str = "Confirm your email address";
const RESET_SUBJECT: &str = "Reset your password";
const CHANGE_SUBJECT: &str = "Confirm your new email address";
const NOTICE_SUBJECT: &str = "Your email address is about to change";
const INVITATION_SUBJECT: &str = "Your new account";

fn email_of(name: &str) -> String {
    format!("{name}@example.com")
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Response {
    let mut req = app.client.request(method, app.url(path)).json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("request sent")
}

/// The token of the link in `mail`, after checking the link leads to `path`.
fn link_to(mail: &Received, path: &str) -> String {
    let token = mail.link_token().expect("a link with a token");
    let body = mail.body();
    assert!(
        body.contains(&format!("{path}?token={token}")),
        "the link leads to {path}: {body}"
    );
    token
}

/// Waits for the next mail to `to`, checks its subject and returns the token
/// of its link to `path`.
async fn next_link(app: &TestApp, to: &str, subject: &str, path: &str) -> String {
    let mail = app.mail.wait_for(to, WAIT).await;
    assert_eq!(mail.subject(), subject, "mail to {to}");
    link_to(&mail, path)
}

/// Signs `name` up with the address `name@example.com`; returns the user and
/// the token of the verification link mailed to it.
async fn sign_up(app: &TestApp, name: &str) -> (Value, String) {
    let user = app.create_user(name).await;
    let token = next_link(app, &email_of(name), VERIFY_SUBJECT, "/auth/verify-email").await;
    (user, token)
}

async fn verify(app: &TestApp, token: &str) -> Response {
    app.post_json("/auth/verify-email", &json!({"token": token}))
        .await
}

async fn request_verification(app: &TestApp, access: &str) -> Response {
    send(
        app,
        Method::POST,
        "/auth/verify-email/request",
        Some(access),
        json!({}),
    )
    .await
}

async fn forgot(app: &TestApp, email: &str) -> Response {
    app.post_json("/auth/password/forgot", &json!({"email": email}))
        .await
}

/// Asks for a reset link for `name@example.com` and returns its token.
async fn reset_link(app: &TestApp, name: &str) -> String {
    let res = forgot(app, &email_of(name)).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    next_link(app, &email_of(name), RESET_SUBJECT, "/auth/password/reset").await
}

async fn reset(app: &TestApp, token: &str, new_password: &str) -> Response {
    app.post_json(
        "/auth/password/reset",
        &json!({"token": token, "new_password": new_password}),
    )
    .await
}

async fn confirm_email(app: &TestApp, token: &str) -> Response {
    app.post_json("/auth/email/confirm", &json!({"token": token}))
        .await
}

async fn patch_me(app: &TestApp, access: &str, body: Value) -> Response {
    send(app, Method::PATCH, "/users/me", Some(access), body).await
}

async fn me(app: &TestApp, access: &str) -> Value {
    let res = app.get("/users/me", Some(access)).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// The problem code of a refused link, after checking it is a 400.
async fn link_refusal(res: Response) -> Value {
    problem(res, StatusCode::BAD_REQUEST).await["code"].clone()
}

/// The `Retry-After` of a 429, in seconds, after checking the problem.
async fn throttled(res: Response) -> u64 {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert_eq!(
        problem(res, StatusCode::TOO_MANY_REQUESTS).await["code"],
        "rate_limited"
    );
    retry
}

async fn spawn_with_admin(backend: Backend) -> TestApp {
    TestApp::builder()
        .arg("--admin-email", ADMIN_EMAIL)
        .arg("--admin-password", ADMIN_PASSWORD)
        .spawn(backend)
        .await
}

async fn admin_token(app: &TestApp) -> String {
    let res = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    Tokens::from(res.json::<Value>().await.unwrap()).access
}

// Email verification.

async fn signing_up_mails_a_link_that_verifies_the_address_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.create_user("alice").await;
    assert_eq!(user["email_verified"], false);
    let access = app.tokens("alice").await.access;
    assert_eq!(me(&app, &access).await["email_verified"], false);

    let mail = app.mail.wait_for("alice@example.com", WAIT).await;
    assert_eq!(mail.subject(), VERIFY_SUBJECT);
    assert_eq!(mail.to, ["alice@example.com"]);
    let token = link_to(&mail, "/auth/verify-email");

    let res = verify(&app, &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let verified: Value = res.json().await.unwrap();
    assert_eq!(verified["id"], user["id"]);
    assert_eq!(verified["email"], "alice@example.com");
    assert_eq!(verified["email_verified"], true);
    let fresh = app.tokens("alice").await.access;
    assert_eq!(
        me(&app, &fresh).await["email_verified"],
        true,
        "/users/me of a new session"
    );

    assert_eq!(
        link_refusal(verify(&app, &token).await).await,
        "invalid_link"
    );
}

async fn a_newer_verification_link_replaces_the_older_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, first) = sign_up(&app, "bob").await;
    let access = app.tokens("bob").await.access;

    let res = request_verification(&app, &access).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "accepted");
    let second = next_link(
        &app,
        "bob@example.com",
        VERIFY_SUBJECT,
        "/auth/verify-email",
    )
    .await;
    assert_ne!(first, second);

    assert_eq!(
        link_refusal(verify(&app, &first).await).await,
        "invalid_link"
    );
    let res = verify(&app, &second).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["email_verified"], true);
}

async fn a_verified_user_gets_no_new_link_and_a_user_without_email_is_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = sign_up(&app, "carol").await;
    assert_eq!(verify(&app, &token).await.status(), StatusCode::OK);
    let access = app.tokens("carol").await.access;

    let res = request_verification(&app, &access).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // A reset link asked for afterwards must be the next mail to arrive:
    // had the request queued a verification link, it would come first.
    assert_eq!(
        forgot(&app, "carol@example.com").await.status(),
        StatusCode::ACCEPTED
    );
    let next = app.mail.wait_for("carol@example.com", WAIT).await;
    assert_eq!(next.subject(), RESET_SUBJECT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.mail.count_to("carol@example.com"),
        2,
        "signup and reset"
    );

    let res = app
        .signup(json!({"username": "nomail", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let access = app.tokens("nomail").await.access;
    let res = request_verification(&app, &access).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&body), ["email"]);
}

async fn a_session_in_use_while_its_address_is_verified_gets_no_new_link(backend: Backend) {
    let app = spawn_app(backend).await;
    // A stopped clock keeps a slow machine from hiding what happens within
    // the first moments after the link is used.
    app.stop_clock();
    let (_, token) = sign_up(&app, "dora").await;
    let access = app.tokens("dora").await.access;
    // The app shows the user while the link is opened elsewhere.
    assert_eq!(me(&app, &access).await["email_verified"], false);
    assert_eq!(verify(&app, &token).await.status(), StatusCode::OK);

    let res = request_verification(&app, &access).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(
        forgot(&app, "dora@example.com").await.status(),
        StatusCode::ACCEPTED
    );
    let next = app.mail.wait_for("dora@example.com", WAIT).await;
    assert_eq!(
        next.subject(),
        RESET_SUBJECT,
        "a verified address was sent another verification link"
    );
}

async fn a_session_in_use_sees_its_users_changes_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stop_clock();
    let (_, token) = sign_up(&app, "eddy").await;
    let access = app.tokens("eddy").await.access;
    let mut stale = Vec::new();

    assert_eq!(me(&app, &access).await["email_verified"], false);
    assert_eq!(verify(&app, &token).await.status(), StatusCode::OK);
    let seen = me(&app, &access).await;
    if seen["email_verified"] != true {
        stale.push(format!("after verifying: {seen}"));
    }

    let res = patch_me(
        &app,
        &access,
        json!({"username": "eddy2", "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = me(&app, &access).await;
    if seen["username"] != "eddy2" {
        stale.push(format!("after renaming: {seen}"));
    }

    let res = patch_me(
        &app,
        &access,
        json!({"email": "eddy@example.org", "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let link = next_link(
        &app,
        "eddy@example.org",
        CHANGE_SUBJECT,
        "/auth/email/confirm",
    )
    .await;
    assert_eq!(me(&app, &access).await["email"], "eddy@example.com");
    assert_eq!(confirm_email(&app, &link).await.status(), StatusCode::OK);
    let seen = me(&app, &access).await;
    if seen["email"] != "eddy@example.org" {
        stale.push(format!("after the new address was confirmed: {seen}"));
    }

    assert!(stale.is_empty(), "/users/me was stale: {stale:#?}");
}

async fn a_verification_link_works_for_a_day_and_no_longer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, early) = sign_up(&app, "dave").await;
    let (_, late) = sign_up(&app, "erin").await;
    app.advance(Duration::from_secs(23 * 3600 + 50 * 60));
    assert_eq!(verify(&app, &early).await.status(), StatusCode::OK);
    app.advance(Duration::from_secs(11 * 60));
    assert_eq!(
        link_refusal(verify(&app, &late).await).await,
        "invalid_link"
    );
    let access = app.tokens("erin").await.access;
    assert_eq!(me(&app, &access).await["email_verified"], false);
}

// Password reset.

async fn forgot_answers_alike_whether_or_not_an_account_has_the_address(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "frank").await;

    let unknown = forgot(&app, "nobody@example.com").await;
    let known = forgot(&app, "frank@example.com").await;
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(
        unknown.headers()["content-type"],
        known.headers()["content-type"]
    );
    let unknown = unknown.bytes().await.unwrap();
    let known = known.bytes().await.unwrap();
    assert_eq!(unknown, known, "the same bytes either way");
    let body: Value = serde_json::from_slice(&known).unwrap();
    assert_eq!(body["status"], "accepted");

    let mail = app.mail.wait_for("frank@example.com", WAIT).await;
    assert_eq!(mail.subject(), RESET_SUBJECT);
    link_to(&mail, "/auth/password/reset");
    assert_eq!(app.mail.count_to("nobody@example.com"), 0);

    let res = forgot(&app, "not an address").await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&body), ["email"]);
}

async fn a_password_reset_ends_every_session_and_swaps_the_password(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "grace").await;
    let laptop = app.tokens("grace").await;
    let phone = app.tokens("grace").await;
    let token = reset_link(&app, "grace").await;

    assert_eq!(
        reset(&app, &token, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    for session in [&laptop, &phone] {
        assert_eq!(
            app.refresh(&session.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for session in [&laptop, &phone] {
        app.assert_refused_within(&session.access, Duration::from_secs(2))
            .await;
    }
    let old = app.login("grace", PASSWORD).await;
    assert_eq!(
        problem(old, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_credentials"
    );
    assert_eq!(
        app.login("grace@example.com", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn a_reset_link_works_once_and_survives_a_refused_weak_password(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "heidi").await;
    let token = reset_link(&app, "heidi").await;

    for weak in ["short", "password123", "heidi@example.com"] {
        let res = reset(&app, &token, weak).await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&body), ["new_password"], "{weak}");
    }
    assert_eq!(
        app.login("heidi", PASSWORD).await.status(),
        StatusCode::OK,
        "a refused reset changes nothing"
    );

    assert_eq!(
        reset(&app, &token, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    let again = reset(&app, &token, "yet another passphrase").await;
    assert_eq!(link_refusal(again).await, "invalid_link");
    assert_eq!(
        app.login("heidi", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn a_reset_link_works_for_thirty_minutes_and_no_longer(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "ivan").await;
    sign_up(&app, "judy").await;
    let early = reset_link(&app, "ivan").await;
    let late = reset_link(&app, "judy").await;
    app.advance(Duration::from_secs(29 * 60));
    assert_eq!(
        reset(&app, &early, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    app.advance(Duration::from_secs(2 * 60));
    let res = reset(&app, &late, NEW_PASSWORD).await;
    assert_eq!(link_refusal(res).await, "invalid_link");
    assert_eq!(app.login("judy", PASSWORD).await.status(), StatusCode::OK);
}

async fn changing_the_password_kills_an_outstanding_reset_link(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "kate").await;
    let token = reset_link(&app, "kate").await;
    let access = app.tokens("kate").await.access;
    let res = send(
        &app,
        Method::POST,
        "/users/me/password",
        Some(&access),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let res = reset(&app, &token, "the attackers passphrase").await;
    assert_eq!(link_refusal(res).await, "invalid_link");
    assert_eq!(
        app.login("kate", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn a_disabled_account_gets_no_reset_mail(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let (leo, _) = sign_up(&app, "leo").await;
    sign_up(&app, "mia").await;
    let earlier = reset_link(&app, "leo").await;
    let admin = admin_token(&app).await;
    let path = format!("/admin/users/{}", leo["id"].as_str().unwrap());
    let res = send(
        &app,
        Method::PATCH,
        &path,
        Some(&admin),
        json!({"is_active": false}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    let res = forgot(&app, "leo@example.com").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // An active account asked for afterwards gets its mail ...
    reset_link(&app, "mia").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... and the disabled one has had only its signup and earlier mail.
    assert_eq!(app.mail.count_to("leo@example.com"), 2);
    // The link mailed before the account was disabled opens nothing, not
    // even once the account is enabled again.
    let res = reset(&app, &earlier, NEW_PASSWORD).await;
    assert_eq!(link_refusal(res).await, "invalid_link");
    let res = send(
        &app,
        Method::PATCH,
        &path,
        Some(&admin),
        json!({"is_active": true}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = reset(&app, &earlier, NEW_PASSWORD).await;
    assert_eq!(link_refusal(res).await, "invalid_link");
}

async fn signing_up_again_and_again_cannot_flood_an_inbox(backend: Backend) {
    let app = TestApp::builder()
        .arg("--mail-per-recipient-per-hour", "2")
        .spawn(backend)
        .await;
    app.stop_clock();
    for _ in 0..4 {
        let user = app.create_user("olga").await;
        assert_eq!(user["email"], "olga@example.com");
        let access = app.tokens("olga").await.access;
        let res = send(
            &app,
            Method::DELETE,
            "/users/me",
            Some(&access),
            json!({"current_password": PASSWORD}),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    app.mail.wait_for("olga@example.com", WAIT).await;
    app.mail.wait_for("olga@example.com", WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.mail.count_to("olga@example.com"), 2, "the quota holds");
}

// Throttling of the mail the forgot endpoint causes.

async fn forgot_is_throttled_per_recipient_whether_or_not_the_account_exists(backend: Backend) {
    let app = TestApp::builder()
        .arg("--mail-per-recipient-per-hour", "3")
        .spawn(backend)
        .await;
    app.stop_clock();
    sign_up(&app, "nina").await;
    // The verification mail of the signup counts too.
    for (address, allowed) in [("nina@example.com", 2), ("ghost@example.com", 3)] {
        for _ in 0..allowed {
            assert_eq!(forgot(&app, address).await.status(), StatusCode::ACCEPTED);
        }
        // The limit is on the address, in whatever case it is typed.
        let retry = throttled(forgot(&app, &address.to_uppercase()).await).await;
        assert!((1..=3600).contains(&retry), "{address}: {retry}");
    }
    // Other addresses are not affected.
    assert_eq!(
        forgot(&app, "someone.else@example.com").await.status(),
        StatusCode::ACCEPTED
    );
    app.mail.wait_for("nina@example.com", WAIT).await;
    app.mail.wait_for("nina@example.com", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.mail.count_to("nina@example.com"),
        3,
        "the signup mail and two reset mails"
    );

    app.advance(Duration::from_secs(3600));
    assert_eq!(
        forgot(&app, "nina@example.com").await.status(),
        StatusCode::ACCEPTED
    );
}

async fn forgot_is_throttled_per_client_address(backend: Backend) {
    let app = TestApp::builder()
        .arg("--mail-per-ip-per-hour", "3")
        .spawn(backend)
        .await;
    app.stop_clock();
    for i in 0..3 {
        let res = forgot(&app, &format!("person{i}@example.com")).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let retry = throttled(forgot(&app, "person3@example.com").await).await;
    assert!((1..=3600).contains(&retry), "{retry}");
    app.advance(Duration::from_secs(3600));
    assert_eq!(
        forgot(&app, "person3@example.com").await.status(),
        StatusCode::ACCEPTED
    );
}

// Required verification.

async fn spawn_requiring_verification(backend: Backend) -> TestApp {
    TestApp::builder()
        .arg("--require-verified-email", "true")
        .spawn(backend)
        .await
}

async fn with_verification_required_a_signup_needs_an_email(backend: Backend) {
    let app = spawn_requiring_verification(backend).await;
    let res = app
        .signup(json!({"username": "olga", "password": PASSWORD}))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&body), ["email"]);
    app.create_user("olga").await;
}

async fn with_verification_required_only_the_right_password_learns_the_email_is_unverified(
    backend: Backend,
) {
    let app = spawn_requiring_verification(backend).await;
    let (_, token) = sign_up(&app, "paul").await;

    let res = app.login("paul", PASSWORD).await;
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "email_not_verified");
    let res = app.login("paul@example.com", "not the password").await;
    let body = problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "invalid_credentials");
    let unknown = problem(
        app.login("nobody", "not the password").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body, unknown, "a wrong password looks like no account");

    assert_eq!(verify(&app, &token).await.status(), StatusCode::OK);
    let tokens = app.tokens("paul").await;
    assert_eq!(me(&app, &tokens.access).await["email_verified"], true);
}

async fn with_verification_required_the_token_endpoint_refuses_an_unverified_user(
    backend: Backend,
) {
    let app = spawn_requiring_verification(backend).await;
    let (_, token) = sign_up(&app, "quinn").await;
    let grant = |password: &'static str| {
        [
            ("grant_type", "password"),
            ("username", "quinn"),
            ("password", password),
        ]
    };

    let res = app.post_form("/auth/token", &grant(PASSWORD)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "email_not_verified");
    assert!(body.get("access_token").is_none());

    let res = app
        .post_form("/auth/token", &grant("not the password"))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");

    assert_eq!(verify(&app, &token).await.status(), StatusCode::OK);
    let res = app.post_form("/auth/token", &grant(PASSWORD)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.json::<Value>().await.unwrap()["access_token"].is_string());
}

// Changes to one's own username and email address.

async fn a_new_username_applies_at_once_and_frees_the_old_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user, _) = sign_up(&app, "rita").await;
    let access = app.tokens("rita").await.access;

    let res = patch_me(
        &app,
        &access,
        json!({"username": "rita2", "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["id"], user["id"]);
    assert_eq!(changed["username"], "rita2");
    assert_eq!(changed["email"], "rita@example.com");

    let tokens = app.tokens("rita2").await;
    assert_eq!(me(&app, &tokens.access).await["username"], "rita2");
    assert_eq!(
        app.login("rita", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The old name is free for someone else.
    let res = app
        .signup(
            json!({"username": "rita", "email": "another.rita@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn a_username_change_is_refused_when_taken_unconfirmed_or_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("sam").await;
    app.create_user("tina").await;
    let access = app.tokens("sam").await.access;

    for taken in ["tina", "TINA"] {
        let res = patch_me(
            &app,
            &access,
            json!({"username": taken, "current_password": PASSWORD}),
        )
        .await;
        assert_eq!(problem(res, StatusCode::CONFLICT).await["code"], "conflict");
    }
    let res = patch_me(
        &app,
        &access,
        json!({"username": "sam2", "current_password": "not my password"}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "wrong_password"
    );
    for invalid in ["no spaces allowed", "s", "root"] {
        let res = patch_me(
            &app,
            &access,
            json!({"username": invalid, "current_password": PASSWORD}),
        )
        .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&body), ["username"], "{invalid}");
    }
    // Nothing changed.
    assert_eq!(app.login("sam", PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(
        app.login("sam2", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.login("tina", PASSWORD).await.status(), StatusCode::OK);
}

async fn a_username_can_change_its_case_alone(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("ruth").await;
    let access = app.tokens("ruth").await.access;
    let res = patch_me(
        &app,
        &access,
        json!({"username": "Ruth", "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["username"], "Ruth");
    let fresh = app.tokens("ruth").await.access;
    assert_eq!(me(&app, &fresh).await["username"], "Ruth");
}

async fn a_new_email_changes_only_through_the_link_mailed_to_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, old_link) = sign_up(&app, "uma").await;
    assert_eq!(verify(&app, &old_link).await.status(), StatusCode::OK);
    let access = app.tokens("uma").await.access;

    let res = patch_me(
        &app,
        &access,
        json!({"email": "uma.new@example.org", "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["email"], "uma@example.com",
        "unchanged until confirmed"
    );
    assert_eq!(body["email_verified"], true);

    let token = next_link(
        &app,
        "uma.new@example.org",
        CHANGE_SUBJECT,
        "/auth/email/confirm",
    )
    .await;
    let notice = app.mail.wait_for("uma@example.com", WAIT).await;
    assert_eq!(notice.subject(), NOTICE_SUBJECT);
    assert_eq!(notice.link_token(), None, "the notice can change nothing");
    assert!(notice.body().contains("uma.new@example.org"));
    assert!(!notice.body().contains(&token));
    // Until the link is used, the old address is the one that logs in.
    assert_eq!(
        app.login("uma.new@example.org", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let res = confirm_email(&app, &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["email"], "uma.new@example.org");
    assert_eq!(changed["email_verified"], true);

    assert_eq!(
        app.login("uma.new@example.org", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login("uma@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        link_refusal(confirm_email(&app, &token).await).await,
        "invalid_link"
    );

    // An unverified address gets no notice: it protects nobody, and
    // notices to it would be a way to mail anyone.
    sign_up(&app, "ulla").await;
    let access = app.tokens("ulla").await.access;
    let res = patch_me(
        &app,
        &access,
        json!({"email": "ulla.new@example.org", "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    app.mail.wait_for("ulla.new@example.org", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.mail.count_to("ulla@example.com"),
        1,
        "only the signup's verification mail"
    );
}

async fn an_email_change_link_works_for_an_hour_and_no_longer(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("vera").await;
    app.create_user("walt").await;
    let mut links = Vec::new();
    for name in ["vera", "walt"] {
        let access = app.tokens(name).await.access;
        let new = format!("{name}.new@example.org");
        let res = patch_me(
            &app,
            &access,
            json!({"email": new, "current_password": PASSWORD}),
        )
        .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        links.push(next_link(&app, &new, CHANGE_SUBJECT, "/auth/email/confirm").await);
    }
    app.advance(Duration::from_secs(59 * 60));
    assert_eq!(
        confirm_email(&app, &links[0]).await.status(),
        StatusCode::OK
    );
    app.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        link_refusal(confirm_email(&app, &links[1]).await).await,
        "invalid_link"
    );
    assert_eq!(
        app.login("walt@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login("walt.new@example.org", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn an_address_taken_before_its_link_is_used_is_409_and_nothing_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("xena").await;
    let access = app.tokens("xena").await.access;
    let res = patch_me(
        &app,
        &access,
        json!({"email": "wanted@example.org", "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let token = next_link(
        &app,
        "wanted@example.org",
        CHANGE_SUBJECT,
        "/auth/email/confirm",
    )
    .await;

    // Someone else signs up with the address first.
    let res = app
        .signup(json!({"username": "yves", "email": "Wanted@Example.org", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    let res = confirm_email(&app, &token).await;
    assert_eq!(problem(res, StatusCode::CONFLICT).await["code"], "conflict");
    let tokens = app.tokens("xena").await;
    let now = me(&app, &tokens.access).await;
    assert_eq!(now["email"], "xena@example.com");
    assert_eq!(
        app.login("wanted@example.org", PASSWORD).await.status(),
        StatusCode::OK,
        "the address stays with the account that took it"
    );
    let yves = app.tokens("yves").await;
    assert_eq!(me(&app, &yves.access).await["username"], "yves");
}

// Accounts an admin creates without a password.

async fn an_account_created_without_a_password_is_entered_through_its_mailed_link(
    backend: Backend,
) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let res = send(
        &app,
        Method::POST,
        "/admin/users",
        Some(&admin),
        json!({"username": "zoe", "email": "zoe@example.com"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["username"], "zoe");
    assert_eq!(created["email"], "zoe@example.com");

    let token = next_link(
        &app,
        "zoe@example.com",
        INVITATION_SUBJECT,
        "/auth/password/reset",
    )
    .await;
    // Four guesses: fewer than the failures allowed before a back-off.
    let guesses = [
        ("zoe", PASSWORD),
        ("zoe@example.com", ""),
        ("zoe", NEW_PASSWORD),
        ("zoe@example.com", token.as_str()),
    ];
    for (login, guess) in guesses {
        let res = app.login(login, guess).await;
        assert_eq!(
            problem(res, StatusCode::UNAUTHORIZED).await["code"],
            "invalid_credentials",
            "{login} / {guess:?}"
        );
    }

    assert_eq!(
        reset(&app, &token, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    let res = app.login("zoe", NEW_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens = Tokens::from(res.json::<Value>().await.unwrap());
    assert_eq!(me(&app, &tokens.access).await["id"], created["id"]);
    let again = reset(&app, &token, "yet another passphrase").await;
    assert_eq!(link_refusal(again).await, "invalid_link");
}

async fn an_admin_cannot_create_an_account_without_a_password_and_an_email(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    for body in [
        json!({"username": "nopass"}),
        json!({"username": "nopass", "email": "not an address"}),
    ] {
        let res = send(
            &app,
            Method::POST,
            "/admin/users",
            Some(&admin),
            body.clone(),
        )
        .await;
        let problem = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(
            error_fields(&problem).contains(&"email".to_owned()),
            "{body}: {problem}"
        );
    }
    let res = app.get("/admin/users?q=nopass", Some(&admin)).await;
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["users"], json!([]), "no account was created");
}

// Tokens that are not links.

async fn garbage_tokens_are_invalid_links_never_server_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let random = |n: usize| -> String {
        let bytes: Vec<u8> = (0..n.div_ceil(16))
            .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
            .take(n)
            .collect();
        URL_SAFE_NO_PAD.encode(bytes)
    };
    let right_length = random(32);
    assert_eq!(right_length.len(), 43);
    let garbage = [
        String::new(),
        "A".repeat(1024),
        random(768),
        "this is not base64!".to_owned(),
        right_length.clone(),
        // The right length, in the wrong alphabet.
        format!("{}+/", &right_length[..41]),
        format!("{}=", &right_length[..42]),
        "\0".repeat(43),
        "é".repeat(21),
    ];
    let endpoints = [
        "/auth/verify-email",
        "/auth/email/confirm",
        "/auth/password/reset",
    ];
    for path in endpoints {
        for token in &garbage {
            let body = json!({"token": token, "new_password": NEW_PASSWORD});
            let res = app.post_json(path, &body).await;
            let shown = token.chars().take(20).collect::<String>();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path} {shown:?}");
            assert_eq!(link_refusal(res).await, "invalid_link", "{path} {shown:?}");
        }
        // Clear of the limit on links a client may present per minute.
        app.advance(Duration::from_secs(61));
    }
}

async fn a_link_works_only_at_the_endpoint_of_its_purpose(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, verification) = sign_up(&app, "amos").await;
    let reset_token = reset_link(&app, "amos").await;

    let res = reset(&app, &verification, NEW_PASSWORD).await;
    assert_eq!(link_refusal(res).await, "invalid_link");
    let res = confirm_email(&app, &verification).await;
    assert_eq!(link_refusal(res).await, "invalid_link");
    let res = verify(&app, &reset_token).await;
    assert_eq!(link_refusal(res).await, "invalid_link");
    let res = confirm_email(&app, &reset_token).await;
    assert_eq!(link_refusal(res).await, "invalid_link");
    assert_eq!(app.login("amos", PASSWORD).await.status(), StatusCode::OK);

    // Each still works where it belongs.
    assert_eq!(verify(&app, &verification).await.status(), StatusCode::OK);
    assert_eq!(
        reset(&app, &reset_token, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn a_mailed_link_opens_a_page_whose_button_spends_it(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let (_, token) = sign_up(&app, "lena").await;
    let mut browser = crate::authorize::Browser::new(&app);
    // Opening the link (as a mail scanner would) spends nothing.
    for _ in 0..2 {
        let page = browser
            .get(&format!("/auth/verify-email?token={token}"))
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("Verify my address"), "{}", page.body);
    }
    let page = browser
        .get(&format!("/auth/verify-email?token={token}"))
        .await;
    let done = browser
        .post(
            "/oauth/verify-email",
            &[
                ("token", &page.field("token")),
                ("csrf", &page.field("csrf")),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("Your email address is verified"));
    let access = app.tokens("lena").await.access;
    assert_eq!(me(&app, &access).await["email_verified"], true);
    // Spent: the page's button now says so.
    let again = browser
        .post(
            "/oauth/verify-email",
            &[
                ("token", &page.field("token")),
                ("csrf", &page.field("csrf")),
            ],
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert!(again.body.contains("invalid, expired or used"));
    // Without a token, or from another site's form: refused.
    assert_eq!(
        browser.get("/auth/verify-email").await.status,
        StatusCode::BAD_REQUEST
    );
    let forged = crate::authorize::Browser::new(&app)
        .post(
            "/oauth/verify-email",
            &[("token", &token), ("csrf", &"A".repeat(43))],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
}

async fn the_reset_page_sets_a_new_password_once(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    sign_up(&app, "omar").await;
    let token = reset_link(&app, "omar").await;
    let mut browser = crate::authorize::Browser::new(&app);
    let page = browser
        .get(&format!("/auth/password/reset?token={token}"))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("New password") && page.body.contains("Set password"));
    let post = |password: &'static str, repeat: &'static str| {
        let fields = vec![
            ("token".to_owned(), page.field("token")),
            ("csrf".to_owned(), page.field("csrf")),
            ("new_password".to_owned(), password.to_owned()),
            ("repeat".to_owned(), repeat.to_owned()),
        ];
        fields
    };
    let send = |fields: Vec<(String, String)>| {
        let http = browser.http.clone();
        let cookie = format!("authgate_form={}", browser.cookies["authgate_form"]);
        let url = app.url("/oauth/password-reset");
        async move {
            let res = http
                .post(url)
                .header("cookie", cookie)
                .form(&fields)
                .send()
                .await
                .unwrap();
            (res.status(), res.text().await.unwrap())
        }
    };
    let (status, body) = send(post("a brand new passphrase", "a different one")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("The two passwords differ."));
    let (status, body) = send(post("short", "short")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = send(post("a brand new passphrase", "a brand new passphrase")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Your new password is set"));
    assert_eq!(
        app.login("omar", "a brand new passphrase").await.status(),
        StatusCode::OK
    );
    let (status, _) = send(post("another new passphrase", "another new passphrase")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the link is spent");
}
