//! Logging in with a password: throttling, the credential check (with a dummy
//! hash for unknown users), and the hash upgrade after a successful login.

use std::{net::IpAddr, sync::Arc};

use secrecy::SecretString;
use uuid::Uuid;

use super::{
    error::{AuthError, AuthResult},
    sessions::{Sessions, TokenPair},
};
use crate::{
    clock::SharedClock, crypto::passwords::PasswordHasher, domain::Password, limits::RateLimiter,
    store::UserStore,
};

/// How many failures are free before the back-off starts.
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    /// Per account and client IP.
    pub free_failures: u32,
    /// Per client IP, whatever the account.
    pub ip_free_failures: u32,
}

#[derive(Clone)]
pub struct Login {
    users: Arc<dyn UserStore>,
    hasher: PasswordHasher,
    limiter: Arc<dyn RateLimiter>,
    clock: SharedClock,
    sessions: Sessions,
    policy: LoginPolicy,
}

impl Login {
    pub fn new(
        users: Arc<dyn UserStore>,
        hasher: PasswordHasher,
        limiter: Arc<dyn RateLimiter>,
        clock: SharedClock,
        sessions: Sessions,
        policy: LoginPolicy,
    ) -> Self {
        Self {
            users,
            hasher,
            limiter,
            clock,
            sessions,
            policy,
        }
    }

    /// Checks a username-or-email and password and opens a session.
    #[tracing::instrument(skip_all, fields(%ip))]
    pub async fn with_password(
        &self,
        ip: IpAddr,
        login: &str,
        password: &str,
    ) -> AuthResult<TokenPair> {
        if password.len() > Password::MAX_BYTES {
            // No account has such a password; refuse without hashing a huge input.
            return Err(AuthError::InvalidCredentials);
        }
        let login = login.to_lowercase();
        let account_key = format!("login:{ip}:{login}");
        let ip_key = format!("login:{ip}");
        let now = self.clock.instant();
        for key in [&account_key, &ip_key] {
            self.limiter
                .check_backoff(key, now)
                .map_err(AuthError::Throttled)?;
        }

        let found = self.users.find_credentials(&login).await?;
        let (stored_hash, user) = match found {
            Some(c) => (Some(c.password_hash), Some(c.user)),
            None => (None, None),
        };
        // An unknown user is checked against a dummy hash: same work, same
        // time, so the answer's timing does not tell whether the account exists.
        let check = self
            .hasher
            .verify(SecretString::from(password.to_owned()), stored_hash)
            .await?;
        let user = match user {
            Some(user) if check.matches && user.is_active => user,
            _ => {
                let now = self.clock.instant();
                self.limiter
                    .record_failure(&account_key, self.policy.free_failures, now);
                self.limiter
                    .record_failure(&ip_key, self.policy.ip_free_failures, now);
                tracing::info!("failed login");
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.limiter.clear(&account_key);
        if check.needs_rehash {
            self.upgrade_hash(user.id, password).await;
        }
        self.sessions.open(&user).await
    }

    /// Re-hashes with the configured parameters after a successful login. A
    /// failure here must not fail the login: the old hash still works.
    async fn upgrade_hash(&self, user_id: Uuid, password: &str) {
        let result = async {
            let hash = self
                .hasher
                .hash(SecretString::from(password.to_owned()))
                .await?;
            self.users
                .set_password_hash(user_id, &hash, self.clock.now())
                .await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(%user_id, "password hash upgraded to current parameters"),
            Err(e) => tracing::warn!(%user_id, error = %e, "password hash upgrade failed"),
        }
    }
}
