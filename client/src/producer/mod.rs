//! Producers: batched, pipelined publishing to a topic and its partitions.
//!
//! [`Producer::send`] adds a message to the open batch of one partition and
//! returns a [`SendFuture`] at once, so many messages are on their way
//! together. Each partition has a queue shared with a background task that
//! owns its publish stream (see `queue.rs` and `task.rs`); the producer
//! handle only routes messages and waits while the partition's in-flight
//! window is full, which is the backpressure when the broker falls behind.
//!
//! Delivery is at least once: after a broken stream the task sends the
//! batches the broker had not answered again, and the broker may have
//! stored some of them already, so a message can be stored twice.

mod batch;
mod outcome;
mod queue;
mod routing;
mod task;

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use sava_proto::sava::v1::{AccessMode, DispatchMode, OpenProducer, TopicSettings};
use tracing::Instrument;

use self::batch::BatchLimits;
pub use self::outcome::SendFuture;
use self::queue::PartitionQueue;
use self::routing::Router;
pub use self::routing::Routing;
use self::task::{PartitionTask, TaskSettings, open_stream};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::message::{Message, Schema};

/// Configures a [`Producer`]; made by [`Client::producer`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct ProducerBuilder {
    client: Client,
    topic: String,
    name: Option<String>,
    partitions: Option<u32>,
    reliable: bool,
    exclusive: bool,
    schema: Option<Schema>,
    limits: BatchLimits,
    linger: Duration,
    max_in_flight: Option<usize>,
    routing: Routing,
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client, topic: String) -> ProducerBuilder {
        ProducerBuilder {
            client,
            topic,
            name: None,
            partitions: None,
            reliable: false,
            exclusive: false,
            schema: None,
            limits: BatchLimits {
                max_bytes: 128 * 1024,
                max_messages: 1000,
            },
            linger: Duration::from_millis(1),
            max_in_flight: None,
            routing: Routing::default(),
        }
    }

    /// The producer's name, unique per topic (default: generated). A
    /// reconnecting producer reopens under the same name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Creates the topic with `partitions` partitions when it does not
    /// exist. An existing topic keeps its own partition count.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Whether the topic is reliable: acks mean the message is on disk and
    /// every subscription gets it at least once (default false). Must match
    /// an existing topic's dispatch mode.
    pub fn reliable(mut self, reliable: bool) -> Self {
        self.reliable = reliable;
        self
    }

    /// Whether this must be the topic's only producer (default false).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// The schema payloads must match; the topic is created with it and an
    /// existing topic must have the same one.
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// A batch closes before it passes this many bytes (default 128 KiB). A
    /// larger message travels alone.
    pub fn batch_max_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_bytes = bytes;
        self
    }

    /// A batch closes at this many messages (default 1000).
    pub fn batch_max_messages(mut self, messages: usize) -> Self {
        self.limits.max_messages = messages;
        self
    }

    /// How long a batch waits for more messages after its first one
    /// (default 1 ms). Zero closes the open batch whenever the in-flight
    /// window has room, so while it is full messages gather into a batch.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How many batches per partition may wait for their ack at once.
    /// Past it, [`Producer::send`] waits. The default fits the ack's delay:
    /// 16 for non-reliable topics, whose acks come back as soon as the
    /// broker has the batch (more would only queue bytes in buffers), and
    /// 64 for reliable ones, whose acks wait for the fsync that covers them.
    pub fn max_in_flight_batches(mut self, batches: usize) -> Self {
        self.max_in_flight = Some(batches);
        self
    }

    /// How messages are spread over partitions (default
    /// [`Routing::KeyHash`]).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Looks the topic up (creating it when missing) and opens one publish
    /// stream per partition.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero limit or partition count;
    /// [`Error::Broker`] with [`ErrorKind::Conflict`](sava_proto::ErrorKind::Conflict)
    /// when another exclusive producer holds the topic or the dispatch mode
    /// differs, [`ErrorKind::InvalidArgument`](sava_proto::ErrorKind::InvalidArgument)
    /// for a bad name or schema; [`Error::Transport`] or [`Error::Timeout`]
    /// when the broker cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the streams opened so far; the topic may
    /// have been created already.
    pub async fn create(self) -> Result<Producer> {
        self.validate()?;
        let name = self.name.clone().unwrap_or_else(generated_name);

        let settings = TopicSettings {
            dispatch_mode: self.dispatch_mode() as i32,
            partitions: self.partitions.unwrap_or(0),
            schema: self.schema.as_ref().map(Schema::to_proto),
        };
        let lookup = self.client.lookup(&self.topic, Some(settings)).await?;
        let partitions = if lookup.partitions.is_empty() {
            vec![self.topic.clone()]
        } else {
            lookup.partitions.clone()
        };

        let (client, max_in_flight) = (&self.client, self.in_flight_window());
        let opening = partitions.iter().enumerate().map(|(index, partition)| {
            let open = self.open_request(partition, &name);
            let stub = client.owner_stub(&lookup, index);
            async move {
                let connection = open_stream(client, stub?, &open, max_in_flight).await?;
                Ok::<_, Error>((open, connection))
            }
        });
        let opened = try_join_all(opening).await?;

        let handles = opened
            .into_iter()
            .zip(&partitions)
            .map(|((open, connection), partition)| {
                self.spawn_partition(partition, open, connection)
            })
            .collect();
        let router = Router::new(self.routing, partitions.len(), self.limits, self.linger);

        Ok(Producer {
            topic: self.topic,
            name,
            partitions: handles,
            router,
        })
    }

    fn validate(&self) -> Result<()> {
        let problem = if self.partitions == Some(0) {
            "a partitioned topic needs at least one partition"
        } else if self.limits.max_bytes == 0 {
            "batch_max_bytes must be at least 1"
        } else if self.limits.max_messages == 0 {
            "batch_max_messages must be at least 1"
        } else if self.max_in_flight == Some(0) {
            "max_in_flight_batches must be at least 1"
        } else {
            return Ok(());
        };
        Err(Error::InvalidArgument(format!(
            "producer on {}: {problem}",
            self.topic
        )))
    }

    /// See [`ProducerBuilder::max_in_flight_batches`].
    fn in_flight_window(&self) -> usize {
        let default = if self.reliable { 64 } else { 16 };
        self.max_in_flight.unwrap_or(default)
    }

    fn dispatch_mode(&self) -> DispatchMode {
        if self.reliable {
            DispatchMode::Reliable
        } else {
            DispatchMode::NonReliable
        }
    }

    fn open_request(&self, partition: &str, name: &str) -> OpenProducer {
        let access_mode = if self.exclusive {
            AccessMode::Exclusive
        } else {
            AccessMode::Shared
        };
        OpenProducer {
            topic: partition.to_owned(),
            producer_name: name.to_owned(),
            access_mode: access_mode as i32,
            dispatch_mode: self.dispatch_mode() as i32,
            schema: self.schema.as_ref().map(Schema::to_proto),
        }
    }

    fn spawn_partition(
        &self,
        partition: &str,
        open: OpenProducer,
        connection: task::Connection,
    ) -> PartitionHandle {
        let partition: Arc<str> = Arc::from(partition);
        let queue = Arc::new(PartitionQueue::new(
            Arc::clone(&partition),
            self.limits,
            self.in_flight_window(),
        ));

        let settings = TaskSettings {
            partition: Arc::clone(&partition),
            open,
            linger: self.linger,
            max_in_flight: self.in_flight_window(),
        };
        let task = PartitionTask::new(self.client.clone(), settings, Arc::clone(&queue));
        let span = tracing::info_span!("client.produce", topic = %partition);
        tokio::spawn(task.run(connection).instrument(span));

        PartitionHandle { queue }
    }
}

/// Publishes messages to one topic; made by [`ProducerBuilder::create`].
///
/// Every method takes `&self`, so one producer can be shared between tasks
/// (in an [`Arc`]). Dropping the producer without [`Producer::close`] lets
/// the queued messages go out while the streams stay up, but gives up on
/// them if a stream breaks afterwards.
#[derive(Debug)]
pub struct Producer {
    topic: String,
    name: String,
    partitions: Vec<PartitionHandle>,
    router: Router,
}

#[derive(Debug)]
struct PartitionHandle {
    queue: Arc<PartitionQueue>,
}

impl Drop for PartitionHandle {
    fn drop(&mut self) {
        self.queue.abandon();
    }
}

impl Producer {
    /// The topic as it was named to [`Client::producer`].
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The producer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many partitions the producer writes to (1 for a topic that is
    /// not partitioned).
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Queues `message` in the open batch of its partition and returns a
    /// future that resolves to the message's id once the broker acks the
    /// batch. Waits only while the partition's queue is full.
    ///
    /// ```no_run
    /// # async fn example(producer: sava_client::Producer) -> sava_client::Result<()> {
    /// use sava_client::Message;
    ///
    /// // Queue many messages first, then wait for their acks.
    /// let mut pending = Vec::new();
    /// for index in 0..100 {
    ///     pending.push(producer.send(Message::new(format!("event {index}"))).await?);
    /// }
    /// for future in pending {
    ///     let id = future.await?;
    ///     println!("stored at offset {}", id.offset);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Producer::close`], or the error that ended
    /// the partition for good (a deleted topic, say). Errors of the message
    /// itself come from the returned [`SendFuture`].
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the message was not
    /// queued and is lost (it is dropped, never sent). Once it completes,
    /// dropping the [`SendFuture`] does not stop the message from being
    /// published.
    pub async fn send(&self, message: Message) -> Result<SendFuture> {
        let index = self.router.choose(message.key(), message.encoded_len());
        let partition = &self.partitions[index];

        partition.queue.send(message).await
    }

    /// Closes the open batches and waits until every message queued before
    /// the call is acknowledged or refused.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Producer::close`], or the error that ended
    /// a partition. Refused messages do not fail the flush: their own
    /// futures carry the error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the wait, nothing else: the batches are
    /// sent anyway.
    pub async fn flush(&self) -> Result<()> {
        let flushes = self
            .partitions
            .iter()
            .map(|partition| partition.queue.flush());
        try_join_all(flushes).await.map(drop)
    }

    /// Sends what is queued, waits for every ack and closes the streams.
    /// Later sends fail with [`Error::Closed`], and so do sends that were
    /// still waiting for room in the in-flight window when it was called.
    ///
    /// # Errors
    ///
    /// The error that ended a partition before its messages were
    /// acknowledged.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the wait; the partitions still finish
    /// sending and then close.
    pub async fn close(&self) -> Result<()> {
        let closes = self
            .partitions
            .iter()
            .map(|partition| partition.queue.close());
        match try_join_all(closes).await {
            Ok(_) | Err(Error::Closed) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// A producer name no other producer is likely to have.
fn generated_name() -> String {
    format!("producer-{:016x}", rand::random::<u64>())
}
