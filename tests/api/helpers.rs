//! `TestApp`: the real server on a random port, on a database of its own.

use std::{sync::Arc, time::Duration};

use authgate::{
    app::Application,
    clock::ManualClock,
    config::Config,
    http::AppState,
    store::{self, Store},
};
use clap::Parser;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

pub use crate::common::{Backend, TestDb, smtp::SmtpSink};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

/// A known signing key, so that tests can forge tokens with it.
pub const TEST_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
pub const PASSWORD: &str = "correct horse battery staple";
/// The admin `with_admin` servers create at start-up.
pub const ADMIN_EMAIL: &str = "root@example.com";
pub const ADMIN_PASSWORD: &str = "a long admin passphrase";

/// Settings for a test server; `spawn` starts it.
pub struct TestAppBuilder {
    args: Vec<String>,
    mail: Option<SmtpSink>,
}

impl TestAppBuilder {
    /// Sets a flag, replacing an earlier value of the same flag.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args[i + 1] = value.into();
        } else {
            self.args.push(flag.into());
            self.args.push(value.into());
        }
        self
    }

    /// Creates the admin `ADMIN_EMAIL` at start-up.
    pub fn with_admin(self) -> Self {
        self.arg("--admin-email", ADMIN_EMAIL)
            .arg("--admin-password", ADMIN_PASSWORD)
    }

    /// Sends the server's mail to `sink` (by default each server gets its own).
    pub fn mail_to(mut self, sink: &SmtpSink) -> Self {
        self.mail = Some(sink.clone());
        self
    }

    pub async fn spawn(self, backend: Backend) -> TestApp {
        let db = TestDb::new(backend).await;
        self.spawn_on(db).await
    }

    /// Starts a server on an existing database (another instance, or a restart).
    pub async fn spawn_on(self, db: TestDb) -> TestApp {
        let mail = match self.mail {
            Some(sink) => sink,
            None => SmtpSink::start().await,
        };
        let mut argv: Vec<String> = vec![
            "authgate".into(),
            "--database-url".into(),
            db.url.clone(),
            "--smtp-url".into(),
            mail.url(),
        ];
        // Any free port, unless the test names one.
        if !self.args.iter().any(|a| a == "--listen") {
            argv.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        argv.extend(self.args.iter().cloned());
        let config = Args::try_parse_from(&argv)
            .expect("valid test settings")
            .config;
        let clock = Arc::new(ManualClock::new());
        let app = Application::build_with_clock(config, clock.clone())
            .await
            .expect("the application builds");
        let address = format!("http://{}", app.local_addr());
        let metrics = app.metrics_addr().map(|a| format!("http://{a}/metrics"));
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async move {
                let _ = stopped.await;
            })
            .await
            .expect("the server runs");
        });
        TestApp {
            address,
            metrics,
            client: reqwest::Client::new(),
            db: Some(db),
            state,
            clock,
            stop: Some(stop),
            server: Some(server),
            args: self.args,
            mail,
        }
    }
}

pub struct TestApp {
    pub address: String,
    /// The metrics URL, when `--metrics-listen` is set.
    pub metrics: Option<String>,
    pub client: reqwest::Client,
    pub state: AppState,
    /// The server's clock: tests move it forward instead of sleeping.
    pub clock: Arc<ManualClock>,
    db: Option<TestDb>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    args: Vec<String>,
    /// The SMTP server the server's mail goes to.
    pub mail: SmtpSink,
}

/// A test server with the test signing key and otherwise default settings.
pub async fn spawn_app(backend: Backend) -> TestApp {
    TestApp::builder().spawn(backend).await
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        Self::builder_with_generated_key().arg("--jwt-secret", TEST_SECRET)
    }

    /// A builder without the fixed signing key: the server generates its own.
    pub fn builder_with_generated_key() -> TestAppBuilder {
        TestAppBuilder {
            args: Vec::new(),
            mail: None,
        }
        .arg("--hash-workers", "1")
    }

    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("the database is still attached")
    }

    /// Stops the server and hands back its database.
    pub async fn stop(mut self) -> (TestDb, Vec<String>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        (
            self.db.take().expect("database"),
            std::mem::take(&mut self.args),
        )
    }

    /// Stops the server and starts a new one on the same database and settings.
    pub async fn restart(self) -> TestApp {
        let mail = self.mail.clone();
        let (db, args) = self.stop().await;
        TestAppBuilder {
            args,
            mail: Some(mail),
        }
        .spawn_on(db)
        .await
    }

    /// A store of its own on the server's database, to look at what it wrote.
    pub async fn store(&self) -> Arc<dyn Store> {
        let url = self.db().url.parse().expect("a database URL");
        store::connect(&url).await.expect("the test database opens")
    }

    /// Stops the server's clock, so that waits measured by it (back-offs)
    /// cannot run out while a slow machine works through a burst.
    pub fn stop_clock(&self) {
        self.clock.stop();
    }

    /// Moves the server's clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.client
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    pub async fn signup(&self, body: Value) -> Response {
        self.post_json("/auth/signup", &body).await
    }

    /// Signs up `username` (with an email derived from it) and checks the 201.
    pub async fn create_user(&self, username: &str) -> Value {
        let res = self
            .signup(json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "signup of {username}");
        res.json().await.unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.post_json(
            "/auth/login",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Logs in and returns the token response, checking the 200.
    pub async fn tokens(&self, username: &str) -> Tokens {
        let res = self.login(username, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::OK, "login of {username}");
        Tokens::from(res.json::<Value>().await.unwrap())
    }

    /// An access token of the admin a `with_admin` server created.
    pub async fn admin_token(&self) -> String {
        let res = self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(res.status(), StatusCode::OK, "admin login");
        Tokens::from(res.json::<Value>().await.unwrap()).access
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json("/auth/refresh", &json!({"refresh_token": refresh_token}))
            .await
    }

    pub async fn me_status(&self, access_token: &str) -> StatusCode {
        self.get("/users/me", Some(access_token)).await.status()
    }

    /// Polls `/users/me` until the token is refused; fails if that takes
    /// longer than `within`.
    pub async fn assert_refused_within(&self, access_token: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.me_status(access_token).await;
            if status == StatusCode::UNAUTHORIZED {
                return;
            }
            assert_eq!(
                status,
                StatusCode::OK,
                "unexpected status while waiting for revocation"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "token still accepted after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A token response.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub body: Value,
}

impl From<Value> for Tokens {
    fn from(body: Value) -> Self {
        Tokens {
            access: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
            body,
        }
    }
}

/// The problem document of an error response, after checking its status and
/// content type.
pub async fn problem(res: Response, status: StatusCode) -> Value {
    assert_eq!(res.status(), status);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    body
}

/// The fields a 422 problem names.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

/// The claims of a JWT, read without checking its signature.
pub fn claims_of(token: &str) -> Value {
    jwt_part(token, 1)
}

/// The header of a JWT, read without checking its signature.
pub fn header_of(token: &str) -> Value {
    jwt_part(token, 0)
}

fn jwt_part(token: &str, index: usize) -> Value {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}
