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
//! When a flush covers several segments they are synced on up to
//! `sync_threads` threads at once, so the file system can fold the syncs into
//! one journal commit. A segment a roll just created also needs its
//! directory entry made durable before its first batch is acknowledged; the
//! flush that first covers it syncs the directory alongside the data.
//!
//! The committer also owns the [`Sealer`] thread, which finishes the seals
//! rolls start (see [`crate::seal`]).
//!
//! Known gaps: those helper threads are spawned per flush (tens of µs each,
//! small next to an fsync), and every partition keeps its own file, so each
//! flush still writes one file's data per dirty partition. Past a few hundred
//! active partitions per disk, a log shared by partitions would be needed to
//! keep fsync latency flat.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::seal::{SealJob, Sealer};
use crate::segment::{SegmentWriter, sync_dir};

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
    /// Segments synced at once when a flush covers several partitions.
    /// Default 4; 1 syncs them one after the other on the committer thread.
    pub sync_threads: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            mode: FsyncMode::Always,
            flush_interval: Duration::from_millis(1),
            flush_bytes: 1024 * 1024,
            sync_threads: 4,
        }
    }
}

/// What one flush did, handed to the observer (for latency and size
/// histograms) right before its waiters are completed. The observer runs on
/// the fsync thread: it must be quick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Batches acknowledged by this flush.
    pub batches: u64,
    pub bytes: u64,
    /// Distinct segment files synced.
    pub segments: u64,
    /// Directories synced for segments created since the flush before.
    pub directories: u64,
    /// Segment files whose sync failed.
    pub failed_segments: u64,
    /// Wall time spent in `sync_data`, all segments together.
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
    /// Kept apart from `stats` so `Never` appends take no shared lock.
    unsynced_batches: AtomicU64,
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
    sealer: Sealer,
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
            unsynced_batches: AtomicU64::new(0),
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
            sealer: Sealer::start()?,
        }))
    }

    pub fn mode(&self) -> FsyncMode {
        self.shared.config.mode
    }

    pub fn stats(&self) -> CommitStats {
        CommitStats {
            unsynced_batches: self.shared.unsynced_batches.load(Ordering::Relaxed),
            ..*self.shared.stats()
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Flushes what is pending, finishes the queued seals, stops the
    /// threads and fails later appends with [`Error::Closed`]. Blocks for
    /// the last flush; idempotent.
    pub fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.pending().closed = true;
        self.shared.wake.notify_all();

        join_once(&self.thread, "group commit");
        self.sealer.shutdown();
    }

    /// Hands a rolled segment's seal to the sealer thread.
    pub(crate) fn seal(&self, job: SealJob) {
        self.sealer.submit(job);
    }

    /// Blocks until the seals of every roll so far are done: their
    /// segments are then sealed (or their partition poisoned).
    pub fn wait_for_seals(&self) {
        self.sealer.wait();
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
            self.shared.unsynced_batches.fetch_add(1, Ordering::Relaxed);
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
        Ok(AppendAck {
            state: AckState::Waiting(receiver),
        })
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Joins the thread in `slot`, if it is still there; `what` names it in
/// the error a panic logs.
pub(crate) fn join_once(slot: &Mutex<Option<JoinHandle<()>>>, what: &str) {
    let thread = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(thread) = thread
        && thread.join().is_err()
    {
        tracing::error!(thread = what, "storage thread panicked");
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
    // Each dirty segment once, in the order it was first written.
    let mut slots: HashMap<*const SegmentWriter, usize> = HashMap::new();
    let mut dirty: Vec<&Waiter> = Vec::new();
    for waiter in &waiters {
        slots
            .entry(Arc::as_ptr(&waiter.segment))
            .or_insert_with(|| {
                dirty.push(waiter);
                dirty.len() - 1
            });
    }

    let started = Instant::now();
    let (outcomes, directories) = sync_segments(&dirty, shared.config.sync_threads);
    let fsync_latency = started.elapsed();

    // Poison first: a partition with a failed sync acknowledges nothing more,
    // even batches in another segment whose own sync succeeded.
    let mut failed_segments = 0;
    for (waiter, outcome) in dirty.iter().zip(&outcomes) {
        if let Some(error) = outcome {
            failed_segments += 1;
            tracing::error!(segment = %waiter.segment.path.display(), error = %error, "fsync failed; partition refuses appends until reopened");
            waiter.partition.poison();
        }
    }

    let report = FlushReport {
        batches: waiters.len() as u64,
        bytes: waiters.iter().map(|w| w.bytes).sum(),
        segments: dirty.len() as u64,
        directories,
        failed_segments,
        fsync_latency,
    };
    // Recorded before the acks go out, so an acknowledged append's flush is
    // always in the stats.
    record(shared, &report);

    for waiter in waiters {
        let result = match &outcomes[slots[&Arc::as_ptr(&waiter.segment)]] {
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
}

/// One sync of a flush: a segment's data, or the directory new segments
/// were created in.
enum SyncTarget<'a> {
    Data(&'a SegmentWriter),
    Entries(&'a std::path::Path),
}

impl SyncTarget<'_> {
    fn sync(&self) -> Option<Error> {
        match self {
            SyncTarget::Data(segment) => segment
                .file
                .sync_data()
                .err()
                .map(|e| Error::io(&segment.path, e)),
            SyncTarget::Entries(dir) => sync_dir(dir).err(),
        }
    }
}

/// Syncs the segments, and the directories of new ones, on up to `threads`
/// threads at once: the file system folds concurrent syncs into one journal
/// commit, where one after the other each would pay for its own. Returns
/// each segment's first failure, and how many directories were synced.
fn sync_segments(dirty: &[&Waiter], threads: usize) -> (Vec<Option<Error>>, u64) {
    let new_entry = |waiter: &Waiter| !waiter.segment.entry_durable.load(Ordering::Acquire);
    let mut targets: Vec<SyncTarget<'_>> = Vec::with_capacity(dirty.len() + 1);
    targets.extend(dirty.iter().map(|waiter| SyncTarget::Data(&waiter.segment)));
    // One sync per directory covers every new segment in it.
    let mut dirs: Vec<&std::path::Path> = Vec::new();
    for waiter in dirty.iter().filter(|waiter| new_entry(waiter)) {
        if !dirs.contains(&waiter.segment.dir()) {
            dirs.push(waiter.segment.dir());
            targets.push(SyncTarget::Entries(waiter.segment.dir()));
        }
    }

    let mut results = run_syncs(&targets, threads);
    let dir_results = results.split_off(dirty.len());
    let mut outcomes = results;
    for (waiter, outcome) in dirty.iter().zip(&mut outcomes) {
        if !new_entry(waiter) {
            continue;
        }
        let at = dirs.iter().position(|dir| *dir == waiter.segment.dir());
        match at.and_then(|at| dir_results[at].as_ref()) {
            Some(error) => drop(outcome.get_or_insert_with(|| error.duplicate())),
            None if outcome.is_none() => {
                waiter.segment.entry_durable.store(true, Ordering::Release);
            }
            None => {}
        }
    }
    (outcomes, dirs.len() as u64)
}

/// Runs the syncs on up to `threads` threads; results in `targets` order.
fn run_syncs(targets: &[SyncTarget<'_>], threads: usize) -> Vec<Option<Error>> {
    let threads = threads.clamp(1, targets.len().max(1));
    if threads == 1 {
        return targets.iter().map(SyncTarget::sync).collect();
    }

    // Workers take the next sync until none is left.
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(target) = targets.get(i) else {
                return done;
            };
            done.push((i, target.sync()));
        }
    };
    let mut results: Vec<Option<Error>> = Vec::new();
    results.resize_with(targets.len(), || None);
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut done = work();
        for helper in helpers {
            // A helper only calls sync_data; it has nothing to panic on.
            done.extend(helper.join().unwrap_or_default());
        }
        for (i, result) in done {
            results[i] = result;
        }
    });
    results
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

#[cfg(test)]
mod tests {
    use std::fs::{File, OpenOptions};
    use std::path::Path;

    use super::*;

    fn writer(file: File, path: &Path) -> Arc<SegmentWriter> {
        SegmentWriter::new(file, path.to_path_buf(), true)
    }

    /// `/dev/full` refuses `fdatasync` (EINVAL): a stand-in for a failing disk.
    fn failing_writer() -> Option<Arc<SegmentWriter>> {
        let path = Path::new("/dev/full");
        let file = OpenOptions::new().write(true).open(path).ok()?;
        Some(writer(file, path))
    }

    fn partition() -> Arc<PartitionDurability> {
        Arc::new(PartitionDurability::new(PathBuf::from("/p"), 0))
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread().build();
        runtime.expect("runtime").block_on(future)
    }

    #[test]
    fn a_failed_fsync_fails_its_waiters_and_poisons_the_partition() {
        let Some(failing) = failing_writer() else {
            return;
        };
        let committer = GroupCommitter::start(CommitConfig::default()).expect("start");
        let partition = partition();

        let ack = committer
            .register(&failing, &partition, 1, 100)
            .expect("register");

        let error = block_on(ack).expect_err("the sync fails");
        assert!(matches!(error, Error::Io { .. }), "{error:?}");
        assert!(partition.is_poisoned());
        assert_eq!(partition.durable_next.load(Ordering::SeqCst), 0);
        assert_eq!(committer.stats().fsync_failures, 1);
    }

    #[test]
    fn a_poisoned_partition_acknowledges_nothing_after_the_failure() {
        let Some(failing) = failing_writer() else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let healthy = writer(File::create(&path).expect("create"), &path);
        let config = CommitConfig {
            flush_interval: Duration::from_millis(200),
            ..CommitConfig::default()
        };
        let committer = GroupCommitter::start(config).expect("start");
        let partition = partition();

        // A first flush starts the interval, so the next two share a flush.
        let warm_up = committer
            .register(&healthy, &partition, 1, 1)
            .expect("register");
        block_on(warm_up).expect("healthy sync");
        let lost = committer
            .register(&failing, &partition, 2, 1)
            .expect("register");
        let later = committer
            .register(&healthy, &partition, 3, 1)
            .expect("register");

        assert!(block_on(lost).is_err());
        let error = block_on(later).expect_err("nothing after a failure is acknowledged");
        assert!(matches!(error, Error::Poisoned { .. }), "{error:?}");
        assert_eq!(partition.durable_next.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_observer_does_not_stop_the_committer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let healthy = writer(File::create(&path).expect("create"), &path);
        let observer: FlushObserver = Arc::new(|_: &FlushReport| panic!("observer bug"));
        let committer =
            GroupCommitter::start_with_observer(CommitConfig::default(), Some(observer))
                .expect("start");
        let partition = partition();

        for next in 1..4 {
            let ack = committer
                .register(&healthy, &partition, next, 1)
                .expect("register");
            block_on(ack).expect("acknowledged despite the observer");
        }
        assert_eq!(committer.stats().flushes, 3);
    }

    #[test]
    fn the_first_flush_of_a_new_segment_also_syncs_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let file = File::create(&path).expect("create");
        let fresh = SegmentWriter::new(file, path, false);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let observer: FlushObserver = {
            let reports = Arc::clone(&reports);
            Arc::new(move |report: &FlushReport| reports.lock().unwrap().push(*report))
        };
        let committer =
            GroupCommitter::start_with_observer(CommitConfig::default(), Some(observer))
                .expect("start");
        let partition = partition();

        for next in 1..3 {
            let ack = committer
                .register(&fresh, &partition, next, 1)
                .expect("register");
            block_on(ack).expect("acknowledged");
        }

        let directories: Vec<u64> = reports
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.directories)
            .collect();
        assert_eq!(directories, [1, 0]);
        assert!(fresh.entry_durable.load(Ordering::Acquire));
    }

    #[test]
    fn a_failed_directory_sync_fails_the_waiters_of_every_new_segment_in_it() {
        // New segments whose directory cannot be opened: its sync fails.
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("gone");
        let fresh = |name: &str| {
            let file = File::create(dir.path().join(name)).expect("create");
            SegmentWriter::new(file, gone.join(name), false)
        };
        let (first, second) = (fresh("first"), fresh("second"));
        let config = CommitConfig {
            flush_interval: Duration::from_millis(200),
            ..CommitConfig::default()
        };
        let committer = GroupCommitter::start(config).expect("start");

        // A first flush starts the interval, so the next two share a flush.
        let path = dir.path().join("old");
        let old = writer(File::create(&path).expect("create"), &path);
        let warm_up = committer.register(&old, &partition(), 1, 1);
        block_on(warm_up.expect("register")).expect("healthy sync");
        let (one, two) = (partition(), partition());
        let acks = [
            committer.register(&first, &one, 1, 1).expect("register"),
            committer.register(&second, &two, 1, 1).expect("register"),
        ];

        for ack in acks {
            assert!(block_on(ack).is_err());
        }
        assert!(one.is_poisoned() && two.is_poisoned());
        assert!(!first.entry_durable.load(Ordering::Acquire));
        assert!(!second.entry_durable.load(Ordering::Acquire));
    }

    #[test]
    fn zero_flush_bytes_is_refused() {
        let config = CommitConfig {
            flush_bytes: 0,
            ..CommitConfig::default()
        };

        let error = GroupCommitter::start(config).expect_err("invalid");

        assert!(error.to_string().contains("`flush_bytes`"), "{error}");
    }
}
