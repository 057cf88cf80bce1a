//! Native clients as most tests use them: a client of one broker, a
//! reliable producer, a consumer reading from the earliest offset, and the
//! next message within a deadline.

use std::time::Duration;

use sava_client::{Client, Consumer, Producer, ReceivedMessage, StartPosition};

use crate::Broker;

/// A native client of `broker`.
///
/// # Panics
///
/// When the client cannot be built.
pub async fn client_of(broker: &Broker) -> Client {
    Client::builder(broker.service_url())
        .build()
        .await
        .expect("a client of the broker")
}

/// A producer of reliable messages on `topic`.
///
/// # Panics
///
/// When the broker refuses it.
pub async fn reliable_producer(client: &Client, topic: &str) -> Producer {
    client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap_or_else(|error| panic!("a reliable producer on {topic}: {error}"))
}

/// A consumer in `subscription` of `topic` that starts at the earliest
/// offset.
///
/// # Panics
///
/// When the broker refuses it.
pub async fn consumer_from_earliest(client: &Client, topic: &str, subscription: &str) -> Consumer {
    client
        .consumer(topic, subscription)
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap_or_else(|error| panic!("a consumer of {topic} in {subscription}: {error}"))
}

/// The next message `consumer` gets, within `within`.
///
/// # Panics
///
/// When none arrives in time, the stream ends or fails.
pub async fn next_message(consumer: &mut Consumer, within: Duration) -> ReceivedMessage {
    tokio::time::timeout(within, consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no message within {within:?}"))
        .expect("the consumer's stream stays open")
        .expect("the consumer's stream does not fail")
}
