//! The object storage tier of reliable partitions: offload of sealed
//! segments, reads of offloaded history, compaction, retention and the
//! sweeper of orphan objects.
//!
//! The order of offload is what makes it safe: encode the sealed segment as
//! Parquet, upload it, and only then commit its descriptor to the segment
//! catalog. A crash between upload and commit leaves an object no
//! descriptor names; [`Tier::sweep`] deletes such orphans once they are
//! older than a grace period (so an upload in flight is never taken).
//! Compaction uploads the merged object first and swaps the descriptors in
//! one transaction; the objects it replaced are deleted after the same grace
//! period, so a reader still holding the old descriptors finishes its read.
//!
//! Reads fetch the row group holding their offset and the ones after it,
//! up to a bounded span, with one ranged GET (the descriptor says where
//! each row group sits), plus the object's footer unless the span runs to
//! the end of the object and brings it along. They decode on the tier's
//! own low-priority threads (`read_pool.rs`) into a cache bounded in
//! bytes, and the copies a read hands out of that cache are made there
//! too; what a reader waits for runs before readahead. Row groups before
//! the offset are never fetched. A read also starts fetching the next two
//! objects (fewer when their messages would fill more than a quarter of
//! the cache), so in a sequential replay one downloads while another
//! decodes; a second reader of an object being fetched waits for that
//! fetch instead of repeating it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sava_metadata::{Catalog, RowGroupDescriptor, SegmentDescriptor};
use sava_proto::telemetry::TRACEPARENT;
use tracing::Instrument;

use crate::columnar::{self, EncodedSegment, FOOTER_FETCH_BYTES, PartialObject};
use crate::error::{Error, Result};
use crate::log::PartitionLog;
use crate::objects::ObjectTier;
use crate::read_pool::{Lane, ReadPool};
use crate::record::Record;
use crate::segment::SegmentInfo;

/// The most bytes one ranged GET of a reader asks for.
const MAX_SPAN_BYTES: u64 = 8 * 1024 * 1024;

/// The most objects a sequential reader fetches ahead of the one it reads.
const READAHEAD_OBJECTS: usize = 2;

/// The row groups one fetch from row group `first` of `segment` takes:
/// the last one, and the message bytes they decode to. At most
/// [`MAX_SPAN_BYTES`] of the object and `decoded_budget` of messages, and
/// always `first` itself.
fn span_from(segment: &SegmentDescriptor, first: usize, decoded_budget: u64) -> (usize, u64) {
    let groups = &segment.row_groups;
    let message_bytes =
        |g: &RowGroupDescriptor| g.records * segment.message_bytes / segment.records().max(1);
    let Some(start) = groups.get(first) else {
        return (first, 0);
    };
    let (mut last, mut fetched, mut decoded) = (first, start.byte_len, message_bytes(start));
    while let Some(next) = groups.get(last + 1) {
        if fetched + next.byte_len > MAX_SPAN_BYTES
            || decoded + message_bytes(next) > decoded_budget
        {
            break;
        }
        (last, fetched, decoded) = (
            last + 1,
            fetched + next.byte_len,
            decoded + message_bytes(next),
        );
    }
    (last, decoded)
}

/// An object being fetched, listed in [`Tier`]'s `fetching` map until
/// this is dropped.
struct FetchEntry<'a> {
    fetching: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: &'a str,
}

impl Drop for FetchEntry<'_> {
    fn drop(&mut self) {
        lock(self.fetching).remove(self.key);
    }
}

/// Settings of the tier.
#[derive(Debug, Clone)]
pub struct TierConfig {
    /// The cluster's name, the first element of every object key.
    pub cluster: String,
    /// Message bytes per Parquet row group, the unit of a ranged read.
    pub row_group_bytes: usize,
    /// Bytes of decoded row groups and footers the read cache holds.
    pub cache_bytes: usize,
    /// Offloaded objects smaller than this are merged by compaction.
    pub compact_below_bytes: u64,
    /// Compaction merges objects into one of at most this many bytes.
    pub compact_target_bytes: u64,
    /// Objects no descriptor names are deleted once this old; replaced
    /// objects this long after compaction replaced them.
    pub orphan_grace: Duration,
    /// Threads that decode what reads fetched (default: one per core).
    pub read_threads: usize,
    /// How far above the broker's nice value those threads run, so that a
    /// replay takes only the CPU live traffic leaves (default 10; 0 runs
    /// them at the broker's priority).
    pub read_nice: i32,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            cluster: sava_metadata::DEFAULT_CLUSTER.to_owned(),
            row_group_bytes: 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            compact_below_bytes: 4 * 1024 * 1024,
            compact_target_bytes: 64 * 1024 * 1024,
            orphan_grace: Duration::from_secs(10 * 60),
            read_threads: std::thread::available_parallelism().map_or(2, usize::from),
            read_nice: 10,
        }
    }
}

/// Counters of the tier, for metrics.
#[derive(Debug, Default)]
pub struct TierStats {
    pub segments_offloaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub message_bytes_offloaded: AtomicU64,
    pub upload_errors: AtomicU64,
    pub gets: AtomicU64,
    pub get_errors: AtomicU64,
    pub get_micros_total: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub compactions: AtomicU64,
    pub objects_deleted: AtomicU64,
}

/// The tier of one broker: object store, catalog, read cache.
pub struct Tier {
    objects: ObjectTier,
    catalog: Catalog,
    config: TierConfig,
    cache: Mutex<BlockCache>,
    /// Objects being fetched from, by key: a second reader of the same
    /// object waits for the first fetch instead of repeating it.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Objects replaced by compaction, deleted once their deadline passes.
    replaced: Mutex<Vec<(String, Instant)>>,
    read_pool: ReadPool,
    stats: TierStats,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("objects", &self.objects)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tier {
    pub fn new(objects: ObjectTier, catalog: Catalog, config: TierConfig) -> Arc<Tier> {
        let cache = BlockCache::new(config.cache_bytes);
        let read_pool = ReadPool::start("sava-tierrd", config.read_threads, config.read_nice);
        Arc::new(Tier {
            objects,
            catalog,
            config,
            cache: Mutex::new(cache),
            fetching: Mutex::new(HashMap::new()),
            replaced: Mutex::new(Vec::new()),
            read_pool,
            stats: TierStats::default(),
        })
    }

    pub fn objects(&self) -> &ObjectTier {
        &self.objects
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn stats(&self) -> &TierStats {
        &self.stats
    }

    pub fn config(&self) -> &TierConfig {
        &self.config
    }

    /// The offloaded segments of `topic`, in offset order.
    pub async fn segments(&self, topic: &str) -> Result<Vec<SegmentDescriptor>> {
        Ok(self.catalog.segments(topic).await?)
    }

    /// Offloads one sealed segment of `log`: encodes it, uploads it, then
    /// commits its descriptor, which the catalog refuses (`Fenced`) unless
    /// the topic is still owned in `epoch` (0: no check). Idempotent:
    /// offloading it again uploads the same object under the same key and
    /// recommits the same descriptor.
    pub async fn offload(
        &self,
        topic: &str,
        log: &Arc<PartitionLog>,
        segment: &SegmentInfo,
        epoch: u64,
    ) -> Result<SegmentDescriptor> {
        let span = tracing::info_span!(
            "storage.offload",
            topic,
            segment.base_offset = segment.base_offset,
            segment.next_offset = segment.next_offset
        );
        self.offload_traced(topic, log, segment, epoch)
            .instrument(span)
            .await
    }

    async fn offload_traced(
        &self,
        topic: &str,
        log: &Arc<PartitionLog>,
        segment: &SegmentInfo,
        epoch: u64,
    ) -> Result<SegmentDescriptor> {
        let encoded = self.encode(topic, log, segment).await?;
        self.upload(topic, encoded, epoch).await
    }

    /// The first half of [`Tier::offload`]: reads sealed `segment` of `log`
    /// and encodes it as Parquet, on a blocking thread. A caller offloading
    /// several segments encodes the next while the previous one uploads.
    pub async fn encode(
        &self,
        topic: &str,
        log: &Arc<PartitionLog>,
        segment: &SegmentInfo,
    ) -> Result<EncodedForUpload> {
        let log = Arc::clone(log);
        let (base, next) = (segment.base_offset, segment.next_offset);
        let row_group_bytes = self.config.row_group_bytes;
        let read_bytes = segment.bytes as usize + 1;
        let span = tracing::info_span!(
            "storage.encode",
            topic,
            segment.base_offset = base,
            segment.next_offset = next
        );
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            // A read may stop short of its budget; read until the end.
            let mut records = Vec::with_capacity((next - base) as usize);
            while records.last().map_or(base, |r: &Record| r.offset + 1) < next {
                let from = records.last().map_or(base, |r: &Record| r.offset + 1);
                let chunk = log.read(from, (next - from) as usize, read_bytes)?;
                if chunk.is_empty() {
                    return Err(Error::OffsetMismatch {
                        expected: next,
                        got: from,
                    });
                }
                records.extend(chunk.into_iter().filter(|r| r.offset < next));
            }
            // The upload joins the trace of the first traced message.
            let traceparent = records.iter().find_map(|record| {
                let mut attributes = record.attributes.iter();
                attributes
                    .find(|(key, _)| key == TRACEPARENT)
                    .map(|(_, value)| value.clone())
            });
            let encoded = columnar::encode_segment(&records, row_group_bytes)?;
            Ok(EncodedForUpload {
                encoded,
                traceparent,
            })
        })
        .await
        .map_err(|_| Error::Closed)?
    }

    /// The second half of [`Tier::offload`]: uploads an encoded segment of
    /// `topic`, then commits its descriptor (refused as `Fenced` unless the
    /// topic is still owned in `epoch`). Segments of one topic must be
    /// committed in offset order.
    pub async fn upload(
        &self,
        topic: &str,
        encoded: EncodedForUpload,
        epoch: u64,
    ) -> Result<SegmentDescriptor> {
        let EncodedForUpload {
            encoded,
            traceparent,
        } = encoded;
        let (base, next) = (encoded.base_offset, encoded.next_offset);
        let key = self
            .objects
            .segment_key(&self.config.cluster, topic, base, next, epoch);
        let upload = tracing::info_span!(
            "storage.upload",
            topic,
            object = %key,
            messaging.batch.message_count = next - base,
        );
        if let Some(traceparent) = &traceparent {
            let attribute = std::iter::once((TRACEPARENT, traceparent.as_str()));
            sava_proto::telemetry::continue_trace(&upload, attribute);
        }
        let started = Instant::now();
        let object_bytes = encoded.bytes.len() as u64;
        let put = self.objects.put(&key, encoded.bytes.clone());
        let etag = match put.instrument(upload.clone()).await {
            Ok(etag) => etag,
            Err(error) => {
                self.stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
        };
        // A test hook: a process started with this variable dies between
        // the upload and the commit, as a crash there would.
        if std::env::var_os("SAVA_FAILPOINT_ABORT_AFTER_UPLOAD").is_some() {
            tracing::error!(object = %key, "failpoint: aborting between upload and commit");
            std::process::abort();
        }
        let micros = started.elapsed().as_micros() as u64;

        let descriptor = descriptor_of(topic, &encoded, key, etag, epoch);
        let commit = self.catalog.commit_segment(&descriptor);
        commit.instrument(upload).await?;

        self.stats
            .segments_offloaded
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_uploaded
            .fetch_add(object_bytes, Ordering::Relaxed);
        let message_bytes = encoded.message_bytes;
        self.stats
            .message_bytes_offloaded
            .fetch_add(message_bytes, Ordering::Relaxed);
        tracing::info!(
            topic,
            object = %descriptor.object_key,
            base_offset = base,
            next_offset = next,
            object_bytes,
            message_bytes,
            upload_ms = micros / 1000,
            "offloaded segment"
        );
        Ok(descriptor)
    }

    /// Up to `max` records from `from` on, out of `segments` (the topic's
    /// descriptors, in order). Reads within one row group at a time, so it
    /// may return fewer; empty when `from` is in no descriptor.
    pub async fn read(
        self: &Arc<Self>,
        segments: &[SegmentDescriptor],
        from: u64,
        max: usize,
    ) -> Result<Vec<Record>> {
        self.read_map(segments, from, max, Record::clone).await
    }

    /// [`Tier::read`], with each record turned into what the caller keeps
    /// by `convert`, straight from the cached row group. The conversions run
    /// on the tier's low-priority read threads, as the decoding does, ahead
    /// of queued readahead, so a replay's per-message work stays off the
    /// threads that serve producers.
    pub async fn read_map<T, F>(
        self: &Arc<Self>,
        segments: &[SegmentDescriptor],
        from: u64,
        max: usize,
        convert: F,
    ) -> Result<Vec<T>>
    where
        T: Send + 'static,
        F: FnMut(&Record) -> T + Send + 'static,
    {
        let Some(position) = segments.iter().position(|s| s.contains(from)) else {
            return Ok(Vec::new());
        };
        let segment = &segments[position];
        let group = segment
            .row_groups
            .partition_point(|g| g.first_offset <= from)
            .saturating_sub(1);
        let rows = self.row_group(segment, group, Lane::Wanted).await?;

        // Readahead: the next row group of this object (when the span
        // fetched stopped short of it) and the start of the next objects,
        // so the store is fetching one while the one before decodes.
        if group + 1 < segment.row_groups.len() {
            self.prefetch(segment.clone(), group + 1);
        }
        let ahead = self.readahead_objects(&segments[position..]);
        for next in segments.iter().skip(position + 1).take(ahead) {
            self.prefetch(next.clone(), 0);
        }

        let skip = (from - segment.row_groups[group].first_offset) as usize;
        self.read_pool
            .run(move || rows.iter().skip(skip).take(max).map(convert).collect())
            .await
    }

    /// The first offset published at or after `time_ms` among `segments`,
    /// or `None` when all of them are older.
    pub async fn offset_at_time(
        self: &Arc<Self>,
        segments: &[SegmentDescriptor],
        time_ms: u64,
    ) -> Result<Option<u64>> {
        let Some(segment) = segments.iter().find(|s| s.last_publish_time_ms >= time_ms) else {
            return Ok(None);
        };
        for group in 0..segment.row_groups.len() {
            let rows = self.row_group(segment, group, Lane::Wanted).await?;
            if let Some(record) = rows.iter().find(|r| r.publish_time_ms >= time_ms) {
                return Ok(Some(record.offset));
            }
        }
        Ok(Some(segment.next_offset))
    }

    /// How many objects after `segments[0]` to fetch ahead: two, so that
    /// one downloads while the other decodes, unless the first fetches of
    /// both would decode more than one fetch may (a quarter of the cache);
    /// at least one.
    fn readahead_objects(&self, segments: &[SegmentDescriptor]) -> usize {
        let budget = self.decoded_budget();
        let mut taken = 0;
        let ahead = segments.iter().skip(1).take(READAHEAD_OBJECTS);
        let fits = ahead.take_while(|segment| {
            taken += span_from(segment, 0, budget).1;
            taken <= budget
        });
        fits.count().max(1)
    }

    /// The most message bytes one fetch decodes into the cache.
    fn decoded_budget(&self) -> u64 {
        (self.config.cache_bytes / 4) as u64
    }

    fn prefetch(self: &Arc<Self>, segment: SegmentDescriptor, group: usize) {
        let key = (segment.object_key.clone(), group);
        if self.lock_cache().contains(&key) || lock(&self.fetching).contains_key(&key.0) {
            return;
        }
        let tier = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = tier.row_group(&segment, group, Lane::Ahead).await {
                tracing::debug!(object = %segment.object_key, group, %error, "readahead failed");
            }
        });
    }

    /// Row group `group` of `segment`, from the cache or the store, decoded
    /// in `lane`. One fetch per object at a time: a reader that finds one
    /// under way waits for it, then looks in the cache again.
    async fn row_group(
        &self,
        segment: &SegmentDescriptor,
        group: usize,
        lane: Lane,
    ) -> Result<Arc<Vec<Record>>> {
        let key = (segment.object_key.clone(), group);
        loop {
            if let Some(rows) = self.lock_cache().get(&key) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(rows);
            }
            let under_way = {
                let mut fetching = lock(&self.fetching);
                match fetching.get(&key.0) {
                    Some(fetch) => Err(Arc::clone(fetch)),
                    None => {
                        let fetch = Arc::new(tokio::sync::Mutex::new(()));
                        let guard = Arc::clone(&fetch)
                            .try_lock_owned()
                            .expect("a new mutex is free");
                        fetching.insert(key.0.clone(), fetch);
                        Ok(guard)
                    }
                }
            };
            match under_way {
                Err(fetch) => {
                    drop(fetch.lock().await);
                }
                Ok(_guard) => {
                    // Gone from the map however this ends, the read dropped
                    // mid-fetch included, before the lock is released; else
                    // the next reader would find the lock free and the
                    // entry still there, and spin.
                    let _entry = FetchEntry {
                        fetching: &self.fetching,
                        key: &key.0,
                    };
                    self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                    return self.fetch_span(segment, group, lane).await;
                }
            }
        }
    }

    /// Fetches row group `first` of `segment` and the ones after it, up to
    /// a bounded span, in one ranged GET; decodes them into the cache and
    /// returns the first. A span that reaches the last row group runs to
    /// the end of the object, so it brings the footer along.
    async fn fetch_span(
        &self,
        segment: &SegmentDescriptor,
        first: usize,
        lane: Lane,
    ) -> Result<Arc<Vec<Record>>> {
        let groups = &segment.row_groups;
        let (last, _) = span_from(segment, first, self.decoded_budget());

        let start = groups[first].byte_start;
        let mut object = PartialObject::new(segment.object_bytes);
        if last + 1 == groups.len() {
            let body = self
                .fetch(&segment.object_key, start..segment.object_bytes)
                .await?;
            object.add(start, body);
        } else {
            let end = groups[last].byte_start + groups[last].byte_len;
            let footer = self.footer(segment);
            let body = self.fetch(&segment.object_key, start..end);
            let ((footer_start, footer), body) = futures::try_join!(footer, body)?;
            object.add(footer_start, footer);
            object.add(start, body);
        }
        // Two halves decode on two read threads at once.
        let halves = match last > first {
            true => {
                let middle = first + (last - first).div_ceil(2);
                vec![(first, middle - 1), (middle, last)]
            }
            false => vec![(first, last)],
        };
        let decodes = halves.into_iter().map(|(from, to)| {
            let (object, name) = (object.clone(), segment.object_key.clone());
            self.read_pool.run_in(lane, move || {
                columnar::decode_row_groups(object, from..=to, &name)
            })
        });
        let mut decoded = Vec::with_capacity(last - first + 1);
        for half in futures::future::join_all(decodes).await {
            decoded.extend(half??);
        }

        let mut decoded = decoded.into_iter().map(Arc::new);
        let wanted = decoded.next().unwrap_or_default();
        let mut cache = self.lock_cache();
        for (index, rows) in (first..).zip(std::iter::once(Arc::clone(&wanted)).chain(decoded)) {
            let bytes = rows.iter().map(Record::encoded_len).sum::<usize>();
            cache.insert((segment.object_key.clone(), index), rows, bytes);
        }
        Ok(wanted)
    }

    /// The footer of `segment`'s object and where it starts.
    async fn footer(&self, segment: &SegmentDescriptor) -> Result<(u64, Bytes)> {
        if let Some(footer) = self.lock_cache().footer(&segment.object_key) {
            return Ok(footer);
        }
        let len = segment.object_bytes;
        let start = len.saturating_sub(FOOTER_FETCH_BYTES);
        let mut footer = (start, self.fetch(&segment.object_key, start..len).await?);
        if let Some((start, end)) = columnar::footer_range(len, &footer.1) {
            footer = (start, self.fetch(&segment.object_key, start..end).await?);
        }
        self.lock_cache()
            .insert_footer(&segment.object_key, footer.clone());
        Ok(footer)
    }

    async fn fetch(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let started = Instant::now();
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let result = self.objects.get_range(key, range).await;
        let micros = started.elapsed().as_micros() as u64;
        self.stats
            .get_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        match &result {
            Ok(bytes) => {
                self.stats
                    .bytes_fetched
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.get_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Merges runs of adjacent small objects of `topic` into larger ones,
    /// swapping their descriptors in one transaction each, fenced by the
    /// ownership `epoch` as [`Tier::offload`] is. Returns how many merged
    /// objects were written.
    pub async fn compact(&self, topic: &str, epoch: u64) -> Result<usize> {
        let segments = self.catalog.segments(topic).await?;
        let mut merged = 0;
        for run in compaction_runs(&segments, &self.config) {
            let span = tracing::info_span!("storage.compact", topic, segments = run.len());
            self.compact_run(topic, run, epoch).instrument(span).await?;
            merged += 1;
        }
        Ok(merged)
    }

    /// Merges one run of adjacent objects into one: upload first, then the
    /// swap of descriptors; the replaced objects wait out the grace period.
    async fn compact_run(&self, topic: &str, run: &[SegmentDescriptor], epoch: u64) -> Result<()> {
        let mut records = Vec::new();
        for segment in run {
            let bytes = self.objects.get(&segment.object_key).await?;
            let name = segment.object_key.clone();
            let rows = tokio::task::spawn_blocking(move || columnar::decode_object(bytes, &name))
                .await
                .map_err(|_| Error::Closed)??;
            records.extend(rows);
        }
        let row_group_bytes = self.config.row_group_bytes;
        let encoded = tokio::task::spawn_blocking(move || {
            columnar::encode_segment(&records, row_group_bytes)
        })
        .await
        .map_err(|_| Error::Closed)??;

        let (base, next) = (encoded.base_offset, encoded.next_offset);
        let key = self
            .objects
            .segment_key(&self.config.cluster, topic, base, next, epoch);
        let etag = self.objects.put(&key, encoded.bytes.clone()).await?;
        let descriptor = descriptor_of(topic, &encoded, key, etag, epoch);
        let bases: Vec<u64> = run.iter().map(|s| s.base_offset).collect();
        self.catalog
            .replace_segments(topic, &bases, &descriptor)
            .await?;

        let deadline = Instant::now() + self.config.orphan_grace;
        lock(&self.replaced).extend(run.iter().map(|s| (s.object_key.clone(), deadline)));
        self.stats.compactions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(topic, object = %descriptor.object_key, replaced = run.len(), base_offset = base, next_offset = next, "compacted segments");
        Ok(())
    }

    /// Deletes offloaded history of `topic` that retention lets go: every
    /// descriptor below `floor` (offsets every subscription acknowledged)
    /// that is older than `max_age_ms` or beyond `max_bytes` of retained
    /// history, oldest first. The descriptors go first, then the objects (a
    /// failed delete leaves an orphan for the sweeper). Returns the offset
    /// the remaining history starts at, if any was deleted.
    pub async fn apply_retention(
        &self,
        topic: &str,
        floor: u64,
        max_age_ms: u64,
        max_bytes: Option<u64>,
        newer_bytes: u64,
    ) -> Result<Option<u64>> {
        let segments = self.catalog.segments(topic).await?;
        let now = now_ms();
        let mut retained: u64 = segments.iter().map(|s| s.message_bytes).sum::<u64>() + newer_bytes;
        let mut doomed = Vec::new();
        for segment in segments.iter().filter(|s| s.next_offset <= floor) {
            let too_old = now.saturating_sub(segment.last_publish_time_ms) >= max_age_ms;
            let too_big = max_bytes.is_some_and(|max| retained > max);
            if !(too_old || too_big) {
                break;
            }
            retained -= segment.message_bytes;
            doomed.push(segment);
        }
        let Some(last) = doomed.last() else {
            return Ok(None);
        };
        let start = last.next_offset;
        let bases: Vec<u64> = doomed.iter().map(|s| s.base_offset).collect();
        self.catalog.delete_segments(topic, &bases).await?;
        for segment in &doomed {
            self.objects.delete(&segment.object_key).await?;
            self.stats.objects_deleted.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(
            topic,
            objects = doomed.len(),
            history_start = start,
            "retention deleted offloaded segments"
        );
        Ok(Some(start))
    }

    /// Deletes the objects of `topic` that no descriptor names and that are
    /// older than the grace period (orphans of a crash between upload and
    /// commit), and the objects compaction replaced whose grace ran out.
    /// Returns the keys deleted.
    pub async fn sweep(&self, topic: &str) -> Result<Vec<String>> {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut replaced = lock(&self.replaced);
            let (due, waiting): (Vec<_>, Vec<_>) =
                replaced.drain(..).partition(|(_, at)| *at <= now);
            *replaced = waiting;
            due.into_iter().map(|(key, _)| key).collect()
        };
        let mut deleted = Vec::new();
        for key in due {
            self.objects.delete(&key).await?;
            deleted.push(key);
        }

        let prefix = self.objects.topic_prefix(&self.config.cluster, topic);
        let named: HashSet<String> = self
            .catalog
            .segments(topic)
            .await?
            .into_iter()
            .map(|s| s.object_key)
            .collect();
        let waiting: HashSet<String> = lock(&self.replaced)
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        let grace_ms = self.config.orphan_grace.as_millis() as u64;
        let now_ms = now_ms();
        for object in self.objects.list(&prefix).await? {
            let orphan = !named.contains(&object.key) && !waiting.contains(&object.key);
            if orphan && now_ms.saturating_sub(object.last_modified_ms) >= grace_ms {
                self.objects.delete(&object.key).await?;
                tracing::info!(topic, object = %object.key, "swept orphan object");
                deleted.push(object.key);
            }
        }
        self.stats
            .objects_deleted
            .fetch_add(deleted.len() as u64, Ordering::Relaxed);
        Ok(deleted)
    }

    /// Deletes every object and descriptor of `topic` (the topic is being
    /// deleted).
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let segments = self.catalog.segments(topic).await?;
        let bases: Vec<u64> = segments.iter().map(|s| s.base_offset).collect();
        self.catalog.delete_segments(topic, &bases).await?;
        let prefix = self.objects.topic_prefix(&self.config.cluster, topic);
        for object in self.objects.list(&prefix).await? {
            self.objects.delete(&object.key).await?;
        }
        Ok(())
    }

    fn lock_cache(&self) -> MutexGuard<'_, BlockCache> {
        lock(&self.cache)
    }
}

/// A sealed segment encoded as Parquet, waiting for [`Tier::upload`].
#[derive(Debug)]
pub struct EncodedForUpload {
    encoded: EncodedSegment,
    /// The trace context of the first traced message, which the upload joins.
    traceparent: Option<String>,
}

fn descriptor_of(
    topic: &str,
    encoded: &columnar::EncodedSegment,
    object_key: String,
    etag: Option<String>,
    epoch: u64,
) -> SegmentDescriptor {
    SegmentDescriptor {
        topic: topic.to_owned(),
        base_offset: encoded.base_offset,
        next_offset: encoded.next_offset,
        first_publish_time_ms: encoded.first_publish_time_ms,
        last_publish_time_ms: encoded.last_publish_time_ms,
        message_bytes: encoded.message_bytes,
        object_key,
        object_bytes: encoded.bytes.len() as u64,
        etag,
        row_groups: encoded
            .row_groups
            .iter()
            .map(|g| RowGroupDescriptor {
                first_offset: g.first_offset,
                records: g.records,
                byte_start: g.byte_start,
                byte_len: g.byte_len,
            })
            .collect(),
        uploaded_at_ms: now_ms(),
        epoch,
    }
}

/// Runs of at least two adjacent (dense) small objects whose sum stays
/// within the target.
fn compaction_runs<'a>(
    segments: &'a [SegmentDescriptor],
    config: &TierConfig,
) -> Vec<&'a [SegmentDescriptor]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    let close = |runs: &mut Vec<&'a [SegmentDescriptor]>, start: usize, end: usize| {
        if end - start >= 2 {
            runs.push(&segments[start..end]);
        }
    };
    for (index, segment) in segments.iter().enumerate() {
        let small = segment.object_bytes < config.compact_below_bytes;
        let adjacent = index > start && segments[index - 1].next_offset == segment.base_offset;
        let fits = bytes + segment.object_bytes <= config.compact_target_bytes;
        if !(small && (index == start || adjacent) && fits) {
            close(&mut runs, start, index);
            start = if small { index } else { index + 1 };
            bytes = if small { segment.object_bytes } else { 0 };
            continue;
        }
        bytes += segment.object_bytes;
    }
    close(&mut runs, start, segments.len());
    runs
}

/// A row group: its object's key and its index there.
type GroupKey = (String, usize);

type Rows = Arc<Vec<Record>>;

/// Decoded row groups and footers, least recently used out first.
#[derive(Debug)]
struct BlockCache {
    max_bytes: usize,
    bytes: usize,
    /// Decoded rows and their bytes, by object key and row group.
    groups: HashMap<GroupKey, (Rows, usize)>,
    footers: HashMap<String, (u64, Bytes)>,
    /// Keys by last use, oldest first; stale entries are skipped.
    order: VecDeque<CacheKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Group(String, usize),
    Footer(String),
}

impl BlockCache {
    fn new(max_bytes: usize) -> BlockCache {
        BlockCache {
            max_bytes,
            bytes: 0,
            groups: HashMap::new(),
            footers: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, key: &(String, usize)) -> bool {
        self.groups.contains_key(key)
    }

    fn get(&mut self, key: &(String, usize)) -> Option<Arc<Vec<Record>>> {
        let rows = Arc::clone(&self.groups.get(key)?.0);
        self.order.push_back(CacheKey::Group(key.0.clone(), key.1));
        Some(rows)
    }

    fn footer(&mut self, object: &str) -> Option<(u64, Bytes)> {
        let footer = self.footers.get(object)?.clone();
        self.order.push_back(CacheKey::Footer(object.to_owned()));
        Some(footer)
    }

    fn insert(&mut self, key: (String, usize), rows: Arc<Vec<Record>>, bytes: usize) {
        if let Some((_, old)) = self.groups.insert(key.clone(), (rows, bytes)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        self.order.push_back(CacheKey::Group(key.0, key.1));
        self.evict();
    }

    fn insert_footer(&mut self, object: &str, footer: (u64, Bytes)) {
        let bytes = footer.1.len();
        if let Some((_, old)) = self.footers.insert(object.to_owned(), footer) {
            self.bytes -= old.len();
        }
        self.bytes += bytes;
        self.order.push_back(CacheKey::Footer(object.to_owned()));
        self.evict();
    }

    fn evict(&mut self) {
        while self.bytes > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            // A key used again later has a newer entry in `order`.
            if self.order.contains(&oldest) {
                continue;
            }
            match oldest {
                CacheKey::Group(object, group) => {
                    if let Some((_, bytes)) = self.groups.remove(&(object, group)) {
                        self.bytes -= bytes;
                    }
                }
                CacheKey::Footer(object) => {
                    if let Some((_, footer)) = self.footers.remove(&object) {
                        self.bytes -= footer.len();
                    }
                }
            }
        }
        // Keep the use list from growing without bound on a hot cache.
        if self.order.len() > 4 * (self.groups.len() + self.footers.len()) + 64 {
            let mut seen = HashSet::new();
            let mut kept: Vec<CacheKey> = self
                .order
                .drain(..)
                .rev()
                .filter(|key| seen.insert(key.clone()))
                .collect();
            kept.reverse();
            self.order = kept.into();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests;
