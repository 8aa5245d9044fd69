//! Passkeys in a real browser: `tests/browser/passkeys.mjs` drives Debian's
//! Chromium through Playwright, with a virtual authenticator, against the
//! server: registration, a login with the passkey alone (no username), and
//! the passkey as the second factor of a password login. And
//! `tests/browser/oidc.mjs`: the OpenID Connect code flow through the hosted
//! pages, with openid-client as the application. And `tests/browser/pages.mjs`:
//! passkeys on the hosted pages (added on the account page, signing in to
//! an application, as the second step, removed).
//!
//! It needs Node, Chromium (`AUTHGATE_TEST_CHROMIUM`, default `chromium`)
//! and `AUTHGATE_TEST_PLAYWRIGHT`, a directory whose `node_modules` holds the
//! packages of `tests/browser/package.json` (`.ci/run` makes it). Without
//! them the test does nothing, with a note; under CI, or when either
//! setting is given, it fails instead.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, claims_of, problem},
    on_both_databases,
};

on_both_databases!(
    a_passkey_registers_and_logs_in_in_chromium,
    the_oidc_code_flow_runs_in_chromium_with_a_real_client_library,
    passkeys_work_on_the_hosted_pages_in_chromium,
);

const CHROMIUM: &str = "AUTHGATE_TEST_CHROMIUM";
const PLAYWRIGHT: &str = "AUTHGATE_TEST_PLAYWRIGHT";
/// How long the browser script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The WebAuthn origin and RP ID the server is given; the script serves its
/// page there.
const ORIGIN: &str = "http://localhost:8010";
const RP_ID: &str = "localhost";

/// Whether a missing tool fails the test rather than skipping it.
fn required() -> bool {
    ["CI", CHROMIUM, PLAYWRIGHT]
        .iter()
        .any(|var| std::env::var_os(var).is_some())
}

/// The tools, or `None` (with a note) where they may be missing.
struct Tools {
    chromium: String,
    playwright: PathBuf,
}

fn tools() -> Option<Tools> {
    let chromium = std::env::var(CHROMIUM).unwrap_or_else(|_| "chromium".into());
    // Playwright launches a path, not a name to look up.
    let chromium = on_path(&chromium).unwrap_or(chromium);
    let mut missing = Vec::new();
    if !runs(&chromium, "--version") {
        missing.push(format!("Chromium ({chromium} does not run; {CHROMIUM})"));
    }
    if !runs("node", "--version") {
        missing.push("Node (node does not run)".into());
    }
    let playwright = std::env::var_os(PLAYWRIGHT)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match &playwright {
        None => missing.push(format!("playwright-core ({PLAYWRIGHT} is not set)")),
        Some(dir) if !dir.join("node_modules/playwright-core").is_dir() => missing.push(format!(
            "playwright-core ({PLAYWRIGHT}={}: no node_modules/playwright-core there; \
             npm ci with tests/browser/package.json)",
            dir.display()
        )),
        Some(_) => {}
    }
    if missing.is_empty() {
        return Some(Tools {
            chromium,
            playwright: playwright.expect("checked above"),
        });
    }
    let missing = missing.join(", ");
    assert!(
        !required(),
        "the browser tests need {missing} (.ci/run installs them; see tests/api/browser.rs)"
    );
    eprintln!("note: a browser test did nothing, missing {missing}");
    None
}

/// A bare program name as found on `PATH`.
fn on_path(program: &str) -> Option<String> {
    if program.contains('/') {
        return None;
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .map(|path| path.display().to_string())
}

fn runs(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// What the script made, from the JSON line it prints last.
struct Made {
    username: String,
    user_id: String,
    passkey_id: String,
    access_token: String,
}

/// Runs `passkeys.mjs` against `app`.
async fn run_script(app: &TestApp, tools: &Tools) -> Made {
    let node_path = tools.playwright.join("node_modules").display().to_string();
    let made = run_browser_script(
        tools,
        "passkeys.mjs",
        &[
            ("NODE_PATH", &node_path),
            ("AUTHGATE_URL", &app.address),
            ("AUTHGATE_WEBAUTHN_ORIGIN", ORIGIN),
            ("AUTHGATE_CHECK_PASSWORD", PASSWORD),
        ],
    )
    .await;
    let last = made.to_string();
    let field = |name: &str| {
        made[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} missing from {last}"))
            .to_owned()
    };
    Made {
        username: field("username"),
        user_id: field("user_id"),
        passkey_id: field("passkey_id"),
        access_token: field("access_token"),
    }
}

async fn a_passkey_registers_and_logs_in_in_chromium(backend: Backend) {
    let Some(tools) = tools() else {
        return;
    };
    let app = TestApp::builder()
        .arg("--webauthn-rp-id", RP_ID)
        .arg("--webauthn-origin", ORIGIN)
        .spawn(backend)
        .await;
    let made = run_script(&app, &tools).await;

    // From this side: the token of the last login (password and passkey) is
    // the user's, of two factors, and shows the passkey, used.
    let claims = claims_of(&made.access_token);
    assert_eq!(claims["sub"], made.user_id.as_str());
    assert_eq!(claims["aal"], "aal2");
    for method in ["pwd", "hwk", "mfa"] {
        assert!(
            claims["amr"].as_array().unwrap().contains(&json!(method)),
            "{claims}"
        );
    }
    let res = app
        .get("/users/me/passkeys", Some(&made.access_token))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let listed: Value = res.json().await.unwrap();
    let passkeys = listed["passkeys"].as_array().expect("passkeys");
    assert_eq!(passkeys.len(), 1, "{listed}");
    assert_eq!(passkeys[0]["id"], made.passkey_id.as_str());
    assert!(passkeys[0]["last_used_at"].is_string(), "{listed}");

    // And the password alone still asks for the passkey.
    let res = app.login(&made.username, PASSWORD).await;
    let refused = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(refused["code"], "mfa_required", "{refused}");
    let factors = refused["factor_types"].as_array().expect("factor_types");
    assert!(factors.contains(&json!("passkey")), "{refused}");
}

/// A port free at the moment: the server must listen where its public URL
/// (the issuer the client library checks) says.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn the_oidc_code_flow_runs_in_chromium_with_a_real_client_library(backend: Backend) {
    let Some(tools) = tools() else {
        return;
    };
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let app = TestApp::builder_with_generated_key()
        .with_admin()
        .arg("--listen", &format!("127.0.0.1:{port}"))
        .arg("--public-url", &base)
        .spawn(backend)
        .await;
    assert_eq!(app.address, base);
    let (tokens, authenticator) = crate::mfa::user_with_app(&app, "grace").await;
    // The links mailed to her: the sign-up's verification and (from a
    // session stepped up to two factors) an address change's. A reset's
    // goes to another user: each of the two ends the other's link.
    app.create_user("heidi").await;
    let wait = Duration::from_secs(10);
    let verify_token = app
        .mail
        .wait_for("grace@example.com", wait)
        .await
        .link_token()
        .expect("a verification link");
    let res = app
        .post_json(
            "/auth/password/forgot",
            &json!({"email": "heidi@example.com"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let reset_token = loop {
        // Her sign-up's verification comes first.
        let mail = app.mail.wait_for("heidi@example.com", wait).await;
        if mail.subject().contains("eset") {
            break mail.link_token().expect("a reset link");
        }
    };
    let res = app
        .client
        .post(app.url("/auth/mfa/verify"))
        .bearer_auth(&tokens.access)
        .json(&json!({"code": authenticator.code(&app)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let stepped: Value = res.json().await.unwrap();
    let res = app
        .client
        .patch(app.url("/users/me"))
        .bearer_auth(stepped["access_token"].as_str().unwrap())
        .json(&json!({"email": "grace.new@example.com", "current_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let email_token = app
        .mail
        .wait_for("grace.new@example.com", wait)
        .await
        .link_token()
        .expect("an address change's link");
    // The step-up spent this time step's code; the pages' login uses the next.
    app.advance(Duration::from_secs(30));
    let redirect = "http://127.0.0.1:9/callback";
    let client = crate::clients::register_client(
        &app,
        json!({"name": "Example App", "redirect_uris": [redirect]}),
    )
    .await;
    // The server's clock runs ahead of this one after the enrolment.
    let offset = (authgate::clock::Clock::now(app.clock.as_ref())
        - time::OffsetDateTime::now_utc())
    .whole_seconds();
    // `AUTHGATE_TEST_SCREENSHOTS=docs/pages` refreshes the pictures of the
    // pages in the docs.
    let screenshots = screenshot_dir(backend);
    let offset = offset.to_string();
    let secret = authenticator.secret_base32();
    let last = run_browser_script(
        &tools,
        "oidc.mjs",
        &[
            ("AUTHGATE_URL", &app.address),
            ("OIDC_CLIENT_ID", client["client_id"].as_str().unwrap()),
            (
                "OIDC_CLIENT_SECRET",
                client["client_secret"].as_str().unwrap(),
            ),
            ("OIDC_REDIRECT_URI", redirect),
            ("OIDC_USERNAME", "grace"),
            ("OIDC_PASSWORD", PASSWORD),
            ("OIDC_TOTP_SECRET", &secret),
            ("OIDC_TOTP_OFFSET", &offset),
            ("OIDC_VERIFY_TOKEN", &verify_token),
            ("OIDC_RESET_TOKEN", &reset_token),
            ("OIDC_EMAIL_TOKEN", &email_token),
            ("SCREENSHOT_DIR", &screenshots),
        ],
    )
    .await;
    assert_eq!(last["acr"], "aal2");
    assert_eq!(last["amr"], json!(["pwd", "otp", "mfa"]));
    // The token the library got is the client's, for this user.
    let claims = claims_of(last["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], last["sub"]);
    assert_eq!(claims["client_id"], client["client_id"]);
    // The reset page set Heidi's new password: the old one is refused.
    let res = app.login("heidi", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .login("heidi", last["new_password"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// Runs a script of `tests/browser` with `env`; its last line, the JSON it
/// ends with. Fails, showing its output, unless it exits 0 in time.
async fn run_browser_script(tools: &Tools, name: &str, env: &[(&str, &str)]) -> Value {
    let script = repo(&format!("tests/browser/{name}"));
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .current_dir(&tools.playwright)
        .env("CHROMIUM", &tools.chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    // The server is on loopback: no proxy must stand in between.
    for proxy in ["http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(proxy).env_remove(proxy.to_uppercase());
    }
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{name} ran over {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed, {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        output.status
    );
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{name} did not end with its JSON line ({e})\n{stdout}"));
    assert_eq!(last["ok"], true, "{last}");
    last
}

/// Where `AUTHGATE_TEST_SCREENSHOTS` asks for the pages' pictures (from the
/// SQLite run only); empty for none.
fn screenshot_dir(backend: Backend) -> String {
    match (backend, std::env::var("AUTHGATE_TEST_SCREENSHOTS")) {
        (Backend::Sqlite, Ok(dir)) if !dir.is_empty() => repo(&dir).display().to_string(),
        _ => String::new(),
    }
}

async fn passkeys_work_on_the_hosted_pages_in_chromium(backend: Backend) {
    let Some(tools) = tools() else {
        return;
    };
    // WebAuthn wants a domain, not an address: the pages are at localhost.
    let port = free_port();
    let base = format!("http://localhost:{port}");
    let app = TestApp::builder_with_generated_key()
        .with_admin()
        .arg("--listen", &format!("127.0.0.1:{port}"))
        .arg("--public-url", &base)
        .arg("--webauthn-rp-id", RP_ID)
        .arg("--webauthn-origin", &base)
        .spawn(backend)
        .await;
    app.create_user("ivy").await;
    let client = crate::authorize::register(&app, json!({})).await;
    let request = crate::authorize::authorize_path(&client.id, "openid profile", &[]);
    let screenshots = screenshot_dir(backend);
    let made = run_browser_script(
        &tools,
        "pages.mjs",
        &[
            ("AUTHGATE_PAGES_URL", &base),
            ("PAGES_USERNAME", "ivy"),
            ("PAGES_PASSWORD", PASSWORD),
            ("PAGES_AUTHORIZE", &request),
            ("PAGES_REDIRECT_URI", crate::authorize::REDIRECT),
            ("SCREENSHOT_DIR", &screenshots),
        ],
    )
    .await;
    assert_eq!(made["state"], "xyz-state");
    assert_eq!(made["recovery_codes"].as_array().map(Vec::len), Some(10));

    // The code the passkey alone won is the user's, of two factors.
    let code = made["code"].as_str().expect("a code");
    let res = crate::authorize::exchange(&app, &client, code, crate::authorize::VERIFIER).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    let id = claims_of(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["preferred_username"], "ivy");
    assert_eq!(id["acr"], "aal2");
    assert_eq!(id["amr"], json!(["hwk", "mfa"]), "{id}");

    // Removed on the page: the password alone signs in again.
    let res = app.login("ivy", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    let listed: Value = app
        .get("/users/me/passkeys", tokens["access_token"].as_str())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["passkeys"], json!([]), "{listed}");
}
