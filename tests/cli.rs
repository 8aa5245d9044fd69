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
