//! Second factors: TOTP enrolment, recovery codes, the second step of a
//! login, raising a session to two factors (step-up), and an admin's reset.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use uuid::Uuid;
use webauthn_rs::prelude::PublicKeyCredential;

use super::{
    Client,
    audit::Audit,
    error::MfaChallenge,
    error::{AuthError, AuthResult},
    factors::{
        PASSKEY, confirmed_factors, factor_types, recovery_codes, recovery_hash, require_aal2,
        require_aal2_if_enrolled,
    },
    letters::{Letters, SecurityNotice},
    passkeys::{Passkeys, Started},
    sessions::{AccessGrant, Authenticated, Sessions, SignIn, TokenPair},
    tokens::SecondFactor,
};
use crate::{
    clock::SharedClock,
    crypto::{
        refresh,
        sealing::SealingKey,
        totp::{self, TotpSecret},
    },
    domain::User,
    limits::{Key, RateLimiter, client_bucket},
    store::{Attempt, AuditKind, Effects, Factor, FactorKind, NewChallenge, Store, StoreError},
};

/// MFA settings, fixed at start-up.
#[derive(Debug, Clone)]
pub struct MfaPolicy {
    /// The issuer shown in authenticator apps.
    pub issuer: String,
    /// How long the second step of a login may wait after the password.
    pub challenge_ttl: Duration,
    /// Codes one `mfa_token` may try.
    pub max_attempts: u32,
    /// Wrong codes per account before the back-off starts.
    pub free_failures: u32,
    /// How long an enrolment may wait for its first code.
    pub enrolment_ttl: Duration,
    /// Seals TOTP secrets at rest (the signing keys' key,
    /// AUTHGATE_KEY_ENCRYPTION_KEY); without one they are stored as they
    /// are, as the signing keys are.
    pub sealing: Option<SealingKey>,
}

/// A second factor offered: a TOTP code, a recovery code, or a passkey's
/// answer to a challenge from [`Mfa::start_passkey`].
#[derive(Debug, Clone)]
pub enum Proof {
    Code(String),
    RecoveryCode(String),
    Passkey {
        challenge_id: Uuid,
        credential: Box<PublicKeyCredential>,
    },
}

/// Whose passkey assertion is started: a login's, after its password, or
/// a session's step-up.
#[derive(Clone, Copy)]
pub enum PasskeyStep<'a> {
    Login(&'a str),
    StepUp(&'a Authenticated),
}

/// A new, unconfirmed TOTP factor: what the user's app needs.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub id: Uuid,
    /// Base32, for typing in.
    pub secret: String,
    pub otpauth_uri: String,
}

/// A factor as its user sees it: never its secret.
#[derive(Debug, Clone)]
pub struct FactorView {
    pub id: Uuid,
    pub kind: &'static str,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

/// A user's factors and how many recovery codes are left.
#[derive(Debug, Clone)]
pub struct Factors {
    pub factors: Vec<FactorView>,
    pub recovery_codes_left: u32,
}

#[derive(Clone)]
pub struct Mfa {
    pub(super) store: Arc<dyn Store>,
    pub(super) sessions: Sessions,
    /// Tells the owner of every change to the account's factors.
    pub(super) letters: Letters,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) audit: Audit,
    pub(super) clock: SharedClock,
    pub(super) policy: MfaPolicy,
    /// Checks a passkey as the second factor.
    pub(super) passkeys: Passkeys,
}

/// A stored secret's first byte: how the rest is kept.
const PLAIN: u8 = 0;
const SEALED: u8 = 1;

impl Mfa {
    /// Starts a TOTP enrolment: an unconfirmed factor and its secret. It
    /// replaces any enrolment of the user not confirmed yet. Once the user
    /// has a factor, adding another needs a session of two: else a session
    /// opened with the password alone (before the first factor, or stolen)
    /// could add its own factor and, through it, reach every `aal2` change.
    pub async fn enroll_totp(
        &self,
        caller: &Authenticated,
        name: Option<&str>,
    ) -> AuthResult<Enrolment> {
        require_aal2_if_enrolled(self.store.as_ref(), caller).await?;
        let user = &caller.user.user;
        let now = self.clock.now();
        let id = Uuid::now_v7();
        let secret = TotpSecret::generate();
        let account = user
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .or_else(|| user.username.as_ref().map(|u| u.as_str().to_owned()))
            .unwrap_or_else(|| user.id.to_string());
        let factor = Factor {
            id,
            user_id: user.id,
            kind: FactorKind::Totp,
            name: name.map_or_else(|| "Authenticator app".to_owned(), str::to_owned),
            secret: Some(self.seal(id, secret.as_bytes())),
            confirmed_at: None,
            last_used_step: None,
            last_used_at: None,
            created_at: now,
        };
        // At most one pending enrolment a user: a new one replaces it.
        self.store
            .add_factor(&factor, now + Duration::from_secs(1))
            .await?;
        Ok(Enrolment {
            id,
            secret: secret.to_base32(),
            otpauth_uri: totp::otpauth_uri(&self.policy.issuer, &account, &secret),
        })
    }

    /// Confirms an enrolment with a code from the app: the factor counts
    /// from now on, and the user's recovery codes (new ones, shown once)
    /// replace any earlier ones. A wrong code leaves it unconfirmed.
    pub async fn confirm_totp(
        &self,
        client: &Client,
        caller: &Authenticated,
        factor_id: Uuid,
        code: &str,
    ) -> AuthResult<Vec<String>> {
        require_aal2_if_enrolled(self.store.as_ref(), caller).await?;
        let user_id = caller.user_id;
        let now = self.clock.now();
        let factor = self
            .store
            .factors(user_id)
            .await?
            .into_iter()
            .find(|f| f.id == factor_id && f.confirmed_at.is_none())
            .filter(|f| f.created_at + self.policy.enrolment_ttl > now)
            .ok_or(AuthError::NotFound)?;
        let secret = self.secret(&factor)?;
        let step = self
            .failing_counted(client, user_id, || async {
                Ok(secret.verify(code, now.unix_timestamp(), None))
            })
            .await?
            .ok_or_else(|| AuthError::Invalid {
                field: "code",
                message: "is not the current code of this authenticator".into(),
            })?;
        let (codes, hashes) = recovery_codes();
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(user_id), AuditKind::MfaEnrolled)
                .user(user_id)
                .session(caller.session_id)
                .detail("totp"),
        );
        self.letters.security_notice(
            &mut effects,
            &caller.user.user,
            SecurityNotice::FactorAdded,
            now,
        );
        // A one-factor session may confirm only the first factor; the store
        // checks that with the change, as two such confirmations may race.
        let first_only = require_aal2(caller).is_err();
        match self
            .store
            .confirm_factor(user_id, factor_id, step, now, &hashes, first_only, &effects)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::NotFound),
            Err(StoreError::Conflict("factor")) => {
                return Err(AuthError::InsufficientAuthentication);
            }
            Err(e) => return Err(e.into()),
        }
        self.letters.wake();
        Ok(codes)
    }

    /// The user's confirmed factors, passkeys among them, and recovery
    /// codes left.
    pub async fn factors(&self, user_id: Uuid) -> AuthResult<Factors> {
        let mut factors: Vec<FactorView> = confirmed_factors(self.store.as_ref(), user_id)
            .await?
            .into_iter()
            .map(|f| FactorView {
                id: f.id,
                kind: f.kind.as_str(),
                name: f.name,
                created_at: f.created_at,
                last_used_at: f.last_used_at,
            })
            .collect();
        factors.extend(
            self.store
                .passkeys(user_id)
                .await?
                .into_iter()
                .map(|p| FactorView {
                    id: p.id,
                    kind: PASSKEY,
                    name: p.name,
                    created_at: p.created_at,
                    last_used_at: p.last_used_at,
                }),
        );
        factors.sort_by_key(|f| (f.created_at, f.id));
        let recovery_codes_left = self.store.recovery_codes_left(user_id).await?;
        Ok(Factors {
            factors,
            recovery_codes_left,
        })
    }

    /// The kinds of the user's confirmed factors (none: no second step).
    pub async fn factor_types(&self, user_id: Uuid) -> AuthResult<Vec<&'static str>> {
        factor_types(self.store.as_ref(), user_id).await
    }

    /// Removes a factor (a passkey too): only from a session of two factors.
    pub async fn remove(
        &self,
        client: &Client,
        caller: &Authenticated,
        factor_id: Uuid,
    ) -> AuthResult<()> {
        require_aal2(caller)?;
        // The audit event names the kind removed, as the passkeys' own
        // removal does.
        let effects = |kind: &str| {
            let mut effects = Effects::audit(
                self.audit
                    .event(client, Some(caller.user_id), AuditKind::MfaRemoved)
                    .user(caller.user_id)
                    .session(caller.session_id)
                    .detail(kind),
            );
            self.letters.security_notice(
                &mut effects,
                &caller.user.user,
                SecurityNotice::FactorRemoved,
                self.clock.now(),
            );
            effects
        };
        let removed = self
            .store
            .delete_factor(
                caller.user_id,
                factor_id,
                &effects(FactorKind::Totp.as_str()),
            )
            .await?
            || self
                .store
                .delete_passkey(caller.user_id, factor_id, &effects(PASSKEY))
                .await?;
        if removed {
            self.letters.wake();
            Ok(())
        } else {
            Err(AuthError::NotFound)
        }
    }

    /// New recovery codes in place of the old: only from a session of two
    /// factors, and only for a user with a factor.
    pub async fn regenerate_recovery_codes(
        &self,
        client: &Client,
        caller: &Authenticated,
    ) -> AuthResult<Vec<String>> {
        require_aal2(caller)?;
        if !self.store.has_factor(caller.user_id).await? {
            return Err(no_factor());
        }
        let (codes, hashes) = recovery_codes();
        let effects = Effects::audit(
            self.audit
                .event(
                    client,
                    Some(caller.user_id),
                    AuditKind::RecoveryCodesRegenerated,
                )
                .user(caller.user_id)
                .session(caller.session_id),
        );
        // The store checks again, with the change: the last factor may go
        // meanwhile, and codes must not outlive it.
        if !self
            .store
            .replace_recovery_codes(caller.user_id, &hashes, &effects)
            .await?
        {
            return Err(no_factor());
        }
        Ok(codes)
    }

    /// An admin removes every factor of a user, passkeys included (a lost
    /// phone), and ends the user's sessions.
    pub async fn reset(
        &self,
        client: &Client,
        admin: &Authenticated,
        user_id: Uuid,
    ) -> AuthResult<()> {
        let admin = admin.user_id;
        let user = self
            .store
            .get_user(user_id)
            .await?
            .ok_or(AuthError::NotFound)?;
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(admin), AuditKind::MfaReset)
                .user(user_id),
        );
        let now = self.clock.now();
        if !self.factor_types(user_id).await?.is_empty() {
            self.letters
                .security_notice(&mut effects, &user, SecurityNotice::FactorsReset, now);
        }
        // A lost phone may hold a live session, or be adding a factor: the
        // factors and every session go in one change.
        self.store.delete_factors(user_id, now, &effects).await?;
        self.letters.wake();
        // The instance's cache of live sessions forgets them, and the audit
        // log says they ended.
        self.sessions.end_all_of(user_id, client, admin).await?;
        Ok(())
    }

    /// After a right password: the second step's `mfa_token`, if the user has
    /// a factor; `None` if the password is enough.
    pub async fn challenge(
        &self,
        user: &User,
        password_hash: &str,
    ) -> AuthResult<Option<MfaChallenge>> {
        // One query for the many logins without a factor.
        if !self.store.has_factor(user.id).await? {
            return Ok(None);
        }
        let factor_types = self.factor_types(user.id).await?;
        if factor_types.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now();
        let token = refresh::generate();
        self.store
            .create_challenge(&NewChallenge {
                token_hash: token.hash,
                user_id: user.id,
                password_hash: password_hash.to_owned(),
                created_at: now,
                expires_at: now + self.policy.challenge_ttl,
            })
            .await?;
        Ok(Some(MfaChallenge {
            mfa_token: token.token,
            factor_types,
        }))
    }

    /// The second step of a login: a right code for the `mfa_token` opens
    /// the session at `aal2`. The token allows a few attempts and is spent
    /// by the first right one.
    pub async fn verify_login(
        &self,
        client: &Client,
        mfa_token: &str,
        proof: &Proof,
    ) -> AuthResult<TokenPair> {
        let result = self.check_login(client, mfa_token, proof).await;
        metrics::counter!("authgate_mfa_verifications_total",
            "step" => "login", "outcome" => super::error::outcome(&result))
        .increment(1);
        result
    }

    async fn check_login(
        &self,
        client: &Client,
        mfa_token: &str,
        proof: &Proof,
    ) -> AuthResult<TokenPair> {
        let (hash, user_id) = self.challenged(mfa_token).await?;
        let (factor, attempt) = self.prove(client, user_id, proof, Some(&hash)).await?;
        let attempt = attempt.ok_or(AuthError::InvalidMfaToken)?;
        // Spent by the first right code: a racing second one opens nothing.
        if !self.store.end_challenge(&hash).await? {
            return Err(AuthError::InvalidMfaToken);
        }
        let user = self
            .store
            .get_user(attempt.user_id)
            .await?
            .filter(|u| u.is_active)
            .ok_or(AuthError::InvalidMfaToken)?;
        let pair = self
            .sessions
            .open(
                &user,
                &attempt.password_hash,
                client,
                SignIn::TwoFactor(factor),
            )
            .await?;
        if factor == SecondFactor::RecoveryCode {
            // The owner should know: a used code may not have been theirs.
            // The login stands whether or not the notice is written.
            let mut effects = Effects::default();
            let now = self.clock.now();
            self.letters.security_notice(
                &mut effects,
                &user,
                SecurityNotice::RecoveryCodeUsed,
                now,
            );
            if !effects.mail.is_empty() {
                match self.store.apply(&effects).await {
                    Ok(()) => self.letters.wake(),
                    Err(e) => tracing::warn!(error = %e, "recovery code notice not written"),
                }
            }
        }
        Ok(pair)
    }

    /// Refuses a session of one factor of a user who has a second
    /// (`insufficient_user_authentication`).
    pub async fn require_aal2_if_enrolled(&self, caller: &Authenticated) -> AuthResult<()> {
        require_aal2_if_enrolled(self.store.as_ref(), caller).await
    }

    /// Starts a passkey assertion as the second factor: of a login, after
    /// its password (`mfa_token`), or of a session's step-up. Its answer
    /// goes to [`Mfa::verify_login`] or [`Mfa::step_up`].
    pub async fn start_passkey(
        &self,
        client: &Client,
        step: PasskeyStep<'_>,
    ) -> AuthResult<Started> {
        let user_id = match step {
            PasskeyStep::Login(mfa_token) => self.challenged(mfa_token).await?.1,
            PasskeyStep::StepUp(caller) => caller.user_id,
        };
        self.passkeys.start_second_factor(client, user_id).await
    }

    /// A live `mfa_token`'s hash and user.
    async fn challenged(&self, mfa_token: &str) -> AuthResult<([u8; 32], Uuid)> {
        if !refresh::looks_valid(mfa_token) {
            return Err(AuthError::InvalidMfaToken);
        }
        let hash = refresh::hash(mfa_token);
        let user_id = self
            .store
            .challenge_user(&hash, self.clock.now())
            .await?
            .ok_or(AuthError::InvalidMfaToken)?;
        Ok((hash, user_id))
    }

    /// Step-up: a session of one factor, of a user who has a second, proves
    /// it and is raised to `aal2`; the answer is a new pair for the session.
    pub async fn step_up(
        &self,
        client: &Client,
        caller: &Authenticated,
        proof: &Proof,
    ) -> AuthResult<AccessGrant> {
        let result = async {
            let (factor, _) = self.prove(client, caller.user_id, proof, None).await?;
            self.sessions.raise(client, caller, factor).await
        }
        .await;
        metrics::counter!("authgate_mfa_verifications_total",
            "step" => "step_up", "outcome" => super::error::outcome(&result))
        .increment(1);
        result
    }

    /// Checks a second factor of the user, under its back-off: a TOTP code
    /// of a confirmed factor (each time step once), an unused recovery code
    /// (each once), or a passkey's answer to its challenge (each once).
    async fn prove(
        &self,
        client: &Client,
        user_id: Uuid,
        proof: &Proof,
        challenge: Option<&[u8; 32]>,
    ) -> AuthResult<(SecondFactor, Option<Attempt>)> {
        let now = self.clock.now();
        let proved = self
            .failing_counted(client, user_id, || async {
                // A login's challenge counts the attempt only now, past the
                // back-off: a throttled try spends none of the token's.
                let attempt = match challenge {
                    Some(hash) => Some(
                        self.store
                            .attempt_challenge(hash, now, self.policy.max_attempts)
                            .await?
                            .filter(|a| a.user_id == user_id)
                            .ok_or(AuthError::InvalidMfaToken)?,
                    ),
                    None => None,
                };
                let factor = match proof {
                    Proof::Code(code) => self.use_code(user_id, code, now).await?,
                    Proof::RecoveryCode(code) => self
                        .store
                        .use_recovery_code(user_id, &recovery_hash(code), now)
                        .await?
                        .then_some(SecondFactor::RecoveryCode),
                    Proof::Passkey {
                        challenge_id,
                        credential,
                    } => self
                        .passkeys
                        .check_second_factor(user_id, *challenge_id, credential)
                        .await?
                        .map(SecondFactor::Passkey),
                };
                Ok(factor.map(|f| (f, attempt)))
            })
            .await?;
        proved.ok_or(AuthError::InvalidCode)
    }

    /// Spends a TOTP code of one of the user's confirmed factors.
    async fn use_code(
        &self,
        user_id: Uuid,
        code: &str,
        now: OffsetDateTime,
    ) -> AuthResult<Option<SecondFactor>> {
        for factor in confirmed_factors(self.store.as_ref(), user_id).await? {
            if factor.kind != FactorKind::Totp {
                continue;
            }
            let secret = self.secret(&factor)?;
            let Some(step) = secret.verify(code, now.unix_timestamp(), factor.last_used_step)
            else {
                continue;
            };
            // Why in the store: two requests with one code race here, and
            // only one may pass (no replay).
            if self.store.use_totp_step(factor.id, step, now).await? {
                return Ok(Some(SecondFactor::Totp(factor.id)));
            }
        }
        Ok(None)
    }

    /// Runs a code check under the account's back-off: a wrong code counts
    /// (`None`), a right one clears the count, an error takes it back.
    async fn failing_counted<T, F, Fut>(
        &self,
        client: &Client,
        user_id: Uuid,
        check: F,
    ) -> AuthResult<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = AuthResult<Option<T>>>,
    {
        // Per account and client address, as for passwords (ASVS V6.3.1):
        // wrong codes from elsewhere must not lock the owner out.
        let key = Key::new(
            "mfa_failures",
            format!("{}:user:{user_id}", client_bucket(client.ip)),
        );
        let now = self.clock.now();
        if let Err(e) = self
            .limiter
            .reserve(&key, self.policy.free_failures, now)
            .await
        {
            let err = AuthError::from(e);
            if matches!(err, AuthError::Throttled(_)) {
                self.audit.throttled(client, "mfa", Some(user_id)).await;
            }
            return Err(err);
        }
        let result = check().await;
        let settled = match &result {
            Ok(Some(_)) => self.limiter.clear(&key).await,
            Ok(None) => {
                let failed = self
                    .audit
                    .event(client, Some(user_id), AuditKind::Login)
                    .user(user_id)
                    .failed()
                    .detail("second factor");
                self.audit.record(failed).await;
                Ok(())
            }
            Err(_) => self.limiter.release(&key).await,
        };
        if let Err(e) = settled {
            tracing::warn!(error = %format!("{e:#}"), "second-factor back-off not settled");
        }
        result
    }

    fn seal(&self, factor_id: Uuid, secret: &[u8]) -> Vec<u8> {
        match &self.policy.sealing {
            Some(key) => {
                let mut stored = vec![SEALED];
                stored.extend(key.seal(secret, factor_id.as_bytes()));
                stored
            }
            None => {
                let mut stored = vec![PLAIN];
                stored.extend_from_slice(secret);
                stored
            }
        }
    }

    fn secret(&self, factor: &Factor) -> AuthResult<TotpSecret> {
        let stored = factor.secret.as_deref().unwrap_or_default();
        let bytes = match stored.split_first() {
            Some((&PLAIN, rest)) => rest.to_vec(),
            Some((&SEALED, rest)) => {
                let key = self.policy.sealing.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "a TOTP secret is sealed but AUTHGATE_KEY_ENCRYPTION_KEY is not set"
                    )
                })?;
                key.open(rest, factor.id.as_bytes())?
            }
            _ => return Err(anyhow::anyhow!("factor {} has no usable secret", factor.id).into()),
        };
        TotpSecret::from_bytes(&bytes).ok_or_else(|| {
            anyhow::anyhow!("factor {} has a secret of the wrong length", factor.id).into()
        })
    }
}

fn no_factor() -> AuthError {
    AuthError::Invalid {
        field: "factors",
        message: "recovery codes need a second factor first".into(),
    }
}
