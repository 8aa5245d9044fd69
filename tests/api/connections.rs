//! Hostile clients at the connection level: half-sent headers, idle and
//! stalled connections, oversized bodies, floods of connections; and the
//! drain on SIGTERM.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};

use crate::{
    common::{Backend, TestDb},
    helpers::{TestApp, spawn_app},
    on_both_databases,
};

on_both_databases!(
    a_half_sent_header_is_closed_after_the_header_timeout,
    an_idle_keep_alive_connection_is_closed_after_the_idle_timeout,
    an_idle_connection_outlives_the_header_timeout,
    a_stalled_body_gets_408,
    a_dribbled_body_gets_408_when_it_is_not_whole_in_time,
    a_request_head_over_16_kib_gets_431,
    a_client_that_stops_reading_its_answers_is_closed,
    a_content_length_over_the_limit_is_refused_at_once,
    a_page_form_past_the_limit_or_stalled_gets_a_page_saying_so,
    connections_over_the_per_address_cap_are_refused_and_others_still_served,
    connections_over_the_overall_cap_are_refused_with_503,
    a_trusted_proxy_is_held_only_to_the_overall_cap,
    five_hundred_slowloris_connections_do_not_keep_another_client_waiting,
    sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits,
);

/// Once, on SQLite: the database plays no part, and two at a time would
/// need more open files than a test process has.
pub fn memory_trials(pg: bool) -> Vec<libtest_mimic::Trial> {
    vec![crate::common::trial(
        module_path!(),
        Backend::Sqlite,
        "ten_thousand_idle_connections_stay_under_256_mib",
        pg,
        ten_thousand_idle_connections_stay_under_256_mib,
    )]
}

/// A raw connection from `from` (any 127.0.0.0/8 address is this machine).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

fn address(app: &TestApp) -> SocketAddr {
    app.address.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the peer closes; the bytes, or `None` if it stays open
/// beyond `within`.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `request` on a new connection; the answer's status and text, once
/// the server has answered and closed (within 5 s).
async fn answer_to(app: &TestApp, request: &[u8]) -> (u16, String) {
    let mut stream = connect_from("127.0.0.1", address(app)).await;
    stream.write_all(request).await.unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .expect("answered and closed within 5 s");
    (
        status_of(&answer),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

async fn a_half_sent_header_is_closed_after_the_header_timeout(backend: Backend) {
    let app = TestApp::builder()
        .arg("--header-read-timeout", "1s")
        .spawn(backend)
        .await;
    let mut stream = connect_from("127.0.0.1", address(&app)).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(backend: Backend) {
    let app = TestApp::builder()
        .arg("--idle-timeout", "1s")
        .spawn(backend)
        .await;
    let mut stream = connect_from("127.0.0.1", address(&app)).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .expect("closed within 5 s of going idle");
    assert_eq!(status_of(&answered), 200);
}

async fn an_idle_connection_outlives_the_header_timeout(backend: Backend) {
    // A proxy keeps idle connections to reuse: only the idle timeout, which
    // should outlast the proxy's own, may close them.
    let app = TestApp::builder()
        .arg("--header-read-timeout", "1s")
        .spawn(backend)
        .await;
    let mut stream = connect_from("127.0.0.1", address(&app)).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&buf[..n]), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        status_of(&answer),
        200,
        "the reused connection still answers"
    );
}

async fn a_stalled_body_gets_408(backend: Backend) {
    let app = TestApp::builder()
        .arg("--body-read-timeout", "1s")
        .spawn(backend)
        .await;
    let (status, text) = answer_to(
        &app,
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"username\":",
    )
    .await;
    assert_eq!(status, 408);
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

async fn a_dribbled_body_gets_408_when_it_is_not_whole_in_time(backend: Backend) {
    let app = TestApp::builder()
        .arg("--body-read-timeout", "1s")
        .spawn(backend)
        .await;
    let mut stream = connect_from("127.0.0.1", address(&app)).await;
    stream
        .write_all(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    // A byte every 200 ms for 12 s: never idle for long, never whole either.
    let (mut reader, mut writer) = stream.into_split();
    let dribble = tokio::spawn(async move {
        for _ in 0..60 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut answer))
        .await
        .expect("answered within 5 s")
        .unwrap();
    assert_eq!(status_of(&answer[..n]), 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    dribble.abort();
}

async fn a_request_head_over_16_kib_gets_431(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut stream = connect_from("127.0.0.1", address(&app)).await;
    let big = "a".repeat(20 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert_eq!(status_of(&answer), 431);
    // An ordinary request is still answered.
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

async fn a_client_that_stops_reading_its_answers_is_closed(backend: Backend) {
    let app = TestApp::builder()
        .arg("--header-read-timeout", "1s")
        .spawn(backend)
        .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address(&app)).await.unwrap();
    // Many large answers asked for, none read.
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&request)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The server gave up on the connection: what it had sent ends, well
    // short of 200 answers.
    let received = read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("closed by the server");
    let answers = String::from_utf8_lossy(&received)
        .matches("HTTP/1.1 200")
        .count();
    assert!(answers < 200, "{answers} answers");
}

async fn a_content_length_over_the_limit_is_refused_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut stream = connect_from("127.0.0.1", address(&app)).await;
    stream
        .write_all(
            b"POST /auth/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000000000\r\n\r\n{",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    assert_eq!(status_of(&head[..n]), 413);
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn a_page_form_past_the_limit_or_stalled_gets_a_page_saying_so(backend: Backend) {
    let app = TestApp::builder()
        .arg("--body-read-timeout", "1s")
        .spawn(backend)
        .await;
    // Sent in chunks, so no Content-Length announces the size: the limit is
    // met while reading.
    let mut request = b"POST /oauth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
        Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..9 {
        request.extend_from_slice(format!("2000\r\n{}\r\n", "a".repeat(0x2000)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = answer_to(&app, &request).await;
    assert_eq!(status, 413);
    let text = text.to_lowercase();
    assert!(text.contains("content-type: text/html"), "{text}");
    assert!(text.contains("the form is too large"), "{text}");

    // A form that stops arriving.
    let (status, text) = answer_to(
        &app,
        b"POST /oauth/login HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 100\r\n\r\nlogin=ada",
    )
    .await;
    assert_eq!(status, 408);
    let text = text.to_lowercase();
    assert!(text.contains("content-type: text/html"), "{text}");
    assert!(text.contains("did not arrive in time"), "{text}");
}

async fn connections_over_the_per_address_cap_are_refused_and_others_still_served(
    backend: Backend,
) {
    let app = TestApp::builder()
        .arg("--max-connections-per-ip", "5")
        .spawn(backend)
        .await;
    let to = address(&app);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.2", to).await);
    }
    // Give the server time to count them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sixth = connect_from("127.0.0.2", to).await;
    sixth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let refused = read_to_close(&mut sixth, Duration::from_secs(5))
        .await
        .expect("refused and closed");
    assert_eq!(status_of(&refused), 503);
    let refused = String::from_utf8_lossy(&refused).to_lowercase();
    assert!(refused.contains("too_many_connections"));
    assert!(refused.contains("x-content-type-options: nosniff"));
    // Another address is served as usual.
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
    // A connection that closes gives its place back.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.2", to).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut again, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status_of(&answer), 200);
}

async fn connections_over_the_overall_cap_are_refused_with_503(backend: Backend) {
    let app = TestApp::builder()
        .arg("--max-connections", "20")
        .spawn(backend)
        .await;
    let to = address(&app);
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(connect_from(&format!("127.0.1.{}", i + 1), to).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = connect_from("127.0.2.1", to).await;
    over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let refused = read_to_close(&mut over, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status_of(&refused), 503);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

async fn a_trusted_proxy_is_held_only_to_the_overall_cap(backend: Backend) {
    let app = TestApp::builder()
        .arg("--max-connections-per-ip", "2")
        .arg("--trusted-proxies", "127.0.0.4/32")
        .spawn(backend)
        .await;
    let to = address(&app);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.4", to).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut more = connect_from("127.0.0.4", to).await;
    more.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut more, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status_of(&answer), 200);
}

async fn five_hundred_slowloris_connections_do_not_keep_another_client_waiting(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("patient").await;
    let tokens = app.tokens("patient").await;
    let to = address(&app);
    // 500 connections from five other addresses, each with a header begun
    // and never finished.
    let mut slow = Vec::new();
    for i in 0..500 {
        let mut s = connect_from(&format!("127.0.3.{}", i % 5 + 1), to).await;
        let _ = s.write_all(b"GET /users/me HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(s);
    }
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    drop(slow);
}

/// The service as its own process on `db`, with `args`; its address.
async fn start_process(db: &TestDb, args: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--hash-workers", "1"])
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .env("AUTHGATE_LOG_FORMAT", "json")
        .env(
            "AUTHGATE_MAIL_OUTBOX",
            std::env::temp_dir().join("authgate-test-outbox"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The log goes to standard error.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(address) = event["address"].as_str() {
                return address.parse::<SocketAddr>().unwrap();
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .expect("listening within 30 s");
    // Keep reading the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

async fn sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (mut child, to) = start_process(&db, &["--shutdown-timeout", "5s"]).await;
    // A request in flight: its body half sent.
    let mut in_flight = connect_from("127.0.0.1", to).await;
    let body = br#"{"username": "drained", "password": "correct horse battery staple"}"#;
    let head = format!(
        "POST /auth/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused.
    assert!(
        TcpStream::connect(to).await.is_err(),
        "a new connection was accepted while draining"
    );
    // The request in flight completes.
    in_flight.write_all(&body[10..]).await.unwrap();
    let answer = read_to_close(&mut in_flight, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert_eq!(
        status_of(&answer),
        201,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let exited = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exited within the shutdown timeout")
        .unwrap();
    assert!(exited.success(), "{exited:?}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn ten_thousand_idle_connections_stay_under_256_mib(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (child, to) = start_process(
        &db,
        &["--idle-timeout", "60s", "--max-connections", "12000"],
    )
    .await;
    let pid = child.id().unwrap();
    // Spread over 100 addresses, under the per-address cap.
    let mut idle = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let from = format!("127.0.10.{}", i % 100 + 1);
        idle.push(connect_from(&from, to).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{to}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "still answering");
    let rss = rss_kib(pid);
    assert!(
        rss < 256 * 1024,
        "{} MiB for 10,000 idle connections",
        rss / 1024
    );
    drop(idle);
}
