//! authgate as an OAuth 2.1 authorization server: the grants of
//! `POST /oauth/token` for registered clients.

use std::sync::Arc;

use super::{
    error::{AuthError, AuthResult},
    tokens::TokenService,
};
use crate::{clock::SharedClock, domain::Scopes, store::OAuthClient};

/// An access token a client got for itself.
#[derive(Debug, Clone)]
pub struct ClientToken {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: Scopes,
}

#[derive(Clone)]
pub struct OAuth {
    pub(super) tokens: Arc<TokenService>,
    pub(super) clock: SharedClock,
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
