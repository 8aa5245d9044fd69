//! `/auth`: signup, login, the OAuth2 token endpoint, refresh and logout.

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState, cookies,
    error::{AppError, AppResult, FieldError, Problem},
    extract::{ApiJson, AuthUser, ClientInfo, body_rejection, has_content_type, parse_field},
    users::UserResponse,
};
use crate::{
    auth::{AuthError, accounts::NewAccount, sessions::TokenPair},
    domain::{Email, Password, Username},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(token))
        .routes(routes!(refresh_tokens))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SignupRequest {
    /// 3–64 ASCII letters, digits, `.`, `_`, `-`. At least one of username and email.
    #[schema(example = "alice")]
    pub username: Option<String>,
    #[schema(example = "alice@example.com")]
    pub email: Option<String>,
    /// 8 to 1024 characters, not a common password, not the username or email.
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

/// Create an account.
#[utoipa::path(
    post, path = "/auth/signup", tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created", body = UserResponse),
        (status = 409, description = "Username or email taken", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many signups from this address", body = Problem),
        (status = 503, description = "Too many password hashes at once", body = Problem),
    )
)]
async fn signup(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<SignupRequest>,
) -> AppResult<(StatusCode, Json<UserResponse>)> {
    let mut errors = Vec::new();
    let account = parse_new_account(
        &mut errors,
        req.username.as_deref(),
        req.email.as_deref(),
        &req.password,
    );
    let Some(account) = account.filter(|_| errors.is_empty()) else {
        return Err(AppError::Validation(errors));
    };
    let user = state.services.accounts.signup(&client, account).await?;
    Ok((StatusCode::CREATED, Json(UserResponse::from(user))))
}

/// The fields of a new account, each checked, every error noted in `errors`:
/// at least one of username and email, and a password that passes the policy.
pub(super) fn parse_new_account(
    errors: &mut Vec<FieldError>,
    username: Option<&str>,
    email: Option<&str>,
    password: &str,
) -> Option<NewAccount> {
    let parsed_username = parse_field(errors, "username", username, Username::parse);
    let parsed_email = parse_field(errors, "email", email, Email::parse);
    if username.is_none() && email.is_none() {
        errors.push(FieldError::new("username", "username or email is required"));
    }
    let password = Password::parse(password, parsed_username.as_ref(), parsed_email.as_ref())
        .map_err(|e| errors.push(FieldError::new("password", e.to_string())))
        .ok()?;
    Some(NewAccount {
        username: parsed_username,
        email: parsed_email,
        password,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// The username or the email address.
    #[schema(example = "alice")]
    pub username: Option<String>,
    /// Accepted in place of `username`.
    pub email: Option<String>,
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

/// A new access token and refresh token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Absent with `transport=cookie`: the refresh token is then in an
    /// `HttpOnly` cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// With `transport=cookie` only: echo it in `X-CSRF-Token` when
    /// refreshing or logging out with the cookie (also in the readable
    /// `authgate_csrf` cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: Some(pair.refresh_token),
            csrf_token: None,
            token_type: "bearer",
            expires_in: pair.expires_in,
            refresh_expires_in: pair.refresh_expires_in,
        }
    }
}

/// Where the refresh token goes: in the body (default) or in a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Body,
    Cookie,
}

/// `?transport=body|cookie`.
pub(super) fn transport(query: Option<&str>) -> Result<Transport, AppError> {
    #[derive(Deserialize)]
    struct Params {
        transport: Option<String>,
    }
    let params: Params = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| AppError::BadRequest(format!("Malformed query: {e}")))?;
    match params.transport.as_deref() {
        None | Some("body") => Ok(Transport::Body),
        Some("cookie") => Ok(Transport::Cookie),
        Some(_) => Err(AppError::validation("transport", "must be body or cookie")),
    }
}

/// Token responses must not be stored by any cache (RFC 6749 §5.1). With
/// the cookie transport the refresh token travels only in its cookie.
pub(super) fn token_response(state: &AppState, pair: TokenPair, transport: Transport) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    let body = match transport {
        Transport::Body => TokenResponse::from(pair),
        Transport::Cookie => {
            state.cookies.set(&mut headers, &pair);
            let csrf = cookies::csrf_token(&pair.refresh_token);
            TokenResponse {
                refresh_token: None,
                csrf_token: Some(csrf),
                ..TokenResponse::from(pair)
            }
        }
    };
    (headers, Json(body)).into_response()
}

/// Log in with a username or email and a password.
#[utoipa::path(
    post, path = "/auth/login", tag = "auth",
    params(("transport" = Option<String>, Query, pattern = "^(body|cookie)$",
        description = "`cookie`: the refresh token goes in an HttpOnly cookie, not the body (needs an allowed Origin)")),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Invalid credentials", body = Problem),
        (status = 403, description = "Right password, but the user has a second factor (`mfa_required`, with `mfa_token` and `factor_types`: continue at `POST /auth/mfa/verify`); or the email is not verified and the service requires it (`email_not_verified`); or `transport=cookie` from an Origin not allowed (`cross_site_request`)", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many failed attempts", body = Problem),
        (status = 503, description = "Too many logins at once", body = Problem),
    )
)]
async fn login(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> AppResult<Response> {
    let transport = transport(query.as_deref())?;
    if transport == Transport::Cookie {
        // A page of another site must not log the browser in (login CSRF).
        state.cookies.check_origin(&headers)?;
    }
    let Some(login) = req.username.or(req.email) else {
        return Err(AppError::validation(
            "username",
            "username or email is required",
        ));
    };
    let pair = state
        .services
        .login
        .with_password(&client, &login, &req.password)
        .await?;
    Ok(token_response(&state, pair, transport))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// Absent for a cookie session: the `authgate_refresh` cookie is used,
    /// with an allowed `Origin` and the CSRF token in `X-CSRF-Token`.
    pub refresh_token: Option<String>,
}

/// The refresh token of a request: the body's, or else the session cookie's
/// (checked against cross-site use), and how to answer; none if neither.
fn presented_refresh_token(
    state: &AppState,
    headers: &HeaderMap,
    in_body: Option<String>,
) -> AppResult<Option<(String, Transport)>> {
    if let Some(token) = in_body {
        return Ok(Some((token, Transport::Body)));
    }
    Ok(state
        .cookies
        .refresh_token(headers)?
        .map(|token| (token, Transport::Cookie)))
}

/// Exchange a refresh token for a new pair. The presented token is used up;
/// presenting it again ends the session, but within the reuse grace window
/// (several tabs at once) it gives the same new pair. Without
/// `refresh_token` in the body, the session cookie is used and renewed.
#[utoipa::path(
    post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 401, description = "Invalid, expired, used or revoked refresh token (`invalid_refresh_token`); or none, neither in the body nor in a cookie (`missing_refresh_token`)", body = Problem),
        (status = 403, description = "A cookie session without an allowed Origin or the CSRF token (`cross_site_request`)", body = Problem),
        (status = 429, description = "Too many refreshes from this address", body = Problem),
    )
)]
async fn refresh_tokens(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Response {
    // Neither in the body nor in a cookie: no credential, so 401 (as a
    // missing bearer token is), not a malformed request.
    let (token, transport) = match presented_refresh_token(&state, &headers, req.refresh_token)
        .and_then(|presented| presented.ok_or(AppError::MissingRefreshToken))
    {
        Ok(presented) => presented,
        Err(e) => return e.into_response(),
    };
    match state.services.sessions.refresh(&client, &token).await {
        Ok(pair) => token_response(&state, pair, transport),
        Err(e) => {
            let refused = matches!(e, AuthError::InvalidRefreshToken);
            let mut response = AppError::from(e).into_response();
            if refused && transport == Transport::Cookie {
                // A dead session's cookies are of no use to the browser.
                state.cookies.clear(response.headers_mut());
            }
            response
        }
    }
}

/// The form fields of the token endpoint (RFC 6749 §4.3 and §6). Other
/// fields (`scope`, `client_id`) are ignored: authgate's clients are public.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenForm {
    /// `password` or `refresh_token`.
    pub grant_type: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub refresh_token: Option<String>,
}

/// An error of the token endpoint, in RFC 6749 §5.2 form.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthError {
    pub error: &'static str,
    pub error_description: String,
    /// With `error: mfa_required` only: the token of the login's second step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
}

pub(super) fn oauth_error(
    status: StatusCode,
    error: &'static str,
    description: impl Into<String>,
) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(OAuthError {
            error,
            error_description: description.into(),
            mfa_token: None,
        }),
    )
        .into_response()
}

/// Why a token request was refused, before it is rendered as RFC 6749 §5.2
/// requires.
enum TokenRefusal {
    UnsupportedGrantType,
    Refused(AppError),
}

impl From<AppError> for TokenRefusal {
    fn from(err: AppError) -> Self {
        TokenRefusal::Refused(err)
    }
}

impl From<AuthError> for TokenRefusal {
    fn from(err: AuthError) -> Self {
        TokenRefusal::Refused(err.into())
    }
}

impl IntoResponse for TokenRefusal {
    fn into_response(self) -> Response {
        match self {
            TokenRefusal::UnsupportedGrantType => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Supported grant types: password, refresh_token.",
            ),
            TokenRefusal::Refused(err) => to_oauth(err),
        }
    }
}

/// A token request, parsed.
enum Grant {
    Password {
        username: String,
        password: String,
    },
    /// Without the form field, the session cookie's.
    RefreshToken {
        refresh_token: Option<String>,
    },
}

fn parse_grant(
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Grant, TokenRefusal> {
    if !has_content_type(headers, "application/x-www-form-urlencoded") {
        return Err(AppError::UnsupportedMediaType(
            "Expected Content-Type: application/x-www-form-urlencoded.".into(),
        )
        .into());
    }
    let body = body.map_err(body_rejection)?;
    let form: TokenForm = serde_urlencoded::from_bytes(&body)
        .map_err(|e| AppError::BadRequest(format!("Malformed form body: {e}")))?;
    match form.grant_type.as_deref() {
        Some("password") => match (form.username, form.password) {
            (Some(username), Some(password)) => Ok(Grant::Password { username, password }),
            _ => Err(AppError::validation("username", "username and password are required").into()),
        },
        Some("refresh_token") => Ok(Grant::RefreshToken {
            refresh_token: form.refresh_token,
        }),
        Some(_) => Err(TokenRefusal::UnsupportedGrantType),
        None => Err(AppError::validation("grant_type", "grant_type is required").into()),
    }
}

/// Maps our errors onto RFC 6749 §5.2 codes, keeping throttling headers.
pub(super) fn to_oauth(err: AppError) -> Response {
    match err {
        AppError::InvalidCredentials => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid username or password.",
        ),
        AppError::InvalidRefreshToken => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token is invalid, expired or revoked.",
        ),
        AppError::Validation(errors) => {
            let fields: Vec<_> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                fields.join("; "),
            )
        }
        AppError::BadRequest(why) | AppError::UnsupportedMediaType(why) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", why)
        }
        AppError::CrossSite(why) => oauth_error(
            StatusCode::FORBIDDEN,
            "invalid_request",
            format!("Refused: {why}; cookie sessions need an allowed Origin and X-CSRF-Token."),
        ),
        AppError::EmailNotVerified => oauth_error(
            StatusCode::FORBIDDEN,
            "email_not_verified",
            "The account's email address is not verified yet.",
        ),
        AppError::MfaRequired(challenge) => (
            StatusCode::FORBIDDEN,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Json(OAuthError {
                error: "mfa_required",
                error_description: "The password is right; a second factor is required: send a \
                                    code with mfa_token to POST /auth/mfa/verify."
                    .into(),
                mfa_token: Some(challenge.mfa_token),
            }),
        )
            .into_response(),
        AppError::RateLimited(_) | AppError::Overloaded { .. } | AppError::Unavailable(_) => {
            let mut response = oauth_error(
                err.status(),
                "temporarily_unavailable",
                "Retry after the time in Retry-After.",
            );
            err.insert_retry_headers(response.headers_mut());
            response
        }
        other => other.into_response(),
    }
}

/// The OAuth2 token endpoint (RFC 6749): `grant_type=password` or
/// `grant_type=refresh_token`, form-encoded. Swagger UI's Authorize button uses it.
#[utoipa::path(
    post, path = "/auth/token", tag = "auth",
    params(("transport" = Option<String>, Query, pattern = "^(body|cookie)$",
        description = "`cookie`: the refresh token goes in an HttpOnly cookie, not the body (needs an allowed Origin)")),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 400, description = "RFC 6749 error", body = OAuthError),
        (status = 403, description = "Right password, but the user has a second factor (`error: mfa_required`, with `mfa_token`: continue at `POST /auth/mfa/verify`); or the email is not verified and the service requires it (`error: email_not_verified`); or a cookie request without an allowed Origin or the CSRF token", body = OAuthError),
        (status = 429, description = "Throttled", body = OAuthError),
        (status = 503, description = "Too many logins at once; retry after Retry-After", body = OAuthError),
    )
)]
async fn token(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let result: Result<(TokenPair, Transport), TokenRefusal> = async {
        let asked = transport(query.as_deref())?;
        match parse_grant(&headers, body)? {
            Grant::Password { username, password } => {
                if asked == Transport::Cookie {
                    state.cookies.check_origin(&headers)?;
                }
                let pair = state
                    .services
                    .login
                    .with_password(&client, &username, &password)
                    .await?;
                Ok((pair, asked))
            }
            Grant::RefreshToken { refresh_token } => {
                let (token, transport) = presented_refresh_token(&state, &headers, refresh_token)?
                    .ok_or_else(|| {
                        AppError::validation(
                            "refresh_token",
                            "refresh_token is required (or the session cookie)",
                        )
                    })?;
                let pair = state.services.sessions.refresh(&client, &token).await?;
                Ok((pair, transport))
            }
        }
    }
    .await;
    match result {
        Ok((pair, transport)) => token_response(&state, pair, transport),
        Err(refusal) => refusal.into_response(),
    }
}

/// End the session a refresh token belongs to. Answers 204 whether or not the
/// token was live, as RFC 7009 §2.2 does, so it reveals nothing. Without
/// `refresh_token` in the body, the session cookie's session ends and the
/// cookies are deleted; with neither, there is nothing to end (204).
#[utoipa::path(
    post, path = "/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "Session ended (or no such session)"),
        (status = 403, description = "A cookie session without an allowed Origin or the CSRF token (`cross_site_request`)", body = Problem),
        (status = 429, description = "Too many logouts from this address", body = Problem),
    )
)]
async fn logout(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> AppResult<Response> {
    let presented = presented_refresh_token(&state, &headers, req.refresh_token)?;
    // No token at all ends nothing, and is no error either: a browser whose
    // cookie is gone is logged out already.
    if let Some((token, _)) = &presented {
        state.services.sessions.logout(&client, token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if !matches!(presented, Some((_, Transport::Body))) {
        state.cookies.clear(response.headers_mut());
    }
    Ok(response)
}

/// End every session of the current user, on every device.
#[utoipa::path(
    post, path = "/auth/logout-all", tag = "auth",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "All sessions ended"),
        (status = 401, description = "Missing or invalid token", body = Problem),
    )
)]
async fn logout_all(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientInfo(client): ClientInfo,
) -> AppResult<StatusCode> {
    state.services.sessions.logout_all(&user, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}
