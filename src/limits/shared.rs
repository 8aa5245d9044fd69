//! Limiter state every instance shares: in the database or in Redis.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    BACKOFF_BASE, BACKOFF_CAP, BACKOFF_MAX_SHIFT, FAILURE_MEMORY, Failures, Key, LimitError,
    LimitResult, Quota, RateLimiter, millis, unix_millis,
};
use crate::store::{BackoffRule, FailureState, LimitStore, QuotaState};

/// Rows a purge deletes at a time.
const PURGE_BATCH: u32 = 10_000;

/// Where shared limiter state lives. Each call is one atomic step (one
/// statement, one script), so instances racing on one key see each other.
#[async_trait]
pub(super) trait SharedState: Send + Sync + 'static {
    async fn take_unit(
        &self,
        key: &[u8; 32],
        now: i64,
        interval: i64,
        window: i64,
    ) -> anyhow::Result<QuotaState>;
    async fn reserve_attempt(
        &self,
        key: &[u8; 32],
        now: i64,
        rule: &BackoffRule,
    ) -> anyhow::Result<FailureState>;
    async fn release_attempt(&self, key: &[u8; 32]) -> anyhow::Result<()>;
    async fn clear_failures(&self, key: &[u8; 32]) -> anyhow::Result<()>;
    /// Deletes up to `batch` rows that no longer matter; how many.
    async fn purge(&self, now: i64, batch: u32) -> anyhow::Result<u64>;
    /// Whether the state answers.
    async fn ping(&self) -> anyhow::Result<()>;
}

/// Limiter state shared by every instance.
///
/// A quota refused here is remembered in this process until it refills, so
/// a client hammering a spent quota costs the shared state nothing more.
/// Only quotas: nothing lifts a quota early, while a back-off is lifted by a
/// successful login on any instance.
pub struct SharedRateLimiter<S> {
    state: S,
    /// Spent quotas: until when, and the quota.
    spent: Mutex<HashMap<Key, (i64, Quota)>>,
}

impl<S> SharedRateLimiter<S> {
    pub(super) fn with_state(state: S) -> Self {
        Self {
            state,
            spent: Mutex::default(),
        }
    }
}

/// The database's [`LimitStore`] as shared limiter state.
pub struct DatabaseState(Arc<dyn LimitStore>);

/// Limiter state in the database: one atomic statement per check.
pub type StoreRateLimiter = SharedRateLimiter<DatabaseState>;

impl StoreRateLimiter {
    pub fn new(store: Arc<dyn LimitStore>) -> Self {
        Self::with_state(DatabaseState(store))
    }
}

#[async_trait]
impl SharedState for DatabaseState {
    async fn take_unit(
        &self,
        key: &[u8; 32],
        now: i64,
        interval: i64,
        window: i64,
    ) -> anyhow::Result<QuotaState> {
        Ok(self.0.take_unit(key, now, interval, window).await?)
    }

    async fn reserve_attempt(
        &self,
        key: &[u8; 32],
        now: i64,
        rule: &BackoffRule,
    ) -> anyhow::Result<FailureState> {
        Ok(self.0.reserve_attempt(key, now, rule).await?)
    }

    async fn release_attempt(&self, key: &[u8; 32]) -> anyhow::Result<()> {
        Ok(self.0.release_attempt(key).await?)
    }

    async fn clear_failures(&self, key: &[u8; 32]) -> anyhow::Result<()> {
        Ok(self.0.clear_failures(key).await?)
    }

    async fn purge(&self, now: i64, batch: u32) -> anyhow::Result<u64> {
        Ok(self
            .0
            .purge_limits(now, millis(FAILURE_MEMORY), batch)
            .await?)
    }

    /// The database's readiness is checked on its own.
    async fn ping(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The digest a key is stored under: login names (sometimes a password
/// typed in the wrong field) and addresses stay out of the shared table.
pub(super) fn digest(key: &Key) -> [u8; 32] {
    Sha256::digest(key.to_string().as_bytes()).into()
}

pub(super) fn rule(free: u32) -> BackoffRule {
    BackoffRule {
        free: i64::from(free),
        base: millis(BACKOFF_BASE),
        max_shift: BACKOFF_MAX_SHIFT,
        cap: millis(BACKOFF_CAP),
        memory: millis(FAILURE_MEMORY),
    }
}

#[async_trait]
impl<S: SharedState> RateLimiter for SharedRateLimiter<S> {
    async fn reserve(&self, key: &Key, free: u32, now: OffsetDateTime) -> LimitResult {
        let now = unix_millis(now);
        let state = self
            .state
            .reserve_attempt(&digest(key), now, &rule(free))
            .await
            .map_err(LimitError::Unavailable)?;
        if state.allowed {
            return Ok(());
        }
        let failures = Failures {
            count: state.failures,
            last: state.last_at,
        };
        Err(Failures::refusal(key, free, failures.wait(free, now)))
    }

    async fn release(&self, key: &Key) -> anyhow::Result<()> {
        self.state.release_attempt(&digest(key)).await
    }

    async fn clear(&self, key: &Key) -> anyhow::Result<()> {
        self.state.clear_failures(&digest(key)).await
    }

    async fn take(&self, key: &Key, quota: Quota, now: OffsetDateTime) -> LimitResult {
        let Some(gcra) = quota.gcra_for(key)? else {
            return Ok(());
        };
        let now = unix_millis(now);
        if let Some((until, quota)) = self.spent.lock().get(key)
            && *until > now
        {
            return Err(quota.refusal(key, until - now));
        }
        let state = self
            .state
            .take_unit(&digest(key), now, gcra.interval, gcra.window)
            .await
            .map_err(LimitError::Unavailable)?;
        if state.allowed {
            return Ok(());
        }
        // Refused: the next unit is due when the arrival time is back within
        // the window.
        let until = state.tat + gcra.interval - gcra.window;
        self.spent.lock().insert(key.clone(), (until, quota));
        Err(quota.refusal(key, until - now))
    }

    async fn ready(&self) -> anyhow::Result<()> {
        self.state.ping().await
    }

    async fn prune(&self, now: OffsetDateTime) -> anyhow::Result<()> {
        let now = unix_millis(now);
        self.spent.lock().retain(|_, (until, _)| *until > now);
        loop {
            let deleted = self.state.purge(now, PURGE_BATCH).await?;
            if deleted < u64::from(PURGE_BATCH) {
                return Ok(());
            }
        }
    }
}
