//! What services need to verify authgate's tokens on their own: the public
//! keys (`/.well-known/jwks.json`) and the discovery documents; and, for the
//! `admin` role, the signing keys' list, rotation and revocation.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    error::{AppError, AppResult, Problem},
    extract::{Admin, ClientInfo, RequireRole},
};
use crate::auth::keys::{JWKS_MAX_AGE, KeyInfo};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(openid_configuration))
        .routes(routes!(authorization_server_metadata))
        .routes(routes!(list_keys))
        .routes(routes!(rotate_key))
        .routes(routes!(revoke_key))
}

/// A JSON Web Key Set (RFC 7517 §5).
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkSet {
    /// Public keys: `kid`, `kty`, `alg`, `use: sig`, and the key's
    /// parameters (`crv`/`x`/`y` or `n`/`e`).
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<Value>,
}

/// The public keys that verify access tokens: the one signing, those about
/// to (published ahead), and those replaced whose tokens may still be live.
/// HS256 keys are never published.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "keys",
    responses(
        (status = 200, description = "The key set; cache for at most `max-age`", body = JwkSet,
         headers(("Cache-Control" = String), ("ETag" = String))),
        (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
    )
)]
async fn jwks(State(state): State<AppState>, request: HeaderMap) -> Response {
    let services = &state.services;
    let body = services.keys.jwks().to_string();
    let etag = format!(
        "\"{}\"",
        URL_SAFE_NO_PAD.encode(&Sha256::digest(body.as_bytes())[..16])
    );
    let mut headers = HeaderMap::new();
    // Why public and short: verifiers everywhere may cache the set, and a key
    // is published for at least twice this long before it signs.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={}", JWKS_MAX_AGE.as_secs()))
            .expect("a valid header"),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("a valid header"),
    );
    let unchanged = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    if unchanged {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, headers, body).into_response()
}

/// The discovery document, from the running configuration.
fn metadata(state: &AppState) -> Value {
    let base = &state.public_url;
    let tokens = &state.services.tokens;
    let algorithms: Vec<&str> = tokens
        .keys()
        .current()
        .algorithms()
        .into_iter()
        .filter(|a| a.is_published())
        .map(|a| a.as_str())
        .collect();
    json!({
        "issuer": tokens.issuer(),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "userinfo_endpoint": format!("{base}/oauth/userinfo"),
        "end_session_endpoint": format!("{base}/oauth/logout"),
        "introspection_endpoint": format!("{base}/auth/introspect"),
        "revocation_endpoint": format!("{base}/auth/revoke"),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        // Public clients send their id alone, with PKCE.
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
        "access_token_signing_alg_values_supported": algorithms,
        "acr_values_supported": ["aal1", "aal2"],
        "claims_supported": [
            "iss", "aud", "sub", "iat", "exp", "auth_time", "nonce", "amr", "acr", "sid",
            "email", "email_verified", "preferred_username"
        ],
        "service_documentation": format!("{base}/docs"),
    })
}

/// A discovery document (RFC 8414 / OpenID Connect Discovery 1.0).
#[derive(Debug, Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct Metadata(Value);

/// OpenID Connect discovery: the issuer and where its keys and endpoints are.
#[utoipa::path(
    get, path = "/.well-known/openid-configuration", tag = "keys",
    responses((status = 200, description = "Provider metadata", body = Metadata))
)]
async fn openid_configuration(State(state): State<AppState>) -> Json<Value> {
    Json(metadata(&state))
}

/// OAuth 2.0 authorization server metadata (RFC 8414).
#[utoipa::path(
    get, path = "/.well-known/oauth-authorization-server", tag = "keys",
    responses((status = 200, description = "Server metadata", body = Metadata))
)]
async fn authorization_server_metadata(State(state): State<AppState>) -> Json<Value> {
    Json(metadata(&state))
}

/// A signing key as the admin list shows it; never key material.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    #[schema(example = "q3Jt1n0dX8kA")]
    pub kid: String,
    /// `EdDSA`, `ES256`, `RS256` or `HS256`.
    #[schema(example = "EdDSA")]
    pub algorithm: &'static str,
    /// `standby` (published, not signing yet), `active` (signing),
    /// `retiring` (published until its tokens expire), `expired`, `revoked`.
    #[schema(example = "active")]
    pub state: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it starts (or started) signing.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub activates_at: OffsetDateTime,
    /// When a replaced key leaves the key set.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub retires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    /// Whether the private key is stored sealed (AES-256-GCM).
    pub sealed: bool,
    /// Whether `/.well-known/jwks.json` lists it.
    pub published: bool,
}

impl From<KeyInfo> for KeyView {
    fn from(k: KeyInfo) -> Self {
        Self {
            published: k.state.is_published() && k.algorithm.is_published(),
            kid: k.kid,
            algorithm: k.algorithm.as_str(),
            state: k.state.as_str(),
            created_at: k.created_at,
            activates_at: k.activates_at,
            retires_at: k.retires_at,
            revoked_at: k.revoked_at,
            sealed: k.sealed,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// In the order they activate: the last unrevoked, activated one signs.
    pub keys: Vec<KeyView>,
}

/// Every signing key and its state.
#[utoipa::path(
    get, path = "/admin/keys", tag = "admin",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
    )
)]
async fn list_keys(State(state): State<AppState>, _admin: RequireRole<Admin>) -> Json<KeyList> {
    let keys = state
        .services
        .keys
        .list()
        .into_iter()
        .map(KeyView::from)
        .collect();
    Json(KeyList { keys })
}

/// Add a new signing key. It is published at once and signs after the
/// publish lead (`AUTHGATE_KEY_PUBLISH_LEAD`), so every verifier has it
/// before it meets a token signed with it.
#[utoipa::path(
    post, path = "/admin/keys/rotate", tag = "admin",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 201, description = "The new key, on standby", body = KeyView),
        (status = 409, description = "Three keys already wait on standby (`code: too_many_keys`), or the key comes from AUTHGATE_JWT_SECRET (`code: keys_configured`)", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
    )
)]
async fn rotate_key(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
) -> AppResult<(StatusCode, Json<KeyView>)> {
    let services = &state.services;
    let key = services
        .keys
        .rotate(&client, Some(admin.user_id()), &services.audit)
        .await?;
    Ok((StatusCode::CREATED, Json(key.into())))
}

/// Revoke a signing key at once: tokens it signed are refused everywhere
/// within seconds, and it leaves the key set. If it was signing, a new key
/// signs in its place at once.
#[utoipa::path(
    post, path = "/admin/keys/{kid}/revoke", tag = "admin",
    params(("kid" = String, Path, description = "Key id", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The key, revoked", body = KeyView),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 404, description = "No such key", body = Problem),
        (status = 409, description = "The key comes from AUTHGATE_JWT_SECRET (`code: keys_configured`)", body = Problem),
    )
)]
async fn revoke_key(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    kid: Result<Path<String>, PathRejection>,
) -> AppResult<Json<KeyView>> {
    // A path that is not even text names no key.
    let Ok(Path(kid)) = kid else {
        return Err(AppError::NotFound);
    };
    if kid.is_empty()
        || kid.len() > 64
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AppError::NotFound);
    }
    let services = &state.services;
    let key = services
        .keys
        .revoke(&kid, &client, Some(admin.user_id()), &services.audit)
        .await?;
    Ok(Json(key.into()))
}
