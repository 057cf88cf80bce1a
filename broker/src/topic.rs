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
use tokio::sync::Notify;

use crate::dispatch::SubscriptionType;
use crate::dispatch::push::PushDispatcher;
use crate::dispatch::reliable::{Limits, ReliableDispatcher, StartPosition};
use crate::error::BrokerError;
use crate::log::MemoryLog;
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
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// Limits a topic enforces.
#[derive(Clone, Copy, Debug)]
pub struct TopicLimits {
    pub max_message_bytes: usize,
    pub consumer_buffer: usize,
    pub max_unacked_per_consumer: usize,
    pub reliable_memory_bytes: usize,
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
    partition: u32,
    log: Option<Arc<MemoryLog>>,
    publish: Mutex<PublishState>,
    producers: Mutex<Producers>,
    subscriptions: RwLock<HashMap<String, Arc<Subscription>>>,
}

impl Topic {
    pub fn new(
        name: TopicName,
        record: TopicRecord,
        schema: Option<Arc<ActiveSchema>>,
        limits: TopicLimits,
    ) -> Topic {
        let log = (record.dispatch_mode == DispatchMode::Reliable)
            .then(|| Arc::new(MemoryLog::new(0, limits.reliable_memory_bytes)));
        Topic {
            partition: name.partition_index().unwrap_or(0),
            name,
            record,
            schema,
            limits,
            stats: TopicStats::default(),
            log,
            publish: Mutex::new(PublishState::default()),
            producers: Mutex::new(Producers::default()),
            subscriptions: RwLock::new(HashMap::new()),
        }
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
    /// message that breaks a rule refuses the whole batch.
    pub fn publish(
        &self,
        producer: &ProducerInfo,
        messages: Vec<IncomingMessage>,
    ) -> Result<Receipt, BrokerError> {
        let schema = producer.schema.as_ref().or(self.schema.as_ref());
        let mut bytes = 0;
        for (index, message) in messages.iter().enumerate() {
            let size = message.payload.len()
                + message.key.as_ref().map_or(0, String::len)
                + message.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            if size > self.limits.max_message_bytes {
                return Err(BrokerError::MessageTooLarge {
                    index,
                    size,
                    limit: self.limits.max_message_bytes,
                });
            }
            bytes += size;
            if let Some(schema) = schema {
                if let Some(reason) = schema.check.violation(&message.payload) {
                    return Err(BrokerError::SchemaViolation {
                        topic: self.name.to_string(),
                        schema: format!("{} v{}", schema.subject, schema.version),
                        index,
                        reason,
                    });
                }
            }
        }
        producer.touch();
        let count = messages.len() as u32;

        let mut state = lock(&self.publish);
        if let Some(log) = &self.log {
            self.trim(log);
            if !log.has_room(bytes) {
                return Err(BrokerError::BacklogFull {
                    topic: self.name.to_string(),
                    bytes: log.bytes(),
                });
            }
        }
        let publish_time_ms = now_ms().max(state.last_time_ms);
        state.last_time_ms = publish_time_ms;
        let first_offset = state.next_offset;
        state.next_offset += u64::from(count);

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
        if let Some(log) = &self.log {
            log.append(&batch);
        }
        for subscription in read(&self.subscriptions).values() {
            subscription.on_publish(&batch);
        }
        drop(state);

        self.stats.messages_in.fetch_add(u64::from(count), Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(Receipt {
            first_offset,
            count,
            publish_time_ms,
        })
    }

    /// The subscription `name`, created with `kind` starting at `start`
    /// when it does not exist yet.
    pub fn subscription(
        &self,
        name: &str,
        kind: SubscriptionType,
        start: StartPosition,
    ) -> Arc<Subscription> {
        if let Some(existing) = read(&self.subscriptions).get(name) {
            return Arc::clone(existing);
        }
        let mut subscriptions = self
            .subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let created = subscriptions.entry(name.to_string()).or_insert_with(|| {
            let wake = Arc::new(Notify::new());
            let dispatcher = match &self.log {
                None => Dispatcher::Push(PushDispatcher::new(kind, self.partition)),
                Some(log) => Dispatcher::Reliable(ReliableDispatcher::start(
                    kind,
                    self.partition,
                    Arc::clone(log),
                    start,
                    Limits {
                        max_unacked_per_consumer: self.limits.max_unacked_per_consumer,
                    },
                    Arc::clone(&wake),
                )),
            };
            Arc::new(Subscription::new(self.name.as_str(), name, kind, dispatcher, wake))
        });
        Arc::clone(created)
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

    /// Updates the rates from the counters, `elapsed` after the last call.
    pub fn sample_rates(&self, elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64().max(0.001);
        let (now_in, now_out) = (self.stats.messages_in.load(Ordering::Relaxed), self.messages_out());
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

    /// Bytes of messages this topic holds in memory.
    pub fn local_bytes(&self) -> u64 {
        self.log.as_ref().map_or(0, |log| log.bytes() as u64)
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

    /// Drops what every subscription has acknowledged from the log.
    fn trim(&self, log: &MemoryLog) {
        let floor = read(&self.subscriptions)
            .values()
            .filter_map(|s| s.floor())
            .min()
            .unwrap_or_else(|| log.end());
        log.trim_to(floor);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
