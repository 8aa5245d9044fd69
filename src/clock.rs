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

/// A clock for tests: the system's time plus an offset that only grows, so
/// time flows as usual and jumps forward at [`ManualClock::advance`]; or,
/// once [`ManualClock::stop`]ped, standing still until advanced.
#[derive(Debug, Default)]
pub struct ManualClock {
    state: Mutex<ManualState>,
}

#[derive(Debug, Default)]
struct ManualState {
    offset: Duration,
    /// Where the clocks stand while stopped.
    stopped_at: Option<(OffsetDateTime, Instant)>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves both clocks forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock();
        state.offset += by;
        if let Some((wall, mono)) = &mut state.stopped_at {
            *wall += by;
            *mono += by;
        }
    }

    /// Stops both clocks where they are; only [`ManualClock::advance`] moves
    /// them from now on.
    pub fn stop(&self) {
        let mut state = self.state.lock();
        let offset = state.offset;
        state.stopped_at = Some((SystemClock.now() + offset, Instant::now() + offset));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        let state = self.state.lock();
        match state.stopped_at {
            Some((wall, _)) => wall,
            None => SystemClock.now() + state.offset,
        }
    }

    fn instant(&self) -> Instant {
        let state = self.state.lock();
        match state.stopped_at {
            Some((_, mono)) => mono,
            None => Instant::now() + state.offset,
        }
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

    #[test]
    fn a_stopped_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        clock.stop();
        let (wall, mono) = (clock.now(), clock.instant());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!((clock.now(), clock.instant()), (wall, mono));
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.instant() - mono, Duration::from_secs(1));
        assert_eq!(clock.now() - wall, time::Duration::seconds(1));
    }
}
