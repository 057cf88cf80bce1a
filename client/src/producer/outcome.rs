//! The outcome of one batch, shared by the futures of all its messages.
//!
//! A message's [`SendFuture`] holds the batch's outcome and the message's
//! index in it, so sending costs no allocation per message: the batch is
//! settled once, by the partition's task, and each future reads its own
//! offset (the batch's first offset plus its index) out of the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::message::MessageId;

/// What the broker acknowledged for a batch.
#[derive(Debug)]
struct Acked {
    topic: Arc<str>,
    sequence: u64,
    first_offset: u64,
    count: u32,
    publish_time: SystemTime,
}

#[derive(Debug, Default)]
struct Shared {
    /// What the broker answered for the batch, once it has.
    answer: OnceLock<Result<Acked>>,
    /// The tasks waiting for the answer; taken when it is set.
    waiters: Mutex<Vec<Waker>>,
}

impl Shared {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        // Nothing panics while holding the lock; a poisoned one is whole.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The settling side of a batch's outcome, held by the batch while it is
/// queued or in flight. Dropping it unsettled fails the batch's futures
/// with [`Error::Closed`], so no future waits forever.
#[derive(Debug, Default)]
pub(crate) struct Settle {
    shared: Arc<Shared>,
    messages: u32,
}

impl Settle {
    /// The future of the next message added to the batch.
    pub(crate) fn add_message(&mut self) -> SendFuture {
        let index = self.messages;
        self.messages += 1;
        SendFuture {
            shared: Arc::clone(&self.shared),
            index,
            registered: None,
        }
    }

    /// Acknowledges the batch: message `i` got `first_offset + i`. Messages
    /// past `count` fail with a protocol error (the broker answered fewer).
    pub(crate) fn acked(
        &self,
        topic: &Arc<str>,
        sequence: u64,
        first_offset: u64,
        count: u32,
        publish_time: SystemTime,
    ) {
        self.set(Ok(Acked {
            topic: Arc::clone(topic),
            sequence,
            first_offset,
            count,
            publish_time,
        }));
    }

    /// Fails every message of the batch with `error`.
    pub(crate) fn failed(&self, error: Error) {
        self.set(Err(error));
    }

    /// How many messages the batch has.
    pub(crate) fn messages(&self) -> u32 {
        self.messages
    }

    fn set(&self, result: Result<Acked>) {
        if self.shared.answer.set(result).is_err() {
            return;
        }
        let waiters = std::mem::take(&mut *self.shared.waiters());
        for waker in waiters {
            waker.wake();
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if self.shared.answer.get().is_none() {
            self.set(Err(Error::Closed));
        }
    }
}

/// Resolves to a message's id once the broker acknowledges its batch;
/// returned by [`Producer::send`](super::Producer::send).
///
/// Dropping it does not cancel the message.
#[derive(Debug)]
pub struct SendFuture {
    shared: Arc<Shared>,
    index: u32,
    /// The waker this future last left with the batch, so polling again
    /// from the same task registers nothing more.
    registered: Option<Waker>,
}

impl SendFuture {
    /// Whether the outcome is known, so that awaiting the future would not
    /// wait. Never registers for a wake-up.
    pub fn is_settled(&self) -> bool {
        self.shared.answer.get().is_some()
    }

    fn outcome(&self, answer: &Result<Acked>) -> Result<MessageId> {
        let acked = match answer {
            Ok(acked) => acked,
            Err(error) => return Err(error.duplicate()),
        };
        if self.index >= acked.count {
            return Err(Error::Protocol(format!(
                "batch {} acknowledged with {} offsets, and message {} of it has none",
                acked.sequence, acked.count, self.index
            )));
        }
        Ok(MessageId {
            topic: Arc::clone(&acked.topic),
            offset: acked.first_offset + u64::from(self.index),
            publish_time: acked.publish_time,
        })
    }
}

impl Future for SendFuture {
    type Output = Result<MessageId>;

    /// # Errors
    ///
    /// [`Error::Rejected`] when the broker refused the message's batch,
    /// [`Error::Closed`] or the partition's final error when the producer
    /// gave up on it.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(answer) = self.shared.answer.get() {
            return Poll::Ready(self.outcome(answer));
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let shared = Arc::clone(&self.shared);
        let mut waiters = shared.waiters();
        // Checked again under the lock: the answer is set before the
        // waiters are taken, so a waker added now is always woken.
        if let Some(answer) = shared.answer.get() {
            drop(waiters);
            return Poll::Ready(self.outcome(answer));
        }
        // Futures of one batch awaited by one task share its waker.
        if !waiters
            .last()
            .is_some_and(|last| last.will_wake(cx.waker()))
        {
            waiters.push(cx.waker().clone());
        }
        drop(waiters);
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::message::time_from_millis;

    #[tokio::test]
    async fn every_message_of_an_acked_batch_gets_its_own_offset() {
        let mut settle = Settle::default();
        let futures: Vec<SendFuture> = (0..3).map(|_| settle.add_message()).collect();
        assert!(!futures[0].is_settled());

        let topic: Arc<str> = Arc::from("/default/t");
        settle.acked(&topic, 7, 40, 3, time_from_millis(1_000));
        for (index, future) in futures.into_iter().enumerate() {
            assert!(future.is_settled());
            let id = future.await.unwrap();
            assert_eq!(id.offset, 40 + index as u64);
            assert_eq!(id.publish_time, time_from_millis(1_000));
        }
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_by_the_answer() {
        let mut settle = Settle::default();
        let future = settle.add_message();
        let waiting = tokio::spawn(future);
        tokio::task::yield_now().await;

        settle.failed(Error::Closed);
        let outcome = waiting.await.unwrap();
        assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
    }

    #[test]
    fn messages_past_the_acked_count_fail_rather_than_invent_offsets() {
        let mut settle = Settle::default();
        let first = settle.add_message();
        let second = settle.add_message();
        settle.acked(&Arc::from("/default/t"), 1, 0, 1, time_from_millis(0));

        assert!(first.now_or_never().unwrap().is_ok());
        let error = second.now_or_never().unwrap().unwrap_err();
        assert!(matches!(error, Error::Protocol(_)), "{error}");
    }

    #[test]
    fn a_batch_dropped_unsettled_fails_its_futures_as_closed() {
        let mut settle = Settle::default();
        let future = settle.add_message();
        drop(settle);
        let outcome = future.now_or_never().expect("settled by the drop");
        assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
    }
}
