use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, problem},
    on_both_databases,
};

on_both_databases!(
    a_user_without_the_admin_role_gets_403,
    the_configured_admin_lists_users_page_by_page,
    bad_limits_and_cursors_are_422,
    disabling_a_user_refuses_their_tokens_within_a_second_and_their_logins,
    changing_roles_takes_effect_at_the_next_login,
    the_configured_admin_is_created_once,
    the_last_active_admin_cannot_be_demoted_or_disabled,
    a_patch_that_changes_nothing_ends_no_session,
    a_user_has_at_most_32_roles,
    admins_search_users_by_name_prefix_role_and_state,
    admins_create_read_and_delete_users,
    admins_list_and_end_a_users_sessions,
    marking_an_email_verified_ends_no_session,
    the_last_active_admin_cannot_be_deleted,
    every_admin_route_is_403_for_a_non_admin,
);

const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "a long admin passphrase";

async fn spawn_with_admin(backend: Backend) -> TestApp {
    TestApp::builder()
        .arg("--admin-email", ADMIN_EMAIL)
        .arg("--admin-password", ADMIN_PASSWORD)
        .arg("--signup-per-minute", "1000")
        .spawn(backend)
        .await
}

async fn admin_token(app: &TestApp) -> String {
    let res = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn patch(app: &TestApp, token: &str, id: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn a_user_without_the_admin_role_gets_403(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    app.create_user("alice").await;
    let access = app.tokens("alice").await.access;
    let res = app.get("/admin/users", Some(&access)).await;
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "forbidden");
    assert_eq!(
        app.get("/admin/users", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let admin = admin_token(&app).await;
    assert_eq!(
        app.get("/admin/users", Some(&admin)).await.status(),
        StatusCode::OK
    );
}

async fn the_configured_admin_lists_users_page_by_page(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    for i in 0..5 {
        app.create_user(&format!("user{i}")).await;
    }
    let admin = admin_token(&app).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/users?limit=2&cursor={c}"),
            None => "/admin/users?limit=2".to_owned(),
        };
        let res = app.get(&path, Some(&admin)).await;
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.unwrap();
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        seen.extend(users.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 6, "five users and the admin");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        6,
        "no user twice"
    );
    let first: Value = app
        .get("/admin/users", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["users"][0]["email"], ADMIN_EMAIL, "oldest first");
    assert_eq!(first["users"][0]["roles"], json!(["admin", "user"]));
}

async fn bad_limits_and_cursors_are_422(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("cursor=%21%21", "cursor"),
        ("cursor=AAAA", "cursor"),
    ] {
        let res = app
            .get(&format!("/admin/users?{query}"), Some(&admin))
            .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
}

async fn disabling_a_user_refuses_their_tokens_within_a_second_and_their_logins(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let user = app.create_user("bob").await;
    let tokens = app.tokens("bob").await;
    assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);
    let admin = admin_token(&app).await;

    let res = patch(
        &app,
        &admin,
        user["id"].as_str().unwrap(),
        json!({"is_active": false}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["is_active"], false);
    app.assert_refused_within(&tokens.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&tokens.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let wrong = problem(
        app.login("bob", "not the password!").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let disabled = problem(app.login("bob", PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        wrong, disabled,
        "a disabled account looks like a wrong password"
    );

    let res = patch(
        &app,
        &admin,
        user["id"].as_str().unwrap(),
        json!({"is_active": true}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.login("bob", PASSWORD).await.status(), StatusCode::OK);
}

async fn changing_roles_takes_effect_at_the_next_login(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let user = app.create_user("carol").await;
    let before = app.tokens("carol").await;
    let admin = admin_token(&app).await;
    let id = user["id"].as_str().unwrap();

    let res = patch(&app, &admin, id, json!({"roles": ["user", "Not A Role"]})).await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let res = patch(
        &app,
        &admin,
        &uuid::Uuid::now_v7().to_string(),
        json!({"is_active": true}),
    )
    .await;
    problem(res, StatusCode::NOT_FOUND).await;

    let res = patch(&app, &admin, id, json!({"roles": ["admin", "user"]})).await;
    assert_eq!(
        res.json::<Value>().await.unwrap()["roles"],
        json!(["admin", "user"])
    );
    // Old tokens carry old roles, so they end with the change.
    app.assert_refused_within(&before.access, Duration::from_secs(1))
        .await;
    let after = app.tokens("carol").await;
    assert_eq!(
        app.get("/admin/users", Some(&after.access)).await.status(),
        StatusCode::OK
    );
}

async fn the_configured_admin_is_created_once(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let app = app.restart().await;
    let admin = admin_token(&app).await;
    let page: Value = app
        .get("/admin/users", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let admins = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["email"] == ADMIN_EMAIL)
        .count();
    assert_eq!(admins, 1);
}

/// The id of the user a token belongs to.
async fn me_id(app: &TestApp, token: &str) -> String {
    let me: Value = app
        .get("/users/me", Some(token))
        .await
        .json()
        .await
        .unwrap();
    me["id"].as_str().unwrap().to_owned()
}

async fn the_last_active_admin_cannot_be_demoted_or_disabled(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let admin_id = me_id(&app, &admin).await;
    for body in [json!({"roles": ["user"]}), json!({"is_active": false})] {
        let res = patch(&app, &admin, &admin_id, body.clone()).await;
        let problem = problem(res, StatusCode::CONFLICT).await;
        assert_eq!(problem["code"], "last_admin", "{body}");
    }
    // Nothing changed: the admin's own session and role survive the refusal.
    assert_eq!(
        app.get("/admin/users", Some(&admin)).await.status(),
        StatusCode::OK
    );
    // With a second admin, the first may step down.
    let carol = app.create_user("carol").await;
    let carol_id = carol["id"].as_str().unwrap();
    let res = patch(&app, &admin, carol_id, json!({"roles": ["admin", "user"]})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = patch(&app, &admin, &admin_id, json!({"roles": ["user"]})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let carol_admin = app.tokens("carol").await.access;
    let res = patch(&app, &carol_admin, carol_id, json!({"is_active": false})).await;
    assert_eq!(
        problem(res, StatusCode::CONFLICT).await["code"],
        "last_admin"
    );
}

async fn a_patch_that_changes_nothing_ends_no_session(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let admin_id = me_id(&app, &admin).await;
    let dave = app.create_user("dave").await;
    let dave_id = dave["id"].as_str().unwrap();
    let dave_tokens = app.tokens("dave").await;
    let nothing = [
        (dave_id, json!({})),
        (dave_id, json!({"roles": ["user"], "is_active": true})),
        (admin_id.as_str(), json!({"roles": ["user", "admin"]})),
        (admin_id.as_str(), json!({})),
    ];
    for (id, body) in nothing {
        let res = patch(&app, &admin, id, body.clone()).await;
        assert_eq!(res.status(), StatusCode::OK, "{body}");
    }
    // Past the liveness cache's window, the sessions are still live.
    app.advance(Duration::from_secs(1));
    assert_eq!(app.me_status(&admin).await, StatusCode::OK);
    assert_eq!(app.me_status(&dave_tokens.access).await, StatusCode::OK);
    assert_eq!(
        app.refresh(&dave_tokens.refresh).await.status(),
        StatusCode::OK
    );
}

async fn a_user_has_at_most_32_roles(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let eve = app.create_user("eve").await;
    let id = eve["id"].as_str().unwrap();
    let roles = |n: usize| (0..n).map(|i| format!("role{i}")).collect::<Vec<_>>();
    let res = patch(&app, &admin, id, json!({"roles": roles(33)})).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "roles");
    let res = patch(&app, &admin, id, json!({"roles": roles(32)})).await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

/// The usernames (or emails) of a listing.
async fn names(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let res = app.get(&format!("/admin/users?{query}"), Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK, "{query}");
    let page: Value = res.json().await.unwrap();
    page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            u["username"]
                .as_str()
                .or(u["email"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn admins_search_users_by_name_prefix_role_and_state(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    for name in ["alice", "alicia", "bob", "carol", "al_x"] {
        app.create_user(name).await;
    }
    let bob = app.get("/admin/users?q=bob", Some(&admin)).await;
    let bob_id = bob.json::<Value>().await.unwrap()["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = patch(&app, &admin, &bob_id, json!({"roles": ["user", "admin"]})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let carol = app.get("/admin/users?q=carol", Some(&admin)).await;
    let carol_id = carol.json::<Value>().await.unwrap()["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = patch(&app, &admin, &carol_id, json!({"is_active": false})).await;
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(names(&app, &admin, "q=ali").await, ["alice", "alicia"]);
    assert_eq!(names(&app, &admin, "q=ALI").await, ["alice", "alicia"]);
    assert_eq!(names(&app, &admin, "q=carol%40example").await, ["carol"]);
    // Wildcards are taken literally.
    assert_eq!(names(&app, &admin, "q=al_").await, ["al_x"]);
    assert!(names(&app, &admin, "q=%25").await.is_empty());
    assert_eq!(
        names(&app, &admin, "role=admin").await,
        [ADMIN_EMAIL.to_owned(), "bob".to_owned()]
    );
    assert_eq!(names(&app, &admin, "is_active=false").await, ["carol"]);
    // Any other role, its `_` taken literally too.
    let alice = app.get("/admin/users?q=alice", Some(&admin)).await;
    let alice_id = alice.json::<Value>().await.unwrap()["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = patch(&app, &admin, &alice_id, json!({"roles": ["user", "ops_1"]})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(names(&app, &admin, "role=ops_1").await, ["alice"]);
    assert!(names(&app, &admin, "role=opsx1").await.is_empty());
    assert_eq!(
        names(&app, &admin, "q=b&role=admin&is_active=true").await,
        ["bob"]
    );
    // A prefix of three characters or more is found through the prefix
    // indexes first: the same answers, filters and pages.
    assert_eq!(
        names(&app, &admin, "q=bob&role=admin&is_active=true").await,
        ["bob"]
    );
    assert!(names(&app, &admin, "q=bob&role=ops_1").await.is_empty());
    assert_eq!(
        names(&app, &admin, "q=car&is_active=false").await,
        ["carol"]
    );
    assert!(names(&app, &admin, "q=car&is_active=true").await.is_empty());
    assert_eq!(names(&app, &admin, "q=ali&role=ops_1").await, ["alice"]);
    let first: Value = app
        .get("/admin/users?q=ali&limit=1", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["users"][0]["username"], "alice", "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    assert_eq!(
        names(&app, &admin, &format!("q=ali&limit=1&cursor={cursor}")).await,
        ["alicia"]
    );
    // An address matches by its start too, and each user comes once.
    assert_eq!(names(&app, &admin, "q=alice").await, ["alice"]);
    let res = app
        .get("/admin/users?role=Admin&is_active=maybe", Some(&admin))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let mut fields: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["is_active", "role"]);
}

async fn admins_create_read_and_delete_users(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    // Reserved for signup, not for admins.
    let body = json!({"username": "support", "password": PASSWORD, "roles": ["user", "staff"]});
    let res = send(
        &app,
        reqwest::Method::POST,
        "/admin/users",
        &admin,
        Some(body),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["roles"], json!(["staff", "user"]));
    let id = created["id"].as_str().unwrap().to_owned();
    let res = send(
        &app,
        reqwest::Method::POST,
        "/admin/users",
        &admin,
        Some(json!({"password": "x"})),
    )
    .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;

    let res = app.get(&format!("/admin/users/{id}"), Some(&admin)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["username"], "support");
    let tokens = app.tokens("support").await;

    let path = format!("/admin/users/{id}");
    let res = send(&app, reqwest::Method::DELETE, &path, &admin, None).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    app.assert_refused_within(&tokens.access, Duration::from_secs(1))
        .await;
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let res = send(&app, method, &path, &admin, None).await;
        assert_eq!(
            problem(res, StatusCode::NOT_FOUND).await["code"],
            "not_found"
        );
    }
    let res = app.get("/admin/users/not-an-id", Some(&admin)).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

async fn admins_list_and_end_a_users_sessions(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let dave = app.create_user("dave").await;
    let id = dave["id"].as_str().unwrap();
    let first = app.tokens("dave").await;
    let second = app.tokens("dave").await;
    let path = format!("/admin/users/{id}/sessions");
    let res = app.get(&path, Some(&admin)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let listed: Value = res.json().await.unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(listed["sessions"][0]["current"], false);

    let res = send(&app, reqwest::Method::DELETE, &path, &admin, None).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for tokens in [&first, &second] {
        app.assert_refused_within(&tokens.access, Duration::from_secs(1))
            .await;
        assert_eq!(
            app.refresh(&tokens.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(app.me_status(&admin).await, StatusCode::OK);
    let unknown = "/admin/users/0190a5e2-0000-7000-8000-000000000000/sessions";
    assert_eq!(
        app.get(unknown, Some(&admin)).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn marking_an_email_verified_ends_no_session(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let erin = app.create_user("erin").await;
    assert_eq!(erin["email_verified"], false);
    let tokens = app.tokens("erin").await;
    let id = erin["id"].as_str().unwrap();
    let res = patch(&app, &admin, id, json!({"email_verified": true})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["email_verified"], true);
    app.advance(Duration::from_secs(1));
    assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);
    assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
}

async fn the_last_active_admin_cannot_be_deleted(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let admin = admin_token(&app).await;
    let admin_id = me_id(&app, &admin).await;
    let path = format!("/admin/users/{admin_id}");
    let res = send(&app, reqwest::Method::DELETE, &path, &admin, None).await;
    assert_eq!(
        problem(res, StatusCode::CONFLICT).await["code"],
        "last_admin"
    );
    assert_eq!(app.me_status(&admin).await, StatusCode::OK);
}

async fn every_admin_route_is_403_for_a_non_admin(backend: Backend) {
    let app = spawn_with_admin(backend).await;
    let user = app.create_user("frank").await;
    let id = user["id"].as_str().unwrap();
    let token = app.tokens("frank").await.access;
    let user_path = format!("/admin/users/{id}");
    let sessions_path = format!("/admin/users/{id}/sessions");
    let routes = [
        (reqwest::Method::GET, "/admin/users", None),
        (
            reqwest::Method::POST,
            "/admin/users",
            Some(json!({"username": "x1x", "password": PASSWORD})),
        ),
        (reqwest::Method::GET, user_path.as_str(), None),
        (
            reqwest::Method::PATCH,
            user_path.as_str(),
            Some(json!({"roles": ["admin"]})),
        ),
        (reqwest::Method::DELETE, user_path.as_str(), None),
        (reqwest::Method::GET, sessions_path.as_str(), None),
        (reqwest::Method::DELETE, sessions_path.as_str(), None),
    ];
    for (method, path, body) in routes {
        let res = send(&app, method.clone(), path, &token, body).await;
        assert_eq!(
            problem(res, StatusCode::FORBIDDEN).await["code"],
            "forbidden",
            "{method} {path}"
        );
    }
    assert_eq!(app.me_status(&token).await, StatusCode::OK);
}
