//! `/users/me`: the current user, its sessions, password and account.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState,
    error::{AppError, AppResult, Problem},
    extract::{ApiJson, AuthUser, ClientInfo, PathId, parse_field},
};
use crate::{
    auth::{accounts::ProfileChange, sessions::SessionView},
    domain::{Email, Password, User, Username},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, update_me, delete_me))
        .routes(routes!(my_sessions))
        .routes(routes!(end_session))
        .routes(routes!(change_password))
}

/// A user as every endpoint shows it. Never carries a password hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    pub id: Uuid,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    #[schema(example = json!(["user"]))]
    pub roles: Vec<String>,
    pub is_active: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            email_verified: u.email_verified,
            roles: u.roles.names(),
            is_active: u.is_active,
            created_at: u.created_at,
        }
    }
}

/// The user the access token belongs to.
#[utoipa::path(
    get, path = "/users/me", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The current user", body = UserResponse),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
    )
)]
async fn me(AuthUser(caller): AuthUser) -> Response {
    let body = caller.user.rendered(|u| {
        serde_json::to_vec(&UserResponse::from(u.clone()))
            .expect("a user always serializes")
            .into()
    });
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One of the user's live sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// The last refresh; absent before the first.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    /// The session ends then at the latest.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The session of the token that asked.
    pub current: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionResponse>,
}

/// The current user's live sessions, newest first.
#[utoipa::path(
    get, path = "/users/me/sessions", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The live sessions", body = SessionList),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
    )
)]
async fn my_sessions(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
) -> AppResult<Json<SessionList>> {
    let sessions = state.services.sessions.list(&caller).await?;
    Ok(Json(session_list(sessions)))
}

pub(super) fn session_list(sessions: Vec<SessionView>) -> SessionList {
    SessionList {
        sessions: sessions
            .into_iter()
            .map(|s| SessionResponse {
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: s.expires_at,
                user_agent: s.user_agent,
                ip: s.ip,
                current: s.current,
            })
            .collect(),
    }
}

/// End one of the current user's sessions (the current one included); its
/// tokens stop working. Another user's session is 404, like a missing one.
#[utoipa::path(
    delete, path = "/users/me/sessions/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "Session id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "The session ended"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
        (status = 404, description = "No such live session of this user", body = Problem),
    )
)]
async fn end_session(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    state.services.sessions.end(&caller, &client, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// The same rules as at signup.
    pub new_password: String,
}

/// Change the current user's password. Every other session of the user ends;
/// this one goes on.
#[utoipa::path(
    post, path = "/users/me/password", tag = "users",
    request_body = ChangePasswordRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Password changed"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
        (status = 403, description = "The current password is wrong", body = Problem),
        (status = 422, description = "The new password is not acceptable", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem),
        (status = 503, description = "Too many password checks at once", body = Problem),
    )
)]
async fn change_password(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> AppResult<StatusCode> {
    let user = &caller.user.user;
    let username = user
        .username
        .as_deref()
        .and_then(|u| Username::parse(u).ok());
    let email = user.email.as_deref().and_then(|e| Email::parse(e).ok());
    let new = Password::parse(&req.new_password, username.as_ref(), email.as_ref())
        .map_err(|e| AppError::validation("new_password", e.to_string()))?;
    state
        .services
        .accounts
        .change_password(&caller, &client, &req.current_password, new)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteAccountRequest {
    pub current_password: String,
}

/// Delete the current user's account: the account, its sessions and tokens
/// are gone, and its username and email can be used again.
#[utoipa::path(
    delete, path = "/users/me", tag = "users",
    request_body = DeleteAccountRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Account deleted"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
        (status = 403, description = "The current password is wrong", body = Problem),
        (status = 409, description = "The last active admin cannot delete itself", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem),
        (status = 503, description = "Too many password checks at once", body = Problem),
    )
)]
async fn delete_me(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<DeleteAccountRequest>,
) -> AppResult<StatusCode> {
    state
        .services
        .accounts
        .delete_self(&caller, &client, &req.current_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateProfileRequest {
    /// A new username: applies at once.
    #[schema(example = "alice2")]
    pub username: Option<String>,
    /// A new email address: a confirmation link is mailed to it (and a
    /// notice to the current one); the address changes when the link is used.
    #[schema(example = "alice@example.org")]
    pub email: Option<String>,
    pub current_password: String,
}

/// Change the current user's username and/or email address. The username
/// changes at once (200). A new email address changes only once the link
/// mailed to it is used (`POST /auth/email/confirm`): the answer is then 202,
/// with the user as it is until then.
#[utoipa::path(
    patch, path = "/users/me", tag = "users",
    request_body = UpdateProfileRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "Changed", body = UserResponse),
        (status = 202, description = "A link to confirm the new email address was mailed to it", body = UserResponse),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
        (status = 403, description = "The current password is wrong", body = Problem),
        (status = 409, description = "The username is taken", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many attempts, or too many mails", body = Problem),
        (status = 503, description = "Too many password checks at once", body = Problem),
    )
)]
async fn update_me(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<UpdateProfileRequest>,
) -> AppResult<(StatusCode, Json<UserResponse>)> {
    let mut errors = Vec::new();
    let username = parse_field(
        &mut errors,
        "username",
        req.username.as_deref(),
        Username::parse,
    );
    let email = parse_field(&mut errors, "email", req.email.as_deref(), Email::parse);
    if !errors.is_empty() {
        return Err(AppError::Validation(errors));
    }
    let updated = state
        .services
        .accounts
        .update_profile(
            &caller,
            &client,
            ProfileChange { username, email },
            &req.current_password,
        )
        .await?;
    let status = if updated.email_change_requested {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(UserResponse::from(updated.user))))
}
