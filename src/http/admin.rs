//! `/admin`: user management, for the `admin` role.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState,
    auth::parse_new_account,
    error::{AppError, AppResult, FieldError, Problem},
    extract::{Admin, ApiJson, ClientInfo, PathId, RequireRole, parse_field},
    users::{SessionList, UserResponse, session_list},
};
use crate::{
    auth::accounts::{AccountChange, UserQuery},
    domain::{Email, Role, Roles, Username},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(user_sessions, end_user_sessions))
}

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;
/// The cursors [`encode_cursor`] makes: 16 bytes in unpadded base64url,
/// whose last character carries 2 bits and 4 zero bits. Any string of this
/// form is a cursor (a page after that id).
pub(super) const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{21}[AQgw]$";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The start of the username or email, in any case.
    pub q: Option<String>,
    /// Only users holding this role.
    pub role: Option<String>,
    /// `true` or `false`: only enabled, or only disabled, users.
    #[param(value_type = Option<bool>)]
    pub is_active: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<UserResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// An optional text filter: empty is no filter. (A typed parameter, such as
/// a number or a time, must be one when given.)
pub(super) fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

pub(super) fn parse_limit(raw: Option<&str>) -> Result<u32, FieldError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(FieldError::new(
            "limit",
            format!("must be an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// Cursors are opaque to clients: the last id of a page, base64url-encoded.
pub(super) fn parse_cursor(raw: Option<&str>) -> Result<Option<Uuid>, FieldError> {
    let Some(raw) = raw else { return Ok(None) };
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| FieldError::new("cursor", "is not a cursor this API issued"))
}

pub(super) fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The value, or `None` with the error noted.
pub(super) fn field<T>(errors: &mut Vec<FieldError>, result: Result<T, FieldError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// The query of a listing, each field checked, every error named.
fn parse_query(params: &ListParams) -> Result<(UserQuery, u32, Option<Uuid>), AppError> {
    let mut errors = Vec::new();
    let prefix = field(
        &mut errors,
        match non_empty(&params.q) {
            Some(q) if q.chars().count() > Email::MAX_LEN => Err(FieldError::new(
                "q",
                format!("must be at most {} characters", Email::MAX_LEN),
            )),
            Some(q) if q.chars().any(char::is_control) => {
                Err(FieldError::new("q", "must not contain control characters"))
            }
            q => Ok(q.map(str::to_owned)),
        },
    );
    let role = field(
        &mut errors,
        non_empty(&params.role)
            .map(Role::parse)
            .transpose()
            .map_err(|e| FieldError::new("role", e)),
    );
    let is_active = field(
        &mut errors,
        match params.is_active.as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(FieldError::new("is_active", "must be true or false")),
        },
    );
    let limit = field(&mut errors, parse_limit(params.limit.as_deref()));
    let cursor = field(&mut errors, parse_cursor(non_empty(&params.cursor)));
    match (prefix, role, is_active, limit, cursor) {
        (Some(prefix), Some(role), Some(is_active), Some(limit), Some(cursor)) => Ok((
            UserQuery {
                prefix,
                role,
                is_active,
            },
            limit,
            cursor,
        )),
        _ => Err(AppError::Validation(errors)),
    }
}

/// List users, oldest first, a page at a time; optionally only those whose
/// username or email starts with `q`, who hold `role`, or who are (not) active.
#[utoipa::path(
    get, path = "/admin/users", tag = "admin",
    params(ListParams),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "A malformed query string", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 422, description = "Bad filter, limit or cursor", body = Problem),
    )
)]
async fn list_users(
    State(state): State<AppState>,
    _admin: RequireRole<Admin>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> AppResult<Json<UserPage>> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let (query, limit, cursor) = parse_query(&params)?;
    let page = state.services.accounts.list(query, limit, cursor).await?;
    Ok(Json(UserPage {
        users: page.users.into_iter().map(UserResponse::from).collect(),
        next_cursor: page.next_after.map(encode_cursor),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    /// At least one of username and email. Reserved names are allowed here.
    pub username: Option<String>,
    pub email: Option<String>,
    /// The same rules as at signup. Without one, the account gets a
    /// password nobody knows and its email a link to choose one.
    pub password: Option<String>,
    /// Default `["user"]`.
    #[schema(example = json!(["user"]))]
    pub roles: Option<Vec<String>>,
}

/// Create an account, with a password, or without one by mailing the user
/// a link to choose it (valid as long as a verification link).
#[utoipa::path(
    post, path = "/admin/users", tag = "admin",
    request_body = CreateUserRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 201, description = "The account", body = UserResponse),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 409, description = "Username or email taken", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 503, description = "Too many password hashes at once", body = Problem),
    )
)]
async fn create_user(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> AppResult<(StatusCode, Json<UserResponse>)> {
    let mut errors = Vec::new();
    let account = match &req.password {
        Some(password) => parse_new_account(
            &mut errors,
            req.username.as_deref(),
            req.email.as_deref(),
            password,
        )
        .map(|a| (a.username, a.email, Some(a.password))),
        None => {
            let username = parse_field(
                &mut errors,
                "username",
                req.username.as_deref(),
                Username::parse,
            );
            let email = parse_field(&mut errors, "email", req.email.as_deref(), Email::parse);
            if req.email.is_none() {
                errors.push(FieldError::new(
                    "email",
                    "is required without a password: the link to choose one is mailed to it",
                ));
            }
            Some((username, email, None))
        }
    };
    let roles = match &req.roles {
        None => Some(Roles::new([Role::user()])),
        Some(names) => Roles::parse(names)
            .map_err(|e| errors.push(FieldError::new("roles", e)))
            .ok(),
    };
    let (Some((username, email, password)), Some(roles), true) =
        (account, roles, errors.is_empty())
    else {
        return Err(AppError::Validation(errors));
    };
    let user = state
        .services
        .accounts
        .create(username, email, password, roles, &client, admin.user_id())
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// One user.
#[utoipa::path(
    get, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 404, description = "No such user", body = Problem),
    )
)]
async fn get_user(
    State(state): State<AppState>,
    _admin: RequireRole<Admin>,
    PathId(id): PathId,
) -> AppResult<Json<UserResponse>> {
    let user = state.services.accounts.get(id).await?;
    Ok(Json(user.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateUserRequest {
    /// `false` disables the account and ends its sessions.
    pub is_active: Option<bool>,
    /// Replaces the user's roles (at most 32).
    #[schema(example = json!(["user", "admin"]))]
    pub roles: Option<Vec<String>>,
    /// Marks the email address verified, or not.
    pub email_verified: Option<bool>,
}

/// Enable or disable a user, set its roles or whether its email is verified.
/// A change of roles or of `is_active` ends the user's sessions, so no token
/// outlives a disabled account or carries stale roles; a change to nothing
/// ends nothing. The last active admin cannot be demoted or disabled (409,
/// `code: last_admin`).
#[utoipa::path(
    patch, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The updated user", body = UserResponse),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 404, description = "No such user", body = Problem),
        (status = 409, description = "The last active admin would be demoted or disabled", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
async fn update_user(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> AppResult<Json<UserResponse>> {
    let roles = req
        .roles
        .map(|names| Roles::parse(&names))
        .transpose()
        .map_err(|e| AppError::validation("roles", e))?;
    let change = AccountChange {
        is_active: req.is_active,
        roles,
        email_verified: req.email_verified,
    };
    let user = state
        .services
        .accounts
        .update(id, change, &client, admin.user_id())
        .await?;
    Ok(Json(user.into()))
}

/// Delete a user, with its sessions and tokens; its names can be used again.
/// The last active admin cannot be deleted (409, `code: last_admin`).
#[utoipa::path(
    delete, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 404, description = "No such user", body = Problem),
        (status = 409, description = "The last active admin", body = Problem),
    )
)]
async fn delete_user(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    state
        .services
        .accounts
        .delete(id, &client, admin.user_id())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's live sessions, newest first.
#[utoipa::path(
    get, path = "/admin/users/{id}/sessions", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The live sessions", body = SessionList),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 404, description = "No such user", body = Problem),
    )
)]
async fn user_sessions(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    PathId(id): PathId,
) -> AppResult<Json<SessionList>> {
    state.services.accounts.get(id).await?;
    let sessions = state
        .services
        .sessions
        .list_of(id, Some(admin.0.0.session_id))
        .await?;
    Ok(Json(session_list(sessions)))
}

/// End every session of a user; its tokens stop working.
#[utoipa::path(
    delete, path = "/admin/users/{id}/sessions", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Every session ended"),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 404, description = "No such user", body = Problem),
    )
)]
async fn end_user_sessions(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    state.services.accounts.get(id).await?;
    state
        .services
        .sessions
        .end_all_of(id, &client, admin.user_id())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_issued_cursor_reads_back_as_its_id(bytes in any::<[u8; 16]>()) {
            let id = Uuid::from_bytes(bytes);
            prop_assert_eq!(parse_cursor(Some(&encode_cursor(id))).unwrap(), Some(id));
        }

        #[test]
        fn any_other_text_is_refused_as_a_field_error_never_a_panic(raw in "\\PC{0,64}") {
            match parse_cursor(Some(&raw)) {
                Ok(Some(id)) => prop_assert_eq!(encode_cursor(id), raw),
                Ok(None) => prop_assert!(false, "a given cursor read as none"),
                Err(e) => prop_assert_eq!(e.field, "cursor"),
            }
        }

        #[test]
        fn the_documented_pattern_states_which_cursors_are_read(
            raw in prop_oneof!["[A-Za-z0-9_-]{20,23}", "[A-Za-z0-9_+/=-]{22}", "\\PC{0,30}"],
        ) {
            let pattern = regex::Regex::new(CURSOR_PATTERN).unwrap();
            prop_assert_eq!(pattern.is_match(&raw), parse_cursor(Some(&raw)).is_ok(), "{:?}", raw);
        }
    }
}
