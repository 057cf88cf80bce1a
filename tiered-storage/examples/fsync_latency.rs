//! The disk's own durability latency at a given write rate: the floor under
//! the publish latency of reliable topics, measured on the same disk.
//!
//! ```text
//! cargo run --release -p sava-storage --example fsync_latency -- \
//!     [--mbps 200] [--seconds 5] [--chunk-kib 64] [--committers 1] [--dir DIR]
//! ```
//!
//! The main thread appends chunks to one file at the rate asked for, and
//! `--committers` threads each take every chunk written so far and call
//! `sync_data`, as a group commit with no software around it would. Each
//! chunk's latency runs from its write to the end of the sync that covered
//! it, which is what a message of a reliable topic waits for at the least.
//! `--dir` (default: the current directory, where a broker run with no
//! configuration keeps `./sava-data`) should be on the broker's data disk;
//! on a tmpfs `sync_data` does nothing. It prints the percentiles and the
//! rate it kept up.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[path = "support/flags.rs"]
mod flags;

struct Options {
    mbps: f64,
    seconds: f64,
    chunk_bytes: usize,
    committers: usize,
    dir: PathBuf,
}

fn parse_options() -> Options {
    let mut options = Options {
        mbps: 200.0,
        seconds: 5.0,
        chunk_bytes: 64 * 1024,
        committers: 1,
        dir: PathBuf::from("."),
    };
    for flag in flags::flags() {
        match flag.name.as_str() {
            "--mbps" => options.mbps = flag.parse(),
            "--seconds" => options.seconds = flag.parse(),
            "--chunk-kib" => options.chunk_bytes = flag.parse::<usize>() * 1024,
            "--committers" => options.committers = flag.parse(),
            "--dir" => options.dir = PathBuf::from(&flag.value),
            _ => flag.unknown(),
        }
    }
    assert!(
        options.mbps > 0.0 && options.seconds > 0.0 && options.chunk_bytes > 0,
        "rates, times and sizes must be positive"
    );
    options.committers = options.committers.max(1);
    options
}

/// Chunks written and not yet covered by a sync, by their write time.
#[derive(Default)]
struct Pending {
    written: Vec<Instant>,
    done: bool,
}

struct Shared {
    file: File,
    pending: Mutex<Pending>,
    wake: Condvar,
    latencies: Mutex<Vec<Duration>>,
}

fn main() {
    let options = parse_options();
    let path = options
        .dir
        .join(format!("fsync-latency-{}.dat", std::process::id()));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .expect("the file can be created");
    let shared = Arc::new(Shared {
        file,
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        latencies: Mutex::new(Vec::new()),
    });
    let committers: Vec<_> = (0..options.committers)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || commit(&shared))
        })
        .collect();

    let chunk = vec![0x5au8; options.chunk_bytes];
    let every = Duration::from_secs_f64(options.chunk_bytes as f64 / (options.mbps * 1e6));
    let run = Duration::from_secs_f64(options.seconds);
    let started = Instant::now();
    let mut due = started;
    let mut written = 0u64;
    while started.elapsed() < run {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        // Behind schedule, the next write follows at once, as under load.
        due += every;
        let at = Instant::now();
        (&shared.file).write_all(&chunk).expect("write");
        written += chunk.len() as u64;
        lock(&shared.pending).written.push(at);
        shared.wake.notify_one();
    }
    let elapsed = started.elapsed().as_secs_f64();
    lock(&shared.pending).done = true;
    shared.wake.notify_all();
    for committer in committers {
        committer.join().expect("committer");
    }
    let _ = std::fs::remove_file(&path);

    let mut latencies = std::mem::take(&mut *lock(&shared.latencies));
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[index].as_secs_f64() * 1000.0
    };
    println!(
        "{} chunks of {} KiB, {} committer(s), {:.0} MB/s kept (asked {:.0}); write to durable p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        latencies.len(),
        options.chunk_bytes / 1024,
        options.committers,
        written as f64 / elapsed / 1e6,
        options.mbps,
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0),
    );
}

/// One committer: syncs whatever was written since, until told to stop.
fn commit(shared: &Shared) {
    loop {
        let covered = {
            let mut pending = lock(&shared.pending);
            while pending.written.is_empty() && !pending.done {
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if pending.written.is_empty() {
                return;
            }
            std::mem::take(&mut pending.written)
        };
        shared.file.sync_data().expect("sync_data");
        let now = Instant::now();
        lock(&shared.latencies).extend(covered.iter().map(|at| now - *at));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
