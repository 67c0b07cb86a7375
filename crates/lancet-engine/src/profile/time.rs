//! RFC 3339 timestamps for profile documents: printed in UTC with nine
//! fractional digits, so a profile read back gives the same epoch
//! nanoseconds it was written with.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// Wall-clock nanoseconds since the Unix epoch, written as RFC 3339.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn ns(self) -> u64 {
        self.0
    }
}

impl From<u64> for Timestamp {
    fn from(ns: u64) -> Self {
        Timestamp(ns)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::output::rfc3339_nanos(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::output::rfc3339_nanos(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        parse_rfc3339(&s).map(Timestamp).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into epoch nanoseconds.
/// Fractions finer than nanoseconds are refused rather than rounded, and so
/// are times before 1970.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid RFC 3339 time {s:?} (expected e.g. 2026-11-28T13:29:00Z)");
    // The fields are sliced at fixed byte offsets; a multi-byte character
    // across one would panic the slicing. An RFC 3339 time is ASCII.
    if !s.is_ascii() {
        return Err(bad());
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59 {
        return Err(bad());
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        nanos = num(start..end)? * 10i64.pow((9 - digits) as u32);
        i = end;
    }
    let offset_s: i64 = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    if secs < 0 {
        return Err(format!("time {s:?} is before 1970"));
    }
    (secs as u64).checked_mul(1_000_000_000).and_then(|v| v.checked_add(nanos as u64)).ok_or_else(|| format!("time {s:?} is out of range"))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant's
/// algorithm, the inverse of the one in `output`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a duration like `30s`, `10m`, `1h`, `2d`, `250ms` (a bare number is
/// seconds). Shared by the config file, the CLI and policy documents.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (like 30s, 10m, 1h, 2d)"))?;
    let (per_unit_ms, secs) = match unit {
        "" | "s" => (1000, n),
        "ms" => (1, n / 1000.0),
        "m" => (60_000, n * 60.0),
        "h" => (3_600_000, n * 3600.0),
        "d" => (86_400_000, n * 86_400.0),
        other => return Err(format!("unknown duration unit {other:?} in {s:?} (use ms, s, m, h or d)")),
    };
    let too_long = || format!("{s:?} is not a duration lancet takes (too long: at most 100 years)");
    let d = if !num.contains('.') {
        // Whole numbers are counted exactly: through f64, `16777216038ms`
        // read back 1 ns short, so a span lancet wrote did not read back
        // the same.
        let whole = num.parse::<u64>().map_err(|_| too_long())?;
        whole.checked_mul(per_unit_ms).map(std::time::Duration::from_millis).ok_or_else(too_long)?
    } else {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("{s:?} is not a duration"));
        }
        // `from_secs_f64` panics past `Duration::MAX`: refuse it instead.
        std::time::Duration::try_from_secs_f64(secs).map_err(|_| too_long())?
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// The longest duration any setting, flag or document may give: past it a
/// duration is an error (a clear one), never an overflow further on.
/// Settings with tighter bounds (isolation and freezing: 7 days) check
/// their own.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

/// A duration written as text in documents (`10m`), checked when read so a
/// bad one is reported with its file, line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span(pub std::time::Duration);

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let text = if d.subsec_nanos() != 0 {
            format!("{}ms", d.as_millis())
        } else if d.as_secs() % 3600 == 0 && d.as_secs() > 0 {
            format!("{}h", d.as_secs() / 3600)
        } else if d.as_secs() % 60 == 0 && d.as_secs() > 0 {
            format!("{}m", d.as_secs() / 60)
        } else {
            format!("{}s", d.as_secs())
        };
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        parse_duration(&s).map(Span).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Span {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)?$" })
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unknown duration unit"));
        assert!(parse_duration("soon").is_err());
        let s: Span = serde_json::from_str("\"2h\"").unwrap();
        assert_eq!(parse_duration("16777216038ms").unwrap(), Duration::from_millis(16_777_216_038), "exact, not through f64");
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        // Longer than a Duration holds: an error, not a panic.
        for long in ["99999999999999999999999s", "999999999999999999d", "99999999999999999999.5"] {
            assert!(parse_duration(long).unwrap_err().contains("too long"), "{long}");
        }
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"2h\"");
    }

    #[test]
    fn durations_past_the_maximum_are_errors_not_overflows() {
        for huge in ["10000000000000000000s", "100000000000000000000000000000s", "99999999999999999999999d", "36600d"] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("longest duration") || e.contains("not a duration"), "{huge}: {e}");
        }
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
    }
}

#[cfg(test)]
mod prop_tests {
    //! Timestamps and durations come from documents anyone may hand the
    //! agent (profile import, policy files): any text gives an answer or an
    //! error, never a panic, and what lancet writes reads back the same.
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// A valid time, then a few characters replaced by arbitrary ones
    /// (multi-byte included), inserted or removed.
    fn mutated_time() -> impl Strategy<Value = String> {
        (any::<u64>(), proptest::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..4)).prop_map(|(t, edits)| {
            let mut s: Vec<char> = crate::output::rfc3339_nanos(t).chars().collect();
            for (at, c, op) in edits {
                let i = at.index(s.len() + 1);
                match op {
                    0 if i < s.len() => s[i] = c,
                    1 => s.insert(i, c),
                    _ if i < s.len() => {
                        s.remove(i);
                    }
                    _ => s.push(c),
                }
            }
            s.into_iter().collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_text_is_a_time_or_an_error(s in any::<String>()) {
            if let Ok(t) = parse_rfc3339(&s) {
                // Accepted text is a time that prints and reads back.
                prop_assert_eq!(parse_rfc3339(&Timestamp(t).to_string()), Ok(t));
            }
        }

        #[test]
        fn mutated_times_never_panic(s in mutated_time()) {
            if let Ok(t) = parse_rfc3339(&s) {
                // Whatever was accepted prints as a time that reads back the same.
                prop_assert_eq!(parse_rfc3339(&Timestamp(t).to_string()), Ok(t));
            }
        }

        #[test]
        fn every_timestamp_round_trips(t in any::<u64>()) {
            let s = Timestamp(t).to_string();
            prop_assert_eq!(parse_rfc3339(&s), Ok(t), "{}", s);
            let y: Timestamp = serde_norway::from_str(&serde_norway::to_string(&Timestamp(t)).unwrap()).unwrap();
            prop_assert_eq!(y, Timestamp(t));
        }

        #[test]
        fn any_text_is_a_duration_or_an_error(s in any::<String>()) {
            if let Ok(d) = parse_duration(&s) {
                prop_assert!(d <= MAX_DURATION, "{:?} gave {:?}", s, d);
                // Only a number with a known unit is a duration.
                prop_assert!(s.trim().starts_with(|c: char| c.is_ascii_digit() || c == '.'), "{:?}", s);
            }
        }

        #[test]
        fn numbers_of_any_size_are_durations_or_errors(digits in "[0-9]{1,60}(\\.[0-9]{0,30})?", unit in "(|s|ms|m|h|d|x)") {
            let s = format!("{digits}{unit}");
            let got = parse_duration(&s);
            let per_unit_ms: Option<u128> = match unit.as_str() {
                "" | "s" => Some(1000),
                "ms" => Some(1),
                "m" => Some(60_000),
                "h" => Some(3_600_000),
                "d" => Some(86_400_000),
                _ => None,
            };
            match (per_unit_ms, digits.parse::<u128>()) {
                (None, _) => prop_assert!(got.is_err()),
                // A whole number: exact, or an error past the longest
                // duration lancet takes.
                (Some(unit_ms), Ok(n)) => match n.checked_mul(unit_ms).filter(|ms| *ms <= MAX_DURATION.as_millis()) {
                    Some(ms) => prop_assert_eq!(got.map(|d| d.as_millis()), Ok(ms)),
                    None => prop_assert!(got.is_err()),
                },
                (Some(_), Err(_)) => {}
            }
        }

        #[test]
        fn spans_round_trip(secs in 0u64..MAX_DURATION.as_secs(), ms in 0u32..1000) {
            let d = Duration::from_secs(secs) + Duration::from_millis(u64::from(ms));
            let text = serde_json::to_string(&Span(d)).unwrap();
            let back: Span = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back.0, d, "{}", text);
        }
    }
}
