//! Subscriptions and their cursors.
//!
//! A reliable subscription's cursor is its acknowledged position: every
//! offset below `floor` is acknowledged, and so are the ranges in
//! `acked_ranges` above it (Shared and Key-Shared subscriptions acknowledge
//! out of order). The broker writes cursors in coalesced batches, many
//! subscriptions per transaction, so a record may lag the broker's memory
//! by the flush interval; after a restart the lag is redelivered, never
//! skipped.

use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::{Catalog, write};
use crate::error::Result;

/// One subscription of one topic (or partition).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// The topic or partition, `/ns/topic`.
    pub topic: String,
    pub name: String,
    /// `exclusive`, `shared`, `failover` or `key-shared`.
    pub subscription_type: String,
    /// Every offset below it is acknowledged.
    pub floor: u64,
    /// Acknowledged offsets above `floor`, as inclusive `(first, last)`
    /// ranges in ascending order.
    #[serde(default)]
    pub acked_ranges: Vec<(u64, u64)>,
    pub created_at_ms: u64,
    /// Redeliver what is not acknowledged within this time; `None`: never.
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
    /// Deliveries after which `on_max_deliveries` applies; `None`: no limit.
    #[serde(default)]
    pub max_deliveries: Option<u32>,
    /// `dead-letter`, `drop` or `block`; `None` is `dead-letter`.
    #[serde(default)]
    pub on_max_deliveries: Option<String>,
}

impl Catalog {
    /// Writes `records` in one transaction, replacing what was there.
    pub async fn save_subscriptions(&self, records: &[SubscriptionRecord]) -> Result<()> {
        let writes: Vec<(Vec<u8>, SubscriptionRecord)> = records
            .iter()
            .map(|r| (self.subscription_key(&r.topic, &r.name), r.clone()))
            .collect();
        self.transact(|tx| {
            let writes = writes.clone();
            async move {
                for (key, record) in &writes {
                    write(tx, key, record)?;
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }

    /// Subscription `name` of `topic`, if recorded.
    pub async fn subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Option<SubscriptionRecord>> {
        self.get(self.subscription_key(topic, name)).await
    }

    /// Every recorded subscription of `topic`, sorted by name.
    pub async fn subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionRecord>> {
        self.get_all(self.subscriptions_range(topic)).await
    }

    /// Forgets subscription `name` of `topic`; nothing happens when it is
    /// not recorded.
    pub async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()> {
        self.clear_key(self.subscription_key(topic, name)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use std::sync::Arc;

    fn record(topic: &str, name: &str, floor: u64) -> SubscriptionRecord {
        SubscriptionRecord {
            topic: topic.into(),
            name: name.into(),
            subscription_type: "shared".into(),
            floor,
            acked_ranges: vec![(floor + 2, floor + 4)],
            created_at_ms: 1,
            ack_timeout_ms: Some(30_000),
            max_deliveries: None,
            on_max_deliveries: None,
        }
    }

    #[tokio::test]
    async fn saved_cursors_read_back_and_a_later_save_replaces_them() {
        let catalog = Catalog::new(Arc::new(EmbeddedStore::open_temporary().unwrap()));
        catalog.ensure_namespace("default").await.unwrap();
        let batch = [
            record("/default/t", "a", 5),
            record("/default/t", "b", 7),
            record("/default/u", "a", 1),
        ];
        catalog.save_subscriptions(&batch).await.unwrap();

        let on_t = catalog.subscriptions("/default/t").await.unwrap();
        assert_eq!(on_t, vec![batch[0].clone(), batch[1].clone()]);

        catalog
            .save_subscriptions(&[record("/default/t", "a", 9)])
            .await
            .unwrap();
        let a = catalog
            .subscription("/default/t", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.floor, 9);
    }

    #[tokio::test]
    async fn a_deleted_subscription_is_gone() {
        let catalog = Catalog::new(Arc::new(EmbeddedStore::open_temporary().unwrap()));
        catalog
            .save_subscriptions(&[record("/default/t", "a", 0)])
            .await
            .unwrap();
        catalog
            .delete_subscription("/default/t", "a")
            .await
            .unwrap();
        assert!(
            catalog
                .subscriptions("/default/t")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
