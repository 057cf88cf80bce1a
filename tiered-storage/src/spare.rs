//! Spare segment files: retired segments kept for later rolls to reuse.
//!
//! Deleting a segment and creating the next one costs the file system more
//! than the bytes written: it frees blocks and allocates new ones, and on a
//! disk mounted with `discard` the freed blocks are trimmed inside a journal
//! commit, which every fsync acknowledging publishes then waits behind. So
//! retention renames a retired segment to `<bound>.spare` instead of
//! deleting it, and a roll renames a spare to the new segment's name and
//! overwrites it from the start, on blocks the file already has.
//!
//! A reused file still holds batches of its earlier life past the new data.
//! They are told apart by offset: `bound` is one past every offset the file
//! ever held, and a spare is reused only for a segment whose base offset is
//! at or above it. A checksummed batch below a segment's base offset is
//! therefore a leftover and marks where the segment's data ends (recovery
//! relies on this), and a seal cuts the file to its data, so leftovers only
//! ever follow the data of the active segment.
//!
//! A power cut must never leave new batches under an old name. Retention
//! syncs the directory before a spare joins the pool, so a retired name
//! cannot come back over a reused file. A roll's rename may still reach
//! the disk after the batches written behind it (none of them acknowledged:
//! the committer syncs the directory before it acknowledges a new
//! segment's first batch), so recovery deletes the spares it finds rather
//! than trust their names.
//!
//! The pool is bounded in files per partition (`LogConfig::spare_segments`)
//! and in bytes across every partition sharing a [`SpareBudget`] (a
//! broker's); retired segments neither has room for are deleted. Spares no
//! roll asked for in a while are deleted one at a time, so an idle
//! partition gives its disk space back without a burst of deletions.
//!
//! Known gap: telling a leftover from data by offset assumes the bytes at
//! the end of a segment's data are either batches this partition wrote or
//! garbage. A payload that itself holds a whole Sava batch, with a valid
//! checksum and the very offset the segment continues at, lying exactly
//! where a crash ended the data of a reused file, would be read as data.
//! A per-file value mixed into each batch's checksum would rule that out;
//! the batch format has no room for one yet.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::segment::{remove_if_present, spare_path};

/// The bytes of spare files that the partitions sharing it may keep
/// together. Clones share one count; equal when they are the same budget.
#[derive(Clone)]
pub struct SpareBudget {
    shared: Arc<Budget>,
}

struct Budget {
    max_bytes: u64,
    used_bytes: AtomicU64,
}

impl SpareBudget {
    /// A budget of `max_bytes`, to share between partitions.
    pub fn new(max_bytes: u64) -> SpareBudget {
        SpareBudget {
            shared: Arc::new(Budget {
                max_bytes,
                used_bytes: AtomicU64::new(0),
            }),
        }
    }

    /// Bytes of spare files kept under this budget now.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used_bytes.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget; false when they would pass it.
    pub(crate) fn reserve(&self, bytes: u64) -> bool {
        let max = self.shared.max_bytes;
        self.shared
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= max)
            })
            .is_ok()
    }

    /// Gives back what [`SpareBudget::reserve`] took.
    pub(crate) fn release(&self, bytes: u64) {
        let _ = self
            .shared
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

impl Default for SpareBudget {
    /// A budget of its own with no limit: the files per partition alone
    /// bound the spares.
    fn default() -> Self {
        SpareBudget::new(u64::MAX)
    }
}

impl PartialEq for SpareBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for SpareBudget {}

impl std::fmt::Debug for SpareBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpareBudget")
            .field("max_bytes", &self.shared.max_bytes)
            .field("used_bytes", &self.used_bytes())
            .finish()
    }
}

/// A spare file and the bound of the offsets it held.
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) path: PathBuf,
    pub(crate) bound: u64,
    /// Bytes of the retired segment, which its seal cut the file to.
    pub(crate) bytes: u64,
}

/// The spares of one partition directory.
#[derive(Debug)]
pub(crate) struct SparePool {
    dir: PathBuf,
    capacity: usize,
    /// Holds the bytes of every spare in `spares`.
    budget: SpareBudget,
    /// Oldest first.
    spares: VecDeque<Spare>,
    /// When a roll last took a spare, or retention last added some.
    last_used: Instant,
}

impl SparePool {
    /// An empty pool for the partition directory `dir`.
    pub(crate) fn new(dir: &Path, capacity: usize, budget: SpareBudget) -> SparePool {
        SparePool {
            dir: dir.to_path_buf(),
            capacity,
            budget,
            spares: VecDeque::new(),
            last_used: Instant::now(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.spares.len()
    }

    /// Bytes the spares take on disk.
    pub(crate) fn bytes(&self) -> u64 {
        self.spares.iter().map(|spare| spare.bytes).sum()
    }

    /// How many more spares the pool takes.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.spares.len())
    }

    /// A spare a segment starting at `base_offset` may reuse. Spares whose
    /// bound is above it may never be reused, and are deleted (the log's
    /// offsets only grow, so this guards against a bug, not a case).
    pub(crate) fn take(&mut self, base_offset: u64) -> Option<Spare> {
        while let Some(spare) = self.spares.pop_front() {
            self.budget.release(spare.bytes);
            if spare.bound <= base_offset {
                self.last_used = Instant::now();
                return Some(spare);
            }
            tracing::warn!(spare = %spare.path.display(), bound = spare.bound, base_offset, "deleting a spare segment that held offsets above the new segment's");
            delete(&spare.path);
        }
        None
    }

    /// Renames the retired segment file at `path`, `bytes` long, whose
    /// offsets were all below `bound`, to a spare. The caller checked
    /// [`SparePool::room`], reserved the bytes, and that nothing reads the
    /// file any more.
    pub(crate) fn retire(path: &Path, dir: &Path, bound: u64, bytes: u64) -> Result<Spare> {
        let spare = spare_path(dir, bound);
        fs::rename(path, &spare).map_err(|e| Error::io(path, e))?;
        Ok(Spare {
            path: spare,
            bound,
            bytes,
        })
    }

    /// Deletes spares that were reserved and renamed but will not join
    /// the pool, and gives their bytes back.
    pub(crate) fn discard(&self, spares: Vec<Spare>) {
        for spare in spares {
            self.budget.release(spare.bytes);
            delete(&spare.path);
        }
    }

    /// Adds spares [`SparePool::retire`] made.
    pub(crate) fn extend(&mut self, spares: Vec<Spare>) {
        if spares.is_empty() {
            return;
        }
        self.spares.extend(spares);
        self.spares
            .make_contiguous()
            .sort_by_key(|spare| spare.bound);
        self.last_used = Instant::now();
    }

    /// Takes the oldest spare out of the pool when no roll took one for
    /// `idle`, for the caller to delete outside its lock.
    pub(crate) fn trim(&mut self, idle: Duration) -> Option<PathBuf> {
        if self.last_used.elapsed() < idle {
            return None;
        }
        let spare = self.spares.pop_front()?;
        self.budget.release(spare.bytes);
        Some(spare.path)
    }

    /// Deletes every spare, for a disk that ran full.
    pub(crate) fn release(&mut self) {
        if !self.spares.is_empty() {
            tracing::info!(dir = %self.dir.display(), spares = self.spares.len(), "deleting spare segments to free disk space");
        }
        for spare in self.spares.drain(..) {
            self.budget.release(spare.bytes);
            delete(&spare.path);
        }
    }
}

impl Drop for SparePool {
    /// A log closed with spares left gives their bytes back; the files
    /// stay until the partition opens again, whose recovery deletes them.
    fn drop(&mut self) {
        for spare in &self.spares {
            self.budget.release(spare.bytes);
        }
    }
}

/// Deletes a spare; a failure only leaves a file the next open removes.
pub(crate) fn delete(path: &Path) {
    if let Err(error) = remove_if_present(path) {
        tracing::warn!(spare = %path.display(), %error, "cannot delete spare segment");
    }
}
