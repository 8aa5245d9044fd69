//! `/admin/clients`: the OAuth clients, for the `admin` role.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    error::{AppError, AppResult, FieldError, Problem},
    extract::{Admin, ApiJson, ClientInfo, RequireRole},
};
use crate::auth::clients::{ClientRequest, CreatedClient, OAuthClient};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clients, create_client))
        .routes(routes!(get_client, delete_client))
}

/// Whether `raw` has the form of a client id: 16 random bytes in unpadded
/// base64url (the API document's pattern `^[A-Za-z0-9_-]{22}$`).
fn is_client_id(raw: &str) -> bool {
    raw.len() == 22
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A client as admins see it; never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    #[schema(pattern = "^[A-Za-z0-9_-]{22}$")]
    pub client_id: String,
    pub name: String,
    /// Holds no secret: must use PKCE, and cannot use `client_credentials`.
    pub public: bool,
    /// Its users are not asked for consent.
    pub first_party: bool,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// What it may ask for.
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<OAuthClient> for ClientView {
    fn from(c: OAuthClient) -> Self {
        Self {
            public: c.is_public(),
            scopes: c
                .scopes
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            client_id: c.id,
            name: c.name,
            first_party: c.first_party,
            redirect_uris: c.redirect_uris,
            post_logout_redirect_uris: c.post_logout_redirect_uris,
            created_at: c.created_at,
        }
    }
}

/// A new client, with its secret shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedClientView {
    #[serde(flatten)]
    pub client: ClientView,
    /// For a confidential client only: shown once, stored only as a hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

impl From<CreatedClient> for CreatedClientView {
    fn from(c: CreatedClient) -> Self {
        Self {
            client: c.client.into(),
            client_secret: c.secret,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientList {
    /// Oldest first.
    pub clients: Vec<ClientView>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateClientRequest {
    /// Shown to users on the consent page; 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Where codes may be sent, compared exactly: `https`, `http` on a
    /// loopback host, or an app's private-use scheme (`com.example.app:/cb`).
    /// At most 10; a public client needs one.
    #[serde(default)]
    #[schema(max_items = 10)]
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the user back. At most 10.
    #[serde(default)]
    #[schema(max_items = 10)]
    pub post_logout_redirect_uris: Vec<String>,
    /// What it may ask for (default `openid profile email offline_access`).
    pub scopes: Option<Vec<String>>,
    /// A SPA or mobile app, which cannot keep a secret (default false).
    #[serde(default)]
    pub public: bool,
    /// Trusted: users are not asked for consent (default false).
    #[serde(default)]
    pub first_party: bool,
}

/// Every OAuth client.
#[utoipa::path(
    get, path = "/admin/clients", tag = "admin",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The clients", body = ClientList),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
    )
)]
async fn list_clients(
    State(state): State<AppState>,
    _admin: RequireRole<Admin>,
) -> AppResult<Json<ClientList>> {
    let clients = state.services.clients.list().await?;
    Ok(Json(ClientList {
        clients: clients.into_iter().map(ClientView::from).collect(),
    }))
}

/// Register an OAuth client. A confidential client's secret is in this
/// answer only.
#[utoipa::path(
    post, path = "/admin/clients", tag = "admin",
    request_body = CreateClientRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 201, description = "The client, with its secret if confidential", body = CreatedClientView),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role, or the admin has a second factor and this session did not use it (`code: insufficient_user_authentication`)", body = Problem),
        (status = 409, description = "The client id is taken (`code: conflict`)", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
async fn create_client(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<CreateClientRequest>,
) -> AppResult<(StatusCode, Json<CreatedClientView>)> {
    let new = ClientRequest {
        name: &req.name,
        redirect_uris: &req.redirect_uris,
        post_logout_redirect_uris: &req.post_logout_redirect_uris,
        scopes: req.scopes.as_deref(),
        public: req.public,
        first_party: req.first_party,
    }
    .parse()
    .map_err(|errors| {
        AppError::Validation(
            errors
                .into_iter()
                .map(|(field, message)| FieldError::new(field, message))
                .collect(),
        )
    })?;
    let created = state
        .services
        .clients
        .create(new, &client, Some(admin.user_id()))
        .await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// The client id of the path; anything else names no client.
fn client_id(raw: Result<Path<String>, PathRejection>) -> AppResult<String> {
    match raw {
        Ok(Path(id)) if is_client_id(&id) => Ok(id),
        _ => Err(AppError::NotFound),
    }
}

/// One OAuth client.
#[utoipa::path(
    get, path = "/admin/clients/{client_id}", tag = "admin",
    params(("client_id" = String, Path, pattern = "^[A-Za-z0-9_-]{22}$")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The client", body = ClientView),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 404, description = "No such client", body = Problem),
    )
)]
async fn get_client(
    State(state): State<AppState>,
    _admin: RequireRole<Admin>,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<Json<ClientView>> {
    let id = client_id(id)?;
    Ok(Json(state.services.clients.get(&id).await?.into()))
}

/// Delete an OAuth client: its secret stops working at once.
#[utoipa::path(
    delete, path = "/admin/clients/{client_id}", tag = "admin",
    params(("client_id" = String, Path, pattern = "^[A-Za-z0-9_-]{22}$")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role, or the admin has a second factor and this session did not use it (`code: insufficient_user_authentication`)", body = Problem),
        (status = 404, description = "No such client", body = Problem),
    )
)]
async fn delete_client(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<StatusCode> {
    let id = client_id(id)?;
    state
        .services
        .clients
        .delete(&id, &client, Some(admin.user_id()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
