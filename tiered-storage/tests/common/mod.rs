//! Fixtures shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sava_storage::{CommitConfig, FsyncMode, GroupCommitter, LogConfig, PartitionLog, Record};

pub fn committer(mode: FsyncMode) -> Arc<GroupCommitter> {
    let config = CommitConfig {
        mode,
        ..CommitConfig::default()
    };
    GroupCommitter::start(config).expect("committer thread starts")
}

/// A config with small segments and a dense index, so tests cross both.
pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_age: Duration::from_secs(3600),
        index_interval_bytes: 256,
        max_batch_bytes: 1024 * 1024,
        first_offset: 0,
        spare_segments: 4,
        ..LogConfig::default()
    }
}

pub fn open(dir: &Path, config: LogConfig, committer: &Arc<GroupCommitter>) -> PartitionLog {
    let (log, _) = PartitionLog::open(dir, config, Arc::clone(committer)).expect("log opens");
    log
}

/// The payload of the record at `offset`, so any read can be checked.
pub fn payload(offset: u64) -> Bytes {
    Bytes::from(format!("payload of record {offset} ").repeat(1 + (offset % 3) as usize))
}

/// The publish time of the record at `offset`: 10 ms apart, in pairs.
pub fn time(offset: u64) -> u64 {
    1_700_000_000_000 + (offset / 2) * 10
}

pub fn record(offset: u64) -> Record {
    Record {
        offset,
        publish_time_ms: time(offset),
        producer_id: 1,
        producer_name: "test-producer".into(),
        key: offset.is_multiple_of(2).then(|| format!("key-{offset}")),
        attributes: vec![("n".to_owned(), offset.to_string())],
        schema_id: None,
        schema_version: None,
        payload: payload(offset),
    }
}

pub fn batch(first: u64, count: u64) -> Vec<Record> {
    (first..first + count).map(record).collect()
}

/// Appends `count` records in batches of `per_batch`, waits for each ack,
/// and at the end for the seals of the segments the appends rolled.
pub fn append_all(log: &PartitionLog, count: u64, per_batch: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let start = log.next_offset();
    let mut offset = start;
    while offset < start + count {
        let n = per_batch.min(start + count - offset);
        let ack = log.append(&batch(offset, n)).expect("append");
        runtime.block_on(ack).expect("ack");
        offset += n;
    }
    log.wait_for_seals();
}

/// Reads every record from `from` to the end, in small reads.
pub fn read_all(log: &PartitionLog, from: u64) -> Vec<Record> {
    let mut records = Vec::new();
    let mut next = from;
    loop {
        let chunk = log.read(next, 7, 4096).expect("read");
        let Some(last) = chunk.last() else {
            return records;
        };
        next = last.offset + 1;
        records.extend(chunk);
    }
}

pub fn assert_records(records: &[Record], range: std::ops::Range<u64>) {
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, range.clone().collect::<Vec<_>>());
    for (record, offset) in records.iter().zip(range) {
        assert_eq!(*record, self::record(offset), "record {offset}");
    }
}
