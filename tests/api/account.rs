//! `/account`, the signed-in user's page: reached through the login page,
//! showing the profile and sessions, signing a session out, changing the
//! password and adding an authenticator app, every form guarded.

use std::time::Duration;

use authgate::crypto::totp::{self, TotpSecret};
use reqwest::StatusCode;

use crate::{
    authorize::{Answer, Browser},
    common::Backend,
    helpers::{PASSWORD, TestApp},
    on_both_databases,
};

on_both_databases!(
    the_account_page_signs_in_first_and_shows_the_profile_and_sessions,
    a_session_is_signed_out_from_the_account_page,
    the_password_is_changed_from_the_account_page,
    an_authenticator_app_is_added_with_its_qr_code_and_recovery_codes,
    account_forms_need_their_csrf_token_and_a_session,
);

/// A browser signed in to `/account` as `name`; the account page.
pub async fn signed_in<'a>(app: &'a TestApp, name: &str) -> (Browser<'a>, Answer) {
    let mut browser = Browser::new(app);
    let login = browser.get("/account").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains("your account"), "{}", login.body);
    assert_eq!(login.field("return_to"), "/account");
    let csrf = login.field("csrf");
    let back = browser
        .post(
            "/oauth/login",
            &[
                ("csrf", &csrf),
                ("return_to", "/account"),
                ("login", name),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    assert_eq!(back.location.as_deref(), Some("/account"));
    let page = browser.get("/account").await;
    assert_eq!(page.status, StatusCode::OK);
    (browser, page)
}

async fn the_account_page_signs_in_first_and_shows_the_profile_and_sessions(backend: Backend) {
    let app = TestApp::builder().spawn(backend).await;
    app.create_user("ada").await;
    let (_, page) = signed_in(&app, "ada").await;
    for text in [
        "Your account",
        "ada@example.com",
        "(not verified)",
        "this browser",
        "Change password",
        "Set up an authenticator app",
        "Only your password protects this account.",
    ] {
        assert!(page.body.contains(text), "{text} in {}", page.body);
    }
    let csp = page.csp.unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
}

async fn a_session_is_signed_out_from_the_account_page(backend: Backend) {
    let app = TestApp::builder().spawn(backend).await;
    app.create_user("ada").await;
    let phone = app.tokens("ada").await;
    let (mut browser, page) = signed_in(&app, "ada").await;
    let sessions: serde_json::Value = app
        .get("/users/me/sessions", Some(&phone.access))
        .await
        .json()
        .await
        .unwrap();
    let phone_session = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(page.body.contains(&phone_session));
    let done = browser
        .post(
            "/account/sessions/end",
            &[
                ("csrf", &page.field("csrf")),
                ("session_id", &phone_session),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let page = browser.get(done.location.as_deref().unwrap()).await;
    assert!(page.body.contains("The session is signed out."));
    assert!(!page.body.contains(&phone_session));
    app.assert_refused_within(&phone.access, Duration::from_secs(3))
        .await;
    assert_eq!(
        app.refresh(&phone.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn the_password_is_changed_from_the_account_page(backend: Backend) {
    let app = TestApp::builder().spawn(backend).await;
    app.create_user("ada").await;
    let other = app.tokens("ada").await;
    let (mut browser, page) = signed_in(&app, "ada").await;
    let csrf = page.field("csrf");
    let change = |current: &'static str, new: &'static str, repeat: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("current_password", current.to_owned()),
            ("new_password", new.to_owned()),
            ("repeat", repeat.to_owned()),
        ]
    };
    for (form, message) in [
        (
            change(
                "wrong password!",
                "a fresh passphrase",
                "a fresh passphrase",
            ),
            "The current password is wrong.",
        ),
        (
            change(PASSWORD, "a fresh passphrase", "another passphrase"),
            "The two new passwords differ.",
        ),
        (change(PASSWORD, "short", "short"), "The new password"),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused = browser.post("/account/password", &form).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{message}"
        );
        assert!(
            refused.body.contains(message),
            "{message} in {}",
            refused.body
        );
    }
    let form = change(PASSWORD, "a fresh passphrase", "a fresh passphrase");
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let done = browser.post("/account/password", &form).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let page = browser.get(done.location.as_deref().unwrap()).await;
    assert!(
        page.body.contains("Your password is changed."),
        "{}",
        page.body
    );
    assert_eq!(
        app.login("ada", "a fresh passphrase").await.status(),
        StatusCode::OK
    );
    // The other sessions end; this browser's goes on.
    app.assert_refused_within(&other.access, Duration::from_secs(3))
        .await;
    assert!(browser.get("/account").await.body.contains("Your account"));
}

async fn an_authenticator_app_is_added_with_its_qr_code_and_recovery_codes(backend: Backend) {
    let app = TestApp::builder().spawn(backend).await;
    app.create_user("ada").await;
    let (mut browser, page) = signed_in(&app, "ada").await;
    let csrf = page.field("csrf");
    let enrol = browser.post("/account/mfa/totp", &[("csrf", &csrf)]).await;
    assert_eq!(enrol.status, StatusCode::OK, "{}", enrol.body);
    assert!(enrol.body.contains("<svg"), "a QR code");
    assert!(!enrol.body.contains("<?xml"));
    let start = enrol.body.find("<code>").unwrap() + "<code>".len();
    let end = start + enrol.body[start..].find("</code>").unwrap();
    let secret = TotpSecret::from_base32(&enrol.body[start..end]).unwrap();
    let factor_id = enrol.field("factor_id");

    let wrong = browser
        .post(
            "/account/mfa/totp/confirm",
            &[
                ("csrf", &csrf),
                ("factor_id", &factor_id),
                ("code", "000000"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    let code = secret.code_at(totp::step_of(
        authgate::clock::Clock::now(app.clock.as_ref()).unix_timestamp(),
    ));
    let codes = browser
        .post(
            "/account/mfa/totp/confirm",
            &[("csrf", &csrf), ("factor_id", &factor_id), ("code", &code)],
        )
        .await;
    assert_eq!(codes.status, StatusCode::OK, "{}", codes.body);
    assert_eq!(
        codes.body.matches("<li><code>").count(),
        10,
        "{}",
        codes.body
    );
    let page = browser.get("/account").await;
    assert!(page.body.contains("(authenticator app)"), "{}", page.body);
    assert!(page.body.contains("10 recovery codes left."));
    // The password alone no longer signs in.
    let res = app.login("ada", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

async fn account_forms_need_their_csrf_token_and_a_session(backend: Backend) {
    let app = TestApp::builder().spawn(backend).await;
    app.create_user("ada").await;
    let (mut browser, page) = signed_in(&app, "ada").await;
    let forged = browser
        .post("/account/mfa/totp", &[("csrf", &"A".repeat(43))])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // A form token but no session: the login page, nothing changed.
    let mut stranger = Browser::new(&app);
    let login = stranger.get("/account").await;
    let anonymous = stranger
        .post("/account/mfa/totp", &[("csrf", &login.field("csrf"))])
        .await;
    assert!(
        anonymous.body.contains("Username or email"),
        "{}",
        anonymous.body
    );
    assert!(!anonymous.body.contains("<svg"));
    let _ = page;
}
