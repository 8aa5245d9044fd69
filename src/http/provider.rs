//! The OAuth 2.1 / OpenID Connect provider's endpoints under `/oauth`, for
//! registered clients (`/admin/clients`).

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    auth::{OAuthError, oauth_error, to_oauth},
    error::AppError,
    extract::{ClientInfo, bearer_token, body_rejection, has_content_type},
    oauth::basic_credentials,
};
use crate::{
    auth::{AuthError, Client, oauth::UserClaims},
    domain::{Scope, Scopes},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(oauth_token))
        .routes(routes!(userinfo_get, userinfo_post))
}

/// The form of `POST /oauth/token` (RFC 6749 §4).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ClientTokenForm {
    /// `authorization_code`, `refresh_token` or `client_credentials`.
    pub grant_type: Option<String>,
    /// `authorization_code`: the code from the redirect …
    pub code: Option<String>,
    /// … the redirect URI it was sent to …
    pub redirect_uri: Option<String>,
    /// … and the PKCE verifier of its challenge.
    pub code_verifier: Option<String>,
    /// `refresh_token`: the client's refresh token (rotated: use the new
    /// one from the answer).
    pub refresh_token: Option<String>,
    /// With `client_secret`, unless HTTP Basic carries them
    /// (`client_secret_post` / `client_secret_basic`).
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// Space-separated; within what the client registered.
    pub scope: Option<String>,
}

/// A successful answer (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientTokenResponse {
    /// A JWT (RFC 9068) with `client_id` and `scope` claims.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    pub expires_in: u64,
    /// With `offline_access`: a refresh token, single-use (each refresh
    /// answers a new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// With `openid`: the ID token, signed with the published keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// What was granted, space-separated.
    pub scope: String,
}

/// Who the client says it is, by HTTP Basic or in the form, never both
/// (RFC 6749 §2.3: one method per request).
enum ClientAuth {
    Secret {
        id: String,
        secret: String,
    },
    /// A `client_id` alone: a public client.
    Public(String),
    None,
}

fn client_auth(headers: &HeaderMap, form: &ClientTokenForm) -> Result<ClientAuth, AuthError> {
    let basic = basic_credentials(headers);
    if headers.contains_key(header::AUTHORIZATION) && basic.is_none() {
        return Err(AuthError::InvalidClient);
    }
    match (basic, &form.client_id, &form.client_secret) {
        (Some(_), _, Some(_)) => Err(AuthError::Invalid {
            field: "client_secret",
            message: "use one way of authenticating the client, not two".into(),
        }),
        (Some((id, secret)), None, None) => Ok(ClientAuth::Secret { id, secret }),
        (Some((id, secret)), Some(form_id), None) if *form_id == id => {
            Ok(ClientAuth::Secret { id, secret })
        }
        (Some(_), Some(_), None) => Err(AuthError::InvalidClient),
        (None, Some(id), Some(secret)) => Ok(ClientAuth::Secret {
            id: id.clone(),
            secret: secret.clone(),
        }),
        (None, Some(id), None) => Ok(ClientAuth::Public(id.clone())),
        (None, None, None) => Ok(ClientAuth::None),
        (None, None, Some(_)) => Err(AuthError::Invalid {
            field: "client_id",
            message: "client_id is required with client_secret".into(),
        }),
    }
}

/// An error of the token endpoint, as RFC 6749 §5.2 renders it.
fn token_error(err: AuthError) -> Response {
    match err {
        AuthError::InvalidClient => {
            let mut res = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Unknown client or wrong client secret.",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="authgate""#),
            );
            res
        }
        AuthError::InvalidScope(why) => oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", why),
        AuthError::UnauthorizedClient(why) => {
            oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client", why)
        }
        AuthError::InvalidGrant(why) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
        other => to_oauth(other.into()),
    }
}

async fn client_credentials(
    state: &AppState,
    client: &Client,
    auth: ClientAuth,
    form: &ClientTokenForm,
) -> Result<ClientTokenResponse, AuthError> {
    let ClientAuth::Secret { id, secret } = auth else {
        return Err(AuthError::InvalidClient);
    };
    let registered = state
        .services
        .clients
        .authenticate(client, &id, &secret)
        .await?;
    let issued = state
        .services
        .oauth
        .client_credentials(&registered, form.scope.as_deref())?;
    Ok(ClientTokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
        refresh_token: None,
        id_token: None,
        scope: issued.scope.to_string(),
    })
}

async fn authorization_code(
    state: &AppState,
    client: &Client,
    auth: ClientAuth,
    form: &ClientTokenForm,
) -> Result<ClientTokenResponse, AuthError> {
    // A confidential client proves itself; a public one names itself, and
    // PKCE stands in for its missing secret.
    let registered = registered_client(state, client, auth).await?;
    let code = required(form.code.as_deref(), "code")?;
    let issued = state
        .services
        .oauth
        .exchange_code(
            client,
            &registered,
            code,
            form.redirect_uri.as_deref(),
            form.code_verifier.as_deref(),
        )
        .await?;
    Ok(ClientTokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
        refresh_token: issued.refresh_token,
        id_token: issued.id_token,
        scope: issued.scope.to_string(),
    })
}

/// A field the grant needs (`invalid_request` without it).
fn required<'a>(value: Option<&'a str>, field: &'static str) -> Result<&'a str, AuthError> {
    value.ok_or_else(|| AuthError::Invalid {
        field,
        message: format!("{field} is required"),
    })
}

/// Who the client is, proved by its secret or, for a public client, named.
async fn registered_client(
    state: &AppState,
    client: &Client,
    auth: ClientAuth,
) -> Result<crate::auth::clients::OAuthClient, AuthError> {
    let clients = &state.services.clients;
    match auth {
        ClientAuth::Secret { id, secret } => clients.authenticate(client, &id, &secret).await,
        ClientAuth::Public(id) => clients.public(&id).await,
        ClientAuth::None => Err(AuthError::InvalidClient),
    }
}

async fn refresh_token(
    state: &AppState,
    client: &Client,
    auth: ClientAuth,
    form: &ClientTokenForm,
) -> Result<ClientTokenResponse, AuthError> {
    let registered = registered_client(state, client, auth).await?;
    let token = required(form.refresh_token.as_deref(), "refresh_token")?;
    // Only a session this client holds rotates here (RFC 6749 §6: the
    // token is bound to the client it was issued to).
    let pair = state
        .services
        .sessions
        .refresh_for(client, token, Some(&registered.id))
        .await
        .map_err(|e| match e {
            AuthError::InvalidRefreshToken => {
                AuthError::InvalidGrant("the refresh token is invalid, expired or revoked")
            }
            other => other,
        })?;
    Ok(ClientTokenResponse {
        access_token: pair.access_token,
        token_type: "Bearer",
        expires_in: pair.expires_in,
        refresh_token: Some(pair.refresh_token),
        id_token: None,
        scope: pair.scope.unwrap_or_default(),
    })
}

/// The token endpoint for registered clients (RFC 6749 §3.2):
/// `grant_type=authorization_code` (with the PKCE `code_verifier`) after
/// `GET /oauth/authorize`, `refresh_token` (rotating, as for the service's
/// own sessions) when the user allowed `offline_access`, and
/// `client_credentials` for a confidential
/// client acting for itself. Confidential clients authenticate with
/// `client_secret_basic` or `client_secret_post`; a public client sends its
/// `client_id` alone. A code is single-use: presented again, it fails and
/// ends the session its first exchange opened.
#[utoipa::path(
    post, path = "/oauth/token", tag = "oauth",
    request_body(content = ClientTokenForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("client" = [])),
    responses(
        (status = 200, description = "A token", body = ClientTokenResponse),
        (status = 400, description = "RFC 6749 error: `invalid_request` (also for a body that is not form-encoded), `unsupported_grant_type`, `invalid_scope`, `unauthorized_client`, `invalid_grant`", body = OAuthError),
        (status = 401, description = "Unknown client or wrong secret (`invalid_client`)", body = OAuthError,
            headers(("WWW-Authenticate" = String, description = "`Basic realm=\"authgate\"`"))),
        (status = 429, description = "Too many wrong client secrets from this address; retry after Retry-After", body = OAuthError),
        (status = 503, description = "The database is unavailable; retry after Retry-After", body = OAuthError),
    )
)]
async fn oauth_token(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !has_content_type(&headers, "application/x-www-form-urlencoded") {
        return to_oauth(AppError::UnsupportedMediaType(
            "Expected Content-Type: application/x-www-form-urlencoded.".into(),
        ));
    }
    let body = match body.map_err(body_rejection) {
        Ok(body) => body,
        Err(e) => return to_oauth(e),
    };
    let form: ClientTokenForm = match serde_urlencoded::from_bytes(&body) {
        Ok(form) => form,
        Err(e) => return to_oauth(AppError::BadRequest(format!("Malformed form body: {e}"))),
    };
    let auth = match client_auth(&headers, &form) {
        Ok(auth) => auth,
        Err(e) => return token_error(e),
    };
    let answer = match form.grant_type.as_deref() {
        Some("client_credentials") => client_credentials(&state, &client, auth, &form).await,
        Some("authorization_code") => authorization_code(&state, &client, auth, &form).await,
        Some("refresh_token") => refresh_token(&state, &client, auth, &form).await,
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code, refresh_token or client_credentials.",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required.",
            );
        }
    };
    match answer {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::PRAGMA, HeaderValue::from_static("no-cache")),
            ],
            axum::Json(body),
        )
            .into_response(),
        Err(e) => token_error(e),
    }
}

/// What `/oauth/userinfo` says about the user (OpenID Connect Core §5.3):
/// `sub` always, the rest as the token's scopes allow.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserInfo {
    pub sub: String,
    /// With `email`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// With `email`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// With `profile`: the username, or the address without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

/// A refusal of a Bearer token, as RFC 6750 §3 renders it.
fn bearer_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let mut res = oauth_error(status, error, description);
    if let Ok(value) =
        HeaderValue::from_str(&format!(r#"Bearer realm="authgate", error="{error}""#))
    {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    res
}

async fn userinfo(state: AppState, headers: HeaderMap) -> Response {
    let Ok(token) = bearer_token(&headers) else {
        let mut res = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "An access token is required (Authorization: Bearer).",
        );
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="authgate""#),
        );
        return res;
    };
    let who = match state.services.sessions.authenticate_delegated(token).await {
        Ok(who) => who,
        Err(AuthError::InvalidToken(_)) => {
            return bearer_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "The access token is invalid, expired or revoked.",
            );
        }
        Err(e) => return to_oauth(e.into()),
    };
    // Only a token a user gave a client for `openid` answers here.
    let scope = Scopes::parse(who.claims.scope.as_deref().unwrap_or("")).unwrap_or_default();
    if who.claims.client_id.is_none() || !scope.contains(Scope::OPENID) {
        return bearer_error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "The token was not granted the openid scope.",
        );
    }
    let user = &who.user.user;
    let released = UserClaims::of(user, &scope);
    let info = UserInfo {
        sub: user.id.to_string(),
        email: released.email,
        email_verified: released.email_verified,
        preferred_username: released.preferred_username,
    };
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(info),
    )
        .into_response()
}

/// The user the access token speaks for, as its scopes allow (OpenID
/// Connect Core §5.3). Takes tokens from `/oauth/token` with `openid`.
#[utoipa::path(
    get, path = "/oauth/userinfo", tag = "oauth",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The user's claims", body = UserInfo),
        (status = 401, description = "No, or an invalid, access token (`invalid_token`)", body = OAuthError,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"authgate\"`"))),
        (status = 403, description = "The token lacks the `openid` scope (`insufficient_scope`)", body = OAuthError),
        (status = 503, description = "The database is unavailable; retry after Retry-After", body = OAuthError),
    )
)]
async fn userinfo_get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    userinfo(state, headers).await
}

/// The same as `GET /oauth/userinfo`.
#[utoipa::path(
    post, path = "/oauth/userinfo", tag = "oauth",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The user's claims", body = UserInfo),
        (status = 401, description = "No, or an invalid, access token (`invalid_token`)", body = OAuthError,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"authgate\"`"))),
        (status = 403, description = "The token lacks the `openid` scope (`insufficient_scope`)", body = OAuthError),
        (status = 503, description = "The database is unavailable; retry after Retry-After", body = OAuthError),
    )
)]
async fn userinfo_post(State(state): State<AppState>, headers: HeaderMap) -> Response {
    userinfo(state, headers).await
}
