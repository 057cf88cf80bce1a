//! The `sava.v1.SavaClient` service: lookup, batched publish streams and
//! credit-based consume streams.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use sava_metadata::{DispatchMode, TopicRecord};
use sava_proto::sava::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::ResponseStream;
use super::session::{SessionGuard, batched};
use crate::broker::{Broker, ProducerSpec, SchemaSpec, SubscribeSpec, TopicSpec};
use crate::dispatch::SubscriptionType;
use crate::dispatch::reliable::StartPosition;
use crate::error::BrokerError;
use crate::message::IncomingMessage;
use crate::metrics::LookupAnswer;

/// Responses a publish stream may queue before the broker stops reading
/// further batches from it.
const PUBLISH_RESPONSES_IN_FLIGHT: usize = 256;
/// Most deliveries in one `DeliveryBatch`.
const MAX_DELIVERY_BATCH: usize = 512;

#[derive(Clone, Debug)]
pub struct NativeApi {
    broker: Arc<Broker>,
}

impl NativeApi {
    pub fn new(broker: Arc<Broker>) -> NativeApi {
        NativeApi { broker }
    }
}

#[tonic::async_trait]
impl pb::sava_client_server::SavaClient for NativeApi {
    type PublishStream = ResponseStream<pb::PublishResponse>;
    type ConsumeStream = ResponseStream<pb::ConsumeResponse>;

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let request = request.into_inner();
        let create = match request.create {
            Some(settings) => Some(topic_spec(settings)?),
            None => None,
        };
        let lookup = match self.broker.lookup(&request.topic, create.as_ref()).await {
            Ok(lookup) => lookup,
            Err(error) => {
                self.broker.metrics.count_lookup(LookupAnswer::Error);
                return Err(error.into());
            }
        };
        let here = lookup
            .owners
            .iter()
            .all(|o| o.broker_id == self.broker.broker_id);
        self.broker.metrics.count_lookup(match here {
            true => LookupAnswer::Connect,
            false => LookupAnswer::Redirect,
        });
        let owners: Vec<String> = lookup.owners.into_iter().map(|o| o.client_url).collect();
        Ok(Response::new(pb::LookupResponse {
            partitions: lookup.partitions,
            owner_url: owners.first().cloned().unwrap_or_default(),
            settings: Some(settings_of(&lookup.record)),
            partition_owner_urls: owners,
        }))
    }

    async fn publish(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut requests = request.into_inner();
        let open = match requests.message().await? {
            Some(pb::PublishRequest {
                request: Some(pb::publish_request::Request::Open(open)),
            }) => open,
            _ => return Err(missing_first("open")),
        };
        let dispatch_mode = dispatch_mode(open.dispatch_mode)?;
        let spec = ProducerSpec {
            topic: open.topic,
            name: open.producer_name,
            exclusive: open.access_mode == pb::AccessMode::Exclusive as i32,
            stream_bound: true,
            dispatch_mode,
            schema: open.schema.map(schema_spec).transpose()?,
        };
        let (topic, producer) = self.broker.create_producer(spec).await?;
        info!(topic = %topic.name, producer = %producer.name, id = producer.id, "producer attached");

        let (responses, receiver) = mpsc::channel(PUBLISH_RESPONSES_IN_FLIGHT);
        let opened = pb::PublishResponse {
            response: Some(pb::publish_response::Response::Opened(pb::ProducerOpened {
                producer_id: producer.id,
                topic: topic.name.to_string(),
                dispatch_mode: mode_to_wire(topic.dispatch_mode()) as i32,
            })),
        };
        // The channel is new and empty, so this first send cannot fail.
        let _ = responses.try_send(Ok(opened));

        let broker = Arc::clone(&self.broker);
        tokio::spawn(async move {
            serve_batches(requests, responses, topic, Arc::clone(&producer)).await;
            debug!(producer = producer.id, "publish stream ended");
            broker.close_producer(producer.id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let mut requests = request.into_inner();
        let subscribe = match requests.message().await? {
            Some(pb::ConsumeRequest {
                request: Some(pb::consume_request::Request::Subscribe(subscribe)),
            }) => subscribe,
            _ => return Err(missing_first("subscribe")),
        };
        let spec = SubscribeSpec {
            kind: subscription_type(subscribe.subscription_type)?,
            start: start_position(subscribe.start),
            topic: subscribe.topic,
            subscription: subscribe.subscription,
            consumer_name: subscribe.consumer_name,
            key_filters: subscribe.key_filters,
            credit_flow: true,
        };
        let entry = self.broker.subscribe(spec).await?;
        info!(
            topic = %entry.topic.name,
            subscription = %entry.subscription.name,
            consumer = %entry.handle.name,
            id = entry.handle.id,
            "consumer subscribed"
        );
        let subscribed = pb::ConsumeResponse {
            response: Some(pb::consume_response::Response::Subscribed(pb::Subscribed {
                consumer_id: entry.handle.id,
                topic: entry.topic.name.to_string(),
                dispatch_mode: mode_to_wire(entry.topic.dispatch_mode()) as i32,
            })),
        };

        let (guard, receiver) = SessionGuard::attach(entry.clone())?;
        let guard = guard.leave_on_end(Arc::clone(&self.broker));
        entry.handle.grant(subscribe.initial_credits);
        let control = tokio::spawn(read_controls(requests, entry.clone()));

        let topic = entry.topic.name.to_string();
        // The session ends with the client's side of the stream: a client
        // that closes its requests gets its response stream ended too.
        let deliveries = batched(guard, receiver, MAX_DELIVERY_BATCH).take_until(control);
        let deliveries = deliveries.map(move |(batch, dropped)| {
            Ok(pb::ConsumeResponse {
                response: Some(pb::consume_response::Response::Deliveries(
                    pb::DeliveryBatch {
                        topic: topic.clone(),
                        messages: batch.into_iter().map(delivery).collect(),
                        dropped,
                    },
                )),
            })
        });
        let stream = futures::stream::iter([Ok(subscribed)]).chain(deliveries);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Publishes a producer's batches until its stream ends. Batches are
/// written in the order they arrive and acknowledged in that order once
/// durable; up to [`PUBLISH_RESPONSES_IN_FLIGHT`] wait for durability at
/// once, so one producer's batches share group commits.
async fn serve_batches(
    mut requests: Streaming<pb::PublishRequest>,
    responses: mpsc::Sender<Result<pb::PublishResponse, Status>>,
    topic: Arc<crate::topic::Topic>,
    producer: Arc<crate::topic::ProducerInfo>,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            request = requests.message(), if reading && in_flight.len() < PUBLISH_RESPONSES_IN_FLIGHT => {
                match request {
                    Ok(Some(pb::PublishRequest { request: Some(pb::publish_request::Request::Batch(batch)) })) => {
                        in_flight.push_back(publish_batch(Arc::clone(&topic), &producer, batch));
                    }
                    Ok(Some(_)) => {
                        let _ = responses.send(Err(missing_first("batch"))).await;
                        return;
                    }
                    Ok(None) | Err(_) => reading = false,
                }
            }
            Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                let response = pb::PublishResponse { response: Some(response) };
                if responses.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

/// Publishes one batch; the future resolves to its answer once durable.
fn publish_batch(
    topic: Arc<crate::topic::Topic>,
    producer: &crate::topic::ProducerInfo,
    batch: pb::MessageBatch,
) -> futures::future::BoxFuture<'static, pb::publish_response::Response> {
    let sequence = batch.sequence;
    let messages = batch.messages.into_iter().map(incoming).collect();
    let published = topic.publish(producer, messages);
    Box::pin(async move {
        let receipt = match published {
            Ok(published) => published.durable(&topic).await,
            Err(error) => Err(error),
        };
        match receipt {
            Ok(receipt) => pb::publish_response::Response::Ack(pb::BatchAck {
                sequence,
                first_offset: receipt.first_offset,
                count: receipt.count,
                publish_time: receipt.publish_time_ms,
            }),
            Err(error) => batch_error(sequence, error),
        }
    })
}

/// Applies a consumer's flow, ack and nack requests until its stream ends.
async fn read_controls(
    mut requests: Streaming<pb::ConsumeRequest>,
    entry: crate::broker::ConsumerEntry,
) {
    while let Ok(Some(request)) = requests.message().await {
        match request.request {
            Some(pb::consume_request::Request::Flow(flow)) => entry.handle.grant(flow.credits),
            Some(pb::consume_request::Request::Ack(ack)) => {
                entry.subscription.ack(ack.offsets, ack.cumulative);
            }
            Some(pb::consume_request::Request::Nack(nack)) => {
                let delay = nack.delay_ms.map(Duration::from_millis);
                entry.subscription.nack(nack.offsets, delay);
            }
            Some(pb::consume_request::Request::Subscribe(_)) | None => {
                debug!(
                    consumer = entry.handle.id,
                    "ignoring a second subscribe on one stream"
                );
            }
        }
    }
}

fn incoming(message: pb::OutgoingMessage) -> IncomingMessage {
    IncomingMessage {
        payload: message.payload,
        key: message.key,
        attributes: message.attributes.into_iter().collect(),
    }
}

fn delivery(delivery: crate::message::Delivery) -> pb::Delivery {
    // A message no other subscription or redelivery holds gives its fields
    // away, sparing a count on the payload's shared buffer.
    let message = Arc::unwrap_or_clone(delivery.message);
    pb::Delivery {
        offset: message.offset,
        publish_time: message.publish_time_ms,
        producer_name: message.producer_name.to_string(),
        key: message.key,
        attributes: message.attributes.into_iter().collect(),
        payload: message.payload,
        delivery_count: delivery.delivery_count,
    }
}

fn batch_error(sequence: u64, error: BrokerError) -> pb::publish_response::Response {
    let message_index = match &error {
        BrokerError::MessageTooLarge { index, .. } | BrokerError::SchemaViolation { index, .. } => {
            Some(*index as u32)
        }
        _ => None,
    };
    pb::publish_response::Response::Error(pb::BatchError {
        sequence,
        code: error.kind().code() as i32,
        message: error.to_string(),
        message_index,
    })
}

pub(super) fn topic_spec(settings: pb::TopicSettings) -> Result<TopicSpec, BrokerError> {
    Ok(TopicSpec {
        dispatch_mode: dispatch_mode(settings.dispatch_mode)?,
        partitions: settings.partitions,
        schema: settings.schema.map(schema_spec).transpose()?,
    })
}

fn settings_of(record: &TopicRecord) -> pb::TopicSettings {
    pb::TopicSettings {
        dispatch_mode: mode_to_wire(record.dispatch_mode) as i32,
        partitions: record.partitions,
        schema: None,
    }
}

fn schema_spec(schema: pb::Schema) -> Result<SchemaSpec, BrokerError> {
    let schema_type = match pb::SchemaType::try_from(schema.schema_type) {
        Ok(pb::SchemaType::Bytes) => "bytes",
        Ok(pb::SchemaType::String) => "string",
        Ok(pb::SchemaType::Int64) => "int64",
        Ok(pb::SchemaType::Json) => "json_schema",
        Err(_) => {
            return Err(BrokerError::InvalidSchema(format!(
                "schema_type {} is not a known value",
                schema.schema_type
            )));
        }
    };
    Ok(SchemaSpec::Inline {
        schema_type: schema_type.to_string(),
        definition: schema.definition.to_vec(),
    })
}

fn dispatch_mode(value: i32) -> Result<DispatchMode, BrokerError> {
    match pb::DispatchMode::try_from(value) {
        Ok(pb::DispatchMode::NonReliable) => Ok(DispatchMode::NonReliable),
        Ok(pb::DispatchMode::Reliable) => Ok(DispatchMode::Reliable),
        Err(_) => Err(BrokerError::InvalidRequest(format!(
            "dispatch_mode {value} is not a known value"
        ))),
    }
}

pub(super) fn mode_to_wire(mode: DispatchMode) -> pb::DispatchMode {
    match mode {
        DispatchMode::NonReliable => pb::DispatchMode::NonReliable,
        DispatchMode::Reliable => pb::DispatchMode::Reliable,
    }
}

pub(super) fn subscription_type(value: i32) -> Result<SubscriptionType, BrokerError> {
    match pb::SubscriptionType::try_from(value) {
        Ok(pb::SubscriptionType::Exclusive) => Ok(SubscriptionType::Exclusive),
        Ok(pb::SubscriptionType::Shared) => Ok(SubscriptionType::Shared),
        Ok(pb::SubscriptionType::Failover) => Ok(SubscriptionType::Failover),
        Ok(pb::SubscriptionType::KeyShared) => Ok(SubscriptionType::KeyShared),
        Err(_) => Err(BrokerError::InvalidRequest(format!(
            "subscription_type {value} is not a known value"
        ))),
    }
}

pub(super) fn subscription_type_to_wire(kind: SubscriptionType) -> pb::SubscriptionType {
    match kind {
        SubscriptionType::Exclusive => pb::SubscriptionType::Exclusive,
        SubscriptionType::Shared => pb::SubscriptionType::Shared,
        SubscriptionType::Failover => pb::SubscriptionType::Failover,
        SubscriptionType::KeyShared => pb::SubscriptionType::KeyShared,
    }
}

pub(super) fn start_position(start: Option<pb::StartPosition>) -> StartPosition {
    use pb::start_position::Position;
    match start.and_then(|s| s.position) {
        Some(Position::Earliest(_)) => StartPosition::Earliest,
        Some(Position::Offset(offset)) => StartPosition::Offset(offset),
        Some(Position::TimeMs(time)) => StartPosition::TimeMs(time),
        Some(Position::Latest(_)) | None => StartPosition::Latest,
    }
}

fn missing_first(what: &str) -> Status {
    BrokerError::InvalidRequest(format!("expected a {what} request on this stream")).into()
}
