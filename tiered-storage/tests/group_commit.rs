//! Group commit across partitions and appenders.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sava_storage::{
    CommitConfig, Error, FlushObserver, FlushReport, FsyncMode, GroupCommitter, PartitionLog,
};

/// What the broker does per partition: stamp offsets and append under one lock.
fn stamp_and_append(
    partition: &Mutex<PartitionLog>,
    count: u64,
) -> sava_storage::Result<sava_storage::AppendAck> {
    let log = partition.lock().expect("partition lock");
    let first = log.next_offset();
    log.append(&batch(first, count))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_on_many_partitions_all_get_acks_from_shared_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Always);
    let partitions: Vec<Arc<Mutex<PartitionLog>>> = (0..6)
        .map(|i| {
            let path = dir.path().join(format!("part-{i}"));
            Arc::new(Mutex::new(open(&path, small_config(8192), &committer)))
        })
        .collect();

    // Four appenders per partition, each waiting for its ack before the next.
    let mut tasks = Vec::new();
    for partition in &partitions {
        for _ in 0..4 {
            let partition = Arc::clone(partition);
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    stamp_and_append(&partition, 2)?.await?;
                }
                Ok::<_, Error>(())
            }));
        }
    }
    for task in tasks {
        task.await
            .expect("task")
            .expect("every append is acknowledged");
    }

    let stats = committer.stats();
    let batches = 6 * 4 * 25;
    assert_eq!(stats.batches, batches);
    assert!(stats.fsyncs < batches, "{stats:?}");
    assert!(stats.batches_per_flush() > 1.0, "{stats:?}");
    for partition in &partitions {
        let log = partition.lock().expect("partition lock");
        assert_eq!(log.durable_offset(), 200);
        assert_records(&read_all(&log, 0), 0..200);
    }
}

#[tokio::test]
async fn never_mode_acknowledges_without_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Never);
    let log = open(dir.path(), small_config(1024), &committer);

    for offset in 0..20 {
        log.append(&batch(offset, 1))
            .expect("append")
            .await
            .expect("ack");
    }

    let stats = committer.stats();
    assert_eq!((stats.flushes, stats.fsyncs, stats.batches), (0, 0, 0));
    assert_eq!(stats.unsynced_batches, 20);
    assert_eq!(log.durable_offset(), 20);
}

#[tokio::test]
async fn many_appends_in_flight_share_one_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CommitConfig {
        flush_interval: Duration::from_millis(50),
        ..CommitConfig::default()
    };
    let committer = GroupCommitter::start(config).expect("committer");
    let log = open(dir.path(), small_config(1 << 20), &committer);

    // The first append flushes at once; the rest wait out the interval together.
    log.append(&batch(0, 1))
        .expect("append")
        .await
        .expect("ack");
    let acks: Vec<_> = (1..51)
        .map(|o| log.append(&batch(o, 1)).expect("append"))
        .collect();
    assert!(log.durable_offset() < 51);
    for ack in acks {
        ack.await.expect("ack");
    }

    let stats = committer.stats();
    assert_eq!(stats.batches, 51);
    assert!(stats.flushes <= 3, "{stats:?}");
    assert_eq!(log.durable_offset(), 51);
}

#[tokio::test]
async fn pending_bytes_above_the_threshold_flush_before_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CommitConfig {
        flush_interval: Duration::from_secs(30),
        flush_bytes: 1,
        ..CommitConfig::default()
    };
    let committer = GroupCommitter::start(config).expect("committer");
    let log = open(dir.path(), small_config(1 << 20), &committer);

    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        for offset in 0..3 {
            log.append(&batch(offset, 1))
                .expect("append")
                .await
                .expect("ack");
        }
    });

    acked
        .await
        .expect("acks come long before the 30 s interval");
}

#[tokio::test]
async fn the_observer_sees_every_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = Arc::new(AtomicU64::new(0));
    let observer: FlushObserver = {
        let seen = Arc::clone(&seen);
        Arc::new(move |report: &FlushReport| {
            assert!(report.batches > 0 && report.bytes > 0 && report.segments == 1);
            seen.fetch_add(report.batches, Ordering::SeqCst);
        })
    };
    let committer = GroupCommitter::start_with_observer(CommitConfig::default(), Some(observer))
        .expect("start");
    let log = open(dir.path(), small_config(1 << 20), &committer);

    for offset in 0..10 {
        log.append(&batch(offset, 1))
            .expect("append")
            .await
            .expect("ack");
    }

    assert_eq!(seen.load(Ordering::SeqCst), 10);
    assert!(committer.stats().total_fsync_time > Duration::ZERO);
}

#[tokio::test]
async fn a_shut_down_committer_refuses_appends_but_flushes_what_was_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CommitConfig {
        flush_interval: Duration::from_secs(30),
        ..CommitConfig::default()
    };
    let committer = GroupCommitter::start(config).expect("committer");
    let log = open(dir.path(), small_config(1 << 20), &committer);
    log.append(&batch(0, 1))
        .expect("append")
        .await
        .expect("first flushes at once");
    let pending = log.append(&batch(1, 1)).expect("append");

    committer.shutdown();

    pending
        .await
        .expect("pending append is flushed at shutdown");
    assert!(matches!(log.append(&batch(2, 1)), Err(Error::Closed)));
    assert!(committer.is_closed());
}

#[tokio::test]
async fn a_dropped_ack_does_not_undo_the_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committer = committer(FsyncMode::Always);
    let log = open(dir.path(), small_config(1 << 20), &committer);

    drop(log.append(&batch(0, 3)).expect("append"));
    log.append(&batch(3, 1))
        .expect("append")
        .await
        .expect("ack");

    assert_eq!(log.durable_offset(), 4);
    assert_records(&read_all(&log, 0), 0..4);
}
