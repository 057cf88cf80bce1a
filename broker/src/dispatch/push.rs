//! Non-reliable dispatch: the publish call routes each batch straight into
//! the buffers of the subscription's consumers. Nothing is kept: a message
//! for a consumer without room is dropped and counted on that consumer, so
//! a slow consumer never slows the producer or the other consumers.

use std::sync::{Arc, Mutex, MutexGuard};

use super::SubscriptionType;
use super::consumer::ConsumerHandle;
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

        let mut room: Vec<usize> = consumers.iter().map(|c| c.room()).collect();
        let mut chunks: Vec<Vec<Delivery>> = vec![Vec::new(); consumers.len()];
        let mut missed = vec![0u64; consumers.len()];
        for message in batch {
            match router.choose(message.routing_key(), &room) {
                Some(index) => {
                    room[index] -= 1;
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

        for ((consumer, chunk), missed) in consumers.iter().zip(chunks).zip(missed) {
            let mut lost = missed;
            if !chunk.is_empty()
                && let Err(chunk) = consumer.push(chunk)
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
    use crate::dispatch::consumer::ConsumerSpec;

    fn consumer(id: u64, name: &str, capacity: usize) -> Arc<ConsumerHandle> {
        let spec = ConsumerSpec {
            id,
            name: name.into(),
            topic: "/default/t".into(),
            subscription: "s".into(),
            key_filters: vec![],
            credit_flow: false,
            delivered_counter: Default::default(),
            delivered_bytes: Default::default(),
            capacity,
        };
        Arc::new(ConsumerHandle::new(spec, Arc::new(Notify::new())))
    }

    fn batch(from: u64, count: u64, key: Option<&str>) -> Vec<Arc<Message>> {
        (from..from + count)
            .map(|offset| {
                Arc::new(Message {
                    offset,
                    publish_time_ms: 0,
                    producer_id: 1,
                    producer_name: Arc::from("p"),
                    key: key.map(str::to_string),
                    attributes: vec![],
                    payload: Bytes::from_static(b"x"),
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
