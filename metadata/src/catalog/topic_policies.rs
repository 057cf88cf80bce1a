//! Policies of one topic that override its namespace's: retention of
//! acknowledged history and the backlog quota. A field left `None` takes
//! the namespace's value; a partition takes its parent topic's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::{Catalog, NamespacePolicies, TopicName, TopicRecord, not_found, read, write};
use crate::error::Result;

/// A topic's own policies; `None` fields inherit from the namespace. For
/// the numbers, `Some(0)` means none (no age, no size bound, no quota)
/// whatever the namespace says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicPolicies {
    pub retention_age_secs: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub backlog_quota_bytes: Option<u64>,
    pub backlog_policy: Option<String>,
}

impl NamespacePolicies {
    /// These policies with `topic`'s overrides applied.
    pub fn with_topic(mut self, topic: &TopicPolicies) -> NamespacePolicies {
        let none_if_zero = |value: u64| (value > 0).then_some(value);
        if let Some(secs) = topic.retention_age_secs {
            self.retention_age_secs = none_if_zero(secs);
        }
        if let Some(bytes) = topic.retention_bytes {
            self.retention_bytes = none_if_zero(bytes);
        }
        if let Some(bytes) = topic.backlog_quota_bytes {
            self.backlog_quota_bytes = none_if_zero(bytes);
        }
        if topic.backlog_policy.is_some() {
            self.backlog_policy.clone_from(&topic.backlog_policy);
        }
        self
    }
}

impl Catalog {
    /// The policies set on topic `name` itself (defaults when none are).
    pub async fn topic_policies(&self, name: &str) -> Result<TopicPolicies> {
        let policies = self.get(self.topic_policies_key(name)).await?;
        Ok(policies.unwrap_or_default())
    }

    /// Replaces topic `name`'s own policies.
    ///
    /// # Errors
    ///
    /// `NotFound` when the topic does not exist.
    pub async fn set_topic_policies(&self, name: &str, policies: &TopicPolicies) -> Result<()> {
        let topic = TopicName::parse(name)?;
        let (record_key, key) = (self.topic_key(&topic), self.topic_policies_key(name));
        let what = format!("topic `{}`", topic.full_name());
        let seen = Arc::new(AtomicBool::new(false));
        self.transact(|tx| {
            let (record_key, key, policies) = (record_key.clone(), key.clone(), policies.clone());
            let (seen, what) = (Arc::clone(&seen), what.clone());
            async move {
                if read::<TopicRecord>(tx, &record_key).await?.is_none() {
                    if seen.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    return Err(not_found(what));
                }
                seen.store(true, Ordering::Relaxed);
                write(tx, &key, &policies)
            }
            .boxed()
        })
        .await
    }

    pub(super) fn topic_policies_key(&self, name: &str) -> Vec<u8> {
        self.key().push_str("topic_policies").push_str(name).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::{DispatchMode, MetadataError};

    #[tokio::test]
    async fn a_topic_overrides_only_the_policies_it_sets() {
        let catalog = Catalog::new(Arc::new(EmbeddedStore::open_temporary().unwrap()));
        catalog.ensure_namespace("default").await.unwrap();
        let record = TopicRecord {
            name: "/default/t".into(),
            partitions: 0,
            partition_of: None,
            dispatch_mode: DispatchMode::Reliable,
            schema: None,
            created_at_ms: 0,
        };
        catalog.create_topic(record).await.unwrap();
        assert_eq!(
            catalog.topic_policies("/default/t").await.unwrap(),
            TopicPolicies::default()
        );

        let own = TopicPolicies {
            retention_bytes: Some(10),
            ..TopicPolicies::default()
        };
        catalog
            .set_topic_policies("/default/t", &own)
            .await
            .unwrap();
        let namespace = NamespacePolicies {
            retention_age_secs: Some(60),
            retention_bytes: Some(1000),
            ..NamespacePolicies::default()
        };
        let effective = namespace.with_topic(&catalog.topic_policies("/default/t").await.unwrap());
        assert_eq!(effective.retention_bytes, Some(10));
        assert_eq!(effective.retention_age_secs, Some(60));

        let missing = catalog.set_topic_policies("/default/u", &own).await;
        assert!(
            matches!(missing, Err(MetadataError::NotFound { .. })),
            "{missing:?}"
        );
        catalog.delete_topic("/default/t").await.unwrap();
        assert_eq!(
            catalog.topic_policies("/default/t").await.unwrap(),
            TopicPolicies::default()
        );
    }
}
