//! Reliable dispatch: one task per subscription reads the topic's log from
//! the subscription's cursor and hands messages to consumers that have
//! room, keeping every delivered offset pending until it is acknowledged.
//!
//! The task is the only writer of the subscription's state. A consumer that
//! goes away, or a nack, makes its pending offsets ready again (a nack with
//! a delay only once the delay has passed), and ready offsets go out before
//! new ones. The acknowledged position is the `floor` (every offset below
//! it is acknowledged) plus the acknowledged offsets above it.
//!
//! Known shortcomings: when the consumer that owns the next message has no
//! room, dispatch waits for it (for Shared and Key-Shared too), so one slow
//! Key-Shared consumer holds the subscription back; and the cursor lives in
//! memory only, like the log it reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::SubscriptionType;
use super::consumer::ConsumerHandle;
use super::router::{Member, Router};
use crate::error::BrokerError;
use crate::log::MemoryLog;
use crate::message::Delivery;

/// Messages read from the log per step.
const READ_STEP: usize = 256;

/// Where a new subscription starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    Latest,
    Earliest,
    Offset(u64),
    TimeMs(u64),
}

/// How a consumer's unacknowledged messages are bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most unacknowledged messages one consumer may hold.
    pub max_unacked_per_consumer: usize,
}

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
}

enum Command {
    Seek(u64),
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

/// The handle the subscription keeps; dropping it stops the task.
#[derive(Debug)]
pub struct ReliableDispatcher {
    commands: mpsc::UnboundedSender<Command>,
    wake: Arc<Notify>,
    stats: Arc<ReliableStats>,
    log: Arc<MemoryLog>,
}

impl ReliableDispatcher {
    /// Starts the dispatch task of a subscription over `log`.
    pub fn start(
        kind: SubscriptionType,
        partition: u32,
        log: Arc<MemoryLog>,
        start: StartPosition,
        limits: Limits,
        wake: Arc<Notify>,
    ) -> ReliableDispatcher {
        let first = resolve(&log, start);
        let stats = Arc::new(ReliableStats::default());
        stats.floor.store(first, Ordering::Release);
        stats.next_read.store(first, Ordering::Release);
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = Task {
            router: Router::new(kind, partition),
            consumers: Vec::new(),
            log: Arc::clone(&log),
            limits,
            next_read: first,
            floor: first,
            acked_above: BTreeSet::new(),
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
            delayed: BTreeMap::new(),
            counts: HashMap::new(),
            unacked: HashMap::new(),
            stats: Arc::clone(&stats),
        };
        tokio::spawn(task.run(receiver, Arc::clone(&wake)));
        ReliableDispatcher {
            commands,
            wake,
            stats,
            log,
        }
    }

    /// Moves the cursor to `position`: everything from there on is
    /// delivered again, everything before counts as acknowledged.
    pub fn seek(&self, position: StartPosition) {
        self.send(Command::Seek(resolve(&self.log, position)));
    }

    pub fn stats(&self) -> &ReliableStats {
        &self.stats
    }

    pub fn log(&self) -> &MemoryLog {
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
    log: Arc<MemoryLog>,
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
}

fn resolve(log: &MemoryLog, position: StartPosition) -> u64 {
    match position {
        StartPosition::Latest => log.end(),
        StartPosition::Earliest => log.start(),
        StartPosition::Offset(offset) => offset.clamp(log.start(), log.end()),
        StartPosition::TimeMs(time) => log.offset_at_time(time),
    }
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, wake: Arc<Notify>) {
        loop {
            self.release_due();
            self.dispatch();
            self.publish_stats();

            let next_due = self.delayed.keys().next().copied();
            let due = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                _ = wake.notified() => {}
                _ = due => {}
            }
        }
    }

    fn publish_stats(&self) {
        let stats = &self.stats;
        stats.floor.store(self.floor, Ordering::Release);
        stats.next_read.store(self.next_read, Ordering::Release);
        stats.acked_above.store(self.acked_above.len() as u64, Ordering::Release);
        stats.pending.store(self.pending.len() as u64, Ordering::Release);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Seek(offset) => {
                self.next_read = offset;
                self.floor = offset;
                self.acked_above.clear();
                self.pending.clear();
                self.ready.clear();
                self.delayed.clear();
                self.counts.clear();
                self.unacked.clear();
                self.stats.floor.store(offset, Ordering::Release);
            }
            Command::Add(consumer, member) => {
                self.router.insert(member);
                self.consumers.retain(|c| c.id != consumer.id);
                self.consumers.push(consumer);
                let order: Vec<u64> = self.router.members().iter().map(|m| m.id).collect();
                self.consumers
                    .sort_by_key(|c| order.iter().position(|id| *id == c.id));
                // A consumer that comes back gets what it had not acked again.
                let id = self.consumers.last().map(|c| c.id);
                if let Some(id) = id {
                    self.release_consumer(id);
                }
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
                            self.delayed.entry(Instant::now() + delay).or_default().push(offset);
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
        if offset < self.floor || offset >= self.next_read {
            return;
        }
        self.take_pending(offset);
        self.ready.remove(&offset);
        self.counts.remove(&offset);
        self.acked_above.insert(offset);
        while self.acked_above.remove(&self.floor) {
            self.floor += 1;
        }
        self.stats.floor.store(self.floor, Ordering::Release);
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
    }

    fn dispatch(&mut self) {
        if self.consumers.is_empty() {
            return;
        }
        let mut room: Vec<usize> = self.consumers.iter().map(|c| self.room_of(c)).collect();
        let mut chunks: Vec<Vec<Delivery>> = vec![Vec::new(); self.consumers.len()];

        let ready: Vec<u64> = self.ready.iter().copied().collect();
        for offset in ready {
            let Some(message) = self.log.get(offset) else {
                self.ready.remove(&offset);
                continue;
            };
            let Some(index) = self.router.choose(message.routing_key(), &room) else {
                break;
            };
            self.ready.remove(&offset);
            room[index] -= 1;
            chunks[index].push(self.deliver(index, message));
        }

        'read: while self.next_read < self.log.end() {
            if room.iter().all(|r| *r == 0) {
                break;
            }
            for message in self.log.read_from(self.next_read, READ_STEP) {
                let Some(index) = self.router.choose(message.routing_key(), &room) else {
                    break 'read;
                };
                room[index] -= 1;
                self.next_read = message.offset + 1;
                chunks[index].push(self.deliver(index, message));
            }
        }

        let mut returned = Vec::new();
        for (consumer, chunk) in self.consumers.iter().zip(chunks) {
            if chunk.is_empty() {
                continue;
            }
            if let Err(chunk) = consumer.push(chunk) {
                returned.extend(chunk.into_iter().map(|d| d.message.offset));
            }
        }
        for offset in returned {
            self.take_pending(offset);
            self.ready.insert(offset);
        }
    }

    fn deliver(&mut self, index: usize, message: Arc<crate::message::Message>) -> Delivery {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::time::timeout;

    use super::*;
    use crate::dispatch::consumer::{ConsumerSpec, DeliveryReceiver};
    use crate::message::Message;

    fn log_with(count: u64) -> Arc<MemoryLog> {
        let log = Arc::new(MemoryLog::new(0, usize::MAX));
        let batch: Vec<_> = (0..count)
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
        log.append(&batch);
        log
    }

    fn start(kind: SubscriptionType, log: &Arc<MemoryLog>, from: StartPosition) -> (ReliableDispatcher, Arc<Notify>) {
        let wake = Arc::new(Notify::new());
        let limits = Limits {
            max_unacked_per_consumer: 100,
        };
        let dispatcher = ReliableDispatcher::start(kind, 0, Arc::clone(log), from, limits, Arc::clone(&wake));
        (dispatcher, wake)
    }

    fn consumer(id: u64, name: &str, wake: &Arc<Notify>) -> (Arc<ConsumerHandle>, DeliveryReceiver) {
        let spec = ConsumerSpec {
            id,
            name: name.into(),
            topic: "/default/t".into(),
            subscription: "s".into(),
            key_filters: vec![],
            credit_flow: false,
            delivered_counter: Default::default(),
            capacity: 1000,
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
        let log = log_with(5);
        let (dispatcher, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::Earliest);
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        let got = receive(&mut receiver, 5).await;
        assert_eq!(got, (0..5).map(|o| (o, 1)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn start_by_offset_and_by_time_skip_what_came_before() {
        let log = log_with(10);
        let (by_offset, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::Offset(7));
        let (handle, mut receiver) = consumer(1, "c", &wake);
        by_offset.add(handle).unwrap();
        assert_eq!(receive(&mut receiver, 3).await[0], (7, 1));

        let (by_time, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::TimeMs(1004));
        let (handle, mut receiver) = consumer(2, "d", &wake);
        by_time.add(handle).unwrap();
        assert_eq!(receive(&mut receiver, 6).await[0], (4, 1));
    }

    #[tokio::test]
    async fn acked_messages_advance_the_floor() {
        let log = log_with(4);
        let (dispatcher, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::Earliest);
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
        timeout(Duration::from_secs(5), floor_reached).await.expect("floor 2");
        dispatcher.ack(vec![], Some(3));
        let all_acked = async {
            while dispatcher.floor() != 4 {
                tokio::task::yield_now().await;
            }
        };
        timeout(Duration::from_secs(5), all_acked).await.expect("floor 4");
    }

    #[tokio::test]
    async fn a_nack_redelivers_with_a_higher_delivery_count() {
        let log = log_with(2);
        let (dispatcher, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::Earliest);
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        receive(&mut receiver, 2).await;

        dispatcher.nack(vec![1], None);
        assert_eq!(receive(&mut receiver, 1).await, vec![(1, 2)]);
    }

    #[tokio::test]
    async fn a_nack_with_a_delay_waits_for_it() {
        let log = log_with(1);
        let (dispatcher, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::Earliest);
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
        let log = log_with(6);
        let (dispatcher, wake) = start(SubscriptionType::Shared, &log, StartPosition::Earliest);
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
        let log = Arc::new(MemoryLog::new(0, usize::MAX));
        let (dispatcher, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::Latest);
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        nothing_more(&mut receiver).await;

        let grown = log_with(3);
        log.append(&grown.read_from(0, 3));
        dispatcher.wake();
        assert_eq!(receive(&mut receiver, 3).await.len(), 3);
    }

    #[tokio::test]
    async fn a_consumer_holds_at_most_its_unacked_window() {
        let log = log_with(150);
        let (dispatcher, wake) = start(SubscriptionType::Exclusive, &log, StartPosition::Earliest);
        let (handle, mut receiver) = consumer(1, "c", &wake);
        dispatcher.add(handle).unwrap();
        let first = receive(&mut receiver, 100).await;
        nothing_more(&mut receiver).await;

        dispatcher.ack(first.iter().map(|(o, _)| *o).collect(), None);
        assert_eq!(receive(&mut receiver, 50).await[0], (100, 1));
    }
}
