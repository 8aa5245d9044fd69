//! The state every request handler shares.

use std::{sync::Arc, time::Duration};

use ipnet::IpNet;

use crate::{
    crypto::{passwords::PasswordHasher, tokens::TokenService},
    ratelimit::RateLimiter,
    sessions::SessionCache,
    store::Store,
};

/// Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenService>,
    pub hasher: PasswordHasher,
    pub sessions: Arc<SessionCache>,
    pub limiter: Arc<dyn RateLimiter>,
    pub policy: Arc<Policy>,
}

/// Session and throttling rules, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Policy {
    pub refresh_token_ttl: Duration,
    pub session_max_age: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub login_free_failures: u32,
    pub login_ip_free_failures: u32,
    pub signup_per_minute: u32,
    pub refresh_per_minute: u32,
}
