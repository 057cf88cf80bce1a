//! The message log of a reliable topic.
//!
//! Known shortcoming: the log is held in memory. Reliable topics get
//! at-least-once delivery, redelivery and cursors while the broker runs,
//! but a broker restart loses the messages and cursors; the write-ahead
//! segments on disk take this type's place. Until then the log's memory is
//! bounded by `max_bytes`, and a full log refuses producers with
//! RESOURCE_EXHAUSTED instead of growing.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::message::Message;

/// The messages of one reliable topic that some subscription still needs.
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

    /// Whether `bytes` more fit under the bound.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.read().bytes + bytes <= self.max_bytes
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
        inner.messages.iter().skip(skip).take(max).cloned().collect()
    }

    /// The offset of the first message published at or after `time_ms`, or
    /// the end when there is none. Exact, since publish times never
    /// decrease within a topic.
    pub fn offset_at_time(&self, time_ms: u64) -> u64 {
        let inner = self.read();
        let index = inner.messages.partition_point(|m| m.publish_time_ms < time_ms);
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
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
