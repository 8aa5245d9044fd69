//! Passkeys (WebAuthn): registering one, listing and removing them, logging
//! in with one, and starting one as the second factor of a login or a
//! step-up (its answer goes to `POST /auth/mfa/verify`).
//!
//! Each ceremony is a `start` that answers `{challenge_id, publicKey}`
//! (`publicKey` for `navigator.credentials.create` or `.get`, in WebAuthn's
//! JSON form, binary fields base64url) and a `finish` that takes the
//! browser's `credential.toJSON()`.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{ToSchema, openapi::Object};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::{
    AppState,
    auth::{Transport, token_response, transport},
    error::{AppError, AppResult, Problem},
    extract::{ApiJson, AuthUser, ClientInfo, OptionalJson, PathId, bearer_token, factor_name},
};
use crate::auth::{
    mfa::PasskeyStep,
    passkeys::{PasskeyView, Started},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_registration))
        .routes(routes!(finish_registration))
        .routes(routes!(list_passkeys))
        .routes(routes!(remove_passkey))
        .routes(routes!(start_login))
        .routes(routes!(finish_login))
        .routes(routes!(start_second_factor))
}

/// A ceremony begun: pass `publicKey` to the browser, and `challenge_id`
/// with its answer to the finish (within five minutes, once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CeremonyStarted {
    pub challenge_id: Uuid,
    /// `PublicKeyCredentialCreationOptions` or
    /// `PublicKeyCredentialRequestOptions`, WebAuthn's JSON form (binary
    /// fields base64url): what `PublicKeyCredential.parseCreationOptionsFromJSON`
    /// or `parseRequestOptionsFromJSON` read.
    #[serde(rename = "publicKey")]
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
}

impl From<Started> for CeremonyStarted {
    fn from(started: Started) -> Self {
        Self {
            challenge_id: started.challenge_id,
            public_key: started.options,
        }
    }
}

// The two answers' shapes, for the API document only: the WebAuthn
// library's own types read them. The document's completion adds the
// base64url patterns.

/// WebAuthn's `RegistrationResponseJSON` (binary fields base64url).
#[derive(Deserialize, ToSchema)]
#[schema(as = RegistrationResponseJSON)]
#[allow(dead_code)]
struct RegistrationResponseJson {
    id: String,
    #[serde(rename = "rawId")]
    raw_id: String,
    response: AttestationResponseJson,
    /// `public-key`.
    #[serde(rename = "type")]
    kind: String,
    /// An object when given (not null).
    #[serde(rename = "clientExtensionResults")]
    #[schema(nullable = false)]
    client_extension_results: Option<Object>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = AuthenticatorAttestationResponseJSON)]
#[allow(dead_code)]
struct AttestationResponseJson {
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    #[serde(rename = "attestationObject")]
    attestation_object: String,
    transports: Option<Vec<String>>,
}

/// WebAuthn's `AuthenticationResponseJSON` (binary fields base64url).
#[derive(Deserialize, ToSchema)]
#[schema(as = AuthenticationResponseJSON)]
#[allow(dead_code)]
pub(super) struct AuthenticationResponseJson {
    id: String,
    #[serde(rename = "rawId")]
    raw_id: String,
    response: AssertionResponseJson,
    /// `public-key`.
    #[serde(rename = "type")]
    kind: String,
    /// An object when given (not null).
    #[serde(rename = "clientExtensionResults")]
    #[schema(nullable = false)]
    client_extension_results: Option<Object>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = AuthenticatorAssertionResponseJSON)]
#[allow(dead_code)]
struct AssertionResponseJson {
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    #[serde(rename = "authenticatorData")]
    authenticator_data: String,
    signature: String,
    /// The user the passkey belongs to (a discoverable credential says).
    #[serde(rename = "userHandle")]
    user_handle: Option<String>,
}

/// The authenticator's answer to a registration.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegistrationFinish {
    pub challenge_id: Uuid,
    /// The new credential: `RegistrationResponseJSON`, as
    /// `credential.toJSON()` gives it.
    #[schema(value_type = RegistrationResponseJson)]
    pub credential: RegisterPublicKeyCredential,
    /// Shown in the list; default "Passkey". At most 64 characters, no
    /// control or invisible characters.
    #[schema(example = "Laptop", max_length = 64)]
    pub name: Option<String>,
}

/// A passkey, never its key.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyResponse {
    pub id: Uuid,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
}

impl From<PasskeyView> for PasskeyResponse {
    fn from(p: PasskeyView) -> Self {
        Self {
            id: p.id,
            name: p.name,
            created_at: p.created_at,
            last_used_at: p.last_used_at,
        }
    }
}

/// A registered passkey; with the recovery codes it brought if it is the
/// user's first factor (shown only now).
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyRegistered {
    #[serde(flatten)]
    pub passkey: PasskeyResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["abcde-fghij"]))]
    pub recovery_codes: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyList {
    pub passkeys: Vec<PasskeyResponse>,
}

/// Start registering a passkey for the current user (a discoverable
/// credential, its user verified). Once the user has a factor, adding one
/// needs a session of two factors (`aal2`).
#[utoipa::path(
    post, path = "/users/me/passkeys/register/start", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "`publicKey` for `navigator.credentials.create`", body = CeremonyStarted),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The user has a factor and the session one (`insufficient_user_authentication`)", body = Problem),
        (status = 422, description = "The account holds as many passkeys as allowed (20)", body = Problem),
        (status = 429, description = "Too many starts for this user from this address", body = Problem),
    )
)]
async fn start_registration(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
) -> AppResult<Json<CeremonyStarted>> {
    let started = state
        .services
        .passkeys
        .start_registration(&client, &caller)
        .await?;
    Ok(Json(started.into()))
}

/// Finish a registration with the authenticator's answer. The first factor
/// of an account brings ten recovery codes, shown once; from then on a
/// password login asks for a second factor.
#[utoipa::path(
    post, path = "/users/me/passkeys/register/finish", tag = "users",
    request_body = RegistrationFinish,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 201, description = "Registered", body = PasskeyRegistered),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The user has a factor and the session one (`insufficient_user_authentication`)", body = Problem),
        (status = 409, description = "This credential is registered already", body = Problem),
        (status = 422, description = "Unknown, used or expired `challenge_id`; a credential that does not answer it (another origin or RP ID, no user verification, a bad attestation) or whose id is not of 16 to 1023 bytes; the account holds as many passkeys as allowed", body = Problem),
    )
)]
async fn finish_registration(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    ApiJson(req): ApiJson<RegistrationFinish>,
) -> AppResult<(StatusCode, Json<PasskeyRegistered>)> {
    let name = factor_name(req.name.as_deref())?;
    let registered = state
        .services
        .passkeys
        .finish_registration(&client, &caller, req.challenge_id, &req.credential, name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PasskeyRegistered {
            passkey: registered.passkey.into(),
            recovery_codes: registered.recovery_codes,
        }),
    ))
}

/// The current user's passkeys, oldest first.
#[utoipa::path(
    get, path = "/users/me/passkeys", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The passkeys", body = PasskeyList),
        (status = 401, description = "Missing or invalid token", body = Problem),
    )
)]
async fn list_passkeys(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
) -> AppResult<Json<PasskeyList>> {
    let passkeys = state.services.passkeys.list(caller.user_id).await?;
    Ok(Json(PasskeyList {
        passkeys: passkeys.into_iter().map(PasskeyResponse::from).collect(),
    }))
}

/// Remove a passkey. Needs a session of two factors (`aal2`).
#[utoipa::path(
    delete, path = "/users/me/passkeys/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "The passkey's id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Removed (the last factor takes the recovery codes with it)"),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The session has one factor (`insufficient_user_authentication`)", body = Problem),
        (status = 404, description = "No such passkey", body = Problem),
    )
)]
async fn remove_passkey(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ClientInfo(client): ClientInfo,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    state.services.passkeys.remove(&client, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who is logging in with a passkey: nobody named (the authenticator
/// offers its passkeys), or a username or email whose passkey alone the
/// finish accepts.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PasskeyLoginStart {
    /// A username or an email address.
    #[schema(example = "alice", min_length = 1, max_length = 320)]
    pub username: Option<String>,
}

/// Start a login with a passkey instead of a password. The options never
/// list an account's credentials (that would tell who has passkeys): the
/// authenticator offers its own.
#[utoipa::path(
    post, path = "/auth/passkey/start", tag = "auth",
    request_body = Option<PasskeyLoginStart>,
    responses(
        (status = 200, description = "`publicKey` for `navigator.credentials.get`", body = CeremonyStarted),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many starts from this address", body = Problem),
    )
)]
async fn start_login(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    OptionalJson(body): OptionalJson<PasskeyLoginStart>,
) -> AppResult<Json<CeremonyStarted>> {
    let request = body.unwrap_or_default();
    // The length is the sent value's, as the schema says; trimming comes after.
    let raw = request.username.as_deref();
    let login = raw.map(str::trim);
    if raw.is_some_and(|r| r.chars().count() > 320) || login.is_some_and(str::is_empty) {
        return Err(AppError::validation(
            "username",
            "must be a username or an email address",
        ));
    }
    let started = state.services.passkeys.start_login(&client, login).await?;
    Ok(Json(started.into()))
}

/// The authenticator's answer to a login.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasskeyLoginFinish {
    pub challenge_id: Uuid,
    /// The assertion: `AuthenticationResponseJSON`, as
    /// `credential.toJSON()` gives it.
    #[schema(value_type = AuthenticationResponseJson)]
    pub credential: PublicKeyCredential,
}

/// Finish a login with a passkey: the usual token pair, `aal: aal2` and
/// `amr: ["hwk", "mfa"]` (the authenticator verified its user).
#[utoipa::path(
    post, path = "/auth/passkey/finish", tag = "auth",
    params(("transport" = Option<String>, Query, pattern = "^(body|cookie)$",
        description = "`cookie`: the refresh token goes in an HttpOnly cookie, not the body (needs an allowed Origin)")),
    request_body = PasskeyLoginFinish,
    responses(
        (status = 200, description = "Logged in", body = super::TokenResponse),
        (status = 401, description = "The passkey did not prove an active account (`invalid_credentials`)", body = Problem),
        (status = 403, description = "The email is not verified and the service requires it (`email_not_verified`); or `transport=cookie` from an Origin not allowed (`cross_site_request`)", body = Problem),
        (status = 422, description = "Unknown, used or expired `challenge_id`; invalid fields", body = Problem),
    )
)]
async fn finish_login(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PasskeyLoginFinish>,
) -> AppResult<Response> {
    let transport = transport(query.as_deref())?;
    if transport == Transport::Cookie {
        // A page of another site must not log the browser in (login CSRF).
        state.cookies.check_origin(&headers)?;
    }
    let pair = state
        .services
        .passkeys
        .finish_login(&client, req.challenge_id, &req.credential)
        .await?;
    Ok(token_response(&state, pair, transport))
}

/// Whose second factor: a login's (its `mfa_token`) or, with a Bearer
/// token instead, the session's (step-up).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SecondFactorStart {
    /// From the login's 403 `mfa_required`; absent for a step-up.
    pub mfa_token: Option<String>,
}

/// Start a passkey as the second factor: after a password (`mfa_token`),
/// or to raise a session to `aal2` (Bearer). The options list the user's
/// passkeys; send the answer with `challenge_id` to `POST /auth/mfa/verify`.
#[utoipa::path(
    post, path = "/auth/mfa/passkey/start", tag = "auth",
    request_body = Option<SecondFactorStart>,
    security((), ("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "`publicKey` for `navigator.credentials.get`", body = CeremonyStarted),
        (status = 401, description = "Unknown, expired or spent mfa_token (`invalid_mfa_token`); neither an mfa_token nor a bearer token (`missing_mfa_token`); an invalid bearer token", body = Problem),
        (status = 422, description = "The user has no passkey", body = Problem),
        (status = 429, description = "Too many starts for this user from this address", body = Problem),
    )
)]
async fn start_second_factor(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<SecondFactorStart>,
) -> AppResult<Json<CeremonyStarted>> {
    let mfa = &state.services.mfa;
    let started = match body.and_then(|b| b.mfa_token) {
        Some(mfa_token) => {
            mfa.start_passkey(&client, PasskeyStep::Login(&mfa_token))
                .await?
        }
        None => {
            if headers.get(header::AUTHORIZATION).is_none() {
                return Err(AppError::MissingMfaToken);
            }
            let caller = state
                .services
                .sessions
                .authenticate(bearer_token(&headers)?)
                .await?;
            mfa.start_passkey(&client, PasskeyStep::StepUp(&caller))
                .await?
        }
    };
    Ok(Json(started.into()))
}
