//! A subscription: its consumers, who may join, and its dispatcher.
//!
//! Consumers stay registered while they reconnect: a consumer whose stream
//! ended stops receiving at once (its unacknowledged messages go to the
//! others) but keeps its id for a grace period, so a Danube client that
//! reopens its stream or resubscribes with the same name picks up where it
//! was. Expired consumers are removed by the broker's janitor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::dispatch::SubscriptionType;
use crate::dispatch::consumer::{BufferLimit, ConsumerHandle, ConsumerSpec};
use crate::dispatch::push::PushDispatcher;
use crate::dispatch::reliable::{DeliveryPolicy, ReliableDispatcher, StartPosition};
use crate::error::BrokerError;
use crate::message::Message;

#[derive(Debug)]
pub enum Dispatcher {
    Push(PushDispatcher),
    Reliable(ReliableDispatcher),
}

/// A subscription's state as the admin API reports it.
#[derive(Clone, Debug)]
pub struct SubscriptionSnapshot {
    pub kind: SubscriptionType,
    pub cursor: u64,
    pub backlog_messages: u64,
    pub backlog_bytes: u64,
    /// Publish time of the oldest unacknowledged message.
    pub oldest_unacked_ms: Option<u64>,
    pub pending: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    /// The redelivery rules, on reliable topics.
    pub policy: Option<DeliveryPolicy>,
    /// Id, name, and whether a stream is open.
    pub consumers: Vec<(u64, String, bool)>,
}

impl Default for SubscriptionSnapshot {
    fn default() -> Self {
        SubscriptionSnapshot {
            kind: SubscriptionType::Exclusive,
            cursor: 0,
            backlog_messages: 0,
            backlog_bytes: 0,
            oldest_unacked_ms: None,
            pending: 0,
            delivered: 0,
            redelivered: 0,
            dropped: 0,
            dead_lettered: 0,
            policy: None,
            consumers: Vec::new(),
        }
    }
}

/// What a consumer asks for when it joins.
pub struct JoinRequest {
    pub id: u64,
    pub name: String,
    pub key_filters: Vec<String>,
    pub credit_flow: bool,
    pub buffer: BufferLimit,
}

#[derive(Debug)]
pub struct Subscription {
    pub name: String,
    pub kind: SubscriptionType,
    pub topic: String,
    dispatcher: Dispatcher,
    wake: Arc<Notify>,
    consumers: Mutex<HashMap<u64, Arc<ConsumerHandle>>>,
    delivered: Arc<AtomicU64>,
    delivered_bytes: Arc<AtomicU64>,
    policy: Mutex<DeliveryPolicy>,
}

impl Subscription {
    pub fn new(
        topic: &str,
        name: &str,
        kind: SubscriptionType,
        dispatcher: Dispatcher,
        wake: Arc<Notify>,
        policy: DeliveryPolicy,
    ) -> Subscription {
        Subscription {
            name: name.to_string(),
            kind,
            topic: topic.to_string(),
            dispatcher,
            wake,
            consumers: Mutex::new(HashMap::new()),
            delivered: Arc::new(AtomicU64::new(0)),
            delivered_bytes: Arc::new(AtomicU64::new(0)),
            policy: Mutex::new(policy),
        }
    }

    /// Registers a consumer, or returns the registered one with the same
    /// name (a reconnect). Exclusive subscriptions refuse a second name.
    pub fn join(
        &self,
        kind: SubscriptionType,
        request: JoinRequest,
    ) -> Result<Arc<ConsumerHandle>, BrokerError> {
        if kind != self.kind {
            return Err(BrokerError::SubscriptionTypeMismatch {
                topic: self.topic.clone(),
                subscription: self.name.clone(),
                actual: self.kind.name(),
                requested: kind.name(),
            });
        }
        let mut consumers = self.lock();
        if let Some(existing) = consumers.values().find(|c| c.name == request.name) {
            return Ok(Arc::clone(existing));
        }
        if self.kind == SubscriptionType::Exclusive
            && let Some(holder) = consumers.values().next()
        {
            return Err(BrokerError::ExclusiveSubscriptionHeld {
                topic: self.topic.clone(),
                subscription: self.name.clone(),
                holder: holder.name.clone(),
            });
        }

        let spec = ConsumerSpec {
            id: request.id,
            name: request.name,
            topic: self.topic.clone(),
            subscription: self.name.clone(),
            key_filters: request.key_filters,
            credit_flow: request.credit_flow,
            buffer: request.buffer,
            delivered_counter: Arc::clone(&self.delivered),
            delivered_bytes: Arc::clone(&self.delivered_bytes),
        };
        let consumer = Arc::new(ConsumerHandle::new(spec, Arc::clone(&self.wake)));
        self.route_to(Arc::clone(&consumer))?;
        consumers.insert(consumer.id, Arc::clone(&consumer));
        Ok(consumer)
    }

    /// A new stream of `consumer` started: route messages to it again.
    pub fn session_started(&self, consumer: &Arc<ConsumerHandle>) -> Result<(), BrokerError> {
        self.route_to(Arc::clone(consumer))
    }

    /// The current stream of `consumer` ended: route its messages elsewhere.
    pub fn session_ended(&self, consumer_id: u64) {
        match &self.dispatcher {
            Dispatcher::Push(push) => push.remove(consumer_id),
            Dispatcher::Reliable(reliable) => reliable.remove(consumer_id),
        }
    }

    /// Removes a consumer for good.
    pub fn leave(&self, consumer_id: u64) {
        if let Some(consumer) = self.lock().remove(&consumer_id) {
            consumer.close();
        }
        self.session_ended(consumer_id);
    }

    /// Removes consumers that have had no stream for longer than `grace`,
    /// returning their ids.
    pub fn expire(&self, grace: Duration) -> Vec<u64> {
        let expired: Vec<u64> = self
            .lock()
            .values()
            .filter(|c| {
                c.detached_since()
                    .is_some_and(|since| since.elapsed() > grace)
            })
            .map(|c| c.id)
            .collect();
        for id in &expired {
            self.leave(*id);
        }
        expired
    }

    /// Messages handed to this subscription's consumers' streams.
    /// Message bytes handed to consumers (payload, key and attributes).
    pub fn delivered_bytes(&self) -> u64 {
        self.delivered_bytes.load(Ordering::Relaxed)
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn consumers(&self) -> Vec<Arc<ConsumerHandle>> {
        self.lock().values().cloned().collect()
    }

    /// Hands a freshly published batch to the subscription.
    pub fn on_publish(&self, batch: &[Arc<Message>]) {
        match &self.dispatcher {
            Dispatcher::Push(push) => push.dispatch(batch),
            Dispatcher::Reliable(reliable) => reliable.wake(),
        }
    }

    pub fn ack(&self, offsets: Vec<u64>, cumulative: Option<u64>) {
        if let Dispatcher::Reliable(reliable) = &self.dispatcher {
            reliable.ack(offsets, cumulative);
        }
    }

    pub fn nack(&self, offsets: Vec<u64>, delay: Option<Duration>) {
        if let Dispatcher::Reliable(reliable) = &self.dispatcher {
            reliable.nack(offsets, delay);
        }
    }

    /// The reliable dispatcher's counters and cursor.
    pub fn reliable_stats(&self) -> Option<&crate::dispatch::reliable::ReliableStats> {
        match &self.dispatcher {
            Dispatcher::Push(_) => None,
            Dispatcher::Reliable(reliable) => Some(reliable.stats()),
        }
    }

    /// Every offset below this one is acknowledged (reliable topics).
    pub fn floor(&self) -> Option<u64> {
        match &self.dispatcher {
            Dispatcher::Push(_) => None,
            Dispatcher::Reliable(reliable) => Some(reliable.floor()),
        }
    }

    /// Moves a reliable subscription's cursor.
    pub async fn seek(&self, position: StartPosition) -> Result<(), BrokerError> {
        match &self.dispatcher {
            Dispatcher::Reliable(reliable) => {
                reliable.seek(position).await;
                Ok(())
            }
            Dispatcher::Push(_) => Err(BrokerError::InvalidRequest(format!(
                "subscription {} on {} is non-reliable and has no cursor to move",
                self.name, self.topic
            ))),
        }
    }

    /// The redelivery rules (reliable topics).
    pub fn policy(&self) -> DeliveryPolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the redelivery rules of a reliable subscription.
    pub fn set_policy(&self, policy: DeliveryPolicy) -> Result<(), BrokerError> {
        let Dispatcher::Reliable(reliable) = &self.dispatcher else {
            return Err(BrokerError::InvalidRequest(format!(
                "subscription {} on {} is non-reliable: it has no acks to time out or redeliver",
                self.name, self.topic
            )));
        };
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
        reliable.set_policy(policy);
        Ok(())
    }

    /// What the admin API shows of this subscription now.
    pub fn snapshot(&self) -> SubscriptionSnapshot {
        let consumers = self.consumers();
        let mut snapshot = SubscriptionSnapshot {
            kind: self.kind,
            delivered: self.delivered(),
            dropped: consumers.iter().map(|c| c.dropped_total()).sum(),
            consumers: consumers
                .iter()
                .map(|c| (c.id, c.name.clone(), c.is_attached()))
                .collect(),
            ..SubscriptionSnapshot::default()
        };
        if let Dispatcher::Reliable(reliable) = &self.dispatcher {
            let stats = reliable.stats();
            let floor = stats.floor.load(Ordering::Acquire);
            let end = reliable.log().end();
            let acked_above = stats.acked_above.load(Ordering::Acquire);
            let (bytes, oldest) = reliable.log().backlog_from(floor);
            snapshot.cursor = floor;
            snapshot.backlog_messages = end.saturating_sub(floor).saturating_sub(acked_above);
            snapshot.backlog_bytes = bytes;
            snapshot.oldest_unacked_ms = oldest;
            snapshot.pending = stats.pending.load(Ordering::Acquire);
            snapshot.redelivered = stats.redelivered.load(Ordering::Relaxed);
            snapshot.dead_lettered = stats.dead_lettered.load(Ordering::Relaxed);
            snapshot.policy = Some(self.policy());
        }
        snapshot
    }

    fn route_to(&self, consumer: Arc<ConsumerHandle>) -> Result<(), BrokerError> {
        match &self.dispatcher {
            Dispatcher::Push(push) => push.add(consumer),
            Dispatcher::Reliable(reliable) => reliable.add(consumer),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConsumerHandle>>> {
        self.consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
