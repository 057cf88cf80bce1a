//! The segment catalog: one descriptor per Parquet object holding a range of
//! a partition's offloaded history.
//!
//! A descriptor is committed only after its object was uploaded, so every
//! descriptor names an object that exists. The descriptors of a partition
//! never overlap: a commit that would overlap a different descriptor is
//! refused, and compaction swaps many descriptors for one in a single
//! transaction, so a reader listing them sees either the old set or the new
//! one, never a gap or a duplicate.

use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::{Catalog, read, write};
use crate::error::{MetadataError, Result};
use crate::keys::Key;
use crate::store::RangeOptions;

/// One offloaded object: the offsets `[base_offset, next_offset)` of one
/// partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentDescriptor {
    /// The topic or partition, `/ns/topic`.
    pub topic: String,
    pub base_offset: u64,
    /// One past the last offset held.
    pub next_offset: u64,
    pub first_publish_time_ms: u64,
    pub last_publish_time_ms: u64,
    /// Bytes of the messages as produced (payload, key, attributes).
    pub message_bytes: u64,
    /// The object's key in the object store, from the store's root.
    pub object_key: String,
    /// Bytes of the object.
    pub object_bytes: u64,
    /// The object's entity tag at upload, when the store reports one.
    pub etag: Option<String>,
    /// The object's row groups, in offset order.
    pub row_groups: Vec<RowGroupDescriptor>,
    pub uploaded_at_ms: u64,
    /// The ownership epoch the segment was written in; its commit is refused
    /// once another epoch owns the topic. 0 outside a cluster (no check).
    #[serde(default)]
    pub epoch: u64,
}

impl SegmentDescriptor {
    pub fn records(&self) -> u64 {
        self.next_offset - self.base_offset
    }

    /// Whether `offset` is inside this descriptor's range.
    pub fn contains(&self, offset: u64) -> bool {
        (self.base_offset..self.next_offset).contains(&offset)
    }
}

/// Where one row group sits inside its object, so a reader fetches it with
/// one ranged GET.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowGroupDescriptor {
    pub first_offset: u64,
    pub records: u64,
    /// The byte range of the row group's column chunks in the object.
    pub byte_start: u64,
    pub byte_len: u64,
}

impl Catalog {
    /// Records `descriptor`. Committing one with the same range and object
    /// again is a no-op (an upload retried after a commit whose result was
    /// lost records the object once).
    ///
    /// # Errors
    ///
    /// `Invalid` when it is empty or overlaps another descriptor of the topic.
    pub async fn commit_segment(&self, descriptor: &SegmentDescriptor) -> Result<()> {
        if descriptor.next_offset <= descriptor.base_offset {
            return Err(MetadataError::Invalid {
                reason: format!(
                    "segment of `{}` at offset {} holds no offsets",
                    descriptor.topic, descriptor.base_offset
                ),
            });
        }
        let catalog = self.clone();
        self.transact(|tx| {
            let (catalog, descriptor) = (catalog.clone(), descriptor.clone());
            async move {
                if descriptor.epoch > 0 {
                    catalog
                        .check_epoch(tx, &descriptor.topic, descriptor.epoch)
                        .await?;
                }
                let key = catalog.segment_key(&descriptor.topic, descriptor.base_offset);
                if let Some(existing) = read::<SegmentDescriptor>(tx, &key).await? {
                    let same = existing.next_offset == descriptor.next_offset
                        && existing.object_key == descriptor.object_key;
                    if same {
                        return Ok(());
                    }
                    return Err(overlap(&descriptor, &existing));
                }

                // The neighbours on both sides must not reach into it.
                let (begin, end) = catalog.segments_prefix(&descriptor.topic).range();
                let before = RangeOptions {
                    limit: Some(1),
                    reverse: true,
                };
                let pairs = tx.get_range(&begin, &key, before).await?;
                if let Some(pair) = pairs.first() {
                    let previous: SegmentDescriptor = super::decode(&pair.key, &pair.value)?;
                    if previous.next_offset > descriptor.base_offset {
                        return Err(overlap(&descriptor, &previous));
                    }
                }
                let pairs = tx.get_range(&key, &end, RangeOptions::limit(1)).await?;
                if let Some(pair) = pairs.first() {
                    let next: SegmentDescriptor = super::decode(&pair.key, &pair.value)?;
                    if next.base_offset < descriptor.next_offset {
                        return Err(overlap(&descriptor, &next));
                    }
                }
                write(tx, &key, &descriptor)
            }
            .boxed()
        })
        .await
    }

    /// Every descriptor of `topic`, in offset order.
    pub async fn segments(&self, topic: &str) -> Result<Vec<SegmentDescriptor>> {
        self.get_all(self.segments_prefix(topic).range()).await
    }

    /// Swaps the descriptors at `replaced` (base offsets) for `merged`, in
    /// one transaction. `merged` must cover exactly their offsets. A retry
    /// after a swap that did commit finds `merged` and succeeds.
    ///
    /// # Errors
    ///
    /// `Invalid` when `merged` does not cover the replaced range exactly;
    /// `NotFound` when one of them is gone (retention or another compaction
    /// got there first).
    pub async fn replace_segments(
        &self,
        topic: &str,
        replaced: &[u64],
        merged: &SegmentDescriptor,
    ) -> Result<()> {
        let catalog = self.clone();
        let topic = topic.to_owned();
        self.transact(|tx| {
            let (catalog, topic) = (catalog.clone(), topic.clone());
            let (replaced, merged) = (replaced.to_vec(), merged.clone());
            async move {
                if merged.epoch > 0 {
                    catalog.check_epoch(tx, &topic, merged.epoch).await?;
                }
                let merged_key = catalog.segment_key(&topic, merged.base_offset);
                let mut olds = Vec::with_capacity(replaced.len());
                for base in &replaced {
                    let key = catalog.segment_key(&topic, *base);
                    match read::<SegmentDescriptor>(tx, &key).await? {
                        Some(old) => olds.push((key, old)),
                        None => {
                            let current = read::<SegmentDescriptor>(tx, &merged_key).await?;
                            if current.as_ref() == Some(&merged) {
                                return Ok(());
                            }
                            return Err(MetadataError::NotFound {
                                what: format!("segment of `{topic}` at offset {base}"),
                            });
                        }
                    }
                }
                olds.sort_by_key(|(_, old)| old.base_offset);
                let dense = olds
                    .windows(2)
                    .all(|pair| pair[0].1.next_offset == pair[1].1.base_offset);
                let first = olds.first().map(|(_, old)| old.base_offset);
                let last = olds.last().map(|(_, old)| old.next_offset);
                if !dense || first != Some(merged.base_offset) || last != Some(merged.next_offset)
                {
                    return Err(MetadataError::Invalid {
                        reason: format!(
                            "merged segment {}..{} of `{topic}` does not cover the segments it replaces",
                            merged.base_offset, merged.next_offset
                        ),
                    });
                }
                for (key, _) in &olds {
                    tx.clear(key);
                }
                write(tx, &merged_key, &merged)
            }
            .boxed()
        })
        .await
    }

    /// Forgets the descriptors at `bases` (retention deleted their objects
    /// or is about to). Missing ones are skipped.
    pub async fn delete_segments(&self, topic: &str, bases: &[u64]) -> Result<()> {
        let keys: Vec<Vec<u8>> = bases.iter().map(|b| self.segment_key(topic, *b)).collect();
        self.transact(|tx| {
            let keys = keys.clone();
            async move {
                for key in &keys {
                    tx.clear(key);
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }

    pub(super) fn segments_prefix(&self, topic: &str) -> Key {
        self.key().push_str("segments").push_str(topic)
    }

    fn segment_key(&self, topic: &str, base_offset: u64) -> Vec<u8> {
        self.segments_prefix(topic).push_u64(base_offset).build()
    }
}

fn overlap(descriptor: &SegmentDescriptor, other: &SegmentDescriptor) -> MetadataError {
    MetadataError::Invalid {
        reason: format!(
            "segment {}..{} of `{}` overlaps the recorded segment {}..{}",
            descriptor.base_offset,
            descriptor.next_offset,
            descriptor.topic,
            other.base_offset,
            other.next_offset
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use std::sync::Arc;

    fn descriptor(base: u64, next: u64) -> SegmentDescriptor {
        SegmentDescriptor {
            topic: "/default/t".into(),
            base_offset: base,
            next_offset: next,
            first_publish_time_ms: base,
            last_publish_time_ms: next,
            message_bytes: 10 * (next - base),
            object_key: format!("t/{base}.parquet"),
            object_bytes: 100,
            etag: Some("e".into()),
            row_groups: vec![RowGroupDescriptor {
                first_offset: base,
                records: next - base,
                byte_start: 4,
                byte_len: 90,
            }],
            uploaded_at_ms: 1,
            epoch: 0,
        }
    }

    fn catalog() -> Catalog {
        Catalog::new(Arc::new(EmbeddedStore::open_temporary().unwrap()))
    }

    #[tokio::test]
    async fn committed_segments_list_in_offset_order_and_a_recommit_is_a_no_op() {
        let catalog = catalog();
        for (base, next) in [(10, 20), (0, 10), (20, 25)] {
            catalog
                .commit_segment(&descriptor(base, next))
                .await
                .unwrap();
        }
        catalog.commit_segment(&descriptor(10, 20)).await.unwrap();

        let listed = catalog.segments("/default/t").await.unwrap();
        let ranges: Vec<_> = listed
            .iter()
            .map(|d| (d.base_offset, d.next_offset))
            .collect();
        assert_eq!(ranges, vec![(0, 10), (10, 20), (20, 25)]);
        assert!(catalog.segments("/default/u").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_overlapping_segment_is_refused() {
        let catalog = catalog();
        catalog.commit_segment(&descriptor(10, 20)).await.unwrap();
        for (base, next) in [(5, 11), (19, 30), (12, 15)] {
            let error = catalog.commit_segment(&descriptor(base, next)).await;
            assert!(
                matches!(&error, Err(MetadataError::Invalid { reason }) if reason.contains("overlaps")),
                "{base}..{next}: {error:?}"
            );
        }
        let mut changed = descriptor(10, 20);
        changed.object_key = "other".into();
        assert!(catalog.commit_segment(&changed).await.is_err());
    }

    #[tokio::test]
    async fn compaction_swaps_segments_for_one_in_a_transaction_and_retries_cleanly() {
        let catalog = catalog();
        for (base, next) in [(0, 10), (10, 20), (20, 25)] {
            catalog
                .commit_segment(&descriptor(base, next))
                .await
                .unwrap();
        }
        let merged = descriptor(0, 20);
        catalog
            .replace_segments("/default/t", &[0, 10], &merged)
            .await
            .unwrap();
        // A retry of a swap that committed succeeds without changes.
        catalog
            .replace_segments("/default/t", &[0, 10], &merged)
            .await
            .unwrap();

        let listed = catalog.segments("/default/t").await.unwrap();
        assert_eq!(listed, vec![merged, descriptor(20, 25)]);

        let gap = descriptor(0, 24);
        let error = catalog
            .replace_segments("/default/t", &[20], &gap)
            .await
            .unwrap_err();
        assert!(matches!(error, MetadataError::Invalid { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn deleted_segments_are_gone_and_deleting_twice_is_fine() {
        let catalog = catalog();
        for (base, next) in [(0, 10), (10, 20)] {
            catalog
                .commit_segment(&descriptor(base, next))
                .await
                .unwrap();
        }
        catalog.delete_segments("/default/t", &[0]).await.unwrap();
        catalog.delete_segments("/default/t", &[0]).await.unwrap();
        let listed = catalog.segments("/default/t").await.unwrap();
        assert_eq!(listed, vec![descriptor(10, 20)]);
    }
}
