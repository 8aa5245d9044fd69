//! The typed outcomes of the flows. The HTTP layer maps each to a status and
//! a problem document; nothing here knows about HTTP.

use std::time::Duration;

use crate::{
    crypto::passwords::HashError,
    limits::{LimitError, Throttle},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown user or disabled account: deliberately one case.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Unknown, expired, used or revoked refresh token.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// An access token that does not verify or whose session has ended.
    #[error("invalid access token: {0:?}")]
    InvalidToken(TokenRejection),
    /// A logged-in user's confirmation of their current password was wrong.
    #[error("wrong current password")]
    WrongPassword,
    /// Too many attempts; retry after the wait, under the named policy.
    #[error("throttled for {:?} by {}", .0.wait, .0.policy)]
    Throttled(Throttle),
    /// The password hashing queue is full; retry after the duration.
    #[error("overloaded")]
    Overloaded(Duration),
    /// A unique field is taken; names the field.
    #[error("{0} already taken")]
    Conflict(&'static str),
    /// The username is reserved (it would impersonate the service).
    #[error("reserved username")]
    ReservedUsername,
    /// As many keys as allowed already wait to sign.
    #[error("too many keys on standby")]
    TooManyKeys,
    /// Keys come from `AUTHGATE_JWT_SECRET`: they cannot be rotated or revoked.
    #[error("keys come from configuration")]
    KeysConfigured,
    /// The change would leave no active admin.
    #[error("the last active admin cannot be demoted or disabled")]
    LastAdmin,
    /// A client id and secret that do not match (or an unknown client).
    #[error("invalid client")]
    InvalidClient,
    /// A `scope` that is malformed or beyond what the client may ask for.
    #[error("invalid scope: {0}")]
    InvalidScope(String),
    /// The client may not use this grant.
    #[error("unauthorized client: {0}")]
    UnauthorizedClient(&'static str),
    /// A code, or a refresh token of a client, that is unknown, used,
    /// expired, another client's, or does not match its request.
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
    /// No such user.
    #[error("not found")]
    NotFound,
    /// A link's token that is unknown, used, expired, or for something else.
    #[error("invalid or expired link")]
    InvalidLink,
    /// The password is right, but the account's email is not verified and
    /// the service requires it.
    #[error("email not verified")]
    EmailNotVerified,
    /// A field of the request breaks a rule only the service can check.
    #[error("{field} {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The password was right and the user has a second factor: the login
    /// goes on with this challenge.
    #[error("a second factor is required")]
    MfaRequired(MfaChallenge),
    /// An `mfa_token` that is unknown, expired, spent or out of attempts.
    #[error("invalid mfa token")]
    InvalidMfaToken,
    /// A wrong (or already used) second-factor code.
    #[error("invalid code")]
    InvalidCode,
    /// The change needs a session of two factors (`aal2`).
    #[error("insufficient user authentication")]
    InsufficientAuthentication,
    /// Something the request needs (the database, the shared throttling
    /// state) cannot be reached; retry after the duration.
    #[error("unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// How long a client should wait before retrying when something the
/// service depends on is unreachable.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);

impl From<LimitError> for AuthError {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::Throttled(throttle) => AuthError::Throttled(throttle),
            LimitError::Unavailable(e) => AuthError::Unavailable(e),
        }
    }
}

pub type AuthResult<T> = Result<T, AuthError>;

/// Why a bearer token was refused. Only logged: the client always sees the
/// same `invalid_token` answer so it learns nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Malformed,
    BadSignature,
    Expired,
    WrongType,
    UnknownKey,
    WrongIssuerOrAudience,
    /// Issued in the future, or valid for longer than this service issues
    /// tokens for: not a token this service signed as it stands.
    ImplausibleTimes,
    Revoked,
}

/// The answer to a password that needs a second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaChallenge {
    pub mfa_token: String,
    pub factor_types: Vec<&'static str>,
}

/// A result's outcome as a metrics label: a few fixed words, never data.
pub fn outcome<T>(result: &AuthResult<T>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(AuthError::InvalidCredentials | AuthError::WrongPassword) => "invalid_credentials",
        Err(AuthError::InvalidRefreshToken | AuthError::InvalidToken(_)) => "invalid_token",
        Err(AuthError::Throttled(_)) => "throttled",
        Err(AuthError::Overloaded(_)) => "overloaded",
        Err(AuthError::Unavailable(_)) => "unavailable",
        Err(AuthError::EmailNotVerified) => "email_not_verified",
        Err(AuthError::Conflict(_)) => "conflict",
        Err(AuthError::Invalid { .. } | AuthError::ReservedUsername) => "invalid",
        Err(AuthError::MfaRequired(_)) => "mfa_required",
        Err(AuthError::InvalidCode | AuthError::InvalidMfaToken) => "invalid_code",
        Err(AuthError::InsufficientAuthentication) => "insufficient_authentication",
        Err(_) => "error",
    }
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(field) => AuthError::Conflict(field),
            StoreError::LastAdmin => AuthError::LastAdmin,
            e if e.is_unavailable() => AuthError::Unavailable(e.into()),
            StoreError::Database(e) => AuthError::Internal(e.into()),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(err: HashError) -> Self {
        match err {
            // Hashing takes tens of milliseconds: a second is enough for the queue to move.
            HashError::Overloaded => AuthError::Overloaded(Duration::from_secs(1)),
            // One client's own checks fill its share of the queue: it is
            // sending too much at once, not the service that is busy.
            HashError::ClientBusy { per_client } => AuthError::Throttled(Throttle {
                wait: Duration::from_secs(1),
                policy: "password_checks",
                limit: per_client,
                window: None,
            }),
            HashError::Failed(why) => AuthError::Internal(anyhow::anyhow!(why)),
        }
    }
}
