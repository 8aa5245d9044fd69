//! The endpoints mailed links lead to: email verification, password reset,
//! and the confirmation of a new email address; and the requests that mail
//! those links.

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    error::{AppError, AppResult, Problem},
    extract::{ApiJson, AuthUser, ClientInfo},
    users::UserResponse,
};
use crate::domain::Email;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_verification))
        .routes(routes!(verify_email))
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
        .routes(routes!(confirm_email))
}

/// The answer to a request whose outcome is mailed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    #[schema(example = "accepted")]
    pub status: &'static str,
    pub detail: &'static str,
}

/// A mailed link's token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LinkToken {
    /// The `token` query parameter of the link.
    pub token: String,
}

/// Mail the current user a link that verifies their email address. Nothing
/// is sent when it is verified already.
#[utoipa::path(
    post, path = "/auth/verify-email/request", tag = "auth",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 202, description = "A link is on its way", body = Accepted),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem),
        (status = 422, description = "The account has no email address", body = Problem),
        (status = 429, description = "Too many mails to this address or from this client", body = Problem),
    )
)]
async fn request_verification(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
) -> AppResult<(StatusCode, Json<Accepted>)> {
    state
        .services
        .flows
        .request_verification(&caller, &client)
        .await?;
    Ok(accepted(
        "If the address is not verified yet, a link is on its way to it.",
    ))
}

/// Use a verification link: the address it was sent to is now verified.
#[utoipa::path(
    post, path = "/auth/verify-email", tag = "auth",
    request_body = LinkToken,
    responses(
        (status = 200, description = "Verified", body = UserResponse),
        (status = 400, description = "Invalid, expired or used link (`invalid_link`)", body = Problem),
        (status = 429, description = "Too many links from this client", body = Problem),
    )
)]
async fn verify_email(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<LinkToken>,
) -> AppResult<Json<UserResponse>> {
    let user = state
        .services
        .flows
        .verify_email(&req.token, &client)
        .await?;
    Ok(Json(user.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ForgotPasswordRequest {
    #[schema(example = "alice@example.com")]
    pub email: String,
}

/// Ask for a password reset link. The answer is the same whether or not an
/// account has the address (and comes as fast): only its owner learns, by
/// mail.
#[utoipa::path(
    post, path = "/auth/password/forgot", tag = "auth",
    request_body = ForgotPasswordRequest,
    responses(
        (status = 202, description = "If an account has the address, a link is on its way", body = Accepted),
        (status = 422, description = "Not an email address", body = Problem),
        (status = 429, description = "Too many mails to this address or from this client", body = Problem),
        (status = 503, description = "Too many requests at once", body = Problem),
    )
)]
async fn forgot_password(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<ForgotPasswordRequest>,
) -> AppResult<(StatusCode, Json<Accepted>)> {
    let email = Email::parse(&req.email).map_err(|e| AppError::validation("email", e))?;
    state
        .services
        .flows
        .forgot_password(&email, &client)
        .await?;
    Ok(accepted(
        "If an account has this address, a link to reset its password is on its way.",
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetPasswordRequest {
    /// The `token` query parameter of the link.
    pub token: String,
    /// The same rules as at signup.
    pub new_password: String,
}

/// Use a reset link: sets the new password and ends every session of the user.
#[utoipa::path(
    post, path = "/auth/password/reset", tag = "auth",
    request_body = ResetPasswordRequest,
    responses(
        (status = 204, description = "Password set; every session ended"),
        (status = 400, description = "Invalid, expired or used link (`invalid_link`)", body = Problem),
        (status = 422, description = "The new password is not acceptable", body = Problem),
        (status = 429, description = "Too many links from this client", body = Problem),
        (status = 503, description = "Too many password hashes at once", body = Problem),
    )
)]
async fn reset_password(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<ResetPasswordRequest>,
) -> AppResult<StatusCode> {
    state
        .services
        .flows
        .reset_password(&req.token, &req.new_password, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Use the link mailed to a new email address: it becomes the account's,
/// verified.
#[utoipa::path(
    post, path = "/auth/email/confirm", tag = "auth",
    request_body = LinkToken,
    responses(
        (status = 200, description = "The address changed", body = UserResponse),
        (status = 400, description = "Invalid, expired or used link (`invalid_link`)", body = Problem),
        (status = 409, description = "Another account has taken the address meanwhile", body = Problem),
        (status = 429, description = "Too many links from this client", body = Problem),
    )
)]
async fn confirm_email(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<LinkToken>,
) -> AppResult<Json<UserResponse>> {
    let user = state
        .services
        .flows
        .confirm_email_change(&req.token, &client)
        .await?;
    Ok(Json(user.into()))
}

fn accepted(detail: &'static str) -> (StatusCode, Json<Accepted>) {
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "accepted",
            detail,
        }),
    )
}
