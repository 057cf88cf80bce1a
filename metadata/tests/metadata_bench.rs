//! A benchmark, ignored by default, of the metadata operations the broker
//! leans on, on the embedded store and on a local etcd (started as the etcd
//! tests start it), printed side by side:
//!
//! - cursor updates: one transaction reading and rewriting one small value;
//! - cursor batches: one transaction blindly writing 100 cursors;
//! - point reads: one transaction reading one key;
//! - topic lookups: what a broker reads to answer a lookup (the topic's
//!   record and its ownership, two transactions through the catalog).
//!
//! `cargo test -p sava-metadata --test metadata_bench -- --ignored --nocapture`
//! measures for `SAVA_BENCH_SECONDS` (3) seconds each with `SAVA_BENCH_TASKS`
//! (8) concurrent tasks, each on keys of its own so that they never conflict.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use sava_metadata::etcd::test_server::EtcdTestServer;
use sava_metadata::{
    Catalog, DispatchMode, EmbeddedStore, EtcdStore, MetadataError, MetadataStore, Result,
    TopicRecord, transact,
};

const BATCH: usize = 100;

struct Figures {
    cursor_updates: f64,
    cursor_batches: f64,
    point_reads: f64,
    topic_lookups: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
async fn cursor_updates_batches_and_point_reads_per_second_on_embedded_and_etcd() {
    let seconds = env_or("SAVA_BENCH_SECONDS", 3);
    let tasks = env_or("SAVA_BENCH_TASKS", 8);
    let duration = Duration::from_secs(seconds as u64);

    let embedded = EmbeddedStore::open_temporary().expect("open a temporary store");
    println!("embedded: measuring for {seconds} s each with {tasks} tasks");
    let embedded = measure_all(Arc::new(embedded), duration, tasks)
        .await
        .expect("measure embedded");

    let server = match EtcdTestServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("cannot start etcd for the benchmark: {error}"),
    };
    let etcd = EtcdStore::open(&server.url("bench"))
        .await
        .expect("open the test etcd");
    println!("etcd {}: measuring", server.endpoint());
    let etcd = measure_all(Arc::new(etcd), duration, tasks)
        .await
        .expect("measure etcd");

    println!();
    println!(
        "{:<34} {:>12} {:>12}",
        "operations per second", "embedded", "etcd"
    );
    let rows = [
        (
            "cursor updates (1 rmw / tx)",
            embedded.cursor_updates,
            etcd.cursor_updates,
        ),
        (
            "cursor batches (100 / tx)",
            embedded.cursor_batches,
            etcd.cursor_batches,
        ),
        (
            "  = cursors written",
            embedded.cursor_batches * BATCH as f64,
            etcd.cursor_batches * BATCH as f64,
        ),
        (
            "point reads (1 get / tx)",
            embedded.point_reads,
            etcd.point_reads,
        ),
        (
            "topic lookups (record + owner)",
            embedded.topic_lookups,
            etcd.topic_lookups,
        ),
    ];
    for (name, embedded, etcd) in rows {
        println!("{name:<34} {embedded:>12.0} {etcd:>12.0}");
    }
}

fn topic_record(name: &str) -> TopicRecord {
    TopicRecord {
        name: name.to_owned(),
        partitions: 0,
        partition_of: None,
        dispatch_mode: DispatchMode::Reliable,
        schema: None,
        created_at_ms: 0,
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn measure_all(
    store: Arc<dyn MetadataStore>,
    duration: Duration,
    tasks: usize,
) -> Result<Figures> {
    let cursor_updates = measure(duration, tasks, {
        let store = Arc::clone(&store);
        move |task, _| update_cursor(Arc::clone(&store), task)
    })
    .await?;

    let cursor_batches = measure(duration, tasks, {
        let store = Arc::clone(&store);
        move |task, round| write_batch(Arc::clone(&store), task, round)
    })
    .await?;

    let point_reads = measure(duration, tasks, {
        let store = Arc::clone(&store);
        move |task, _| read_cursor(Arc::clone(&store), task)
    })
    .await?;

    let catalog = Catalog::new(Arc::clone(&store));
    catalog.ensure_namespace("default").await?;
    for task in 0..tasks {
        let name = format!("/default/bench-{task}");
        match catalog.create_topic(topic_record(&name)).await {
            Ok(_) | Err(MetadataError::AlreadyExists { .. }) => {}
            Err(error) => return Err(error),
        }
        let epoch = catalog.ownership(&name).await?.map_or(0, |o| o.epoch);
        catalog.assign(&name, "bench-broker", epoch).await?;
    }
    let topic_lookups = measure(duration, tasks, move |task, _| {
        let catalog = catalog.clone();
        async move {
            let name = format!("/default/bench-{task}");
            catalog.topic(&name).await?;
            catalog.ownership(&name).await?;
            Ok(())
        }
    })
    .await?;

    Ok(Figures {
        cursor_updates,
        cursor_batches,
        point_reads,
        topic_lookups,
    })
}

/// Runs `operation` in `tasks` concurrent loops for `duration` and returns
/// the operations completed per second.
async fn measure<F, Fut>(duration: Duration, tasks: usize, operation: F) -> Result<f64>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;

    let loops: Vec<_> = (0..tasks)
        .map(|task| {
            let operation = operation.clone();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut round = 0;
                while Instant::now() < deadline {
                    operation(task, round).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    round += 1;
                }
                Ok::<_, sava_metadata::MetadataError>(())
            })
        })
        .collect();
    for task in loops {
        task.await.expect("a benchmark task panicked")?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn cursor_key(task: usize, index: usize) -> Vec<u8> {
    format!("bench/cursors/{task:03}/{index:03}").into_bytes()
}

/// Reads a task's cursor and writes it one further.
async fn update_cursor(store: Arc<dyn MetadataStore>, task: usize) -> Result<()> {
    transact(store.as_ref(), |tx| {
        let key = cursor_key(task, 0);
        async move {
            let position = match tx.get(&key).await? {
                Some(value) => u64::from_le_bytes(value.as_ref().try_into().unwrap_or_default()),
                None => 0,
            };
            tx.set(&key, &(position + 1).to_le_bytes());
            Ok(())
        }
        .boxed()
    })
    .await
}

/// Writes 100 of a task's cursors without reading them.
async fn write_batch(store: Arc<dyn MetadataStore>, task: usize, round: u64) -> Result<()> {
    transact(store.as_ref(), |tx| {
        async move {
            for index in 0..BATCH {
                tx.set(&cursor_key(task, index), &round.to_le_bytes());
            }
            Ok(())
        }
        .boxed()
    })
    .await
}

async fn read_cursor(store: Arc<dyn MetadataStore>, task: usize) -> Result<()> {
    let mut tx = store.begin().await?;
    let value = tx.get(&cursor_key(task, 0)).await?;
    assert!(value.is_some(), "the cursor updates wrote this key");
    Ok(())
}
