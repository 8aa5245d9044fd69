//! Session liveness, cached for a bounded time.
//!
//! An access token is only as good as its session: logout, reuse detection or
//! an admin disabling the user revoke the session, and the token with it. To
//! keep protected requests off the database, the answer "is this session
//! live?" is cached per session for at most [`LIVENESS_TTL`]; every instance
//! sharing the database therefore sees a revocation within that bound. The
//! instance that revokes a session forgets it at once.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use uuid::Uuid;

/// How long a "live" answer may be reused. Half a second leaves margin
/// inside the promise that revocations take effect within one second.
pub const LIVENESS_TTL: Duration = Duration::from_millis(500);

/// Above this many entries, inserting first drops the stale ones.
const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    user_id: Uuid,
    live: bool,
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

    /// The cached answer, if fresh. A revoked session never comes back, so a
    /// "dead" answer stays valid for good.
    pub fn get(&self, session_id: Uuid, now: Instant) -> Option<bool> {
        let map = self.entries.read().expect("session cache lock poisoned");
        let e = map.get(&session_id)?;
        if !e.live || now.saturating_duration_since(e.checked) < LIVENESS_TTL {
            Some(e.live)
        } else {
            None
        }
    }

    pub fn put(&self, session_id: Uuid, user_id: Uuid, live: bool, now: Instant) {
        let mut map = self.entries.write().expect("session cache lock poisoned");
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.saturating_duration_since(e.checked) < LIVENESS_TTL);
        }
        map.insert(
            session_id,
            Entry {
                user_id,
                live,
                checked: now,
            },
        );
    }

    /// Marks one session dead (this instance revoked it).
    pub fn revoke(&self, session_id: Uuid, user_id: Uuid, now: Instant) {
        self.put(session_id, user_id, false, now);
    }

    /// Marks every cached session of a user dead.
    pub fn revoke_user(&self, user_id: Uuid) {
        let mut map = self.entries.write().expect("session cache lock poisoned");
        for e in map.values_mut().filter(|e| e.user_id == user_id) {
            e.live = false;
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

    #[test]
    fn a_live_answer_expires_after_the_ttl() {
        let c = SessionCache::new();
        let (s, u, t) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        c.put(s, u, true, t);
        assert_eq!(c.get(s, t), Some(true));
        assert_eq!(c.get(s, t + LIVENESS_TTL), None);
    }

    #[test]
    fn a_dead_answer_never_expires() {
        let c = SessionCache::new();
        let (s, u, t) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        c.revoke(s, u, t);
        assert_eq!(c.get(s, t + Duration::from_secs(3600)), Some(false));
    }

    #[test]
    fn revoking_a_user_kills_only_that_users_sessions() {
        let c = SessionCache::new();
        let t = Instant::now();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (s1, s2, s3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        c.put(s1, alice, true, t);
        c.put(s2, alice, true, t);
        c.put(s3, bob, true, t);
        c.revoke_user(alice);
        assert_eq!(c.get(s1, t), Some(false));
        assert_eq!(c.get(s2, t), Some(false));
        assert_eq!(c.get(s3, t), Some(true));
    }
}
