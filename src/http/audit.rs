//! `/admin/audit` and `/admin/mail`: what happened, and what was mailed,
//! for the `admin` role.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState,
    admin::{encode_cursor, field, non_empty, parse_cursor, parse_limit},
    error::{AppError, AppResult, FieldError, Problem},
    extract::{Admin, RequireRole},
};
use crate::auth::{
    audit::{AuditFilter, AuditKind, AuditRecord},
    outbox::{MailInfo, MailStatus},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(list_mail))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only events about this user.
    #[param(value_type = Option<Uuid>)]
    pub user_id: Option<String>,
    /// Only events of this type (`login`, `password_reset`, …).
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^(signup|login|refresh|refresh_token_reuse|logout|logout_all|session_ended|password_changed|password_reset_requested|password_reset|email_verification_requested|email_verified|email_change_requested|email_changed|username_changed|user_created|roles_changed|user_disabled|user_enabled|user_deleted|throttled|key_rotated|key_revoked|mfa_enrolled|mfa_removed|mfa_reset|mfa_step_up|recovery_codes_regenerated|client_created|client_deleted|authorization_code_replay|grant_revoked)?$"
    )]
    pub kind: Option<String>,
    /// Only events at or after this time (RFC 3339, years 1 to 9999 in UTC).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One security event. Never carries a password, token or hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: OffsetDateTime,
    #[serde(rename = "type")]
    #[schema(example = "login")]
    pub kind: &'static str,
    /// `success` or `failure`.
    pub outcome: &'static str,
    /// Who acted (the user themselves, or an admin).
    pub actor_id: Option<Uuid>,
    /// The user the event concerns.
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<String>,
}

impl From<AuditRecord> for AuditEvent {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            occurred_at: r.at,
            kind: r.kind.as_str(),
            outcome: r.outcome.as_str(),
            actor_id: r.context.actor_id,
            user_id: r.user_id,
            session_id: r.session_id,
            ip: r.context.ip,
            user_agent: r.context.user_agent,
            request_id: r.context.request_id,
            detail: r.detail,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn parse_audit_params(params: &AuditParams) -> Result<(AuditFilter, u32, Option<Uuid>), AppError> {
    let mut errors = Vec::new();
    let user_id = field(
        &mut errors,
        params
            .user_id
            .as_deref()
            .map(|raw| {
                Uuid::parse_str(raw).map_err(|_| FieldError::new("user_id", "is not a UUID"))
            })
            .transpose(),
    );
    let kind = field(
        &mut errors,
        non_empty(&params.kind)
            .map(|raw| {
                AuditKind::parse(raw).ok_or_else(|| {
                    let known: Vec<_> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
                    FieldError::new("type", format!("must be one of: {}", known.join(", ")))
                })
            })
            .transpose(),
    );
    let since = field(
        &mut errors,
        params
            .since
            .as_deref()
            .map(|raw| {
                OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                    .ok()
                    // Within years 1–9999 in UTC, which both databases store.
                    .and_then(|t| t.checked_to_offset(time::UtcOffset::UTC))
                    .filter(|t| (1..=9999).contains(&t.year()))
                    .ok_or_else(|| {
                        FieldError::new("since", "is not an RFC 3339 time of years 1 to 9999")
                    })
            })
            .transpose(),
    );
    let limit = field(&mut errors, parse_limit(params.limit.as_deref()));
    let cursor = field(&mut errors, parse_cursor(non_empty(&params.cursor)));
    match (user_id, kind, since, limit, cursor) {
        (Some(user_id), Some(kind), Some(since), Some(limit), Some(cursor)) => Ok((
            AuditFilter {
                user_id,
                kind,
                since,
            },
            limit,
            cursor,
        )),
        _ => Err(AppError::Validation(errors)),
    }
}

/// The audit log, newest first, a page at a time.
#[utoipa::path(
    get, path = "/admin/audit", tag = "admin",
    params(AuditParams),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "A page of events", body = AuditPage),
        (status = 400, description = "A malformed query string", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 422, description = "Bad filter, limit or cursor", body = Problem),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    _admin: RequireRole<Admin>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> AppResult<Json<AuditPage>> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let (filter, limit, cursor) = parse_audit_params(&params)?;
    let page = state.services.audit.list(filter, limit, cursor).await?;
    Ok(Json(AuditPage {
        events: page.events.into_iter().map(AuditEvent::from).collect(),
        next_cursor: page.next_before.map(encode_cursor),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MailParams {
    /// `pending`, `sent` or `failed`.
    #[param(pattern = "^(pending|sent|failed)?$")]
    pub status: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A message of the outbox. Its body is never shown: it carries a live link.
#[derive(Debug, Serialize, ToSchema)]
pub struct MailMessage {
    pub id: Uuid,
    /// `verify_email`, `password_reset`, `invitation`, `email_change`, `email_change_notice`.
    pub kind: String,
    pub to: String,
    pub subject: String,
    /// `pending`, `sent` or `failed` (given up).
    pub status: &'static str,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When a pending message is tried next.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<OffsetDateTime>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

impl From<MailInfo> for MailMessage {
    fn from(m: MailInfo) -> Self {
        Self {
            id: m.id,
            kind: m.kind,
            to: m.to,
            subject: m.subject,
            status: m.status.as_str(),
            attempts: m.attempts,
            created_at: m.created_at,
            next_attempt_at: m.next_attempt_at,
            sent_at: m.sent_at,
            last_error: m.last_error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MailPage {
    pub messages: Vec<MailMessage>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The mail outbox, newest first: what was sent, what waits for a retry,
/// and what was given up, with the last error.
#[utoipa::path(
    get, path = "/admin/mail", tag = "admin",
    params(MailParams),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "A page of messages", body = MailPage),
        (status = 400, description = "A malformed query string", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks the admin role", body = Problem),
        (status = 422, description = "Bad status, limit or cursor", body = Problem),
    )
)]
async fn list_mail(
    State(state): State<AppState>,
    _admin: RequireRole<Admin>,
    params: Result<Query<MailParams>, QueryRejection>,
) -> AppResult<Json<MailPage>> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let mut errors = Vec::new();
    let status = field(
        &mut errors,
        non_empty(&params.status)
            .map(|raw| {
                MailStatus::parse(raw).ok_or_else(|| {
                    FieldError::new("status", "must be one of: pending, sent, failed")
                })
            })
            .transpose(),
    );
    let limit = field(&mut errors, parse_limit(params.limit.as_deref()));
    let cursor = field(&mut errors, parse_cursor(non_empty(&params.cursor)));
    let (Some(status), Some(limit), Some(cursor)) = (status, limit, cursor) else {
        return Err(AppError::Validation(errors));
    };
    let page = state.services.outbox.list(status, limit, cursor).await?;
    Ok(Json(MailPage {
        messages: page.messages.into_iter().map(MailMessage::from).collect(),
        next_cursor: page.next_before.map(encode_cursor),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_event_types_are_exactly_the_known_ones() {
        let known: Vec<_> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
        let spec = serde_json::to_value(super::super::openapi()).unwrap();
        let params = spec["paths"]["/admin/audit"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let kind = params.iter().find(|p| p["name"] == "type").unwrap();
        assert_eq!(
            kind["schema"]["pattern"],
            format!("^({})?$", known.join("|"))
        );
    }
}
