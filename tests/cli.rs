//! The binary's start-up errors: one clear line naming the setting.

use std::process::Command;

fn authgate(env: &[(&str, &str)]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("authgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.current_dir(&dir).env("RUST_LOG", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_short_jwt_secret_stops_start_up_with_one_line_naming_it() {
    let out = authgate(&[
        ("AUTHGATE_JWT_SECRET", "short"),
        ("AUTHGATE_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("AUTHGATE_JWT_SECRET"), "{err}");
    assert!(!err.contains("short"), "the secret is not echoed: {err}");
}

#[test]
fn a_bad_duration_names_the_setting() {
    let out = authgate(&[("AUTHGATE_ACCESS_TOKEN_TTL", "soon")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("access-token-ttl") || err.contains("AUTHGATE_ACCESS_TOKEN_TTL"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unreachable_database_is_one_line_without_the_password() {
    let out = authgate(&[
        ("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/app"),
        ("AUTHGATE_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn json_logs_are_one_object_per_line_and_never_show_secrets() {
    use std::io::{BufRead, BufReader};

    let dir = std::env::temp_dir().join(format!("authgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = "json-log-test-secret-Vx7Qp2Lm9Rk4Tz8W";
    let admin_password = "json log admin passphrase";
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .current_dir(&dir)
        .env("RUST_LOG", "debug")
        .env("AUTHGATE_LOG_FORMAT", "json")
        .env("AUTHGATE_LISTEN", "127.0.0.1:0")
        .env("AUTHGATE_JWT_SECRET", secret)
        .env("AUTHGATE_ADMIN_EMAIL", "ops@example.com")
        .env("AUTHGATE_ADMIN_PASSWORD", admin_password)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(lines.iter().any(|l| l.contains("listening")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("created the configured admin account")),
        "{lines:?}"
    );
    for line in &lines {
        let parsed: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        assert!(parsed.is_object());
        assert!(!line.contains(secret), "{line}");
        assert!(!line.contains(admin_password), "{line}");
    }
}

#[test]
fn a_flag_of_another_command_is_refused_not_ignored() {
    let out = authgate_args(&["migrate", "--signup-per-minute", "5"], &[], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--signup-per-minute"), "{err}");
}

#[test]
fn argon2_parameters_that_do_not_go_together_stop_start_up() {
    let out = authgate(&[
        ("AUTHGATE_ARGON2_MEMORY_KIB", "8"),
        ("AUTHGATE_ARGON2_PARALLELISM", "4"),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("AUTHGATE_ARGON2_"), "{err}");
}

#[test]
fn create_admin_refuses_an_existing_user_unless_told_to_promote_them() {
    let dir = std::env::temp_dir().join(format!("authgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/authgate.db?mode=rwc", dir.display());
    let env = [("DATABASE_URL", db.as_str())];
    let cheap = ["--argon2-memory-kib", "7168", "--argon2-iterations", "1"];
    let admin = |extra: &[&str], password: Option<&str>| {
        let mut args = vec!["create-admin", "--email", "ops@example.com"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&cheap);
        authgate_args(&args, &env, password)
    };

    let created = admin(&[], Some("a long admin passphrase\n"));
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(String::from_utf8_lossy(&created.stdout).contains("created admin"));

    let again = admin(&[], Some("a long admin passphrase\n"));
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--promote"), "{}", stderr(&again));

    // A disabled plain user (demoted through the store) is promoted back and
    // enabled, without being asked for a password.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store =
        runtime.block_on(async { authgate::store::open(&db.parse().unwrap()).await.unwrap() });
    let user = runtime
        .block_on(store.find_credentials("ops@example.com"))
        .unwrap()
        .unwrap()
        .user;
    let demote = authgate::store::UserChanges {
        is_active: Some(false),
        roles: Some(authgate::domain::Roles::new([
            authgate::domain::Role::user(),
        ])),
        email_verified: None,
        ..Default::default()
    };
    // The only admin cannot be demoted: make another one first.
    let second = authgate_args(
        &[
            &["create-admin", "--email", "second@example.com"][..],
            &cheap,
        ]
        .concat(),
        &env,
        Some("another long passphrase\n"),
    );
    assert!(second.status.success(), "{}", stderr(&second));
    runtime
        .block_on(store.update_user(
            user.id,
            &demote,
            authgate::clock::now(),
            &Default::default(),
        ))
        .unwrap();

    let promoted = admin(&["--promote"], None);
    assert!(promoted.status.success(), "{}", stderr(&promoted));
    assert!(String::from_utf8_lossy(&promoted.stdout).contains("promoted"));
    let user = runtime.block_on(store.get_user(user.id)).unwrap().unwrap();
    assert!(user.is_active_admin(), "{user:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the binary with arguments, environment and standard input.
fn authgate_args(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.args(args)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn unsafe_settings_stop_start_up_with_one_line_naming_them() {
    let predictable = "a".repeat(40);
    for (name, value) in [
        ("AUTHGATE_JWT_SECRET", predictable.as_str()),
        ("AUTHGATE_JWT_SECRET", "abcdefghijklmnopqrstuvwxyz012345"),
        ("AUTHGATE_TRUSTED_PROXIES", "0.0.0.0/0"),
        ("AUTHGATE_TRUSTED_PROXIES", "0.0.0.0/1,128.0.0.0/1"),
        ("AUTHGATE_ARGON2_MEMORY_KIB", "8"),
        ("AUTHGATE_SESSION_MAX_AGE", "1000000y"),
        ("AUTHGATE_ISSUER", ""),
    ] {
        let out = authgate(&[(name, value), ("AUTHGATE_LISTEN", "127.0.0.1:0")]);
        assert!(!out.status.success(), "{name}");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(name), "{err}");
        if name == "AUTHGATE_JWT_SECRET" {
            assert!(!err.contains(value), "the secret is not echoed: {err}");
        }
    }
}

#[test]
fn odd_settings_are_warned_about_at_start_up() {
    use std::io::{BufRead, BufReader};

    let dir = std::env::temp_dir().join(format!("authgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .current_dir(&dir)
        .env("RUST_LOG", "warn,authgate::app=info")
        .env("AUTHGATE_LOG_FORMAT", "json")
        .env("AUTHGATE_LISTEN", "127.0.0.1:0")
        .env("AUTHGATE_REFRESH_TOKEN_TTL", "60d")
        .env("AUTHGATE_TRUSTED_PROXIES", "203.0.113.0/24")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut warnings = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("listening") {
            break;
        }
        if line.contains("WARN") {
            warnings.push(line);
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let all = warnings.join("\n");
    assert!(all.contains("AUTHGATE_REFRESH_TOKEN_TTL"), "{all}");
    assert!(all.contains("203.0.113.0/24"), "{all}");
}

#[test]
fn keys_are_listed_rotated_imported_and_revoked_from_the_command_line() {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde_json::Value;

    let dir = std::env::temp_dir().join(format!("authgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/authgate.db?mode=rwc", dir.display());
    let env = [("DATABASE_URL", db.as_str())];
    let keys = |args: &[&str]| {
        let out = authgate_args(&[&["keys"], args].concat(), &env, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };

    // The first command finds no key and makes one that signs at once.
    let (ok, listed, err) = keys(&["list"]);
    assert!(ok, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["algorithm"], "EdDSA");

    let (ok, rotated, err) = keys(&["rotate"]);
    assert!(ok, "{err}");
    let rotated: Value = serde_json::from_str(&rotated).unwrap();
    assert_eq!(rotated["state"], "standby");

    // An ES256 key from a PEM file joins on standby too.
    let private = authgate::crypto::signing::PrivateKey::generate(
        authgate::crypto::signing::SigningAlgorithm::Es256,
    )
    .unwrap();
    let body = STANDARD.encode(private.to_stored());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let pem_file = dir.join("key.pem");
    std::fs::write(&pem_file, pem).unwrap();
    let (ok, imported, err) = keys(&["import", pem_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let imported: Value = serde_json::from_str(&imported).unwrap();
    assert_eq!(imported["algorithm"], "ES256");
    assert_eq!(imported["state"], "standby");
    std::fs::write(&pem_file, "not a key").unwrap();
    let (ok, _, err) = keys(&["import", pem_file.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let kid = listed[0]["kid"].as_str().unwrap();
    // A kid that starts with `-` is still a kid, not an option.
    let (ok, _, err) = keys(&["revoke", "-Wno-such-key"]);
    assert!(!ok);
    assert!(err.contains("no key -Wno-such-key"), "{err}");
    let (ok, revoked, err) = keys(&["revoke", kid]);
    assert!(ok, "{err}");
    let revoked: Value = serde_json::from_str(&revoked).unwrap();
    assert_eq!(revoked["state"], "revoked");
    let (ok, _, err) = keys(&["revoke", "no-such-key"]);
    assert!(!ok);
    assert!(err.contains("no key no-such-key"), "{err}");

    // The revoked key was signing: a new one signs in its place at once.
    let (_, listed, _) = keys(&["list"]);
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    let states: Vec<&str> = listed
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["revoked", "active", "standby", "standby"],
        "{listed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clients_are_registered_listed_and_deleted_from_the_command_line() {
    use serde_json::Value;

    let dir = std::env::temp_dir().join(format!("authgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/authgate.db?mode=rwc", dir.display());
    let env = [("DATABASE_URL", db.as_str())];
    let clients = |args: &[&str]| {
        let out = authgate_args(&[&["clients"], args].concat(), &env, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };

    let (ok, out, err) = clients(&[
        "create",
        "--name",
        "Billing",
        "--redirect-uri",
        "https://billing.example.com/cb",
        "http://127.0.0.1:9000/cb",
        "--scope",
        "openid",
        "email",
        "--post-logout-redirect-uri",
        "https://billing.example.com/",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "one JSON line: {out}");
    let confidential: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(confidential["client_secret"].as_str().unwrap().len(), 43);
    let (ok, out, err) = clients(&[
        "create",
        "--name",
        "Phone",
        "--redirect-uri",
        "com.example.phone:/cb",
        "--public",
        "--first-party",
    ]);
    assert!(ok, "{err}");
    let public: Value = serde_json::from_str(&out).unwrap();
    assert!(public.get("client_secret").is_none(), "{out}");

    let (ok, _, err) = clients(&[
        "create",
        "--name",
        "Bad",
        "--redirect-uri",
        "http://evil.example.com/",
    ]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("redirect_uris[0]"), "{err}");

    let (ok, out, err) = clients(&["list"]);
    assert!(ok, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    let ids: Vec<&Value> = listed.iter().map(|c| &c["client_id"]).collect();
    assert_eq!(ids, [&confidential["client_id"], &public["client_id"]]);
    assert_eq!(listed[0]["scopes"], serde_json::json!(["email", "openid"]));
    assert_eq!(listed[1]["public"], true);
    assert_eq!(listed[1]["first_party"], true);
    assert!(!out.contains(confidential["client_secret"].as_str().unwrap()));

    let id = public["client_id"].as_str().unwrap();
    let (ok, _, err) = clients(&["delete", id]);
    assert!(ok, "{err}");
    let (ok, _, err) = clients(&["delete", id]);
    assert!(!ok);
    assert!(err.contains(&format!("no client {id}")), "{err}");
    let (_, out, _) = clients(&["list"]);
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
