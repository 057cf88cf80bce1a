//! Times on the command line and in tables: RFC 3339 timestamps to and
//! from milliseconds since the Unix epoch, and short ages like `3m12s`.
//!
//! Only UTC offsets written in the timestamp are honoured; there is no time
//! zone database, so output is always in UTC (`Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MS_PER_SECOND: u64 = 1_000;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Parses an RFC 3339 timestamp such as `2025-03-01T12:30:00Z` or
/// `2025-03-01T14:30:00.250+02:00` into milliseconds since the epoch.
pub(crate) fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let time = sava_client::time::parse_rfc3339(text)
        .map_err(|_| format!("{text:?} is not an RFC 3339 time (expected YYYY-MM-DDTHH:MM:SSZ or an offset like +02:00)"))?;
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before the Unix epoch"))?;
    Ok(since_epoch.as_millis() as u64)
}

/// Formats milliseconds since the epoch as an RFC 3339 UTC time, to the
/// second: `2025-03-01T12:30:00Z`.
pub(crate) fn format_rfc3339(ms: u64) -> String {
    let to_the_second = UNIX_EPOCH + Duration::from_secs(ms / MS_PER_SECOND);
    let text = sava_client::time::format_rfc3339(to_the_second);
    // The shared formatter prints milliseconds; tables show whole seconds.
    match text.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => text,
    }
}

/// A time for a table: RFC 3339, or `-` when the broker sent none.
pub(crate) fn format_time(ms: u64) -> String {
    if ms == 0 {
        "-".to_string()
    } else {
        format_rfc3339(ms)
    }
}

/// How long ago `ms` was, as an age: `-` when unknown.
pub(crate) fn age_since(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    format_age(now_ms().saturating_sub(ms))
}

/// A duration in milliseconds as a short age: `850ms` is `0s`, then `42s`,
/// `3m12s`, `25m`, `2h5m`, `14h`, `3d4h`, `40d`. The second unit is shown
/// only while the first is below 10.
pub(crate) fn format_age(ms: u64) -> String {
    let seconds = ms / MS_PER_SECOND;
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    for (index, (size, name)) in units.iter().enumerate() {
        let whole = seconds / size;
        if whole == 0 && *size > 1 {
            continue;
        }
        let mut age = format!("{whole}{name}");
        if let Some((next_size, next_name)) = units.get(index + 1)
            && whole < 10
        {
            let rest = seconds % size / next_size;
            if rest > 0 {
                age.push_str(&format!("{rest}{next_name}"));
            }
        }
        return age;
    }
    unreachable!("the seconds unit always matches")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_and_a_known_date_parse_to_their_milliseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Ok(1_709_208_000_000));
        assert_eq!(
            parse_rfc3339("2024-02-29t12:00:00.25z"),
            Ok(1_709_208_000_250)
        );
    }

    #[test]
    fn an_offset_is_subtracted_to_get_utc() {
        let utc = parse_rfc3339("2025-03-01T12:30:00Z").unwrap();
        assert_eq!(parse_rfc3339("2025-03-01T14:30:00+02:00"), Ok(utc));
        assert_eq!(parse_rfc3339("2025-03-01T07:00:00-05:30"), Ok(utc));
    }

    #[test]
    fn impossible_dates_and_malformed_text_are_refused() {
        for text in [
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:00:00",
            "2025-01-01 00:00:00+0200",
            "yesterday",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text} parsed");
        }
    }

    #[test]
    fn formatting_inverts_parsing_to_the_second() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2025-12-31T08:15:30Z",
            "2100-03-01T00:00:00Z",
        ] {
            assert_eq!(format_rfc3339(parse_rfc3339(text).unwrap()), text);
        }
        assert_eq!(format_rfc3339(1_709_208_000_999), "2024-02-29T12:00:00Z");
    }

    #[test]
    fn ages_show_one_unit_or_two_while_the_first_is_small() {
        assert_eq!(format_age(850), "0s");
        assert_eq!(format_age(42_000), "42s");
        assert_eq!(format_age(192_000), "3m12s");
        assert_eq!(format_age(25 * 60_000 + 5_000), "25m");
        assert_eq!(format_age(2 * 3_600_000 + 5 * 60_000), "2h5m");
        assert_eq!(format_age(3 * 86_400_000 + 4 * 3_600_000), "3d4h");
        assert_eq!(format_age(40 * 86_400_000), "40d");
        assert_eq!(format_age(3_600_000), "1h");
    }
}
