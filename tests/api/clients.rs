//! OAuth clients through `/admin/clients`: registered, shown without their
//! secrets, refused when malformed, deleted; and only for admins.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{TestApp, error_fields, problem},
    on_both_databases,
};

on_both_databases!(
    an_admin_registers_a_client_and_sees_its_secret_only_once,
    a_public_client_gets_no_secret_and_needs_a_redirect_uri,
    malformed_clients_are_refused_with_every_field_named,
    a_deleted_client_is_gone_and_its_deletion_audited,
    client_routes_are_for_admins_only,
);

/// Registers a client as the app's admin; its JSON, secret included.
pub async fn register_client(app: &TestApp, body: Value) -> Value {
    let admin = app.admin_token().await;
    let res = register(app, &admin, body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

async fn register(app: &TestApp, admin: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/admin/clients"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn admin_get(app: &TestApp, admin: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
}

async fn an_admin_registers_a_client_and_sees_its_secret_only_once(backend: Backend) {
    let app = TestApp::builder().with_admin().spawn(backend).await;
    let admin = app.admin_token().await;
    let res = register(
        &app,
        &admin,
        json!({
            "name": "  Billing  ",
            "redirect_uris": ["https://billing.example.com/callback", "http://127.0.0.1:8123/cb"],
            "post_logout_redirect_uris": ["https://billing.example.com/"],
        }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let id = created["client_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 22, "{created}");
    assert_eq!(created["name"], "Billing");
    assert_eq!(created["public"], false);
    assert_eq!(created["first_party"], false);
    assert_eq!(
        created["scopes"],
        json!(["email", "offline_access", "openid", "profile"])
    );
    assert_eq!(created["client_secret"].as_str().unwrap().len(), 43);

    let res = admin_get(&app, &admin, &format!("/admin/clients/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let shown: Value = res.json().await.unwrap();
    assert!(shown.get("client_secret").is_none(), "{shown}");
    assert_eq!(
        shown["redirect_uris"],
        json!([
            "http://127.0.0.1:8123/cb",
            "https://billing.example.com/callback"
        ])
    );
    assert_eq!(
        shown["post_logout_redirect_uris"],
        json!(["https://billing.example.com/"])
    );

    let list: Value = admin_get(&app, &admin, "/admin/clients")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["clients"].as_array().unwrap().len(), 1);
    assert_eq!(list["clients"][0]["client_id"], id.as_str());
    assert!(
        !list
            .to_string()
            .contains(created["client_secret"].as_str().unwrap())
    );

    // The secret is kept only as a digest.
    let stored = app.store().await.client(&id).await.unwrap().unwrap();
    let secret = created["client_secret"].as_str().unwrap();
    assert_ne!(
        stored.secret_hash.unwrap().to_vec(),
        secret.as_bytes().to_vec()
    );
}

async fn a_public_client_gets_no_secret_and_needs_a_redirect_uri(backend: Backend) {
    let app = TestApp::builder().with_admin().spawn(backend).await;
    let admin = app.admin_token().await;
    let res = register(
        &app,
        &admin,
        json!({
            "name": "Phone app",
            "redirect_uris": ["com.example.phone:/oauth"],
            "public": true,
            "first_party": true,
            "scopes": ["openid", "email", "openid"],
        }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert!(created.get("client_secret").is_none(), "{created}");
    assert_eq!(created["public"], true);
    assert_eq!(created["first_party"], true);
    assert_eq!(created["scopes"], json!(["email", "openid"]));

    let res = register(&app, &admin, json!({"name": "No way back", "public": true})).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&body), ["redirect_uris"]);
    // A confidential client may have none: it acts for itself.
    let res = register(
        &app,
        &admin,
        json!({"name": "Batch job", "scopes": ["reports:read"]}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn malformed_clients_are_refused_with_every_field_named(backend: Backend) {
    let app = TestApp::builder().with_admin().spawn(backend).await;
    let admin = app.admin_token().await;
    let res = register(
        &app,
        &admin,
        json!({
            "name": "Bank\u{200B}",
            "redirect_uris": [
                "https://ok.example.com/cb",
                "http://evil.example.com/cb",
                "https://app.example.com/cb#token",
                "javascript:alert(1)",
            ],
            "post_logout_redirect_uris": ["/relative"],
            "scopes": ["openid", "has space"],
        }),
    )
    .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        error_fields(&body),
        [
            "name",
            "redirect_uris[1]",
            "redirect_uris[2]",
            "redirect_uris[3]",
            "post_logout_redirect_uris[0]",
            "scopes",
        ]
    );
    let many: Vec<String> = (0..11)
        .map(|i| format!("https://app.example.com/cb{i}"))
        .collect();
    let res = register(&app, &admin, json!({"name": "Many", "redirect_uris": many})).await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&body), ["redirect_uris"]);
    let res = register(&app, &admin, json!({"redirect_uris": []})).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let list: Value = admin_get(&app, &admin, "/admin/clients")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["clients"], json!([]), "nothing was registered");
}

async fn a_deleted_client_is_gone_and_its_deletion_audited(backend: Backend) {
    let app = TestApp::builder().with_admin().spawn(backend).await;
    let admin = app.admin_token().await;
    let created: Value = register(
        &app,
        &admin,
        json!({"name": "Old app", "redirect_uris": ["https://old.example.com/cb"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let path = format!("/admin/clients/{}", created["client_id"].as_str().unwrap());
    let delete = || async {
        app.client
            .delete(app.url(&path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(delete().await.status(), StatusCode::NO_CONTENT);
    problem(delete().await, StatusCode::NOT_FOUND).await;
    problem(admin_get(&app, &admin, &path).await, StatusCode::NOT_FOUND).await;
    // Not even the form of an id: no such client either.
    problem(
        admin_get(&app, &admin, "/admin/clients/short").await,
        StatusCode::NOT_FOUND,
    )
    .await;

    let audit: Value = admin_get(&app, &admin, "/admin/audit?type=client_created")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
    let audit: Value = admin_get(&app, &admin, "/admin/audit?type=client_deleted")
        .await
        .json()
        .await
        .unwrap();
    let events = audit["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{audit}");
    assert_eq!(events[0]["detail"], created["client_id"]);
}

async fn client_routes_are_for_admins_only(backend: Backend) {
    let app = TestApp::builder().with_admin().spawn(backend).await;
    app.create_user("ada").await;
    let token = app.tokens("ada").await.access;
    for (method, path) in [
        ("GET", "/admin/clients"),
        ("POST", "/admin/clients"),
        ("GET", "/admin/clients/AAAAAAAAAAAAAAAAAAAAAA"),
        ("DELETE", "/admin/clients/AAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let req = |token: Option<&str>| {
            let req = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .json(&json!({"name": "x", "redirect_uris": ["https://x.example.com/cb"]}));
            match token {
                Some(t) => req.bearer_auth(t),
                None => req,
            }
        };
        let res = req(None).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let res = req(Some(&token)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }
}
