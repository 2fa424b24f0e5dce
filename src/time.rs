//! Wall-clock time as microseconds since the Unix epoch, and conversions to and from the wire's
//! `google.protobuf.Timestamp`. Microseconds are what the store keeps: integer columns sort and
//! index well in both engines, and a client that reads its own clock (Python, Java and .NET
//! clocks tick in microseconds or finer) just before a call never sees a time the server took
//! afterwards come out earlier.
//!
//! The time of day is read only through a [`Clock`], which the sidecar is handed once
//! (`server::Options::clock`) and passes to the dispatcher and the services of every hub: every
//! stored or sent timestamp, every due time and lease compared with "now", comes from it. The
//! engine never reads a clock, it is handed `now`. Durations the sidecar waits (the dispatch
//! loop's sleep until the next due time, lease renewal, pings, item deadlines, call deadlines)
//! are measured on tokio's clock, which [`ManualClock`] follows, so a test that pauses tokio's
//! clock moves both together.

use std::time::Duration;

use prost_types::Timestamp;

/// Microseconds since the Unix epoch.
pub type Micros = i64;

const PER_SECOND: i64 = 1_000_000;

/// The time of day, as the sidecar sees it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Micros;
}

/// The system's wall clock: what a sidecar runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since.as_micros() as Micros
    }
}

/// A clock for tests: it reads `start` when made and then moves exactly as tokio's clock does.
/// Under `tokio::time::pause()` it stands still until the test calls `tokio::time::advance`,
/// which moves this clock by the same amount and wakes every tokio sleep that falls due within
/// it: the dispatch loop, which sleeps until the next due time it read from the store, wakes
/// when this clock reaches that time, and a lease, a timer or a scheduled start falls due on
/// this clock without anyone waiting real seconds.
#[derive(Debug)]
pub struct ManualClock {
    start: Micros,
    origin: tokio::time::Instant,
}

impl ManualClock {
    /// A clock reading `start` now.
    pub fn new(start: Micros) -> Self {
        ManualClock {
            start,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        self.start + span(self.origin.elapsed())
    }
}

/// A duration in the store's unit, for adding to a `now`.
pub fn span(d: Duration) -> Micros {
    d.as_micros().min(i64::MAX as u128) as Micros
}

/// The duration from `now` until `at`; zero when `at` has passed.
pub fn until(at: Micros, now: Micros) -> Duration {
    Duration::from_micros((at - now).max(0) as u64)
}

/// Converts a wire timestamp, refusing values a well-behaved client cannot send. Digits finer
/// than a microsecond are dropped (rounding down, so a time never moves later).
pub fn from_timestamp(ts: &Timestamp) -> Result<Micros, String> {
    // Year 1 to 9999 is the range `google.protobuf.Timestamp` documents as valid.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(format!("timestamp nanos {} out of range 0..1e9", ts.nanos));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(format!("timestamp seconds {} outside year 1..9999", ts.seconds));
    }
    Ok(ts.seconds * PER_SECOND + i64::from(ts.nanos) / 1_000)
}

/// Builds a wire timestamp.
pub fn to_timestamp(us: Micros) -> Timestamp {
    Timestamp {
        seconds: us.div_euclid(PER_SECOND),
        nanos: (us.rem_euclid(PER_SECOND) * 1_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        for us in [0, 1, 999, 999_999, 1_700_000_000_123_456, -1, -1_000_001] {
            assert_eq!(from_timestamp(&to_timestamp(us)), Ok(us));
        }
        assert!(from_timestamp(&Timestamp { seconds: 0, nanos: -1 }).is_err());
        assert!(
            from_timestamp(&Timestamp {
                seconds: 0,
                nanos: 1_000_000_000
            })
            .is_err()
        );
        assert!(
            from_timestamp(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
    }

    #[test]
    fn keeps_microseconds_and_rounds_nanoseconds_down() {
        let ts = Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        };
        assert_eq!(from_timestamp(&ts), Ok(1_700_000_000_123_456));
        assert_eq!(to_timestamp(1_700_000_000_123_456).nanos, 123_456_000);
    }

    #[tokio::test]
    async fn the_manual_clock_moves_with_tokio_time_only() {
        tokio::time::pause();
        let clock = ManualClock::new(1_700_000_000_000_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), 1_700_000_000_000_000, "real time passing does not move it");
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), 1_700_000_001_500_000);
        // A sleep and the clock move together: a sleep of 2 s ends with the clock 2 s on (tokio
        // rounds a sleep's deadline up to its next millisecond).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let on = clock.now() - 1_700_000_001_500_000;
        assert!((2_000_000..=2_001_000).contains(&on), "{on}");
    }

    #[test]
    fn the_clock_ticks_finer_than_milliseconds() {
        // Of many readings, some must fall between whole milliseconds: a millisecond clock would
        // give a multiple of 1,000 every time (the chance that 100 microsecond readings all are is
        // 10^-300).
        let readings: Vec<Micros> = (0..100).map(|_| SystemClock.now()).collect();
        assert!(readings.iter().any(|us| us % 1_000 != 0), "{readings:?}");
    }
}
