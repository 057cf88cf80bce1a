//! Times on the command line and in tables: RFC 3339 timestamps to and
//! from milliseconds since the Unix epoch, and short ages like `3m12s`.
//!
//! Only UTC offsets written in the timestamp are honoured; there is no time
//! zone database, so output is always in UTC (`Z`).

use std::time::{SystemTime, UNIX_EPOCH};

const MS_PER_SECOND: u64 = 1_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Parses an RFC 3339 timestamp such as `2025-03-01T12:30:00Z` or
/// `2025-03-01T14:30:00.250+02:00` into milliseconds since the epoch.
pub(crate) fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{text:?} is not an RFC 3339 time ({why})");
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SSZ"));
    }

    let year = digits(bytes, 0, 4).ok_or_else(|| bad("bad year"))?;
    let month = digits(bytes, 5, 2).ok_or_else(|| bad("bad month"))?;
    let day = digits(bytes, 8, 2).ok_or_else(|| bad("bad day"))?;
    let hour = digits(bytes, 11, 2).ok_or_else(|| bad("bad hour"))?;
    let minute = digits(bytes, 14, 2).ok_or_else(|| bad("bad minute"))?;
    let second = digits(bytes, 17, 2).ok_or_else(|| bad("bad second"))?;
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SSZ"));
    }

    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    // 60 is a leap second; it lands on the next minute's first second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }

    let (millis, rest) = fraction_ms(&text[19..]).ok_or_else(|| bad("bad fraction of a second"))?;
    let offset_seconds =
        utc_offset(rest).ok_or_else(|| bad("expected Z or an offset like +02:00"))?;

    let days = days_from_civil(year as i64, month, day);
    let seconds = days * SECONDS_PER_DAY
        + i64::from(hour) * 3_600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset_seconds;
    if seconds < 0 {
        return Err(format!("{text:?} is before the Unix epoch"));
    }
    Ok(seconds as u64 * MS_PER_SECOND + millis)
}

/// Formats milliseconds since the epoch as an RFC 3339 UTC time, to the
/// second: `2025-03-01T12:30:00Z`.
pub(crate) fn format_rfc3339(ms: u64) -> String {
    let seconds = (ms / MS_PER_SECOND) as i64;
    let (year, month, day) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
    let of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
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

/// `count` ASCII digits of `bytes` starting at `start`, as a number.
fn digits(bytes: &[u8], start: usize, count: usize) -> Option<u32> {
    let slice = bytes.get(start..start + count)?;
    slice.iter().try_fold(0u32, |value, byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u32::from(byte - b'0'))
    })
}

/// The milliseconds of an optional `.fraction` at the start of `text`, and
/// what follows it. Digits past the millisecond are dropped.
fn fraction_ms(text: &str) -> Option<(u64, &str)> {
    let Some(fraction) = text.strip_prefix('.') else {
        return Some((0, text));
    };
    let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
    let millis = padded.parse().ok()?;
    Some((millis, &fraction[digits..]))
}

/// The offset from UTC in seconds of `Z` or `±HH:MM`.
fn utc_offset(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
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
    let hours = digits(bytes, 1, 2).filter(|hours| *hours < 24)?;
    let minutes = digits(bytes, 4, 2).filter(|minutes| *minutes < 60)?;
    Some(sign * (i64::from(hours) * 3_600 + i64::from(minutes) * 60))
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Years are counted
/// from March so that the leap day falls at the end of the year.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day counted from 1970-01-01; the inverse of
/// [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
