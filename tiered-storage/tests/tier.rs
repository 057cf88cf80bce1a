//! The object storage tier over a real partition log and a local object
//! store: offload, reads back, compaction, retention and the sweeper.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sava_metadata::{Catalog, EmbeddedStore};
use sava_storage::{
    FsyncMode, ObjectStoreConfig, ObjectTier, PartitionLog, Record, Tier, TierConfig,
};

struct Fixture {
    _dir: tempfile::TempDir,
    log: Arc<PartitionLog>,
    tier: Arc<Tier>,
    runtime: tokio::runtime::Runtime,
}

const TOPIC: &str = "/default/orders-part-2";

/// A log of `count` records in segments of about `segment_bytes`, every
/// sealed one offloaded.
fn offloaded(count: u64, segment_bytes: u64, config: TierConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let committer = committer(FsyncMode::Never);
    let log = Arc::new(open(
        &dir.path().join("log"),
        small_config(segment_bytes),
        &committer,
    ));
    append_all(&log, count, 5);
    log.seal_active().unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("file://{}", dir.path().join("objects").display());
    let objects = ObjectTier::open(&url, &ObjectStoreConfig::default()).unwrap();
    let catalog = Catalog::new(Arc::new(EmbeddedStore::open_temporary().unwrap()));
    let tier = Tier::new(objects, catalog, config);
    runtime.block_on(async {
        for segment in log.segments().iter().filter(|s| s.sealed) {
            tier.offload(TOPIC, &log, segment, 0).await.unwrap();
        }
    });
    Fixture {
        _dir: dir,
        log,
        tier,
        runtime,
    }
}

fn small_tier() -> TierConfig {
    TierConfig {
        row_group_bytes: 2048,
        cache_bytes: 64 * 1024,
        ..TierConfig::default()
    }
}

impl Fixture {
    fn read_all(&self, from: u64) -> Vec<Record> {
        self.runtime.block_on(async {
            let segments = self.tier.segments(TOPIC).await.unwrap();
            let mut records = Vec::new();
            let mut next = from;
            loop {
                let chunk = self.tier.read(&segments, next, 50).await.unwrap();
                let Some(last) = chunk.last() else {
                    return records;
                };
                next = last.offset + 1;
                records.extend(chunk);
            }
        })
    }
}

#[test]
fn offloaded_segments_are_catalogued_in_order_and_read_back_whole() {
    let fixture = offloaded(400, 4096, small_tier());
    let segments = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();

    assert!(segments.len() > 3, "{} segments", segments.len());
    assert_eq!(segments[0].base_offset, 0);
    assert_eq!(segments.last().unwrap().next_offset, 400);
    for pair in segments.windows(2) {
        assert_eq!(pair[0].next_offset, pair[1].base_offset);
    }
    for segment in &segments {
        assert!(
            segment
                .object_key
                .starts_with("sava/default/orders/partition=2/")
        );
        let groups: u64 = segment.row_groups.iter().map(|g| g.records).sum();
        assert_eq!(groups, segment.records());
    }
    assert_records(&fixture.read_all(0), 0..400);
    assert_records(&fixture.read_all(137), 137..400);
}

#[test]
fn a_mapped_read_converts_the_same_window_on_the_tier_read_threads() {
    let fixture = offloaded(300, 4096, small_tier());
    let segments = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();

    let plain = fixture
        .runtime
        .block_on(fixture.tier.read(&segments, 123, 20))
        .unwrap();
    let mapped = fixture
        .runtime
        .block_on(fixture.tier.read_map(&segments, 123, 20, |record| {
            let thread = std::thread::current().name().map(str::to_owned);
            (record.offset, thread)
        }))
        .unwrap();

    assert!(!plain.is_empty());
    let offsets: Vec<u64> = mapped.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, plain.iter().map(|r| r.offset).collect::<Vec<_>>());
    for (offset, thread) in mapped {
        let thread = thread.unwrap_or_default();
        assert!(
            thread.starts_with("sava-tierrd"),
            "offset {offset} was converted on thread {thread:?}"
        );
    }
}

#[test]
fn reads_come_from_the_cache_once_fetched() {
    let fixture = offloaded(200, 64 * 1024, small_tier());
    fixture.read_all(0);
    let misses = fixture
        .tier
        .stats()
        .cache_misses
        .load(std::sync::atomic::Ordering::Relaxed);
    fixture.read_all(0);
    let stats = fixture.tier.stats();
    assert_eq!(
        stats
            .cache_misses
            .load(std::sync::atomic::Ordering::Relaxed),
        misses
    );
    assert!(stats.cache_hits.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn a_read_fetches_the_next_two_objects_ahead_and_no_more() {
    let fixture = offloaded(300, 2048, small_tier());
    let segments = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();
    assert!(segments.len() > 4, "{} objects", segments.len());
    let roomy = TierConfig {
        cache_bytes: 16 << 20,
        ..small_tier()
    };
    let reader = Tier::new(fixture.tier.objects().clone(), catalog_of(&fixture), roomy);

    let first = fixture
        .runtime
        .block_on(reader.read(&segments, 0, 1))
        .unwrap();
    assert_records(&first, 0..1);

    // Each object comes in one GET from its first row group to its end,
    // footer included.
    let fetched = || {
        reader
            .stats()
            .bytes_fetched
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let span = |s: &sava_metadata::SegmentDescriptor| s.object_bytes - s.row_groups[0].byte_start;
    let three: u64 = segments[..3].iter().map(span).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fetched() < three && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fetched(), three);
}

#[test]
fn a_read_dropped_while_it_fetches_leaves_no_fetch_behind_for_the_next_reader() {
    let fixture = offloaded(200, 64 * 1024, small_tier());
    fixture.runtime.block_on(async {
        let segments = fixture.tier.segments(TOPIC).await.unwrap();
        // Dropped after its first poll, with the object's fetch under way.
        let cancelled =
            tokio::time::timeout(Duration::from_nanos(1), fixture.tier.read(&segments, 0, 50));
        assert!(
            cancelled.await.is_err(),
            "the read finished in its first poll"
        );

        let next =
            tokio::time::timeout(Duration::from_secs(10), fixture.tier.read(&segments, 0, 50));
        let records = next.await.expect("the next reader is not held up").unwrap();
        // One row group's worth, from the offset asked for.
        assert!(!records.is_empty());
        assert_records(&records, 0..records.len() as u64);
    });
}

#[test]
fn a_time_finds_the_first_offset_published_at_or_after_it() {
    let fixture = offloaded(300, 4096, small_tier());
    let segments = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();
    let at = |time| {
        fixture
            .runtime
            .block_on(fixture.tier.offset_at_time(&segments, time))
            .unwrap()
    };
    assert_eq!(at(0), Some(0));
    assert_eq!(at(time(151)), Some(150));
    assert_eq!(at(time(299) + 1), None);
}

#[test]
fn compaction_swaps_small_objects_for_one_without_a_gap_or_duplicate() {
    let config = TierConfig {
        compact_below_bytes: 64 * 1024,
        compact_target_bytes: 1024 * 1024,
        orphan_grace: Duration::ZERO,
        ..small_tier()
    };
    let fixture = offloaded(400, 2048, config);
    let before = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();

    let merged = fixture
        .runtime
        .block_on(fixture.tier.compact(TOPIC, 0))
        .unwrap();
    let after = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();

    assert_eq!(merged, 1);
    assert!(before.len() > 5);
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].base_offset, after[0].next_offset), (0, 400));
    assert_records(&fixture.read_all(0), 0..400);

    // The replaced objects go at the next sweep, the merged one stays.
    let deleted = fixture.runtime.block_on(fixture.tier.sweep(TOPIC)).unwrap();
    assert_eq!(deleted.len(), before.len());
    assert_records(&fixture.read_all(0), 0..400);
}

#[test]
fn retention_deletes_the_oldest_acknowledged_objects_and_their_descriptors() {
    let fixture = offloaded(300, 4096, small_tier());
    let segments = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();
    let second_end = segments[1].next_offset;

    // Everything is old; only what the floor allows goes.
    let start = fixture
        .runtime
        .block_on(fixture.tier.apply_retention(TOPIC, second_end, 0, None, 0))
        .unwrap();

    assert_eq!(start, Some(second_end));
    let left = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();
    assert_eq!(left.len(), segments.len() - 2);
    let prefix = fixture.tier.objects().topic_prefix("sava", TOPIC);
    let objects = fixture
        .runtime
        .block_on(fixture.tier.objects().list(&prefix))
        .unwrap();
    assert_eq!(objects.len(), left.len());
    assert_records(&fixture.read_all(second_end), second_end..300);
}

#[test]
fn the_sweeper_deletes_orphans_past_the_grace_period_only() {
    let mut config = small_tier();
    config.orphan_grace = Duration::from_secs(3600);
    let fixture = offloaded(100, 4096, config);
    let objects = fixture.tier.objects();
    let orphan = objects.segment_key("sava", TOPIC, 1000, 1010, 0);
    fixture
        .runtime
        .block_on(objects.put(&orphan, bytes::Bytes::from_static(b"never committed")))
        .unwrap();

    // Young orphans may be uploads in flight: kept.
    let deleted = fixture.runtime.block_on(fixture.tier.sweep(TOPIC)).unwrap();
    assert!(deleted.is_empty(), "{deleted:?}");

    let mut config = small_tier();
    config.orphan_grace = Duration::ZERO;
    let catalog_tier = Tier::new(objects.clone(), catalog_of(&fixture), config);
    let deleted = fixture.runtime.block_on(catalog_tier.sweep(TOPIC)).unwrap();
    assert_eq!(deleted, vec![orphan]);
    assert_records(&fixture.read_all(0), 0..100);
    let _ = &fixture.log;
}

fn catalog_of(fixture: &Fixture) -> Catalog {
    fixture.tier.catalog().clone()
}

#[test]
fn a_read_fetches_only_the_row_groups_from_its_offset_on() {
    let fixture = offloaded(400, 1024 * 1024, small_tier());
    let segments = fixture
        .runtime
        .block_on(fixture.tier.segments(TOPIC))
        .unwrap();
    assert_eq!(segments.len(), 1);
    let object = &segments[0];
    let last_group = object.row_groups.last().unwrap();
    assert!(object.row_groups.len() > 3);

    let reader = Tier::new(
        fixture.tier.objects().clone(),
        catalog_of(&fixture),
        small_tier(),
    );
    let records = fixture
        .runtime
        .block_on(reader.read(&segments, last_group.first_offset, 1000))
        .unwrap();

    assert_records(&records, last_group.first_offset..400);
    let fetched = reader
        .stats()
        .bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fetched < object.object_bytes - object.row_groups[0].byte_len,
        "fetched {fetched} of {} bytes",
        object.object_bytes
    );
}
