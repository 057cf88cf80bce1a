//! The bench over the Danube-compatible API, spoken the way Danube's own
//! client does: a lookup, then one unary `SendMessage` per message (with
//! `--in-flight` calls outstanding per producer), and a server stream of
//! messages per consumer with one unary `Ack` each on reliable topics.
//!
//! The topic is created first through the native API, which can set the
//! partition count and dispatch mode in one lookup; everything measured
//! goes through the Danube services.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::future::try_join_all;
use futures::stream::{FuturesUnordered, SelectAll};
use sava_client::{Client, SubscriptionType};
use sava_proto::danube::consumer_service_client::ConsumerServiceClient;
use sava_proto::danube::discovery_client::DiscoveryClient;
use sava_proto::danube::producer_service_client::ProducerServiceClient;
use sava_proto::danube::{
    AckRequest, ConsumerRequest, DispatchStrategy, MsgId, ProducerAccessMode, ProducerRequest,
    ReceiveRequest, StreamMessage, TopicLookupRequest, consumer_request,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};

use super::native::join_tallies;
use super::stats::{Meter, Tally, published_latency, stamped_latency};
use super::{Mode, Outcome, Pace, Payloads, Plan};

/// Concurrent unary calls per producer or acker unless `--in-flight` says.
const DEFAULT_IN_FLIGHT: usize = 64;

/// How long a consumer waits for a message before checking whether to stop.
const POLL: Duration = Duration::from_millis(100);

/// One producer: its id on each partition.
struct DanubeProducer {
    name: String,
    targets: Vec<(String, u64)>,
}

/// One consumer: its message streams, one per partition.
struct DanubeConsumer {
    streams: SelectAll<Streaming<StreamMessage>>,
}

pub(crate) async fn run(client: &Client, plan: &Plan, meter: &Arc<Meter>) -> Result<Outcome> {
    if plan.mode != Mode::Consume {
        create_topic(client, plan).await?;
    }
    let channel = owner_channel(client, &plan.topic).await?;
    let partitions = partitions(client, &plan.topic).await?;

    let producers = match plan.mode {
        Mode::Produce | Mode::E2e => {
            let creating = (0..plan.producers)
                .map(|index| create_producer(&channel, plan, &partitions, index));
            try_join_all(creating).await?
        }
        Mode::Consume => Vec::new(),
    };
    let consumers = match plan.mode {
        Mode::Consume | Mode::E2e => {
            let subscribing =
                (0..plan.consumers).map(|index| subscribe(&channel, plan, &partitions, index));
            try_join_all(subscribing).await?
        }
        Mode::Produce => Vec::new(),
    };

    let started = Instant::now();
    let deadline = plan.deadline(started);
    let consuming: Vec<JoinHandle<Tally>> = consumers
        .into_iter()
        .map(|consumer| {
            let stub = ConsumerServiceClient::new(channel.clone());
            tokio::spawn(consume(
                stub,
                consumer,
                plan.clone(),
                deadline,
                Arc::clone(meter),
            ))
        })
        .collect();
    let producing: Vec<JoinHandle<Tally>> = producers
        .into_iter()
        .enumerate()
        .map(|(index, producer)| {
            let stub = ProducerServiceClient::new(channel.clone());
            let pace = plan.pace(index, started);
            let task = produce(stub, producer, plan.clone(), pace, Arc::clone(meter));
            tokio::spawn(task)
        })
        .collect();

    let produced = join_tallies(producing).await;
    if plan.mode != Mode::Consume {
        meter.producers_finished(produced.messages);
    }
    let consumed = join_tallies(consuming).await;
    Ok(Outcome::new(plan, produced, consumed, started))
}

/// Creates the topic (partitions, dispatch mode) with a native producer.
async fn create_topic(client: &Client, plan: &Plan) -> Result<()> {
    let mut builder = client.producer(&plan.topic).reliable(plan.reliable);
    if let Some(partitions) = plan.partitions {
        builder = builder.partitions(partitions);
    }
    let producer = builder
        .create()
        .await
        .with_context(|| format!("cannot create topic {}", plan.topic))?;
    producer.close().await?;
    Ok(())
}

/// Looks the topic up the Danube way and connects to the broker named in
/// the answer, when it is another one.
async fn owner_channel(client: &Client, topic: &str) -> Result<Channel> {
    let mut discovery = DiscoveryClient::new(client.channel());
    let request = TopicLookupRequest {
        request_id: 1,
        topic: topic.to_owned(),
    };
    let answer = discovery
        .topic_lookup(request)
        .await
        .with_context(|| format!("cannot look up {topic} through the danube api"))?
        .into_inner();

    let url = [answer.connect_url, answer.broker_url]
        .into_iter()
        .find(|url| !url.is_empty());
    let Some(url) = url else {
        return Ok(client.channel());
    };
    let url = if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    };
    if url.trim_end_matches('/') == client.service_url() {
        return Ok(client.channel());
    }

    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid broker url `{url}` in the lookup of {topic}"))?;
    endpoint
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}, the owner of {topic}"))
}

/// The topic's partitions, or the topic itself when it has none.
async fn partitions(client: &Client, topic: &str) -> Result<Vec<String>> {
    let mut discovery = DiscoveryClient::new(client.channel());
    let request = TopicLookupRequest {
        request_id: 2,
        topic: topic.to_owned(),
    };
    let answer = discovery
        .topic_partitions(request)
        .await
        .with_context(|| format!("cannot list the partitions of {topic}"))?
        .into_inner();
    if answer.partitions.is_empty() {
        Ok(vec![topic.to_owned()])
    } else {
        Ok(answer.partitions)
    }
}

async fn create_producer(
    channel: &Channel,
    plan: &Plan,
    partitions: &[String],
    index: usize,
) -> Result<DanubeProducer> {
    let mut stub = ProducerServiceClient::new(channel.clone());
    let name = format!("bench-{}-{index}", std::process::id());
    let strategy = if plan.reliable {
        DispatchStrategy::Reliable
    } else {
        DispatchStrategy::NonReliable
    };

    let mut targets = Vec::with_capacity(partitions.len());
    for (request_id, partition) in partitions.iter().enumerate() {
        let request = ProducerRequest {
            request_id: request_id as u64,
            producer_name: name.clone(),
            topic_name: partition.clone(),
            schema_ref: None,
            producer_access_mode: ProducerAccessMode::Shared as i32,
            dispatch_strategy: strategy as i32,
        };
        let created = stub
            .create_producer(request)
            .await
            .with_context(|| format!("cannot create danube producer `{name}` on {partition}"))?
            .into_inner();
        targets.push((partition.clone(), created.producer_id));
    }
    Ok(DanubeProducer { name, targets })
}

async fn subscribe(
    channel: &Channel,
    plan: &Plan,
    partitions: &[String],
    index: usize,
) -> Result<DanubeConsumer> {
    let mut stub = ConsumerServiceClient::new(channel.clone());
    let name = format!("bench-{}-{index}", std::process::id());
    let subscription_type = match plan.subscription_type {
        SubscriptionType::Shared => consumer_request::SubscriptionType::Shared,
        SubscriptionType::Failover => consumer_request::SubscriptionType::Failover,
        SubscriptionType::KeyShared => consumer_request::SubscriptionType::KeyShared,
        _ => consumer_request::SubscriptionType::Exclusive,
    };

    let mut streams = SelectAll::new();
    for (request_id, partition) in partitions.iter().enumerate() {
        let request = ConsumerRequest {
            request_id: request_id as u64,
            topic_name: partition.clone(),
            consumer_name: name.clone(),
            subscription: plan.subscription.clone(),
            subscription_type: subscription_type as i32,
            key_filters: Vec::new(),
        };
        let subscribed = stub
            .subscribe(request)
            .await
            .with_context(|| format!("cannot subscribe `{name}` to {partition}"))?
            .into_inner();

        let receive = ReceiveRequest {
            request_id: request_id as u64,
            consumer_id: subscribed.consumer_id,
        };
        let stream = stub
            .receive_messages(receive)
            .await
            .with_context(|| format!("cannot receive messages of {partition}"))?
            .into_inner();
        streams.push(stream);
    }
    Ok(DanubeConsumer { streams })
}

/// Keeps `--in-flight` unary sends outstanding until the quota or deadline,
/// at the pacer's rate if any.
async fn produce(
    stub: ProducerServiceClient<Channel>,
    producer: DanubeProducer,
    plan: Plan,
    pace: Pace,
    meter: Arc<Meter>,
) -> Tally {
    let mut tally = Tally::new();
    let mut payloads = Payloads::new(plan.size, plan.stamps_payloads());
    let mut pending = FuturesUnordered::new();
    let mut sent: u64 = 0;

    loop {
        // When the pacer holds the next send back: until when.
        let mut paused_until = None;
        while pending.len() < plan.in_flight.unwrap_or(DEFAULT_IN_FLIGHT)
            && pace.quota.is_none_or(|quota| sent < quota)
        {
            let sent_at = Instant::now();
            if pace.deadline.is_some_and(|deadline| sent_at >= deadline) {
                break;
            }
            if let Some(due) = pace.due(sent)
                && due > sent_at
            {
                paused_until = Some(due);
                break;
            }
            let (partition, producer_id) =
                &producer.targets[sent as usize % producer.targets.len()];
            let message = StreamMessage {
                request_id: sent,
                msg_id: Some(MsgId {
                    producer_id: *producer_id,
                    topic_name: partition.clone(),
                    ..MsgId::default()
                }),
                payload: payloads.next(sent_at),
                producer_name: producer.name.clone(),
                ..StreamMessage::default()
            };
            let mut stub = stub.clone();
            pending.push(async move { (sent_at, stub.send_message(message).await) });
            sent += 1;
        }

        let answered = match paused_until {
            Some(due) => tokio::select! {
                biased;
                answered = pending.next(), if !pending.is_empty() => answered,
                () = tokio::time::sleep_until(due) => continue,
            },
            None => pending.next().await,
        };
        let Some((sent_at, outcome)) = answered else {
            break;
        };
        match outcome {
            Ok(_) => {
                let now = Instant::now();
                tally.record(now.duration_since(sent_at), now);
                meter.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => tally.error(format!("send refused: {}", status.message())),
        }
    }
    tally
}

/// Reads the merged streams until the meter says stop; a helper task sends
/// the acks of a reliable topic, `--in-flight` at a time.
async fn consume(
    stub: ConsumerServiceClient<Channel>,
    mut consumer: DanubeConsumer,
    plan: Plan,
    deadline: Option<Instant>,
    meter: Arc<Meter>,
) -> Tally {
    let (acks, ids) = mpsc::channel(16 * 1024);
    // A backlog read without --reliable may still be a reliable topic.
    let acker = (plan.reliable || plan.mode == Mode::Consume).then(|| {
        tokio::spawn(acknowledge(
            stub,
            plan.subscription.clone(),
            ids,
            plan.in_flight.unwrap_or(DEFAULT_IN_FLIGHT),
        ))
    });

    let mut tally = Tally::new();
    let mut last_message_at = Instant::now();
    while !meter.consumers_should_stop(&plan, deadline, last_message_at, Instant::now()) {
        let message = match tokio::time::timeout(POLL, consumer.streams.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(status))) => {
                tally.error(format!("receive failed: {}", status.message()));
                break;
            }
            Ok(None) => break,
            Err(_) => continue,
        };

        let now = Instant::now();
        let latency = match plan.mode {
            Mode::E2e => stamped_latency(&message.payload, now),
            Mode::Produce | Mode::Consume => {
                published_latency(sava_time(message.publish_time), now)
            }
        };
        last_message_at = now;
        tally.record(latency, now);
        meter.received.fetch_add(1, Ordering::Relaxed);

        if acker.is_some()
            && let Some(id) = message.msg_id
        {
            let _ = acks.send(id).await;
        }
    }

    drop(acks);
    if let Some(acker) = acker
        && let Ok(failures) = acker.await
        && failures > 0
    {
        tally.error(format!("{failures} acks were refused"));
    }
    tally
}

/// Sends one unary ack per message id, `limit` at a time; returns how many
/// the broker refused.
async fn acknowledge(
    stub: ConsumerServiceClient<Channel>,
    subscription: String,
    mut ids: mpsc::Receiver<MsgId>,
    limit: usize,
) -> u64 {
    let mut pending = FuturesUnordered::new();
    let mut failures = 0;
    let mut request_id = 0;
    let mut open = true;
    loop {
        tokio::select! {
            next = ids.recv(), if open && pending.len() < limit => match next {
                Some(id) => {
                    request_id += 1;
                    let request = AckRequest {
                        request_id,
                        msg_id: Some(id),
                        subscription_name: subscription.clone(),
                    };
                    let mut stub = stub.clone();
                    pending.push(async move { stub.ack(request).await });
                }
                None => open = false,
            },
            Some(outcome) = pending.next(), if !pending.is_empty() => {
                if outcome.is_err() {
                    failures += 1;
                }
            },
            else => break,
        }
    }
    failures
}

fn sava_time(millis: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(millis)
}
