//! Recovery of a partition directory when its log opens.
//!
//! Runs once, before the log exists, so nothing else touches the directory.
//! Sealed segments are trusted through their index files (rebuilt by a scan
//! when missing or damaged); the last segment is always scanned batch by
//! batch, and a torn or corrupt tail (cut short, bad checksum, bad magic) is
//! truncated at the end of the last whole batch and synced. Offsets then
//! continue where the whole batches stop.
//!
//! A roll does not wait for the disk: it creates the next segment file and
//! moves on, and the ended segment's data is synced and its index written
//! afterwards (see [`crate::log`]). So a segment followed by others but
//! without an index may be one whose seal a crash interrupted. If its scan
//! ends torn, or short of where the next segment starts, it is treated as
//! the last segment: its tail is cut, and the segments after it are removed.
//! That loses nothing acknowledged: a batch in a later segment is
//! acknowledged only after a flush that also covered every earlier
//! segment's data, which then would be whole.
//!
//! A segment file reused from a spare (see [`crate::spare`]) may hold
//! batches of its earlier life after its own. Those all have offsets below
//! the segment's base offset, which no batch of its own can have, so the
//! first one marks the end of the segment's data like the end of the file
//! would; it is not damage. The file is cut there, whether it is the last
//! segment or a sealed one rebuilt by a scan. Spare files themselves are
//! deleted.
//!
//! Damage inside a sealed segment is not truncated: those bytes were sealed,
//! so they held acknowledged records, and cutting them would hide the loss.
//! The open succeeds, the damage is reported, and reads that reach it fail
//! with [`Error::Corrupt`] naming the segment and position. The same holds
//! for a hole between two segments. A checksummed batch that does not
//! continue the offsets or times before it in the last segment is a writer
//! bug, not a torn write, and fails the open instead of being cut.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::index::{SegmentSummary, SparseIndex, decode_index, encode_index, write_index_file};
use crate::log::LogConfig;
use crate::record::FormatError;
use crate::segment::{
    BatchCursor, FileKind, ReadSpan, Segment, SegmentDamage, SegmentReader, SegmentWriter,
    classify, index_path, sync_dir, wal_path,
};

/// Bytes read at a time while scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// What opening a partition directory found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub dir: PathBuf,
    /// Segment files, the active one included.
    pub segments: usize,
    pub start_offset: u64,
    pub next_offset: u64,
    pub last_publish_time_ms: u64,
    /// Bytes cut off the last segment's tail, 0 when it was whole.
    pub truncated_bytes: u64,
    /// Why the tail was cut, and at which position.
    pub truncation: Option<SegmentDamage>,
    /// Sealed segments whose index was missing or damaged and rebuilt.
    pub rebuilt_indexes: usize,
    /// Sealed segments that are readable only up to a position.
    pub damaged_segments: Vec<SegmentDamage>,
    /// Leftovers removed: half-written and orphaned index files.
    pub removed_files: Vec<PathBuf>,
    /// Bytes read by scans (the last segment, and segments without an index).
    pub scanned_bytes: u64,
    pub elapsed: Duration,
}

/// The segments recovery hands to the log, and its report.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<Segment>,
    pub(crate) report: RecoveryReport,
}

/// Recovers (or creates) the partition directory `dir`.
pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered> {
    let _span = tracing::info_span!("storage.recover", dir = %dir.display()).entered();
    let started = Instant::now();
    let mut report = RecoveryReport {
        dir: dir.to_path_buf(),
        segments: 0,
        start_offset: 0,
        next_offset: 0,
        last_publish_time_ms: 0,
        truncated_bytes: 0,
        truncation: None,
        rebuilt_indexes: 0,
        damaged_segments: Vec::new(),
        removed_files: Vec::new(),
        scanned_bytes: 0,
        elapsed: Duration::ZERO,
    };
    create_dir(dir)?;
    let bases = list_segments(dir, &mut report)?;

    // Sealed segments through their indexes, then the last one by a scan.
    let mut segments = Vec::with_capacity(bases.len().max(1));
    let interval = u64::from(config.index_interval_bytes);
    let mut last = bases.last().copied();
    for (i, pair) in bases.windows(2).enumerate() {
        let (base, next_base) = (pair[0], pair[1]);
        match load_sealed(dir, base, next_base, interval, &mut report)? {
            Some(segment) => segments.push(segment),
            None => {
                remove_unfinished_successors(dir, &bases[i + 1..], &mut report)?;
                last = Some(base);
                break;
            }
        }
    }
    match last {
        Some(last) => segments.push(recover_last(dir, last, config, &mut report)?),
        None => {
            let segment = Segment::create(dir, config.first_offset)?;
            sync_dir(dir)?;
            let writer = segment.writer.as_ref().expect("a new segment is active");
            writer.entry_durable.store(true, Ordering::Release);
            segments.push(segment);
        }
    }
    check_chain(&mut segments, &mut report)?;
    // After a process crash the files may be in the page cache only: make
    // their entries (and rebuilt indexes) durable before anything builds
    // on them.
    sync_dir(dir)?;

    report.segments = segments.len();
    report.start_offset = segments[0].summary.base_offset;
    report.next_offset = segments[segments.len() - 1].summary.next_offset;
    report.last_publish_time_ms = segments
        .iter()
        .rev()
        .find_map(|segment| segment.summary.last_publish_time_ms)
        .unwrap_or(0);
    report.elapsed = started.elapsed();
    tracing::info!(
        segments = report.segments,
        start_offset = report.start_offset,
        next_offset = report.next_offset,
        truncated_bytes = report.truncated_bytes,
        rebuilt_indexes = report.rebuilt_indexes,
        damaged_segments = report.damaged_segments.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "recovered partition log"
    );
    Ok(Recovered { segments, report })
}

/// Creates `dir` if missing, syncing its parent so the new entry is durable.
fn create_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(_) => return Ok(()),
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io(dir, error));
        }
        Err(_) => {}
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// The base offsets of the segment files, sorted; removes leftover files,
/// spare segment files among them (see [`crate::spare`] for why they are
/// not kept across an open).
fn list_segments(dir: &Path, report: &mut RecoveryReport) -> Result<Vec<u64>> {
    let mut wals = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    let mut leftovers = Vec::new();

    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        match name.to_str().and_then(classify) {
            Some(FileKind::Wal(base)) => drop(wals.insert(base)),
            Some(FileKind::Index(base)) => drop(indexes.insert(base)),
            Some(FileKind::Spare(_) | FileKind::Temporary) => leftovers.push(entry.path()),
            None => {
                tracing::warn!(file = %entry.path().display(), "ignoring a file that is no segment")
            }
        }
    }

    // An index without its segment is what a crash during deletion leaves.
    leftovers.extend(indexes.difference(&wals).map(|&base| index_path(dir, base)));
    for path in leftovers {
        fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        tracing::info!(file = %path.display(), "removed leftover file");
        report.removed_files.push(path);
    }
    Ok(wals.into_iter().collect())
}

/// Loads a sealed segment through its index, or rebuilds the index by a
/// scan. `None` for a segment whose seal a crash interrupted: no index, and
/// a scan that ends torn or short of `next_base`.
fn load_sealed(
    dir: &Path,
    base: u64,
    next_base: u64,
    interval: u64,
    report: &mut RecoveryReport,
) -> Result<Option<Segment>> {
    let path = wal_path(dir, base);
    let reader = Arc::new(SegmentReader::open(&path)?);
    let file_bytes = file_len(&reader)?;
    let idx = index_path(dir, base);

    let mut missing = false;
    match fs::read(&idx) {
        Ok(bytes) => match decode_index(&bytes, base, file_bytes) {
            Ok((summary, index)) => {
                let length = bytes.len() as u64;
                return Ok(Some(sealed_segment(reader, summary, index, length)));
            }
            Err(reason) => {
                tracing::warn!(segment = %path.display(), reason = %reason, "segment index is damaged; rebuilding it")
            }
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => missing = true,
        Err(error) => {
            tracing::warn!(segment = %path.display(), error = %error, "segment index is unreadable; rebuilding it")
        }
    }

    let scan = scan(&reader, base, file_bytes, interval, report)?;
    // A segment never grows past the offset its roll ended it at, so when
    // its batches reach the next segment's base, whatever follows them is
    // a reused file's earlier life (see `crate::spare`), not its data.
    let whole = scan.summary.next_offset == next_base;
    if missing && !whole {
        // A torn write ends an unfinished seal; a whole batch that breaks
        // the offsets is no such thing, and the segments after it may hold
        // acknowledged batches.
        if let Some((position, reason)) = scan.stop.clone().filter(|(_, r)| r.is_inconsistent()) {
            return Err(Error::Corrupt {
                segment: path,
                position,
                reason,
            });
        }
        tracing::warn!(segment = %path.display(), "segment was rolled but its seal did not finish; recovering it as the last segment");
        return Ok(None);
    }
    if missing {
        tracing::info!(segment = %path.display(), "segment index is missing; rebuilt it");
    }
    let stop = scan.stop.clone().filter(|_| !whole);
    let Some((position, reason)) = stop else {
        // An index on disk means the data is whole: cut what follows it
        // and sync it first.
        if scan.end < file_bytes {
            tracing::info!(segment = %path.display(), position = scan.end, bytes_cut = file_bytes - scan.end, "cutting the bytes after a sealed segment's last batch");
            cut(&path, scan.end)?;
        }
        reader.file.sync_data().map_err(|e| Error::io(&path, e))?;
        let bytes = encode_index(&scan.summary, &scan.index);
        write_index_file(&idx, &bytes)?;
        report.rebuilt_indexes += 1;
        let length = bytes.len() as u64;
        return Ok(Some(sealed_segment(
            reader,
            scan.summary,
            scan.index,
            length,
        )));
    };

    // Keep the damaged bytes in the readable range, so a read meets the
    // real reason at the real position.
    tracing::warn!(segment = %path.display(), position, reason = %reason, "sealed segment is damaged; records from this position on are unreadable");
    let damage = SegmentDamage {
        segment: path,
        position,
        reason,
    };
    report.damaged_segments.push(damage.clone());
    let summary = SegmentSummary {
        bytes: file_bytes,
        ..scan.summary
    };
    let mut segment = sealed_segment(reader, summary, scan.index, 0);
    segment.damage = Some(damage);
    Ok(Some(segment))
}

/// Removes the segments after one whose seal did not finish: they hold only
/// batches that were never acknowledged (see the module docs).
fn remove_unfinished_successors(
    dir: &Path,
    bases: &[u64],
    report: &mut RecoveryReport,
) -> Result<()> {
    for &base in bases {
        for path in [wal_path(dir, base), index_path(dir, base)] {
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(file = %path.display(), "removed a segment written after an unfinished seal; it held no acknowledged batch");
                    report.removed_files.push(path);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(Error::io(&path, error)),
            }
        }
    }
    sync_dir(dir)
}

fn sealed_segment(
    reader: Arc<SegmentReader>,
    summary: SegmentSummary,
    index: SparseIndex,
    index_file_bytes: u64,
) -> Segment {
    Segment {
        summary,
        index,
        reader,
        writer: None,
        damage: None,
        first_write_at: None,
        index_file_bytes,
        reused_file_bytes: 0,
        sealed: Arc::new(AtomicBool::new(true)),
    }
}

/// Scans the last segment, truncates a torn or corrupt tail, and reopens it
/// for appends.
fn recover_last(
    dir: &Path,
    base: u64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Segment> {
    let path = wal_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let reader = Arc::new(SegmentReader::open(&path)?);
    let file_bytes = file_len(&reader)?;
    let interval = u64::from(config.index_interval_bytes);

    let scan = scan(&reader, base, file_bytes, interval, report)?;
    if let Some((position, reason)) = scan.stop {
        if reason.is_inconsistent() {
            return Err(Error::Corrupt {
                segment: path,
                position,
                reason,
            });
        }
        debug_assert_eq!(
            position, scan.end,
            "a scan stops after its last whole batch"
        );
        let cut = file_bytes - position;
        tracing::warn!(segment = %path.display(), position, bytes_cut = cut, reason = %reason, "truncating torn or corrupt segment tail");
        report.truncated_bytes = cut;
        report.truncation = Some(SegmentDamage {
            segment: path.clone(),
            position,
            reason,
        });
    } else if scan.end < file_bytes {
        // A reused file's earlier life; cut too, since pages a power cut
        // kept out of order may hold batches of this life after it.
        tracing::info!(segment = %path.display(), position = scan.end, bytes_cut = file_bytes - scan.end, "cutting the bytes of a reused file after the last segment's data");
    }
    // What a killed process wrote may be in the page cache only; it counts
    // as durable from here on, so sync it (with the new length, if cut).
    let synced = match scan.end < file_bytes {
        true => file.set_len(scan.end).and_then(|()| file.sync_all()),
        false => file.sync_data(),
    };
    synced.map_err(|e| Error::io(&path, e))?;

    // An index next to the active segment is stale; it is rewritten at seal.
    let stale = index_path(dir, base);
    match fs::remove_file(&stale) {
        Ok(()) => report.removed_files.push(stale),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(Error::io(&stale, error)),
    }

    let first_write_at = scan
        .summary
        .first_publish_time_ms
        .map(|first_ms| age_start(first_ms, config.segment_age));
    Ok(Segment {
        summary: scan.summary,
        index: scan.index,
        reader,
        // The file survived the crash, so its entry is durable.
        writer: Some(SegmentWriter::new(file, path, true)),
        damage: None,
        first_write_at,
        index_file_bytes: 0,
        reused_file_bytes: 0,
        sealed: Arc::new(AtomicBool::new(false)),
    })
}

/// When a recovered segment started ageing: as long ago as its first record
/// was published (capped at the age limit), so restarts do not reset it.
fn age_start(first_publish_time_ms: u64, segment_age: Duration) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let age = Duration::from_millis(now_ms.saturating_sub(first_publish_time_ms)).min(segment_age);
    let now = Instant::now();
    now.checked_sub(age).unwrap_or(now)
}

struct Scan {
    summary: SegmentSummary,
    index: SparseIndex,
    /// Where and why the scan stopped before the end of the file.
    stop: Option<(u64, FormatError)>,
    /// The end of the last whole batch: the end of the data.
    end: u64,
}

/// Reads a segment batch by batch, checking each one, and rebuilds its
/// summary and index up to the first batch that fails.
fn scan(
    reader: &Arc<SegmentReader>,
    base: u64,
    file_bytes: u64,
    interval: u64,
    report: &mut RecoveryReport,
) -> Result<Scan> {
    let span = ReadSpan {
        reader: Arc::clone(reader),
        start: 0,
        end: file_bytes,
        first_offset: base,
        next_offset: None,
    };
    let mut cursor = BatchCursor::new(&span, SCAN_CHUNK_BYTES);
    let mut summary = SegmentSummary::empty(base);
    let mut index = SparseIndex::default();

    let stop = loop {
        let position = cursor.position();
        let header = match cursor.next_batch() {
            Ok(Some((header, _))) => header,
            Ok(None) => break None,
            // A reused file's earlier life: the segment's data ends here.
            Err(Error::Corrupt {
                reason: FormatError::OffsetGap { found, .. },
                ..
            }) if found < base => break None,
            Err(Error::Corrupt {
                position, reason, ..
            }) => break Some((position, reason)),
            Err(error) => return Err(error),
        };
        if let Some(last_ms) = summary.last_publish_time_ms
            && header.first_publish_time_ms < last_ms
        {
            let got_ms = header.first_publish_time_ms;
            break Some((
                position,
                FormatError::PublishTimeRegression { last_ms, got_ms },
            ));
        }
        index.observe(&header, position, interval);
        summary.extend(&header);
    };

    report.scanned_bytes += cursor.position();
    Ok(Scan {
        summary,
        index,
        stop,
        end: cursor.position(),
    })
}

/// Checks each segment starts where the one before ends. A hole marks the
/// earlier segment damaged at its end; an overlap fails the open.
fn check_chain(segments: &mut [Segment], report: &mut RecoveryReport) -> Result<()> {
    for i in 1..segments.len() {
        let base = segments[i].summary.base_offset;
        let earlier = &mut segments[i - 1];
        let next = earlier.summary.next_offset;

        if next > base {
            return Err(Error::Corrupt {
                segment: earlier.path().to_path_buf(),
                position: earlier.summary.bytes,
                reason: FormatError::OffsetGap {
                    expected: base,
                    found: next,
                },
            });
        }
        if next == base {
            continue;
        }

        // Offsets next..base are missing. A damaged segment's tail covers
        // them already; otherwise the hole itself is the damage.
        earlier.summary.next_offset = base;
        if earlier.damage.is_none() {
            let damage = SegmentDamage {
                segment: earlier.path().to_path_buf(),
                position: earlier.summary.bytes,
                reason: FormatError::OffsetGap {
                    expected: base,
                    found: next,
                },
            };
            tracing::warn!(segment = %damage.segment.display(), missing_from = next, missing_to = base, "offsets missing between segments");
            report.damaged_segments.push(damage.clone());
            earlier.damage = Some(damage);
        }
    }
    Ok(())
}

/// Cuts the file at `path` to `len` bytes, durably.
fn cut(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn file_len(reader: &SegmentReader) -> Result<u64> {
    let metadata = reader
        .file
        .metadata()
        .map_err(|e| Error::io(&reader.path, e))?;
    Ok(metadata.len())
}
