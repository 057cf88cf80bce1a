//! WAL micro-benchmark: reliable appends through group commit against the
//! disk's raw sequential write + fsync bandwidth, measured in the same run.
//!
//! ```text
//! cargo run --release -p sava-storage --example wal_bench -- \
//!     [--seconds 5] [--writers 4] [--partitions 1] [--records 1] [--window 256] \
//!     [--sync-threads 4] [--rounds 5] [--dir DIR]
//! ```
//!
//! The run alternates `--rounds` slices of the baseline (1 MiB writes, each
//! followed by `sync_data`) and of WAL appends, `--seconds` of each in all,
//! so both see the same state of a shared disk.
//!
//! `--records` is records per append (one batch), `--window` the appends
//! each writer keeps in flight, as a producer with pipelined acks does.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sava_storage::{AppendAck, CommitConfig, GroupCommitter, LogConfig, PartitionLog, Record};

#[path = "support/flags.rs"]
mod flags;

const RECORD_BYTES: usize = 1024;
const BLOCK_BYTES: usize = 1024 * 1024;

struct Options {
    seconds: f64,
    writers: usize,
    partitions: usize,
    records: usize,
    window: usize,
    sync_threads: usize,
    rounds: usize,
    dir: PathBuf,
}

fn parse_options() -> Options {
    let mut options = Options {
        seconds: 5.0,
        writers: 4,
        partitions: 1,
        records: 1,
        window: 256,
        sync_threads: CommitConfig::default().sync_threads,
        rounds: 5,
        dir: std::env::temp_dir(),
    };
    for flag in flags::flags() {
        match flag.name.as_str() {
            "--seconds" => options.seconds = flag.parse(),
            "--writers" => options.writers = flag.parse(),
            "--partitions" => options.partitions = flag.parse(),
            "--records" => options.records = flag.parse(),
            "--window" => options.window = flag.parse(),
            "--sync-threads" => options.sync_threads = flag.parse(),
            "--rounds" => options.rounds = flag.parse(),
            "--dir" => options.dir = PathBuf::from(&flag.value),
            _ => flag.unknown(),
        }
    }
    options.partitions = options.partitions.clamp(1, options.writers.max(1));
    options.rounds = options.rounds.max(1);
    options
}

fn main() {
    let options = parse_options();
    let dir = tempfile::tempdir_in(&options.dir).expect("bench directory");
    let slice = Duration::from_secs_f64(options.seconds / options.rounds as f64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = CommitConfig {
        sync_threads: options.sync_threads,
        ..CommitConfig::default()
    };
    let committer = GroupCommitter::start(config).expect("committer");
    let partitions: Vec<Arc<Mutex<PartitionLog>>> = (0..options.partitions)
        .map(|i| {
            let path = dir.path().join(format!("partition-{i}"));
            let opened = PartitionLog::open(&path, LogConfig::default(), Arc::clone(&committer));
            Arc::new(Mutex::new(opened.expect("partition log").0))
        })
        .collect();

    // Alternate slices of both, so a noisy shared disk weighs on both alike.
    // The baseline file stays until the end: deleting a large file would
    // have its discards stall the fsyncs that follow.
    let mut baseline_file = File::create(dir.path().join("baseline.bin")).expect("baseline");
    let mut baseline = Baseline::default();
    let mut wal = WalTotals::default();
    for _ in 0..options.rounds {
        raw_write_fsync(&mut baseline_file, slice, &mut baseline);
        runtime.block_on(wal_appends(&options, &partitions, slice, &mut wal));
    }

    let stats = committer.stats();
    let baseline_mb_per_s = baseline.bytes as f64 / baseline.time.as_secs_f64() / 1e6;
    let wal_seconds = wal.time.as_secs_f64();
    let payload_mb_per_s = (wal.records * RECORD_BYTES as u64) as f64 / wal_seconds / 1e6;
    let disk_mb_per_s = stats.bytes as f64 / wal_seconds / 1e6;
    let flushes = stats.flushes.max(1);
    let mut latencies = wal.latencies;
    latencies.sort_unstable();
    let ms = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;

    println!(
        "baseline: sequential 1 MiB writes + sync_data: {:.1} MB/s ({} fsyncs, mean {:.2} ms)",
        baseline_mb_per_s,
        baseline.fsyncs,
        baseline.fsync_time.as_secs_f64() * 1e3 / baseline.fsyncs.max(1) as f64
    );
    println!(
        "wal: {} writers, {} partition(s), {} x 1 KiB records per append, window {}, {} rounds",
        options.writers, options.partitions, options.records, options.window, options.rounds
    );
    println!(
        "wal: {:.1} MB/s of payload ({:.1} MB/s on disk), {:.0} records/s",
        payload_mb_per_s,
        disk_mb_per_s,
        wal.records as f64 / wal_seconds
    );
    println!(
        "wal: {} flushes, {:.1} batches per flush, {:.0} KiB per flush, mean fsync {:.2} ms",
        stats.flushes,
        stats.batches_per_flush(),
        stats.bytes as f64 / flushes as f64 / 1024.0,
        stats.total_fsync_time.as_secs_f64() * 1e3 / flushes as f64
    );
    println!(
        "wal: append-to-durable latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(0.50),
        ms(0.99),
        ms(1.0)
    );
    println!(
        "ratio: wal payload / baseline = {:.2} (on-disk bytes: {:.2})",
        payload_mb_per_s / baseline_mb_per_s,
        disk_mb_per_s / baseline_mb_per_s
    );
}

#[derive(Default)]
struct Baseline {
    bytes: u64,
    fsyncs: u64,
    fsync_time: Duration,
    time: Duration,
}

/// Appends 1 MiB blocks to the file, `sync_data` after each, for `slice`.
fn raw_write_fsync(file: &mut File, slice: Duration, totals: &mut Baseline) {
    let block = vec![0xa5u8; BLOCK_BYTES];
    let started = Instant::now();
    while started.elapsed() < slice {
        file.write_all(&block).expect("baseline write");
        let synced = Instant::now();
        file.sync_data().expect("baseline fsync");
        totals.fsync_time += synced.elapsed();
        totals.bytes += BLOCK_BYTES as u64;
        totals.fsyncs += 1;
    }
    totals.time += started.elapsed();
}

#[derive(Default)]
struct WalTotals {
    records: u64,
    latencies: Vec<Duration>,
    time: Duration,
}

/// Runs the writers for `slice`, until every append they made is durable.
async fn wal_appends(
    options: &Options,
    partitions: &[Arc<Mutex<PartitionLog>>],
    slice: Duration,
    totals: &mut WalTotals,
) {
    let payload = Bytes::from(vec![0x5au8; RECORD_BYTES]);
    let started = Instant::now();
    let writers: Vec<_> = (0..options.writers)
        .map(|w| {
            let partition = Arc::clone(&partitions[w % partitions.len()]);
            let (payload, records, window) = (payload.clone(), options.records, options.window);
            tokio::spawn(writer(partition, payload, records, window, started + slice))
        })
        .collect();

    for writer in writers {
        let latencies = writer.await.expect("writer task");
        totals.records += latencies.len() as u64 * options.records as u64;
        totals.latencies.extend(latencies);
    }
    totals.time += started.elapsed();
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
                producer_name: "bench".into(),
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
