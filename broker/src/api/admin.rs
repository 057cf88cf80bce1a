//! The `sava.v1.Admin` service on the admin port: brokers, namespaces,
//! topics and subscriptions.
//!
//! Creation is idempotent: creating what exists identically succeeds with a
//! `note`. Deleting a namespace with topics, or a topic with subscriptions
//! or clients, is refused without `force`.

use std::sync::Arc;

use sava_metadata::{NamespacePolicies, NamespaceRecord, TopicPolicies, TopicRecord};
use sava_proto::sava::v1 as pb;
use tonic::{Request, Response, Status};

use super::forward::{Forwarder, on_owner, passed_on};
use super::native::{
    mode_to_wire, start_position, subscription_type, subscription_type_to_wire, topic_spec,
};
use crate::broker::Broker;
use crate::dispatch::reliable::{DeliveryPolicy, FailurePolicy};
use crate::error::BrokerError;
use crate::names::{TopicName, check_namespace};
use crate::subscription::{Subscription, SubscriptionSnapshot};
use crate::topic::now_ms;

#[derive(Clone, Debug)]
pub struct AdminApi {
    broker: Arc<Broker>,
    forwarder: Arc<Forwarder>,
}

impl AdminApi {
    pub fn new(broker: Arc<Broker>) -> AdminApi {
        AdminApi {
            broker,
            forwarder: Arc::new(Forwarder::default()),
        }
    }

    /// Every registered broker as the store has it, with the leader marked.
    async fn broker_infos(&self) -> Result<Vec<pb::BrokerInfo>, BrokerError> {
        let cluster = &self.broker.cluster;
        let brokers = cluster.refresh().await?;
        let leader = self.broker.live_leader().await?;
        let now = now_ms();
        let mut infos = Vec::with_capacity(brokers.len());
        for record in brokers {
            let owned = self.broker.catalog().owned_topics(&record.id).await?;
            infos.push(pb::BrokerInfo {
                leader: leader.as_deref() == Some(record.id.as_str()),
                alive: record.is_alive(now),
                state: record.state.as_str().into(),
                topics: record.load.topics as u32,
                messages_in_per_sec: record.load.messages_in_per_sec,
                lease_expires_ms: record.lease_expires_ms,
                started_at_ms: record.registered_at_ms,
                version: match record.id == self.broker.broker_id {
                    true => env!("CARGO_PKG_VERSION").into(),
                    false => String::new(),
                },
                owned_topics: owned.len() as u32,
                owned_topic_names: Vec::new(),
                broker_id: record.id,
                client_url: record.client_url,
                admin_url: record.admin_url,
                http_url: record.http_url,
            });
        }
        Ok(infos)
    }

    /// Broker `id`, with the names of the topics it owns.
    async fn broker_info(&self, id: &str) -> Result<pb::BrokerInfo, BrokerError> {
        let mut info = self
            .broker_infos()
            .await?
            .into_iter()
            .find(|b| b.broker_id == id)
            .ok_or_else(|| BrokerError::BrokerNotFound(id.to_string()))?;
        info.owned_topic_names = self.broker.catalog().owned_topics(id).await?;
        Ok(info)
    }

    /// Records `state` for broker `id`, which acts on it at its next lease
    /// renewal (this broker at once).
    async fn set_broker_state(
        &self,
        id: &str,
        state: sava_metadata::BrokerState,
    ) -> Result<Response<pb::BrokerInfo>, Status> {
        self.broker.set_broker_state(id, state).await?;
        Ok(Response::new(self.broker_info(id).await?))
    }

    async fn namespace_info(
        &self,
        record: NamespaceRecord,
        note: &str,
    ) -> Result<pb::NamespaceInfo, BrokerError> {
        let topics = self.broker.catalog().list_topics(&record.name).await?;
        let top_level = topics.iter().filter(|t| t.partition_of.is_none()).count();
        Ok(pb::NamespaceInfo {
            policies: Some(policies_to_wire(&record.policies)),
            topics: top_level as u32,
            created_at_ms: record.created_at_ms,
            name: record.name,
            note: note.into(),
        })
    }

    async fn topic_info(
        &self,
        record: TopicRecord,
        note: &str,
    ) -> Result<pb::TopicInfo, BrokerError> {
        let (subject, version, schema_type) = match &record.schema {
            Some(schema) => {
                let found = self
                    .broker
                    .catalog()
                    .schema(schema.schema_id, Some(schema.version))
                    .await?;
                let schema_type = found.map(|r| r.schema_type).unwrap_or_default();
                (schema.subject.clone(), schema.version, schema_type)
            }
            None => (String::new(), 0, String::new()),
        };
        let ownership = match record.partitions {
            0 => self.broker.catalog().ownership(&record.name).await?,
            _ => None,
        };
        let (owner_broker, epoch) = ownership
            .and_then(|o| Some((o.owner?, o.epoch)))
            .unwrap_or_default();
        let owner_url = match record.partitions {
            0 => self
                .broker
                .cluster
                .brokers()
                .into_iter()
                .find(|b| b.id == owner_broker)
                .map(|b| b.client_url)
                .unwrap_or_default(),
            _ => self.broker.advertised_url.clone(),
        };
        Ok(pb::TopicInfo {
            owner_broker,
            epoch,
            dispatch_mode: mode_to_wire(record.dispatch_mode) as i32,
            partitions: record.partitions,
            partition_of: record.partition_of.unwrap_or_default(),
            schema_subject: subject,
            schema_version: version,
            schema_type,
            created_at_ms: record.created_at_ms,
            owner_url,
            name: record.name,
            note: note.into(),
        })
    }

    /// Whether `existing` has the schema `wanted` describes (or none).
    async fn same_schema(
        &self,
        existing: &TopicRecord,
        wanted: Option<&crate::broker::SchemaSpec>,
    ) -> Result<bool, BrokerError> {
        let (bound, wanted) = match (&existing.schema, wanted) {
            (None, None) => return Ok(true),
            (
                Some(bound),
                Some(crate::broker::SchemaSpec::Inline {
                    schema_type,
                    definition,
                }),
            ) => (bound, (schema_type, definition)),
            _ => return Ok(false),
        };
        let record = self
            .broker
            .catalog()
            .schema(bound.schema_id, Some(bound.version))
            .await?;
        Ok(record.is_some_and(|r| {
            crate::schema::normalize_type(wanted.0).ok() == Some(r.schema_type.as_str())
                && r.definition == *wanted.1
        }))
    }

    /// The reliable topics behind `name` (its partitions, or itself): the
    /// ones this broker owns, loaded, and the admin APIs of the owners of
    /// the others.
    async fn reliable_parts<T>(
        &self,
        name: &str,
        request: &Request<T>,
    ) -> Result<Vec<Part>, Status> {
        let mut parts = Vec::new();
        for part in self.broker.partitions(name).await? {
            if let Some(owner) = self
                .forwarder
                .owner_of(&self.broker, &part, request)
                .await?
            {
                parts.push(Part::Elsewhere(part, owner));
                continue;
            }
            let topic = self.broker.topic(&TopicName::parse(&part)?, None).await?;
            if topic.log().is_none() {
                return Err(BrokerError::InvalidRequest(format!(
                    "topic {part} is not reliable; only reliable topics keep segments"
                ))
                .into());
            }
            parts.push(Part::Here(topic));
        }
        Ok(parts)
    }

    /// A topic's own policies and the ones that apply to it.
    async fn topic_policies_info(
        &self,
        record: &TopicRecord,
    ) -> Result<pb::TopicPoliciesInfo, BrokerError> {
        let catalog = self.broker.catalog();
        let owner = record.partition_of.as_deref().unwrap_or(&record.name);
        let own = catalog.topic_policies(owner).await?;
        let namespace = TopicName::parse(&record.name)?.namespace().to_owned();
        let policies = catalog.namespace(&namespace).await?.map(|n| n.policies);
        let effective = policies.unwrap_or_default().with_topic(&own);
        Ok(pb::TopicPoliciesInfo {
            topic: record.name.clone(),
            retention_age_secs: own.retention_age_secs,
            retention_bytes: own.retention_bytes,
            backlog_quota_bytes: own.backlog_quota_bytes,
            backlog_policy: own.backlog_policy,
            effective: Some(policies_to_wire(&effective)),
        })
    }

    async fn record(&self, name: &str) -> Result<TopicRecord, BrokerError> {
        self.broker.topic_record(name).await
    }

    /// The subscription `name` of topic `topic`, which must be a
    /// partition or a topic that is not partitioned.
    async fn subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<(Arc<crate::topic::Topic>, Arc<Subscription>), BrokerError> {
        loaded_subscription(&self.broker, topic, name).await
    }
}

/// Subscription `name` of `topic` (a partition or a topic that is not
/// partitioned), loading the topic on `broker`.
pub(super) async fn loaded_subscription(
    broker: &Broker,
    topic: &str,
    name: &str,
) -> Result<(Arc<crate::topic::Topic>, Arc<Subscription>), BrokerError> {
    let topic_name = TopicName::parse(topic)?;
    let topic = broker.topic(&topic_name, None).await?;
    let subscription =
        topic
            .existing_subscription(name)
            .ok_or_else(|| BrokerError::SubscriptionNotFound {
                topic: topic_name.to_string(),
                subscription: name.to_string(),
            })?;
    Ok((topic, subscription))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn list_brokers(
        &self,
        _: Request<pb::ListBrokersRequest>,
    ) -> Result<Response<pb::ListBrokersResponse>, Status> {
        Ok(Response::new(pb::ListBrokersResponse {
            brokers: self.broker_infos().await?,
        }))
    }

    async fn get_leader(
        &self,
        _: Request<pb::GetLeaderRequest>,
    ) -> Result<Response<pb::BrokerInfo>, Status> {
        let leader = self
            .broker_infos()
            .await?
            .into_iter()
            .find(|b| b.leader)
            .ok_or_else(|| {
                Status::unavailable(
                    "the cluster has no leader right now; one is elected within a lease",
                )
            })?;
        Ok(Response::new(leader))
    }

    async fn describe_broker(
        &self,
        request: Request<pb::DescribeBrokerRequest>,
    ) -> Result<Response<pb::BrokerInfo>, Status> {
        let id = request.into_inner().broker_id;
        Ok(Response::new(self.broker_info(&id).await?))
    }

    async fn drain_broker(
        &self,
        request: Request<pb::DrainBrokerRequest>,
    ) -> Result<Response<pb::BrokerInfo>, Status> {
        let id = request.into_inner().broker_id;
        self.set_broker_state(&id, sava_metadata::BrokerState::Draining)
            .await
    }

    async fn activate_broker(
        &self,
        request: Request<pb::ActivateBrokerRequest>,
    ) -> Result<Response<pb::BrokerInfo>, Status> {
        let id = request.into_inner().broker_id;
        self.set_broker_state(&id, sava_metadata::BrokerState::Active)
            .await
    }

    async fn list_namespaces(
        &self,
        _: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let records = self
            .broker
            .catalog()
            .list_namespaces()
            .await
            .map_err(BrokerError::from)?;
        let mut namespaces = Vec::with_capacity(records.len());
        for record in records {
            namespaces.push(self.namespace_info(record, "").await?);
        }
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = request.into_inner().name;
        check_namespace(&name)?;
        let catalog = self.broker.catalog();
        if let Some(existing) = catalog.namespace(&name).await.map_err(BrokerError::from)? {
            return Ok(Response::new(
                self.namespace_info(existing, "namespace already exists")
                    .await?,
            ));
        }
        let record = catalog
            .create_namespace(&name, NamespacePolicies::default())
            .await
            .map_err(BrokerError::from)?;
        Ok(Response::new(self.namespace_info(record, "").await?))
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let request = request.into_inner();
        check_namespace(&request.name)?;
        let catalog = self.broker.catalog();
        if catalog
            .namespace(&request.name)
            .await
            .map_err(BrokerError::from)?
            .is_none()
        {
            return Err(BrokerError::NamespaceNotFound(request.name).into());
        }
        let topics: Vec<TopicRecord> = catalog
            .list_topics(&request.name)
            .await
            .map_err(BrokerError::from)?
            .into_iter()
            .filter(|t| t.partition_of.is_none())
            .collect();
        if !topics.is_empty() && !request.force {
            return Err(BrokerError::InUse(format!(
                "namespace {} has {} topics; use --force to delete them with it",
                request.name,
                topics.len()
            ))
            .into());
        }
        for topic in &topics {
            self.broker.delete_topic(&topic.name, true).await?;
        }
        catalog
            .delete_namespace(&request.name)
            .await
            .map_err(BrokerError::from)?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: format!("namespace {} and {} topics", request.name, topics.len()),
            note: String::new(),
        }))
    }

    async fn get_namespace(
        &self,
        request: Request<pb::GetNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = request.into_inner().name;
        let record = self
            .broker
            .catalog()
            .namespace(&name)
            .await
            .map_err(BrokerError::from)?
            .ok_or(BrokerError::NamespaceNotFound(name))?;
        Ok(Response::new(self.namespace_info(record, "").await?))
    }

    async fn set_namespace_policy(
        &self,
        request: Request<pb::SetNamespacePolicyRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let request = request.into_inner();
        let catalog = self.broker.catalog();
        let record = catalog
            .namespace(&request.name)
            .await
            .map_err(BrokerError::from)?
            .ok_or_else(|| BrokerError::NamespaceNotFound(request.name.clone()))?;
        let policies = apply_policy(record.policies, &request.key, &request.value)?;
        let record = catalog
            .set_namespace_policies(&request.name, policies)
            .await
            .map_err(BrokerError::from)?;
        Ok(Response::new(self.namespace_info(record, "").await?))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let catalog = self.broker.catalog();
        let namespaces = match namespace.is_empty() {
            true => catalog
                .list_namespaces()
                .await
                .map_err(BrokerError::from)?
                .into_iter()
                .map(|n| n.name)
                .collect(),
            false => {
                if catalog
                    .namespace(&namespace)
                    .await
                    .map_err(BrokerError::from)?
                    .is_none()
                {
                    return Err(BrokerError::NamespaceNotFound(namespace).into());
                }
                vec![namespace]
            }
        };
        let mut topics = Vec::new();
        for namespace in namespaces {
            for record in catalog
                .list_topics(&namespace)
                .await
                .map_err(BrokerError::from)?
            {
                if record.partition_of.is_none() {
                    topics.push(self.topic_info(record, "").await?);
                }
            }
        }
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicInfo>, Status> {
        let request = request.into_inner();
        let name = TopicName::parse(&request.name)?;
        let spec = topic_spec(pb::TopicSettings {
            dispatch_mode: request.dispatch_mode,
            partitions: request.partitions,
            schema: request.schema,
        })?;
        if let Some(existing) = self
            .broker
            .catalog()
            .topic(name.as_str())
            .await
            .map_err(BrokerError::from)?
        {
            let same = existing.partitions == spec.partitions
                && existing.dispatch_mode == spec.dispatch_mode;
            if !same {
                return Err(BrokerError::TopicExists(format!(
                    "topic {name} exists with {} partitions and {} dispatch",
                    existing.partitions,
                    crate::broker::mode_name(existing.dispatch_mode)
                ))
                .into());
            }
            if !self.same_schema(&existing, spec.schema.as_ref()).await? {
                return Err(BrokerError::TopicExists(format!(
                    "topic {name} exists with another schema"
                ))
                .into());
            }
            return Ok(Response::new(
                self.topic_info(existing, "topic already exists").await?,
            ));
        }
        let record = self
            .broker
            .create_topic(&name, &spec, crate::broker::Creation::Explicit)
            .await?;
        Ok(Response::new(self.topic_info(record, "").await?))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let request = request.into_inner();
        let deleted = self
            .broker
            .delete_topic(&request.name, request.force)
            .await?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: deleted.join(", "),
            note: String::new(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicInfo>, Status> {
        let record = self.record(&request.into_inner().name).await?;
        Ok(Response::new(self.topic_info(record, "").await?))
    }

    async fn topic_stats(
        &self,
        request: Request<pb::TopicStatsRequest>,
    ) -> Result<Response<pb::TopicStatsResponse>, Status> {
        let name = request.get_ref().name.clone();
        let record = self.record(&name).await?;
        let parts = match record.partitions {
            0 => vec![record.name.clone()],
            n => (0..n)
                .map(|i| format!("{}-part-{i}", record.name))
                .collect(),
        };
        let mut stats = pb::TopicStatsResponse {
            name: record.name.clone(),
            ..Default::default()
        };
        for part in parts {
            if let Some(mut owner) = self
                .forwarder
                .owner_of(&self.broker, &part, &request)
                .await?
            {
                let asked = passed_on(pb::TopicStatsRequest { name: part });
                add_stats(&mut stats, owner.topic_stats(asked).await?.into_inner());
                continue;
            }
            let part_name = TopicName::parse(&part)?;
            let topic = self.broker.topic(&part_name, None).await?;
            let (rate_in, rate_out) = topic.rates();
            stats.messages_in += topic
                .stats
                .messages_in
                .load(std::sync::atomic::Ordering::Relaxed);
            stats.bytes_in += topic
                .stats
                .bytes_in
                .load(std::sync::atomic::Ordering::Relaxed);
            stats.messages_out += topic.messages_out();
            stats.rate_in += rate_in;
            stats.rate_out += rate_out;
            stats.local_bytes += topic.local_bytes();
            if let Some(log) = topic.log() {
                let remote = log.remote_segments();
                stats.offloaded_bytes += remote.iter().map(|s| s.object_bytes).sum::<u64>();
            }
            stats.next_offset += topic.next_offset();
            for producer in topic.producers() {
                stats.producers.push(pb::ClientInfo {
                    id: producer.id,
                    name: producer.name.to_string(),
                    connected: true,
                    mode: if producer.exclusive {
                        "exclusive"
                    } else {
                        "shared"
                    }
                    .into(),
                });
            }
            for subscription in topic.subscriptions() {
                stats.subscriptions.push(subscription_info(
                    &part,
                    &subscription.name,
                    subscription.snapshot(),
                    "",
                ));
            }
        }
        Ok(Response::new(stats))
    }

    async fn unload_topic(
        &self,
        request: Request<pb::UnloadTopicRequest>,
    ) -> Result<Response<pb::UnloadTopicResponse>, Status> {
        on_owner!(self, request, unload_topic, request.get_ref().name.clone());
        let name = request.into_inner().name;
        let record = self.record(&name).await?;
        // Handed over: the next lookup places it again, by load.
        let unloaded = self.broker.hand_over_now(&record.name).await;
        let note = if unloaded { "" } else { "topic was not loaded" };
        Ok(Response::new(pb::UnloadTopicResponse {
            unloaded,
            note: note.into(),
        }))
    }

    async fn get_topic_policies(
        &self,
        request: Request<pb::GetTopicPoliciesRequest>,
    ) -> Result<Response<pb::TopicPoliciesInfo>, Status> {
        let record = self.record(&request.into_inner().topic).await?;
        Ok(Response::new(self.topic_policies_info(&record).await?))
    }

    async fn set_topic_policy(
        &self,
        request: Request<pb::SetTopicPolicyRequest>,
    ) -> Result<Response<pb::TopicPoliciesInfo>, Status> {
        let request = request.into_inner();
        let record = self.record(&request.topic).await?;
        if let Some(parent) = &record.partition_of {
            return Err(BrokerError::InvalidRequest(format!(
                "{} is a partition; set policies on its topic {parent}",
                record.name
            ))
            .into());
        }
        let catalog = self.broker.catalog();
        let own = catalog
            .topic_policies(&record.name)
            .await
            .map_err(BrokerError::from)?;
        let own = apply_topic_policy(own, &request.key, &request.value)?;
        catalog
            .set_topic_policies(&record.name, &own)
            .await
            .map_err(BrokerError::from)?;
        Ok(Response::new(self.topic_policies_info(&record).await?))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        on_owner!(
            self,
            request,
            list_subscriptions,
            request.get_ref().topic.clone()
        );
        let name = TopicName::parse(&request.into_inner().topic)?;
        let topic = self.broker.topic(&name, None).await?;
        let mut subscriptions: Vec<pb::SubscriptionInfo> = topic
            .subscriptions()
            .iter()
            .map(|s| subscription_info(name.as_str(), &s.name, s.snapshot(), ""))
            .collect();
        subscriptions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionInfo>, Status> {
        on_owner!(
            self,
            request,
            create_subscription,
            request.get_ref().topic.clone()
        );
        let request = request.into_inner();
        crate::names::check_label("subscription", &request.subscription)?;
        let name = TopicName::parse(&request.topic)?;
        let topic = self.broker.topic(&name, None).await?;
        let kind = subscription_type(request.subscription_type)?;
        if let Some(existing) = topic.existing_subscription(&request.subscription) {
            if existing.kind != kind {
                return Err(BrokerError::SubscriptionTypeMismatch {
                    topic: name.to_string(),
                    subscription: existing.name.clone(),
                    actual: existing.kind.name(),
                    requested: kind.name(),
                }
                .into());
            }
            let info = subscription_info(
                name.as_str(),
                &existing.name,
                existing.snapshot(),
                "subscription already exists",
            );
            return Ok(Response::new(info));
        }
        let start = start_position(request.start);
        let (created, _) = self
            .broker
            .ensure_subscription(&topic, &request.subscription, kind, start)
            .await?;
        Ok(Response::new(subscription_info(
            name.as_str(),
            &created.name,
            created.snapshot(),
            "",
        )))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        on_owner!(
            self,
            request,
            delete_subscription,
            request.get_ref().topic.clone()
        );
        let request = request.into_inner();
        let (topic, subscription) = self
            .subscription(&request.topic, &request.subscription)
            .await?;
        let connected = subscription
            .consumers()
            .iter()
            .filter(|c| c.is_attached())
            .count();
        if connected > 0 && !request.force {
            return Err(BrokerError::InUse(format!(
                "subscription {} on {} has {connected} connected consumers; use --force to delete it anyway",
                request.subscription, request.topic
            ))
            .into());
        }
        for consumer in subscription.consumers() {
            self.broker.close_consumer(consumer.id);
        }
        topic.remove_subscription(&request.subscription);
        self.broker
            .catalog()
            .delete_subscription(topic.name.as_str(), &request.subscription)
            .await
            .map_err(BrokerError::from)?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: format!("subscription {} on {}", request.subscription, request.topic),
            note: String::new(),
        }))
    }

    async fn reset_subscription(
        &self,
        request: Request<pb::ResetSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionInfo>, Status> {
        on_owner!(
            self,
            request,
            reset_subscription,
            request.get_ref().topic.clone()
        );
        let request = request.into_inner();
        let (_, subscription) = self
            .subscription(&request.topic, &request.subscription)
            .await?;
        subscription.seek(start_position(request.position)).await?;
        let info = subscription_info(
            &request.topic,
            &subscription.name,
            subscription.snapshot(),
            "",
        );
        Ok(Response::new(info))
    }

    async fn set_subscription_policy(
        &self,
        request: Request<pb::SetSubscriptionPolicyRequest>,
    ) -> Result<Response<pb::SubscriptionInfo>, Status> {
        on_owner!(
            self,
            request,
            set_subscription_policy,
            request.get_ref().topic.clone()
        );
        let request = request.into_inner();
        let (topic, subscription) = self
            .subscription(&request.topic, &request.subscription)
            .await?;
        let policy = apply_delivery_policy(subscription.policy(), &request.key, &request.value)?;
        self.broker
            .set_subscription_policy(&topic, &subscription, policy)
            .await?;
        let info = subscription_info(
            &request.topic,
            &subscription.name,
            subscription.snapshot(),
            "",
        );
        Ok(Response::new(info))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        let mut segments = Vec::new();
        for part in self.reliable_parts(&topic, &request).await? {
            let topic = match part {
                Part::Here(topic) => topic,
                Part::Elsewhere(topic, mut owner) => {
                    let asked = passed_on(pb::ListSegmentsRequest { topic });
                    segments.extend(owner.list_segments(asked).await?.into_inner().segments);
                    continue;
                }
            };
            let log = topic.log().expect("reliable parts have logs");
            let name = topic.name.to_string();
            let remote = log.remote_segments();
            for segment in remote.iter() {
                segments.push(pb::SegmentInfo {
                    topic: name.clone(),
                    location: "object".into(),
                    base_offset: segment.base_offset,
                    next_offset: segment.next_offset,
                    first_publish_time_ms: segment.first_publish_time_ms,
                    last_publish_time_ms: segment.last_publish_time_ms,
                    bytes: segment.object_bytes,
                    message_bytes: segment.message_bytes,
                    object_key: segment.object_key.clone(),
                    etag: segment.etag.clone().unwrap_or_default(),
                    row_groups: segment.row_groups.len() as u32,
                    sealed: true,
                    offloaded: true,
                });
            }
            let offloaded_end = log.offloaded_end();
            for segment in log.disk().segments() {
                segments.push(pb::SegmentInfo {
                    topic: name.clone(),
                    location: "local".into(),
                    base_offset: segment.base_offset,
                    next_offset: segment.next_offset,
                    first_publish_time_ms: segment.first_publish_time_ms.unwrap_or(0),
                    last_publish_time_ms: segment.last_publish_time_ms.unwrap_or(0),
                    bytes: segment.bytes,
                    sealed: segment.sealed,
                    offloaded: segment.sealed
                        && segment.next_offset > segment.base_offset
                        && segment.next_offset <= offloaded_end,
                    ..pb::SegmentInfo::default()
                });
            }
        }
        let object_store = match self.broker.tier() {
            Some(tier) => tier.objects().url().to_string(),
            None => String::new(),
        };
        Ok(Response::new(pb::ListSegmentsResponse {
            segments,
            object_store,
        }))
    }

    async fn offload_topic(
        &self,
        request: Request<pb::OffloadTopicRequest>,
    ) -> Result<Response<pb::OffloadTopicResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        let mut response = pb::OffloadTopicResponse::default();
        for part in self.reliable_parts(&topic, &request).await? {
            let topic = match part {
                Part::Here(topic) => topic,
                Part::Elsewhere(topic, mut owner) => {
                    let asked = passed_on(pb::OffloadTopicRequest { topic });
                    let reply = owner.offload_topic(asked).await?.into_inner();
                    response.segments_offloaded += reply.segments_offloaded;
                    response.topics.extend(reply.topics);
                    continue;
                }
            };
            let count = self.broker.offload_now(&topic).await?;
            response.segments_offloaded += count as u32;
            response.topics.push(topic.name.to_string());
        }
        Ok(Response::new(response))
    }

    async fn compact_topic(
        &self,
        request: Request<pb::CompactTopicRequest>,
    ) -> Result<Response<pb::CompactTopicResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        let mut response = pb::CompactTopicResponse::default();
        for part in self.reliable_parts(&topic, &request).await? {
            let topic = match part {
                Part::Here(topic) => topic,
                Part::Elsewhere(topic, mut owner) => {
                    let asked = passed_on(pb::CompactTopicRequest { topic });
                    let reply = owner.compact_topic(asked).await?.into_inner();
                    response.merged += reply.merged;
                    response.swept += reply.swept;
                    response.topics.extend(reply.topics);
                    continue;
                }
            };
            let (merged, swept) = self.broker.compact_topic(&topic).await?;
            response.merged += merged as u32;
            response.swept += swept as u32;
            response.topics.push(topic.name.to_string());
        }
        Ok(Response::new(response))
    }

    type ReadSegmentStream = super::ResponseStream<pb::SegmentChunk>;

    async fn read_segment(
        &self,
        request: Request<pb::ReadSegmentRequest>,
    ) -> Result<Response<Self::ReadSegmentStream>, Status> {
        const CHUNK: u64 = 1024 * 1024;
        let topic = request.get_ref().topic.clone();
        if let Some(mut owner) = self
            .forwarder
            .owner_of(&self.broker, &topic, &request)
            .await?
        {
            let chunks = owner.read_segment(passed_on(request.into_inner())).await?;
            return Ok(Response::new(Box::pin(chunks.into_inner())));
        }
        let request = request.into_inner();
        let name = TopicName::parse(&request.topic)?;
        let topic = self.broker.topic(&name, None).await?;
        let tier =
            self.broker.tier().cloned().ok_or_else(|| {
                BrokerError::InvalidRequest("offload is off on this broker".into())
            })?;
        let remote = topic
            .log()
            .map(|log| log.remote_segments())
            .unwrap_or_default();
        let segment = remote
            .iter()
            .find(|s| s.base_offset == request.base_offset)
            .cloned()
            .ok_or_else(|| {
                BrokerError::InvalidRequest(format!(
                    "topic {name} has no offloaded segment at offset {}; list them with `sava-admin storage segments {name}`",
                    request.base_offset
                ))
            })?;

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut start = 0;
            while start < segment.object_bytes {
                let end = (start + CHUNK).min(segment.object_bytes);
                let chunk = match tier
                    .objects()
                    .get_range(&segment.object_key, start..end)
                    .await
                {
                    Ok(data) => Ok(pb::SegmentChunk {
                        data,
                        total_bytes: if start == 0 { segment.object_bytes } else { 0 },
                        object_key: if start == 0 {
                            segment.object_key.clone()
                        } else {
                            String::new()
                        },
                    }),
                    Err(error) => Err(Status::from(BrokerError::Storage(error))),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
                start = end;
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn describe_subscription(
        &self,
        request: Request<pb::DescribeSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionInfo>, Status> {
        on_owner!(
            self,
            request,
            describe_subscription,
            request.get_ref().topic.clone()
        );
        let request = request.into_inner();
        let (_, subscription) = self
            .subscription(&request.topic, &request.subscription)
            .await?;
        let info = subscription_info(
            &request.topic,
            &subscription.name,
            subscription.snapshot(),
            "",
        );
        Ok(Response::new(info))
    }
}

/// A reliable topic (or partition) an admin call works on.
enum Part {
    /// Owned, and loaded, here.
    Here(Arc<crate::topic::Topic>),
    /// Owned by the broker behind this admin API.
    Elsewhere(
        String,
        sava_proto::sava::v1::admin_client::AdminClient<tonic::transport::Channel>,
    ),
}

/// Adds one partition's stats, as its owner reported them, to `total`.
fn add_stats(total: &mut pb::TopicStatsResponse, part: pb::TopicStatsResponse) {
    total.messages_in += part.messages_in;
    total.bytes_in += part.bytes_in;
    total.messages_out += part.messages_out;
    total.rate_in += part.rate_in;
    total.rate_out += part.rate_out;
    total.local_bytes += part.local_bytes;
    total.offloaded_bytes += part.offloaded_bytes;
    total.next_offset += part.next_offset;
    total.producers.extend(part.producers);
    total.subscriptions.extend(part.subscriptions);
}

fn subscription_info(
    topic: &str,
    name: &str,
    snapshot: SubscriptionSnapshot,
    note: &str,
) -> pb::SubscriptionInfo {
    let kind = snapshot.kind;
    let policy = snapshot.policy;
    let dead_letter_topic = match (&policy, TopicName::parse(topic)) {
        (Some(_), Ok(parsed)) => crate::broker::dead_letter_topic(&parsed, name),
        _ => String::new(),
    };
    pb::SubscriptionInfo {
        ack_timeout_ms: policy
            .and_then(|p| p.ack_timeout)
            .map_or(0, |t| t.as_millis() as u64),
        max_deliveries: policy.and_then(|p| p.max_deliveries).unwrap_or(0),
        on_max_deliveries: policy
            .map(|p| p.on_max_deliveries.name().to_string())
            .unwrap_or_default(),
        dead_lettered: snapshot.dead_lettered,
        dead_letter_topic,
        topic: topic.into(),
        name: name.into(),
        subscription_type: subscription_type_to_wire(kind) as i32,
        cursor: snapshot.cursor,
        backlog_messages: snapshot.backlog_messages,
        backlog_bytes: snapshot.backlog_bytes,
        oldest_unacked_age_ms: snapshot
            .oldest_unacked_ms
            .map_or(0, |t| now_ms().saturating_sub(t)),
        pending: snapshot.pending,
        delivered: snapshot.delivered,
        redelivered: snapshot.redelivered,
        dropped: snapshot.dropped,
        consumers: snapshot
            .consumers
            .into_iter()
            .map(|(id, name, connected)| pb::ClientInfo {
                id,
                name,
                connected,
                mode: kind.name().into(),
            })
            .collect(),
        note: note.into(),
    }
}

fn apply_delivery_policy(
    mut policy: DeliveryPolicy,
    key: &str,
    value: &str,
) -> Result<DeliveryPolicy, BrokerError> {
    let bad = |expected: &str| {
        BrokerError::InvalidRequest(format!("policy {key} takes {expected}, not {value:?}"))
    };
    match key {
        "ack_timeout_ms" => {
            let ms: u64 = value.parse().map_err(|_| bad("milliseconds, 0 for off"))?;
            policy.ack_timeout = (ms > 0).then(|| std::time::Duration::from_millis(ms));
        }
        "max_deliveries" => {
            let count: u32 = value.parse().map_err(|_| bad("a count, 0 for no limit"))?;
            policy.max_deliveries = (count > 0).then_some(count);
        }
        "on_max_deliveries" => {
            policy.on_max_deliveries =
                FailurePolicy::named(value).ok_or_else(|| bad("dead-letter, drop or block"))?;
        }
        _ => {
            return Err(BrokerError::InvalidRequest(format!(
                "unknown subscription policy {key}; the policies are ack_timeout_ms, max_deliveries and on_max_deliveries"
            )));
        }
    }
    Ok(policy)
}

fn policies_to_wire(policies: &NamespacePolicies) -> pb::NamespacePolicies {
    pb::NamespacePolicies {
        auto_create_topics: policies.auto_create_topics,
        max_message_bytes: policies.max_message_bytes.unwrap_or(0),
        retention_age_secs: policies.retention_age_secs.unwrap_or(0),
        retention_bytes: policies.retention_bytes.unwrap_or(0),
        backlog_quota_bytes: policies.backlog_quota_bytes.unwrap_or(0),
        backlog_policy: policies
            .backlog_policy
            .clone()
            .unwrap_or_else(|| "refuse".into()),
        default_dispatch_mode: mode_to_wire(policies.default_dispatch_mode) as i32,
    }
}

fn apply_policy(
    mut policies: NamespacePolicies,
    key: &str,
    value: &str,
) -> Result<NamespacePolicies, BrokerError> {
    let bad = |expected: &str| {
        BrokerError::InvalidRequest(format!("policy {key} takes {expected}, not {value:?}"))
    };
    match key {
        "auto_create_topics" => {
            policies.auto_create_topics = value.parse().map_err(|_| bad("true or false"))?
        }
        "max_message_bytes" => {
            let bytes: u64 = value.parse().map_err(|_| bad("a number of bytes"))?;
            policies.max_message_bytes = (bytes > 0).then_some(bytes);
        }
        "backlog_quota_bytes" => {
            let bytes: u64 = value
                .parse()
                .map_err(|_| bad("a number of bytes, 0 for none"))?;
            policies.backlog_quota_bytes = (bytes > 0).then_some(bytes);
        }
        "backlog_policy" => match value {
            "refuse" | "drop_oldest" => policies.backlog_policy = Some(value.to_string()),
            _ => return Err(bad("refuse or drop_oldest")),
        },
        "retention_age_secs" | "retention_bytes" => {
            let number: u64 = value
                .parse()
                .map_err(|_| bad("a whole number, 0 for none"))?;
            let number = (number > 0).then_some(number);
            match key {
                "retention_age_secs" => policies.retention_age_secs = number,
                _ => policies.retention_bytes = number,
            }
        }
        _ => {
            return Err(BrokerError::InvalidRequest(format!(
                "unknown policy {key}; the policies are auto_create_topics, max_message_bytes, retention_age_secs, retention_bytes, backlog_quota_bytes and backlog_policy"
            )));
        }
    }
    Ok(policies)
}

/// `own` with topic policy `key` set to `value` ("inherit" clears it).
fn apply_topic_policy(
    mut own: TopicPolicies,
    key: &str,
    value: &str,
) -> Result<TopicPolicies, BrokerError> {
    let bad = |expected: &str| {
        BrokerError::InvalidRequest(format!("policy {key} takes {expected}, not {value:?}"))
    };
    let inherit = value == "inherit";
    let number = || -> Result<Option<u64>, BrokerError> {
        match inherit {
            true => Ok(None),
            false => value
                .parse()
                .map(Some)
                .map_err(|_| bad("a whole number (0 for none) or inherit")),
        }
    };
    match key {
        "retention_age_secs" => own.retention_age_secs = number()?,
        "retention_bytes" => own.retention_bytes = number()?,
        "backlog_quota_bytes" => own.backlog_quota_bytes = number()?,
        "backlog_policy" => match value {
            "inherit" => own.backlog_policy = None,
            "refuse" | "drop_oldest" => own.backlog_policy = Some(value.to_owned()),
            _ => return Err(bad("refuse, drop_oldest or inherit")),
        },
        _ => {
            return Err(BrokerError::InvalidRequest(format!(
                "unknown topic policy {key}; the topic policies are retention_age_secs, retention_bytes, backlog_quota_bytes and backlog_policy"
            )));
        }
    }
    Ok(own)
}
