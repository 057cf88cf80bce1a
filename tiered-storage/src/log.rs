//! The write-ahead log of one reliable topic partition: [`PartitionLog`].
//!
//! The broker is the single writer: it stamps offsets and publish times under
//! its own per-partition lock and calls [`PartitionLog::append`] under that
//! same lock. The log keeps its own mutex over the segment list; appends hold
//! it while encoding and writing (one `pwrite`), reads only while they pick a
//! byte range, then read with `pread` on a read-only handle. Reads block on
//! disk, so the broker calls them from `spawn_blocking`.
//!
//! Durability: an append's bytes are in the page cache when `append` returns;
//! its [`AppendAck`] resolves when the [`GroupCommitter`] has fsynced them
//! (or at once in [`FsyncMode::Never`](crate::FsyncMode::Never)).
//!
//! Rolls do not wait for the disk either: the append that rolls creates the
//! next segment file and writes on, and the ended segment is synced and
//! indexed by the sealer thread ([`crate::seal`]), after which it counts as
//! sealed. The committer syncs the directory before it acknowledges a new
//! segment's first batch. A sealed segment is whole on disk, never torn.
//!
//! Known gap: the last publish time is recovered from the newest segment that
//! holds records. If retention deleted every sealed segment while the active
//! one is still empty, a restart forgets it (reports 0), and publish times
//! then rely on the broker's clock alone.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::group_commit::{AppendAck, GroupCommitter, PartitionDurability};
use crate::index::encode_index;
use crate::record::{
    BATCH_HEADER_LEN, BatchHeader, MIN_RECORD_LEN, Record, encode_batch, encoded_batch_len,
};
use crate::recovery::{self, RecoveryReport};
use crate::seal::SealJob;
use crate::segment::{
    Budget, ReadSpan, Segment, SegmentInfo, SegmentWriter, index_path, remove_if_present, sync_dir,
};
use crate::spare::{Spare, SpareBudget, SparePool, delete};

/// Encode buffers above this are dropped after use rather than kept.
const KEPT_ENCODE_BUFFER: usize = 1024 * 1024;

/// Limits of a partition log. The defaults suit a broker; tests shrink them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The active segment is sealed before a batch would take it past this
    /// size (a single larger batch gets a segment of its own). Default 64 MiB.
    pub segment_bytes: u64,
    /// The active segment is sealed at the first append (or
    /// [`PartitionLog::seal_if_aged`]) after it has held records this long.
    /// This bounds the data a lost machine takes with it before offload.
    /// Default 10 minutes.
    pub segment_age: Duration,
    /// Log bytes between two sparse index entries. Default 4 KiB.
    pub index_interval_bytes: u32,
    /// The largest encoded batch an append accepts. Default 16 MiB.
    pub max_batch_bytes: usize,
    /// The offset a log with no segment yet starts at: 0, or where the
    /// durable history a new owner takes over ends. Ignored when the
    /// directory holds segments.
    pub first_offset: u64,
    /// Retired segment files kept for later rolls to reuse instead of
    /// deleting them and creating new ones (see [`crate::spare`]); 0 deletes
    /// them at once. Default 32.
    pub spare_segments: usize,
    /// The bytes of spare files this log may keep, shared with the other
    /// logs given a clone of it (a broker gives all of its own one).
    /// Default: a budget of this log's own with no limit.
    pub spare_budget: SpareBudget,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 * 1024 * 1024,
            segment_age: Duration::from_secs(10 * 60),
            index_interval_bytes: 4096,
            max_batch_bytes: 16 * 1024 * 1024,
            first_offset: 0,
            spare_segments: 32,
            spare_budget: SpareBudget::default(),
        }
    }
}

impl LogConfig {
    /// Checks every value is in its allowed range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key, value: &dyn std::fmt::Debug, allowed| Error::InvalidConfig {
            key,
            value: format!("{value:?}"),
            allowed,
        };
        if self.segment_bytes == 0 {
            return Err(invalid("segment_bytes", &0, "must be at least 1"));
        }
        if self.segment_age.is_zero() {
            return Err(invalid(
                "segment_age",
                &self.segment_age,
                "must be above zero",
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err(invalid("index_interval_bytes", &0, "must be at least 1"));
        }
        if self.max_batch_bytes < BATCH_HEADER_LEN + MIN_RECORD_LEN {
            let allowed = "must be at least 77 (a batch of one empty record)";
            return Err(invalid("max_batch_bytes", &self.max_batch_bytes, allowed));
        }
        if self.max_batch_bytes > u32::MAX as usize {
            let allowed = "must be at most 4294967295 (the batch length field is 32 bits)";
            return Err(invalid("max_batch_bytes", &self.max_batch_bytes, allowed));
        }
        Ok(())
    }
}

/// The segments and write position, under the log's mutex.
#[derive(Debug)]
struct Inner {
    /// Sorted by base offset, never empty; the last one is active.
    segments: Vec<Segment>,
    next_offset: u64,
    last_publish_time_ms: u64,
    encode_buffer: Vec<u8>,
}

impl Inner {
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    fn start_offset(&self) -> u64 {
        self.segments[0].summary.base_offset
    }

    /// The segment holding `offset`; the caller checked it is in range.
    fn segment_for(&self, offset: u64) -> &Segment {
        let after = self
            .segments
            .partition_point(|segment| segment.summary.base_offset <= offset);
        &self.segments[after.saturating_sub(1)]
    }

    fn check_range(&self, offset: u64) -> Result<()> {
        if (self.start_offset()..=self.next_offset).contains(&offset) {
            return Ok(());
        }
        Err(Error::OffsetOutOfRange {
            offset,
            start_offset: self.start_offset(),
            next_offset: self.next_offset,
        })
    }
}

/// The byte ranges of a read [`PartitionLog::plan_read`] picked.
#[derive(Debug)]
pub struct ReadPlan {
    from: u64,
    spans: Vec<ReadSpan>,
}

impl ReadPlan {
    /// Reads at most `max_records` and roughly `max_bytes` (at least one
    /// record, however large) from the plan's offset on. Blocks on disk
    /// reads and takes no lock.
    ///
    /// # Errors
    ///
    /// `Corrupt` when the first record to return sits in damaged bytes (a
    /// read that reaches damage after some records returns those, and the
    /// next one, starting at the damage, gets the error).
    pub fn read(&self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let mut budget = Budget {
            records: max_records,
            bytes: max_bytes.max(1),
        };
        let chunk_bytes = max_bytes.clamp(64 * 1024, 4 * 1024 * 1024);
        let (mut records, mut cursor) = (Vec::new(), self.from);

        for span in &self.spans {
            if budget.is_spent() {
                break;
            }
            // Hand out what came before damaged bytes; the next read, which
            // starts at them, gets the error.
            if let Err(error) = span.read(cursor, chunk_bytes, &mut budget, &mut records) {
                if records.is_empty() {
                    return Err(error);
                }
                break;
            }
            match span.next_offset {
                Some(next) if next > cursor => cursor = next,
                _ => break,
            }
        }
        Ok(records)
    }
}

/// The write-ahead log of one partition: segment files in one directory.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    committer: Arc<GroupCommitter>,
    durability: Arc<PartitionDurability>,
    inner: Mutex<Inner>,
    /// Taken under `inner` by rolls, alone by retention.
    spares: Mutex<SparePool>,
}

impl PartitionLog {
    /// Opens (creating) the partition directory, recovers it, and returns
    /// what recovery did.
    ///
    /// A torn or corrupt tail of the last segment is truncated; damage inside
    /// a sealed segment does not fail the open, only reads of that range (see
    /// [`RecoveryReport::damaged_segments`]).
    pub fn open(
        dir: &Path,
        config: LogConfig,
        committer: Arc<GroupCommitter>,
    ) -> Result<(PartitionLog, RecoveryReport)> {
        config.validate()?;
        // A log of this directory opened before may still have a seal
        // queued; recovery must not race it for the index file.
        committer.wait_for_seals();
        let recovered = recovery::recover(dir, &config)?;
        let report = recovered.report;

        let inner = Inner {
            segments: recovered.segments,
            next_offset: report.next_offset,
            last_publish_time_ms: report.last_publish_time_ms,
            encode_buffer: Vec::new(),
        };
        let durability = PartitionDurability::new(dir.to_path_buf(), report.next_offset);
        let spares = SparePool::new(dir, config.spare_segments, config.spare_budget.clone());
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            committer,
            durability: Arc::new(durability),
            inner: Mutex::new(inner),
            spares: Mutex::new(spares),
        };
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The offset the next appended record must have.
    pub fn next_offset(&self) -> u64 {
        self.lock().next_offset
    }

    /// The publish time of the last record appended, 0 for an empty log; the
    /// broker stamps no time below it, across restarts too.
    pub fn last_publish_time_ms(&self) -> u64 {
        self.lock().last_publish_time_ms
    }

    /// The first offset still on disk (equal to `next_offset` when empty).
    pub fn start_offset(&self) -> u64 {
        self.lock().start_offset()
    }

    /// Offsets below this are acknowledged: fsynced, or written in
    /// [`FsyncMode::Never`](crate::FsyncMode::Never). Reads may return records
    /// at or above it, which a crash of the machine can still lose; a
    /// dispatcher that must not deliver those caps its reads here.
    pub fn durable_offset(&self) -> u64 {
        self.durability
            .durable_next
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Appends records whose offsets are `next_offset..` in order, as one
    /// batch. The bytes are written before this returns; the returned future
    /// resolves once they are durable per the committer's mode.
    ///
    /// The caller stamps offsets and times under its own lock and calls this
    /// under the same lock, so batches land in offset order.
    ///
    /// # Errors
    ///
    /// `OffsetMismatch` and `PublishTimeRegression` for records that do not
    /// continue the log, `RecordTooLarge` above `max_batch_bytes`,
    /// `EmptyBatch`, `DiskFull` when the file system is full (nothing is
    /// written; retry once space is freed), `Poisoned` after a failed write or
    /// fsync, `Closed` once the committer has shut down.
    pub fn append(&self, records: &[Record]) -> Result<AppendAck> {
        let Some(first) = records.first() else {
            return Err(Error::EmptyBatch);
        };
        let mut inner = self.lock();
        self.check_writable()?;

        // The batch must continue the log exactly.
        if first.offset != inner.next_offset {
            return Err(Error::OffsetMismatch {
                expected: inner.next_offset,
                got: first.offset,
            });
        }
        if first.publish_time_ms < inner.last_publish_time_ms {
            return Err(Error::PublishTimeRegression {
                last_ms: inner.last_publish_time_ms,
                got_ms: first.publish_time_ms,
            });
        }
        let bytes = encoded_batch_len(records);
        if bytes > self.config.max_batch_bytes as u64 {
            return Err(Error::RecordTooLarge {
                bytes,
                max: self.config.max_batch_bytes as u64,
            });
        }

        // Encode into the reused buffer, then write.
        let mut buffer = std::mem::take(&mut inner.encode_buffer);
        let written = encode_batch(records, &mut buffer)
            .and_then(|header| Ok((self.write_batch(&mut inner, &header, &buffer)?, header)));
        if buffer.capacity() <= KEPT_ENCODE_BUFFER {
            inner.encode_buffer = buffer;
        }
        if let Err(error) = &written
            && error.is_disk_full()
        {
            // The retry the caller is told to make may then find room.
            self.lock_spares().release();
        }
        let (writer, header) = written?;

        // Registered under the lock, so acks complete in offset order.
        self.committer.register(
            &writer,
            &self.durability,
            header.next_offset(),
            u64::from(header.length),
        )
    }

    fn check_writable(&self) -> Result<()> {
        if self.durability.is_poisoned() {
            return Err(Error::Poisoned {
                path: self.dir.clone(),
            });
        }
        if self.committer.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Rolls if due, writes the batch at the end of the active segment, and
    /// accounts for it.
    fn write_batch(
        &self,
        inner: &mut Inner,
        header: &BatchHeader,
        bytes: &[u8],
    ) -> Result<Arc<SegmentWriter>> {
        if self.roll_due(inner.active(), u64::from(header.length)) {
            let (_, seal) = self.roll(inner)?;
            self.committer.seal(seal);
        }

        let active = inner.active_mut();
        let writer = Arc::clone(active.writer.as_ref().expect("the last segment is active"));
        let position = active.summary.bytes;
        if let Err(error) = writer.file.write_all_at(bytes, position) {
            self.roll_back_write(&writer, position);
            return Err(Error::io(&writer.path, error));
        }

        active
            .index
            .observe(header, position, self.config.index_interval_bytes.into());
        active.summary.extend(header);
        active.first_write_at.get_or_insert_with(Instant::now);
        inner.next_offset = header.next_offset();
        inner.last_publish_time_ms = header.last_publish_time_ms;
        Ok(writer)
    }

    /// Cuts a partly written batch off, so the next one does not land after
    /// garbage. If even that fails, the file's end is unknown: poison.
    fn roll_back_write(&self, writer: &SegmentWriter, position: u64) {
        if let Err(error) = writer.file.set_len(position) {
            tracing::error!(segment = %writer.path.display(), position, error = %error, "cannot cut a failed write off the segment; partition refuses appends until reopened");
            self.durability.poison();
        }
    }

    fn roll_due(&self, active: &Segment, incoming: u64) -> bool {
        let bytes = active.summary.bytes;
        let aged = active
            .first_write_at
            .is_some_and(|at| at.elapsed() >= self.config.segment_age);
        bytes > 0 && (bytes + incoming > self.config.segment_bytes || aged)
    }

    /// Ends the active segment and starts a new one at `next_offset`. Only
    /// the new file is created here, under the lock; its directory entry is
    /// synced by the committer before its first batch is acknowledged, and
    /// the ended segment's sync and index are left to the returned job. A
    /// failure leaves the old segment active (the next append retries).
    fn roll(&self, inner: &mut Inner) -> Result<(SegmentInfo, SealJob)> {
        let next_offset = inner.next_offset;
        let spare = self.lock_spares().take(next_offset);
        let fresh = match spare {
            Some(spare) => Segment::reuse(&self.dir, next_offset, &spare),
            None => Segment::create(&self.dir, next_offset),
        }?;

        let ended = inner.active_mut();
        let writer = ended.writer.take().expect("the last segment is active");
        let index = encode_index(&ended.summary, &ended.index);
        ended.index_file_bytes = index.len() as u64;
        let info = ended.info();
        let seal = SealJob {
            writer,
            reader: Arc::clone(&ended.reader),
            partition: Arc::clone(&self.durability),
            index_path: index_path(&self.dir, info.base_offset),
            index,
            sealed: Arc::clone(&ended.sealed),
            base_offset: info.base_offset,
            next_offset: info.next_offset,
            data_bytes: info.bytes,
        };
        inner.segments.push(fresh);
        Ok((info, seal))
    }

    /// Ends the active segment and waits until it and every segment earlier
    /// rolls ended are sealed. The seal goes through the sealer thread like
    /// any other, so two seals never write one index file at once.
    fn roll_and_seal(&self, mut inner: MutexGuard<'_, Inner>) -> Result<SegmentInfo> {
        let (mut info, seal) = self.roll(&mut inner)?;
        drop(inner);
        self.committer.seal(seal);
        self.wait_for_seals();
        if self.durability.is_poisoned() {
            return Err(Error::Poisoned {
                path: self.dir.clone(),
            });
        }
        info.sealed = true;
        Ok(info)
    }

    /// Records from `from` on: at most `max_records`, and roughly `max_bytes`
    /// (at least one record, however large). Empty at the end of the log.
    /// The same as [`PartitionLog::plan_read`] then [`ReadPlan::read`].
    ///
    /// Blocks on disk reads: call it from `spawn_blocking`. The lock is held
    /// only to pick the byte ranges, never during I/O. Payloads share the
    /// buffer they were read into (up to `max_bytes`, at least 64 KiB).
    ///
    /// # Errors
    ///
    /// `OffsetOutOfRange` when `from` is below the start offset or above the
    /// next offset; `Corrupt` when the first record to return sits in damaged
    /// bytes (a read that reaches damage after some records returns those,
    /// and the next one, starting at the damage, gets the error).
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        self.plan_read(from, max_bytes)?
            .read(max_records, max_bytes)
    }

    /// The byte ranges a read of about `max_bytes` from `from` covers,
    /// picked under the partition lock and without I/O, so that the read
    /// itself ([`ReadPlan::read`]) can run on a thread that must not hold
    /// the lock: one of low priority, which could be preempted while
    /// appends wait for it. The plan holds the segment files open, so
    /// retention deleting them meanwhile does not fail the read.
    ///
    /// # Errors
    ///
    /// `OffsetOutOfRange` when `from` is below the start offset or above the
    /// next offset.
    pub fn plan_read(&self, from: u64, max_bytes: usize) -> Result<ReadPlan> {
        let inner = self.lock();
        inner.check_range(from)?;
        let (mut spans, mut cursor, mut bytes) = (Vec::new(), from, 0);
        while cursor < inner.next_offset && bytes < max_bytes.max(1) {
            let span = inner.segment_for(cursor).span_from(cursor);
            let next = span.next_offset.filter(|next| *next > cursor);
            bytes += (span.end - span.start) as usize;
            spans.push(span);
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(ReadPlan { from, spans })
    }

    /// The first offset whose publish time is at or above `time_ms`, or
    /// `next_offset` when every record is older. Exact, since publish times
    /// never decrease: it scans at most one index interval and one batch.
    pub fn offset_for_time(&self, time_ms: u64) -> Result<u64> {
        let span = {
            let inner = self.lock();
            let segments = &inner.segments;

            // The first segment holding a record at or after the time. Empty
            // segments break the ordering the binary search relies on, so
            // walk forward from where it lands.
            let landed = segments.partition_point(|segment| {
                let last = segment.summary.last_publish_time_ms;
                last.is_some_and(|last| last < time_ms)
            });
            let found = segments[landed..].iter().find(|segment| {
                let last = segment.summary.last_publish_time_ms;
                last.is_some_and(|last| last >= time_ms)
            });
            match found {
                Some(segment) => segment.span_for_time(time_ms),
                None => return Ok(inner.next_offset),
            }
        };

        let chunk_bytes = (self.config.index_interval_bytes as usize * 2).max(64 * 1024);
        let found = span.find_time(time_ms, chunk_bytes)?;
        Ok(found.or(span.next_offset).unwrap_or(span.first_offset))
    }

    /// Every segment, oldest first; the last one is active.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.lock().segments.iter().map(Segment::info).collect()
    }

    /// Bytes on disk: segment files plus sealed indexes (spare files not
    /// included: see [`PartitionLog::spare_bytes`]). A reused file counts
    /// its whole length until its seal cuts the leftovers off.
    pub fn disk_bytes(&self) -> u64 {
        let inner = self.lock();
        let segments = inner.segments.iter();
        segments
            .map(|segment| {
                let leftovers = if segment.is_sealed() {
                    0
                } else {
                    segment.reused_file_bytes
                };
                segment.summary.bytes.max(leftovers) + segment.index_file_bytes
            })
            .sum()
    }

    /// Blocks until the segments this log (and every other one sharing its
    /// committer) rolled so far are sealed, or their partition poisoned.
    pub fn wait_for_seals(&self) {
        self.committer.wait_for_seals();
    }

    /// Seals the active segment now (for offload), unless it is empty.
    /// Blocks on disk: when this returns, every segment but the new active
    /// one is sealed, those earlier rolls ended included.
    pub fn seal_active(&self) -> Result<Option<SegmentInfo>> {
        let inner = self.lock();
        self.check_writable()?;
        if inner.active().summary.bytes == 0 {
            drop(inner);
            self.wait_for_seals();
            return Ok(None);
        }
        self.roll_and_seal(inner).map(Some)
    }

    /// Seals the active segment if it has held records for `segment_age`.
    /// The broker calls it on a timer, so an idle partition still seals.
    /// Blocks on disk, like [`PartitionLog::seal_active`].
    pub fn seal_if_aged(&self) -> Result<Option<SegmentInfo>> {
        let inner = self.lock();
        self.check_writable()?;
        if !self.roll_due(inner.active(), 0) {
            return Ok(None);
        }
        self.roll_and_seal(inner).map(Some)
    }

    /// Deletes whole sealed segments whose last offset is below `offset`
    /// (retention decides the offset), oldest first, and returns them. The
    /// active segment is never deleted. While the spare pool has room, a
    /// segment file is kept as a spare for a later roll instead (see
    /// [`crate::spare`]); its index is deleted either way.
    ///
    /// Segments leave the log before their files are removed; readers that
    /// already picked one finish on their open handle (such a file is
    /// deleted, never reused). If a removal fails, the error is returned and
    /// the file comes back at the next open.
    pub fn delete_before(&self, offset: u64) -> Result<Vec<SegmentInfo>> {
        let removed: Vec<Segment> = {
            let mut inner = self.lock();
            let count = inner
                .segments
                .iter()
                .take_while(|s| s.is_sealed() && s.summary.next_offset <= offset)
                .count();
            inner.segments.drain(..count).collect()
        };
        if removed.is_empty() {
            return Ok(Vec::new());
        }

        let mut first_error = None;
        let mut spares = Vec::new();
        let mut room = self.lock_spares().room();
        for segment in &removed {
            // The segment file goes first: an index left without it is
            // removed when the log opens, while a segment left without its
            // index would be scanned, and read as an unfinished seal if
            // damaged.
            if let Some(spare) = self.retire(segment, &mut room) {
                spares.push(spare);
            } else if let Err(error) = remove_if_present(segment.path()) {
                tracing::warn!(segment = %segment.path().display(), error = %error, "cannot delete segment file");
                first_error.get_or_insert(error);
            }
            let index = index_path(&self.dir, segment.summary.base_offset);
            if let Err(error) = remove_if_present(&index) {
                tracing::warn!(segment = %index.display(), error = %error, "cannot delete segment index");
                first_error.get_or_insert(error);
            }
        }
        // A spare is reused only once its new name is durable: a power cut
        // could otherwise bring the old segment name back over a file a
        // roll already wrote new batches into.
        let kept = match sync_dir(&self.dir) {
            Ok(()) => spares.len(),
            Err(error) => {
                self.lock_spares().discard(std::mem::take(&mut spares));
                first_error.get_or_insert(error);
                0
            }
        };
        self.lock_spares().extend(spares);
        tracing::info!(dir = %self.dir.display(), segments = removed.len(), kept_as_spares = kept, offset, "deleted segments");

        match first_error {
            Some(error) => Err(error),
            None => Ok(removed.iter().map(Segment::info).collect()),
        }
    }

    /// Renames a retired segment's file to a spare while the pool has
    /// `room`; `None` when it must be deleted instead.
    fn retire(&self, segment: &Segment, room: &mut usize) -> Option<Spare> {
        // No read holds the file once only the retired list does, and none
        // can start: the segment has left the log.
        let unread = Arc::strong_count(&segment.reader) == 1;
        if *room == 0 || !unread || segment.damage.is_some() {
            return None;
        }
        let (bound, bytes) = (segment.summary.next_offset, segment.summary.bytes);
        if !self.config.spare_budget.reserve(bytes) {
            return None;
        }
        match SparePool::retire(segment.path(), &self.dir, bound, bytes) {
            Ok(spare) => {
                *room -= 1;
                Some(spare)
            }
            Err(error) => {
                self.config.spare_budget.release(bytes);
                tracing::warn!(segment = %segment.path().display(), %error, "cannot keep a retired segment as a spare; deleting it");
                None
            }
        }
    }

    /// Deletes one spare segment file if no roll took one for `idle`, so a
    /// partition that slowed down gives its spares' disk space back a file
    /// at a time. The broker calls it on its retention timer.
    pub fn trim_spares(&self, idle: Duration) {
        // Deleted outside the lock a roll takes.
        let Some(spare) = self.lock_spares().trim(idle) else {
            return;
        };
        delete(&spare);
        tracing::debug!(spare = %spare.display(), "deleted an idle spare segment");
    }

    /// Spare segment files kept for reuse.
    pub fn spare_segments(&self) -> usize {
        self.lock_spares().len()
    }

    /// Bytes the spare segment files take on disk, beside
    /// [`PartitionLog::disk_bytes`].
    pub fn spare_bytes(&self) -> u64 {
        self.lock_spares().bytes()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change to `Inner` is made after its I/O succeeded, so a lock
        // poisoned by a panic still guards consistent state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_spares(&self) -> MutexGuard<'_, SparePool> {
        self.spares.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
