//! Passkeys (WebAuthn): registering one, logging in with one instead of a
//! password, and a passkey's assertion as the second factor after a password
//! (through [`super::mfa::Mfa`]).
//!
//! Each ceremony is a `start`, which stores the library's state and answers
//! the options for `navigator.credentials`, and a `finish`, which takes that
//! state (once: it is deleted as it is read) and checks the authenticator's
//! answer against it: challenge, origin, RP ID, signature, user verification
//! and signature counter.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};
use webauthn_rs_proto::ResidentKeyRequirement;

use super::{
    Client,
    audit::Audit,
    error::{AuthError, AuthResult},
    factors::{self, require_aal2, require_aal2_if_enrolled},
    letters::{Letters, SecurityNotice},
    sessions::{Authenticated, Sessions, SignIn, TokenPair},
    tokens::TokenRejection,
};
use crate::{
    clock::SharedClock,
    domain::{User, login_key},
    limits::{Key, Quota, RateLimiter, client_bucket},
    store::{Added, AuditKind, Ceremony, CeremonyPurpose, Effects, Store, StoredPasskey},
};

/// The most passkeys one account may hold.
pub const MAX_PASSKEYS: usize = 20;

/// The lengths of credential id accepted, in bytes.
const CREDENTIAL_ID_LEN: std::ops::RangeInclusive<usize> = 16..=1023;

fn too_many() -> AuthError {
    AuthError::Invalid {
        field: "passkeys",
        message: format!("an account holds at most {MAX_PASSKEYS} passkeys"),
    }
}

/// The relying party and the ceremonies' limits, fixed at start-up.
#[derive(Clone)]
pub struct PasskeyPolicy {
    webauthn: Arc<Webauthn>,
    /// How long a ceremony may wait between its start and its finish.
    pub ceremony_ttl: Duration,
    /// Passwordless login starts per client address (each stores a state).
    pub starts_per_ip: Quota,
    /// Registration and second-factor starts per user (each stores one).
    pub starts_per_user: Quota,
    /// A user must have verified the address to log in (as for passwords).
    pub require_verified_email: bool,
}

impl std::fmt::Debug for PasskeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyPolicy")
            .field("ceremony_ttl", &self.ceremony_ttl)
            .finish_non_exhaustive()
    }
}

impl PasskeyPolicy {
    /// The relying party `rp_id` (a domain) at `origin`, shown as `rp_name`.
    /// The RP ID must be the origin's host or a domain it lies under; every
    /// answer from another origin or for another RP ID is refused.
    pub fn new(
        rp_id: &str,
        origin: &str,
        rp_name: &str,
        require_verified_email: bool,
    ) -> anyhow::Result<Self> {
        let url = Url::parse(origin)
            .map_err(|e| anyhow::anyhow!("AUTHGATE_WEBAUTHN_ORIGIN {origin:?}: {e}"))?;
        let webauthn = WebauthnBuilder::new(rp_id, &url)
            .and_then(|b| b.rp_name(rp_name).build())
            .map_err(|e| {
                anyhow::anyhow!(
                    "AUTHGATE_WEBAUTHN_RP_ID {rp_id:?} does not suit AUTHGATE_WEBAUTHN_ORIGIN \
                     {origin:?} (the RP ID must be the origin's host or a domain above it): {e}"
                )
            })?;
        Ok(Self {
            webauthn: Arc::new(webauthn),
            ceremony_ttl: Duration::from_secs(5 * 60),
            starts_per_ip: Quota::per_minute(30),
            starts_per_user: Quota::per_minute(30),
            require_verified_email,
        })
    }
}

/// A ceremony started: its id for the finish, and the options for the
/// browser (`publicKey` of `navigator.credentials.create` or `.get`, in
/// WebAuthn's JSON form).
#[derive(Debug, Clone)]
pub struct Started {
    pub challenge_id: Uuid,
    pub options: serde_json::Value,
}

/// A passkey as its user sees it.
#[derive(Debug, Clone)]
pub struct PasskeyView {
    pub id: Uuid,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

impl From<StoredPasskey> for PasskeyView {
    fn from(p: StoredPasskey) -> Self {
        Self {
            id: p.id,
            name: p.name,
            created_at: p.created_at,
            last_used_at: p.last_used_at,
        }
    }
}

/// A registered passkey, and the recovery codes it brought if it is the
/// user's first factor.
#[derive(Debug, Clone)]
pub struct Registered {
    pub passkey: PasskeyView,
    pub recovery_codes: Option<Vec<String>>,
}

/// A passwordless login's state: the library's, and the account named at
/// the start, if one was.
#[derive(Serialize, Deserialize)]
struct LoginState {
    webauthn: DiscoverableAuthentication,
    login: Option<String>,
}

#[derive(Clone)]
pub struct Passkeys {
    pub(super) store: Arc<dyn Store>,
    pub(super) sessions: Sessions,
    pub(super) letters: Letters,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) audit: Audit,
    pub(super) clock: SharedClock,
    pub(super) policy: PasskeyPolicy,
}

impl Passkeys {
    /// Starts registering a passkey for the caller. Once the user has a
    /// factor, adding one needs a session of two (as for TOTP).
    pub async fn start_registration(
        &self,
        client: &Client,
        caller: &Authenticated,
    ) -> AuthResult<Started> {
        require_aal2_if_enrolled(self.store.as_ref(), caller).await?;
        let user = &caller.user.user;
        self.count_start(client, user.id).await?;
        let existing = self.store.passkeys(user.id).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Err(too_many());
        }
        // The authenticator refuses to make a second passkey of the account.
        let exclude = existing.into_iter().map(|p| p.credential_id).collect();
        let name = account_name(user);
        let (mut options, state) = self
            .policy
            .webauthn
            .start_passkey_registration(user.id, &name, &name, Some(exclude))
            .map_err(internal)?;
        // A discoverable credential: what makes it a passkey, and what the
        // login without a username needs. The library asks for none; the
        // finish does not depend on it.
        if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
            selection.resident_key = Some(ResidentKeyRequirement::Required);
            selection.require_resident_key = true;
        }
        let challenge_id = self
            .begin(CeremonyPurpose::Register, Some(user.id), &state)
            .await?;
        Ok(Started {
            challenge_id,
            options: serde_json::to_value(options.public_key).map_err(internal)?,
        })
    }

    /// Finishes a registration: the authenticator's answer must be to this
    /// user's ceremony, from the configured origin, with the user verified.
    /// A user's first factor brings ten recovery codes, shown once.
    pub async fn finish_registration(
        &self,
        client: &Client,
        caller: &Authenticated,
        challenge_id: Uuid,
        credential: &RegisterPublicKeyCredential,
        name: Option<&str>,
    ) -> AuthResult<Registered> {
        require_aal2_if_enrolled(self.store.as_ref(), caller).await?;
        let user = &caller.user.user;
        let state: PasskeyRegistration = self
            .take(challenge_id, CeremonyPurpose::Register, Some(user.id))
            .await?;
        let passkey = self
            .policy
            .webauthn
            .finish_passkey_registration(credential, &state)
            .map_err(|e| {
                tracing::info!(error = %e, "passkey registration refused");
                AuthError::Invalid {
                    field: "credential",
                    message: format!("was not accepted: {e}"),
                }
            })?;
        // WebAuthn §7.1 step 25: an id longer than 1023 bytes is refused
        // (and one shorter than 16 has too little entropy to be anyone's).
        if !CREDENTIAL_ID_LEN.contains(&passkey.cred_id().len()) {
            return Err(AuthError::Invalid {
                field: "credential",
                message: "has a credential id not of 16 to 1023 bytes".into(),
            });
        }
        let now = self.clock.now();
        let stored = StoredPasskey {
            id: Uuid::now_v7(),
            user_id: user.id,
            credential_id: passkey.cred_id().to_vec(),
            credential: serde_json::to_string(&passkey).map_err(internal)?,
            name: name.map_or_else(|| "Passkey".to_owned(), str::to_owned),
            created_at: now,
            last_used_at: None,
        };
        // A one-factor session may add only the first factor; the store
        // checks that with the insert, as two such finishes may race.
        let one_factor = require_aal2(caller).is_err();
        let first = one_factor || !self.store.has_factor(user.id).await?;
        let mut codes = first.then(factors::recovery_codes);
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(user.id), AuditKind::MfaEnrolled)
                .user(user.id)
                .session(caller.session_id)
                .detail("passkey"),
        );
        self.letters
            .security_notice(&mut effects, user, SecurityNotice::FactorAdded, now);
        loop {
            let first = codes.as_ref().map(|(_, hashes)| hashes.as_slice());
            match self
                .store
                .add_passkey(
                    &stored,
                    Some(caller.session_id),
                    first,
                    MAX_PASSKEYS as u32,
                    &effects,
                )
                .await?
            {
                Added::Added => break,
                Added::TooMany => return Err(too_many()),
                Added::SessionEnded => {
                    return Err(AuthError::InvalidToken(TokenRejection::Revoked));
                }
                Added::NotFirst if one_factor => {
                    return Err(AuthError::InsufficientAuthentication);
                }
                // Another factor came first: this one brings no codes.
                Added::NotFirst => codes = None,
            }
        }
        self.letters.wake();
        Ok(Registered {
            passkey: stored.into(),
            recovery_codes: codes.map(|(codes, _)| codes),
        })
    }

    /// The user's passkeys, oldest first.
    pub async fn list(&self, user_id: Uuid) -> AuthResult<Vec<PasskeyView>> {
        Ok(self
            .store
            .passkeys(user_id)
            .await?
            .into_iter()
            .map(PasskeyView::from)
            .collect())
    }

    /// Removes one of the caller's passkeys: only from a session of two
    /// factors.
    pub async fn remove(
        &self,
        client: &Client,
        caller: &Authenticated,
        id: Uuid,
    ) -> AuthResult<()> {
        require_aal2(caller)?;
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(caller.user_id), AuditKind::MfaRemoved)
                .user(caller.user_id)
                .session(caller.session_id)
                .detail("passkey"),
        );
        self.letters.security_notice(
            &mut effects,
            &caller.user.user,
            SecurityNotice::FactorRemoved,
            self.clock.now(),
        );
        if self
            .store
            .delete_passkey(caller.user_id, id, &effects)
            .await?
        {
            self.letters.wake();
            Ok(())
        } else {
            Err(AuthError::NotFound)
        }
    }

    /// Starts a login without a password. The options never list an
    /// account's credentials, with or without `login`: that list would tell
    /// anyone which accounts exist and have passkeys. Every passkey is
    /// registered discoverable, so the authenticator offers its own; a
    /// `login` given here only narrows whose passkey the finish accepts.
    pub async fn start_login(&self, client: &Client, login: Option<&str>) -> AuthResult<Started> {
        // Each start stores a state: a quota per address bounds the rows a
        // client can make.
        let key = Key::new("passkey_login_rate", client_bucket(client.ip));
        self.limiter
            .take(&key, self.policy.starts_per_ip, self.clock.now())
            .await?;
        let (options, state) = self
            .policy
            .webauthn
            .start_discoverable_authentication()
            .map_err(internal)?;
        let state = LoginState {
            webauthn: state,
            login: login.map(str::to_owned),
        };
        let challenge_id = self.begin(CeremonyPurpose::Login, None, &state).await?;
        // `mediation` (the autofill form) is the page's choice; only the
        // `publicKey` options are answered.
        Ok(Started {
            challenge_id,
            options: serde_json::to_value(options.public_key).map_err(internal)?,
        })
    }

    /// Finishes a login without a password: the passkey's assertion opens a
    /// session, at `aal2` when the authenticator verified its user. Every
    /// refusal is the same 401, whatever was wrong.
    pub async fn finish_login(
        &self,
        client: &Client,
        challenge_id: Uuid,
        credential: &PublicKeyCredential,
    ) -> AuthResult<TokenPair> {
        let result = self.log_in(client, challenge_id, credential).await;
        metrics::counter!("authgate_logins_total", "outcome" => super::error::outcome(&result))
            .increment(1);
        result
    }

    async fn log_in(
        &self,
        client: &Client,
        challenge_id: Uuid,
        credential: &PublicKeyCredential,
    ) -> AuthResult<TokenPair> {
        let state: LoginState = self
            .take(challenge_id, CeremonyPurpose::Login, None)
            .await?;
        let mut account = None;
        let checked = self
            .check_login(credential, state, &mut account)
            .await
            .inspect_err(|e| tracing::info!(error = %e, "passkey login refused"));
        let (user, password_hash, passkey, user_verified) = match checked {
            Ok(found) => found,
            Err(e @ AuthError::InvalidCredentials) => {
                let mut failed = self
                    .audit
                    .event(client, account, AuditKind::Login)
                    .failed()
                    .detail("passkey");
                failed.user_id = account;
                self.audit.record(failed).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if self.policy.require_verified_email && !user.email_verified {
            let refused = self
                .audit
                .event(client, Some(user.id), AuditKind::Login)
                .user(user.id)
                .failed()
                .detail("email not verified");
            self.audit.record(refused).await;
            return Err(AuthError::EmailNotVerified);
        }
        self.sessions
            .open(
                &user,
                &password_hash,
                client,
                SignIn::Passkey {
                    passkey,
                    user_verified,
                },
            )
            .await
    }

    /// The active user whose passkey answered, with the password hash the
    /// session is opened against (a password change still ends it) and
    /// whether the user was verified.
    async fn check_login(
        &self,
        credential: &PublicKeyCredential,
        state: LoginState,
        account: &mut Option<Uuid>,
    ) -> AuthResult<(User, String, Uuid, bool)> {
        let (user_id, credential_id) = self
            .policy
            .webauthn
            .identify_discoverable_authentication(credential)
            .map_err(|_| AuthError::InvalidCredentials)?;
        if credential_id.len() > *CREDENTIAL_ID_LEN.end() {
            return Err(AuthError::InvalidCredentials);
        }
        // The credential must be the one stored for the user the
        // authenticator names: else one account's passkey could be
        // presented as another's.
        let (stored, mut passkey) = self
            .users_passkey(credential_id, user_id)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        *account = Some(user_id);
        let result = self
            .policy
            .webauthn
            .finish_discoverable_authentication_v2(credential, state.webauthn, &passkey)
            .map_err(|e| {
                tracing::info!(error = %e, "passkey assertion refused");
                AuthError::InvalidCredentials
            })?;
        if !self.record_use(&stored, &mut passkey, &result).await? {
            return Err(AuthError::InvalidCredentials);
        }
        let found = self
            .store
            .get_credentials(user_id)
            .await?
            .filter(|c| c.user.is_active)
            .ok_or(AuthError::InvalidCredentials)?;
        // A login named at the start must be this user's (as at a password
        // login, no name with a control character is anyone's).
        if let Some(login) = &state.login {
            let login = login_key(login);
            let named = if login.chars().any(char::is_control) {
                None
            } else {
                self.store.find_credentials(&login).await?
            };
            if named.is_none_or(|c| c.user.id != user_id) {
                return Err(AuthError::InvalidCredentials);
            }
        }
        Ok((
            found.user,
            found.password_hash,
            stored.id,
            result.user_verified(),
        ))
    }

    /// Starts a passkey assertion as the second factor of `user_id`, whose
    /// password (or session) is already proved: the options list the
    /// user's passkeys.
    pub(super) async fn start_second_factor(
        &self,
        client: &Client,
        user_id: Uuid,
    ) -> AuthResult<Started> {
        self.count_start(client, user_id).await?;
        let passkeys = self.passkeys_of(user_id).await?;
        if passkeys.is_empty() {
            return Err(AuthError::Invalid {
                field: "factors",
                message: "the user has no passkey".into(),
            });
        }
        let (options, state) = self
            .policy
            .webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(internal)?;
        let challenge_id = self
            .begin(CeremonyPurpose::SecondFactor, Some(user_id), &state)
            .await?;
        Ok(Started {
            challenge_id,
            options: serde_json::to_value(options.public_key).map_err(internal)?,
        })
    }

    /// Checks a passkey's assertion as the second factor of `user_id`: the
    /// passkey's id, or `None` for any answer that does not prove it (an
    /// unknown, used or another user's challenge included), counted as a
    /// wrong code.
    pub(super) async fn check_second_factor(
        &self,
        user_id: Uuid,
        challenge_id: Uuid,
        credential: &PublicKeyCredential,
    ) -> AuthResult<Option<Uuid>> {
        let state: PasskeyAuthentication = match self
            .take(challenge_id, CeremonyPurpose::SecondFactor, Some(user_id))
            .await
        {
            Ok(state) => state,
            Err(AuthError::Invalid { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let result = match self
            .policy
            .webauthn
            .finish_passkey_authentication(credential, &state)
        {
            Ok(result) => result,
            Err(e) => {
                tracing::info!(error = %e, "passkey assertion refused");
                return Ok(None);
            }
        };
        let Some((stored, mut passkey)) = self.users_passkey(result.cred_id(), user_id).await?
        else {
            return Ok(None);
        };
        let counted = self.record_use(&stored, &mut passkey, &result).await?;
        Ok(counted.then_some(stored.id))
    }

    /// The passkey stored under `credential_id`, if it is `user_id`'s: as
    /// stored, and as the library reads it.
    async fn users_passkey(
        &self,
        credential_id: &[u8],
        user_id: Uuid,
    ) -> AuthResult<Option<(StoredPasskey, Passkey)>> {
        let Some(stored) = self
            .store
            .passkey_by_credential(credential_id)
            .await?
            .filter(|p| p.user_id == user_id)
        else {
            return Ok(None);
        };
        let passkey = serde_json::from_str(&stored.credential).map_err(internal)?;
        Ok(Some((stored, passkey)))
    }

    async fn passkeys_of(&self, user_id: Uuid) -> AuthResult<Vec<Passkey>> {
        self.store
            .passkeys(user_id)
            .await?
            .iter()
            .map(|p| serde_json::from_str(&p.credential).map_err(internal))
            .collect()
    }

    /// Keeps the counter the assertion brought (the library refused it had
    /// it not grown, which betrays a cloned authenticator) and the time.
    /// `false` if another login counted since this one read the passkey
    /// (or it is gone): of answers racing with one counter, one passes.
    async fn record_use(
        &self,
        stored: &StoredPasskey,
        passkey: &mut Passkey,
        result: &webauthn_rs::prelude::AuthenticationResult,
    ) -> AuthResult<bool> {
        // Checked here against the counter stored now, not the one a
        // ceremony's state took at its start: a clone answering an older
        // challenge must not pass. An authenticator without a counter
        // (always 0) is not held to it.
        let stored_counter = serde_json::from_str::<serde_json::Value>(&stored.credential)
            .ok()
            .and_then(|v| v["cred"]["counter"].as_u64())
            .ok_or_else(|| internal("a stored passkey without its counter"))?;
        let counter = u64::from(result.counter());
        if (counter != 0 || stored_counter != 0) && counter <= stored_counter {
            tracing::warn!(passkey = %stored.id, counter, stored_counter,
                "a passkey's counter did not grow: a cloned authenticator?");
            return Ok(false);
        }
        passkey.update_credential(result);
        let credential = serde_json::to_string(&passkey).map_err(internal)?;
        Ok(self
            .store
            .use_passkey(stored.id, &stored.credential, &credential, self.clock.now())
            .await?)
    }

    /// Counts a start of the user's against its quota: each stores a state
    /// until it expires, and a session or an `mfa_token` must not be able to
    /// fill the database. Per user and client address, as for passwords:
    /// starts from elsewhere must not lock the owner out.
    async fn count_start(&self, client: &Client, user_id: Uuid) -> AuthResult<()> {
        let key = Key::new(
            "passkey_start_rate",
            format!("{}:user:{user_id}", client_bucket(client.ip)),
        );
        self.limiter
            .take(&key, self.policy.starts_per_user, self.clock.now())
            .await?;
        Ok(())
    }

    /// Stores a ceremony's state until its finish.
    async fn begin<T: Serialize>(
        &self,
        purpose: CeremonyPurpose,
        user_id: Option<Uuid>,
        state: &T,
    ) -> AuthResult<Uuid> {
        let now = self.clock.now();
        let ceremony = Ceremony {
            id: Uuid::new_v4(),
            purpose,
            user_id,
            state: serde_json::to_string(state).map_err(internal)?,
            created_at: now,
            expires_at: now + self.policy.ceremony_ttl,
        };
        self.store.add_ceremony(&ceremony).await?;
        Ok(ceremony.id)
    }

    /// Takes a ceremony's state for its finish, once: unknown, used,
    /// expired, of another purpose or of another user are one refusal.
    async fn take<T: serde::de::DeserializeOwned>(
        &self,
        challenge_id: Uuid,
        purpose: CeremonyPurpose,
        user_id: Option<Uuid>,
    ) -> AuthResult<T> {
        let refused = || AuthError::Invalid {
            field: "challenge_id",
            message: "is unknown, used or expired".into(),
        };
        let ceremony = self
            .store
            .take_ceremony(challenge_id, purpose, self.clock.now())
            .await?
            .filter(|c| c.user_id == user_id)
            .ok_or_else(refused)?;
        serde_json::from_str(&ceremony.state).map_err(internal)
    }
}

/// How the authenticator shows the account: its email, else its username.
fn account_name(user: &User) -> String {
    user.email
        .as_ref()
        .map(|e| e.as_str().to_owned())
        .or_else(|| user.username.as_ref().map(|u| u.as_str().to_owned()))
        .unwrap_or_else(|| user.id.to_string())
}

fn internal(e: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(anyhow::anyhow!("passkeys: {e}"))
}
