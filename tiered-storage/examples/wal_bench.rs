//! WAL micro-benchmark: reliable appends through group commit against the
//! disk's raw sequential write + fsync bandwidth, measured in the same run.
//!
//! ```text
//! cargo run --release -p sava-storage --example wal_bench -- \
//!     [--seconds 5] [--writers 4] [--partitions 1] [--records 1] [--window 256] [--dir DIR]
//! ```
//!
//! `--records` is records per append (one batch), `--window` the appends
//! each writer keeps in flight, as a producer with pipelined acks does.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sava_storage::{AppendAck, CommitConfig, GroupCommitter, LogConfig, PartitionLog, Record};

const RECORD_BYTES: usize = 1024;
const BLOCK_BYTES: usize = 1024 * 1024;

struct Options {
    seconds: f64,
    writers: usize,
    partitions: usize,
    records: usize,
    window: usize,
    dir: PathBuf,
}

fn parse_options() -> Options {
    let mut options = Options {
        seconds: 5.0,
        writers: 4,
        partitions: 1,
        records: 1,
        window: 256,
        dir: std::env::temp_dir(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad {flag}"))
        };
        match flag.as_str() {
            "--seconds" => options.seconds = number(),
            "--writers" => options.writers = number() as usize,
            "--partitions" => options.partitions = number() as usize,
            "--records" => options.records = number() as usize,
            "--window" => options.window = number() as usize,
            "--dir" => options.dir = PathBuf::from(&value),
            _ => panic!("unknown flag {flag}"),
        }
    }
    options.partitions = options.partitions.clamp(1, options.writers.max(1));
    options
}

fn main() {
    let options = parse_options();
    let dir = tempfile::tempdir_in(&options.dir).expect("bench directory");
    let duration = Duration::from_secs_f64(options.seconds);

    let baseline = raw_write_fsync(&dir.path().join("baseline.bin"), duration);
    println!(
        "baseline: sequential 1 MiB writes + sync_data: {:.1} MB/s ({} fsyncs, mean {:.2} ms)",
        baseline.mb_per_s,
        baseline.fsyncs,
        baseline.mean_fsync.as_secs_f64() * 1e3
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let wal = runtime.block_on(wal_appends(&options, dir.path(), duration));

    println!(
        "wal: {} writers, {} partition(s), {} x 1 KiB records per append, window {}",
        options.writers, options.partitions, options.records, options.window
    );
    println!(
        "wal: {:.1} MB/s of payload ({:.1} MB/s on disk), {:.0} records/s",
        wal.payload_mb_per_s, wal.disk_mb_per_s, wal.records_per_s
    );
    println!(
        "wal: {} flushes, {:.1} batches per fsync, {:.0} KiB per flush, mean fsync {:.2} ms",
        wal.flushes,
        wal.batches_per_flush,
        wal.kib_per_flush,
        wal.mean_fsync.as_secs_f64() * 1e3
    );
    println!(
        "wal: append-to-durable latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        wal.p50.as_secs_f64() * 1e3,
        wal.p99.as_secs_f64() * 1e3,
        wal.max.as_secs_f64() * 1e3
    );
    println!(
        "ratio: wal payload / baseline = {:.2} (on-disk bytes: {:.2})",
        wal.payload_mb_per_s / baseline.mb_per_s,
        wal.disk_mb_per_s / baseline.mb_per_s
    );
}

struct Baseline {
    mb_per_s: f64,
    fsyncs: u64,
    mean_fsync: Duration,
}

/// Writes 1 MiB blocks to one file, `sync_data` after each, for `duration`.
fn raw_write_fsync(path: &Path, duration: Duration) -> Baseline {
    let mut file = File::create(path).expect("baseline file");
    let block = vec![0xa5u8; BLOCK_BYTES];
    let started = Instant::now();
    let (mut written, mut fsyncs, mut fsync_time) = (0u64, 0u64, Duration::ZERO);

    while started.elapsed() < duration {
        file.write_all(&block).expect("baseline write");
        let synced = Instant::now();
        file.sync_data().expect("baseline fsync");
        fsync_time += synced.elapsed();
        written += BLOCK_BYTES as u64;
        fsyncs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);

    Baseline {
        mb_per_s: written as f64 / elapsed / 1e6,
        fsyncs,
        mean_fsync: fsync_time / fsyncs.max(1) as u32,
    }
}

struct WalResult {
    payload_mb_per_s: f64,
    disk_mb_per_s: f64,
    records_per_s: f64,
    flushes: u64,
    batches_per_flush: f64,
    kib_per_flush: f64,
    mean_fsync: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn wal_appends(options: &Options, dir: &Path, duration: Duration) -> WalResult {
    let committer = GroupCommitter::start(CommitConfig::default()).expect("committer");
    let partitions: Vec<Arc<Mutex<PartitionLog>>> = (0..options.partitions)
        .map(|i| {
            let path = dir.join(format!("partition-{i}"));
            let opened = PartitionLog::open(&path, LogConfig::default(), Arc::clone(&committer));
            Arc::new(Mutex::new(opened.expect("partition log").0))
        })
        .collect();

    let payload = Bytes::from(vec![0x5au8; RECORD_BYTES]);
    let started = Instant::now();
    let writers: Vec<_> = (0..options.writers)
        .map(|w| {
            let partition = Arc::clone(&partitions[w % partitions.len()]);
            let (payload, records, window) = (payload.clone(), options.records, options.window);
            tokio::spawn(writer(
                partition,
                payload,
                records,
                window,
                started + duration,
            ))
        })
        .collect();

    let mut latencies = Vec::new();
    for writer in writers {
        latencies.extend(writer.await.expect("writer task"));
    }
    let elapsed = started.elapsed().as_secs_f64();

    let stats = committer.stats();
    let records = latencies.len() as u64 * options.records as u64;
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    WalResult {
        payload_mb_per_s: (records * RECORD_BYTES as u64) as f64 / elapsed / 1e6,
        disk_mb_per_s: stats.bytes as f64 / elapsed / 1e6,
        records_per_s: records as f64 / elapsed,
        flushes: stats.flushes,
        batches_per_flush: stats.batches_per_flush(),
        kib_per_flush: stats.bytes as f64 / stats.flushes.max(1) as f64 / 1024.0,
        mean_fsync: stats.total_fsync_time / stats.flushes.max(1) as u32,
        p50: percentile(0.50),
        p99: percentile(0.99),
        max: percentile(1.0),
    }
}

/// One producer: stamps and appends under the partition lock, keeps up to
/// `window` appends in flight, and times each from append to durable.
async fn writer(
    partition: Arc<Mutex<PartitionLog>>,
    payload: Bytes,
    records: usize,
    window: usize,
    until: Instant,
) -> Vec<Duration> {
    let mut in_flight: VecDeque<(Instant, AppendAck)> = VecDeque::with_capacity(window);
    let mut latencies = Vec::new();
    let mut batch = Vec::with_capacity(records);

    while Instant::now() < until {
        let appended = Instant::now();
        let ack = {
            let log = partition.lock().expect("partition lock");
            let (first, last_ms) = (log.next_offset(), log.last_publish_time_ms());
            let publish_time_ms = now_ms().max(last_ms);
            batch.clear();
            batch.extend((0..records as u64).map(|i| Record {
                offset: first + i,
                publish_time_ms,
                producer_id: 1,
                producer_name: "bench".to_owned(),
                payload: payload.clone(),
                ..Record::default()
            }));
            log.append(&batch).expect("append")
        };
        in_flight.push_back((appended, ack));

        if in_flight.len() >= window {
            let (appended, ack) = in_flight.pop_front().expect("window is full");
            ack.await.expect("ack");
            latencies.push(appended.elapsed());
        }
        drain_completed(&mut in_flight, &mut latencies);
        tokio::task::yield_now().await;
    }

    for (appended, ack) in in_flight {
        ack.await.expect("ack");
        latencies.push(appended.elapsed());
    }
    latencies
}

/// Times every ack at the front of the queue that has completed already.
fn drain_completed(in_flight: &mut VecDeque<(Instant, AppendAck)>, latencies: &mut Vec<Duration>) {
    let mut context = Context::from_waker(Waker::noop());
    while let Some((appended, ack)) = in_flight.front_mut() {
        match Pin::new(ack).poll(&mut context) {
            Poll::Ready(result) => {
                result.expect("ack");
                latencies.push(appended.elapsed());
                in_flight.pop_front();
            }
            Poll::Pending => break,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
