//! The one error type of the HTTP API and its JSON rendering.
//!
//! Every failure leaves the service as an RFC 9457 problem document
//! (`application/problem+json`) with a stable `code`, so clients can branch on
//! it without parsing prose. Internal errors are logged with their cause chain
//! and reach the client only as an opaque 500.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    auth::{AuthError, error::MfaChallenge, error::UNAVAILABLE_RETRY, tokens::TokenRejection},
    limits::Throttle,
};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("request validation failed")]
    Validation(Vec<FieldError>),
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("the request body stalled")]
    RequestTimeout,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid token: {0:?}")]
    InvalidToken(TokenRejection),
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("missing refresh token")]
    MissingRefreshToken,
    #[error("insufficient role")]
    Forbidden,
    #[error("a second factor is required")]
    MfaRequired(MfaChallenge),
    #[error("invalid mfa token")]
    InvalidMfaToken,
    #[error("neither an mfa token nor a bearer token")]
    MissingMfaToken,
    #[error("invalid code")]
    InvalidCode,
    #[error("insufficient user authentication")]
    InsufficientAuthentication,
    #[error("wrong current password")]
    WrongPassword,
    #[error("not found")]
    NotFound,
    #[error("invalid or expired link")]
    InvalidLink,
    #[error("email not verified")]
    EmailNotVerified,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {0} already taken")]
    Conflict(&'static str),
    #[error("the last active admin cannot be demoted or disabled")]
    LastAdmin,
    #[error("keys come from configuration")]
    KeysConfigured,
    #[error("too many keys on standby")]
    TooManyKeys,
    #[error("cross-site request refused: {0}")]
    CrossSite(&'static str),
    #[error("rate limited")]
    RateLimited(Throttle),
    #[error("overloaded")]
    Overloaded { retry_after: Duration },
    #[error("service unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<AuthError> for AppError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::InvalidCredentials | AuthError::InvalidClient => {
                AppError::InvalidCredentials
            }
            AuthError::InvalidRefreshToken => AppError::InvalidRefreshToken,
            AuthError::InvalidToken(why) => AppError::InvalidToken(why),
            AuthError::Throttled(throttle) => AppError::RateLimited(throttle),
            AuthError::Unavailable(e) => AppError::Unavailable(e),
            AuthError::Overloaded(retry_after) => AppError::Overloaded { retry_after },
            AuthError::Conflict(field) => AppError::Conflict(field),
            AuthError::LastAdmin => AppError::LastAdmin,
            AuthError::KeysConfigured => AppError::KeysConfigured,
            AuthError::TooManyKeys => AppError::TooManyKeys,
            AuthError::WrongPassword => AppError::WrongPassword,
            AuthError::ReservedUsername => AppError::validation("username", "is reserved"),
            AuthError::InvalidScope(why) => AppError::validation("scope", why),
            AuthError::UnauthorizedClient(why) | AuthError::InvalidGrant(why) => {
                AppError::BadRequest(why.into())
            }
            AuthError::NotFound => AppError::NotFound,
            AuthError::InvalidLink => AppError::InvalidLink,
            AuthError::EmailNotVerified => AppError::EmailNotVerified,
            AuthError::Invalid { field, message } => AppError::validation(field, message),
            AuthError::MfaRequired(challenge) => AppError::MfaRequired(challenge),
            AuthError::InvalidMfaToken => AppError::InvalidMfaToken,
            AuthError::InvalidCode => AppError::InvalidCode,
            AuthError::InsufficientAuthentication => AppError::InsufficientAuthentication,
            AuthError::Internal(e) => AppError::Internal(e),
        }
    }
}

/// The problem document sent to clients.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `title` and `code` carry the meaning.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// With `code: mfa_required` only: the token of the login's second step
    /// (`POST /auth/mfa/verify`), good for 5 minutes and 5 codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
    /// With `code: mfa_required` only: the kinds of factor the user has.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["totp"]))]
    pub factor_types: Option<Vec<&'static str>>,
}

impl AppError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        AppError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::BadRequest(_) | AppError::InvalidLink => StatusCode::BAD_REQUEST,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::InvalidCredentials
            | AppError::MissingToken
            | AppError::InvalidToken(_)
            | AppError::InvalidRefreshToken
            | AppError::MissingRefreshToken
            | AppError::InvalidMfaToken
            | AppError::MissingMfaToken
            | AppError::InvalidCode => StatusCode::UNAUTHORIZED,
            AppError::Forbidden
            | AppError::MfaRequired(_)
            | AppError::InsufficientAuthentication
            | AppError::WrongPassword
            | AppError::EmailNotVerified
            | AppError::CrossSite(_) => StatusCode::FORBIDDEN,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_)
            | AppError::LastAdmin
            | AppError::KeysConfigured
            | AppError::TooManyKeys => StatusCode::CONFLICT,
            AppError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Overloaded { .. } | AppError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code_and_detail(&self) -> (&'static str, String) {
        match self {
            AppError::Validation(_) => (
                "validation_failed",
                "One or more fields are invalid.".into(),
            ),
            AppError::BadRequest(why) => ("bad_request", why.clone()),
            AppError::UnsupportedMediaType(why) => ("unsupported_media_type", why.clone()),
            AppError::PayloadTooLarge => (
                "payload_too_large",
                "The request body exceeds the size limit.".into(),
            ),
            AppError::RequestTimeout => (
                "request_timeout",
                "The request body stopped arriving; send it again whole.".into(),
            ),
            // Why one message: unknown user, wrong password and disabled account must
            // be indistinguishable (ASVS V6.3.8), or the endpoint enumerates accounts.
            AppError::InvalidCredentials => (
                "invalid_credentials",
                "Invalid username or password.".into(),
            ),
            AppError::MissingToken => ("missing_token", "A bearer token is required.".into()),
            AppError::InvalidToken(_) => (
                "invalid_token",
                "The access token is invalid, expired or revoked.".into(),
            ),
            AppError::InvalidRefreshToken => (
                "invalid_refresh_token",
                "The refresh token is invalid, expired or revoked.".into(),
            ),
            AppError::MissingRefreshToken => (
                "missing_refresh_token",
                "A refresh token is required: refresh_token in the body, or the session cookie."
                    .into(),
            ),
            AppError::Forbidden => (
                "forbidden",
                "The token does not grant the role this resource requires.".into(),
            ),
            AppError::WrongPassword => (
                "wrong_password",
                "The current password is not right.".into(),
            ),
            AppError::MfaRequired(_) => (
                "mfa_required",
                "The password is right; a second factor is required: send a code with \
                 mfa_token to POST /auth/mfa/verify."
                    .into(),
            ),
            AppError::InvalidMfaToken => (
                "invalid_mfa_token",
                "The mfa_token is invalid, expired, used or out of attempts; log in again.".into(),
            ),
            AppError::MissingMfaToken => (
                "missing_mfa_token",
                "Send the mfa_token of the login, or a bearer token to step up its session.".into(),
            ),
            AppError::InvalidCode => (
                "invalid_code",
                "The code is not right, or was used already.".into(),
            ),
            AppError::InsufficientAuthentication => (
                "insufficient_user_authentication",
                "This needs a session of two factors: verify a second factor first \
                 (POST /auth/mfa/verify with the bearer token)."
                    .into(),
            ),
            AppError::NotFound => ("not_found", "No such resource.".into()),
            AppError::InvalidLink => (
                "invalid_link",
                "The link is invalid, expired or already used.".into(),
            ),
            AppError::EmailNotVerified => (
                "email_not_verified",
                "The account's email address is not verified yet.".into(),
            ),
            AppError::MethodNotAllowed => (
                "method_not_allowed",
                "This resource does not support that method.".into(),
            ),
            AppError::Conflict(field) => ("conflict", format!("That {field} is already taken.")),
            AppError::CrossSite(why) => (
                "cross_site_request",
                format!(
                    "Refused: {why}. Cookie sessions need an allowed Origin and the CSRF token \
                     in X-CSRF-Token."
                ),
            ),
            AppError::TooManyKeys => (
                "too_many_keys",
                format!(
                    "{} keys already wait to sign; revoke one or wait for them to activate.",
                    crate::auth::keys::MAX_STANDBY_KEYS
                ),
            ),
            AppError::KeysConfigured => (
                "keys_configured",
                "The signing key comes from AUTHGATE_JWT_SECRET; unset it to keep rotating \
                 keys in the database."
                    .into(),
            ),
            AppError::LastAdmin => (
                "last_admin",
                "This is the last active admin; make another user admin first.".into(),
            ),
            AppError::RateLimited(_) => (
                "rate_limited",
                "Too many requests; retry after the time in Retry-After.".into(),
            ),
            AppError::Overloaded { .. } => (
                "overloaded",
                "The server is busy; retry after the time in Retry-After.".into(),
            ),
            AppError::Unavailable(_) => (
                "unavailable",
                "A service authgate depends on cannot be reached; retry after the time in \
                 Retry-After."
                    .into(),
            ),
            AppError::Internal(_) => ("internal_error", "An internal error occurred.".into()),
        }
    }
}

/// Seconds for a `Retry-After` header, rounded up so clients never retry early.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl AppError {
    /// When to come back: `Retry-After` on every 429 and 503, and for a
    /// throttled request the policy that refused it, as the IETF draft
    /// `RateLimit-Policy` and `RateLimit` headers (httpapi-ratelimit-headers).
    pub fn insert_retry_headers(&self, headers: &mut HeaderMap) {
        let wait = match self {
            AppError::RateLimited(throttle) => throttle.wait,
            AppError::Overloaded { retry_after } => *retry_after,
            AppError::Unavailable(_) => UNAVAILABLE_RETRY,
            _ => return,
        };
        let seconds = retry_after_secs(wait);
        headers.insert(header::RETRY_AFTER, seconds.into());
        if let AppError::RateLimited(throttle) = self {
            let name = throttle.policy;
            metrics::counter!("authgate_throttled_total", "policy" => name).increment(1);
            let mut policy = format!("\"{name}\";q={}", throttle.limit);
            if let Some(window) = throttle.window {
                policy.push_str(&format!(";w={}", retry_after_secs(window)));
            }
            let state = format!("\"{name}\";r=0;t={seconds}");
            // Policy names are ASCII identifiers: these are always valid values.
            if let (Ok(policy), Ok(state)) = (
                HeaderValue::from_str(&policy),
                HeaderValue::from_str(&state),
            ) {
                headers.insert("ratelimit-policy", policy);
                headers.insert("ratelimit", state);
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            AppError::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            AppError::Unavailable(e) => tracing::warn!(error = format!("{e:#}"), "unavailable"),
            AppError::InvalidToken(why) => tracing::debug!(reason = ?why, "token refused"),
            _ => tracing::debug!(error = %self, "request failed"),
        }
        let (code, detail) = self.code_and_detail();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            // The rest of a stalled body may still arrive: nothing more is
            // read from this connection.
            AppError::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // RFC 6750 §3: no error code when the request simply lacked a token.
            AppError::MissingToken | AppError::InvalidCredentials => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            AppError::Forbidden => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="insufficient_scope""#),
                );
            }
            // RFC 9470 §3: the challenge names the level asked for.
            AppError::InsufficientAuthentication => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer error="insufficient_user_authentication", acr_values="aal2""#,
                    ),
                );
            }
            _ => self.insert_retry_headers(&mut headers),
        }
        let (mut errors, mut challenge) = (Vec::new(), None);
        match self {
            AppError::Validation(e) => errors = e,
            AppError::MfaRequired(c) => challenge = Some(c),
            _ => {}
        }
        let body = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            code,
            errors,
            mfa_token: challenge.as_ref().map(|c| c.mfa_token.clone()),
            factor_types: challenge.map(|c| c.factor_types),
        };
        (status, headers, Json(body)).into_response()
    }
}

pub type AppResult<T> = Result<T, AppError>;
