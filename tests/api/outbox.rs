//! The mail outbox seen from outside: mail goes to a directory when no SMTP
//! server is set; a failing server never fails a request; transient refusals
//! are retried with back-off, permanent ones and exhausted messages are given
//! up; instances sharing a database send each message once; admins see every
//! message's state but never its body.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    common::{Backend, TestDb},
    helpers::{PASSWORD, TestApp, TestAppBuilder, problem},
    on_both_databases, only_on_postgres,
};

on_both_databases!(
    without_an_smtp_server_mail_is_written_to_the_outbox_directory,
    new_mail_goes_out_at_once_without_waiting_for_the_next_poll,
    a_failing_mail_server_does_not_fail_the_request_and_the_mail_is_retried,
    a_permanent_refusal_gives_the_message_up_without_a_retry,
    a_message_is_given_up_after_its_last_attempt,
    a_message_whose_sender_died_is_sent_by_another_instance_after_the_lease,
    a_message_whose_sender_died_on_its_last_attempt_is_given_up,
    each_retry_waits_twice_as_long_as_the_one_before,
    the_mail_listing_pages_newest_first_and_filters_by_status,
    the_mail_listing_is_for_admins_and_checks_its_parameters,
    sent_mail_is_purged_after_the_retention_but_pending_mail_is_kept,
);

only_on_postgres!(two_instances_on_one_database_send_each_message_exactly_once);

const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "a long admin passphrase";
const SUBJECT: &str = "Confirm your email address";
/// The fields an admin sees of a message; nothing else (no body, no link).
const MESSAGE_FIELDS: [&str; 10] = [
    "id",
    "kind",
    "to",
    "subject",
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
    "sent_at",
    "last_error",
];

fn with_admin(builder: TestAppBuilder) -> TestAppBuilder {
    builder
        .arg("--admin-email", ADMIN_EMAIL)
        .arg("--admin-password", ADMIN_PASSWORD)
        .arg("--signup-per-minute", "1000")
}

async fn admin_token(app: &TestApp) -> String {
    let res = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK, "admin login");
    res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Signs up `name` with the address `name@example.com`, checking the 201.
async fn sign_up(app: &TestApp, name: &str) -> Value {
    let res = app
        .signup(json!({
            "username": name,
            "email": format!("{name}@example.com"),
            "password": PASSWORD,
        }))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED, "signup of {name}");
    res.json().await.unwrap()
}

/// A page of `/admin/mail`, checking the 200.
async fn mail_page(app: &TestApp, token: &str, query: &str) -> Value {
    let res = app.get(&format!("/admin/mail?{query}"), Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK, "/admin/mail?{query}");
    res.json().await.unwrap()
}

/// The listed messages to `to` (any status).
async fn messages_to(app: &TestApp, token: &str, to: &str) -> Vec<Value> {
    let page = mail_page(app, token, "limit=200").await;
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["to"] == to)
        .cloned()
        .collect()
}

/// Polls every 50 ms until `probe` gives a value; panics after `within`
/// with the last thing seen.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what} not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until the one message to `to` satisfies `done`, and returns it.
async fn wait_for_message(
    app: &TestApp,
    token: &str,
    to: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(Duration::from_secs(10), what, || async {
        let found = messages_to(app, token, to).await;
        match found.as_slice() {
            [one] if done(one) => Ok(one.clone()),
            _ => Err(format!("{found:#?}")),
        }
    })
    .await
}

fn timestamp(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().expect("a timestamp"), &Rfc3339).expect("RFC 3339")
}

/// Checks that a listed message shows only what admins may see.
fn assert_shows_no_body(message: &Value) {
    let fields: HashSet<&str> = message
        .as_object()
        .expect("a message object")
        .keys()
        .map(String::as_str)
        .collect();
    let allowed: HashSet<&str> = MESSAGE_FIELDS.into_iter().collect();
    assert!(
        fields.is_subset(&allowed),
        "unexpected fields in {message:#}"
    );
}

/// A directory of its own, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("authgate-outbox-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

/// The names of the files in `dir`, hidden ones included.
fn file_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read the outbox directory")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of the first `token=` in a raw message, quoted-printable or not.
fn token_in(raw: &str) -> Option<String> {
    let text = raw.replace("=\r\n", "").replace("=3D", "=");
    let start = text.find("token=")? + "token=".len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_%".contains(*c))
        .collect();
    (!token.is_empty()).then_some(token)
}

/// The first header called `name`, as written.
fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let (head, _) = raw.split_once("\r\n\r\n")?;
    head.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// A server started by hand, for settings the test helpers cannot give (they
/// always set an SMTP server, the sink).
struct BareServer {
    address: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _db: TestDb,
}

#[derive(clap::Parser)]
struct ServeArgs {
    #[command(flatten)]
    config: authgate::config::Config,
}

impl BareServer {
    async fn start(db: TestDb, settings: &[&str]) -> Self {
        use clap::Parser as _;
        let mut argv = vec![
            "authgate",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--jwt-secret",
            crate::helpers::TEST_SECRET,
            "--hash-workers",
            "1",
        ];
        argv.extend_from_slice(settings);
        let config = ServeArgs::try_parse_from(argv)
            .expect("valid settings")
            .config;
        let clock = std::sync::Arc::new(authgate::clock::ManualClock::new());
        let app = authgate::app::Application::build_with_clock(config, clock)
            .await
            .expect("the application builds");
        let address = format!("http://{}", app.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        BareServer {
            address,
            client: reqwest::Client::new(),
            stop: Some(stop),
            server: Some(server),
            _db: db,
        }
    }

    async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Stops the server and its background tasks, whatever they were doing.
    async fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An SMTP server that accepts connections and never says a word: a send
/// to it hangs until the mailer's own deadline.
struct SilentSmtp {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl SilentSmtp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        SilentSmtp { url, task }
    }
}

impl Drop for SilentSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn without_an_smtp_server_mail_is_written_to_the_outbox_directory(backend: Backend) {
    let dir = TempDir::new();
    // Created by the server.
    let outbox = dir.path().join("mail");
    let app = BareServer::start(
        TestDb::new(backend).await,
        &["--mail-outbox", outbox.to_str().expect("a UTF-8 path")],
    )
    .await;
    let res = app
        .post_json(
            "/auth/signup",
            &json!({"username": "carol", "email": "carol@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.json::<Value>().await.unwrap()["email_verified"], false);

    let name = eventually(Duration::from_secs(5), "an .eml file", || async {
        let names = file_names(&outbox);
        match names.as_slice() {
            [one] if one.ends_with(".eml") && !one.starts_with('.') => Ok(one.clone()),
            _ => Err(format!("{names:?}")),
        }
    })
    .await;
    let stem = name.strip_suffix(".eml").unwrap();
    uuid::Uuid::parse_str(stem).unwrap_or_else(|_| panic!("{name} is not <uuid>.eml"));

    let raw = std::fs::read_to_string(outbox.join(&name)).unwrap();
    assert_eq!(header(&raw, "To"), Some("carol@example.com"), "{raw}");
    assert_eq!(header(&raw, "Subject"), Some(SUBJECT), "{raw}");
    assert!(raw.contains("/auth/verify-email?token="), "{raw}");
    let token = token_in(&raw).expect("a link with a token");

    // The file is the whole message: its link works.
    let res = app
        .post_json("/auth/verify-email", &json!({"token": token}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["email_verified"], true);

    // Written once, and no partial file is left behind.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        file_names(&outbox),
        [name],
        "only the message, no partial files"
    );
}

async fn new_mail_goes_out_at_once_without_waiting_for_the_next_poll(backend: Backend) {
    let app = TestApp::builder()
        .arg("--signup-per-minute", "1000")
        .spawn(backend)
        .await;
    // Polling alone (every second) would leave about half of these slower
    // than half a second; a woken sender sends each within milliseconds.
    let mut fast = 0;
    let mut latencies = Vec::new();
    for i in 0..12 {
        let name = format!("quick{i}");
        sign_up(&app, &name).await;
        let answered = std::time::Instant::now();
        app.mail
            .wait_for(&format!("{name}@example.com"), Duration::from_secs(10))
            .await;
        let latency = answered.elapsed();
        if latency < Duration::from_millis(500) {
            fast += 1;
        }
        latencies.push(latency);
    }
    assert!(fast >= 10, "mail waited for the poll: {latencies:?}");
}

async fn a_failing_mail_server_does_not_fail_the_request_and_the_mail_is_retried(backend: Backend) {
    let app = with_admin(TestApp::builder()).spawn(backend).await;
    let admin = admin_token(&app).await;
    app.mail.fail_next(1);
    sign_up(&app, "dora").await;

    let first = wait_for_message(
        &app,
        &admin,
        "dora@example.com",
        "a failed first attempt",
        |m| m["attempts"] == 1 && m["last_error"].is_string(),
    )
    .await;
    assert_eq!(first["status"], "pending", "{first:#}");
    assert_eq!(first["kind"], "verify_email");
    assert_eq!(first["subject"], SUBJECT);
    assert!(first["sent_at"].is_null(), "{first:#}");
    assert!(
        !first["last_error"].as_str().unwrap().trim().is_empty(),
        "{first:#}"
    );
    let wait = timestamp(&first["next_attempt_at"]) - timestamp(&first["created_at"]);
    assert!(
        wait >= time::Duration::seconds(29) && wait <= time::Duration::seconds(40),
        "the first retry waits --mail-retry-after (30 s): {first:#}"
    );
    assert_shows_no_body(&first);
    assert_eq!(app.mail.count_to("dora@example.com"), 0);

    // Not before its time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.mail.count_to("dora@example.com"),
        0,
        "retried too early"
    );

    app.advance(Duration::from_secs(31));
    let received = app
        .mail
        .wait_for("dora@example.com", Duration::from_secs(10))
        .await;
    assert_eq!(received.subject(), SUBJECT);
    let token = received.link_token().expect("a link with a token");
    let message_id = received.header("Message-ID").expect("a Message-ID");
    assert!(
        message_id.contains(first["id"].as_str().unwrap()),
        "the Message-ID {message_id} names the outbox row {}",
        first["id"]
    );

    let sent = wait_for_message(&app, &admin, "dora@example.com", "a sent message", |m| {
        m["status"] == "sent"
    })
    .await;
    assert_eq!(sent["attempts"], 2, "{sent:#}");
    assert!(sent["sent_at"].is_string(), "{sent:#}");
    assert!(sent["last_error"].is_null(), "{sent:#}");
    assert_eq!(sent["id"], first["id"]);
    assert_shows_no_body(&sent);

    let page = mail_page(&app, &admin, "").await;
    let text = page.to_string();
    assert!(!text.contains(&token), "the listing shows the link: {text}");
    assert!(!text.contains("verify-email"), "the listing shows the body");
    assert_eq!(app.mail.count_to("dora@example.com"), 1);
}

async fn a_permanent_refusal_gives_the_message_up_without_a_retry(backend: Backend) {
    let app = with_admin(TestApp::builder()).spawn(backend).await;
    let admin = admin_token(&app).await;
    app.mail.reject_next(1);
    sign_up(&app, "erin").await;

    let failed = wait_for_message(
        &app,
        &admin,
        "erin@example.com",
        "a given-up message",
        |m| m["status"] == "failed",
    )
    .await;
    assert_eq!(failed["attempts"], 1, "{failed:#}");
    let error = failed["last_error"].as_str().expect("last_error");
    assert!(error.contains("550"), "the server's refusal: {failed:#}");
    assert!(failed["sent_at"].is_null());

    // Not tried again, however long one waits.
    app.advance(Duration::from_secs(3 * 3600));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let admin = admin_token(&app).await;
    assert_eq!(app.mail.count_to("erin@example.com"), 0);
    let still = messages_to(&app, &admin, "erin@example.com").await;
    assert_eq!(still.len(), 1);
    assert_eq!(still[0]["status"], "failed");
    assert_eq!(still[0]["attempts"], 1);

    // Listed among the failed, not among the pending or sent.
    let failed_ids = |page: Value| -> Vec<Value> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].clone())
            .collect()
    };
    assert!(failed_ids(mail_page(&app, &admin, "status=failed").await).contains(&failed["id"]));
    assert!(!failed_ids(mail_page(&app, &admin, "status=pending").await).contains(&failed["id"]));
    assert!(!failed_ids(mail_page(&app, &admin, "status=sent").await).contains(&failed["id"]));

    // The next message goes out as usual.
    sign_up(&app, "frank").await;
    app.mail
        .wait_for("frank@example.com", Duration::from_secs(10))
        .await;
}

async fn a_message_is_given_up_after_its_last_attempt(backend: Backend) {
    let app = with_admin(TestApp::builder())
        .arg("--mail-max-attempts", "2")
        .spawn(backend)
        .await;
    let admin = admin_token(&app).await;
    app.mail.fail_next(5);
    sign_up(&app, "gina").await;

    let first = wait_for_message(&app, &admin, "gina@example.com", "the first attempt", |m| {
        m["attempts"] == 1 && m["last_error"].is_string()
    })
    .await;
    assert_eq!(first["status"], "pending", "{first:#}");

    app.advance(Duration::from_secs(31));
    let given_up = wait_for_message(
        &app,
        &admin,
        "gina@example.com",
        "a given-up message",
        |m| m["status"] == "failed",
    )
    .await;
    assert_eq!(given_up["attempts"], 2, "{given_up:#}");
    assert!(given_up["last_error"].is_string(), "{given_up:#}");

    // No third attempt.
    app.advance(Duration::from_secs(3 * 3600));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let admin = admin_token(&app).await;
    let still = messages_to(&app, &admin, "gina@example.com").await;
    assert_eq!(still[0]["status"], "failed", "{still:#?}");
    assert_eq!(still[0]["attempts"], 2, "{still:#?}");
    assert_eq!(app.mail.count_to("gina@example.com"), 0);
}

/// Signs up `name` on a server whose mail server never answers, and once it
/// holds the message, starts a second instance (with the sink and
/// `settings`) on the same database and kills the first in the middle of its
/// send. Returns the second instance and the database, which the test keeps.
async fn claimed_by_a_dead_sender(
    backend: Backend,
    name: &str,
    settings: &[&str],
) -> (TestApp, TestDb) {
    let db = TestDb::new(backend).await;
    let silent = SilentSmtp::start().await;
    let first = BareServer::start(
        TestDb::attach(&db),
        &[
            "--smtp-url",
            &silent.url,
            "--admin-email",
            ADMIN_EMAIL,
            "--admin-password",
            ADMIN_PASSWORD,
        ],
    )
    .await;
    let res = first
        .post_json(
            "/auth/login",
            &json!({"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let first_admin = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let to = format!("{name}@example.com");
    let res = first
        .post_json(
            "/auth/signup",
            &json!({"username": name, "email": to, "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "a hanging mail server does not hold up the answer"
    );
    // The first instance claims the message and hangs in the send.
    eventually(
        Duration::from_secs(5),
        "the first sender's claim",
        || async {
            let res = first
                .client
                .get(format!("{}/admin/mail", first.address))
                .bearer_auth(&first_admin)
                .send()
                .await
                .expect("request sent");
            let page: Value = res.json().await.unwrap();
            match page["messages"].as_array() {
                Some(list)
                    if list
                        .iter()
                        .any(|m| m["to"] == to.as_str() && m["attempts"] == 1) =>
                {
                    Ok(())
                }
                _ => Err(format!("{page:#}")),
            }
        },
    )
    .await;

    let mut builder = with_admin(TestApp::builder());
    for pair in settings.chunks(2) {
        builder = builder.arg(pair[0], pair[1]);
    }
    let second = builder.spawn_on(TestDb::attach(&db)).await;
    let admin = admin_token(&second).await;
    // The claim holds: the second instance leaves the message alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = messages_to(&second, &admin, &to).await;
    assert_eq!(held[0]["status"], "pending", "{held:#?}");
    assert!(held[0]["last_error"].is_null(), "{held:#?}");
    assert_eq!(second.mail.count_to(&to), 0);
    assert_eq!(held[0]["attempts"], 1, "{held:#?}");

    first.kill().await;
    drop(silent);
    (second, db)
}

async fn a_message_whose_sender_died_is_sent_by_another_instance_after_the_lease(backend: Backend) {
    let (app, _db) = claimed_by_a_dead_sender(backend, "pia", &[]).await;
    // Past the five-minute lease.
    app.advance(Duration::from_secs(6 * 60));
    let received = app
        .mail
        .wait_for("pia@example.com", Duration::from_secs(10))
        .await;
    assert_eq!(received.subject(), SUBJECT);
    let admin = admin_token(&app).await;
    let sent = wait_for_message(&app, &admin, "pia@example.com", "a sent message", |m| {
        m["status"] == "sent"
    })
    .await;
    assert_eq!(sent["attempts"], 2, "{sent:#}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.mail.count_to("pia@example.com"), 1);
}

async fn a_message_whose_sender_died_on_its_last_attempt_is_given_up(backend: Backend) {
    let (app, _db) = claimed_by_a_dead_sender(backend, "rosa", &["--mail-max-attempts", "1"]).await;
    app.advance(Duration::from_secs(6 * 60));
    let admin = admin_token(&app).await;
    let failed = wait_for_message(
        &app,
        &admin,
        "rosa@example.com",
        "a given-up message",
        |m| m["status"] == "failed",
    )
    .await;
    assert_eq!(failed["attempts"], 1, "{failed:#}");
    assert!(failed["last_error"].is_string(), "why: {failed:#}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.mail.count_to("rosa@example.com"), 0);
}

async fn each_retry_waits_twice_as_long_as_the_one_before(backend: Backend) {
    let app = with_admin(TestApp::builder())
        .arg("--mail-retry-after", "10s")
        .spawn(backend)
        .await;
    let admin = admin_token(&app).await;
    app.mail.fail_next(2);
    sign_up(&app, "hugo").await;
    wait_for_message(&app, &admin, "hugo@example.com", "the first attempt", |m| {
        m["attempts"] == 1 && m["last_error"].is_string()
    })
    .await;

    // The first retry comes after 10 s…
    app.advance(Duration::from_secs(11));
    let second = wait_for_message(
        &app,
        &admin,
        "hugo@example.com",
        "the second attempt",
        |m| {
            m["attempts"] == 2
                && m["status"] == "pending"
                && m["last_error"].is_string()
                && timestamp(&m["next_attempt_at"]) > OffsetDateTime::now_utc()
        },
    )
    .await;
    // …the second after 20 s (more than 10, not yet).
    app.advance(Duration::from_secs(11));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.mail.count_to("hugo@example.com"),
        0,
        "retried too early"
    );
    let still = messages_to(&app, &admin, "hugo@example.com").await;
    assert_eq!(still[0]["attempts"], 2, "{still:#?} after {second:#}");

    app.advance(Duration::from_secs(10));
    app.mail
        .wait_for("hugo@example.com", Duration::from_secs(10))
        .await;
    let sent = wait_for_message(&app, &admin, "hugo@example.com", "a sent message", |m| {
        m["status"] == "sent"
    })
    .await;
    assert_eq!(sent["attempts"], 3, "{sent:#}");
}

async fn the_mail_listing_pages_newest_first_and_filters_by_status(backend: Backend) {
    let app = with_admin(TestApp::builder()).spawn(backend).await;
    let admin = admin_token(&app).await;
    let names = ["hana", "ivan", "judy", "kurt", "lena"];
    for name in names {
        sign_up(&app, name).await;
        app.mail
            .wait_for(&format!("{name}@example.com"), Duration::from_secs(10))
            .await;
    }
    // Wait until every message is recorded as sent.
    eventually(Duration::from_secs(10), "five sent messages", || async {
        let page = mail_page(&app, &admin, "status=sent").await;
        let n = page["messages"].as_array().unwrap().len();
        if n == names.len() {
            Ok(())
        } else {
            Err(format!("{page:#}"))
        }
    })
    .await;

    let mut seen: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let page = mail_page(&app, &admin, &query).await;
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= 2, "{page:#}");
        for m in messages {
            assert_shows_no_body(m);
            seen.push(m["to"].as_str().unwrap().to_owned());
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = names
        .iter()
        .rev()
        .map(|n| format!("{n}@example.com"))
        .collect();
    assert_eq!(seen, newest_first, "every message once, newest first");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());

    assert!(
        mail_page(&app, &admin, "status=pending").await["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        mail_page(&app, &admin, "status=failed").await["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

async fn the_mail_listing_is_for_admins_and_checks_its_parameters(backend: Backend) {
    let app = with_admin(TestApp::builder()).spawn(backend).await;
    let admin = admin_token(&app).await;
    sign_up(&app, "mona").await;
    let user = app.tokens("mona").await.access;

    let res = app.get("/admin/mail", Some(&user)).await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["code"],
        "forbidden"
    );
    let res = app.get("/admin/mail", None).await;
    problem(res, StatusCode::UNAUTHORIZED).await;

    for (query, field) in [
        ("status=bogus", "status"),
        ("status=SENT", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("cursor=%21%21", "cursor"),
    ] {
        let res = app.get(&format!("/admin/mail?{query}"), Some(&admin)).await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body:#}");
    }
    for status in ["pending", "sent", "failed"] {
        mail_page(&app, &admin, &format!("status={status}")).await;
    }
}

async fn sent_mail_is_purged_after_the_retention_but_pending_mail_is_kept(backend: Backend) {
    let app = with_admin(TestApp::builder())
        .arg("--audit-retention", "1d")
        .arg("--purge-interval", "100ms")
        .spawn(backend)
        .await;
    let admin = admin_token(&app).await;
    sign_up(&app, "nina").await;
    app.mail
        .wait_for("nina@example.com", Duration::from_secs(10))
        .await;
    wait_for_message(&app, &admin, "nina@example.com", "a sent message", |m| {
        m["status"] == "sent"
    })
    .await;
    app.mail.fail_next(1000);
    sign_up(&app, "otto").await;
    wait_for_message(&app, &admin, "otto@example.com", "a failed attempt", |m| {
        m["attempts"] == 1 && m["last_error"].is_string()
    })
    .await;

    // Within the retention, nothing goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(messages_to(&app, &admin, "nina@example.com").await.len(), 1);

    app.advance(Duration::from_secs(2 * 24 * 3600));
    let admin = admin_token(&app).await;
    eventually(
        Duration::from_secs(5),
        "the old sent message purged",
        || async {
            let left = messages_to(&app, &admin, "nina@example.com").await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:#?}"))
            }
        },
    )
    .await;
    let pending = messages_to(&app, &admin, "otto@example.com").await;
    assert_eq!(pending.len(), 1, "a pending message is kept");
    assert_eq!(pending[0]["status"], "pending", "{pending:#?}");
}

async fn two_instances_on_one_database_send_each_message_exactly_once() {
    let a = with_admin(TestApp::builder())
        .arg("--hash-queue-per-client", "100")
        .spawn(Backend::Postgres)
        .await;
    let b = with_admin(TestApp::builder())
        .arg("--hash-queue-per-client", "100")
        .mail_to(&a.mail)
        .spawn_on(TestDb::attach(a.db()))
        .await;
    let names: Vec<String> = (0..30).map(|i| format!("user{i:02}")).collect();
    let signups = names.iter().enumerate().map(|(i, name)| {
        let app = if i % 2 == 0 { &a } else { &b };
        sign_up(app, name)
    });
    futures::future::join_all(signups).await;

    for name in &names {
        a.mail
            .wait_for(&format!("{name}@example.com"), Duration::from_secs(30))
            .await;
    }
    // Time for a second copy to arrive, if one were on its way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut per_address: HashMap<String, usize> = HashMap::new();
    for m in a.mail.messages() {
        for to in m.to {
            *per_address.entry(to.to_lowercase()).or_default() += 1;
        }
    }
    for name in &names {
        assert_eq!(
            per_address.get(&format!("{name}@example.com")),
            Some(&1),
            "{name}: {per_address:?}"
        );
    }
    assert_eq!(a.mail.messages().len(), names.len());

    // Each was claimed once: one attempt, sent.
    let admin = admin_token(&a).await;
    let page = eventually(Duration::from_secs(10), "30 sent messages", || async {
        let page = mail_page(&a, &admin, "status=sent&limit=200").await;
        if page["messages"].as_array().unwrap().len() == names.len() {
            Ok(page)
        } else {
            Err(format!("{page:#}"))
        }
    })
    .await;
    for m in page["messages"].as_array().unwrap() {
        assert_eq!(m["attempts"], 1, "{m:#}");
    }
}
