//! `/admin`: user management, for the `admin` role.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState,
    error::{AppError, AppResult, FieldError, Problem},
    extract::{Admin, ApiJson, RequireRole},
    users::UserResponse,
};
use crate::{auth::accounts::AccountChange, domain::Roles};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(update_user))
}

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1–200 (default 50).
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

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn parse_limit(raw: Option<&str>) -> Result<u32, FieldError> {
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
fn parse_cursor(raw: Option<&str>) -> Result<Option<Uuid>, FieldError> {
    let Some(raw) = raw else { return Ok(None) };
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| FieldError::new("cursor", "is not a cursor this API issued"))
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// List users, oldest first, a page at a time.
#[utoipa::path(
    get, path = "/admin/users", tag = "admin",
    params(ListParams),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 422, description = "Bad limit or cursor", body = Problem),
    )
)]
async fn list_users(
    State(state): State<AppState>,
    _admin: RequireRole<Admin>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> AppResult<Json<UserPage>> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.body_text()))?;
    // An empty value (`?limit=&cursor=`) means the parameter is absent.
    let limit = parse_limit(non_empty(&params.limit));
    let cursor = parse_cursor(non_empty(&params.cursor));
    let (limit, cursor) = match (limit, cursor) {
        (Ok(l), Ok(c)) => (l, c),
        (l, c) => {
            return Err(AppError::Validation(
                [l.err(), c.err()].into_iter().flatten().collect(),
            ));
        }
    };
    let page = state.services.accounts.list(limit, cursor).await?;
    Ok(Json(UserPage {
        users: page.users.into_iter().map(UserResponse::from).collect(),
        next_cursor: page.next_after.map(encode_cursor),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateUserRequest {
    /// `false` disables the account and ends its sessions.
    pub is_active: Option<bool>,
    /// Replaces the user's roles.
    #[schema(example = json!(["user", "admin"]))]
    pub roles: Option<Vec<String>>,
}

/// Enable or disable a user, or set its roles. A real change ends the user's
/// sessions, so no token outlives a disabled account or carries stale roles;
/// a change to nothing ends nothing. The last active admin cannot be demoted
/// or disabled (409, `code: last_admin`).
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
    _admin: RequireRole<Admin>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> AppResult<Json<UserResponse>> {
    let id = Uuid::parse_str(&id).map_err(|_| AppError::NotFound)?;
    let roles = req
        .roles
        .map(|names| Roles::parse(&names))
        .transpose()
        .map_err(|e| AppError::validation("roles", e))?;
    let change = AccountChange {
        is_active: req.is_active,
        roles,
    };
    let user = state.services.accounts.update(id, change).await?;
    Ok(Json(user.into()))
}
