//! A writer killed with SIGKILL loses nothing it had acknowledged.
//!
//! The test spawns its own binary as the writer (switched by an environment
//! variable), reads the offsets it prints after each ack, kills it mid-stream,
//! reopens the log and checks every printed offset reads back.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sava_storage::FsyncMode;

const CHILD_DIR: &str = "SAVA_STORAGE_TEST_WRITER_DIR";
const TEST_NAME: &str = "acknowledged_appends_survive_a_sigkill_of_the_writer";

#[test]
fn acknowledged_appends_survive_a_sigkill_of_the_writer() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        write_until_killed(Path::new(&dir));
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("writer starts");

    // Read acks until enough came in, then kill the writer mid-stream.
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("writer output");
        if let Some(offset) = line.strip_prefix("acked ") {
            acked.push(offset.parse::<u64>().expect("an offset"));
        }
        if acked.len() >= 1500 {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("writer ends");
    assert!(
        acked.len() >= 1500,
        "the writer stopped early after {} acks",
        acked.len()
    );

    let committer = committer(FsyncMode::Always);
    let log = open(dir.path(), small_config(16 * 1024), &committer);
    let last_acked = *acked.last().expect("acks");
    assert!(log.next_offset() > last_acked);
    assert!(log.segments().len() > 2, "the writer rolled segments");
    assert_records(&read_all(&log, 0), 0..log.next_offset());
}

/// The child: appends batches of 1 to 3 records and prints the last offset
/// of each once acknowledged, until killed (or, as a safety net, 60 s).
fn write_until_killed(dir: &Path) {
    let committer = committer(FsyncMode::Always);
    let log = open(dir, small_config(16 * 1024), &committer);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();

    while started.elapsed() < Duration::from_secs(60) {
        let first = log.next_offset();
        let count = 1 + first % 3;
        let ack = log.append(&batch(first, count)).expect("append");
        runtime.block_on(ack).expect("ack");
        writeln!(stdout, "acked {}", first + count - 1).expect("print");
        stdout.flush().expect("flush");
    }
}
