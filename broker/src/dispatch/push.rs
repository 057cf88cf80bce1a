//! Non-reliable dispatch: the publish call routes each batch straight into
//! the buffers of the subscription's consumers. Nothing is kept: a message
//! for a consumer without room is dropped and counted on that consumer, so
//! a slow consumer never slows the producer or the other consumers.

use std::sync::{Arc, Mutex, MutexGuard};

use super::SubscriptionType;
use super::consumer::{ConsumerHandle, Room};
use super::router::{Member, Router};
use crate::error::BrokerError;
use crate::message::{Delivery, Message};

/// The push dispatcher of one subscription.
#[derive(Debug)]
pub struct PushDispatcher {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    router: Router,
    /// In the order of `router.members()`.
    consumers: Vec<Arc<ConsumerHandle>>,
}

impl PushDispatcher {
    pub fn new(kind: SubscriptionType, partition: u32) -> PushDispatcher {
        PushDispatcher {
            state: Mutex::new(State {
                router: Router::new(kind, partition),
                consumers: Vec::new(),
            }),
        }
    }

    /// Starts routing messages to `consumer`.
    pub fn add(&self, consumer: Arc<ConsumerHandle>) -> Result<(), BrokerError> {
        let member = Member::new(consumer.id, &consumer.name, &consumer.key_filters)?;
        let mut state = self.lock();
        state.router.insert(member);
        state.consumers.retain(|c| c.id != consumer.id);
        state.consumers.push(consumer);
        state.align();
        Ok(())
    }

    /// Stops routing messages to consumer `id`.
    pub fn remove(&self, id: u64) {
        let mut state = self.lock();
        state.router.remove(id);
        state.consumers.retain(|c| c.id != id);
    }

    /// Routes one batch. Called with the topic's publish lock held, so
    /// batches reach every consumer in offset order.
    pub fn dispatch(&self, batch: &[Arc<Message>]) {
        let mut state = self.lock();
        if state.consumers.is_empty() {
            return;
        }
        let State { router, consumers } = &mut *state;

        let mut room = Room::of(consumers, ConsumerHandle::room);
        let mut chunks: Vec<Vec<Delivery>> = vec![Vec::new(); consumers.len()];
        let mut missed = vec![0u64; consumers.len()];
        for message in batch {
            match router.choose(message.routing_key(), room.messages()) {
                Some(index) => {
                    room.take(index, message);
                    chunks[index].push(Delivery {
                        message: Arc::clone(message),
                        delivery_count: 1,
                    });
                }
                None => {
                    let owner = rightful_owner(router, message).unwrap_or(0);
                    missed[owner] += 1;
                }
            }
        }

        let pushes = consumers.iter().zip(chunks).zip(missed).enumerate();
        for (index, ((consumer, chunk), missed)) in pushes {
            let mut lost = missed;
            if !chunk.is_empty()
                && let Err(chunk) = consumer.push(chunk, room.taken_bytes(index))
            {
                lost += chunk.len() as u64;
            }
            if lost > 0 {
                consumer.count_dropped(lost);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn align(&mut self) {
        let order: Vec<u64> = self.router.members().iter().map(|m| m.id).collect();
        self.consumers
            .sort_by_key(|c| order.iter().position(|id| *id == c.id));
    }
}

/// The consumer a dropped message would have gone to, to count the loss on.
fn rightful_owner(router: &Router, message: &Message) -> Option<usize> {
    match router.kind() {
        SubscriptionType::KeyShared => router.owner_of(message.routing_key()),
        _ => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::Notify;

    use super::*;
    use crate::dispatch::consumer::{BufferLimit, ConsumerSpec};

    fn consumer(id: u64, name: &str, messages: usize) -> Arc<ConsumerHandle> {
        bounded_consumer(id, name, messages, usize::MAX)
    }

    fn bounded_consumer(id: u64, name: &str, messages: usize, bytes: usize) -> Arc<ConsumerHandle> {
        let spec = ConsumerSpec {
            id,
            name: name.into(),
            topic: "/default/t".into(),
            subscription: "s".into(),
            key_filters: vec![],
            credit_flow: false,
            delivered_counter: Default::default(),
            delivered_bytes: Default::default(),
            buffer: BufferLimit { messages, bytes },
        };
        Arc::new(ConsumerHandle::new(spec, Arc::new(Notify::new())))
    }

    fn batch(from: u64, count: u64, key: Option<&str>) -> Vec<Arc<Message>> {
        sized_batch(from, count, key, 1)
    }

    fn sized_batch(from: u64, count: u64, key: Option<&str>, size: usize) -> Vec<Arc<Message>> {
        (from..from + count)
            .map(|offset| {
                Arc::new(Message {
                    offset,
                    publish_time_ms: 0,
                    producer_id: 1,
                    producer_name: Arc::from("p"),
                    key: key.map(str::to_string),
                    attributes: vec![],
                    payload: Bytes::from(vec![b'x'; size]),
                    schema_id: None,
                    schema_version: None,
                })
            })
            .collect()
    }

    fn offsets(receiver: &mut crate::dispatch::consumer::DeliveryReceiver) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Ok(chunk) = receiver.try_recv() {
            seen.extend(chunk.iter().map(|d| d.message.offset));
        }
        seen
    }

    #[test]
    fn exclusive_delivers_batches_in_offset_order() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Exclusive, 0);
        let only = consumer(1, "only", 100);
        let (_, mut receiver) = only.attach();
        dispatcher.add(Arc::clone(&only)).unwrap();

        dispatcher.dispatch(&batch(0, 3, None));
        dispatcher.dispatch(&batch(3, 2, None));
        assert_eq!(offsets(&mut receiver), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_full_consumer_loses_messages_and_counts_them_without_blocking() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Exclusive, 0);
        let slow = consumer(1, "slow", 4);
        let (_, mut receiver) = slow.attach();
        dispatcher.add(Arc::clone(&slow)).unwrap();

        dispatcher.dispatch(&batch(0, 10, None));
        assert_eq!(offsets(&mut receiver), vec![0, 1, 2, 3]);
        assert_eq!(slow.take_dropped(), 6);
    }

    #[test]
    fn a_consumer_buffer_full_of_bytes_loses_what_does_not_fit_however_few_messages_it_holds() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Exclusive, 0);
        let slow = bounded_consumer(1, "slow", 1000, 10 * 1024);
        let (_, mut receiver) = slow.attach();
        dispatcher.add(Arc::clone(&slow)).unwrap();

        dispatcher.dispatch(&sized_batch(0, 25, None, 1024));
        assert_eq!(offsets(&mut receiver), (0..10).collect::<Vec<_>>());
        assert_eq!(slow.take_dropped(), 15);
        assert_eq!(slow.room(), 0);
    }

    #[test]
    fn bytes_moved_onto_the_wire_make_room_again() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Exclusive, 0);
        let consumer = bounded_consumer(1, "c", 1000, 4 * 1024);
        let (session, mut receiver) = consumer.attach();
        dispatcher.add(Arc::clone(&consumer)).unwrap();

        dispatcher.dispatch(&sized_batch(0, 6, None, 1024));
        let first: Vec<_> = std::iter::from_fn(|| receiver.try_recv().ok())
            .flatten()
            .collect();
        assert_eq!(first.len(), 4);
        consumer.taken(session, &first);

        dispatcher.dispatch(&sized_batch(6, 6, None, 1024));
        assert_eq!(offsets(&mut receiver), (6..10).collect::<Vec<_>>());
        assert_eq!(consumer.take_dropped(), 4);
    }

    #[test]
    fn what_a_replaced_session_hands_over_late_leaves_the_new_sessions_room_alone() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Exclusive, 0);
        let consumer = bounded_consumer(1, "c", 10, 8 * 1024);
        let (old, mut old_receiver) = consumer.attach();
        dispatcher.add(Arc::clone(&consumer)).unwrap();
        dispatcher.dispatch(&sized_batch(0, 4, None, 1024));

        // A reconnect: the old stream still moves its leftovers out.
        let (_, mut receiver) = consumer.attach();
        let leftovers: Vec<_> = std::iter::from_fn(|| old_receiver.try_recv().ok())
            .flatten()
            .collect();
        assert_eq!(leftovers.len(), 4);
        consumer.taken(old, &leftovers);

        assert_eq!((consumer.room(), consumer.byte_room()), (10, 8 * 1024));
        dispatcher.dispatch(&sized_batch(4, 8, None, 1024));
        assert_eq!(offsets(&mut receiver), (4..12).collect::<Vec<_>>());
    }

    #[test]
    fn a_message_larger_than_the_byte_bound_still_reaches_an_empty_buffer() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Exclusive, 0);
        let consumer = bounded_consumer(1, "c", 1000, 1024);
        let (_, mut receiver) = consumer.attach();
        dispatcher.add(Arc::clone(&consumer)).unwrap();

        dispatcher.dispatch(&sized_batch(0, 2, None, 64 * 1024));
        assert_eq!(offsets(&mut receiver), vec![0]);
        assert_eq!(consumer.take_dropped(), 1);
    }

    #[test]
    fn shared_sends_past_a_consumer_whose_bytes_are_full() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Shared, 0);
        let roomy = bounded_consumer(1, "roomy", 1000, usize::MAX);
        let small = bounded_consumer(2, "small", 1000, 2 * 1024);
        let (_, mut roomy_rx) = roomy.attach();
        let (_, mut small_rx) = small.attach();
        dispatcher.add(Arc::clone(&roomy)).unwrap();
        dispatcher.add(Arc::clone(&small)).unwrap();

        dispatcher.dispatch(&sized_batch(0, 40, None, 1024));
        let (roomy_got, small_got) = (offsets(&mut roomy_rx), offsets(&mut small_rx));
        assert_eq!(small_got.len(), 2);
        assert_eq!(roomy_got.len(), 38);
        assert_eq!(roomy.take_dropped() + small.take_dropped(), 0);
    }

    #[test]
    fn shared_gives_a_slow_consumer_fewer_messages() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Shared, 0);
        let fast = consumer(1, "fast", 1000);
        let slow = consumer(2, "slow", 2);
        let (_, mut fast_rx) = fast.attach();
        let (_, mut slow_rx) = slow.attach();
        dispatcher.add(Arc::clone(&fast)).unwrap();
        dispatcher.add(Arc::clone(&slow)).unwrap();

        dispatcher.dispatch(&batch(0, 100, None));
        let fast_got = offsets(&mut fast_rx);
        let slow_got = offsets(&mut slow_rx);
        assert_eq!(slow_got.len(), 2);
        assert_eq!(fast_got.len(), 98);
        assert_eq!(fast.take_dropped() + slow.take_dropped(), 0);
    }

    #[test]
    fn a_subscription_without_consumers_holds_nothing() {
        let dispatcher = PushDispatcher::new(SubscriptionType::Shared, 0);
        dispatcher.dispatch(&batch(0, 5, None));
        let late = consumer(1, "late", 10);
        let (_, mut receiver) = late.attach();
        dispatcher.add(Arc::clone(&late)).unwrap();
        dispatcher.dispatch(&batch(5, 1, None));
        assert_eq!(offsets(&mut receiver), vec![5]);
    }

    #[test]
    fn key_shared_sends_one_key_to_one_consumer() {
        let dispatcher = PushDispatcher::new(SubscriptionType::KeyShared, 0);
        let a = consumer(1, "a", 1000);
        let b = consumer(2, "b", 1000);
        let (_, mut a_rx) = a.attach();
        let (_, mut b_rx) = b.attach();
        dispatcher.add(Arc::clone(&a)).unwrap();
        dispatcher.add(Arc::clone(&b)).unwrap();

        dispatcher.dispatch(&batch(0, 20, Some("order-7")));
        let (a_got, b_got) = (offsets(&mut a_rx), offsets(&mut b_rx));
        assert!(a_got.is_empty() != b_got.is_empty(), "{a_got:?} {b_got:?}");
        let got = if a_got.is_empty() { b_got } else { a_got };
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
}
