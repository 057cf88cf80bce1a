//! The JSON shapes `--output json` prints, built from the wire messages.
//!
//! These structs are the stable contract documented in `admin/README.md`:
//! fields are snake_case, numbers stay numbers, enums become the words the
//! command line uses (`reliable`, `key-shared`), and absent values are
//! `null` rather than empty strings. Rename nothing without a new version.

use sava_proto::danube_schema as registry;
use sava_proto::sava::v1 as pb;
use serde::Serialize;

/// The outcome of a call that changes something: the resulting object with
/// the broker's `note`, `null` when the call did change something.
#[derive(Debug, Serialize)]
pub(crate) struct Changed<T> {
    #[serde(flatten)]
    pub(crate) item: T,
    pub(crate) note: Option<String>,
}

impl<T> Changed<T> {
    pub(crate) fn new(item: T, note: String) -> Changed<T> {
        Changed {
            item,
            note: non_empty(note),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct BrokerView {
    pub(crate) broker_id: String,
    pub(crate) client_url: String,
    pub(crate) admin_url: String,
    pub(crate) http_url: String,
    pub(crate) state: String,
    pub(crate) alive: bool,
    pub(crate) leader: bool,
    pub(crate) topics: u32,
    pub(crate) owned_topics: u32,
    pub(crate) messages_in_per_sec: u64,
    pub(crate) lease_expires_ms: u64,
    pub(crate) started_at_ms: u64,
    pub(crate) version: Option<String>,
    /// Only from `brokers describe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) owned_topic_names: Option<Vec<String>>,
}

impl BrokerView {
    /// The view `brokers describe` shows, with the topic names.
    pub(crate) fn described(info: pb::BrokerInfo) -> BrokerView {
        let names = info.owned_topic_names.clone();
        BrokerView {
            owned_topic_names: Some(names),
            ..BrokerView::from(info)
        }
    }
}

impl From<pb::BrokerInfo> for BrokerView {
    fn from(info: pb::BrokerInfo) -> BrokerView {
        BrokerView {
            broker_id: info.broker_id,
            client_url: info.client_url,
            admin_url: info.admin_url,
            http_url: info.http_url,
            state: info.state,
            alive: info.alive,
            leader: info.leader,
            topics: info.topics,
            owned_topics: info.owned_topics,
            messages_in_per_sec: info.messages_in_per_sec,
            lease_expires_ms: info.lease_expires_ms,
            started_at_ms: info.started_at_ms,
            version: non_empty(info.version),
            owned_topic_names: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct PoliciesView {
    pub(crate) auto_create_topics: bool,
    /// 0 means the broker's own limit applies.
    pub(crate) max_message_bytes: u64,
    pub(crate) default_dispatch_mode: String,
    /// 0: acknowledged messages are deleted once every subscription has them.
    pub(crate) retention_age_secs: u64,
    /// 0: no size bound on retained messages.
    pub(crate) retention_bytes: u64,
    /// 0: no backlog quota.
    pub(crate) backlog_quota_bytes: u64,
    /// `refuse` or `drop_oldest`.
    pub(crate) backlog_policy: String,
}

impl From<Option<pb::NamespacePolicies>> for PoliciesView {
    fn from(policies: Option<pb::NamespacePolicies>) -> PoliciesView {
        let policies = policies.unwrap_or_default();
        PoliciesView {
            auto_create_topics: policies.auto_create_topics,
            max_message_bytes: policies.max_message_bytes,
            default_dispatch_mode: dispatch_mode_name(policies.default_dispatch_mode),
            retention_age_secs: policies.retention_age_secs,
            retention_bytes: policies.retention_bytes,
            backlog_quota_bytes: policies.backlog_quota_bytes,
            backlog_policy: policies.backlog_policy,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct NamespaceView {
    pub(crate) name: String,
    pub(crate) topics: u32,
    pub(crate) created_at_ms: u64,
    pub(crate) policies: PoliciesView,
}

impl From<pb::NamespaceInfo> for NamespaceView {
    fn from(info: pb::NamespaceInfo) -> NamespaceView {
        NamespaceView {
            name: info.name,
            topics: info.topics,
            created_at_ms: info.created_at_ms,
            policies: info.policies.into(),
        }
    }
}

/// What `namespaces policies` and `namespaces set-policy` print.
#[derive(Debug, Serialize)]
pub(crate) struct NamespacePoliciesView {
    pub(crate) namespace: String,
    #[serde(flatten)]
    pub(crate) policies: PoliciesView,
}

impl From<pb::NamespaceInfo> for NamespacePoliciesView {
    fn from(info: pb::NamespaceInfo) -> NamespacePoliciesView {
        NamespacePoliciesView {
            namespace: info.name,
            policies: info.policies.into(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct TopicSchemaView {
    pub(crate) subject: String,
    pub(crate) version: u32,
    pub(crate) schema_type: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct TopicView {
    pub(crate) name: String,
    pub(crate) dispatch_mode: String,
    /// 0 when the topic is not partitioned.
    pub(crate) partitions: u32,
    pub(crate) partition_of: Option<String>,
    pub(crate) schema: Option<TopicSchemaView>,
    pub(crate) created_at_ms: u64,
    pub(crate) owner_url: Option<String>,
    /// The owning broker and its ownership epoch; `null` and 0 when no
    /// broker owns the topic.
    pub(crate) owner_broker: Option<String>,
    pub(crate) epoch: u64,
}

impl From<pb::TopicInfo> for TopicView {
    fn from(info: pb::TopicInfo) -> TopicView {
        let schema = match info.schema_subject.is_empty() {
            true => None,
            false => Some(TopicSchemaView {
                subject: info.schema_subject,
                version: info.schema_version,
                schema_type: info.schema_type,
            }),
        };
        TopicView {
            name: info.name,
            dispatch_mode: dispatch_mode_name(info.dispatch_mode),
            partitions: info.partitions,
            partition_of: non_empty(info.partition_of),
            schema,
            created_at_ms: info.created_at_ms,
            owner_url: non_empty(info.owner_url),
            owner_broker: non_empty(info.owner_broker),
            epoch: info.epoch,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ClientView {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) connected: bool,
    pub(crate) mode: String,
}

impl From<pb::ClientInfo> for ClientView {
    fn from(info: pb::ClientInfo) -> ClientView {
        ClientView {
            id: info.id,
            name: info.name,
            connected: info.connected,
            mode: info.mode,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SubscriptionView {
    pub(crate) topic: String,
    pub(crate) name: String,
    pub(crate) subscription_type: String,
    pub(crate) cursor: u64,
    pub(crate) backlog_messages: u64,
    pub(crate) backlog_bytes: u64,
    pub(crate) oldest_unacked_age_ms: u64,
    pub(crate) pending: u64,
    pub(crate) delivered: u64,
    pub(crate) redelivered: u64,
    pub(crate) dropped: u64,
    /// Messages that ran out of deliveries (dead-lettered or dropped).
    pub(crate) dead_lettered: u64,
    /// 0 when off.
    pub(crate) ack_timeout_ms: u64,
    /// 0 for no limit.
    pub(crate) max_deliveries: u32,
    /// `dead-letter`, `drop` or `block`; null on non-reliable subscriptions.
    pub(crate) on_max_deliveries: Option<String>,
    /// Null on non-reliable subscriptions.
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) consumers: Vec<ClientView>,
}

impl From<pb::SubscriptionInfo> for SubscriptionView {
    fn from(info: pb::SubscriptionInfo) -> SubscriptionView {
        SubscriptionView {
            topic: info.topic,
            name: info.name,
            subscription_type: subscription_type_name(info.subscription_type),
            cursor: info.cursor,
            backlog_messages: info.backlog_messages,
            backlog_bytes: info.backlog_bytes,
            oldest_unacked_age_ms: info.oldest_unacked_age_ms,
            pending: info.pending,
            delivered: info.delivered,
            redelivered: info.redelivered,
            dropped: info.dropped,
            dead_lettered: info.dead_lettered,
            ack_timeout_ms: info.ack_timeout_ms,
            max_deliveries: info.max_deliveries,
            on_max_deliveries: non_empty(info.on_max_deliveries),
            dead_letter_topic: non_empty(info.dead_letter_topic),
            consumers: info.consumers.into_iter().map(ClientView::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct StatsView {
    pub(crate) name: String,
    pub(crate) messages_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) rate_in: f64,
    pub(crate) rate_out: f64,
    pub(crate) next_offset: u64,
    pub(crate) local_bytes: u64,
    pub(crate) offloaded_bytes: u64,
    pub(crate) producers: Vec<ClientView>,
    pub(crate) subscriptions: Vec<SubscriptionView>,
}

impl From<pb::TopicStatsResponse> for StatsView {
    fn from(stats: pb::TopicStatsResponse) -> StatsView {
        StatsView {
            name: stats.name,
            messages_in: stats.messages_in,
            bytes_in: stats.bytes_in,
            messages_out: stats.messages_out,
            rate_in: stats.rate_in,
            rate_out: stats.rate_out,
            next_offset: stats.next_offset,
            local_bytes: stats.local_bytes,
            offloaded_bytes: stats.offloaded_bytes,
            producers: stats.producers.into_iter().map(ClientView::from).collect(),
            subscriptions: stats.subscriptions.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct DeletedView {
    pub(crate) deleted: String,
    pub(crate) note: Option<String>,
}

impl From<pb::DeleteResponse> for DeletedView {
    fn from(response: pb::DeleteResponse) -> DeletedView {
        DeletedView {
            deleted: response.deleted,
            note: non_empty(response.note),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct TopicPoliciesView {
    pub(crate) topic: String,
    /// The topic's own values; `null` inherits the namespace's.
    pub(crate) retention_age_secs: Option<u64>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) backlog_quota_bytes: Option<u64>,
    pub(crate) backlog_policy: Option<String>,
    /// What applies, the topic's values over the namespace's.
    pub(crate) effective: PoliciesView,
}

impl From<pb::TopicPoliciesInfo> for TopicPoliciesView {
    fn from(info: pb::TopicPoliciesInfo) -> TopicPoliciesView {
        TopicPoliciesView {
            topic: info.topic,
            retention_age_secs: info.retention_age_secs,
            retention_bytes: info.retention_bytes,
            backlog_quota_bytes: info.backlog_quota_bytes,
            backlog_policy: info.backlog_policy,
            effective: PoliciesView::from(info.effective),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SegmentView {
    pub(crate) topic: String,
    /// `local` or `object`.
    pub(crate) location: String,
    pub(crate) base_offset: u64,
    pub(crate) next_offset: u64,
    pub(crate) first_publish_time_ms: u64,
    pub(crate) last_publish_time_ms: u64,
    pub(crate) bytes: u64,
    pub(crate) message_bytes: u64,
    pub(crate) object_key: Option<String>,
    pub(crate) etag: Option<String>,
    pub(crate) row_groups: u32,
    pub(crate) sealed: bool,
    pub(crate) offloaded: bool,
}

impl From<pb::SegmentInfo> for SegmentView {
    fn from(info: pb::SegmentInfo) -> SegmentView {
        SegmentView {
            topic: info.topic,
            location: info.location,
            base_offset: info.base_offset,
            next_offset: info.next_offset,
            first_publish_time_ms: info.first_publish_time_ms,
            last_publish_time_ms: info.last_publish_time_ms,
            bytes: info.bytes,
            message_bytes: info.message_bytes,
            object_key: non_empty(info.object_key),
            etag: non_empty(info.etag),
            row_groups: info.row_groups,
            sealed: info.sealed,
            offloaded: info.offloaded,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SegmentsView {
    /// Empty when the broker does not offload.
    pub(crate) object_store: Option<String>,
    pub(crate) segments: Vec<SegmentView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OffloadedView {
    pub(crate) topics: Vec<String>,
    pub(crate) segments_offloaded: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct CompactedView {
    pub(crate) topics: Vec<String>,
    pub(crate) merged: u32,
    pub(crate) swept: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct ExportedView {
    pub(crate) topic: String,
    pub(crate) directory: String,
    pub(crate) files: Vec<String>,
    pub(crate) bytes: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct UnloadedView {
    pub(crate) topic: String,
    pub(crate) unloaded: bool,
    pub(crate) note: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SchemaView {
    pub(crate) subject: String,
    pub(crate) schema_id: u64,
    pub(crate) version: u32,
    pub(crate) schema_type: String,
    pub(crate) compatibility_mode: String,
    pub(crate) fingerprint: String,
    pub(crate) description: String,
    pub(crate) created_by: String,
    pub(crate) created_at_ms: u64,
    pub(crate) tags: Vec<String>,
    /// The definition as text (UTF-8, invalid bytes replaced); empty for
    /// types without one.
    pub(crate) definition: String,
}

impl From<registry::GetSchemaResponse> for SchemaView {
    fn from(schema: registry::GetSchemaResponse) -> SchemaView {
        SchemaView {
            subject: schema.subject,
            schema_id: schema.schema_id,
            version: schema.version,
            schema_type: schema.schema_type,
            compatibility_mode: schema.compatibility_mode.to_ascii_lowercase(),
            fingerprint: schema.fingerprint,
            description: schema.description,
            created_by: schema.created_by,
            created_at_ms: schema.created_at,
            tags: schema.tags,
            definition: String::from_utf8_lossy(&schema.schema_definition).into_owned(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct RegisteredView {
    pub(crate) subject: String,
    pub(crate) schema_id: u64,
    pub(crate) version: u32,
    pub(crate) is_new_version: bool,
    pub(crate) fingerprint: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct VersionView {
    pub(crate) version: u32,
    pub(crate) schema_id: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) created_by: String,
    pub(crate) description: String,
    pub(crate) fingerprint: String,
}

impl From<registry::SchemaVersionInfo> for VersionView {
    fn from(info: registry::SchemaVersionInfo) -> VersionView {
        VersionView {
            version: info.version,
            schema_id: info.schema_id,
            created_at_ms: info.created_at,
            created_by: info.created_by,
            description: info.description,
            fingerprint: info.fingerprint,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct CompatibilityView {
    pub(crate) subject: String,
    pub(crate) compatible: bool,
    pub(crate) errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CompatibilityModeView {
    pub(crate) subject: String,
    pub(crate) compatibility_mode: String,
    pub(crate) message: String,
}

/// The command-line word for a dispatch mode.
pub(crate) fn dispatch_mode_name(value: i32) -> String {
    match pb::DispatchMode::try_from(value) {
        Ok(pb::DispatchMode::Reliable) => "reliable".to_string(),
        Ok(pb::DispatchMode::NonReliable) => "non-reliable".to_string(),
        Err(_) => format!("unknown({value})"),
    }
}

/// The command-line word for a subscription type.
pub(crate) fn subscription_type_name(value: i32) -> String {
    match pb::SubscriptionType::try_from(value) {
        Ok(pb::SubscriptionType::Exclusive) => "exclusive".to_string(),
        Ok(pb::SubscriptionType::Shared) => "shared".to_string(),
        Ok(pb::SubscriptionType::Failover) => "failover".to_string(),
        Ok(pb::SubscriptionType::KeyShared) => "key-shared".to_string(),
        Err(_) => format!("unknown({value})"),
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}
