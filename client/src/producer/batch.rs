//! Batching and in-flight bookkeeping for one partition's publish stream.
//!
//! Neither does I/O. The [`Accumulator`] lives in the partition's queue
//! (`queue.rs`), written under its lock by the producer handle and by the
//! task: it groups messages into batches and closes them at a byte or
//! message limit (the task closes them at the linger deadline, or at once
//! without linger). [`InFlight`] belongs to the task: it keeps every sent batch until the broker
//! answers it, so that its senders learn their offsets (or the broker's
//! error) and so that a broken stream can be replayed on a new one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use sava_proto::ErrorKind;
use sava_proto::sava::v1::{BatchAck, BatchError, MessageBatch, OutgoingMessage};

use super::outcome::{SendFuture, Settle};
use crate::error::{Error, Result};
use crate::message::{Message, time_from_millis};

/// The limits at which a batch closes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub(crate) max_bytes: usize,
    pub(crate) max_messages: usize,
}

/// A closed batch, numbered, waiting to be sent.
#[derive(Debug)]
pub(crate) struct ReadyBatch {
    pub(crate) sequence: u64,
    pub(crate) messages: Vec<OutgoingMessage>,
    pub(crate) settle: Settle,
    /// The batch's `client.send` span when it is traced, ended by its
    /// answer; disabled otherwise.
    pub(crate) span: tracing::Span,
}

/// Groups messages into batches, in the order they were queued.
#[derive(Debug)]
pub(crate) struct Accumulator {
    limits: BatchLimits,
    messages: Vec<OutgoingMessage>,
    settle: Settle,
    bytes: usize,
    opened_at: Option<Instant>,
    /// The span of the open batch, if it is traced.
    span: tracing::Span,
    ready: VecDeque<ReadyBatch>,
    next_sequence: u64,
}

impl Accumulator {
    pub(crate) fn new(limits: BatchLimits) -> Accumulator {
        debug_assert!(limits.max_bytes > 0 && limits.max_messages > 0);
        Accumulator {
            limits,
            messages: Vec::new(),
            settle: Settle::default(),
            bytes: 0,
            opened_at: None,
            span: tracing::Span::none(),
            ready: VecDeque::new(),
            next_sequence: 0,
        }
    }

    /// Adds a message to the open batch. A message that would take the batch
    /// past its byte limit goes into a new batch instead; a message larger
    /// than the limit travels alone.
    pub(crate) fn push(&mut self, message: Message, now: Instant) -> SendFuture {
        self.push_traced(message, now, tracing::Span::none())
    }

    /// Whether a message of `message` would open a new batch.
    pub(crate) fn opens_batch(&self, message: &Message) -> bool {
        self.messages.is_empty() || self.bytes + message.encoded_len() > self.limits.max_bytes
    }

    /// As [`Accumulator::push`]; when the message opens a batch, `span`
    /// (its trace, which the message carries) becomes the batch's.
    pub(crate) fn push_traced(
        &mut self,
        message: Message,
        now: Instant,
        span: tracing::Span,
    ) -> SendFuture {
        let bytes = message.encoded_len();
        if !self.messages.is_empty() && self.bytes + bytes > self.limits.max_bytes {
            self.close();
        }

        if self.messages.is_empty() {
            self.opened_at = Some(now);
            self.span = span;
        }
        self.messages.push(message.into_outgoing());
        let future = self.settle.add_message();
        self.bytes += bytes;

        let full = self.messages.len() >= self.limits.max_messages;
        if full || self.bytes >= self.limits.max_bytes {
            self.close();
        }
        future
    }

    /// Closes the open batch, if it has any message, and numbers it.
    pub(crate) fn close(&mut self) {
        if self.messages.is_empty() {
            return;
        }
        let capacity = self.messages.len();
        let span = std::mem::replace(&mut self.span, tracing::Span::none());
        span.record("messaging.batch.message_count", capacity);
        self.ready.push_back(ReadyBatch {
            sequence: self.next_sequence,
            messages: std::mem::replace(&mut self.messages, Vec::with_capacity(capacity)),
            settle: std::mem::take(&mut self.settle),
            span,
        });
        self.next_sequence += 1;
        self.bytes = 0;
        self.opened_at = None;
    }

    /// When the open batch was opened, if there is one.
    pub(crate) fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// The oldest closed batch.
    pub(crate) fn pop_ready(&mut self) -> Option<ReadyBatch> {
        self.ready.pop_front()
    }

    /// How many closed batches wait to be sent.
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The sequence of the oldest batch not sent yet, open or closed.
    pub(crate) fn oldest_sequence(&self) -> Option<u64> {
        match self.ready.front() {
            Some(batch) => Some(batch.sequence),
            None if !self.messages.is_empty() => Some(self.next_sequence),
            None => None,
        }
    }

    /// The sequence of the last batch closed so far.
    pub(crate) fn last_closed_sequence(&self) -> Option<u64> {
        self.next_sequence.checked_sub(1)
    }

    /// Whether no message waits here at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.ready.is_empty()
    }

    /// Fails every message waiting here with `error`.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        self.close();
        for batch in self.ready.drain(..) {
            batch.settle.failed(error.duplicate());
        }
    }
}

/// A batch sent on the stream and not answered yet.
#[derive(Debug)]
struct InFlightBatch {
    request: MessageBatch,
    settle: Settle,
    /// Ends when the batch is answered (dropped with it).
    span: tracing::Span,
}

/// The batches sent and not answered, oldest first.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    batches: VecDeque<InFlightBatch>,
}

impl InFlight {
    /// Keeps `batch` until it is answered and returns the request to send.
    pub(crate) fn start(&mut self, batch: ReadyBatch) -> MessageBatch {
        debug_assert!(
            self.batches
                .back()
                .is_none_or(|last| last.request.sequence < batch.sequence)
        );
        let request = MessageBatch {
            sequence: batch.sequence,
            messages: batch.messages,
        };
        self.batches.push_back(InFlightBatch {
            request: request.clone(),
            settle: batch.settle,
            span: batch.span,
        });
        request
    }

    /// Resolves the futures of the acknowledged batch: message `i` of the
    /// batch got offset `first_offset + i`.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] when no batch has that sequence or the count does
    /// not match; the batch's futures are then resolved as far as the ack
    /// goes and the rest fail.
    pub(crate) fn on_ack(&mut self, ack: &BatchAck, topic: &Arc<str>) -> Result<()> {
        let batch = self.remove(ack.sequence)?;
        batch.span.record("messaging.message.id", ack.first_offset);
        let publish_time = time_from_millis(ack.publish_time);
        let acknowledged = ack.count;
        let sent = batch.settle.messages();
        batch.settle.acked(
            topic,
            ack.sequence,
            ack.first_offset,
            acknowledged.min(sent),
            publish_time,
        );

        if acknowledged != sent {
            return Err(Error::Protocol(format!(
                "batch {} of {sent} messages acknowledged with {acknowledged} offsets",
                ack.sequence
            )));
        }
        Ok(())
    }

    /// Fails the futures of the refused batch, and only those.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] when no batch has that sequence.
    pub(crate) fn on_error(&mut self, refusal: BatchError) -> Result<()> {
        let batch = self.remove(refusal.sequence)?;
        let error = Error::Rejected {
            kind: ErrorKind::from_code(tonic::Code::from(refusal.code)),
            message: refusal.message,
            message_index: refusal.message_index,
        };
        batch.settle.failed(error);
        Ok(())
    }

    /// The requests to send again, in order, on a new stream.
    pub(crate) fn replay(&self) -> impl Iterator<Item = MessageBatch> + '_ {
        self.batches.iter().map(|batch| batch.request.clone())
    }

    /// The sequence of the oldest batch not answered.
    pub(crate) fn oldest_sequence(&self) -> Option<u64> {
        self.batches.front().map(|batch| batch.request.sequence)
    }

    pub(crate) fn len(&self) -> usize {
        self.batches.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Fails every batch in flight with `error`.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        for batch in self.batches.drain(..) {
            batch.settle.failed(error.duplicate());
        }
    }

    /// Takes the batch with `sequence` out. Answers come in order, so it is
    /// nearly always the first one.
    fn remove(&mut self, sequence: u64) -> Result<InFlightBatch> {
        let position = self
            .batches
            .iter()
            .position(|batch| batch.request.sequence == sequence)
            .ok_or_else(|| Error::Protocol(format!("answer for unknown batch {sequence}")))?;
        Ok(self
            .batches
            .remove(position)
            .expect("the position was just found in the queue"))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::FutureExt;

    use super::*;
    use crate::message::MessageId;

    const LIMITS: BatchLimits = BatchLimits {
        max_bytes: 1000,
        max_messages: 4,
    };

    fn push(accumulator: &mut Accumulator, payload_len: usize) -> SendFuture {
        let message = Message::new(Bytes::from(vec![7; payload_len]));
        accumulator.push(message, Instant::now())
    }

    #[test]
    fn a_batch_closes_when_it_reaches_max_messages() {
        let mut accumulator = Accumulator::new(LIMITS);
        for _ in 0..3 {
            push(&mut accumulator, 10);
        }
        assert_eq!(accumulator.ready_len(), 0);
        assert!(accumulator.opened_at().is_some());

        push(&mut accumulator, 10);
        assert_eq!(accumulator.ready_len(), 1);
        assert!(accumulator.opened_at().is_none());
        assert_eq!(accumulator.pop_ready().unwrap().messages.len(), 4);
    }

    #[test]
    fn a_message_that_would_pass_max_bytes_starts_the_next_batch() {
        let mut accumulator = Accumulator::new(LIMITS);
        push(&mut accumulator, 600);
        push(&mut accumulator, 600);

        let first = accumulator.pop_ready().expect("the first batch is closed");
        assert_eq!(first.messages.len(), 1);
        assert_eq!(first.sequence, 0);
        assert_eq!(accumulator.oldest_sequence(), Some(1));
        assert!(!accumulator.is_empty());
    }

    #[test]
    fn a_message_larger_than_max_bytes_travels_alone() {
        let mut accumulator = Accumulator::new(LIMITS);
        push(&mut accumulator, 10);
        push(&mut accumulator, 5000);
        push(&mut accumulator, 10);

        let sizes: Vec<usize> = std::iter::from_fn(|| accumulator.pop_ready())
            .map(|batch| batch.messages.len())
            .collect();
        assert_eq!(sizes, [1, 1]);
        accumulator.close();
        assert_eq!(accumulator.pop_ready().unwrap().sequence, 2);
        assert!(accumulator.is_empty());
    }

    #[test]
    fn closing_an_empty_batch_numbers_nothing() {
        let mut accumulator = Accumulator::new(LIMITS);
        accumulator.close();
        assert_eq!(accumulator.ready_len(), 0);
        assert_eq!(accumulator.last_closed_sequence(), None);
    }

    #[tokio::test]
    async fn acked_futures_get_the_first_offset_plus_their_index() {
        let mut accumulator = Accumulator::new(LIMITS);
        let receivers: Vec<_> = (0..3).map(|_| push(&mut accumulator, 10)).collect();
        accumulator.close();

        let mut in_flight = InFlight::default();
        let request = in_flight.start(accumulator.pop_ready().unwrap());
        assert_eq!(request.messages.len(), 3);

        let topic: Arc<str> = Arc::from("/default/t");
        let ack = BatchAck {
            sequence: request.sequence,
            first_offset: 40,
            count: 3,
            publish_time: 1_700_000_000_000,
        };
        in_flight.on_ack(&ack, &topic).unwrap();
        assert!(in_flight.is_empty());

        for (index, receiver) in receivers.into_iter().enumerate() {
            let id: MessageId = receiver.await.unwrap();
            assert_eq!(id.offset, 40 + index as u64);
            assert_eq!(&*id.topic, "/default/t");
            assert_eq!(id.publish_time, time_from_millis(1_700_000_000_000));
        }
    }

    #[tokio::test]
    async fn an_error_fails_exactly_the_futures_of_its_batch() {
        let mut accumulator = Accumulator::new(LIMITS);
        let mut in_flight = InFlight::default();
        let mut batches = Vec::new();
        for _ in 0..3 {
            let receivers: Vec<_> = (0..2).map(|_| push(&mut accumulator, 10)).collect();
            accumulator.close();
            in_flight.start(accumulator.pop_ready().unwrap());
            batches.push(receivers);
        }

        let refusal = BatchError {
            sequence: 1,
            code: tonic::Code::InvalidArgument as i32,
            message: "payload breaks the schema of /default/t".to_owned(),
            message_index: Some(1),
        };
        in_flight.on_error(refusal).unwrap();
        assert_eq!(in_flight.len(), 2);
        assert_eq!(in_flight.oldest_sequence(), Some(0));

        for receiver in batches.remove(1) {
            match receiver.await {
                Err(Error::Rejected {
                    kind,
                    message_index,
                    ..
                }) => {
                    assert_eq!(kind, ErrorKind::InvalidArgument);
                    assert_eq!(message_index, Some(1));
                }
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
        for receivers in batches {
            for receiver in receivers {
                assert!(
                    receiver.now_or_never().is_none(),
                    "other batches stay pending"
                );
            }
        }
    }

    #[test]
    fn an_answer_for_an_unknown_batch_is_a_protocol_violation() {
        let mut in_flight = InFlight::default();
        let ack = BatchAck {
            sequence: 9,
            first_offset: 0,
            count: 1,
            publish_time: 0,
        };
        let error = in_flight
            .on_ack(&ack, &Arc::from("/default/t"))
            .unwrap_err();
        assert!(matches!(error, Error::Protocol(_)), "{error}");
    }

    #[test]
    fn in_flight_batches_replay_in_their_original_order() {
        let mut accumulator = Accumulator::new(LIMITS);
        let mut in_flight = InFlight::default();
        for _ in 0..3 {
            push(&mut accumulator, 10);
            accumulator.close();
            in_flight.start(accumulator.pop_ready().unwrap());
        }
        let sequences: Vec<u64> = in_flight.replay().map(|batch| batch.sequence).collect();
        assert_eq!(sequences, [0, 1, 2]);
    }
}
