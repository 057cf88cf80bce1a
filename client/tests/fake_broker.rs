//! The client against a small in-process fake of the broker's native API.
//!
//! The fake keeps one in-memory log per partition, honours credits, records
//! acks, refuses any batch holding the payload `bad`, and can break a
//! publish stream on demand; that is enough to check batching, pipelined
//! acks, reconnects with replay, credit re-granting and partition merging
//! without a real broker.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sava_client::{Client, Error, ErrorKind, Message, StartPosition};
use sava_proto::sava::v1::consume_request::Request as ConsumeKind;
use sava_proto::sava::v1::publish_request::Request as PublishKind;
use sava_proto::sava::v1::publish_response::Response as PublishAnswer;
use sava_proto::sava::v1::sava_client_server::{SavaClient, SavaClientServer};
use sava_proto::sava::v1::start_position::Position;
use sava_proto::sava::v1::{
    BatchAck, BatchError, ConsumeRequest, ConsumeResponse, Delivery, DeliveryBatch, DispatchMode,
    LookupRequest, LookupResponse, ProducerOpened, PublishRequest, PublishResponse, Subscribed,
    TopicSettings, consume_response,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct State {
    /// Topic name to its settings and partition names.
    topics: HashMap<String, (TopicSettings, Vec<String>)>,
    logs: HashMap<String, Vec<Delivery>>,
    /// Per (partition, subscription): the acked offsets.
    acked: HashMap<(String, String), BTreeSet<u64>>,
    opens: usize,
    /// Break the publish stream that receives the batch with this number
    /// (counted over all streams), without storing it.
    break_at_batch: Option<usize>,
    batches: usize,
    /// Break the consume stream that has delivered this many messages in
    /// all (counted over all streams).
    break_after_deliveries: Option<usize>,
    deliveries: usize,
    subscribes: usize,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<State>>,
    appended: Arc<watch::Sender<u64>>,
    url: Arc<Mutex<String>>,
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

#[tonic::async_trait]
impl SavaClient for Fake {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        let url = self.url.lock().unwrap().clone();
        // A partition is looked up on its own when a stream reconnects.
        let parent = state
            .topics
            .iter()
            .find(|(_, (_, parts))| parts.len() > 1 && parts.contains(&request.topic))
            .map(|(_, (settings, _))| settings.clone());
        if let Some(settings) = parent {
            return Ok(Response::new(LookupResponse {
                partitions: vec![request.topic.clone()],
                owner_url: url.clone(),
                settings: Some(settings),
                partition_owner_urls: vec![url],
            }));
        }
        if !state.topics.contains_key(&request.topic) {
            let Some(settings) = request.create else {
                return Err(Status::not_found(format!(
                    "topic {} does not exist",
                    request.topic
                )));
            };
            let partitions: Vec<String> = match settings.partitions {
                0 => vec![request.topic.clone()],
                count => (0..count)
                    .map(|i| format!("{}-part-{i}", request.topic))
                    .collect(),
            };
            for partition in &partitions {
                state.logs.insert(partition.clone(), Vec::new());
            }
            state
                .topics
                .insert(request.topic.clone(), (settings, partitions));
        }

        let (settings, partitions) = state.topics[&request.topic].clone();
        Ok(Response::new(LookupResponse {
            partition_owner_urls: vec![url.clone(); partitions.len()],
            partitions,
            owner_url: url,
            settings: Some(settings),
        }))
    }

    type PublishStream = ReceiverStream<Result<PublishResponse, Status>>;

    async fn publish(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(PublishKind::Open(open)) = inbound.message().await?.and_then(|r| r.request) else {
            return Err(Status::invalid_argument("the first request must be `open`"));
        };
        {
            let mut state = self.lock();
            if !state.logs.contains_key(&open.topic) {
                return Err(Status::not_found(format!(
                    "topic {} does not exist",
                    open.topic
                )));
            }
            state.opens += 1;
        }

        let (answers, stream) = mpsc::channel(256);
        let opened = PublishAnswer::Opened(ProducerOpened {
            producer_id: 1,
            topic: open.topic.clone(),
            dispatch_mode: open.dispatch_mode,
        });
        let _ = answers.send(Ok(answer(opened))).await;

        let fake = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let Some(PublishKind::Batch(batch)) = request.request else {
                    continue;
                };
                let outcome = {
                    let mut state = fake.lock();
                    state.batches += 1;
                    if state.break_at_batch == Some(state.batches) {
                        state.break_at_batch = None;
                        None
                    } else if let Some(index) =
                        batch.messages.iter().position(|m| m.payload == "bad")
                    {
                        Some(PublishAnswer::Error(BatchError {
                            sequence: batch.sequence,
                            code: tonic::Code::InvalidArgument as i32,
                            message: format!("payload {index} is bad"),
                            message_index: Some(index as u32),
                        }))
                    } else {
                        let log = state.logs.get_mut(&open.topic).unwrap();
                        let first_offset = log.len() as u64;
                        for (index, message) in batch.messages.iter().enumerate() {
                            log.push(Delivery {
                                offset: first_offset + index as u64,
                                publish_time: 1_700_000_000_000,
                                producer_name: open.producer_name.clone(),
                                key: message.key.clone(),
                                attributes: message.attributes.clone(),
                                payload: message.payload.clone(),
                                delivery_count: 1,
                            });
                        }
                        Some(PublishAnswer::Ack(BatchAck {
                            sequence: batch.sequence,
                            first_offset,
                            count: batch.messages.len() as u32,
                            publish_time: 1_700_000_000_000,
                        }))
                    }
                };
                match outcome {
                    Some(outcome) => {
                        fake.appended.send_modify(|version| *version += 1);
                        let _ = answers.send(Ok(answer(outcome))).await;
                    }
                    None => {
                        let _ = answers
                            .send(Err(Status::unavailable("broker restarting")))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type ConsumeStream = ReceiverStream<Result<ConsumeResponse, Status>>;

    async fn consume(
        &self,
        request: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(ConsumeKind::Subscribe(subscribe)) =
            inbound.message().await?.and_then(|r| r.request)
        else {
            return Err(Status::invalid_argument(
                "the first request must be `subscribe`",
            ));
        };
        let mut cursor = {
            let mut state = self.lock();
            state.subscribes += 1;
            let Some(log) = state.logs.get(&subscribe.topic) else {
                return Err(Status::not_found(format!(
                    "topic {} does not exist",
                    subscribe.topic
                )));
            };
            match subscribe.start.and_then(|start| start.position) {
                Some(Position::Earliest(_)) | Some(Position::TimeMs(_)) => 0,
                Some(Position::Offset(offset)) => offset,
                Some(Position::Latest(_)) | None => log.len() as u64,
            }
        };
        let key = (subscribe.topic.clone(), subscribe.subscription.clone());
        let mut credits = u64::from(subscribe.initial_credits);

        let (answers, stream) = mpsc::channel(256);
        let subscribed = consume_response::Response::Subscribed(Subscribed {
            consumer_id: 1,
            topic: subscribe.topic.clone(),
            dispatch_mode: DispatchMode::Reliable as i32,
        });
        let _ = answers
            .send(Ok(ConsumeResponse {
                response: Some(subscribed),
            }))
            .await;

        let fake = self.clone();
        let mut appended = self.appended.subscribe();
        tokio::spawn(async move {
            loop {
                let (batch, break_now) = {
                    let mut state = fake.lock();
                    let log = &state.logs[&key.0];
                    let acked = state.acked.get(&key);
                    let mut batch = Vec::new();
                    while credits > 0 && (cursor as usize) < log.len() {
                        if !acked.is_some_and(|acked| acked.contains(&cursor)) {
                            batch.push(log[cursor as usize].clone());
                            credits -= 1;
                        }
                        cursor += 1;
                    }
                    state.deliveries += batch.len();
                    let break_now = state
                        .break_after_deliveries
                        .is_some_and(|limit| state.deliveries >= limit);
                    if break_now {
                        state.break_after_deliveries = None;
                    }
                    (batch, break_now)
                };
                if !batch.is_empty() {
                    let deliveries = consume_response::Response::Deliveries(DeliveryBatch {
                        topic: key.0.clone(),
                        messages: batch,
                        dropped: 0,
                    });
                    let sent = answers.send(Ok(ConsumeResponse {
                        response: Some(deliveries),
                    }));
                    if sent.await.is_err() {
                        return;
                    }
                }
                if break_now {
                    let _ = answers
                        .send(Err(Status::unavailable("broker restarting")))
                        .await;
                    return;
                }

                tokio::select! {
                    request = inbound.message() => match request {
                        Ok(Some(ConsumeRequest { request: Some(request) })) => match request {
                            ConsumeKind::Flow(flow) => credits += u64::from(flow.credits),
                            ConsumeKind::Ack(ack) => {
                                let mut state = fake.lock();
                                let acked = state.acked.entry(key.clone()).or_default();
                                acked.extend(ack.offsets);
                                if let Some(up_to) = ack.cumulative {
                                    acked.extend(0..=up_to);
                                }
                            }
                            ConsumeKind::Nack(_) | ConsumeKind::Subscribe(_) => {}
                        },
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return,
                    },
                    _ = appended.changed() => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

fn answer(response: PublishAnswer) -> PublishResponse {
    PublishResponse {
        response: Some(response),
    }
}

/// Starts the fake on a free port and connects a client to it.
async fn start() -> (Fake, Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = Fake {
        state: Arc::default(),
        appended: Arc::new(watch::channel(0).0),
        url: Arc::new(Mutex::new(url.clone())),
    };

    let server = tonic::transport::Server::builder()
        .add_service(SavaClientServer::new(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);

    let client = Client::builder(url).build().await.unwrap();
    (fake, client)
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the operation finished in time")
}

#[tokio::test]
async fn pipelined_sends_resolve_to_consecutive_offsets() {
    let (fake, client) = start().await;
    let producer = client
        .producer("/default/orders")
        .batch_max_messages(3)
        .create()
        .await
        .unwrap();

    let mut pending = Vec::new();
    for index in 0..10 {
        pending.push(
            producer
                .send(Message::new(format!("m{index}")))
                .await
                .unwrap(),
        );
    }
    within(producer.flush()).await.unwrap();

    for (index, future) in pending.into_iter().enumerate() {
        let id = within(future).await.unwrap();
        assert_eq!(id.offset, index as u64);
        assert_eq!(&*id.topic, "/default/orders");
    }
    assert_eq!(fake.lock().logs["/default/orders"].len(), 10);
    within(producer.close()).await.unwrap();
}

#[tokio::test]
async fn a_refused_batch_fails_only_its_own_messages() {
    let (_fake, client) = start().await;
    let producer = client
        .producer("/default/checked")
        .batch_max_messages(1)
        .linger(Duration::ZERO)
        .create()
        .await
        .unwrap();

    let first = producer.send(Message::new("good")).await.unwrap();
    let refused = producer.send(Message::new("bad")).await.unwrap();
    let last = producer.send(Message::new("good again")).await.unwrap();

    assert_eq!(within(first).await.unwrap().offset, 0);
    match within(refused).await {
        Err(Error::Rejected {
            kind,
            message_index,
            ..
        }) => {
            assert_eq!(kind, ErrorKind::InvalidArgument);
            assert_eq!(message_index, Some(0));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(within(last).await.unwrap().offset, 1);
}

#[tokio::test]
async fn a_broken_publish_stream_is_reopened_and_unacked_batches_are_sent_again() {
    let (fake, client) = start().await;
    fake.lock().break_at_batch = Some(3);
    let producer = client
        .producer("/default/flaky")
        .name("steady")
        .batch_max_messages(2)
        .create()
        .await
        .unwrap();

    let mut pending = Vec::new();
    for index in 0..20 {
        pending.push(
            producer
                .send(Message::new(format!("m{index}")))
                .await
                .unwrap(),
        );
    }
    let mut offsets = Vec::new();
    for future in pending {
        offsets.push(within(future).await.unwrap().offset);
    }

    offsets.sort_unstable();
    assert_eq!(offsets, (0..20).collect::<Vec<u64>>());
    let state = fake.lock();
    assert_eq!(state.opens, 2, "the producer reopened its stream once");
    let payloads: BTreeSet<Bytes> = state.logs["/default/flaky"]
        .iter()
        .map(|delivery| delivery.payload.clone())
        .collect();
    assert_eq!(payloads.len(), 20, "every message was stored");
}

#[tokio::test]
async fn a_consumer_with_a_small_window_still_receives_everything_in_order() {
    let (fake, client) = start().await;
    let producer = client
        .producer("/default/backlog")
        .reliable(true)
        .create()
        .await
        .unwrap();
    for index in 0..50 {
        drop(
            producer
                .send(Message::new(format!("m{index}")))
                .await
                .unwrap(),
        );
    }
    within(producer.flush()).await.unwrap();

    let mut consumer = client
        .consumer("/default/backlog", "audit")
        .credits(4)
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap();
    for index in 0..50 {
        let message = within(consumer.recv()).await.unwrap().unwrap();
        assert_eq!(message.offset, index);
        assert_eq!(message.payload, format!("m{index}"));
        consumer.ack(&message).unwrap();
    }
    within(consumer.close()).await;

    let key = ("/default/backlog".to_owned(), "audit".to_owned());
    assert_eq!(
        fake.lock().acked[&key].len(),
        50,
        "every ack reached the broker"
    );
}

#[tokio::test]
async fn a_broken_consume_stream_is_resubscribed_and_unacked_messages_come_again() {
    let (fake, client) = start().await;
    let producer = client
        .producer("/default/resume")
        .reliable(true)
        .create()
        .await
        .unwrap();
    for index in 0..20 {
        drop(
            producer
                .send(Message::new(format!("m{index}")))
                .await
                .unwrap(),
        );
    }
    within(producer.flush()).await.unwrap();
    fake.lock().break_after_deliveries = Some(6);

    let mut consumer = client
        .consumer("/default/resume", "resume")
        .credits(4)
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let message = within(consumer.recv()).await.unwrap().unwrap();
        seen.insert(message.offset);
        consumer.ack(&message).unwrap();
    }
    within(consumer.close()).await;

    assert_eq!(seen, (0..20).collect::<BTreeSet<u64>>());
    assert_eq!(fake.lock().subscribes, 2, "the consumer resubscribed once");
}

#[tokio::test]
async fn a_partitioned_topic_keeps_each_key_on_one_partition() {
    let (_fake, client) = start().await;
    let producer = client
        .producer("/default/keyed")
        .partitions(3)
        .create()
        .await
        .unwrap();
    assert_eq!(producer.partition_count(), 3);

    let mut consumer = client
        .consumer("/default/keyed", "by-key")
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap();
    for index in 0..30 {
        let message = Message::new("payload").with_key(format!("key-{}", index % 5));
        drop(producer.send(message).await.unwrap());
    }
    within(producer.flush()).await.unwrap();

    let mut partition_of_key: HashMap<String, String> = HashMap::new();
    for _ in 0..30 {
        let message = within(consumer.recv()).await.unwrap().unwrap();
        let key = message.key.clone().unwrap();
        let partition = partition_of_key
            .entry(key)
            .or_insert_with(|| message.topic.to_string());
        assert_eq!(*partition, *message.topic, "a key moved between partitions");
        assert!(message.topic.starts_with("/default/keyed-part-"));
    }
}

#[tokio::test]
async fn subscribing_to_a_missing_topic_is_not_found() {
    let (_fake, client) = start().await;
    let error = client
        .consumer("/default/missing", "s")
        .subscribe()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), Some(ErrorKind::NotFound), "{error}");
    assert!(error.to_string().contains("/default/missing"));
}

#[tokio::test]
async fn sending_after_close_fails_with_closed() {
    let (_fake, client) = start().await;
    let producer = client.producer("/default/closing").create().await.unwrap();
    let sent = producer.send(Message::new("last")).await.unwrap();
    within(producer.close()).await.unwrap();

    assert_eq!(within(sent).await.unwrap().offset, 0);
    let error = producer.send(Message::new("too late")).await.unwrap_err();
    assert!(matches!(error, Error::Closed), "{error}");
}
