//! Passkeys on the hosted pages, with the software authenticator: the login
//! page's passkey, the passkey as the second step, and adding and removing
//! one on the account page; the script the pages load, and nothing else.

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::{
    account::signed_in,
    authorize::{Answer, Browser, REDIRECT, VERIFIER, authorize_path, exchange, register},
    common::Backend,
    helpers::{PASSWORD, TestApp, claims_of},
    on_both_databases,
    passkeys::{Authenticator, ORIGIN, start, user_with_passkey},
};

on_both_databases!(
    the_login_page_offers_a_passkey_and_only_its_own_script_may_run,
    a_passkey_signs_in_on_the_login_page_and_the_id_token_says_so,
    the_second_step_on_the_pages_takes_a_passkey,
    a_passkey_is_added_and_removed_on_the_account_page,
);

fn spawn() -> crate::helpers::TestAppBuilder {
    TestApp::builder_with_generated_key().with_admin()
}

/// A form's fields as `Browser::post` takes them.
fn refs<'a>(fields: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// What the page's script posts: the ceremony's id and the answer, with
/// the form's other fields.
fn answered<'a>(
    fields: &'a [(&'a str, String)],
    challenge_id: &'a str,
    credential: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut form = refs(fields);
    form.push(("challenge_id", challenge_id));
    form.push(("credential", credential));
    form
}

/// The authenticator's answer to a login started now, as JSON text.
async fn login_answer(app: &TestApp, authenticator: &mut Authenticator) -> (String, String) {
    let (challenge_id, options) = start(app, "/auth/passkey/start", None, json!({})).await;
    let credential = authenticator.assert(ORIGIN, &options).unwrap();
    (challenge_id, serde_json::to_string(&credential).unwrap())
}

/// The nonce that `page`'s policy gives its one script, checked to be the
/// one its script tag carries: no other script, of this origin or inline,
/// may run.
fn script_nonce(page: &Answer) -> String {
    let csp = page.csp.as_deref().unwrap();
    let sources = csp
        .split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("script-src "))
        .unwrap_or_else(|| panic!("no script-src in {csp}"));
    let nonce = sources
        .strip_prefix("'nonce-")
        .and_then(|n| n.strip_suffix('\''))
        .unwrap_or_else(|| panic!("script-src is not one nonce: {csp}"));
    assert!(nonce.len() >= 22, "{nonce}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(
        page.body.contains(&format!("nonce=\"{nonce}\"")),
        "{}",
        page.body
    );
    assert_eq!(page.body.matches("<script").count(), 1, "{}", page.body);
    nonce.to_owned()
}

/// The login form's hidden fields on `page`.
fn login_fields(page: &Answer) -> Vec<(&'static str, String)> {
    vec![
        ("csrf", page.field("csrf")),
        ("return_to", page.field("return_to")),
    ]
}

async fn the_login_page_offers_a_passkey_and_only_its_own_script_may_run(backend: Backend) {
    let app = spawn().spawn(backend).await;
    let mut browser = Browser::new(&app);
    let login = browser.get("/account").await;
    assert_eq!(login.status, StatusCode::OK);
    for text in [
        "data-passkey=\"login\"",
        "Sign in with a passkey",
        "src=\"/oauth/passkeys.js?v=",
        "action=\"/oauth/passkey\"",
    ] {
        assert!(login.body.contains(text), "{text} in {}", login.body);
    }
    let nonce = script_nonce(&login);
    // A new one for every page.
    assert_ne!(script_nonce(&browser.get("/account").await), nonce);

    // A page without a passkey runs no script at all.
    let confirm = browser.get("/oauth/logout").await;
    assert_eq!(confirm.status, StatusCode::OK);
    let csp = confirm.csp.unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(!confirm.body.contains("<script"));

    let res = app.get("/oauth/passkeys.js", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    let script = res.text().await.unwrap();
    assert!(script.contains("navigator.credentials.get"), "{script}");
}

async fn a_passkey_signs_in_on_the_login_page_and_the_id_token_says_so(backend: Backend) {
    let app = spawn().spawn(backend).await;
    let (_, mut authenticator, _) = user_with_passkey(&app, "fay").await;
    let client = register(&app, json!({})).await;
    let mut browser = Browser::new(&app);
    let request = authorize_path(&client.id, "openid", &[]);
    let login = browser.get(&request).await;
    let fields = login_fields(&login);

    // A form without its token, or an answer that is not one: refused,
    // and nothing spent.
    let (challenge_id, credential) = login_answer(&app, &mut authenticator).await;
    let mut forged = answered(&fields, &challenge_id, &credential);
    forged[0].1 = "A";
    let refused = browser.post("/oauth/passkey", &forged).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let garbled = browser
        .post(
            "/oauth/passkey",
            &answered(&fields, &challenge_id, "{\"id\": 1}"),
        )
        .await;
    assert_eq!(garbled.status, StatusCode::BAD_REQUEST);
    assert!(garbled.body.contains("did not arrive"), "{}", garbled.body);
    assert!(garbled.body.contains("Sign in with a passkey"));

    let back = browser
        .post(
            "/oauth/passkey",
            &answered(&fields, &challenge_id, &credential),
        )
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    assert_eq!(back.location.as_deref(), Some(request.as_str()));
    assert!(browser.cookies.contains_key("authgate_sso"));

    // The same answer again: its ceremony is spent.
    let mut other = Browser::new(&app);
    let login = other.get(&request).await;
    let replay = other
        .post(
            "/oauth/passkey",
            &answered(&login_fields(&login), &challenge_id, &credential),
        )
        .await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.body.contains("used already"), "{}", replay.body);
    assert!(!other.cookies.contains_key("authgate_sso"));

    let consent = browser.get(&request).await;
    assert_eq!(consent.status, StatusCode::OK);
    let answer = browser.decide(&consent, "allow").await;
    let params = answer.params();
    let tokens: Value = exchange(&app, &client, &params["code"], VERIFIER)
        .await
        .json()
        .await
        .unwrap();
    let id = claims_of(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["acr"], "aal2", "{id}");
    assert!(
        id["amr"].as_array().unwrap().contains(&json!("hwk")),
        "{id}"
    );
    assert!(answer.location.unwrap().starts_with(REDIRECT));
}

async fn the_second_step_on_the_pages_takes_a_passkey(backend: Backend) {
    let app = spawn().spawn(backend).await;
    let (_, mut authenticator, _) = user_with_passkey(&app, "gus").await;
    let mut browser = Browser::new(&app);
    let login = browser.get("/account").await;
    let step = browser.sign_in(&login, "gus", PASSWORD).await;
    assert_eq!(step.status, StatusCode::OK);
    for text in [
        "Use a passkey",
        "data-passkey=\"mfa\"",
        "/oauth/passkeys.js",
    ] {
        assert!(step.body.contains(text), "{text} in {}", step.body);
    }
    script_nonce(&step);
    let fields = vec![
        ("csrf", step.field("csrf")),
        ("return_to", step.field("return_to")),
        ("mfa_token", step.field("mfa_token")),
        ("passkey", step.field("passkey")),
    ];
    let answer = |options: &Value, authenticator: &mut Authenticator| {
        serde_json::to_string(&authenticator.assert(ORIGIN, options).unwrap()).unwrap()
    };

    // A login's ceremony is not the second step's: a wrong try.
    let (login_id, options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    let credential = answer(&options, &mut authenticator);
    let wrong = browser
        .post("/oauth/mfa", &answered(&fields, &login_id, &credential))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    assert!(wrong.body.contains("That passkey is not right."));
    assert!(wrong.body.contains("Use a passkey"), "still offered");

    let (challenge_id, options) = start(
        &app,
        "/auth/mfa/passkey/start",
        None,
        json!({"mfa_token": fields[2].1}),
    )
    .await;
    let credential = answer(&options, &mut authenticator);
    let back = browser
        .post("/oauth/mfa", &answered(&fields, &challenge_id, &credential))
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    assert_eq!(back.location.as_deref(), Some("/account"));
    let page = browser.get("/account").await;
    assert!(page.body.contains("Laptop (passkey)"), "{}", page.body);
    // The session is of two factors: a factor can be removed from it.
    let removed = browser
        .post(
            "/account/mfa/remove",
            &[
                ("csrf", &page.field("csrf")),
                ("factor_id", &page.field("factor_id")),
            ],
        )
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
}

async fn a_passkey_is_added_and_removed_on_the_account_page(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("hal").await;
    let (mut browser, page) = signed_in(&app, "hal").await;
    let csrf = page.field("csrf");
    assert!(page.body.contains("Add a passkey"));

    let refused = browser
        .post("/account/passkeys", &[("csrf", &"A".repeat(43))])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // A name that cannot be shown is refused before anything is made
    // (a zero-width joiner, as some emoji hold, is invisible).
    for name in ["bell\u{7}", "a\u{200d}b", &"x".repeat(65)] {
        let named = browser
            .post("/account/passkeys", &[("csrf", &csrf), ("name", name)])
            .await;
        assert_eq!(named.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert!(
            named.body.contains("invisible characters"),
            "{}",
            named.body
        );
        assert!(!named.body.contains("data-options"));
    }

    let add = browser
        .post("/account/passkeys", &[("csrf", &csrf), ("name", "Laptop")])
        .await;
    assert_eq!(add.status, StatusCode::OK, "{}", add.body);
    assert!(add.body.contains("Create passkey"));
    assert!(add.body.contains("<strong>Laptop</strong>"), "{}", add.body);
    script_nonce(&add);
    let options: Value = serde_json::from_str(&add.attribute("data-options")).unwrap();
    let challenge_id = add.field("challenge_id");
    let mut authenticator = Authenticator::new();
    let credential =
        serde_json::to_string(&authenticator.register(ORIGIN, &options).unwrap()).unwrap();
    let finish = |name: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("challenge_id", challenge_id.clone()),
            ("credential", credential.clone()),
            ("name", name.to_owned()),
        ]
    };
    // A name changed in the form on its way is checked again.
    let named = browser
        .post("/account/passkeys/finish", &refs(&finish("bell\u{7}")))
        .await;
    assert_eq!(named.status, StatusCode::UNPROCESSABLE_ENTITY);

    let good = finish(&add.field("name"));
    let good = refs(&good);
    let codes = browser.post("/account/passkeys/finish", &good).await;
    assert_eq!(codes.status, StatusCode::CREATED, "{}", codes.body);
    assert!(codes.body.contains("Keep your recovery codes"));
    assert_eq!(
        codes.body.matches("<li><code>").count(),
        10,
        "{}",
        codes.body
    );
    // Posted again, from this session of one factor: nothing more.
    let again = browser.post("/account/passkeys/finish", &good).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);

    let page = browser.get("/account").await;
    assert!(page.body.contains("Laptop (passkey)"), "{}", page.body);
    assert!(page.body.contains("10 recovery codes left."));
    let factor_id = page.field("factor_id");

    // This session has one factor: no second passkey, no removal.
    let more = browser.post("/account/passkeys", &[("csrf", &csrf)]).await;
    assert_eq!(more.status, StatusCode::FORBIDDEN);
    assert!(more.body.contains("second step first"), "{}", more.body);
    let kept = browser
        .post(
            "/account/mfa/remove",
            &[("csrf", &csrf), ("factor_id", &factor_id)],
        )
        .await;
    assert_eq!(kept.status, StatusCode::FORBIDDEN);
    assert!(kept.body.contains("Laptop (passkey)"));

    // Signed in with the passkey (two factors), it goes.
    let mut second = Browser::new(&app);
    let login = second.get("/account").await;
    let (challenge_id, credential) = login_answer(&app, &mut authenticator).await;
    let back = second
        .post(
            "/oauth/passkey",
            &answered(&login_fields(&login), &challenge_id, &credential),
        )
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let page = second.get("/account").await;
    let unknown = second
        .post(
            "/account/mfa/remove",
            &[
                ("csrf", &page.field("csrf")),
                ("factor_id", "0190a8f0-0000-7000-8000-000000000000"),
            ],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(
        unknown.body.contains("not on this account"),
        "{}",
        unknown.body
    );
    let removed = second
        .post(
            "/account/mfa/remove",
            &[("csrf", &page.field("csrf")), ("factor_id", &factor_id)],
        )
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
    let page = second.get(removed.location.as_deref().unwrap()).await;
    assert!(page.body.contains("The second step is removed."));
    assert!(
        page.body
            .contains("Only your password protects this account.")
    );
    // And the password alone signs in again.
    assert_eq!(app.login("hal", PASSWORD).await.status(), StatusCode::OK);
    // The audit log says what kind of factor went.
    let admin = app.admin_token().await;
    let audit: Value = app
        .get("/admin/audit?limit=200", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let removed: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "mfa_removed")
        .collect();
    assert_eq!(removed.len(), 1, "{audit}");
    assert_eq!(removed[0]["detail"], "passkey", "{audit}");
}
