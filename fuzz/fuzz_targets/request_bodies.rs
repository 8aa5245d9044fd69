//! The JSON and form decoders of every route that takes a body, through the
//! real router: any body gets an answer below 500, never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use axum::{body::Body, http::Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// Routes that read a body, and what they expect.
const ROUTES: &[(&str, &str)] = &[
    ("/auth/signup", JSON),
    ("/auth/login", JSON),
    ("/auth/refresh", JSON),
    ("/auth/logout", JSON),
    ("/auth/token", FORM),
    ("/auth/introspect", FORM),
    ("/auth/revoke", FORM),
    ("/auth/verify-email", JSON),
    ("/auth/password/forgot", JSON),
    ("/auth/password/reset", JSON),
    ("/auth/email/confirm", JSON),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (path, content_type) = ROUTES[selector as usize % ROUTES.len()];
    // The odd selectors send the other content type too.
    let content_type = if selector >= 128 {
        if content_type == JSON { FORM } else { JSON }
    } else {
        content_type
    };
    let fixture = common::fixture();
    let request = Request::post(path)
        .header("content-type", content_type)
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 1],
            40000,
        ))))
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let response = fixture
        .runtime
        .block_on(fixture.router.clone().oneshot(request))
        .expect("the router answers");
    let status = response.status();
    assert!(
        !status.is_server_error() || status.as_u16() == 503,
        "{path} answered {status} to {body:?}"
    );
});
