//! Session liveness, cached for a bounded time.
//!
//! An access token is only as good as its session: logout, reuse detection or
//! an admin disabling the user revoke the session, and the token with it. To
//! keep protected requests off the database, the answer "is this session live,
//! and whose is it?" is cached per session:
//! - younger than [`LIVENESS_TTL`], it is used as it is;
//! - up to [`MAX_STALENESS`], it is still used, and the session is marked for
//!   the next batched re-check, which asks the database about every marked
//!   session of this instance in one query each [`RECHECK_INTERVAL`] (so a busy
//!   session never waits for the database, and many sessions cost one query);
//! - older, the request waits for a check of its own.
//!
//! Every instance sharing the database therefore refuses a revoked session's
//! tokens within [`MAX_STALENESS`] plus one query. The instance that revokes
//! a session forgets it at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::RwLock;
use uuid::Uuid;

use crate::domain::User;

/// How long a "live" answer is used without a second thought.
pub const LIVENESS_TTL: Duration = Duration::from_millis(400);

/// How long a "live" answer may be used at all; past [`LIVENESS_TTL`] a
/// re-check is under way. 800 ms leaves margin for that check inside the
/// promise that revocations take effect within one second.
pub const MAX_STALENESS: Duration = Duration::from_millis(800);

/// How often the marked sessions are re-checked, all in one query.
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Above this many entries, new live sessions are not cached (they are
/// checked against the database instead) until the next prune makes room.
const MAX_ENTRIES: usize = 200_000;

/// A live session's user, as of the check, with its JSON rendering made at
/// most once per check (a busy session's `/users/me` is then a copy).
#[derive(Debug)]
pub struct LiveUser {
    pub user: User,
    rendered: OnceLock<Bytes>,
}

impl LiveUser {
    pub fn new(user: User) -> Self {
        Self {
            user,
            rendered: OnceLock::new(),
        }
    }

    /// The user rendered by `render`, which runs once per check.
    pub fn rendered(&self, render: impl FnOnce(&User) -> Bytes) -> Bytes {
        self.rendered.get_or_init(|| render(&self.user)).clone()
    }
}

/// What is known of a session.
#[derive(Debug, Clone)]
pub enum Liveness {
    /// Live, with its (active) user as of the check.
    Live(Arc<LiveUser>),
    /// Revoked, expired, or its user disabled or gone. Final.
    Dead,
}

/// A cache answer.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Use this.
    Fresh(Liveness),
    /// Use this; the session is now marked for the next batched re-check.
    Revalidate(Liveness),
    /// Nothing usable: check the session now.
    Miss,
}

#[derive(Debug)]
struct Entry {
    user_id: Uuid,
    liveness: Liveness,
    checked: Instant,
    /// Marked for the next batched re-check.
    revalidating: AtomicBool,
}

/// Requests never sweep the map: [`SessionCache::prune`] runs on a timer, so
/// no request pays for a scan of every entry under the lock.
#[derive(Debug, Default)]
pub struct SessionCache {
    entries: RwLock<HashMap<Uuid, Entry>>,
}

impl SessionCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the cache knows of a session. A dead session never comes back,
    /// so a "dead" answer stays valid for good.
    pub fn get(&self, session_id: Uuid, now: Instant) -> Lookup {
        let lookup = self.look_up(session_id, now);
        let result = match &lookup {
            Lookup::Miss => "miss",
            Lookup::Revalidate(_) => "stale",
            _ => "hit",
        };
        metrics::counter!("authgate_session_cache_total", "result" => result).increment(1);
        lookup
    }

    fn look_up(&self, session_id: Uuid, now: Instant) -> Lookup {
        let map = self.entries.read();
        let Some(e) = map.get(&session_id) else {
            return Lookup::Miss;
        };
        let age = now.saturating_duration_since(e.checked);
        match &e.liveness {
            Liveness::Dead => Lookup::Fresh(Liveness::Dead),
            live if age < LIVENESS_TTL => Lookup::Fresh(live.clone()),
            live if age < MAX_STALENESS => {
                if e.revalidating.swap(true, Ordering::AcqRel) {
                    Lookup::Fresh(live.clone())
                } else {
                    Lookup::Revalidate(live.clone())
                }
            }
            _ => Lookup::Miss,
        }
    }

    pub fn put(&self, session_id: Uuid, user_id: Uuid, liveness: Liveness, now: Instant) {
        let mut map = self.entries.write();
        let known = map.get(&session_id);
        // A session revoked here stays dead, whatever a re-check that was
        // already in flight read before the revocation.
        if matches!(known, Some(e) if matches!(e.liveness, Liveness::Dead)) {
            return;
        }
        // Full: a live answer is only an optimisation, so it is not kept.
        if known.is_none() && map.len() >= MAX_ENTRIES && matches!(liveness, Liveness::Live(_)) {
            return;
        }
        map.insert(
            session_id,
            Entry {
                user_id,
                liveness,
                checked: now,
                revalidating: AtomicBool::new(false),
            },
        );
    }

    /// The sessions marked for a re-check, with their users' ids.
    pub fn marked(&self) -> Vec<(Uuid, Uuid)> {
        let map = self.entries.read();
        map.iter()
            .filter(|(_, e)| {
                matches!(e.liveness, Liveness::Live(_)) && e.revalidating.load(Ordering::Acquire)
            })
            .map(|(session_id, e)| (*session_id, e.user_id))
            .collect()
    }

    /// Marks one session dead (this instance revoked it).
    pub fn revoke(&self, session_id: Uuid, user_id: Uuid, now: Instant) {
        self.put(session_id, user_id, Liveness::Dead, now);
    }

    /// Marks every cached session of a user dead but `keep`.
    pub fn revoke_user_except(&self, user_id: Uuid, keep: Uuid) {
        let mut map = self.entries.write();
        for (_, e) in map
            .iter_mut()
            .filter(|(id, e)| e.user_id == user_id && **id != keep)
        {
            e.liveness = Liveness::Dead;
        }
    }

    /// Puts the user as it is now into every cached live session of it, so
    /// that its own next request sees a change it just made (a verified or
    /// new address, a new username).
    pub fn update_user(&self, user: &User) {
        let live = Arc::new(LiveUser::new(user.clone()));
        let mut map = self.entries.write();
        for e in map.values_mut().filter(|e| e.user_id == user.id) {
            if matches!(e.liveness, Liveness::Live(_)) {
                e.liveness = Liveness::Live(live.clone());
            }
        }
    }

    /// Marks every cached session of a user dead.
    pub fn revoke_user(&self, user_id: Uuid) {
        let mut map = self.entries.write();
        for e in map.values_mut().filter(|e| e.user_id == user_id) {
            e.liveness = Liveness::Dead;
        }
    }

    /// Drops live answers too old to be used, and dead ones older than
    /// `dead_for` (longer than any access token of theirs lives).
    pub fn prune(&self, now: Instant, dead_for: Duration) {
        self.entries.write().retain(|_, e| {
            let age = now.saturating_duration_since(e.checked);
            match e.liveness {
                Liveness::Live(_) => age < MAX_STALENESS,
                Liveness::Dead => age < dead_for,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, Roles};

    fn user(id: Uuid) -> Arc<LiveUser> {
        Arc::new(LiveUser::new(User {
            id,
            username: Some("u".into()),
            email: None,
            email_verified: false,
            roles: Roles::new([Role::user()]),
            is_active: true,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }))
    }

    /// Some(live?) for a usable answer, None for a miss.
    fn is_live(l: Lookup) -> Option<bool> {
        match l {
            Lookup::Fresh(l) | Lookup::Revalidate(l) => Some(matches!(l, Liveness::Live(_))),
            Lookup::Miss => None,
        }
    }

    #[test]
    fn a_live_answer_expires_after_the_ttl() {
        let c = SessionCache::new();
        let (s, u, t) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        c.put(s, u, Liveness::Live(user(u)), t);
        assert_eq!(is_live(c.get(s, t)), Some(true));
        assert_eq!(is_live(c.get(s, t + MAX_STALENESS)), None);
    }

    #[test]
    fn a_stale_live_answer_is_used_and_marked_once_for_a_recheck() {
        let c = SessionCache::new();
        let (s, u, t) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        c.put(s, u, Liveness::Live(user(u)), t);
        assert!(matches!(c.get(s, t), Lookup::Fresh(_)));
        let stale = t + LIVENESS_TTL;
        assert!(matches!(
            c.get(s, stale),
            Lookup::Revalidate(Liveness::Live(_))
        ));
        assert!(matches!(c.get(s, stale), Lookup::Fresh(Liveness::Live(_))));
        assert_eq!(c.marked(), vec![(s, u)]);
        c.put(s, u, Liveness::Live(user(u)), stale);
        assert!(matches!(c.get(s, stale), Lookup::Fresh(_)));
        assert!(c.marked().is_empty());
    }

    #[test]
    fn a_late_recheck_cannot_revive_a_session_revoked_here() {
        let c = SessionCache::new();
        let (s, u, t) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        c.revoke(s, u, t);
        c.put(s, u, Liveness::Live(user(u)), t);
        assert_eq!(is_live(c.get(s, t)), Some(false));
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

    #[test]
    fn pruning_drops_unusable_live_answers_and_old_dead_ones() {
        let c = SessionCache::new();
        let t = Instant::now();
        let (fresh, stale, dead, old_dead) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let u = Uuid::new_v4();
        c.put(stale, u, Liveness::Live(user(u)), t);
        c.revoke(old_dead, u, t);
        let later = t + Duration::from_secs(60);
        c.put(fresh, u, Liveness::Live(user(u)), later);
        c.revoke(dead, u, later);
        c.prune(later, Duration::from_secs(30));
        assert_eq!(is_live(c.get(fresh, later)), Some(true));
        assert_eq!(is_live(c.get(dead, later)), Some(false));
        assert_eq!(c.entries.read().len(), 2);
    }
}
