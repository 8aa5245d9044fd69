//! Signing keys: algorithms, the published key set, discovery, rotation with
//! a publish lead, revocation, sealing, and instances agreeing on all of it.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, Validation, jwk::Jwk};
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    common::{Backend, TestDb},
    helpers::{TestApp, TestAppBuilder, claims_of, header_of, problem},
    on_both_databases,
};

on_both_databases!(
    tokens_are_signed_with_ed25519_by_default_and_verify_with_the_published_keys,
    es256_and_rs256_keys_sign_verifiable_tokens_too,
    hs256_keys_are_never_published,
    the_key_set_is_cacheable_and_answers_304_when_unchanged,
    discovery_documents_name_the_issuer_tokens_carry_and_where_the_keys_are,
    tokens_say_when_and_how_the_session_was_authenticated,
    a_rotated_key_is_published_a_lead_time_before_it_signs,
    a_replaced_key_leaves_the_key_set_once_its_tokens_have_expired,
    a_revoked_key_is_refused_at_once_and_a_new_one_signs_in_its_place,
    a_second_instance_sees_rotations_and_revocations_within_seconds,
    scheduled_rotation_adds_one_key_however_many_instances_are_due,
    sealed_keys_are_stored_sealed_and_do_not_open_without_the_key,
    changing_the_algorithm_publishes_a_key_of_the_new_one_ahead,
    key_routes_are_for_admins_and_refuse_configured_keys,
    a_pair_given_again_after_a_revocation_is_signed_by_the_new_key,
    a_key_an_instance_cannot_open_holds_back_no_revocation,
    no_more_than_three_keys_wait_on_standby,
);

const LEAD: Duration = Duration::from_secs(3600);

fn keyed() -> TestAppBuilder {
    TestApp::builder_with_generated_key().with_admin()
}

fn kid_of(token: &str) -> String {
    header_of(token)["kid"].as_str().unwrap().to_owned()
}

async fn jwks(app: &TestApp) -> Vec<Value> {
    let res = app.get("/.well-known/jwks.json", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["keys"].as_array().unwrap().clone()
}

fn published_kids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Verifies `token` the way another service would: with the published key
/// of its `kid`, the algorithm that key names, and the issuer and audience.
fn verify_with(keys: &[Value], token: &str, issuer: &str) -> Result<Value, String> {
    let kid = kid_of(token);
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid {kid} is not published"))?;
    let alg: jsonwebtoken::Algorithm = jwk["alg"].as_str().unwrap().parse().unwrap();
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(alg);
    validation.set_audience(&["authgate"]);
    validation.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

/// An access token of `name`, created on first use.
async fn user_token(app: &TestApp, name: &str) -> String {
    let res = app.login(name, crate::helpers::PASSWORD).await;
    if res.status() == StatusCode::UNAUTHORIZED {
        app.create_user(name).await;
        return app.tokens(name).await.access;
    }
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn keys_list(app: &TestApp, admin: &str) -> Vec<Value> {
    let res = app.get("/admin/keys", Some(admin)).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["keys"]
        .as_array()
        .unwrap()
        .clone()
}

fn state_of(list: &[Value], kid: &str) -> String {
    list.iter()
        .find(|k| k["kid"] == kid)
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| "absent".into())
}

async fn rotate(app: &TestApp, admin: &str) -> Value {
    let res = app
        .client
        .post(app.url("/admin/keys/rotate"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

async fn revoke(app: &TestApp, admin: &str, kid: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/admin/keys/{kid}/revoke")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
}

async fn tokens_are_signed_with_ed25519_by_default_and_verify_with_the_published_keys(
    backend: Backend,
) {
    let app = keyed().spawn(backend).await;
    let token = user_token(&app, "ada").await;
    let header = header_of(&token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let keys = jwks(&app).await;
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], header["kid"]);
    for private in ["d", "p", "q", "k"] {
        assert!(key.get(private).is_none(), "{private} published: {key}");
    }
    let claims = verify_with(&keys, &token, "http://127.0.0.1:8010").unwrap();
    assert_eq!(claims["iss"], "http://127.0.0.1:8010");
    // Tampering with the payload breaks the published key's verification.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = claims.clone();
    forged["roles"] = serde_json::json!(["admin"]);
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    assert!(verify_with(&keys, &parts.join("."), "http://127.0.0.1:8010").is_err());
    assert_eq!(
        app.me_status(&parts.join(".")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me_status(&token).await, StatusCode::OK);
}

async fn es256_and_rs256_keys_sign_verifiable_tokens_too(backend: Backend) {
    for (alg, kty) in [("ES256", "EC"), ("RS256", "RSA")] {
        let app = keyed().arg("--jwt-alg", alg).spawn(backend).await;
        let token = user_token(&app, "ada").await;
        assert_eq!(header_of(&token)["alg"], alg);
        let keys = jwks(&app).await;
        assert_eq!(keys.len(), 1, "{alg}");
        assert_eq!(keys[0]["kty"], kty);
        assert_eq!(keys[0]["alg"], alg);
        verify_with(&keys, &token, "http://127.0.0.1:8010").unwrap();
        assert_eq!(app.me_status(&token).await, StatusCode::OK);
    }
}

async fn hs256_keys_are_never_published(backend: Backend) {
    let generated = keyed().arg("--jwt-alg", "HS256").spawn(backend).await;
    let token = user_token(&generated, "ada").await;
    assert_eq!(header_of(&token)["alg"], "HS256");
    assert_eq!(generated.me_status(&token).await, StatusCode::OK);
    assert!(jwks(&generated).await.is_empty());
    let configured = TestApp::builder().spawn(backend).await;
    let token = user_token(&configured, "bea").await;
    assert_eq!(header_of(&token)["alg"], "HS256");
    assert!(jwks(&configured).await.is_empty());
}

async fn the_key_set_is_cacheable_and_answers_304_when_unchanged(backend: Backend) {
    let app = keyed().spawn(backend).await;
    let res = app.get("/.well-known/jwks.json", None).await;
    assert_eq!(res.headers()["cache-control"], "public, max-age=300");
    assert_eq!(res.headers()["content-type"], "application/json");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let again = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert!(again.bytes().await.unwrap().is_empty());
    // A new key changes the set, and so its tag.
    let admin = app.admin_token().await;
    rotate(&app, &admin).await;
    let changed = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()["etag"], etag.as_str());
}

async fn discovery_documents_name_the_issuer_tokens_carry_and_where_the_keys_are(backend: Backend) {
    let app = keyed()
        .arg("--public-url", "https://auth.example.com/")
        .spawn(backend)
        .await;
    let token = user_token(&app, "ada").await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let res = app.get(path, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let doc: Value = res.json().await.unwrap();
        assert_eq!(doc["issuer"], claims_of(&token)["iss"], "{path}");
        assert_eq!(doc["issuer"], "https://auth.example.com");
        assert_eq!(
            doc["jwks_uri"],
            "https://auth.example.com/.well-known/jwks.json"
        );
        assert_eq!(
            doc["token_endpoint"],
            "https://auth.example.com/oauth/token"
        );
        assert_eq!(
            doc["authorization_endpoint"],
            "https://auth.example.com/oauth/authorize"
        );
        assert_eq!(
            doc["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
        assert!(
            doc["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&"authorization_code".into())
        );
        assert!(doc["token_endpoint_auth_methods_supported"].is_array());
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            serde_json::json!(["EdDSA"])
        );
    }
}

async fn tokens_say_when_and_how_the_session_was_authenticated(backend: Backend) {
    let app = keyed().spawn(backend).await;
    app.create_user("ada").await;
    let tokens = app.tokens("ada").await;
    let claims = claims_of(&tokens.access);
    assert_eq!(claims["aal"], "aal1");
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    let auth_time = claims["auth_time"].as_i64().unwrap();
    assert!((claims["iat"].as_i64().unwrap() - auth_time).abs() <= 1);
    // A refresh later keeps the time of the login, not of the refresh.
    app.advance(Duration::from_secs(600));
    let res = app.refresh(&tokens.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let refreshed = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(refreshed["auth_time"], auth_time);
    assert_eq!(refreshed["aal"], "aal1");
    assert!(refreshed["iat"].as_i64().unwrap() >= auth_time + 600);
}

async fn a_rotated_key_is_published_a_lead_time_before_it_signs(backend: Backend) {
    let app = keyed().spawn(backend).await;
    let admin = app.admin_token().await;
    let old_token = user_token(&app, "ada").await;
    let old = kid_of(&old_token);
    let new = rotate(&app, &admin).await;
    assert_eq!(new["state"], "standby");
    assert_eq!(new["published"], true);
    let new = new["kid"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        published_kids(&jwks(&app).await),
        [old.clone(), new.clone()]
    );
    // Until the lead has passed, the old key still signs.
    app.advance(LEAD - Duration::from_secs(60));
    let before = user_token(&app, "ada").await;
    assert_eq!(kid_of(&before), old);
    app.advance(Duration::from_secs(60));
    let after = user_token(&app, "ada").await;
    assert_eq!(kid_of(&after), new);
    assert_eq!(app.me_status(&after).await, StatusCode::OK);
    // The old key's latest token still verifies, here and with the key set.
    assert_eq!(app.me_status(&before).await, StatusCode::OK);
    let keys = jwks(&app).await;
    verify_with(&keys, &before, "http://127.0.0.1:8010").unwrap();
    verify_with(&keys, &after, "http://127.0.0.1:8010").unwrap();
    let admin = app.admin_token().await;
    let list = keys_list(&app, &admin).await;
    assert_eq!(state_of(&list, &old), "retiring");
    assert_eq!(state_of(&list, &new), "active");
    // Both keys' births are in the audit log; the rotation names its admin.
    let res = app.get("/admin/audit?type=key_rotated", Some(&admin)).await;
    let events: Value = res.json().await.unwrap();
    let events = events["events"].as_array().unwrap();
    let details: Vec<&str> = events
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(details, [new.as_str(), old.as_str()]);
    assert!(events[0]["actor_id"].is_string());
    assert!(
        events[1]["actor_id"].is_null(),
        "the first key is the service's own"
    );
}

async fn a_replaced_key_leaves_the_key_set_once_its_tokens_have_expired(backend: Backend) {
    let app = keyed().spawn(backend).await;
    let admin = app.admin_token().await;
    let old = kid_of(&user_token(&app, "ada").await);
    let new = rotate(&app, &admin).await["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    app.advance(LEAD);
    let last_of_old = {
        // Signed just before the switch would be the last one; none can be
        // newer than the switch, so one token lifetime later all are expired.
        app.advance(Duration::from_secs(15 * 60 + 30));
        jwks(&app).await
    };
    assert_eq!(published_kids(&last_of_old), [old.clone(), new.clone()]);
    app.advance(Duration::from_secs(31));
    assert_eq!(
        published_kids(&jwks(&app).await),
        std::slice::from_ref(&new)
    );
    let list = keys_list(&app, &app.admin_token().await).await;
    assert_eq!(state_of(&list, &old), "expired");
    // The purge deletes it.
    app.state.services.keys.purge().await.unwrap();
    let list = keys_list(&app, &app.admin_token().await).await;
    assert_eq!(state_of(&list, &old), "absent");
    assert_eq!(state_of(&list, &new), "active");
}

async fn a_revoked_key_is_refused_at_once_and_a_new_one_signs_in_its_place(backend: Backend) {
    let app = keyed().spawn(backend).await;
    let admin = app.admin_token().await;
    let token = user_token(&app, "ada").await;
    let old = kid_of(&token);
    assert_eq!(app.me_status(&token).await, StatusCode::OK);
    let res = revoke(&app, &admin, &old).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["state"], "revoked");
    assert_eq!(body["published"], false);
    // Every token it signed is refused, the admin's own included.
    assert_eq!(app.me_status(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.me_status(&admin).await, StatusCode::UNAUTHORIZED);
    assert!(!published_kids(&jwks(&app).await).contains(&old));
    // A new key signs at once, without waiting for a lead.
    let fresh = user_token(&app, "ada").await;
    assert_ne!(kid_of(&fresh), old);
    assert_eq!(app.me_status(&fresh).await, StatusCode::OK);
    assert_eq!(published_kids(&jwks(&app).await), [kid_of(&fresh)]);
    // Revoking it again changes nothing; an unknown key is 404.
    let admin = app.admin_token().await;
    assert_eq!(revoke(&app, &admin, &old).await.status(), StatusCode::OK);
    let res = revoke(&app, &admin, "no-such-key").await;
    problem(res, StatusCode::NOT_FOUND).await;
    let res = revoke(&app, &admin, "bad%20kid").await;
    problem(res, StatusCode::NOT_FOUND).await;
    // A revoked standby key stops being published but nothing else changes.
    let standby = rotate(&app, &admin).await["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        revoke(&app, &admin, &standby).await.status(),
        StatusCode::OK
    );
    assert_eq!(published_kids(&jwks(&app).await), [kid_of(&fresh)]);
    assert_eq!(app.me_status(&fresh).await, StatusCode::OK);
    let res = app.get("/admin/audit?type=key_revoked", Some(&admin)).await;
    let events: Value = res.json().await.unwrap();
    let details: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(details, [standby.as_str(), old.as_str(), old.as_str()]);
}

/// Waits (on the wall clock) until `check` holds, up to `within`.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_second_instance_sees_rotations_and_revocations_within_seconds(backend: Backend) {
    let a = keyed().spawn(backend).await;
    let b = keyed().spawn_on(TestDb::attach(a.db())).await;
    assert_eq!(jwks(&a).await, jwks(&b).await, "one key for both");
    let token = user_token(&a, "ada").await;
    assert_eq!(b.me_status(&token).await, StatusCode::OK);
    let admin = a.admin_token().await;
    let new = rotate(&a, &admin).await["kid"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(5), async || {
            published_kids(&jwks(&b).await).contains(&new)
        })
        .await,
        "b publishes the new key"
    );
    // Revoked on one, refused on the other within seconds, though b has
    // verified that token before.
    let old = kid_of(&token);
    assert_eq!(revoke(&a, &admin, &old).await.status(), StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), async || {
            b.me_status(&token).await == StatusCode::UNAUTHORIZED
        })
        .await,
        "b refuses the revoked key's tokens"
    );
    let replacement = kid_of(&user_token(&b, "ada").await);
    assert!(![old.as_str(), new.as_str()].contains(&replacement.as_str()));
    // The rotated key still signs after its lead, on either instance.
    for app in [&a, &b] {
        app.advance(LEAD);
    }
    let from_b = user_token(&b, "ada").await;
    assert_eq!(kid_of(&from_b), new);
    assert_eq!(a.me_status(&from_b).await, StatusCode::OK);
}

async fn scheduled_rotation_adds_one_key_however_many_instances_are_due(backend: Backend) {
    let a = keyed().arg("--key-rotation", "7d").spawn(backend).await;
    let b = keyed()
        .arg("--key-rotation", "7d")
        .spawn_on(TestDb::attach(a.db()))
        .await;
    let keys = [&a.state.services.keys, &b.state.services.keys];
    assert_eq!(keys[0].rotate_if_due().await.unwrap(), None, "not due yet");
    for app in [&a, &b] {
        app.advance(Duration::from_secs(7 * 86_400));
    }
    let (ra, rb) = tokio::join!(keys[0].rotate_if_due(), keys[1].rotate_if_due());
    let added: Vec<String> = [ra.unwrap(), rb.unwrap()].into_iter().flatten().collect();
    // An instance's own maintenance task may have been first (it runs as
    // the instance starts, and a loaded machine may run it only after the
    // clocks moved): then neither call adds one. Never both.
    assert!(added.len() <= 1, "{added:?}");
    keys[0].reload().await.unwrap();
    let list = keys_list(&a, &a.admin_token().await).await;
    assert_eq!(list.len(), 2, "one key added in all: {list:?}");
    let standby: Vec<&Value> = list.iter().filter(|k| k["state"] == "standby").collect();
    assert_eq!(standby.len(), 1, "{list:?}");
    if let Some(kid) = added.first() {
        assert_eq!(state_of(&list, kid), "standby");
    }
    assert_eq!(keys[1].rotate_if_due().await.unwrap(), None);
}

async fn sealed_keys_are_stored_sealed_and_do_not_open_without_the_key(backend: Backend) {
    const KEK: &str = "q0Lr9D9bZs7W1uJ2vV5m8Xo3kN6pT4cA0hE2fG1iJ3k=";
    let app = keyed()
        .arg("--key-encryption-key", KEK)
        .spawn(backend)
        .await;
    let token = user_token(&app, "ada").await;
    let stored = app.store().await.signing_keys().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].sealed);
    // Not a PKCS#8 structure (which starts with a DER SEQUENCE, 0x30).
    assert_ne!(stored[0].secret[0], 0x30);
    let list = keys_list(&app, &app.admin_token().await).await;
    assert_eq!(list[0]["sealed"], true);
    // Without the key, or with another, the service does not start.
    let (db, _) = app.stop().await;
    for args in [
        vec![],
        vec![
            "--key-encryption-key",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ],
    ] {
        let mut argv = vec!["authgate", "--database-url", db.url.as_str()];
        argv.extend(args);
        let err = start_fails(&argv).await;
        assert!(err.contains("AUTHGATE_KEY_ENCRYPTION_KEY"), "{err}");
    }
    // With it, the same key verifies the old token.
    let again = keyed().arg("--key-encryption-key", KEK).spawn_on(db).await;
    assert_eq!(again.me_status(&token).await, StatusCode::OK);
}

/// The error of a server that does not start with these arguments.
async fn start_fails(argv: &[&str]) -> String {
    use clap::Parser;
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        config: authgate::config::Config,
    }
    let mut argv: Vec<&str> = argv.to_vec();
    argv.extend(["--listen", "127.0.0.1:0"]);
    let config = Args::try_parse_from(&argv).unwrap().config;
    match authgate::app::Application::build(config).await {
        Ok(_) => panic!("the server started"),
        Err(e) => format!("{e:#}"),
    }
}

async fn changing_the_algorithm_publishes_a_key_of_the_new_one_ahead(backend: Backend) {
    let app = keyed().spawn(backend).await;
    let token = user_token(&app, "ada").await;
    let (db, _) = app.stop().await;
    let app = keyed().arg("--jwt-alg", "ES256").spawn_on(db).await;
    let keys = jwks(&app).await;
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, ["EdDSA", "ES256"]);
    // The Ed25519 key signs until the new one's lead has passed.
    assert_eq!(app.me_status(&token).await, StatusCode::OK);
    assert_eq!(header_of(&user_token(&app, "ada").await)["alg"], "EdDSA");
    app.advance(LEAD);
    assert_eq!(header_of(&user_token(&app, "ada").await)["alg"], "ES256");
    // A restart with the same setting adds nothing more.
    let app = app.restart().await;
    assert_eq!(jwks(&app).await.len(), 2);
}

async fn key_routes_are_for_admins_and_refuse_configured_keys(backend: Backend) {
    let app = keyed().spawn(backend).await;
    let user = user_token(&app, "ada").await;
    for (method, path) in [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys/rotate"),
        ("POST", "/admin/keys/anything/revoke"),
    ] {
        let req = |token: Option<&str>| {
            let req = app.client.request(method.parse().unwrap(), app.url(path));
            match token {
                Some(t) => req.bearer_auth(t),
                None => req,
            }
        };
        let res = req(None).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let res = req(Some(&user)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let configured = TestApp::builder().with_admin().spawn(backend).await;
    let admin = configured.admin_token().await;
    let res = configured
        .client
        .post(configured.url("/admin/keys/rotate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let body = problem(res, StatusCode::CONFLICT).await;
    assert_eq!(body["code"], "keys_configured");
    let list = keys_list(&configured, &admin).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["algorithm"], "HS256");
    assert_eq!(list[0]["published"], false);
}

async fn a_pair_given_again_after_a_revocation_is_signed_by_the_new_key(backend: Backend) {
    let app = keyed().spawn(backend).await;
    app.create_user("tabs").await;
    let first = app.tokens("tabs").await;
    let res = app.refresh(&first.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let second: Value = res.json().await.unwrap();
    let admin = app.admin_token().await;
    let old = kid_of(second["access_token"].as_str().unwrap());
    assert_eq!(revoke(&app, &admin, &old).await.status(), StatusCode::OK);
    // The other tab, moments later: the same refresh token, and an access
    // token the new key signed.
    let res = app.refresh(&first.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["refresh_token"], second["refresh_token"]);
    let access = again["access_token"].as_str().unwrap();
    assert_ne!(kid_of(access), old);
    assert_eq!(app.me_status(access).await, StatusCode::OK);
}

async fn a_key_an_instance_cannot_open_holds_back_no_revocation(backend: Backend) {
    const KEK: &str = "q0Lr9D9bZs7W1uJ2vV5m8Xo3kN6pT4cA0hE2fG1iJ3k=";
    let plain = keyed().spawn(backend).await;
    let sealing = keyed()
        .arg("--key-encryption-key", KEK)
        .spawn_on(TestDb::attach(plain.db()))
        .await;
    let token = user_token(&plain, "ada").await;
    let admin = sealing.admin_token().await;
    // A key sealed under a key the first instance lacks...
    let sealed = rotate(&sealing, &admin).await["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        eventually(Duration::from_secs(5), async || {
            published_kids(&jwks(&plain).await).contains(&sealed)
        })
        .await,
        "still published by the instance that cannot open it"
    );
    // ...does not stop a revocation from reaching it.
    assert_eq!(
        revoke(&sealing, &admin, &kid_of(&token)).await.status(),
        StatusCode::OK
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            plain.me_status(&token).await == StatusCode::UNAUTHORIZED
        })
        .await
    );
    // It verifies what the key it cannot open signed, with the public key.
    let fresh = user_token(&sealing, "ada").await;
    assert_ne!(kid_of(&fresh), kid_of(&token));
    assert_eq!(plain.me_status(&fresh).await, StatusCode::OK);
}

async fn no_more_than_three_keys_wait_on_standby(backend: Backend) {
    let app = keyed().spawn(backend).await;
    let admin = app.admin_token().await;
    // Racing rotations still stop at three.
    let rotations = (0..5).map(|_| {
        app.client
            .post(app.url("/admin/keys/rotate"))
            .bearer_auth(&admin)
            .send()
    });
    let mut statuses: Vec<u16> = futures::future::join_all(rotations)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 409, 409]);
    let res = app
        .client
        .post(app.url("/admin/keys/rotate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(res, StatusCode::CONFLICT).await["code"],
        "too_many_keys"
    );
    assert_eq!(jwks(&app).await.len(), 4);
    // Once they sign (the newest of them), there is room again.
    app.advance(LEAD);
    rotate(&app, &app.admin_token().await).await;
}
