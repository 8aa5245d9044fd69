//! Token introspection (RFC 7662) and revocation (RFC 7009): what resource
//! servers ask about a token, and how a holder gives one up.

use std::sync::Arc;

use super::{
    Client,
    error::{AuthError, AuthResult},
    sessions::Sessions,
    tokens::{AccessClaims, ClientAccessClaims},
};
use crate::{
    crypto::{refresh, same_digest},
    domain::User,
    limits::{Key, client_bucket},
    store::{LiveRefreshToken, Store},
};
use sha2::{Digest, Sha256};

/// The clients allowed to introspect with a secret
/// (`AUTHGATE_INTROSPECTION_CLIENTS`): each id with its secret's SHA-256.
#[derive(Clone, Default)]
pub struct IntrospectionClients(Arc<Vec<(String, [u8; 32])>>);

impl std::fmt::Debug for IntrospectionClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.0.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_tuple("IntrospectionClients").field(&ids).finish()
    }
}

impl IntrospectionClients {
    pub fn new<'a>(clients: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(Arc::new(
            clients
                .into_iter()
                .map(|(id, secret)| (id.to_owned(), Sha256::digest(secret.as_bytes()).into()))
                .collect(),
        ))
    }

    /// Whether `id` is a client and `secret` its secret. Why digests: the
    /// comparison runs over hashes of equal length and never stops early, so
    /// its time tells nothing about how much of a guess was right.
    pub fn check(&self, id: &str, secret: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = false;
        for (known_id, known) in self.0.iter() {
            found |= same_digest(known, &presented) && known_id == id;
        }
        found
    }
}

/// Wrong client secrets from one address before back-off starts.
const CLIENT_FREE_FAILURES: u32 = 10;

/// What introspection found live.
#[derive(Debug, Clone)]
pub enum Introspected {
    /// A valid access token of a live session, with the session's user.
    Access {
        claims: Box<AccessClaims>,
        user: User,
    },
    /// A refresh token that would rotate now.
    Refresh(LiveRefreshToken),
    /// A token a registered client got for itself, the client still there.
    Client(Box<ClientAccessClaims>),
}

/// Answers about tokens, for resource servers and holders.
#[derive(Clone)]
pub struct Introspection {
    pub(super) sessions: Sessions,
    pub(super) store: Arc<dyn Store>,
    pub(super) clients: IntrospectionClients,
}

impl Introspection {
    /// Whether a client id and secret are a configured introspection client.
    /// Wrong secrets from one client address back off as failed logins do
    /// (429 with the wait), so secrets cannot be guessed at request speed.
    pub async fn is_client(&self, client: &Client, id: &str, secret: &str) -> AuthResult<bool> {
        let limiter = &self.sessions.limiter;
        let key = Key::new("introspection_client_failures", client_bucket(client.ip));
        let reserved = limiter
            .reserve(&key, CLIENT_FREE_FAILURES, self.sessions.clock.now())
            .await
            .map_err(AuthError::from);
        self.sessions
            .audit
            .note_throttling(client, "introspection-client", None, reserved)
            .await?;
        if self.clients.check(id, secret) {
            if let Err(e) = limiter.release(&key).await {
                tracing::warn!(error = %format!("{e:#}"), "attempt not taken back");
            }
            return Ok(true);
        }
        tracing::info!(client_id = %id.chars().take(64).collect::<String>(), "introspection client refused");
        Ok(false)
    }

    /// The token if it is live, whatever its kind; `hint` (`access_token`,
    /// `refresh_token`) only says which to try first (RFC 7662 §2.1).
    pub async fn introspect(
        &self,
        token: &str,
        hint: Option<&str>,
    ) -> AuthResult<Option<Introspected>> {
        let refresh_first = hint == Some("refresh_token");
        if refresh_first && let Some(found) = self.refresh(token).await? {
            return Ok(Some(found));
        }
        if let Some(found) = self.access(token).await? {
            return Ok(Some(found));
        }
        if refresh_first {
            return Ok(None);
        }
        self.refresh(token).await
    }

    /// An access token that verifies, of a session live in the database
    /// right now: not the cached answer other requests use, so a resource
    /// server that introspects sees a logout at once.
    async fn access(&self, token: &str) -> AuthResult<Option<Introspected>> {
        let now = self.sessions.clock.now();
        let Ok(claims) = self.sessions.tokens.verify(token, now) else {
            // A client's own token: live while its client is registered.
            if let Ok(claims) = self.sessions.tokens.verify_client(token, now)
                && self.store.client(&claims.client_id).await?.is_some()
            {
                return Ok(Some(Introspected::Client(Box::new(claims))));
            }
            return Ok(None);
        };
        match self.store.session_user(claims.sid, now).await? {
            Some(user) if user.id == claims.sub => Ok(Some(Introspected::Access {
                claims: Box::new(claims),
                user,
            })),
            _ => Ok(None),
        }
    }

    async fn refresh(&self, token: &str) -> AuthResult<Option<Introspected>> {
        if !refresh::looks_valid(token) {
            return Ok(None);
        }
        let now = self.sessions.clock.now();
        Ok(self
            .store
            .refresh_token_session(&refresh::hash(token), now)
            .await?
            .map(Introspected::Refresh))
    }

    /// Gives a token up (RFC 7009): a refresh token ends its session, as does
    /// an access token (its holder could end that session anyway). Unknown
    /// or dead tokens are no error, so the answer reveals nothing.
    pub async fn revoke(&self, client: &Client, token: &str) -> AuthResult<()> {
        if refresh::looks_valid(token) {
            return self.sessions.logout(client, token).await;
        }
        // Any access token of a live session, a client's too: whoever holds
        // one may give it up (RFC 7009 §2.1).
        let Ok(who) = self.sessions.authenticate_delegated(token).await else {
            return Ok(());
        };
        match self.sessions.end(&who, client, who.session_id).await {
            Ok(()) | Err(AuthError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_known_only_by_its_own_secret() {
        let clients = IntrospectionClients::new([("api", "s3cret-one"), ("web", "s3cret-two")]);
        assert!(clients.check("api", "s3cret-one"));
        assert!(clients.check("web", "s3cret-two"));
        assert!(!clients.check("api", "s3cret-two"));
        assert!(!clients.check("nobody", "s3cret-one"));
        assert!(!clients.check("api", ""));
        assert!(!format!("{clients:?}").contains("s3cret"));
    }
}
