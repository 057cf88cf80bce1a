//! The broker's own figures for `/metrics` that no other part keeps: group
//! commit and fsync histograms (fed by the committer's flush observer),
//! metadata transaction latency and conflicts (through [`TimedStore`]), and
//! lookups by answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::Instrument;

use async_trait::async_trait;
use bytes::Bytes;
use sava_metadata::{KeyValue, MetadataError, MetadataStore, RangeOptions, Transaction, Watch};
use sava_storage::group_commit::{FlushObserver, FlushReport};
use sava_storage::metrics::Histogram;

/// Figures kept by the broker itself.
#[derive(Debug)]
pub struct BrokerMetrics {
    /// Bytes acknowledged by one group commit flush.
    pub commit_batch_bytes: Histogram,
    /// Time one flush spent in `sync_data`.
    pub fsync_seconds: Histogram,
    /// Metadata transactions from begin to the end of their commit.
    pub metadata_seconds: Histogram,
    pub metadata_conflicts: AtomicU64,
    pub lookups_connect: AtomicU64,
    pub lookups_redirect: AtomicU64,
    pub lookups_error: AtomicU64,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            commit_batch_bytes: Histogram::sizes(),
            fsync_seconds: Histogram::latency(),
            metadata_seconds: Histogram::latency(),
            metadata_conflicts: AtomicU64::new(0),
            lookups_connect: AtomicU64::new(0),
            lookups_redirect: AtomicU64::new(0),
            lookups_error: AtomicU64::new(0),
        }
    }
}

/// How a lookup was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupAnswer {
    /// This broker owns the topic.
    Connect,
    /// Another broker does.
    Redirect,
    Error,
}

impl BrokerMetrics {
    /// An observer for the group committer that fills the histograms.
    pub fn flush_observer(self: &Arc<Self>) -> FlushObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |report: &FlushReport| {
            if report.batches == 0 {
                return;
            }
            metrics.commit_batch_bytes.observe(report.bytes as f64);
            if report.segments > 0 {
                metrics.fsync_seconds.observe_duration(report.fsync_latency);
            }
        })
    }

    pub fn count_lookup(&self, answer: LookupAnswer) {
        let counter = match answer {
            LookupAnswer::Connect => &self.lookups_connect,
            LookupAnswer::Redirect => &self.lookups_redirect,
            LookupAnswer::Error => &self.lookups_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A metadata store that times every transaction and counts conflicts.
pub struct TimedStore {
    inner: Arc<dyn MetadataStore>,
    metrics: Arc<BrokerMetrics>,
}

impl TimedStore {
    pub fn wrap(
        inner: Arc<dyn MetadataStore>,
        metrics: Arc<BrokerMetrics>,
    ) -> Arc<dyn MetadataStore> {
        Arc::new(TimedStore { inner, metrics })
    }
}

#[async_trait]
impl MetadataStore for TimedStore {
    async fn begin(&self) -> sava_metadata::Result<Box<dyn Transaction>> {
        let started = Instant::now();
        let inner = self.inner.begin().await?;
        Ok(Box::new(TimedTransaction {
            inner,
            started,
            writes: 0,
            metrics: Arc::clone(&self.metrics),
        }))
    }

    async fn watch(&self, key: &[u8]) -> sava_metadata::Result<Watch> {
        self.inner.watch(key).await
    }

    fn max_value_bytes(&self) -> usize {
        self.inner.max_value_bytes()
    }
}

struct TimedTransaction {
    inner: Box<dyn Transaction>,
    started: Instant,
    /// Mutations made, counted for the span of a writing commit.
    writes: u32,
    metrics: Arc<BrokerMetrics>,
}

#[async_trait]
impl Transaction for TimedTransaction {
    async fn get(&mut self, key: &[u8]) -> sava_metadata::Result<Option<Bytes>> {
        self.inner.get(key).await
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> sava_metadata::Result<Vec<KeyValue>> {
        self.inner.get_range(begin, end, options).await
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes += 1;
        self.inner.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes += 1;
        self.inner.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.writes += 1;
        self.inner.clear_range(begin, end);
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes += 1;
        self.inner.atomic_add(key, delta);
    }

    async fn commit(self: Box<Self>) -> sava_metadata::Result<()> {
        let TimedTransaction {
            inner,
            started,
            writes,
            metrics,
        } = *self;
        // Read-only commits (most lookups) get no span of their own.
        let result = match writes {
            0 => inner.commit().await,
            _ => {
                let span = tracing::info_span!("metadata.commit", writes);
                inner.commit().instrument(span).await
            }
        };
        metrics.metadata_seconds.observe_duration(started.elapsed());
        if matches!(result, Err(MetadataError::Conflict)) {
            metrics.metadata_conflicts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}
