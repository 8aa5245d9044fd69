//! Second factors: TOTP enrolment and removal, recovery codes, the second
//! step of a login and step-up (`POST /auth/mfa/verify`), and an admin's
//! reset.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState,
    auth::{Transport, token_response, transport},
    error::{AppError, AppResult, Problem},
    extract::{
        Admin, ApiJson, AuthUser, ClientInfo, OptionalJson, PathId, RequireRole, bearer_token,
        factor_name,
    },
};
use webauthn_rs::prelude::PublicKeyCredential;

use super::passkeys::AuthenticationResponseJson;
use crate::auth::mfa::Proof;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_factors))
        .routes(routes!(enroll_totp))
        .routes(routes!(confirm_totp))
        .routes(routes!(remove_factor))
        .routes(routes!(regenerate_recovery_codes))
        .routes(routes!(verify))
        .routes(routes!(reset_user_factors))
}

/// A new TOTP factor's name (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EnrollRequest {
    /// Shown in the list of factors; default "Authenticator app". At most 64
    /// characters, no control or invisible characters.
    #[schema(example = "Phone", max_length = 64)]
    pub name: Option<String>,
}

/// What an authenticator app needs: shown once, until confirmed.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrolment {
    pub id: Uuid,
    /// The secret in base32, to type in.
    #[schema(example = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")]
    pub secret: String,
    /// The same as an `otpauth://totp/` URI, for a QR code.
    pub otpauth_uri: String,
}

/// A code from the authenticator app.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CodeRequest {
    #[schema(example = "123456", pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// Recovery codes: each works once in place of a code. Shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    #[schema(example = json!(["abcde-fghij"]))]
    pub recovery_codes: Vec<String>,
}

/// A second factor, never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct FactorResponse {
    pub id: Uuid,
    /// `totp`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FactorList {
    pub factors: Vec<FactorResponse>,
    pub recovery_codes_left: u32,
}

/// The current user's second factors (confirmed ones) and how many
/// recovery codes are left.
#[utoipa::path(
    get, path = "/users/me/mfa", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The factors", body = FactorList),
        (status = 401, description = "Missing or invalid token", body = Problem),
    )
)]
async fn list_factors(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
) -> AppResult<Json<FactorList>> {
    let listed = state.services.mfa.factors(caller.user_id).await?;
    Ok(Json(FactorList {
        factors: listed
            .factors
            .into_iter()
            .map(|f| FactorResponse {
                id: f.id,
                kind: f.kind,
                name: f.name,
                created_at: f.created_at,
                last_used_at: f.last_used_at,
            })
            .collect(),
        recovery_codes_left: listed.recovery_codes_left,
    }))
}

/// Start enrolling an authenticator app (TOTP: SHA-1, 6 digits, 30 s). The
/// factor counts once confirmed with a code from the app; a new enrolment
/// replaces one not confirmed yet. Once the user has a factor, adding
/// another needs a session of two factors (`aal2`).
#[utoipa::path(
    post, path = "/users/me/mfa/totp", tag = "users",
    request_body = Option<EnrollRequest>,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 201, description = "Not confirmed yet: add it to the app, then confirm. It replaces the user's earlier unconfirmed enrolment, if any", body = TotpEnrolment),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The user has a factor and the session one (`insufficient_user_authentication`)", body = Problem),
    )
)]
async fn enroll_totp(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    OptionalJson(body): OptionalJson<EnrollRequest>,
) -> AppResult<(StatusCode, Json<TotpEnrolment>)> {
    let request = body.unwrap_or_default();
    let name = factor_name(request.name.as_deref())?;
    let enrolment = state.services.mfa.enroll_totp(&caller, name).await?;
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrolment {
            id: enrolment.id,
            secret: enrolment.secret,
            otpauth_uri: enrolment.otpauth_uri,
        }),
    ))
}

/// Confirm an enrolment with the app's current code. The answer holds ten
/// recovery codes, shown once (they replace any earlier ones).
#[utoipa::path(
    post, path = "/users/me/mfa/totp/{id}/confirm", tag = "users",
    params(("id" = Uuid, Path, description = "The enrolment's id")),
    request_body = CodeRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "Confirmed", body = RecoveryCodes),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The user has a factor and the session one (`insufficient_user_authentication`)", body = Problem),
        (status = 404, description = "No such unconfirmed enrolment: it expired, or a newer enrolment replaced it", body = Problem),
        (status = 422, description = "Not the app's current code: still unconfirmed", body = Problem),
        (status = 429, description = "Too many wrong codes", body = Problem),
    )
)]
async fn confirm_totp(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
    ApiJson(req): ApiJson<CodeRequest>,
) -> AppResult<Json<RecoveryCodes>> {
    let recovery_codes = state
        .services
        .mfa
        .confirm_totp(&client, &caller, id, &req.code)
        .await?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

/// Remove a second factor. Needs a session of two factors (`aal2`).
#[utoipa::path(
    delete, path = "/users/me/mfa/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "The factor's id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Removed (the last one takes the recovery codes with it)"),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The session has one factor (`insufficient_user_authentication`)", body = Problem),
        (status = 404, description = "No such factor", body = Problem),
    )
)]
async fn remove_factor(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    state.services.mfa.remove(&client, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// New recovery codes in place of the old ones. Needs a session of two
/// factors (`aal2`).
#[utoipa::path(
    post, path = "/users/me/mfa/recovery-codes", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The new codes, shown once", body = RecoveryCodes),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The session has one factor (`insufficient_user_authentication`)", body = Problem),
        (status = 422, description = "The user has no second factor", body = Problem),
    )
)]
async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
) -> AppResult<Json<RecoveryCodes>> {
    let recovery_codes = state
        .services
        .mfa
        .regenerate_recovery_codes(&client, &caller)
        .await?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

/// A second factor: a code from the app, a recovery code, or a passkey's
/// answer with its `challenge_id` (exactly one); and either the
/// `mfa_token` of a login, or (step-up) a Bearer token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyRequest {
    /// From the login's 403 `mfa_required`; absent for a step-up.
    pub mfa_token: Option<String>,
    /// The app's current code.
    #[schema(example = "123456")]
    pub code: Option<String>,
    /// One of the recovery codes, in place of `code`.
    #[schema(example = "abcde-fghij")]
    pub recovery_code: Option<String>,
    /// From `POST /auth/mfa/passkey/start`, with `credential`.
    pub challenge_id: Option<Uuid>,
    /// A passkey's assertion (`AuthenticationResponseJSON`, as
    /// `credential.toJSON()` gives it), in place of `code`.
    #[schema(value_type = Option<AuthenticationResponseJson>)]
    pub credential: Option<Box<PublicKeyCredential>>,
}

/// What `POST /auth/mfa/verify` answers: the token pair of a login's second
/// step, or a step-up's access token.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only its schema is used: the handler answers each variant itself.
pub enum VerifyAnswer {
    Login(super::TokenResponse),
    StepUp(StepUpResponse),
}

/// After a step-up: a new access token of `aal2`; the session's refresh
/// token stays (its refreshes carry `aal2` from now on).
#[derive(Debug, Serialize, ToSchema)]
pub struct StepUpResponse {
    pub access_token: String,
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// The second factor: with `mfa_token`, the second step of a login (the
/// usual token pair, `aal: aal2`); with a Bearer token instead, step-up of
/// that session to `aal2`. Each code, and each passkey challenge, works
/// once; an `mfa_token` allows five tries.
#[utoipa::path(
    post, path = "/auth/mfa/verify", tag = "auth",
    params(("transport" = Option<String>, Query, pattern = "^(body|cookie)$",
        description = "For the login's second step, as at login: `cookie` puts the refresh token in an HttpOnly cookie (needs an allowed Origin)")),
    request_body = VerifyRequest,
    security((), ("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "Logged in (a token pair), or stepped up (an access token)", body = VerifyAnswer),
        (status = 403, description = "`transport=cookie` from an Origin not allowed (`cross_site_request`)", body = Problem),
        (status = 401, description = "Wrong or used code (`invalid_code`); unknown, expired or spent mfa_token (`invalid_mfa_token`); neither an mfa_token nor a bearer token (`missing_mfa_token`); an invalid bearer token", body = Problem),
        (status = 422, description = "Not exactly one of code, recovery_code and credential; a credential without its challenge_id", body = Problem),
        (status = 429, description = "Too many wrong codes for the account", body = Problem),
    )
)]
async fn verify(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> AppResult<Response> {
    let transport = transport(query.as_deref())?;
    let proof = match (req.code, req.recovery_code, req.credential) {
        (Some(code), None, None) => Proof::Code(code),
        (None, Some(code), None) => Proof::RecoveryCode(code),
        (None, None, Some(credential)) => Proof::Passkey {
            challenge_id: req.challenge_id.ok_or_else(|| {
                AppError::validation("challenge_id", "a passkey's answer needs its challenge_id")
            })?,
            credential,
        },
        _ => {
            return Err(AppError::validation(
                "code",
                "give one of code, recovery_code and credential",
            ));
        }
    };
    if let Some(mfa_token) = req.mfa_token {
        if transport == Transport::Cookie {
            // As at login: another site's page must not log the browser in.
            state.cookies.check_origin(&headers)?;
        }
        let pair = state
            .services
            .mfa
            .verify_login(&client, &mfa_token, &proof)
            .await?;
        return Ok(token_response(&state, pair, transport));
    }
    // No credential at all: 401, as a missing bearer token is.
    if headers.get(axum::http::header::AUTHORIZATION).is_none() {
        return Err(AppError::MissingMfaToken);
    }
    let caller = state
        .services
        .sessions
        .authenticate(bearer_token(&headers)?)
        .await?;
    let grant = state.services.mfa.step_up(&client, &caller, &proof).await?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(StepUpResponse {
            access_token: grant.access_token,
            token_type: "bearer",
            expires_in: grant.expires_in,
        }),
    )
        .into_response())
}

/// Remove every second factor and recovery code of a user (a lost phone),
/// and end the user's sessions. Recorded in the audit log.
#[utoipa::path(
    delete, path = "/admin/users/{id}/mfa", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Every factor removed"),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role; or the admin's own factors, from a session of one (`insufficient_user_authentication`)", body = Problem),
        (status = 404, description = "No such user", body = Problem),
    )
)]
async fn reset_user_factors(
    State(state): State<AppState>,
    admin: RequireRole<Admin>,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    state.services.mfa.reset(&client, &admin.0.0, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
