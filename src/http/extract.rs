//! Extractors: JSON bodies with our error format, the client IP, and the
//! authenticated user (with role checks).

use std::{
    marker::PhantomData,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use axum::{
    body::Bytes,
    extract::{
        ConnectInfo, FromRequest, FromRequestParts, Path, Request, rejection::BytesRejection,
    },
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{
    AppState,
    client_ip::client_ip,
    error::{AppError, FieldError},
};
use crate::{
    auth::{Client, sessions::Authenticated, tokens::TokenRejection},
    domain::{Role, UNSHOWN, is_unshown},
};

/// A JSON request body. Unlike `axum::Json`, every rejection is a problem
/// document: 415 without a JSON content type, 413 past the body limit, 400 for
/// malformed JSON, 422 naming the field for well-formed JSON of the wrong shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_content_type(req.headers(), "application/json") {
            return Err(AppError::UnsupportedMediaType(
                "Expected a body with Content-Type: application/json.".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be left out: an empty body, or `null`, is `None`;
/// any other is read as [`ApiJson`] reads it.
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = has_content_type(req.headers(), "application/json");
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(AppError::UnsupportedMediaType(
                "Expected no body, or one with Content-Type: application/json.".into(),
            ));
        }
        if bytes.trim_ascii() == b"null" {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

pub fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(expected))
}

pub fn body_rejection(rejection: BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge
    } else if stalled(&rejection) {
        AppError::RequestTimeout
    } else {
        AppError::BadRequest(rejection.body_text())
    }
}

/// Whether the body failed because it stopped arriving (the listener's
/// body read timeout).
fn stalled(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    // serde fills a struct from an array too, field by field in order;
    // every body of this API is an object, and only an object is accepted.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => AppError::validation("body", "must be a JSON object"),
                Err(e) => AppError::BadRequest(format!("The body is not valid JSON: {e}")),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        json_error(err.into_inner(), path)
    })?;
    de.end().map_err(|e| json_error(e, ".".into()))?;
    Ok(value)
}

fn json_error(inner: serde_json::Error, path: String) -> AppError {
    if inner.classify() != serde_json::error::Category::Data {
        return AppError::BadRequest(format!("The body is not valid JSON: {inner}"));
    }
    let message = inner.to_string();
    // "missing field `password` at line 1 column 20" names its own field.
    let field = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
        .unwrap_or_else(|| if path == "." { "body".into() } else { path });
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    };
    AppError::Validation(vec![FieldError::new(field, message)])
}

/// The client's IP address (see [`super::client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}

/// Parses a field that was given, adding its error to `errors` if it
/// does not parse.
pub fn parse_field<T>(
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

/// The longest name of a factor, in characters.
pub const MAX_NAME: usize = 64;

/// The API document's pattern for such a name: none of [`UNSHOWN`].
pub fn shown_name_pattern() -> String {
    let ranges: String = UNSHOWN
        .iter()
        .map(|&(a, b)| format!("\\u{:04X}-\\u{:04X}", u32::from(a), u32::from(b)))
        .collect();
    format!("^[^{ranges}]*$")
}

/// A factor's name as given: at most [`MAX_NAME`] characters, none of
/// [`UNSHOWN`] (a control character included); blank is none.
pub fn factor_name(name: Option<&str>) -> Result<Option<&str>, AppError> {
    if name.is_some_and(|n| n.chars().count() > MAX_NAME || n.chars().any(is_unshown)) {
        return Err(AppError::validation(
            "name",
            format!(
                "must be at most {MAX_NAME} characters, without control or invisible characters"
            ),
        ));
    }
    Ok(name.map(str::trim).filter(|n| !n.is_empty()))
}

/// A resource id in the path. Anything that is not an id (including bytes
/// that are not UTF-8) names no resource: 404, as for an unknown id.
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AppError::NotFound)?;
        Uuid::parse_str(&raw)
            .map(PathId)
            .map_err(|_| AppError::NotFound)
    }
}

/// The client's IP address, `User-Agent` and request id, as sessions and
/// the audit log record them.
#[derive(Debug, Clone)]
pub struct ClientInfo(pub Client);

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let request_id = parts
            .headers
            .get(super::REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        Ok(ClientInfo(
            Client::new(ip, user_agent).in_request(request_id),
        ))
    }
}

/// The caller behind a valid access token of a live session.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Authenticated);

/// The token of an `Authorization: Bearer …` header (RFC 6750 §2.1).
pub(super) fn bearer_token(headers: &HeaderMap) -> Result<&str, AppError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AppError::MissingToken)?;
    let value = value
        .to_str()
        .map_err(|_| AppError::InvalidToken(TokenRejection::Malformed))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AppError::InvalidToken(TokenRejection::Malformed)),
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let caller = state.services.sessions.authenticate(token).await?;
        Ok(AuthUser(caller))
    }
}

/// A role name known at compile time, for [`RequireRole`].
pub trait RoleName: Send + Sync + 'static {
    const NAME: &'static str;
}

/// The `admin` role.
pub struct Admin;

impl RoleName for Admin {
    const NAME: &'static str = Role::ADMIN;
}

/// An authenticated user holding role `R`; 403 for a valid token without it.
pub struct RequireRole<R: RoleName>(pub AuthUser, PhantomData<R>);

impl<R: RoleName> RequireRole<R> {
    /// The id of the user acting.
    pub fn user_id(&self) -> uuid::Uuid {
        self.0.0.user_id
    }
}

impl<R: RoleName> FromRequestParts<AppState> for RequireRole<R> {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        // The user's roles as of the last session check, not the token's:
        // a demoted admin's token (good for its whole lifetime) loses its
        // power within the check's bound.
        if !user.0.user.user.roles.contains(R::NAME) {
            return Err(AppError::Forbidden);
        }
        // A change by a user who has a second factor needs a session of two,
        // as the user's own sensitive changes do: a session opened before
        // the factor must not, say, make a second admin who resets it.
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            state.services.mfa.require_aal2_if_enrolled(&user.0).await?;
        }
        Ok(RequireRole(user, PhantomData))
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn the_documented_name_pattern_refuses_what_the_parser_refuses() {
        let pattern = regex::Regex::new(&shown_name_pattern()).unwrap();
        let mut samples: Vec<char> = UNSHOWN.iter().flat_map(|&(a, b)| [a, b]).collect();
        samples.extend(['a', 'é', '☃', ' ', '\u{2027}', '\u{2070}', '\u{FFFC}', '😀']);
        for c in samples {
            let name = format!("a{c}b");
            assert_eq!(
                pattern.is_match(&name),
                factor_name(Some(&name)).is_ok(),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }
}
