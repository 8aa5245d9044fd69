//! Limiter state in Redis (`AUTHGATE_REDIS_URL`), for deployments that run
//! one: each check is one Lua script, which Redis runs atomically.

use std::time::Duration;

use async_trait::async_trait;
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::shared::{SharedRateLimiter, SharedState};
use crate::store::{BackoffRule, FailureState, QuotaState};

/// GCRA, as `Gcra::take`: KEYS[1]; ARGV now, interval, window (ms).
/// Answers {granted, arrival time}.
const TAKE_UNIT: &str = r"
local now, interval, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next = tat + interval
if next - now <= window then
  redis.call('SET', KEYS[1], next, 'PX', math.max(next - now, 1))
  return {1, next}
end
return {0, tat}
";

/// Back-off, as `Failures::reserve`: KEYS[1]; ARGV now, free, memory, base,
/// cap, largest doubling (ms). Answers {granted, failures, last}.
const RESERVE_ATTEMPT: &str = r"
local now, free, memory = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local base, cap, max_shift = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local count = tonumber(redis.call('HGET', KEYS[1], 'c') or 0)
local last = tonumber(redis.call('HGET', KEYS[1], 'l') or 0)
if now - last >= memory then count = 0 end
local over = count - free
local wait = 0
if over >= 0 then wait = math.min(base * 2 ^ math.min(over, max_shift), cap) end
if wait > 0 and last + wait > now then return {0, count, last} end
count = count + 1
if last > now then now = last end
redis.call('HSET', KEYS[1], 'c', count, 'l', now)
redis.call('PEXPIRE', KEYS[1], memory)
return {1, count, now}
";

/// Takes one attempt back: KEYS[1].
const RELEASE_ATTEMPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], 'c', -1) <= 0 then redis.call('DEL', KEYS[1]) end
return 1
";

/// How long a Redis call may take before the request is refused (503):
/// a check on every login must never hang with its server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis connection and the scripts.
pub struct RedisState {
    connection: ConnectionManager,
    prefix: String,
    take_unit: Script,
    reserve_attempt: Script,
    release_attempt: Script,
}

/// Limiter state in Redis. Keys expire by themselves, so nothing is pruned.
pub type RedisRateLimiter = SharedRateLimiter<RedisState>;

impl RedisRateLimiter {
    /// Connects to the Redis server at `url` (`redis://host:port/db`); every
    /// key starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(RESPONSE_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(200);
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self::with_state(RedisState {
            connection,
            prefix: prefix.to_owned(),
            take_unit: Script::new(TAKE_UNIT),
            reserve_attempt: Script::new(RESERVE_ATTEMPT),
            release_attempt: Script::new(RELEASE_ATTEMPT),
        }))
    }
}

impl RedisState {
    fn quota_key(&self, key: &[u8; 32]) -> String {
        format!("{}:limit:q:{}", self.prefix, hex(key))
    }

    fn failures_key(&self, key: &[u8; 32]) -> String {
        format!("{}:limit:f:{}", self.prefix, hex(key))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl SharedState for RedisState {
    async fn take_unit(
        &self,
        key: &[u8; 32],
        now: i64,
        interval: i64,
        window: i64,
    ) -> anyhow::Result<QuotaState> {
        let (granted, tat): (i64, i64) = self
            .take_unit
            .key(self.quota_key(key))
            .arg(now)
            .arg(interval)
            .arg(window)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(QuotaState {
            allowed: granted == 1,
            tat,
        })
    }

    async fn reserve_attempt(
        &self,
        key: &[u8; 32],
        now: i64,
        rule: &BackoffRule,
    ) -> anyhow::Result<FailureState> {
        let (granted, failures, last_at): (i64, i64, i64) = self
            .reserve_attempt
            .key(self.failures_key(key))
            .arg(now)
            .arg(rule.free)
            .arg(rule.memory)
            .arg(rule.base)
            .arg(rule.cap)
            .arg(rule.max_shift)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(FailureState {
            allowed: granted == 1,
            failures,
            last_at,
        })
    }

    async fn release_attempt(&self, key: &[u8; 32]) -> anyhow::Result<()> {
        let _: i64 = self
            .release_attempt
            .key(self.failures_key(key))
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    async fn clear_failures(&self, key: &[u8; 32]) -> anyhow::Result<()> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.failures_key(key))
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    async fn purge(&self, _now: i64, _batch: u32) -> anyhow::Result<u64> {
        Ok(0)
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }
}
