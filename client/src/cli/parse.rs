//! Parsers for the option values clap cannot read by itself: `--attr k=v`
//! and `--from latest|earliest|offset:N|time:RFC3339`.

use sava_client::StartPosition;

use sava_client::time::parse_rfc3339;

/// Reads `name=value`. The value may itself contain `=`; the name may not
/// be empty.
pub(crate) fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("invalid attribute `{text}`: expected NAME=VALUE")),
    }
}

/// Reads where a new subscription starts.
pub(crate) fn parse_start(text: &str) -> Result<StartPosition, String> {
    match text {
        "latest" => return Ok(StartPosition::Latest),
        "earliest" => return Ok(StartPosition::Earliest),
        _ => {}
    }

    if let Some(offset) = text.strip_prefix("offset:") {
        return offset
            .parse()
            .map(StartPosition::Offset)
            .map_err(|_| format!("invalid offset `{offset}`: expected a non-negative integer"));
    }
    if let Some(time) = text.strip_prefix("time:") {
        return parse_rfc3339(time).map(StartPosition::Time);
    }
    Err(format!(
        "invalid start position `{text}`: expected latest, earliest, offset:N or time:RFC3339"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn an_attribute_splits_at_its_first_equals_sign() {
        assert_eq!(parse_attribute("k=v"), Ok(("k".into(), "v".into())));
        assert_eq!(
            parse_attribute("query=a=b"),
            Ok(("query".into(), "a=b".into()))
        );
        assert_eq!(
            parse_attribute("empty="),
            Ok(("empty".into(), String::new()))
        );
    }

    #[test]
    fn an_attribute_without_a_name_or_equals_sign_is_refused() {
        assert!(parse_attribute("=v").unwrap_err().contains("`=v`"));
        assert!(
            parse_attribute("novalue")
                .unwrap_err()
                .contains("NAME=VALUE")
        );
    }

    #[test]
    fn every_start_position_spelling_parses() {
        assert_eq!(parse_start("latest"), Ok(StartPosition::Latest));
        assert_eq!(parse_start("earliest"), Ok(StartPosition::Earliest));
        assert_eq!(parse_start("offset:42"), Ok(StartPosition::Offset(42)));
        assert_eq!(
            parse_start("time:2024-01-02T03:04:05Z"),
            Ok(StartPosition::Time(
                UNIX_EPOCH + Duration::from_secs(1_704_164_645)
            ))
        );
    }

    #[test]
    fn a_bad_start_position_names_what_was_wrong() {
        assert!(parse_start("offset:-1").unwrap_err().contains("`-1`"));
        assert!(parse_start("time:noon").unwrap_err().contains("`noon`"));
        assert!(
            parse_start("first")
                .unwrap_err()
                .contains("expected latest")
        );
    }
}
