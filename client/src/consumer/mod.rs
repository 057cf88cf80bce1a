//! Consumers: credit-based consumption of a topic and its partitions.
//!
//! A consumer opens one consume stream per partition, each owned by a
//! background task (see `task.rs`), and merges their deliveries into one
//! queue that [`Consumer::recv`] reads. The broker never sends a partition
//! stream more messages than it was granted credits; the consumer grants
//! them again, half a window at a time, as the application takes messages,
//! so at most about one window per partition waits in memory.

mod task;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::future::{join_all, try_join_all};
use sava_proto::sava::v1::{self as proto, Subscribe, start_position::Position};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use self::task::{Control, Event, PartitionTask, TaskSettings, open_stream};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::message::{ReceivedMessage, millis_since_epoch};

/// How the messages of a subscription are shared between its consumers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionType {
    /// One consumer only; another one is refused.
    #[default]
    Exclusive,
    /// Every consumer gets a share of the messages, in no particular order.
    Shared,
    /// One consumer gets every message; the others take over when it goes.
    Failover,
    /// Messages with the same key always go to the same consumer, in order.
    KeyShared,
}

impl SubscriptionType {
    fn to_proto(self) -> proto::SubscriptionType {
        match self {
            SubscriptionType::Exclusive => proto::SubscriptionType::Exclusive,
            SubscriptionType::Shared => proto::SubscriptionType::Shared,
            SubscriptionType::Failover => proto::SubscriptionType::Failover,
            SubscriptionType::KeyShared => proto::SubscriptionType::KeyShared,
        }
    }
}

/// Where a new subscription starts reading. An existing subscription
/// resumes where it was and ignores this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartPosition {
    /// Only messages published after subscribing.
    #[default]
    Latest,
    /// The oldest message still kept.
    Earliest,
    /// This offset, in every partition.
    Offset(u64),
    /// The first message published at or after this time.
    Time(SystemTime),
}

impl StartPosition {
    fn to_proto(self) -> proto::StartPosition {
        let position = match self {
            StartPosition::Latest => Position::Latest(true),
            StartPosition::Earliest => Position::Earliest(true),
            StartPosition::Offset(offset) => Position::Offset(offset),
            StartPosition::Time(time) => Position::TimeMs(millis_since_epoch(time)),
        };
        proto::StartPosition {
            position: Some(position),
        }
    }
}

/// Configures a [`Consumer`]; made by [`Client::consumer`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `subscribe` is called"]
pub struct ConsumerBuilder {
    client: Client,
    topic: String,
    subscription: String,
    name: Option<String>,
    subscription_type: SubscriptionType,
    start: StartPosition,
    key_filters: Vec<String>,
    credits: u32,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client, topic: String, subscription: String) -> ConsumerBuilder {
        ConsumerBuilder {
            client,
            topic,
            subscription,
            name: None,
            subscription_type: SubscriptionType::default(),
            start: StartPosition::default(),
            key_filters: Vec::new(),
            credits: 1000,
        }
    }

    /// The consumer's name (default: generated).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How the subscription shares messages (default
    /// [`SubscriptionType::Exclusive`]).
    pub fn subscription_type(mut self, subscription_type: SubscriptionType) -> Self {
        self.subscription_type = subscription_type;
        self
    }

    /// Where a new subscription starts (default [`StartPosition::Latest`]).
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Key-Shared only: glob patterns of the keys this consumer accepts
    /// (default: every key).
    pub fn key_filters(mut self, filters: Vec<String>) -> Self {
        self.key_filters = filters;
        self
    }

    /// How many messages per partition may be on their way to, or waiting
    /// in, this consumer (default 1000).
    pub fn credits(mut self, credits: u32) -> Self {
        self.credits = credits;
        self
    }

    /// Looks the topic up and subscribes to each of its partitions.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for zero credits; [`Error::Broker`] with
    /// [`ErrorKind::NotFound`](sava_proto::ErrorKind::NotFound) when the
    /// topic does not exist, [`ErrorKind::Conflict`](sava_proto::ErrorKind::Conflict)
    /// when an exclusive subscription has a consumer already or the
    /// subscription has another type; [`Error::Transport`] or
    /// [`Error::Timeout`] when the broker cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the streams opened so far; the
    /// subscription may have been created already.
    pub async fn subscribe(self) -> Result<Consumer> {
        if self.credits == 0 {
            return Err(Error::InvalidArgument(format!(
                "consumer of {} in {}: credits must be at least 1",
                self.topic, self.subscription
            )));
        }
        let name = self.name.clone().unwrap_or_else(generated_name);

        let lookup = self.client.lookup(&self.topic, None).await?;
        let partitions = if lookup.partitions.is_empty() {
            vec![self.topic.clone()]
        } else {
            lookup.partitions.clone()
        };

        let client = &self.client;
        let opening = partitions.iter().enumerate().map(|(index, partition)| {
            let subscribe = self.subscribe_request(partition, &name);
            let stub = client.owner_stub(&lookup, index);
            async move { open_stream(client, stub?, subscribe).await }
        });
        let connections = try_join_all(opening).await?;

        let (events_sender, events) = mpsc::unbounded_channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut reliable = Vec::with_capacity(connections.len());
        let controls = connections
            .into_iter()
            .zip(&partitions)
            .enumerate()
            .map(|(index, (connection, partition))| {
                let partition_reliable = Arc::new(AtomicBool::new(connection.is_reliable()));
                reliable.push(Arc::clone(&partition_reliable));
                let settings = TaskSettings {
                    partition: Arc::from(partition.as_str()),
                    index,
                    subscribe: self.subscribe_request(partition, &name),
                    window: self.credits,
                    dropped: Arc::clone(&dropped),
                    reliable: partition_reliable,
                };
                self.spawn_partition(settings, connection, events_sender.clone())
            })
            .collect::<Vec<_>>();

        Ok(Consumer {
            topic: self.topic,
            subscription: self.subscription,
            name,
            taken: vec![0; controls.len()],
            controls,
            reliable,
            events,
            current: Vec::new().into_iter(),
            flow_chunk: (self.credits / 2).max(1),
            dropped,
        })
    }

    fn subscribe_request(&self, partition: &str, name: &str) -> Subscribe {
        Subscribe {
            topic: partition.to_owned(),
            subscription: self.subscription.clone(),
            consumer_name: name.to_owned(),
            subscription_type: self.subscription_type.to_proto() as i32,
            start: Some(self.start.to_proto()),
            key_filters: self.key_filters.clone(),
            initial_credits: self.credits,
        }
    }

    fn spawn_partition(
        &self,
        settings: TaskSettings,
        connection: task::Connection,
        events: mpsc::UnboundedSender<Event>,
    ) -> mpsc::UnboundedSender<Control> {
        let (control, receiver) = mpsc::unbounded_channel();
        let span = tracing::info_span!(
            "client.consume",
            topic = %settings.partition,
            subscription = %self.subscription,
        );
        let task = PartitionTask::new(self.client.clone(), settings, receiver, events);
        tokio::spawn(task.run(connection).instrument(span));
        control
    }
}

/// Receives the messages of one subscription; made by
/// [`ConsumerBuilder::subscribe`].
///
/// Dropping the consumer ends its streams after sending the acks that
/// wait; [`Consumer::close`] does the same and waits for it.
#[derive(Debug)]
pub struct Consumer {
    topic: String,
    subscription: String,
    name: String,
    controls: Vec<mpsc::UnboundedSender<Control>>,
    /// Per partition, whether its topic is reliable; the others ignore
    /// acks and nacks, so they are not sent.
    reliable: Vec<Arc<AtomicBool>>,
    events: mpsc::UnboundedReceiver<Event>,
    /// The rest of the batch being handed out.
    current: std::vec::IntoIter<ReceivedMessage>,
    /// Messages taken per partition since credits were last granted.
    taken: Vec<u32>,
    flow_chunk: u32,
    dropped: Arc<AtomicU64>,
}

impl Consumer {
    /// The topic as it was named to [`Client::consumer`].
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The subscription's name.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many messages of a non-reliable topic the broker dropped for
    /// this consumer because it did not keep up.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits for the next message from any partition.
    ///
    /// ```no_run
    /// # async fn example(mut consumer: sava_client::Consumer) -> sava_client::Result<()> {
    /// while let Some(message) = consumer.recv().await {
    ///     let message = message?;
    ///     println!("{} at offset {}", message.topic, message.offset);
    ///     consumer.ack(&message)?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Returns `None` once every partition has stopped, and `Some(Err(_))`
    /// once for each partition that stopped for good (its topic was
    /// deleted, say); the other partitions go on delivering.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: if the future is dropped before it
    /// completes, no message is lost; the next call returns it.
    pub async fn recv(&mut self) -> Option<Result<ReceivedMessage>> {
        loop {
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            match self.events.recv().await? {
                Event::Messages(messages) => self.current = messages.into_iter(),
                Event::Failed(error) => return Some(Err(error)),
            }
        }
    }

    /// The next message if one is already here, without waiting: `None`
    /// when none is, whether or not more will come.
    ///
    /// # Errors
    ///
    /// `Some(Err(_))` once for each partition that stopped for good, as for
    /// [`Consumer::recv`].
    pub fn try_recv(&mut self) -> Option<Result<ReceivedMessage>> {
        loop {
            if let Some(message) = self.current.next() {
                self.count_taken(message.partition);
                received_span(&message);
                return Some(Ok(message));
            }
            match self.events.try_recv().ok()? {
                Event::Messages(messages) => self.current = messages.into_iter(),
                Event::Failed(error) => return Some(Err(error)),
            }
        }
    }

    /// Acknowledges `message`: it is not delivered to this subscription
    /// again. Acks are sent in batches, within a few milliseconds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a message from another consumer and
    /// [`Error::Closed`] when the message's partition has stopped.
    pub fn ack(&self, message: &ReceivedMessage) -> Result<()> {
        self.control(message, Control::Ack(message.offset))
    }

    /// Acknowledges `message` and every earlier one of its partition
    /// (Exclusive and Failover subscriptions).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::ack`].
    pub fn ack_cumulative(&self, message: &ReceivedMessage) -> Result<()> {
        self.control(message, Control::AckCumulative(message.offset))
    }

    /// Asks for `message` to be delivered again, after `delay` or at once.
    /// Non-reliable topics ignore nacks.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::ack`].
    pub fn nack(&self, message: &ReceivedMessage, delay: Option<Duration>) -> Result<()> {
        let nack = Control::Nack {
            offset: message.offset,
            delay,
        };
        self.control(message, nack)
    }

    /// Sends the acks that wait and ends every stream.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the wait; the streams still end.
    pub async fn close(self) {
        let closes = self.controls.iter().map(|control| {
            let (done, closed) = oneshot::channel();
            let sent = control.send(Control::Close(done)).is_ok();
            async move {
                if sent {
                    let _ = closed.await;
                }
            }
        });
        join_all(closes).await;
    }

    fn control(&self, message: &ReceivedMessage, control: Control) -> Result<()> {
        let sender = self
            .controls
            .get(message.partition)
            .filter(|_| self.owns(message))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "message at offset {} of {} was not received by consumer `{}`",
                    message.offset, message.topic, self.name
                ))
            })?;
        settled_span(message, &control);
        if !self.reliable[message.partition].load(Ordering::Relaxed) {
            return match sender.is_closed() {
                true => Err(Error::Closed),
                false => Ok(()),
            };
        }
        sender.send(control).map_err(|_| Error::Closed)
    }

    /// Whether `message` came from one of this consumer's partitions.
    fn owns(&self, message: &ReceivedMessage) -> bool {
        let topic = &*message.topic;
        topic == self.topic
            || topic
                .strip_prefix(self.topic.as_str())
                .is_some_and(|rest| rest.starts_with("-part-"))
    }

    /// Grants credits back to a partition once half a window was taken.
    fn count_taken(&mut self, partition: usize) {
        let taken = &mut self.taken[partition];
        *taken += 1;
        if *taken >= self.flow_chunk {
            let _ = self.controls[partition].send(Control::Flow(*taken));
            *taken = 0;
        }
    }
}

/// A consumer name no other consumer is likely to have.
fn generated_name() -> String {
    format!("consumer-{:016x}", rand::random::<u64>())
}

/// Marks the ack or nack of `message` with a span in the OpenTelemetry
/// messaging conventions (operation type `settle`), in the trace its
/// producer started; none for a message that is not traced.
fn settled_span(message: &ReceivedMessage, control: &Control) {
    if !message.is_traced() {
        return;
    }
    let operation = match control {
        Control::Ack(_) => "ack",
        Control::AckCumulative(_) => "ack_cumulative",
        Control::Nack { .. } => "nack",
        _ => return,
    };
    let span = tracing::info_span!(
        "client.settle",
        otel.kind = "consumer",
        messaging.system = "sava",
        messaging.operation.name = operation,
        messaging.operation.type = "settle",
        messaging.destination.name = %message.topic,
        messaging.message.id = message.offset,
    );
    message.continue_trace(&span);
}

/// Marks the receipt of `message` with a span in the OpenTelemetry
/// messaging conventions, in the trace its producer started; none for a
/// message that is not traced.
fn received_span(message: &ReceivedMessage) {
    if !message.is_traced() {
        return;
    }
    let span = tracing::info_span!(
        "client.receive",
        otel.kind = "consumer",
        messaging.system = "sava",
        messaging.operation.name = "receive",
        messaging.operation.type = "receive",
        messaging.destination.name = %message.topic,
        messaging.message.id = message.offset,
    );
    message.continue_trace(&span);
}
