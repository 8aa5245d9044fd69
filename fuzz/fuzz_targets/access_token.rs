//! The access-token verifier: whatever a client sends as a Bearer token is
//! refused or accepted, never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixture = common::fixture();
    let token = String::from_utf8_lossy(data);
    let now = time::OffsetDateTime::now_utc();
    let verified = fixture.state.services.tokens.verify(&token, now);
    // Random bytes never carry a signature of the service's key.
    assert!(verified.is_err(), "a forged token was accepted");
});
