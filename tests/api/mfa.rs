//! Second factors from outside: TOTP enrolment, the login's second step,
//! recovery codes, step-up, the OAuth2 grant and an admin's reset.

use std::time::Duration;

use authgate::{
    clock::Clock,
    crypto::totp::{self, TotpSecret},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, TestApp, Tokens, claims_of, problem},
    on_both_databases,
};

on_both_databases!(
    a_confirmed_app_turns_a_password_login_into_a_second_step_of_aal2,
    a_wrong_first_code_leaves_the_enrolment_unconfirmed,
    a_code_works_once_and_a_recovery_code_works_once,
    an_mfa_token_allows_five_codes_and_the_account_backs_off,
    the_oauth2_password_grant_answers_mfa_required_with_the_token,
    a_one_factor_session_steps_up_before_sensitive_changes,
    an_admin_removes_every_factor_of_a_user_and_it_is_audited,
    secrets_are_sealed_with_the_key_encryption_key,
    a_password_session_cannot_add_a_factor_beside_one_or_delete_the_account,
    a_new_enrolment_replaces_the_one_not_confirmed,
    wrong_codes_from_one_address_do_not_lock_out_another,
    the_second_step_can_put_the_refresh_token_in_a_cookie,
    the_owner_of_a_verified_address_is_told_of_every_change_to_the_factors,
);

async fn spawn(backend: Backend) -> TestApp {
    TestApp::builder()
        .arg("--admin-email", ADMIN_EMAIL)
        .arg("--admin-password", ADMIN_PASSWORD)
        .spawn(backend)
        .await
}

/// An enrolled, confirmed authenticator app: its secret and the recovery
/// codes its confirmation gave.
pub struct App {
    id: String,
    secret: TotpSecret,
    pub recovery_codes: Vec<String>,
}

impl App {
    /// The app's code at the server's time.
    /// The secret as the app shows it.
    pub fn secret_base32(&self) -> String {
        self.secret.to_base32()
    }

    pub fn code(&self, app: &TestApp) -> String {
        self.secret
            .code_at(totp::step_of(app.clock.now().unix_timestamp()))
    }
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn enroll(app: &TestApp, access: &str) -> (String, TotpSecret) {
    let res = app
        .client
        .post(app.url("/users/me/mfa/totp"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let uri = body["otpauth_uri"].as_str().unwrap();
    let secret = body["secret"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/authgate:"), "{uri}");
    assert!(
        uri.contains(&format!("secret={secret}&issuer=authgate")),
        "{uri}"
    );
    (
        body["id"].as_str().unwrap().to_owned(),
        TotpSecret::from_base32(secret).unwrap(),
    )
}

/// Signs `name` up and enrolls and confirms an app from a password session.
pub async fn user_with_app(app: &TestApp, name: &str) -> (Tokens, App) {
    app.create_user(name).await;
    let tokens = app.tokens(name).await;
    let (id, secret) = enroll(app, &tokens.access).await;
    let code = secret.code_at(totp::step_of(app.clock.now().unix_timestamp()));
    let path = format!("/users/me/mfa/totp/{id}/confirm");
    let res = post(app, &path, &tokens.access, json!({"code": code})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let recovery_codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    // The confirming code's time step is spent: move to the next one.
    app.advance(Duration::from_secs(30));
    (
        tokens,
        App {
            id,
            secret,
            recovery_codes,
        },
    )
}

/// A login answered 403 `mfa_required`: its `mfa_token`.
async fn second_step(app: &TestApp, name: &str) -> String {
    let res = app.login(name, PASSWORD).await;
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "mfa_required");
    assert_eq!(body["factor_types"], json!(["totp"]));
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/auth/mfa/verify", &body).await
}

async fn a_confirmed_app_turns_a_password_login_into_a_second_step_of_aal2(backend: Backend) {
    let app = spawn(backend).await;
    let (before, totp_app) = user_with_app(&app, "mia").await;
    // The session that enrolled was a password session.
    assert_eq!(claims_of(&before.access)["aal"], "aal1");
    assert_eq!(claims_of(&before.access)["amr"], json!(["pwd"]));
    let listed: Value = app
        .get("/users/me/mfa", Some(&before.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["recovery_codes_left"], 10);
    assert_eq!(listed["factors"][0]["id"], totp_app.id.as_str());
    assert_eq!(listed["factors"][0]["type"], "totp");
    assert!(listed.to_string().find("secret").is_none(), "{listed}");

    let mfa_token = second_step(&app, "mia").await;
    let res = verify(
        &app,
        json!({"mfa_token": mfa_token, "code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let tokens = Tokens::from(res.json::<Value>().await.unwrap());
    let claims = claims_of(&tokens.access);
    assert_eq!(claims["aal"], "aal2");
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]));
    assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);

    // Refreshing keeps the session's level.
    app.advance(Duration::from_secs(60));
    let res = app.refresh(&tokens.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let refreshed = Tokens::from(res.json::<Value>().await.unwrap());
    assert_eq!(claims_of(&refreshed.access)["aal"], "aal2");
    assert_eq!(
        claims_of(&refreshed.access)["amr"],
        json!(["pwd", "otp", "mfa"])
    );
    assert_eq!(
        claims_of(&refreshed.access)["auth_time"],
        claims["auth_time"]
    );
    // The token was spent by the right code.
    let res = verify(
        &app,
        json!({"mfa_token": mfa_token, "code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_mfa_token"
    );
}

async fn a_wrong_first_code_leaves_the_enrolment_unconfirmed(backend: Backend) {
    let app = spawn(backend).await;
    app.create_user("noor").await;
    let tokens = app.tokens("noor").await;
    let (id, secret) = enroll(&app, &tokens.access).await;
    let now = totp::step_of(app.clock.now().unix_timestamp());
    let wrong = secret.code_at(now + 5);
    let path = format!("/users/me/mfa/totp/{id}/confirm");
    let res = post(&app, &path, &tokens.access, json!({"code": wrong})).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "code");
    // Unconfirmed: not listed, and the password alone still logs in.
    let listed: Value = app
        .get("/users/me/mfa", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["factors"], json!([]));
    assert_eq!(app.login("noor", PASSWORD).await.status(), StatusCode::OK);
    // A name may be given, and is checked.
    let res = post(
        &app,
        "/users/me/mfa/totp",
        &tokens.access,
        json!({"name": "Phone"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = post(&app, "/users/me/mfa/totp", &tokens.access, json!(null)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = post(
        &app,
        "/users/me/mfa/totp",
        &tokens.access,
        json!({"name": "x\u{7}y"}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::UNPROCESSABLE_ENTITY).await["errors"][0]["field"],
        "name"
    );
    // Another user cannot confirm it, even with the right code.
    app.create_user("omar").await;
    let other = app.tokens("omar").await;
    let res = post(
        &app,
        &path,
        &other.access,
        json!({"code": secret.code_at(now)}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::NOT_FOUND).await["code"],
        "not_found"
    );
    // An enrolment waits 15 minutes for its first code, no longer.
    app.advance(Duration::from_secs(16 * 60));
    let tokens = app.tokens("noor").await;
    let late = secret.code_at(totp::step_of(app.clock.now().unix_timestamp()));
    let res = post(&app, &path, &tokens.access, json!({"code": late})).await;
    assert_eq!(
        problem(res, StatusCode::NOT_FOUND).await["code"],
        "not_found"
    );
}

async fn a_code_works_once_and_a_recovery_code_works_once(backend: Backend) {
    let app = spawn(backend).await;
    let (_, totp_app) = user_with_app(&app, "pia").await;
    let code = totp_app.code(&app);
    let first = second_step(&app, "pia").await;
    let res = verify(&app, json!({"mfa_token": first, "code": code})).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The same code again, within its time step: refused (no replay).
    let again = second_step(&app, "pia").await;
    let res = verify(&app, json!({"mfa_token": again, "code": code})).await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_code"
    );

    // A recovery code, typed loosely, works in place of a code: once.
    let recovery = totp_app.recovery_codes[3].to_uppercase();
    let res = verify(&app, json!({"mfa_token": again, "recovery_code": recovery})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens = Tokens::from(res.json::<Value>().await.unwrap());
    assert_eq!(claims_of(&tokens.access)["aal"], "aal2");
    assert_eq!(claims_of(&tokens.access)["amr"], json!(["pwd", "mfa"]));
    let third = second_step(&app, "pia").await;
    let res = verify(&app, json!({"mfa_token": third, "recovery_code": recovery})).await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_code"
    );
    let listed: Value = app
        .get("/users/me/mfa", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["recovery_codes_left"], 9);
    // Neither an mfa_token nor a bearer token: no credential at all.
    let res = verify(&app, json!({"code": "123456"})).await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "missing_mfa_token"
    );
    // Neither or both of the two is a malformed request.
    let res = verify(&app, json!({"mfa_token": third})).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = verify(
        &app,
        json!({"mfa_token": third, "code": "123456", "recovery_code": "x"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

async fn an_mfa_token_allows_five_codes_and_the_account_backs_off(backend: Backend) {
    // The account's back-off held off, to see the token's own limit.
    let app = TestApp::builder()
        .arg("--login-free-failures", "100")
        .spawn(backend)
        .await;
    let (_, totp_app) = user_with_app(&app, "quinn").await;
    app.stop_clock();
    let mfa_token = second_step(&app, "quinn").await;
    let step = totp::step_of(app.clock.now().unix_timestamp());
    let wrong = totp_app.secret.code_at(step + 3);
    for attempt in 1..=5 {
        let res = verify(&app, json!({"mfa_token": mfa_token, "code": wrong})).await;
        let body = problem(res, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["code"], "invalid_code", "attempt {attempt}");
    }
    // The sixth, even right, finds the token spent.
    let res = verify(
        &app,
        json!({"mfa_token": mfa_token, "code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_mfa_token"
    );
    // An mfa_token is good for five minutes.
    let late = second_step(&app, "quinn").await;
    app.advance(Duration::from_secs(5 * 60 + 30));
    let res = verify(
        &app,
        json!({"mfa_token": late, "code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_mfa_token"
    );

    // With the usual back-off, wrong codes over several tokens back off the
    // account, as wrong passwords do.
    let app = spawn(backend).await;
    let (_, totp_app) = user_with_app(&app, "rhea").await;
    app.stop_clock();
    let wrong = totp_app
        .secret
        .code_at(totp::step_of(app.clock.now().unix_timestamp()) + 3);
    let mut throttled = None;
    for _ in 0..3 {
        let token = second_step(&app, "rhea").await;
        let res = verify(&app, json!({"mfa_token": token, "code": wrong})).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key("retry-after"));
            throttled = Some(token);
            break;
        }
        for _ in 0..4 {
            verify(&app, json!({"mfa_token": token, "code": wrong})).await;
        }
    }
    let fresh = throttled.expect("the account backs off");
    // Throttled tries spend none of the token's five attempts…
    for _ in 0..5 {
        let res = verify(&app, json!({"mfa_token": fresh, "code": wrong})).await;
        assert_eq!(
            problem(res, StatusCode::TOO_MANY_REQUESTS).await["code"],
            "rate_limited"
        );
    }
    // …so once the wait is over, the right code logs in with that token.
    app.advance(Duration::from_secs(120));
    let res = verify(
        &app,
        json!({"mfa_token": fresh, "code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn the_oauth2_password_grant_answers_mfa_required_with_the_token(backend: Backend) {
    let app = spawn(backend).await;
    let (_, totp_app) = user_with_app(&app, "rosa").await;
    let res = app
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "password"),
                ("username", "rosa"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "mfa_required");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("/auth/mfa/verify")
    );
    assert!(body.get("access_token").is_none());
    let mfa_token = body["mfa_token"].as_str().unwrap();
    let res = verify(
        &app,
        json!({"mfa_token": mfa_token, "code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens = Tokens::from(res.json::<Value>().await.unwrap());
    assert_eq!(claims_of(&tokens.access)["aal"], "aal2");
}

async fn a_one_factor_session_steps_up_before_sensitive_changes(backend: Backend) {
    let app = spawn(backend).await;
    let (password_session, totp_app) = user_with_app(&app, "sami").await;
    let access = &password_session.access;
    // From a password session: removing the factor, new recovery codes, a
    // new password or email are refused.
    let res = app
        .client
        .delete(app.url(&format!("/users/me/mfa/{}", totp_app.id)))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer error="insufficient_user_authentication", acr_values="aal2""#
    );
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "insufficient_user_authentication");
    let res = post(&app, "/users/me/mfa/recovery-codes", access, json!({})).await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "insufficient_user_authentication"
    );
    let res = post(
        &app,
        "/users/me/password",
        access,
        json!({"current_password": PASSWORD, "new_password": "another long passphrase"}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "insufficient_user_authentication"
    );
    let res = app
        .client
        .patch(app.url("/users/me"))
        .bearer_auth(access)
        .json(&json!({"current_password": PASSWORD, "email": "sami2@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "insufficient_user_authentication"
    );

    // Step-up: the bearer token in place of an mfa_token.
    let res = post(
        &app,
        "/auth/mfa/verify",
        access,
        json!({"code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    let raised = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&raised)["aal"], "aal2");
    assert_eq!(claims_of(&raised)["sid"], claims_of(access)["sid"]);
    // The session's refresh token now gives aal2 tokens too.
    let res = app.refresh(&password_session.refresh).await;
    let refreshed = Tokens::from(res.json::<Value>().await.unwrap());
    assert_eq!(claims_of(&refreshed.access)["aal"], "aal2");

    // New recovery codes replace the old ones.
    let res = post(&app, "/users/me/mfa/recovery-codes", &raised, json!({})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let codes: Value = res.json().await.unwrap();
    assert_eq!(codes["recovery_codes"].as_array().unwrap().len(), 10);
    let mfa_token = second_step(&app, "sami").await;
    let old = &totp_app.recovery_codes[0];
    let res = verify(&app, json!({"mfa_token": mfa_token, "recovery_code": old})).await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_code"
    );

    // Removing the factor: then the password alone logs in again.
    let res = app
        .client
        .delete(app.url(&format!("/users/me/mfa/{}", totp_app.id)))
        .bearer_auth(&raised)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let listed: Value = app
        .get("/users/me/mfa", Some(&raised))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!({"factors": [], "recovery_codes_left": 0}));
    let res = app.login("sami", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Step-up of a user without a factor proves nothing.
    let tokens = Tokens::from(res.json::<Value>().await.unwrap());
    let res = post(
        &app,
        "/auth/mfa/verify",
        &tokens.access,
        json!({"code": "123456"}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_code"
    );
}

async fn an_admin_removes_every_factor_of_a_user_and_it_is_audited(backend: Backend) {
    let app = spawn(backend).await;
    let (tokens, _) = user_with_app(&app, "tara").await;
    let user_id = claims_of(&tokens.access)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/admin/users/{user_id}/mfa");
    // Not for a user.
    let res = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let admin = app.admin_token().await;
    let res = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The sessions end with the factors (a lost phone may hold one).
    app.assert_refused_within(&tokens.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&tokens.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.login("tara", PASSWORD).await.status(), StatusCode::OK);
    let events: Value = app
        .get(
            &format!("/admin/audit?type=mfa_reset&user_id={user_id}"),
            Some(&admin),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    let admin_id = claims_of(&admin)["sub"].clone();
    assert_eq!(events["events"][0]["actor_id"], admin_id);
    let res = app
        .client
        .delete(app.url(&format!("/admin/users/{}/mfa", uuid::Uuid::now_v7())))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

async fn secrets_are_sealed_with_the_key_encryption_key(backend: Backend) {
    let app = TestApp::builder()
        .arg(
            "--key-encryption-key",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .spawn(backend)
        .await;
    let (tokens, totp_app) = user_with_app(&app, "uma").await;
    let user_id = claims_of(&tokens.access)["sub"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let stored = app.store().await.factors(user_id).await.unwrap();
    let secret = stored[0].secret.as_deref().unwrap();
    assert_eq!(secret[0], 1, "sealed");
    let raw = totp_app.secret.as_bytes();
    assert!(
        !secret.windows(raw.len()).any(|w| w == raw),
        "the secret is not in the clear"
    );
    // And the sealed secret still checks codes.
    let mfa_token = second_step(&app, "uma").await;
    let res = verify(
        &app,
        json!({"mfa_token": mfa_token, "code": totp_app.code(&app)}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn a_password_session_cannot_add_a_factor_beside_one_or_delete_the_account(backend: Backend) {
    let app = spawn(backend).await;
    // A session opened with the password alone (say, before the factor).
    let (password_session, totp_app) = user_with_app(&app, "vera").await;
    let access = &password_session.access;
    let res = post(&app, "/users/me/mfa/totp", access, json!({})).await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "insufficient_user_authentication"
    );
    let res = app
        .client
        .delete(app.url("/users/me"))
        .bearer_auth(access)
        .json(&json!({"current_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "insufficient_user_authentication"
    );
    // The login's own audit event says how the second step was passed.
    let mfa_token = second_step(&app, "vera").await;
    let res = verify(
        &app,
        json!({"mfa_token": mfa_token, "code": totp_app.code(&app)}),
    )
    .await;
    let two_factors = Tokens::from(res.json::<Value>().await.unwrap());
    let user_id = claims_of(&two_factors.access)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = app.admin_token().await;
    let events: Value = app
        .get(
            &format!("/admin/audit?type=login&user_id={user_id}"),
            Some(&admin),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        events["events"][0]["detail"], "with a TOTP code",
        "{events}"
    );
    // From a session of two factors, a second app can be added.
    let res = post(
        &app,
        "/users/me/mfa/totp",
        &two_factors.access,
        json!({"name": "Tablet"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn a_new_enrolment_replaces_the_one_not_confirmed(backend: Backend) {
    let app = spawn(backend).await;
    app.create_user("wes").await;
    let tokens = app.tokens("wes").await;
    let (first, first_secret) = enroll(&app, &tokens.access).await;
    let (second, second_secret) = enroll(&app, &tokens.access).await;
    let step = totp::step_of(app.clock.now().unix_timestamp());
    let path = format!("/users/me/mfa/totp/{first}/confirm");
    let res = post(
        &app,
        &path,
        &tokens.access,
        json!({"code": first_secret.code_at(step)}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let path = format!("/users/me/mfa/totp/{second}/confirm");
    let res = post(
        &app,
        &path,
        &tokens.access,
        json!({"code": second_secret.code_at(step)}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let stored = app
        .store()
        .await
        .factors(
            claims_of(&tokens.access)["sub"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "one factor, no pending rows left");
}

async fn wrong_codes_from_one_address_do_not_lock_out_another(backend: Backend) {
    let app = TestApp::builder()
        .arg("--trusted-proxies", "127.0.0.1/32")
        .spawn(backend)
        .await;
    let (_, totp_app) = user_with_app(&app, "xia").await;
    app.stop_clock();
    let from = |ip: &'static str, body: Value| {
        app.client
            .post(app.url("/auth/mfa/verify"))
            .header("x-forwarded-for", ip)
            .json(&body)
            .send()
    };
    let wrong = totp_app
        .secret
        .code_at(totp::step_of(app.clock.now().unix_timestamp()) + 4);
    // Someone with the password guesses codes from one address…
    let mut throttled = false;
    for _ in 0..3 {
        let mfa_token = second_step(&app, "xia").await;
        for _ in 0..5 {
            let res = from(
                "203.0.113.7",
                json!({"mfa_token": mfa_token, "code": wrong}),
            )
            .await
            .unwrap();
            throttled |= res.status() == StatusCode::TOO_MANY_REQUESTS;
        }
    }
    assert!(throttled, "the guessing address backs off");
    // …and the owner, elsewhere, still logs in with the right code.
    let mfa_token = second_step(&app, "xia").await;
    let res = from(
        "198.51.100.20",
        json!({"mfa_token": mfa_token, "code": totp_app.code(&app)}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn the_second_step_can_put_the_refresh_token_in_a_cookie(backend: Backend) {
    let app = spawn(backend).await;
    let (_, totp_app) = user_with_app(&app, "yan").await;
    let mfa_token = second_step(&app, "yan").await;
    let body = json!({"mfa_token": mfa_token, "code": totp_app.code(&app)});
    // Not from another site's page.
    let res = app
        .client
        .post(app.url("/auth/mfa/verify?transport=cookie"))
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "cross_site_request"
    );
    let res = app
        .client
        .post(app.url("/auth/mfa/verify?transport=cookie"))
        .header("origin", "http://127.0.0.1:8010")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookies: Vec<_> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("authgate_refresh=") && c.contains("HttpOnly")),
        "{cookies:?}"
    );
    let body: Value = res.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["csrf_token"].is_string());
}

async fn the_owner_of_a_verified_address_is_told_of_every_change_to_the_factors(backend: Backend) {
    let app = spawn(backend).await;
    let admin = app.admin_token().await;
    let user = app.create_user("zoe").await;
    let user_id = user["id"].as_str().unwrap();
    let to = "zoe@example.com";
    // Unverified: no notice (the signup's verification link is the one mail).
    app.create_user("kim").await;
    let kim = app.tokens("kim").await;
    let (id, secret) = enroll(&app, &kim.access).await;
    let code = secret.code_at(totp::step_of(app.clock.now().unix_timestamp()));
    let path = format!("/users/me/mfa/totp/{id}/confirm");
    assert_eq!(
        post(&app, &path, &kim.access, json!({"code": code}))
            .await
            .status(),
        StatusCode::OK
    );

    let res = app
        .client
        .patch(app.url(&format!("/admin/users/{user_id}")))
        .bearer_auth(&admin)
        .json(&json!({"email_verified": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let tokens = app.tokens("zoe").await;
    let (id, secret) = enroll(&app, &tokens.access).await;
    let code = secret.code_at(totp::step_of(app.clock.now().unix_timestamp()));
    let path = format!("/users/me/mfa/totp/{id}/confirm");
    let res = post(&app, &path, &tokens.access, json!({"code": code})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let codes: Value = res.json().await.unwrap();
    wait_for_subject(&app, to, "A second factor was added to your account").await;
    // A recovery code standing in for the app is told too.
    let mfa_token = second_step(&app, "zoe").await;
    let recovery = codes["recovery_codes"][0].as_str().unwrap();
    let res = verify(
        &app,
        json!({"mfa_token": mfa_token, "recovery_code": recovery}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    wait_for_subject(
        &app,
        to,
        "A recovery code was used to log in to your account",
    )
    .await;
    let res = app
        .client
        .delete(app.url(&format!("/admin/users/{user_id}/mfa")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    wait_for_subject(&app, to, "The second factors of your account were removed").await;
    // Kim, unverified, got the verification link and nothing else.
    assert_eq!(app.mail.count_to("kim@example.com"), 1);
}

/// Waits until a message to `to` with `subject` has arrived.
async fn wait_for_subject(app: &TestApp, to: &str, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subjects: Vec<String> = app
            .mail
            .messages()
            .iter()
            .filter(|m| m.header("To").unwrap_or_default().contains(to))
            .map(|m| m.subject())
            .collect();
        if subjects.iter().any(|s| s == subject) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{subject:?} not in {subjects:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
