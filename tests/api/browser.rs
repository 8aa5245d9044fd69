//! Passkeys in a real browser: `tests/browser/passkeys.mjs` drives Debian's
//! Chromium through Playwright, with a virtual authenticator, against the
//! server: registration, a login with the passkey alone (no username), and
//! the passkey as the second factor of a password login.
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

on_both_databases!(a_passkey_registers_and_logs_in_in_chromium);

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
        "the passkey browser test needs {missing} (.ci/run installs them; see tests/api/browser.rs)"
    );
    eprintln!("note: the passkey browser test did nothing, missing {missing}");
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

/// Runs the script against `app`; fails, showing its output, unless it
/// exits 0 within `SCRIPT_TIMEOUT`.
async fn run_script(app: &TestApp, tools: &Tools) -> Made {
    let script = repo("tests/browser/passkeys.mjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .current_dir(&tools.playwright)
        .env("NODE_PATH", tools.playwright.join("node_modules"))
        .env("AUTHGATE_URL", &app.address)
        .env("AUTHGATE_WEBAUTHN_ORIGIN", ORIGIN)
        .env("AUTHGATE_CHECK_PASSWORD", PASSWORD)
        .env("CHROMIUM", &tools.chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // The server is on loopback: no proxy must stand in between.
    for proxy in ["http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(proxy).env_remove(proxy.to_uppercase());
    }
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("passkeys.mjs ran over {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "passkeys.mjs failed, {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    let made: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("passkeys.mjs did not end with its JSON line ({e})\n--- stdout\n{stdout}")
    });
    assert_eq!(made["ok"], true, "{last}");
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
