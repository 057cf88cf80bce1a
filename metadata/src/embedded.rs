//! `EmbeddedStore`: the single-node metadata store, over one `redb` file.
//!
//! Concurrency is optimistic. A transaction takes the committed version when
//! it begins and reads a redb snapshot at least that new, opened at its first
//! read. Its commit runs on the blocking pool under one commit lock: it fails
//! with `Conflict` if a commit newer than its start version wrote a key range
//! it read, then applies its writes in one redb write transaction (fsynced),
//! records the write set in a bounded log of recent commits, and wakes the
//! watches of the keys written. The commit lock is the single writer.
//!
//! Known gaps:
//! - Reads run on the calling async worker. redb serves them from its page
//!   cache, but a cold read of a large range blocks that worker for the I/O.
//! - A transaction older than the last 4096 commits always conflicts, since
//!   the log no longer holds what they wrote.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::buffer::{KeyRange, Lookup, Pending, WriteBuffer, add_le};
use crate::error::{MetadataError, Result};
use crate::store::{KeyValue, MetadataStore, RangeOptions, Transaction, Watch, store_closed};

/// The largest value accepted, as in FoundationDB.
pub const EMBEDDED_MAX_VALUE_BYTES: usize = 100_000;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sava_metadata");
const COMMIT_LOG_LEN: usize = 4096;

type Snapshot = ReadOnlyTable<&'static [u8], &'static [u8]>;
type Watchers = BTreeMap<Vec<u8>, Vec<oneshot::Sender<()>>>;

/// A metadata store in one local `redb` database file.
///
/// Clones share the same database. The file stays locked while any clone or
/// transaction is alive.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// The version of the last applied commit; read without the commit lock.
    committed_version: AtomicU64,
    commit_log: Mutex<CommitLog>,
    watchers: Mutex<Watchers>,
    /// Declared after `db`, so the directory outlives the open file.
    _temporary_dir: Option<TemporaryDir>,
}

/// The write sets of recent commits, oldest first.
#[derive(Default)]
struct CommitLog {
    commits: VecDeque<(u64, Vec<KeyRange>)>,
    /// The newest version dropped from `commits`.
    trimmed_through: u64,
}

impl EmbeddedStore {
    /// Opens the database at `path`, creating it and its parent directories
    /// when missing.
    ///
    /// # Errors
    ///
    /// `Backend` when the directory cannot be created, the file cannot be
    /// opened (another process holds it), or it is not a redb database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_in(path.as_ref(), None)
    }

    /// Opens a fresh store in a new temporary directory, removed when the
    /// store and its clones are dropped. Meant for tests.
    ///
    /// # Errors
    ///
    /// `Backend` when the directory or the file cannot be created.
    pub fn open_temporary() -> Result<Self> {
        let dir = TemporaryDir::create().map_err(MetadataError::backend)?;
        let path = dir.path.join("metadata.redb");
        Self::open_in(&path, Some(dir))
    }

    fn open_in(path: &Path, temporary_dir: Option<TemporaryDir>) -> Result<Self> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            fs::create_dir_all(parent).map_err(MetadataError::backend)?;
        }
        let db = Database::create(path).map_err(redb_error)?;

        // Create the table up front, so read transactions can always open it.
        let write = db.begin_write().map_err(redb_error)?;
        write.open_table(TABLE).map_err(redb_error)?;
        write.commit().map_err(redb_error)?;

        tracing::debug!(path = %path.display(), "opened embedded metadata store");
        let inner = Inner {
            db,
            committed_version: AtomicU64::new(0),
            commit_log: Mutex::new(CommitLog::default()),
            watchers: Mutex::new(BTreeMap::new()),
            _temporary_dir: temporary_dir,
        };
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(EmbeddedTransaction {
            inner: Arc::clone(&self.inner),
            read_version: self.inner.committed_version.load(Ordering::Acquire),
            snapshot: None,
            writes: WriteBuffer::new(EMBEDDED_MAX_VALUE_BYTES),
            reads: Vec::new(),
        }))
    }

    async fn watch(&self, key: &[u8]) -> Result<Watch> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut watchers = lock(&self.inner.watchers);
            let senders = watchers.entry(key.to_vec()).or_default();
            senders.retain(|sender| !sender.is_closed());
            senders.push(sender);
        }
        Ok(Watch::new(async move {
            receiver.await.map_err(|_| store_closed())
        }))
    }

    fn max_value_bytes(&self) -> usize {
        EMBEDDED_MAX_VALUE_BYTES
    }
}

struct EmbeddedTransaction {
    inner: Arc<Inner>,
    read_version: u64,
    /// Opened at the first read; at least as new as `read_version`, which
    /// only makes the conflict check stricter.
    snapshot: Option<Snapshot>,
    writes: WriteBuffer,
    reads: Vec<KeyRange>,
}

impl EmbeddedTransaction {
    fn snapshot(&mut self) -> Result<&Snapshot> {
        if self.snapshot.is_none() {
            let read = self.inner.db.begin_read().map_err(redb_error)?;
            self.snapshot = Some(read.open_table(TABLE).map_err(redb_error)?);
        }
        Ok(self
            .snapshot
            .as_ref()
            .expect("the snapshot was opened above"))
    }

    fn stored(&mut self, key: &[u8]) -> Result<Option<Bytes>> {
        self.reads.push(KeyRange::point(key));
        let stored = self.snapshot()?.get(key).map_err(redb_error)?;
        Ok(stored.map(|value| Bytes::copy_from_slice(value.value())))
    }
}

#[async_trait]
impl Transaction for EmbeddedTransaction {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>> {
        match self.writes.lookup(key) {
            Lookup::Known(value) => Ok(value),
            Lookup::Add(delta) => {
                let base = self.stored(key)?;
                Ok(Some(add_le(base.as_deref(), delta)))
            }
            Lookup::Unwritten => self.stored(key),
        }
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>> {
        if begin >= end {
            return Ok(Vec::new());
        }

        let range = self.snapshot()?.range(begin..end).map_err(redb_error)?;
        let to_pair = |item: std::result::Result<_, redb::StorageError>| {
            let (key, value): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) =
                item.map_err(redb_error)?;
            Ok(KeyValue {
                key: Bytes::copy_from_slice(key.value()),
                value: Bytes::copy_from_slice(value.value()),
            })
        };
        let mut stored: Box<dyn Iterator<Item = Result<KeyValue>>> = if options.reverse {
            Box::new(range.rev().map(to_pair))
        } else {
            Box::new(range.map(to_pair))
        };

        let (pairs, read) = self.writes.merge_range(&mut stored, begin, end, options)?;
        self.reads.push(read);
        Ok(pairs)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.writes.clear_range(begin, end);
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes.atomic_add(key, delta);
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let EmbeddedTransaction {
            inner,
            read_version,
            snapshot,
            writes,
            reads,
        } = *self;
        drop(snapshot);

        // A read-only transaction is serializable at its snapshot already.
        writes.check_sizes()?;
        if writes.is_empty() {
            return Ok(());
        }

        let committed = tokio::task::spawn_blocking(move || {
            let written = inner.apply(read_version, &reads, writes)?;
            inner.wake_watchers(&written);
            Ok(())
        });
        committed.await.map_err(MetadataError::backend)?
    }
}

impl Inner {
    /// Checks `reads` against the commits newer than `read_version` and, when
    /// none conflicts, applies `writes` as the next version and returns the
    /// key ranges written. Blocking.
    fn apply(
        &self,
        read_version: u64,
        reads: &[KeyRange],
        writes: WriteBuffer,
    ) -> Result<Vec<KeyRange>> {
        let mut log = self
            .commit_log
            .lock()
            .map_err(|_| MetadataError::backend("the commit log lock is poisoned"))?;

        if log.trimmed_through > read_version {
            return Err(MetadataError::Conflict);
        }
        let newer = log
            .commits
            .iter()
            .filter(|(version, _)| *version > read_version);
        for (_, written) in newer {
            let conflicts = written
                .iter()
                .any(|written| reads.iter().any(|read| read.intersects(written)));
            if conflicts {
                return Err(MetadataError::Conflict);
            }
        }

        let written = writes.written_ranges();
        self.write(writes)?;

        let version = self.committed_version.load(Ordering::Relaxed) + 1;
        self.committed_version.store(version, Ordering::Release);
        log.commits.push_back((version, written.clone()));
        while log.commits.len() > COMMIT_LOG_LEN {
            if let Some((trimmed, _)) = log.commits.pop_front() {
                log.trimmed_through = trimmed;
            }
        }
        Ok(written)
    }

    /// Applies `writes` in one durable redb transaction: range clears first,
    /// then the single-key writes, which the buffer keeps newer than them.
    fn write(&self, writes: WriteBuffer) -> Result<()> {
        let (cleared, entries) = writes.into_parts();
        let write = self.db.begin_write().map_err(redb_error)?;
        {
            let mut table = write.open_table(TABLE).map_err(redb_error)?;
            for range in &cleared {
                table
                    .retain_in(range.begin.as_slice()..range.end.as_slice(), |_, _| false)
                    .map_err(redb_error)?;
            }
            for (key, pending) in &entries {
                match pending {
                    Pending::Set(value) => {
                        table
                            .insert(key.as_slice(), value.as_ref())
                            .map_err(redb_error)?;
                    }
                    Pending::Clear => {
                        table.remove(key.as_slice()).map_err(redb_error)?;
                    }
                    Pending::Add(delta) => {
                        let stored = table.get(key.as_slice()).map_err(redb_error)?;
                        let base = stored.map(|value| value.value().to_vec());
                        let sum = add_le(base.as_deref(), *delta);
                        table
                            .insert(key.as_slice(), sum.as_ref())
                            .map_err(redb_error)?;
                    }
                }
            }
        }
        write.commit().map_err(redb_error)
    }

    fn wake_watchers(&self, written: &[KeyRange]) {
        let mut watchers = lock(&self.watchers);
        for range in written {
            let keys: Vec<Vec<u8>> = watchers
                .range::<[u8], _>((
                    Bound::Included(range.begin.as_slice()),
                    Bound::Excluded(range.end.as_slice()),
                ))
                .map(|(key, _)| key.clone())
                .collect();
            for key in keys {
                for sender in watchers.remove(&key).unwrap_or_default() {
                    // The watch may have been dropped; nobody is waiting then.
                    let _ = sender.send(());
                }
            }
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn redb_error(error: impl Into<redb::Error>) -> MetadataError {
    MetadataError::backend(error.into())
}

/// A directory under the system's temporary directory, removed on drop.
struct TemporaryDir {
    path: PathBuf,
}

impl TemporaryDir {
    fn create() -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());

        loop {
            let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("sava-metadata-{}-{nanos}-{sequence}", std::process::id());
            let path = std::env::temp_dir().join(name);
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TemporaryDir { path }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            let path = self.path.display();
            tracing::warn!(%path, %error, "could not remove temporary metadata dir");
        }
    }
}
