//! The broker's own message type. No generated wire type reaches the core:
//! each API adapter converts to and from these.

use std::sync::Arc;

use bytes::Bytes;

/// A message as a producer hands it to a topic, before the broker stamps it.
#[derive(Clone, Debug, Default)]
pub struct IncomingMessage {
    pub payload: Bytes,
    pub key: Option<String>,
    pub attributes: Vec<(String, String)>,
}

/// A message stored in a topic: stamped with its offset and publish time.
#[derive(Clone, Debug)]
pub struct Message {
    pub offset: u64,
    /// Milliseconds since the Unix epoch; never decreases within a topic.
    pub publish_time_ms: u64,
    pub producer_id: u64,
    pub producer_name: Arc<str>,
    pub key: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub payload: Bytes,
    pub schema_id: Option<u64>,
    pub schema_version: Option<u32>,
}

impl Message {
    /// The key Key-Shared routing hashes: the routing key, or the
    /// producer's name for a message without one.
    pub fn routing_key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.producer_name)
    }

    /// Bytes of the message as produced: payload, key and attributes, as
    /// the topic's bytes-in counter counts them.
    pub fn message_bytes(&self) -> usize {
        let attributes: usize = self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.payload.len() + self.key.as_ref().map_or(0, String::len) + attributes
    }

    /// Bytes this message holds in memory, roughly.
    pub fn size(&self) -> usize {
        self.message_bytes() + 64
    }
}

/// One message on its way to one consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// How many times this subscription sent the message, this time included.
    pub delivery_count: u32,
}
