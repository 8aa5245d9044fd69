//! The flows that go through a mailed link: email verification, password
//! reset, and the confirmation of a new email address. Each link's token is
//! single-use, bound to one purpose, one user and the address it was sent
//! to, and expires; using one is one transaction.

use std::{net::IpAddr, sync::Arc};

use time::OffsetDateTime;

use secrecy::SecretString;
use uuid::Uuid;

use super::{
    Client,
    audit::Audit,
    error::{AuthError, AuthResult},
    letters::Letters,
    liveness::SessionCache,
    sessions::Authenticated,
};
use crate::{
    clock::SharedClock,
    crypto::{passwords::PasswordHasher, refresh},
    domain::{Email, Password, User, login_key},
    limits::{Key, Quota, RateLimiter, client_bucket},
    store::{AuditKind, Effects, FlowPurpose, Redeemed, Redemption, Store},
};

/// How many mails a client and a recipient may cause, fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct FlowPolicy {
    /// Mails to one address (whatever asks): the forgot endpoint must not be
    /// a way to flood someone's inbox.
    pub per_recipient: Quota,
    /// Mails one client IP may cause, to any addresses.
    pub per_ip: Quota,
    /// Links one client IP may present.
    pub links_per_ip: Quota,
}

impl FlowPolicy {
    /// Takes one mail of `client`'s and of `recipient`'s quotas.
    pub(super) async fn take_mail(
        &self,
        limiter: &dyn RateLimiter,
        client: IpAddr,
        recipient: &str,
        now: OffsetDateTime,
    ) -> AuthResult<()> {
        let ip = client_bucket(client);
        limiter
            .take(&Key::new("mail_per_ip", ip), self.per_ip, now)
            .await?;
        limiter
            .take(
                &Key::new("mail_per_recipient", recipient),
                self.per_recipient,
                now,
            )
            .await?;
        Ok(())
    }
}

/// Password-reset requests handled at once in the background; more are
/// refused as overload rather than queued without bound.
pub const BACKGROUND_REQUESTS: usize = 64;

/// The longest random delay before a reset request's work.
const RESET_JITTER_MS: u64 = 2_000;

#[derive(Clone)]
pub struct Flows {
    pub(super) store: Arc<dyn Store>,
    pub(super) hasher: PasswordHasher,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) audit: Audit,
    pub(super) letters: Letters,
    pub(super) liveness: Arc<SessionCache>,
    pub(super) clock: SharedClock,
    pub(super) policy: FlowPolicy,
    pub(super) background: Arc<tokio::sync::Semaphore>,
}

impl Flows {
    /// Mails the caller a link that verifies their address. An address
    /// already verified gets nothing; an account without one is refused.
    pub async fn request_verification(
        &self,
        who: &Authenticated,
        client: &Client,
    ) -> AuthResult<()> {
        // The user as stored now, not as the session check last saw it: a
        // link used a moment ago must not be followed by another.
        let user = &self
            .store
            .get_user(who.user_id)
            .await?
            .ok_or(AuthError::NotFound)?;
        let Some(email) = user.email.as_deref() else {
            return Err(AuthError::Invalid {
                field: "email",
                message: "the account has no email address to verify".into(),
            });
        };
        if user.email_verified {
            return Ok(());
        }
        let email = Email::parse(email).map_err(|message| AuthError::Invalid {
            field: "email",
            message,
        })?;
        let taken = self
            .policy
            .take_mail(
                self.limiter.as_ref(),
                client.ip,
                &email.normalized(),
                self.clock.now(),
            )
            .await;
        self.audit
            .note_throttling(client, "verify_email", Some(user.id), taken)
            .await?;
        let now = self.clock.now();
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(user.id), AuditKind::EmailVerificationRequested)
                .user(user.id)
                .session(who.session_id),
        );
        self.letters
            .verification(&mut effects, user.id, &email, now);
        self.store.apply(&effects).await?;
        self.letters.wake();
        Ok(())
    }

    /// Uses a verification link: the address it was sent to is verified, if
    /// it is still the account's.
    pub async fn verify_email(&self, token: &str, client: &Client) -> AuthResult<User> {
        let (hash, found) = self.find(token, FlowPurpose::VerifyEmail, client).await?;
        let effects = Effects::audit(
            self.audit
                .event(client, Some(found), AuditKind::EmailVerified)
                .user(found),
        );
        let user = self
            .redeem(
                &hash,
                FlowPurpose::VerifyEmail,
                found,
                Redemption::VerifyEmail,
                effects,
            )
            .await?;
        self.liveness.update_user(&user);
        Ok(user)
    }

    /// Mails a reset link to the account with that address, if there is an
    /// active one. The answer is the same either way, and comes before any
    /// of the work (the lookup, the writes) is done, so that neither its
    /// content nor its timing tells whether the account exists.
    pub async fn forgot_password(&self, email: &Email, client: &Client) -> AuthResult<()> {
        let address = email.normalized();
        let taken = self
            .policy
            .take_mail(self.limiter.as_ref(), client.ip, &address, self.clock.now())
            .await;
        self.audit
            .note_throttling(client, "password_forgot", None, taken)
            .await?;
        let permit = self
            .background
            .clone()
            .try_acquire_owned()
            .map_err(|_| AuthError::Overloaded(std::time::Duration::from_secs(1)))?;
        let flows = self.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The lookup and the writes for an existing account cost more
            // than for a missing one, and could slow what the client sends
            // next; a random delay spreads that cost where timing cannot
            // pin it to this request.
            let jitter = rand::random_range(0..RESET_JITTER_MS);
            tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
            if let Err(e) = flows.send_reset(&address, &client).await {
                tracing::warn!(error = %e, "password reset request failed");
            }
        });
        Ok(())
    }

    async fn send_reset(&self, address: &str, client: &Client) -> AuthResult<()> {
        let found = self.store.find_credentials(address).await?;
        // The lookup also matches usernames: only an account whose email is
        // this address gets mail.
        let user = found.map(|c| c.user).filter(|user| {
            user.is_active && user.email.as_deref().map(login_key).as_deref() == Some(address)
        });
        let event = self
            .audit
            .event(client, None, AuditKind::PasswordResetRequested);
        let Some(user) = user else {
            self.audit.record(event.failed()).await;
            return Ok(());
        };
        let Some(Ok(email)) = user.email.as_deref().map(Email::parse) else {
            return Ok(());
        };
        let mut effects = Effects::audit(event.user(user.id));
        self.letters
            .password_reset(&mut effects, user.id, &email, self.clock.now());
        self.store.apply(&effects).await?;
        self.letters.wake();
        Ok(())
    }

    /// Uses a reset link: sets the new password (which follows the signup
    /// policy) and ends every session and every other link of the user.
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
        client: &Client,
    ) -> AuthResult<()> {
        let (hash, user_id) = self.find(token, FlowPurpose::ResetPassword, client).await?;
        let user = self
            .store
            .get_user(user_id)
            .await?
            .ok_or(AuthError::InvalidLink)?;
        let email = user.email.as_deref().and_then(|e| Email::parse(e).ok());
        let username = user
            .username
            .as_deref()
            .and_then(|u| crate::domain::Username::parse(u).ok());
        let password =
            Password::parse(new_password, username.as_ref(), email.as_ref()).map_err(|e| {
                AuthError::Invalid {
                    field: "new_password",
                    message: e.to_string(),
                }
            })?;
        let password_hash = self
            .hasher
            .hash(
                client_bucket(client.ip),
                SecretString::from(password.expose()),
            )
            .await?;
        let effects = Effects::audit(
            self.audit
                .event(client, Some(user_id), AuditKind::PasswordReset)
                .user(user_id),
        );
        let redemption = Redemption::ResetPassword { password_hash };
        self.redeem(
            &hash,
            FlowPurpose::ResetPassword,
            user_id,
            redemption,
            effects,
        )
        .await?;
        self.liveness.revoke_user(user_id);
        tracing::info!(%user_id, "password reset");
        Ok(())
    }

    /// Uses an email-change link: the address it was sent to becomes the
    /// account's, verified.
    pub async fn confirm_email_change(&self, token: &str, client: &Client) -> AuthResult<User> {
        let (hash, user_id) = self.find(token, FlowPurpose::ChangeEmail, client).await?;
        let effects = Effects::audit(
            self.audit
                .event(client, Some(user_id), AuditKind::EmailChanged)
                .user(user_id),
        );
        let user = self
            .redeem(
                &hash,
                FlowPurpose::ChangeEmail,
                user_id,
                Redemption::ChangeEmail,
                effects,
            )
            .await?;
        self.liveness.update_user(&user);
        tracing::info!(%user_id, "email address changed");
        Ok(user)
    }

    /// The token's hash and the user of a live link for `purpose`.
    async fn find(
        &self,
        token: &str,
        purpose: FlowPurpose,
        client: &Client,
    ) -> AuthResult<([u8; 32], Uuid)> {
        let taken = self
            .limiter
            .take(
                &Key::new("links", client_bucket(client.ip)),
                self.policy.links_per_ip,
                self.clock.now(),
            )
            .await
            .map_err(AuthError::from);
        self.audit
            .note_throttling(client, "link", None, taken)
            .await?;
        if !refresh::looks_valid(token) {
            return Err(AuthError::InvalidLink);
        }
        let hash = refresh::hash(token);
        let found = self
            .store
            .find_flow_token(&hash, purpose, self.clock.now())
            .await?
            .ok_or(AuthError::InvalidLink)?;
        Ok((hash, found.user_id))
    }

    async fn redeem(
        &self,
        hash: &[u8; 32],
        purpose: FlowPurpose,
        user_id: Uuid,
        redemption: Redemption,
        effects: Effects,
    ) -> AuthResult<User> {
        let redeemed = self
            .store
            .redeem_flow_token(
                hash,
                purpose,
                user_id,
                &redemption,
                self.clock.now(),
                &effects,
            )
            .await?;
        match redeemed {
            Redeemed::Done(user) => Ok(user),
            Redeemed::Invalid => Err(AuthError::InvalidLink),
            Redeemed::EmailTaken => Err(AuthError::Conflict("email")),
        }
    }
}
