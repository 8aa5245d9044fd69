//! Throttling of logins, signups and refreshes.
//!
//! Two mechanisms sit behind one trait so that a store shared between
//! instances can replace the in-memory one:
//! - *back-off*: after a number of free failures, each further failure doubles
//!   the wait before the next attempt (capped). It never locks an account for
//!   good, and it is keyed per account *and* client IP, so an attacker cannot
//!   lock a victim out from another address (ASVS V6.3.1).
//! - *quota*: a token bucket per key (signups and refreshes per IP).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// Shared limiter state.
pub trait RateLimiter: Send + Sync + 'static {
    /// `Err(wait)` while `key` is backing off.
    fn check_backoff(&self, key: &str, now: Instant) -> Result<(), Duration>;
    /// Counts a failure; after `free` failures the back-off starts.
    fn record_failure(&self, key: &str, free: u32, now: Instant);
    /// Forgets the failures of `key` (a successful login).
    fn clear(&self, key: &str);
    /// Takes one unit of a `per_minute` quota; `Err(wait)` when it is spent.
    fn take(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), Duration>;
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
    per_minute: u32,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let rate = f64::from(self.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(self.per_minute));
        self.refilled = now;
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

fn backoff_for(over: u32) -> Duration {
    // over >= 1: the first failure past the free ones waits BACKOFF_BASE.
    let shift = (over - 1).min(20);
    BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_CAP)
}

impl RateLimiter for InMemoryRateLimiter {
    fn check_backoff(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let map = self.failures.lock();
        match map.get(key).and_then(|f| f.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    fn record_failure(&self, key: &str, free: u32, now: Instant) {
        let mut map = self.failures.lock();
        let entry = map.entry(key.to_owned()).or_insert(Failures {
            count: 0,
            blocked_until: None,
            last: now,
        });
        if now.saturating_duration_since(entry.last) >= FAILURE_MEMORY {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if entry.count > free {
            entry.blocked_until = Some(now + backoff_for(entry.count - free));
        }
    }

    fn clear(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    fn take(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock();
        let bucket = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: f64::from(per_minute),
            refilled: now,
            per_minute,
        });
        bucket.per_minute = per_minute;
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let rate = f64::from(per_minute) / 60.0;
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
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
        b.tokens < f64::from(b.per_minute)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_do_not_block() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        for _ in 0..3 {
            l.record_failure("k", 3, t);
        }
        assert!(l.check_backoff("k", t).is_ok());
    }

    #[test]
    fn back_off_doubles_with_each_further_failure_and_is_capped() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        l.record_failure("k", 0, t);
        assert_eq!(l.check_backoff("k", t).unwrap_err(), Duration::from_secs(1));
        l.record_failure("k", 0, t);
        assert_eq!(l.check_backoff("k", t).unwrap_err(), Duration::from_secs(2));
        l.record_failure("k", 0, t);
        assert_eq!(l.check_backoff("k", t).unwrap_err(), Duration::from_secs(4));
        for _ in 0..40 {
            l.record_failure("k", 0, t);
        }
        assert_eq!(l.check_backoff("k", t).unwrap_err(), BACKOFF_CAP);
    }

    #[test]
    fn back_off_expires_and_never_locks_for_good() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        for _ in 0..10 {
            l.record_failure("k", 0, t);
        }
        assert!(l.check_backoff("k", t + BACKOFF_CAP).is_ok());
    }

    #[test]
    fn clearing_a_key_lifts_its_back_off_but_not_another_keys() {
        let l = InMemoryRateLimiter::new();
        let t = Instant::now();
        l.record_failure("a", 0, t);
        l.record_failure("b", 0, t);
        l.clear("a");
        assert!(l.check_backoff("a", t).is_ok());
        assert!(l.check_backoff("b", t).is_err());
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
        l.record_failure("old", 0, t);
        l.prune(t + FAILURE_MEMORY);
        assert!(l.buckets.lock().is_empty());
        assert!(l.failures.lock().is_empty());
    }
}
