//! The `danube_admin` services on the admin port: BrokerAdmin,
//! NamespaceAdmin and TopicAdmin as Danube 0.16's admin tools call them,
//! over the same core calls as `sava.v1.Admin` ([`super::admin`]).
//!
//! Calls about the subscriptions of a topic another broker owns go to that
//! broker's `sava.v1.Admin` API ([`super::forward`]), one hop at most; the
//! rest is answered from the catalog and the topics loaded here. Danube's
//! ClusterAdmin (Raft membership) and SecurityAdmin (roles and bindings) are
//! not served, and what Sava has no equivalent for is refused with
//! UNIMPLEMENTED naming it. `proto/danube_admin.proto` says what each call
//! maps to.
//!
//! Known gaps:
//! - DeleteTopic sees the producers of topics loaded on the broker asked
//!   only, as `sava.v1.Admin.DeleteTopic` does; a producer attached to
//!   another owner does not stop the delete.
//! - A subscription call on the parent of a partitioned topic walks the
//!   partitions one by one: a refusal on one partition leaves the earlier
//!   ones changed.

use std::sync::Arc;
use std::time::Duration;

use sava_metadata::{
    BrokerRecord, BrokerState, DispatchMode, NamespacePolicies, NamespaceRecord, TopicRecord,
};
use sava_proto::danube_admin as pb;
use sava_proto::danube_admin::broker_admin_server::BrokerAdmin;
use sava_proto::danube_admin::namespace_admin_server::NamespaceAdmin;
use sava_proto::danube_admin::topic_admin_server::TopicAdmin;
use sava_proto::sava::v1;
use sava_proto::{ErrorKind, WireError};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::forward::{Forwarder, passed_on};
use super::native::subscription_type;
use crate::broker::{
    Broker, Creation, SchemaSpec, TopicSpec, VersionRef, dead_letter_topic, mode_name,
};
use crate::dispatch::SubscriptionType;
use crate::dispatch::reliable::{DeliveryPolicy, FailurePolicy};
use crate::error::BrokerError;
use crate::names::{TopicName, check_namespace};
use crate::subscription::Subscription;
use crate::topic::{Topic, now_ms};

/// How far above or below the mean load a broker is reported as over- or
/// underloaded.
const IMBALANCE: f64 = 0.2;

/// The placement rule Sava uses, as GetClusterBalance names it.
const ASSIGNMENT_STRATEGY: &str = "least_loaded";

type NativeAdmin = v1::admin_client::AdminClient<Channel>;

/// Serves BrokerAdmin, NamespaceAdmin and TopicAdmin over one broker.
#[derive(Clone, Debug)]
pub struct DanubeAdminApi {
    broker: Arc<Broker>,
    forwarder: Arc<Forwarder>,
}

impl DanubeAdminApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        DanubeAdminApi {
            broker,
            forwarder: Arc::new(Forwarder::default()),
        }
    }

    async fn existing_namespace(&self, name: &str) -> Result<NamespaceRecord, BrokerError> {
        check_namespace(name)?;
        self.broker
            .catalog()
            .namespace(name)
            .await?
            .ok_or_else(|| BrokerError::NamespaceNotFound(name.to_string()))
    }

    /// The topics of namespace `name` as Danube counts them: topics and
    /// partitions, without the parents of partitioned topics.
    async fn namespace_topics(&self, name: &str) -> Result<Vec<TopicRecord>, BrokerError> {
        self.existing_namespace(name).await?;
        let topics = self.broker.catalog().list_topics(name).await?;
        Ok(topics.into_iter().filter(|t| t.partitions == 0).collect())
    }

    /// The id of the live broker owning `topic`; empty when none does.
    async fn owner_id(&self, topic: &str) -> Result<String, BrokerError> {
        let owner = self.broker.cluster.current_owner(topic).await?;
        Ok(owner.map(|o| o.broker_id).unwrap_or_default())
    }

    /// Creates a topic as `spec` says; one that exists with the same
    /// settings is left as it is.
    async fn create(&self, name: &str, spec: &TopicSpec) -> Result<(), BrokerError> {
        let name = TopicName::parse(name)?;
        if let Some(existing) = self.broker.catalog().topic(name.as_str()).await? {
            return match same_settings(&existing, spec) {
                true => Ok(()),
                false => Err(BrokerError::TopicExists(format!(
                    "topic {name} exists with {}",
                    settings(&existing)
                ))),
            };
        }
        self.broker
            .create_topic(&name, spec, Creation::Explicit)
            .await?;
        Ok(())
    }

    /// The admin API of the broker owning `part`, when that is another one.
    async fn owner_of<T>(
        &self,
        part: &str,
        request: &Request<T>,
    ) -> Result<Option<NativeAdmin>, Status> {
        self.forwarder.owner_of(&self.broker, part, request).await
    }

    /// The names of the subscriptions of `record` (of every partition of a
    /// partitioned topic), sorted: from the owner when another broker owns
    /// it, from memory when it is loaded here, else from the catalog, which
    /// keeps the subscriptions of reliable topics (a non-reliable topic
    /// nobody serves has none). Nothing is loaded or placed.
    async fn subscription_names<T>(
        &self,
        record: &TopicRecord,
        request: &Request<T>,
    ) -> Result<Vec<String>, Status> {
        let mut names = Vec::new();
        for part in parts(record)? {
            if let Some(mut owner) = self.owner_of(&part, request).await? {
                let asked = passed_on(v1::ListSubscriptionsRequest { topic: part });
                let listed = owner.list_subscriptions(asked).await?.into_inner();
                names.extend(listed.subscriptions.into_iter().map(|s| s.name));
                continue;
            }
            match self.broker.loaded(&part) {
                Some(topic) => names.extend(topic.subscriptions().iter().map(|s| s.name.clone())),
                None => {
                    let saved = self
                        .broker
                        .catalog()
                        .subscriptions(&part)
                        .await
                        .map_err(BrokerError::from)?;
                    names.extend(saved.into_iter().map(|s| s.name));
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Subscription `name` of topic or partition `part`, loading the topic
    /// here.
    async fn local_subscription(
        &self,
        part: &str,
        name: &str,
    ) -> Result<(Arc<Topic>, Arc<Subscription>), BrokerError> {
        super::admin::loaded_subscription(&self.broker, part, name).await
    }

    /// Deletes subscription `name` of `part`, owned here, unless consumers
    /// are connected to it.
    async fn unsubscribe_here(&self, part: &str, name: &str) -> Result<(), BrokerError> {
        let (topic, subscription) = self.local_subscription(part, name).await?;
        let connected = subscription
            .consumers()
            .iter()
            .filter(|c| c.is_attached())
            .count();
        if connected > 0 {
            return Err(BrokerError::InUse(format!(
                "subscription {name} on {part} has {connected} connected consumers; close them before unsubscribing"
            )));
        }
        for consumer in subscription.consumers() {
            self.broker.close_consumer(consumer.id);
        }
        topic.remove_subscription(name);
        self.broker
            .catalog()
            .delete_subscription(topic.name.as_str(), name)
            .await?;
        Ok(())
    }

    async fn set_policy_here(
        &self,
        part: &str,
        name: &str,
        policy: DeliveryPolicy,
    ) -> Result<(), BrokerError> {
        let (topic, subscription) = self.local_subscription(part, name).await?;
        self.broker
            .set_subscription_policy(&topic, &subscription, policy)
            .await
    }
}

#[tonic::async_trait]
impl BrokerAdmin for DanubeAdminApi {
    async fn list_brokers(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::BrokerListResponse>, Status> {
        let registered = self.broker.cluster.refresh().await?;
        let leader = self.broker.live_leader().await?;
        let now = now_ms();
        let brokers = registered
            .into_iter()
            .map(|record| broker_info(record, leader.as_deref(), now))
            .collect();
        Ok(Response::new(pb::BrokerListResponse { brokers }))
    }

    async fn get_leader_broker(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::BrokerResponse>, Status> {
        let leader = self.broker.live_leader().await?.ok_or_else(|| {
            Status::from(WireError::new(
                ErrorKind::Unavailable,
                "the cluster has no leader right now; one is elected within a lease",
            ))
        })?;
        Ok(Response::new(pb::BrokerResponse { leader }))
    }

    async fn list_namespaces(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::NamespaceListResponse>, Status> {
        let records = self
            .broker
            .catalog()
            .list_namespaces()
            .await
            .map_err(BrokerError::from)?;
        let namespaces = records.into_iter().map(|n| n.name).collect();
        Ok(Response::new(pb::NamespaceListResponse { namespaces }))
    }

    async fn unload_broker(
        &self,
        request: Request<pb::UnloadBrokerRequest>,
    ) -> Result<Response<pb::UnloadBrokerResponse>, Status> {
        let request = request.into_inner();
        if request.broker_id.is_empty() {
            return Err(BrokerError::InvalidRequest(
                "broker_id must name the broker to unload; ListBrokers gives the ids".into(),
            )
            .into());
        }
        if !request.namespaces_include.is_empty() || !request.namespaces_exclude.is_empty() {
            return Err(unsupported(
                "sava unloads a whole broker, every topic it owns; namespaces_include and namespaces_exclude are not supported",
            ));
        }
        let id = request.broker_id;
        let brokers = self.broker.cluster.refresh().await?;
        if !brokers.iter().any(|b| b.id == id) {
            return Err(BrokerError::BrokerNotFound(id).into());
        }
        let owned = self
            .broker
            .catalog()
            .owned_topics(&id)
            .await
            .map_err(BrokerError::from)?;
        let total = owned.len() as u32;
        let planned = pb::UnloadBrokerResponse {
            started: false,
            total,
            pending: total,
            ..pb::UnloadBrokerResponse::default()
        };
        if request.dry_run {
            return Ok(Response::new(planned));
        }

        // The leader places topics on live, active brokers only: without
        // one the drained topics would serve nowhere.
        let now = now_ms();
        let takers = brokers
            .iter()
            .filter(|b| b.id != id && b.is_alive(now) && b.state == BrokerState::Active)
            .count();
        if takers == 0 {
            return Err(WireError::new(
                ErrorKind::Conflict,
                format!(
                    "broker {id} is the only live active broker, so its topics would have nowhere to go; start or activate another broker first"
                ),
            )
            .into());
        }
        self.broker
            .set_broker_state(&id, BrokerState::Draining)
            .await?;
        Ok(Response::new(pb::UnloadBrokerResponse {
            started: true,
            ..planned
        }))
    }

    async fn activate_broker(
        &self,
        request: Request<pb::ActivateBrokerRequest>,
    ) -> Result<Response<pb::ActivateBrokerResponse>, Status> {
        let id = request.into_inner().broker_id;
        if id.is_empty() {
            return Err(BrokerError::InvalidRequest(
                "broker_id must name the broker to activate; ListBrokers gives the ids".into(),
            )
            .into());
        }
        self.broker
            .set_broker_state(&id, BrokerState::Active)
            .await?;
        Ok(Response::new(pb::ActivateBrokerResponse { success: true }))
    }

    async fn get_cluster_balance(
        &self,
        _: Request<pb::ClusterBalanceRequest>,
    ) -> Result<Response<pb::ClusterBalanceResponse>, Status> {
        let brokers = self.broker.cluster.refresh().await?;
        let now = now_ms();
        let mut loads = Vec::new();
        for record in brokers.iter().filter(|b| b.is_alive(now)) {
            let owned = self
                .broker
                .catalog()
                .owned_topics(&record.id)
                .await
                .map_err(BrokerError::from)?
                .len();
            let load = crate::cluster::placement_load(owned, record);
            loads.push((broker_number(&record.id), owned as u32, load));
        }
        Ok(Response::new(balance(loads)))
    }

    async fn trigger_rebalance(
        &self,
        _: Request<pb::RebalanceRequest>,
    ) -> Result<Response<pb::RebalanceResponse>, Status> {
        Err(unsupported(
            "sava places each topic on the least loaded broker when it is assigned (at its first lookup, after a hand-over, or when its broker's lease expires) and does not move topics on demand; UnloadTopic or UnloadBroker have topics placed again",
        ))
    }
}

#[tonic::async_trait]
impl NamespaceAdmin for DanubeAdminApi {
    async fn get_namespace_topics(
        &self,
        request: Request<pb::NamespaceRequest>,
    ) -> Result<Response<pb::TopicListResponse>, Status> {
        let name = request.into_inner().name;
        let records = self.namespace_topics(&name).await?;
        let topics = records.into_iter().map(|t| t.name).collect();
        Ok(Response::new(pb::TopicListResponse { topics }))
    }

    async fn get_namespace_policies(
        &self,
        request: Request<pb::NamespaceRequest>,
    ) -> Result<Response<pb::PolicyResponse>, Status> {
        let name = request.into_inner().name;
        let record = self.existing_namespace(&name).await?;
        let policies = serde_json::to_string(&record.policies).map_err(|error| {
            Status::from(WireError::new(
                ErrorKind::Internal,
                format!("cannot encode the policies of namespace {name}: {error}"),
            ))
        })?;
        Ok(Response::new(pb::PolicyResponse { policies }))
    }

    async fn create_namespace(
        &self,
        request: Request<pb::NamespaceRequest>,
    ) -> Result<Response<pb::NamespaceResponse>, Status> {
        let name = request.into_inner().name;
        check_namespace(&name)?;
        let catalog = self.broker.catalog();
        let existing = catalog.namespace(&name).await.map_err(BrokerError::from)?;
        if existing.is_none() {
            catalog
                .create_namespace(&name, NamespacePolicies::default())
                .await
                .map_err(BrokerError::from)?;
        }
        Ok(Response::new(pb::NamespaceResponse { success: true }))
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::NamespaceRequest>,
    ) -> Result<Response<pb::NamespaceResponse>, Status> {
        let name = request.into_inner().name;
        let topics = self.namespace_topics(&name).await?.len();
        if topics > 0 {
            return Err(BrokerError::InUse(format!(
                "namespace {name} has {topics} topics; delete them before the namespace"
            ))
            .into());
        }
        self.broker
            .catalog()
            .delete_namespace(&name)
            .await
            .map_err(BrokerError::from)?;
        Ok(Response::new(pb::NamespaceResponse { success: true }))
    }
}

#[tonic::async_trait]
impl TopicAdmin for DanubeAdminApi {
    async fn list_namespace_topics(
        &self,
        request: Request<pb::NamespaceRequest>,
    ) -> Result<Response<pb::TopicInfoListResponse>, Status> {
        let name = request.into_inner().name;
        let mut topics = Vec::new();
        for record in self.namespace_topics(&name).await? {
            let broker_id = self.owner_id(&record.name).await?;
            topics.push(pb::TopicInfo {
                broker_id,
                delivery: delivery_name(record.dispatch_mode).into(),
                name: record.name,
            });
        }
        Ok(Response::new(pb::TopicInfoListResponse { topics }))
    }

    async fn list_broker_topics(
        &self,
        request: Request<pb::BrokerRequest>,
    ) -> Result<Response<pb::TopicInfoListResponse>, Status> {
        let id = request.into_inner().broker_id;
        let catalog = self.broker.catalog();
        let registered = catalog.brokers().await.map_err(BrokerError::from)?;
        if !registered.iter().any(|b| b.id == id) {
            return Err(BrokerError::BrokerNotFound(id).into());
        }
        let mut topics = Vec::new();
        for name in catalog.owned_topics(&id).await.map_err(BrokerError::from)? {
            // Deleted since the ownership was read.
            let Some(record) = catalog.topic(&name).await.map_err(BrokerError::from)? else {
                continue;
            };
            topics.push(pb::TopicInfo {
                name,
                broker_id: id.clone(),
                delivery: delivery_name(record.dispatch_mode).into(),
            });
        }
        Ok(Response::new(pb::TopicInfoListResponse { topics }))
    }

    async fn create_topic(
        &self,
        request: Request<pb::NewTopicRequest>,
    ) -> Result<Response<pb::TopicResponse>, Status> {
        let request = request.into_inner();
        let spec = TopicSpec {
            dispatch_mode: dispatch_mode(request.dispatch_strategy)?,
            partitions: 0,
            schema: subject_spec(request.schema_subject),
        };
        self.create(&request.name, &spec).await?;
        Ok(Response::new(pb::TopicResponse { success: true }))
    }

    async fn create_partitioned_topic(
        &self,
        request: Request<pb::PartitionedTopicRequest>,
    ) -> Result<Response<pb::TopicResponse>, Status> {
        let request = request.into_inner();
        if request.partitions == 0 {
            return Err(BrokerError::InvalidRequest(format!(
                "partitioned topic {} needs at least 1 partition; create a topic without partitions with CreateTopic",
                request.base_name
            ))
            .into());
        }
        let spec = TopicSpec {
            dispatch_mode: dispatch_mode(request.dispatch_strategy)?,
            partitions: request.partitions,
            schema: subject_spec(request.schema_subject),
        };
        self.create(&request.base_name, &spec).await?;
        Ok(Response::new(pb::TopicResponse { success: true }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::TopicRequest>,
    ) -> Result<Response<pb::TopicResponse>, Status> {
        let name = request.get_ref().name.clone();
        let record = self.broker.topic_record(&name).await?;
        let subscriptions = self.subscription_names(&record, &request).await?;
        if !subscriptions.is_empty() {
            return Err(BrokerError::InUse(format!(
                "topic {} has subscriptions {}; unsubscribe them first",
                record.name,
                subscriptions.join(", ")
            ))
            .into());
        }
        for part in parts(&record)? {
            let attached = self.broker.loaded(&part).map_or(0, |t| t.producers().len());
            if attached > 0 {
                let idle = self.broker.config.limits.producer_idle_secs;
                return Err(BrokerError::InUse(format!(
                    "topic {part} has {attached} producers attached; stop them first (a silent Danube producer is detached after {idle} s)"
                ))
                .into());
            }
        }
        self.broker.delete_topic(&record.name, false).await?;
        Ok(Response::new(pb::TopicResponse { success: true }))
    }

    async fn unload_topic(
        &self,
        request: Request<pb::TopicRequest>,
    ) -> Result<Response<pb::TopicResponse>, Status> {
        let name = request.get_ref().name.clone();
        let record = self.broker.topic_record(&name).await?;
        let mut unloaded = false;
        for part in parts(&record)? {
            if let Some(mut owner) = self.owner_of(&part, &request).await? {
                let asked = passed_on(v1::UnloadTopicRequest { name: part });
                unloaded |= owner.unload_topic(asked).await?.into_inner().unloaded;
                continue;
            }
            // Handed over: the next lookup places it again, by load.
            unloaded |= self.broker.hand_over_now(&part).await;
        }
        Ok(Response::new(pb::TopicResponse { success: unloaded }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::TopicRequest>,
    ) -> Result<Response<pb::SubscriptionListResponse>, Status> {
        let name = request.get_ref().name.clone();
        let record = self.broker.topic_record(&name).await?;
        let subscriptions = self.subscription_names(&record, &request).await?;
        Ok(Response::new(pb::SubscriptionListResponse {
            subscriptions,
        }))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        let subscription = request.get_ref().subscription.clone();
        let record = self.broker.topic_record(&topic).await?;
        let partitioned = record.partitions > 0;
        let mut removed = 0;
        for part in parts(&record)? {
            let outcome = match self.owner_of(&part, &request).await? {
                Some(mut owner) => {
                    let asked = passed_on(v1::DeleteSubscriptionRequest {
                        topic: part.clone(),
                        subscription: subscription.clone(),
                        force: false,
                    });
                    owner.delete_subscription(asked).await.map(|_| ())
                }
                None => self
                    .unsubscribe_here(&part, &subscription)
                    .await
                    .map_err(Status::from),
            };
            match outcome {
                Ok(()) => removed += 1,
                // A partition without the subscription.
                Err(status) if partitioned && status.code() == Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        if removed == 0 {
            return Err(BrokerError::SubscriptionNotFound {
                topic: record.name,
                subscription,
            }
            .into());
        }
        Ok(Response::new(pb::SubscriptionResponse { success: true }))
    }

    async fn set_subscription_failure_policy(
        &self,
        request: Request<pb::SetSubscriptionFailurePolicyRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        let subscription = request.get_ref().subscription.clone();
        let wanted = request
            .get_ref()
            .failure_policy
            .clone()
            .ok_or_else(|| BrokerError::InvalidRequest("failure_policy must be set".into()))?;
        let record = self.broker.topic_record(&topic).await?;
        let policy = delivery_policy(&wanted)?;
        let target = dead_letter_topic(&TopicName::parse(&record.name)?, &subscription);
        if let Some(asked) = wanted.dead_letter_topic.as_deref()
            && !asked.is_empty()
            && asked != target
        {
            return Err(unsupported(format!(
                "sava writes the dead letters of subscription {subscription} on {} to {target}; dead_letter_topic {asked} is not supported",
                record.name
            )));
        }

        let partitioned = record.partitions > 0;
        let mut applied = 0;
        for part in parts(&record)? {
            let outcome = match self.owner_of(&part, &request).await? {
                Some(mut owner) => {
                    set_policy_elsewhere(&mut owner, &part, &subscription, policy).await
                }
                None => self
                    .set_policy_here(&part, &subscription, policy)
                    .await
                    .map_err(Status::from),
            };
            match outcome {
                Ok(()) => applied += 1,
                Err(status) if partitioned && status.code() == Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        if applied == 0 {
            return Err(BrokerError::SubscriptionNotFound {
                topic: record.name,
                subscription,
            }
            .into());
        }
        Ok(Response::new(pb::SubscriptionResponse { success: true }))
    }

    /// For the parent of a partitioned topic: the policy of the first
    /// partition that has the subscription.
    async fn get_subscription_failure_policy(
        &self,
        request: Request<pb::GetSubscriptionFailurePolicyRequest>,
    ) -> Result<Response<pb::GetSubscriptionFailurePolicyResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        let subscription = request.get_ref().subscription.clone();
        let record = self.broker.topic_record(&topic).await?;
        let partitioned = record.partitions > 0;
        for part in parts(&record)? {
            let found = match self.owner_of(&part, &request).await? {
                Some(mut owner) => {
                    let asked = passed_on(v1::DescribeSubscriptionRequest {
                        topic: part.clone(),
                        subscription: subscription.clone(),
                    });
                    match owner.describe_subscription(asked).await {
                        Ok(info) => policy_of_info(info.into_inner()),
                        Err(status) => Err(status),
                    }
                }
                None => match self.local_subscription(&part, &subscription).await {
                    Ok((_, found)) => Ok(policy_of(&part, &found)),
                    Err(error) => Err(Status::from(error)),
                },
            };
            match found {
                Ok(answer) => return Ok(Response::new(answer)),
                Err(status) if partitioned && status.code() == Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        Err(BrokerError::SubscriptionNotFound {
            topic: record.name,
            subscription,
        }
        .into())
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let name = request.get_ref().name.clone();
        let record = self.broker.topic_record(&name).await?;
        let subscriptions = self.subscription_names(&record, &request).await?;
        let broker_id = match record.partitions {
            0 => self.owner_id(&record.name).await?,
            _ => String::new(),
        };
        let mut described = pb::DescribeTopicResponse {
            name: record.name.clone(),
            subscriptions,
            broker_id,
            delivery: delivery_name(record.dispatch_mode).into(),
            ..pb::DescribeTopicResponse::default()
        };
        if let Some(bound) = &record.schema {
            let catalog = self.broker.catalog();
            let version = catalog
                .schema(bound.schema_id, Some(bound.version))
                .await
                .map_err(BrokerError::from)?;
            let subject = catalog
                .subject(&bound.subject)
                .await
                .map_err(BrokerError::from)?;
            described.schema_subject = Some(bound.subject.clone());
            described.schema_id = Some(bound.schema_id);
            described.schema_version = Some(bound.version);
            described.schema_type = version.map(|v| v.schema_type);
            described.compatibility_mode = subject.map(|s| s.compatibility_mode.to_uppercase());
        }
        Ok(Response::new(described))
    }

    async fn set_subscription_dispatch_config(
        &self,
        _: Request<pb::SetSubscriptionDispatchConfigRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        Err(self.no_dispatch_config())
    }

    async fn get_subscription_dispatch_config(
        &self,
        _: Request<pb::GetSubscriptionDispatchConfigRequest>,
    ) -> Result<Response<pb::GetSubscriptionDispatchConfigResponse>, Status> {
        Err(self.no_dispatch_config())
    }
}

impl DanubeAdminApi {
    fn no_dispatch_config(&self) -> Status {
        let limit = self.broker.config.limits.max_unacked_per_consumer;
        unsupported(format!(
            "sava bounds unacknowledged messages per consumer for the whole broker (limits.max_unacked_per_consumer = {limit}); a per-subscription dispatch config is not supported"
        ))
    }
}

/// A refusal of something Sava has no equivalent for.
fn unsupported(what: impl Into<String>) -> Status {
    WireError::new(ErrorKind::Unsupported, what).into()
}

fn broker_info(record: BrokerRecord, leader: Option<&str>, now: u64) -> pb::BrokerInfo {
    let role = match leader {
        Some(leader) if leader == record.id => "Cluster_Leader",
        Some(_) => "Cluster_Follower",
        None => "None",
    };
    let status = match record.is_alive(now) {
        true => record.state.as_str(),
        false => "lease_expired",
    };
    pb::BrokerInfo {
        broker_role: role.into(),
        broker_status: status.into(),
        broker_addr: record.client_url,
        admin_addr: record.admin_url,
        metrics_addr: record.http_url,
        broker_id: record.id,
    }
}

/// The number standing for a broker where Danube's messages want one: the
/// 64-bit FNV-1a hash of Sava's string id.
fn broker_number(id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The balance figures of `brokers`, each `(number, owned topics, load)`.
fn balance(brokers: Vec<(u64, u32, f64)>) -> pb::ClusterBalanceResponse {
    let count = brokers.len();
    let loads: Vec<f64> = brokers.iter().map(|(_, _, load)| *load).collect();
    let (mean, variance) = match count {
        0 => (0.0, 0.0),
        n => {
            let mean = loads.iter().sum::<f64>() / n as f64;
            let squares: f64 = loads.iter().map(|load| (load - mean).powi(2)).sum();
            (mean, squares / n as f64)
        }
    };
    let std_deviation = variance.sqrt();
    let brokers: Vec<pb::BrokerLoadInfo> = brokers
        .into_iter()
        .map(|(broker_id, topic_count, load)| pb::BrokerLoadInfo {
            broker_id,
            load,
            topic_count,
            is_overloaded: mean > 0.0 && load > mean * (1.0 + IMBALANCE),
            is_underloaded: mean > 0.0 && load < mean * (1.0 - IMBALANCE),
        })
        .collect();
    pb::ClusterBalanceResponse {
        coefficient_of_variation: if mean > 0.0 {
            std_deviation / mean
        } else {
            0.0
        },
        mean_load: mean,
        max_load: loads.iter().copied().reduce(f64::max).unwrap_or(0.0),
        min_load: loads.iter().copied().reduce(f64::min).unwrap_or(0.0),
        std_deviation,
        broker_count: count as u32,
        brokers,
        assignment_strategy: ASSIGNMENT_STRATEGY.into(),
    }
}

/// The topics `record` stands for: its partitions, or itself.
fn parts(record: &TopicRecord) -> Result<Vec<String>, BrokerError> {
    let name = TopicName::parse(&record.name)?;
    Ok(crate::broker::partition_names(&name, record))
}

fn delivery_name(mode: DispatchMode) -> &'static str {
    match mode {
        DispatchMode::Reliable => "Reliable",
        DispatchMode::NonReliable => "NonReliable",
    }
}

fn dispatch_mode(value: i32) -> Result<DispatchMode, BrokerError> {
    match pb::DispatchStrategy::try_from(value) {
        Ok(pb::DispatchStrategy::NonReliable) => Ok(DispatchMode::NonReliable),
        Ok(pb::DispatchStrategy::Reliable) => Ok(DispatchMode::Reliable),
        Err(_) => Err(BrokerError::InvalidRequest(format!(
            "dispatch_strategy {value} is not a known value; use 0 (NonReliable) or 1 (Reliable)"
        ))),
    }
}

/// A topic's schema from a Danube subject: its latest version.
fn subject_spec(subject: Option<String>) -> Option<SchemaSpec> {
    subject
        .filter(|s| !s.is_empty())
        .map(|subject| SchemaSpec::Subject {
            subject,
            version: VersionRef::Latest,
        })
}

/// Whether `existing` is what `spec` (with a Danube subject or none) asks
/// for.
fn same_settings(existing: &TopicRecord, spec: &TopicSpec) -> bool {
    let wanted = match &spec.schema {
        Some(SchemaSpec::Subject { subject, .. }) => Some(subject.as_str()),
        _ => None,
    };
    let bound = existing.schema.as_ref().map(|s| s.subject.as_str());
    existing.partitions == spec.partitions
        && existing.dispatch_mode == spec.dispatch_mode
        && bound == wanted
}

/// `existing`'s settings, for a refusal.
fn settings(existing: &TopicRecord) -> String {
    let schema = match &existing.schema {
        Some(bound) => format!("schema subject {}", bound.subject),
        None => "no schema".to_string(),
    };
    format!(
        "{} partitions, {} dispatch and {schema}",
        existing.partitions,
        mode_name(existing.dispatch_mode)
    )
}

/// Danube's number for a subscription type.
fn danube_subscription_type(kind: SubscriptionType) -> i32 {
    match kind {
        SubscriptionType::Exclusive => 0,
        SubscriptionType::Shared => 1,
        SubscriptionType::Failover => 2,
        SubscriptionType::KeyShared => 3,
    }
}

/// The Sava delivery policy a Danube failure policy describes; refused when
/// it asks for something Sava does not do.
fn delivery_policy(wanted: &pb::SubscriptionFailurePolicy) -> Result<DeliveryPolicy, Status> {
    let backoff =
        pb::SubscriptionBackoffStrategy::try_from(wanted.backoff_strategy).map_err(|_| {
            BrokerError::InvalidRequest(format!(
                "backoff_strategy {} is not a known value",
                wanted.backoff_strategy
            ))
        })?;
    let poison = pb::SubscriptionPoisonPolicy::try_from(wanted.poison_policy).map_err(|_| {
        BrokerError::InvalidRequest(format!(
            "poison_policy {} is not a known value",
            wanted.poison_policy
        ))
    })?;

    let mut refused = Vec::new();
    if wanted.base_redelivery_delay_ms != 0 {
        refused.push("base_redelivery_delay_ms");
    }
    if wanted.max_redelivery_delay_ms != 0 {
        refused.push("max_redelivery_delay_ms");
    }
    if backoff == pb::SubscriptionBackoffStrategy::Exponential {
        refused.push("an Exponential backoff_strategy");
    }
    if !refused.is_empty() {
        return Err(unsupported(format!(
            "sava redelivers a failed message at once, or after the delay its nack asks for, with no backoff and no cap; {} not supported (use 0 and Fixed)",
            match refused.len() {
                1 => format!("{} is", refused[0]),
                _ => format!("{} are", refused.join(", ")),
            }
        )));
    }

    Ok(DeliveryPolicy {
        ack_timeout: (wanted.ack_timeout_ms > 0)
            .then(|| Duration::from_millis(wanted.ack_timeout_ms)),
        // Danube counts redeliveries, Sava deliveries; the largest count
        // stands for no limit.
        max_deliveries: wanted.max_redelivery_count.checked_add(1),
        on_max_deliveries: match poison {
            pb::SubscriptionPoisonPolicy::DeadLetter => FailurePolicy::DeadLetter,
            pb::SubscriptionPoisonPolicy::Block => FailurePolicy::Block,
            pb::SubscriptionPoisonPolicy::Drop => FailurePolicy::Drop,
        },
    })
}

/// `policy` as Danube describes it; `dead_letters` is where the
/// subscription's dead letters go.
fn policy_to_wire(policy: DeliveryPolicy, dead_letters: String) -> pb::SubscriptionFailurePolicy {
    let poison = match policy.on_max_deliveries {
        FailurePolicy::DeadLetter => pb::SubscriptionPoisonPolicy::DeadLetter,
        FailurePolicy::Block => pb::SubscriptionPoisonPolicy::Block,
        FailurePolicy::Drop => pb::SubscriptionPoisonPolicy::Drop,
    };
    pb::SubscriptionFailurePolicy {
        max_redelivery_count: policy
            .max_deliveries
            .map_or(u32::MAX, |d| d.saturating_sub(1)),
        ack_timeout_ms: policy.ack_timeout.map_or(0, |t| t.as_millis() as u64),
        base_redelivery_delay_ms: 0,
        max_redelivery_delay_ms: 0,
        backoff_strategy: pb::SubscriptionBackoffStrategy::Fixed as i32,
        dead_letter_topic: (policy.on_max_deliveries == FailurePolicy::DeadLetter)
            .then_some(dead_letters),
        poison_policy: poison as i32,
    }
}

/// The failure policy of subscription `subscription` of `part`, loaded
/// here.
fn policy_of(part: &str, subscription: &Subscription) -> pb::GetSubscriptionFailurePolicyResponse {
    let reliable = subscription.reliable_stats().is_some();
    let failure_policy = reliable.then(|| {
        let dead_letters = TopicName::parse(part)
            .map(|name| dead_letter_topic(&name, &subscription.name))
            .unwrap_or_default();
        policy_to_wire(subscription.policy(), dead_letters)
    });
    pb::GetSubscriptionFailurePolicyResponse {
        failure_policy,
        subscription_type: danube_subscription_type(subscription.kind),
    }
}

/// The failure policy in a subscription's description from its owner.
fn policy_of_info(
    info: v1::SubscriptionInfo,
) -> Result<pb::GetSubscriptionFailurePolicyResponse, Status> {
    let kind = subscription_type(info.subscription_type)?;
    // Empty on a non-reliable subscription.
    let failure_policy = FailurePolicy::named(&info.on_max_deliveries).map(|on_max_deliveries| {
        let policy = DeliveryPolicy {
            ack_timeout: (info.ack_timeout_ms > 0)
                .then(|| Duration::from_millis(info.ack_timeout_ms)),
            max_deliveries: (info.max_deliveries > 0).then_some(info.max_deliveries),
            on_max_deliveries,
        };
        policy_to_wire(policy, info.dead_letter_topic)
    });
    Ok(pb::GetSubscriptionFailurePolicyResponse {
        failure_policy,
        subscription_type: danube_subscription_type(kind),
    })
}

/// Sets `policy` on subscription `subscription` of `part` through its
/// owner's admin API, one key at a time.
async fn set_policy_elsewhere(
    owner: &mut NativeAdmin,
    part: &str,
    subscription: &str,
    policy: DeliveryPolicy,
) -> Result<(), Status> {
    let settings = [
        (
            "ack_timeout_ms",
            policy
                .ack_timeout
                .map_or(0, |t| t.as_millis() as u64)
                .to_string(),
        ),
        (
            "max_deliveries",
            policy.max_deliveries.unwrap_or(0).to_string(),
        ),
        (
            "on_max_deliveries",
            policy.on_max_deliveries.name().to_string(),
        ),
    ];
    for (key, value) in settings {
        let asked = passed_on(v1::SetSubscriptionPolicyRequest {
            topic: part.to_string(),
            subscription: subscription.to_string(),
            key: key.to_string(),
            value,
        });
        owner.set_subscription_policy(asked).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn danube_policy(max_redelivery_count: u32) -> pb::SubscriptionFailurePolicy {
        pb::SubscriptionFailurePolicy {
            max_redelivery_count,
            ack_timeout_ms: 5_000,
            base_redelivery_delay_ms: 0,
            max_redelivery_delay_ms: 0,
            backoff_strategy: pb::SubscriptionBackoffStrategy::Fixed as i32,
            dead_letter_topic: None,
            poison_policy: pb::SubscriptionPoisonPolicy::Drop as i32,
        }
    }

    #[test]
    fn broker_numbers_are_the_fnv1a_hash_of_the_id() {
        assert_eq!(broker_number(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(broker_number("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(
            broker_number("127.0.0.1:6650"),
            broker_number("127.0.0.1:6651")
        );
    }

    #[test]
    fn balance_figures_come_from_the_loads_and_flag_brokers_far_from_the_mean() {
        let figures = balance(vec![(1, 3, 3.0), (2, 1, 1.0)]);
        assert_eq!(figures.broker_count, 2);
        assert_eq!(figures.mean_load, 2.0);
        assert_eq!(figures.std_deviation, 1.0);
        assert_eq!(figures.coefficient_of_variation, 0.5);
        assert_eq!((figures.max_load, figures.min_load), (3.0, 1.0));
        assert!(figures.brokers[0].is_overloaded && !figures.brokers[0].is_underloaded);
        assert!(figures.brokers[1].is_underloaded && !figures.brokers[1].is_overloaded);
        assert_eq!(figures.assignment_strategy, "least_loaded");

        let empty = balance(Vec::new());
        assert_eq!(empty.broker_count, 0);
        assert_eq!(empty.mean_load, 0.0);
        assert_eq!(empty.coefficient_of_variation, 0.0);
    }

    #[test]
    fn redeliveries_become_deliveries_and_the_largest_count_means_no_limit() {
        let policy = delivery_policy(&danube_policy(4)).unwrap();
        assert_eq!(policy.max_deliveries, Some(5));
        assert_eq!(policy.ack_timeout, Some(Duration::from_secs(5)));
        assert_eq!(policy.on_max_deliveries, FailurePolicy::Drop);
        let back = policy_to_wire(policy, "/default/t-s-dlq".into());
        assert_eq!(back, danube_policy(4));

        let unlimited = delivery_policy(&danube_policy(u32::MAX)).unwrap();
        assert_eq!(unlimited.max_deliveries, None);
        assert_eq!(
            policy_to_wire(unlimited, String::new()).max_redelivery_count,
            u32::MAX
        );
    }

    #[test]
    fn redelivery_delays_and_backoff_are_refused_by_name() {
        let mut delayed = danube_policy(1);
        delayed.base_redelivery_delay_ms = 1_000;
        let refused = delivery_policy(&delayed).unwrap_err();
        assert_eq!(refused.code(), Code::Unimplemented);
        assert!(
            refused
                .message()
                .contains("base_redelivery_delay_ms is not supported"),
            "{refused:?}"
        );

        let mut exponential = danube_policy(1);
        exponential.backoff_strategy = pb::SubscriptionBackoffStrategy::Exponential as i32;
        exponential.max_redelivery_delay_ms = 60_000;
        let refused = delivery_policy(&exponential).unwrap_err();
        assert!(
            refused.message().contains(
                "max_redelivery_delay_ms, an Exponential backoff_strategy are not supported"
            ),
            "{refused:?}"
        );

        let mut unknown = danube_policy(1);
        unknown.poison_policy = 9;
        assert_eq!(
            delivery_policy(&unknown).unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
