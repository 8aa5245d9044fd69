//! `POST /auth/introspect` (RFC 7662) and `POST /auth/revoke` (RFC 7009):
//! form-encoded, answered in those RFCs' shapes.

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    auth::{OAuthError, oauth_error, to_oauth},
    error::AppError,
    extract::{ClientInfo, bearer_token, body_rejection, has_content_type},
};
use crate::{
    auth::{Client, introspection::Introspected},
    domain::{Role, User},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(introspect))
        .routes(routes!(revoke))
}

/// The form of both endpoints.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenQueryForm {
    /// An access or refresh token.
    pub token: Option<String>,
    /// `access_token` or `refresh_token`: which to look for first.
    pub token_type_hint: Option<String>,
    /// A client id from AUTHGATE_INTROSPECTION_CLIENTS (or use HTTP Basic).
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// RFC 7662 §2.2. For anything not live, only `active: false`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntrospectionResponse {
    pub active: bool,
    /// `access_token` or `refresh_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The OAuth client holding the token, if one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// What the user allowed that client, space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// Parses the form, refusing another content type or a body without `token`.
fn parse_form(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(TokenQueryForm, String), AppError> {
    if !has_content_type(headers, "application/x-www-form-urlencoded") {
        return Err(AppError::UnsupportedMediaType(
            "Expected Content-Type: application/x-www-form-urlencoded.".into(),
        ));
    }
    let body = body.map_err(body_rejection)?;
    let form: TokenQueryForm = serde_urlencoded::from_bytes(&body)
        .map_err(|e| AppError::BadRequest(format!("Malformed form body: {e}")))?;
    match form.token.clone().filter(|t| !t.is_empty()) {
        Some(token) => Ok((form, token)),
        None => Err(AppError::validation("token", "token is required")),
    }
}

/// Who is asking, as RFC 7662 §2.1 wants callers authenticated.
enum Caller {
    Allowed,
    /// No credentials, or wrong ones.
    Unknown,
    /// A valid token without the admin role.
    NotAdmin,
}

/// HTTP Basic (RFC 6749 §2.3.1: id and secret form-encoded, then base64).
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

async fn caller(
    state: &AppState,
    client: &Client,
    headers: &HeaderMap,
    form: &TokenQueryForm,
) -> Result<Caller, AppError> {
    let introspection = &state.services.introspection;
    let known = |known: bool| {
        if known {
            Caller::Allowed
        } else {
            Caller::Unknown
        }
    };
    if let Some((id, secret)) = basic_credentials(headers) {
        return Ok(known(introspection.is_client(client, &id, &secret).await?));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        let Ok(token) = bearer_token(headers) else {
            return Ok(Caller::Unknown);
        };
        return Ok(match state.services.sessions.authenticate(token).await {
            // The roles as of the last session check: a demoted admin stops
            // introspecting as soon as other admin routes refuse them.
            Ok(who) if who.user.user.roles.contains(Role::ADMIN) => Caller::Allowed,
            Ok(_) => Caller::NotAdmin,
            Err(_) => Caller::Unknown,
        });
    }
    match (&form.client_id, &form.client_secret) {
        (Some(id), Some(secret)) => Ok(known(introspection.is_client(client, id, secret).await?)),
        _ => Ok(Caller::Unknown),
    }
}

fn username(user: &User) -> Option<String> {
    user.username
        .as_ref()
        .map(|u| u.to_string())
        .or_else(|| user.email.as_ref().map(|e| e.to_string()))
}

fn describe(state: &AppState, found: Introspected) -> IntrospectionResponse {
    let tokens = &state.services.tokens;
    match found {
        Introspected::Access { claims, user } => IntrospectionResponse {
            active: true,
            token_type: Some("access_token"),
            sub: Some(claims.sub.to_string()),
            sid: Some(claims.sid.to_string()),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
            jti: Some(claims.jti.to_string()),
            username: username(&user),
            // The roles the user holds now, not when the token was signed.
            roles: Some(user.roles.names()),
            client_id: claims.client_id.clone(),
            scope: claims.scope.clone(),
        },
        Introspected::Client(claims) => IntrospectionResponse {
            active: true,
            token_type: Some("access_token"),
            sub: Some(claims.sub.clone()),
            sid: None,
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            iss: Some(claims.iss.clone()),
            aud: Some(claims.aud.clone()),
            jti: Some(claims.jti.to_string()),
            username: None,
            roles: None,
            client_id: Some(claims.client_id.clone()),
            scope: Some(claims.scope.clone()),
        },
        Introspected::Refresh(live) => IntrospectionResponse {
            active: true,
            token_type: Some("refresh_token"),
            sub: Some(live.user.id.to_string()),
            sid: Some(live.session_id.to_string()),
            exp: Some(live.expires_at.unix_timestamp()),
            iat: Some(live.issued_at.unix_timestamp()),
            iss: Some(tokens.issuer().to_owned()),
            aud: Some(tokens.audience().to_owned()),
            jti: None,
            username: username(&live.user),
            roles: Some(live.user.roles.names()),
            client_id: live.client_id.clone(),
            scope: None,
        },
    }
}

fn no_store(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(body),
    )
        .into_response()
}

/// Token introspection (RFC 7662) for resource servers: whether a token is
/// live now, and whose. Callers authenticate as a client of
/// AUTHGATE_INTROSPECTION_CLIENTS (HTTP Basic or `client_id` +
/// `client_secret`) or with an admin's Bearer token. An access token of an
/// ended session is inactive at once.
#[utoipa::path(
    post, path = "/auth/introspect", tag = "auth",
    request_body(content = TokenQueryForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "`{\"active\": false}` for anything not live; else the token's claims", body = IntrospectionResponse),
        (status = 400, description = "RFC 6749 error (`invalid_request`)", body = OAuthError),
        (status = 401, description = "No or wrong client credentials (`invalid_client`)", body = OAuthError),
        (status = 403, description = "A Bearer token without the admin role", body = OAuthError),
        (status = 429, description = "Too many wrong client secrets from this address; retry after Retry-After", body = OAuthError),
    )
)]
async fn introspect(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (form, token) = match parse_form(&headers, body) {
        Ok(parsed) => parsed,
        Err(e) => return to_oauth(e),
    };
    match caller(&state, &client, &headers, &form).await {
        Err(e) => return to_oauth(e),
        Ok(Caller::Allowed) => {}
        Ok(Caller::Unknown) => {
            let mut res = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Authenticate with client credentials or an admin's Bearer token.",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="authgate""#),
            );
            return res;
        }
        Ok(Caller::NotAdmin) => {
            return oauth_error(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "Introspection needs the admin role.",
            );
        }
    }
    let hint = form.token_type_hint.as_deref();
    match state.services.introspection.introspect(&token, hint).await {
        Ok(Some(found)) => no_store(StatusCode::OK, json!(describe(&state, found))),
        Ok(None) => no_store(StatusCode::OK, json!({ "active": false })),
        Err(e) => AppError::from(e).into_response(),
    }
}

/// Token revocation (RFC 7009): ends the session of a refresh token (or of
/// an access token) at once, on every instance within a second. Needs no
/// authentication: holding the token is enough. Always 200, also for
/// unknown tokens, so the answer reveals nothing.
#[utoipa::path(
    post, path = "/auth/revoke", tag = "auth",
    request_body(content = TokenQueryForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked (or nothing to revoke)"),
        (status = 400, description = "RFC 6749 error (`invalid_request`)", body = OAuthError),
        (status = 429, description = "Throttled", body = OAuthError),
    )
)]
async fn revoke(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let token = match parse_form(&headers, body) {
        Ok((_, token)) => token,
        Err(e) => return to_oauth(e),
    };
    match state.services.introspection.revoke(&client, &token).await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        )
            .into_response(),
        Err(e) => to_oauth(e.into()),
    }
}
