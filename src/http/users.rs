//! `/users`: the current user.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{AppState, error::Problem, extract::AuthUser};
use crate::domain::User;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
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
