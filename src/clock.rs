//! Wall-clock time as the service stores it.

use time::OffsetDateTime;

/// Now, truncated to whole milliseconds: the precision both databases keep,
/// so that a value written and read back compares equal.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}
