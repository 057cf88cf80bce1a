//! The async Rust client for Sava's native API (`sava.v1`).
//!
//! A [`Client`] holds the connections to a cluster. From it, a [`Producer`]
//! publishes batches over one long-lived stream per partition, with many
//! batches in flight, and a [`Consumer`] receives a subscription's messages
//! over one credit-controlled stream per partition.
//!
//! ```no_run
//! use sava_client::{Client, Message, StartPosition};
//!
//! # async fn example() -> Result<(), sava_client::Error> {
//! let client = Client::builder("http://127.0.0.1:6650").build().await?;
//!
//! let producer = client.producer("/default/orders").reliable(true).create().await?;
//! let pending = producer.send(Message::new("hello").with_key("order-1")).await?;
//! let id = pending.await?;
//! println!("stored at offset {} of {}", id.offset, id.topic);
//! producer.close().await?;
//!
//! let mut consumer = client
//!     .consumer("/default/orders", "billing")
//!     .start(StartPosition::Earliest)
//!     .subscribe()
//!     .await?;
//! while let Some(message) = consumer.recv().await {
//!     let message = message?;
//!     println!("{}", String::from_utf8_lossy(&message.payload));
//!     consumer.ack(&message)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Guarantees: producers and consumers reconnect on their own after a
//! broken stream, with exponential backoff. A producer then sends the
//! batches the broker had not acknowledged again, so publishing is at least
//! once: a message may be stored twice when its ack was lost. A consumer of
//! a reliable topic gets its unacknowledged messages again.

#![warn(missing_docs)]

mod client;
mod consumer;
mod error;
mod message;
mod producer;
mod reconnect;
pub mod time;

pub use sava_proto::ErrorKind;

pub use crate::client::{Client, ClientBuilder};
pub use crate::consumer::{Consumer, ConsumerBuilder, StartPosition, SubscriptionType};
pub use crate::error::{Error, Result};
pub use crate::message::{Message, MessageId, ReceivedMessage, Schema, SchemaKind};
pub use crate::producer::{Producer, ProducerBuilder, Routing, SendFuture};
