//! The bench over the native API, through this crate's own client.
//!
//! Producers are created first (they create the topic), then consumers
//! subscribe, and only then does the clock start and the producing begin.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::future::try_join_all;
use futures::stream::FuturesUnordered;
use sava_client::{Client, Consumer, Message, Producer, SendFuture, StartPosition};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::stats::{Meter, Tally, published_latency, stamped_latency};
use super::{Mode, Outcome, Payloads, Plan};

/// How long a consumer waits for a message before checking whether to stop.
const POLL: Duration = Duration::from_millis(100);

pub(crate) async fn run(client: &Client, plan: &Plan, meter: &Arc<Meter>) -> Result<Outcome> {
    let producers = match plan.mode {
        Mode::Produce | Mode::E2e => {
            try_join_all((0..plan.producers).map(|index| create_producer(client, plan, index)))
                .await?
        }
        Mode::Consume => Vec::new(),
    };
    let consumers = match plan.mode {
        Mode::Consume | Mode::E2e => {
            try_join_all((0..plan.consumers).map(|index| subscribe(client, plan, index))).await?
        }
        Mode::Produce => Vec::new(),
    };

    let started = Instant::now();
    let deadline = plan.deadline(started);
    let consuming: Vec<JoinHandle<Tally>> = consumers
        .into_iter()
        .map(|consumer| tokio::spawn(consume(consumer, plan.clone(), deadline, Arc::clone(meter))))
        .collect();
    let producing: Vec<JoinHandle<Tally>> = producers
        .into_iter()
        .enumerate()
        .map(|(index, producer)| {
            let quota = plan.quota(index);
            tokio::spawn(produce(
                producer,
                plan.clone(),
                quota,
                deadline,
                Arc::clone(meter),
            ))
        })
        .collect();

    let produced = join_tallies(producing).await;
    if plan.mode != Mode::Consume {
        meter.producers_finished(produced.messages);
    }
    let consumed = join_tallies(consuming).await;
    Ok(Outcome::new(plan, produced, consumed, started))
}

async fn create_producer(client: &Client, plan: &Plan, index: usize) -> Result<Producer> {
    let mut builder = client
        .producer(&plan.topic)
        .name(format!("bench-{}-{index}", std::process::id()))
        .reliable(plan.reliable)
        .max_in_flight_batches(plan.in_flight);
    if let Some(partitions) = plan.partitions {
        builder = builder.partitions(partitions);
    }
    if let Some(bytes) = plan.batch_bytes {
        builder = builder.batch_max_bytes(bytes);
    }
    if let Some(linger) = plan.linger {
        builder = builder.linger(linger);
    }
    builder
        .create()
        .await
        .with_context(|| format!("cannot create bench producer {index} on {}", plan.topic))
}

async fn subscribe(client: &Client, plan: &Plan, index: usize) -> Result<Consumer> {
    // A backlog is read from its start; e2e only wants what it publishes.
    let start = match plan.mode {
        Mode::Consume => StartPosition::Earliest,
        Mode::Produce | Mode::E2e => StartPosition::Latest,
    };
    client
        .consumer(&plan.topic, &plan.subscription)
        .name(format!("bench-{}-{index}", std::process::id()))
        .subscription_type(plan.subscription_type)
        .start(start)
        .subscribe()
        .await
        .with_context(|| format!("cannot subscribe bench consumer {index} to {}", plan.topic))
}

/// Sends until the quota or the deadline, while a collector task awaits
/// the acks and measures them.
async fn produce(
    producer: Producer,
    plan: Plan,
    quota: Option<u64>,
    deadline: Option<Instant>,
    meter: Arc<Meter>,
) -> Tally {
    let (acks, outcomes) = mpsc::channel(16 * 1024);
    let collector = tokio::spawn(collect_acks(outcomes, meter));
    let mut payloads = Payloads::new(plan.size, plan.stamps_payloads());
    let mut failure = None;

    let mut sent = 0;
    while quota.is_none_or(|quota| sent < quota) {
        let sent_at = Instant::now();
        if deadline.is_some_and(|deadline| sent_at >= deadline) {
            break;
        }
        match producer.send(Message::new(payloads.next())).await {
            Ok(pending) => {
                sent += 1;
                if acks.send((sent_at, pending)).await.is_err() {
                    break;
                }
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    drop(acks);

    let closed = producer.close().await;
    let mut tally = collector.await.unwrap_or_else(|_| Tally::new());
    if let Some(error) = failure {
        tally.error(error);
    }
    if let Err(error) = closed {
        tally.error(error);
    }
    tally
}

/// Awaits acks as they come, in whatever order, and records their latency.
async fn collect_acks(
    mut outcomes: mpsc::Receiver<(Instant, SendFuture)>,
    meter: Arc<Meter>,
) -> Tally {
    let mut tally = Tally::new();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            next = outcomes.recv(), if open => match next {
                Some((sent_at, future)) => {
                    pending.push(async move { (sent_at, future.await) });
                }
                None => open = false,
            },
            Some((sent_at, outcome)) = pending.next(), if !pending.is_empty() => {
                match outcome {
                    Ok(_) => {
                        let now = Instant::now();
                        tally.record(now.duration_since(sent_at), now);
                        meter.acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => tally.error(error),
                }
            },
            else => break,
        }
    }
    tally
}

/// Receives and acks until the meter says stop.
async fn consume(
    mut consumer: Consumer,
    plan: Plan,
    deadline: Option<Instant>,
    meter: Arc<Meter>,
) -> Tally {
    let mut tally = Tally::new();
    let mut last_message_at = Instant::now();
    while !meter.consumers_should_stop(&plan, deadline, last_message_at) {
        let message = match tokio::time::timeout(POLL, consumer.recv()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                tally.error(error);
                break;
            }
            Ok(None) => break,
            Err(_) => continue,
        };

        let latency = match plan.mode {
            Mode::E2e => stamped_latency(&message.payload),
            Mode::Produce | Mode::Consume => published_latency(message.publish_time),
        };
        last_message_at = Instant::now();
        tally.record(latency, last_message_at);
        meter.received.fetch_add(1, Ordering::Relaxed);

        // The client sends acks only on reliable topics, whatever the flag.
        if let Err(error) = consumer.ack(&message) {
            tally.error(error);
        }
    }
    tally.dropped = consumer.dropped_messages();
    consumer.close().await;
    tally
}

/// Waits for every task and adds up what they counted.
pub(crate) async fn join_tallies(tasks: Vec<JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::new();
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(tally),
            Err(error) => total.error(format!("a bench task failed: {error}")),
        }
    }
    total
}
