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
    clock::SharedClock,
    crypto::passwords::PasswordHasher,
    domain::{Email, Password, login_key},
    limits::RateLimiter,
    store::UserStore,
};

/// Login throttling, fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    /// Failures per account and client IP before the back-off starts.
    pub free_failures: u32,
    /// Failures per client IP, whatever the account, before the back-off starts.
    pub ip_free_failures: u32,
    /// Attempts per client IP per minute, successful or not.
    pub ip_per_minute: u32,
    /// Attempts per account and client IP per minute, successful or not.
    pub account_per_minute: u32,
}

#[derive(Clone)]
pub struct Login {
    pub(super) users: Arc<dyn UserStore>,
    pub(super) hasher: PasswordHasher,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) clock: SharedClock,
    pub(super) sessions: Sessions,
    pub(super) policy: LoginPolicy,
}

impl Login {
    /// Checks a username-or-email and password and opens a session.
    ///
    /// Throttling, in order: a quota of attempts per IP, the IP's back-off,
    /// a quota per account (and IP), the account's back-off. A back-off
    /// counts an attempt when it starts and takes it back only when the
    /// password turns out right (or is never checked), so parallel guesses
    /// get no more checks than sequential ones.
    #[tracing::instrument(skip_all, fields(%ip))]
    pub async fn with_password(
        &self,
        ip: IpAddr,
        login: &str,
        password: &str,
    ) -> AuthResult<TokenPair> {
        if password.len() > Password::MAX_BYTES || login.len() > Email::MAX_LEN {
            // No account has such a password or name: refuse without hashing
            // a huge input or keeping a huge throttling key.
            return Err(AuthError::InvalidCredentials);
        }
        let login = login_key(login);
        self.take(&format!("login-rate:{ip}"), self.policy.ip_per_minute)?;
        let ip_attempt = self.reserve(format!("login:{ip}"), self.policy.ip_free_failures)?;

        let found = self.users.find_credentials(&login).await?;
        // One counter per account whatever identifier was typed (username or
        // email); a name no account has gets a counter of its own.
        let account = match &found {
            Some(c) => format!("user:{}", c.user.id),
            None => format!("name:{login}"),
        };
        self.take(
            &format!("login-rate:{ip}:{account}"),
            self.policy.account_per_minute,
        )?;
        let account_attempt =
            self.reserve(format!("login:{ip}:{account}"), self.policy.free_failures)?;

        let (stored_hash, user) = match found {
            Some(c) => (Some(c.password_hash), Some(c.user)),
            None => (None, None),
        };
        // An unknown user is checked against a dummy hash: same work, same
        // time, so the answer's timing does not tell whether the account exists.
        let check = self
            .hasher
            .verify(ip, SecretString::from(password.to_owned()), stored_hash)
            .await?;
        let user = match user {
            Some(user) if check.matches && user.is_active => user,
            _ => {
                ip_attempt.failed();
                account_attempt.failed();
                tracing::info!("failed login");
                return Err(AuthError::InvalidCredentials);
            }
        };
        // A right password is no failure: the IP gets its attempt back, and
        // the account's count starts over.
        drop(ip_attempt);
        account_attempt.succeeded();
        if check.needs_rehash {
            self.upgrade_hash(ip, user.id, password).await;
        }
        self.sessions.open(&user).await
    }

    fn take(&self, key: &str, per_minute: u32) -> AuthResult<()> {
        self.limiter
            .take(key, per_minute, self.clock.instant())
            .map_err(AuthError::Throttled)
    }

    fn reserve(&self, key: String, free: u32) -> AuthResult<Attempt> {
        self.limiter
            .reserve(&key, free, self.clock.instant())
            .map_err(AuthError::Throttled)?;
        Ok(Attempt {
            limiter: self.limiter.clone(),
            key,
            free,
            settled: false,
        })
    }

    /// Re-hashes with the configured parameters after a successful login. A
    /// failure here must not fail the login: the old hash still works.
    async fn upgrade_hash(&self, ip: IpAddr, user_id: Uuid, password: &str) {
        let result = async {
            let hash = self
                .hasher
                .hash(ip, SecretString::from(password.to_owned()))
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

/// An attempt counted against a back-off key. Unless it is settled as a
/// failure or a success, it is taken back when dropped: an attempt whose
/// password was never checked (the hashing queue was full, the client went
/// away, an error) taught the client nothing and costs it nothing.
struct Attempt {
    limiter: Arc<dyn RateLimiter>,
    key: String,
    free: u32,
    settled: bool,
}

impl Attempt {
    /// The password was wrong: the attempt stays counted.
    fn failed(mut self) {
        self.settled = true;
    }

    /// The password was right: the key's failures are forgotten.
    fn succeeded(mut self) {
        self.limiter.clear(&self.key);
        self.settled = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.release(&self.key, self.free);
        }
    }
}
