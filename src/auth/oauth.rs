//! authgate as an OAuth 2.1 authorization server: the grants of
//! `POST /oauth/token` for registered clients.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    Client,
    audit::Audit,
    error::{AuthError, AuthResult},
    sessions::SessionPolicy,
    tokens::{Subject, TokenService},
};
use crate::{
    clock::SharedClock,
    crypto::refresh,
    domain::{Scope, Scopes, User},
    store::{
        AuditKind, AuthorizationCode, CodeRedemption, Effects, NewClientSession, OAuthClient, Store,
    },
};

/// A browser's session on the hosted pages: the live session its cookie
/// names.
pub use crate::store::LiveRefreshToken as BrowserSession;

/// How long an authorization code lives (RFC 6749 §4.1.2: at most ten
/// minutes; one is plenty for a redirect and a back-channel call).
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// The longest `state` and `nonce` taken.
pub const MAX_STATE: usize = 1024;

/// An access token a client got for itself.
#[derive(Debug, Clone)]
pub struct ClientToken {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: Scopes,
}

#[derive(Clone)]
pub struct OAuth {
    pub(super) store: Arc<dyn Store>,
    pub(super) tokens: Arc<TokenService>,
    pub(super) audit: Audit,
    pub(super) clock: SharedClock,
    pub(super) policy: SessionPolicy,
    pub(super) sessions: super::sessions::Sessions,
}

/// The parameters of `GET /oauth/authorize`, as sent.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
}

/// Why an authorization request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeRefusal {
    /// The client or its redirect URI is not known: the user is told, and
    /// nothing is sent anywhere (RFC 6749 §4.1.2.1), so this service is no
    /// open redirector.
    Shown(String),
    /// Sent back to the client's redirect URI as `error`.
    Redirected {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

/// An authorization request that passed every check.
#[derive(Debug, Clone)]
pub struct ValidAuthorize {
    pub client: OAuthClient,
    pub redirect_uri: String,
    pub scope: Scopes,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
}

/// The tokens an exchanged code gives.
#[derive(Debug, Clone)]
pub struct CodeTokens {
    pub access_token: String,
    pub expires_in: u64,
    /// With `offline_access` only.
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub scope: Scopes,
}

/// The parameters of `/oauth/logout` (OpenID Connect RP-Initiated Logout 1.0).
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct LogoutParams {
    pub id_token_hint: Option<String>,
    pub client_id: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub state: Option<String>,
}

/// A logout request that passed its checks.
#[derive(Debug, Clone)]
pub struct ValidLogout {
    /// An ID token this service issued (expired or not): whose, for which
    /// client and session. Without one the user is asked to confirm.
    pub hint: Option<super::tokens::IdTokenHint>,
    /// Where to send the browser afterwards: registered by the client.
    pub redirect: Option<String>,
    pub state: Option<String>,
    pub client_name: Option<String>,
}

/// The claims of an ID token (OpenID Connect Core §2, §5.1).
#[derive(Debug, Clone, Serialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub amr: Vec<String>,
    /// The assurance level (`aal1`, `aal2`).
    pub acr: String,
    /// The session the client holds: RP-initiated logout ends it.
    pub sid: String,
    #[serde(flatten)]
    pub user: UserClaims,
}

/// What the scopes release about a user, in the ID token and at userinfo.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserClaims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

impl UserClaims {
    /// `email` releases the address and whether it is verified; `profile`
    /// the username (or, without one, the address).
    pub fn of(user: &User, scope: &Scopes) -> Self {
        let mut claims = Self::default();
        if scope.contains(Scope::EMAIL) {
            claims.email.clone_from(&user.email);
            claims.email_verified = user.email.as_ref().map(|_| user.email_verified);
        }
        if scope.contains(Scope::PROFILE) {
            claims.preferred_username = user.username.clone().or_else(|| user.email.clone());
        }
        claims
    }
}

/// Whether `raw` is a PKCE value: 43–128 characters of RFC 7636's set.
fn is_pkce_value(raw: &str) -> bool {
    (43..=128).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// RFC 7636 §4.6: `BASE64URL(SHA256(verifier)) == challenge`.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    if !is_pkce_value(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    crate::crypto::same_digest(
        &Sha256::digest(computed.as_bytes()).into(),
        &Sha256::digest(challenge.as_bytes()).into(),
    )
}

/// The scopes a client registered, as stored.
fn registered(client: &OAuthClient) -> AuthResult<Scopes> {
    Scopes::parse(&client.scopes).map_err(|e| {
        AuthError::Internal(anyhow::anyhow!("client {} has bad scopes: {e}", client.id))
    })
}

/// What a request's `scope` asks for, which must be within `allowed`;
/// without one, all of `allowed`.
fn requested(scope: Option<&str>, allowed: &Scopes) -> AuthResult<Scopes> {
    let Some(raw) = scope else {
        return Ok(allowed.clone());
    };
    let asked = Scopes::parse(raw).map_err(AuthError::InvalidScope)?;
    if !asked.is_subset(allowed) {
        let extra: Vec<String> = asked
            .iter()
            .filter(|s| !allowed.contains(s.as_str()))
            .map(|s| s.as_str().to_owned())
            .collect();
        return Err(AuthError::InvalidScope(format!(
            "not allowed for this client: {}",
            extra.join(" ")
        )));
    }
    Ok(asked)
}

impl OAuth {
    /// Checks an authorization request (RFC 6749 §4.1.1, RFC 7636, OAuth
    /// 2.1): a known client, its redirect URI exactly, `response_type=code`,
    /// an S256 PKCE challenge, and scopes the client may ask for.
    pub async fn check_authorize(
        &self,
        params: &AuthorizeParams,
    ) -> AuthResult<Result<ValidAuthorize, AuthorizeRefusal>> {
        let shown = |why: &str| Ok(Err(AuthorizeRefusal::Shown(why.to_owned())));
        let Some(client_id) = params.client_id.as_deref().filter(|c| c.len() <= 64) else {
            return shown("The application did not say who it is (client_id).");
        };
        let Some(client) = self.store.client(client_id).await? else {
            return shown("The application is not known here.");
        };
        let Some(redirect_uri) = params.redirect_uri.clone() else {
            return shown("The application did not say where to send you back (redirect_uri).");
        };
        // Why exact: prefix or pattern matching lets codes be sent to
        // another page of the client's site (RFC 9700 §4.1.3).
        if !client.redirect_uris.contains(&redirect_uri) {
            return shown(
                "The application asked to send you back to an address it did not register.",
            );
        }
        let state = params.state.clone();
        let refuse = |error: &'static str, description: &str| {
            Ok(Err(AuthorizeRefusal::Redirected {
                redirect_uri: redirect_uri.clone(),
                error,
                description: description.to_owned(),
                state: state.clone().filter(|s| s.len() <= MAX_STATE),
            }))
        };
        if state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
            return refuse("invalid_request", "state is too long");
        }
        match params.response_type.as_deref() {
            Some("code") => {}
            None => return refuse("invalid_request", "response_type is required"),
            Some(_) => return refuse("unsupported_response_type", "response_type must be code"),
        }
        // Why PKCE for every client: it binds the code to whoever started
        // the flow, so an intercepted code is worthless (RFC 9700 §2.1.1).
        let Some(challenge) = params.code_challenge.clone() else {
            return refuse("invalid_request", "code_challenge is required (PKCE, S256)");
        };
        if params.code_challenge_method.as_deref() != Some("S256") {
            return refuse(
                "invalid_request",
                "code_challenge_method must be S256 (plain is refused)",
            );
        }
        if !is_pkce_value(&challenge) {
            return refuse("invalid_request", "code_challenge is malformed");
        }
        if params.nonce.as_ref().is_some_and(|n| n.len() > MAX_STATE) {
            return refuse("invalid_request", "nonce is too long");
        }
        let allowed = registered(&client)?;
        let scope = match params.scope.as_deref() {
            None => return refuse("invalid_scope", "scope is required"),
            Some(raw) if raw.trim().is_empty() => {
                return refuse("invalid_scope", "scope is required");
            }
            Some(raw) => match requested(Some(raw), &allowed) {
                Ok(scope) => scope,
                Err(AuthError::InvalidScope(why)) => return refuse("invalid_scope", &why),
                Err(e) => return Err(e),
            },
        };
        Ok(Ok(ValidAuthorize {
            client,
            redirect_uri,
            scope,
            state,
            nonce: params.nonce.clone(),
            code_challenge: challenge,
        }))
    }

    /// The browser's session on the hosted pages, from its cookie: the
    /// refresh token of a live session, which the pages never rotate.
    pub async fn browser_session(&self, token: &str) -> AuthResult<Option<BrowserSession>> {
        self.sessions.browser_session(token).await
    }

    /// Whether the user must be asked: not for a first-party client, nor
    /// for scopes the user allowed this client before.
    pub async fn needs_consent(&self, user_id: Uuid, request: &ValidAuthorize) -> AuthResult<bool> {
        if request.client.first_party {
            return Ok(false);
        }
        let Some(granted) = self.store.grant(user_id, &request.client.id).await? else {
            return Ok(true);
        };
        let granted = Scopes::parse(&granted).unwrap_or_default();
        Ok(!request.scope.is_subset(&granted))
    }

    /// The user allowed the request: remembered, with what was allowed before.
    pub async fn remember_consent(
        &self,
        user_id: Uuid,
        request: &ValidAuthorize,
    ) -> AuthResult<()> {
        let before = self.store.grant(user_id, &request.client.id).await?;
        let mut names: Vec<String> = request.scope.names();
        if let Some(before) = before {
            names.extend(
                before
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        let all = Scopes::from_names(names.iter().map(String::as_str))
            .map_err(|e| AuthError::Internal(anyhow::anyhow!("stored grant: {e}")))?;
        self.store
            .save_grant(
                user_id,
                &request.client.id,
                &all.to_string(),
                self.clock.now(),
            )
            .await?;
        Ok(())
    }

    /// Checks a logout request: an ID token hint must be one this service
    /// signed, and a redirect must be one the client registered for after
    /// logout. Refusals are shown, never redirected.
    pub async fn check_logout(
        &self,
        params: &LogoutParams,
    ) -> AuthResult<Result<ValidLogout, String>> {
        let hint = match params.id_token_hint.as_deref() {
            None | Some("") => None,
            Some(token) => match self.tokens.verify_id_token_hint(token, self.clock.now()) {
                Some(hint) => Some(hint),
                None => {
                    return Ok(Err(
                        "The sign-out request names a session this service does not know.".into(),
                    ));
                }
            },
        };
        let client_id = match (&hint, params.client_id.as_deref().filter(|c| !c.is_empty())) {
            (Some(hint), Some(given)) if hint.aud != given => {
                return Ok(Err(
                    "The sign-out request names two different applications.".into(),
                ));
            }
            (Some(hint), _) => Some(hint.aud.clone()),
            (None, given) => given.map(str::to_owned),
        };
        let client = match &client_id {
            Some(id) if id.len() <= 64 => self.store.client(id).await?,
            _ => None,
        };
        let redirect = match params
            .post_logout_redirect_uri
            .as_deref()
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(uri) => match &client {
                // Why exact and registered: otherwise a sign-out link would
                // be an open redirector.
                Some(c) if c.post_logout_redirect_uris.iter().any(|r| r == uri) => {
                    Some(uri.to_owned())
                }
                _ => {
                    return Ok(Err(
                        "The application asked to send you to an address it did not register."
                            .into(),
                    ));
                }
            },
        };
        if params.state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
            return Ok(Err("The sign-out request is malformed.".into()));
        }
        Ok(Ok(ValidLogout {
            hint,
            redirect,
            state: params.state.clone(),
            client_name: client.map(|c| c.name),
        }))
    }

    /// Signs the browser out: its session ends, and so does the session the
    /// hint's client holds for the same user.
    pub async fn logout(
        &self,
        by: &Client,
        browser_session: Option<&str>,
        request: &ValidLogout,
    ) -> AuthResult<()> {
        if let Some(token) = browser_session {
            self.sessions.logout(by, token).await?;
        }
        if let Some(hint) = &request.hint
            && let (Ok(user_id), Ok(session_id)) =
                (Uuid::parse_str(&hint.sub), Uuid::parse_str(&hint.sid))
        {
            let event = self
                .audit
                .event(by, Some(user_id), AuditKind::Logout)
                .user(user_id)
                .session(session_id)
                .detail(format!("signed out through client {}", hint.aud));
            self.store
                .revoke_session(
                    user_id,
                    session_id,
                    crate::store::RevokeReason::Logout,
                    self.clock.now(),
                    &Effects::audit(event),
                )
                .await?;
        }
        Ok(())
    }

    /// What the user allowed, oldest first.
    pub async fn grants(&self, user_id: Uuid) -> AuthResult<Vec<crate::store::Grant>> {
        Ok(self.store.grants(user_id).await?)
    }

    /// Takes back what the caller allowed the client: the consent is asked
    /// again next time, and every session the client holds for the caller
    /// ends (its tokens stop within seconds).
    pub async fn revoke_grant(
        &self,
        caller: &super::sessions::Authenticated,
        by: &Client,
        client_id: &str,
    ) -> AuthResult<()> {
        let event = self
            .audit
            .event(by, Some(caller.user_id), AuditKind::GrantRevoked)
            .user(caller.user_id)
            .detail(format!("client {client_id}"));
        if self
            .store
            .revoke_grant(
                caller.user_id,
                client_id,
                self.clock.now(),
                &Effects::audit(event),
            )
            .await?
        {
            Ok(())
        } else {
            Err(AuthError::NotFound)
        }
    }

    /// A code for the request, for the browser's session `session`.
    pub async fn issue_code(
        &self,
        session: &BrowserSession,
        request: &ValidAuthorize,
    ) -> AuthResult<String> {
        let now = self.clock.now();
        let code = refresh::generate();
        let stored = AuthorizationCode {
            code_hash: code.hash,
            client_id: request.client.id.clone(),
            user_id: session.user.id,
            redirect_uri: request.redirect_uri.clone(),
            scope: request.scope.to_string(),
            nonce: request.nonce.clone(),
            code_challenge: request.code_challenge.clone(),
            created_at: now,
            expires_at: now + CODE_TTL,
        };
        if !self.store.add_code(&stored, session.session_id).await? {
            // The session ended between the check and now.
            return Err(AuthError::InvalidRefreshToken);
        }
        Ok(code.token)
    }

    /// `grant_type=authorization_code` (RFC 6749 §4.1.3): the code, used
    /// up here whatever comes of it, gives the client an access token and,
    /// with `openid`, an ID token. A code presented twice ends the session
    /// its first exchange opened.
    pub async fn exchange_code(
        &self,
        by: &Client,
        client: &OAuthClient,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> AuthResult<CodeTokens> {
        let Some(verifier) = verifier else {
            return Err(AuthError::Invalid {
                field: "code_verifier",
                message: "code_verifier is required (PKCE)".into(),
            });
        };
        if !refresh::looks_valid(code) {
            return Err(AuthError::InvalidGrant(
                "the code is invalid, expired or used",
            ));
        }
        let now = self.clock.now();
        let refresh = refresh::generate();
        let session_end = now + self.policy.session_max_age;
        let session = NewClientSession {
            id: Uuid::now_v7(),
            created_at: now,
            expires_at: session_end,
            refresh_hash: refresh.hash,
            refresh_expires_at: super::sessions::refresh_expiry(
                now,
                self.policy.refresh_token_ttl,
                session_end,
            ),
            user_agent: by.user_agent.clone(),
            ip: Some(by.ip.to_string()),
        };
        let (client_id, redirect_uri, verifier) = (
            client.id.clone(),
            redirect_uri.map(str::to_owned),
            verifier.to_owned(),
        );
        // Why every check at once, inside the exchange: a code that fails
        // any of them is used up all the same (OAuth 2.1 §4.1.3).
        let check: crate::store::CodeCheck = Arc::new(move |code| {
            code.client_id == client_id
                && redirect_uri.as_deref() == Some(code.redirect_uri.as_str())
                && pkce_matches(&verifier, &code.code_challenge)
        });
        let event = self
            .audit
            .event(by, None, AuditKind::Login)
            .session(session.id)
            .detail(format!("authorization code for client {}", client.id));
        let redeemed = self
            .store
            .redeem_code(
                &refresh::hash(code),
                now,
                check,
                &session,
                &Effects::audit(event),
            )
            .await?;
        let issued = match redeemed {
            CodeRedemption::Redeemed(issued) => issued,
            CodeRedemption::Replayed => {
                let event = self
                    .audit
                    .event(by, None, AuditKind::CodeReplay)
                    .failed()
                    .detail(format!("client {}", client.id));
                self.audit.record(event).await;
                tracing::warn!(client_id = %client.id, "authorization code replayed");
                return Err(AuthError::InvalidGrant(
                    "the code is invalid, expired or used",
                ));
            }
            CodeRedemption::Refused => {
                return Err(AuthError::InvalidGrant(
                    "the code was issued to another client or redirect_uri, or the code_verifier does not match",
                ));
            }
            CodeRedemption::Invalid => {
                return Err(AuthError::InvalidGrant(
                    "the code is invalid, expired or used",
                ));
            }
        };
        let user =
            self.store
                .get_user(issued.code.user_id)
                .await?
                .ok_or(AuthError::InvalidGrant(
                    "the code is invalid, expired or used",
                ))?;
        let scope = Scopes::parse(&issued.code.scope).unwrap_or_default();
        let auth: super::tokens::Authentication = issued.auth.clone().into();
        let subject = Subject {
            user_id: user.id,
            session_id: session.id,
            roles: user.roles.names(),
            auth: auth.clone(),
            jti: Uuid::now_v7(),
        };
        let scope_text = scope.to_string();
        let access = self.tokens.issue_for(
            subject,
            Some((client.id.as_str(), scope_text.as_str())),
            now,
            session_end,
        )?;
        let id_token = if scope.contains(Scope::OPENID) {
            let iat = now.unix_timestamp();
            let claims = IdClaims {
                iss: self.tokens.issuer().to_owned(),
                sub: user.id.to_string(),
                aud: client.id.clone(),
                exp: access.claims.exp,
                iat,
                auth_time: auth.time.unix_timestamp(),
                nonce: issued.code.nonce.clone(),
                amr: auth.methods.clone(),
                acr: auth.level.clone(),
                sid: session.id.to_string(),
                user: UserClaims::of(&user, &scope),
            };
            Some(self.tokens.sign_id_token(&claims, now)?)
        } else {
            None
        };
        // Why only with `offline_access`: a refresh token keeps the client
        // in after the user has gone, which the user must have allowed.
        let refresh_token = scope
            .contains(Scope::OFFLINE_ACCESS)
            .then_some(refresh.token);
        Ok(CodeTokens {
            expires_in: u64::try_from(access.claims.exp - now.unix_timestamp()).unwrap_or(0),
            access_token: access.token,
            refresh_token,
            id_token,
            scope,
        })
    }

    /// `grant_type=client_credentials` (RFC 6749 §4.4): a confidential
    /// client, already authenticated, gets a token for itself, with the
    /// scopes it registered that are not about a user.
    pub fn client_credentials(
        &self,
        client: &OAuthClient,
        scope: Option<&str>,
    ) -> AuthResult<ClientToken> {
        // Why: a public client's id is no secret, so anyone could act as it.
        if client.is_public() {
            return Err(AuthError::UnauthorizedClient(
                "a public client cannot use client_credentials",
            ));
        }
        let own = registered(client)?.filter(|s| !s.is_user_scope());
        let scope = requested(scope, &own)?;
        let (access_token, claims) =
            self.tokens
                .issue_for_client(&client.id, &scope.to_string(), self.clock.now())?;
        tracing::info!(client_id = %client.id, scope = %scope, "client token issued");
        Ok(ClientToken {
            access_token,
            expires_in: u64::try_from(claims.exp - claims.iat).unwrap_or(0),
            scope,
        })
    }
}
