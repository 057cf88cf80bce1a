//! The typed catalog the broker keeps in the metadata store.
//!
//! Records are JSON values under tuple-encoded keys (see [`crate::keys`])
//! below the cluster prefix, `sava` unless set with [`Catalog::with_cluster`]:
//!
//! | key | value |
//! | --- | --- |
//! | `/sava/namespaces/<ns>` | [`NamespaceRecord`] |
//! | `/sava/topics/<ns>/<topic>` | [`TopicRecord`] of `/<ns>/<topic>`, partitions included |
//! | `/sava/topic_policies/</ns/topic>` | [`TopicPolicies`]: the topic's overrides of its namespace's policies |
//! | `/sava/subscriptions/</ns/topic>/<sub>` | [`SubscriptionRecord`]: type and cursor |
//! | `/sava/schemas/subjects/<subject>` | [`SubjectRecord`] |
//! | `/sava/schemas/versions/<subject>/<version>` | [`SchemaRecord`] (`version` a `u64` element) |
//! | `/sava/schemas/ids/<id>` | the subject of schema id `id`, a JSON string |
//! | `/sava/segments/</ns/topic>/<base_offset>` | [`SegmentDescriptor`] of one offloaded Parquet object (`base_offset` a `u64` element) |
//! | `/sava/brokers/...`, `/sava/leader`, `/sava/ownership/...`, `/sava/owned/...`, `/sava/unassigned/...` | cluster membership and topic ownership (see [`Ownership`]) |
//! | `/sava/counters/schema_id` | the last schema id handed out, a little-endian `i64` |
//! | `/sava/counters/schema_version/<subject>` | the last version handed out in a subject, a little-endian `i64`, so a deleted version number is never reused |
//!
//! Every method is one transaction run through [`transact`], written to be
//! idempotent: a retry after a commit that did apply finds its own writes and
//! returns what the first attempt would have returned.

mod cluster;
mod schemas;
mod segments;
mod subscriptions;
#[cfg(test)]
mod tests;
mod topic_policies;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use cluster::{BrokerLoad, BrokerRecord, BrokerState, LeaderRecord, Ownership};
pub use segments::{RowGroupDescriptor, SegmentDescriptor};
pub use subscriptions::SubscriptionRecord;
pub use topic_policies::TopicPolicies;

use crate::error::{MetadataError, Result};
use crate::keys::{Key, display_key};
use crate::store::{MetadataStore, RangeOptions, Transaction, transact};

/// The cluster prefix of [`Catalog::new`].
pub const DEFAULT_CLUSTER: &str = "sava";

/// The most partitions one topic may have; all are written in one
/// transaction.
pub const MAX_PARTITIONS: u32 = 10_000;

/// How a topic delivers to its subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DispatchMode {
    #[default]
    NonReliable,
    Reliable,
}

/// The policies of a namespace; missing fields take their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespacePolicies {
    /// Whether producing to an unknown topic creates it. Default `true`.
    pub auto_create_topics: bool,
    /// The largest message accepted; `None` leaves it to the broker's limit.
    pub max_message_bytes: Option<u64>,
    /// The dispatch mode of topics created without one.
    pub default_dispatch_mode: DispatchMode,
    /// How long acknowledged messages of reliable topics are kept for
    /// replay; `None` deletes them once every subscription acknowledged them.
    pub retention_age_secs: Option<u64>,
    /// How many bytes of acknowledged messages a reliable topic keeps for
    /// replay at most; `None` sets no size bound besides the age.
    pub retention_bytes: Option<u64>,
    /// The most bytes of unacknowledged messages a reliable topic may hold
    /// (from its slowest subscription's cursor on); `None`: no quota.
    pub backlog_quota_bytes: Option<u64>,
    /// What a topic over its quota does: `refuse` producers (the default)
    /// or `drop_oldest`, moving the slowest cursors past the oldest
    /// segments.
    pub backlog_policy: Option<String>,
}

impl Default for NamespacePolicies {
    fn default() -> Self {
        NamespacePolicies {
            auto_create_topics: true,
            max_message_bytes: None,
            default_dispatch_mode: DispatchMode::NonReliable,
            retention_age_secs: None,
            retention_bytes: None,
            backlog_quota_bytes: None,
            backlog_policy: None,
        }
    }
}

/// A namespace: a group of topics sharing policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub policies: NamespacePolicies,
    pub created_at_ms: u64,
}

/// The schema a topic is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSchema {
    pub subject: String,
    pub schema_id: u64,
    pub version: u32,
}

/// A topic, the parent of a partitioned topic, or one of its partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// `/ns/topic`, or `/ns/topic-part-3` for a partition.
    pub name: String,
    /// The partition count on the parent of a partitioned topic, 0 otherwise.
    pub partitions: u32,
    /// The parent's name, on a partition.
    pub partition_of: Option<String>,
    pub dispatch_mode: DispatchMode,
    pub schema: Option<TopicSchema>,
    pub created_at_ms: u64,
}

/// One registered version of a schema subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub subject: String,
    pub schema_id: u64,
    pub version: u32,
    /// One of `bytes`, `string`, `number`, `int64`, `json_schema`, `avro`,
    /// `protobuf`.
    pub schema_type: String,
    pub definition: Vec<u8>,
    /// Hex of the 64-bit FNV-1a hash of the type, a zero byte and the
    /// definition.
    pub fingerprint: String,
    pub description: String,
    pub created_by: String,
    pub tags: Vec<String>,
    pub created_at_ms: u64,
}

/// A schema subject: one schema id and its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRecord {
    pub subject: String,
    pub schema_id: u64,
    pub latest_version: u32,
    pub schema_type: String,
    /// One of `none`, `backward`, `forward`, `full`; `backward` at first.
    pub compatibility_mode: String,
}

/// Typed access to namespaces, topics and schemas in a metadata store.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn MetadataStore>,
    cluster: String,
}

impl Catalog {
    /// A catalog under the cluster prefix `sava`.
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Self::with_cluster(store, DEFAULT_CLUSTER)
    }

    /// A catalog under the cluster prefix `cluster`.
    pub fn with_cluster(store: Arc<dyn MetadataStore>, cluster: &str) -> Self {
        Catalog {
            store,
            cluster: cluster.to_owned(),
        }
    }

    /// The store under the catalog, for the broker's own keys.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// The cluster prefix of every key.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The key of subscription `subscription` of topic `topic`, which
    /// [`Catalog::delete_topic`] clears along with the topic.
    pub fn subscription_key(&self, topic: &str, subscription: &str) -> Vec<u8> {
        self.subscriptions_prefix(topic)
            .push_str(subscription)
            .build()
    }

    /// The key range holding every subscription of topic `topic`.
    pub fn subscriptions_range(&self, topic: &str) -> (Vec<u8>, Vec<u8>) {
        self.subscriptions_prefix(topic).range()
    }

    /// Returns namespace `name`, creating it with default policies if missing.
    ///
    /// # Errors
    ///
    /// `Invalid` for a bad name; store errors.
    pub async fn ensure_namespace(&self, name: &str) -> Result<NamespaceRecord> {
        validate_name("namespace", name)?;
        let key = self.namespace_key(name);
        let record = NamespaceRecord {
            name: name.to_owned(),
            policies: NamespacePolicies::default(),
            created_at_ms: now_ms(),
        };

        self.transact(|tx| {
            let (key, record) = (key.clone(), record.clone());
            async move {
                if let Some(existing) = read(tx, &key).await? {
                    return Ok(existing);
                }
                write(tx, &key, &record)?;
                Ok(record)
            }
            .boxed()
        })
        .await
    }

    /// Creates namespace `name` with `policies`; an existing one with the
    /// same policies is returned as it is.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when it exists with other policies, `Invalid` for a bad
    /// name; store errors.
    pub async fn create_namespace(
        &self,
        name: &str,
        policies: NamespacePolicies,
    ) -> Result<NamespaceRecord> {
        validate_name("namespace", name)?;
        let key = self.namespace_key(name);
        let record = NamespaceRecord {
            name: name.to_owned(),
            policies,
            created_at_ms: now_ms(),
        };

        self.transact(|tx| {
            let (key, record) = (key.clone(), record.clone());
            async move {
                match read::<NamespaceRecord>(tx, &key).await? {
                    Some(existing) if existing.policies == record.policies => Ok(existing),
                    Some(_) => Err(already_exists(format!("namespace `{}`", record.name))),
                    None => {
                        write(tx, &key, &record)?;
                        Ok(record)
                    }
                }
            }
            .boxed()
        })
        .await
    }

    /// Namespace `name`, if it exists.
    pub async fn namespace(&self, name: &str) -> Result<Option<NamespaceRecord>> {
        self.get(self.namespace_key(name)).await
    }

    /// Every namespace, sorted by name.
    pub async fn list_namespaces(&self) -> Result<Vec<NamespaceRecord>> {
        self.get_all(self.key().push_str("namespaces").range())
            .await
    }

    /// Replaces the policies of namespace `name`.
    ///
    /// # Errors
    ///
    /// `NotFound` when it does not exist; store errors.
    pub async fn set_namespace_policies(
        &self,
        name: &str,
        policies: NamespacePolicies,
    ) -> Result<NamespaceRecord> {
        let key = self.namespace_key(name);
        let what = format!("namespace `{name}`");
        self.transact(|tx| {
            let (key, what, policies) = (key.clone(), what.clone(), policies.clone());
            async move {
                let mut record: NamespaceRecord =
                    read(tx, &key).await?.ok_or_else(|| not_found(what))?;
                record.policies = policies;
                write(tx, &key, &record)?;
                Ok(record)
            }
            .boxed()
        })
        .await
    }

    /// Deletes namespace `name`, which must hold no topics.
    ///
    /// # Errors
    ///
    /// `NotFound` when it does not exist, `NotEmpty` while it has topics;
    /// store errors.
    pub async fn delete_namespace(&self, name: &str) -> Result<()> {
        let key = self.namespace_key(name);
        let topics = self.key().push_str("topics").push_str(name).range();
        let what = format!("namespace `{name}`");
        let seen = Arc::new(AtomicBool::new(false));

        self.transact(|tx| {
            let (key, topics, what) = (key.clone(), topics.clone(), what.clone());
            let seen = Arc::clone(&seen);
            async move {
                if tx.get(&key).await?.is_none() {
                    return gone_or_not_found(&seen, what);
                }
                seen.store(true, Ordering::Relaxed);

                let first_topic = tx.get_range(&topics.0, &topics.1, RangeOptions::limit(1));
                if !first_topic.await?.is_empty() {
                    return Err(MetadataError::NotEmpty { what });
                }
                tx.clear(&key);
                Ok(())
            }
            .boxed()
        })
        .await
    }

    /// Creates a topic. A parent with `partitions > 0` is created with its
    /// partitions, as by [`Catalog::create_partitioned_topic`]. An existing
    /// topic equal to `record` (ignoring `created_at_ms`) is returned as it
    /// is. A `created_at_ms` of 0 is replaced by the current time.
    ///
    /// # Errors
    ///
    /// `NotFound` naming the namespace when it does not exist,
    /// `AlreadyExists` when the topic exists with other settings, `Invalid`
    /// for a bad name; store errors.
    pub async fn create_topic(&self, record: TopicRecord) -> Result<TopicRecord> {
        if record.partitions > 0 {
            let (parent, _) = self.create_partitioned_topic(record).await?;
            return Ok(parent);
        }
        let mut created = self.create_topics(vec![stamp(record)]).await?;
        Ok(created.remove(0))
    }

    /// Creates the parent of a partitioned topic and its partitions
    /// `<name>-part-0` to `<name>-part-<partitions - 1>` in one transaction.
    /// Partitions take the parent's dispatch mode, schema and creation time.
    ///
    /// # Errors
    ///
    /// As [`Catalog::create_topic`], and `Invalid` when `partitions` is 0 or
    /// above [`MAX_PARTITIONS`], or the parent is itself a partition.
    pub async fn create_partitioned_topic(
        &self,
        parent: TopicRecord,
    ) -> Result<(TopicRecord, Vec<TopicRecord>)> {
        if parent.partitions == 0 || parent.partitions > MAX_PARTITIONS {
            return Err(MetadataError::Invalid {
                reason: format!(
                    "partitioned topic `{}` asks for {} partitions; it needs 1 to {MAX_PARTITIONS}",
                    parent.name, parent.partitions
                ),
            });
        }
        if parent.partition_of.is_some() {
            return Err(MetadataError::Invalid {
                reason: format!("partitioned topic `{}` cannot be a partition", parent.name),
            });
        }

        let parent = stamp(parent);
        let partitions = (0..parent.partitions).map(|index| TopicRecord {
            name: partition_name(&parent.name, index),
            partitions: 0,
            partition_of: Some(parent.name.clone()),
            ..parent.clone()
        });
        let records = std::iter::once(parent.clone()).chain(partitions).collect();

        let mut created = self.create_topics(records).await?;
        let parent = created.remove(0);
        Ok((parent, created))
    }

    /// Creates `records` (all in one namespace) atomically, keeping the
    /// existing ones that are equal to them.
    async fn create_topics(&self, records: Vec<TopicRecord>) -> Result<Vec<TopicRecord>> {
        let Some(first) = records.first() else {
            return Ok(Vec::new());
        };
        let name = TopicName::parse(&first.name)?;
        let namespace_key = self.namespace_key(&name.namespace);
        let missing_namespace = format!("namespace `{}`", name.namespace);
        let mut keyed = Vec::with_capacity(records.len());
        for record in records {
            let name = TopicName::parse(&record.name)?;
            keyed.push((self.topic_key(&name), record));
        }

        self.transact(|tx| {
            let (namespace_key, keyed) = (namespace_key.clone(), keyed.clone());
            let missing_namespace = missing_namespace.clone();
            async move {
                if tx.get(&namespace_key).await?.is_none() {
                    return Err(not_found(missing_namespace));
                }

                let mut created = Vec::with_capacity(keyed.len());
                for (key, record) in keyed {
                    match read::<TopicRecord>(tx, &key).await? {
                        Some(existing) if same_topic(&existing, &record) => created.push(existing),
                        Some(_) => return Err(already_exists(format!("topic `{}`", record.name))),
                        None => {
                            write(tx, &key, &record)?;
                            created.push(record);
                        }
                    }
                }
                Ok(created)
            }
            .boxed()
        })
        .await
    }

    /// Topic (or partition) `name`; `None` also for a name no topic can have.
    pub async fn topic(&self, name: &str) -> Result<Option<TopicRecord>> {
        let Ok(name) = TopicName::parse(name) else {
            return Ok(None);
        };
        self.get(self.topic_key(&name)).await
    }

    /// Every topic and partition of `namespace`, sorted by name.
    pub async fn list_topics(&self, namespace: &str) -> Result<Vec<TopicRecord>> {
        self.get_all(self.key().push_str("topics").push_str(namespace).range())
            .await
    }

    /// Replaces the record of an existing topic, keeping its creation time.
    /// Partition records are left as they are, even when `partitions` changes.
    ///
    /// # Errors
    ///
    /// `NotFound` when the topic does not exist, `Invalid` for a bad name;
    /// store errors.
    pub async fn update_topic(&self, record: TopicRecord) -> Result<()> {
        let key = self.topic_key(&TopicName::parse(&record.name)?);
        self.transact(|tx| {
            let (key, mut record) = (key.clone(), record.clone());
            async move {
                let existing: TopicRecord = read(tx, &key)
                    .await?
                    .ok_or_else(|| not_found(format!("topic `{}`", record.name)))?;
                record.created_at_ms = existing.created_at_ms;
                write(tx, &key, &record)
            }
            .boxed()
        })
        .await
    }

    /// Deletes a topic with its subscriptions, and with its partitions and
    /// theirs when it is the parent of a partitioned topic.
    ///
    /// # Errors
    ///
    /// `NotFound` when the topic does not exist; store errors.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let what = format!("topic `{name}`");
        let Ok(topic) = TopicName::parse(name) else {
            return Err(not_found(what));
        };
        let key = self.topic_key(&topic);
        let catalog = self.clone();
        let seen = Arc::new(AtomicBool::new(false));

        self.transact(|tx| {
            let (key, what, catalog, topic) =
                (key.clone(), what.clone(), catalog.clone(), topic.clone());
            let seen = Arc::clone(&seen);
            async move {
                let Some(record) = read::<TopicRecord>(tx, &key).await? else {
                    return gone_or_not_found(&seen, what);
                };
                seen.store(true, Ordering::Relaxed);

                catalog.clear_topic(tx, &topic).await?;
                for index in 0..record.partitions {
                    let partition = TopicName {
                        local: partition_name(&topic.local, index),
                        ..topic.clone()
                    };
                    catalog.clear_topic(tx, &partition).await?;
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }

    async fn clear_topic(&self, tx: &mut dyn Transaction, topic: &TopicName) -> Result<()> {
        self.clear_ownership(tx, &topic.full_name()).await?;
        tx.clear(&self.topic_key(topic));
        let (begin, end) = self.subscriptions_range(&topic.full_name());
        tx.clear_range(&begin, &end);
        let (begin, end) = self.segments_prefix(&topic.full_name()).range();
        tx.clear_range(&begin, &end);
        tx.clear(&self.topic_policies_key(&topic.full_name()));
        Ok(())
    }

    async fn transact<T, F>(&self, body: F) -> Result<T>
    where
        F: for<'a> FnMut(&'a mut dyn Transaction) -> futures::future::BoxFuture<'a, Result<T>>
            + Send,
        T: Send,
    {
        transact(self.store.as_ref(), body).await
    }

    /// The record at `key`, read in a transaction of its own.
    async fn get<T: DeserializeOwned + Send>(&self, key: Vec<u8>) -> Result<Option<T>> {
        self.transact(|tx| {
            let key = key.clone();
            async move { read(tx, &key).await }.boxed()
        })
        .await
    }

    /// Every record in `range`, in key order, read in a transaction of its
    /// own.
    async fn get_all<T: DeserializeOwned + Send>(
        &self,
        range: (Vec<u8>, Vec<u8>),
    ) -> Result<Vec<T>> {
        self.transact(|tx| {
            let range = range.clone();
            async move { read_all(tx, &range).await }.boxed()
        })
        .await
    }

    /// Clears `key` in a transaction of its own.
    async fn clear_key(&self, key: Vec<u8>) -> Result<()> {
        self.transact(|tx| {
            let key = key.clone();
            async move {
                tx.clear(&key);
                Ok(())
            }
            .boxed()
        })
        .await
    }

    fn key(&self) -> Key {
        Key::new(&self.cluster)
    }

    fn namespace_key(&self, name: &str) -> Vec<u8> {
        self.key().push_str("namespaces").push_str(name).build()
    }

    fn topic_key(&self, topic: &TopicName) -> Vec<u8> {
        let key = self.key().push_str("topics").push_str(&topic.namespace);
        key.push_str(&topic.local).build()
    }

    fn subscriptions_prefix(&self, topic: &str) -> Key {
        self.key().push_str("subscriptions").push_str(topic)
    }
}

/// A topic name split into its namespace and its name inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TopicName {
    namespace: String,
    local: String,
}

impl TopicName {
    fn parse(name: &str) -> Result<Self> {
        let invalid = || MetadataError::Invalid {
            reason: format!("topic name `{name}` must look like /namespace/topic"),
        };
        let (namespace, local) = name
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(invalid)?;
        validate_name("namespace", namespace)?;
        validate_name("topic", local)?;
        Ok(TopicName {
            namespace: namespace.to_owned(),
            local: local.to_owned(),
        })
    }

    fn full_name(&self) -> String {
        format!("/{}/{}", self.namespace, self.local)
    }
}

fn partition_name(parent: &str, index: u32) -> String {
    format!("{parent}-part-{index}")
}

/// Checks a namespace or topic name: letters, digits, `_` and `-`.
fn validate_name(kind: &str, name: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(allowed) {
        return Err(MetadataError::Invalid {
            reason: format!("{kind} name `{name}` must be letters, digits, `_` and `-`"),
        });
    }
    Ok(())
}

/// Whether two topic records agree on everything but their creation time.
fn same_topic(left: &TopicRecord, right: &TopicRecord) -> bool {
    let untimed = |record: &TopicRecord| TopicRecord {
        created_at_ms: 0,
        ..record.clone()
    };
    untimed(left) == untimed(right)
}

fn stamp(mut record: TopicRecord) -> TopicRecord {
    if record.created_at_ms == 0 {
        record.created_at_ms = now_ms();
    }
    record
}

/// The outcome of deleting something missing: success when an earlier
/// attempt of the same call saw it (that attempt may have committed the
/// delete before reporting `UnknownResult`), `NotFound` otherwise.
fn gone_or_not_found(seen: &AtomicBool, what: String) -> Result<()> {
    if seen.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err(not_found(what))
    }
}

fn not_found(what: String) -> MetadataError {
    MetadataError::NotFound { what }
}

fn already_exists(what: String) -> MetadataError {
    MetadataError::AlreadyExists { what }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

async fn read<T: DeserializeOwned>(tx: &mut dyn Transaction, key: &[u8]) -> Result<Option<T>> {
    match tx.get(key).await? {
        Some(value) => decode(key, &value).map(Some),
        None => Ok(None),
    }
}

async fn read_all<T: DeserializeOwned>(
    tx: &mut dyn Transaction,
    (begin, end): &(Vec<u8>, Vec<u8>),
) -> Result<Vec<T>> {
    let pairs = tx.get_range(begin, end, RangeOptions::default()).await?;
    pairs
        .iter()
        .map(|pair| decode(&pair.key, &pair.value))
        .collect()
}

fn write<T: Serialize>(tx: &mut dyn Transaction, key: &[u8], record: &T) -> Result<()> {
    let value = serde_json::to_vec(record).map_err(MetadataError::backend)?;
    tx.set(key, &value);
    Ok(())
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|error| MetadataError::Corrupt {
        key: display_key(key),
        reason: error.to_string(),
    })
}
