use super::*;

fn descriptor(base: u64, next: u64, object_bytes: u64) -> SegmentDescriptor {
    SegmentDescriptor {
        topic: "/default/t".into(),
        base_offset: base,
        next_offset: next,
        first_publish_time_ms: 0,
        last_publish_time_ms: 0,
        message_bytes: object_bytes * 4,
        object_key: format!("k{base}"),
        object_bytes,
        etag: None,
        row_groups: Vec::new(),
        uploaded_at_ms: 0,
        epoch: 0,
    }
}

fn config() -> TierConfig {
    TierConfig {
        compact_below_bytes: 100,
        compact_target_bytes: 250,
        ..TierConfig::default()
    }
}

fn ranges(runs: &[&[SegmentDescriptor]]) -> Vec<(u64, u64)> {
    runs.iter()
        .map(|run| (run[0].base_offset, run[run.len() - 1].next_offset))
        .collect()
}

#[test]
fn compaction_merges_adjacent_small_objects_up_to_the_target() {
    let segments = [
        descriptor(0, 10, 90),
        descriptor(10, 20, 90),
        descriptor(20, 30, 90), // would pass the target: starts the next run
        descriptor(30, 40, 50),
        descriptor(40, 50, 500), // large: never merged
        descriptor(50, 60, 10),
    ];
    let runs = compaction_runs(&segments, &config());
    assert_eq!(ranges(&runs), vec![(0, 20), (20, 40)]);
}

#[test]
fn compaction_never_merges_across_a_gap() {
    let segments = [
        descriptor(0, 10, 10),
        descriptor(15, 20, 10),
        descriptor(20, 30, 10),
    ];
    let runs = compaction_runs(&segments, &config());
    assert_eq!(ranges(&runs), vec![(15, 30)]);
}

fn rows(count: u64) -> Arc<Vec<Record>> {
    Arc::new(
        (0..count)
            .map(|offset| Record {
                offset,
                ..Record::default()
            })
            .collect(),
    )
}

#[test]
fn the_block_cache_evicts_the_least_recently_used_first() {
    let mut cache = BlockCache::new(300);
    cache.insert(("a".into(), 0), rows(1), 100);
    cache.insert(("b".into(), 0), rows(1), 100);
    cache.insert(("c".into(), 0), rows(1), 100);
    assert!(cache.get(&("a".into(), 0)).is_some());

    cache.insert(("d".into(), 0), rows(1), 100);

    assert!(cache.contains(&("a".into(), 0)));
    assert!(!cache.contains(&("b".into(), 0)));
    assert!(cache.contains(&("d".into(), 0)));
    assert!(cache.bytes <= 300);
}

#[test]
fn the_block_cache_holds_nothing_larger_than_its_bound() {
    let mut cache = BlockCache::new(50);
    cache.insert(("a".into(), 0), rows(1), 100);
    assert!(!cache.contains(&("a".into(), 0)));
    assert_eq!(cache.bytes, 0);
    cache.insert_footer("a", (0, Bytes::from_static(b"footer")));
    assert_eq!(
        cache.footer("a").map(|f| f.1),
        Some(Bytes::from_static(b"footer"))
    );
}
