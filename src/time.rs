//! Wall-clock time as milliseconds since the Unix epoch, and conversions to and from the wire's
//! `google.protobuf.Timestamp`. Milliseconds are what the store keeps (integer columns sort and
//! index well in both engines); the engine never reads the clock itself, it is handed `now`.

use prost_types::Timestamp;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Reads the system clock.
pub fn now() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis() as Millis
}

/// Converts a wire timestamp, refusing values a well-behaved client cannot send.
pub fn from_timestamp(ts: &Timestamp) -> Result<Millis, String> {
    // Year 1 to 9999 is the range `google.protobuf.Timestamp` documents as valid.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(format!("timestamp nanos {} out of range 0..1e9", ts.nanos));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(format!("timestamp seconds {} outside year 1..9999", ts.seconds));
    }
    Ok(ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000)
}

/// Builds a wire timestamp.
pub fn to_timestamp(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(from_timestamp(&to_timestamp(ms)), Ok(ms));
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
}
