//! Sessions: opened by a login, kept alive by rotating refresh tokens, ended
//! by logout, reuse or an admin; and the check that an access token's session
//! is still live (see [`super::liveness`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Client,
    audit::Audit,
    error::{AuthError, AuthResult},
    liveness::{LiveUser, Liveness, Lookup, SessionCache},
    tokens::{AccessClaims, Authentication, SecondFactor, Subject, TokenRejection, TokenService},
};
use crate::{
    clock::SharedClock,
    crypto::refresh,
    domain::User,
    limits::{Key, Quota, RateLimiter, client_bucket},
    store::{
        AuditKind, Effects, LiveRefreshToken, NewSession, ProvedFactor, RefreshRequest,
        RevokeReason, Rotation, SessionAuth, SessionStore,
    },
};

/// What a login proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    /// The password alone.
    Password,
    /// The password, then a second factor.
    TwoFactor(SecondFactor),
    /// This passkey alone; `user_verified` if the authenticator checked its
    /// user (a PIN or biometric) as well.
    Passkey { passkey: Uuid, user_verified: bool },
}

impl SignIn {
    /// The session's level and RFC 8176 methods, as of `now`.
    pub fn authentication(self, now: OffsetDateTime) -> Authentication {
        match self {
            SignIn::Password => Authentication::password(now),
            SignIn::TwoFactor(factor) => Authentication::two_factor(now, factor.method()),
            SignIn::Passkey { user_verified, .. } => Authentication::passkey(now, user_verified),
        }
    }

    /// The factor the session rests on: it opens only if that is still
    /// there (an admin's reset during the login is not outlived).
    fn proved(self) -> Option<ProvedFactor> {
        match self {
            SignIn::Password => None,
            SignIn::TwoFactor(factor) => Some(factor.proved()),
            SignIn::Passkey { passkey, .. } => Some(ProvedFactor::This(passkey)),
        }
    }

    /// As the audit log names it, beside the password.
    fn describe(self) -> Option<&'static str> {
        match self {
            SignIn::Password => None,
            SignIn::TwoFactor(factor) => Some(factor.describe()),
            SignIn::Passkey { .. } => Some("with a passkey"),
        }
    }
}

/// Session lifetimes and the refresh quota, fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A refresh token unused this long expires (and its session with it).
    pub refresh_token_ttl: Duration,
    /// No session lasts longer, however often it is refreshed.
    pub session_max_age: Duration,
    pub refresh_per_minute: u32,
    /// How long after a rotation the token just rotated away gives the same
    /// successor again (several tabs refreshing at once); zero: never.
    pub reuse_grace: Duration,
}

/// The one rule for when a refresh token expires: after its own lifetime,
/// and never after the end of its session.
pub fn refresh_expiry(
    now: OffsetDateTime,
    ttl: Duration,
    session_end: OffsetDateTime,
) -> OffsetDateTime {
    (now + ttl).min(session_end)
}

/// An access token and the refresh token issued beside it.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
    /// The scopes, for a session an OAuth client holds.
    pub scope: Option<String>,
}

/// A new access token for a session whose refresh token stays.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// A live session as its user sees it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: Uuid,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub expires_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The session of the access token that asked.
    pub current: bool,
}

/// The caller behind a valid access token of a live session.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub claims: AccessClaims,
    /// The user's record, as of the last session check.
    pub user: Arc<LiveUser>,
}

#[derive(Clone)]
pub struct Sessions {
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) tokens: Arc<TokenService>,
    pub(super) cache: Arc<SessionCache>,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) audit: Audit,
    pub(super) clock: SharedClock,
    pub(super) policy: SessionPolicy,
}

impl Sessions {
    /// Opens a session for a user who just proved `sign_in`, whose password
    /// hash was then `password_hash`. If the password, the roles or the active flag changed
    /// since, no session opens: the login counts as failed, so that a change
    /// meant to end every session is not outlived by one that was on its way.
    pub async fn open(
        &self,
        user: &User,
        password_hash: &str,
        client: &Client,
        sign_in: SignIn,
    ) -> AuthResult<TokenPair> {
        let now = self.clock.now();
        let auth = sign_in.authentication(now);
        let session_end = now + self.policy.session_max_age;
        let refresh = refresh::generate();
        let refresh_expires_at = refresh_expiry(now, self.policy.refresh_token_ttl, session_end);
        let session = NewSession {
            id: Uuid::now_v7(),
            user_id: user.id,
            created_at: now,
            expires_at: session_end,
            refresh_hash: refresh.hash,
            refresh_expires_at,
            user_agent: client.user_agent.clone(),
            ip: Some(client.ip.to_string()),
            password_hash: password_hash.to_owned(),
            roles: user.roles.clone(),
            level: auth.level.clone(),
            methods: auth.methods.clone(),
            factor: sign_in.proved(),
        };
        let mut event = self
            .audit
            .event(client, Some(user.id), AuditKind::Login)
            .user(user.id)
            .session(session.id);
        if let Some(detail) = sign_in.describe() {
            event = event.detail(detail);
        }
        let effects = Effects::audit(event);
        if !self.store.create_session(&session, &effects).await? {
            tracing::info!(user_id = %user.id, "the account changed during the login");
            return Err(AuthError::InvalidCredentials);
        }
        self.pair(
            PairParts {
                user,
                session_id: session.id,
                auth,
                delegation: None,
                session_end,
                refresh_token: refresh.token,
                refresh_expires_at,
                issued_at: now,
            },
            now,
        )
    }

    /// Step-up: the caller's session proved a second factor and is raised to
    /// `aal2` from now on (its refreshes carry that). The answer is a new
    /// access token; the session's refresh token stays as it is.
    pub async fn raise(
        &self,
        client: &Client,
        caller: &Authenticated,
        factor: SecondFactor,
    ) -> AuthResult<AccessGrant> {
        let now = self.clock.now();
        let auth = Authentication::two_factor(now, factor.method());
        let stored = SessionAuth {
            level: auth.level.clone(),
            methods: auth.methods.clone(),
            at: now,
        };
        let effects = Effects::audit(
            self.audit
                .event(client, Some(caller.user_id), AuditKind::MfaStepUp)
                .user(caller.user_id)
                .session(caller.session_id),
        );
        let session_end = self
            .store
            .raise_session(
                caller.session_id,
                caller.user_id,
                &stored,
                factor.proved(),
                &effects,
            )
            .await?
            .ok_or(AuthError::InvalidToken(TokenRejection::Revoked))?;
        let subject = Subject {
            user_id: caller.user_id,
            session_id: caller.session_id,
            roles: caller.claims.roles.clone(),
            auth,
            jti: Uuid::now_v7(),
        };
        let access = self.tokens.issue(subject, now, session_end)?;
        Ok(AccessGrant {
            expires_in: u64::try_from(access.claims.exp - now.unix_timestamp()).unwrap_or(0),
            access_token: access.token,
        })
    }

    /// Exchanges a refresh token for a new pair. The presented token is used
    /// up; presenting it again ends the session (RFC 9700 §4.14.2).
    #[tracing::instrument(skip_all, fields(ip = %client.ip))]
    pub async fn refresh(&self, client: &Client, presented: &str) -> AuthResult<TokenPair> {
        self.refresh_for(client, presented, None).await
    }

    /// [`Sessions::refresh`] of a session the OAuth client `holder` holds
    /// (none: the service's own). A token of another kind of session is
    /// refused as unknown, so a client's token never turns into one of the
    /// account's own, nor one client's into another's.
    pub async fn refresh_for(
        &self,
        client: &Client,
        presented: &str,
        holder: Option<&str>,
    ) -> AuthResult<TokenPair> {
        let result = self.rotate(client, presented, holder).await;
        metrics::counter!("authgate_refreshes_total", "outcome" => super::error::outcome(&result))
            .increment(1);
        result
    }

    async fn rotate(
        &self,
        client: &Client,
        presented: &str,
        holder: Option<&str>,
    ) -> AuthResult<TokenPair> {
        let ip = client_bucket(client.ip);
        let taken = self
            .limiter
            .take(
                &Key::new("refresh", ip),
                Quota::per_minute(self.policy.refresh_per_minute),
                self.clock.now(),
            )
            .await
            .map_err(AuthError::from);
        self.audit
            .note_throttling(client, "refresh", None, taken)
            .await?;
        if !refresh::looks_valid(presented) {
            return Err(AuthError::InvalidRefreshToken);
        }
        let now = self.clock.now();
        let next = refresh::generate();
        let grace = self.policy.reuse_grace;
        let request = RefreshRequest {
            presented: refresh::hash(presented),
            next: next.hash,
            next_expires_at: now + self.policy.refresh_token_ttl,
            now,
            // Why sealed under the presented token: the successor must be
            // given again to a tab presenting that token moments later, yet
            // no usable token may rest in the database.
            sealed_next: (!grace.is_zero())
                .then(|| refresh::seal_successor(presented, &next.token)),
            grace_since: (!grace.is_zero()).then(|| now - grace),
            client_id: holder.map(str::to_owned),
        };
        let rotation = self
            .store
            .rotate_refresh(&request, &client.context(None))
            .await?;
        match rotation {
            Rotation::Rotated {
                session_id,
                user,
                session_expires_at,
                auth,
                scope,
            } => self.pair(
                PairParts {
                    user: &user,
                    session_id,
                    auth: auth.into(),
                    delegation: holder.map(|client| (client, scope.unwrap_or_default())),
                    session_end: session_expires_at,
                    refresh_expires_at: refresh_expiry(
                        now,
                        self.policy.refresh_token_ttl,
                        session_expires_at,
                    ),
                    refresh_token: next.token,
                    issued_at: now,
                },
                now,
            ),
            Rotation::Repeated {
                session_id,
                user,
                session_expires_at,
                auth,
                scope,
                rotated_at,
                sealed_next,
                next_expires_at,
            } => {
                // Another tab rotated this token moments ago: every tab
                // converges on the pair it got (RFC 9700 §4.14.2 allows the
                // refresh token to be reused within a window).
                let successor = refresh::open_successor(presented, &sealed_next)
                    .ok_or(AuthError::InvalidRefreshToken)?;
                tracing::debug!(%session_id, "refresh token repeated within the grace window");
                self.pair(
                    PairParts {
                        user: &user,
                        session_id,
                        auth: auth.into(),
                        delegation: holder.map(|client| (client, scope.unwrap_or_default())),
                        session_end: session_expires_at,
                        refresh_expires_at: next_expires_at.min(session_expires_at),
                        refresh_token: successor,
                        // The first answer's access token, unless it would
                        // be expired already (a lifetime shorter than the
                        // grace window): then a fresh one.
                        issued_at: if rotated_at + self.tokens.ttl() > now + Duration::from_secs(1)
                        {
                            rotated_at
                        } else {
                            now
                        },
                    },
                    now,
                )
            }
            Rotation::Reused {
                session_id,
                user_id,
            } => {
                self.cache.revoke(session_id, user_id, self.clock.instant());
                metrics::counter!("authgate_refresh_reuse_detected_total").increment(1);
                tracing::warn!(%session_id, %user_id, "refresh token reuse: session revoked");
                Err(AuthError::InvalidRefreshToken)
            }
            Rotation::Invalid => Err(AuthError::InvalidRefreshToken),
        }
    }

    /// Ends the session a refresh token belongs to, if it is live. Whether it
    /// was is not told (RFC 7009 §2.2), so this reveals nothing.
    pub async fn logout(&self, client: &Client, presented: &str) -> AuthResult<()> {
        // Each logout with a plausible token is a write: quota it like refresh.
        let taken = self
            .limiter
            .take(
                &Key::new("logout", client_bucket(client.ip)),
                Quota::per_minute(self.policy.refresh_per_minute),
                self.clock.now(),
            )
            .await
            .map_err(AuthError::from);
        self.audit
            .note_throttling(client, "logout", None, taken)
            .await?;
        if !refresh::looks_valid(presented) {
            return Ok(());
        }
        let hash = refresh::hash(presented);
        if let Some(session_id) = self
            .store
            .revoke_session_by_refresh(&hash, self.clock.now(), &client.context(None))
            .await?
        {
            self.cache
                .revoke(session_id, Uuid::nil(), self.clock.instant());
            tracing::info!(%session_id, "logged out");
        }
        Ok(())
    }

    /// Ends every session of the caller's user, on every device.
    pub async fn logout_all(&self, who: &Authenticated, client: &Client) -> AuthResult<u64> {
        let effects = Effects::audit(
            self.audit
                .event(client, Some(who.user_id), AuditKind::LogoutAll)
                .user(who.user_id)
                .session(who.session_id),
        );
        let n = self
            .store
            .revoke_user_sessions(
                who.user_id,
                None,
                RevokeReason::LogoutAll,
                self.clock.now(),
                &effects,
            )
            .await?;
        self.cache.revoke_user(who.user_id);
        self.cache
            .revoke(who.session_id, who.user_id, self.clock.instant());
        tracing::info!(user_id = %who.user_id, sessions = n, "logged out everywhere");
        Ok(n)
    }

    /// The caller's live sessions, newest first.
    pub async fn list(&self, who: &Authenticated) -> AuthResult<Vec<SessionView>> {
        self.list_of(who.user_id, Some(who.session_id)).await
    }

    /// A user's live sessions, newest first; `current` marks none but `asking`.
    pub async fn list_of(
        &self,
        user_id: Uuid,
        asking: Option<Uuid>,
    ) -> AuthResult<Vec<SessionView>> {
        let sessions = self.store.list_sessions(user_id, self.clock.now()).await?;
        Ok(sessions
            .into_iter()
            .map(|s| SessionView {
                current: Some(s.id) == asking,
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: s.expires_at,
                user_agent: s.user_agent,
                ip: s.ip,
            })
            .collect())
    }

    /// Ends one of the caller's sessions (the current one too, if named).
    /// Another user's session is [`AuthError::NotFound`], exactly like one
    /// that does not exist, so its existence is never revealed.
    pub async fn end(
        &self,
        who: &Authenticated,
        client: &Client,
        session_id: Uuid,
    ) -> AuthResult<()> {
        let effects = Effects::audit(
            self.audit
                .event(client, Some(who.user_id), AuditKind::SessionEnded)
                .user(who.user_id)
                .session(session_id),
        );
        let ended = self
            .store
            .revoke_session(
                who.user_id,
                session_id,
                RevokeReason::EndedByUser,
                self.clock.now(),
                &effects,
            )
            .await?;
        if !ended {
            return Err(AuthError::NotFound);
        }
        self.cache
            .revoke(session_id, who.user_id, self.clock.instant());
        tracing::info!(%session_id, user_id = %who.user_id, "session ended by its user");
        Ok(())
    }

    /// Ends every session of a user (an admin's act); how many were live.
    pub async fn end_all_of(&self, user_id: Uuid, client: &Client, actor: Uuid) -> AuthResult<u64> {
        let effects = Effects::audit(
            self.audit
                .event(client, Some(actor), AuditKind::SessionEnded)
                .user(user_id)
                .detail("every session, by an admin"),
        );
        let n = self
            .store
            .revoke_user_sessions(
                user_id,
                None,
                RevokeReason::UserChanged,
                self.clock.now(),
                &effects,
            )
            .await?;
        self.cache.revoke_user(user_id);
        tracing::info!(%user_id, sessions = n, "sessions ended by admin");
        Ok(n)
    }

    /// The caller behind an access token: the token must verify and its
    /// session must be live. The answer may be cached for a bounded time (see
    /// [`super::liveness`]), so most calls do not wait for the database.
    pub async fn authenticate(&self, access_token: &str) -> AuthResult<Authenticated> {
        let who = self.authenticate_delegated(access_token).await?;
        // Why: a token a user gave an OAuth client is for what the client
        // was allowed (its scopes, `/oauth/userinfo`), never for the
        // account itself: its password, factors, sessions, or admin rights.
        if who.claims.client_id.is_some() {
            return Err(AuthError::InvalidToken(TokenRejection::WrongType));
        }
        Ok(who)
    }

    /// The live session a browser's cookie on the hosted pages names (its
    /// refresh token, never rotated there). Only a session of the
    /// service's own: a client's refresh token in the cookie opens nothing.
    pub async fn browser_session(
        &self,
        refresh_token: &str,
    ) -> AuthResult<Option<LiveRefreshToken>> {
        if !refresh::looks_valid(refresh_token) {
            return Ok(None);
        }
        Ok(self
            .store
            .refresh_token_session(&refresh::hash(refresh_token), self.clock.now())
            .await?
            .filter(|live| live.client_id.is_none()))
    }

    /// The caller behind a browser's session on the hosted pages (its
    /// refresh token, kept in a cookie and never rotated there): the live
    /// session, the service's own only, described as an access token of it
    /// would be. `None` if there is no such session.
    pub async fn browser_caller(&self, refresh_token: &str) -> AuthResult<Option<Authenticated>> {
        let Some(live) = self.browser_session(refresh_token).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let iat = now.unix_timestamp();
        let claims = AccessClaims {
            iss: self.tokens.issuer().to_owned(),
            aud: self.tokens.audience().to_owned(),
            sub: live.user.id,
            sid: live.session_id,
            jti: Uuid::now_v7(),
            iat,
            exp: iat + i64::try_from(self.tokens.ttl().as_secs()).unwrap_or(0),
            roles: live.user.roles.names(),
            auth_time: live.auth.at.unix_timestamp(),
            aal: live.auth.level.clone(),
            amr: live.auth.methods.clone(),
            nbf: None,
            client_id: None,
            scope: None,
        };
        Ok(Some(Authenticated {
            user_id: live.user.id,
            session_id: live.session_id,
            claims,
            user: Arc::new(LiveUser::new(live.user)),
        }))
    }

    /// [`Sessions::authenticate`], taking tokens held by OAuth clients too.
    pub async fn authenticate_delegated(&self, access_token: &str) -> AuthResult<Authenticated> {
        let claims = self
            .tokens
            .verify(access_token, self.clock.now())
            .map_err(AuthError::InvalidToken)?;
        let liveness = match self.cache.get(claims.sid, self.clock.instant()) {
            // A stale answer is now marked; the batched re-check picks it up.
            Lookup::Fresh(known) | Lookup::Revalidate(known) => known,
            Lookup::Miss => self.check(claims.sid, claims.sub).await?,
        };
        match liveness {
            Liveness::Live(user) if user.user.id == claims.sub => Ok(Authenticated {
                user_id: claims.sub,
                session_id: claims.sid,
                claims,
                user,
            }),
            _ => Err(AuthError::InvalidToken(TokenRejection::Revoked)),
        }
    }

    async fn check(&self, session_id: Uuid, user_id: Uuid) -> AuthResult<Liveness> {
        let checked = self.clock.instant();
        let liveness = match self
            .store
            .session_user(session_id, self.clock.now())
            .await?
        {
            Some(user) => Liveness::Live(Arc::new(LiveUser::new(user))),
            None => Liveness::Dead,
        };
        self.cache
            .put(session_id, user_id, liveness.clone(), checked);
        Ok(liveness)
    }

    /// Re-checks every session marked by recent requests, in one query.
    pub async fn recheck_marked(&self) {
        let marked = self.cache.marked();
        if marked.is_empty() {
            return;
        }
        let checked = self.clock.instant();
        let ids: Vec<Uuid> = marked.iter().map(|(session_id, _)| *session_id).collect();
        match self.store.live_sessions(&ids, self.clock.now()).await {
            Ok(live) => {
                let mut live: HashMap<Uuid, _> = live.into_iter().collect();
                for (session_id, user_id) in marked {
                    let liveness = match live.remove(&session_id) {
                        Some(user) => Liveness::Live(Arc::new(LiveUser::new(user))),
                        None => Liveness::Dead,
                    };
                    self.cache.put(session_id, user_id, liveness, checked);
                }
            }
            // The sessions stay marked; the next tick tries again, and past
            // MAX_STALENESS requests check for themselves.
            Err(e) => tracing::warn!(error = %e, sessions = ids.len(), "session re-check failed"),
        }
    }

    /// Deletes expired sessions and refresh tokens, and sessions revoked long
    /// enough ago that every access token of theirs has expired.
    pub async fn purge_expired(&self) -> AuthResult<u64> {
        let now = self.clock.now();
        Ok(self.store.purge(now, now - self.revoked_grace()).await?)
    }

    /// Drops cached answers that can no longer be used.
    pub fn prune_cache(&self) {
        self.cache.prune(self.clock.instant(), self.revoked_grace());
    }

    /// A revoked session must be remembered as long as its access tokens live.
    fn revoked_grace(&self) -> Duration {
        self.tokens.ttl() + Duration::from_secs(60)
    }

    /// A new access token for the session (never outliving it), with the
    /// refresh token issued beside it. The access token's id follows from
    /// the refresh token and its times from `issued_at`, so a pair given
    /// again within the grace window is the same pair.
    fn pair(&self, parts: PairParts<'_>, now: OffsetDateTime) -> AuthResult<TokenPair> {
        let subject = Subject {
            user_id: parts.user.id,
            session_id: parts.session_id,
            roles: parts.user.roles.names(),
            auth: parts.auth,
            jti: refresh::access_token_id(&parts.refresh_token),
        };
        let delegation = parts
            .delegation
            .as_ref()
            .map(|(client, scope)| (*client, scope.as_str()));
        let access =
            self.tokens
                .issue_for(subject, delegation, parts.issued_at, parts.session_end)?;
        let seconds_left = |until: i64| u64::try_from(until - now.unix_timestamp()).unwrap_or(0);
        Ok(TokenPair {
            access_token: access.token,
            refresh_token: parts.refresh_token,
            expires_in: seconds_left(access.claims.exp),
            refresh_expires_in: seconds_left(parts.refresh_expires_at.unix_timestamp()),
            scope: access.claims.scope,
        })
    }
}

/// What a token pair is made of.
struct PairParts<'a> {
    user: &'a User,
    session_id: Uuid,
    auth: Authentication,
    /// The OAuth client holding the session, and its scopes.
    delegation: Option<(&'a str, String)>,
    session_end: OffsetDateTime,
    refresh_token: String,
    refresh_expires_at: OffsetDateTime,
    /// When the pair was first issued.
    issued_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_token_expires_after_its_lifetime_or_with_its_session() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let hour = Duration::from_secs(3600);
        let far = now + time::Duration::days(1);
        assert_eq!(refresh_expiry(now, hour, far), now + hour);
        let near = now + time::Duration::minutes(5);
        assert_eq!(refresh_expiry(now, hour, near), near);
    }
}
