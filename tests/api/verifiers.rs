//! Tokens checked the way other services check them: by the README's
//! examples and by JWT libraries other than the server's (PyJWT, jose), with
//! nothing but the published key set, for each algorithm that publishes keys.
//!
//! The verifiers are outside Rust: `AUTHGATE_TEST_PYTHON` names a Python with
//! `examples/verify-fastapi/requirements.txt` and httpx installed, and
//! `AUTHGATE_TEST_NODE_VERIFIER` a directory whose `node_modules` holds the
//! packages of `examples/verify-node/package.json` (`.ci/run` makes both).
//! Without them the tests are ignored, with a note; under CI they fail.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use libtest_mimic::Trial;
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    common::{Backend, trial},
    helpers::TestApp,
};

const ALGORITHMS: [&str; 3] = ["EdDSA", "ES256", "RS256"];
const PYTHON: &str = "AUTHGATE_TEST_PYTHON";
const NODE_VERIFIER: &str = "AUTHGATE_TEST_NODE_VERIFIER";
/// How long one verifier script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// One trial per algorithm and verifier, on SQLite: what is checked is the
/// token and the key set, which do not depend on the database.
pub fn trials(pg: bool) -> Vec<Trial> {
    let python_ignored = ignored(PYTHON, "FastAPI");
    let node_ignored = ignored(NODE_VERIFIER, "Node");
    let readme = Trial::test(
        "verifiers::the_readme_quotes_the_examples_as_they_are",
        || {
            the_readme_quotes_the_examples_as_they_are();
            Ok(())
        },
    );
    let checks = ALGORITHMS.into_iter().flat_map(|alg| {
        let lower = alg.to_lowercase();
        [
            trial(
                module_path!(),
                Backend::Sqlite,
                &format!("the_fastapi_example_and_pyjwt_verify_{lower}_tokens"),
                pg,
                move |backend| fastapi_example_and_pyjwt_verify(backend, alg),
            )
            .with_ignored_flag(python_ignored),
            trial(
                module_path!(),
                Backend::Sqlite,
                &format!("the_node_example_verifies_{lower}_tokens"),
                pg,
                move |backend| node_example_verifies(backend, alg),
            )
            .with_ignored_flag(node_ignored),
        ]
    });
    std::iter::once(readme).chain(checks).collect()
}

/// The README shows the examples whole: the files the tests run.
fn the_readme_quotes_the_examples_as_they_are() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    for (file, fence) in [
        ("examples/verify-fastapi/authgate_auth.py", "```python\n"),
        ("examples/verify-node/verify.mjs", "```js\n"),
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        assert!(
            readme.contains(&format!("{fence}{text}```\n")),
            "README.md does not quote {file} as it is"
        );
    }
}

fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

fn setting(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether the tests of a verifier that is not set up are ignored: locally,
/// with a note; under CI never, they run and fail.
fn ignored(var: &str, which: &str) -> bool {
    let ignored = setting(var).is_none() && !under_ci();
    if ignored {
        eprintln!(
            "note: verifiers::* {which} tests ignored, {var} is not set \
             (see tests/api/verifiers.rs; .ci/run sets it)"
        );
    }
    ignored
}

/// The setting `var`; if it is not set, a failure under CI, because a
/// verifier that is not run proves nothing, and locally a note.
fn verifier(var: &str, which: &str) -> Option<PathBuf> {
    let path = setting(var);
    if path.is_none() {
        assert!(
            !under_ci(),
            "the {which} verifier is missing under CI: {var} is not set \
             (.ci/run installs it; see tests/api/verifiers.rs)"
        );
        eprintln!("note: {var} is not set, the {which} verifier is not run");
    }
    path
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A server signing with `alg`, and what a verifier needs to know of it.
struct Issued {
    app: TestApp,
    issuer: String,
    alg: &'static str,
    user_token: String,
    user_sub: String,
    admin_token: String,
}

impl Issued {
    async fn start(backend: Backend, alg: &'static str) -> Self {
        let app = TestApp::builder_with_generated_key()
            .with_admin()
            .arg("--jwt-alg", alg)
            .spawn(backend)
            .await;
        let user = app.create_user("ada").await;
        let user_token = app.tokens("ada").await.access;
        let admin_token = app.admin_token().await;
        // The server listens on a random port, but its tokens name the
        // configured public URL; discovery says which, as it would to a
        // service configured from it.
        let res = app.get("/.well-known/openid-configuration", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        let discovery: Value = res.json().await.unwrap();
        Issued {
            issuer: discovery["issuer"].as_str().expect("issuer").to_owned(),
            user_sub: user["id"].as_str().expect("user id").to_owned(),
            app,
            alg,
            user_token,
            admin_token,
        }
    }

    /// The settings the examples and check scripts read.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AUTHGATE_URL", self.app.address.clone()),
            ("AUTHGATE_ISSUER", self.issuer.clone()),
            ("AUTHGATE_AUDIENCE", "authgate".into()),
            ("AUTHGATE_CHECK_ALG", self.alg.into()),
            ("AUTHGATE_CHECK_USER_TOKEN", self.user_token.clone()),
            ("AUTHGATE_CHECK_USER_SUB", self.user_sub.clone()),
            ("AUTHGATE_CHECK_ADMIN_TOKEN", self.admin_token.clone()),
        ]
    }

    /// Runs `program args` with these settings; fails, showing its output,
    /// unless it exits 0 within `SCRIPT_TIMEOUT`.
    async fn check(&self, what: &str, program: &Path, args: &[&Path], dir: &Path) {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(dir)
            .envs(self.env())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // The server is on loopback: no proxy must stand in between.
        for proxy in ["http_proxy", "https_proxy", "all_proxy"] {
            command.env_remove(proxy).env_remove(proxy.to_uppercase());
        }
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{what} ({}) ran over {SCRIPT_TIMEOUT:?}", self.alg))
            .unwrap_or_else(|e| panic!("{what}: cannot run {}: {e}", program.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{what} ({}) failed, {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            self.alg,
            output.status
        );
    }
}

async fn fastapi_example_and_pyjwt_verify(backend: Backend, alg: &'static str) {
    let Some(python) = verifier(PYTHON, "FastAPI") else {
        return;
    };
    let issued = Issued::start(backend, alg).await;
    let script = repo("tests/verifiers/check_fastapi.py");
    issued
        .check("check_fastapi.py", &python, &[&script], &repo(""))
        .await;
}

async fn node_example_verifies(backend: Backend, alg: &'static str) {
    let Some(packages) = verifier(NODE_VERIFIER, "Node") else {
        return;
    };
    let modules = packages.join("node_modules");
    assert!(
        modules.join("jose").is_dir(),
        "{NODE_VERIFIER}={}: no node_modules/jose there (npm ci with examples/verify-node/package.json)",
        packages.display()
    );
    // Node resolves `jose` from where the importing file is: put the example
    // and its check beside the installed packages, outside the work tree.
    let dir = ScratchDir::new();
    std::os::unix::fs::symlink(&modules, dir.0.join("node_modules")).unwrap();
    for file in [
        "examples/verify-node/verify.mjs",
        "tests/verifiers/check_node.mjs",
    ] {
        let name = Path::new(file).file_name().unwrap();
        std::fs::copy(repo(file), dir.0.join(name)).unwrap();
    }
    let issued = Issued::start(backend, alg).await;
    let script = dir.0.join("check_node.mjs");
    issued
        .check("check_node.mjs", Path::new("node"), &[&script], &dir.0)
        .await;
}

/// A directory of its own under the system's temporary directory, removed
/// when the test ends.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "authgate-verifier-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&path).unwrap();
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
