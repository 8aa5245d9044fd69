//! Attacks on the login throttling that must not work: parallel guessing,
//! switching identifiers, and one client crowding out everyone else.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp},
    on_both_databases,
};

on_both_databases!(
    parallel_guesses_at_one_account_get_only_the_free_checks,
    parallel_guesses_from_one_ip_get_only_the_ip_free_checks,
    username_and_email_share_one_back_off_counter,
    after_the_free_failures_the_next_attempt_is_throttled,
    every_login_counts_against_the_per_ip_and_per_account_quotas,
    a_flood_of_correct_logins_from_one_client_does_not_starve_another,
    the_addresses_of_one_ipv6_network_share_one_counter,
);

/// Limits that stay out of the way of the one being tested.
fn generous(builder: crate::helpers::TestAppBuilder) -> crate::helpers::TestAppBuilder {
    builder
        .arg("--login-per-minute", "100000")
        .arg("--login-account-per-minute", "100000")
        .arg("--login-ip-free-failures", "100000")
        .arg("--hash-queue", "1000")
        .arg("--hash-queue-per-client", "1000")
        .arg("--signup-per-minute", "1000")
        .arg("--max-connections-per-ip", "1000")
}

/// How many answers had each status.
fn tally(statuses: impl IntoIterator<Item = StatusCode>) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for s in statuses {
        *counts.entry(s.as_u16()).or_default() += 1;
    }
    counts
}

async fn login_from(app: &TestApp, ip: &str, login: &str, password: &str) -> StatusCode {
    app.client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"username": login, "password": password}))
        .send()
        .await
        .expect("request sent")
        .status()
}

async fn parallel_guesses_at_one_account_get_only_the_free_checks(backend: Backend) {
    let app = generous(TestApp::builder())
        .arg("--login-free-failures", "5")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("alice").await;
    let guesses =
        (0..250).map(|i| app.login("alice", if i == 0 { "guess 0" } else { "wrong guess" }));
    let statuses = futures::future::join_all(guesses).await;
    let counts = tally(statuses.iter().map(|r| r.status()));
    // Exactly as many passwords were checked as five guesses in a row get.
    assert_eq!(counts.get(&401), Some(&5), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&245), "{counts:?}");
    assert_eq!(
        app.login("alice", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "backing off, even for the right password"
    );
}

async fn parallel_guesses_from_one_ip_get_only_the_ip_free_checks(backend: Backend) {
    let app = generous(TestApp::builder())
        .arg("--login-ip-free-failures", "20")
        .spawn(backend)
        .await;
    app.stop_clock();
    let names: Vec<String> = (0..300).map(|i| format!("nobody{i}")).collect();
    let guesses = names.iter().map(|name| app.login(name, "wrong guess"));
    let statuses = futures::future::join_all(guesses).await;
    let counts = tally(statuses.iter().map(|r| r.status()));
    assert_eq!(counts.get(&401), Some(&20), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&280), "{counts:?}");
}

async fn username_and_email_share_one_back_off_counter(backend: Backend) {
    let app = TestApp::builder()
        .arg("--login-free-failures", "4")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("bob").await;
    for login in ["bob", "bob@example.com", "BOB", "Bob@Example.com"] {
        assert_eq!(
            app.login(login, "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED,
            "{login}"
        );
    }
    for login in ["bob", "bob@example.com"] {
        assert_eq!(
            app.login(login, PASSWORD).await.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{login}"
        );
    }
}

async fn after_the_free_failures_the_next_attempt_is_throttled(backend: Backend) {
    let app = TestApp::builder()
        .arg("--login-free-failures", "5")
        .arg("--login-ip-free-failures", "7")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("carol").await;
    for _ in 0..5 {
        assert_eq!(
            app.login("carol", "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let sixth = app.login("carol", "wrong password!").await.status();
    assert_eq!(sixth, StatusCode::TOO_MANY_REQUESTS);
    // Per IP: the 7 free failures are spread over accounts, then the IP waits.
    for i in 0..2 {
        assert_eq!(
            app.login(&format!("nobody{i}"), "wrong password!")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login("nobody9", "wrong password!").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn every_login_counts_against_the_per_ip_and_per_account_quotas(backend: Backend) {
    let app = TestApp::builder()
        .arg("--trusted-proxies", "127.0.0.1/32")
        .arg("--login-per-minute", "3")
        .arg("--login-account-per-minute", "2")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("dave").await;
    app.create_user("erin").await;
    let ip = "203.0.113.7";
    // Two correct logins to one account, then that account waits...
    assert_eq!(login_from(&app, ip, "dave", PASSWORD).await, StatusCode::OK);
    assert_eq!(login_from(&app, ip, "dave", PASSWORD).await, StatusCode::OK);
    assert_eq!(
        login_from(&app, ip, "dave", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...and after three attempts, the whole IP waits, whatever the account.
    assert_eq!(
        login_from(&app, ip, "erin", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client is not affected.
    assert_eq!(
        login_from(&app, "198.51.100.9", "erin", PASSWORD).await,
        StatusCode::OK
    );
}

async fn a_flood_of_correct_logins_from_one_client_does_not_starve_another(backend: Backend) {
    // Parallel logins of one account count against its back-off until they
    // are checked; lift it, since fairness is what is tested here.
    let app = generous(TestApp::builder())
        .arg("--login-free-failures", "1000")
        .arg("--trusted-proxies", "127.0.0.1/32")
        .arg("--hash-workers", "1")
        .arg("--hash-queue", "64")
        .arg("--hash-queue-per-client", "16")
        .spawn(backend)
        .await;
    app.create_user("mallory").await;
    app.create_user("frank").await;
    let flood = futures::future::join_all(
        (0..200).map(|_| login_from(&app, "203.0.113.66", "mallory", PASSWORD)),
    );
    let victim = async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(login_from(&app, "198.51.100.20", "frank", PASSWORD).await);
        }
        statuses
    };
    let (flood, victim) = tokio::join!(flood, victim);
    assert_eq!(
        victim,
        vec![StatusCode::OK; 5],
        "the other client keeps logging in"
    );
    let counts = tally(flood);
    assert!(counts.get(&200).copied().unwrap_or(0) >= 16, "{counts:?}");
    assert!(counts.get(&429).copied().unwrap_or(0) > 0, "{counts:?}");
}

async fn the_addresses_of_one_ipv6_network_share_one_counter(backend: Backend) {
    let app = TestApp::builder()
        .arg("--trusted-proxies", "127.0.0.1/32")
        .arg("--login-free-failures", "3")
        .spawn(backend)
        .await;
    app.stop_clock();
    app.create_user("gus").await;
    // A fresh address of the same /64 for every guess gains nothing.
    for i in 1..=3 {
        let ip = format!("2001:db8:1:2::{i}");
        assert_eq!(
            login_from(&app, &ip, "gus", "wrong guess").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&app, "2001:db8:1:2:ffff::9", "gus", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another network is another client.
    assert_eq!(
        login_from(&app, "2001:db8:1:3::1", "gus", PASSWORD).await,
        StatusCode::OK
    );
}
