//! The background task that owns one partition's consume stream.
//!
//! The task is the only user of the stream: it forwards deliveries to the
//! consumer handle, passes on the credits the handle grants as the
//! application takes messages, and batches acks (flushed every few
//! milliseconds or at [`ACK_BATCH`] offsets). When the stream breaks it
//! subscribes again with backoff, granting only the credits the application
//! has room for; a reliable topic then delivers the unacked messages again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sava_proto::sava::v1::consume_request::Request;
use sava_proto::sava::v1::consume_response::Response;
use sava_proto::sava::v1::sava_client_client::SavaClientClient;
use sava_proto::sava::v1::{
    Ack, ConsumeRequest, ConsumeResponse, DeliveryBatch, DispatchMode, Flow, Nack, Subscribe,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::message::ReceivedMessage;
use crate::reconnect::{Backoff, is_final};

/// Acks are sent once this many offsets wait.
pub(crate) const ACK_BATCH: usize = 256;

/// Most controls (acks, credits) taken off the queue in one turn.
const CONTROLS_AT_ONCE: usize = 256;

/// Acks are sent at the latest this long after the first one waits.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// How long a closing consumer waits for the broker to end the stream after
/// its last acks, so that they are read before the stream goes away.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// A partition warns about dropped messages at most this often.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What the consumer handle asks of a partition task.
#[derive(Debug)]
pub(crate) enum Control {
    /// The application took this many messages: grant as many credits.
    Flow(u32),
    Ack(u64),
    AckCumulative(u64),
    Nack {
        offset: u64,
        delay: Option<Duration>,
    },
    Close(oneshot::Sender<()>),
}

/// What a partition task hands to the consumer handle.
#[derive(Debug)]
pub(crate) enum Event {
    Messages(Vec<ReceivedMessage>),
    /// The partition stopped for good.
    Failed(Error),
}

/// A live consume stream.
pub(crate) struct Connection {
    requests: mpsc::UnboundedSender<ConsumeRequest>,
    responses: Streaming<ConsumeResponse>,
    reliable: bool,
}

impl Connection {
    /// Whether the broker said the topic is reliable.
    pub(crate) fn is_reliable(&self) -> bool {
        self.reliable
    }

    fn send(&self, request: Request) -> Result<()> {
        let request = ConsumeRequest {
            request: Some(request),
        };
        self.requests
            .send(request)
            .map_err(|_| Error::Protocol("the consume stream stopped taking requests".into()))
    }
}

/// Opens a consume stream on `stub` and waits for the broker's `subscribed`.
pub(crate) async fn open_stream(
    client: &Client,
    mut stub: SavaClientClient<Channel>,
    subscribe: Subscribe,
) -> Result<Connection> {
    let (requests, outgoing) = mpsc::unbounded_channel();
    let topic = subscribe.topic.clone();
    let first = ConsumeRequest {
        request: Some(Request::Subscribe(subscribe)),
    };
    requests
        .send(first)
        .expect("the receiving end is alive until the call below");

    let operation = "subscribing";
    let response = client
        .with_timeout(
            operation,
            stub.consume(UnboundedReceiverStream::new(outgoing)),
        )
        .await??;
    let mut responses = response.into_inner();

    match client
        .with_timeout(operation, responses.message())
        .await??
    {
        Some(ConsumeResponse {
            response: Some(Response::Subscribed(subscribed)),
        }) => Ok(Connection {
            requests,
            responses,
            reliable: subscribed.dispatch_mode == DispatchMode::Reliable as i32,
        }),
        Some(other) => Err(Error::Protocol(format!(
            "expected `subscribed` as the first answer on {topic}, got {other:?}"
        ))),
        None => Err(Error::Protocol(format!(
            "consume stream for {topic} ended before the subscription was confirmed"
        ))),
    }
}

/// What the task needs to know, fixed for its life.
#[derive(Debug, Clone)]
pub(crate) struct TaskSettings {
    /// The partition this task reads.
    pub(crate) partition: Arc<str>,
    /// The partition's index in the consumer.
    pub(crate) index: usize,
    /// The subscribe request, sent again on reconnect with fresh credits.
    pub(crate) subscribe: Subscribe,
    /// The credit window: how many messages may wait in the client.
    pub(crate) window: u32,
    /// Messages the broker dropped for the whole consumer.
    pub(crate) dropped: Arc<AtomicU64>,
    /// Whether the partition's topic is reliable, as its last `subscribed`
    /// said: the consumer handle sends no acks or nacks to the others.
    pub(crate) reliable: Arc<AtomicBool>,
}

/// One partition's task; see the module docs.
pub(crate) struct PartitionTask {
    client: Client,
    settings: TaskSettings,
    control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
    /// Messages received on every stream so far.
    delivered: u64,
    /// Messages the application has taken, as reported by the handle.
    taken: u64,
    acks: Vec<u64>,
    cumulative: Option<u64>,
    ack_deadline: Option<Instant>,
    /// Drops not reported in a warning yet, and when the last one was.
    unreported_drops: u64,
    last_drop_warning: Option<Instant>,
}

impl PartitionTask {
    pub(crate) fn new(
        client: Client,
        settings: TaskSettings,
        control: mpsc::UnboundedReceiver<Control>,
        events: mpsc::UnboundedSender<Event>,
    ) -> PartitionTask {
        PartitionTask {
            client,
            settings,
            control,
            events,
            delivered: 0,
            taken: 0,
            acks: Vec::with_capacity(ACK_BATCH),
            cumulative: None,
            ack_deadline: None,
            unreported_drops: 0,
            last_drop_warning: None,
        }
    }

    /// Runs until the consumer is closed or dropped, or the partition fails
    /// for good.
    pub(crate) async fn run(mut self, connection: Connection) {
        let mut connection = Some(connection);
        let mut backoff = Backoff::new();
        let mut retry_at = Instant::now();
        let mut controls = Vec::with_capacity(CONTROLS_AT_ONCE);
        // One timer, moved when the deadline changes, rather than a new one
        // at every turn of the loop.
        let ack_timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(ack_timer);
        let mut armed_for = None;

        loop {
            if self.ack_deadline != armed_for {
                if let Some(deadline) = self.ack_deadline {
                    ack_timer.as_mut().reset(deadline);
                }
                armed_for = self.ack_deadline;
            }

            tokio::select! {
                biased;

                taken = self.control.recv_many(&mut controls, CONTROLS_AT_ONCE) => {
                    if taken == 0 {
                        self.close(connection.take()).await;
                        return;
                    }
                    for control in controls.drain(..) {
                        if let Control::Close(done) = control {
                            self.close(connection.take()).await;
                            let _ = done.send(());
                            return;
                        }
                        if let Err(error) = self.on_control(control, connection.as_ref()) {
                            connection = None;
                            retry_at = self.broken(&error, &mut backoff);
                        }
                    }
                },

                response = next_response(&mut connection) => {
                    let outcome = match response {
                        Ok(Some(response)) => self.on_response(response),
                        Ok(None) => Err(Error::Protocol("the broker ended the consume stream".into())),
                        Err(status) => Err(Error::from(status)),
                    };
                    match outcome {
                        Ok(true) => {}
                        // The consumer handle is gone: nobody reads any more.
                        Ok(false) => return,
                        Err(error) => {
                            connection = None;
                            retry_at = self.broken(&error, &mut backoff);
                        }
                    }
                },

                () = tokio::time::sleep_until(retry_at), if connection.is_none() => {
                    match self.reconnect().await {
                        Ok(live) => {
                            debug!(topic = %self.settings.partition, "consume stream reopened");
                            self.settings.reliable.store(live.reliable, Ordering::Relaxed);
                            backoff.reset();
                            connection = Some(live);
                        }
                        Err(error) if is_final(&error, backoff.attempts()) => {
                            warn!(topic = %self.settings.partition, %error, "consumer partition failed for good");
                            let _ = self.events.send(Event::Failed(error));
                            return;
                        }
                        Err(error) => retry_at = self.broken(&error, &mut backoff),
                    }
                },

                () = &mut ack_timer, if armed_for.is_some() => {
                    if let Some(live) = &connection
                        && let Err(error) = self.flush_acks(live)
                    {
                        connection = None;
                        retry_at = self.broken(&error, &mut backoff);
                    }
                    // Without a stream the acks wait for the next one.
                    self.ack_deadline = None;
                    armed_for = None;
                },
            }
        }
    }

    fn on_control(&mut self, control: Control, connection: Option<&Connection>) -> Result<()> {
        match control {
            Control::Flow(credits) => {
                self.taken += u64::from(credits);
                // Without a stream the credits are counted at resubscribe.
                if let Some(live) = connection {
                    live.send(Request::Flow(Flow { credits }))?;
                }
            }
            Control::Ack(offset) => {
                self.acks.push(offset);
                self.acks_changed(connection)?;
            }
            Control::AckCumulative(offset) => {
                self.cumulative = Some(self.cumulative.map_or(offset, |known| known.max(offset)));
                self.acks_changed(connection)?;
            }
            Control::Nack { offset, delay } => {
                // A nack lost with a broken stream is harmless: the message
                // is redelivered anyway once the stream is gone.
                if let Some(live) = connection.filter(|live| live.reliable) {
                    let delay_ms = delay.map(|delay| delay.as_millis() as u64);
                    let nack = Nack {
                        offsets: vec![offset],
                        delay_ms,
                    };
                    live.send(Request::Nack(nack))?;
                }
            }
            Control::Close(_) => unreachable!("close is handled by the run loop"),
        }
        Ok(())
    }

    /// Sends the acks when enough wait, or sets the timer that will.
    fn acks_changed(&mut self, connection: Option<&Connection>) -> Result<()> {
        if self.acks.len() >= ACK_BATCH
            && let Some(live) = connection
        {
            return self.flush_acks(live);
        }
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + ACK_DELAY);
        }
        Ok(())
    }

    fn flush_acks(&mut self, connection: &Connection) -> Result<()> {
        self.ack_deadline = None;
        if self.acks.is_empty() && self.cumulative.is_none() {
            return Ok(());
        }
        let ack = Ack {
            offsets: std::mem::replace(&mut self.acks, Vec::with_capacity(ACK_BATCH)),
            cumulative: self.cumulative.take(),
        };
        // Non-reliable topics ignore acks; do not send them the traffic.
        if connection.reliable {
            connection.send(Request::Ack(ack))?;
        }
        Ok(())
    }

    /// Hands a delivery batch to the consumer. Returns false once the
    /// consumer handle is gone.
    fn on_response(&mut self, response: ConsumeResponse) -> Result<bool> {
        let batch: DeliveryBatch = match response.response {
            Some(Response::Deliveries(batch)) => batch,
            Some(Response::Subscribed(_)) => {
                warn!(topic = %self.settings.partition, "ignoring a second `subscribed`");
                return Ok(true);
            }
            None => return Ok(true),
        };

        if batch.dropped > 0 {
            self.count_drops(batch.dropped);
        }
        if batch.messages.is_empty() {
            return Ok(true);
        }

        self.delivered += batch.messages.len() as u64;
        let partition = &self.settings.partition;
        let index = self.settings.index;
        let messages = batch
            .messages
            .into_iter()
            .map(|delivery| ReceivedMessage::from_delivery(delivery, partition, index))
            .collect();
        Ok(self.events.send(Event::Messages(messages)).is_ok())
    }

    /// Counts messages the broker dropped, warning once in a while rather
    /// than for every batch.
    fn count_drops(&mut self, dropped: u64) {
        self.settings.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.unreported_drops += dropped;

        let now = Instant::now();
        let due = self
            .last_drop_warning
            .is_none_or(|last| now.duration_since(last) >= DROP_WARNING_INTERVAL);
        if due {
            warn!(
                topic = %self.settings.partition,
                dropped = self.unreported_drops,
                "the broker dropped messages this consumer could not keep up with"
            );
            self.unreported_drops = 0;
            self.last_drop_warning = Some(now);
        }
    }

    /// Subscribes again, granting the credits the application has room for,
    /// and sends the acks that were waiting.
    async fn reconnect(&mut self) -> Result<Connection> {
        // The partition's own owner: partitions may live on other brokers.
        let lookup = self.client.lookup(&self.settings.partition, None).await?;
        let stub = self.client.owner_stub(&lookup, 0)?;

        let waiting_in_client = self.delivered.saturating_sub(self.taken);
        let credits = u64::from(self.settings.window).saturating_sub(waiting_in_client);
        let mut subscribe = self.settings.subscribe.clone();
        subscribe.initial_credits = credits as u32;

        let connection = open_stream(&self.client, stub, subscribe).await?;
        self.flush_acks(&connection)?;
        Ok(connection)
    }

    /// Sends the last acks and ends the stream, giving the broker a moment
    /// to read them.
    async fn close(&mut self, connection: Option<Connection>) {
        let Some(connection) = connection else {
            return;
        };
        if let Err(error) = self.flush_acks(&connection) {
            debug!(topic = %self.settings.partition, %error, "last acks not sent");
            return;
        }

        let Connection {
            requests,
            mut responses,
            ..
        } = connection;
        drop(requests);
        let drain = async { while let Ok(Some(_)) = responses.message().await {} };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }

    /// Logs a broken stream and returns when to try again.
    fn broken(&self, error: &Error, backoff: &mut Backoff) -> Instant {
        let delay = backoff.next_delay();
        warn!(
            topic = %self.settings.partition,
            %error,
            retry_in_ms = delay.as_millis() as u64,
            "consume stream broke; resubscribing"
        );
        Instant::now() + delay
    }
}

/// The next answer on the stream, or never when there is no stream.
async fn next_response(
    connection: &mut Option<Connection>,
) -> Result<Option<ConsumeResponse>, tonic::Status> {
    match connection {
        Some(connection) => connection.responses.message().await,
        None => std::future::pending().await,
    }
}
