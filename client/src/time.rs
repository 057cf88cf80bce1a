//! RFC 3339 timestamps, both ways, without a date-time dependency: the
//! `sava` and `sava-admin` tools parse `time:...` positions with it and
//! print publish times.
//!
//! The calendar arithmetic is the proleptic Gregorian one, counted in days
//! from 1970-01-01, with eras of 400 years (146097 days) so that leap years
//! need no table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days in an era of 400 Gregorian years.
const DAYS_PER_ERA: i64 = 146_097;

/// Days from 0000-03-01 to 1970-01-01: eras are counted from a March first
/// so that the leap day is the last day of a year.
const EPOCH_SHIFT: i64 = 719_468;

const SECONDS_PER_DAY: i64 = 86_400;

/// Formats `time` in UTC with millisecond precision, as
/// `2024-01-02T03:04:05.123Z`. Times before 1970 print as the epoch.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let time = UNIX_EPOCH + Duration::from_millis(1_704_164_645_123);
/// assert_eq!(sava_client::time::format_rfc3339(time), "2024-01-02T03:04:05.123Z");
/// ```
pub fn format_rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs() as i64;
    let millis = since_epoch.subsec_millis();

    let (year, month, day) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    );
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// Parses an RFC 3339 timestamp such as `2024-01-02T03:04:05Z` or
/// `2024-01-02T05:04:05.5+02:00`.
///
/// # Errors
///
/// A one-line message naming the text and what is wrong with it.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let invalid = |why: &str| format!("invalid RFC 3339 time `{text}`: {why}");
    let bytes = text.as_bytes();
    if !text.is_ascii() || bytes.len() < 20 {
        return Err(invalid(
            "expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset",
        ));
    }

    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let digits = &text[range];
        if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid("expected digits"));
        }
        digits.parse().map_err(|_| invalid("expected digits"))
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return Err(invalid("expected YYYY-MM-DDTHH:MM:SS"));
    }

    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(invalid("no such date"));
    }
    // 60 is a leap second; it simply runs into the next minute.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(invalid("no such time of day"));
    }

    let (nanos, rest) = parse_fraction(&text[19..]).ok_or_else(|| invalid("bad fraction"))?;
    let offset_seconds = parse_offset(rest).ok_or_else(|| invalid("expected Z or ±HH:MM"))?;

    let days = days_from_civil(year, month, day);
    let seconds = days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second - offset_seconds;
    let time = if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    };
    Ok(time + Duration::from_nanos(nanos))
}

/// An optional `.digits` at the start of `text`: its value in nanoseconds
/// and what follows it.
fn parse_fraction(text: &str) -> Option<(u64, &str)> {
    let Some(digits_and_rest) = text.strip_prefix('.') else {
        return Some((0, text));
    };
    let end = digits_and_rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits_and_rest.len());
    let digits = &digits_and_rest[..end];
    if digits.is_empty() {
        return None;
    }

    // Nanoseconds keep the first nine digits; finer ones are dropped.
    let kept = &digits[..digits.len().min(9)];
    let scale = 10u64.pow(9 - kept.len() as u32);
    let nanos = kept.parse::<u64>().ok()? * scale;
    Some((nanos, &digits_and_rest[end..]))
}

/// `Z` or `±HH:MM`, in seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    if text.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let bytes = text.as_bytes();
    if bytes.len() != 6 || bytes[3] != b':' {
        return None;
    }
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours: i64 = text.get(1..3)?.parse().ok()?;
    let minutes: i64 = text.get(4..6)?.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count years from March, so February ends the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_SHIFT
}

/// The date of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + EPOCH_SHIFT;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days.rem_euclid(DAYS_PER_ERA);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = (month_from_march + 2) % 12 + 1;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
    }

    #[test]
    fn a_utc_timestamp_parses_to_its_unix_time() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339("2024-01-02T03:04:05Z"),
            Ok(at(1_704_164_645, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-01-02t03:04:05.250z"),
            Ok(at(1_704_164_645, 250))
        );
    }

    #[test]
    fn an_offset_is_taken_off_to_get_utc() {
        assert_eq!(
            parse_rfc3339("2000-02-29T12:00:00+01:00"),
            Ok(at(951_822_000, 0))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T10:30:00-00:30"),
            Ok(at(951_822_000, 0))
        );
    }

    #[test]
    fn fractions_finer_than_nanoseconds_are_dropped() {
        let parsed = parse_rfc3339("1970-01-01T00:00:01.1234567891Z").unwrap();
        assert_eq!(parsed, UNIX_EPOCH + Duration::new(1, 123_456_789));
    }

    #[test]
    fn impossible_dates_and_malformed_text_are_refused() {
        for text in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00.Z",
            "yesterday at noon, roughly",
            "2024-01-01T00:00:00é",
        ] {
            let error = parse_rfc3339(text).unwrap_err();
            assert!(error.contains(text), "{error}");
        }
    }

    #[test]
    fn formatting_prints_utc_with_milliseconds() {
        assert_eq!(
            format_rfc3339(at(1_704_164_645, 123)),
            "2024-01-02T03:04:05.123Z"
        );
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_day_of_four_centuries_survives_a_round_trip() {
        for days in (-DAYS_PER_ERA..3 * DAYS_PER_ERA).step_by(7) {
            let (year, month, day) = civil_from_days(days);
            assert!(day <= days_in_month(year, month));
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }
}
