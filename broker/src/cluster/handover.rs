//! A broker's side of membership: renewing its lease, following the state
//! an operator sets, unloading topics it no longer owns, and draining.
//!
//! A drain hands every loaded topic over: new messages are refused (clients
//! look the topic up again), the active segment of a reliable topic is
//! sealed and everything sealed is offloaded, cursors are saved, and the
//! ownership is released with the offset the log reached. The next owner
//! continues from the offloaded history with no gap and no repeated offset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sava_metadata::{BrokerLoad, BrokerState};

use crate::broker::Broker;
use crate::topic::Topic;

impl Broker {
    /// Renews the lease every `cluster.renew_interval_ms` until `stop`:
    /// follows the state an operator set, campaigns for the leadership, and
    /// unloads topics another broker owns now.
    pub async fn keep_membership(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis(self.cluster.config().renew_interval_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.membership_round().await;
        }
    }

    /// One renewal: the first one registers the broker; `serve` runs it
    /// once before listening, so lookups find this broker at once.
    pub async fn membership_round(self: &Arc<Self>) {
        match self.cluster.renew(self.load()).await {
            Ok(record) => self.follow_state(record.state),
            Err(error) => {
                let holds = self.cluster.lease().holds();
                tracing::warn!(%error, lease_holds = holds, "cannot renew the cluster lease; retrying");
            }
        }
        if let Err(error) = self.cluster.campaign().await {
            tracing::warn!(%error, "cannot campaign for the leadership; retrying");
        }
        if let Err(error) = self.cluster.refresh().await {
            tracing::warn!(%error, "cannot read the cluster's brokers; retrying");
        }
        if let Err(error) = self.unload_moved().await {
            tracing::warn!(%error, "cannot read this broker's topics; retrying");
        }
    }

    fn load(&self) -> BrokerLoad {
        let topics = self.loaded_topics();
        let rate: f64 = topics.iter().map(|t| t.rates().0).sum();
        BrokerLoad {
            topics: topics.len() as u64,
            messages_in_per_sec: rate as u64,
        }
    }

    /// Starts a drain an operator asked for, or ends one on `activate`.
    fn follow_state(self: &Arc<Self>, state: BrokerState) {
        let draining = self.cluster.is_draining();
        match state {
            BrokerState::Draining if !draining => {
                let broker = Arc::clone(self);
                tokio::spawn(async move {
                    broker.drain().await;
                });
            }
            BrokerState::Active if draining && !self.is_stopping() => {
                self.cluster.set_draining(false);
                tracing::info!(broker = %self.broker_id, "broker active again; taking topics");
            }
            _ => {}
        }
    }

    /// Unloads the loaded topics the store no longer lists as this
    /// broker's: the leader gave them to another broker after this one's
    /// lease expired.
    async fn unload_moved(&self) -> Result<(), crate::error::BrokerError> {
        let owned = self.cluster.owned().await?;
        for topic in self.loaded_topics() {
            if !owned.contains(topic.name.as_str()) {
                tracing::warn!(topic = %topic.name, epoch = topic.epoch, "another broker owns the topic now; unloading it");
                self.unload(topic.name.as_str());
            }
        }
        Ok(())
    }

    /// Hands every loaded topic over and takes no new ones. Returns how many
    /// topics it handed over.
    pub async fn drain(&self) -> usize {
        self.cluster.set_draining(true);
        if let Err(error) = self.cluster.record_state(BrokerState::Draining).await {
            tracing::warn!(%error, "cannot record the draining state; other brokers see it at the next renewal");
        }
        if let Err(error) = self.cluster.campaign().await {
            tracing::warn!(%error, "cannot resign the leadership; it expires with the lease");
        }
        let topics = self.loaded_topics();
        tracing::info!(broker = %self.broker_id, topics = topics.len(), "draining");
        // With an embedded store in the data directory the next owner of
        // every topic is this broker restarted on that directory, which still
        // holds the local segments: waiting for the offload would only delay
        // the stop. (An embedded store kept elsewhere may outlive a
        // throwaway data directory, so that one still offloads.)
        let deadline = (!self.config.metadata_in_data_dir()).then(|| self.drain_deadline());
        let mut handed = 0;
        for topic in &topics {
            if self.hand_over(topic, deadline).await {
                handed += 1;
            }
        }
        tracing::info!(broker = %self.broker_id, handed_over = handed, "drained");
        handed
    }

    /// Hands topic `name` over if it is loaded here (`sava-admin topics
    /// unload`); returns whether it was.
    pub async fn hand_over_now(&self, name: &str) -> bool {
        let Some(topic) = self.loaded(name) else {
            return false;
        };
        let deadline = self.drain_deadline();
        self.hand_over(&topic, Some(deadline)).await;
        true
    }

    /// When a drain or hand-over that starts now gives up offloading.
    fn drain_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.cluster.config().drain_timeout_secs)
    }

    /// Hands one topic over, offloading until `deadline` at most (not at
    /// all without one); returns whether its ownership was released.
    async fn hand_over(&self, topic: &Arc<Topic>, deadline: Option<Instant>) -> bool {
        let started = Instant::now();
        topic.set_moving();
        self.seal_and_offload(topic, deadline).await;
        let next_offset = topic.log().map(|log| log.next_offset());
        if let Err(error) = self.flush_cursors().await {
            tracing::warn!(topic = %topic.name, %error, "cannot save cursors before the hand-over; the next owner redelivers from the last saved ones");
        }
        let released = match self
            .cluster
            .release(topic.name.as_str(), topic.epoch, next_offset)
            .await
        {
            Ok(released) => released,
            Err(error) => {
                tracing::warn!(topic = %topic.name, %error, "cannot release the topic; the leader moves it when this broker's lease expires");
                false
            }
        };
        self.unload(topic.name.as_str());
        tracing::info!(topic = %topic.name, epoch = topic.epoch, released, next_offset, elapsed_ms = started.elapsed().as_millis() as u64, "handed topic over");
        released
    }

    /// Seals the active segment and, given a `deadline`
    /// (`cluster.drain_timeout_secs` after the drain began), offloads every
    /// sealed segment, retrying until then; what is left is named in the log.
    async fn seal_and_offload(&self, topic: &Arc<Topic>, deadline: Option<Instant>) {
        let Some(log) = topic.log() else {
            return;
        };
        let disk = Arc::clone(log.disk());
        match tokio::task::spawn_blocking(move || disk.seal_active()).await {
            Ok(Err(error)) => {
                tracing::warn!(topic = %topic.name, %error, "cannot seal the active segment");
            }
            Err(_) => return,
            Ok(Ok(_)) => {}
        }
        if log.tier().is_none() {
            tracing::warn!(topic = %topic.name, next_offset = log.next_offset(), "offload is off: the next owner of this reliable topic starts after its last offset, without its history");
            return;
        }
        let Some(deadline) = deadline else {
            tracing::info!(topic = %topic.name, offloaded_end = log.offloaded_end(), next_offset = log.next_offset(), "single node: the local segments stay for the restart, which offloads the rest");
            return;
        };
        loop {
            match self.offload_topic(topic).await {
                Ok(_) if log.offloaded_end() >= log.next_offset() => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(topic = %topic.name, %error, "offload before the hand-over failed; retrying");
                }
            }
            if Instant::now() >= deadline {
                tracing::error!(topic = %topic.name, offloaded_end = log.offloaded_end(), next_offset = log.next_offset(), "handing the topic over before all of it was offloaded; the next owner lacks these offsets");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
