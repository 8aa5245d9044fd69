//! Checking passwords: for logging in, and for confirming a change by a
//! logged-in user. Throttling, the credential check (with a dummy hash for
//! unknown users), and the hash upgrade after a successful check.

use std::{net::IpAddr, sync::Arc};

use secrecy::SecretString;
use uuid::Uuid;

use super::{
    Client,
    audit::Audit,
    error::{AuthError, AuthResult},
    mfa::Mfa,
    sessions::{Sessions, SignIn, TokenPair},
};
use crate::{
    clock::SharedClock,
    crypto::passwords::PasswordHasher,
    domain::{Email, Password, User, login_key},
    limits::{Key, Quota, RateLimiter, client_bucket},
    store::{AuditKind, Credentials, UserStore},
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
    /// Users whose email is not verified cannot log in.
    pub require_verified_email: bool,
}

/// The throttled check of a password, for logging in and for confirming a
/// sensitive change by a logged-in user.
#[derive(Clone)]
pub struct PasswordCheck {
    pub(super) users: Arc<dyn UserStore>,
    pub(super) hasher: PasswordHasher,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) audit: Audit,
    pub(super) clock: SharedClock,
    pub(super) policy: LoginPolicy,
}

/// A user whose password was just checked, with the hash it was checked
/// against (or its upgrade): a session opens only while that is still so.
#[derive(Debug, Clone)]
pub struct Checked {
    pub user: User,
    pub password_hash: String,
}

/// Logging in with a password.
#[derive(Clone)]
pub struct Login {
    pub(super) check: PasswordCheck,
    pub(super) sessions: Sessions,
    pub(super) mfa: Mfa,
}

impl Login {
    /// Checks a username-or-email and password and opens a session. When
    /// the service requires verified addresses, an unverified user is
    /// refused, but only after the password is checked: the refusal must
    /// not tell a guesser that the account exists.
    pub async fn with_password(
        &self,
        client: &Client,
        login: &str,
        password: &str,
    ) -> AuthResult<TokenPair> {
        let result = self.open_with_password(client, login, password).await;
        metrics::counter!("authgate_logins_total", "outcome" => super::error::outcome(&result))
            .increment(1);
        result
    }

    async fn open_with_password(
        &self,
        client: &Client,
        login: &str,
        password: &str,
    ) -> AuthResult<TokenPair> {
        let checked = self.check.login(client, login, password).await?;
        if self.check.policy.require_verified_email && !checked.user.email_verified {
            let refused = self
                .check
                .audit
                .event(client, Some(checked.user.id), AuditKind::Login)
                .user(checked.user.id)
                .failed()
                .detail("email not verified");
            self.check.audit.record(refused).await;
            return Err(AuthError::EmailNotVerified);
        }
        // A user with a second factor gets a challenge, not a session: the
        // password alone opens nothing (ASVS V6.3.3).
        if let Some(challenge) = self
            .mfa
            .challenge(&checked.user, &checked.password_hash)
            .await?
        {
            return Err(AuthError::MfaRequired(challenge));
        }
        self.sessions
            .open(
                &checked.user,
                &checked.password_hash,
                client,
                SignIn::Password,
            )
            .await
    }
}

impl PasswordCheck {
    /// The active user a username-or-email and password belong to.
    ///
    /// Throttling, in order: a quota of attempts per IP, the IP's back-off,
    /// a quota per account (and IP), the account's back-off. A back-off
    /// counts an attempt when it starts and takes it back only when the
    /// password turns out right (or is never checked), so parallel guesses
    /// get no more checks than sequential ones.
    #[tracing::instrument(skip_all, fields(ip = %client.ip))]
    pub async fn login(&self, client: &Client, login: &str, password: &str) -> AuthResult<Checked> {
        let mut account = None;
        let result = self
            .check_login(client.ip, login, password, &mut account)
            .await;
        match &result {
            Err(AuthError::InvalidCredentials) => {
                let mut failed = self.audit.event(client, None, AuditKind::Login).failed();
                failed.user_id = account;
                self.audit.record(failed).await;
            }
            Err(AuthError::Throttled(_)) => self.audit.throttled(client, "login", None).await,
            _ => {}
        }
        result
    }

    /// [`Self::login`]; `found_account` is set to the account the name belongs to.
    async fn check_login(
        &self,
        ip: IpAddr,
        login: &str,
        password: &str,
        found_account: &mut Option<Uuid>,
    ) -> AuthResult<Checked> {
        let ip = client_bucket(ip);
        if Password::too_long(password) || login.len() > Email::MAX_LEN {
            // No account has such a password or name: refuse without hashing
            // a huge input or keeping a huge throttling key.
            return Err(AuthError::InvalidCredentials);
        }
        let login = login_key(login);
        self.take(Key::new("login_rate", ip), self.policy.ip_per_minute)
            .await?;
        let ip_attempt = self
            .reserve(Key::new("login_failures", ip), self.policy.ip_free_failures)
            .await?;
        // No account's name has a control character (and PostgreSQL refuses
        // a NUL): such a name is unknown, checked against the dummy hash.
        let found = if login.chars().any(char::is_control) {
            None
        } else {
            match self.users.find_credentials(&login).await {
                Ok(found) => found,
                Err(e) => {
                    ip_attempt.released().await;
                    return Err(e.into());
                }
            }
        };
        *found_account = found.as_ref().map(|c| c.user.id);
        // One counter per account whatever identifier was typed (username or
        // email); a name no account has gets a counter of its own.
        let account = match &found {
            Some(c) => format!("user:{}", c.user.id),
            None => format!("name:{login}"),
        };
        self.verify(ip, Some(ip_attempt), &account, found, password)
            .await?
            .ok_or(AuthError::InvalidCredentials)
    }

    /// Confirms that `password` is the current password of a logged-in user,
    /// throttled like a login to that account. A wrong one is
    /// [`AuthError::WrongPassword`].
    pub async fn confirm(
        &self,
        client: &Client,
        user_id: Uuid,
        password: &str,
    ) -> AuthResult<User> {
        let result = self.check_confirm(client.ip, user_id, password).await;
        match &result {
            Err(AuthError::WrongPassword) => {
                let failed = self
                    .audit
                    .event(client, Some(user_id), AuditKind::Login)
                    .user(user_id)
                    .failed()
                    .detail("password confirmation");
                self.audit.record(failed).await;
            }
            Err(AuthError::Throttled(_)) => {
                self.audit
                    .throttled(client, "password_confirmation", Some(user_id))
                    .await;
            }
            _ => {}
        }
        result
    }

    async fn check_confirm(&self, ip: IpAddr, user_id: Uuid, password: &str) -> AuthResult<User> {
        let ip = client_bucket(ip);
        if Password::too_long(password) {
            return Err(AuthError::WrongPassword);
        }
        let found = self.users.get_credentials(user_id).await?;
        let account = format!("user:{user_id}");
        self.verify(ip, None, &account, found, password)
            .await?
            .map(|checked| checked.user)
            .ok_or(AuthError::WrongPassword)
    }

    /// The user, if `found` exists, is active and `password` is its password;
    /// `None` for any other outcome, counted as a failure of `account` (and
    /// of the IP, with `ip_attempt`).
    async fn verify(
        &self,
        ip: IpAddr,
        ip_attempt: Option<Attempt>,
        account: &str,
        found: Option<Credentials>,
        password: &str,
    ) -> AuthResult<Option<Checked>> {
        let mut held = Held(ip_attempt.into_iter().collect());
        let taken = self
            .take(
                Key::new("account_login_rate", format!("{ip}:{account}")),
                self.policy.account_per_minute,
            )
            .await;
        held.unless_failed(taken).await?;
        let reserved = self
            .reserve(
                Key::new("account_login_failures", format!("{ip}:{account}")),
                self.policy.free_failures,
            )
            .await;
        let account_attempt = held.unless_failed(reserved).await?;
        held.0.push(account_attempt);
        let (stored_hash, user) = match found {
            Some(c) => (Some(c.password_hash), Some(c.user)),
            None => (None, None),
        };
        // An unknown user is checked against a dummy hash: same work, same
        // time, so the answer's timing does not tell whether the account exists.
        let check = self
            .hasher
            .verify(
                ip,
                SecretString::from(password.to_owned()),
                stored_hash.clone(),
            )
            .await
            .map_err(AuthError::from);
        let check = held.unless_failed(check).await?;
        let account_attempt = held.0.pop().expect("the account's attempt");
        let ip_attempt = held.0.pop();
        let user = match user {
            Some(user) if check.matches && user.is_active => user,
            _ => {
                if let Some(attempt) = ip_attempt {
                    attempt.failed();
                }
                account_attempt.failed();
                tracing::info!("wrong password");
                return Ok(None);
            }
        };
        // A right password is no failure: the IP gets its attempt back, and
        // the account's count starts over.
        if let Some(attempt) = ip_attempt {
            attempt.released().await;
        }
        account_attempt.succeeded().await;
        let mut password_hash = stored_hash.unwrap_or_default();
        if check.needs_rehash {
            password_hash = self
                .upgrade_hash(ip, user.id, &password_hash, password)
                .await;
        }
        Ok(Some(Checked {
            user,
            password_hash,
        }))
    }

    async fn take(&self, key: Key, per_minute: u32) -> AuthResult<()> {
        let quota = Quota::per_minute(per_minute);
        Ok(self.limiter.take(&key, quota, self.clock.now()).await?)
    }

    async fn reserve(&self, key: Key, free: u32) -> AuthResult<Attempt> {
        self.limiter.reserve(&key, free, self.clock.now()).await?;
        Ok(Attempt {
            limiter: self.limiter.clone(),
            key,
            settled: false,
        })
    }

    /// Re-hashes with the configured parameters after a successful login. A
    /// failure here must not fail the login: the old hash still works.
    /// The hash in effect afterwards: the new one, or `old` if the upgrade
    /// failed or the password changed meanwhile.
    async fn upgrade_hash(&self, ip: IpAddr, user_id: Uuid, old: &str, password: &str) -> String {
        let result = async {
            let new = self
                .hasher
                .hash(ip, SecretString::from(password.to_owned()))
                .await?;
            let upgraded = self
                .users
                .upgrade_password_hash(user_id, old, &new, self.clock.now())
                .await?;
            anyhow::Ok(upgraded.then_some(new))
        }
        .await;
        match result {
            Ok(Some(new)) => {
                tracing::info!(%user_id, "password hash upgraded to current parameters");
                new
            }
            Ok(None) => {
                tracing::info!(%user_id, "password changed during the login: hash not upgraded");
                old.to_owned()
            }
            Err(e) => {
                tracing::warn!(%user_id, error = %e, "password hash upgrade failed");
                old.to_owned()
            }
        }
    }
}

/// An attempt counted against a back-off key. Unless it is settled as a
/// failure or a success, it is taken back when dropped: an attempt whose
/// password was never checked (the hashing queue was full, the client went
/// away, an error) taught the client nothing and costs it nothing.
struct Attempt {
    limiter: Arc<dyn RateLimiter>,
    key: Key,
    settled: bool,
}

impl Attempt {
    /// The password was wrong: the attempt stays counted.
    fn failed(mut self) {
        self.settled = true;
    }

    /// The password was right: the key's failures are forgotten.
    async fn succeeded(mut self) {
        self.settled = true;
        if let Err(e) = self.limiter.clear(&self.key).await {
            tracing::warn!(error = %format!("{e:#}"), "failures not cleared");
        }
    }

    /// The attempt was no failure: it is taken back.
    async fn released(mut self) {
        self.settled = true;
        if let Err(e) = self.limiter.release(&self.key).await {
            tracing::warn!(error = %format!("{e:#}"), "attempt not taken back");
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            let (limiter, key) = (self.limiter.clone(), self.key.clone());
            settle(async move { limiter.release(&key).await });
        }
    }
}

/// The attempts one password check holds. If the check ends in an error
/// before the password was judged (a throttle further on, a full hashing
/// queue, the database), they are all given back before the answer: the
/// client learnt nothing, and its next request must find its place free.
struct Held(Vec<Attempt>);

impl Held {
    async fn unless_failed<T>(&mut self, result: AuthResult<T>) -> AuthResult<T> {
        if result.is_err() {
            for attempt in self.0.drain(..) {
                attempt.released().await;
            }
        }
        result
    }
}

/// Runs a settlement of the limiter as a task of its own: a request that
/// goes away (the client hung up) still gives its attempt back, and the
/// answer never waits for it.
fn settle(change: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Err(e) = change.await {
                tracing::warn!(error = %format!("{e:#}"), "throttling state not settled");
            }
        });
    }
}
