//! The audit log seen from outside: which acts write which events, with
//! whom, from where and in which request; the admins' listing with its
//! filters and paging; no event for a change that did not happen; one event
//! for a flood of throttled requests; and the retention.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, TestAppBuilder, Tokens, error_fields, problem},
    on_both_databases,
};

on_both_databases!(
    an_accounts_life_writes_its_events_with_who_where_and_which_request,
    a_failed_login_names_the_account_it_was_aimed_at,
    an_admins_acts_name_the_admin_and_what_changed,
    logout_and_refresh_name_the_user_as_the_actor,
    the_log_filters_by_user_type_and_time_and_pages_newest_first,
    bad_filters_are_422,
    a_change_that_did_not_happen_writes_no_event,
    a_flood_of_throttled_requests_writes_one_event_a_minute,
    events_older_than_the_retention_are_purged,
    the_audit_log_is_for_admins_only,
);

const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "a long admin passphrase";
const NEW_PASSWORD: &str = "an entirely different passphrase";
const USER_AGENT: &str = "audit-probe/2.1 (tests)";
const LOCALHOST: &str = "127.0.0.1";

fn with_admin(builder: TestAppBuilder) -> TestAppBuilder {
    builder
        .arg("--admin-email", ADMIN_EMAIL)
        .arg("--admin-password", ADMIN_PASSWORD)
}

async fn spawn_with_admin(backend: Backend) -> TestApp {
    with_admin(TestApp::builder())
        .arg("--signup-per-minute", "1000")
        .spawn(backend)
        .await
}

async fn admin_tokens(app: &TestApp) -> Tokens {
    let res = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK, "admin login");
    Tokens::from(res.json::<Value>().await.unwrap())
}

async fn admin_token(app: &TestApp) -> String {
    admin_tokens(app).await.access
}

/// The id of the user a token belongs to.
async fn me_id(app: &TestApp, token: &str) -> String {
    let res = app.get("/users/me", Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Who an event must name as its actor.
#[derive(Clone, Copy)]
enum Actor {
    /// The user the event concerns.
    User,
    /// The admin.
    Admin,
    /// Nobody: the act was not authenticated.
    Nobody,
    /// Not checked here.
    Unchecked,
}

/// A request with this test's `User-Agent` and the request id `request_id`.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    request_id: &str,
) -> reqwest::Response {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("user-agent", USER_AGENT)
        .header("x-request-id", request_id);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request sent")
}

/// A page of `/admin/audit`, checking the 200.
async fn audit_page(app: &TestApp, token: &str, query: &str) -> Value {
    let res = app.get(&format!("/admin/audit?{query}"), Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK, "/admin/audit?{query}");
    res.json().await.unwrap()
}

/// The events of one page (the log of a test fits in one of 200).
async fn events(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let sep = if query.is_empty() { "" } else { "&" };
    let page = audit_page(app, token, &format!("limit=200{sep}{query}")).await;
    assert!(page["next_cursor"].is_null(), "more than one page: {query}");
    page["events"].as_array().expect("events").clone()
}

/// Events of `kind`, from `list`.
fn of_type<'a>(list: &'a [Value], kind: &str) -> Vec<&'a Value> {
    list.iter().filter(|e| e["type"] == kind).collect()
}

/// The events of `list` written in request `request_id`.
fn by_request<'a>(list: &'a [Value], request_id: &str) -> Vec<&'a Value> {
    list.iter()
        .filter(|e| e["request_id"] == request_id)
        .collect()
}

async fn patch_user(
    app: &TestApp,
    token: &str,
    id: &str,
    body: Value,
    request_id: &str,
) -> reqwest::Response {
    send(
        app,
        Method::PATCH,
        &format!("/admin/users/{id}"),
        Some(token),
        Some(body),
        request_id,
    )
    .await
}

fn login_body(name: &str, password: &str) -> Value {
    json!({"username": name, "password": password})
}

fn time_of(event: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        event["occurred_at"].as_str().expect("occurred_at"),
        &Rfc3339,
    )
    .expect("an RFC 3339 time")
}

async fn an_accounts_life_writes_its_events_with_who_where_and_which_request(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_tokens(&app).await;
    let admin_id = me_id(&app, &admin.access).await;
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        NEW_PASSWORD.into(),
        ADMIN_PASSWORD.into(),
        admin.access.clone(),
        admin.refresh.clone(),
    ];
    fn tokens(t: &Tokens, secrets: &mut Vec<String>) {
        secrets.push(t.access.clone());
        secrets.push(t.refresh.clone());
    }

    let body = json!({"username": "quinn", "email": "quinn@example.com", "password": PASSWORD});
    let res = send(
        &app,
        Method::POST,
        "/auth/signup",
        None,
        Some(body),
        "rq-signup",
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = app
        .mail
        .wait_for("quinn@example.com", Duration::from_secs(10))
        .await;
    secrets.push(mail.link_token().expect("a verification link"));

    let login = |rid: &'static str| {
        send(
            &app,
            Method::POST,
            "/auth/login",
            None,
            Some(login_body("quinn", PASSWORD)),
            rid,
        )
    };
    let res = login("rq-login-1").await;
    assert_eq!(res.status(), StatusCode::OK);
    let first = Tokens::from(res.json::<Value>().await.unwrap());
    tokens(&first, &mut secrets);

    let res = send(
        &app,
        Method::POST,
        "/auth/login",
        None,
        Some(login_body("quinn", "not the password at all")),
        "rq-login-wrong",
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let refresh = json!({"refresh_token": first.refresh});
    let res = send(
        &app,
        Method::POST,
        "/auth/refresh",
        None,
        Some(refresh.clone()),
        "rq-refresh",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    tokens(
        &Tokens::from(res.json::<Value>().await.unwrap()),
        &mut secrets,
    );
    // The used token again, after the grace window: a reuse, which ends
    // the session.
    app.advance(Duration::from_secs(11));
    let res = send(
        &app,
        Method::POST,
        "/auth/refresh",
        None,
        Some(refresh),
        "rq-reuse",
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let res = login("rq-login-2").await;
    assert_eq!(res.status(), StatusCode::OK);
    let second = Tokens::from(res.json::<Value>().await.unwrap());
    tokens(&second, &mut secrets);
    let res = send(
        &app,
        Method::POST,
        "/auth/logout",
        None,
        Some(json!({"refresh_token": second.refresh})),
        "rq-logout",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let res = login("rq-login-3").await;
    assert_eq!(res.status(), StatusCode::OK);
    let third = Tokens::from(res.json::<Value>().await.unwrap());
    tokens(&third, &mut secrets);
    let res = send(
        &app,
        Method::POST,
        "/users/me/password",
        Some(&third.access),
        Some(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD})),
        "rq-password",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let res = patch_user(
        &app,
        &admin.access,
        &id,
        json!({"roles": ["admin", "user"]}),
        "rq-roles",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = patch_user(
        &app,
        &admin.access,
        &id,
        json!({"is_active": false}),
        "rq-disable",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(
        &app,
        Method::DELETE,
        &format!("/admin/users/{id}"),
        Some(&admin.access),
        None,
        "rq-delete",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // The user's events, after the user is gone.
    let own = events(&app, &admin.access, &format!("user_id={id}")).await;
    let all = events(&app, &admin.access, "").await;
    // (request id, type, outcome, who acted).
    let expected = [
        ("rq-signup", "signup", "success", Actor::User),
        ("rq-login-1", "login", "success", Actor::User),
        ("rq-login-wrong", "login", "failure", Actor::Nobody),
        ("rq-refresh", "refresh", "success", Actor::Unchecked),
        (
            "rq-reuse",
            "refresh_token_reuse",
            "failure",
            Actor::Unchecked,
        ),
        ("rq-login-2", "login", "success", Actor::User),
        ("rq-logout", "logout", "success", Actor::Unchecked),
        ("rq-login-3", "login", "success", Actor::User),
        ("rq-password", "password_changed", "success", Actor::User),
        ("rq-roles", "roles_changed", "success", Actor::Admin),
        ("rq-disable", "user_disabled", "success", Actor::Admin),
        ("rq-delete", "user_deleted", "success", Actor::Admin),
    ];
    for (rid, kind, outcome, actor) in expected {
        let found = by_request(&own, rid);
        assert_eq!(found.len(), 1, "one event of {rid}: {own:#?}");
        let event = found[0];
        assert_eq!(event["type"], kind, "{event:#}");
        assert_eq!(event["outcome"], outcome, "{event:#}");
        assert_eq!(event["user_id"], id.as_str(), "{event:#}");
        assert_eq!(event["ip"], LOCALHOST, "{event:#}");
        assert_eq!(event["user_agent"], USER_AGENT, "{event:#}");
        match actor {
            Actor::User => assert_eq!(event["actor_id"], id.as_str(), "{event:#}"),
            Actor::Admin => assert_eq!(event["actor_id"], admin_id.as_str(), "{event:#}"),
            Actor::Nobody => assert!(event["actor_id"].is_null(), "{event:#}"),
            // See `logout_and_refresh_name_the_user_as_the_actor`.
            Actor::Unchecked => assert_ne!(event["actor_id"], admin_id.as_str(), "{event:#}"),
        }
    }
    // Nothing else concerns the user, and every event names its request.
    assert_eq!(own.len(), expected.len(), "{own:#?}");
    assert!(own.iter().all(|e| e["request_id"].is_string()), "{own:#?}");
    // Newest first.
    let order: Vec<&str> = own
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = expected.iter().rev().map(|(rid, ..)| *rid).collect();
    assert_eq!(order, newest_first);

    // Sessions are named where there is one.
    for rid in [
        "rq-login-1",
        "rq-refresh",
        "rq-reuse",
        "rq-logout",
        "rq-password",
    ] {
        let event = by_request(&own, rid)[0];
        assert!(event["session_id"].is_string(), "{event:#}");
    }
    assert_eq!(
        by_request(&own, "rq-refresh")[0]["session_id"],
        by_request(&own, "rq-login-1")[0]["session_id"],
        "a refresh continues the login's session"
    );
    assert_eq!(
        by_request(&own, "rq-reuse")[0]["session_id"],
        by_request(&own, "rq-login-1")[0]["session_id"],
        "the reuse names the session it ended"
    );
    assert_eq!(
        by_request(&own, "rq-password")[0]["session_id"],
        by_request(&own, "rq-login-3")[0]["session_id"],
        "the password was changed in the third session"
    );
    let roles = by_request(&own, "rq-roles")[0];
    let detail = roles["detail"]
        .as_str()
        .expect("roles_changed says what changed");
    assert!(detail.contains("admin"), "{roles:#}");
    // The whole log has the same events of the user.
    let in_all: Vec<&Value> = all.iter().filter(|e| e["user_id"] == id.as_str()).collect();
    assert_eq!(in_all.len(), own.len());

    // A request without an id gets one, and its events carry it.
    let res = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let generated = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!generated.is_empty());
    tokens(
        &Tokens::from(res.json::<Value>().await.unwrap()),
        &mut secrets,
    );
    let admin_logins = events(
        &app,
        &admin.access,
        &format!("user_id={admin_id}&type=login"),
    )
    .await;
    assert_eq!(
        admin_logins[0]["request_id"], generated,
        "the newest admin login: {admin_logins:#?}"
    );
    assert!(
        admin_logins[0]["user_agent"].is_null(),
        "no User-Agent was sent"
    );

    // No secret in any field of any event.
    let all = events(&app, &admin.access, "").await;
    let text = serde_json::to_string(&all).unwrap();
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "the log shows {secret:?}");
    }
    for event in &all {
        let fields: HashSet<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let allowed: HashSet<&str> = [
            "id",
            "occurred_at",
            "type",
            "outcome",
            "actor_id",
            "user_id",
            "session_id",
            "ip",
            "user_agent",
            "request_id",
            "detail",
        ]
        .into_iter()
        .collect();
        assert!(fields.is_subset(&allowed), "{event:#}");
    }
}

/// An admin asking for the events of an account sees the failed logins
/// aimed at it.
async fn a_failed_login_names_the_account_it_was_aimed_at(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let user = app.create_user("rhea").await;
    let id = user["id"].as_str().unwrap();
    let res = send(
        &app,
        Method::POST,
        "/auth/login",
        None,
        Some(login_body("rhea", "a wrong guess here")),
        "rq-guess",
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let all = events(&app, &admin, "type=login").await;
    let guess = by_request(&all, "rq-guess");
    assert_eq!(guess.len(), 1, "{all:#?}");
    assert_eq!(guess[0]["outcome"], "failure");
    assert_eq!(
        guess[0]["user_id"], id,
        "a failed login at an existing account names it: {:#}",
        guess[0]
    );
    let own = events(&app, &admin, &format!("user_id={id}&type=login")).await;
    assert_eq!(own.len(), 1, "{own:#?}");
}

async fn an_admins_acts_name_the_admin_and_what_changed(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let admin_id = me_id(&app, &admin).await;
    let res = send(
        &app,
        Method::POST,
        "/admin/users",
        Some(&admin),
        Some(json!({"username": "vince", "email": "vince@example.com", "password": PASSWORD})),
        "rq-create",
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.tokens("vince").await;
    let steps = [
        ("rq-verify", json!({"email_verified": true})),
        ("rq-off", json!({"is_active": false})),
        ("rq-on", json!({"is_active": true})),
        (
            "rq-both",
            json!({"roles": ["user", "staff"], "email_verified": false}),
        ),
    ];
    for (rid, body) in &steps {
        let res = patch_user(&app, &admin, &id, body.clone(), rid).await;
        assert_eq!(res.status(), StatusCode::OK, "{body}");
    }
    app.tokens("vince").await;
    let res = send(
        &app,
        Method::DELETE,
        &format!("/admin/users/{id}/sessions"),
        Some(&admin),
        None,
        "rq-sessions",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let own = events(&app, &admin, &format!("user_id={id}")).await;
    let one = |rid: &str, kind: &str| -> Value {
        let found: Vec<&Value> = by_request(&own, rid)
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect();
        assert_eq!(found.len(), 1, "{rid} {kind}: {own:#?}");
        let event = found[0].clone();
        assert_eq!(event["actor_id"], admin_id.as_str(), "{event:#}");
        assert_eq!(event["user_id"], id.as_str(), "{event:#}");
        assert_eq!(event["outcome"], "success", "{event:#}");
        assert_eq!(event["user_agent"], USER_AGENT, "{event:#}");
        event
    };
    one("rq-create", "user_created");
    let verified = one("rq-verify", "email_verified");
    assert!(verified["detail"].is_string(), "{verified:#}");
    one("rq-off", "user_disabled");
    one("rq-on", "user_enabled");
    let roles = one("rq-both", "roles_changed");
    assert!(
        roles["detail"].as_str().unwrap().contains("staff"),
        "{roles:#}"
    );
    let cleared = one("rq-both", "email_verified");
    assert_ne!(cleared["detail"], verified["detail"], "set, then cleared");
    assert_eq!(by_request(&own, "rq-both").len(), 2, "{own:#?}");
    one("rq-sessions", "session_ended");
    for rid in ["rq-create", "rq-verify", "rq-off", "rq-on", "rq-sessions"] {
        assert_eq!(by_request(&own, rid).len(), 1, "{rid}: {own:#?}");
    }
}

/// Logging out and refreshing are the user's own acts, as much as logging
/// out everywhere is.
async fn logout_and_refresh_name_the_user_as_the_actor(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let user = app.create_user("sven").await;
    let id = user["id"].as_str().unwrap();
    let tokens = app.tokens("sven").await;
    let res = send(
        &app,
        Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": tokens.refresh})),
        "rq-refresh",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let next = Tokens::from(res.json::<Value>().await.unwrap());
    let res = send(
        &app,
        Method::POST,
        "/auth/logout",
        None,
        Some(json!({"refresh_token": next.refresh})),
        "rq-logout",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let other = app.tokens("sven").await;
    let res = send(
        &app,
        Method::POST,
        "/auth/logout-all",
        Some(&other.access),
        None,
        "rq-logout-all",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let own = events(&app, &admin, &format!("user_id={id}")).await;
    let everywhere = by_request(&own, "rq-logout-all");
    assert_eq!(everywhere.len(), 1, "{own:#?}");
    assert_eq!(everywhere[0]["type"], "logout_all");
    assert_eq!(everywhere[0]["actor_id"], id);
    for rid in ["rq-refresh", "rq-logout"] {
        let event = by_request(&own, rid);
        assert_eq!(event.len(), 1, "{own:#?}");
        assert_eq!(
            event[0]["actor_id"], id,
            "the user acted, with their own token: {:#}",
            event[0]
        );
    }
}

async fn the_log_filters_by_user_type_and_time_and_pages_newest_first(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_tokens(&app).await;
    let tess = app.create_user("tess").await;
    let uma = app.create_user("uma").await;
    app.tokens("tess").await;
    app.tokens("uma").await;
    let before: Vec<Value> = events(&app, &admin.access, "").await;
    let latest_before = before.iter().map(time_of).max().unwrap();

    app.advance(Duration::from_secs(3600));
    let admin = admin_token(&app).await;
    app.create_user("vera").await;
    app.tokens("tess").await;
    app.tokens("vera").await;
    let all = events(&app, &admin, "").await;
    assert!(all.len() >= before.len() + 4, "{all:#?}");

    // Newest first: ids and times never go up.
    for pair in all.windows(2) {
        assert!(
            time_of(&pair[0]) >= time_of(&pair[1]),
            "newest first: {:#} then {:#}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(all[0]["type"], "login", "the newest event is vera's login");

    // By type.
    let signups = events(&app, &admin, "type=signup").await;
    assert_eq!(signups.len(), 3, "{signups:#?}");
    assert!(signups.iter().all(|e| e["type"] == "signup"));
    let logins = events(&app, &admin, "type=login").await;
    assert_eq!(
        logins.len(),
        of_type(&all, "login").len(),
        "every login and only logins"
    );

    // By user, and by user and type.
    let tess_id = tess["id"].as_str().unwrap();
    let of_tess = events(&app, &admin, &format!("user_id={tess_id}")).await;
    assert_eq!(of_tess.len(), 3, "signup and two logins: {of_tess:#?}");
    assert!(of_tess.iter().all(|e| e["user_id"] == tess_id));
    let tess_logins = events(&app, &admin, &format!("user_id={tess_id}&type=login")).await;
    assert_eq!(tess_logins.len(), 2);
    let uma_id = uma["id"].as_str().unwrap();
    let uma_signup = events(&app, &admin, &format!("user_id={uma_id}&type=signup")).await;
    assert_eq!(uma_signup.len(), 1);

    // By time: only what happened after the jump, whatever the offset.
    let cut = latest_before + time::Duration::minutes(30);
    let later: Vec<Value> = all.iter().filter(|e| time_of(e) >= cut).cloned().collect();
    assert!(later.len() >= 4, "{later:#?}");
    for offset in [UtcOffset::UTC, UtcOffset::from_hms(2, 0, 0).unwrap()] {
        let since = cut.to_offset(offset).format(&Rfc3339).unwrap();
        let since = since.replace('+', "%2B");
        let found = events(&app, &admin, &format!("since={since}")).await;
        assert_eq!(found, later, "since={since}");
    }
    let since = (latest_before - time::Duration::days(1))
        .format(&Rfc3339)
        .unwrap()
        .replace('+', "%2B");
    assert_eq!(events(&app, &admin, &format!("since={since}")).await, all);
    // `since` is inclusive.
    let oldest_later = later.last().unwrap();
    let exact = oldest_later["occurred_at"]
        .as_str()
        .unwrap()
        .replace('+', "%2B");
    let found = events(&app, &admin, &format!("since={exact}")).await;
    assert!(found.contains(oldest_later), "since={exact}");

    // Paging: two at a time, every event once, in the same order.
    let mut paged: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let page = audit_page(&app, &admin, &query).await;
        let got = page["events"].as_array().unwrap();
        assert!(!got.is_empty() && got.len() <= 2, "{page:#}");
        paged.extend(got.iter().cloned());
        assert!(paged.len() <= all.len(), "paging does not end");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    // The admin's own requests since `all` was read may have added events
    // only at the newest end: none did (listing writes nothing).
    assert_eq!(paged, all);
    let ids: HashSet<&str> = paged.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), paged.len(), "no event twice");

    // Paging with a filter stays within it.
    let page = audit_page(&app, &admin, "type=login&limit=1").await;
    let next = page["next_cursor"].as_str().expect("more logins");
    let page2 = audit_page(&app, &admin, &format!("type=login&limit=1&cursor={next}")).await;
    assert_eq!(page2["events"][0], logins[1]);
}

async fn bad_filters_are_422(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    for (query, field) in [
        ("user_id=nobody", "user_id"),
        ("user_id=12345", "user_id"),
        ("type=bogus", "type"),
        ("type=LOGIN", "type"),
        ("since=yesterday", "since"),
        ("since=2024-01-01", "since"),
        ("since=2024-13-01T00:00:00Z", "since"),
        // Year 10000 in UTC: beyond what the databases store.
        ("since=9999-12-31T23:59:59-23:59", "since"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("cursor=%21%21", "cursor"),
    ] {
        let res = app
            .get(&format!("/admin/audit?{query}"), Some(&admin))
            .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&body), [field], "{query}: {body:#}");
    }
    let res = app
        .get("/admin/audit?user_id=x&type=y&since=z", Some(&admin))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let mut fields = error_fields(&body);
    fields.sort();
    assert_eq!(fields, ["since", "type", "user_id"], "{body:#}");
    // An empty type is no filter; an empty id or time is no id or time.
    let res = app.get("/admin/audit?type=&cursor=", Some(&admin)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .get("/admin/audit?user_id=&since=&limit=", Some(&admin))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let mut fields = error_fields(&body);
    fields.sort();
    assert_eq!(fields, ["limit", "since", "user_id"], "{body:#}");
}

async fn a_change_that_did_not_happen_writes_no_event(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_tokens(&app).await;
    let admin_id = me_id(&app, &admin.access).await;
    let wren = app.create_user("wren").await;
    let wren_id = wren["id"].as_str().unwrap();
    let before = events(&app, &admin.access, "").await;

    // Taken username, taken email: 409, and nobody new signed up.
    for body in [
        json!({"username": "wren", "email": "other@example.com", "password": PASSWORD}),
        json!({"username": "other", "email": "wren@example.com", "password": PASSWORD}),
        json!({"username": "WREN", "password": PASSWORD}),
    ] {
        let res = app.signup(body.clone()).await;
        assert_eq!(res.status(), StatusCode::CONFLICT, "{body}");
    }
    let signups = events(&app, &admin.access, "type=signup").await;
    assert_eq!(signups.len(), 1, "{signups:#?}");
    assert_eq!(signups[0]["user_id"], wren_id);

    // The last admin cannot step down, be disabled or deleted.
    for body in [json!({"roles": ["user"]}), json!({"is_active": false})] {
        let res = patch_user(&app, &admin.access, &admin_id, body.clone(), "rq-demote").await;
        assert_eq!(
            problem(res, StatusCode::CONFLICT).await["code"],
            "last_admin",
            "{body}"
        );
    }
    let res = send(
        &app,
        Method::DELETE,
        &format!("/admin/users/{admin_id}"),
        Some(&admin.access),
        None,
        "rq-delete",
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    // A change to nothing is no change.
    let res = patch_user(
        &app,
        &admin.access,
        wren_id,
        json!({"roles": ["user"], "is_active": true}),
        "rq-nothing",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // A wrong current password changes nothing: no password_changed, but a
    // failed confirmation, which is a failed login of the user.
    let tokens = app.tokens("wren").await;
    let res = send(
        &app,
        Method::POST,
        "/users/me/password",
        Some(&tokens.access),
        Some(json!({"current_password": "not my password!", "new_password": NEW_PASSWORD})),
        "rq-password",
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.login("wren", PASSWORD).await.status(), StatusCode::OK);

    let after = events(&app, &admin.access, "").await;
    for kind in [
        "roles_changed",
        "user_disabled",
        "user_enabled",
        "user_deleted",
        "password_changed",
    ] {
        assert!(of_type(&after, kind).is_empty(), "{kind}: {after:#?}");
    }
    for rid in ["rq-demote", "rq-delete", "rq-nothing"] {
        assert!(by_request(&after, rid).is_empty(), "{rid}: {after:#?}");
    }
    let confirmation = by_request(&after, "rq-password");
    assert_eq!(confirmation.len(), 1, "{after:#?}");
    let event = confirmation[0];
    assert_eq!(event["type"], "login", "{event:#}");
    assert_eq!(event["outcome"], "failure", "{event:#}");
    assert_eq!(event["detail"], "password confirmation", "{event:#}");
    assert_eq!(event["user_id"], wren_id, "{event:#}");
    assert_eq!(event["actor_id"], wren_id, "{event:#}");
    assert_eq!(event["user_agent"], USER_AGENT, "{event:#}");

    // Besides that failure, only the two logins of wren were added.
    let new: Vec<&Value> = after.iter().filter(|e| !before.contains(e)).collect();
    let kinds: Vec<(&str, &str)> = new
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("login", "success"),
            ("login", "failure"),
            ("login", "success")
        ],
        "{new:#?}"
    );
}

async fn a_flood_of_throttled_requests_writes_one_event_a_minute(backend: Backend) {
    let app = with_admin(TestApp::builder())
        .arg("--signup-per-minute", "2")
        .spawn(backend)
        .await;
    app.stop_clock();
    let admin = admin_token(&app).await;
    let signup = |name: String| {
        let app = &app;
        async move {
            send(
                app,
                Method::POST,
                "/auth/signup",
                None,
                Some(json!({"username": name, "password": PASSWORD})),
                "rq-flood",
            )
            .await
            .status()
        }
    };
    assert_eq!(signup("xena1".into()).await, StatusCode::CREATED);
    assert_eq!(signup("xena2".into()).await, StatusCode::CREATED);
    assert_eq!(signup("xena3".into()).await, StatusCode::TOO_MANY_REQUESTS);
    let throttled = events(&app, &admin, "type=throttled").await;
    assert_eq!(throttled.len(), 1, "{throttled:#?}");
    let event = &throttled[0];
    assert_eq!(event["outcome"], "failure", "{event:#}");
    assert_eq!(event["ip"], LOCALHOST, "{event:#}");
    assert_eq!(event["user_agent"], USER_AGENT, "{event:#}");
    assert_eq!(event["request_id"], "rq-flood", "{event:#}");
    assert!(
        event["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("signup"),
        "what was throttled: {event:#}"
    );

    let flood = (0..20).map(|i| signup(format!("flood{i}")));
    let statuses = futures::future::join_all(flood).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let throttled = events(&app, &admin, "type=throttled").await;
    assert_eq!(
        throttled.len(),
        1,
        "one event for the flood: {throttled:#?}"
    );

    // A minute later, a new throttling is recorded again.
    app.advance(Duration::from_secs(61));
    let admin = admin_token(&app).await;
    let statuses = [
        signup("yara1".into()).await,
        signup("yara2".into()).await,
        signup("yara3".into()).await,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let throttled = events(&app, &admin, "type=throttled").await;
    assert_eq!(throttled.len(), 2, "{throttled:#?}");
}

async fn events_older_than_the_retention_are_purged(backend: Backend) {
    let app = with_admin(TestApp::builder())
        .arg("--audit-retention", "1d")
        .arg("--purge-interval", "100ms")
        .spawn(backend)
        .await;
    let admin = admin_token(&app).await;
    let zoe = app.create_user("zoe").await;
    let zoe_id = zoe["id"].as_str().unwrap().to_owned();
    app.tokens("zoe").await;
    let old = events(&app, &admin, "").await;
    assert!(old.len() >= 4, "{old:#?}");

    // Within the retention, nothing goes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(events(&app, &admin, "").await, old);

    app.advance(Duration::from_secs(2 * 24 * 3600));
    let admin = admin_token(&app).await;
    let res = send(
        &app,
        Method::POST,
        "/auth/login",
        None,
        Some(login_body("zoe", PASSWORD)),
        "rq-fresh",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let old_ids: HashSet<Value> = old.iter().map(|e| e["id"].clone()).collect();
    let left = loop {
        let now = events(&app, &admin, "").await;
        if now.iter().all(|e| !old_ids.contains(&e["id"])) {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old events still listed: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let fresh = by_request(&left, "rq-fresh");
    assert_eq!(fresh.len(), 1, "the fresh event remains: {left:#?}");
    assert_eq!(fresh[0]["user_id"], zoe_id.as_str());
    // Still there a little later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let of_zoe = events(&app, &admin, &format!("user_id={zoe_id}")).await;
    assert_eq!(of_zoe.len(), 1, "{of_zoe:#?}");
    assert_eq!(of_zoe[0]["request_id"], "rq-fresh");
}

async fn the_audit_log_is_for_admins_only(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    app.create_user("yuri").await;
    let user = app.tokens("yuri").await.access;
    let res = app.get("/admin/audit", Some(&user)).await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "forbidden"
    );
    let res = app.get("/admin/audit", None).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
    let res = app.get("/admin/audit", Some("not-a-token")).await;
    problem(res, StatusCode::UNAUTHORIZED).await;
    let admin = admin_token(&app).await;
    let page = audit_page(&app, &admin, "").await;
    // The refusals above were logins and lookups, not changes: the log
    // holds the admin's creation, yuri's signup and both logins.
    let kinds: HashMap<String, usize> =
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut counts, e| {
                *counts
                    .entry(e["type"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                counts
            });
    assert_eq!(kinds.get("user_created"), Some(&1), "{kinds:?}");
    assert_eq!(kinds.get("signup"), Some(&1), "{kinds:?}");
    assert_eq!(kinds.get("login"), Some(&2), "{kinds:?}");
}
