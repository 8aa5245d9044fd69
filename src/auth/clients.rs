//! OAuth clients: registering, listing and deleting the applications that
//! send users here to log in, and checking who a client says it is.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::{
    Client,
    audit::Audit,
    error::{AuthError, AuthResult},
};
use crate::{
    clock::SharedClock,
    crypto::{refresh, same_digest},
    domain::{ClientName, RedirectUri, Scopes},
    limits::{Key, RateLimiter, client_bucket},
    store::{AuditKind, Effects, OAuthStore, StoreError},
};

pub use crate::store::OAuthClient;

/// The most redirect URIs of either kind one client may register.
pub const MAX_REDIRECT_URIS: usize = 10;

/// A client to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: ClientName,
    pub redirect_uris: Vec<RedirectUri>,
    pub post_logout_redirect_uris: Vec<RedirectUri>,
    /// What it may ask for; by default the OpenID Connect scopes.
    pub scopes: Option<Scopes>,
    /// Holds no secret (a SPA, a mobile app): must use PKCE.
    pub public: bool,
    pub first_party: bool,
}

/// A client as asked for, before any of it is checked.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    pub name: &'a str,
    pub redirect_uris: &'a [String],
    pub post_logout_redirect_uris: &'a [String],
    pub scopes: Option<&'a [String]>,
    pub public: bool,
    pub first_party: bool,
}

impl ClientRequest<'_> {
    /// The client, or every field in error with why.
    pub fn parse(self) -> Result<NewClient, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let name = ClientName::parse(self.name)
            .map_err(|e| errors.push(("name".to_owned(), e)))
            .ok();
        let mut uris = |field: &str, raw: &[String]| -> Vec<RedirectUri> {
            raw.iter()
                .enumerate()
                .filter_map(|(i, uri)| {
                    RedirectUri::parse(uri)
                        .map_err(|e| errors.push((format!("{field}[{i}]"), e)))
                        .ok()
                })
                .collect()
        };
        let redirect_uris = uris("redirect_uris", self.redirect_uris);
        let post_logout_redirect_uris =
            uris("post_logout_redirect_uris", self.post_logout_redirect_uris);
        let scopes = match self.scopes {
            None => Some(None),
            Some(names) => Scopes::from_names(names.iter().map(String::as_str))
                .map(Some)
                .map_err(|e| errors.push(("scopes".to_owned(), e)))
                .ok(),
        };
        match (name, scopes) {
            (Some(name), Some(scopes)) if errors.is_empty() => Ok(NewClient {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                scopes,
                public: self.public,
                first_party: self.first_party,
            }),
            _ => Err(errors),
        }
    }
}

/// A registered client and, for a confidential one, its secret: shown this
/// once, stored only as a hash.
#[derive(Debug, Clone)]
pub struct CreatedClient {
    pub client: OAuthClient,
    pub secret: Option<String>,
}

/// Wrong client secrets from one address before back-off starts.
const CLIENT_FREE_FAILURES: u32 = 10;

#[derive(Clone)]
pub struct Clients {
    pub(super) store: Arc<dyn OAuthStore>,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) audit: Audit,
    pub(super) clock: SharedClock,
}

impl Clients {
    pub async fn create(
        &self,
        new: NewClient,
        by: &Client,
        actor: Option<Uuid>,
    ) -> AuthResult<CreatedClient> {
        for (field, uris) in [
            ("redirect_uris", &new.redirect_uris),
            ("post_logout_redirect_uris", &new.post_logout_redirect_uris),
        ] {
            if uris.len() > MAX_REDIRECT_URIS {
                return Err(AuthError::Invalid {
                    field,
                    message: format!("at most {MAX_REDIRECT_URIS}"),
                });
            }
        }
        // A public client can do nothing but the code flow, which needs
        // somewhere to send the code.
        if new.public && new.redirect_uris.is_empty() {
            return Err(AuthError::Invalid {
                field: "redirect_uris",
                message: "a public client needs at least one".into(),
            });
        }
        let unique = |uris: &[RedirectUri]| {
            let mut list: Vec<String> = uris.iter().map(|u| u.as_str().to_owned()).collect();
            list.sort();
            list.dedup();
            list
        };
        let mut id_bytes = [0u8; 16];
        rand::fill(&mut id_bytes);
        let secret = (!new.public).then(refresh::generate);
        let client = OAuthClient {
            id: URL_SAFE_NO_PAD.encode(id_bytes),
            name: new.name.as_str().to_owned(),
            secret_hash: secret.as_ref().map(|s| s.hash),
            redirect_uris: unique(&new.redirect_uris),
            post_logout_redirect_uris: unique(&new.post_logout_redirect_uris),
            scopes: new
                .scopes
                .unwrap_or_else(Scopes::openid_defaults)
                .to_string(),
            first_party: new.first_party,
            created_at: self.clock.now(),
        };
        let record = by
            .context(actor)
            .record(AuditKind::ClientCreated, client.created_at)
            .detail(format!("{} ({})", client.id, client.name));
        self.store
            .add_client(&client, &Effects::audit(record))
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => AuthError::Conflict("client_id"),
                e => e.into(),
            })?;
        Ok(CreatedClient {
            client,
            secret: secret.map(|s| s.token),
        })
    }

    pub async fn list(&self) -> AuthResult<Vec<OAuthClient>> {
        Ok(self.store.clients().await?)
    }

    pub async fn get(&self, id: &str) -> AuthResult<OAuthClient> {
        self.store.client(id).await?.ok_or(AuthError::NotFound)
    }

    /// Deletes the client; whatever it was given stops working with it.
    pub async fn delete(&self, id: &str, by: &Client, actor: Option<Uuid>) -> AuthResult<()> {
        let record = by
            .context(actor)
            .record(AuditKind::ClientDeleted, self.clock.now())
            .detail(id.to_owned());
        if self
            .store
            .delete_client(id, self.clock.now(), &Effects::audit(record))
            .await?
        {
            Ok(())
        } else {
            Err(AuthError::NotFound)
        }
    }

    /// The confidential client `id` if `secret` is its secret. Why one
    /// answer for an unknown id and a wrong secret: ids are not to be
    /// probed. Wrong secrets from one address back off as failed logins do
    /// (429 with the wait), so secrets cannot be guessed at request speed.
    pub async fn authenticate(
        &self,
        by: &Client,
        id: &str,
        secret: &str,
    ) -> AuthResult<OAuthClient> {
        let key = Key::new("oauth_client_failures", client_bucket(by.ip));
        let reserved = self
            .limiter
            .reserve(&key, CLIENT_FREE_FAILURES, self.clock.now())
            .await
            .map_err(AuthError::from);
        self.audit
            .note_throttling(by, "oauth-client", None, reserved)
            .await?;
        let found = self.store.client(id).await?;
        let presented = refresh::hash(secret);
        match found {
            Some(client)
                if client
                    .secret_hash
                    .is_some_and(|known| same_digest(&known, &presented)) =>
            {
                if let Err(e) = self.limiter.release(&key).await {
                    tracing::warn!(error = %format!("{e:#}"), "attempt not taken back");
                }
                Ok(client)
            }
            _ => {
                tracing::info!(client_id = %id.chars().take(64).collect::<String>(), "client authentication refused");
                Err(AuthError::InvalidClient)
            }
        }
    }

    /// The client `id`, which presents no secret: only a public client may
    /// (a confidential one must prove itself).
    pub async fn public(&self, id: &str) -> AuthResult<OAuthClient> {
        match self.store.client(id).await? {
            Some(client) if client.is_public() => Ok(client),
            _ => Err(AuthError::InvalidClient),
        }
    }
}
