//! Cluster membership, leadership and topic ownership.
//!
//! Every broker registers in the metadata store with a lease it renews every
//! `cluster.renew_interval_ms` and that others treat as expired
//! `cluster.lease_ttl_ms` after the last renewal. One broker holds the
//! leadership, a lease of the same kind; the leader places topics that have
//! no owner (asked for by lookups, released by a draining broker, or left by
//! a broker whose lease expired) on the live broker with the least load.
//!
//! Each placement starts a new ownership epoch. A broker loads a topic only
//! while it owns it, offloads into the topic's durable history only in its
//! epoch (the catalog refuses anything else), and accepts messages only
//! while its own lease holds, so two brokers never both append to one
//! partition's history.

mod handover;
mod placement;

pub(crate) use placement::placement_load;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sava_metadata::{BrokerLoad, BrokerRecord, BrokerState, Catalog};
use tokio::sync::Notify;

use crate::config::ClusterSection;
use crate::error::BrokerError;
use crate::topic::now_ms;

/// This broker's own lease, as the publish path sees it: messages are
/// accepted only while it holds.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Milliseconds after `base` until which the lease holds; 0 before the
    /// first renewal.
    valid_until_ms: AtomicU64,
}

impl Lease {
    fn new() -> Lease {
        Lease {
            base: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether the lease holds now.
    pub fn holds(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// Extends the lease to `ttl` after `renewed_at`, the moment the renewal
    /// was sent (never later than the store's view of it).
    fn extend(&self, renewed_at: Instant, ttl: Duration) {
        let until = renewed_at.saturating_duration_since(self.base) + ttl;
        self.valid_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }
}

/// The broker that owns a topic, as a lookup reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub broker_id: String,
    pub client_url: String,
    pub admin_url: String,
    pub epoch: u64,
    /// The owner in the epoch before, if any.
    pub previous_owner: Option<String>,
    /// Where the previous owner's log stood when it released the topic.
    pub released_at_offset: Option<u64>,
}

/// This broker's membership in the cluster.
pub struct Cluster {
    pub id: String,
    catalog: Catalog,
    config: ClusterSection,
    client_url: String,
    admin_url: String,
    http_url: String,
    registered_at_ms: u64,
    lease: Arc<Lease>,
    draining: AtomicBool,
    leader: AtomicBool,
    /// The brokers as last read from the store.
    view: RwLock<Vec<BrokerRecord>>,
    /// Wakes the leader's placement loop.
    wake_leader: Notify,
    /// How many topics the store listed as this broker's, last time.
    owned_count: AtomicU64,
    /// Since when every renewal succeeded; `None` after a failed one.
    renewing_since: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(
        id: String,
        catalog: Catalog,
        config: ClusterSection,
        client_url: String,
        admin_url: String,
        http_url: String,
    ) -> Cluster {
        Cluster {
            id,
            catalog,
            config,
            client_url,
            admin_url,
            http_url,
            registered_at_ms: now_ms(),
            lease: Arc::new(Lease::new()),
            draining: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            view: RwLock::new(Vec::new()),
            wake_leader: Notify::new(),
            renewing_since: std::sync::Mutex::new(None),
            owned_count: AtomicU64::new(0),
        }
    }

    /// How many topics the store listed as this broker's at the last lease
    /// renewal.
    pub fn owned_count(&self) -> u64 {
        self.owned_count.load(Ordering::Relaxed)
    }

    /// Whether this broker's renewals have succeeded for a whole lease: only
    /// then does it judge other brokers dead by their leases, which after a
    /// store outage nobody could renew.
    pub fn renewed_for_a_lease(&self) -> bool {
        let since = *self
            .renewing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        since.is_some_and(|t| t.elapsed() >= Duration::from_millis(self.config.lease_ttl_ms))
    }

    pub fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    pub fn config(&self) -> &ClusterSection {
        &self.config
    }

    /// The brokers as last read from the store.
    pub fn brokers(&self) -> Vec<BrokerRecord> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Renews this broker's lease with its current `load`, registering it
    /// first if needed, and returns its record as stored (with the state an
    /// operator may have set).
    pub async fn renew(&self, load: BrokerLoad) -> Result<BrokerRecord, BrokerError> {
        let sent = Instant::now();
        let ttl = Duration::from_millis(self.config.lease_ttl_ms);
        let record = BrokerRecord {
            id: self.id.clone(),
            client_url: self.client_url.clone(),
            admin_url: self.admin_url.clone(),
            http_url: self.http_url.clone(),
            state: if self.is_draining() {
                BrokerState::Draining
            } else {
                BrokerState::Active
            },
            lease_expires_ms: now_ms() + self.config.lease_ttl_ms,
            registered_at_ms: self.registered_at_ms,
            load,
        };
        let stored = match self.catalog.renew_broker(&record).await {
            Ok(stored) => stored,
            Err(error) => {
                *self
                    .renewing_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                return Err(error.into());
            }
        };
        self.renewing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(sent);
        // Stop a renewal interval early, so a clock a little ahead of the
        // others' does not let this broker write after they see it dead.
        let margin = Duration::from_millis(self.config.renew_interval_ms);
        self.lease.extend(sent, ttl.saturating_sub(margin));
        Ok(stored)
    }

    /// Takes or keeps the leadership unless draining; returns whether this
    /// broker leads.
    pub async fn campaign(&self) -> Result<bool, BrokerError> {
        if self.is_draining() {
            if self.leader.swap(false, Ordering::AcqRel) {
                self.catalog.resign(&self.id).await?;
                tracing::info!(broker = %self.id, "resigned the leadership to drain");
            }
            return Ok(false);
        }
        let leader = self
            .catalog
            .campaign(&self.id, self.config.lease_ttl_ms)
            .await?;
        let leads = leader.broker_id == self.id;
        if leads != self.leader.swap(leads, Ordering::AcqRel) {
            tracing::info!(broker = %self.id, term = leader.term, leads, "leadership changed");
        }
        Ok(leads)
    }

    /// Gives up the leadership, if held (the broker is stopping).
    pub async fn resign(&self) {
        if self.leader.swap(false, Ordering::AcqRel)
            && let Err(error) = self.catalog.resign(&self.id).await
        {
            tracing::warn!(%error, "cannot resign the leadership; it expires with the lease");
        }
    }

    /// Reads the brokers from the store into the view.
    pub async fn refresh(&self) -> Result<Vec<BrokerRecord>, BrokerError> {
        let brokers = self.catalog.brokers().await?;
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = brokers.clone();
        Ok(brokers)
    }

    /// Broker `id`'s record if its lease holds, from the view (read again
    /// when `id` is not in it).
    async fn live_broker(&self, id: &str) -> Result<Option<BrokerRecord>, BrokerError> {
        let now = now_ms();
        let known = self.brokers().into_iter().find(|b| b.id == id);
        let record = match known {
            Some(record) => Some(record),
            None => self.refresh().await?.into_iter().find(|b| b.id == id),
        };
        Ok(record.filter(|b| b.is_alive(now)))
    }

    /// The owner of each of `topics`, placing those without a live one:
    /// all are asked for at once, so the leader spreads them together.
    ///
    /// # Errors
    ///
    /// `NoOwner` when the leader has not placed one within
    /// `cluster.assignment_timeout_ms`; store errors.
    pub async fn owners(&self, topics: &[String]) -> Result<Vec<Owner>, BrokerError> {
        let mut owners = Vec::with_capacity(topics.len());
        let mut missing = Vec::new();
        for topic in topics {
            let owner = self.current_owner(topic).await?;
            if owner.is_none() {
                missing.push(topic.clone());
            }
            owners.push(owner);
        }
        if missing.is_empty() {
            return Ok(owners.into_iter().flatten().collect());
        }

        self.catalog.request_assignment(&missing).await?;
        self.wake_leader.notify_one();
        let deadline = Instant::now() + Duration::from_millis(self.config.assignment_timeout_ms);
        let mut resolved = Vec::with_capacity(topics.len());
        for (topic, owner) in topics.iter().zip(owners) {
            match owner {
                Some(owner) => resolved.push(owner),
                None => resolved.push(self.wait_for_owner(topic, deadline).await?),
            }
        }
        Ok(resolved)
    }

    /// The owner of `topic`, placing it first if it has none.
    pub async fn owner(&self, topic: &str) -> Result<Owner, BrokerError> {
        let mut owners = self.owners(&[topic.to_owned()]).await?;
        Ok(owners.remove(0))
    }

    /// The owner of `topic` if it has a live one; places nothing.
    pub async fn current_owner(&self, topic: &str) -> Result<Option<Owner>, BrokerError> {
        let Some(ownership) = self.catalog.ownership(topic).await? else {
            return Ok(None);
        };
        let Some(id) = &ownership.owner else {
            return Ok(None);
        };
        let Some(broker) = self.live_broker(id).await? else {
            return Ok(None);
        };
        Ok(Some(Owner {
            broker_id: broker.id,
            client_url: broker.client_url,
            admin_url: broker.admin_url,
            epoch: ownership.epoch,
            previous_owner: ownership.previous_owner,
            released_at_offset: ownership.released_at_offset,
        }))
    }

    /// Waits until `topic` has a live owner, or `deadline`.
    async fn wait_for_owner(&self, topic: &str, deadline: Instant) -> Result<Owner, BrokerError> {
        let poll = Duration::from_millis(self.config.renew_interval_ms.clamp(10, 250));
        loop {
            let watch = self
                .catalog
                .store()
                .watch(&self.catalog.ownership_key(topic))
                .await?;
            if let Some(owner) = self.current_owner(topic).await? {
                return Ok(owner);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BrokerError::NoOwner(topic.to_owned()));
            }
            let _ = tokio::time::timeout(poll.min(deadline - now), watch).await;
        }
    }

    /// Takes `topic` for this broker if nobody live owns it: for topics that
    /// must live beside another this broker serves (dead letters).
    pub async fn claim(&self, topic: &str) -> Result<Owner, BrokerError> {
        if let Some(owner) = self.current_owner(topic).await? {
            return Ok(owner);
        }
        let epoch = self.catalog.ownership(topic).await?.map_or(0, |o| o.epoch);
        let ownership = self.catalog.assign(topic, &self.id, epoch).await?;
        match self.current_owner(topic).await? {
            Some(owner) => Ok(owner),
            None => Err(BrokerError::NoOwner(ownership.topic)),
        }
    }

    /// The topics the store says this broker owns.
    pub async fn owned(&self) -> Result<HashSet<String>, BrokerError> {
        let owned: HashSet<String> = self
            .catalog
            .owned_topics(&self.id)
            .await?
            .into_iter()
            .collect();
        self.owned_count
            .store(owned.len() as u64, Ordering::Relaxed);
        Ok(owned)
    }

    /// Releases `topic` (held in `epoch`, its log at `next_offset`) for the
    /// leader to place again.
    pub async fn release(
        &self,
        topic: &str,
        epoch: u64,
        next_offset: Option<u64>,
    ) -> Result<bool, BrokerError> {
        let released = self
            .catalog
            .release(topic, &self.id, epoch, next_offset)
            .await?;
        self.wake_leader.notify_one();
        Ok(released)
    }

    /// Records this broker's state in the store, where operators see it.
    pub async fn record_state(&self, state: BrokerState) -> Result<(), BrokerError> {
        self.catalog.set_broker_state(&self.id, state).await?;
        Ok(())
    }

    /// Removes this broker's registration (it stopped cleanly).
    pub async fn deregister(&self) {
        if let Err(error) = self.catalog.deregister_broker(&self.id).await {
            tracing::warn!(%error, "cannot remove this broker's registration; its lease expires by itself");
        }
    }
}
