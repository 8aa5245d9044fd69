//! Session liveness, cached for a bounded time.
//!
//! An access token is only as good as its session: logout, reuse detection or
//! an admin disabling the user revoke the session, and the token with it. To
//! keep protected requests off the database, the answer "is this session live,
//! and whose is it?" is cached per session for at most [`LIVENESS_TTL`]; every
//! instance sharing the database therefore sees a revocation within that
//! bound. The instance that revokes a session forgets it at once.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::store::User;

/// How long a "live" answer may be reused. Half a second leaves margin
/// inside the promise that revocations take effect within one second.
pub const LIVENESS_TTL: Duration = Duration::from_millis(500);

/// Above this many entries, inserting first drops the stale ones.
const MAX_ENTRIES: usize = 200_000;

/// What is known of a session.
#[derive(Debug, Clone)]
pub enum Liveness {
    /// Live, with its (active) user as of the check.
    Live(Arc<User>),
    /// Revoked, expired, or its user disabled or gone. Final.
    Dead,
}

#[derive(Debug, Clone)]
struct Entry {
    user_id: Uuid,
    liveness: Liveness,
    checked: Instant,
}

#[derive(Debug, Default)]
pub struct SessionCache {
    entries: RwLock<HashMap<Uuid, Entry>>,
}

impl SessionCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached answer, if fresh. A dead session never comes back, so a
    /// "dead" answer stays valid for good.
    pub fn get(&self, session_id: Uuid, now: Instant) -> Option<Liveness> {
        let map = self.entries.read().expect("session cache lock poisoned");
        let e = map.get(&session_id)?;
        match &e.liveness {
            Liveness::Dead => Some(Liveness::Dead),
            live if now.saturating_duration_since(e.checked) < LIVENESS_TTL => Some(live.clone()),
            _ => None,
        }
    }

    pub fn put(&self, session_id: Uuid, user_id: Uuid, liveness: Liveness, now: Instant) {
        let mut map = self.entries.write().expect("session cache lock poisoned");
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.saturating_duration_since(e.checked) < LIVENESS_TTL);
        }
        map.insert(
            session_id,
            Entry {
                user_id,
                liveness,
                checked: now,
            },
        );
    }

    /// Marks one session dead (this instance revoked it).
    pub fn revoke(&self, session_id: Uuid, user_id: Uuid, now: Instant) {
        self.put(session_id, user_id, Liveness::Dead, now);
    }

    /// Marks every cached session of a user dead.
    pub fn revoke_user(&self, user_id: Uuid) {
        let mut map = self.entries.write().expect("session cache lock poisoned");
        for e in map.values_mut().filter(|e| e.user_id == user_id) {
            e.liveness = Liveness::Dead;
        }
    }

    /// Drops entries not consulted for `max_age` (longer than any access token lives).
    pub fn prune(&self, now: Instant, max_age: Duration) {
        self.entries
            .write()
            .expect("session cache lock poisoned")
            .retain(|_, e| now.saturating_duration_since(e.checked) < max_age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, Roles};

    fn user(id: Uuid) -> Arc<User> {
        Arc::new(User {
            id,
            username: Some("u".into()),
            email: None,
            email_verified: false,
            roles: Roles::new([Role::user()]),
            is_active: true,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        })
    }

    fn is_live(l: Option<Liveness>) -> Option<bool> {
        l.map(|l| matches!(l, Liveness::Live(_)))
    }

    #[test]
    fn a_live_answer_expires_after_the_ttl() {
        let c = SessionCache::new();
        let (s, u, t) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        c.put(s, u, Liveness::Live(user(u)), t);
        assert_eq!(is_live(c.get(s, t)), Some(true));
        assert_eq!(is_live(c.get(s, t + LIVENESS_TTL)), None);
    }

    #[test]
    fn a_dead_answer_never_expires() {
        let c = SessionCache::new();
        let (s, u, t) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        c.revoke(s, u, t);
        assert_eq!(
            is_live(c.get(s, t + Duration::from_secs(3600))),
            Some(false)
        );
    }

    #[test]
    fn revoking_a_user_kills_only_that_users_sessions() {
        let c = SessionCache::new();
        let t = Instant::now();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (s1, s2, s3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        c.put(s1, alice, Liveness::Live(user(alice)), t);
        c.put(s2, alice, Liveness::Live(user(alice)), t);
        c.put(s3, bob, Liveness::Live(user(bob)), t);
        c.revoke_user(alice);
        assert_eq!(is_live(c.get(s1, t)), Some(false));
        assert_eq!(is_live(c.get(s2, t)), Some(false));
        assert_eq!(is_live(c.get(s3, t)), Some(true));
    }
}
