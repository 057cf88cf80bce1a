//! The broker's side of tiered storage: which sealed segments to offload
//! and when, what to do while the object store is away, and when local
//! copies, offloaded history and orphan objects may go.
//!
//! One offloader task walks the reliable topics every `offload.interval_ms`
//! and offloads each topic's sealed segments oldest first through
//! [`sava_storage::Tier::encode`] and [`sava_storage::Tier::upload`] (which
//! uploads, then commits the descriptor), encoding the next segment while
//! the previous one uploads. A topic whose upload fails waits with exponential backoff
//! (up to a minute) and is retried by itself; its sealed bytes stay on local
//! disk meanwhile. Past `offload.max_pending_bytes` of them its producers
//! are refused, so a long outage cannot fill the disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sava_storage::{ObjectTier, SegmentInfo, Tier, TierConfig};

use crate::broker::Broker;
use crate::config::Config;
use crate::error::BrokerError;
use crate::log::TopicLog;
use crate::topic::{Topic, now_ms};

/// The longest wait between two offload attempts of a failing topic.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The tier a broker's config asks for, or `None` with offload off.
pub fn open_tier(
    config: &Config,
    catalog: &sava_metadata::Catalog,
) -> Result<Option<Arc<Tier>>, BrokerError> {
    if !config.offload.enabled {
        return Ok(None);
    }
    let objects =
        ObjectTier::open(&config.object_store_url(), &config.s3).map_err(BrokerError::Storage)?;
    let offload = &config.offload;
    let tier_config = TierConfig {
        cluster: config.broker.cluster.clone(),
        row_group_bytes: offload.row_group_bytes,
        cache_bytes: offload.read_cache_bytes,
        compact_below_bytes: offload.compact_below_bytes,
        compact_target_bytes: offload.compact_target_bytes,
        orphan_grace: Duration::from_secs(offload.orphan_grace_secs),
        read_nice: offload.read_nice,
        ..TierConfig::default()
    };
    Ok(Some(Tier::new(objects, catalog.clone(), tier_config)))
}

/// When each failing topic may try again: (failures so far, next try).
#[derive(Debug, Default)]
pub struct Backoff {
    topics: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Backoff {
    fn ready(&self, topic: &str) -> bool {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .get(topic)
            .is_none_or(|(_, at)| *at <= Instant::now())
    }

    fn failed(&self, topic: &str) -> Duration {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let entry = topics
            .entry(topic.to_owned())
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        let wait = Duration::from_millis(500 << entry.0.min(7)).min(MAX_BACKOFF);
        entry.1 = Instant::now() + wait;
        wait
    }

    fn succeeded(&self, topic: &str) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.remove(topic);
    }
}

impl Broker {
    /// One pass of the offloader over every loaded reliable topic whose
    /// backoff allows it. Returns the segments offloaded.
    pub async fn offload_pass(&self) -> usize {
        let mut offloaded = 0;
        for topic in self.loaded_topics() {
            if !self.offload_backoff.ready(topic.name.as_str()) {
                continue;
            }
            match self.offload_topic(&topic).await {
                Ok(count) => {
                    self.offload_backoff.succeeded(topic.name.as_str());
                    offloaded += count;
                }
                Err(error) if is_fenced(&error) => {
                    tracing::warn!(topic = %topic.name, epoch = topic.epoch, %error, "another broker owns the topic now; unloading it");
                    self.unload(topic.name.as_str());
                    continue;
                }
                Err(error) => {
                    let wait = self.offload_backoff.failed(topic.name.as_str());
                    tracing::warn!(topic = %topic.name, %error, retry_in_ms = wait.as_millis() as u64, "offload failed; retrying");
                }
            }
            self.check_offload_pending(&topic);
        }
        offloaded
    }

    /// Offloads every sealed segment of `topic` not offloaded yet, oldest
    /// first, encoding the next segment while the previous one uploads (so
    /// a slow store and the encoding overlap, with at most one encoding
    /// under way). Returns how many it offloaded.
    pub async fn offload_topic(&self, topic: &Topic) -> Result<usize, BrokerError> {
        let Some((log, tier)) = tiered(topic) else {
            return Ok(0);
        };
        let _guard = log.lock_offload().await;
        let offloaded_end = log.offloaded_end();
        let mut segments = waiting_for_offload(log).into_iter().filter(|segment| {
            let overlaps = segment.base_offset < offloaded_end;
            if overlaps {
                tracing::warn!(topic = %topic.name, base_offset = segment.base_offset, offloaded_end, "a local segment overlaps offloaded history; not offloading it");
            }
            !overlaps
        });

        // The next segment encodes on its own task while this one uploads.
        let spawn_encode = |segment: SegmentInfo| {
            let (tier, disk, name) = (Arc::clone(tier), Arc::clone(log.disk()), topic.name.clone());
            let next_offset = segment.next_offset;
            let task =
                tokio::spawn(async move { tier.encode(name.as_str(), &disk, &segment).await });
            (next_offset, task)
        };
        let mut encoding = segments.next().map(spawn_encode);
        let mut count = 0;
        while let Some((next_offset, current)) = encoding.take() {
            let encoded = current.await.map_err(|_| BrokerError::ShuttingDown)?;
            encoding = segments.next().map(spawn_encode);
            let encoded = match encoded {
                Ok(encoded) => encoded,
                // Retention deleted it since it was listed: every
                // subscription had acknowledged it and nothing keeps it.
                Err(error) if log.disk().start_offset() >= next_offset => {
                    tracing::debug!(
                        topic = %topic.name,
                        next_offset,
                        %error,
                        "retention deleted a segment before it was offloaded; skipping it"
                    );
                    continue;
                }
                Err(error) => {
                    if let Some((_, next)) = encoding {
                        next.abort();
                    }
                    return Err(BrokerError::Storage(error));
                }
            };
            let uploaded = tier.upload(topic.name.as_str(), encoded, topic.epoch).await;
            let descriptor = match uploaded {
                Ok(descriptor) => descriptor,
                Err(error) => {
                    // Its result would be thrown away; the next pass encodes
                    // it again.
                    if let Some((_, next)) = encoding {
                        next.abort();
                    }
                    return Err(BrokerError::Storage(error));
                }
            };
            // Retention may have reread the catalog, this descriptor with it.
            let mut remote = log.remote_segments().as_ref().clone();
            if !remote
                .iter()
                .any(|s| s.base_offset == descriptor.base_offset)
            {
                remote.push(descriptor);
            }
            log.set_remote_segments(remote);
            count += 1;
        }
        Ok(count)
    }

    /// Seals `topic`'s active segment and offloads everything sealed, now.
    pub async fn offload_now(&self, topic: &Topic) -> Result<usize, BrokerError> {
        let Some(log) = topic.log() else {
            return Err(BrokerError::InvalidRequest(format!(
                "topic {} is not reliable; only reliable topics keep history to offload",
                topic.name
            )));
        };
        if log.tier().is_none() {
            return Err(BrokerError::InvalidRequest(
                "offload is off on this broker (offload.enabled = false)".into(),
            ));
        }
        let disk = Arc::clone(log.disk());
        tokio::task::spawn_blocking(move || disk.seal_active())
            .await
            .map_err(|_| BrokerError::ShuttingDown)?
            .map_err(BrokerError::Storage)?;
        let count = self.offload_topic(topic).await?;
        self.check_offload_pending(topic);
        Ok(count)
    }

    /// Refuses `topic`'s producers while more sealed bytes wait for offload
    /// than `offload.max_pending_bytes`, and lets them in again after. With
    /// offload off nothing waits for it: local history is bounded by
    /// retention and the backlog quota alone.
    pub(crate) fn check_offload_pending(&self, topic: &Topic) {
        let Some((log, _)) = tiered(topic) else {
            return;
        };
        let pending: u64 = waiting_for_offload(log).iter().map(|s| s.bytes).sum();
        let limit = self.config.offload.max_pending_bytes;
        topic.set_offload_pending((pending > limit).then_some((pending, limit)));
    }

    /// Compacts small offloaded objects and sweeps orphans, topic by topic.
    pub async fn compact_and_sweep(&self) {
        for topic in self.loaded_topics() {
            if let Err(error) = self.compact_topic(&topic).await {
                tracing::warn!(topic = %topic.name, %error, "compaction failed; retrying later");
            }
        }
    }

    /// Compacts `topic`'s small offloaded objects, then sweeps its orphans.
    /// Returns the objects compaction wrote and the orphans swept.
    pub async fn compact_topic(&self, topic: &Topic) -> Result<(usize, usize), BrokerError> {
        let Some((log, tier)) = tiered(topic) else {
            return Ok((0, 0));
        };
        let name = topic.name.as_str();
        let _guard = log.lock_offload().await;
        let merged = tier
            .compact(name, topic.epoch)
            .await
            .map_err(BrokerError::Storage)?;
        if merged > 0 {
            log.set_remote_segments(tier.segments(name).await.map_err(BrokerError::Storage)?);
        }
        let swept = tier.sweep(name).await.map_err(BrokerError::Storage)?;
        Ok((merged, swept.len()))
    }

    /// Applies retention to the offloaded history of every loaded reliable
    /// topic. It runs on the offloader's task, never the janitor's, so an
    /// unreachable store holds up nothing else.
    pub async fn apply_offloaded_retention(&self) {
        for topic in self.loaded_topics() {
            let (Some(log), Some(floor)) = (topic.log(), topic.acknowledged_floor()) else {
                continue;
            };
            let policies = match self.effective_policies(&topic).await {
                Ok(policies) => policies,
                Err(error) => {
                    tracing::warn!(topic = %topic.name, %error, "cannot read the retention policies; retrying");
                    continue;
                }
            };
            let name = topic.name.as_str();
            if let Err(error) = self.retain_offloaded(log, name, floor, &policies).await {
                tracing::warn!(topic = %topic.name, %error, "retention of offloaded segments failed; retrying");
            }
        }
    }

    /// Deletes the offloaded history of `topic` that retention lets go,
    /// given the acknowledged `floor` and the policies that apply.
    async fn retain_offloaded(
        &self,
        log: &TopicLog,
        name: &str,
        floor: u64,
        policies: &sava_metadata::NamespacePolicies,
    ) -> Result<(), BrokerError> {
        let Some(tier) = log.tier() else {
            return Ok(());
        };
        let max_age_ms = policies
            .retention_age_secs
            .map_or(0, |s| s.saturating_mul(1000));
        let offloaded_end = log.offloaded_end();
        let local_newer: u64 = log
            .disk()
            .segments()
            .iter()
            .filter(|s| s.base_offset >= offloaded_end)
            .map(|s| s.bytes)
            .sum();
        let deleted = tier
            .apply_retention(
                name,
                floor,
                max_age_ms,
                policies.retention_bytes,
                local_newer,
            )
            .await
            .map_err(BrokerError::Storage)?;
        if deleted.is_some() {
            log.set_remote_segments(tier.segments(name).await.map_err(BrokerError::Storage)?);
        }
        Ok(())
    }
}

/// A reliable topic's log and the tier it offloads to; `None` for a
/// non-reliable topic or with offload off.
fn tiered(topic: &Topic) -> Option<(&TopicLog, &Arc<Tier>)> {
    let log = topic.log()?;
    Some((log, log.tier()?))
}

/// The sealed segments of `log` above its offloaded history, up to the
/// first one not sealed (the active one, or one a roll just ended), so
/// segments are offloaded in offset order.
fn waiting_for_offload(log: &TopicLog) -> Vec<SegmentInfo> {
    let end = log.offloaded_end();
    log.disk()
        .segments()
        .into_iter()
        .take_while(|s| s.sealed)
        .filter(|s| s.next_offset > s.base_offset && s.next_offset > end)
        .collect()
}

/// Whether local retention lets an offloaded sealed segment go: it was
/// offloaded and its last message is older than `local_retention_secs`.
pub fn local_copy_expired(segment: &SegmentInfo, offloaded_end: u64, retention: Duration) -> bool {
    let age_ms = now_ms().saturating_sub(segment.last_publish_time_ms.unwrap_or(0));
    segment.sealed && segment.next_offset <= offloaded_end && age_ms >= retention.as_millis() as u64
}

/// Whether `error` says the topic's ownership moved to a newer epoch.
fn is_fenced(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::Storage(sava_storage::Error::Metadata(
            sava_metadata::MetadataError::Fenced { .. }
        ))
    )
}
