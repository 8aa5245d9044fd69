//! What account lifecycle stores beside users and sessions: single-use
//! links (flow tokens), the mail outbox, and the audit log. A change writes
//! its mail, its link and its audit events in its own transaction
//! ([`Effects`]), so that none of them exists without the change, nor the
//! change without them.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Email, User};

/// What a single-use link is for. A token is good for one purpose only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPurpose {
    VerifyEmail,
    ResetPassword,
    ChangeEmail,
}

impl FlowPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowPurpose::VerifyEmail => "verify_email",
            FlowPurpose::ResetPassword => "reset_password",
            FlowPurpose::ChangeEmail => "change_email",
        }
    }
}

/// A single-use link's token, stored by its SHA-256 hash only.
#[derive(Debug, Clone)]
pub struct NewFlowToken {
    pub hash: [u8; 32],
    pub purpose: FlowPurpose,
    pub user_id: Uuid,
    /// The address the link is sent to; the token is good only while it is
    /// still the user's (for a change of address: the new one).
    pub email: Email,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A live flow token, as found by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowToken {
    pub user_id: Uuid,
    pub email: String,
    pub expires_at: OffsetDateTime,
}

/// What using a flow token does, in the transaction that uses it up.
#[derive(Debug, Clone)]
pub enum Redemption {
    /// Marks the address verified, if it is still the user's.
    VerifyEmail,
    /// Sets the password (and marks the address verified: the link reached
    /// it), if the address is still the user's; ends every session and
    /// every other link of the user.
    ResetPassword { password_hash: String },
    /// Makes the token's address the user's, verified.
    ChangeEmail,
}

/// What [`FlowStore::redeem_flow_token`](super::FlowStore::redeem_flow_token) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The token is used up and the change made.
    Done(User),
    /// Unknown, used, expired, for another purpose or user, or its address
    /// is no longer the user's; nothing changed.
    Invalid,
    /// The new address belongs to another account now; nothing changed.
    EmailTaken,
}

/// A message to send, written to the outbox with the change that causes it.
#[derive(Debug, Clone)]
pub struct OutboxMail {
    pub id: Uuid,
    /// What the message is about (`verify_email`, `password_reset`, …).
    pub kind: &'static str,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub created_at: OffsetDateTime,
}

/// A message claimed for sending.
#[derive(Debug, Clone)]
pub struct QueuedMail {
    pub id: Uuid,
    pub to: String,
    pub subject: String,
    pub text: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailStatus {
    /// Waiting for its first or next attempt, or being sent.
    Pending,
    Sent,
    /// Given up: refused for good, or out of attempts.
    Failed,
}

impl MailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailStatus::Pending => "pending",
            MailStatus::Sent => "sent",
            MailStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [MailStatus::Pending, MailStatus::Sent, MailStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// A message as admins see it: never its body, which carries a live token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailInfo {
    pub id: Uuid,
    pub kind: String,
    pub to: String,
    pub subject: String,
    pub status: MailStatus,
    pub attempts: u32,
    pub created_at: OffsetDateTime,
    pub next_attempt_at: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
}

macro_rules! audit_kinds {
    ($($kind:ident = $name:literal),* $(,)?) => {
        /// A security event's type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum AuditKind { $($kind),* }

        impl AuditKind {
            pub const ALL: &[AuditKind] = &[$(AuditKind::$kind),*];

            pub fn as_str(self) -> &'static str {
                match self { $(AuditKind::$kind => $name),* }
            }
        }
    };
}

audit_kinds! {
    Signup = "signup",
    Login = "login",
    Refresh = "refresh",
    RefreshTokenReuse = "refresh_token_reuse",
    Logout = "logout",
    LogoutAll = "logout_all",
    SessionEnded = "session_ended",
    PasswordChanged = "password_changed",
    PasswordResetRequested = "password_reset_requested",
    PasswordReset = "password_reset",
    EmailVerificationRequested = "email_verification_requested",
    EmailVerified = "email_verified",
    EmailChangeRequested = "email_change_requested",
    EmailChanged = "email_changed",
    UsernameChanged = "username_changed",
    UserCreated = "user_created",
    RolesChanged = "roles_changed",
    UserDisabled = "user_disabled",
    UserEnabled = "user_enabled",
    UserDeleted = "user_deleted",
    Throttled = "throttled",
    KeyRotated = "key_rotated",
    KeyRevoked = "key_revoked",
    MfaEnrolled = "mfa_enrolled",
    MfaRemoved = "mfa_removed",
    MfaReset = "mfa_reset",
    MfaStepUp = "mfa_step_up",
    RecoveryCodesRegenerated = "recovery_codes_regenerated",
    ClientCreated = "client_created",
    ClientDeleted = "client_deleted",
    CodeReplay = "authorization_code_replay",
    GrantRevoked = "grant_revoked",
}

impl AuditKind {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.as_str() == s)
    }
}

/// Whether the act an event records succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            _ => None,
        }
    }
}

/// Who acted, and from where: the request behind an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditContext {
    /// The user who acted, if any (an admin, or the user themselves).
    pub actor_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl AuditContext {
    /// An event of this context. Its id is a UUIDv7, so ids order events
    /// by time.
    pub fn record(&self, kind: AuditKind, at: OffsetDateTime) -> AuditRecord {
        AuditRecord {
            id: Uuid::now_v7(),
            at,
            kind,
            outcome: Outcome::Success,
            user_id: None,
            session_id: None,
            detail: None,
            context: self.clone(),
        }
    }
}

/// One security event. Never holds a password, token or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: Uuid,
    pub at: OffsetDateTime,
    pub kind: AuditKind,
    pub outcome: Outcome,
    /// The user the event concerns.
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    /// A short, non-secret note (`roles: user → admin,user`).
    pub detail: Option<String>,
    pub context: AuditContext,
}

impl AuditRecord {
    pub fn user(mut self, id: Uuid) -> Self {
        self.user_id = Some(id);
        self
    }

    pub fn session(mut self, id: Uuid) -> Self {
        self.session_id = Some(id);
        self
    }

    pub fn failed(mut self) -> Self {
        self.outcome = Outcome::Failure;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Which events a listing shows; `None` is no condition.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<Uuid>,
    pub kind: Option<AuditKind>,
    pub since: Option<OffsetDateTime>,
}

/// What a change writes in its own transaction besides itself.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub audit: Vec<AuditRecord>,
    pub mail: Vec<OutboxMail>,
    /// Replaces the user's earlier tokens of the same purpose.
    pub token: Option<NewFlowToken>,
}

impl Effects {
    /// Only `record`.
    pub fn audit(record: AuditRecord) -> Self {
        Self {
            audit: vec![record],
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.audit.is_empty() && self.mail.is_empty() && self.token.is_none()
    }
}
