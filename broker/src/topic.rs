//! A loaded topic (or one partition of a partitioned topic): its producers,
//! its subscriptions, and the publish path that stamps offsets and times.
//!
//! One mutex orders publishing: offsets are assigned, the log appended and
//! non-reliable batches pushed to consumers under it, so every consumer
//! sees a topic's messages in offset order. Validation (size, schema) runs
//! before the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sava_metadata::{DispatchMode, TopicRecord};
use sava_proto::telemetry::{carries_trace, pairs};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::dispatch::SubscriptionType;
use crate::dispatch::consumer::BufferLimit;
use crate::dispatch::push::PushDispatcher;
use crate::dispatch::reliable::{
    DeadLetterSink, DeliveryPolicy, Limits, Origin, Redelivery, ReliableDispatcher,
};
use crate::error::BrokerError;
use crate::log::TopicLog;
use crate::message::{IncomingMessage, Message};
use crate::names::TopicName;
use crate::schema::PayloadCheck;
use crate::subscription::{Dispatcher, Subscription};

/// The schema version a producer or topic validates payloads against.
#[derive(Debug)]
pub struct ActiveSchema {
    pub subject: String,
    pub schema_id: u64,
    pub version: u32,
    pub check: PayloadCheck,
}

/// A producer attached to a topic.
#[derive(Debug)]
pub struct ProducerInfo {
    pub id: u64,
    pub name: Arc<str>,
    pub exclusive: bool,
    /// Detached when its stream ends rather than when it falls silent.
    pub stream_bound: bool,
    pub schema: Option<Arc<ActiveSchema>>,
    last_seen: Mutex<Instant>,
}

impl ProducerInfo {
    pub fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> std::time::Duration {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// Limits a topic enforces.
#[derive(Clone, Copy, Debug)]
pub struct TopicLimits {
    pub max_message_bytes: usize,
    pub consumer_buffer: BufferLimit,
    pub max_unacked_per_consumer: usize,
}

/// A publish that was accepted; for a reliable topic it is acknowledged
/// once [`Published::durable`] resolves.
#[must_use = "a reliable publish is acknowledged only once it is durable"]
pub struct Published {
    pub receipt: Receipt,
    durable: Option<sava_storage::AppendAck>,
    /// The `broker.publish` span, which ends with this value.
    span: tracing::Span,
}

impl Published {
    /// Waits until the batch is durable (at once for non-reliable topics),
    /// then lets the topic's subscriptions deliver it.
    pub async fn durable(self, topic: &Topic) -> Result<Receipt, BrokerError> {
        if let Some(ack) = self.durable {
            // The wait for the group commit whose fsync covers the batch.
            let span = tracing::info_span!(
                parent: &self.span,
                "storage.commit",
                topic = %topic.name,
                offset = self.receipt.first_offset,
                count = self.receipt.count,
            );
            ack.instrument(span).await.map_err(BrokerError::Storage)?;
            for subscription in topic.subscriptions() {
                subscription.on_publish(&[]);
            }
        }
        let first_offset = self.receipt.first_offset;
        self.span.record("messaging.message.id", first_offset);
        Ok(self.receipt)
    }
}

/// What a successful publish returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub first_offset: u64,
    pub count: u32,
    pub publish_time_ms: u64,
}

#[derive(Debug, Default)]
struct PublishState {
    next_offset: u64,
    last_time_ms: u64,
}

#[derive(Debug, Default)]
struct Producers {
    by_id: HashMap<u64, Arc<ProducerInfo>>,
}

/// Counters of one topic.
#[derive(Debug, Default)]
pub struct TopicStats {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    rates: Mutex<Rates>,
}

#[derive(Debug, Default)]
struct Rates {
    last_in: u64,
    last_out: u64,
    rate_in: f64,
    rate_out: f64,
}

#[derive(Debug)]
pub struct Topic {
    pub name: TopicName,
    pub record: TopicRecord,
    pub schema: Option<Arc<ActiveSchema>>,
    pub limits: TopicLimits,
    pub stats: TopicStats,
    /// The ownership epoch this broker loaded the topic in.
    pub epoch: u64,
    partition: u32,
    log: Option<Arc<TopicLog>>,
    /// This broker's cluster lease: no message is accepted without it.
    lease: Arc<crate::cluster::Lease>,
    /// Set once the topic is being handed to another broker.
    moving: std::sync::atomic::AtomicBool,
    publish: Mutex<PublishState>,
    /// Why producers are refused for now, if they are; one lock for the
    /// publish path to check.
    refusals: Mutex<Refusals>,
    producers: Mutex<Producers>,
    subscriptions: RwLock<HashMap<String, Arc<Subscription>>>,
}

impl Topic {
    /// A topic owned in `epoch`; reliable topics come with their log, whose
    /// end gives the next offset and the last publish time.
    pub fn new(
        name: TopicName,
        record: TopicRecord,
        schema: Option<Arc<ActiveSchema>>,
        limits: TopicLimits,
        log: Option<Arc<TopicLog>>,
        epoch: u64,
        lease: Arc<crate::cluster::Lease>,
    ) -> Topic {
        debug_assert_eq!(
            log.is_some(),
            record.dispatch_mode == DispatchMode::Reliable
        );
        let publish = PublishState {
            next_offset: log.as_ref().map_or(0, |log| log.next_offset()),
            last_time_ms: log.as_ref().map_or(0, |log| log.last_publish_time_ms()),
        };
        Topic {
            partition: name.partition_index().unwrap_or(0),
            name,
            record,
            schema,
            limits,
            stats: TopicStats::default(),
            epoch,
            log,
            lease,
            moving: std::sync::atomic::AtomicBool::new(false),
            publish: Mutex::new(publish),
            refusals: Mutex::new(Refusals::default()),
            producers: Mutex::new(Producers::default()),
            subscriptions: RwLock::new(HashMap::new()),
        }
    }

    /// The span of publishing `messages` here, in the OpenTelemetry
    /// messaging conventions, continuing the trace the first traced
    /// message carries in its `traceparent` attribute. It lasts until the
    /// batch is durable, and then records its first offset as
    /// `messaging.message.id`.
    fn publish_span(&self, messages: &[IncomingMessage]) -> tracing::Span {
        let span = tracing::info_span!(
            "broker.publish",
            otel.kind = "server",
            messaging.system = "sava",
            messaging.operation.name = "publish",
            messaging.operation.type = "send",
            messaging.destination.name = %self.name,
            messaging.destination.partition.id = self.partition,
            messaging.batch.message_count = messages.len(),
            messaging.message.id = tracing::field::Empty,
        );
        let traced = messages
            .iter()
            .find(|m| carries_trace(pairs(&m.attributes)));
        if let Some(traced) = traced {
            sava_proto::telemetry::continue_trace(&span, pairs(&traced.attributes));
        }
        span
    }

    /// Refuses every later publish ([`BrokerError::Moving`]); returns once
    /// no publish that began before is still appending.
    pub fn set_moving(&self) {
        self.moving.store(true, Ordering::Release);
        drop(lock(&self.publish));
    }

    pub fn dispatch_mode(&self) -> DispatchMode {
        self.record.dispatch_mode
    }

    /// Attaches a producer, or returns the attached one with the same name
    /// (a reconnect keeps its id).
    pub fn add_producer(
        &self,
        id: u64,
        name: &str,
        exclusive: bool,
        stream_bound: bool,
        schema: Option<Arc<ActiveSchema>>,
    ) -> Result<Arc<ProducerInfo>, BrokerError> {
        let mut producers = lock(&self.producers);
        if let Some(existing) = producers.by_id.values().find(|p| &*p.name == name) {
            existing.touch();
            return Ok(Arc::clone(existing));
        }
        if let Some(holder) = producers.by_id.values().find(|p| p.exclusive) {
            return Err(BrokerError::ProducerFenced {
                topic: self.name.to_string(),
                holder: holder.name.to_string(),
            });
        }
        if exclusive && !producers.by_id.is_empty() {
            return Err(BrokerError::ExclusiveRefused {
                topic: self.name.to_string(),
            });
        }

        let producer = Arc::new(ProducerInfo {
            id,
            name: Arc::from(name),
            exclusive,
            stream_bound,
            schema,
            last_seen: Mutex::new(Instant::now()),
        });
        producers.by_id.insert(id, Arc::clone(&producer));
        Ok(producer)
    }

    pub fn remove_producer(&self, id: u64) -> bool {
        lock(&self.producers).by_id.remove(&id).is_some()
    }

    pub fn producers(&self) -> Vec<Arc<ProducerInfo>> {
        lock(&self.producers).by_id.values().cloned().collect()
    }

    /// Validates, stamps and publishes a batch. All or nothing: the first
    /// message that breaks a rule refuses the whole batch. A reliable batch
    /// is written to the log here and acknowledged once
    /// [`Published::durable`] resolves, which ends the publish span.
    pub fn publish(
        &self,
        producer: &ProducerInfo,
        messages: Vec<IncomingMessage>,
    ) -> Result<Published, BrokerError> {
        let span = self.publish_span(&messages);
        let (receipt, durable) = span.in_scope(|| self.append(producer, messages))?;
        Ok(Published {
            receipt,
            durable,
            span,
        })
    }

    /// The checks, stamping and writing of [`Topic::publish`].
    fn append(
        &self,
        producer: &ProducerInfo,
        messages: Vec<IncomingMessage>,
    ) -> Result<(Receipt, Option<sava_storage::AppendAck>), BrokerError> {
        let schema = producer.schema.as_ref().or(self.schema.as_ref());
        let mut bytes = 0;
        for (index, message) in messages.iter().enumerate() {
            let size = message.payload.len()
                + message.key.as_ref().map_or(0, String::len)
                + message
                    .attributes
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if size > self.limits.max_message_bytes {
                return Err(BrokerError::MessageTooLarge {
                    index,
                    size,
                    limit: self.limits.max_message_bytes,
                });
            }
            bytes += size;
            if let Some(schema) = schema
                && let Some(reason) = schema.check.violation(&message.payload)
            {
                return Err(BrokerError::SchemaViolation {
                    topic: self.name.to_string(),
                    schema: format!("{} v{}", schema.subject, schema.version),
                    index,
                    reason,
                });
            }
        }
        let refusals = *lock(&self.refusals);
        if let Some((backlog, quota)) = refusals.over_quota {
            return Err(BrokerError::BacklogQuotaExceeded {
                topic: self.name.to_string(),
                backlog,
                quota,
            });
        }
        if let Some((pending, limit)) = refusals.offload_pending {
            return Err(BrokerError::OffloadBacklog {
                topic: self.name.to_string(),
                pending,
                limit,
            });
        }
        producer.touch();
        let count = messages.len() as u32;

        let mut state = lock(&self.publish);
        // Checked under the publish lock: a hand-over that set `moving` and
        // then took this lock once sees no append after it.
        if self.moving.load(Ordering::Acquire) {
            return Err(BrokerError::Moving(self.name.to_string()));
        }
        if !self.lease.holds() {
            return Err(BrokerError::LeaseLost(self.name.to_string()));
        }
        let publish_time_ms = now_ms().max(state.last_time_ms);
        state.last_time_ms = publish_time_ms;
        let first_offset = state.next_offset;

        let batch: Vec<Arc<Message>> = messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| {
                Arc::new(Message {
                    offset: first_offset + index as u64,
                    publish_time_ms,
                    producer_id: producer.id,
                    producer_name: Arc::clone(&producer.name),
                    key: message.key,
                    attributes: message.attributes,
                    payload: message.payload,
                    schema_id: schema.map(|s| s.schema_id),
                    schema_version: schema.map(|s| s.version),
                })
            })
            .collect();
        let durable = match &self.log {
            Some(log) => Some(log.append(&batch).map_err(BrokerError::Storage)?),
            None => {
                for subscription in read(&self.subscriptions).values() {
                    subscription.on_publish(&batch);
                }
                None
            }
        };
        state.next_offset += u64::from(count);
        drop(state);

        self.stats
            .messages_in
            .fetch_add(u64::from(count), Ordering::Relaxed);
        self.stats
            .bytes_in
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let receipt = Receipt {
            first_offset,
            count,
            publish_time_ms,
        };
        Ok((receipt, durable))
    }

    /// The subscription `name`, created with `kind` from `origin` when it
    /// does not exist yet; says whether it was created.
    pub async fn subscription(
        &self,
        name: &str,
        kind: SubscriptionType,
        origin: Origin,
        policy: DeliveryPolicy,
        dead_letters: Option<DeadLetterSink>,
    ) -> (Arc<Subscription>, bool) {
        if let Some(existing) = read(&self.subscriptions).get(name) {
            return (Arc::clone(existing), false);
        }

        let wake = Arc::new(Notify::new());
        let dispatcher = match &self.log {
            None => Dispatcher::Push(PushDispatcher::new(kind, self.partition)),
            Some(log) => {
                let limits = Limits {
                    max_unacked_per_consumer: self.limits.max_unacked_per_consumer,
                };
                let log = Arc::clone(log);
                let wake = Arc::clone(&wake);
                let started = ReliableDispatcher::start(
                    kind,
                    self.partition,
                    log,
                    origin,
                    limits,
                    wake,
                    Redelivery {
                        policy,
                        dead_letters,
                    },
                );
                Dispatcher::Reliable(started.await)
            }
        };
        let built = Arc::new(Subscription::new(
            self.name.as_str(),
            name,
            kind,
            dispatcher,
            wake,
            policy,
        ));

        // Another caller may have created it meanwhile; theirs wins and ours
        // (with its task) is dropped.
        let mut subscriptions = self
            .subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = subscriptions.get(name) {
            return (Arc::clone(existing), false);
        }
        subscriptions.insert(name.to_string(), Arc::clone(&built));
        (built, true)
    }

    pub fn log(&self) -> Option<&Arc<TopicLog>> {
        self.log.as_ref()
    }

    /// Removes subscription `name`, closing its consumers.
    pub fn remove_subscription(&self, name: &str) -> Option<Arc<Subscription>> {
        let removed = self
            .subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(name)?;
        for consumer in removed.consumers() {
            removed.leave(consumer.id);
        }
        Some(removed)
    }

    /// Messages handed to consumers over every subscription.
    pub fn messages_out(&self) -> u64 {
        self.subscriptions().iter().map(|s| s.delivered()).sum()
    }

    /// Message bytes handed to consumers over every subscription.
    pub fn bytes_out(&self) -> u64 {
        self.subscriptions()
            .iter()
            .map(|s| s.delivered_bytes())
            .sum()
    }

    /// Updates the rates from the counters, `elapsed` after the last call.
    pub fn sample_rates(&self, elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64().max(0.001);
        let (now_in, now_out) = (
            self.stats.messages_in.load(Ordering::Relaxed),
            self.messages_out(),
        );
        let mut rates = lock(&self.stats.rates);
        rates.rate_in = now_in.saturating_sub(rates.last_in) as f64 / seconds;
        rates.rate_out = now_out.saturating_sub(rates.last_out) as f64 / seconds;
        rates.last_in = now_in;
        rates.last_out = now_out;
    }

    /// Messages per second in and out over the last sample.
    pub fn rates(&self) -> (f64, f64) {
        let rates = lock(&self.stats.rates);
        (rates.rate_in, rates.rate_out)
    }

    /// Bytes of messages this topic holds on local disk.
    pub fn local_bytes(&self) -> u64 {
        self.log.as_ref().map_or(0, |log| log.local_bytes())
    }

    /// Bytes of spare segment files this topic keeps on local disk.
    pub fn spare_bytes(&self) -> u64 {
        self.log.as_ref().map_or(0, |log| log.spare_bytes())
    }

    pub fn existing_subscription(&self, name: &str) -> Option<Arc<Subscription>> {
        read(&self.subscriptions).get(name).cloned()
    }

    pub fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        read(&self.subscriptions).values().cloned().collect()
    }

    /// The offset the next message will get.
    pub fn next_offset(&self) -> u64 {
        lock(&self.publish).next_offset
    }

    /// Records whether the backlog is over its quota, checked by the
    /// broker's janitor; while it is, publishing is refused.
    pub fn set_backlog_over_quota(&self, over: Option<(u64, u64)>) {
        lock(&self.refusals).over_quota = over;
    }

    /// Records whether more sealed bytes wait for offload than allowed,
    /// checked after each offload pass; while they do, publishing is
    /// refused.
    pub fn set_offload_pending(&self, over: Option<(u64, u64)>) {
        lock(&self.refusals).offload_pending = over;
    }

    /// The lowest acknowledged floor over the subscriptions (reliable
    /// topics), or the end of the log when there are none.
    pub fn acknowledged_floor(&self) -> Option<u64> {
        let log = self.log.as_ref()?;
        let floor = read(&self.subscriptions)
            .values()
            .filter_map(|s| s.floor())
            .min();
        Some(floor.unwrap_or_else(|| log.end()))
    }
}

/// Conditions under which a topic refuses producers, set by the broker's
/// periodic checks.
#[derive(Clone, Copy, Debug, Default)]
struct Refusals {
    /// The backlog is over its quota: (backlog, quota).
    over_quota: Option<(u64, u64)>,
    /// Too many sealed bytes wait for offload: (pending, limit).
    offload_pending: Option<(u64, u64)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
