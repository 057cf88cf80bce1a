//! Segments: rolling, index lookups, time lookups, retention, read limits.

mod common;

use std::fs;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use sava_storage::{Error, FsyncMode, LogConfig, Record};

#[test]
fn the_active_segment_rolls_before_it_passes_the_size_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1024), &committer);

    append_all(&log, 100, 2);

    let segments = log.segments();
    assert!(segments.len() > 5, "{} segments", segments.len());
    for pair in segments.windows(2) {
        assert!(pair[0].sealed && pair[0].bytes <= 1024, "{:?}", pair[0]);
        assert_eq!(pair[0].next_offset, pair[1].base_offset);
        assert!(pair[0].path.with_extension("idx").is_file());
    }
    let active = segments.last().expect("active");
    assert!(!active.sealed && active.next_offset == 100);
    assert_records(&read_all(&log, 0), 0..100);
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(512), &committer);

    append_all(&log, 2, 1);
    append_all(&log, 20, 20);
    append_all(&log, 1, 1);

    let bases: Vec<u64> = log.segments().iter().map(|s| s.base_offset).collect();
    assert_eq!(bases, [0, 2, 22]);
    assert_records(&read_all(&log, 0), 0..23);
}

#[test]
fn the_active_segment_rolls_once_it_is_older_than_the_age_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let config = LogConfig {
        segment_age: Duration::from_millis(100),
        ..small_config(1 << 30)
    };
    let log = open(dir.path(), config, &committer);

    append_all(&log, 3, 1);
    assert_eq!(log.seal_if_aged().expect("not yet"), None);
    std::thread::sleep(Duration::from_millis(150));
    append_all(&log, 3, 1);

    let bases: Vec<u64> = log.segments().iter().map(|s| s.base_offset).collect();
    assert_eq!(bases, [0, 3]);

    std::thread::sleep(Duration::from_millis(150));
    let sealed = log
        .seal_if_aged()
        .expect("seal")
        .expect("aged segment sealed");
    assert_eq!((sealed.base_offset, sealed.next_offset), (3, 6));
    assert_eq!(log.seal_if_aged().expect("empty active"), None);
}

#[test]
fn seal_active_seals_a_non_empty_segment_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1 << 30), &committer);

    assert_eq!(log.seal_active().expect("empty"), None);
    append_all(&log, 4, 2);
    let sealed = log.seal_active().expect("seal").expect("sealed");

    assert!(sealed.sealed);
    assert_eq!((sealed.base_offset, sealed.last_offset()), (0, Some(3)));
    assert_eq!(sealed.first_publish_time_ms, Some(time(0)));
    assert_eq!(sealed.last_publish_time_ms, Some(time(3)));
    assert_eq!(log.seal_active().expect("empty again"), None);
    assert_eq!(log.segments().len(), 2);
}

#[test]
fn seal_active_returns_once_the_segments_earlier_rolls_ended_are_sealed_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(256), &committer);

    // Every batch rolls, and nothing here waits for the seals they start.
    for offset in (0..100).step_by(2) {
        drop(log.append(&batch(offset, 2)).expect("append"));
    }
    log.seal_active().expect("seal");

    let segments = log.segments();
    assert!(segments.len() > 40, "{} segments", segments.len());
    let (active, ended) = segments.split_last().expect("segments");
    assert!(ended.iter().all(|s| s.sealed), "{ended:?}");
    assert!(!active.sealed);
    assert!(ended.iter().all(|s| s.path.with_extension("idx").is_file()));
}

#[test]
fn reads_from_any_offset_start_at_that_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(3000), &committer);
    append_all(&log, 200, 3);
    assert!(log.segments().len() > 3);

    for from in 0..200 {
        let records = log.read(from, 5, 1 << 20).expect("read");
        assert_records(&records, from..(from + 5).min(200));
    }
    assert!(log.read(200, 5, 1 << 20).expect("at the end").is_empty());
}

#[test]
fn reads_from_any_offset_work_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    {
        let log = open(dir.path(), small_config(3000), &committer);
        append_all(&log, 120, 4);
    }
    let log = open(dir.path(), small_config(3000), &committer);

    for from in 0..120 {
        assert_records(&log.read(from, 1, 1).expect("read"), from..from + 1);
    }
}

#[test]
fn reads_stop_at_the_record_limit_and_near_the_byte_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(4096), &committer);
    append_all(&log, 100, 10);

    assert_eq!(log.read(3, 17, 1 << 20).expect("read").len(), 17);
    let one_record_bytes = record(0).encoded_len();
    let small = log.read(0, 100, one_record_bytes * 3).expect("read");
    assert!((3..=4).contains(&small.len()), "{} records", small.len());
    assert_eq!(
        log.read(0, 100, 1).expect("read").len(),
        1,
        "at least one record"
    );
    assert!(log.read(0, 0, 1 << 20).expect("read").is_empty());
}

#[test]
fn reads_are_whole_when_record_sizes_change_under_the_size_estimate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1 << 30), &committer);
    // Runs of tiny records, then records far larger than a first read, so
    // each read's estimate of the bytes it needs is wrong both ways.
    let size = |offset: u64| match (offset / 40) % 3 {
        0 => 3,
        1 => 150_000,
        _ => 900,
    };
    let sized = |offset: u64| Record {
        payload: Bytes::from(vec![(offset % 251) as u8; size(offset)]),
        ..record(offset)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for first in (0..240).step_by(6) {
        let records: Vec<Record> = (first..first + 6).map(sized).collect();
        runtime
            .block_on(log.append(&records).expect("append"))
            .expect("durable");
    }

    for from in (0..240).step_by(7) {
        for max_records in [1, 13, 64, 500] {
            let read = log.read(from, max_records, 8 << 20).expect("read");
            let end = (from + max_records as u64).min(240);
            let offsets: Vec<u64> = read.iter().map(|r| r.offset).collect();
            assert_eq!(offsets.first(), Some(&from));
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
            assert!(offsets.len() as u64 <= end - from);
            for record in &read {
                assert_eq!(*record, sized(record.offset), "record {}", record.offset);
            }
            // Only the byte limit may cut a read short.
            let bytes: usize = read.iter().map(Record::encoded_len).sum();
            assert!(offsets.len() as u64 == end - from || bytes >= 8 << 20);
        }
    }
}

#[test]
fn reads_outside_the_log_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1024), &committer);
    append_all(&log, 30, 1);
    log.seal_active().expect("seal");
    let start = log.segments()[2].base_offset;
    log.delete_before(start).expect("delete");

    let below = log.read(0, 1, 1).expect_err("deleted");
    let above = log.read(31, 1, 1).expect_err("not written yet");

    assert!(
        matches!(below, Error::OffsetOutOfRange { offset: 0, start_offset, next_offset: 30 } if start_offset == start)
    );
    assert!(matches!(above, Error::OffsetOutOfRange { offset: 31, .. }));
}

#[test]
fn offset_for_time_finds_the_first_record_at_or_after_the_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(2048), &committer);
    append_all(&log, 150, 3);
    assert!(log.segments().len() > 3);

    // Times come in pairs 10 ms apart: offsets 2k and 2k + 1 share one.
    for offset in 0..150 {
        let expected = offset - offset % 2;
        assert_eq!(log.offset_for_time(time(offset)).expect("lookup"), expected);
        assert_eq!(
            log.offset_for_time(time(offset) - 1).expect("lookup"),
            expected
        );
    }
    assert_eq!(log.offset_for_time(0).expect("lookup"), 0);
    assert_eq!(log.offset_for_time(time(149) + 1).expect("lookup"), 150);
    assert_eq!(log.offset_for_time(u64::MAX).expect("lookup"), 150);
}

#[test]
fn offset_for_time_on_an_empty_log_is_the_next_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(2048), &committer);

    assert_eq!(log.offset_for_time(0).expect("lookup"), 0);
    append_all(&log, 4, 4);
    log.seal_active().expect("seal");
    assert_eq!(log.offset_for_time(time(3) + 1).expect("lookup"), 4);
}

#[test]
fn delete_before_removes_whole_sealed_segments_below_the_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1024), &committer);
    append_all(&log, 60, 2);
    let segments = log.segments();
    let third = &segments[2];

    // An offset inside the third segment keeps it.
    let deleted = log.delete_before(third.base_offset + 1).expect("delete");

    assert_eq!(deleted, segments[..2].to_vec());
    for info in &deleted {
        assert!(!info.path.exists() && !info.path.with_extension("idx").exists());
    }
    assert_eq!(log.start_offset(), third.base_offset);
    assert_records(&read_all(&log, third.base_offset), third.base_offset..60);
    assert!(log.delete_before(0).expect("nothing below").is_empty());
}

#[test]
fn delete_before_never_removes_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1024), &committer);
    append_all(&log, 40, 2);

    log.delete_before(u64::MAX).expect("delete");

    let segments = log.segments();
    assert_eq!(segments.len(), 1);
    assert!(!segments[0].sealed);
    assert_eq!(log.next_offset(), 40);
    drop(log);

    // Retention survives a restart.
    let log = open(dir.path(), small_config(1024), &committer);
    assert_eq!(log.start_offset(), segments[0].base_offset);
    assert_eq!(log.next_offset(), 40);
}

#[test]
fn disk_bytes_counts_segments_and_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1024), &committer);
    append_all(&log, 40, 2);

    let on_disk: u64 = fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
        .sum();

    assert_eq!(log.disk_bytes(), on_disk);
}

#[test]
fn appends_that_do_not_continue_the_log_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1024), &committer);
    append_all(&log, 4, 2);

    let gap = log.append(&batch(5, 1)).expect_err("offset 4 is next");
    let mut old = record(4);
    old.publish_time_ms = time(3) - 1;
    let regression = log.append(&[old]).expect_err("time went back");
    let empty = log.append(&[]).expect_err("no records");

    assert!(matches!(
        gap,
        Error::OffsetMismatch {
            expected: 4,
            got: 5
        }
    ));
    assert!(matches!(regression, Error::PublishTimeRegression { .. }));
    assert!(matches!(empty, Error::EmptyBatch));
    assert_eq!(log.next_offset(), 4);
}

#[test]
fn a_batch_above_max_batch_bytes_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let config = LogConfig {
        max_batch_bytes: 10_000,
        ..small_config(1 << 20)
    };
    let log = open(dir.path(), config, &committer);
    let big = Record {
        payload: Bytes::from(vec![0; 10_000]),
        ..record(0)
    };

    let error = log.append(&[big]).expect_err("too large");

    assert!(
        matches!(error, Error::RecordTooLarge { max: 10_000, .. }),
        "{error:?}"
    );
    assert_eq!((log.next_offset(), log.disk_bytes()), (0, 0));
}

#[test]
fn an_invalid_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let config = LogConfig {
        index_interval_bytes: 0,
        ..LogConfig::default()
    };

    let error =
        sava_storage::PartitionLog::open(dir.path(), config, committer).expect_err("interval 0");

    assert!(
        error.to_string().contains("`index_interval_bytes`"),
        "{error}"
    );
}

#[test]
fn large_payloads_round_trip_through_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let config = LogConfig {
        max_batch_bytes: 16 * 1024 * 1024,
        ..small_config(4 * 1024 * 1024)
    };
    let log = open(dir.path(), config, &committer);
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let huge = Record {
        payload: Bytes::from(payload),
        ..record(0)
    };

    drop(log.append(std::slice::from_ref(&huge)).expect("append"));
    append_all(&log, 2, 1);

    let records = log.read(0, 10, 1024).expect("read");
    assert_eq!(
        records.len(),
        1,
        "the byte limit stops after the huge record"
    );
    assert_eq!(records[0], huge);
    assert_records(&log.read(1, 10, 1 << 20).expect("read"), 1..3);
}

#[test]
fn readers_see_a_consistent_prefix_while_appends_and_rolls_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(2048), &committer);
    let done = std::sync::atomic::AtomicBool::new(false);

    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let records = log.read(0, usize::MAX, usize::MAX).expect("read");
                assert_records(&records, 0..records.len() as u64);
                reads += 1;
            }
            reads
        });

        append_all(&log, 1000, 3);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.join().expect("reader") > 0);
    });

    assert!(log.segments().len() > 10);
    assert_records(&log.read(0, usize::MAX, usize::MAX).expect("read"), 0..1000);
}
