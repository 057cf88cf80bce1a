//! Segment files of a partition: their names, handles, and reading batches.
//!
//! A partition directory holds `<base offset, 20 digits>.wal` files, each
//! with a `.idx` sparse index once sealed, and `<bound>.spare` files,
//! retired segments kept for reuse (see [`crate::spare`]). The partition
//! log owns the list of [`Segment`]s under its lock; the last one is active
//! and has a writer, the others are read-only: sealing, between the roll
//! that ended them and the moment their data is durable and their index
//! written, then sealed.
//! Readers copy a [`ReadSpan`] (an `Arc` to a read-only handle plus a byte
//! range) out of the lock and read it with `pread`, so reads never hold the
//! lock during I/O and appends never wait for them. A deleted segment's
//! handle stays readable until dropped.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::index::{SegmentSummary, SparseIndex};
use crate::record::{
    BATCH_HEADER_LEN, BatchHeader, FormatError, Record, decode_verified, verify_batch,
};
use crate::spare::Spare;

/// What a segment holds and where, as the broker and retention see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    /// One past the last record; equal to `base_offset` when empty.
    pub next_offset: u64,
    pub first_publish_time_ms: Option<u64>,
    pub last_publish_time_ms: Option<u64>,
    /// Bytes of the `.wal` file.
    pub bytes: u64,
    /// Rolled, durable and indexed: offload and retention may take it. A
    /// segment just rolled is not sealed yet for a moment.
    pub sealed: bool,
    pub path: PathBuf,
    /// Set when recovery found this sealed segment damaged.
    pub damage: Option<SegmentDamage>,
}

impl SegmentInfo {
    /// The offset of the last record, `None` for an empty segment.
    pub fn last_offset(&self) -> Option<u64> {
        (self.next_offset > self.base_offset).then(|| self.next_offset - 1)
    }
}

/// Where a sealed segment stops being readable, as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    pub segment: PathBuf,
    pub position: u64,
    pub reason: FormatError,
}

/// The path of the segment file starting at `base_offset`.
pub(crate) fn wal_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.wal"))
}

/// The path of the index of the segment starting at `base_offset`.
pub(crate) fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.idx"))
}

/// The path of a spare file that held offsets below `bound`.
pub(crate) fn spare_path(dir: &Path, bound: u64) -> PathBuf {
    dir.join(format!("{bound:020}.spare"))
}

/// The kinds of file a partition directory may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Wal(u64),
    Index(u64),
    /// A retired segment kept for reuse, with its bound.
    Spare(u64),
    /// A half-written index from a crash during sealing.
    Temporary,
}

/// Classifies a file name of a partition directory; `None` for foreign files.
pub(crate) fn classify(name: &str) -> Option<FileKind> {
    if name.ends_with(".idx.tmp") {
        return Some(FileKind::Temporary);
    }
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base_offset = stem.parse().ok()?;
    match extension {
        "wal" => Some(FileKind::Wal(base_offset)),
        "idx" => Some(FileKind::Index(base_offset)),
        "spare" => Some(FileKind::Spare(base_offset)),
        _ => None,
    }
}

/// Deletes the file at `path`; one that is already gone is no error.
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, error)),
        _ => Ok(()),
    }
}

/// Fsyncs a directory, making created, renamed and deleted entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// The write handle of the active segment, shared with the group committer.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    /// Whether the file's directory entry is durable. A segment a roll
    /// created is not, until the committer syncs its directory, which it
    /// does before it acknowledges the segment's first batch.
    pub(crate) entry_durable: AtomicBool,
}

impl SegmentWriter {
    pub(crate) fn new(file: File, path: PathBuf, entry_durable: bool) -> Arc<SegmentWriter> {
        Arc::new(SegmentWriter {
            file,
            path,
            entry_durable: AtomicBool::new(entry_durable),
        })
    }

    /// The directory the segment's entry lives in.
    pub(crate) fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// A read-only handle, shared with readers running outside the lock.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
}

impl SegmentReader {
    pub(crate) fn open(path: &Path) -> Result<SegmentReader> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(SegmentReader {
            file,
            path: path.to_path_buf(),
        })
    }

    fn corrupt(&self, position: u64, reason: FormatError) -> Error {
        Error::Corrupt {
            segment: self.path.clone(),
            position,
            reason,
        }
    }
}

/// One segment of the partition, as the log keeps it under its lock.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) summary: SegmentSummary,
    pub(crate) index: SparseIndex,
    pub(crate) reader: Arc<SegmentReader>,
    /// `Some` for the active segment only.
    pub(crate) writer: Option<Arc<SegmentWriter>>,
    pub(crate) damage: Option<SegmentDamage>,
    /// When the first batch went in, for the age limit.
    pub(crate) first_write_at: Option<Instant>,
    /// Bytes of the `.idx` file, 0 while the segment is active.
    pub(crate) index_file_bytes: u64,
    /// The length of a reused spare file when the roll took it: what the
    /// file takes on disk, leftovers included, until its seal cuts it to
    /// its data. 0 for a file created empty.
    pub(crate) reused_file_bytes: u64,
    /// Set once the segment's data is durable and its index written (at
    /// once for segments recovery found sealed). Until then the segment is
    /// sealing: readable, but neither offloaded nor deleted.
    pub(crate) sealed: Arc<AtomicBool>,
}

impl Segment {
    /// Creates a new, empty, active segment file at `base_offset`. Its
    /// directory entry is not synced: the committer does that before the
    /// first batch in it is acknowledged.
    pub(crate) fn create(dir: &Path, base_offset: u64) -> Result<Segment> {
        let path = wal_path(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Segment::active(file, path, base_offset)
    }

    /// Like [`Segment::create`], but reuses the spare file at `spare`: it is
    /// renamed to the segment's name and written over from its start, on
    /// blocks the file system already allocated. What lies past the data
    /// written is a leftover of the file's earlier life, below
    /// `base_offset` (see [`crate::spare`]).
    pub(crate) fn reuse(dir: &Path, base_offset: u64, spare: &Spare) -> Result<Segment> {
        let path = wal_path(dir, base_offset);
        fs::rename(&spare.path, &path).map_err(|e| Error::io(&spare.path, e))?;
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))
            .and_then(|file| Segment::active(file, path.clone(), base_offset));
        match opened {
            Ok(mut segment) => {
                segment.reused_file_bytes = spare.bytes;
                Ok(segment)
            }
            Err(error) => {
                // The next roll creates a file of this name.
                drop(fs::remove_file(&path));
                Err(error)
            }
        }
    }

    fn active(file: File, path: PathBuf, base_offset: u64) -> Result<Segment> {
        Ok(Segment {
            summary: SegmentSummary::empty(base_offset),
            index: SparseIndex::default(),
            reader: Arc::new(SegmentReader::open(&path)?),
            writer: Some(SegmentWriter::new(file, path, false)),
            damage: None,
            first_write_at: None,
            index_file_bytes: 0,
            reused_file_bytes: 0,
            sealed: Arc::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.reader.path
    }

    /// Rolled, durable and indexed.
    pub(crate) fn is_sealed(&self) -> bool {
        self.writer.is_none() && self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn info(&self) -> SegmentInfo {
        SegmentInfo {
            base_offset: self.summary.base_offset,
            next_offset: self.summary.next_offset,
            first_publish_time_ms: self.summary.first_publish_time_ms,
            last_publish_time_ms: self.summary.last_publish_time_ms,
            bytes: self.summary.bytes,
            sealed: self.is_sealed(),
            path: self.path().to_path_buf(),
            damage: self.damage.clone(),
        }
    }

    /// The bytes to read for records from `offset` on: from the index entry
    /// at or before it to the current end.
    pub(crate) fn span_from(&self, offset: u64) -> ReadSpan {
        let entry = self.index.at_or_before(offset);
        self.span_at(entry.map(|e| (e.position, e.offset)))
    }

    /// The bytes to read for the first record at or after `time_ms`.
    pub(crate) fn span_for_time(&self, time_ms: u64) -> ReadSpan {
        let entry = self.index.last_before_time(time_ms);
        self.span_at(entry.map(|e| (e.position, e.offset)))
    }

    fn span_at(&self, start: Option<(u64, u64)>) -> ReadSpan {
        let (start, first_offset) = start.unwrap_or((0, self.summary.base_offset));
        ReadSpan {
            reader: Arc::clone(&self.reader),
            start,
            end: self.summary.bytes,
            first_offset,
            next_offset: Some(self.summary.next_offset),
        }
    }
}

/// A byte range of one segment, read outside the partition lock.
#[derive(Debug, Clone)]
pub(crate) struct ReadSpan {
    pub(crate) reader: Arc<SegmentReader>,
    /// File position of a batch boundary.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Offset of the batch at `start`.
    pub(crate) first_offset: u64,
    /// The offset the span must end at, when known (not while recovering).
    pub(crate) next_offset: Option<u64>,
}

/// Limits of one read.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(crate) records: usize,
    pub(crate) bytes: usize,
}

impl Budget {
    pub(crate) fn is_spent(&self) -> bool {
        self.records == 0 || self.bytes == 0
    }

    fn spend(&mut self, record: &Record) {
        self.records = self.records.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(record.encoded_len());
    }
}

impl ReadSpan {
    /// Appends records from offset `from` on to `out` until the budget is
    /// spent or the span ends. Always returns at least one record when the
    /// span holds one, however large it is.
    pub(crate) fn read(
        &self,
        from: u64,
        chunk_bytes: usize,
        budget: &mut Budget,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let mut cursor = BatchCursor::new(self, chunk_bytes.min(FIRST_READ_BYTES));
        let mut seen = SizeEstimate::default();
        while !budget.is_spent() {
            let Some((header, batch)) = cursor.next_batch()? else {
                break;
            };
            seen.add(batch.len(), header.record_count);
            if header.next_offset() > from {
                let records = decode_verified(&header, &batch)
                    .map_err(|reason| self.reader.corrupt(cursor.batch_position, reason))?;
                for record in records.into_iter().filter(|record| record.offset >= from) {
                    budget.spend(&record);
                    out.push(record);
                    if budget.is_spent() {
                        break;
                    }
                }
            }

            // Every file read is copied and its buffer zeroed first, so a
            // read of a few hundred records must not fetch megabytes.
            cursor.chunk_bytes = seen
                .bytes_for(budget)
                .max(FIRST_READ_BYTES)
                .min(chunk_bytes);
        }
        Ok(())
    }

    /// The first offset with a publish time at or above `time_ms`, if the
    /// span holds one.
    pub(crate) fn find_time(&self, time_ms: u64, chunk_bytes: usize) -> Result<Option<u64>> {
        let mut cursor = BatchCursor::new(self, chunk_bytes);
        while let Some((header, batch)) = cursor.next_batch()? {
            if header.last_publish_time_ms < time_ms {
                continue;
            }
            let records = decode_verified(&header, &batch)
                .map_err(|reason| self.reader.corrupt(cursor.batch_position, reason))?;
            let found = records
                .iter()
                .find(|record| record.publish_time_ms >= time_ms);
            return Ok(found.map(|record| record.offset));
        }
        Ok(None)
    }
}

/// The first file read of a [`ReadSpan::read`], before the size of the
/// span's records is known.
const FIRST_READ_BYTES: usize = 64 * 1024;

/// The batch bytes per record a read has met so far.
#[derive(Debug, Default)]
struct SizeEstimate {
    bytes: usize,
    records: usize,
}

impl SizeEstimate {
    fn add(&mut self, bytes: usize, records: u32) {
        self.bytes += bytes;
        self.records += records as usize;
    }

    /// About the file bytes that hold what `budget` still allows.
    fn bytes_for(&self, budget: &Budget) -> usize {
        let per_record = self.bytes.div_ceil(self.records.max(1));
        per_record
            .saturating_mul(budget.records)
            .min(budget.bytes.saturating_add(per_record))
    }
}

/// Walks the checksummed batches of a span, reading the file in chunks.
pub(crate) struct BatchCursor<'a> {
    span: &'a ReadSpan,
    chunk_bytes: usize,
    chunk: Bytes,
    /// File position of `chunk[0]`.
    chunk_start: u64,
    /// File position of the next batch.
    position: u64,
    /// File position of the batch returned last.
    pub(crate) batch_position: u64,
    expected_offset: u64,
}

impl<'a> BatchCursor<'a> {
    pub(crate) fn new(span: &'a ReadSpan, chunk_bytes: usize) -> BatchCursor<'a> {
        BatchCursor {
            span,
            chunk_bytes: chunk_bytes.max(BATCH_HEADER_LEN),
            chunk: Bytes::new(),
            chunk_start: span.start,
            position: span.start,
            batch_position: span.start,
            expected_offset: span.first_offset,
        }
    }

    /// File position after the last whole batch returned.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// The next whole, checksummed batch, `None` at the end of the span.
    ///
    /// A batch that is cut, fails its checksum, or does not continue the
    /// offsets before it is an [`Error::Corrupt`] naming its position.
    pub(crate) fn next_batch(&mut self) -> Result<Option<(BatchHeader, Bytes)>> {
        let span = self.span;
        let position = self.position;
        let reader = &span.reader;
        if position >= span.end {
            return match span.next_offset {
                Some(next) if next != self.expected_offset => Err(reader.corrupt(
                    position,
                    FormatError::OffsetGap {
                        expected: next,
                        found: self.expected_offset,
                    },
                )),
                _ => Ok(None),
            };
        }

        // The header first, then the whole batch it announces.
        let available = span.end - position;
        if available < BATCH_HEADER_LEN as u64 {
            return Err(reader.corrupt(position, truncated(BATCH_HEADER_LEN as u64, available)));
        }
        self.buffer(BATCH_HEADER_LEN)?;
        let header = BatchHeader::parse(self.buffered())
            .map_err(|reason| reader.corrupt(position, reason))?;
        if u64::from(header.length) > available {
            return Err(reader.corrupt(position, truncated(header.length.into(), available)));
        }
        self.buffer(header.len())?;

        let at = (position - self.chunk_start) as usize;
        let batch = self.chunk.slice(at..at + header.len());
        let header = verify_batch(&batch).map_err(|reason| reader.corrupt(position, reason))?;
        if header.base_offset != self.expected_offset {
            let gap = FormatError::OffsetGap {
                expected: self.expected_offset,
                found: header.base_offset,
            };
            return Err(reader.corrupt(position, gap));
        }

        self.batch_position = position;
        self.position = position + u64::from(header.length);
        self.expected_offset = header.next_offset();
        Ok(Some((header, batch)))
    }

    /// The bytes buffered from `position` on.
    fn buffered(&self) -> &[u8] {
        let at = (self.position - self.chunk_start) as usize;
        self.chunk.get(at..).unwrap_or_default()
    }

    /// Makes at least `len` bytes from `position` available in the chunk,
    /// reading a new chunk when the current one runs out.
    fn buffer(&mut self, len: usize) -> Result<()> {
        if self.buffered().len() >= len {
            return Ok(());
        }
        let remaining = self.span.end - self.position;
        let want = (len.max(self.chunk_bytes) as u64).min(remaining) as usize;

        let mut chunk = vec![0; want];
        let reader = &self.span.reader;
        reader
            .file
            .read_exact_at(&mut chunk, self.position)
            .map_err(|e| Error::io(&reader.path, e))?;
        self.chunk = Bytes::from(chunk);
        self.chunk_start = self.position;
        Ok(())
    }
}

fn truncated(needed: u64, available: u64) -> FormatError {
    FormatError::Truncated { needed, available }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_zero_padded_base_offsets() {
        let dir = Path::new("/p");

        assert_eq!(wal_path(dir, 0), Path::new("/p/00000000000000000000.wal"));
        assert_eq!(
            index_path(dir, 42),
            Path::new("/p/00000000000000000042.idx")
        );
        assert_eq!(
            wal_path(dir, u64::MAX).file_name().and_then(|n| n.to_str()),
            Some("18446744073709551615.wal")
        );
    }

    #[test]
    fn only_our_file_names_are_classified() {
        assert_eq!(
            classify("00000000000000000042.wal"),
            Some(FileKind::Wal(42))
        );
        assert_eq!(
            classify("00000000000000000042.idx"),
            Some(FileKind::Index(42))
        );
        assert_eq!(
            classify("00000000000000000042.idx.tmp"),
            Some(FileKind::Temporary)
        );
        assert_eq!(classify("42.wal"), None);
        assert_eq!(classify("0000000000000000004x.wal"), None);
        assert_eq!(classify("00000000000000000042.log"), None);
        assert_eq!(classify("99999999999999999999.wal"), None, "above u64::MAX");
        assert_eq!(classify("notes.txt"), None);
    }

    #[test]
    fn segment_info_has_no_last_offset_when_empty() {
        let mut info = SegmentInfo {
            base_offset: 10,
            next_offset: 10,
            first_publish_time_ms: None,
            last_publish_time_ms: None,
            bytes: 0,
            sealed: false,
            path: PathBuf::from("/p/x.wal"),
            damage: None,
        };
        assert_eq!(info.last_offset(), None);

        info.next_offset = 15;
        assert_eq!(info.last_offset(), Some(14));
    }
}
