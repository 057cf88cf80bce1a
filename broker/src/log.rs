//! The message log of a reliable topic: the partition's write-ahead log on
//! disk ([`sava_storage::PartitionLog`]) with a bounded tail of the newest
//! messages in memory ([`MemoryLog`]), over the history offloaded to object
//! storage ([`sava_storage::Tier`]).
//!
//! The topic's publish lock serializes appends; an append writes to disk
//! and to the tail, and its future resolves once group commit made it
//! durable. Dispatchers read only below the durable offset, so no consumer
//! sees a message a crash could still lose. Reads at or after the tail's
//! start come from memory; older ones from the segment files, on the
//! blocking pool, so catching up never holds an async worker; older still
//! from the offloaded Parquet objects, through the tier's bounded cache.
//! A reader that falls into a gap retention left jumps to the next offset
//! still stored.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sava_metadata::SegmentDescriptor;
use sava_storage::{
    GroupCommitter, LogConfig, PartitionLog, ReadPool, Record, RecoveryReport, Tier,
};

use std::collections::VecDeque;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::message::Message;

/// The newest messages of a topic, in offset order.
#[derive(Debug)]
pub struct MemoryLog {
    inner: RwLock<Inner>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Offset of `messages[0]`.
    start: u64,
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
}

impl MemoryLog {
    /// An empty log whose next offset is `next_offset`.
    pub fn new(next_offset: u64, max_bytes: usize) -> MemoryLog {
        MemoryLog {
            inner: RwLock::new(Inner {
                start: next_offset,
                ..Inner::default()
            }),
            max_bytes,
        }
    }

    /// Drops the oldest messages until the tail fits its byte bound again.
    pub fn shrink(&self) {
        let mut inner = self.write();
        while inner.bytes > self.max_bytes {
            let Some(message) = inner.messages.pop_front() else {
                break;
            };
            inner.bytes -= message.size();
            inner.start += 1;
        }
    }

    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    /// Appends messages whose offsets follow the log's end.
    pub fn append(&self, batch: &[Arc<Message>]) {
        let mut inner = self.write();
        for message in batch {
            debug_assert_eq!(message.offset, inner.start + inner.messages.len() as u64);
            inner.bytes += message.size();
            inner.messages.push_back(Arc::clone(message));
        }
    }

    /// The first offset still held.
    pub fn start(&self) -> u64 {
        self.read().start
    }

    /// The offset the next message will get.
    pub fn end(&self) -> u64 {
        let inner = self.read();
        inner.start + inner.messages.len() as u64
    }

    pub fn get(&self, offset: u64) -> Option<Arc<Message>> {
        let inner = self.read();
        let index = offset.checked_sub(inner.start)?;
        inner.messages.get(index as usize).cloned()
    }

    /// Up to `max` messages from `from` on.
    pub fn read_from(&self, from: u64, max: usize) -> Vec<Arc<Message>> {
        let inner = self.read();
        let skip = from.saturating_sub(inner.start) as usize;
        inner
            .messages
            .iter()
            .skip(skip)
            .take(max)
            .cloned()
            .collect()
    }

    /// The offset of the first message published at or after `time_ms`, or
    /// the end when there is none. Exact, since publish times never
    /// decrease within a topic.
    pub fn offset_at_time(&self, time_ms: u64) -> u64 {
        let inner = self.read();
        let index = inner
            .messages
            .partition_point(|m| m.publish_time_ms < time_ms);
        inner.start + index as u64
    }

    /// Bytes held from `offset` on, and the publish time at `offset`.
    pub fn backlog_from(&self, offset: u64) -> (usize, Option<u64>) {
        let inner = self.read();
        let skip = offset.saturating_sub(inner.start) as usize;
        let mut messages = inner.messages.iter().skip(skip);
        let oldest = messages.next();
        let bytes = oldest.map_or(0, |m| m.size()) + messages.map(|m| m.size()).sum::<usize>();
        (bytes, oldest.map(|m| m.publish_time_ms))
    }

    /// Forgets every message below `offset`.
    pub fn trim_to(&self, offset: u64) {
        let mut inner = self.write();
        while inner.start < offset {
            let Some(message) = inner.messages.pop_front() else {
                inner.start = offset;
                break;
            };
            inner.bytes -= message.size();
            inner.start += 1;
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A reliable topic's log: segments on disk and the tail in memory.
#[derive(Debug)]
pub struct TopicLog {
    disk: Arc<PartitionLog>,
    /// Where catch-up reads of `disk` run.
    disk_reads: Arc<ReadPool>,
    tail: MemoryLog,
    /// Payload bytes catch-up reads fetched from segment files.
    bytes_read_from_disk: AtomicU64,
    /// The object storage tier, when offload is on.
    tier: Option<Arc<Tier>>,
    /// The offloaded segments, in offset order, as the catalog holds them.
    remote: RwLock<Arc<Vec<SegmentDescriptor>>>,
    /// Payload bytes catch-up reads fetched from object storage.
    bytes_read_from_objects: AtomicU64,
    /// Held by whoever changes the offloaded segments (offload,
    /// compaction), so two never race on one topic.
    offload_lock: tokio::sync::Mutex<()>,
}

impl TopicLog {
    /// Opens (recovering) the partition's log in `dir`, whose catch-up
    /// reads run on `disk_reads`. Blocking: call it from the blocking pool.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        committer: Arc<GroupCommitter>,
        disk_reads: Arc<ReadPool>,
        tail_bytes: usize,
    ) -> Result<(TopicLog, RecoveryReport), sava_storage::Error> {
        let (disk, report) = PartitionLog::open(dir, config, committer)?;
        let tail = MemoryLog::new(disk.next_offset(), tail_bytes);
        let log = TopicLog {
            disk: Arc::new(disk),
            disk_reads,
            tail,
            bytes_read_from_disk: AtomicU64::new(0),
            tier: None,
            remote: RwLock::new(Arc::new(Vec::new())),
            bytes_read_from_objects: AtomicU64::new(0),
            offload_lock: tokio::sync::Mutex::new(()),
        };
        Ok((log, report))
    }

    /// Puts the log over `tier`, whose offloaded segments of this topic are
    /// `remote`.
    pub fn with_tier(mut self, tier: Arc<Tier>, remote: Vec<SegmentDescriptor>) -> TopicLog {
        self.tier = Some(tier);
        self.remote = RwLock::new(Arc::new(remote));
        self
    }

    pub fn tier(&self) -> Option<&Arc<Tier>> {
        self.tier.as_ref()
    }

    /// Serializes changes to the offloaded segments of this topic.
    pub async fn lock_offload(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.offload_lock.lock().await
    }

    /// The offloaded segments, in offset order.
    pub fn remote_segments(&self) -> Arc<Vec<SegmentDescriptor>> {
        Arc::clone(&self.remote.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the list of offloaded segments (after offload, compaction or
    /// retention changed the catalog).
    pub fn set_remote_segments(&self, segments: Vec<SegmentDescriptor>) {
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(segments);
    }

    /// One past the last offloaded offset; 0 when nothing is offloaded.
    pub fn offloaded_end(&self) -> u64 {
        self.remote_segments().last().map_or(0, |s| s.next_offset)
    }

    /// The offset the next message gets.
    pub fn next_offset(&self) -> u64 {
        self.disk.next_offset()
    }

    /// The publish time of the last message, local or offloaded (a new
    /// owner stamps no time below what the previous one did).
    pub fn last_publish_time_ms(&self) -> u64 {
        let remote = self
            .remote_segments()
            .last()
            .map_or(0, |s| s.last_publish_time_ms);
        self.disk.last_publish_time_ms().max(remote)
    }

    /// The first offset still stored, locally or in object storage.
    pub fn start(&self) -> u64 {
        let local = self.disk.start_offset();
        match self.remote_segments().first() {
            Some(first) => first.base_offset.min(local),
            None => local,
        }
    }

    /// The end of what dispatchers may read: every offset below it is
    /// durable.
    pub fn end(&self) -> u64 {
        self.disk.durable_offset()
    }

    /// Appends a stamped batch. Called under the topic's publish lock; the
    /// returned future resolves once the batch is durable.
    pub fn append(
        &self,
        batch: &[Arc<Message>],
    ) -> Result<sava_storage::AppendAck, sava_storage::Error> {
        let records: Vec<Record> = batch.iter().map(|m| to_record(m)).collect();
        let ack = self.disk.append(&records)?;
        self.tail.append(batch);
        self.tail.shrink();
        Ok(ack)
    }

    /// Up to `max` durable messages from `from` on.
    pub async fn read(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, sava_storage::Error> {
        let end = self.end();
        if from >= end || max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min((end - from) as usize);
        if from >= self.tail.start() {
            return Ok(self.tail.read_from(from, max));
        }
        let local_start = self.disk.start_offset();
        if from < local_start {
            return self.read_remote(from, max, local_start).await;
        }

        // The ranges are picked here, under the partition lock; the read
        // threads take no lock, so their low priority never holds up an
        // append. The messages are built there too, so as much of a
        // catch-up as can runs at that priority.
        let plan = self.disk.plan_read(from, DISK_READ_BYTES)?;
        let (messages, bytes) = self
            .disk_reads
            .run(move || {
                let records = plan.read(max, DISK_READ_BYTES)?;
                let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
                let messages: Vec<_> = records
                    .into_iter()
                    .filter(|r| r.offset < end)
                    .map(from_record)
                    .collect();
                Ok::<_, sava_storage::Error>((messages, bytes))
            })
            .await??;
        self.bytes_read_from_disk
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(messages)
    }

    /// Reads below the local segments: from the offloaded segment holding
    /// `from`, or from the next offset still stored when `from` is in a gap
    /// retention left.
    async fn read_remote(
        &self,
        from: u64,
        max: usize,
        local_start: u64,
    ) -> Result<Vec<Arc<Message>>, sava_storage::Error> {
        let remote = self.remote_segments();
        let next = remote.iter().find(|s| s.next_offset > from);
        let (Some(tier), Some(segment)) = (&self.tier, next) else {
            return Box::pin(self.read(local_start, max)).await;
        };
        if segment.base_offset >= local_start {
            return Box::pin(self.read(local_start, max)).await;
        }
        let from = from.max(segment.base_offset);
        let messages = tier
            .read_map(&remote, from, max, |record| from_record(record.clone()))
            .await?;
        let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
        self.bytes_read_from_objects
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(messages)
    }

    /// The message at `offset`, if it is stored and durable.
    pub async fn get(&self, offset: u64) -> Result<Option<Arc<Message>>, sava_storage::Error> {
        Ok(self
            .read(offset, 1)
            .await?
            .into_iter()
            .find(|m| m.offset == offset))
    }

    /// The first offset published at or after `time_ms`.
    pub async fn offset_at_time(&self, time_ms: u64) -> Result<u64, sava_storage::Error> {
        let remote = self.remote_segments();
        if let Some(tier) = &self.tier {
            let local_start = self.disk.start_offset();
            let older: Vec<SegmentDescriptor> = remote
                .iter()
                .filter(|s| s.base_offset < local_start)
                .cloned()
                .collect();
            if let Some(offset) = tier.offset_at_time(&older, time_ms).await? {
                return Ok(offset);
            }
        }
        let disk = Arc::clone(&self.disk);
        tokio::task::spawn_blocking(move || disk.offset_for_time(time_ms))
            .await
            .map_err(|_| sava_storage::Error::Closed)?
    }

    /// Bytes stored from `offset` on (whole segments, so an upper bound),
    /// and the publish time near `offset`.
    pub fn backlog_from(&self, offset: u64) -> (u64, Option<u64>) {
        if offset >= self.tail.start() {
            let (bytes, oldest) = self.tail.backlog_from(offset);
            return (bytes as u64, oldest);
        }
        let local_start = self.disk.start_offset();
        if offset < local_start {
            let remote = self.remote_segments();
            let older = remote
                .iter()
                .filter(|s| s.next_offset > offset && s.base_offset < local_start);
            let bytes: u64 = older.clone().map(|s| s.message_bytes).sum();
            let oldest = older.map(|s| s.first_publish_time_ms).next();
            let (local, local_oldest) = self.backlog_from(local_start);
            return (bytes + local, oldest.or(local_oldest));
        }
        let segments = self.disk.segments();
        let bytes = segments
            .iter()
            .filter(|s| s.last_offset().is_none_or(|last| last >= offset))
            .map(|s| s.bytes)
            .sum();
        let oldest = segments
            .iter()
            .find(|s| s.last_offset().is_some_and(|last| last >= offset))
            .and_then(|s| s.first_publish_time_ms);
        (bytes, oldest)
    }

    pub fn disk(&self) -> &Arc<PartitionLog> {
        &self.disk
    }

    /// Bytes the partition's segments take on local disk.
    pub fn local_bytes(&self) -> u64 {
        self.disk.disk_bytes()
    }

    /// Bytes of retired segment files kept for reuse on local disk.
    pub fn spare_bytes(&self) -> u64 {
        self.disk.spare_bytes()
    }

    /// Payload bytes catch-up reads fetched from segment files.
    pub fn bytes_read_from_disk(&self) -> u64 {
        self.bytes_read_from_disk.load(Ordering::Relaxed)
    }

    /// Payload bytes catch-up reads fetched from object storage.
    pub fn bytes_read_from_objects(&self) -> u64 {
        self.bytes_read_from_objects.load(Ordering::Relaxed)
    }
}

/// Most bytes one catch-up read takes from disk.
const DISK_READ_BYTES: usize = 4 * 1024 * 1024;

fn to_record(message: &Message) -> Record {
    Record {
        offset: message.offset,
        publish_time_ms: message.publish_time_ms,
        producer_id: message.producer_id,
        producer_name: Arc::clone(&message.producer_name),
        key: message.key.clone(),
        attributes: message.attributes.clone(),
        schema_id: message.schema_id,
        schema_version: message.schema_version,
        payload: message.payload.clone(),
    }
}

fn from_record(record: Record) -> Arc<Message> {
    Arc::new(Message {
        offset: record.offset,
        publish_time_ms: record.publish_time_ms,
        producer_id: record.producer_id,
        producer_name: record.producer_name,
        key: record.key,
        attributes: record.attributes,
        payload: record.payload,
        schema_id: record.schema_id,
        schema_version: record.schema_version,
    })
}
