//! The queue of one partition, shared by the producer handle and the
//! partition's task.
//!
//! The handle adds each message to the open batch under a lock and gets the
//! message's future back at once; the task takes the closed batches and
//! sends them. The handle wakes the task only when a batch opens (its
//! linger starts) or closes, so a busy producer costs one lock per message
//! and one wake-up per batch, rather than a channel send per message.
//!
//! Backpressure: while the in-flight window is full and a closed batch
//! already waits, senders wait for the broker's next answer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sava_proto::telemetry::{TRACEPARENT, sampling_ratio, traceparent_of};
use tokio::sync::{Notify, oneshot};

use super::batch::{Accumulator, BatchLimits, ReadyBatch};
use super::outcome::SendFuture;
use crate::error::{Error, Result};
use crate::message::Message;

/// A flush or close waiting for the task.
type Done = oneshot::Sender<Result<()>>;

#[derive(Debug)]
pub(crate) struct PartitionQueue {
    partition: Arc<str>,
    max_in_flight: usize,
    state: Mutex<State>,
    /// Wakes the task: a batch opened or closed, a flush or close waits.
    task: Notify,
    /// Wakes senders waiting for room, after an answer or at the end.
    room: Notify,
}

#[derive(Debug)]
struct State {
    accumulator: Accumulator,
    /// Batches sent and not answered yet, as the task last counted them.
    in_flight: usize,
    /// Flushes waiting for every batch up to a sequence to be answered.
    flushes: Vec<(Option<u64>, Done)>,
    /// Closes waiting for every batch to be answered.
    closes: Vec<Done>,
    /// No more messages: `close` was called or every handle is gone.
    closing: bool,
    /// Every handle is gone: nobody waits for what is left.
    abandoned: bool,
    /// Why the partition ended, once it has, for later callers.
    ended: Option<Error>,
}

impl PartitionQueue {
    pub(crate) fn new(
        partition: Arc<str>,
        limits: BatchLimits,
        max_in_flight: usize,
    ) -> PartitionQueue {
        PartitionQueue {
            partition,
            max_in_flight,
            state: Mutex::new(State {
                accumulator: Accumulator::new(limits),
                in_flight: 0,
                flushes: Vec::new(),
                closes: Vec::new(),
                closing: false,
                abandoned: false,
                ended: None,
            }),
            task: Notify::new(),
            room: Notify::new(),
        }
    }

    // The producer handle's side.

    /// Adds `message` to the open batch, waiting for room first.
    pub(crate) async fn send(&self, message: Message) -> Result<SendFuture> {
        loop {
            {
                let mut state = self.lock();
                state.refuse()?;
                if state.has_room(self.max_in_flight) {
                    let (future, wake) = self.push(&mut state, message);
                    drop(state);
                    if wake {
                        self.task.notify_one();
                    }
                    return Ok(future);
                }
            }
            // No room: register for the next answer, then look again, so
            // an answer between the two looks is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let state = self.lock();
                state.refuse()?;
                if state.has_room(self.max_in_flight) {
                    continue;
                }
            }
            room.await;
        }
    }

    /// Closes the open batch and waits until it and every earlier one are
    /// answered.
    pub(crate) async fn flush(&self) -> Result<()> {
        let (done, answer) = oneshot::channel();
        {
            let mut state = self.lock();
            if let Some(error) = &state.ended {
                return Err(error.duplicate());
            }
            state.accumulator.close();
            let last = state.accumulator.last_closed_sequence();
            state.flushes.push((last, done));
        }
        self.task.notify_one();
        answer.await.unwrap_or(Err(Error::Closed))
    }

    /// Takes no more messages and waits until every batch is answered.
    pub(crate) async fn close(&self) -> Result<()> {
        let (done, answer) = oneshot::channel();
        {
            let mut state = self.lock();
            if let Some(error) = &state.ended {
                return Err(error.duplicate());
            }
            state.closing = true;
            state.accumulator.close();
            state.closes.push(done);
        }
        self.task.notify_one();
        self.room.notify_waiters();
        answer.await.unwrap_or(Err(Error::Closed))
    }

    /// Every handle is gone: the task sends what is queued and ends.
    pub(crate) fn abandon(&self) {
        {
            let mut state = self.lock();
            state.closing = true;
            state.abandoned = true;
            state.accumulator.close();
        }
        self.task.notify_one();
    }

    /// Queues a message. A share of the batches is traced (see
    /// `sava_proto::telemetry`): a `client.send` span for the whole batch,
    /// lasting until its answer, whose trace the batch's first message
    /// carries in its `traceparent` attribute for the broker and the
    /// consumers to continue. Returns the message's future and whether the
    /// task must look at the queue (a batch opened or closed).
    fn push(&self, state: &mut State, mut message: Message) -> (SendFuture, bool) {
        let accumulator = &mut state.accumulator;
        let opens = accumulator.opened_at().is_none();
        let ready_before = accumulator.ready_len();
        let now = Instant::now();

        let traced = accumulator.opens_batch(&message)
            && !message.attributes().contains_key(TRACEPARENT)
            && starts_trace();
        let future = if traced {
            let span = tracing::info_span!(
                parent: None,
                "client.send",
                otel.kind = "producer",
                messaging.system = "sava",
                messaging.operation.name = "send",
                messaging.operation.type = "send",
                messaging.destination.name = %self.partition,
                messaging.batch.message_count = tracing::field::Empty,
                messaging.message.id = tracing::field::Empty,
            );
            if let Some(traceparent) = traceparent_of(&span) {
                message = message.with_attribute(TRACEPARENT, traceparent);
            }
            accumulator.push_traced(message, now, span)
        } else {
            accumulator.push(message, now)
        };
        (future, opens || accumulator.ready_len() > ready_before)
    }

    // The partition task's side.

    /// Waits until a handle wakes the task.
    pub(crate) async fn woken(&self) {
        self.task.notified().await;
    }

    /// Takes the closed batches that fit in the window beside `in_flight`;
    /// with `close_open` (no linger), the open batch too when room is left.
    /// Senders waiting for room look again when a batch was taken, since a
    /// queued batch leaving makes room for the next one.
    pub(crate) fn take_ready(
        &self,
        in_flight: usize,
        close_open: bool,
        into: &mut Vec<ReadyBatch>,
    ) {
        let mut state = self.lock();
        let room = |into: &Vec<ReadyBatch>| in_flight + into.len() < self.max_in_flight;
        while room(into) {
            let Some(batch) = state.accumulator.pop_ready() else {
                if close_open && state.accumulator.opened_at().is_some() {
                    state.accumulator.close();
                    continue;
                }
                break;
            };
            into.push(batch);
        }
        state.in_flight = in_flight + into.len();
        drop(state);
        if !into.is_empty() {
            self.room.notify_waiters();
        }
    }

    /// Records how many batches are in flight after answers, and lets the
    /// senders waiting for room try again.
    pub(crate) fn answered(&self, in_flight: usize) {
        self.lock().in_flight = in_flight;
        self.room.notify_waiters();
    }

    /// When the open batch was opened, if there is one.
    pub(crate) fn opened_at(&self) -> Option<Instant> {
        self.lock().accumulator.opened_at()
    }

    /// Closes the open batch if it has been open for `linger` or longer.
    pub(crate) fn close_batch_older_than(&self, linger: Duration) {
        let mut state = self.lock();
        if state
            .accumulator
            .opened_at()
            .is_some_and(|opened| opened.elapsed() >= linger)
        {
            state.accumulator.close();
        }
    }

    /// Answers the flushes whose batches are all answered, given the oldest
    /// batch still in flight.
    pub(crate) fn settle_flushes(&self, oldest_in_flight: Option<u64>) {
        let mut state = self.lock();
        if state.flushes.is_empty() {
            return;
        }
        let oldest_unsettled = [oldest_in_flight, state.accumulator.oldest_sequence()]
            .into_iter()
            .flatten()
            .min();
        let (settled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.flushes)
            .into_iter()
            .partition(|(last, _)| match (*last, oldest_unsettled) {
                (Some(last), Some(oldest)) => last < oldest,
                _ => true,
            });
        state.flushes = waiting;
        drop(state);
        for (_, done) in settled {
            let _ = done.send(Ok(()));
        }
    }

    /// Whether the task may end: no more messages come and none is left.
    pub(crate) fn is_finished(&self, in_flight_empty: bool) -> bool {
        let state = self.lock();
        state.closing && state.accumulator.is_empty() && in_flight_empty
    }

    /// Whether every handle is gone, so nobody waits for a reconnect.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.lock().abandoned
    }

    /// Ends the queue after everything was answered: the closes succeed
    /// and later callers get [`Error::Closed`].
    pub(crate) fn finish(&self) {
        self.end(None);
    }

    /// Fails every queued message and every waiter with `error`, which
    /// later callers get too; nothing when the queue has ended already.
    pub(crate) fn fail(&self, error: &Error) {
        self.end(Some(error));
    }

    /// Ends the queue, answering the flushes and closes that wait: with
    /// success, or with `failure`, which also fails the queued messages.
    fn end(&self, failure: Option<&Error>) {
        let (flushes, closes) = {
            let mut state = self.lock();
            match failure {
                Some(_) if state.ended.is_some() => return,
                Some(error) => {
                    state.accumulator.fail_all(error);
                    state.ended = Some(error.duplicate());
                }
                None => {
                    state.ended.get_or_insert(Error::Closed);
                }
            }
            (
                std::mem::take(&mut state.flushes),
                std::mem::take(&mut state.closes),
            )
        };
        let waiting = flushes.into_iter().map(|(_, done)| done).chain(closes);
        for done in waiting {
            let _ = done.send(failure.map_or(Ok(()), |error| Err(error.duplicate())));
        }
        self.room.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The error for a sender once the partition ended or is closing.
    fn refuse(&self) -> Result<()> {
        if let Some(error) = &self.ended {
            return Err(error.duplicate());
        }
        if self.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Whether a message may be added: always while no closed batch waits,
    /// else only while the window has room for the waiting ones.
    fn has_room(&self, max_in_flight: usize) -> bool {
        let ready = self.accumulator.ready_len();
        ready == 0 || ready + self.in_flight < max_in_flight
    }
}

/// Whether to trace a batch: true for a share [`sampling_ratio`] of them.
fn starts_trace() -> bool {
    let ratio = sampling_ratio();
    ratio > 0.0 && (ratio >= 1.0 || rand::random::<f64>() < ratio)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_bytes: 1_000_000,
        max_messages: 100,
    };

    fn queue(max_in_flight: usize) -> Arc<PartitionQueue> {
        Arc::new(PartitionQueue::new(
            Arc::from("/default/t"),
            LIMITS,
            max_in_flight,
        ))
    }

    fn message() -> Message {
        Message::new(Bytes::from_static(b"payload"))
    }

    #[tokio::test]
    async fn without_linger_the_open_batch_gathers_messages_while_the_window_is_full() {
        let queue = queue(2);
        let _first = queue.send(message()).await.unwrap();
        let mut taken = Vec::new();
        queue.take_ready(2, true, &mut taken);
        assert!(taken.is_empty(), "no room: the batch stays open");

        let _second = queue.send(message()).await.unwrap();
        queue.take_ready(1, true, &mut taken);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].messages.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_queue_fails_its_flushes_futures_and_later_sends() {
        let queue = queue(4);
        let future = queue.send(message()).await.unwrap();
        let flushing = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.flush().await }
        });
        tokio::task::yield_now().await;

        queue.fail(&Error::Closed);
        assert!(matches!(flushing.await.unwrap(), Err(Error::Closed)));
        assert!(matches!(future.await, Err(Error::Closed)));
        assert!(matches!(queue.send(message()).await, Err(Error::Closed)));
    }
}
