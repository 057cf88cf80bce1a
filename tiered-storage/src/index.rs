//! The sparse index of a segment and its `.idx` file.
//!
//! Owned by the partition log, under its lock: the active segment's index
//! grows in memory as batches are appended (one entry every
//! `index_interval_bytes` of log) and is written to disk once, when the
//! segment is sealed, through a temporary file, `sync_data` and a rename.
//! An index is only an accelerator: a missing or damaged one is rebuilt by
//! scanning its segment, so it is never fsynced with the log.
//!
//! The `.idx` file, all integers little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic, the ASCII bytes `SAVI` |
//! | 4 | format version, `1` |
//! | 5..8 | reserved, `0` |
//! | 8..16 | `u64` base offset of the segment |
//! | 16..24 | `u64` next offset: one past the segment's last record |
//! | 24..32 | `u64` first publish time (ms; `0` for an empty segment) |
//! | 32..40 | `u64` last publish time (ms; `0` for an empty segment) |
//! | 40..48 | `u64` segment length in bytes the index describes |
//! | 48..52 | `u32` entry count `n` |
//! | 52.. | `n` entries of 24 bytes: `u64` offset, `u64` publish time, `u64` position |
//! | last 4 | `u32` CRC32C of every byte before it |
//!
//! An entry names a batch: its base offset, its first publish time and the
//! file position where it starts. Entries are strictly increasing.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::record::{BatchHeader, FormatError, le_u32, le_u64};

const INDEX_MAGIC: [u8; 4] = *b"SAVI";
const INDEX_VERSION: u8 = 1;
const INDEX_HEADER_LEN: usize = 52;
const ENTRY_LEN: usize = 24;

/// Where one batch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) offset: u64,
    pub(crate) publish_time_ms: u64,
    pub(crate) position: u64,
}

/// What a segment holds, kept in memory for every segment and stored in the
/// header of sealed index files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSummary {
    pub(crate) base_offset: u64,
    pub(crate) next_offset: u64,
    pub(crate) first_publish_time_ms: Option<u64>,
    pub(crate) last_publish_time_ms: Option<u64>,
    pub(crate) bytes: u64,
}

impl SegmentSummary {
    pub(crate) fn empty(base_offset: u64) -> SegmentSummary {
        SegmentSummary {
            base_offset,
            next_offset: base_offset,
            first_publish_time_ms: None,
            last_publish_time_ms: None,
            bytes: 0,
        }
    }

    /// Accounts for a batch appended at the end of the segment.
    pub(crate) fn extend(&mut self, header: &BatchHeader) {
        debug_assert_eq!(header.base_offset, self.next_offset, "batches are dense");
        self.next_offset = header.next_offset();
        self.first_publish_time_ms
            .get_or_insert(header.first_publish_time_ms);
        self.last_publish_time_ms = Some(header.last_publish_time_ms);
        self.bytes += u64::from(header.length);
    }
}

/// A sorted list of batch positions, one every `interval` bytes of log.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseIndex {
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    /// Notes a batch written at `position`, adding an entry when it is the
    /// first batch or at least `interval` bytes past the last entry.
    pub(crate) fn observe(&mut self, header: &BatchHeader, position: u64, interval: u64) {
        let due = self
            .entries
            .last()
            .is_none_or(|last| position - last.position >= interval);
        if due {
            self.entries.push(IndexEntry {
                offset: header.base_offset,
                publish_time_ms: header.first_publish_time_ms,
                position,
            });
        }
    }

    /// The last entry whose batch starts at or before `offset`.
    pub(crate) fn at_or_before(&self, offset: u64) -> Option<IndexEntry> {
        let after = self.entries.partition_point(|entry| entry.offset <= offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry whose batch starts before `time_ms`: no record earlier
    /// in the segment can have a publish time at or above it.
    pub(crate) fn last_before_time(&self, time_ms: u64) -> Option<IndexEntry> {
        let after = self
            .entries
            .partition_point(|entry| entry.publish_time_ms < time_ms);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of the `.idx` file this index turns into.
    pub(crate) fn file_len(&self) -> u64 {
        (INDEX_HEADER_LEN + self.entries.len() * ENTRY_LEN + 4) as u64
    }
}

/// Encodes a sealed segment's index file.
pub(crate) fn encode_index(summary: &SegmentSummary, index: &SparseIndex) -> Vec<u8> {
    let mut out = Vec::with_capacity(index.file_len() as usize);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&[INDEX_VERSION, 0, 0, 0]);
    out.extend_from_slice(&summary.base_offset.to_le_bytes());
    out.extend_from_slice(&summary.next_offset.to_le_bytes());
    out.extend_from_slice(&summary.first_publish_time_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&summary.last_publish_time_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&summary.bytes.to_le_bytes());
    out.extend_from_slice(&(index.entries.len() as u32).to_le_bytes());

    for entry in &index.entries {
        out.extend_from_slice(&entry.offset.to_le_bytes());
        out.extend_from_slice(&entry.publish_time_ms.to_le_bytes());
        out.extend_from_slice(&entry.position.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and checks an index file against the segment it describes.
pub(crate) fn decode_index(
    bytes: &[u8],
    base_offset: u64,
    segment_bytes: u64,
) -> Result<(SegmentSummary, SparseIndex), FormatError> {
    let bad = |what| FormatError::BadIndex { what };
    if bytes.len() < INDEX_HEADER_LEN + 4 {
        return Err(bad("shorter than its header"));
    }
    if bytes[..4] != INDEX_MAGIC || bytes[4] != INDEX_VERSION || bytes[5..8] != [0, 0, 0] {
        return Err(bad("bad magic or version"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != le_u32(crc, 0) {
        return Err(bad("checksum mismatch"));
    }

    let count = le_u32(body, 48) as usize;
    if body.len() != INDEX_HEADER_LEN + count * ENTRY_LEN {
        return Err(bad("length disagrees with the entry count"));
    }
    let summary = read_summary(body, count)?;
    if summary.base_offset != base_offset {
        return Err(bad("base offset differs from the segment file name"));
    }
    if summary.bytes != segment_bytes {
        return Err(bad("segment length differs from the file"));
    }

    let entries: Vec<IndexEntry> = body[INDEX_HEADER_LEN..]
        .chunks_exact(ENTRY_LEN)
        .map(|entry| IndexEntry {
            offset: le_u64(entry, 0),
            publish_time_ms: le_u64(entry, 8),
            position: le_u64(entry, 16),
        })
        .collect();
    check_entries(&summary, &entries)?;
    Ok((summary, SparseIndex { entries }))
}

fn read_summary(body: &[u8], count: usize) -> Result<SegmentSummary, FormatError> {
    let bad = |what| FormatError::BadIndex { what };
    let base_offset = le_u64(body, 8);
    let next_offset = le_u64(body, 16);
    let bytes = le_u64(body, 40);

    let empty = bytes == 0;
    if empty != (next_offset == base_offset) || empty != (count == 0) || next_offset < base_offset {
        return Err(bad("summary is inconsistent"));
    }
    let (first, last) = (le_u64(body, 24), le_u64(body, 32));
    if first > last {
        return Err(bad("first publish time is after the last"));
    }

    Ok(SegmentSummary {
        base_offset,
        next_offset,
        first_publish_time_ms: (!empty).then_some(first),
        last_publish_time_ms: (!empty).then_some(last),
        bytes,
    })
}

fn check_entries(summary: &SegmentSummary, entries: &[IndexEntry]) -> Result<(), FormatError> {
    let bad = |what| FormatError::BadIndex { what };
    if let Some(first) = entries.first()
        && (first.offset != summary.base_offset || first.position != 0)
    {
        return Err(bad("first entry is not the segment's first batch"));
    }

    let in_range = |entry: &IndexEntry| {
        entry.position < summary.bytes
            && entry.offset < summary.next_offset
            && summary
                .first_publish_time_ms
                .zip(summary.last_publish_time_ms)
                .is_some_and(|(first, last)| (first..=last).contains(&entry.publish_time_ms))
    };
    if !entries.iter().all(in_range) {
        return Err(bad("entry outside the segment"));
    }

    let increasing = entries.windows(2).all(|pair| {
        pair[0].offset < pair[1].offset
            && pair[0].position < pair[1].position
            && pair[0].publish_time_ms <= pair[1].publish_time_ms
    });
    if !increasing {
        return Err(bad("entries out of order"));
    }
    Ok(())
}

/// Writes an index file whole: to `<path>.tmp`, `sync_data`, then a rename,
/// so a crash leaves either the old file, the new one, or a stray `.tmp`
/// that recovery removes. The caller syncs the directory.
pub(crate) fn write_index_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("idx.tmp");

    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_data().map_err(|e| Error::io(&tmp, e))?;
    drop(file);

    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(base_offset: u64, count: u32, first: u64, last: u64, length: u32) -> BatchHeader {
        BatchHeader {
            length,
            crc: 0,
            base_offset,
            record_count: count,
            first_publish_time_ms: first,
            last_publish_time_ms: last,
        }
    }

    /// Ten batches of 1000 bytes and 10 records each, times 0, 10, 20, ...
    fn sample(interval: u64) -> (SegmentSummary, SparseIndex) {
        let mut summary = SegmentSummary::empty(100);
        let mut index = SparseIndex::default();
        for i in 0..10u64 {
            let batch = header(100 + i * 10, 10, i * 10, i * 10 + 9, 1000);
            index.observe(&batch, summary.bytes, interval);
            summary.extend(&batch);
        }
        (summary, index)
    }

    #[test]
    fn entries_are_spaced_by_the_interval() {
        let (_, every_batch) = sample(1);
        let (_, every_third) = sample(2500);

        assert_eq!(every_batch.len(), 10);
        assert_eq!(
            every_third
                .entries
                .iter()
                .map(|e| e.position)
                .collect::<Vec<_>>(),
            [0, 3000, 6000, 9000]
        );
    }

    #[test]
    fn lookups_find_the_entry_at_or_before_an_offset() {
        let (_, index) = sample(2500);

        assert_eq!(index.at_or_before(99), None);
        assert_eq!(index.at_or_before(100).map(|e| e.offset), Some(100));
        assert_eq!(index.at_or_before(129).map(|e| e.offset), Some(100));
        assert_eq!(index.at_or_before(130).map(|e| e.offset), Some(130));
        assert_eq!(index.at_or_before(u64::MAX).map(|e| e.offset), Some(190));
    }

    #[test]
    fn time_lookups_find_the_last_entry_strictly_before() {
        let (_, index) = sample(2500);

        assert_eq!(index.last_before_time(0), None);
        assert_eq!(index.last_before_time(1).map(|e| e.offset), Some(100));
        assert_eq!(index.last_before_time(30).map(|e| e.offset), Some(100));
        assert_eq!(index.last_before_time(31).map(|e| e.offset), Some(130));
    }

    #[test]
    fn an_index_file_round_trips() {
        let (summary, index) = sample(2500);
        let bytes = encode_index(&summary, &index);

        let (decoded_summary, decoded) = decode_index(&bytes, 100, 10_000).expect("valid index");

        assert_eq!(bytes.len() as u64, index.file_len());
        assert_eq!(decoded_summary, summary);
        assert_eq!(decoded.entries, index.entries);
    }

    #[test]
    fn an_empty_segment_index_round_trips() {
        let summary = SegmentSummary::empty(42);
        let bytes = encode_index(&summary, &SparseIndex::default());

        let (decoded, index) = decode_index(&bytes, 42, 0).expect("valid index");

        assert_eq!(decoded, summary);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn a_damaged_or_stale_index_file_is_rejected() {
        let (summary, index) = sample(1);
        let bytes = encode_index(&summary, &index);

        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode_index(&flipped, 100, 10_000).is_err(), "byte {at}");
        }
        assert!(decode_index(&bytes[..bytes.len() - 1], 100, 10_000).is_err());
        assert!(
            decode_index(&bytes, 100, 9_999).is_err(),
            "segment grew or shrank"
        );
        assert!(decode_index(&bytes, 101, 10_000).is_err(), "other segment");
    }
}
