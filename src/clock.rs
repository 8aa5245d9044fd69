//! Time as the services see it: the system's in production, one a test can
//! move forward in tests, so that nothing waits on the wall clock to see a
//! token or a back-off expire.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use time::OffsetDateTime;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time (UTC), truncated to whole milliseconds.
    fn now(&self) -> OffsetDateTime;
    /// Monotonic time, for waits and cache ages.
    fn instant(&self) -> Instant;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        truncate_to_millis(OffsetDateTime::now_utc())
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The system's time plus an offset that only grows: time flows as usual,
/// and jumps forward when a test calls [`ManualClock::advance`].
#[derive(Debug, Default)]
pub struct ManualClock {
    offset: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves both clocks forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        SystemClock.now() + *self.offset.lock()
    }

    fn instant(&self) -> Instant {
        Instant::now() + *self.offset.lock()
    }
}

/// Whole milliseconds: the precision both databases keep, so that a value
/// written and read back compares equal.
fn truncate_to_millis(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

/// The system's wall-clock time, for code that runs outside the services
/// (start-up, the command line, test fixtures).
pub fn now() -> OffsetDateTime {
    SystemClock.now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_keeps_whole_milliseconds() {
        assert_eq!(SystemClock.now().nanosecond() % 1_000_000, 0);
    }

    #[test]
    fn a_manual_clock_jumps_forward_on_both_clocks() {
        let clock = ManualClock::new();
        let (wall, mono) = (clock.now(), clock.instant());
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now() - wall >= time::Duration::hours(1));
        assert!(clock.instant() - mono >= Duration::from_secs(3600));
    }
}
