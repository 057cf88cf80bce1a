//! The disk's own durability latency at a given write rate: the floor under
//! the publish latency of reliable topics, measured on the same disk.
//!
//! ```text
//! cargo run --release -p sava-storage --example fsync_latency -- \
//!     [--mbps 200] [--seconds 5] [--chunk-kib 64] [--committers 1] [--dir DIR] \
//!     [--segment-mib 0] [--retention delete|reuse] [--keep 4]
//! ```
//!
//! The main thread appends chunks at the rate asked for, and `--committers`
//! threads each take every chunk written so far and call `sync_data`, as a
//! group commit with no software around it would. Each chunk's latency runs
//! from its write to the end of the sync that covered it, which is what a
//! message of a reliable topic waits for at the least. `--dir` (default:
//! the current directory, where a broker run with no configuration keeps
//! `./sava-data`) should be on the broker's data disk; on a tmpfs
//! `sync_data` does nothing. It prints the percentiles and the rate it kept.
//!
//! With `--segment-mib 0` (the default) everything goes to one growing
//! file. Otherwise the writes roll to a new file every that many MiB, as a
//! partition's segments do, and the sync that first covers a new file also
//! syncs the directory. Once a second, as the broker's retention pass does,
//! the files beyond the newest `--keep` are deleted all at once
//! (`--retention delete`) or kept for later rolls to write over
//! (`--retention reuse`, what `storage.spare_segments` does).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[path = "support/flags.rs"]
mod flags;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retention {
    Delete,
    Reuse,
}

struct Options {
    mbps: f64,
    seconds: f64,
    chunk_bytes: usize,
    committers: usize,
    dir: PathBuf,
    segment_bytes: u64,
    retention: Retention,
    keep: usize,
}

fn parse_options() -> Options {
    let mut options = Options {
        mbps: 200.0,
        seconds: 5.0,
        chunk_bytes: 64 * 1024,
        committers: 1,
        dir: PathBuf::from("."),
        segment_bytes: 0,
        retention: Retention::Delete,
        keep: 4,
    };
    for flag in flags::flags() {
        match flag.name.as_str() {
            "--mbps" => options.mbps = flag.parse(),
            "--seconds" => options.seconds = flag.parse(),
            "--chunk-kib" => options.chunk_bytes = flag.parse::<usize>() * 1024,
            "--committers" => options.committers = flag.parse(),
            "--dir" => options.dir = PathBuf::from(&flag.value),
            "--segment-mib" => options.segment_bytes = flag.parse::<u64>() << 20,
            "--keep" => options.keep = flag.parse(),
            "--retention" => {
                options.retention = match flag.value.as_str() {
                    "delete" => Retention::Delete,
                    "reuse" => Retention::Reuse,
                    other => panic!("--retention: '{other}' is not delete or reuse"),
                }
            }
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
    /// Files rolled away from with writes no sync covered yet.
    ended: Vec<Arc<File>>,
    /// A file was created since the last sync.
    new_file: bool,
    done: bool,
}

struct Shared {
    dir: PathBuf,
    file: Mutex<Arc<File>>,
    pending: Mutex<Pending>,
    wake: Condvar,
    latencies: Mutex<Vec<Duration>>,
}

/// The files of the run: the active one, those retention keeps, spares.
struct Files {
    dir: PathBuf,
    next_name: u64,
    live: Vec<PathBuf>,
    spares: Vec<PathBuf>,
}

impl Files {
    /// The next file to write, created or renamed from a spare.
    fn roll(&mut self) -> Arc<File> {
        let path = self.dir.join(format!("{:08}.seg", self.next_name));
        self.next_name += 1;
        let file = match self.spares.pop() {
            Some(spare) => {
                std::fs::rename(&spare, &path).expect("a spare can be renamed");
                OpenOptions::new().write(true).open(&path)
            }
            None => OpenOptions::new().write(true).create_new(true).open(&path),
        };
        self.live.push(path);
        Arc::new(file.expect("the next file can be opened"))
    }

    /// Retires the files beyond the newest `keep`, all at once.
    fn retire(&mut self, keep: usize, retention: Retention) {
        let count = self.live.len().saturating_sub(keep.max(1));
        for path in self.live.drain(..count) {
            match retention {
                Retention::Delete => std::fs::remove_file(&path).expect("delete"),
                Retention::Reuse => self.spares.push(path),
            }
        }
    }
}

fn main() {
    let options = parse_options();
    let dir = options
        .dir
        .join(format!("fsync-latency-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("the run's directory can be created");
    let mut files = Files {
        dir: dir.clone(),
        next_name: 0,
        live: Vec::new(),
        spares: Vec::new(),
    };
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        file: Mutex::new(files.roll()),
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

    let (written, elapsed) = write_at_rate(&options, &shared, &mut files);
    lock(&shared.pending).done = true;
    shared.wake.notify_all();
    for committer in committers {
        committer.join().expect("committer");
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(&options, &shared, written, elapsed);
}

/// Writes chunks at the rate asked for until the run ends; returns the
/// bytes written and the seconds it took.
fn write_at_rate(options: &Options, shared: &Shared, files: &mut Files) -> (u64, f64) {
    let chunk = vec![0x5au8; options.chunk_bytes];
    let every = Duration::from_secs_f64(options.chunk_bytes as f64 / (options.mbps * 1e6));
    let run = Duration::from_secs_f64(options.seconds);
    let started = Instant::now();
    let (mut due, mut last_retention) = (started, started);
    let (mut written, mut position) = (0u64, 0u64);

    while started.elapsed() < run {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        // Behind schedule, the next write follows at once, as under load.
        due += every;

        let at = Instant::now();
        if options.segment_bytes > 0 && position >= options.segment_bytes {
            let ended = std::mem::replace(&mut *lock(&shared.file), files.roll());
            let mut pending = lock(&shared.pending);
            pending.ended.push(ended);
            pending.new_file = true;
            position = 0;
        }
        let file = Arc::clone(&lock(&shared.file));
        file.write_all_at(&chunk, position).expect("write");
        position += chunk.len() as u64;
        written += chunk.len() as u64;
        lock(&shared.pending).written.push(at);
        shared.wake.notify_one();

        if last_retention.elapsed() >= Duration::from_secs(1) {
            last_retention = Instant::now();
            files.retire(options.keep, options.retention);
        }
    }
    (written, started.elapsed().as_secs_f64())
}

/// One committer: syncs whatever was written since, until told to stop.
fn commit(shared: &Shared) {
    loop {
        let (covered, ended, new_file) = {
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
            let new_file = std::mem::take(&mut pending.new_file);
            let ended = std::mem::take(&mut pending.ended);
            (std::mem::take(&mut pending.written), ended, new_file)
        };

        for file in ended {
            file.sync_data().expect("sync_data");
        }
        Arc::clone(&lock(&shared.file))
            .sync_data()
            .expect("sync_data");
        if new_file {
            sync_dir(&shared.dir);
        }
        let now = Instant::now();
        lock(&shared.latencies).extend(covered.iter().map(|at| now - *at));
    }
}

fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .expect("the directory can be synced");
}

fn report(options: &Options, shared: &Shared, written: u64, elapsed: f64) {
    let mut latencies = std::mem::take(&mut *lock(&shared.latencies));
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[index].as_secs_f64() * 1000.0
    };
    let files = match (options.segment_bytes, options.retention) {
        (0, _) => "one file".to_owned(),
        (bytes, Retention::Delete) => format!("{} MiB files, deleted", bytes >> 20),
        (bytes, Retention::Reuse) => format!("{} MiB files, reused", bytes >> 20),
    };
    println!(
        "{} chunks of {} KiB, {files}, {} committer(s), {:.0} MB/s kept (asked {:.0}); write to durable p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
