//! `/auth`: signup, login, the OAuth2 token endpoint, refresh and logout.

use std::time::Instant;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    extract::{ApiJson, AuthUser, ClientIp, body_rejection, has_content_type},
    users::UserResponse,
};
use crate::{
    clock,
    crypto::{passwords::HashError, refresh},
    domain::{Email, Password, Role, Roles, User, Username},
    error::{AppError, AppResult, FieldError, Problem, retry_after_secs},
    state::AppState,
    store::{NewSession, NewUser, RevokeReason, Rotation},
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
    /// At least 8 characters, at most 1024 bytes, not a common password.
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
    )
)]
async fn signup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<SignupRequest>,
) -> AppResult<(StatusCode, Json<UserResponse>)> {
    state
        .limiter
        .take(
            &format!("signup:{ip}"),
            state.policy.signup_per_minute,
            Instant::now(),
        )
        .map_err(AppError::rate_limited)?;

    let mut errors = Vec::new();
    let username = parse_field(
        &mut errors,
        "username",
        req.username.as_deref(),
        Username::parse,
    );
    let email = parse_field(&mut errors, "email", req.email.as_deref(), Email::parse);
    if req.username.is_none() && req.email.is_none() {
        errors.push(FieldError::new("username", "username or email is required"));
    }
    let password = Password::parse(&req.password, username.as_ref(), email.as_ref())
        .map_err(|e| errors.push(FieldError::new("password", e.to_string())))
        .ok();
    let Some(password) = password.filter(|_| errors.is_empty()) else {
        return Err(AppError::Validation(errors));
    };

    let password_hash = state
        .hasher
        .hash(SecretString::from(password.expose()))
        .await
        .map_err(hash_error)?;
    let user = state
        .store
        .create_user(&NewUser {
            id: Uuid::now_v7(),
            username,
            email,
            password_hash,
            roles: Roles::new([Role::user()]),
            created_at: clock::now(),
        })
        .await?;
    tracing::info!(user_id = %user.id, "account created");
    Ok((StatusCode::CREATED, Json(UserResponse::from(user))))
}

fn parse_field<T>(
    errors: &mut Vec<FieldError>,
    field: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    match raw.map(parse)? {
        Ok(v) => Some(v),
        Err(message) => {
            errors.push(FieldError::new(field, message));
            None
        }
    }
}

pub fn hash_error(e: HashError) -> AppError {
    match e {
        HashError::Overloaded => AppError::Overloaded {
            retry_after: std::time::Duration::from_secs(1),
        },
        HashError::Failed(why) => AppError::Internal(anyhow::anyhow!(why)),
    }
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
    pub refresh_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// Token responses must not be stored by any cache (RFC 6749 §5.1).
fn no_store(body: TokenResponse) -> Response {
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        Json(body),
    )
        .into_response()
}

/// Log in with a username or email and a password.
#[utoipa::path(
    post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Invalid credentials", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many failed attempts", body = Problem),
        (status = 503, description = "Too many logins at once", body = Problem),
    )
)]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> AppResult<Response> {
    let Some(login) = req.username.or(req.email) else {
        return Err(AppError::validation(
            "username",
            "username or email is required",
        ));
    };
    let tokens = password_grant(&state, ip, &login, req.password).await?;
    Ok(no_store(tokens))
}

/// Checks a password login, with throttling, and opens a session.
async fn password_grant(
    state: &AppState,
    ip: std::net::IpAddr,
    login: &str,
    password: String,
) -> AppResult<TokenResponse> {
    if password.len() > Password::MAX_BYTES {
        // No account has such a password; refuse without hashing a huge input.
        return Err(AppError::InvalidCredentials);
    }
    let login = login.to_lowercase();
    let account_key = format!("login:{ip}:{login}");
    let ip_key = format!("login:{ip}");
    let now = Instant::now();
    for key in [&account_key, &ip_key] {
        state
            .limiter
            .check_backoff(key, now)
            .map_err(AppError::rate_limited)?;
    }

    let found = state.store.find_credentials(&login).await?;
    let (stored_hash, user) = match found {
        Some(c) => (Some(c.password_hash), Some(c.user)),
        None => (None, None),
    };
    // An unknown user is checked against a dummy hash: same work, same time.
    let check = state
        .hasher
        .verify(SecretString::from(password.clone()), stored_hash)
        .await
        .map_err(hash_error)?;
    let user = match user {
        Some(user) if check.matches && user.is_active => user,
        _ => {
            let now = Instant::now();
            state
                .limiter
                .record_failure(&account_key, state.policy.login_free_failures, now);
            state
                .limiter
                .record_failure(&ip_key, state.policy.login_ip_free_failures, now);
            tracing::info!(%ip, "failed login");
            return Err(AppError::InvalidCredentials);
        }
    };
    state.limiter.clear(&account_key);
    if check.needs_rehash {
        upgrade_hash(state, user.id, password).await;
    }
    open_session(state, &user).await
}

/// Re-hashes with the configured parameters after a successful login. A
/// failure here must not fail the login: the old hash still works.
async fn upgrade_hash(state: &AppState, user_id: Uuid, password: String) {
    let result = async {
        let hash = state.hasher.hash(SecretString::from(password)).await?;
        state
            .store
            .set_password_hash(user_id, &hash, clock::now())
            .await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(%user_id, "password hash upgraded to current parameters"),
        Err(e) => tracing::warn!(%user_id, error = %e, "password hash upgrade failed"),
    }
}

fn secs_until(t: OffsetDateTime, now: OffsetDateTime) -> u64 {
    u64::try_from((t - now).whole_seconds()).unwrap_or(0)
}

async fn open_session(state: &AppState, user: &User) -> AppResult<TokenResponse> {
    let now = clock::now();
    let policy = &state.policy;
    let session_end = now + policy.session_max_age;
    let refresh = refresh::generate();
    let refresh_expires_at = (now + policy.refresh_token_ttl).min(session_end);
    let session = NewSession {
        id: Uuid::now_v7(),
        user_id: user.id,
        created_at: now,
        expires_at: session_end,
        refresh_hash: refresh.hash,
        refresh_expires_at,
    };
    state.store.create_session(&session).await?;
    token_pair(
        state,
        user,
        session.id,
        refresh.token,
        refresh_expires_at,
        now,
    )
}

/// A new access token for the session, with the refresh token issued beside it.
fn token_pair(
    state: &AppState,
    user: &User,
    session_id: Uuid,
    refresh_token: String,
    refresh_expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> AppResult<TokenResponse> {
    let access = state
        .tokens
        .issue(user.id, session_id, user.roles.names(), now)?;
    Ok(TokenResponse {
        access_token: access.token,
        refresh_token,
        token_type: "bearer",
        expires_in: state.tokens.ttl().as_secs(),
        refresh_expires_in: secs_until(refresh_expires_at, now),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Exchange a refresh token for a new pair. The presented token is used up;
/// presenting it again ends the session.
#[utoipa::path(
    post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 401, description = "Invalid, expired, used or revoked refresh token", body = Problem),
        (status = 429, description = "Too many refreshes from this address", body = Problem),
    )
)]
async fn refresh_tokens(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> AppResult<Response> {
    refresh_grant(&state, ip, &req.refresh_token)
        .await
        .map(no_store)
}

async fn refresh_grant(
    state: &AppState,
    ip: std::net::IpAddr,
    presented: &str,
) -> AppResult<TokenResponse> {
    state
        .limiter
        .take(
            &format!("refresh:{ip}"),
            state.policy.refresh_per_minute,
            Instant::now(),
        )
        .map_err(AppError::rate_limited)?;
    if !refresh::looks_valid(presented) {
        return Err(AppError::InvalidRefreshToken);
    }
    let now = clock::now();
    let next = refresh::generate();
    let rotation = state
        .store
        .rotate_refresh_token(
            &refresh::hash(presented),
            &next.hash,
            now + state.policy.refresh_token_ttl,
            now,
        )
        .await?;
    match rotation {
        Rotation::Rotated {
            session_id,
            user,
            session_expires_at,
        } => token_pair(
            state,
            &user,
            session_id,
            next.token,
            (now + state.policy.refresh_token_ttl).min(session_expires_at),
            now,
        ),
        Rotation::Reused {
            session_id,
            user_id,
        } => {
            state.sessions.revoke(session_id, user_id, Instant::now());
            tracing::warn!(%session_id, %user_id, %ip, "refresh token reuse: session revoked");
            Err(AppError::InvalidRefreshToken)
        }
        Rotation::Invalid => Err(AppError::InvalidRefreshToken),
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
}

fn oauth_error(
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
        }),
    )
        .into_response()
}

/// Maps our errors onto RFC 6749 §5.2 codes, keeping throttling headers.
fn to_oauth(err: AppError) -> Response {
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
        AppError::RateLimited { retry_after } | AppError::Overloaded { retry_after } => {
            let status = if matches!(err, AppError::RateLimited { .. }) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut response = oauth_error(
                status,
                "temporarily_unavailable",
                "Retry after the time in Retry-After.",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(retry_after).into());
            response
        }
        other => other.into_response(),
    }
}

/// The OAuth2 token endpoint (RFC 6749): `grant_type=password` or
/// `grant_type=refresh_token`, form-encoded. Swagger UI's Authorize button uses it.
#[utoipa::path(
    post, path = "/auth/token", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 400, description = "RFC 6749 error", body = OAuthError),
        (status = 429, description = "Throttled", body = OAuthError),
    )
)]
async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let result = async {
        if !has_content_type(&headers, "application/x-www-form-urlencoded") {
            return Err(AppError::UnsupportedMediaType(
                "Expected Content-Type: application/x-www-form-urlencoded.".into(),
            ));
        }
        let body = body.map_err(body_rejection)?;
        let form: TokenForm = serde_urlencoded::from_bytes(&body)
            .map_err(|e| AppError::BadRequest(format!("Malformed form body: {e}")))?;
        match form.grant_type.as_deref() {
            Some("password") => {
                let (Some(username), Some(password)) = (form.username, form.password) else {
                    return Err(AppError::validation(
                        "username",
                        "username and password are required",
                    ));
                };
                password_grant(&state, ip, &username, password).await
            }
            Some("refresh_token") => {
                let Some(token) = form.refresh_token else {
                    return Err(AppError::validation(
                        "refresh_token",
                        "refresh_token is required",
                    ));
                };
                refresh_grant(&state, ip, &token).await
            }
            Some(_) => Err(AppError::BadRequest("unsupported_grant_type".into())),
            None => Err(AppError::validation("grant_type", "grant_type is required")),
        }
    }
    .await;
    match result {
        Ok(tokens) => no_store(tokens),
        Err(AppError::BadRequest(why)) if why == "unsupported_grant_type" => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Supported grant types: password, refresh_token.",
        ),
        Err(e) => to_oauth(e),
    }
}

/// End the session a refresh token belongs to. Answers 204 whether or not the
/// token was live, as RFC 7009 §2.2 does, so it reveals nothing.
#[utoipa::path(
    post, path = "/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 204, description = "Session ended (or no such session)"))
)]
async fn logout(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> AppResult<StatusCode> {
    if refresh::looks_valid(&req.refresh_token) {
        let hash = refresh::hash(&req.refresh_token);
        if let Some(session_id) = state
            .store
            .revoke_session_by_refresh(&hash, clock::now())
            .await?
        {
            state
                .sessions
                .revoke(session_id, Uuid::nil(), Instant::now());
            tracing::info!(%session_id, "logged out");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of the current user, on every device.
#[utoipa::path(
    post, path = "/auth/logout-all", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "All sessions ended"),
        (status = 401, description = "Missing or invalid token", body = Problem),
    )
)]
async fn logout_all(State(state): State<AppState>, user: AuthUser) -> AppResult<StatusCode> {
    let n = state
        .store
        .revoke_user_sessions(user.user_id, RevokeReason::LogoutAll, clock::now())
        .await?;
    state.sessions.revoke_user(user.user_id);
    state
        .sessions
        .revoke(user.session_id, user.user_id, Instant::now());
    tracing::info!(user_id = %user.user_id, sessions = n, "logged out everywhere");
    Ok(StatusCode::NO_CONTENT)
}
