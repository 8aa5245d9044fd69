use time::OffsetDateTime;
use uuid::Uuid;

use super::{Role, Roles};

/// An account as the service shows it: never with its password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub roles: Roles,
    pub is_active: bool,
    pub created_at: OffsetDateTime,
}

impl User {
    /// An active account holding the `admin` role.
    pub fn is_active_admin(&self) -> bool {
        self.is_active && self.roles.contains(Role::ADMIN)
    }
}
