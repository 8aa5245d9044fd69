//! Passkeys from outside, with a software authenticator in the test: a
//! registration from a session, a login without a password, a passkey as
//! the second factor and for step-up, and everything a finish must refuse
//! (a used or expired challenge, another origin or RP ID, a counter that
//! went back, another user's passkey).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use webauthn_authenticator_rs::{
    AuthenticatorBackendHashedClientData, WebauthnAuthenticator, error::WebauthnCError,
    softpasskey::SoftPasskey,
};
use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url,
};
use webauthn_rs_proto::{
    AllowCredentials, PublicKeyCredentialCreationOptions, PublicKeyCredentialRequestOptions,
};

use crate::{
    common::Backend,
    helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, TestApp, Tokens, claims_of, problem},
    on_both_databases,
};

on_both_databases!(
    a_passkey_registered_from_a_session_logs_in_without_a_password_at_aal2,
    a_challenge_works_once_and_not_after_five_minutes,
    answers_for_another_origin_or_rp_id_are_refused,
    a_signature_counter_that_goes_back_is_refused,
    a_passkey_proves_only_its_own_user,
    a_passkey_serves_as_the_second_factor_after_a_password,
    a_one_factor_session_steps_up_with_a_passkey,
    a_passkey_is_removed_only_from_a_session_of_two_factors,
    an_admin_reset_removes_passkeys_too,
    registrations_started_together_add_no_more_than_they_may,
    starts_that_store_a_ceremony_are_limited_per_user,
);

/// The origin the service expects by default.
pub const ORIGIN: &str = "http://localhost:8010";

async fn spawn(backend: Backend) -> TestApp {
    TestApp::builder()
        .arg("--admin-email", ADMIN_EMAIL)
        .arg("--admin-password", ADMIN_PASSWORD)
        .spawn(backend)
        .await
}

/// A software authenticator that keeps its credentials, as a platform
/// authenticator does: it answers a request that names no credential with
/// its own, and says whose it is (the user handle). `SoftPasskey` signs.
pub struct Authenticator {
    soft: SoftPasskey,
    /// Each credential's user handle, in the order made.
    users: Vec<(Vec<u8>, Vec<u8>)>,
    /// Claims another user for the next assertions.
    forged_user: Option<Vec<u8>>,
}

impl Authenticator {
    pub fn new() -> Self {
        Self {
            // `true`: it says it verified its user (a PIN, a fingerprint).
            soft: SoftPasskey::new(true),
            users: Vec::new(),
            forged_user: None,
        }
    }

    pub fn register(
        &mut self,
        origin: &str,
        public_key: &Value,
    ) -> Result<RegisterPublicKeyCredential, WebauthnCError> {
        let options: CreationChallengeResponse =
            serde_json::from_value(json!({ "publicKey": public_key })).unwrap();
        self.do_registration(Url::parse(origin).unwrap(), options)
    }

    pub fn assert(
        &mut self,
        origin: &str,
        public_key: &Value,
    ) -> Result<PublicKeyCredential, WebauthnCError> {
        let options: RequestChallengeResponse =
            serde_json::from_value(json!({ "publicKey": public_key })).unwrap();
        self.do_authentication(Url::parse(origin).unwrap(), options)
    }
}

impl AuthenticatorBackendHashedClientData for Authenticator {
    fn perform_register(
        &mut self,
        client_data_hash: Vec<u8>,
        mut options: PublicKeyCredentialCreationOptions,
        timeout_ms: u32,
    ) -> Result<RegisterPublicKeyCredential, WebauthnCError> {
        let user = options.user.id.to_vec();
        // The soft token refuses to be asked for a resident key; this one
        // keeps the handle itself.
        if let Some(selection) = options.authenticator_selection.as_mut() {
            selection.require_resident_key = false;
            selection.resident_key = None;
        }
        let made = self
            .soft
            .perform_register(client_data_hash, options, timeout_ms)?;
        self.users.push((made.raw_id.to_vec(), user));
        Ok(made)
    }

    fn perform_auth(
        &mut self,
        client_data_hash: Vec<u8>,
        mut options: PublicKeyCredentialRequestOptions,
        timeout_ms: u32,
    ) -> Result<PublicKeyCredential, WebauthnCError> {
        if options.allow_credentials.is_empty() {
            options.allow_credentials = self
                .users
                .iter()
                .map(|(id, _)| AllowCredentials {
                    type_: "public-key".into(),
                    id: id.clone(),
                    transports: None,
                })
                .collect();
        }
        let mut answer = self
            .soft
            .perform_auth(client_data_hash, options, timeout_ms)?;
        let user = self
            .users
            .iter()
            .find(|(id, _)| *id == answer.raw_id.to_vec())
            .map(|(_, user)| user.clone())
            .expect("a credential of this authenticator");
        answer.response.user_handle = Some(self.forged_user.clone().unwrap_or(user));
        Ok(answer)
    }
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = app.client.post(app.url(path)).json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

/// A ceremony's start: `(challenge_id, publicKey)`.
pub async fn start(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> (String, Value) {
    let res = post(app, path, token, body).await;
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let body: Value = res.json().await.unwrap();
    (
        body["challenge_id"].as_str().unwrap().to_owned(),
        body["publicKey"].clone(),
    )
}

/// A registration's finish from the session `access`.
async fn finish_registration(
    app: &TestApp,
    access: &str,
    challenge_id: &str,
    credential: &RegisterPublicKeyCredential,
) -> reqwest::Response {
    let body = json!({"challenge_id": challenge_id, "credential": credential});
    post(
        app,
        "/users/me/passkeys/register/finish",
        Some(access),
        body,
    )
    .await
}

/// A passwordless login's finish.
async fn finish_login(
    app: &TestApp,
    challenge_id: &str,
    credential: &PublicKeyCredential,
) -> reqwest::Response {
    let body = json!({"challenge_id": challenge_id, "credential": credential});
    post(app, "/auth/passkey/finish", None, body).await
}

/// A registration's start from the session `access`.
async fn start_registration(app: &TestApp, access: &str) -> (String, Value) {
    start(
        app,
        "/users/me/passkeys/register/start",
        Some(access),
        json!({}),
    )
    .await
}

/// Registers a passkey of `authenticator` from the session `access`: the
/// finish's answer.
async fn register(app: &TestApp, access: &str, authenticator: &mut Authenticator) -> Value {
    let (challenge_id, options) = start(
        app,
        "/users/me/passkeys/register/start",
        Some(access),
        json!({}),
    )
    .await;
    let credential = authenticator.register(ORIGIN, &options).unwrap();
    let res = post(
        app,
        "/users/me/passkeys/register/finish",
        Some(access),
        json!({"challenge_id": challenge_id, "credential": credential, "name": "Laptop"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

/// Signs `name` up and registers a passkey from a password session.
pub async fn user_with_passkey(app: &TestApp, name: &str) -> (Tokens, Authenticator, Value) {
    app.create_user(name).await;
    let tokens = app.tokens(name).await;
    let mut authenticator = Authenticator::new();
    let registered = register(app, &tokens.access, &mut authenticator).await;
    (tokens, authenticator, registered)
}

/// A login with the passkey, `body` for its start.
async fn passkey_login(
    app: &TestApp,
    authenticator: &mut Authenticator,
    body: Value,
) -> reqwest::Response {
    let (challenge_id, options) = start(app, "/auth/passkey/start", None, body).await;
    let credential = authenticator.assert(ORIGIN, &options).unwrap();
    finish_login(app, &challenge_id, &credential).await
}

async fn passkey_tokens(app: &TestApp, authenticator: &mut Authenticator) -> Tokens {
    let res = passkey_login(app, authenticator, json!({})).await;
    assert_eq!(res.status(), StatusCode::OK);
    Tokens::from(res.json::<Value>().await.unwrap())
}

async fn a_passkey_registered_from_a_session_logs_in_without_a_password_at_aal2(backend: Backend) {
    let app = spawn(backend).await;
    app.create_user("ada").await;
    let tokens = app.tokens("ada").await;
    let (_, options) = start_registration(&app, &tokens.access).await;
    assert_eq!(options["rp"]["id"], "localhost");
    assert_eq!(options["rp"]["name"], "authgate");
    assert_eq!(options["user"]["name"], "ada@example.com");
    let selection = &options["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "required", "{options}");
    assert_eq!(selection["userVerification"], "required", "{options}");

    // A name that would pass for another is refused before the answer is
    // taken: the same answer, named plainly, registers.
    let (challenge_id, options) = start_registration(&app, &tokens.access).await;
    let mut authenticator = Authenticator::new();
    let credential = authenticator.register(ORIGIN, &options).unwrap();
    let path = "/users/me/passkeys/register/finish";
    let mut answer = json!({"challenge_id": challenge_id, "credential": credential});
    answer["name"] = json!("Lap\u{202E}pot");
    let res = post(&app, path, Some(&tokens.access), answer.clone()).await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    answer["name"] = json!("Laptop");
    let res = post(&app, path, Some(&tokens.access), answer).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let registered: Value = res.json().await.unwrap();
    assert_eq!(registered["name"], "Laptop");
    // The account's first factor brings its recovery codes.
    assert_eq!(registered["recovery_codes"].as_array().unwrap().len(), 10);
    let listed: Value = app
        .get("/users/me/passkeys", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["passkeys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["passkeys"][0]["id"], registered["id"]);
    assert_eq!(listed["passkeys"][0]["last_used_at"], Value::Null);
    let factors: Value = app
        .get("/users/me/mfa", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(factors["factors"][0]["type"], "passkey");
    assert_eq!(factors["recovery_codes_left"], 10);

    // Nobody named: the options list no credential, the passkey says whose
    // it is.
    let (_, options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    assert!(
        options["allowCredentials"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{options}"
    );
    assert_eq!(options["userVerification"], "required");
    let res = passkey_login(&app, &mut authenticator, json!({})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let tokens = Tokens::from(res.json::<Value>().await.unwrap());
    let claims = claims_of(&tokens.access);
    assert_eq!(claims["aal"], "aal2");
    assert_eq!(claims["amr"], json!(["hwk", "mfa"]));
    assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);

    // Named, by username or email: the same passkey.
    for login in ["ada", "ADA@example.com"] {
        let res = passkey_login(&app, &mut authenticator, json!({"username": login})).await;
        assert_eq!(res.status(), StatusCode::OK, "{login}");
    }
    let listed: Value = app
        .get("/users/me/passkeys", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        listed["passkeys"][0]["last_used_at"].is_string(),
        "{listed}"
    );

    // Refreshing keeps the session's level.
    let res = app.refresh(&tokens.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let refreshed = Tokens::from(res.json::<Value>().await.unwrap());
    assert_eq!(claims_of(&refreshed.access)["amr"], json!(["hwk", "mfa"]));

    // A name is held to the documented 320 characters as sent, spaces and
    // all, and a blank one is no name.
    for login in [format!("ada{}", " ".repeat(318)), "   ".into()] {
        let res = post(
            &app,
            "/auth/passkey/start",
            None,
            json!({"username": login}),
        )
        .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["errors"][0]["field"], "username", "{body}");
    }
}

async fn a_challenge_works_once_and_not_after_five_minutes(backend: Backend) {
    let app = spawn(backend).await;
    let (_, mut authenticator, _) = user_with_passkey(&app, "bea").await;

    let (challenge_id, options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    let credential = authenticator.assert(ORIGIN, &options).unwrap();
    let finish = json!({"challenge_id": challenge_id, "credential": credential});
    let res = post(&app, "/auth/passkey/finish", None, finish.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The same answer again: its challenge is spent.
    let res = post(&app, "/auth/passkey/finish", None, finish).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(body.to_string().contains("challenge_id"), "{body}");

    // A refused answer spends its challenge too.
    let (challenge_id, options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    let mut credential = authenticator.assert(ORIGIN, &options).unwrap();
    credential.response.signature[8] ^= 1;
    let finish = json!({"challenge_id": challenge_id, "credential": credential});
    let res = post(&app, "/auth/passkey/finish", None, finish.clone()).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
    let res = post(&app, "/auth/passkey/finish", None, finish).await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;

    // Five minutes and a second later, a started challenge is gone.
    let (challenge_id, options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    let credential = authenticator.assert(ORIGIN, &options).unwrap();
    app.advance(Duration::from_secs(5 * 60 + 1));
    let res = finish_login(&app, &challenge_id, &credential).await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
}

async fn answers_for_another_origin_or_rp_id_are_refused(backend: Backend) {
    let app = spawn(backend).await;
    app.create_user("cyd").await;
    let tokens = app.tokens("cyd").await;
    let mut authenticator = Authenticator::new();

    // Another port is another origin.
    let (challenge_id, options) = start_registration(&app, &tokens.access).await;
    let credential = authenticator
        .register("http://localhost:8011", &options)
        .unwrap();
    let res = finish_registration(&app, &tokens.access, &challenge_id, &credential).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(body.to_string().contains("credential"), "{body}");

    // A page elsewhere that claims its own RP ID.
    let (challenge_id, mut options) = start_registration(&app, &tokens.access).await;
    options["rp"]["id"] = json!("evil.example");
    let credential = authenticator
        .register("https://evil.example", &options)
        .unwrap();
    let res = finish_registration(&app, &tokens.access, &challenge_id, &credential).await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let listed: Value = app
        .get("/users/me/passkeys", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["passkeys"], json!([]), "nothing was stored");

    // A registered passkey's assertion for another origin logs nobody in.
    register(&app, &tokens.access, &mut authenticator).await;
    let (challenge_id, options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    let credential = authenticator
        .assert("http://localhost:8011", &options)
        .unwrap();
    let res = finish_login(&app, &challenge_id, &credential).await;
    let body = problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "invalid_credentials");
}

async fn a_signature_counter_that_goes_back_is_refused(backend: Backend) {
    let app = spawn(backend).await;
    let (_, mut authenticator, _) = user_with_passkey(&app, "dot").await;

    // Two answers, the earlier one held back (as a clone of the key would
    // answer with a count behind the original's).
    let (first_id, first_options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    let (second_id, second_options) = start(&app, "/auth/passkey/start", None, json!({})).await;
    let earlier = authenticator.assert(ORIGIN, &first_options).unwrap();
    let later = authenticator.assert(ORIGIN, &second_options).unwrap();
    let res = finish_login(&app, &second_id, &later).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = finish_login(&app, &first_id, &earlier).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
    // The authenticator itself goes on.
    passkey_tokens(&app, &mut authenticator).await;

    // As a second factor too, against the counter stored now, not the one
    // the challenge was started with.
    let mfa_token = second_step(&app, "dot").await;
    let (challenge_id, options) = start(
        &app,
        "/auth/mfa/passkey/start",
        None,
        json!({"mfa_token": mfa_token}),
    )
    .await;
    let held_back = authenticator.assert(ORIGIN, &options).unwrap();
    passkey_tokens(&app, &mut authenticator).await;
    let res = post(
        &app,
        "/auth/mfa/verify",
        None,
        json!({"mfa_token": mfa_token, "challenge_id": challenge_id, "credential": held_back}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_code"
    );
}

async fn a_passkey_proves_only_its_own_user(backend: Backend) {
    let app = spawn(backend).await;
    let (_, mut eve_key, _) = user_with_passkey(&app, "eve").await;
    let bob = app.create_user("bob").await;
    let bob_id = bob["id"].as_str().unwrap();

    // Eve's passkey claiming to be Bob's.
    eve_key.forged_user = Some(uuid::Uuid::parse_str(bob_id).unwrap().as_bytes().to_vec());
    let res = passkey_login(&app, &mut eve_key, json!({})).await;
    let body = problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "invalid_credentials");
    eve_key.forged_user = None;

    // Named at the start, only that account's passkey is taken; an unknown
    // name is refused only at the finish, as a wrong passkey is.
    let res = passkey_login(&app, &mut eve_key, json!({"username": "bob"})).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
    let res = passkey_login(&app, &mut eve_key, json!({"username": "nobody"})).await;
    problem(res, StatusCode::UNAUTHORIZED).await;

    // A disabled account logs in with no passkey.
    let eve = claims_of(&passkey_tokens(&app, &mut eve_key).await.access)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = app.admin_token().await;
    let res = app
        .client
        .patch(app.url(&format!("/admin/users/{eve}")))
        .bearer_auth(&admin)
        .json(&json!({"is_active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = passkey_login(&app, &mut eve_key, json!({})).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
}

/// A password login that asks for the second factor: its `mfa_token`.
async fn second_step(app: &TestApp, name: &str) -> String {
    let res = app.login(name, PASSWORD).await;
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "mfa_required");
    assert_eq!(body["factor_types"], json!(["passkey"]));
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn a_passkey_serves_as_the_second_factor_after_a_password(backend: Backend) {
    let app = spawn(backend).await;
    let (_, mut authenticator, registered) = user_with_passkey(&app, "fay").await;

    let mfa_token = second_step(&app, "fay").await;
    let (challenge_id, options) = start(
        &app,
        "/auth/mfa/passkey/start",
        None,
        json!({"mfa_token": mfa_token}),
    )
    .await;
    // The password is proved: the options may name the user's passkeys.
    assert_eq!(options["allowCredentials"].as_array().unwrap().len(), 1);
    let credential = authenticator.assert(ORIGIN, &options).unwrap();
    let res = post(
        &app,
        "/auth/mfa/verify",
        None,
        json!({"mfa_token": mfa_token, "challenge_id": challenge_id, "credential": credential}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens = Tokens::from(res.json::<Value>().await.unwrap());
    let claims = claims_of(&tokens.access);
    assert_eq!(claims["aal"], "aal2");
    assert_eq!(claims["amr"], json!(["pwd", "hwk", "mfa"]));

    // A recovery code stands in for the passkey, once.
    let code = registered["recovery_codes"][0].as_str().unwrap();
    let mfa_token = second_step(&app, "fay").await;
    let res = post(
        &app,
        "/auth/mfa/verify",
        None,
        json!({"mfa_token": mfa_token, "recovery_code": code}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // A wrong answer counts as a wrong code; the challenge is spent.
    let mfa_token = second_step(&app, "fay").await;
    let (challenge_id, options) = start(
        &app,
        "/auth/mfa/passkey/start",
        None,
        json!({"mfa_token": mfa_token}),
    )
    .await;
    let mut credential = authenticator.assert(ORIGIN, &options).unwrap();
    credential.response.signature[8] ^= 1;
    let answer =
        json!({"mfa_token": mfa_token, "challenge_id": challenge_id, "credential": credential});
    let res = post(&app, "/auth/mfa/verify", None, answer.clone()).await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_code"
    );
    let res = post(&app, "/auth/mfa/verify", None, answer).await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_code"
    );

    // Without its challenge_id an answer is no proof; an unknown mfa_token
    // starts nothing.
    let res = post(
        &app,
        "/auth/mfa/verify",
        None,
        json!({"mfa_token": mfa_token, "credential": {}}),
    )
    .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let res = post(
        &app,
        "/auth/mfa/passkey/start",
        None,
        json!({"mfa_token": "x".repeat(43)}),
    )
    .await;
    assert_eq!(
        problem(res, StatusCode::UNAUTHORIZED).await["code"],
        "invalid_mfa_token"
    );
}

async fn a_one_factor_session_steps_up_with_a_passkey(backend: Backend) {
    let app = spawn(backend).await;
    // The session that registered the passkey had the password alone.
    let (before, mut authenticator, _) = user_with_passkey(&app, "gus").await;
    assert_eq!(claims_of(&before.access)["aal"], "aal1");
    let res = app
        .client
        .post(app.url("/users/me/passkeys/register/start"))
        .bearer_auth(&before.access)
        .send()
        .await
        .unwrap();
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "insufficient_user_authentication");

    let (challenge_id, options) = start(
        &app,
        "/auth/mfa/passkey/start",
        Some(&before.access),
        json!({}),
    )
    .await;
    let credential = authenticator.assert(ORIGIN, &options).unwrap();
    let res = post(
        &app,
        "/auth/mfa/verify",
        Some(&before.access),
        json!({"challenge_id": challenge_id, "credential": credential}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let raised = body["access_token"].as_str().unwrap();
    assert_eq!(claims_of(raised)["aal"], "aal2");
    assert_eq!(claims_of(raised)["amr"], json!(["pwd", "hwk", "mfa"]));
    // Now a second passkey may be added.
    let second = register(&app, raised, &mut Authenticator::new()).await;
    assert!(second.get("recovery_codes").is_none(), "{second}");
}

async fn a_passkey_is_removed_only_from_a_session_of_two_factors(backend: Backend) {
    let app = spawn(backend).await;
    let (before, mut authenticator, registered) = user_with_passkey(&app, "hal").await;
    let path = format!("/users/me/passkeys/{}", registered["id"].as_str().unwrap());

    let res = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&before.access)
        .send()
        .await
        .unwrap();
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "insufficient_user_authentication");

    let tokens = passkey_tokens(&app, &mut authenticator).await;
    let res = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::NOT_FOUND).await;

    // The last factor took the recovery codes; the password alone logs in
    // again, and the passkey no longer does.
    let factors: Value = app
        .get("/users/me/mfa", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(factors, json!({"factors": [], "recovery_codes_left": 0}));
    assert_eq!(app.login("hal", PASSWORD).await.status(), StatusCode::OK);
    let res = passkey_login(&app, &mut authenticator, json!({})).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
}

async fn an_admin_reset_removes_passkeys_too(backend: Backend) {
    let app = spawn(backend).await;
    let (_, mut authenticator, _) = user_with_passkey(&app, "ivo").await;
    let user = passkey_tokens(&app, &mut authenticator).await;
    let id = claims_of(&user.access)["sub"].as_str().unwrap().to_owned();

    let admin = app.admin_token().await;
    let res = app
        .client
        .delete(app.url(&format!("/admin/users/{id}/mfa")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The lost device's session ended with the passkey.
    assert_eq!(app.me_status(&user.access).await, StatusCode::UNAUTHORIZED);
    let res = passkey_login(&app, &mut authenticator, json!({})).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
    let tokens = app.tokens("ivo").await;
    let listed: Value = app
        .get("/users/me/passkeys", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["passkeys"], json!([]));

    // An admin's own factors are no easier to remove through the admin
    // route: a session opened before them may not.
    let mut admins_key = Authenticator::new();
    register(&app, &admin, &mut admins_key).await;
    let own = claims_of(&admin)["sub"].as_str().unwrap().to_owned();
    let res = app
        .client
        .delete(app.url(&format!("/admin/users/{own}/mfa")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "insufficient_user_authentication");
    // Nor may that session make another admin (who could); reading stays.
    let res = post(
        &app,
        "/admin/users",
        Some(&admin),
        json!({"username": "deputy", "password": PASSWORD, "roles": ["admin"]}),
    )
    .await;
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "insufficient_user_authentication");
    assert_eq!(
        app.get("/admin/users", Some(&admin)).await.status(),
        StatusCode::OK
    );
}

async fn registrations_started_together_add_no_more_than_they_may(backend: Backend) {
    let app = spawn(backend).await;
    app.create_user("joy").await;
    let one_factor = app.tokens("joy").await;
    let mut authenticator = Authenticator::new();

    // Two starts from a one-factor session before any passkey: only the
    // first finish may add the first factor; the second would be a second
    // factor added without a second factor.
    let started = [
        start_registration(&app, &one_factor.access).await,
        start_registration(&app, &one_factor.access).await,
    ];
    let mut answers = Vec::new();
    for (challenge_id, options) in &started {
        let credential = authenticator.register(ORIGIN, options).unwrap();
        answers.push(json!({"challenge_id": challenge_id, "credential": credential}));
    }
    let path = "/users/me/passkeys/register/finish";
    let res = post(&app, path, Some(&one_factor.access), answers[0].clone()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = post(&app, path, Some(&one_factor.access), answers[1].clone()).await;
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "insufficient_user_authentication");

    // The cap holds at the finish, however many starts came before it.
    let two_factors = passkey_tokens(&app, &mut authenticator).await;
    for _ in 1..19 {
        register(&app, &two_factors.access, &mut Authenticator::new()).await;
    }
    let started = [
        start_registration(&app, &two_factors.access).await,
        start_registration(&app, &two_factors.access).await,
    ];
    let mut statuses = Vec::new();
    for (challenge_id, options) in &started {
        let credential = Authenticator::new().register(ORIGIN, options).unwrap();
        let res = post(
            &app,
            path,
            Some(&two_factors.access),
            json!({"challenge_id": challenge_id, "credential": credential}),
        )
        .await;
        statuses.push(res.status());
    }
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::UNPROCESSABLE_ENTITY]
    );
    let listed: Value = app
        .get("/users/me/passkeys", Some(&two_factors.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["passkeys"].as_array().unwrap().len(), 20);
}

async fn starts_that_store_a_ceremony_are_limited_per_user(backend: Backend) {
    let app = spawn(backend).await;
    let (one_factor, _, _) = user_with_passkey(&app, "kit").await;
    // The registration above started one; 29 more fit in the minute.
    for _ in 0..29 {
        let res = post(
            &app,
            "/auth/mfa/passkey/start",
            Some(&one_factor.access),
            json!({}),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = post(
        &app,
        "/auth/mfa/passkey/start",
        Some(&one_factor.access),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    // The same quota as an mfa_token's starts.
    let mfa_token = second_step(&app, "kit").await;
    let res = post(
        &app,
        "/auth/mfa/passkey/start",
        None,
        json!({"mfa_token": mfa_token}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    app.advance(Duration::from_secs(60));
    let res = post(
        &app,
        "/auth/mfa/passkey/start",
        None,
        json!({"mfa_token": mfa_token}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}
