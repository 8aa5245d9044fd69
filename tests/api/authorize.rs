//! The authorization code flow through the hosted pages, as a browser and
//! a client application walk it: login, the second step, consent, the code
//! and its exchange, and every refusal on the way.

use std::{collections::HashMap, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    clients::register_client,
    common::Backend,
    helpers::{PASSWORD, TestApp, claims_of, header_of},
    mfa::user_with_app,
    on_both_databases,
};

on_both_databases!(
    the_code_flow_logs_in_asks_consent_and_gives_verifiable_tokens,
    consent_is_remembered_and_a_first_party_client_never_asks,
    deny_sends_access_denied_back_with_the_state,
    pkce_is_required_and_a_wrong_verifier_uses_the_code_up,
    a_replayed_code_fails_and_ends_what_its_first_exchange_opened,
    an_unknown_client_or_redirect_uri_is_a_page_never_a_redirect,
    a_code_lives_a_minute_and_only_for_its_client_and_redirect_uri,
    the_second_step_is_part_of_the_flow,
    a_public_client_exchanges_its_code_with_pkce_alone,
    forms_without_their_csrf_token_are_refused,
    offline_access_gives_a_refresh_token_that_rotates_for_its_client_only,
    a_grant_is_listed_and_taken_back_with_the_clients_sessions,
    rp_initiated_logout_ends_the_browser_and_client_sessions,
    logout_without_a_hint_asks_first_and_never_redirects_elsewhere,
    the_pages_show_the_configured_logo_and_allow_only_its_origin,
);

pub const REDIRECT: &str = "https://app.example.com/callback";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A browser: its cookies, and no automatic redirects.
pub struct Browser<'a> {
    app: &'a TestApp,
    pub http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

/// A page or a redirect.
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub csp: Option<String>,
    pub body: String,
}

impl Answer {
    /// The value of the form field `name` on the page.
    pub fn field(&self, name: &str) -> String {
        self.quoted(&format!("name=\"{name}\" value=\""))
    }

    /// The value of the first attribute `name` on the page.
    pub fn attribute(&self, name: &str) -> String {
        self.quoted(&format!(" {name}=\""))
    }

    /// The quoted text after `marker`, unescaped.
    fn quoted(&self, marker: &str) -> String {
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker} in {}", self.body))
            + marker.len();
        let end = start + self.body[start..].find('"').unwrap();
        self.body[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    /// The redirect's query parameters.
    pub fn params(&self) -> HashMap<String, String> {
        let location = self.location.as_deref().expect("a redirect");
        url::Url::parse(location)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

impl<'a> Browser<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn answer(&mut self, res: reqwest::Response) -> Answer {
        for set in res.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Answer {
            status: res.status(),
            location: res
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_owned()),
            csp: res
                .headers()
                .get(header::CONTENT_SECURITY_POLICY)
                .map(|v| v.to_str().unwrap().to_owned()),
            body: res.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path_and_query: &str) -> Answer {
        let res = self
            .http
            .get(self.app.url(path_and_query))
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.answer(res).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let res = self
            .http
            .post(self.app.url(path))
            .header(header::COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.answer(res).await
    }

    /// Fills in and posts the login form of `page`.
    pub async fn sign_in(&mut self, page: &Answer, login: &str, password: &str) -> Answer {
        let (csrf, return_to) = (page.field("csrf"), page.field("return_to"));
        self.post(
            "/oauth/login",
            &[
                ("csrf", &csrf),
                ("return_to", &return_to),
                ("login", login),
                ("password", password),
            ],
        )
        .await
    }

    /// Posts the consent page's form with `decision`.
    pub async fn decide(&mut self, page: &Answer, decision: &str) -> Answer {
        let names = [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "csrf",
        ];
        let values: Vec<(String, String)> = names
            .iter()
            .filter(|n| page.body.contains(&format!("name=\"{n}\"")))
            .map(|n| (n.to_string(), page.field(n)))
            .collect();
        let mut form: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        form.push(("decision", decision));
        self.post("/oauth/consent", &form).await
    }
}

/// An authorization request's path and query.
pub fn authorize_path(client_id: &str, scope: &str, extra: &[(&str, &str)]) -> String {
    let challenge = challenge(VERIFIER);
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "xyz-state"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        params.retain(|(key, _)| key != k);
        if !v.is_empty() {
            params.push((k, v));
        }
    }
    format!(
        "/oauth/authorize?{}",
        serde_urlencoded::to_string(&params).unwrap()
    )
}

pub struct RegisteredClient {
    pub id: String,
    secret: Option<String>,
}

pub async fn register(app: &TestApp, extra: Value) -> RegisteredClient {
    let mut body = json!({"name": "Example App", "redirect_uris": [REDIRECT]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let created = register_client(app, body).await;
    RegisteredClient {
        id: created["client_id"].as_str().unwrap().to_owned(),
        secret: created["client_secret"].as_str().map(str::to_owned),
    }
}

/// `POST /oauth/token` with `form`, as `client` authenticates: its secret
/// by HTTP Basic, or a public client's id in the form.
async fn token_call(
    app: &TestApp,
    client: &RegisteredClient,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = form.to_vec();
    let mut req = app.client.post(app.url("/oauth/token"));
    match &client.secret {
        Some(secret) => req = req.basic_auth(&client.id, Some(secret)),
        None => form.push(("client_id", client.id.as_str())),
    }
    req.form(&form).send().await.unwrap()
}

pub async fn exchange(
    app: &TestApp,
    client: &RegisteredClient,
    code: &str,
    verifier: &str,
) -> reqwest::Response {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    token_call(app, client, &form).await
}

/// Walks a fresh browser through login and consent to the code.
async fn code_for(app: &TestApp, client: &RegisteredClient, user: &str, scope: &str) -> String {
    let mut browser = Browser::new(app);
    let login = browser.get(&authorize_path(&client.id, scope, &[])).await;
    assert_eq!(login.status, StatusCode::OK);
    let back = browser.sign_in(&login, user, PASSWORD).await;
    let page = browser.get(back.location.as_deref().unwrap()).await;
    let answer = if page.status == StatusCode::OK {
        browser.decide(&page, "allow").await
    } else {
        page
    };
    answer.params()["code"].clone()
}

async fn jwks_verify(app: &TestApp, token: &str, audience: &str) -> Value {
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
    let alg: jsonwebtoken::Algorithm = jwk["alg"].as_str().unwrap().parse().unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[claims_of(token)["iss"].as_str().unwrap()]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

/// Waits up to four seconds for `/oauth/userinfo` to refuse `token` (an
/// ended session is refused everywhere within a second or so).
async fn userinfo_refused_within(app: &TestApp, token: &str, why: &str) {
    let mut status = StatusCode::OK;
    for _ in 0..40 {
        status = userinfo(app, token).await.status();
        if status == StatusCode::UNAUTHORIZED {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}");
}

async fn userinfo(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn spawn() -> crate::helpers::TestAppBuilder {
    TestApp::builder_with_generated_key().with_admin()
}

async fn the_code_flow_logs_in_asks_consent_and_gives_verifiable_tokens(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({"name": "Billing <App>"})).await;
    let mut browser = Browser::new(&app);

    let login = browser
        .get(&authorize_path(&client.id, "openid email profile", &[]))
        .await;
    assert_eq!(login.status, StatusCode::OK);
    for text in [
        "Username or email",
        "Password",
        "Sign in",
        "Billing &lt;App&gt;",
    ] {
        assert!(login.body.contains(text), "{text} in {}", login.body);
    }
    let csp = login.csp.clone().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        csp.contains("form-action 'self' https://app.example.com"),
        "{csp}"
    );
    // One script, the passkeys', from this origin; nothing inline.
    assert_eq!(login.body.matches("<script").count(), 1, "{}", login.body);
    assert!(
        login.body.contains("<script src=\"/oauth/passkeys.js?v=")
            && login.body.contains("\" defer></script>"),
        "{}",
        login.body
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");

    let wrong = browser.sign_in(&login, "ada", "not the password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong username, email or password."));
    let back = browser.sign_in(&wrong, "ada", PASSWORD).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    assert!(browser.cookies.contains_key("authgate_sso"));

    let consent = browser.get(back.location.as_deref().unwrap()).await;
    assert_eq!(consent.status, StatusCode::OK);
    for text in [
        "Allow",
        "Deny",
        "See your email address",
        "Signed in as ada",
    ] {
        assert!(consent.body.contains(text), "{text} in {}", consent.body);
    }
    let answer = browser.decide(&consent, "allow").await;
    assert_eq!(answer.status, StatusCode::FOUND);
    assert!(answer.location.as_deref().unwrap().starts_with(REDIRECT));
    let params = answer.params();
    assert_eq!(params["state"], "xyz-state");
    assert_eq!(
        params["iss"],
        claims_of(&app.tokens("ada").await.access)["iss"]
    );

    let res = exchange(&app, &client, &params["code"], VERIFIER).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "email openid profile");
    let id = jwks_verify(&app, tokens["id_token"].as_str().unwrap(), &client.id).await;
    assert_eq!(
        header_of(tokens["id_token"].as_str().unwrap())["typ"],
        "JWT"
    );
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["email"], "ada@example.com");
    assert_eq!(id["email_verified"], false);
    assert_eq!(id["preferred_username"], "ada");
    assert_eq!(id["amr"], json!(["pwd"]));
    assert_eq!(id["acr"], "aal1");
    assert!(id["auth_time"].as_i64().unwrap() <= id["iat"].as_i64().unwrap());

    let access = tokens["access_token"].as_str().unwrap();
    let claims = claims_of(access);
    assert_eq!(claims["client_id"], client.id.as_str());
    assert_eq!(claims["scope"], "email openid profile");
    assert_eq!(claims["sub"], id["sub"]);
    let res = userinfo(&app, access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["sub"], id["sub"]);
    assert_eq!(info["email"], "ada@example.com");
    // The user's roles are nothing the client was allowed to learn.
    assert_eq!(claims["roles"], json!([]));
    // The token is the client's, for what it was allowed: not the account's.
    assert_eq!(app.me_status(access).await, StatusCode::UNAUTHORIZED);
    // And the user's own token is no client's: userinfo refuses it.
    let own = app.tokens("ada").await.access;
    assert_eq!(userinfo(&app, &own).await.status(), StatusCode::FORBIDDEN);
    // Whoever holds the client's token may give it up (RFC 7009).
    let res = app.post_form("/auth/revoke", &[("token", access)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    userinfo_refused_within(&app, access, "revoked").await;
}

async fn consent_is_remembered_and_a_first_party_client_never_asks(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let third = register(&app, json!({})).await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(&third.id, "openid email", &[]))
        .await;
    let back = browser.sign_in(&login, "ada", PASSWORD).await;
    let consent = browser.get(back.location.as_deref().unwrap()).await;
    assert!(consent.body.contains("Allow"));
    browser.decide(&consent, "allow").await;

    // The same scopes, or fewer: straight back with a code.
    for scope in ["openid email", "openid"] {
        let again = browser.get(&authorize_path(&third.id, scope, &[])).await;
        assert_eq!(again.status, StatusCode::FOUND, "{scope}: {}", again.body);
        assert!(again.params().contains_key("code"));
    }
    // More than was allowed: asked again, for all of it.
    let more = browser
        .get(&authorize_path(&third.id, "openid email profile", &[]))
        .await;
    assert_eq!(more.status, StatusCode::OK);
    assert!(more.body.contains("See your username"));

    let first = register(&app, json!({"name": "Our own app", "first_party": true})).await;
    let own = browser
        .get(&authorize_path(&first.id, "openid email profile", &[]))
        .await;
    assert_eq!(own.status, StatusCode::FOUND, "{}", own.body);
    assert!(own.params().contains_key("code"));
}

async fn deny_sends_access_denied_back_with_the_state(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({})).await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    let back = browser.sign_in(&login, "ada", PASSWORD).await;
    let consent = browser.get(back.location.as_deref().unwrap()).await;
    let answer = browser.decide(&consent, "deny").await;
    assert_eq!(answer.status, StatusCode::FOUND);
    let params = answer.params();
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "xyz-state");
    assert!(!params.contains_key("code"));
    // Nothing was remembered: the next request asks again.
    let again = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.contains("Allow"));
}

async fn pkce_is_required_and_a_wrong_verifier_uses_the_code_up(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({})).await;
    let mut browser = Browser::new(&app);
    for (extra, error) in [
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (vec![("code_challenge_method", "")], "invalid_request"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("scope", "openid admin")], "invalid_scope"),
        (vec![("scope", " ")], "invalid_scope"),
    ] {
        let answer = browser
            .get(&authorize_path(&client.id, "openid", &extra))
            .await;
        assert_eq!(answer.status, StatusCode::FOUND, "{extra:?}");
        let params = answer.params();
        assert_eq!(params["error"], error, "{extra:?}");
        assert_eq!(params["state"], "xyz-state");
        assert!(params.contains_key("iss"));
    }

    let code = code_for(&app, &client, "ada", "openid").await;
    let wrong = "x".repeat(43);
    let res = exchange(&app, &client, &code, &wrong).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    let res = exchange(&app, &client, &code, VERIFIER).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "the code is used up");
    // No verifier at all is a malformed request.
    let code = code_for(&app, &client, "ada", "openid").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
    ];
    let res = token_call(&app, &client, &form).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

async fn a_replayed_code_fails_and_ends_what_its_first_exchange_opened(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({})).await;
    let code = code_for(&app, &client, "ada", "openid").await;
    let res = exchange(&app, &client, &code, VERIFIER).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(userinfo(&app, access).await.status(), StatusCode::OK);

    let res = exchange(&app, &client, &code, VERIFIER).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    userinfo_refused_within(&app, access, "the first exchange's token ends").await;
    let admin = app.admin_token().await;
    let audit: Value = app
        .client
        .get(app.url("/admin/audit?type=authorization_code_replay"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
}

async fn an_unknown_client_or_redirect_uri_is_a_page_never_a_redirect(backend: Backend) {
    let app = spawn().spawn(backend).await;
    let client = register(&app, json!({})).await;
    let mut browser = Browser::new(&app);
    for path in [
        authorize_path("AAAAAAAAAAAAAAAAAAAAAA", "openid", &[]),
        authorize_path(
            &client.id,
            "openid",
            &[("redirect_uri", "https://evil.example.com/cb")],
        ),
        authorize_path(
            &client.id,
            "openid",
            &[("redirect_uri", "https://app.example.com/callback/")],
        ),
        authorize_path(&client.id, "openid", &[("redirect_uri", "")]),
        authorize_path(&client.id, "openid", &[("client_id", "")]),
        "/oauth/authorize?client_id=%FF%FE".to_owned(),
    ] {
        let answer = browser.get(&path).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(answer.location.is_none(), "{path}");
        assert!(answer.body.contains("cannot be completed"), "{path}");
    }
}

async fn a_code_lives_a_minute_and_only_for_its_client_and_redirect_uri(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({})).await;
    let other = register(&app, json!({"name": "Other"})).await;
    let code = code_for(&app, &client, "ada", "openid").await;
    let res = exchange(&app, &other, &code, VERIFIER).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "another client's code");

    let code = code_for(&app, &client, "ada", "openid").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://app.example.com/other"),
        ("code_verifier", VERIFIER),
    ];
    let res = token_call(&app, &client, &form).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "another redirect_uri");

    // A logout everywhere after the code was issued ends the code too.
    let code = code_for(&app, &client, "ada", "openid").await;
    let own = app.tokens("ada").await.access;
    let res = app
        .client
        .post(app.url("/auth/logout-all"))
        .bearer_auth(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = exchange(&app, &client, &code, VERIFIER).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"], "invalid_grant",
        "the code's session has ended"
    );

    app.stop_clock();
    let code = code_for(&app, &client, "ada", "openid").await;
    app.advance(Duration::from_secs(61));
    let res = exchange(&app, &client, &code, VERIFIER).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "an expired code");
}

async fn the_second_step_is_part_of_the_flow(backend: Backend) {
    let app = spawn().spawn(backend).await;
    let (_, authenticator) = user_with_app(&app, "ada").await;
    let client = register(&app, json!({"first_party": true})).await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    let step = browser.sign_in(&login, "ada", PASSWORD).await;
    assert_eq!(step.status, StatusCode::OK);
    assert!(
        step.body.contains("Code") && step.body.contains("Verify"),
        "{}",
        step.body
    );
    assert!(
        !step.body.contains("Use a passkey") && !step.body.contains("passkeys.js"),
        "an app alone offers no passkey: {}",
        step.body
    );
    assert!(
        !browser.cookies.contains_key("authgate_sso"),
        "no session yet"
    );
    let form = |code: &str| {
        vec![
            ("csrf".to_owned(), step.field("csrf")),
            ("return_to".to_owned(), step.field("return_to")),
            ("mfa_token".to_owned(), step.field("mfa_token")),
            ("code".to_owned(), code.to_owned()),
        ]
    };
    let as_refs = |v: &Vec<(String, String)>| -> Vec<(String, String)> { v.clone() };
    let wrong = as_refs(&form("000000"));
    let wrong: Vec<(&str, &str)> = wrong
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let again = browser.post("/oauth/mfa", &wrong).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(again.body.contains("not right"));
    let right = form(&authenticator.code(&app));
    let right: Vec<(&str, &str)> = right
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let back = browser.post("/oauth/mfa", &right).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let answer = browser.get(back.location.as_deref().unwrap()).await;
    let code = answer.params()["code"].clone();
    let tokens: Value = exchange(&app, &client, &code, VERIFIER)
        .await
        .json()
        .await
        .unwrap();
    let id = claims_of(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["acr"], "aal2");
    assert_eq!(id["amr"], json!(["pwd", "otp", "mfa"]));
}

async fn a_public_client_exchanges_its_code_with_pkce_alone(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let spa = register(&app, json!({"public": true, "first_party": true})).await;
    assert!(spa.secret.is_none());
    let code = code_for(&app, &spa, "ada", "openid email").await;
    let res = exchange(&app, &spa, &code, VERIFIER).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    jwks_verify(&app, tokens["id_token"].as_str().unwrap(), &spa.id).await;
    // A confidential client cannot pass for a public one by leaving out its secret.
    let confidential = register(&app, json!({"first_party": true})).await;
    let code = code_for(&app, &confidential, "ada", "openid").await;
    let res = exchange(
        &app,
        &RegisteredClient {
            id: confidential.id.clone(),
            secret: None,
        },
        &code,
        VERIFIER,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn forms_without_their_csrf_token_are_refused(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({})).await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    let return_to = login.field("return_to");
    // Another site's form: it can neither read nor set the token.
    let mut stranger = Browser::new(&app);
    let forged = stranger
        .post(
            "/oauth/login",
            &[
                ("csrf", "A".repeat(43).as_str()),
                ("return_to", &return_to),
                ("login", "ada"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(!stranger.cookies.contains_key("authgate_sso"));
    // A wrong token beside the right cookie, or a foreign Origin, fails too;
    // so does another server on this machine (the service's public URL is
    // the default, http://127.0.0.1:8010).
    for origin in ["https://evil.example.com", "http://localhost:8011"] {
        let res = browser
            .http
            .post(app.url("/oauth/login"))
            .header(header::COOKIE, browser.cookie_header())
            .header(header::ORIGIN, origin)
            .form(&[
                ("csrf", login.field("csrf").as_str()),
                ("return_to", &return_to),
                ("login", "ada"),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origin}");
    }
    // A second cookie of the same name (planted for a narrower path or from
    // a sibling domain) makes both count for nothing.
    let planted = format!(
        "authgate_form={}; {}",
        "B".repeat(43),
        browser.cookie_header()
    );
    let res = browser
        .http
        .post(app.url("/oauth/login"))
        .header(header::COOKIE, planted)
        .form(&[
            ("csrf", "B".repeat(43).as_str()),
            ("return_to", &return_to),
            ("login", "ada"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // An empty token with an empty cookie is no token.
    let res = browser
        .http
        .post(app.url("/oauth/login"))
        .header(header::COOKIE, "authgate_form=")
        .form(&[
            ("csrf", ""),
            ("return_to", return_to.as_str()),
            ("login", "ada"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // A login may only go back to an authorization request.
    let elsewhere = browser
        .post(
            "/oauth/login",
            &[
                ("csrf", login.field("csrf").as_str()),
                ("return_to", "https://evil.example.com/"),
                ("login", "ada"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST);
    assert!(elsewhere.location.is_none());
}

async fn refresh_at(app: &TestApp, client: &RegisteredClient, token: &str) -> reqwest::Response {
    let form = [("grant_type", "refresh_token"), ("refresh_token", token)];
    token_call(app, client, &form).await
}

async fn offline_access_gives_a_refresh_token_that_rotates_for_its_client_only(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({"first_party": true})).await;
    let other = register(&app, json!({"first_party": true, "name": "Other"})).await;

    // Without offline_access: no refresh token.
    let code = code_for(&app, &client, "ada", "openid").await;
    let tokens: Value = exchange(&app, &client, &code, VERIFIER)
        .await
        .json()
        .await
        .unwrap();
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");

    let code = code_for(&app, &client, "ada", "openid offline_access").await;
    let tokens: Value = exchange(&app, &client, &code, VERIFIER)
        .await
        .json()
        .await
        .unwrap();
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();

    // Not the account's own refresh token, nor another client's.
    assert_eq!(app.refresh(&first).await.status(), StatusCode::UNAUTHORIZED);
    let res = refresh_at(&app, &other, &first).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");

    // Its own client rotates it, and the new pair speaks for the client.
    let res = refresh_at(&app, &client, &first).await;
    assert_eq!(res.status(), StatusCode::OK);
    let rotated: Value = res.json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap();
    assert_ne!(second, first);
    assert_eq!(rotated["scope"], "offline_access openid");
    let claims = claims_of(rotated["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], client.id.as_str());
    assert_eq!(claims["scope"], "offline_access openid");
    assert_eq!(
        app.me_status(rotated["access_token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh_at(&app, &client, second).await.status(),
        StatusCode::OK
    );

    // And the account's own refresh token is no client's.
    let own = app.tokens("ada").await.refresh;
    let res = refresh_at(&app, &client, &own).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.refresh(&own).await.status(), StatusCode::OK);
}

async fn a_grant_is_listed_and_taken_back_with_the_clients_sessions(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({"name": "Photo Printer"})).await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(
            &client.id,
            "openid email offline_access",
            &[],
        ))
        .await;
    let back = browser.sign_in(&login, "ada", PASSWORD).await;
    let consent = browser.get(back.location.as_deref().unwrap()).await;
    let code = browser.decide(&consent, "allow").await.params()["code"].clone();
    let tokens: Value = exchange(&app, &client, &code, VERIFIER)
        .await
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap();

    let own = app.tokens("ada").await.access;
    let listed: Value = app
        .get("/users/me/grants", Some(&own))
        .await
        .json()
        .await
        .unwrap();
    let grants = listed["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{listed}");
    assert_eq!(grants[0]["client_id"], client.id.as_str());
    assert_eq!(grants[0]["client_name"], "Photo Printer");
    assert_eq!(
        grants[0]["scopes"],
        json!(["email", "offline_access", "openid"])
    );
    // The client's own token cannot manage the account's grants.
    assert_eq!(
        app.get("/users/me/grants", Some(access)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let path = format!("/users/me/grants/{}", client.id);
    let delete = || async {
        app.client
            .delete(app.url(&path))
            .bearer_auth(&own)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(delete().await, StatusCode::NO_CONTENT);
    assert_eq!(delete().await, StatusCode::NOT_FOUND);
    userinfo_refused_within(&app, access, "the client's token ends").await;
    let res = refresh_at(&app, &client, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let listed: Value = app
        .get("/users/me/grants", Some(&own))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["grants"], json!([]));
    // Asked again next time.
    let again = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.contains("Allow"));
}

async fn rp_initiated_logout_ends_the_browser_and_client_sessions(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(
        &app,
        json!({"first_party": true, "post_logout_redirect_uris": ["https://app.example.com/bye"]}),
    )
    .await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    let back = browser.sign_in(&login, "ada", PASSWORD).await;
    let code = browser
        .get(back.location.as_deref().unwrap())
        .await
        .params()["code"]
        .clone();
    let tokens: Value = exchange(&app, &client, &code, VERIFIER)
        .await
        .json()
        .await
        .unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(claims_of(id_token)["sid"], claims_of(access)["sid"]);

    // Neither an access token nor a redirect the client did not register.
    for query in [
        format!("id_token_hint={access}"),
        format!(
            "id_token_hint={id_token}&post_logout_redirect_uri=https%3A%2F%2Fevil.example.com%2F"
        ),
        format!("id_token_hint={id_token}&client_id=AAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let refused = browser.get(&format!("/oauth/logout?{query}")).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(refused.location.is_none());
    }
    assert!(
        browser.cookies.contains_key("authgate_sso"),
        "still signed in"
    );

    let out = browser
        .get(&format!(
            "/oauth/logout?id_token_hint={id_token}\
             &post_logout_redirect_uri=https%3A%2F%2Fapp.example.com%2Fbye&state=s1"
        ))
        .await;
    assert_eq!(out.status, StatusCode::FOUND);
    assert_eq!(
        out.location.as_deref(),
        Some("https://app.example.com/bye?state=s1")
    );
    assert!(
        !browser.cookies.contains_key("authgate_sso"),
        "cookie cleared"
    );
    userinfo_refused_within(&app, access, "the client's session ended").await;
    // The browser must sign in again.
    let again = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    assert!(again.body.contains("Sign in"), "{}", again.body);
}

async fn logout_without_a_hint_asks_first_and_never_redirects_elsewhere(backend: Backend) {
    let app = spawn().spawn(backend).await;
    app.create_user("ada").await;
    let client = register(&app, json!({"first_party": true})).await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    let back = browser.sign_in(&login, "ada", PASSWORD).await;
    let sso = browser.cookies["authgate_sso"].clone();

    let ask = browser.get("/oauth/logout").await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(ask.body.contains("Sign out"));
    assert!(
        browser.cookies.contains_key("authgate_sso"),
        "a link alone signs nobody out"
    );
    let forged = Browser::new(&app)
        .post("/oauth/logout", &[("csrf", "A".repeat(43).as_str())])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let out = browser
        .post("/oauth/logout", &[("csrf", &ask.field("csrf"))])
        .await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.body.contains("You are signed out"));
    assert!(!browser.cookies.contains_key("authgate_sso"));
    // The old cookie opens nothing any more.
    browser.cookies.insert("authgate_sso".into(), sso);
    let again = browser.get(back.location.as_deref().unwrap()).await;
    assert!(again.body.contains("Sign in"), "{}", again.body);

    let elsewhere = browser
        .get(&format!(
            "/oauth/logout?client_id={}&post_logout_redirect_uri=https%3A%2F%2Fevil.example.com%2F",
            client.id
        ))
        .await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST);
    assert!(elsewhere.location.is_none());
}

async fn the_pages_show_the_configured_logo_and_allow_only_its_origin(backend: Backend) {
    let app = spawn()
        .arg("--pages-logo-url", "https://cdn.example.com/brand/logo.svg")
        .spawn(backend)
        .await;
    let client = register(&app, json!({})).await;
    let mut browser = Browser::new(&app);
    let login = browser
        .get(&authorize_path(&client.id, "openid", &[]))
        .await;
    assert!(
        login
            .body
            .contains(r#"<img class="logo" src="https://cdn.example.com/brand/logo.svg" alt="">"#),
        "{}",
        login.body
    );
    let csp = login.csp.unwrap();
    assert!(
        csp.contains("img-src 'self' https://cdn.example.com;"),
        "{csp}"
    );
    // Without the setting, no logo and images from this origin only.
    let plain = spawn().spawn(backend).await;
    let page = Browser::new(&plain).get("/account").await;
    assert!(!page.body.contains("<img"));
    assert!(page.csp.unwrap().contains("img-src 'self';"));
}
