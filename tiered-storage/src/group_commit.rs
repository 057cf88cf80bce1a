//! Group commit: one thread per broker that fsyncs the WAL for every partition.
//!
//! Appenders write their batch into the active segment themselves (one
//! `pwrite`, under the partition lock, so offsets stay in file order) and then
//! register the bytes here. The committer thread is the single caller of
//! `sync_data`: it takes every registration pending, fsyncs each dirty segment
//! once, and completes the waiters, whose bytes were all written before they
//! registered and so are covered. It flushes as soon as `flush_bytes` are
//! pending, and otherwise no more often than every `flush_interval`: a lone
//! write after an idle spell is synced at once, while under load one fsync
//! covers everything that arrived during the one before.
//!
//! Known gaps: dirty segments are synced one after the other on the one
//! thread, so with many partitions dirty at once a flush costs one fsync per
//! partition; past a few hundred active partitions per disk, a pool of sync
//! threads (or a shared log file) would be needed to keep latency flat.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::segment::SegmentWriter;

/// When an append counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncMode {
    /// After `sync_data` covered the batch: survives a process kill and a
    /// machine crash or power loss. The reliable topics' contract.
    #[default]
    Always,
    /// Right after the write syscall, with no fsync. Survives a process kill
    /// (`kill -9`), since the data is in the kernel's page cache, but a
    /// machine crash or power loss can lose acknowledged messages.
    Never,
}

/// Configuration of the [`GroupCommitter`].
#[derive(Debug, Clone)]
pub struct CommitConfig {
    pub mode: FsyncMode,
    /// The shortest time between two flushes unless `flush_bytes` are
    /// pending. Default 1 ms.
    pub flush_interval: Duration,
    /// Pending bytes that trigger a flush at once. Default 1 MiB.
    pub flush_bytes: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            mode: FsyncMode::Always,
            flush_interval: Duration::from_millis(1),
            flush_bytes: 1024 * 1024,
        }
    }
}

/// What one flush did, handed to the observer (for latency and size
/// histograms) right after its waiters were completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Batches acknowledged by this flush.
    pub batches: u64,
    pub bytes: u64,
    /// Distinct segment files synced.
    pub segments: u64,
    /// Segment files whose sync failed.
    pub failed_segments: u64,
    /// Time spent in `sync_data`, all segments together.
    pub fsync_latency: Duration,
}

/// Totals since the committer started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    pub flushes: u64,
    /// Batches acknowledged after an fsync.
    pub batches: u64,
    /// Bytes acknowledged after an fsync.
    pub bytes: u64,
    /// `sync_data` calls (one per dirty segment per flush).
    pub fsyncs: u64,
    pub fsync_failures: u64,
    /// Batches acknowledged without fsync, in [`FsyncMode::Never`].
    pub unsynced_batches: u64,
    pub last_fsync_latency: Duration,
    pub total_fsync_time: Duration,
}

impl CommitStats {
    /// Mean batches per flush, the group commit's gain over one fsync per batch.
    pub fn batches_per_flush(&self) -> f64 {
        if self.flushes == 0 {
            return 0.0;
        }
        self.batches as f64 / self.flushes as f64
    }
}

/// A callback for every flush.
pub type FlushObserver = Arc<dyn Fn(&FlushReport) + Send + Sync>;

/// Durability of one partition, shared between its log and the committer.
#[derive(Debug)]
pub(crate) struct PartitionDurability {
    pub(crate) dir: PathBuf,
    /// Offsets below this are acknowledged.
    pub(crate) durable_next: AtomicU64,
    /// Set when a write or sync failed: nothing after it may be acknowledged.
    pub(crate) poisoned: AtomicBool,
}

impl PartitionDurability {
    pub(crate) fn new(dir: PathBuf, next_offset: u64) -> PartitionDurability {
        PartitionDurability {
            dir,
            durable_next: AtomicU64::new(next_offset),
            poisoned: AtomicBool::new(false),
        }
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    fn poisoned_error(&self) -> Error {
        Error::Poisoned {
            path: self.dir.clone(),
        }
    }
}

/// The future an append returns: resolves once its batch is durable.
///
/// Dropping it does not undo the write; the batch is still on disk.
#[must_use = "an append is not acknowledged until its future resolves"]
#[derive(Debug)]
pub struct AppendAck {
    state: AckState,
}

#[derive(Debug)]
enum AckState {
    Ready(Option<Result<()>>),
    Waiting(oneshot::Receiver<Result<()>>),
}

impl AppendAck {
    fn ready() -> AppendAck {
        AppendAck {
            state: AckState::Ready(Some(Ok(()))),
        }
    }
}

impl Future for AppendAck {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.state {
            AckState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(Error::Closed))),
            AckState::Waiting(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|result| result.unwrap_or(Err(Error::Closed))),
        }
    }
}

struct Waiter {
    segment: Arc<SegmentWriter>,
    partition: Arc<PartitionDurability>,
    next_offset: u64,
    bytes: u64,
    done: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
struct Pending {
    waiters: Vec<Waiter>,
    bytes: u64,
    closed: bool,
}

struct Shared {
    config: CommitConfig,
    /// Mirrors `Pending::closed`, for appenders to check without the lock.
    closed: AtomicBool,
    pending: Mutex<Pending>,
    wake: Condvar,
    stats: Mutex<CommitStats>,
    observer: Option<FlushObserver>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding this lock; a poisoned one is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> MutexGuard<'_, CommitStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The broker's one fsync thread, shared by all partition logs.
pub struct GroupCommitter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl GroupCommitter {
    /// Starts the committer thread.
    pub fn start(config: CommitConfig) -> Result<Arc<GroupCommitter>> {
        GroupCommitter::start_with_observer(config, None)
    }

    /// Starts the committer thread, calling `observer` after every flush.
    pub fn start_with_observer(
        config: CommitConfig,
        observer: Option<FlushObserver>,
    ) -> Result<Arc<GroupCommitter>> {
        if config.flush_bytes == 0 {
            return Err(Error::InvalidConfig {
                key: "flush_bytes",
                value: "0".to_owned(),
                allowed: "must be at least 1",
            });
        }
        let shared = Arc::new(Shared {
            config,
            closed: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            stats: Mutex::new(CommitStats::default()),
            observer,
        });

        let thread = std::thread::Builder::new()
            .name("sava-group-commit".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared)
            })
            .map_err(|e| Error::io(&PathBuf::from("sava-group-commit thread"), e))?;
        Ok(Arc::new(GroupCommitter {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    pub fn mode(&self) -> FsyncMode {
        self.shared.config.mode
    }

    pub fn stats(&self) -> CommitStats {
        *self.shared.stats()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Flushes what is pending, stops the thread and fails later appends
    /// with [`Error::Closed`]. Blocks for the last flush; idempotent.
    pub fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.pending().closed = true;
        self.shared.wake.notify_all();

        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("group commit thread panicked");
        }
    }

    /// Registers `bytes` just written to `segment`, ending at `next_offset`.
    pub(crate) fn register(
        &self,
        segment: &Arc<SegmentWriter>,
        partition: &Arc<PartitionDurability>,
        next_offset: u64,
        bytes: u64,
    ) -> Result<AppendAck> {
        if self.shared.config.mode == FsyncMode::Never {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            partition
                .durable_next
                .fetch_max(next_offset, Ordering::SeqCst);
            self.shared.stats().unsynced_batches += 1;
            return Ok(AppendAck::ready());
        }

        let (done, receiver) = oneshot::channel();
        let mut pending = self.shared.pending();
        if pending.closed {
            return Err(Error::Closed);
        }
        let was_idle = pending.waiters.is_empty();
        let below_threshold = pending.bytes < self.shared.config.flush_bytes;
        pending.bytes += bytes;
        pending.waiters.push(Waiter {
            segment: Arc::clone(segment),
            partition: Arc::clone(partition),
            next_offset,
            bytes,
            done,
        });

        // Wake the thread only when it sleeps for want of work or the byte
        // threshold was just crossed; otherwise its timer is already running.
        let crossed = below_threshold && pending.bytes >= self.shared.config.flush_bytes;
        drop(pending);
        if was_idle || crossed {
            self.shared.wake.notify_one();
        }
        Ok(AckState::Waiting(receiver).into())
    }
}

impl From<AckState> for AppendAck {
    fn from(state: AckState) -> AppendAck {
        AppendAck { state }
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The committer thread: waits for work, paces flushes, and flushes.
fn run(shared: &Shared) {
    let interval = shared.config.flush_interval;
    let mut last_flush: Option<Instant> = None;
    let mut pending = shared.pending();

    loop {
        if pending.waiters.is_empty() {
            if pending.closed {
                return;
            }
            pending = shared
                .wake
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }

        // Pace: at most one flush per interval, unless enough bytes are waiting.
        let due = last_flush.map_or_else(Instant::now, |at| at + interval);
        let now = Instant::now();
        if now < due && pending.bytes < shared.config.flush_bytes && !pending.closed {
            pending = shared
                .wake
                .wait_timeout(pending, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }

        let waiters = std::mem::take(&mut pending.waiters);
        pending.bytes = 0;
        drop(pending);

        last_flush = Some(Instant::now());
        flush(shared, waiters);
        pending = shared.pending();
    }
}

/// Syncs every segment the waiters wrote to, then completes them.
fn flush(shared: &Shared, waiters: Vec<Waiter>) {
    let mut outcomes: HashMap<*const SegmentWriter, Option<Error>> = HashMap::new();
    let mut fsync_latency = Duration::ZERO;
    for waiter in &waiters {
        let key = Arc::as_ptr(&waiter.segment);
        if outcomes.contains_key(&key) {
            continue;
        }
        let started = Instant::now();
        let outcome = waiter.segment.file.sync_data();
        fsync_latency += started.elapsed();
        outcomes.insert(
            key,
            outcome.err().map(|e| Error::io(&waiter.segment.path, e)),
        );
    }

    // Poison first: a partition with a failed sync acknowledges nothing more,
    // even batches in another segment whose own sync succeeded.
    let mut failed_segments = 0;
    for (key, error) in &outcomes {
        let Some(error) = error else { continue };
        failed_segments += 1;
        let waiter = waiters.iter().find(|w| Arc::as_ptr(&w.segment) == *key);
        if let Some(waiter) = waiter {
            tracing::error!(segment = %waiter.segment.path.display(), error = %error, "fsync failed; partition refuses appends until reopened");
            waiter.partition.poison();
        }
    }

    let report = FlushReport {
        batches: waiters.len() as u64,
        bytes: waiters.iter().map(|w| w.bytes).sum(),
        segments: outcomes.len() as u64,
        failed_segments,
        fsync_latency,
    };
    for waiter in waiters {
        let result = match &outcomes[&Arc::as_ptr(&waiter.segment)] {
            Some(error) => Err(error.duplicate()),
            None if waiter.partition.is_poisoned() => Err(waiter.partition.poisoned_error()),
            None => {
                let durable = &waiter.partition.durable_next;
                durable.fetch_max(waiter.next_offset, Ordering::SeqCst);
                Ok(())
            }
        };
        // The appender may have dropped its future; the batch is durable anyway.
        let _ = waiter.done.send(result);
    }

    record(shared, &report);
}

fn record(shared: &Shared, report: &FlushReport) {
    {
        let mut stats = shared.stats();
        stats.flushes += 1;
        stats.batches += report.batches;
        stats.bytes += report.bytes;
        stats.fsyncs += report.segments;
        stats.fsync_failures += report.failed_segments;
        stats.last_fsync_latency = report.fsync_latency;
        stats.total_fsync_time += report.fsync_latency;
    }
    // A panicking observer must not take the fsync thread, and every
    // partition's acks, down with it.
    if let Some(observer) = &shared.observer {
        let observed = std::panic::catch_unwind(AssertUnwindSafe(|| observer(report)));
        if observed.is_err() {
            tracing::error!("group commit flush observer panicked");
        }
    }
}
