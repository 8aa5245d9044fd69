//! The OAuth provider's token endpoint for registered clients.

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    clients::register_client,
    common::Backend,
    helpers::{TestApp, claims_of, header_of},
    on_both_databases,
};

on_both_databases!(
    a_confidential_client_gets_a_token_for_itself_with_basic_or_form_credentials,
    client_tokens_carry_only_the_clients_own_scopes,
    wrong_client_credentials_are_one_answer_and_back_off,
    a_public_or_deleted_client_gets_no_token_for_itself,
    malformed_token_requests_are_rfc_6749_errors,
);

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

async fn token_request(
    app: &TestApp,
    authorization: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app.client.post(app.url("/oauth/token")).form(form);
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    req.send().await.unwrap()
}

async fn oauth_error(res: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    body["error"].as_str().unwrap().to_owned()
}

/// A confidential client allowed `scopes`: its id and secret.
async fn machine(app: &TestApp, scopes: &[&str]) -> (String, String) {
    let created = register_client(app, json!({"name": "Reports job", "scopes": scopes})).await;
    (
        created["client_id"].as_str().unwrap().to_owned(),
        created["client_secret"].as_str().unwrap().to_owned(),
    )
}

async fn a_confidential_client_gets_a_token_for_itself_with_basic_or_form_credentials(
    backend: Backend,
) {
    let app = TestApp::builder_with_generated_key()
        .with_admin()
        .spawn(backend)
        .await;
    let (id, secret) = machine(&app, &["reports:read"]).await;
    let form = [("grant_type", "client_credentials")];
    let res = token_request(&app, Some(&basic(&id, &secret)), &form).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "reports:read");
    assert_eq!(body["expires_in"], 900);
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(header_of(token)["typ"], "at+jwt");
    let claims = claims_of(token);
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["scope"], "reports:read");
    assert_eq!(claims["aud"], "authgate");
    assert!(claims.get("sid").is_none(), "{claims}");

    // The token verifies with the published keys, as a resource server would.
    let keys: Value = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    let jwk = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header_of(token)["kid"])
        .unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["authgate"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();

    // It is no user's token: user routes refuse it.
    assert_eq!(app.me_status(token).await, StatusCode::UNAUTHORIZED);
    // A resource server may introspect it: live while the client is.
    let admin = app.admin_token().await;
    let introspected: Value = app
        .client
        .post(app.url("/auth/introspect"))
        .bearer_auth(&admin)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["client_id"], id.as_str());
    assert_eq!(introspected["scope"], "reports:read");

    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    let res = token_request(&app, None, &form).await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn client_tokens_carry_only_the_clients_own_scopes(backend: Backend) {
    let app = TestApp::builder_with_generated_key()
        .with_admin()
        .spawn(backend)
        .await;
    let (id, secret) = machine(&app, &["reports:read", "reports:write", "openid", "email"]).await;
    let auth = basic(&id, &secret);
    let granted = |scope: Option<&'static str>| {
        let auth = auth.clone();
        let app = &app;
        async move {
            let mut form = vec![("grant_type", "client_credentials")];
            form.extend(scope.map(|s| ("scope", s)));
            token_request(app, Some(&auth), &form).await
        }
    };
    // Without `scope`: every scope of its own, none about a user.
    let body: Value = granted(None).await.json().await.unwrap();
    assert_eq!(body["scope"], "reports:read reports:write");
    let body: Value = granted(Some("reports:read")).await.json().await.unwrap();
    assert_eq!(body["scope"], "reports:read");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["scope"],
        "reports:read"
    );
    for beyond in [
        "reports:delete",
        "openid",
        "reports:read email",
        "bad\"scope",
    ] {
        let res = granted(Some(beyond)).await;
        assert_eq!(
            oauth_error(res, StatusCode::BAD_REQUEST).await,
            "invalid_scope",
            "{beyond}"
        );
    }
}

async fn wrong_client_credentials_are_one_answer_and_back_off(backend: Backend) {
    let app = TestApp::builder_with_generated_key()
        .with_admin()
        .spawn(backend)
        .await;
    let (id, secret) = machine(&app, &["reports:read"]).await;
    let form = [("grant_type", "client_credentials")];
    let mut bodies = Vec::new();
    for auth in [
        basic(&id, "wrong"),
        basic("AAAAAAAAAAAAAAAAAAAAAA", &secret),
        basic(&id, &secret[1..]),
    ] {
        let res = token_request(&app, Some(&auth), &form).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(
            res.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        bodies.push(res.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    // Ten wrong secrets from one address, then it waits, even for the right one.
    for _ in 0..7 {
        let res = token_request(&app, Some(&basic(&id, "guess")), &form).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = token_request(&app, Some(&basic(&id, "guess")), &form).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let res = token_request(&app, Some(&basic(&id, &secret)), &form).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

async fn a_public_or_deleted_client_gets_no_token_for_itself(backend: Backend) {
    let app = TestApp::builder_with_generated_key()
        .with_admin()
        .spawn(backend)
        .await;
    let public = register_client(
        &app,
        json!({"name": "SPA", "public": true, "redirect_uris": ["https://spa.example.com/cb"]}),
    )
    .await;
    let public_id = public["client_id"].as_str().unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", public_id),
    ];
    let res = token_request(&app, None, &form).await;
    assert_eq!(
        oauth_error(res, StatusCode::UNAUTHORIZED).await,
        "invalid_client"
    );

    let (id, secret) = machine(&app, &["reports:read"]).await;
    let admin = app.admin_token().await;
    let res = app
        .client
        .delete(app.url(&format!("/admin/clients/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = token_request(
        &app,
        Some(&basic(&id, &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(
        oauth_error(res, StatusCode::UNAUTHORIZED).await,
        "invalid_client"
    );
}

async fn malformed_token_requests_are_rfc_6749_errors(backend: Backend) {
    let app = TestApp::builder_with_generated_key()
        .with_admin()
        .spawn(backend)
        .await;
    let (id, secret) = machine(&app, &["reports:read"]).await;
    let auth = basic(&id, &secret);
    let res = token_request(&app, Some(&auth), &[("grant_type", "password")]).await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "unsupported_grant_type"
    );
    let res = token_request(&app, Some(&auth), &[]).await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
    // Two ways of authenticating at once.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_secret", secret.as_str()),
    ];
    let res = token_request(&app, Some(&auth), &form).await;
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .header("authorization", &auth)
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(
        oauth_error(res, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
}
