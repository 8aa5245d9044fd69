//! Limiter state in this process's memory: right for one instance.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;
use time::OffsetDateTime;

use super::{FAILURE_MEMORY, Failures, Key, LimitResult, Quota, RateLimiter, millis, unix_millis};

/// Per-process limiter state. Requests never sweep the maps: stale entries
/// are dropped by [`RateLimiter::prune`], which the service runs on a timer,
/// so no request pays for a scan of every key.
#[derive(Debug, Default)]
pub struct InMemoryRateLimiter {
    failures: Mutex<HashMap<Key, Failures>>,
    /// Each quota key's theoretical arrival time (GCRA).
    quotas: Mutex<HashMap<Key, i64>>,
}

impl InMemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held, for tests of pruning.
    pub fn len(&self) -> usize {
        self.failures.lock().len() + self.quotas.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl RateLimiter for InMemoryRateLimiter {
    async fn reserve(&self, key: &Key, free: u32, now: OffsetDateTime) -> LimitResult {
        let now = unix_millis(now);
        let mut map = self.failures.lock();
        // Counted before the password is checked: an attempt in flight
        // already blocks the ones behind it once the free ones are used up.
        match Failures::reserve(map.get(key).copied(), free, now) {
            Ok(state) => {
                map.insert(key.clone(), state);
                Ok(())
            }
            Err(wait) => Err(Failures::refusal(key, free, wait)),
        }
    }

    async fn release(&self, key: &Key) -> anyhow::Result<()> {
        let mut map = self.failures.lock();
        if let Some(entry) = map.get_mut(key) {
            entry.count = entry.count.saturating_sub(1);
            // Nothing left to remember: attempts that were never checked
            // must not leave entries behind (a flood of unknown names).
            if entry.count <= 0 {
                map.remove(key);
            }
        }
        Ok(())
    }

    async fn clear(&self, key: &Key) -> anyhow::Result<()> {
        self.failures.lock().remove(key);
        Ok(())
    }

    async fn take(&self, key: &Key, quota: Quota, now: OffsetDateTime) -> LimitResult {
        let Some(gcra) = quota.gcra_for(key)? else {
            return Ok(());
        };
        let now = unix_millis(now);
        let mut map = self.quotas.lock();
        match gcra.take(map.get(key).copied(), now) {
            Ok(tat) => {
                map.insert(key.clone(), tat);
                Ok(())
            }
            Err(wait) => Err(quota.refusal(key, wait)),
        }
    }

    async fn prune(&self, now: OffsetDateTime) -> anyhow::Result<()> {
        let now = unix_millis(now);
        self.failures
            .lock()
            .retain(|_, f| now - f.last < millis(FAILURE_MEMORY));
        // A bucket whose arrival time has passed is full: it carries nothing.
        self.quotas.lock().retain(|_, tat| *tat > now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limits::{BACKOFF_CAP, LimitError};

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn wait(result: LimitResult) -> Duration {
        match result {
            Err(LimitError::Throttled(t)) => t.wait,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Reserves and fails `n` attempts; the results of each reservation.
    async fn fail(
        l: &InMemoryRateLimiter,
        key: &Key,
        free: u32,
        n: usize,
        t: OffsetDateTime,
    ) -> Vec<bool> {
        let mut ok = Vec::new();
        for _ in 0..n {
            ok.push(l.reserve(key, free, t).await.is_ok());
        }
        ok
    }

    fn key(id: &str) -> Key {
        Key::new("test", id)
    }

    #[tokio::test]
    async fn after_the_free_failures_the_next_attempt_waits() {
        let l = InMemoryRateLimiter::new();
        assert_eq!(fail(&l, &key("k"), 3, 3, t0()).await, [true; 3]);
        assert_eq!(
            wait(l.reserve(&key("k"), 3, t0()).await),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn back_off_doubles_with_each_further_failure_and_is_capped() {
        let l = InMemoryRateLimiter::new();
        let k = key("k");
        let mut t = t0();
        let mut waits = Vec::new();
        for _ in 0..30 {
            l.reserve(&k, 1, t).await.unwrap();
            let w = wait(l.reserve(&k, 1, t).await);
            waits.push(w);
            t += w;
        }
        assert_eq!(waits[..3], [1, 2, 4].map(Duration::from_secs));
        assert_eq!(*waits.last().unwrap(), BACKOFF_CAP);
    }

    #[tokio::test]
    async fn parallel_reservations_get_the_checks_sequential_attempts_would() {
        let l = InMemoryRateLimiter::new();
        // Nothing settled yet: only the free attempts get through.
        let ok = fail(&l, &key("k"), 5, 250, t0()).await;
        assert_eq!(ok.iter().filter(|ok| **ok).count(), 5);
    }

    #[tokio::test]
    async fn a_released_attempt_gives_its_place_back() {
        let l = InMemoryRateLimiter::new();
        let k = key("k");
        fail(&l, &k, 2, 2, t0()).await;
        assert!(l.reserve(&k, 2, t0()).await.is_err());
        l.release(&k).await.unwrap();
        assert!(l.reserve(&k, 2, t0()).await.is_ok());
    }

    #[tokio::test]
    async fn clearing_a_key_lifts_its_back_off_but_not_another_keys() {
        let l = InMemoryRateLimiter::new();
        fail(&l, &key("a"), 1, 1, t0()).await;
        fail(&l, &key("b"), 1, 1, t0()).await;
        l.clear(&key("a")).await.unwrap();
        assert!(l.reserve(&key("a"), 1, t0()).await.is_ok());
        assert!(l.reserve(&key("b"), 1, t0()).await.is_err());
    }

    #[tokio::test]
    async fn a_quota_allows_a_burst_then_refills_over_time() {
        let l = InMemoryRateLimiter::new();
        let k = key("ip");
        for _ in 0..6 {
            l.take(&k, Quota::per_minute(6), t0()).await.unwrap();
        }
        let w = wait(l.take(&k, Quota::per_minute(6), t0()).await);
        assert_eq!(w, Duration::from_secs(10));
        let later = t0() + Duration::from_secs(10);
        assert!(l.take(&k, Quota::per_minute(6), later).await.is_ok());
    }

    #[tokio::test]
    async fn pruning_keeps_only_state_that_matters() {
        let l = InMemoryRateLimiter::new();
        l.take(&key("full"), Quota::per_minute(6), t0())
            .await
            .unwrap();
        l.reserve(&key("old"), 0, t0()).await.unwrap();
        l.reserve(&key("recent"), 0, t0() + FAILURE_MEMORY)
            .await
            .unwrap();
        l.prune(t0() + FAILURE_MEMORY).await.unwrap();
        assert_eq!(l.len(), 1);
    }
}
