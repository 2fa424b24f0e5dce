//! RFC 3339 / ISO 8601 text for [`Millis`], as the HTTP API and the CLI show and accept times
//! (UTC, `Z`). Civil-date arithmetic after Howard Hinnant's days-from-civil algorithm, so no
//! calendar crate is needed.

use crate::time::Millis;

/// How many fraction-of-second digits to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `2026-12-01T11:16:37Z`, the Durable Functions status payload's form.
    Seconds,
    /// `2026-12-01T11:16:37.123Z`.
    Millis,
    /// `2026-12-01T11:16:37.1230000Z`, the Durable Functions history events' form (.NET's 7 digits).
    Ticks,
}

pub fn format(ms: Millis, precision: Precision) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let base = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    match precision {
        Precision::Seconds => format!("{base}Z"),
        Precision::Millis => format!("{base}.{frac:03}Z"),
        Precision::Ticks => format!("{base}.{frac:03}0000Z"),
    }
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.fraction]]` with `Z`, `±HH:MM` or no offset
/// (taken as UTC). A space may stand for the `T`.
pub fn parse(text: &str) -> Result<Millis, String> {
    let bad = || format!("'{text}' is not an ISO 8601 time such as 2026-01-31T12:00:00Z");
    let t = text.trim();
    if !t.is_ascii() || t.len() < 10 {
        return Err(bad());
    }
    let (date, rest) = t.split_at(10);
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let year: i64 = number(y, 4).ok_or_else(bad)?;
    let month: i64 = number(m, 2).ok_or_else(bad)?;
    let day: i64 = number(d, 2).ok_or_else(bad)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad());
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    if rest.is_empty() {
        return Ok(ms);
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
    // Split the clock from the offset.
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (clock, None),
    };
    let mut fields = hms.split(':');
    let hour: i64 = fields.next().and_then(|h| number(h, 2)).ok_or_else(bad)?;
    let minute: i64 = fields.next().and_then(|m| number(m, 2)).ok_or_else(bad)?;
    let second: i64 = match fields.next() {
        Some(s) => number(s, 2).ok_or_else(bad)?,
        None => 0,
    };
    if fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    ms += (hour * 3600 + minute * 60 + second.min(59)) * 1000;
    if let Some(f) = fraction {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let digits: String = f.chars().chain("000".chars()).take(3).collect();
        ms += digits.parse::<i64>().map_err(|_| bad())?;
    }
    match offset {
        "" | "Z" | "z" => {}
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (h, m) = o[1..].split_once(':').unwrap_or((&o[1..], "00"));
            let h: i64 = number(h, 2).ok_or_else(bad)?;
            let m: i64 = number(m, 2).ok_or_else(bad)?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            ms -= sign * (h * 3600 + m * 60) * 1000;
        }
    }
    Ok(ms)
}

fn number(text: &str, len: usize) -> Option<i64> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format(0, Precision::Seconds), "1970-01-01T00:00:00Z");
        assert_eq!(format(1_764_587_797_123, Precision::Millis), "2025-12-01T11:16:37.123Z");
        assert_eq!(format(1_764_587_797_123, Precision::Ticks), "2025-12-01T11:16:37.1230000Z");
        assert_eq!(format(951_782_400_000, Precision::Seconds), "2000-02-29T00:00:00Z");
        assert_eq!(format(-1, Precision::Millis), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_the_common_variants() {
        for ms in [0, 1_764_587_797_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse(&format(ms, Precision::Millis)), Ok(ms));
            assert_eq!(parse(&format(ms, Precision::Ticks)), Ok(ms));
        }
        assert_eq!(parse("2025-12-01"), Ok(1_764_547_200_000));
        assert_eq!(parse("2025-12-01T11:16:37"), Ok(1_764_587_797_000));
        assert_eq!(parse("2025-12-01 11:16"), Ok(1_764_587_760_000));
        assert_eq!(parse("2025-12-01T12:16:37+01:00"), Ok(1_764_587_797_000));
        assert_eq!(parse("2025-12-01T10:16:37.5-01:00"), Ok(1_764_587_797_500));
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-02-30",
            "2025-12-01T25:00",
            "2025-12-01T10:00Q",
            "2025-12-01T10:00:00.",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
