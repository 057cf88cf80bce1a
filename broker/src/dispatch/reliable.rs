//! Reliable dispatch: one task per subscription reads the topic's log from
//! the subscription's cursor and hands messages to consumers that have
//! room, keeping every delivered offset pending until it is acknowledged.
//!
//! The task is the only writer of the subscription's state. A consumer that
//! goes away, or a nack, makes its pending offsets ready again (a nack with
//! a delay only once the delay has passed), and ready offsets go out before
//! new ones. The cursor is the `floor` (every offset below it is
//! acknowledged) plus the acknowledged offsets above it; the task publishes
//! a snapshot of it whenever it changes, which the broker writes to
//! metadata in coalesced batches. A subscription restored from such a
//! snapshot delivers everything unacknowledged again and skips the rest.
//!
//! Known shortcoming: when the consumer that owns the next message has no
//! room, dispatch waits for it (for Shared and Key-Shared too), so one slow
//! Key-Shared consumer holds the subscription back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::SubscriptionType;
use super::consumer::{ConsumerHandle, Room};
use super::router::{Member, Router};
use crate::error::BrokerError;
use crate::log::TopicLog;
use crate::message::{Delivery, Message};

/// Messages read from the log per step.
const READ_STEP: usize = 256;
/// How long dispatch pauses after a failed read before trying again.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Where a new subscription starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    Latest,
    Earliest,
    Offset(u64),
    TimeMs(u64),
}

/// A subscription's acknowledged position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every offset below it is acknowledged.
    pub floor: u64,
    /// Acknowledged offsets above `floor`, as inclusive ranges in order.
    pub acked_ranges: Vec<(u64, u64)>,
}

/// How a consumer's unacknowledged messages are bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most unacknowledged messages one consumer may hold.
    pub max_unacked_per_consumer: usize,
}

/// What happens to a message delivered `max_deliveries` times without
/// being acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Publish it to the subscription's dead-letter topic, then count it as
    /// acknowledged.
    #[default]
    DeadLetter,
    /// Count it as acknowledged without delivering it again.
    Drop,
    /// Keep it and deliver nothing after it (ordered types) until an
    /// operator resets the subscription or changes the policy.
    Block,
}

impl FailurePolicy {
    pub fn name(self) -> &'static str {
        match self {
            FailurePolicy::DeadLetter => "dead-letter",
            FailurePolicy::Drop => "drop",
            FailurePolicy::Block => "block",
        }
    }

    pub fn named(name: &str) -> Option<FailurePolicy> {
        [
            FailurePolicy::DeadLetter,
            FailurePolicy::Drop,
            FailurePolicy::Block,
        ]
        .into_iter()
        .find(|policy| policy.name() == name)
    }
}

/// A subscription's redelivery rules. Everything is off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// A delivered message not acknowledged within this time is delivered
    /// again.
    pub ack_timeout: Option<Duration>,
    /// After this many deliveries without an ack, `on_max_deliveries`
    /// applies.
    pub max_deliveries: Option<u32>,
    pub on_max_deliveries: FailurePolicy,
}

/// A subscription's redelivery rules and where its dead letters go.
#[derive(Clone, Default)]
pub struct Redelivery {
    pub policy: DeliveryPolicy,
    pub dead_letters: Option<DeadLetterSink>,
}

/// Publishes a message that ran out of deliveries to the dead-letter topic,
/// with the number of times it was delivered.
pub type DeadLetterSink = Arc<
    dyn Fn(Arc<Message>, u32) -> futures::future::BoxFuture<'static, Result<(), BrokerError>>
        + Send
        + Sync,
>;

/// Counters of one reliable subscription, written by its task.
#[derive(Debug, Default)]
pub struct ReliableStats {
    /// Every offset below it is acknowledged.
    pub floor: AtomicU64,
    /// The next offset never delivered yet.
    pub next_read: AtomicU64,
    /// Acknowledged offsets above the floor.
    pub acked_above: AtomicU64,
    /// Delivered, not acknowledged yet.
    pub pending: AtomicU64,
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    /// Deliveries that reached their ack timeout.
    pub timed_out: AtomicU64,
    /// Messages that ran out of deliveries (dead-lettered or dropped).
    pub dead_lettered: AtomicU64,
    cursor: Mutex<Cursor>,
    cursor_dirty: AtomicBool,
}

impl ReliableStats {
    /// The cursor, when it changed since the last call.
    pub fn take_changed_cursor(&self) -> Option<Cursor> {
        if !self.cursor_dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(
            self.cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Marks the cursor as not saved yet (after a failed save).
    pub fn mark_cursor_unsaved(&self) {
        self.cursor_dirty.store(true, Ordering::Release);
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

enum Command {
    Seek(StartPosition, tokio::sync::oneshot::Sender<()>),
    SetPolicy(DeliveryPolicy),
    Add(Arc<ConsumerHandle>, Member),
    Remove(u64),
    Ack {
        offsets: Vec<u64>,
        cumulative: Option<u64>,
    },
    Nack {
        offsets: Vec<u64>,
        delay: Option<Duration>,
    },
}

/// Where the task starts: a position for a new subscription, or the cursor
/// of a restored one.
#[derive(Clone, Debug)]
pub enum Origin {
    New(StartPosition),
    Restored(Cursor),
}

/// The handle the subscription keeps; dropping it stops the task.
#[derive(Debug)]
pub struct ReliableDispatcher {
    commands: mpsc::UnboundedSender<Command>,
    wake: Arc<Notify>,
    stats: Arc<ReliableStats>,
    log: Arc<TopicLog>,
}

impl ReliableDispatcher {
    /// Starts the dispatch task of a subscription over `log`.
    pub async fn start(
        kind: SubscriptionType,
        partition: u32,
        log: Arc<TopicLog>,
        origin: Origin,
        limits: Limits,
        wake: Arc<Notify>,
        redelivery: Redelivery,
    ) -> ReliableDispatcher {
        let Redelivery {
            policy,
            dead_letters,
        } = redelivery;
        let cursor = match origin {
            Origin::New(position) => Cursor {
                floor: resolve(&log, position).await,
                acked_ranges: Vec::new(),
            },
            Origin::Restored(cursor) => cursor,
        };
        let stats = Arc::new(ReliableStats::default());
        let (commands, receiver) = mpsc::unbounded_channel();
        let mut task = Task {
            router: Router::new(kind, partition),
            consumers: Vec::new(),
            log: Arc::clone(&log),
            limits,
            next_read: cursor.floor,
            floor: cursor.floor,
            acked_above: BTreeSet::new(),
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
            delayed: BTreeMap::new(),
            counts: HashMap::new(),
            unacked: HashMap::new(),
            stats: Arc::clone(&stats),
            cursor_changed: true,
            read_failed_at: None,
            policy,
            dead_letters,
            timeouts: BTreeMap::new(),
        };
        for (first, last) in &cursor.acked_ranges {
            task.acked_above
                .extend((*first..=*last).filter(|o| *o >= cursor.floor));
        }
        task.publish_stats();
        tokio::spawn(task.run(receiver, Arc::clone(&wake)));
        ReliableDispatcher {
            commands,
            wake,
            stats,
            log,
        }
    }

    /// Moves the cursor to `position`: everything from there on is
    /// delivered again, everything before counts as acknowledged. Resolves
    /// once the task has moved it.
    pub async fn seek(&self, position: StartPosition) {
        let (done, moved) = tokio::sync::oneshot::channel();
        self.send(Command::Seek(position, done));
        let _ = moved.await;
    }

    pub fn stats(&self) -> &ReliableStats {
        &self.stats
    }

    /// Replaces the subscription's redelivery rules.
    pub fn set_policy(&self, policy: DeliveryPolicy) {
        self.send(Command::SetPolicy(policy));
    }

    pub fn log(&self) -> &TopicLog {
        &self.log
    }

    pub fn add(&self, consumer: Arc<ConsumerHandle>) -> Result<(), BrokerError> {
        let member = Member::new(consumer.id, &consumer.name, &consumer.key_filters)?;
        self.send(Command::Add(consumer, member));
        Ok(())
    }

    pub fn remove(&self, id: u64) {
        self.send(Command::Remove(id));
    }

    pub fn ack(&self, offsets: Vec<u64>, cumulative: Option<u64>) {
        self.send(Command::Ack {
            offsets,
            cumulative,
        });
    }

    pub fn nack(&self, offsets: Vec<u64>, delay: Option<Duration>) {
        self.send(Command::Nack { offsets, delay });
    }

    /// Tells the task that the log grew.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Every offset below this one is acknowledged.
    pub fn floor(&self) -> u64 {
        self.stats.floor.load(Ordering::Acquire)
    }

    fn send(&self, command: Command) {
        // The task ends only when this handle is dropped, so sending cannot
        // fail while `self` exists.
        let _ = self.commands.send(command);
    }
}

struct Pending {
    consumer: u64,
}

struct Task {
    router: Router,
    /// In the order of `router.members()`.
    consumers: Vec<Arc<ConsumerHandle>>,
    log: Arc<TopicLog>,
    limits: Limits,
    /// The next offset never delivered yet.
    next_read: u64,
    floor: u64,
    acked_above: BTreeSet<u64>,
    pending: BTreeMap<u64, Pending>,
    ready: BTreeSet<u64>,
    delayed: BTreeMap<Instant, Vec<u64>>,
    counts: HashMap<u64, u32>,
    /// Pending offsets per consumer id.
    unacked: HashMap<u64, usize>,
    stats: Arc<ReliableStats>,
    cursor_changed: bool,
    read_failed_at: Option<Instant>,
    policy: DeliveryPolicy,
    dead_letters: Option<DeadLetterSink>,
    /// Ack deadlines of deliveries: (offset, the delivery count it had).
    timeouts: BTreeMap<Instant, Vec<(u64, u32)>>,
}

async fn resolve(log: &TopicLog, position: StartPosition) -> u64 {
    match position {
        StartPosition::Latest => log.end(),
        StartPosition::Earliest => log.start(),
        StartPosition::Offset(offset) => offset.clamp(log.start(), log.end()),
        StartPosition::TimeMs(time) => match log.offset_at_time(time).await {
            Ok(offset) => offset.clamp(log.start(), log.end()),
            Err(error) => {
                tracing::warn!(%error, time_ms = time, "cannot find the offset at a time; starting at the end");
                log.end()
            }
        },
    }
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, wake: Arc<Notify>) {
        loop {
            self.release_due();
            self.dispatch().await;
            self.publish_stats();

            let retry_at = self.read_failed_at.map(|at| at + READ_RETRY);
            let next_timeout = self.timeouts.keys().next().copied();
            let next_due = self
                .delayed
                .keys()
                .next()
                .copied()
                .into_iter()
                .chain(retry_at)
                .chain(next_timeout)
                .min();
            let due = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => return,
                },
                _ = wake.notified() => {}
                _ = due => {}
            }
        }
    }

    fn publish_stats(&mut self) {
        let stats = &self.stats;
        stats.floor.store(self.floor, Ordering::Release);
        stats.next_read.store(self.next_read, Ordering::Release);
        stats
            .acked_above
            .store(self.acked_above.len() as u64, Ordering::Release);
        stats
            .pending
            .store(self.pending.len() as u64, Ordering::Release);
        if std::mem::take(&mut self.cursor_changed) {
            *stats.cursor.lock().unwrap_or_else(|p| p.into_inner()) = Cursor {
                floor: self.floor,
                acked_ranges: ranges(&self.acked_above),
            };
            stats.cursor_dirty.store(true, Ordering::Release);
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::SetPolicy(policy) => {
                self.policy = policy;
                if policy.ack_timeout.is_none() {
                    self.timeouts.clear();
                }
            }
            Command::Seek(position, done) => {
                let offset = resolve(&self.log, position).await;
                self.next_read = offset;
                self.floor = offset;
                self.acked_above.clear();
                self.pending.clear();
                self.ready.clear();
                self.delayed.clear();
                self.counts.clear();
                self.unacked.clear();
                self.timeouts.clear();
                self.cursor_changed = true;
                self.publish_stats();
                let _ = done.send(());
            }
            Command::Add(consumer, member) => {
                let id = consumer.id;
                self.router.insert(member);
                self.consumers.retain(|c| c.id != id);
                self.consumers.push(consumer);
                let order: Vec<u64> = self.router.members().iter().map(|m| m.id).collect();
                self.consumers
                    .sort_by_key(|c| order.iter().position(|member| *member == c.id));
                // A consumer that comes back gets what it had not acked again.
                self.release_consumer(id);
            }
            Command::Remove(id) => {
                self.router.remove(id);
                self.consumers.retain(|c| c.id != id);
                self.release_consumer(id);
            }
            Command::Ack {
                offsets,
                cumulative,
            } => {
                if let Some(up_to) = cumulative {
                    let below: Vec<u64> = self.pending.range(..=up_to).map(|(o, _)| *o).collect();
                    for offset in below {
                        self.acknowledge(offset);
                    }
                    let up_to = up_to.min(self.next_read.saturating_sub(1));
                    for offset in self.floor..=up_to {
                        self.acknowledge(offset);
                    }
                }
                for offset in offsets {
                    self.acknowledge(offset);
                }
            }
            Command::Nack { offsets, delay } => {
                for offset in offsets {
                    if !self.take_pending(offset) {
                        continue;
                    }
                    match delay {
                        Some(delay) if !delay.is_zero() => {
                            self.delayed
                                .entry(Instant::now() + delay)
                                .or_default()
                                .push(offset);
                        }
                        _ => {
                            self.ready.insert(offset);
                        }
                    }
                }
            }
        }
    }

    /// Forgets that `offset` is out with a consumer; returns whether it was.
    fn take_pending(&mut self, offset: u64) -> bool {
        let Some(pending) = self.pending.remove(&offset) else {
            return false;
        };
        if let Some(count) = self.unacked.get_mut(&pending.consumer) {
            *count = count.saturating_sub(1);
        }
        true
    }

    fn acknowledge(&mut self, offset: u64) {
        if offset < self.floor || offset >= self.next_read || self.acked_above.contains(&offset) {
            return;
        }
        self.take_pending(offset);
        self.ready.remove(&offset);
        self.counts.remove(&offset);
        self.acked_above.insert(offset);
        while self.acked_above.remove(&self.floor) {
            self.floor += 1;
        }
        self.cursor_changed = true;
    }

    fn release_consumer(&mut self, id: u64) {
        let theirs: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.consumer == id)
            .map(|(o, _)| *o)
            .collect();
        for offset in theirs {
            self.pending.remove(&offset);
            self.ready.insert(offset);
        }
        self.unacked.remove(&id);
    }

    fn release_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if *entry.key() > now {
                break;
            }
            for offset in entry.remove() {
                self.ready.insert(offset);
            }
        }
        while let Some(entry) = self.timeouts.first_entry() {
            if *entry.key() > now {
                break;
            }
            for (offset, count) in entry.remove() {
                // Only the delivery the deadline was set for, if still out.
                let same_delivery = self.counts.get(&offset) == Some(&count);
                if same_delivery && self.take_pending(offset) {
                    self.ready.insert(offset);
                    self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Applies the failure policy to `message` when it has used up its
    /// deliveries; returns whether it may be delivered.
    async fn may_deliver(&mut self, message: &Arc<Message>) -> bool {
        let Some(max) = self.policy.max_deliveries else {
            return true;
        };
        let delivered = self.counts.get(&message.offset).copied().unwrap_or(0);
        if delivered < max {
            return true;
        }
        match self.policy.on_max_deliveries {
            FailurePolicy::Block => return false,
            FailurePolicy::Drop => {}
            FailurePolicy::DeadLetter => {
                let Some(sink) = self.dead_letters.clone() else {
                    return false;
                };
                if let Err(error) = sink(Arc::clone(message), delivered).await {
                    tracing::warn!(%error, offset = message.offset, "cannot dead-letter a message; keeping it");
                    self.read_failed_at = Some(Instant::now());
                    return false;
                }
            }
        }
        self.ready.remove(&message.offset);
        self.acknowledge(message.offset);
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        false
    }

    async fn dispatch(&mut self) {
        if self.consumers.is_empty() {
            return;
        }
        if self
            .read_failed_at
            .is_some_and(|at| at.elapsed() < READ_RETRY)
        {
            return;
        }
        let mut room = Room::of(&self.consumers, |c| self.room_of(c));
        let mut chunks: Vec<Vec<Delivery>> = vec![Vec::new(); self.consumers.len()];

        if let Err(error) = self.dispatch_ready(&mut room, &mut chunks).await {
            self.read_failed(error);
        } else if let Err(error) = self.dispatch_new(&mut room, &mut chunks).await {
            self.read_failed(error);
        }

        let mut returned = Vec::new();
        for (index, (consumer, chunk)) in self.consumers.iter().zip(chunks).enumerate() {
            if chunk.is_empty() {
                continue;
            }
            if let Err(chunk) = consumer.push(chunk, room.taken_bytes(index)) {
                returned.extend(chunk.into_iter().map(|d| d.message.offset));
            }
        }
        for offset in returned {
            self.take_pending(offset);
            self.ready.insert(offset);
        }
    }

    /// Sends offsets that are ready again (nacked, or left by a consumer).
    async fn dispatch_ready(
        &mut self,
        room: &mut Room,
        chunks: &mut [Vec<Delivery>],
    ) -> Result<(), sava_storage::Error> {
        let ready: Vec<u64> = self.ready.iter().copied().collect();
        for offset in ready {
            if room.is_exhausted() {
                break;
            }
            let Some(message) = self.log.get(offset).await? else {
                // Gone from the log (retention): nothing left to deliver.
                self.ready.remove(&offset);
                continue;
            };
            if !self.may_deliver(&message).await {
                if self.policy.on_max_deliveries == FailurePolicy::Block && self.keeps_order() {
                    break;
                }
                continue;
            }
            let Some(index) = self.router.choose(message.routing_key(), room.messages()) else {
                break;
            };
            self.ready.remove(&offset);
            room.take(index, &message);
            chunks[index].push(self.deliver(index, message));
        }
        Ok(())
    }

    /// Sends offsets never delivered yet, skipping acknowledged ones.
    async fn dispatch_new(
        &mut self,
        room: &mut Room,
        chunks: &mut [Vec<Delivery>],
    ) -> Result<(), sava_storage::Error> {
        self.next_read = self.next_read.max(self.log.start());
        while self.next_read < self.log.end() {
            if room.is_exhausted() {
                return Ok(());
            }
            // What no consumer has room for would be read again next time;
            // acknowledged offsets in the way take no room.
            let window = self.next_read..self.next_read + READ_STEP as u64;
            let acked = self.acked_above.range(window).count();
            let wanted = READ_STEP.min(room.total_messages().saturating_add(acked));
            let batch = self.log.read(self.next_read, wanted).await?;
            if batch.is_empty() {
                return Ok(());
            }
            for message in batch {
                if self.acked_above.contains(&message.offset) {
                    self.next_read = message.offset + 1;
                    continue;
                }
                let Some(index) = self.router.choose(message.routing_key(), room.messages()) else {
                    return Ok(());
                };
                room.take(index, &message);
                self.next_read = message.offset + 1;
                chunks[index].push(self.deliver(index, message));
            }
        }
        Ok(())
    }

    /// Whether this subscription type promises order, so a held message
    /// must hold the ones after it too.
    fn keeps_order(&self) -> bool {
        matches!(
            self.router.kind(),
            SubscriptionType::Exclusive | SubscriptionType::Failover
        )
    }

    fn read_failed(&mut self, error: sava_storage::Error) {
        // Reported once per retry interval, never skipped past.
        tracing::error!(%error, offset = self.next_read, "reliable dispatch cannot read the log");
        self.read_failed_at = Some(Instant::now());
    }

    fn deliver(&mut self, index: usize, message: Arc<Message>) -> Delivery {
        self.read_failed_at = None;
        let consumer = self.consumers[index].id;
        let count = self.counts.entry(message.offset).or_insert(0);
        *count += 1;
        let delivery_count = *count;
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        if delivery_count > 1 {
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        self.pending.insert(message.offset, Pending { consumer });
        *self.unacked.entry(consumer).or_insert(0) += 1;
        if let Some(timeout) = self.policy.ack_timeout {
            let deadline = Instant::now() + timeout;
            self.timeouts
                .entry(deadline)
                .or_default()
                .push((message.offset, delivery_count));
        }
        Delivery {
            message,
            delivery_count,
        }
    }

    fn room_of(&self, consumer: &ConsumerHandle) -> usize {
        let unacked = self.unacked.get(&consumer.id).copied().unwrap_or(0);
        let window = self.limits.max_unacked_per_consumer.saturating_sub(unacked);
        consumer.credited_room().min(window)
    }
}

/// Sorted offsets as inclusive ranges.
fn ranges(offsets: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &offset in offsets {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == offset => *last = offset,
            _ => out.push((offset, offset)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sava_storage::{CommitConfig, FsyncMode, GroupCommitter, LogConfig, ReadPool};
    use tokio::time::timeout;

    use super::*;
    use crate::dispatch::consumer::{BufferLimit, ConsumerSpec, DeliveryReceiver};

    struct TestLog {
        log: Arc<TopicLog>,
        _dir: tempfile::TempDir,
    }

    async fn log_with(count: u64) -> TestLog {
        let dir = tempfile::tempdir().unwrap();
        let committer = GroupCommitter::start(CommitConfig {
            mode: FsyncMode::Never,
            ..CommitConfig::default()
        })
        .unwrap();
        let reads = Arc::new(ReadPool::start("sava-test", 1, 0));
        let (log, _) =
            TopicLog::open(dir.path(), LogConfig::default(), committer, reads, 1 << 20).unwrap();
        let log = Arc::new(log);
        append(&log, 0, count).await;
        TestLog { log, _dir: dir }
    }

    async fn append(log: &TopicLog, from: u64, count: u64) {
        if count == 0 {
            return;
        }
        let batch: Vec<_> = (from..from + count)
            .map(|offset| {
                Arc::new(Message {
                    offset,
                    publish_time_ms: 1000 + offset,
                    producer_id: 1,
                    producer_name: Arc::from("p"),
                    key: Some(format!("k{}", offset % 3)),
                    attributes: vec![],
                    payload: Bytes::from_static(b"x"),
                    schema_id: None,
                    schema_version: None,
                })
            })
            .collect();
        log.append(&batch).unwrap().await.unwrap();
    }

    async fn start_at(
        kind: SubscriptionType,
        log: &TestLog,
        origin: Origin,
    ) -> (ReliableDispatcher, Arc<Notify>) {
        let redelivery = Redelivery::default();
        start_with(kind, log, origin, redelivery).await
    }

    async fn start_with_policy(
        log: &TestLog,
        policy: DeliveryPolicy,
        dead_letters: Option<DeadLetterSink>,
    ) -> (ReliableDispatcher, Arc<Notify>) {
        let origin = Origin::New(StartPosition::Earliest);
        let redelivery = Redelivery {
            policy,
            dead_letters,
        };
        start_with(SubscriptionType::Exclusive, log, origin, redelivery).await
    }

    async fn start_with(
        kind: SubscriptionType,
        log: &TestLog,
        origin: Origin,
        redelivery: Redelivery,
    ) -> (ReliableDispatcher, Arc<Notify>) {
        let wake = Arc::new(Notify::new());
        let limits = Limits {
            max_unacked_per_consumer: 100,
        };
        let log = Arc::clone(&log.log);
        let wake_task = Arc::clone(&wake);
        let dispatcher =
            ReliableDispatcher::start(kind, 0, log, origin, limits, wake_task, redelivery).await;
        (dispatcher, wake)
    }

    async fn start(
        kind: SubscriptionType,
        log: &TestLog,
        from: StartPosition,
    ) -> (ReliableDispatcher, Arc<Notify>) {
        start_at(kind, log, Origin::New(from)).await
    }

    fn consumer(
        id: u64,
        name: &str,
        wake: &Arc<Notify>,
    ) -> (Arc<ConsumerHandle>, DeliveryReceiver) {
        bounded_consumer(id, name, wake, usize::MAX)
    }

    fn bounded_consumer(
        id: u64,
        name: &str,
        wake: &Arc<Notify>,
        bytes: usize,
    ) -> (Arc<ConsumerHandle>, DeliveryReceiver) {
        let spec = ConsumerSpec {
            id,
            name: name.into(),
            topic: "/default/t".into(),
            subscription: "s".into(),
            key_filters: vec![],
            credit_flow: false,
            delivered_counter: Default::default(),
            delivered_bytes: Default::default(),
            buffer: BufferLimit {
                messages: 1000,
                bytes,
            },
        };
        let handle = Arc::new(ConsumerHandle::new(spec, Arc::clone(wake)));
        let (_, receiver) = handle.attach();
        (handle, receiver)
    }

    async fn receive(receiver: &mut DeliveryReceiver, count: usize) -> Vec<(u64, u32)> {
        let mut got = Vec::new();
        while got.len() < count {
            let chunk = timeout(Duration::from_secs(5), receiver.recv())
                .await
                .expect("deliveries within 5 s")
                .expect("session open");
            got.extend(chunk.iter().map(|d| (d.message.offset, d.delivery_count)));
        }
        got
    }

    async fn nothing_more(receiver: &mut DeliveryReceiver) {
        let extra = timeout(Duration::from_millis(200), receiver.recv()).await;
        assert!(extra.is_err(), "unexpected delivery: {extra:?}");
    }

    #[tokio::test]
    async fn earliest_delivers_the_whole_log_in_order() {
        let log = log_with(5).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Earliest).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        let got = receive(&mut receiver, 5).await;
        assert_eq!(got, (0..5).map(|o| (o, 1)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_buffer_full_of_bytes_holds_the_rest_back_until_its_deliveries_leave() {
        // Each test message is 3 bytes: a 1-byte payload and a 2-byte key.
        let log = log_with(10).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Earliest).await;
        let (handle, mut receiver) = bounded_consumer(1, "c", &wake, 4 * 3);
        dispatcher.add(Arc::clone(&handle)).unwrap();

        let mut first = Vec::new();
        while first.len() < 4 {
            let chunk = timeout(Duration::from_secs(5), receiver.recv()).await;
            first.extend(chunk.expect("deliveries within 5 s").expect("session open"));
        }
        let offsets: Vec<u64> = first.iter().map(|d| d.message.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3]);
        nothing_more(&mut receiver).await;

        // The consumer's first session, which the test helper attached.
        handle.taken(1, &first);
        let next: Vec<u64> = receive(&mut receiver, 4)
            .await
            .iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(next, [4, 5, 6, 7]);
        nothing_more(&mut receiver).await;
    }

    #[tokio::test]
    async fn start_by_offset_and_by_time_skip_what_came_before() {
        let log = log_with(10).await;
        let (by_offset, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Offset(7)).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        by_offset.add(handle).unwrap();
        assert_eq!(receive(&mut receiver, 3).await[0], (7, 1));

        let (by_time, wake) = start(
            SubscriptionType::Exclusive,
            &log,
            StartPosition::TimeMs(1004),
        )
        .await;
        let (handle, mut receiver) = consumer(2, "d", &wake);
        by_time.add(handle).unwrap();
        assert_eq!(receive(&mut receiver, 6).await[0], (4, 1));
    }

    #[tokio::test]
    async fn acked_messages_advance_the_floor() {
        let log = log_with(4).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Earliest).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        receive(&mut receiver, 4).await;

        dispatcher.ack(vec![1, 0], None);
        dispatcher.ack(vec![3], None);
        let floor_reached = async {
            while dispatcher.floor() != 2 {
                tokio::task::yield_now().await;
            }
        };
        timeout(Duration::from_secs(5), floor_reached)
            .await
            .expect("floor 2");
        dispatcher.ack(vec![], Some(3));
        let all_acked = async {
            while dispatcher.floor() != 4 {
                tokio::task::yield_now().await;
            }
        };
        timeout(Duration::from_secs(5), all_acked)
            .await
            .expect("floor 4");
    }

    #[tokio::test]
    async fn a_nack_redelivers_with_a_higher_delivery_count() {
        let log = log_with(2).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Earliest).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        receive(&mut receiver, 2).await;

        dispatcher.nack(vec![1], None);
        assert_eq!(receive(&mut receiver, 1).await, vec![(1, 2)]);
    }

    #[tokio::test]
    async fn a_nack_with_a_delay_waits_for_it() {
        let log = log_with(1).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Earliest).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        receive(&mut receiver, 1).await;

        let nacked_at = std::time::Instant::now();
        dispatcher.nack(vec![0], Some(Duration::from_millis(300)));
        assert_eq!(receive(&mut receiver, 1).await, vec![(0, 2)]);
        assert!(nacked_at.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_consumer_that_leaves_has_its_unacked_messages_sent_to_another() {
        let log = log_with(6).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Shared, &log, StartPosition::Earliest).await;
        let (a, mut a_rx) = consumer(1, "a", &wake);
        dispatcher.add(a).unwrap();
        receive(&mut a_rx, 6).await;

        let (b, mut b_rx) = consumer(2, "b", &wake);
        dispatcher.add(b).unwrap();
        nothing_more(&mut b_rx).await;
        dispatcher.ack(vec![0, 1], None);
        dispatcher.remove(1);

        let mut got = receive(&mut b_rx, 4).await;
        got.sort();
        assert_eq!(got, vec![(2, 2), (3, 2), (4, 2), (5, 2)]);
    }

    #[tokio::test]
    async fn new_messages_are_dispatched_when_the_log_grows() {
        let log = log_with(0).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Latest).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        nothing_more(&mut receiver).await;

        append(&log.log, 0, 3).await;
        dispatcher.wake();
        assert_eq!(receive(&mut receiver, 3).await.len(), 3);
    }

    #[tokio::test]
    async fn a_consumer_holds_at_most_its_unacked_window() {
        let log = log_with(150).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Exclusive, &log, StartPosition::Earliest).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        let first = receive(&mut receiver, 100).await;
        nothing_more(&mut receiver).await;

        dispatcher.ack(first.iter().map(|(o, _)| *o).collect(), None);
        assert_eq!(receive(&mut receiver, 50).await[0], (100, 1));
    }

    #[tokio::test]
    async fn a_restored_cursor_redelivers_only_what_was_not_acknowledged() {
        let log = log_with(8).await;
        let cursor = Cursor {
            floor: 2,
            acked_ranges: vec![(3, 4), (6, 6)],
        };
        let (dispatcher, wake) =
            start_at(SubscriptionType::Shared, &log, Origin::Restored(cursor)).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        let offsets: Vec<u64> = receive(&mut receiver, 3)
            .await
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        assert_eq!(offsets, vec![2, 5, 7]);
        nothing_more(&mut receiver).await;
    }

    #[tokio::test]
    async fn the_cursor_snapshot_follows_acks_as_ranges() {
        let log = log_with(6).await;
        let (dispatcher, wake) =
            start(SubscriptionType::Shared, &log, StartPosition::Earliest).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        receive(&mut receiver, 6).await;
        dispatcher.ack(vec![0, 2, 3, 5], None);
        let expected = Cursor {
            floor: 1,
            acked_ranges: vec![(2, 3), (5, 5)],
        };
        let settled = async {
            loop {
                if dispatcher.stats().cursor() == expected {
                    break;
                }
                tokio::task::yield_now().await;
            }
        };
        timeout(Duration::from_secs(5), settled)
            .await
            .expect("cursor snapshot");
        assert!(dispatcher.stats().take_changed_cursor().is_some());
    }

    #[test]
    fn offsets_fold_into_inclusive_ranges() {
        let offsets: BTreeSet<u64> = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(ranges(&offsets), vec![(1, 3), (7, 7), (9, 10)]);
    }

    #[tokio::test]
    async fn a_delivery_not_acknowledged_in_time_is_delivered_again() {
        let log = log_with(1).await;
        let policy = DeliveryPolicy {
            ack_timeout: Some(Duration::from_millis(200)),
            ..DeliveryPolicy::default()
        };
        let (dispatcher, wake) = start_with_policy(&log, policy, None).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        assert_eq!(receive(&mut receiver, 1).await, vec![(0, 1)]);
        assert_eq!(receive(&mut receiver, 1).await, vec![(0, 2)]);
        dispatcher.ack(vec![0], None);
        nothing_more(&mut receiver).await;
        assert!(dispatcher.stats().timed_out.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn a_message_out_of_deliveries_goes_to_the_dead_letter_sink_and_counts_as_acknowledged() {
        let log = log_with(2).await;
        let (sent, mut dead) = mpsc::unbounded_channel();
        let sink: DeadLetterSink = Arc::new(move |message: Arc<Message>, count| {
            let _ = sent.send((message.offset, count));
            Box::pin(async { Ok(()) })
        });
        let policy = DeliveryPolicy {
            max_deliveries: Some(2),
            ..DeliveryPolicy::default()
        };
        let (dispatcher, wake) = start_with_policy(&log, policy, Some(sink)).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();

        assert_eq!(receive(&mut receiver, 2).await, vec![(0, 1), (1, 1)]);
        dispatcher.ack(vec![1], None);
        dispatcher.nack(vec![0], None);
        assert_eq!(receive(&mut receiver, 1).await, vec![(0, 2)]);
        dispatcher.nack(vec![0], None);

        let letter = timeout(Duration::from_secs(5), dead.recv()).await.unwrap();
        assert_eq!(letter, Some((0, 2)));
        nothing_more(&mut receiver).await;
        let acknowledged = async {
            while dispatcher.floor() != 2 {
                tokio::task::yield_now().await;
            }
        };
        timeout(Duration::from_secs(5), acknowledged)
            .await
            .expect("floor 2");
    }

    #[tokio::test]
    async fn the_drop_policy_forgets_and_the_block_policy_holds_a_failing_message() {
        let log = log_with(2).await;
        let drop = DeliveryPolicy {
            max_deliveries: Some(1),
            on_max_deliveries: FailurePolicy::Drop,
            ..DeliveryPolicy::default()
        };
        let (dispatcher, wake) = start_with_policy(&log, drop, None).await;
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        receive(&mut receiver, 2).await;
        dispatcher.nack(vec![0, 1], None);
        nothing_more(&mut receiver).await;
        assert_eq!(dispatcher.stats().dead_lettered.load(Ordering::Relaxed), 2);

        let block = DeliveryPolicy {
            on_max_deliveries: FailurePolicy::Block,
            ..drop
        };
        let (dispatcher, wake) = start_with_policy(&log, block, None).await;
        let (handle, mut receiver) = consumer(2, "d", &wake);
        dispatcher.add(handle).unwrap();
        receive(&mut receiver, 2).await;
        dispatcher.nack(vec![0], None);
        nothing_more(&mut receiver).await;
        assert_eq!(
            dispatcher.floor(),
            0,
            "the blocked message stays unacknowledged"
        );
    }
}
