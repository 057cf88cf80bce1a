//! The disk's own durability latency at a given write rate: the floor under
//! the publish latency of reliable topics, measured on the same disk.
//!
//! ```text
//! cargo run --release -p sava-storage --example fsync_latency -- \
//!     [--mbps 200] [--seconds 5] [--interval-ms 1] [--dir DIR]
//! ```
//!
//! Every interval it appends what the rate brings in that time to one file
//! with a single write and then `sync_data`, as a group commit with no
//! software around it would, and records how long the two took. `--dir`
//! (default: the current directory, where a broker run with no
//! configuration keeps `./sava-data`) should be on the broker's data disk;
//! on a tmpfs `sync_data` does nothing. A message arriving during a flush
//! waits for it and then for the next, which a flush that ran late makes
//! larger still, so a single committer's tail is at least about twice
//! this one's. It prints the percentiles and the rate it kept up.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[path = "support/flags.rs"]
mod flags;

struct Options {
    mbps: f64,
    seconds: f64,
    interval: Duration,
    dir: PathBuf,
}

fn parse_options() -> Options {
    let mut options = Options {
        mbps: 200.0,
        seconds: 5.0,
        interval: Duration::from_millis(1),
        dir: PathBuf::from("."),
    };
    for flag in flags::flags() {
        match flag.name.as_str() {
            "--mbps" => options.mbps = flag.parse(),
            "--seconds" => options.seconds = flag.parse(),
            "--interval-ms" => {
                options.interval = Duration::from_secs_f64(flag.parse::<f64>() / 1000.0)
            }
            "--dir" => options.dir = PathBuf::from(&flag.value),
            _ => flag.unknown(),
        }
    }
    assert!(
        options.mbps > 0.0 && options.seconds > 0.0,
        "rates and times must be positive"
    );
    options
}

fn main() {
    let options = parse_options();
    let path = options
        .dir
        .join(format!("fsync-latency-{}.dat", std::process::id()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .expect("the file can be created");
    let per_flush = (options.mbps * 1e6 * options.interval.as_secs_f64()).max(1.0) as usize;
    let block = vec![0x5au8; per_flush];

    let mut latencies = Vec::new();
    let started = Instant::now();
    let run = Duration::from_secs_f64(options.seconds);
    let mut due = started;
    let mut written = 0u64;
    while started.elapsed() < run {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        let flush = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("sync_data");
        latencies.push(flush.elapsed());
        written += per_flush as u64;
        // Behind schedule, the next flush starts at once, as under load.
        due += options.interval;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);

    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[index].as_secs_f64() * 1000.0
    };
    println!(
        "{} flushes of {} KB, {:.0} MB/s kept (asked {:.0}); write + sync_data p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        latencies.len(),
        per_flush / 1000,
        written as f64 / elapsed / 1e6,
        options.mbps,
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0),
    );
}
