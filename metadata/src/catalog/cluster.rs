//! Cluster records: broker membership with leases, the leader, and topic
//! ownership with epochs.
//!
//! | key | value |
//! | --- | --- |
//! | `/sava/brokers/<id>` | [`BrokerRecord`]: URLs, state, lease expiry, load |
//! | `/sava/leader` | [`LeaderRecord`]: the broker that assigns topics, until its lease expires |
//! | `/sava/ownership/</ns/topic>` | [`Ownership`]: the owning broker (if any) and the epoch |
//! | `/sava/owned/<broker>/</ns/topic>` | empty: the index of a broker's topics |
//! | `/sava/unassigned/</ns/topic>` | the time (ms) a lookup asked for an owner, a JSON number |
//! | `/sava/counters/assignment_requests` | bumped with every request, so the leader can watch one key |
//!
//! Leases are wall-clock deadlines (`lease_expires_ms`, milliseconds since
//! the Unix epoch) that their holder pushes forward; a reader treats a lease
//! whose deadline passed on its own clock as expired. Brokers' clocks must
//! therefore agree to well within the lease time (NTP does this on cloud
//! VMs); a skew of more than the lease lets a broker be declared dead early.

use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::{Catalog, now_ms, read, write};
use crate::error::{MetadataError, Result};
use crate::keys::{Element, Key, unpack};
use crate::store::{RangeOptions, Transaction};

/// Whether a broker takes topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerState {
    /// Takes new topics.
    #[default]
    Active,
    /// Hands its topics over and takes no new ones.
    Draining,
}

impl BrokerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Active => "active",
            BrokerState::Draining => "draining",
        }
    }
}

/// What the leader weighs when it places a topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerLoad {
    /// Topics (partitions count one each) the broker has loaded.
    pub topics: u64,
    /// Messages per second produced to those topics, lately.
    pub messages_in_per_sec: u64,
}

/// One registered broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: String,
    /// Where clients reach it (its advertised URL).
    pub client_url: String,
    pub admin_url: String,
    pub http_url: String,
    pub state: BrokerState,
    pub lease_expires_ms: u64,
    pub registered_at_ms: u64,
    #[serde(default)]
    pub load: BrokerLoad,
}

impl BrokerRecord {
    /// Whether its lease still runs at `now_ms`.
    pub fn is_alive(&self, now_ms: u64) -> bool {
        self.lease_expires_ms > now_ms
    }
}

/// The elected leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub broker_id: String,
    /// Grows by one with every change of leader.
    pub term: u64,
    pub lease_expires_ms: u64,
}

/// Who owns a topic (or partition), and since which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub topic: String,
    /// `None` while the topic waits for a new owner.
    pub owner: Option<String>,
    /// Grows by one with every assignment. Writes to the topic's durable
    /// history carry the epoch they were made in and are refused when it is
    /// no longer the current one.
    pub epoch: u64,
    /// The broker that owned it in the epoch before, if any: a new owner that
    /// is also the previous one may keep its local log, any other starts
    /// after the durable (offloaded) history.
    pub previous_owner: Option<String>,
    pub assigned_at_ms: u64,
    /// The offset the previous owner's log had reached when it released the
    /// topic, for a new owner to continue after even when not all of it
    /// reached the durable history.
    #[serde(default)]
    pub released_at_offset: Option<u64>,
}

impl Catalog {
    /// Registers broker `record.id` or renews its lease, keeping the state an
    /// operator set. Returns the record as stored.
    pub async fn renew_broker(&self, record: &BrokerRecord) -> Result<BrokerRecord> {
        let key = self.broker_key(&record.id);
        self.transact(|tx| {
            let (key, mut record) = (key.clone(), record.clone());
            async move {
                if let Some(existing) = read::<BrokerRecord>(tx, &key).await? {
                    record.state = existing.state;
                    record.registered_at_ms = existing.registered_at_ms;
                }
                write(tx, &key, &record)?;
                Ok(record)
            }
            .boxed()
        })
        .await
    }

    /// Removes broker `id` (it stopped cleanly).
    pub async fn deregister_broker(&self, id: &str) -> Result<()> {
        self.clear_key(self.broker_key(id)).await
    }

    /// Sets broker `id`'s state; it acts on it at its next lease renewal.
    ///
    /// # Errors
    ///
    /// `NotFound` when no such broker is registered.
    pub async fn set_broker_state(&self, id: &str, state: BrokerState) -> Result<BrokerRecord> {
        let key = self.broker_key(id);
        let id = id.to_owned();
        self.transact(|tx| {
            let (key, id) = (key.clone(), id.clone());
            async move {
                let Some(mut record) = read::<BrokerRecord>(tx, &key).await? else {
                    return Err(MetadataError::NotFound {
                        what: format!("broker `{id}`"),
                    });
                };
                record.state = state;
                write(tx, &key, &record)?;
                Ok(record)
            }
            .boxed()
        })
        .await
    }

    /// Every registered broker, live or not, in id order.
    pub async fn brokers(&self) -> Result<Vec<BrokerRecord>> {
        self.get_all(self.key().push_str("brokers").range()).await
    }

    /// Makes `id` the leader until `now + ttl_ms` if there is none, the
    /// current one's lease ran out, or it is `id` already. Returns the
    /// leader after the attempt.
    pub async fn campaign(&self, id: &str, ttl_ms: u64) -> Result<LeaderRecord> {
        let key = self.leader_key();
        let id = id.to_owned();
        self.transact(|tx| {
            let (key, id) = (key.clone(), id.clone());
            async move {
                let now = now_ms();
                let current = read::<LeaderRecord>(tx, &key).await?;
                let term = match &current {
                    Some(leader) if leader.broker_id == id => leader.term,
                    Some(leader) if leader.lease_expires_ms > now => return Ok(leader.clone()),
                    Some(leader) => leader.term + 1,
                    None => 1,
                };
                let record = LeaderRecord {
                    broker_id: id,
                    term,
                    lease_expires_ms: now + ttl_ms,
                };
                write(tx, &key, &record)?;
                Ok(record)
            }
            .boxed()
        })
        .await
    }

    /// Gives up the leadership if `id` holds it.
    pub async fn resign(&self, id: &str) -> Result<()> {
        let key = self.leader_key();
        let id = id.to_owned();
        self.transact(|tx| {
            let (key, id) = (key.clone(), id.clone());
            async move {
                if let Some(leader) = read::<LeaderRecord>(tx, &key).await?
                    && leader.broker_id == id
                {
                    tx.clear(&key);
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }

    /// The current leader record, expired or not.
    pub async fn leader(&self) -> Result<Option<LeaderRecord>> {
        self.get(self.leader_key()).await
    }

    /// Who owns `topic`, if it was ever assigned.
    pub async fn ownership(&self, topic: &str) -> Result<Option<Ownership>> {
        self.get(self.ownership_key(topic)).await
    }

    /// Every ownership record, in topic order.
    pub async fn ownerships(&self) -> Result<Vec<Ownership>> {
        self.get_all(self.key().push_str("ownership").range()).await
    }

    /// The topics broker `id` owns, in order.
    pub async fn owned_topics(&self, id: &str) -> Result<Vec<String>> {
        let prefix = self.owned_prefix(id);
        self.names_under(prefix, RangeOptions::default()).await
    }

    /// Asks the leader to place each of `topics` that has no owner. Topics
    /// that have one are left alone.
    pub async fn request_assignment(&self, topics: &[String]) -> Result<()> {
        let catalog = self.clone();
        let topics = topics.to_vec();
        self.transact(|tx| {
            let (catalog, topics) = (catalog.clone(), topics.clone());
            async move {
                let mut asked = false;
                for topic in &topics {
                    let owned = read::<Ownership>(tx, &catalog.ownership_key(topic))
                        .await?
                        .is_some_and(|o| o.owner.is_some());
                    if !owned {
                        write(tx, &catalog.unassigned_key(topic), &now_ms())?;
                        asked = true;
                    }
                }
                if asked {
                    tx.atomic_add(&catalog.assignment_requests_key(), 1);
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }

    /// The topics waiting for an owner, in name order, at most `limit`.
    pub async fn unassigned(&self, limit: usize) -> Result<Vec<String>> {
        let prefix = self.key().push_str("unassigned");
        self.names_under(prefix, RangeOptions::limit(limit)).await
    }

    /// The string element right after `prefix` of each key under it: the
    /// names an index keeps in its keys.
    async fn names_under(&self, prefix: Key, options: RangeOptions) -> Result<Vec<String>> {
        let depth = unpack(prefix.as_bytes()).map_or(0, |e| e.len());
        let range = prefix.range();
        self.transact(|tx| {
            let range = range.clone();
            async move {
                let pairs = tx.get_range(&range.0, &range.1, options).await?;
                Ok(pairs
                    .iter()
                    .filter_map(|pair| match unpack(&pair.key)?.get(depth)? {
                        Element::Str(name) => Some(name.clone()),
                        Element::U64(_) => None,
                    })
                    .collect())
            }
            .boxed()
        })
        .await
    }

    /// Drops the request for an owner of `topic` (it has one).
    pub async fn forget_request(&self, topic: &str) -> Result<()> {
        self.clear_key(self.unassigned_key(topic)).await
    }

    /// The key the leader watches for assignment requests.
    pub fn assignment_requests_key(&self) -> Vec<u8> {
        self.key()
            .push_str("counters")
            .push_str("assignment_requests")
            .build()
    }

    /// The key of `topic`'s ownership record, to watch for its assignment.
    pub fn ownership_key(&self, topic: &str) -> Vec<u8> {
        self.key().push_str("ownership").push_str(topic).build()
    }

    /// Gives `topic` to broker `owner` in a new epoch, if its ownership is
    /// still at `expected_epoch` (0: never assigned); otherwise leaves it
    /// and returns the record as it is. Idempotent: a retry after a commit
    /// that applied finds `owner` at `expected_epoch + 1` and returns it.
    pub async fn assign(&self, topic: &str, owner: &str, expected_epoch: u64) -> Result<Ownership> {
        let catalog = self.clone();
        let (topic, owner) = (topic.to_owned(), owner.to_owned());
        self.transact(|tx| {
            let (catalog, topic, owner) = (catalog.clone(), topic.clone(), owner.clone());
            async move {
                let key = catalog.ownership_key(&topic);
                let current = read::<Ownership>(tx, &key).await?;
                let epoch = current.as_ref().map_or(0, |o| o.epoch);
                // Another assignment got there first, or this is a retry of
                // one that committed: either way the record stands.
                if let Some(current) = &current
                    && epoch != expected_epoch
                {
                    return Ok(current.clone());
                }
                let previous = current.as_ref().and_then(|o| match &o.owner {
                    Some(owner) => {
                        tx.clear(&catalog.owned_key(owner, &topic));
                        Some(owner.clone())
                    }
                    None => o.previous_owner.clone(),
                });
                let record = Ownership {
                    topic: topic.clone(),
                    owner: Some(owner.clone()),
                    epoch: epoch + 1,
                    previous_owner: previous,
                    assigned_at_ms: now_ms(),
                    released_at_offset: current.as_ref().and_then(|o| o.released_at_offset),
                };
                write(tx, &key, &record)?;
                tx.set(&catalog.owned_key(&owner, &topic), b"");
                tx.clear(&catalog.unassigned_key(&topic));
                Ok(record)
            }
            .boxed()
        })
        .await
    }

    /// Gives `topic` up if broker `owner` holds it at `epoch`, noting the
    /// offset its log reached, and asks for a new owner. Returns whether it
    /// did.
    pub async fn release(
        &self,
        topic: &str,
        owner: &str,
        epoch: u64,
        next_offset: Option<u64>,
    ) -> Result<bool> {
        let catalog = self.clone();
        let (topic, owner) = (topic.to_owned(), owner.to_owned());
        self.transact(|tx| {
            let (catalog, topic, owner) = (catalog.clone(), topic.clone(), owner.clone());
            async move {
                let key = catalog.ownership_key(&topic);
                let Some(mut record) = read::<Ownership>(tx, &key).await? else {
                    return Ok(false);
                };
                if record.owner.as_deref() != Some(&owner) || record.epoch != epoch {
                    return Ok(false);
                }
                record.owner = None;
                record.previous_owner = Some(owner.clone());
                record.released_at_offset = next_offset;
                write(tx, &key, &record)?;
                tx.clear(&catalog.owned_key(&owner, &topic));
                write(tx, &catalog.unassigned_key(&topic), &now_ms())?;
                tx.atomic_add(&catalog.assignment_requests_key(), 1);
                Ok(true)
            }
            .boxed()
        })
        .await
    }

    /// Fails with `Fenced` unless `topic` is owned at `epoch`, inside
    /// transaction `tx`, so the write it guards commits only while that
    /// holds.
    pub(super) async fn check_epoch(
        &self,
        tx: &mut dyn Transaction,
        topic: &str,
        epoch: u64,
    ) -> Result<()> {
        let current = read::<Ownership>(tx, &self.ownership_key(topic)).await?;
        match current {
            Some(current) if current.epoch == epoch && current.owner.is_some() => Ok(()),
            current => Err(MetadataError::Fenced {
                topic: topic.to_owned(),
                epoch,
                current: current.map_or(0, |c| c.epoch),
            }),
        }
    }

    /// Clears `topic`'s ownership records (the topic is being deleted).
    pub(super) async fn clear_ownership(
        &self,
        tx: &mut dyn Transaction,
        topic: &str,
    ) -> Result<()> {
        let key = self.ownership_key(topic);
        if let Some(Ownership {
            owner: Some(owner), ..
        }) = read::<Ownership>(tx, &key).await?
        {
            tx.clear(&self.owned_key(&owner, topic));
        }
        tx.clear(&key);
        tx.clear(&self.unassigned_key(topic));
        Ok(())
    }

    fn broker_key(&self, id: &str) -> Vec<u8> {
        self.key().push_str("brokers").push_str(id).build()
    }

    fn leader_key(&self) -> Vec<u8> {
        self.key().push_str("leader").build()
    }

    /// Where the index of the topics `owner` owns lives.
    fn owned_prefix(&self, owner: &str) -> Key {
        self.key().push_str("owned").push_str(owner)
    }

    fn owned_key(&self, owner: &str, topic: &str) -> Vec<u8> {
        self.owned_prefix(owner).push_str(topic).build()
    }

    fn unassigned_key(&self, topic: &str) -> Vec<u8> {
        self.key().push_str("unassigned").push_str(topic).build()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{RowGroupDescriptor, SegmentDescriptor};
    use crate::embedded::EmbeddedStore;

    const TOPIC: &str = "/default/orders";

    fn catalog() -> Catalog {
        Catalog::new(Arc::new(EmbeddedStore::open_temporary().unwrap()))
    }

    fn broker(id: &str, lease_expires_ms: u64) -> BrokerRecord {
        BrokerRecord {
            id: id.into(),
            client_url: format!("http://{id}"),
            admin_url: String::new(),
            http_url: String::new(),
            state: BrokerState::Active,
            lease_expires_ms,
            registered_at_ms: 1,
            load: BrokerLoad::default(),
        }
    }

    fn segment(base: u64, next: u64, epoch: u64) -> SegmentDescriptor {
        SegmentDescriptor {
            topic: TOPIC.into(),
            base_offset: base,
            next_offset: next,
            first_publish_time_ms: 1,
            last_publish_time_ms: 2,
            message_bytes: 10,
            object_key: format!("orders/{base}-{next}-e{epoch}.parquet"),
            object_bytes: 10,
            etag: None,
            row_groups: vec![RowGroupDescriptor {
                first_offset: base,
                records: next - base,
                byte_start: 4,
                byte_len: 6,
            }],
            uploaded_at_ms: 1,
            epoch,
        }
    }

    #[tokio::test]
    async fn a_renewal_keeps_the_state_an_operator_set() {
        let catalog = catalog();
        catalog
            .renew_broker(&broker("b1", now_ms() + 5000))
            .await
            .unwrap();
        catalog
            .set_broker_state("b1", BrokerState::Draining)
            .await
            .unwrap();

        let renewed = catalog
            .renew_broker(&broker("b1", now_ms() + 9000))
            .await
            .unwrap();
        assert_eq!(renewed.state, BrokerState::Draining);
        let missing = catalog.set_broker_state("b9", BrokerState::Active).await;
        assert!(matches!(missing, Err(MetadataError::NotFound { .. })));

        catalog.deregister_broker("b1").await.unwrap();
        assert!(catalog.brokers().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_broker_leads_until_its_lease_runs_out() {
        let catalog = catalog();
        let first = catalog.campaign("b1", 60_000).await.unwrap();
        assert_eq!((first.broker_id.as_str(), first.term), ("b1", 1));
        let other = catalog.campaign("b2", 60_000).await.unwrap();
        assert_eq!(other.broker_id, "b1");

        // A lease of 0 ms has run out by the next campaign.
        catalog.resign("b1").await.unwrap();
        catalog.campaign("b1", 0).await.unwrap();
        let taken = catalog.campaign("b2", 60_000).await.unwrap();
        assert_eq!(taken.broker_id, "b2");
        assert!(taken.term > first.term);
    }

    #[tokio::test]
    async fn each_assignment_starts_an_epoch_that_fences_the_one_before() {
        let catalog = catalog();
        catalog.request_assignment(&[TOPIC.into()]).await.unwrap();
        assert_eq!(catalog.unassigned(10).await.unwrap(), vec![TOPIC]);

        let first = catalog.assign(TOPIC, "b1", 0).await.unwrap();
        assert_eq!((first.owner.as_deref(), first.epoch), (Some("b1"), 1));
        assert!(catalog.unassigned(10).await.unwrap().is_empty());
        assert_eq!(catalog.owned_topics("b1").await.unwrap(), vec![TOPIC]);
        catalog.commit_segment(&segment(0, 10, 1)).await.unwrap();

        // A stale expectation changes nothing.
        let stale = catalog.assign(TOPIC, "b3", 0).await.unwrap();
        assert_eq!(stale, first);

        let second = catalog.assign(TOPIC, "b2", 1).await.unwrap();
        assert_eq!(second.epoch, 2);
        assert_eq!(second.previous_owner.as_deref(), Some("b1"));
        assert!(catalog.owned_topics("b1").await.unwrap().is_empty());

        let fenced = catalog.commit_segment(&segment(10, 20, 1)).await;
        assert!(
            matches!(
                fenced,
                Err(MetadataError::Fenced {
                    epoch: 1,
                    current: 2,
                    ..
                })
            ),
            "{fenced:?}"
        );
        catalog.commit_segment(&segment(10, 20, 2)).await.unwrap();
    }

    #[tokio::test]
    async fn a_release_records_the_offset_and_asks_for_a_new_owner() {
        let catalog = catalog();
        catalog.assign(TOPIC, "b1", 0).await.unwrap();
        assert!(!catalog.release(TOPIC, "b2", 1, Some(5)).await.unwrap());
        assert!(!catalog.release(TOPIC, "b1", 7, Some(5)).await.unwrap());
        assert!(catalog.release(TOPIC, "b1", 1, Some(42)).await.unwrap());

        let released = catalog.ownership(TOPIC).await.unwrap().unwrap();
        assert_eq!(released.owner, None);
        assert_eq!(released.released_at_offset, Some(42));
        assert_eq!(catalog.unassigned(10).await.unwrap(), vec![TOPIC]);
        let fenced = catalog.commit_segment(&segment(0, 10, 1)).await;
        assert!(matches!(fenced, Err(MetadataError::Fenced { .. })));

        let next = catalog.assign(TOPIC, "b2", 1).await.unwrap();
        assert_eq!(next.previous_owner.as_deref(), Some("b1"));
        assert_eq!(next.released_at_offset, Some(42));
    }

    #[tokio::test]
    async fn deleting_a_topic_clears_its_ownership() {
        let catalog = catalog();
        catalog.ensure_namespace("default").await.unwrap();
        catalog
            .create_topic(crate::catalog::TopicRecord {
                name: TOPIC.into(),
                partitions: 0,
                partition_of: None,
                dispatch_mode: crate::catalog::DispatchMode::Reliable,
                schema: None,
                created_at_ms: 0,
            })
            .await
            .unwrap();
        catalog.assign(TOPIC, "b1", 0).await.unwrap();
        catalog.delete_topic(TOPIC).await.unwrap();
        assert_eq!(catalog.ownership(TOPIC).await.unwrap(), None);
        assert!(catalog.owned_topics("b1").await.unwrap().is_empty());
    }
}
