//! The services: every flow of authgate, as plain async functions on service
//! values that hold what they depend on (store, hasher, limiter, clock).
//! The HTTP layer and the command line call these and nothing below them.

pub mod accounts;
pub mod error;
pub mod keys;
pub mod liveness;
pub mod login;
pub mod sessions;
pub mod tokens;

use std::{sync::Arc, time::Duration};

pub use accounts::Accounts;
pub use error::{AuthError, AuthResult};
pub use login::Login;
pub use sessions::Sessions;

use crate::{
    clock::SharedClock, crypto::passwords::PasswordHasher, limits::RateLimiter, store::Store,
};
use accounts::AccountPolicy;
use keys::KeyRing;
use liveness::SessionCache;
use login::LoginPolicy;
use sessions::SessionPolicy;
use tokens::TokenService;

/// The settings the services run with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub sessions: SessionPolicy,
    pub login: LoginPolicy,
    pub accounts: AccountPolicy,
}

/// Every service, wired to one store, hasher, limiter and clock. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub accounts: Accounts,
    pub login: Login,
    pub sessions: Sessions,
    store: Arc<dyn Store>,
    limiter: Arc<dyn RateLimiter>,
    clock: SharedClock,
}

impl Services {
    pub fn new(
        settings: &Settings,
        keys: &KeyRing,
        store: Arc<dyn Store>,
        hasher: PasswordHasher,
        limiter: Arc<dyn RateLimiter>,
        clock: SharedClock,
    ) -> Self {
        let tokens = Arc::new(TokenService::new(
            &keys.signing,
            &keys.verifying,
            settings.issuer.clone(),
            settings.audience.clone(),
            settings.access_token_ttl,
        ));
        let liveness = Arc::new(SessionCache::new());
        let sessions = Sessions {
            store: store.clone(),
            tokens,
            cache: liveness.clone(),
            limiter: limiter.clone(),
            clock: clock.clone(),
            policy: settings.sessions,
        };
        let login = Login {
            users: store.clone(),
            hasher: hasher.clone(),
            limiter: limiter.clone(),
            clock: clock.clone(),
            sessions: sessions.clone(),
            policy: settings.login,
        };
        let accounts = Accounts::new(
            store.clone(),
            hasher,
            limiter.clone(),
            clock.clone(),
            liveness,
            settings.accounts.clone(),
        );
        Self {
            accounts,
            login,
            sessions,
            store,
            limiter,
            clock,
        }
    }

    /// Whether the database answers, and takes writes.
    pub async fn ready(&self) -> AuthResult<()> {
        Ok(self.store.ping(self.clock.now()).await?)
    }

    /// Drops in-memory state that no longer affects any decision: throttling
    /// entries and unusable session answers.
    pub fn prune_memory(&self) {
        self.limiter.prune(self.clock.instant());
        self.sessions.prune_cache();
    }
}
