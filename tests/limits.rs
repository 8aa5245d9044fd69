//! One conformance suite for the limiters: in memory, in SQLite, in
//! PostgreSQL and in Redis they make the same decisions, and the shared ones
//! make them together: several instances on one state allow what one would.

mod common;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use authgate::{
    config::DatabaseUrl,
    limits::{
        InMemoryRateLimiter, Key, LimitError, LimitResult, Quota, RateLimiter, RedisRateLimiter,
        StoreRateLimiter,
    },
    store,
};
use common::{Backend, TestDb};
use libtest_mimic::{Arguments, Failed, Trial};
use time::OffsetDateTime;
use uuid::Uuid;

/// Where a limiter under test keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
}

const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn redis_url() -> String {
    std::env::var("AUTHGATE_TEST_REDIS_URL").unwrap_or_else(|_| REDIS_URL.into())
}

/// Whether Redis answers; under CI an unreachable server fails the tests.
fn redis_reachable() -> bool {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let url = redis_url();
    let reached = runtime.block_on(async {
        let connect = RedisRateLimiter::connect(&url, "authgate-probe");
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("no answer within 5 s".into()),
        }
    });
    match reached {
        Ok(()) => true,
        Err(e)
            if std::env::var_os("CI").is_some()
                || std::env::var_os("AUTHGATE_TEST_REQUIRE_REDIS").is_some() =>
        {
            panic!("Redis is required but unreachable at {}: {e}", redis_url())
        }
        Err(e) => {
            eprintln!(
                "note: Redis tests ignored, unreachable at {}: {e}",
                redis_url()
            );
            false
        }
    }
}

/// `n` limiters on one state, as `n` instances would hold them, and what
/// keeps the state alive.
async fn instances(kind: Kind, n: usize) -> (Vec<Arc<dyn RateLimiter>>, Option<TestDb>) {
    match kind {
        Kind::Memory => {
            let one: Arc<dyn RateLimiter> = Arc::new(InMemoryRateLimiter::new());
            (vec![one; n], None)
        }
        Kind::Sqlite | Kind::Postgres => {
            let backend = if kind == Kind::Sqlite {
                Backend::Sqlite
            } else {
                Backend::Postgres
            };
            let db = TestDb::new(backend).await;
            let url: DatabaseUrl = db.url.parse().unwrap();
            let mut limiters: Vec<Arc<dyn RateLimiter>> = Vec::new();
            for _ in 0..n {
                let store = store::open(&url).await.unwrap();
                limiters.push(Arc::new(StoreRateLimiter::new(store)));
            }
            (limiters, Some(db))
        }
        Kind::Redis => {
            // A prefix of its own: tests share the server.
            let prefix = format!("authgate-test-{}", Uuid::new_v4().simple());
            let mut limiters: Vec<Arc<dyn RateLimiter>> = Vec::new();
            for _ in 0..n {
                let limiter = RedisRateLimiter::connect(&redis_url(), &prefix)
                    .await
                    .unwrap();
                limiters.push(Arc::new(limiter));
            }
            (limiters, None)
        }
    }
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn key(id: &str) -> Key {
    Key::new("test", id)
}

fn wait(result: LimitResult) -> Duration {
    match result {
        Err(LimitError::Throttled(t)) => t.wait,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn after_the_free_failures_the_next_attempt_waits_on_every_instance(kind: Kind) {
    let (l, _db) = instances(kind, 3).await;
    let k = key("alice");
    for instance in &l {
        instance.reserve(&k, 3, t0()).await.unwrap();
    }
    for (i, instance) in l.iter().enumerate() {
        let refused = instance.reserve(&k, 3, t0()).await;
        assert_eq!(wait(refused), secs(1), "instance {i}");
    }
    assert!(l[1].reserve(&k, 3, t0() + secs(1)).await.is_ok());
}

async fn an_instance_whose_clock_is_behind_is_not_held_back_when_no_back_off_is_due(kind: Kind) {
    let (l, _db) = instances(kind, 2).await;
    let k = key("skew");
    l[0].reserve(&k, 10, t0() + secs(2)).await.unwrap();
    l[1].reserve(&k, 10, t0()).await.unwrap();
    // Its failure counts all the same.
    for _ in 0..8 {
        l[0].reserve(&k, 10, t0() + secs(2)).await.unwrap();
    }
    assert!(l[1].reserve(&k, 10, t0() + secs(2)).await.is_err());
}

async fn back_off_doubles_with_each_failure_and_is_capped(kind: Kind) {
    let (l, _db) = instances(kind, 2).await;
    let k = key("k");
    let mut t = t0();
    let mut waits = Vec::new();
    for round in 0..25 {
        l[round % 2].reserve(&k, 1, t).await.unwrap();
        let w = wait(l[(round + 1) % 2].reserve(&k, 1, t).await);
        waits.push(w);
        t += w;
    }
    assert_eq!(waits[..4], [1, 2, 4, 8].map(secs));
    assert_eq!(*waits.last().unwrap(), secs(15 * 60));
}

async fn parallel_reservations_on_three_instances_get_only_the_free_attempts(kind: Kind) {
    let (l, _db) = instances(kind, 3).await;
    let k = key("target");
    let attempts = (0..90).map(|i| {
        let (l, k) = (l[i % 3].clone(), k.clone());
        async move { l.reserve(&k, 5, t0()).await.is_ok() }
    });
    let granted = futures::future::join_all(attempts).await;
    assert_eq!(granted.iter().filter(|ok| **ok).count(), 5);
}

async fn a_released_attempt_gives_its_place_back_and_a_clear_forgets_all(kind: Kind) {
    let (l, _db) = instances(kind, 2).await;
    let (a, b) = (key("a"), key("b"));
    for _ in 0..2 {
        l[0].reserve(&a, 2, t0()).await.unwrap();
        l[0].reserve(&b, 2, t0()).await.unwrap();
    }
    assert!(l[1].reserve(&a, 2, t0()).await.is_err());
    l[1].release(&a).await.unwrap();
    assert!(l[0].reserve(&a, 2, t0()).await.is_ok());
    l[1].clear(&b).await.unwrap();
    for _ in 0..2 {
        assert!(l[0].reserve(&b, 2, t0()).await.is_ok());
    }
    assert!(l[0].reserve(&b, 2, t0()).await.is_err());
}

async fn failures_are_forgotten_an_hour_after_the_last(kind: Kind) {
    let (l, _db) = instances(kind, 1).await;
    let k = key("k");
    let mut t = t0();
    for _ in 0..12 {
        l[0].reserve(&k, 1, t).await.unwrap();
        t += wait(l[0].reserve(&k, 1, t).await);
    }
    // Long past the cap of the back-off, but within the hour: the count
    // stands, and the next failure waits the cap again.
    let later = t + secs(20 * 60);
    l[0].reserve(&k, 1, later).await.unwrap();
    assert_eq!(wait(l[0].reserve(&k, 1, later).await), secs(15 * 60));
    // An hour after the last failure, it starts over.
    let fresh = later + secs(3600);
    l[0].reserve(&k, 1, fresh).await.unwrap();
    assert_eq!(wait(l[0].reserve(&k, 1, fresh).await), secs(1));
}

async fn a_quota_spread_over_three_instances_allows_what_one_would(kind: Kind) {
    let (l, _db) = instances(kind, 3).await;
    let k = key("192.0.2.1");
    let quota = Quota::per_minute(20);
    let takes = (0..60).map(|i| {
        let (l, k) = (l[i % 3].clone(), k.clone());
        async move { l.take(&k, quota, t0()).await.is_ok() }
    });
    let granted = futures::future::join_all(takes).await;
    assert_eq!(granted.iter().filter(|ok| **ok).count(), 20);
    // One unit comes back every 3 s, on whichever instance asks.
    let refused = l[2].take(&k, quota, t0()).await;
    assert_eq!(wait(refused), secs(3));
    assert!(l[1].take(&k, quota, t0() + secs(3)).await.is_ok());
    assert!(l[0].take(&k, quota, t0() + secs(3)).await.is_err());
}

async fn a_quota_finer_than_a_millisecond_refuses_nothing_even_out_of_order(kind: Kind) {
    let (l, _db) = instances(kind, 2).await;
    let k = key("busy");
    let quota = Quota::per_minute(100_000_000);
    for i in 0..50u64 {
        // Instances' clocks and threads arrive a little out of order.
        let at = t0() + Duration::from_millis(if i % 2 == 0 { 5 } else { 0 });
        assert!(
            l[(i % 2) as usize].take(&k, quota, at).await.is_ok(),
            "take {i}"
        );
    }
}

async fn a_refusal_names_its_policy_for_the_headers(kind: Kind) {
    let (l, _db) = instances(kind, 1).await;
    let k = Key::new("signup", "192.0.2.9");
    let quota = Quota::per_minute(1);
    l[0].take(&k, quota, t0()).await.unwrap();
    match l[0].take(&k, quota, t0()).await {
        Err(LimitError::Throttled(t)) => {
            assert_eq!((t.policy, t.limit, t.window), ("signup", 1, Some(secs(60))));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        l[0].take(&key("none"), Quota::per_minute(0), t0()).await,
        Err(LimitError::Throttled(_))
    ));
}

async fn pruning_forgets_full_buckets_and_old_failures_only(kind: Kind) {
    let (l, _db) = instances(kind, 1).await;
    let quota = Quota::per_minute(6);
    l[0].take(&key("refilled"), quota, t0()).await.unwrap();
    for _ in 0..6 {
        l[0].take(&key("spent"), quota, t0() + secs(3600))
            .await
            .unwrap();
    }
    l[0].reserve(&key("old"), 1, t0()).await.unwrap();
    l[0].reserve(&key("recent"), 1, t0() + secs(3600))
        .await
        .unwrap();
    l[0].prune(t0() + secs(3600)).await.unwrap();
    let now = t0() + secs(3600);
    assert!(l[0].take(&key("spent"), quota, now).await.is_err());
    assert!(l[0].reserve(&key("recent"), 1, now).await.is_err());
    for _ in 0..6 {
        l[0].take(&key("refilled"), quota, now).await.unwrap();
    }
}

type Test = fn(Kind) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|kind| Box::pin($name(kind))) as Test)),*]
    };
}

fn main() {
    let args = Arguments::from_args();
    let postgres = common::postgres_reachable();
    let redis = redis_reachable();
    let tests = tests!(
        after_the_free_failures_the_next_attempt_waits_on_every_instance,
        back_off_doubles_with_each_failure_and_is_capped,
        an_instance_whose_clock_is_behind_is_not_held_back_when_no_back_off_is_due,
        parallel_reservations_on_three_instances_get_only_the_free_attempts,
        a_released_attempt_gives_its_place_back_and_a_clear_forgets_all,
        failures_are_forgotten_an_hour_after_the_last,
        a_quota_spread_over_three_instances_allows_what_one_would,
        a_refusal_names_its_policy_for_the_headers,
        a_quota_finer_than_a_millisecond_refuses_nothing_even_out_of_order,
        pruning_forgets_full_buckets_and_old_failures_only,
    );
    let kinds = [
        (Kind::Memory, "memory", true),
        (Kind::Sqlite, "sqlite", true),
        (Kind::Postgres, "postgres", postgres),
        (Kind::Redis, "redis", redis),
    ];
    let mut trials = Vec::new();
    for (kind, kind_name, available) in kinds {
        for (name, test) in tests {
            // Several instances on one memory are one instance: the tests
            // still hold, trivially; they pin the arithmetic.
            let trial = Trial::test(format!("{kind_name}::{name}"), move || run(test, kind));
            trials.push(trial.with_ignored_flag(!available));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn run(test: Test, kind: Kind) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    runtime.block_on(test(kind));
    Ok(())
}
