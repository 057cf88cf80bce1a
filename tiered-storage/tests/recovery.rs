//! Recovery after crashes: torn tails, flipped bits, missing files.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use sava_storage::{Error, FormatError, FsyncMode, PartitionLog};

const FIRST_SEGMENT: &str = "00000000000000000000.wal";

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.wal"))
}

fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Writes `batches` batches of 3 records; returns the file position of each
/// batch boundary, the end included.
fn write_batches(dir: &Path, batches: u64) -> Vec<u64> {
    let committer = committer(FsyncMode::Never);
    let log = open(dir, small_config(1 << 30), &committer);
    let mut boundaries = vec![0];
    for _ in 0..batches {
        append_all(&log, 3, 3);
        boundaries.push(log.disk_bytes());
    }
    boundaries
}

#[test]
fn an_empty_directory_opens_as_an_empty_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let partition = dir.path().join("topic-part-0");
    let committer = committer(FsyncMode::Always);

    let (log, report) =
        PartitionLog::open(&partition, small_config(4096), committer).expect("log opens");

    assert_eq!((log.start_offset(), log.next_offset()), (0, 0));
    assert_eq!(
        (report.segments, report.next_offset, report.truncated_bytes),
        (1, 0, 0)
    );
    assert!(partition.join(FIRST_SEGMENT).is_file());
    assert!(log.read(0, 10, 1 << 20).expect("read").is_empty());
}

#[test]
fn a_reopened_log_continues_at_the_next_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Always);
    {
        let log = open(dir.path(), small_config(2048), &committer);
        append_all(&log, 50, 4);
    }

    let (log, report) =
        PartitionLog::open(dir.path(), small_config(2048), committer).expect("log reopens");

    assert_eq!(report.next_offset, 50);
    assert_eq!(report.last_publish_time_ms, time(49));
    assert_eq!(log.last_publish_time_ms(), time(49));
    append_all(&log, 10, 3);
    assert_records(&read_all(&log, 0), 0..60);
}

#[test]
fn a_tail_torn_at_any_byte_is_cut_at_the_last_whole_batch() {
    let source = tempfile::tempdir().expect("tempdir");
    let boundaries = write_batches(source.path(), 4);
    let bytes = fs::read(source.path().join(FIRST_SEGMENT)).expect("segment");
    let (last_start, end) = (boundaries[3], boundaries[4]);
    assert_eq!(end, bytes.len() as u64);
    let committer = committer(FsyncMode::Always);

    for cut in last_start..end {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FIRST_SEGMENT), &bytes[..cut as usize]).expect("write");

        let (log, report) = PartitionLog::open(
            dir.path(),
            small_config(1 << 30),
            std::sync::Arc::clone(&committer),
        )
        .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));

        assert_eq!(report.truncated_bytes, cut - last_start, "cut at {cut}");
        assert_eq!(report.next_offset, 9, "cut at {cut}");
        assert_eq!(log.next_offset(), 9);
        assert_records(&read_all(&log, 0), 0..9);
        let on_disk = fs::metadata(dir.path().join(FIRST_SEGMENT)).expect("segment");
        assert_eq!(on_disk.len(), last_start, "cut at {cut}");
    }
}

#[test]
fn appends_after_a_torn_tail_continue_the_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let boundaries = write_batches(dir.path(), 3);
    let segment = dir.path().join(FIRST_SEGMENT);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open");
    file.set_len(boundaries[3] - 5).expect("tear");
    drop(file);
    let committer = committer(FsyncMode::Always);

    let log = open(dir.path(), small_config(1 << 30), &committer);
    append_all(&log, 4, 2);
    drop(log);

    let log = open(dir.path(), small_config(1 << 30), &committer);
    assert_records(&read_all(&log, 0), 0..10);
}

#[test]
fn a_flipped_bit_in_the_last_batch_cuts_it_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let boundaries = write_batches(dir.path(), 3);
    let segment = dir.path().join(FIRST_SEGMENT);
    let mut bytes = fs::read(&segment).expect("segment");
    bytes[boundaries[2] as usize + 50] ^= 0x04;
    fs::write(&segment, &bytes).expect("write");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!(report.truncated_bytes, boundaries[3] - boundaries[2]);
    let truncation = report.truncation.expect("a truncation is reported");
    assert_eq!(truncation.position, boundaries[2]);
    assert!(matches!(
        truncation.reason,
        FormatError::ChecksumMismatch { .. }
    ));
    assert_eq!(log.next_offset(), 6);
    assert_records(&read_all(&log, 0), 0..6);
}

#[test]
fn garbage_after_the_last_batch_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let boundaries = write_batches(dir.path(), 2);
    let segment = dir.path().join(FIRST_SEGMENT);
    let mut bytes = fs::read(&segment).expect("segment");
    bytes.extend_from_slice(&[0; 100]);
    fs::write(&segment, &bytes).expect("write");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!(report.truncated_bytes, 100);
    let reason = report.truncation.expect("truncated").reason;
    assert!(matches!(reason, FormatError::BadMagic { .. }), "{reason:?}");
    assert_eq!(log.disk_bytes(), boundaries[2]);
    assert_eq!(log.next_offset(), 6);
}

/// Three sealed segments of 5 records and an active one of 5; returns the
/// segments' base offsets.
fn write_segments(dir: &Path) -> Vec<u64> {
    let committer = committer(FsyncMode::Never);
    let log = open(dir, small_config(1 << 30), &committer);
    for _ in 0..3 {
        append_all(&log, 5, 1);
        log.seal_active().expect("seal");
    }
    append_all(&log, 5, 1);
    log.segments().iter().map(|s| s.base_offset).collect()
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_fails_only_reads_of_that_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(write_segments(dir.path()), [0, 5, 10, 15]);
    let damaged = segment_path(dir.path(), 5);
    let mut bytes = fs::read(&damaged).expect("segment");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x80;
    fs::write(&damaged, &bytes).expect("write");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");
    assert_eq!((report.truncated_bytes, report.next_offset), (0, 20));

    // The damaged batch fails with the segment and position named.
    let error = (5..10)
        .find_map(|offset| log.read(offset, 1, 1).err())
        .expect("some offset of the damaged segment fails");
    let Error::Corrupt {
        segment, position, ..
    } = &error
    else {
        panic!("expected corruption, got {error:?}");
    };
    assert_eq!(segment, &damaged);
    assert!(*position <= at as u64, "{error}");

    // Everything else reads back.
    assert_records(&log.read(0, 5, 1 << 20).expect("first segment"), 0..5);
    assert_records(&read_all(&log, 10), 10..20);
    let before = log
        .read(0, 100, 1 << 20)
        .expect("records before the damage");
    assert!(before.len() >= 5 && before.len() < 10, "{}", before.len());
}

#[test]
fn a_missing_index_is_rebuilt_by_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segments(dir.path());
    fs::remove_file(index_path(dir.path(), 5)).expect("remove index");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!(report.rebuilt_indexes, 1);
    assert!(
        index_path(dir.path(), 5).is_file(),
        "the index is written back"
    );
    assert_records(&read_all(&log, 0), 0..20);
}

#[test]
fn a_damaged_index_is_rebuilt_by_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segments(dir.path());
    let index = index_path(dir.path(), 10);
    let mut bytes = fs::read(&index).expect("index");
    bytes[20] ^= 1;
    fs::write(&index, &bytes).expect("write");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!(report.rebuilt_indexes, 1);
    assert!(report.damaged_segments.is_empty());
    assert_eq!(log.offset_for_time(time(12)).expect("lookup"), 12);
    assert_records(&read_all(&log, 7), 7..20);
}

#[test]
fn a_torn_segment_without_index_is_an_unfinished_seal_and_the_log_ends_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segments(dir.path());
    // A crash during the seal: no index yet, and the tail not yet on disk.
    fs::remove_file(index_path(dir.path(), 5)).expect("remove index");
    let torn = segment_path(dir.path(), 5);
    let mut bytes = fs::read(&torn).expect("segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&torn, &bytes).expect("write");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), Arc::clone(&committer))
            .expect("log opens");

    assert_eq!((report.segments, report.next_offset), (2, 9));
    assert_eq!(report.truncation.as_ref().map(|t| &t.segment), Some(&torn));
    assert!(report.damaged_segments.is_empty());
    for later in [10, 15] {
        let path = segment_path(dir.path(), later);
        assert!(
            report.removed_files.contains(&path),
            "{:?}",
            report.removed_files
        );
        assert!(!path.exists());
    }
    assert!(!index_path(dir.path(), 10).exists());
    assert_records(&read_all(&log, 0), 0..9);

    append_all(&log, 4, 2);
    drop(log);
    let log = open(dir.path(), small_config(1 << 30), &committer);
    assert_records(&read_all(&log, 0), 0..13);
}

#[test]
fn a_segment_without_index_that_ends_short_of_the_next_one_is_an_unfinished_seal() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segments(dir.path());
    // The same segment with its last record missing at a batch boundary, as
    // when the file's size reached the disk but not its last write.
    let shorter = tempfile::tempdir().expect("tempdir");
    {
        let committer = committer(FsyncMode::Never);
        let log = open(shorter.path(), small_config(1 << 30), &committer);
        append_all(&log, 5, 1);
        log.seal_active().expect("seal");
        append_all(&log, 4, 1);
    }
    fs::copy(segment_path(shorter.path(), 5), segment_path(dir.path(), 5)).expect("copy");
    fs::remove_file(index_path(dir.path(), 5)).expect("remove index");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!((report.segments, report.next_offset), (2, 9));
    assert!(report.truncation.is_none());
    assert!(!segment_path(dir.path(), 10).exists());
    assert_records(&read_all(&log, 0), 0..9);
}

#[test]
fn a_crash_between_roll_and_first_write_leaves_an_empty_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Always);
    {
        let log = open(dir.path(), small_config(1 << 30), &committer);
        append_all(&log, 7, 2);
        log.seal_active().expect("seal");
    }
    assert_eq!(
        fs::metadata(segment_path(dir.path(), 7))
            .expect("new")
            .len(),
        0
    );

    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!((report.segments, report.next_offset), (2, 7));
    assert_eq!(log.last_publish_time_ms(), time(6));
    append_all(&log, 3, 1);
    assert_records(&read_all(&log, 0), 0..10);
}

#[test]
fn a_crash_before_the_new_segment_exists_keeps_appending_to_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Always);
    {
        let log = open(dir.path(), small_config(1 << 30), &committer);
        append_all(&log, 7, 2);
        log.seal_active().expect("seal");
    }
    // As if the crash came after the index was written, before the new file.
    fs::remove_file(segment_path(dir.path(), 7)).expect("remove");
    fs::write(dir.path().join("00000000000000000000.idx.tmp"), b"half").expect("tmp");

    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!((report.segments, report.next_offset), (1, 7));
    assert_eq!(report.removed_files.len(), 2, "{:?}", report.removed_files);
    assert!(!log.segments()[0].sealed);
    append_all(&log, 3, 1);
    assert_records(&read_all(&log, 0), 0..10);
}

#[test]
fn an_empty_segment_file_alone_opens_at_its_base_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(segment_path(dir.path(), 42), b"").expect("segment");
    let committer = committer(FsyncMode::Always);

    let (log, report) =
        PartitionLog::open(dir.path(), small_config(4096), committer).expect("log opens");

    assert_eq!((report.start_offset, report.next_offset), (42, 42));
    assert!(matches!(
        log.append(&batch(0, 1)),
        Err(Error::OffsetMismatch { expected: 42, .. })
    ));
    append_all(&log, 2, 1);
    assert_records(&read_all(&log, 42), 42..44);
}

#[test]
fn a_missing_segment_between_two_others_fails_reads_of_its_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segments(dir.path());
    fs::remove_file(segment_path(dir.path(), 5)).expect("remove");
    fs::remove_file(index_path(dir.path(), 5)).expect("remove");

    let committer = committer(FsyncMode::Always);
    let (log, report) =
        PartitionLog::open(dir.path(), small_config(1 << 30), committer).expect("log opens");

    assert_eq!(report.damaged_segments.len(), 1);
    assert_records(&log.read(0, 100, 1 << 20).expect("first segment"), 0..5);
    let error = log
        .read(6, 10, 1 << 20)
        .expect_err("offsets 5..10 are gone");
    assert!(matches!(
        error,
        Error::Corrupt {
            reason: FormatError::OffsetGap { .. },
            ..
        }
    ));
    assert_records(&read_all(&log, 10), 10..20);
}

#[test]
fn foreign_files_in_the_directory_are_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_batches(dir.path(), 1);
    fs::write(dir.path().join("README"), b"notes").expect("write");

    let committer = committer(FsyncMode::Always);
    let log = open(dir.path(), small_config(4096), &committer);

    assert_eq!(log.next_offset(), 3);
    assert!(dir.path().join("README").is_file());
}
