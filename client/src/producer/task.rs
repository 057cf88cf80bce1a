//! The background task that owns one partition's publish stream.
//!
//! The task sends the partition's batches: it takes the closed batches off
//! the partition's queue (`queue.rs`), closes the open one at its linger
//! deadline, keeps at most `max_in_flight` of them unanswered, and settles
//! every batch's futures from the broker's answers.
//! When the stream breaks it looks the topic up again, reopens the producer
//! under the same name, and sends the unanswered batches again. The broker
//! may have stored some of them already, so delivery is at least once.

use std::sync::Arc;
use std::time::Duration;

use sava_proto::sava::v1::publish_request::Request;
use sava_proto::sava::v1::publish_response::Response;
use sava_proto::sava::v1::sava_client_client::SavaClientClient;
use sava_proto::sava::v1::{OpenProducer, PublishRequest, PublishResponse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::batch::{InFlight, ReadyBatch};
use super::queue::PartitionQueue;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::reconnect::{Backoff, is_final, sleep_until_some};

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
    queue: Arc<PartitionQueue>,
    in_flight: InFlight,
    /// Batches taken off the queue, reused between turns.
    taken: Vec<ReadyBatch>,
}

impl PartitionTask {
    pub(crate) fn new(
        client: Client,
        settings: TaskSettings,
        queue: Arc<PartitionQueue>,
    ) -> PartitionTask {
        PartitionTask {
            client,
            settings,
            queue,
            in_flight: InFlight::default(),
            taken: Vec::new(),
        }
    }

    /// Runs until the producer is closed (or dropped) and every message is
    /// settled, or until the partition fails for good.
    pub(crate) async fn run(mut self, connection: Connection) {
        let mut connection = Some(connection);
        let mut backoff = Backoff::new();
        let mut retry_at = Instant::now();

        loop {
            if let Some(live) = &connection
                && let Err(error) = self.send_ready(live)
            {
                connection = None;
                retry_at = self.broken(&error, &mut backoff);
            }
            self.queue.settle_flushes(self.in_flight.oldest_sequence());

            if self.queue.is_finished(self.in_flight.is_empty()) {
                break;
            }
            if connection.is_none() && self.queue.is_abandoned() {
                // Nobody can wait for a reconnect any more.
                self.fail_everything(Error::Closed);
                return;
            }

            let batch_deadline = self.batch_deadline();

            tokio::select! {
                biased;

                response = next_response(&mut connection) => {
                    match response {
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
                    }
                    self.queue.answered(self.in_flight.len());
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

                // Without linger, `send_ready` closes the open batch.
                () = self.queue.woken() => {},

                () = sleep_until_some(batch_deadline) => {
                    self.queue.close_batch_older_than(self.settings.linger);
                },
            }
        }

        self.queue.finish();
    }

    /// Sends closed batches while the in-flight window has room.
    fn send_ready(&mut self, connection: &Connection) -> Result<()> {
        let close_open = self.settings.linger.is_zero();
        self.queue
            .take_ready(self.in_flight.len(), close_open, &mut self.taken);
        let mut outcome = Ok(());
        for batch in self.taken.drain(..) {
            let request = PublishRequest {
                request: Some(Request::Batch(self.in_flight.start(batch))),
            };
            // The batch stays in flight either way: a failed send is
            // replayed on the next stream.
            if outcome.is_ok() && connection.requests.try_send(request).is_err() {
                outcome = Err(Error::Protocol(
                    "the publish stream stopped taking batches".into(),
                ));
            }
        }
        outcome
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

    /// When the open batch must close, when lingering.
    fn batch_deadline(&self) -> Option<Instant> {
        let linger = self.settings.linger;
        if linger.is_zero() {
            return None;
        }
        // A linger too long to add is no deadline at all.
        self.queue
            .opened_at()
            .and_then(|opened| Instant::from_std(opened).checked_add(linger))
    }

    /// Fails every message, queued or in flight, and every waiter, with
    /// `error`, and remembers it for later senders.
    fn fail_everything(&mut self, error: Error) {
        warn!(topic = %self.settings.partition, %error, "producer partition failed for good");
        self.queue.fail(&error);
        self.in_flight.fail_all(&error);
    }
}

impl Drop for PartitionTask {
    /// A task that ends any other way than `finish` or `fail_everything` (a
    /// panic, or its runtime shutting down) fails what waits in its queue,
    /// so no flush, close or send waits for it forever.
    fn drop(&mut self) {
        self.queue.fail(&Error::Closed);
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
