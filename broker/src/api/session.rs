//! A consumer's stream session: claims the consumer's buffer for one gRPC
//! stream and gives it back when the stream is dropped, whatever the reason
//! (the client went away, the server is stopping, a newer session took
//! over).

use std::collections::VecDeque;

use futures::Stream;
use sava_proto::telemetry::{carries_trace, pairs};

use crate::broker::ConsumerEntry;
use crate::dispatch::consumer::DeliveryReceiver;
use crate::error::BrokerError;
use crate::message::Delivery;

/// Holds the session open; dropping it detaches the consumer.
pub struct SessionGuard {
    entry: ConsumerEntry,
    session: u64,
    leave: Option<std::sync::Arc<crate::broker::Broker>>,
}

impl SessionGuard {
    /// Claims the consumer's buffer. A second stream for the same consumer
    /// replaces the first, which then ends.
    pub fn attach(entry: ConsumerEntry) -> Result<(SessionGuard, DeliveryReceiver), BrokerError> {
        let (session, receiver) = entry.handle.attach();
        if session > 1 {
            entry.subscription.session_started(&entry.handle)?;
        }
        Ok((
            SessionGuard {
                entry,
                session,
                leave: None,
            },
            receiver,
        ))
    }

    /// Makes the end of this session the end of the consumer: native
    /// clients resubscribe by name when they reconnect, so they need no
    /// grace period (Danube clients reattach by id and do).
    pub fn leave_on_end(mut self, broker: std::sync::Arc<crate::broker::Broker>) -> Self {
        self.leave = Some(broker);
        self
    }

    pub fn entry(&self) -> &ConsumerEntry {
        &self.entry
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if !self.entry.handle.detach(self.session) {
            return;
        }
        match &self.leave {
            Some(broker) => broker.close_consumer(self.entry.handle.id),
            None => self.entry.subscription.session_ended(self.entry.handle.id),
        }
    }
}

/// The session's deliveries one at a time, as Danube's stream sends them.
/// The guard lives inside the stream, so dropping the stream detaches.
pub fn one_by_one(
    guard: SessionGuard,
    receiver: DeliveryReceiver,
) -> impl Stream<Item = Delivery> + Send {
    let state = (receiver, VecDeque::<Delivery>::new(), guard);
    futures::stream::unfold(state, |(mut receiver, mut queue, guard)| async move {
        if queue.is_empty() {
            let chunk = receiver.recv().await?;
            guard.entry.handle.taken(guard.session, &chunk);
            dispatched(&guard.entry, &chunk);
            queue.extend(chunk);
        }
        let delivery = queue.pop_front()?;
        Some((delivery, (receiver, queue, guard)))
    })
}

/// The session's deliveries in batches of at most `max`, as soon as any
/// are there and credits allow: a batch takes whatever is buffered, so a
/// busy consumer gets full batches and an idle one each message at once.
pub fn batched(
    guard: SessionGuard,
    receiver: DeliveryReceiver,
    max: usize,
) -> impl Stream<Item = (Vec<Delivery>, u64)> + Send {
    let state = (receiver, VecDeque::<Delivery>::new(), guard);
    futures::stream::unfold(state, move |(mut receiver, mut queue, guard)| async move {
        if queue.is_empty() {
            queue.extend(receiver.recv().await?);
        }
        while queue.len() < max {
            let Ok(chunk) = receiver.try_recv() else {
                break;
            };
            queue.extend(chunk);
        }
        let handle = &guard.entry.handle;
        let allowed = handle.take_credits(queue.len().min(max)).await;
        let batch: Vec<Delivery> = queue.drain(..allowed).collect();
        handle.taken(guard.session, &batch);
        dispatched(&guard.entry, &batch);
        let dropped = handle.take_dropped();
        Some(((batch, dropped), (receiver, queue, guard)))
    })
}

/// Marks the hand-over of `batch` to a consumer's stream with a span in the
/// trace of its first traced message (the `traceparent` attribute); no span
/// when none is traced.
fn dispatched(entry: &ConsumerEntry, batch: &[Delivery]) {
    let traced = batch
        .iter()
        .find(|d| carries_trace(pairs(&d.message.attributes)));
    let Some(traced) = traced else {
        return;
    };
    let span = tracing::info_span!(
        "broker.dispatch",
        otel.kind = "producer",
        messaging.system = "sava",
        messaging.operation.name = "deliver",
        messaging.operation.type = "send",
        messaging.destination.name = %entry.topic.name,
        messaging.consumer.group.name = %entry.subscription.name,
        messaging.message.id = traced.message.offset,
        messaging.batch.message_count = batch.len(),
        consumer = %entry.handle.name,
    );
    sava_proto::telemetry::continue_trace(&span, pairs(&traced.message.attributes));
}
