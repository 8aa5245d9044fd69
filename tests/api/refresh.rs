use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::Backend,
    helpers::{PASSWORD, TestApp, Tokens, problem, spawn_app},
    on_both_databases,
};

on_both_databases!(
    a_refresh_rotates_both_tokens,
    reusing_a_refresh_token_revokes_the_whole_session,
    of_racing_refreshes_with_one_token_exactly_one_wins_in_strict_mode,
    tabs_racing_to_refresh_one_token_all_get_the_same_new_pair,
    the_token_just_rotated_away_gives_the_same_pair_until_the_window_closes,
    a_token_whose_successor_was_used_too_is_reuse_even_in_the_window,
    two_instances_racing_one_refresh_token_converge_on_one_pair,
    no_usable_token_rests_in_the_database,
    a_pair_given_again_never_carries_an_expired_access_token,
    refreshing_never_extends_past_the_session_maximum_age,
    an_unused_refresh_token_expires_after_its_ttl,
    logout_ends_the_session_and_its_access_tokens_within_a_second,
    logout_answers_204_even_for_unknown_tokens,
    logout_all_ends_every_session_of_the_user_only,
    another_instance_on_the_same_database_refuses_a_revoked_token_within_a_second,
    a_restart_keeps_users_keys_and_tokens,
    refreshes_are_throttled_per_ip_with_retry_after,
    garbage_refresh_tokens_are_401,
    an_old_used_refresh_token_is_caught_as_reuse_after_the_purge,
);

async fn logged_in(app: &TestApp, name: &str) -> Tokens {
    app.create_user(name).await;
    app.tokens(name).await
}

async fn refreshed(app: &TestApp, refresh_token: &str) -> Tokens {
    let res = app.refresh(refresh_token).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    Tokens::from(res.json::<Value>().await.unwrap())
}

async fn a_refresh_rotates_both_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = logged_in(&app, "alice").await;
    let second = refreshed(&app, &first.refresh).await;
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.access, first.access);
    assert_eq!(second.body["token_type"], "bearer");
    assert_eq!(app.me_status(&second.access).await, StatusCode::OK);
    // The new token chains on.
    let third = refreshed(&app, &second.refresh).await;
    assert_eq!(app.me_status(&third.access).await, StatusCode::OK);
}

async fn reusing_a_refresh_token_revokes_the_whole_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = logged_in(&app, "bob").await;
    let second = refreshed(&app, &first.refresh).await;

    // Past the grace window, the used token again is a reuse.
    app.advance(Duration::from_secs(11));
    let res = app.refresh(&first.refresh).await;
    let body = problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "invalid_refresh_token");
    // Every token of the session is dead: the rotated one and the access tokens.
    assert_eq!(
        app.refresh(&second.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.assert_refused_within(&second.access, Duration::from_secs(1))
        .await;
    app.assert_refused_within(&first.access, Duration::from_secs(1))
        .await;
    // Another login opens a fresh session.
    assert_eq!(
        app.me_status(&app.tokens("bob").await.access).await,
        StatusCode::OK
    );
}

async fn of_racing_refreshes_with_one_token_exactly_one_wins_in_strict_mode(backend: Backend) {
    let app = TestApp::builder()
        .arg("--refresh-reuse-grace", "0s")
        .spawn(backend)
        .await;
    let tokens = logged_in(&app, "carol").await;
    let races = (0..10).map(|_| app.refresh(&tokens.refresh));
    let results = futures::future::join_all(races).await;
    let won = results
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let lost = results
        .iter()
        .filter(|r| r.status() == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(won, 1);
    assert_eq!(lost, 9);
    // The losers presented a token that was used by then: reuse (RFC 9700
    // §4.14.2). The session ends, and the winner's new pair with it.
    let winner = results
        .into_iter()
        .find(|r| r.status() == StatusCode::OK)
        .unwrap();
    let winner = Tokens::from(winner.json::<Value>().await.unwrap());
    assert_eq!(
        app.refresh(&winner.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.assert_refused_within(&winner.access, Duration::from_secs(1))
        .await;
}

async fn refreshing_never_extends_past_the_session_maximum_age(backend: Backend) {
    let app = TestApp::builder()
        .arg("--session-max-age", "1h")
        .arg("--refresh-token-ttl", "1d")
        .arg("--access-token-ttl", "2h")
        .spawn(backend)
        .await;
    let first = logged_in(&app, "dave").await;
    let left = first.body["refresh_expires_in"].as_u64().unwrap();
    assert!((3599..=3600).contains(&left), "{left}");
    app.advance(Duration::from_secs(30 * 60));
    let second = refreshed(&app, &first.refresh).await;
    let left = second.body["refresh_expires_in"].as_u64().unwrap();
    assert!((1799..=1800).contains(&left), "{left}");
    app.advance(Duration::from_secs(31 * 60));
    assert_eq!(
        app.refresh(&second.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The access token has not expired by itself; its session has ended.
    app.assert_refused_within(&second.access, Duration::from_secs(1))
        .await;
}

async fn an_unused_refresh_token_expires_after_its_ttl(backend: Backend) {
    let app = TestApp::builder()
        .arg("--refresh-token-ttl", "10m")
        .spawn(backend)
        .await;
    let tokens = logged_in(&app, "erin").await;
    assert_eq!(tokens.body["refresh_expires_in"], 600);
    app.advance(Duration::from_secs(9 * 60));
    let tokens = refreshed(&app, &tokens.refresh).await;
    app.advance(Duration::from_secs(10 * 60 + 1));
    assert_eq!(
        app.refresh(&tokens.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn logout_ends_the_session_and_its_access_tokens_within_a_second(backend: Backend) {
    let app = spawn_app(backend).await;
    let tokens = logged_in(&app, "frank").await;
    let other = app.tokens("frank").await;
    assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);
    let res = app
        .post_json("/auth/logout", &json!({"refresh_token": tokens.refresh}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    app.assert_refused_within(&tokens.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&tokens.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The user's other session is untouched.
    assert_eq!(app.me_status(&other.access).await, StatusCode::OK);
    assert_eq!(app.refresh(&other.refresh).await.status(), StatusCode::OK);
}

async fn logout_answers_204_even_for_unknown_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    for token in ["nonsense", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let res = app
            .post_json("/auth/logout", &json!({"refresh_token": token}))
            .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    // No token at all: nothing to end, and nothing wrong either.
    for body in [json!({}), json!({"refresh_token": null})] {
        let res = app.post_json("/auth/logout", &body).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{body}");
    }
}

async fn logout_all_ends_every_session_of_the_user_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone = logged_in(&app, "gina").await;
    let laptop = app.tokens("gina").await;
    let bystander = logged_in(&app, "hank").await;

    let res = app
        .client
        .post(app.url("/auth/logout-all"))
        .bearer_auth(&phone.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    app.assert_refused_within(&phone.access, Duration::from_secs(1))
        .await;
    app.assert_refused_within(&laptop.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&laptop.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me_status(&bystander.access).await, StatusCode::OK);

    let res = app
        .client
        .post(app.url("/auth/logout-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn another_instance_on_the_same_database_refuses_a_revoked_token_within_a_second(
    backend: Backend,
) {
    let a = spawn_app(backend).await;
    let tokens = logged_in(&a, "ivan").await;
    let b = TestApp::builder()
        .spawn_on(crate::common::TestDb::attach(a.db()))
        .await;
    // Instance B has seen the session live (and cached that).
    assert_eq!(b.me_status(&tokens.access).await, StatusCode::OK);
    let res = a
        .post_json("/auth/logout", &json!({"refresh_token": tokens.refresh}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    b.assert_refused_within(&tokens.access, Duration::from_secs(1))
        .await;
}

async fn a_restart_keeps_users_keys_and_tokens(backend: Backend) {
    // No configured secret: the generated key must survive the restart.
    let app = TestApp::builder_with_generated_key().spawn(backend).await;
    let tokens = logged_in(&app, "judy").await;
    let app = app.restart().await;
    assert_eq!(app.me_status(&tokens.access).await, StatusCode::OK);
    let next = refreshed(&app, &tokens.refresh).await;
    assert_eq!(app.me_status(&next.access).await, StatusCode::OK);
    assert_eq!(app.login("judy", PASSWORD).await.status(), StatusCode::OK);
}

async fn refreshes_are_throttled_per_ip_with_retry_after(backend: Backend) {
    let app = TestApp::builder()
        .arg("--refresh-per-minute", "2")
        .spawn(backend)
        .await;
    let t = logged_in(&app, "kate").await;
    let t = refreshed(&app, &t.refresh).await;
    let t = refreshed(&app, &t.refresh).await;
    let res = app.refresh(&t.refresh).await;
    assert!(res.headers().contains_key("retry-after"));
    problem(res, StatusCode::TOO_MANY_REQUESTS).await;
}

async fn garbage_refresh_tokens_are_401(backend: Backend) {
    let app = spawn_app(backend).await;
    for token in [
        "",
        "short",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "a.b.c",
    ] {
        let res = app.refresh(token).await;
        let body = problem(res, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["code"], "invalid_refresh_token");
    }
}

async fn an_old_used_refresh_token_is_caught_as_reuse_after_the_purge(backend: Backend) {
    let app = TestApp::builder()
        .arg("--refresh-token-ttl", "10m")
        .arg("--purge-interval", "100ms")
        .spawn(backend)
        .await;
    let stolen = logged_in(&app, "ivy").await;
    let second = refreshed(&app, &stolen.refresh).await;
    app.advance(Duration::from_secs(9 * 60));
    let third = refreshed(&app, &second.refresh).await;
    // The first two tokens are used and long expired; the purge has run.
    app.advance(Duration::from_secs(9 * 60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.refresh(&stolen.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Replaying it still ends the session: the thief's chain dies.
    assert_eq!(
        app.refresh(&third.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn tabs_racing_to_refresh_one_token_all_get_the_same_new_pair(backend: Backend) {
    let app = spawn_app(backend).await;
    let tokens = logged_in(&app, "tabs").await;
    let races = (0..10).map(|_| app.refresh(&tokens.refresh));
    let results = futures::future::join_all(races).await;
    let mut pairs = Vec::new();
    for res in results {
        assert_eq!(res.status(), StatusCode::OK);
        pairs.push(Tokens::from(res.json::<Value>().await.unwrap()));
    }
    // One chain: every tab holds the same refresh token and access token.
    for pair in &pairs {
        assert_eq!(pair.refresh, pairs[0].refresh);
        assert_eq!(pair.access, pairs[0].access);
    }
    assert_eq!(app.me_status(&pairs[0].access).await, StatusCode::OK);
    let next = refreshed(&app, &pairs[0].refresh).await;
    assert_eq!(app.me_status(&next.access).await, StatusCode::OK);
}

async fn the_token_just_rotated_away_gives_the_same_pair_until_the_window_closes(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = logged_in(&app, "late-tab").await;
    let second = refreshed(&app, &first.refresh).await;
    app.advance(Duration::from_secs(9));
    let again = refreshed(&app, &first.refresh).await;
    assert_eq!(again.refresh, second.refresh);
    assert_eq!(again.access, second.access);
    // The same pair, so the same expiry, counted from the first answer.
    let left = again.body["expires_in"].as_u64().unwrap();
    assert!((890..=891).contains(&left), "{left}");
    // Ten seconds after the rotation the window is closed: reuse.
    app.advance(Duration::from_secs(1));
    assert_eq!(
        app.refresh(&first.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.assert_refused_within(&second.access, Duration::from_secs(1))
        .await;
    assert_eq!(
        app.refresh(&second.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn a_token_whose_successor_was_used_too_is_reuse_even_in_the_window(backend: Backend) {
    let app = spawn_app(backend).await;
    // The chain moved on twice: the first token's successor is used too, so
    // presenting it is no tab catching up but a stale copy.
    let first = logged_in(&app, "old-tab").await;
    let second = refreshed(&app, &first.refresh).await;
    let third = refreshed(&app, &second.refresh).await;
    assert_eq!(
        app.refresh(&first.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.assert_refused_within(&third.access, Duration::from_secs(1))
        .await;
}

async fn two_instances_racing_one_refresh_token_converge_on_one_pair(backend: Backend) {
    let a = spawn_app(backend).await;
    let b = TestApp::builder()
        .spawn_on(crate::common::TestDb::attach(a.db()))
        .await;
    let tokens = logged_in(&a, "two-tabs").await;
    let races = (0..6).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.refresh(&tokens.refresh)
    });
    let mut refreshes = Vec::new();
    for res in futures::future::join_all(races).await {
        assert_eq!(res.status(), StatusCode::OK);
        refreshes.push(Tokens::from(res.json::<Value>().await.unwrap()).refresh);
    }
    refreshes.dedup();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    let next = refreshed(&b, &refreshes[0]).await;
    assert_eq!(a.me_status(&next.access).await, StatusCode::OK);
}

async fn no_usable_token_rests_in_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = logged_in(&app, "dumped").await;
    let second = refreshed(&app, &first.refresh).await;
    // Whatever the database holds, neither token appears in it, as text or
    // as the bytes it encodes.
    let stored = app.db().refresh_token_bytes().await;
    assert!(stored.len() > 3 * 32, "the successor is kept, sealed");
    for token in [&first.refresh, &second.refresh] {
        let raw = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.as_bytes(),
        )
        .unwrap();
        for needle in [token.as_bytes(), &raw[..16], &raw[16..]] {
            assert!(
                !stored.windows(needle.len()).any(|w| w == needle),
                "a token is stored in the clear"
            );
        }
    }
}

async fn a_pair_given_again_never_carries_an_expired_access_token(backend: Backend) {
    let app = TestApp::builder()
        .arg("--access-token-ttl", "2s")
        .spawn(backend)
        .await;
    let first = logged_in(&app, "short").await;
    let second = refreshed(&app, &first.refresh).await;
    app.advance(Duration::from_secs(3));
    let again = refreshed(&app, &first.refresh).await;
    assert_eq!(again.refresh, second.refresh);
    assert!(again.body["expires_in"].as_u64().unwrap() >= 1);
    assert_eq!(app.me_status(&again.access).await, StatusCode::OK);
}
