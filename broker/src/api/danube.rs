//! The `danube` package: ProducerService, ConsumerService, Discovery and
//! HealthCheck, as Danube 0.16 clients call them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sava_metadata::DispatchMode;
use sava_proto::danube::{
    self as pb, consumer_request::SubscriptionType as PbSubscriptionType,
    health_check_request::ClientType, health_check_response::ClientStatus,
    schema_reference::VersionRef as PbVersionRef, topic_lookup_response::LookupType,
};
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use super::ResponseStream;
use super::danube_proxy::{DanubeProxy, is_unreachable, passed_on, unreachable, wait_out_lease};
use super::session::{SessionGuard, one_by_one};
use crate::broker::{Broker, ProducerSpec, SchemaSpec, SubscribeSpec, VersionRef};
use crate::dispatch::SubscriptionType;
use crate::dispatch::reliable::StartPosition;
use crate::error::BrokerError;
use crate::message::IncomingMessage;
use crate::metrics::LookupAnswer;

/// Serves every `danube` service over one broker.
#[derive(Clone, Debug)]
pub struct DanubeApi {
    broker: Arc<Broker>,
    proxy: Arc<DanubeProxy>,
}

impl DanubeApi {
    pub fn new(broker: Arc<Broker>) -> DanubeApi {
        DanubeApi {
            broker,
            proxy: Arc::new(DanubeProxy::default()),
        }
    }

    /// The answer to a call the owner did not take: when it could not be
    /// reached, UNAVAILABLE once its lease ran out (see
    /// [`super::danube_proxy::wait_out_lease`]).
    async fn owner_failed(&self, owner: &str, status: Status) -> Status {
        if is_unreachable(&status) {
            let limit = Duration::from_millis(self.broker.config.cluster.lease_ttl_ms);
            wait_out_lease(&self.broker.cluster.brokers(), owner, limit).await;
        }
        unreachable(owner, status)
    }
}

type ProducerClient = pb::producer_service_client::ProducerServiceClient<tonic::transport::Channel>;
type ConsumerClient = pb::consumer_service_client::ConsumerServiceClient<tonic::transport::Channel>;

/// Passes a call that names another broker as the owner on to it (see
/// [`super::danube_proxy`]): `pass_on!(self, request, Client, method)`
/// returns the owner's answer.
macro_rules! pass_on {
    ($api:ident, $request:ident, $client:ty, $method:ident) => {
        if let Some((owner, channel)) = $api.proxy.target(&$request, &$api.broker.advertised_url) {
            let mut client = <$client>::new(channel);
            return match client
                .$method(passed_on($request.into_inner(), &owner))
                .await
            {
                Ok(answer) => Ok(answer),
                Err(status) => Err($api.owner_failed(&owner, status).await),
            };
        }
    };
}

#[tonic::async_trait]
impl pb::producer_service_server::ProducerService for DanubeApi {
    async fn create_producer(
        &self,
        request: Request<pb::ProducerRequest>,
    ) -> Result<Response<pb::ProducerResponse>, Status> {
        pass_on!(self, request, ProducerClient, create_producer);
        let request = request.into_inner();
        let dispatch_mode = match pb::DispatchStrategy::try_from(request.dispatch_strategy) {
            Ok(pb::DispatchStrategy::Reliable) => DispatchMode::Reliable,
            Ok(pb::DispatchStrategy::NonReliable) => DispatchMode::NonReliable,
            Err(_) => return Err(invalid("dispatch_strategy", request.dispatch_strategy)),
        };
        let exclusive = match pb::ProducerAccessMode::try_from(request.producer_access_mode) {
            Ok(mode) => mode == pb::ProducerAccessMode::Exclusive,
            Err(_) => {
                return Err(invalid(
                    "producer_access_mode",
                    request.producer_access_mode,
                ));
            }
        };
        let schema = request.schema_ref.map(|reference| SchemaSpec::Subject {
            version: match reference.version_ref {
                Some(PbVersionRef::PinnedVersion(v)) => VersionRef::Pinned(v),
                Some(PbVersionRef::MinVersion(v)) => VersionRef::AtLeast(v),
                Some(PbVersionRef::UseLatest(_)) | None => VersionRef::Latest,
            },
            subject: reference.subject,
        });

        let spec = ProducerSpec {
            topic: request.topic_name,
            name: request.producer_name,
            exclusive,
            stream_bound: false,
            dispatch_mode,
            schema,
        };
        let (topic, producer) = self.broker.create_producer(spec).await?;
        info!(topic = %topic.name, producer = %producer.name, id = producer.id, "producer attached");
        Ok(Response::new(pb::ProducerResponse {
            request_id: request.request_id,
            producer_id: producer.id,
            producer_name: producer.name.to_string(),
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::StreamMessage>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        pass_on!(self, request, ProducerClient, send_message);
        let message = request.into_inner();
        let producer_id = message.msg_id.as_ref().map_or(0, |id| id.producer_id);
        let (topic, producer) = self.broker.producer(producer_id)?;
        if let (Some(sent), Some(schema)) = (message.schema_id, producer.schema.as_ref())
            && sent != schema.schema_id
        {
            return Err(BrokerError::InvalidRequest(format!(
                "message carries schema id {sent}, but producer {} was created with {}",
                producer.name, schema.schema_id
            ))
            .into());
        }

        let incoming = vec![IncomingMessage {
            payload: message.payload,
            key: message.routing_key,
            attributes: message.attributes.into_iter().collect(),
        }];
        topic.publish(&producer, incoming)?.durable(&topic).await?;
        Ok(Response::new(pb::MessageResponse {
            request_id: message.request_id,
        }))
    }
}

#[tonic::async_trait]
impl pb::consumer_service_server::ConsumerService for DanubeApi {
    type ReceiveMessagesStream = ResponseStream<pb::StreamMessage>;

    async fn subscribe(
        &self,
        request: Request<pb::ConsumerRequest>,
    ) -> Result<Response<pb::ConsumerResponse>, Status> {
        pass_on!(self, request, ConsumerClient, subscribe);
        let request = request.into_inner();
        let kind = match PbSubscriptionType::try_from(request.subscription_type) {
            Ok(PbSubscriptionType::Exclusive) => SubscriptionType::Exclusive,
            Ok(PbSubscriptionType::Shared) => SubscriptionType::Shared,
            Ok(PbSubscriptionType::Failover) => SubscriptionType::Failover,
            Ok(PbSubscriptionType::KeyShared) => SubscriptionType::KeyShared,
            Err(_) => return Err(invalid("subscription_type", request.subscription_type)),
        };
        let spec = SubscribeSpec {
            topic: request.topic_name,
            subscription: request.subscription,
            consumer_name: request.consumer_name,
            kind,
            start: StartPosition::Latest,
            key_filters: request.key_filters,
            credit_flow: false,
        };
        let entry = self.broker.subscribe(spec).await?;
        info!(
            topic = %entry.topic.name,
            subscription = %entry.subscription.name,
            consumer = %entry.handle.name,
            id = entry.handle.id,
            "consumer subscribed"
        );
        Ok(Response::new(pb::ConsumerResponse {
            request_id: request.request_id,
            consumer_id: entry.handle.id,
            consumer_name: entry.handle.name.clone(),
        }))
    }

    async fn receive_messages(
        &self,
        request: Request<pb::ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveMessagesStream>, Status> {
        if let Some((owner, channel)) = self.proxy.target(&request, &self.broker.advertised_url) {
            let mut client =
                sava_proto::danube::consumer_service_client::ConsumerServiceClient::new(channel);
            let opened = client
                .receive_messages(passed_on(request.into_inner(), &owner))
                .await;
            let stream = match opened {
                Ok(stream) => stream,
                Err(status) => return Err(self.owner_failed(&owner, status).await),
            }
            .into_inner()
            .map(move |item| item.map_err(|status| unreachable(&owner, status)));
            return Ok(Response::new(Box::pin(stream)));
        }
        let entry = self.broker.consumer(request.into_inner().consumer_id)?;
        let topic = entry.topic.name.to_string();
        let subscription = entry.subscription.name.clone();
        let broker_addr = self.broker.advertised_url.clone();
        let (guard, receiver) = SessionGuard::attach(entry)?;

        let stream = one_by_one(guard, receiver).map(move |delivery| {
            let message = &delivery.message;
            Ok(pb::StreamMessage {
                request_id: message.offset,
                msg_id: Some(pb::MsgId {
                    producer_id: message.producer_id,
                    topic_name: topic.clone(),
                    broker_addr: broker_addr.clone(),
                    topic_offset: message.offset,
                }),
                payload: message.payload.clone(),
                publish_time: message.publish_time_ms,
                producer_name: message.producer_name.to_string(),
                subscription_name: subscription.clone(),
                attributes: message.attributes.iter().cloned().collect(),
                schema_id: message.schema_id,
                schema_version: message.schema_version,
                routing_key: message.key.clone(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        pass_on!(self, request, ConsumerClient, ack);
        let request = request.into_inner();
        let id = request.msg_id.ok_or_else(|| missing("msg_id"))?;
        let subscription = self
            .broker
            .subscription_of(&id.topic_name, &request.subscription_name)?;
        subscription.ack(vec![id.topic_offset], None);
        Ok(Response::new(pb::AckResponse {
            request_id: request.request_id,
        }))
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        pass_on!(self, request, ConsumerClient, nack);
        let request = request.into_inner();
        let id = request.msg_id.ok_or_else(|| missing("msg_id"))?;
        let subscription = self
            .broker
            .subscription_of(&id.topic_name, &request.subscription_name)?;
        debug!(
            topic = %id.topic_name,
            offset = id.topic_offset,
            reason = request.reason.as_deref().unwrap_or(""),
            "message nacked"
        );
        subscription.nack(
            vec![id.topic_offset],
            request.delay_ms.map(Duration::from_millis),
        );
        Ok(Response::new(pb::NackResponse {
            request_id: request.request_id,
        }))
    }
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DanubeApi {
    async fn topic_lookup(
        &self,
        request: Request<pb::TopicLookupRequest>,
    ) -> Result<Response<pb::TopicLookupResponse>, Status> {
        let request = request.into_inner();
        crate::names::TopicName::parse(&request.topic)?;
        if self.broker.is_stopping() {
            return Err(BrokerError::ShuttingDown.into());
        }
        // A partitioned topic's parent has no owner: clients look its
        // partitions up one by one.
        let record = self.broker.catalog().topic(&request.topic).await;
        if let Ok(Some(record)) = record
            && record.partitions > 0
        {
            return Ok(Response::new(pb::TopicLookupResponse {
                request_id: request.request_id,
                response_type: LookupType::Connect as i32,
                connect_url: self.broker.advertised_url.clone(),
                broker_url: self.broker.advertised_url.clone(),
                proxy: false,
            }));
        }
        // Ownership does not need the topic to exist: the producer that
        // follows creates it on the broker that will own it.
        let owner = match self.broker.cluster.owner(&request.topic).await {
            Ok(owner) => owner,
            Err(error) => {
                self.broker.metrics.count_lookup(LookupAnswer::Error);
                return Err(error.into());
            }
        };
        let here = owner.broker_id == self.broker.broker_id;
        self.broker.metrics.count_lookup(match here {
            true => LookupAnswer::Connect,
            false => LookupAnswer::Redirect,
        });
        let proxy = !here && self.broker.config.cluster.proxy_danube_clients;
        Ok(Response::new(pb::TopicLookupResponse {
            request_id: request.request_id,
            response_type: match here {
                true => LookupType::Connect as i32,
                false => LookupType::Redirect as i32,
            },
            connect_url: match proxy {
                true => self.broker.advertised_url.clone(),
                false => owner.client_url.clone(),
            },
            broker_url: owner.client_url,
            proxy,
        }))
    }

    async fn topic_partitions(
        &self,
        request: Request<pb::TopicLookupRequest>,
    ) -> Result<Response<pb::TopicPartitionsResponse>, Status> {
        let request = request.into_inner();
        let partitions = self.broker.partitions(&request.topic).await?;
        Ok(Response::new(pb::TopicPartitionsResponse {
            request_id: request.request_id,
            partitions,
        }))
    }
}

#[tonic::async_trait]
impl pb::health_check_server::HealthCheck for DanubeApi {
    async fn health_check(
        &self,
        request: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        if let Some((owner, channel)) = self.proxy.target(&request, &self.broker.advertised_url) {
            let mut client =
                sava_proto::danube::health_check_client::HealthCheckClient::new(channel);
            // An owner that cannot be reached closes the client's producer
            // or consumer, which then looks the topic up again.
            let answer = client
                .health_check(passed_on(request.into_inner(), &owner))
                .await
                .unwrap_or_else(|_| {
                    Response::new(pb::HealthCheckResponse {
                        status: ClientStatus::Close as i32,
                    })
                });
            return Ok(answer);
        }
        let request = request.into_inner();
        let alive = match ClientType::try_from(request.client) {
            Ok(ClientType::Producer) => match self.broker.producer(request.id) {
                Ok((_, producer)) => {
                    producer.touch();
                    true
                }
                Err(_) => false,
            },
            Ok(ClientType::Consumer) => self.broker.has_consumer(request.id),
            Err(_) => return Err(invalid("client", request.client)),
        };
        let status = match alive && !self.broker.is_stopping() {
            true => ClientStatus::Ok,
            false => ClientStatus::Close,
        };
        Ok(Response::new(pb::HealthCheckResponse {
            status: status as i32,
        }))
    }
}

fn invalid(field: &str, value: i32) -> Status {
    BrokerError::InvalidRequest(format!("{field} {value} is not a known value")).into()
}

fn missing(field: &str) -> Status {
    BrokerError::InvalidRequest(format!("{field} is missing")).into()
}
