//! Spare segment files: retired segments that later rolls reuse, and how
//! recovery reads a reused file whose earlier batches lie past its data.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sava_storage::{
    Error, FsyncMode, GroupCommitter, LogConfig, PartitionLog, SegmentInfo, SpareBudget,
};

fn spares_config(spare_segments: usize) -> LogConfig {
    LogConfig {
        spare_segments,
        ..small_config(1024)
    }
}

/// The names of the files in `dir` ending in `.extension`, sorted.
fn files(dir: &Path, extension: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .filter(|name| name.ends_with(&format!(".{extension}")))
        .collect();
    names.sort();
    names
}

/// Writes 60 records in pairs to a new log in `dir`, closes it, and
/// returns its segments.
fn sixty_records(dir: &Path, committer: &Arc<GroupCommitter>) -> Vec<SegmentInfo> {
    let log = open(dir, spares_config(4), committer);
    append_all(&log, 60, 2);
    log.segments()
}

/// Appends a record at a time until the log rolls to a new segment.
fn roll_once(log: &PartitionLog) {
    let before = log.segments().len();
    while log.segments().len() == before {
        append_all(log, 1, 1);
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").len()
}

/// Bytes of every file in `dir`: what the log should account for.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("list")
        .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").ino()
}

#[test]
fn retired_segments_become_spares_that_the_next_rolls_reuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), spares_config(4), &committer);
    append_all(&log, 60, 2);
    let segments = log.segments();
    let third = segments[2].base_offset;
    let retired_inodes: Vec<u64> = segments[..2].iter().map(|s| inode(&s.path)).collect();

    let deleted = log.delete_before(third).expect("retire");

    assert_eq!(deleted, segments[..2].to_vec());
    assert_eq!(log.spare_segments(), 2);
    let spares = files(dir.path(), "spare");
    assert_eq!(spares.len(), 2);
    assert_eq!(
        log.spare_bytes(),
        spares
            .iter()
            .map(|name| file_len(&dir.path().join(name)))
            .sum::<u64>()
    );
    assert!(log.spare_bytes() > 0);
    assert_eq!(log.disk_bytes() + log.spare_bytes(), dir_bytes(dir.path()));
    for info in &deleted {
        assert!(!info.path.exists() && !info.path.with_extension("idx").exists());
    }

    // The next two rolls take the spares; the data reads back whole.
    let before = log.segments().len();
    roll_once(&log);
    roll_once(&log);
    log.wait_for_seals();
    assert_eq!(log.spare_segments(), 0);
    assert_eq!(log.spare_bytes(), 0);
    // The active segment is a reused file, leftovers and all.
    assert_eq!(log.disk_bytes(), dir_bytes(dir.path()));
    assert!(files(dir.path(), "spare").is_empty());
    let reused: Vec<u64> = log.segments()[before - 1..]
        .iter()
        .skip(1)
        .map(|s| inode(&s.path))
        .collect();
    assert_eq!(reused, retired_inodes, "the new segments are the old files");
    let next = log.next_offset();
    assert_records(&read_all(&log, third), third..next);
}

#[test]
fn logs_sharing_a_budget_keep_no_more_spare_bytes_than_it_allows() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let committer = committer(FsyncMode::Never);
    // Sized from a first log's segments: room for one and a half.
    let probe = open(first_dir.path(), spares_config(4), &committer);
    append_all(&probe, 60, 2);
    let segment_bytes = probe.segments()[0].bytes;
    drop(probe);
    let budget = SpareBudget::new(segment_bytes * 3 / 2);
    let config = LogConfig {
        spare_budget: budget.clone(),
        ..spares_config(4)
    };
    let first = open(first_dir.path(), config.clone(), &committer);
    let second = open(second_dir.path(), config, &committer);
    append_all(&first, 60, 2);
    append_all(&second, 60, 2);

    // Two segments retire, one fits the budget; the other is deleted.
    first
        .delete_before(first.segments()[2].base_offset)
        .expect("retire");
    assert_eq!(first.spare_segments(), 1);
    assert_eq!(budget.used_bytes(), first.spare_bytes());
    second
        .delete_before(second.segments()[1].base_offset)
        .expect("retire");
    assert_eq!(second.spare_segments(), 0, "the budget is spent");
    assert_eq!(files(second_dir.path(), "spare").len(), 0);

    // A roll that takes the spare gives its bytes back to the budget.
    roll_once(&first);
    assert_eq!(budget.used_bytes(), 0);
    second
        .delete_before(second.segments()[1].base_offset)
        .expect("retire");
    assert_eq!(second.spare_segments(), 1);

    // So does a log closed with spares left.
    drop(second);
    assert_eq!(budget.used_bytes(), 0);
}

#[test]
fn a_reused_file_is_cut_to_its_segment_when_sealed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), spares_config(4), &committer);
    append_all(&log, 60, 2);
    let retired_bytes = file_len(&log.segments()[0].path);
    log.delete_before(log.segments()[1].base_offset)
        .expect("retire");

    // Roll into the spare and seal it after one record, far shorter than
    // the file's earlier life.
    roll_once(&log);
    assert_eq!(log.spare_segments(), 0);
    let sealed = log.seal_active().expect("seal").expect("non-empty");
    assert_eq!(sealed.next_offset - sealed.base_offset, 1);

    let on_disk = file_len(&sealed.path);
    assert!(sealed.bytes < retired_bytes, "{} bytes", sealed.bytes);
    assert_eq!(on_disk, sealed.bytes);
    drop(log);

    let (log, report) =
        PartitionLog::open(dir.path(), spares_config(4), committer).expect("reopens");
    assert_eq!(report.rebuilt_indexes, 0, "the index agrees with the file");
    let start = log.start_offset();
    let next = log.next_offset();
    assert_records(&read_all(&log, start), start..next);
}

#[test]
fn a_crash_leaves_a_reused_active_segment_whose_old_batches_recovery_ignores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let (next, active) = {
        let log = open(dir.path(), spares_config(4), &committer);
        append_all(&log, 60, 2);
        log.delete_before(log.segments()[2].base_offset)
            .expect("retire");
        // Roll into a spare and write a little: the old life lies behind.
        roll_once(&log);
        append_all(&log, 1, 1);
        let active = log.segments().last().expect("active").clone();
        assert!(file_len(&active.path) > active.bytes);
        assert_eq!(files(dir.path(), "spare").len(), 1, "one spare left over");
        (log.next_offset(), active)
    };

    let (log, report) = PartitionLog::open(dir.path(), spares_config(4), Arc::clone(&committer))
        .expect("a leftover is no damage");

    // The old life's bytes after the new batches are cut; nothing before
    // them is lost, and the spare is not kept across the open.
    assert_eq!(report.next_offset, next);
    assert!(report.damaged_segments.is_empty());
    let on_disk = file_len(&active.path);
    assert_eq!(on_disk, active.bytes);
    assert!(files(dir.path(), "spare").is_empty());
    assert_eq!(log.spare_segments(), 0);
    append_all(&log, 30, 3);
    drop(log);
    let log = open(dir.path(), spares_config(4), &committer);
    let start = log.start_offset();
    assert_records(&read_all(&log, start), start..next + 30);
}

#[test]
fn a_reused_segment_whose_seal_a_crash_stopped_is_whole_when_its_data_is() {
    // The earlier life's bytes may start at one of its batches or inside one.
    for skip in [0, 10] {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = committer(FsyncMode::Never);
        let segments = sixty_records(dir.path(), &committer);

        // As a crash before the seal leaves a reused file: no index, and
        // bytes of its earlier life (lower offsets) after its own batches.
        let middle = &segments[2];
        let earlier = fs::read(&segments[0].path).expect("read");
        let mut bytes = fs::read(&middle.path).expect("read");
        bytes.extend_from_slice(&earlier[skip..]);
        fs::write(&middle.path, &bytes).expect("write");
        fs::remove_file(middle.path.with_extension("idx")).expect("remove index");

        let (log, report) =
            PartitionLog::open(dir.path(), spares_config(4), committer).expect("reopens");

        assert_eq!(report.rebuilt_indexes, 1, "skip {skip}");
        assert!(
            report.removed_files.is_empty(),
            "{:?}",
            report.removed_files
        );
        assert!(report.damaged_segments.is_empty(), "skip {skip}");
        assert_eq!(log.segments().len(), segments.len(), "no segment dropped");
        let on_disk = file_len(&middle.path);
        assert_eq!(on_disk, middle.bytes, "cut to the segment's data");
        assert_records(&read_all(&log, 0), 0..60);
    }
}

#[test]
fn a_file_a_read_still_holds_is_deleted_not_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), spares_config(4), &committer);
    append_all(&log, 60, 2);
    let third = log.segments()[2].base_offset;
    let plan = log.plan_read(0, 256).expect("plan");

    log.delete_before(third).expect("retire");

    assert_eq!(log.spare_segments(), 1, "only the unread segment is kept");
    // Rolls reuse the one spare; the planned read still sees its records.
    while log.spare_segments() > 0 {
        append_all(&log, 2, 2);
    }
    let records = plan.read(100, 1 << 20).expect("read");
    let last = records.last().expect("records").offset;
    assert_records(&records, 0..last + 1);
}

#[test]
fn the_pool_keeps_at_most_its_bound_and_gives_idle_spares_back_one_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), spares_config(2), &committer);
    append_all(&log, 100, 2);
    let fifth = log.segments()[4].base_offset;

    log.delete_before(fifth).expect("retire");
    assert_eq!(log.spare_segments(), 2);
    assert_eq!(files(dir.path(), "spare").len(), 2);

    log.trim_spares(Duration::from_secs(3600));
    assert_eq!(log.spare_segments(), 2, "not idle for an hour");
    log.trim_spares(Duration::ZERO);
    assert_eq!(files(dir.path(), "spare").len(), 1);
    log.trim_spares(Duration::ZERO);
    assert_eq!(log.spare_segments(), 0);
    assert!(files(dir.path(), "spare").is_empty());
}

#[test]
fn without_spares_retired_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), spares_config(0), &committer);
    append_all(&log, 60, 2);

    log.delete_before(log.segments()[2].base_offset)
        .expect("retire");

    assert_eq!(log.spare_segments(), 0);
    assert!(files(dir.path(), "spare").is_empty());
    assert_eq!(files(dir.path(), "wal").len(), log.segments().len());
}

#[test]
fn spare_files_a_log_finds_when_it_opens_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    {
        let log = open(dir.path(), spares_config(4), &committer);
        append_all(&log, 60, 2);
        log.delete_before(log.segments()[2].base_offset)
            .expect("retire");
        assert_eq!(files(dir.path(), "spare").len(), 2);
    }

    let (log, report) =
        PartitionLog::open(dir.path(), spares_config(4), committer).expect("reopens");

    let removed: Vec<_> = report
        .removed_files
        .iter()
        .filter(|p| p.extension() == Some("spare".as_ref()))
        .collect();
    assert_eq!(removed.len(), 2, "{:?}", report.removed_files);
    assert!(files(dir.path(), "spare").is_empty());
    assert_eq!(log.spare_segments(), 0);
    let start = log.start_offset();
    assert_records(&read_all(&log, start), start..60);
}

#[test]
fn the_last_segment_is_cut_where_its_data_ends_even_with_later_batches_after_old_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let segments = sixty_records(dir.path(), &committer);

    // A power cut kept pages out of order: after the active segment's data,
    // an old life's batch, then a batch this life wrote and never had
    // acknowledged (it continues nothing once the hole is cut).
    let active = segments.last().expect("active");
    let earlier = fs::read(&segments[0].path).expect("read");
    let later = fs::read(&segments[1].path).expect("read");
    let mut bytes = fs::read(&active.path).expect("read");
    bytes.extend_from_slice(&earlier);
    bytes.extend_from_slice(&later);
    fs::write(&active.path, &bytes).expect("write");

    let (log, report) =
        PartitionLog::open(dir.path(), spares_config(4), Arc::clone(&committer)).expect("reopens");

    assert_eq!(report.next_offset, 60);
    let on_disk = file_len(&active.path);
    assert_eq!(on_disk, active.bytes, "cut to the data");
    append_all(&log, 20, 4);
    drop(log);
    let log = open(dir.path(), spares_config(4), &committer);
    assert_records(&read_all(&log, 0), 0..80);
}

#[test]
fn a_segment_without_index_whose_batches_break_the_offsets_fails_the_open_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let segments = sixty_records(dir.path(), &committer);

    // Not a torn write: a whole batch from further on, right after the
    // first batch of a segment whose index is gone.
    let first = &segments[1];
    let mut bytes = fs::read(&first.path).expect("read");
    bytes.truncate(first_batch_len(&bytes));
    bytes.extend_from_slice(&fs::read(&segments[3].path).expect("read"));
    fs::write(&first.path, &bytes).expect("write");
    fs::remove_file(first.path.with_extension("idx")).expect("remove index");

    let error = PartitionLog::open(dir.path(), spares_config(4), committer)
        .expect_err("a batch that breaks the offsets is no torn write");

    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    for segment in &segments[2..] {
        assert!(segment.path.exists(), "{} kept", segment.path.display());
    }
}

/// The length of the first batch of a segment file (bytes 8..12).
fn first_batch_len(bytes: &[u8]) -> usize {
    u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize
}
