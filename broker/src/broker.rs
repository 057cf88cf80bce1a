//! The core every API adapter calls: topics, producers, consumers and the
//! schema registry, over the metadata catalog.
//!
//! Topics are loaded on first use from the catalog (or created there when
//! the namespace allows it) and stay loaded while the broker runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sava_metadata::{Catalog, DispatchMode, SubscriptionRecord, TopicRecord, TopicSchema};
use sava_storage::{
    CommitConfig, FsyncMode, GroupCommitter, LogConfig, ReadPool, SpareBudget, Tier,
};

use crate::cluster::{Cluster, Owner};
use crate::config::{Config, FsyncSetting};
use crate::dispatch::SubscriptionType;
use crate::dispatch::consumer::{BufferLimit, ConsumerHandle};
use crate::dispatch::reliable::{
    Cursor, DeadLetterSink, DeliveryPolicy, FailurePolicy, Origin, StartPosition,
};
use crate::error::BrokerError;
use crate::gates::LoadGates;
use crate::log::TopicLog;
use crate::metrics::BrokerMetrics;
use crate::names::{TopicName, check_label};
use crate::schema::{PayloadCheck, normalize_type};
use crate::subscription::{JoinRequest, Subscription};
use crate::topic::{ActiveSchema, ProducerInfo, Topic, TopicLimits, now_ms};

/// How a producer names the schema it writes with.
#[derive(Clone, Debug)]
pub enum SchemaSpec {
    /// A type and definition given inline (native API); registered under
    /// the topic's name as subject.
    Inline {
        schema_type: String,
        definition: Vec<u8>,
    },
    /// A registry subject and which version (Danube API).
    Subject {
        subject: String,
        version: VersionRef,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum VersionRef {
    Latest,
    Pinned(u32),
    AtLeast(u32),
}

/// Settings for a topic created on first use.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    pub dispatch_mode: DispatchMode,
    pub partitions: u32,
    pub schema: Option<SchemaSpec>,
}

/// Who creates a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creation {
    /// An operator, through the admin API.
    Explicit,
    /// A client using a topic that does not exist yet.
    OnFirstUse,
}

/// A producer's request to attach.
#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub topic: String,
    pub name: String,
    pub exclusive: bool,
    /// Whether the producer lives as long as one stream (native API) rather
    /// than until it falls silent (Danube API, which has no stream).
    pub stream_bound: bool,
    pub dispatch_mode: DispatchMode,
    pub schema: Option<SchemaSpec>,
}

/// A consumer's request to subscribe.
#[derive(Clone, Debug)]
pub struct SubscribeSpec {
    pub topic: String,
    pub subscription: String,
    pub consumer_name: String,
    pub kind: SubscriptionType,
    pub start: StartPosition,
    pub key_filters: Vec<String>,
    pub credit_flow: bool,
}

/// A registered consumer with the topic and subscription it belongs to.
#[derive(Clone, Debug)]
pub struct ConsumerEntry {
    pub topic: Arc<Topic>,
    pub subscription: Arc<Subscription>,
    pub handle: Arc<ConsumerHandle>,
}

/// A producer and the topic it is attached to.
pub type AttachedProducer = (Arc<Topic>, Arc<ProducerInfo>);

/// A looked-up topic: its record, the names producers and consumers use,
/// and the broker that owns each of them.
#[derive(Clone, Debug)]
pub struct Lookup {
    pub record: TopicRecord,
    pub partitions: Vec<String>,
    /// The owner of each of `partitions`, in the same order.
    pub owners: Vec<Owner>,
}

pub struct Broker {
    pub config: Config,
    pub advertised_url: String,
    /// This broker's identity in the cluster: its advertised address.
    pub broker_id: String,
    pub started_at_ms: u64,
    catalog: Catalog,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    loading: LoadGates,
    producers: RwLock<HashMap<u64, AttachedProducer>>,
    consumers: RwLock<HashMap<u64, ConsumerEntry>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    /// The one fsync thread of every reliable topic's log.
    committer: Arc<GroupCommitter>,
    /// Low-priority threads for catch-up reads of local segments.
    disk_reads: Arc<ReadPool>,
    /// Bytes of spare segment files all reliable partitions keep together.
    spare_budget: SpareBudget,
    /// This broker, for the dead-letter sinks its subscriptions hold.
    me: std::sync::Weak<Broker>,
    /// The object storage tier, unless offload is off.
    pub(crate) tier: Option<Arc<Tier>>,
    pub(crate) offload_backoff: crate::offload::Backoff,
    /// Membership, leadership and topic ownership.
    pub cluster: Arc<Cluster>,
    /// The figures only the broker keeps, for `/metrics`.
    pub metrics: Arc<BrokerMetrics>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("advertised_url", &self.advertised_url)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker over `catalog`, with the `default` namespace in place,
    /// keeping its own figures in `metrics`.
    pub async fn new(
        config: Config,
        catalog: Catalog,
        metrics: Arc<BrokerMetrics>,
    ) -> Result<Arc<Broker>, BrokerError> {
        catalog.ensure_namespace("default").await?;
        let storage = &config.storage;
        let commit = CommitConfig {
            mode: match storage.fsync {
                FsyncSetting::Always => FsyncMode::Always,
                FsyncSetting::Never => FsyncMode::Never,
            },
            flush_interval: Duration::from_millis(storage.flush_interval_ms),
            flush_bytes: storage.flush_bytes,
            ..CommitConfig::default()
        };
        let committer = GroupCommitter::start_with_observer(commit, Some(metrics.flush_observer()))
            .map_err(BrokerError::Storage)?;
        let tier = crate::offload::open_tier(&config, &catalog)?;
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let disk_reads = Arc::new(ReadPool::start("sava-diskrd", threads, storage.read_nice));
        let spare_budget = SpareBudget::new(storage.spare_bytes);
        let advertised_url = config.advertised_url();
        let broker_id = advertised_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        let cluster = Arc::new(Cluster::new(
            broker_id.clone(),
            catalog.clone(),
            config.cluster.clone(),
            advertised_url.clone(),
            config.advertised_admin_url(),
            format!("http://{}", config.broker.http_addr),
        ));
        Ok(Arc::new_cyclic(|me| Broker {
            metrics,
            tier,
            offload_backoff: crate::offload::Backoff::default(),
            me: std::sync::Weak::clone(me),
            cluster,
            broker_id,
            started_at_ms: now_ms(),
            advertised_url,
            config,
            catalog,
            topics: RwLock::new(HashMap::new()),
            loading: LoadGates::default(),
            producers: RwLock::new(HashMap::new()),
            consumers: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            committer,
            disk_reads,
            spare_budget,
        }))
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The object storage tier, unless offload is off.
    pub fn tier(&self) -> Option<&Arc<Tier>> {
        self.tier.as_ref()
    }

    /// Marks the broker as stopping: new producers and consumers are refused.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn check_running(&self) -> Result<(), BrokerError> {
        match self.is_stopping() {
            true => Err(BrokerError::ShuttingDown),
            false => Ok(()),
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The names to produce to and consume from for `topic`: its partitions
    /// when it is partitioned (also those created one by one, as Danube's
    /// client does), or the topic itself.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<String>, BrokerError> {
        let name = TopicName::parse(topic)?;
        if let Some(record) = self.catalog.topic(name.as_str()).await? {
            return Ok(partition_names(&name, &record));
        }
        let mut parts: Vec<(u32, String)> = self
            .catalog
            .list_topics(name.namespace())
            .await?
            .into_iter()
            .filter(|t| t.partition_of.as_deref() == Some(name.as_str()))
            .filter_map(|t| {
                let index = TopicName::parse(&t.name).ok()?.partition_index()?;
                Some((index, t.name))
            })
            .collect();
        if parts.is_empty() {
            return Ok(vec![name.to_string()]);
        }
        parts.sort();
        Ok(parts.into_iter().map(|(_, name)| name).collect())
    }

    /// Looks a topic up, creating it with `create` when it does not exist.
    pub async fn lookup(
        &self,
        topic: &str,
        create: Option<&TopicSpec>,
    ) -> Result<Lookup, BrokerError> {
        let name = TopicName::parse(topic)?;
        let record = match self.catalog.topic(name.as_str()).await? {
            Some(record) => record,
            None => match create {
                Some(spec) => self.create_topic(&name, spec, Creation::OnFirstUse).await?,
                None => return Err(BrokerError::TopicNotFound(name.to_string())),
            },
        };
        let partitions = partition_names(&name, &record);
        let owners = self.cluster.owners(&partitions).await?;
        Ok(Lookup {
            partitions,
            owners,
            record,
        })
    }

    /// Creates a topic (and its partitions) in the catalog: explicitly (the
    /// admin API), or on first use by a client, which the namespace's
    /// `auto_create_topics` policy may forbid.
    pub async fn create_topic(
        &self,
        name: &TopicName,
        spec: &TopicSpec,
        creation: Creation,
    ) -> Result<TopicRecord, BrokerError> {
        self.check_running()?;
        let namespace = self
            .catalog
            .namespace(name.namespace())
            .await?
            .ok_or_else(|| BrokerError::NamespaceNotFound(name.namespace().to_string()))?;
        if creation == Creation::OnFirstUse && !namespace.policies.auto_create_topics {
            return Err(BrokerError::AutoCreateDisabled(namespace.name));
        }

        let schema = match &spec.schema {
            Some(schema) => Some(self.bind_schema(name, schema).await?.0),
            None => None,
        };
        let partition_of = name.partition_index().map(|_| {
            let full = name.as_str();
            full[..full.rfind("-part-").unwrap_or(full.len())].to_string()
        });
        let record = TopicRecord {
            name: name.to_string(),
            partitions: spec.partitions,
            partition_of,
            dispatch_mode: spec.dispatch_mode,
            schema,
            created_at_ms: now_ms(),
        };
        if spec.partitions > 0 {
            let (parent, _) = self.catalog.create_partitioned_topic(record).await?;
            return Ok(parent);
        }
        Ok(self.catalog.create_topic(record).await?)
    }

    /// The loaded topic `name`, loading it from the catalog (or creating it
    /// with `create`) on first use.
    pub async fn topic(
        &self,
        name: &TopicName,
        create: Option<&TopicSpec>,
    ) -> Result<Arc<Topic>, BrokerError> {
        if let Some(topic) = self.loaded(name.as_str()) {
            return Ok(topic);
        }
        let _pass = self.loading.enter(name.as_str()).await;
        if let Some(topic) = self.loaded(name.as_str()) {
            return Ok(topic);
        }

        let record = match self.catalog.topic(name.as_str()).await? {
            Some(record) => record,
            None => match create {
                Some(spec) => {
                    let spec = TopicSpec {
                        partitions: 0,
                        ..spec.clone()
                    };
                    self.create_topic(name, &spec, Creation::OnFirstUse).await?
                }
                None => return Err(BrokerError::TopicNotFound(name.to_string())),
            },
        };
        if record.partitions > 0 {
            return Err(BrokerError::InvalidRequest(format!(
                "topic {name} is partitioned into {} partitions; produce to and consume from {name}-part-0 .. {name}-part-{}",
                record.partitions,
                record.partitions - 1
            )));
        }
        let owner = self.take_ownership(name).await?;
        let schema = match &record.schema {
            Some(bound) => Some(
                self.active_schema(bound.schema_id, Some(bound.version))
                    .await?,
            ),
            None => None,
        };
        let mut limits = self.limits();
        if let Some(namespace) = self.catalog.namespace(name.namespace()).await?
            && let Some(max) = namespace.policies.max_message_bytes
        {
            limits.max_message_bytes = limits.max_message_bytes.min(max as usize);
        }
        let (log, cursor_limit) = match record.dispatch_mode {
            DispatchMode::Reliable => {
                let (log, limit) = self.open_log(name, &owner).await?;
                (Some(log), limit)
            }
            DispatchMode::NonReliable => (None, None),
        };
        let reliable = log.is_some();
        let lease = Arc::clone(self.cluster.lease());
        let topic = Arc::new(Topic::new(
            name.clone(),
            record,
            schema,
            limits,
            log,
            owner.epoch,
            lease,
        ));
        if reliable {
            self.restore_subscriptions(&topic, cursor_limit).await?;
        }
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Arc::clone(&topic));
        Ok(topic)
    }

    /// Where a reliable topic's segments live.
    fn log_dir(&self, name: &TopicName) -> std::path::PathBuf {
        let local = &name.as_str()[name.namespace().len() + 2..];
        self.config
            .broker
            .data_dir
            .join("topics")
            .join(name.namespace())
            .join(local)
    }

    /// The owner of `name` if it is this broker, placing it first if it has
    /// none; dead-letter topics are claimed for this broker directly, since
    /// it writes them itself.
    async fn take_ownership(&self, name: &TopicName) -> Result<Owner, BrokerError> {
        if self.cluster.is_draining() {
            return Err(BrokerError::Draining(self.broker_id.clone()));
        }
        let owner = match name.as_str().ends_with(DEAD_LETTER_SUFFIX) {
            true => self.cluster.claim(name.as_str()).await?,
            false => self.cluster.owner(name.as_str()).await?,
        };
        if owner.broker_id != self.broker_id {
            return Err(BrokerError::NotOwner {
                topic: name.to_string(),
                owner: owner.broker_id,
                url: owner.client_url,
            });
        }
        Ok(owner)
    }

    /// Opens a reliable topic's log for ownership `owner`. A broker that
    /// did not own the epoch before drops whatever local segments it kept
    /// from an older epoch and starts after the durable history; the
    /// returned offset is then the limit saved cursors are cut back to.
    async fn open_log(
        &self,
        name: &TopicName,
        owner: &Owner,
    ) -> Result<(Arc<TopicLog>, Option<u64>), BrokerError> {
        let remote = match &self.tier {
            Some(tier) => tier
                .segments(name.as_str())
                .await
                .map_err(BrokerError::Storage)?,
            None => Vec::new(),
        };
        let dir = self.log_dir(name);
        let continues = owner
            .previous_owner
            .as_deref()
            .is_none_or(|previous| previous == self.broker_id);
        let first_offset = remote
            .last()
            .map_or(0, |s| s.next_offset)
            .max(owner.released_at_offset.unwrap_or(0));
        if !continues && dir.exists() {
            tracing::warn!(topic = %name, epoch = owner.epoch, first_offset, dir = %dir.display(), "dropping local segments of an older ownership epoch; the topic continues after its durable history");
            let stale = dir.clone();
            // A seal still queued for this directory would write into it.
            let committer = Arc::clone(&self.committer);
            let remove = move || {
                committer.wait_for_seals();
                std::fs::remove_dir_all(stale)
            };
            tokio::task::spawn_blocking(remove)
                .await
                .map_err(|_| BrokerError::ShuttingDown)?
                .map_err(|error| BrokerError::Storage(sava_storage::Error::io(&dir, error)))?;
        }

        let storage = &self.config.storage;
        let config = LogConfig {
            segment_bytes: storage.segment_bytes,
            segment_age: Duration::from_secs(storage.segment_age_secs),
            max_batch_bytes: (self.config.limits.max_message_bytes * 4).max(16 << 20),
            first_offset,
            spare_segments: storage.spare_segments,
            spare_budget: self.spare_budget.clone(),
            ..LogConfig::default()
        };
        let committer = Arc::clone(&self.committer);
        let reads = Arc::clone(&self.disk_reads);
        let tail_bytes = storage.tail_cache_bytes;
        let (log, report) = tokio::task::spawn_blocking(move || {
            TopicLog::open(&dir, config, committer, reads, tail_bytes)
        })
        .await
        .map_err(|_| BrokerError::ShuttingDown)?
        .map_err(BrokerError::Storage)?;
        let log = match &self.tier {
            Some(tier) => log.with_tier(Arc::clone(tier), remote),
            None => log,
        };
        tracing::info!(
            topic = %name,
            epoch = owner.epoch,
            next_offset = log.next_offset(),
            start_offset = log.start(),
            offloaded_segments = log.remote_segments().len(),
            truncated_bytes = report.truncated_bytes,
            "reliable topic log opened"
        );
        let limit = (!continues).then_some(first_offset);
        Ok((Arc::new(log), limit))
    }

    /// Recreates a reliable topic's subscriptions from their saved cursors,
    /// cut back to `limit` when the log restarted there: offsets above it
    /// were acknowledged in a history this broker does not have, and new
    /// messages get them again.
    async fn restore_subscriptions(
        &self,
        topic: &Topic,
        limit: Option<u64>,
    ) -> Result<(), BrokerError> {
        for record in self.catalog.subscriptions(topic.name.as_str()).await? {
            let Some(kind) = subscription_type_named(&record.subscription_type) else {
                tracing::warn!(topic = %topic.name, subscription = %record.name, kind = %record.subscription_type, "skipping a subscription of unknown type");
                continue;
            };
            let policy = DeliveryPolicy {
                ack_timeout: record.ack_timeout_ms.map(Duration::from_millis),
                max_deliveries: record.max_deliveries,
                on_max_deliveries: record
                    .on_max_deliveries
                    .as_deref()
                    .and_then(FailurePolicy::named)
                    .unwrap_or_default(),
            };
            let mut cursor = Cursor {
                floor: record.floor,
                acked_ranges: record.acked_ranges,
            };
            if let Some(limit) = limit {
                cut_cursor(&mut cursor, limit);
            }
            let sink = self.dead_letter_sink(&topic.name, &record.name);
            let origin = Origin::Restored(cursor);
            topic
                .subscription(&record.name, kind, origin, policy, Some(sink))
                .await;
        }
        Ok(())
    }

    /// Saves a new subscription of a reliable topic, so that it survives a
    /// restart.
    async fn save_subscription(
        &self,
        topic: &Topic,
        subscription: &Subscription,
    ) -> Result<(), BrokerError> {
        let Some(stats) = subscription.reliable_stats() else {
            return Ok(());
        };
        let record = subscription_record(topic, subscription, stats.cursor());
        self.catalog.save_subscriptions(&[record]).await?;
        Ok(())
    }

    /// Changes a reliable subscription's redelivery rules and saves them.
    pub async fn set_subscription_policy(
        &self,
        topic: &Topic,
        subscription: &Subscription,
        policy: DeliveryPolicy,
    ) -> Result<(), BrokerError> {
        subscription.set_policy(policy)?;
        self.save_subscription(topic, subscription).await
    }

    /// Where the messages a subscription gives up on go: its dead-letter
    /// topic, created (reliable) on first use.
    fn dead_letter_sink(&self, topic: &TopicName, subscription: &str) -> DeadLetterSink {
        let broker = std::sync::Weak::clone(&self.me);
        let source = topic.to_string();
        let subscription = subscription.to_string();
        let target = dead_letter_topic(topic, &subscription);
        Arc::new(move |message, deliveries| {
            let broker = std::sync::Weak::clone(&broker);
            let (source, subscription, target) =
                (source.clone(), subscription.clone(), target.clone());
            Box::pin(async move {
                let broker = broker.upgrade().ok_or(BrokerError::ShuttingDown)?;
                let letter = DeadLetter {
                    source: &source,
                    subscription: &subscription,
                    deliveries,
                };
                broker.publish_dead_letter(&target, &message, letter).await
            })
        })
    }

    async fn publish_dead_letter(
        &self,
        target: &str,
        message: &crate::message::Message,
        letter: DeadLetter<'_>,
    ) -> Result<(), BrokerError> {
        let name = TopicName::parse(target)?;
        if self.catalog.topic(name.as_str()).await?.is_none() {
            let spec = TopicSpec {
                dispatch_mode: DispatchMode::Reliable,
                partitions: 0,
                schema: None,
            };
            match self.create_topic(&name, &spec, Creation::Explicit).await {
                Ok(_)
                | Err(BrokerError::Metadata(sava_metadata::MetadataError::AlreadyExists {
                    ..
                })) => {}
                Err(error) => return Err(error),
            }
        }
        let topic = self.topic(&name, None).await?;
        let producer =
            topic.add_producer(self.next_id(), DEAD_LETTER_PRODUCER, false, true, None)?;

        let mut attributes = message.attributes.clone();
        attributes.extend([
            ("sava.dlq.topic".to_string(), letter.source.to_string()),
            (
                "sava.dlq.subscription".to_string(),
                letter.subscription.to_string(),
            ),
            ("sava.dlq.offset".to_string(), message.offset.to_string()),
            (
                "sava.dlq.delivery_count".to_string(),
                letter.deliveries.to_string(),
            ),
            (
                "sava.dlq.producer".to_string(),
                message.producer_name.to_string(),
            ),
        ]);
        let incoming = crate::message::IncomingMessage {
            payload: message.payload.clone(),
            key: message.key.clone(),
            attributes,
        };
        topic
            .publish(&producer, vec![incoming])?
            .durable(&topic)
            .await?;
        Ok(())
    }

    /// The subscription `name` of `topic`, created from `origin` (and saved,
    /// on a reliable topic) when it does not exist.
    pub async fn ensure_subscription(
        &self,
        topic: &Topic,
        name: &str,
        kind: SubscriptionType,
        start: StartPosition,
    ) -> Result<(Arc<Subscription>, bool), BrokerError> {
        let sink = self.dead_letter_sink(&topic.name, name);
        let policy = DeliveryPolicy::default();
        let origin = Origin::New(start);
        let (subscription, created) = topic
            .subscription(name, kind, origin, policy, Some(sink))
            .await;
        if created {
            self.save_subscription(topic, &subscription).await?;
        }
        Ok((subscription, created))
    }

    /// Writes every changed cursor of the loaded reliable topics in one
    /// transaction.
    pub async fn flush_cursors(&self) -> Result<usize, BrokerError> {
        let mut records = Vec::new();
        let mut changed = Vec::new();
        for topic in self.loaded_topics() {
            for subscription in topic.subscriptions() {
                let Some(stats) = subscription.reliable_stats() else {
                    continue;
                };
                let Some(cursor) = stats.take_changed_cursor() else {
                    continue;
                };
                records.push(subscription_record(&topic, &subscription, cursor));
                changed.push(subscription);
            }
        }
        if records.is_empty() {
            return Ok(0);
        }
        if let Err(error) = self.catalog.save_subscriptions(&records).await {
            for subscription in changed {
                if let Some(stats) = subscription.reliable_stats() {
                    stats.mark_cursor_unsaved();
                }
            }
            return Err(error.into());
        }
        Ok(records.len())
    }

    /// Seals aged segments and deletes the ones retention lets go: a sealed
    /// segment goes once every subscription acknowledged all of it and it is
    /// older than the retention age (or the retained bytes pass the
    /// retention size), as the topic's policies or else its namespace's
    /// say.
    pub async fn apply_retention(&self) -> Result<(), BrokerError> {
        for topic in self.loaded_topics() {
            let (Some(log), Some(floor)) = (topic.log(), topic.acknowledged_floor()) else {
                continue;
            };
            let policies = self.effective_policies(&topic).await?;
            self.enforce_backlog_quota(&topic, log, floor, &policies)
                .await;
            // Also here: the offloader may be stuck on an unreachable store.
            self.check_offload_pending(&topic);
            let local_retention = log
                .tier()
                .map(|_| Duration::from_secs(self.config.offload.local_retention_secs));
            let log = Arc::clone(log);
            tokio::task::spawn_blocking(move || retain(&log, floor, &policies, local_retention))
                .await
                .map_err(|_| BrokerError::ShuttingDown)?
                .map_err(BrokerError::Storage)?;
        }
        Ok(())
    }

    /// The retention and backlog policies that apply to `topic`: its
    /// namespace's, with the overrides set on the topic itself (on its
    /// parent, for a partition).
    pub async fn effective_policies(
        &self,
        topic: &Topic,
    ) -> Result<sava_metadata::NamespacePolicies, BrokerError> {
        let namespace = self.catalog.namespace(topic.name.namespace()).await?;
        let owner = topic.record.partition_of.as_deref();
        let own = self
            .catalog
            .topic_policies(owner.unwrap_or(topic.name.as_str()))
            .await?;
        Ok(namespace
            .map(|n| n.policies)
            .unwrap_or_default()
            .with_topic(&own))
    }

    /// Checks a reliable topic's backlog (bytes from its slowest cursor on)
    /// against its quota (the topic's, else the namespace's): over it,
    /// producers are refused, or,
    /// with `drop_oldest`, the cursors still in the oldest segments move
    /// past them.
    async fn enforce_backlog_quota(
        &self,
        topic: &Topic,
        log: &TopicLog,
        floor: u64,
        policies: &sava_metadata::NamespacePolicies,
    ) {
        let Some(quota) = policies.backlog_quota_bytes else {
            topic.set_backlog_over_quota(None);
            return;
        };
        let (backlog, _) = log.backlog_from(floor);
        if backlog <= quota {
            topic.set_backlog_over_quota(None);
            return;
        }
        if policies.backlog_policy.as_deref() != Some("drop_oldest") {
            topic.set_backlog_over_quota(Some((backlog, quota)));
            return;
        }
        topic.set_backlog_over_quota(None);

        // Whole segments go, oldest first, until what remains fits.
        let mut remaining = backlog;
        let mut cut = floor;
        for segment in log
            .disk()
            .segments()
            .iter()
            .take_while(|s| s.sealed)
            .filter(|s| s.next_offset > floor)
        {
            if remaining <= quota {
                break;
            }
            remaining = remaining.saturating_sub(segment.bytes);
            cut = segment.next_offset;
        }
        if cut == floor {
            return;
        }
        for subscription in topic.subscriptions() {
            if subscription.floor().is_some_and(|f| f < cut) {
                tracing::warn!(topic = %topic.name, subscription = %subscription.name, skipped_to = cut, "backlog over quota; dropping the oldest messages");
                let _ = subscription.seek(StartPosition::Offset(cut)).await;
            }
        }
    }

    /// Topic (or partition) `name` as the catalog has it.
    pub async fn topic_record(&self, name: &str) -> Result<TopicRecord, BrokerError> {
        let name = TopicName::parse(name)?;
        self.catalog()
            .topic(name.as_str())
            .await?
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
    }

    /// The cluster's leader, while its lease holds.
    pub async fn live_leader(&self) -> Result<Option<String>, BrokerError> {
        let now = now_ms();
        let leader = self.catalog().leader().await?;
        Ok(leader
            .filter(|l| l.lease_expires_ms > now)
            .map(|l| l.broker_id))
    }

    /// Records `state` for broker `id`, which acts on it at its next lease
    /// renewal (this broker at once).
    pub async fn set_broker_state(
        self: &Arc<Self>,
        id: &str,
        state: sava_metadata::BrokerState,
    ) -> Result<(), BrokerError> {
        let stored =
            self.catalog()
                .set_broker_state(id, state)
                .await
                .map_err(|error| match error {
                    sava_metadata::MetadataError::NotFound { .. } => {
                        BrokerError::BrokerNotFound(id.to_string())
                    }
                    error => error.into(),
                })?;
        if stored.id == self.broker_id {
            self.membership_round().await;
        }
        Ok(())
    }

    /// Topic `name` if it is loaded here.
    pub(crate) fn loaded(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn loaded_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn limits(&self) -> TopicLimits {
        let limits = &self.config.limits;
        TopicLimits {
            max_message_bytes: limits.max_message_bytes,
            consumer_buffer: BufferLimit {
                messages: limits.consumer_buffer_messages,
                bytes: limits.consumer_buffer_bytes,
            },
            max_unacked_per_consumer: limits.max_unacked_per_consumer,
        }
    }

    /// Attaches a producer, creating its topic on first use.
    pub async fn create_producer(
        &self,
        spec: ProducerSpec,
    ) -> Result<AttachedProducer, BrokerError> {
        self.check_running()?;
        check_label("producer", &spec.name)?;
        let name = TopicName::parse(&spec.topic)?;
        let create = TopicSpec {
            dispatch_mode: spec.dispatch_mode,
            partitions: 0,
            schema: spec.schema.clone(),
        };
        let topic = self.topic(&name, Some(&create)).await?;
        if topic.dispatch_mode() != spec.dispatch_mode {
            return Err(BrokerError::DispatchModeMismatch {
                topic: name.to_string(),
                actual: mode_name(topic.dispatch_mode()),
                requested: mode_name(spec.dispatch_mode),
            });
        }

        let schema = match &spec.schema {
            Some(schema) => Some(self.producer_schema(&topic, schema).await?),
            None => None,
        };
        let producer = topic.add_producer(
            self.next_id(),
            &spec.name,
            spec.exclusive,
            spec.stream_bound,
            schema,
        )?;
        self.producers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(producer.id, (Arc::clone(&topic), Arc::clone(&producer)));
        Ok((topic, producer))
    }

    /// How many producers are attached and consumers registered.
    pub fn client_counts(&self) -> (usize, usize) {
        let producers = self
            .producers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let consumers = self
            .consumers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        (producers, consumers)
    }

    pub fn producer(&self, id: u64) -> Result<AttachedProducer, BrokerError> {
        self.producers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or(BrokerError::ProducerNotFound(id))
    }

    pub fn has_producer(&self, id: u64) -> bool {
        self.producers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    pub fn close_producer(&self, id: u64) {
        let removed = self
            .producers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some((topic, _)) = removed {
            topic.remove_producer(id);
        }
    }

    /// Registers a consumer on a subscription, creating the subscription on
    /// first use. The topic must exist, as Danube's clients expect.
    pub async fn subscribe(&self, spec: SubscribeSpec) -> Result<ConsumerEntry, BrokerError> {
        self.check_running()?;
        check_label("subscription", &spec.subscription)?;
        check_label("consumer", &spec.consumer_name)?;
        let name = TopicName::parse(&spec.topic)?;
        let topic = self.topic(&name, None).await?;

        let (subscription, _) = self
            .ensure_subscription(&topic, &spec.subscription, spec.kind, spec.start)
            .await?;
        let request = JoinRequest {
            id: self.next_id(),
            name: spec.consumer_name,
            key_filters: spec.key_filters,
            credit_flow: spec.credit_flow,
            buffer: topic.limits.consumer_buffer,
        };
        let handle = subscription.join(spec.kind, request)?;
        let entry = ConsumerEntry {
            topic,
            subscription,
            handle,
        };
        self.consumers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.handle.id, entry.clone());
        Ok(entry)
    }

    pub fn consumer(&self, id: u64) -> Result<ConsumerEntry, BrokerError> {
        self.consumers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or(BrokerError::ConsumerNotFound(id))
    }

    pub fn has_consumer(&self, id: u64) -> bool {
        self.consumers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    pub fn close_consumer(&self, id: u64) {
        let removed = self
            .consumers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(entry) = removed {
            entry.subscription.leave(id);
        }
    }

    /// The subscription `name` of a loaded topic, for acks that name both.
    pub fn subscription_of(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<Arc<Subscription>, BrokerError> {
        let topic = self
            .loaded(topic)
            .ok_or_else(|| BrokerError::TopicNotFound(topic.to_string()))?;
        topic
            .existing_subscription(subscription)
            .ok_or_else(|| BrokerError::SubscriptionNotFound {
                topic: topic.name.to_string(),
                subscription: subscription.to_string(),
            })
    }

    /// Unloads a topic: its producers and consumers are detached (their
    /// streams end, and clients reconnect through a new lookup).
    pub fn unload(&self, name: &str) -> Option<Arc<Topic>> {
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)?;
        for producer in topic.producers() {
            self.close_producer(producer.id);
        }
        for subscription in topic.subscriptions() {
            for consumer in subscription.consumers() {
                self.close_consumer(consumer.id);
            }
        }
        Some(topic)
    }

    /// Deletes a topic (a partitioned one with its partitions). Without
    /// `force` a topic with subscriptions or attached clients is refused.
    /// Returns the names deleted.
    pub async fn delete_topic(&self, name: &str, force: bool) -> Result<Vec<String>, BrokerError> {
        let name = TopicName::parse(name)?;
        let record = self
            .catalog
            .topic(name.as_str())
            .await?
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        let names = partition_names(&name, &record);
        if !force {
            for part in &names {
                let Some(topic) = self.loaded(part) else {
                    continue;
                };
                let subscriptions = topic.subscriptions().len();
                let producers = topic.producers().len();
                if subscriptions > 0 || producers > 0 {
                    return Err(BrokerError::InUse(format!(
                        "topic {part} has {subscriptions} subscriptions and {producers} producers; use --force to delete it anyway"
                    )));
                }
            }
        }
        for part in &names {
            self.unload(part);
        }
        if record.partitions > 0 {
            self.unload(name.as_str());
        }
        self.catalog.delete_topic(name.as_str()).await?;
        if let Some(tier) = &self.tier {
            for part in &names {
                if let Err(error) = tier.delete_topic(part).await {
                    tracing::warn!(topic = %part, %error, "cannot delete a deleted topic's offloaded objects; the sweeper will not find them");
                }
            }
        }
        let dirs = names
            .iter()
            .map(|part| Ok(self.log_dir(&TopicName::parse(part)?)))
            .collect::<Result<Vec<_>, BrokerError>>()?;
        // A seal still queued for these directories would write into them.
        let committer = Arc::clone(&self.committer);
        let remove = move || {
            committer.wait_for_seals();
            for dir in dirs {
                if let Err(error) = std::fs::remove_dir_all(&dir)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(dir = %dir.display(), %error, "cannot remove a deleted topic's segments");
                }
            }
        };
        tokio::task::spawn_blocking(remove)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        let mut deleted = names;
        if record.partitions > 0 {
            deleted.insert(0, name.to_string());
        }
        Ok(deleted)
    }

    /// Removes consumers that lost their stream longer ago than the grace
    /// period, and Danube producers silent for longer than the idle limit.
    pub fn expire_idle(&self) {
        let grace = Duration::from_secs(self.config.limits.consumer_grace_secs);
        for topic in self.loaded_topics() {
            for subscription in topic.subscriptions() {
                let expired = subscription.expire(grace);
                let mut consumers = self.consumers.write().unwrap_or_else(|p| p.into_inner());
                for id in expired {
                    consumers.remove(&id);
                }
            }
        }

        let idle = Duration::from_secs(self.config.limits.producer_idle_secs);
        let silent: Vec<u64> = self
            .producers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(_, p)| !p.stream_bound && p.idle_for() > idle)
            .map(|(_, p)| p.id)
            .collect();
        for id in silent {
            tracing::info!(producer = id, "detaching silent producer");
            self.close_producer(id);
        }
    }

    /// The compiled check of schema `schema_id` at `version` (latest when
    /// `None`).
    pub async fn active_schema(
        &self,
        schema_id: u64,
        version: Option<u32>,
    ) -> Result<Arc<ActiveSchema>, BrokerError> {
        let record = self
            .catalog
            .schema(schema_id, version)
            .await?
            .ok_or_else(|| BrokerError::SchemaNotFound(format!("with id {schema_id}")))?;
        Ok(Arc::new(ActiveSchema {
            check: PayloadCheck::compile(&record.schema_type, &record.definition)?,
            subject: record.subject,
            schema_id: record.schema_id,
            version: record.version,
        }))
    }

    /// Registers a schema after checking that it compiles.
    pub async fn register_schema(
        &self,
        subject: &str,
        schema_type: &str,
        definition: &[u8],
        description: &str,
        created_by: &str,
        tags: &[String],
    ) -> Result<(sava_metadata::SchemaRecord, bool), BrokerError> {
        check_label("schema subject", subject)?;
        let schema_type = normalize_type(schema_type)?;
        PayloadCheck::compile(schema_type, definition)?;
        Ok(self
            .catalog
            .register_schema(
                subject,
                schema_type,
                definition,
                description,
                created_by,
                tags,
            )
            .await?)
    }

    /// Resolves `spec` to a registered schema version for topic `name`.
    async fn bind_schema(
        &self,
        name: &TopicName,
        spec: &SchemaSpec,
    ) -> Result<(TopicSchema, Arc<ActiveSchema>), BrokerError> {
        let record = match spec {
            SchemaSpec::Inline {
                schema_type,
                definition,
            } => {
                let subject = base_topic(name);
                self.register_schema(&subject, schema_type, definition, "", "sava-broker", &[])
                    .await?
                    .0
            }
            SchemaSpec::Subject { subject, version } => {
                self.resolve_subject(subject, *version).await?
            }
        };
        let bound = TopicSchema {
            subject: record.subject.clone(),
            schema_id: record.schema_id,
            version: record.version,
        };
        let active = Arc::new(ActiveSchema {
            check: PayloadCheck::compile(&record.schema_type, &record.definition)?,
            subject: record.subject,
            schema_id: record.schema_id,
            version: record.version,
        });
        Ok((bound, active))
    }

    async fn resolve_subject(
        &self,
        subject: &str,
        version: VersionRef,
    ) -> Result<sava_metadata::SchemaRecord, BrokerError> {
        let latest = self
            .catalog
            .latest_schema(subject)
            .await?
            .ok_or_else(|| BrokerError::SchemaNotFound(subject.to_string()))?;
        match version {
            VersionRef::Latest => Ok(latest),
            VersionRef::AtLeast(min) if latest.version >= min => Ok(latest),
            VersionRef::AtLeast(min) => Err(BrokerError::InvalidSchema(format!(
                "subject {subject} is at version {}, below the required {min}",
                latest.version
            ))),
            VersionRef::Pinned(pinned) => self
                .catalog
                .schema(latest.schema_id, Some(pinned))
                .await?
                .ok_or_else(|| BrokerError::SchemaNotFound(format!("{subject} version {pinned}"))),
        }
    }

    /// The schema a producer on `topic` validates with, checked against the
    /// topic's own schema.
    async fn producer_schema(
        &self,
        topic: &Topic,
        spec: &SchemaSpec,
    ) -> Result<Arc<ActiveSchema>, BrokerError> {
        match (spec, &topic.schema) {
            (SchemaSpec::Subject { subject, .. }, Some(bound)) if *subject != bound.subject => {
                Err(BrokerError::InvalidSchema(format!(
                    "topic {} uses schema subject {}, not {subject}",
                    topic.name, bound.subject
                )))
            }
            (SchemaSpec::Subject { .. }, _) => Ok(self.bind_schema(&topic.name, spec).await?.1),
            (SchemaSpec::Inline { .. }, None) => Err(BrokerError::InvalidSchema(format!(
                "topic {} has no schema; create a new topic to use one",
                topic.name
            ))),
            (
                SchemaSpec::Inline {
                    schema_type,
                    definition,
                },
                Some(bound),
            ) => {
                let record = self
                    .catalog
                    .schema(bound.schema_id, Some(bound.version))
                    .await?;
                let same = record.is_some_and(|r| {
                    normalize_type(schema_type).ok() == Some(r.schema_type.as_str())
                        && r.definition == *definition
                });
                match same {
                    true => Ok(Arc::clone(bound)),
                    false => Err(BrokerError::InvalidSchema(format!(
                        "topic {} has a different schema ({} v{})",
                        topic.name, bound.subject, bound.version
                    ))),
                }
            }
        }
    }
}

/// Cuts `cursor` back so that nothing at or above `limit` counts as
/// acknowledged.
fn cut_cursor(cursor: &mut Cursor, limit: u64) {
    cursor.floor = cursor.floor.min(limit);
    cursor.acked_ranges.retain(|(first, _)| *first < limit);
    for range in &mut cursor.acked_ranges {
        range.1 = range.1.min(limit.saturating_sub(1));
    }
}

/// How every dead-letter topic's name ends.
const DEAD_LETTER_SUFFIX: &str = "-dlq";

/// The producer name dead letters are published under.
const DEAD_LETTER_PRODUCER: &str = "sava-dead-letter";

/// Where a dead letter came from.
struct DeadLetter<'a> {
    source: &'a str,
    subscription: &'a str,
    deliveries: u32,
}

/// The dead-letter topic of `subscription` on `topic`:
/// `/<ns>/<topic>-<subscription>-dlq`, shared by the partitions of a
/// partitioned topic, with characters a topic name cannot hold replaced by
/// `_`.
pub fn dead_letter_topic(topic: &TopicName, subscription: &str) -> String {
    let subscription: String = subscription
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}-{subscription}{DEAD_LETTER_SUFFIX}", base_topic(topic))
}

fn subscription_record(
    topic: &Topic,
    subscription: &Subscription,
    cursor: Cursor,
) -> SubscriptionRecord {
    let policy = subscription.policy();
    SubscriptionRecord {
        topic: topic.name.to_string(),
        name: subscription.name.clone(),
        subscription_type: subscription.kind.name().to_string(),
        floor: cursor.floor,
        acked_ranges: cursor.acked_ranges,
        created_at_ms: now_ms(),
        ack_timeout_ms: policy.ack_timeout.map(|t| t.as_millis() as u64),
        max_deliveries: policy.max_deliveries,
        on_max_deliveries: Some(policy.on_max_deliveries.name().to_string()),
    }
}

/// How long a partition's spare segment files wait for a roll to reuse
/// them before retention starts deleting them, one a pass.
const SPARE_IDLE: Duration = Duration::from_secs(30);

/// Deletes the local segments of `log` that retention lets go: history
/// every subscription acknowledged and the namespace no longer keeps, and,
/// with offload on (`local_retention` set), offloaded segments older than
/// the local retention.
fn retain(
    log: &TopicLog,
    floor: u64,
    policies: &sava_metadata::NamespacePolicies,
    local_retention: Option<Duration>,
) -> Result<(), sava_storage::Error> {
    log.disk().seal_if_aged()?;
    let now = now_ms();
    let max_age_ms = policies
        .retention_age_secs
        .map_or(0, |s| s.saturating_mul(1000));
    let segments = log.disk().segments();
    let acked: Vec<_> = segments
        .iter()
        .take_while(|s| s.sealed && s.next_offset <= floor)
        .collect();
    let mut retained: u64 = acked.iter().map(|s| s.bytes).sum();
    let mut delete_before = None;
    for segment in acked {
        let age = now.saturating_sub(segment.last_publish_time_ms.unwrap_or(0));
        let too_old = age >= max_age_ms;
        let too_big = policies.retention_bytes.is_some_and(|max| retained > max);
        if !(too_old || too_big) {
            break;
        }
        retained -= segment.bytes;
        delete_before = Some(segment.next_offset);
    }
    if let Some(retention) = local_retention {
        let offloaded_end = log.offloaded_end();
        let expired = segments
            .iter()
            .take_while(|s| crate::offload::local_copy_expired(s, offloaded_end, retention))
            .last()
            .map(|s| s.next_offset);
        delete_before = delete_before.max(expired);
    }
    if let Some(offset) = delete_before {
        let deleted = log.disk().delete_before(offset)?;
        tracing::debug!(
            segments = deleted.len(),
            before = offset,
            "retention deleted segments"
        );
    }
    log.disk().trim_spares(SPARE_IDLE);
    Ok(())
}

fn subscription_type_named(name: &str) -> Option<SubscriptionType> {
    [
        SubscriptionType::Exclusive,
        SubscriptionType::Shared,
        SubscriptionType::Failover,
        SubscriptionType::KeyShared,
    ]
    .into_iter()
    .find(|kind| kind.name() == name)
}

/// The topic name without its `-part-N` suffix.
fn base_topic(name: &TopicName) -> String {
    let full = name.as_str();
    match name.partition_index() {
        Some(_) => full[..full.rfind("-part-").unwrap_or(full.len())].to_string(),
        None => full.to_string(),
    }
}

/// The topics `record` (of topic `name`) stands for: its partitions, or
/// itself.
pub(crate) fn partition_names(name: &TopicName, record: &TopicRecord) -> Vec<String> {
    match record.partitions {
        0 => vec![name.to_string()],
        n => (0..n).map(|i| name.partition(i).to_string()).collect(),
    }
}

pub fn mode_name(mode: DispatchMode) -> &'static str {
    match mode {
        DispatchMode::NonReliable => "non-reliable",
        DispatchMode::Reliable => "reliable",
    }
}
