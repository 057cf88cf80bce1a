//! The broker's errors and their one mapping onto the wire.

use sava_metadata::MetadataError;
use sava_proto::{ErrorKind, WireError};

/// Everything that can refuse a client request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("topic {0} does not exist")]
    TopicNotFound(String),

    #[error("namespace {0} does not exist")]
    NamespaceNotFound(String),

    #[error("namespace {0} does not allow creating topics on first use")]
    AutoCreateDisabled(String),

    #[error("producer {0} is not attached to this broker; look the topic up again and recreate it")]
    ProducerNotFound(u64),

    #[error("consumer {0} is not attached to this broker; look the topic up again and resubscribe")]
    ConsumerNotFound(u64),

    #[error("topic {topic} is held by exclusive producer {holder}")]
    ProducerFenced { topic: String, holder: String },

    #[error("topic {topic} already has producers; an exclusive producer needs it to itself")]
    ExclusiveRefused { topic: String },

    #[error("topic {topic} is {actual}; a {requested} producer cannot use it")]
    DispatchModeMismatch {
        topic: String,
        actual: &'static str,
        requested: &'static str,
    },

    #[error("subscription {subscription} on {topic} is {actual}, not {requested}")]
    SubscriptionTypeMismatch {
        topic: String,
        subscription: String,
        actual: &'static str,
        requested: &'static str,
    },

    #[error("exclusive subscription {subscription} on {topic} is held by consumer {holder}")]
    ExclusiveSubscriptionHeld {
        topic: String,
        subscription: String,
        holder: String,
    },

    #[error("message {index} is {size} bytes, over the limit of {limit} bytes")]
    MessageTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },

    #[error("message {index} does not match the {schema} schema of {topic}: {reason}")]
    SchemaViolation {
        topic: String,
        schema: String,
        index: usize,
        reason: String,
    },

    #[error("invalid schema: {0}")]
    InvalidSchema(String),

    #[error("schema subject {0} does not exist")]
    SchemaNotFound(String),

    #[error("{0}")]
    InvalidRequest(String),

    #[error(
        "topic {topic} holds {backlog} bytes of unacknowledged messages, over its backlog quota of {quota} bytes; consumers must catch up"
    )]
    BacklogQuotaExceeded {
        topic: String,
        backlog: u64,
        quota: u64,
    },

    #[error(
        "topic {topic} has {pending} bytes of sealed segments waiting for offload to the object store, over the limit of {limit} bytes (offload.max_pending_bytes); the object store is unreachable or slow, or producers write faster than offload encodes"
    )]
    OffloadBacklog {
        topic: String,
        pending: u64,
        limit: u64,
    },

    #[error("{0}")]
    InUse(String),

    #[error("{0}")]
    TopicExists(String),

    #[error("subscription {subscription} does not exist on {topic}")]
    SubscriptionNotFound { topic: String, subscription: String },

    #[error("broker {0} is not part of this cluster")]
    BrokerNotFound(String),

    #[error("the broker is shutting down")]
    ShuttingDown,

    #[error("topic {topic} is served by broker {owner} at {url}; look it up again")]
    NotOwner {
        topic: String,
        owner: String,
        url: String,
    },

    #[error("no broker has taken topic {0} yet; retry")]
    NoOwner(String),

    #[error("topic {0} is moving to another broker; look it up again")]
    Moving(String),

    #[error(
        "this broker cannot renew its cluster lease, so it accepts no messages for {0}; look the topic up again"
    )]
    LeaseLost(String),

    #[error("broker {0} is draining and takes no topics")]
    Draining(String),

    #[error("metadata: {0}")]
    Metadata(#[from] MetadataError),

    #[error("storage: {0}")]
    Storage(sava_storage::Error),
}

impl BrokerError {
    /// What the client can do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BrokerError::InvalidName { .. }
            | BrokerError::MessageTooLarge { .. }
            | BrokerError::SchemaViolation { .. }
            | BrokerError::InvalidSchema(_)
            | BrokerError::InvalidRequest(_) => ErrorKind::InvalidArgument,
            BrokerError::TopicNotFound(_)
            | BrokerError::NamespaceNotFound(_)
            | BrokerError::SchemaNotFound(_)
            | BrokerError::SubscriptionNotFound { .. }
            | BrokerError::BrokerNotFound(_) => ErrorKind::NotFound,
            BrokerError::TopicExists(_) => ErrorKind::AlreadyExists,
            BrokerError::AutoCreateDisabled(_) => ErrorKind::PermissionDenied,
            BrokerError::ProducerFenced { .. }
            | BrokerError::ExclusiveRefused { .. }
            | BrokerError::DispatchModeMismatch { .. }
            | BrokerError::SubscriptionTypeMismatch { .. }
            | BrokerError::ExclusiveSubscriptionHeld { .. }
            | BrokerError::InUse(_) => ErrorKind::Conflict,
            // Danube's clients retry these and then recreate the producer or
            // consumer through a fresh lookup, which is what a restarted
            // broker or a moved topic needs.
            BrokerError::ShuttingDown
            | BrokerError::NotOwner { .. }
            | BrokerError::NoOwner(_)
            | BrokerError::Moving(_)
            | BrokerError::LeaseLost(_)
            | BrokerError::Draining(_)
            | BrokerError::ProducerNotFound(_)
            | BrokerError::ConsumerNotFound(_) => ErrorKind::Unavailable,
            BrokerError::BacklogQuotaExceeded { .. } | BrokerError::OffloadBacklog { .. } => {
                ErrorKind::ResourceExhausted
            }
            BrokerError::Metadata(error) => metadata_kind(error),
            BrokerError::Storage(error) if error.is_disk_full() => ErrorKind::ResourceExhausted,
            BrokerError::Storage(_) => ErrorKind::Internal,
        }
    }
}

fn metadata_kind(error: &MetadataError) -> ErrorKind {
    match error {
        MetadataError::NotFound { .. } => ErrorKind::NotFound,
        MetadataError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        MetadataError::Fenced { .. } => ErrorKind::Unavailable,
        MetadataError::Invalid { .. } | MetadataError::ValueTooLarge { .. } => {
            ErrorKind::InvalidArgument
        }
        MetadataError::NotEmpty { .. } => ErrorKind::Conflict,
        error if error.is_retryable() => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

impl From<BrokerError> for WireError {
    fn from(error: BrokerError) -> WireError {
        WireError::new(error.kind(), error.to_string())
    }
}

impl From<BrokerError> for tonic::Status {
    fn from(error: BrokerError) -> tonic::Status {
        WireError::from(error).into()
    }
}
