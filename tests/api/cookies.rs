//! Browser sessions: the refresh token in an HttpOnly cookie, the Origin
//! allow-list, the double-submit CSRF token, and CORS.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, TestAppBuilder, problem},
    on_both_databases,
};

on_both_databases!(
    a_cookie_login_keeps_the_refresh_token_out_of_the_body_and_out_of_scripts,
    cookies_are_secure_unless_the_service_is_reached_at_localhost,
    a_cookie_refresh_needs_an_allowed_origin_and_the_csrf_token,
    a_cookie_logout_ends_the_session_and_deletes_the_cookies,
    a_cookie_login_from_another_origin_is_refused,
    the_token_endpoint_speaks_cookies_too,
    a_refused_cookie_refresh_deletes_the_dead_cookies,
    cors_is_off_by_default_and_credentials_go_only_to_listed_origins,
);

const OWN: &str = "http://127.0.0.1:8010";
const APP: &str = "https://app.example.com";

async fn with_user(builder: TestAppBuilder, backend: Backend) -> TestApp {
    let app = builder.spawn(backend).await;
    app.create_user("ada").await;
    app
}

/// The `Set-Cookie` headers of a response.
fn set_cookies(res: &Response) -> Vec<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn cookie<'a>(set: &'a [String], name: &str) -> &'a str {
    set.iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {set:?}"))
}

/// `name=value` of a `Set-Cookie` line.
fn pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

/// The browser's side of a cookie session: its cookies and CSRF token.
struct Browser {
    cookies: String,
    csrf: String,
}

impl Browser {
    fn from(set: &[String]) -> Self {
        let refresh = pair(cookie(set, "authgate_refresh"));
        let csrf = pair(cookie(set, "authgate_csrf"));
        Browser {
            cookies: format!("{refresh}; {csrf}"),
            csrf: csrf.split_once('=').unwrap().1.to_owned(),
        }
    }
}

async fn cookie_login(app: &TestApp, origin: &str) -> Response {
    app.client
        .post(app.url("/auth/login?transport=cookie"))
        .header("origin", origin)
        .json(&json!({"username": "ada", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

async fn logged_in(app: &TestApp, origin: &str) -> (Browser, Value) {
    let res = cookie_login(app, origin).await;
    assert_eq!(res.status(), StatusCode::OK);
    let browser = Browser::from(&set_cookies(&res));
    (browser, res.json().await.unwrap())
}

/// A cookie request to `path`, with what a page would send.
async fn with_cookie(
    app: &TestApp,
    path: &str,
    browser: &Browser,
    origin: Option<&str>,
    csrf: Option<&str>,
) -> Response {
    let mut req = app
        .client
        .post(app.url(path))
        .header("cookie", &browser.cookies)
        .json(&json!({}));
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    if let Some(csrf) = csrf {
        req = req.header("x-csrf-token", csrf);
    }
    req.send().await.unwrap()
}

async fn a_cookie_login_keeps_the_refresh_token_out_of_the_body_and_out_of_scripts(
    backend: Backend,
) {
    let app = with_user(TestApp::builder(), backend).await;
    let res = cookie_login(&app, OWN).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let set = set_cookies(&res);
    let refresh = cookie(&set, "authgate_refresh");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/auth", "Max-Age="] {
        assert!(refresh.contains(attribute), "{attribute}: {refresh}");
    }
    let csrf = cookie(&set, "authgate_csrf");
    assert!(!csrf.contains("HttpOnly"), "scripts read it: {csrf}");
    assert!(csrf.contains("SameSite=Strict"), "{csrf}");
    let body: Value = res.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(
        body["csrf_token"].as_str().unwrap(),
        Browser::from(&set).csrf
    );
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(app.me_status(access).await, StatusCode::OK);
    // The default transport is unchanged.
    let plain = app.tokens("ada").await;
    assert!(plain.body["refresh_token"].is_string());
    assert!(plain.body.get("csrf_token").is_none());
}

async fn cookies_are_secure_unless_the_service_is_reached_at_localhost(backend: Backend) {
    let local = with_user(TestApp::builder(), backend).await;
    let res = cookie_login(&local, OWN).await;
    for c in set_cookies(&res) {
        assert!(!c.contains("Secure"), "{c}");
    }
    let public = with_user(
        TestApp::builder().arg("--public-url", "https://auth.example.com"),
        backend,
    )
    .await;
    let res = cookie_login(&public, "https://auth.example.com").await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = set_cookies(&res);
    assert_eq!(set.len(), 2);
    for c in set {
        assert!(c.contains("; Secure"), "{c}");
    }
}

async fn a_cookie_refresh_needs_an_allowed_origin_and_the_csrf_token(backend: Backend) {
    let app = with_user(TestApp::builder(), backend).await;
    let (browser, _) = logged_in(&app, OWN).await;
    let refused = [
        (None, Some(browser.csrf.as_str())),
        (Some("https://evil.example"), Some(browser.csrf.as_str())),
        (Some(OWN), None),
        (Some(OWN), Some("a-planted-token")),
    ];
    for (origin, csrf) in refused {
        let res = with_cookie(&app, "/auth/refresh", &browser, origin, csrf).await;
        let body = problem(res, StatusCode::FORBIDDEN).await;
        assert_eq!(body["code"], "cross_site_request", "{origin:?} {csrf:?}");
    }
    // None of those used the token: the right request still refreshes.
    let res = with_cookie(
        &app,
        "/auth/refresh",
        &browser,
        Some(OWN),
        Some(&browser.csrf),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let next = Browser::from(&set_cookies(&res));
    assert_ne!(next.cookies, browser.cookies);
    let body: Value = res.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    assert_eq!(body["csrf_token"].as_str().unwrap(), next.csrf);
    assert_eq!(
        app.me_status(body["access_token"].as_str().unwrap()).await,
        StatusCode::OK
    );
    // The new cookies chain on; a body token still works without any.
    let res = with_cookie(&app, "/auth/refresh", &next, Some(OWN), Some(&next.csrf)).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Neither a body token nor a cookie: no credential at all.
    let res = app.post_json("/auth/refresh", &json!({})).await;
    let body = problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "missing_refresh_token");
}

async fn a_cookie_logout_ends_the_session_and_deletes_the_cookies(backend: Backend) {
    let app = with_user(TestApp::builder(), backend).await;
    let (browser, body) = logged_in(&app, OWN).await;
    let access = body["access_token"].as_str().unwrap().to_owned();
    let res = with_cookie(&app, "/auth/logout", &browser, Some(OWN), None).await;
    problem(res, StatusCode::FORBIDDEN).await;
    let res = with_cookie(
        &app,
        "/auth/logout",
        &browser,
        Some(OWN),
        Some(&browser.csrf),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let set = set_cookies(&res);
    assert!(cookie(&set, "authgate_refresh").contains("Max-Age=0"));
    assert!(cookie(&set, "authgate_csrf").contains("Max-Age=0"));
    app.assert_refused_within(&access, std::time::Duration::from_secs(1))
        .await;
    let res = with_cookie(
        &app,
        "/auth/refresh",
        &browser,
        Some(OWN),
        Some(&browser.csrf),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn a_cookie_login_from_another_origin_is_refused(backend: Backend) {
    let app = with_user(TestApp::builder().arg("--allowed-origins", APP), backend).await;
    // Listing origins replaces the default (the service's own).
    for origin in [OWN, "https://evil.example", "null"] {
        let res = cookie_login(&app, origin).await;
        let body = problem(res, StatusCode::FORBIDDEN).await;
        assert_eq!(body["code"], "cross_site_request", "{origin}");
    }
    let res = cookie_login(&app, APP).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .client
        .post(app.url("/auth/login?transport=carrier-pigeon"))
        .json(&json!({"username": "ada", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
}

async fn the_token_endpoint_speaks_cookies_too(backend: Backend) {
    let app = with_user(TestApp::builder(), backend).await;
    let res = app
        .client
        .post(app.url("/auth/token?transport=cookie"))
        .header("origin", OWN)
        .form(&[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let browser = Browser::from(&set_cookies(&res));
    let body: Value = res.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    let res = app
        .client
        .post(app.url("/auth/token"))
        .header("origin", OWN)
        .header("cookie", &browser.cookies)
        .header("x-csrf-token", &browser.csrf)
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookies(&res).len(), 2);
    // Without the CSRF token: refused.
    let res = app
        .client
        .post(app.url("/auth/token"))
        .header("origin", OWN)
        .header("cookie", &browser.cookies)
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

async fn a_refused_cookie_refresh_deletes_the_dead_cookies(backend: Backend) {
    let app = with_user(
        TestApp::builder().arg("--refresh-reuse-grace", "0s"),
        backend,
    )
    .await;
    let (browser, _) = logged_in(&app, OWN).await;
    let res = with_cookie(
        &app,
        "/auth/refresh",
        &browser,
        Some(OWN),
        Some(&browser.csrf),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The old cookie again (a stale copy): reuse, and the cookies go.
    let res = with_cookie(
        &app,
        "/auth/refresh",
        &browser,
        Some(OWN),
        Some(&browser.csrf),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let set = set_cookies(&res);
    assert!(cookie(&set, "authgate_refresh").contains("Max-Age=0"));
}

async fn preflight(app: &TestApp, origin: &str) -> Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/auth/refresh"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, x-csrf-token",
        )
        .send()
        .await
        .unwrap()
}

async fn cors_is_off_by_default_and_credentials_go_only_to_listed_origins(backend: Backend) {
    let off = TestApp::builder().spawn(backend).await;
    let res = preflight(&off, APP).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let on = with_user(TestApp::builder().arg("--cors-origins", APP), backend).await;
    let res = preflight(&on, APP).await;
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(res.headers()["access-control-allow-origin"], APP);
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-csrf-token"), "{allowed}");
    let res = preflight(&on, "https://evil.example").await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    // A simple request from the listed origin gets the header too.
    let res = on
        .client
        .get(on.url("/healthz"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], APP);
}
