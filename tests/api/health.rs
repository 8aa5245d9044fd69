use std::{io::Write, process::Stdio};

use sqlx::Connection;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Backend, TestDb},
    helpers::{PASSWORD, TestApp, problem, spawn_app},
    on_both_databases, only_on_postgres,
};

on_both_databases!(
    healthz_and_readyz_answer_200,
    an_unknown_route_is_a_404_and_a_wrong_method_a_405_problem,
    the_openapi_document_lists_the_api_and_the_oauth2_password_flow,
    swagger_ui_is_served_at_docs,
    the_request_id_is_echoed,
    every_error_is_documented_as_a_problem_document,
    hostile_bodies_and_paths_get_problem_documents_not_500s,
    a_hostile_request_id_is_replaced_not_echoed,
    create_admin_reads_the_password_from_stdin,
    the_migrate_command_prepares_the_database,
);

only_on_postgres!(readyz_is_503_when_the_database_is_gone);

/// Only PostgreSQL can lose its database under a running server.
async fn readyz_is_503_when_the_database_is_gone() {
    let app = spawn_app(Backend::Postgres).await;
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);
    let name = url::Url::parse(&app.db().url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    let mut admin = sqlx::PgConnection::connect(&crate::common::postgres_admin_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"DROP DATABASE "{name}" WITH (FORCE)"#
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // A passing probe stands for a second.
    app.advance(std::time::Duration::from_secs(1));
    let res = app.get("/readyz", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "unavailable");
    assert_eq!(
        app.get("/healthz", None).await.status(),
        StatusCode::OK,
        "the process itself is alive"
    );
}

async fn healthz_and_readyz_answer_200(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/healthz", "/readyz"] {
        let res = app.get(path, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");
    }
}

async fn an_unknown_route_is_a_404_and_a_wrong_method_a_405_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = problem(app.get("/nope", None).await, StatusCode::NOT_FOUND).await;
    assert_eq!(body["code"], "not_found");
    let body = problem(
        app.get("/auth/login", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    assert_eq!(body["code"], "method_not_allowed");
}

async fn the_openapi_document_lists_the_api_and_the_oauth2_password_flow(backend: Backend) {
    let app = spawn_app(backend).await;
    let spec: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    for path in [
        "/auth/signup",
        "/auth/login",
        "/auth/token",
        "/auth/refresh",
        "/auth/logout",
        "/auth/logout-all",
        "/users/me",
        "/admin/users",
        "/admin/users/{id}",
        "/healthz",
        "/readyz",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} documented");
    }
    let oauth = &spec["components"]["securitySchemes"]["oauth2"];
    assert_eq!(oauth["flows"]["password"]["tokenUrl"], "/auth/token");
    let token_body = &spec["paths"]["/auth/token"]["post"]["requestBody"]["content"];
    assert!(token_body["application/x-www-form-urlencoded"].is_object());
    // The page parameters are optional query parameters, not path segments.
    let params = spec["paths"]["/admin/users"]["get"]["parameters"]
        .as_array()
        .unwrap();
    for name in ["limit", "cursor"] {
        let p = params.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(p["in"], "query", "{name}");
        assert_ne!(p["required"], true, "{name}");
    }
}

async fn swagger_ui_is_served_at_docs(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/docs/", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger"), "Swagger UI page");
    let res = app.get("/docs/swagger-ui.css", None).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "assets are bundled, not fetched"
    );
}

async fn the_request_id_is_echoed(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = app.get("/healthz", None).await;
    assert!(!res.headers()["x-request-id"].is_empty());
}

async fn a_hostile_request_id_is_replaced_not_echoed(backend: Backend) {
    let app = spawn_app(backend).await;
    let long = "a".repeat(65);
    let hostile: [&[u8]; 4] = [long.as_bytes(), b"a b", b"a\tb", b"caf\xc3\xa9"];
    for id in hostile {
        let res = app
            .client
            .get(app.url("/healthz"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(id).unwrap(),
            )
            .send()
            .await
            .unwrap();
        let echoed = res.headers()["x-request-id"].as_bytes();
        assert_ne!(echoed, id);
        assert!(uuid::Uuid::parse_str(std::str::from_utf8(echoed).unwrap()).is_ok());
    }
}

fn authgate(db: &TestDb) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.env("DATABASE_URL", &db.url).env("RUST_LOG", "warn");
    cmd
}

async fn create_admin_reads_the_password_from_stdin(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut child = authgate(&db)
        .args([
            "create-admin",
            "--email",
            "boss@example.com",
            "--username",
            "boss",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"boss passphrase 2026\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created admin"));

    let app = TestApp::builder().spawn_on(db).await;
    let res = app.login("boss", "boss passphrase 2026").await;
    assert_eq!(res.status(), StatusCode::OK);
    let access = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.get("/admin/users", Some(&access)).await.status(),
        StatusCode::OK
    );

    // A weak password is refused, naming the problem, and creates nothing.
    let mut child = authgate(app.db())
        .args(["create-admin", "--email", "weak@example.com"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("too common"));
}

async fn the_migrate_command_prepares_the_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let out = authgate(&db).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = authgate(&db).arg("migrate").output().unwrap();
    assert!(again.status.success(), "migrations are idempotent");
}

async fn every_error_is_documented_as_a_problem_document(backend: Backend) {
    let app = spawn_app(backend).await;
    let spec: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let json_body = op["requestBody"]["content"]["application/json"].is_object();
            for (status, response) in op["responses"].as_object().unwrap() {
                let content = &response["content"];
                let refs_problem =
                    |ct: &str| content[ct]["schema"]["$ref"] == "#/components/schemas/Problem";
                assert!(
                    !refs_problem("application/json"),
                    "{method} {path} {status}"
                );
                // The OAuth endpoints answer in RFC 6749 §5.2 form, as
                // RFC 6749, 6750, 7009 and 7662 require.
                let oauth = [
                    "/auth/token",
                    "/auth/introspect",
                    "/auth/revoke",
                    "/oauth/token",
                    "/oauth/userinfo",
                ];
                if status.starts_with('4') && !oauth.contains(&path.as_str()) {
                    assert!(
                        refs_problem("application/problem+json"),
                        "{method} {path} {status}"
                    );
                }
            }
            if json_body {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

async fn hostile_bodies_and_paths_get_problem_documents_not_500s(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("nina").await;
    // A NUL byte names no account (PostgreSQL refuses it in text).
    for login in ["ni\u{0}na", "\u{0}"] {
        let res = app.login(login, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{login:?}");
    }
    let res = app
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "password"),
                ("username", "a\u{0}b"),
                ("password", "x"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Arrays are not objects, even with the fields in order.
    let res = app
        .post_json("/auth/login", &json!(["nina", null, PASSWORD]))
        .await;
    let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "body");
    // A path segment that is not UTF-8 is no resource.
    let token = app.tokens("nina").await.access;
    let res = app
        .client
        .delete(app.url("/users/me/sessions/%ff"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::NOT_FOUND).await;
}
