//! The bench over the native API, through this crate's own client.
//!
//! Producers are created first (they create the topic), then consumers
//! subscribe, and only then does the clock start and the producing begin.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::FutureExt;
use futures::future::try_join_all;
use sava_client::{Client, Consumer, Message, Producer, SendFuture, StartPosition};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::stats::{Meter, Tally, published_latency, stamped_latency};
use super::{Mode, Outcome, Pace, Payloads, Plan};

/// How long a consumer waits for a message before checking whether to stop.
const POLL: Duration = Duration::from_millis(100);

/// Most messages a consumer times with one reading of the clock.
const CLOCK_EVERY: u32 = 32;

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
            let pace = plan.pace(index, started);
            tokio::spawn(produce(producer, plan.clone(), pace, Arc::clone(meter)))
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
        .reliable(plan.reliable);
    if let Some(in_flight) = plan.in_flight {
        builder = builder.max_in_flight_batches(in_flight);
    }
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
        .credits(plan.credits)
        .start(start)
        .subscribe()
        .await
        .with_context(|| format!("cannot subscribe bench consumer {index} to {}", plan.topic))
}

/// Sends until the quota or the deadline, at the pacer's rate if any. The
/// futures of the messages wait in send order; after each send the settled
/// ones at the front are recorded, so each ack is timed within one send of
/// its arrival without a second task or a future per message to poll.
/// (With several partitions a late answer on one holds back the recording
/// of the others until it arrives, which adds at most that skew to their
/// latency.) Latency runs from the call to `send`, so time spent waiting
/// for room in the in-flight window counts.
async fn produce(producer: Producer, plan: Plan, pace: Pace, meter: Arc<Meter>) -> Tally {
    let (quota, deadline) = (pace.quota, pace.deadline);
    let mut tally = Tally::new();
    let mut waiting: VecDeque<(Instant, SendFuture)> = VecDeque::new();
    let mut payloads = Payloads::new(plan.size, plan.stamps_payloads());
    let mut failure = None;

    let mut sent = 0;
    while quota.is_none_or(|quota| sent < quota) {
        if let Some(due) = pace.due(sent) {
            wait_recording(due, &mut waiting, &mut tally, &meter).await;
        }
        let sent_at = Instant::now();
        if deadline.is_some_and(|deadline| sent_at >= deadline) {
            break;
        }
        match producer.send(Message::new(payloads.next(sent_at))).await {
            Ok(future) => {
                sent += 1;
                waiting.push_back((sent_at, future));
                record_settled(&mut waiting, &mut tally, &meter);
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }

    while let Some((sent_at, future)) = waiting.pop_front() {
        let outcome = future.await;
        record(sent_at, outcome, Instant::now(), &mut tally, &meter);
    }
    if let Err(error) = producer.close().await {
        tally.error(error);
    }
    if let Some(error) = failure {
        tally.error(error);
    }
    tally
}

/// Waits until `due`, recording acks as they arrive meanwhile, so that a
/// paced run times them as closely as one at full speed.
async fn wait_recording(
    due: Instant,
    waiting: &mut VecDeque<(Instant, SendFuture)>,
    tally: &mut Tally,
    meter: &Meter,
) {
    loop {
        record_settled(waiting, tally, meter);
        let Some((_, front)) = waiting.front_mut() else {
            tokio::time::sleep_until(due).await;
            return;
        };
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(due) => return,
            outcome = front => {
                let (sent_at, _) = waiting.pop_front().expect("the front was just polled");
                record(sent_at, outcome, Instant::now(), tally, meter);
            }
        }
    }
}

/// Records the futures at the front of `waiting` that are settled.
fn record_settled(waiting: &mut VecDeque<(Instant, SendFuture)>, tally: &mut Tally, meter: &Meter) {
    let mut now = None;
    while waiting
        .front()
        .is_some_and(|(_, future)| future.is_settled())
    {
        let (sent_at, future) = waiting.pop_front().expect("the front was just seen");
        let outcome = future
            .now_or_never()
            .expect("a settled future is ready at once");
        let now = *now.get_or_insert_with(Instant::now);
        record(sent_at, outcome, now, tally, meter);
    }
}

fn record(
    sent_at: Instant,
    outcome: sava_client::Result<sava_client::MessageId>,
    now: Instant,
    tally: &mut Tally,
    meter: &Meter,
) {
    match outcome {
        Ok(_) => {
            tally.record(now.duration_since(sent_at), now);
            meter.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => tally.error(error),
    }
}

/// Receives and acks until the meter says stop. The clock is read once
/// for a run of messages that were already waiting (at most
/// [`CLOCK_EVERY`]), not for each one.
async fn consume(
    mut consumer: Consumer,
    plan: Plan,
    deadline: Option<Instant>,
    meter: Arc<Meter>,
) -> Tally {
    let mut tally = Tally::new();
    let mut clock = Instant::now();
    let mut last_message_at = clock;
    let mut unclocked = 0;
    loop {
        let check = unclocked == 0 || meter.all_received();
        if check && meter.consumers_should_stop(&plan, deadline, last_message_at, clock) {
            break;
        }
        let next = match consumer.try_recv() {
            Some(next) => next,
            None => {
                let waited = tokio::time::timeout(POLL, consumer.recv()).await;
                clock = Instant::now();
                unclocked = 0;
                match waited {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(_) => continue,
                }
            }
        };
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                tally.error(error);
                break;
            }
        };

        let latency = match plan.mode {
            Mode::E2e => stamped_latency(&message.payload, clock),
            Mode::Produce | Mode::Consume => published_latency(message.publish_time, clock),
        };
        last_message_at = clock;
        tally.record(latency, clock);
        meter.received.fetch_add(1, Ordering::Relaxed);

        // The client sends acks only on reliable topics, whatever the flag.
        if let Err(error) = consumer.ack(&message) {
            tally.error(error);
        }

        unclocked += 1;
        if unclocked == CLOCK_EVERY {
            clock = Instant::now();
            unclocked = 0;
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
