//! Object storage tier benchmark: replay of offloaded history through the
//! tier (ranged GETs of row groups, decode, readahead) against the same
//! server's raw GET throughput for the same objects, measured in one run,
//! plus the bytes stored per byte produced.
//!
//! ```text
//! eval "$(localstack/start.sh moto)"
//! cargo run --release -p sava-storage --example tier_bench -- \
//!     [--megabytes 64] [--segment-megabytes 8] [--row-group-kib 1024] \
//!     [--rounds 3] [--payload text|random] [--cache-mib 64] [--url s3://sava/bench]
//! ```
//!
//! Messages are 1 KiB. `text` (the default) is log lines whose ids,
//! numbers and trace tokens vary, so they compress the way real text
//! payloads do, not better: each byte fetched then decodes to about five
//! bytes of messages. `random` is incompressible bytes (encrypted or
//! already compressed payloads), which zstd stores as they are, so the
//! replay's cost per byte fetched is the rest of the decoding. Each round
//! reads every object twice, alternating the order: once with plain GETs of
//! whole objects, once through a fresh tier (empty cache) from offset 0 to
//! the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sava_metadata::{Catalog, EmbeddedStore};
use sava_storage::{
    CommitConfig, FsyncMode, GroupCommitter, LogConfig, ObjectStoreConfig, ObjectTier,
    PartitionLog, Record, Tier, TierConfig,
};

#[path = "support/flags.rs"]
mod flags;

const MESSAGE_BYTES: usize = 1024;
const TOPIC: &str = "/bench/replay";

struct Options {
    megabytes: u64,
    segment_megabytes: u64,
    row_group_kib: usize,
    rounds: usize,
    random: bool,
    cache_mib: usize,
    url: String,
}

fn parse_options() -> Options {
    let mut options = Options {
        megabytes: 64,
        segment_megabytes: 8,
        row_group_kib: 1024,
        rounds: 3,
        random: false,
        cache_mib: TierConfig::default().cache_bytes >> 20,
        url: std::env::var("SAVA_STORAGE__OBJECT_STORE")
            .unwrap_or_else(|_| "s3://sava/bench".into()),
    };
    for flag in flags::flags() {
        match flag.name.as_str() {
            "--megabytes" => options.megabytes = flag.parse(),
            "--segment-megabytes" => options.segment_megabytes = flag.parse(),
            "--row-group-kib" => options.row_group_kib = flag.parse(),
            "--rounds" => options.rounds = flag.parse(),
            "--payload" => {
                options.random = match flag.value.as_str() {
                    "text" => false,
                    "random" => true,
                    other => {
                        eprintln!("unknown --payload {other}: expected text or random");
                        std::process::exit(2);
                    }
                }
            }
            "--cache-mib" => options.cache_mib = flag.parse(),
            "--url" => options.url = flag.value,
            _ => flag.unknown(),
        }
    }
    options
}

/// A message of 1 KiB: log lines, or random bytes when `random`.
fn message(offset: u64, random: bool) -> Record {
    let mut state = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let payload = if random {
        let words: Vec<u8> = (0..MESSAGE_BYTES / 8)
            .flat_map(|_| next().to_le_bytes())
            .collect();
        Bytes::from(words)
    } else {
        Bytes::from(log_lines(next))
    };
    Record {
        offset,
        publish_time_ms: 1_764_774_000_000 + offset / 10,
        producer_id: 1,
        producer_name: "bench".into(),
        key: Some(format!("user-{}", offset % 5000)),
        attributes: vec![("service".into(), "orders".into())],
        schema_id: None,
        schema_version: None,
        payload,
    }
}

/// About 1 KiB of log lines: fixed words around ids, numbers and a hex
/// token that vary from message to message, as real logs do.
fn log_lines(mut next: impl FnMut() -> u64) -> String {
    let mut payload = String::with_capacity(MESSAGE_BYTES + 160);
    while payload.len() < MESSAGE_BYTES {
        let line = format!(
            "ts=2026-12-03T15:{:02}:{:02}.{:03}Z level=info msg=\"request handled\" path=/api/v1/orders/{} status={} duration_ms={} user=u{} trace={:016x}\n",
            next() % 60,
            next() % 60,
            next() % 1000,
            next() % 100_000,
            [200, 200, 200, 201, 404, 500][(next() % 6) as usize],
            next() % 2000,
            next() % 50_000,
            next()
        );
        payload.push_str(&line);
    }
    payload.truncate(MESSAGE_BYTES);
    payload
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let options = parse_options();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let committer = GroupCommitter::start(CommitConfig {
        mode: FsyncMode::Never,
        ..CommitConfig::default()
    })
    .expect("committer");
    let config = LogConfig {
        segment_bytes: options.segment_megabytes << 20,
        ..LogConfig::default()
    };
    let (log, _) = PartitionLog::open(dir.path(), config, committer).expect("log");
    let log = Arc::new(log);

    let count = (options.megabytes << 20) / MESSAGE_BYTES as u64;
    let mut offset = 0;
    while offset < count {
        let batch: Vec<Record> = (offset..(offset + 256).min(count))
            .map(|offset| message(offset, options.random))
            .collect();
        offset += batch.len() as u64;
        log.append(&batch).expect("append").await.expect("durable");
    }
    log.seal_active().expect("seal");
    let produced: u64 = count * MESSAGE_BYTES as u64;

    let objects =
        ObjectTier::open(&options.url, &ObjectStoreConfig::default()).expect("object store");
    let tier_config = TierConfig {
        row_group_bytes: options.row_group_kib * 1024,
        cache_bytes: options.cache_mib << 20,
        ..TierConfig::default()
    };
    let catalog = Catalog::new(Arc::new(EmbeddedStore::open_temporary().expect("catalog")));
    let writer = Tier::new(objects.clone(), catalog.clone(), tier_config.clone());
    let offload_started = Instant::now();
    for segment in log.segments().iter().filter(|s| s.sealed) {
        writer
            .offload(TOPIC, &log, segment, 0)
            .await
            .expect("offload");
    }
    let offload_time = offload_started.elapsed();
    let segments = writer.segments(TOPIC).await.expect("segments");
    let stored: u64 = segments.iter().map(|s| s.object_bytes).sum();

    println!(
        "{} messages of {MESSAGE_BYTES} B ({} MiB) in {} objects of {} row groups each",
        count,
        produced >> 20,
        segments.len(),
        segments[0].row_groups.len()
    );
    println!(
        "offload: {:.1} MiB/s of messages; stored/produced = {:.3}",
        produced as f64 / offload_time.as_secs_f64() / 1048576.0,
        stored as f64 / produced as f64
    );

    let (mut raw, mut replay) = (Duration::ZERO, Duration::ZERO);
    let (mut gets_total, mut get_micros) = (0u64, 0u64);
    for round in 0..options.rounds {
        let raw_first = round % 2 == 0;
        for pass in 0..2 {
            if (pass == 0) == raw_first {
                let started = Instant::now();
                for segment in &segments {
                    let bytes = objects.get(&segment.object_key).await.expect("get");
                    assert_eq!(bytes.len() as u64, segment.object_bytes);
                }
                raw += started.elapsed();
            } else {
                let reader = Tier::new(objects.clone(), catalog.clone(), tier_config.clone());
                let started = Instant::now();
                let mut next = 0;
                while next < count {
                    let records = reader.read(&segments, next, 4096).await.expect("read");
                    next = records.last().expect("records").offset + 1;
                }
                replay += started.elapsed();
                let stats = reader.stats();
                let gets = stats.gets.load(std::sync::atomic::Ordering::Relaxed);
                let micros = stats
                    .get_micros_total
                    .load(std::sync::atomic::Ordering::Relaxed);
                gets_total += gets;
                get_micros += micros;
            }
        }
    }
    let rate =
        |time: Duration| (stored * options.rounds as u64) as f64 / time.as_secs_f64() / 1048576.0;
    println!(
        "raw GET of whole objects: {:.1} MiB/s of objects",
        rate(raw)
    );
    println!(
        "replay through the tier:  {:.1} MiB/s of objects ({:.1} MiB/s of messages)",
        rate(replay),
        rate(replay) * produced as f64 / stored as f64
    );
    println!(
        "replay made {} ranged GETs per round, {:.1} ms each on average (readahead overlaps them)",
        gets_total / options.rounds as u64,
        get_micros as f64 / gets_total.max(1) as f64 / 1000.0
    );
    println!(
        "replay / raw GET = {:.2}",
        raw.as_secs_f64() / replay.as_secs_f64()
    );
}
