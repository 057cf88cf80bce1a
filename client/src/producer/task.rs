//! The background task that owns one partition's publish stream.
//!
//! The task is the single writer of the partition's batches: it takes
//! queued messages off the producer's channel, closes batches at their
//! limits or linger deadline, keeps at most `max_in_flight` of them
//! unanswered, and settles every message's future from the broker's answers.
//! When the stream breaks it looks the topic up again, reopens the producer
//! under the same name, and sends the unanswered batches again. The broker
//! may have stored some of them already, so delivery is at least once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sava_proto::sava::v1::publish_request::Request;
use sava_proto::sava::v1::publish_response::Response;
use sava_proto::sava::v1::sava_client_client::SavaClientClient;
use sava_proto::sava::v1::{OpenProducer, PublishRequest, PublishResponse};
use sava_proto::telemetry::{TRACEPARENT, sampling_ratio, traceparent_of};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::batch::{Accumulator, BatchLimits, InFlight, Pending};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::reconnect::{Backoff, is_final, sleep_until_some};

/// What a producer handle sends to its partition tasks, in one queue so a
/// flush or close covers every message queued before it.
#[derive(Debug)]
pub(crate) enum Input {
    Message(Pending),
    Flush(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

/// The error that ended a partition task, for the senders that come later.
pub(crate) type FatalSlot = Arc<Mutex<Option<Error>>>;

/// A live publish stream.
pub(crate) struct Connection {
    requests: mpsc::Sender<PublishRequest>,
    responses: Streaming<PublishResponse>,
}

/// What the task needs to know, fixed for its life.
#[derive(Debug, Clone)]
pub(crate) struct TaskSettings {
    /// The partition this task writes to.
    pub(crate) partition: Arc<str>,
    pub(crate) open: OpenProducer,
    pub(crate) limits: BatchLimits,
    pub(crate) linger: Duration,
    pub(crate) max_in_flight: usize,
}

/// Opens a publish stream on `stub` and waits for the broker's `opened`.
pub(crate) async fn open_stream(
    client: &Client,
    mut stub: SavaClientClient<Channel>,
    open: &OpenProducer,
    max_in_flight: usize,
) -> Result<Connection> {
    // Room for every in-flight batch plus the open, so sending never waits.
    let (requests, outgoing) = mpsc::channel(max_in_flight + 1);
    let first = PublishRequest {
        request: Some(Request::Open(open.clone())),
    };
    requests
        .try_send(first)
        .expect("a new channel has room for its first request");

    let operation = "opening a producer";
    let response = client
        .with_timeout(operation, stub.publish(ReceiverStream::new(outgoing)))
        .await??;
    let mut responses = response.into_inner();

    match client
        .with_timeout(operation, responses.message())
        .await??
    {
        Some(PublishResponse {
            response: Some(Response::Opened(_)),
        }) => Ok(Connection {
            requests,
            responses,
        }),
        Some(other) => Err(Error::Protocol(format!(
            "expected `opened` as the first answer for producer `{}` on {}, got {other:?}",
            open.producer_name, open.topic
        ))),
        None => Err(Error::Protocol(format!(
            "publish stream for {} ended before the producer was opened",
            open.topic
        ))),
    }
}

/// One partition's task; see the module docs.
pub(crate) struct PartitionTask {
    client: Client,
    settings: TaskSettings,
    input: mpsc::Receiver<Input>,
    fatal: FatalSlot,
    accumulator: Accumulator,
    in_flight: InFlight,
    /// Flushes waiting for every batch up to a sequence to be answered.
    flushes: Vec<(Option<u64>, oneshot::Sender<Result<()>>)>,
    close: Option<oneshot::Sender<Result<()>>>,
    /// False once every producer handle is gone.
    input_open: bool,
}

impl PartitionTask {
    pub(crate) fn new(
        client: Client,
        settings: TaskSettings,
        input: mpsc::Receiver<Input>,
        fatal: FatalSlot,
    ) -> PartitionTask {
        PartitionTask {
            client,
            accumulator: Accumulator::new(settings.limits),
            settings,
            input,
            fatal,
            in_flight: InFlight::default(),
            flushes: Vec::new(),
            close: None,
            input_open: true,
        }
    }

    /// Runs until the producer is closed (or dropped) and every message is
    /// settled, or until the partition fails for good.
    pub(crate) async fn run(mut self, connection: Connection) {
        let mut connection = Some(connection);
        let mut backoff = Backoff::new();
        let mut retry_at = Instant::now();
        let mut inputs = Vec::with_capacity(self.settings.limits.max_messages);

        loop {
            if let Some(live) = &connection
                && let Err(error) = self.send_ready(live)
            {
                connection = None;
                retry_at = self.broken(&error, &mut backoff);
            }
            self.settle_flushes();

            if self.is_finished() {
                break;
            }
            if connection.is_none() && !self.input_open {
                // Nobody can wait for a reconnect any more.
                self.fail_everything(Error::Closed);
                return;
            }

            let batch_deadline = self.batch_deadline();
            let can_take = self.can_take();
            let limit = self.settings.limits.max_messages;

            tokio::select! {
                biased;

                response = next_response(&mut connection) => match response {
                    Ok(Some(response)) => {
                        if let Some(error) = self.on_response(response) {
                            connection = None;
                            retry_at = self.broken(&error, &mut backoff);
                        }
                    }
                    Ok(None) => {
                        connection = None;
                        let error = Error::Protocol("the broker ended the publish stream".into());
                        retry_at = self.broken(&error, &mut backoff);
                    }
                    Err(status) => {
                        connection = None;
                        retry_at = self.broken(&Error::from(status), &mut backoff);
                    }
                },

                () = tokio::time::sleep_until(retry_at), if connection.is_none() => {
                    match self.reconnect().await {
                        Ok(live) => {
                            debug!(topic = %self.settings.partition, "publish stream reopened");
                            backoff.reset();
                            connection = Some(live);
                        }
                        Err(error) if is_final(&error, backoff.attempts()) => {
                            self.fail_everything(error);
                            return;
                        }
                        Err(error) => retry_at = self.broken(&error, &mut backoff),
                    }
                },

                taken = self.input.recv_many(&mut inputs, limit), if can_take => {
                    if taken == 0 {
                        self.input_open = false;
                        self.accumulator.close();
                    }
                    let now = std::time::Instant::now();
                    for input in inputs.drain(..) {
                        self.take(input, now);
                    }
                    if self.settings.linger.is_zero() {
                        self.accumulator.close();
                    }
                },

                () = sleep_until_some(batch_deadline) => self.accumulator.close(),
            }
        }

        if let Some(close) = self.close.take() {
            let _ = close.send(Ok(()));
        }
    }

    /// Handles one message, flush or close taken from the queue.
    fn take(&mut self, input: Input, now: std::time::Instant) {
        match input {
            Input::Message(pending) => self.push(pending, now),
            Input::Flush(done) => {
                self.accumulator.close();
                let last = self.accumulator.last_closed_sequence();
                self.flushes.push((last, done));
            }
            Input::Close(done) => {
                self.accumulator.close();
                self.close = Some(done);
            }
        }
    }

    /// Queues a message. A share of the batches is traced (see
    /// `sava_proto::telemetry`): a `client.send` span for the whole batch,
    /// lasting until its answer, whose trace the batch's first message
    /// carries in its `traceparent` attribute for the broker and the
    /// consumers to continue.
    fn push(&mut self, mut pending: Pending, now: std::time::Instant) {
        let traced = self.accumulator.opens_batch(&pending.message)
            && !pending.message.attributes().contains_key(TRACEPARENT)
            && starts_trace();
        if !traced {
            self.accumulator.push(pending, now);
            return;
        }
        let span = tracing::info_span!(
            parent: None,
            "client.send",
            otel.kind = "producer",
            messaging.system = "sava",
            messaging.operation.name = "send",
            messaging.operation.type = "send",
            messaging.destination.name = %self.settings.partition,
            messaging.batch.message_count = tracing::field::Empty,
            messaging.message.id = tracing::field::Empty,
        );
        if let Some(traceparent) = traceparent_of(&span) {
            pending.message = pending.message.with_attribute(TRACEPARENT, traceparent);
        }
        self.accumulator.push_traced(pending, now, span);
    }

    /// Sends closed batches while the in-flight window has room.
    fn send_ready(&mut self, connection: &Connection) -> Result<()> {
        while self.in_flight.len() < self.settings.max_in_flight {
            let Some(batch) = self.accumulator.pop_ready() else {
                break;
            };
            let request = PublishRequest {
                request: Some(Request::Batch(self.in_flight.start(batch))),
            };
            // The batch stays in flight either way: a failed send is
            // replayed on the next stream.
            connection
                .requests
                .try_send(request)
                .map_err(|_| Error::Protocol("the publish stream stopped taking batches".into()))?;
        }
        Ok(())
    }

    /// Settles what `response` answers. Returns why the stream must be
    /// reopened when the broker refused a batch for now (the topic moves,
    /// or the broker cannot take messages): the batch stays in flight and
    /// goes again, in order, on the new stream after a fresh lookup.
    fn on_response(&mut self, response: PublishResponse) -> Option<Error> {
        let outcome = match response.response {
            Some(Response::Ack(ack)) => self.in_flight.on_ack(&ack, &self.settings.partition),
            Some(Response::Error(refusal))
                if tonic::Code::from(refusal.code) == tonic::Code::Unavailable =>
            {
                return Some(Error::Rejected {
                    kind: sava_proto::ErrorKind::Unavailable,
                    message: refusal.message,
                    message_index: refusal.message_index,
                });
            }
            Some(Response::Error(refusal)) => self.in_flight.on_error(refusal),
            Some(Response::Opened(_)) => Err(Error::Protocol("a second `opened`".into())),
            None => Err(Error::Protocol("an empty publish response".into())),
        };
        if let Err(error) = outcome {
            warn!(topic = %self.settings.partition, %error, "ignoring a publish answer");
        }
        None
    }

    /// Looks the topic up again, reopens the stream and replays the batches
    /// that were not answered.
    async fn reconnect(&self) -> Result<Connection> {
        // The partition's own owner: partitions may live on other brokers.
        let lookup = self.client.lookup(&self.settings.partition, None).await?;
        let stub = self.client.owner_stub(&lookup, 0)?;
        let connection = open_stream(
            &self.client,
            stub,
            &self.settings.open,
            self.settings.max_in_flight,
        )
        .await?;

        for batch in self.in_flight.replay() {
            let request = PublishRequest {
                request: Some(Request::Batch(batch)),
            };
            connection
                .requests
                .try_send(request)
                .map_err(|_| Error::Protocol("the new publish stream closed at once".into()))?;
        }
        Ok(connection)
    }

    /// Logs a broken stream and returns when to try again.
    fn broken(&self, error: &Error, backoff: &mut Backoff) -> Instant {
        let delay = backoff.next_delay();
        warn!(
            topic = %self.settings.partition,
            %error,
            retry_in_ms = delay.as_millis() as u64,
            in_flight = self.in_flight.len(),
            "publish stream broke; reconnecting"
        );
        Instant::now() + delay
    }

    /// Answers the flushes whose batches are all settled.
    fn settle_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let oldest_unsettled = [
            self.in_flight.oldest_sequence(),
            self.accumulator.oldest_sequence(),
        ]
        .into_iter()
        .flatten()
        .min();

        let (settled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(last, _)| match (*last, oldest_unsettled) {
                (Some(last), Some(oldest)) => last < oldest,
                _ => true,
            });
        self.flushes = waiting;
        for (_, done) in settled {
            let _ = done.send(Ok(()));
        }
    }

    fn is_finished(&self) -> bool {
        let stopping = self.close.is_some() || !self.input_open;
        stopping && self.accumulator.is_empty() && self.in_flight.is_empty()
    }

    /// Whether to take more messages off the queue: not when closing, and
    /// not while the window is full (that is the producer's backpressure).
    fn can_take(&self) -> bool {
        let queued = self.in_flight.len() + self.accumulator.ready_len();
        self.input_open && self.close.is_none() && queued < self.settings.max_in_flight
    }

    /// When the open batch must close, when lingering.
    fn batch_deadline(&self) -> Option<Instant> {
        let linger = self.settings.linger;
        if linger.is_zero() {
            return None;
        }
        self.accumulator
            .opened_at()
            .map(|opened| Instant::from_std(opened) + linger)
    }

    /// Fails every message, queued or in flight, and every waiter, with
    /// `error`, and remembers it for later senders.
    fn fail_everything(&mut self, error: Error) {
        warn!(topic = %self.settings.partition, %error, "producer partition failed for good");

        self.input.close();
        let now = std::time::Instant::now();
        while let Ok(input) = self.input.try_recv() {
            self.take(input, now);
        }
        self.accumulator.fail_all(&error);
        self.in_flight.fail_all(&error);

        for (_, done) in self.flushes.drain(..) {
            let _ = done.send(Err(error.duplicate()));
        }
        if let Some(close) = self.close.take() {
            let _ = close.send(Err(error.duplicate()));
        }
        *self
            .fatal
            .lock()
            .expect("the fatal error lock is never held across a panic") = Some(error);
    }
}

/// The next answer on the stream, or never when there is no stream.
async fn next_response(
    connection: &mut Option<Connection>,
) -> Result<Option<PublishResponse>, tonic::Status> {
    match connection {
        Some(connection) => connection.responses.message().await,
        None => std::future::pending().await,
    }
}

/// Whether to trace a batch: true for a share [`sampling_ratio`] of them.
fn starts_trace() -> bool {
    let ratio = sampling_ratio();
    ratio > 0.0 && (ratio >= 1.0 || rand::random::<f64>() < ratio)
}
