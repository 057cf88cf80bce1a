//! The sealer: one thread per broker that finishes what rolls start.
//!
//! A roll only creates the next segment file, so an append that rolls
//! never waits for the disk. The segment it ended is finished here: a
//! reused file is cut to the segment's data, the data is synced (usually
//! nothing is left to write, the committer got there first), then its
//! sparse index is written to a temporary file, synced and renamed, then
//! the directory is synced, and then it counts as sealed, so offload and
//! retention may take it. An index on disk
//! therefore means the segment's data is whole, which is how recovery
//! tells a finished seal from one a crash interrupted; and a sealed
//! segment's index and the next segment's file are both durable, so a
//! crash cannot turn an offloaded segment back into the active one.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::group_commit::{PartitionDurability, join_once};
use crate::index::write_index_file;
use crate::segment::{SegmentReader, SegmentWriter, sync_dir};

/// The work left after a roll ended a segment.
#[derive(Debug)]
pub(crate) struct SealJob {
    pub(crate) writer: Arc<SegmentWriter>,
    /// The segment's read-only handle, which the seal syncs through.
    pub(crate) reader: Arc<SegmentReader>,
    pub(crate) partition: Arc<PartitionDurability>,
    pub(crate) index_path: PathBuf,
    /// The encoded index, taken under the log's lock at the roll.
    pub(crate) index: Vec<u8>,
    /// The segment's flag, set once this job is done.
    pub(crate) sealed: Arc<AtomicBool>,
    pub(crate) base_offset: u64,
    pub(crate) next_offset: u64,
    /// Bytes of the segment's batches; a reused file may be longer.
    pub(crate) data_bytes: u64,
}

impl SealJob {
    /// Syncs the data, writes the index and marks the segment sealed. A
    /// failed sync poisons the partition and leaves the segment unsealed; a
    /// failed index write only costs the next open a scan.
    pub(crate) fn run(self) -> Result<()> {
        let path = &self.writer.path;
        // A reused file may hold an earlier life's batches past the data;
        // a sealed segment ends at its data, as its index says.
        let cut = self.cut_leftovers();

        // Through the reader's file description, opened when the segment
        // was: Linux reports a writeback error once to each description
        // open when it happened. The writer's, which the committer syncs,
        // would hand an error to whichever sync came first, and the other
        // would then succeed on lost data. A cut changed the file's size,
        // which only a full sync is sure to make durable.
        let synced = match cut {
            true => self.reader.file.sync_all(),
            false => self.reader.file.sync_data(),
        };
        if let Err(error) = synced {
            tracing::error!(segment = %path.display(), %error, "cannot sync a rolled segment; partition refuses appends until reopened");
            self.partition.poison();
            return Err(Error::io(path, error));
        }

        if let Err(error) = write_index_file(&self.index_path, &self.index) {
            tracing::warn!(segment = %path.display(), %error, "cannot write the segment index; the next open rebuilds it");
        }
        if !path.exists() {
            // The partition's directory was deleted meanwhile; so goes the index.
            drop(fs::remove_file(&self.index_path));
            return Ok(());
        }
        if let Err(error) = sync_dir(self.writer.dir()) {
            tracing::error!(segment = %path.display(), %error, "cannot sync the directory of a rolled segment; partition refuses appends until reopened");
            self.partition.poison();
            return Err(error);
        }

        self.sealed.store(true, Ordering::Release);
        tracing::info!(
            segment = %path.display(),
            segment.base_offset = self.base_offset,
            segment.next_offset = self.next_offset,
            "sealed segment"
        );
        Ok(())
    }

    /// Cuts the file to the segment's data; returns whether it was longer.
    /// A failed cut only costs the next open a scan, as the index then
    /// disagrees with the file's length.
    fn cut_leftovers(&self) -> bool {
        let path = &self.writer.path;
        let longer = match self.reader.file.metadata() {
            Ok(metadata) => metadata.len() > self.data_bytes,
            Err(_) => false,
        };
        if !longer {
            return false;
        }
        match self.writer.file.set_len(self.data_bytes) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(segment = %path.display(), %error, "cannot cut a reused segment file to its data; the next open rescans it");
                false
            }
        }
    }
}

/// What the sealer thread is asked to do.
#[derive(Debug)]
enum Task {
    Seal(SealJob),
    /// Answered once every job submitted before is done.
    Barrier(mpsc::Sender<()>),
}

/// The thread that runs [`SealJob`]s in the order rolls submit them.
#[derive(Debug)]
pub(crate) struct Sealer {
    sender: Mutex<Option<mpsc::Sender<Task>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Sealer {
    pub(crate) fn start() -> Result<Sealer> {
        let (sender, receiver) = mpsc::channel::<Task>();
        let thread = std::thread::Builder::new()
            .name("sava-seal".to_owned())
            .spawn(move || {
                for task in receiver {
                    match task {
                        // A failure is logged and poisons the partition;
                        // the thread goes on with the other seals.
                        Task::Seal(job) => drop(job.run()),
                        Task::Barrier(done) => drop(done.send(())),
                    }
                }
            })
            .map_err(|e| Error::io(&PathBuf::from("sava-seal thread"), e))?;
        Ok(Sealer {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `job`; runs it on the caller's thread once the sealer stopped.
    pub(crate) fn submit(&self, job: SealJob) {
        if let Some(Task::Seal(job)) = self.send(Task::Seal(job)) {
            let _ = job.run();
        }
    }

    /// Blocks until every job submitted before this call is done.
    pub(crate) fn wait(&self) {
        let (done, finished) = mpsc::channel();
        if self.send(Task::Barrier(done)).is_none() {
            // An error means the thread stopped, after its last job.
            let _ = finished.recv();
        }
    }

    /// Hands `task` to the thread; gives it back once the thread stopped.
    fn send(&self, task: Task) -> Option<Task> {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        match sender.as_ref() {
            Some(sender) => sender.send(task).err().map(|refused| refused.0),
            None => Some(task),
        }
    }

    /// Finishes the queued jobs and stops the thread. Idempotent.
    pub(crate) fn shutdown(&self) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(sender);
        join_once(&self.thread, "seal");
    }
}
