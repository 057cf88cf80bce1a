//! The leader's work: placing topics without a live owner on the live,
//! active broker with the least load.
//!
//! Load is the number of topics a broker owns plus its recent message rate
//! in thousands of messages per second, so one broker taking 1000 msg/s
//! counts like one more topic. Placing a topic adds one to its broker's load
//! at once, which spreads the partitions of one topic (asked for together)
//! across brokers.

use std::collections::HashMap;
use std::time::Duration;

use sava_metadata::{BrokerRecord, BrokerState};

use super::Cluster;
use crate::error::BrokerError;
use crate::topic::now_ms;

/// Requests handled in one pass at most; the rest wait for the next.
const PASS_LIMIT: usize = 10_000;

impl Cluster {
    /// Runs placement passes while this broker leads: on every assignment
    /// request (a watch on the request counter), when woken locally, and once
    /// per renewal interval to catch brokers whose lease expired.
    pub async fn lead(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis(self.config.renew_interval_ms);
        loop {
            let requests = self
                .catalog
                .store()
                .watch(&self.catalog.assignment_requests_key())
                .await;
            if self.is_leader()
                && let Err(error) = self.place().await
            {
                tracing::warn!(%error, "topic placement failed; retrying");
            }
            let requested = async {
                match requests {
                    Ok(watch) => {
                        let _ = watch.await;
                    }
                    Err(_) => tokio::time::sleep(every).await,
                }
            };
            tokio::select! {
                _ = requested => {}
                _ = self.wake_leader.notified() => {}
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One placement pass: topics asked for, and topics of brokers whose
    /// lease expired. Returns how many it placed.
    pub async fn place(&self) -> Result<usize, BrokerError> {
        let now = now_ms();
        let brokers = self.refresh().await?;
        let targets: Vec<&BrokerRecord> = brokers
            .iter()
            .filter(|b| b.is_alive(now) && b.state == BrokerState::Active)
            .collect();
        if targets.is_empty() {
            return Ok(0);
        }

        let mut work = self.catalog.unassigned(PASS_LIMIT).await?;
        // After an outage of the store every lease looks expired; the
        // others get a lease's time to renew before they count as dead.
        let judge = self.renewed_for_a_lease();
        for dead in brokers.iter().filter(|b| judge && !b.is_alive(now)) {
            work.extend(self.catalog.owned_topics(&dead.id).await?);
        }
        if work.is_empty() {
            return Ok(0);
        }

        let mut loads = HashMap::with_capacity(targets.len());
        for broker in &targets {
            let owned = self.catalog.owned_topics(&broker.id).await?.len();
            loads.insert(broker.id.clone(), placement_load(owned, broker));
        }

        let alive = |id: &str| brokers.iter().any(|b| b.id == id && b.is_alive(now));
        let mut placed = 0;
        for topic in work {
            let current = self.catalog.ownership(&topic).await?;
            if let Some(owner) = current.as_ref().and_then(|o| o.owner.as_deref()) {
                if alive(owner) {
                    self.catalog.forget_request(&topic).await?;
                    continue;
                }
                if !judge {
                    continue;
                }
            }
            let epoch = current.as_ref().map_or(0, |o| o.epoch);
            let Some(target) = least_loaded(&loads) else {
                break;
            };
            let ownership = self.catalog.assign(&topic, &target, epoch).await?;
            if ownership.owner.as_deref() == Some(target.as_str()) && ownership.epoch == epoch + 1 {
                *loads.entry(target.clone()).or_default() += 1.0;
                placed += 1;
                tracing::info!(topic = %topic, broker = %target, epoch = ownership.epoch, previous = ?current.and_then(|o| o.owner), "placed topic");
            }
        }
        Ok(placed)
    }
}

/// The broker with the least load; ties go to the smallest id, so every
/// pass decides the same way.
fn least_loaded(loads: &HashMap<String, f64>) -> Option<String> {
    loads
        .iter()
        .min_by(|a, b| a.1.total_cmp(b.1).then_with(|| a.0.cmp(b.0)))
        .map(|(id, _)| id.clone())
}

/// How loaded the leader weighs `broker`, owning `owned` topics: a topic
/// counts as much as a thousand messages a second.
pub(crate) fn placement_load(owned: usize, broker: &BrokerRecord) -> f64 {
    owned as f64 + broker.load.messages_in_per_sec as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_broker_is_picked_and_ties_go_to_the_smallest_id() {
        let loads: HashMap<String, f64> = [("b".into(), 1.0), ("a".into(), 1.0), ("c".into(), 3.0)]
            .into_iter()
            .collect();
        assert_eq!(least_loaded(&loads).as_deref(), Some("a"));
        assert_eq!(least_loaded(&HashMap::new()), None);
    }
}
