//! Messages as the application sees them: what it sends, the id it gets
//! back, what it receives, and the schema a topic checks payloads against.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sava_proto::sava::v1 as proto;

/// A message to publish: a payload, an optional routing key and string
/// attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    payload: Bytes,
    key: Option<String>,
    attributes: HashMap<String, String>,
}

impl Message {
    /// A message with `payload`, no key and no attributes. Passing a
    /// [`Bytes`] clone does not copy the payload.
    pub fn new(payload: impl Into<Bytes>) -> Message {
        Message {
            payload: payload.into(),
            key: None,
            attributes: HashMap::new(),
        }
    }

    /// Sets the routing key: messages with the same key go to the same
    /// partition (with [`Routing::KeyHash`](crate::Routing::KeyHash)) and to
    /// the same Key-Shared consumer.
    pub fn with_key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Adds (or replaces) the attribute `name`.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The routing key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The attributes.
    pub fn attributes(&self) -> &HashMap<String, String> {
        &self.attributes
    }

    /// About how many bytes the message takes in a batch on the wire.
    pub(crate) fn encoded_len(&self) -> usize {
        // Field tags, lengths and the message's own length prefix.
        const OVERHEAD: usize = 8;
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| name.len() + value.len() + 6)
            .sum();
        self.payload.len()
            + self.key.as_ref().map_or(0, |key| key.len() + 2)
            + attributes
            + OVERHEAD
    }

    pub(crate) fn into_outgoing(self) -> proto::OutgoingMessage {
        proto::OutgoingMessage {
            payload: self.payload,
            key: self.key,
            attributes: self.attributes,
        }
    }
}

/// Where a published message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId {
    /// The partition (or the topic, when it is not partitioned).
    pub topic: Arc<str>,
    /// The message's offset in that partition.
    pub offset: u64,
    /// The time the broker stamped on the message (millisecond precision).
    pub publish_time: SystemTime,
}

/// A message delivered to a consumer.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The partition (or the topic, when it is not partitioned).
    pub topic: Arc<str>,
    /// The message's offset in that partition.
    pub offset: u64,
    /// The time the broker stamped on the message (millisecond precision).
    pub publish_time: SystemTime,
    /// The name of the producer that published it.
    pub producer_name: String,
    /// The routing key, if any.
    pub key: Option<String>,
    /// The attributes set by the producer.
    pub attributes: HashMap<String, String>,
    /// The payload.
    pub payload: Bytes,
    /// How many times the message was delivered in this subscription, this
    /// delivery included.
    pub delivery_count: u32,
    /// Which of the consumer's partition streams delivered it.
    pub(crate) partition: usize,
}

impl ReceivedMessage {
    /// Whether the message carries trace context (a `traceparent`
    /// attribute) to continue.
    pub fn is_traced(&self) -> bool {
        sava_proto::telemetry::carries_trace(self.attribute_pairs())
    }

    /// Makes `span` continue the trace the message carries, if any.
    pub(crate) fn continue_trace(&self, span: &tracing::Span) {
        sava_proto::telemetry::continue_trace(span, self.attribute_pairs());
    }

    fn attribute_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let attributes = self.attributes.iter();
        attributes.map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A span for processing this message, in the OpenTelemetry messaging
    /// conventions, that continues the trace its producer started (through
    /// the `traceparent` attribute); a disabled span for a message that is
    /// not traced. Enter it while processing.
    pub fn process_span(&self) -> tracing::Span {
        if !self.is_traced() {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            "client.process",
            otel.kind = "consumer",
            messaging.system = "sava",
            messaging.operation.name = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %self.topic,
            messaging.message.id = self.offset,
        );
        self.continue_trace(&span);
        span
    }

    pub(crate) fn from_delivery(
        delivery: proto::Delivery,
        topic: &Arc<str>,
        partition: usize,
    ) -> ReceivedMessage {
        ReceivedMessage {
            topic: Arc::clone(topic),
            offset: delivery.offset,
            publish_time: time_from_millis(delivery.publish_time),
            producer_name: delivery.producer_name,
            key: delivery.key,
            attributes: delivery.attributes,
            payload: delivery.payload,
            delivery_count: delivery.delivery_count,
            partition,
        }
    }
}

/// The type of the payloads a topic accepts. The broker checks every
/// payload against the topic's schema and refuses a batch that breaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaKind {
    /// Any bytes.
    Bytes,
    /// UTF-8 text.
    String,
    /// A signed 64-bit integer, 8 bytes.
    Int64,
    /// A JSON document that matches a JSON Schema.
    Json,
}

/// A topic's schema: a [`SchemaKind`] and, for JSON, its JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    kind: SchemaKind,
    definition: Bytes,
}

impl Schema {
    /// Any bytes.
    pub fn bytes() -> Schema {
        Schema::without_definition(SchemaKind::Bytes)
    }

    /// UTF-8 text.
    pub fn string() -> Schema {
        Schema::without_definition(SchemaKind::String)
    }

    /// A signed 64-bit integer.
    pub fn int64() -> Schema {
        Schema::without_definition(SchemaKind::Int64)
    }

    /// JSON documents matching `definition`, a JSON Schema document.
    pub fn json(definition: impl Into<Bytes>) -> Schema {
        Schema {
            kind: SchemaKind::Json,
            definition: definition.into(),
        }
    }

    /// The type of payloads.
    pub fn kind(&self) -> SchemaKind {
        self.kind
    }

    /// The JSON Schema document; empty for the other kinds.
    pub fn definition(&self) -> &Bytes {
        &self.definition
    }

    fn without_definition(kind: SchemaKind) -> Schema {
        Schema {
            kind,
            definition: Bytes::new(),
        }
    }

    pub(crate) fn to_proto(&self) -> proto::Schema {
        let schema_type = match self.kind {
            SchemaKind::Bytes => proto::SchemaType::Bytes,
            SchemaKind::String => proto::SchemaType::String,
            SchemaKind::Int64 => proto::SchemaType::Int64,
            SchemaKind::Json => proto::SchemaType::Json,
        };
        proto::Schema {
            schema_type: schema_type as i32,
            definition: self.definition.clone(),
        }
    }
}

/// The time `millis` milliseconds after the Unix epoch.
pub(crate) fn time_from_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// Milliseconds from the Unix epoch to `time` (0 for earlier times).
pub(crate) fn millis_since_epoch(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_key_and_attributes_to_the_wire() {
        let message = Message::new("hello")
            .with_key("k")
            .with_attribute("trace", "1")
            .with_attribute("trace", "2");
        let outgoing = message.clone().into_outgoing();

        assert_eq!(outgoing.payload, Bytes::from_static(b"hello"));
        assert_eq!(outgoing.key.as_deref(), Some("k"));
        assert_eq!(outgoing.attributes["trace"], "2");
        assert!(message.encoded_len() > 5);
    }

    #[test]
    fn a_time_survives_a_round_trip_through_milliseconds() {
        let millis = 1_700_000_000_123;
        assert_eq!(millis_since_epoch(time_from_millis(millis)), millis);
        assert_eq!(millis_since_epoch(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
