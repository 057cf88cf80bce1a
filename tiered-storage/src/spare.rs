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
//! The pool is bounded (`LogConfig::spare_segments`); retired segments it
//! has no room for are deleted. Spares no roll asked for in a while are
//! deleted one at a time, so an idle partition gives its disk space back
//! without a burst of deletions.
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
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::segment::{remove_if_present, spare_path};

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
    /// Oldest first.
    spares: VecDeque<Spare>,
    /// When a roll last took a spare, or retention last added some.
    last_used: Instant,
}

impl SparePool {
    /// An empty pool for the partition directory `dir`.
    pub(crate) fn new(dir: &Path, capacity: usize) -> SparePool {
        SparePool {
            dir: dir.to_path_buf(),
            capacity,
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
    /// [`SparePool::room`] and that nothing reads the file any more.
    pub(crate) fn retire(path: &Path, dir: &Path, bound: u64, bytes: u64) -> Result<Spare> {
        let spare = spare_path(dir, bound);
        fs::rename(path, &spare).map_err(|e| Error::io(path, e))?;
        Ok(Spare {
            path: spare,
            bound,
            bytes,
        })
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
        self.spares.pop_front().map(|spare| spare.path)
    }

    /// Deletes every spare, for a disk that ran full.
    pub(crate) fn release(&mut self) {
        if !self.spares.is_empty() {
            tracing::info!(dir = %self.dir.display(), spares = self.spares.len(), "deleting spare segments to free disk space");
        }
        self.spares.drain(..).for_each(|spare| delete(&spare.path));
    }
}

/// Deletes a spare; a failure only leaves a file the next open removes.
pub(crate) fn delete(path: &Path) {
    if let Err(error) = remove_if_present(path) {
        tracing::warn!(spare = %path.display(), %error, "cannot delete spare segment");
    }
}
