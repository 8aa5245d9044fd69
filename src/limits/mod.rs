//! Throttling of logins, signups, refreshes, mail and links.
//!
//! Two mechanisms sit behind one trait, with three places to keep their
//! state: this process's memory ([`InMemoryRateLimiter`]), the database
//! every instance shares ([`StoreRateLimiter`]) or Redis ([`RedisRateLimiter`]).
//! Several instances must share the state, or N instances give an attacker N
//! times the attempts. All three make the same decisions, computed by the
//! functions of this module (the SQL and the Lua scripts spell out the same
//! arithmetic in one atomic statement each):
//! - *back-off*: after a number of free failures, the next attempt waits, and
//!   each further failure doubles the wait (capped). Attempts are counted
//!   when they start, not when they fail, so a burst of simultaneous guesses
//!   gets no more checks than the same guesses one after another. It never
//!   locks an account for good, and it is keyed per account *and* client IP,
//!   so an attacker cannot lock a victim out from another address (ASVS V6.3.1).
//! - *quota*: GCRA (the generic cell rate algorithm, a token bucket kept as
//!   one number) per key: `count` units per period, all of which may be spent
//!   at once.
//!
//! Times are wall-clock milliseconds from the services' clock, so instances
//! share them and tests can move them.

mod memory;
mod redis;
mod shared;

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use async_trait::async_trait;
use time::OffsetDateTime;

pub use memory::InMemoryRateLimiter;
pub use redis::RedisRateLimiter;
pub use shared::StoreRateLimiter;

/// What throttling counts a client address by: an IPv4 address itself, an
/// IPv6 address by its /64 network. One subscriber usually holds a whole /64
/// and could otherwise take a fresh address for every attempt.
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// What a limit counts: a named bucket (`login`, `signup`, …, also the name
/// of its policy in the `RateLimit` headers) and whom in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    bucket: &'static str,
    id: String,
}

impl Key {
    pub fn new(bucket: &'static str, id: impl fmt::Display) -> Self {
        Self {
            bucket,
            id: id.to_string(),
        }
    }

    pub fn bucket(&self) -> &'static str {
        self.bucket
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.bucket, self.id)
    }
}

/// A refusal: how long to wait, and the policy that refused, for the
/// `Retry-After`, `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub wait: Duration,
    /// The bucket's name.
    pub policy: &'static str,
    /// Units (or free failures) the policy allows.
    pub limit: u32,
    /// The period the units refill over; none for a back-off.
    pub window: Option<Duration>,
}

/// Why a limiter did not allow a request.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("throttled for {:?} by {}", .0.wait, .0.policy)]
    Throttled(Throttle),
    /// The shared state cannot be reached: the request is refused, never
    /// let through unchecked (fail closed).
    #[error("throttling state unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

pub type LimitResult = Result<(), LimitError>;

/// Limiter state, in memory or shared between instances.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Reserves one attempt on `key`, counted as a failure from now on so
    /// that simultaneous attempts see each other: N parallel attempts get
    /// exactly the checks N sequential ones would. After `free` counted
    /// failures the back-off starts.
    async fn reserve(&self, key: &Key, free: u32, now: OffsetDateTime) -> LimitResult;
    /// Takes back a reserved attempt that turned out not to be a failure (it
    /// succeeded, or was never checked).
    async fn release(&self, key: &Key) -> anyhow::Result<()>;
    /// Forgets the failures of `key` (a successful login).
    async fn clear(&self, key: &Key) -> anyhow::Result<()>;
    /// Takes one unit of `quota`.
    async fn take(&self, key: &Key, quota: Quota, now: OffsetDateTime) -> LimitResult;
    /// Drops state that no longer affects any decision.
    async fn prune(&self, now: OffsetDateTime) -> anyhow::Result<()>;
    /// Whether the state can be reached (readiness).
    async fn ready(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Back-off after the free failures: 1 s, 2 s, 4 s, … up to this cap.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one.
pub(crate) const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);
/// A quota of nothing never refills: its wait.
const NEVER: Duration = Duration::from_secs(86_400);

/// `count` units per `per`, of which all may be spent at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub count: u32,
    pub per: Duration,
}

impl Quota {
    pub fn per_minute(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(60),
        }
    }

    /// How a take from this quota is decided.
    pub(crate) fn plan(self) -> Plan {
        if self.count == 0 {
            return Plan::Never;
        }
        let interval = millis(self.per) / i64::from(self.count);
        // More than one unit a millisecond: no limit that milliseconds can
        // keep. Requests of several threads and instances arrive a little
        // out of order, and with no interval there would be no slack for it.
        if interval == 0 {
            return Plan::Unlimited;
        }
        Plan::Gcra(Gcra {
            interval,
            window: interval.saturating_mul(i64::from(self.count)),
        })
    }

    /// What a take from this quota needs: the GCRA to check it against, none
    /// when it is granted without a check, or the refusal of a quota of
    /// nothing.
    pub(crate) fn gcra_for(self, key: &Key) -> Result<Option<Gcra>, LimitError> {
        match self.plan() {
            Plan::Never => Err(self.refusal(key, millis(NEVER))),
            Plan::Unlimited => Ok(None),
            Plan::Gcra(gcra) => Ok(Some(gcra)),
        }
    }

    fn refusal(self, key: &Key, wait_ms: i64) -> LimitError {
        LimitError::Throttled(Throttle {
            wait: Duration::from_millis(wait_ms.max(1).unsigned_abs()),
            policy: key.bucket,
            limit: self.count,
            window: Some(self.per),
        })
    }
}

/// How a quota decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// A quota of nothing: every take is refused.
    Never,
    /// Finer than a millisecond: every take is granted, nothing is kept.
    Unlimited,
    Gcra(Gcra),
}

/// A quota as GCRA sees it (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    pub interval: i64,
    pub window: i64,
}

impl Gcra {
    /// One unit taken at `now` from a bucket whose theoretical arrival time
    /// is `tat` (none: a full bucket): the new arrival time, or the wait.
    pub(crate) fn take(self, tat: Option<i64>, now: i64) -> Result<i64, i64> {
        let next = tat.unwrap_or(now).max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead <= self.window {
            Ok(next)
        } else {
            Err(ahead - self.window)
        }
    }
}

/// A key's counted failures and when the last was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failures {
    pub count: i64,
    pub last: i64,
}

impl Failures {
    /// The wait `now` is still in, 0 when an attempt may start.
    pub(crate) fn wait(self, free: u32, now: i64) -> i64 {
        let backoff = backoff_after(self.count, free);
        // No back-off due: never a wait, even if another instance counted
        // the last failure at a later time than this one's `now`.
        if backoff == 0 || now - self.last >= millis(FAILURE_MEMORY) {
            return 0;
        }
        (self.last + backoff - now).max(0)
    }

    /// One attempt at `now`: the new state, or the wait.
    pub(crate) fn reserve(state: Option<Self>, free: u32, now: i64) -> Result<Self, i64> {
        let Some(state) = state else {
            return Ok(Self {
                count: 1,
                last: now,
            });
        };
        let wait = state.wait(free, now);
        if wait > 0 {
            return Err(wait);
        }
        let expired = now - state.last >= millis(FAILURE_MEMORY);
        Ok(Self {
            count: if expired { 1 } else { state.count + 1 },
            last: now.max(state.last),
        })
    }

    fn refusal(key: &Key, free: u32, wait_ms: i64) -> LimitError {
        LimitError::Throttled(Throttle {
            wait: Duration::from_millis(wait_ms.max(1).unsigned_abs()),
            policy: key.bucket,
            limit: free,
            window: None,
        })
    }
}

/// The largest shift of the back-off's doubling; beyond it the cap holds.
pub(crate) const BACKOFF_MAX_SHIFT: i64 = 20;

/// The wait after the `count`-th failure (ms), with `free` failures free:
/// none before the `free`-th, then 1 s, 2 s, 4 s, … up to the cap.
pub(crate) fn backoff_after(count: i64, free: u32) -> i64 {
    let over = count - i64::from(free);
    if over < 0 {
        return 0;
    }
    (millis(BACKOFF_BASE) << over.min(BACKOFF_MAX_SHIFT)).min(millis(BACKOFF_CAP))
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn unix_millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_ne!(client_bucket(a), client_bucket(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_bucket(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_bucket(mapped), v4);
    }

    #[test]
    fn a_gcra_bucket_allows_its_count_at_once_and_then_one_per_interval() {
        let Plan::Gcra(g) = Quota::per_minute(6).plan() else {
            panic!("a GCRA quota");
        };
        assert_eq!(g.interval, 10_000);
        let mut tat = None;
        for _ in 0..6 {
            tat = Some(g.take(tat, 0).unwrap());
        }
        assert_eq!(g.take(tat, 0), Err(10_000));
        assert_eq!(g.take(tat, 9_999), Err(1));
        assert!(g.take(tat, 10_000).is_ok());
    }

    #[test]
    fn a_quota_of_nothing_refuses_one_finer_than_a_millisecond_grants_and_an_odd_count_keeps_its_burst()
     {
        assert_eq!(Quota::per_minute(0).plan(), Plan::Never);
        assert_eq!(Quota::per_minute(100_000_000).plan(), Plan::Unlimited);
        let Plan::Gcra(g) = Quota::per_minute(7).plan() else {
            panic!("a GCRA quota");
        };
        let mut tat = None;
        for _ in 0..7 {
            tat = Some(g.take(tat, 0).unwrap());
        }
        assert!(g.take(tat, 0).is_err());
    }

    #[test]
    fn back_off_starts_at_the_free_failures_doubles_and_is_capped() {
        assert_eq!(backoff_after(2, 3), 0);
        assert_eq!(backoff_after(3, 3), 1_000);
        assert_eq!(backoff_after(5, 3), 4_000);
        assert_eq!(backoff_after(1_000, 3), millis(BACKOFF_CAP));
        assert_eq!(backoff_after(i64::MAX, 0), millis(BACKOFF_CAP));
    }

    #[test]
    fn failures_are_forgotten_an_hour_after_the_last() {
        let f = Failures { count: 50, last: 0 };
        assert!(f.wait(3, 1) > 0);
        let later = millis(FAILURE_MEMORY);
        assert_eq!(f.wait(3, later), 0);
        assert_eq!(Failures::reserve(Some(f), 3, later).unwrap().count, 1);
    }
}
