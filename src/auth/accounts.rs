//! Accounts: signup, admin accounts, and what admins do to users.

use std::sync::Arc;

use anyhow::Context;
use secrecy::SecretString;
use uuid::Uuid;

use super::{
    Client,
    audit::Audit,
    error::{AuthError, AuthResult},
    factors::require_aal2_if_enrolled,
    flows::FlowPolicy,
    letters::Letters,
    liveness::SessionCache,
    login::PasswordCheck,
    sessions::Authenticated,
};
use crate::{
    clock::SharedClock,
    crypto::{
        passwords::{self, NO_CLIENT, PasswordHasher},
        refresh,
    },
    domain::{Email, Password, Role, Roles, User, Username, login_key, passes_for},
    limits::{Key, Quota, RateLimiter, client_bucket},
    store::{
        AuditContext, AuditKind, Effects, FlowStore, NewUser, Store, UserChanges, UserFilter,
        UserStore,
    },
};

/// A parsed signup: at least one of username and email.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub username: Option<Username>,
    pub email: Option<Email>,
    pub password: Password,
}

/// An admin's change to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountChange {
    pub is_active: Option<bool>,
    pub roles: Option<Roles>,
    pub email_verified: Option<bool>,
}

/// Which users a listing shows; `None` is no condition.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// The start of the username or email, in any case.
    pub prefix: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

/// A page of users, oldest first.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<User>,
    /// The id to continue after, if there are more users.
    pub next_after: Option<Uuid>,
}

/// What [`Accounts::create_admin`] does when the email is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Leave the existing account as it is (start-up: create once).
    Keep,
    /// Give the existing account the admin role and enable it.
    Promote,
    /// Fail, naming the way to promote.
    Refuse,
}

/// What [`Accounts::create_admin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOutcome {
    Created(User),
    Promoted(User),
    /// The account exists and was left as it is.
    Kept(User),
}

/// A user's change to their own account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub username: Option<Username>,
    /// Changes only once the link mailed to the new address is used.
    pub email: Option<Email>,
}

/// What [`Accounts::update_profile`] did.
#[derive(Debug, Clone)]
pub struct ProfileUpdate {
    pub user: User,
    /// A link to confirm a new address was mailed to it.
    pub email_change_requested: bool,
}

#[derive(Clone)]
pub struct Accounts {
    pub(super) users: Arc<dyn UserStore>,
    /// Where changes with no other home (a mailed link) are written.
    pub(super) effects: Arc<dyn FlowStore>,
    pub(super) hasher: PasswordHasher,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) audit: Audit,
    pub(super) letters: Letters,
    pub(super) mail_quota: FlowPolicy,
    pub(super) clock: SharedClock,
    /// This instance's session answers, to forget a changed user's at once.
    pub(super) liveness: Arc<SessionCache>,
    /// Confirms the current password before a sensitive change.
    pub(super) check: PasswordCheck,
    /// Whether the user has a second factor (then a sensitive change needs
    /// a session of two).
    pub(super) factors: Arc<dyn Store>,
    pub(super) policy: AccountPolicy,
}

/// Signup rules, fixed at start-up.
#[derive(Debug, Clone, Default)]
pub struct AccountPolicy {
    pub signup_per_minute: u32,
    /// Accounts must verify their email before they can log in, so every
    /// signup needs one.
    pub require_verified_email: bool,
    /// Names nobody may sign up with (compared by [`Username::skeleton`]).
    pub reserved_usernames: Vec<String>,
}

impl AccountPolicy {
    fn is_reserved(&self, name: &Username) -> bool {
        self.reserved_usernames
            .iter()
            .any(|reserved| passes_for(name.as_str(), reserved))
    }
}

impl Accounts {
    /// Creates an account with the `user` role, and mails a verification
    /// link to its address. A username that would pass for the service
    /// (`admin`, `support`, …) is refused.
    #[tracing::instrument(skip_all, fields(ip = %client.ip))]
    pub async fn signup(&self, client: &Client, account: NewAccount) -> AuthResult<User> {
        let result = self.create_account(client, account).await;
        metrics::counter!("authgate_signups_total", "outcome" => super::error::outcome(&result))
            .increment(1);
        result
    }

    async fn create_account(&self, client: &Client, account: NewAccount) -> AuthResult<User> {
        let ip = client_bucket(client.ip);
        let taken = self
            .limiter
            .take(
                &Key::new("signup", ip),
                Quota::per_minute(self.policy.signup_per_minute),
                self.clock.now(),
            )
            .await
            .map_err(AuthError::from);
        self.audit
            .note_throttling(client, "signup", None, taken)
            .await?;
        if let Some(name) = &account.username
            && self.policy.is_reserved(name)
        {
            return Err(AuthError::ReservedUsername);
        }
        if self.policy.require_verified_email && account.email.is_none() {
            return Err(AuthError::Invalid {
                field: "email",
                message: "is required: accounts must verify their email address".into(),
            });
        }
        let id = Uuid::now_v7();
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(id), AuditKind::Signup)
                .user(id),
        );
        if let Some(email) = &account.email {
            // The verification mail counts against the mail quotas like any
            // other: signing up (and deleting) again and again must not be a
            // way to flood an inbox. Past a quota the account is created
            // without it; a verification can be asked for later.
            let quota = self
                .mail_quota
                .take_mail(
                    self.limiter.as_ref(),
                    client.ip,
                    &email.normalized(),
                    self.clock.now(),
                )
                .await;
            match quota {
                Ok(()) => {
                    self.letters
                        .verification(&mut effects, id, email, self.clock.now());
                }
                Err(AuthError::Throttled(_)) => {
                    self.audit.throttled(client, "verify_email", None).await;
                }
                Err(e) => return Err(e),
            }
        }
        let password_hash = self.hash(ip, account.password.expose()).await?;
        let user = self
            .insert(
                NewUser {
                    id,
                    username: account.username,
                    email: account.email,
                    password_hash,
                    roles: Roles::new([Role::user()]),
                    email_verified: false,
                    created_at: self.clock.now(),
                },
                &effects,
            )
            .await?;
        tracing::info!(user_id = %user.id, "account created");
        Ok(user)
    }

    async fn hash(&self, client: passwords::Client, password: &str) -> AuthResult<String> {
        Ok(self
            .hasher
            .hash(client, SecretString::from(password.to_owned()))
            .await?)
    }

    async fn insert(&self, new: NewUser, effects: &Effects) -> AuthResult<User> {
        let user = self.users.create_user(&new, effects).await?;
        if !effects.mail.is_empty() {
            self.letters.wake();
        }
        Ok(user)
    }

    /// Creates an admin account, or deals with an existing account of that
    /// email as `if_exists` says. `password` is asked for only when an account
    /// is created. Serves both the start-up admin and `authgate create-admin`.
    pub async fn create_admin(
        &self,
        email: Email,
        username: Option<Username>,
        password: impl FnOnce() -> anyhow::Result<Password>,
        if_exists: IfExists,
    ) -> anyhow::Result<AdminOutcome> {
        if let Some(existing) = self.users.find_credentials(&email.normalized()).await? {
            return self.existing_admin(existing.user, if_exists).await;
        }
        let password = password()?;
        let id = Uuid::now_v7();
        let effects = Effects::audit(
            AuditContext::default()
                .record(AuditKind::UserCreated, self.clock.now())
                .user(id)
                .detail("admin account"),
        );
        let password_hash = self.hash(NO_CLIENT, password.expose()).await?;
        let roles = Roles::new([Role::admin(), Role::user()]);
        match self
            .insert(
                NewUser {
                    id,
                    username,
                    email: Some(email.clone()),
                    password_hash,
                    roles,
                    // The operator names this admin and vouches for its
                    // address: a service that requires verified addresses
                    // must still let its first admin in.
                    email_verified: true,
                    created_at: self.clock.now(),
                },
                &effects,
            )
            .await
        {
            Ok(user) => {
                tracing::info!(user_id = %user.id, "admin account created");
                Ok(AdminOutcome::Created(user))
            }
            // Another instance created it a moment ago: the same as finding it.
            Err(AuthError::Conflict("email")) if if_exists == IfExists::Keep => {
                let existing = self
                    .users
                    .find_credentials(&email.normalized())
                    .await?
                    .context("the admin account vanished while it was being created")?;
                Ok(AdminOutcome::Kept(existing.user))
            }
            Err(AuthError::Conflict(field)) => {
                anyhow::bail!("a user with that {field} already exists")
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn existing_admin(
        &self,
        user: User,
        if_exists: IfExists,
    ) -> anyhow::Result<AdminOutcome> {
        match if_exists {
            IfExists::Keep => Ok(AdminOutcome::Kept(user)),
            IfExists::Refuse => anyhow::bail!(
                "a user with that email already exists; pass --promote to make them an admin"
            ),
            IfExists::Promote => {
                // The role is added inside the change's transaction, so a
                // concurrent change of the user's roles is not overwritten.
                let changes = UserChanges {
                    is_active: Some(true),
                    add_role: Some(Role::admin()),
                    // The operator named the address: it counts as verified.
                    email_verified: Some(true),
                    ..UserChanges::default()
                };
                let user = self
                    .users
                    .update_user(
                        user.id,
                        &changes,
                        self.clock.now(),
                        &AuditContext::default(),
                    )
                    .await?
                    .ok_or(AuthError::NotFound)?;
                if user.sessions_ended {
                    self.liveness.revoke_user(user.user.id);
                }
                let user = user.user;
                tracing::info!(user_id = %user.id, "user promoted to admin");
                Ok(AdminOutcome::Promoted(user))
            }
        }
    }

    /// Changes the caller's password after confirming the current one.
    /// Every other session of the user ends; the caller's own goes on.
    pub async fn change_password(
        &self,
        who: &Authenticated,
        client: &Client,
        current: &str,
        new: Password,
    ) -> AuthResult<()> {
        require_aal2_if_enrolled(self.factors.as_ref(), who).await?;
        self.check.confirm(client, who.user_id, current).await?;
        let hash = self.hash(client_bucket(client.ip), new.expose()).await?;
        let effects = Effects::audit(
            self.audit
                .event(client, Some(who.user_id), AuditKind::PasswordChanged)
                .user(who.user_id)
                .session(who.session_id),
        );
        let changed = self
            .users
            .change_password(
                who.user_id,
                &hash,
                Some(who.session_id),
                self.clock.now(),
                &effects,
            )
            .await?;
        if !changed {
            return Err(AuthError::NotFound);
        }
        self.liveness
            .revoke_user_except(who.user_id, who.session_id);
        tracing::info!(user_id = %who.user_id, "password changed");
        Ok(())
    }

    /// Deletes the caller's account, after confirming its password: the
    /// account, its sessions and tokens are gone, and its username and email
    /// free again. The last active admin cannot delete itself.
    pub async fn delete_self(
        &self,
        who: &Authenticated,
        client: &Client,
        current: &str,
    ) -> AuthResult<()> {
        require_aal2_if_enrolled(self.factors.as_ref(), who).await?;
        self.check.confirm(client, who.user_id, current).await?;
        let effects = Effects::audit(
            self.audit
                .event(client, Some(who.user_id), AuditKind::UserDeleted)
                .user(who.user_id)
                .detail("by the user"),
        );
        if !self.users.delete_user(who.user_id, &effects).await? {
            return Err(AuthError::NotFound);
        }
        self.liveness.revoke_user(who.user_id);
        tracing::info!(user_id = %who.user_id, "account deleted by its user");
        Ok(())
    }

    /// Users ordered by id (oldest first), `limit` at a time, after `after`.
    pub async fn list(
        &self,
        query: UserQuery,
        limit: u32,
        after: Option<Uuid>,
    ) -> AuthResult<UserPage> {
        let filter = UserFilter {
            prefix: query.prefix.as_deref().map(login_key),
            role: query.role,
            is_active: query.is_active,
        };
        // One extra row tells whether there is a next page.
        let users = self.users.list_users(&filter, limit + 1, after).await?;
        let (users, next_after) = super::cut_page(users, limit, |u| u.id);
        Ok(UserPage { users, next_after })
    }

    /// The user with that id.
    pub async fn get(&self, id: Uuid) -> AuthResult<User> {
        self.users.get_user(id).await?.ok_or(AuthError::NotFound)
    }

    /// Enables or disables a user, sets their roles or whether their email is
    /// verified. A change of roles or of the active flag ends the user's
    /// sessions, so no token outlives a disabled account or carries stale
    /// roles; a change to nothing ends nothing.
    pub async fn update(
        &self,
        id: Uuid,
        change: AccountChange,
        client: &Client,
        actor: Uuid,
    ) -> AuthResult<User> {
        let changes = UserChanges {
            is_active: change.is_active,
            roles: change.roles,
            add_role: None,
            email_verified: change.email_verified,
        };
        let updated = self
            .users
            .update_user(id, &changes, self.clock.now(), &client.context(Some(actor)))
            .await?
            .ok_or(AuthError::NotFound)?;
        if updated.sessions_ended {
            self.liveness.revoke_user(id);
            tracing::info!(user_id = %id, ?changes, "user updated by admin");
        } else {
            self.liveness.update_user(&updated.user);
        }
        Ok(updated.user)
    }

    /// Creates an account for someone else (an admin's act): any username,
    /// reserved or not, and the roles given. Without a password, the account
    /// gets none that anyone knows, and its address a link to choose one.
    pub async fn create(
        &self,
        username: Option<Username>,
        email: Option<Email>,
        password: Option<Password>,
        roles: Roles,
        client: &Client,
        actor: Uuid,
    ) -> AuthResult<User> {
        let id = Uuid::now_v7();
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(actor), AuditKind::UserCreated)
                .user(id),
        );
        let password_hash = match (&password, &email) {
            (Some(password), _) => self.hash(NO_CLIENT, password.expose()).await?,
            (None, Some(email)) => {
                self.letters
                    .invitation(&mut effects, id, email, self.clock.now());
                // A random 256-bit password nobody ever sees: the account
                // can only be entered through the mailed link.
                self.hash(NO_CLIENT, &refresh::generate().token).await?
            }
            (None, None) => {
                return Err(AuthError::Invalid {
                    field: "password",
                    message: "is required when there is no email to send a link to".into(),
                });
            }
        };
        let user = self
            .insert(
                NewUser {
                    id,
                    username,
                    email,
                    password_hash,
                    roles,
                    email_verified: false,
                    created_at: self.clock.now(),
                },
                &effects,
            )
            .await?;
        tracing::info!(user_id = %user.id, invited = password.is_none(), "account created by admin");
        Ok(user)
    }

    /// Changes the caller's username at once, and their email address once
    /// the link mailed to the new address is used (the old one gets a
    /// notice). Needs the current password.
    pub async fn update_profile(
        &self,
        who: &Authenticated,
        client: &Client,
        change: ProfileChange,
        current: &str,
    ) -> AuthResult<ProfileUpdate> {
        if change.email.is_some() {
            require_aal2_if_enrolled(self.factors.as_ref(), who).await?;
        }
        let mut user = self.check.confirm(client, who.user_id, current).await?;
        let name = change
            .username
            .filter(|name| user.username.as_deref() != Some(name.as_str()));
        let new_email = change
            .email
            .filter(|new| user.email.as_deref().map(login_key) != Some(new.normalized()));
        // Everything that can refuse the request is asked before anything
        // changes, so that a refusal leaves the account as it was.
        if let Some(name) = &name
            && self.policy.is_reserved(name)
        {
            return Err(AuthError::ReservedUsername);
        }
        if let Some(new) = &new_email {
            let taken = self
                .mail_quota
                .take_mail(
                    self.limiter.as_ref(),
                    client.ip,
                    &new.normalized(),
                    self.clock.now(),
                )
                .await;
            self.audit
                .note_throttling(client, "email_change", Some(user.id), taken)
                .await?;
        }
        if let Some(name) = name {
            let effects = Effects::audit(
                self.audit
                    .event(client, Some(user.id), AuditKind::UsernameChanged)
                    .user(user.id)
                    .session(who.session_id),
            );
            user = self
                .users
                .change_username(user.id, &name, self.clock.now(), &effects)
                .await?
                .ok_or(AuthError::NotFound)?;
            self.liveness.update_user(&user);
            tracing::info!(user_id = %user.id, "username changed");
        }
        let Some(new) = new_email else {
            return Ok(ProfileUpdate {
                user,
                email_change_requested: false,
            });
        };
        // The notice goes to the old address only if it is verified (an
        // unverified one protects nobody) and within its own quota, which
        // the client pays for too: repeated changes must not flood it.
        let mut old = user
            .email
            .as_deref()
            .filter(|_| user.email_verified)
            .and_then(|e| Email::parse(e).ok());
        if let Some(address) = &old {
            let quota = self
                .mail_quota
                .take_mail(
                    self.limiter.as_ref(),
                    client.ip,
                    &address.normalized(),
                    self.clock.now(),
                )
                .await;
            match quota {
                Ok(()) => {}
                Err(AuthError::Throttled(_)) => old = None,
                Err(e) => return Err(e),
            }
        }
        let mut effects = Effects::audit(
            self.audit
                .event(client, Some(user.id), AuditKind::EmailChangeRequested)
                .user(user.id)
                .session(who.session_id),
        );
        self.letters
            .email_change(&mut effects, user.id, old.as_ref(), &new, self.clock.now());
        self.effects.apply(&effects).await?;
        self.letters.wake();
        Ok(ProfileUpdate {
            user,
            email_change_requested: true,
        })
    }

    /// Deletes a user, with its sessions and tokens. The last active admin
    /// cannot be deleted.
    pub async fn delete(&self, id: Uuid, client: &Client, actor: Uuid) -> AuthResult<()> {
        let effects = Effects::audit(
            self.audit
                .event(client, Some(actor), AuditKind::UserDeleted)
                .user(id),
        );
        if !self.users.delete_user(id, &effects).await? {
            return Err(AuthError::NotFound);
        }
        self.liveness.revoke_user(id);
        tracing::info!(user_id = %id, "user deleted by admin");
        Ok(())
    }
}
