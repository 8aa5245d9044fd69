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
    extract::{ClientInfo, body_rejection, has_content_type},
    oauth::basic_credentials,
};
use crate::auth::{AuthError, Client};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(token))
}

/// The form of `POST /oauth/token` (RFC 6749 §4).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ClientTokenForm {
    /// `client_credentials`.
    pub grant_type: Option<String>,
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
    /// What was granted, space-separated.
    pub scope: String,
}

/// Who the client says it is, by HTTP Basic or in the form, never both
/// (RFC 6749 §2.3: one method per request).
enum ClientAuth {
    Secret { id: String, secret: String },
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
        (None, _, None) => Ok(ClientAuth::None),
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
        scope: issued.scope.to_string(),
    })
}

/// The token endpoint for registered clients (RFC 6749 §3.2):
/// `grant_type=client_credentials` for a confidential client acting for
/// itself. Clients authenticate with `client_secret_basic` or
/// `client_secret_post`.
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
async fn token(
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
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be client_credentials.",
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
