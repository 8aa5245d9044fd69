//! `/users/me/grants`: what the current user allowed OAuth clients, and
//! taking it back.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::StatusCode,
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    error::{AppError, AppResult, Problem},
    extract::{AuthUser, ClientInfo},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_grants))
        .routes(routes!(revoke_grant))
}

/// What the user allowed one client.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    pub client_id: String,
    pub client_name: String,
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub granted_at: OffsetDateTime,
    /// The last time more was allowed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantList {
    /// Oldest first.
    pub grants: Vec<GrantView>,
}

/// What the current user allowed OAuth clients (first-party clients ask
/// nobody, and are not listed).
#[utoipa::path(
    get, path = "/users/me/grants", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The grants", body = GrantList),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
    )
)]
async fn my_grants(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
) -> AppResult<Json<GrantList>> {
    let grants = state.services.oauth.grants(caller.user_id).await?;
    Ok(Json(GrantList {
        grants: grants
            .into_iter()
            .map(|g| GrantView {
                scopes: g
                    .scope
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                client_id: g.client_id,
                client_name: g.client_name,
                granted_at: g.created_at,
                updated_at: g.updated_at,
            })
            .collect(),
    }))
}

/// Take back what the current user allowed a client: it must ask again,
/// and every session it holds for the user ends (its tokens stop working).
#[utoipa::path(
    delete, path = "/users/me/grants/{client_id}", tag = "users",
    params(("client_id" = String, Path, pattern = "^[A-Za-z0-9_-]{22}$")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Taken back"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
        (status = 404, description = "The user allowed that client nothing and it holds no session of theirs", body = Problem),
    )
)]
async fn revoke_grant(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<StatusCode> {
    let Ok(Path(id)) = id else {
        return Err(AppError::NotFound);
    };
    if id.len() > 64 {
        return Err(AppError::NotFound);
    }
    state
        .services
        .oauth
        .revoke_grant(&caller, &client, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
