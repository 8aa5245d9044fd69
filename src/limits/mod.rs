//! Throttling of logins, signups and refreshes.
//!
//! Two mechanisms sit behind one trait so that a store shared between
//! instances can replace the in-memory one:
//! - *back-off*: after a number of free failures, the next attempt waits, and
//!   each further failure doubles the wait (capped). Attempts are counted
//!   when they start, not when they fail, so a burst of simultaneous guesses
//!   gets no more checks than the same guesses one after another. It never locks an account for
//!   good, and it is keyed per account *and* client IP, so an attacker cannot
//!   lock a victim out from another address (ASVS V6.3.1).
//! - *quota*: a token bucket per key (signups and refreshes per IP).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

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

/// Shared limiter state.
pub trait RateLimiter: Send + Sync + 'static {
    /// Reserves one attempt on `key`, counted as a failure from now on so
    /// that simultaneous attempts see each other: N parallel attempts get
    /// exactly the checks N sequential ones would. After `free` counted
    /// failures the back-off starts. `Err(wait)` while `key` is backing off.
    fn reserve(&self, key: &str, free: u32, now: Instant) -> Result<(), Duration>;
    /// Takes back a reserved attempt that turned out not to be a failure (it
    /// succeeded, or was never checked).
    fn release(&self, key: &str, free: u32);
    /// Forgets the failures of `key` (a successful login).
    fn clear(&self, key: &str);
    /// Takes one unit of a `per_minute` quota; `Err(wait)` when it is spent.
    fn take(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        self.take_quota(key, Quota::per_minute(per_minute), now)
    }
    /// Takes one unit of `quota`; `Err(wait)` when it is spent.
    fn take_quota(&self, key: &str, quota: Quota, now: Instant) -> Result<(), Duration>;
    /// Drops state that no longer affects any decision.
    fn prune(&self, now: Instant);
}

/// Back-off after the free failures: 1 s, 2 s, 4 s, … up to this cap.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one.
const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    quota: Quota,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.quota.rate()).min(f64::from(self.quota.count));
        self.refilled = now;
    }
}

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

    /// Units per second.
    fn rate(self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

/// Per-process limiter state. Requests never sweep the maps: stale entries
/// are dropped by [`RateLimiter::prune`], which the service runs on a timer,
/// so no request pays for a scan of every key.
#[derive(Debug, Default)]
pub struct InMemoryRateLimiter {
    failures: Mutex<HashMap<String, Failures>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl InMemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The wait after the `count`-th failure, with `free` failures free: none
/// before the `free`-th, then 1 s, 2 s, 4 s, … up to the cap.
fn backoff_after(count: u32, free: u32) -> Option<Duration> {
    let over = count.checked_sub(free)?;
    let shift = over.min(20);
    Some(BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_CAP))
}

impl RateLimiter for InMemoryRateLimiter {
    fn reserve(&self, key: &str, free: u32, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock();
        let entry = map.entry(key.to_owned()).or_insert(Failures {
            count: 0,
            blocked_until: None,
            last: now,
        });
        if now.saturating_duration_since(entry.last) >= FAILURE_MEMORY {
            *entry = Failures {
                count: 0,
                blocked_until: None,
                last: now,
            };
        }
        if let Some(until) = entry.blocked_until
            && until > now
        {
            return Err(until - now);
        }
        // Counted before the password is checked: an attempt in flight
        // already blocks the ones behind it once the free ones are used up.
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entry.blocked_until = backoff_after(entry.count, free).map(|wait| now + wait);
        Ok(())
    }

    fn release(&self, key: &str, free: u32) {
        let mut map = self.failures.lock();
        if let Some(entry) = map.get_mut(key) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count < free {
                entry.blocked_until = None;
            }
            // Nothing left to remember: attempts that were never checked
            // must not leave entries behind (a flood of unknown names).
            if entry.count == 0 {
                map.remove(key);
            }
        }
    }

    fn clear(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    fn take_quota(&self, key: &str, quota: Quota, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock();
        let bucket = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: f64::from(quota.count),
            refilled: now,
            quota,
        });
        bucket.quota = quota;
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // A quota of nothing never refills: wait a day rather than panic
            // on an infinite duration.
            let wait = (1.0 - bucket.tokens) / quota.rate();
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(86_400)))
        }
    }

    fn prune(&self, now: Instant) {
        self.failures
            .lock()
            .retain(|_, f| now.saturating_duration_since(f.last) < FAILURE_MEMORY);
        prune_buckets(&mut self.buckets.lock(), now);
    }
}

/// A bucket that has refilled completely carries no information.
fn prune_buckets(map: &mut HashMap<String, Bucket>, now: Instant) {
    map.retain(|_, b| {
        let mut b = *b;
        b.refill(now);
        b.tokens < f64::from(b.quota.count)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves and fails `n` attempts; the results of each reservation.
    fn fail(l: &InMemoryRateLimiter, key: &str, free: u32, n: usize, t: Instant) -> Vec<bool> {
        (0..n).map(|_| l.reserve(key, free, t).is_ok()).collect()
    }

    #[test]
    fn after_the_free_failures_the_next_attempt_waits() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        assert_eq!(fail(&l, "k", 3, 3, t), [true; 3]);
        assert_eq!(l.reserve("k", 3, t), Err(Duration::from_secs(1)));
    }

    #[test]
    fn back_off_doubles_with_each_further_failure_and_is_capped() {
        let l = InMemoryRateLimiter::new();
        let mut t = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..30 {
            l.reserve("k", 1, t).unwrap();
            let wait = l.reserve("k", 1, t).unwrap_err();
            waits.push(wait);
            t += wait;
        }
        assert_eq!(waits[..3], [1, 2, 4].map(Duration::from_secs));
        assert_eq!(*waits.last().unwrap(), BACKOFF_CAP);
    }

    #[test]
    fn parallel_reservations_get_the_checks_sequential_attempts_would() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        // Nothing settled yet: only the free attempts get through.
        let ok = fail(&l, "k", 5, 250, t).iter().filter(|ok| **ok).count();
        assert_eq!(ok, 5);
    }

    #[test]
    fn a_released_attempt_gives_its_place_back() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        fail(&l, "k", 2, 2, t);
        assert!(l.reserve("k", 2, t).is_err());
        l.release("k", 2);
        assert!(l.reserve("k", 2, t).is_ok());
    }

    #[test]
    fn back_off_expires_and_never_locks_for_good() {
        let l = InMemoryRateLimiter::new();
        let mut t = Instant::now();
        for _ in 0..40 {
            l.reserve("k", 1, t).unwrap();
            t += l.reserve("k", 1, t).unwrap_err();
        }
        assert!(l.reserve("k", 1, t + BACKOFF_CAP).is_ok());
    }

    #[test]
    fn clearing_a_key_lifts_its_back_off_but_not_another_keys() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        fail(&l, "a", 1, 1, t);
        fail(&l, "b", 1, 1, t);
        l.clear("a");
        assert!(l.reserve("a", 1, t).is_ok());
        assert!(l.reserve("b", 1, t).is_err());
    }

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
    fn a_quota_allows_a_burst_then_refills_over_time() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        for _ in 0..6 {
            l.take("ip", 6, t).unwrap();
        }
        let wait = l.take("ip", 6, t).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert!(l.take("ip", 6, t + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn pruning_keeps_only_state_that_matters() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        l.take("full", 6, t).unwrap();
        l.reserve("old", 0, t).unwrap();
        l.prune(t + FAILURE_MEMORY);
        assert!(l.buckets.lock().is_empty());
        assert!(l.failures.lock().is_empty());
    }
}
