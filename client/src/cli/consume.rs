//! `sava consume`: print a subscription's messages, one per line, and ack
//! each one once it is printed.
//!
//! With `--output json` each line is an object with exactly the fields
//! `topic`, `offset`, `publish_time` (RFC 3339, UTC, milliseconds), `key`
//! (null when there is none), `attributes` and `payload`. The payload is the
//! UTF-8 text of the message; when the bytes are not valid UTF-8 it is their
//! standard base64 encoding instead, and one more field, `"payload_base64":
//! true`, says so.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use sava_client::{Client, ReceivedMessage, StartPosition};
use serde::Serialize;

use super::parse::parse_start;
use super::{OutputArg, TypeArg};
use sava_client::time::format_rfc3339;

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// The topic, as /namespace/topic.
    #[arg(long)]
    topic: String,

    /// The subscription to read (created when missing).
    #[arg(long)]
    subscription: String,

    /// How the subscription shares messages between its consumers.
    #[arg(long = "type", value_enum, default_value = "exclusive")]
    subscription_type: TypeArg,

    /// Where a new subscription starts: latest, earliest, offset:N or
    /// time:RFC3339.
    #[arg(long, value_parser = parse_start, default_value = "latest")]
    from: StartPosition,

    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,

    /// Stop after this many seconds without a message.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,

    /// text: the payload as (lossy) UTF-8; json: one object per line.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputArg,

    /// The consumer's name.
    #[arg(long)]
    name: Option<String>,
}

pub(crate) async fn run(client: &Client, args: ConsumeArgs) -> Result<()> {
    let idle_timeout = match args.timeout {
        None => None,
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Some(Duration::from_secs_f64(seconds))
        }
        Some(seconds) => bail!("invalid --timeout {seconds}: expected a number of seconds"),
    };

    let mut builder = client
        .consumer(&args.topic, &args.subscription)
        .subscription_type(args.subscription_type.into())
        .start(args.from);
    if let Some(name) = &args.name {
        builder = builder.name(name);
    }
    let mut consumer = builder.subscribe().await.with_context(|| {
        format!(
            "cannot subscribe to {} as {}",
            args.topic, args.subscription
        )
    })?;

    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut printed = 0;
    while args.count.is_none_or(|count| printed < count) {
        let next = match idle_timeout {
            Some(timeout) => match tokio::time::timeout(timeout, consumer.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => consumer.recv().await,
        };
        let message = match next {
            Some(message) => message.with_context(|| format!("cannot consume {}", args.topic))?,
            None => bail!("the consumer of {} stopped", args.topic),
        };

        // Printing is this consumer's processing: its span continues the
        // producer's trace.
        let span = message.process_span();
        let processing = span.enter();
        let line = match args.output {
            OutputArg::Text => String::from_utf8_lossy(&message.payload).into_owned(),
            OutputArg::Json => json_line(&message)?,
        };
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
        consumer.ack(&message)?;
        drop(processing);
        printed += 1;
    }

    consumer.close().await;
    Ok(())
}

/// One message as documented in the module docs.
#[derive(Debug, Serialize)]
struct JsonMessage<'a> {
    topic: &'a str,
    offset: u64,
    publish_time: String,
    key: Option<&'a str>,
    attributes: BTreeMap<&'a str, &'a str>,
    payload: Cow<'a, str>,
    #[serde(skip_serializing_if = "is_false")]
    payload_base64: bool,
}

fn json_line(message: &ReceivedMessage) -> Result<String> {
    let json = JsonMessage::new(
        &message.topic,
        message.offset,
        message.publish_time,
        message.key.as_deref(),
        &message.attributes,
        &message.payload,
    );
    serde_json::to_string(&json).context("cannot encode a message as JSON")
}

impl<'a> JsonMessage<'a> {
    fn new(
        topic: &'a str,
        offset: u64,
        publish_time: SystemTime,
        key: Option<&'a str>,
        attributes: &'a HashMap<String, String>,
        payload: &'a [u8],
    ) -> JsonMessage<'a> {
        let (payload, payload_base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Cow::Borrowed(text), false),
            Err(_) => (Cow::Owned(base64(payload)), true),
        };
        JsonMessage {
            topic,
            offset,
            publish_time: format_rfc3339(publish_time),
            key,
            attributes: attributes
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect(),
            payload,
            payload_base64,
        }
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk.iter().enumerate().fold(0u32, |group, (index, byte)| {
            group | u32::from(*byte) << (16 - 8 * index)
        });
        for position in 0..4 {
            if position <= chunk.len() {
                let sextet = (group >> (18 - 6 * position)) & 0x3f;
                encoded.push(ALPHABET[sextet as usize] as char);
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn a_json_line_has_exactly_the_documented_fields() {
        let attributes = HashMap::from([("b".to_owned(), "2".to_owned())]);
        let time = UNIX_EPOCH + Duration::from_millis(1_704_164_645_123);
        let json = JsonMessage::new("/default/t", 7, time, None, &attributes, b"hi");
        let value = serde_json::to_value(&json).unwrap();

        assert_eq!(
            value,
            serde_json::json!({
                "topic": "/default/t",
                "offset": 7,
                "publish_time": "2024-01-02T03:04:05.123Z",
                "key": null,
                "attributes": {"b": "2"},
                "payload": "hi",
            })
        );
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_base64_and_flagged() {
        let attributes = HashMap::new();
        let payload = [0xff, 0xfe, 0x00];
        let json = JsonMessage::new(
            "/default/t",
            0,
            UNIX_EPOCH,
            Some("k"),
            &attributes,
            &payload,
        );
        let value = serde_json::to_value(&json).unwrap();

        assert_eq!(value["payload"], "//4A");
        assert_eq!(value["payload_base64"], true);
        assert_eq!(value["key"], "k");
    }
}
