//! The conformance suite on `EtcdStore` over a real etcd, plus what only the
//! etcd backend promises: key prefixes, puts inside a cleared range, range
//! reads across pages, leases.
//!
//! One etcd serves the whole test binary (started by the first test, killed
//! when the last one drops it); every store gets a key prefix of its own.
//! Without the `etcd` binary the tests fail: tests/run.sh installs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sava_metadata::conformance;
use sava_metadata::etcd::test_server::EtcdTestServer;
use sava_metadata::{
    Catalog, DispatchMode, EtcdStore, MetadataError, MetadataStore, RangeOptions, TopicRecord,
};

/// The shared etcd plus a store under a prefix no other store uses.
struct Fixture {
    // Declared first so the store's connection closes before etcd dies.
    store: EtcdStore,
    server: Arc<EtcdTestServer>,
}

async fn fixture(test: &str) -> Fixture {
    let server = match EtcdTestServer::shared().await {
        Ok(server) => server,
        Err(error) => panic!("cannot run the etcd conformance tests: {error}"),
    };
    let store = open_under_fresh_prefix(&server, test).await;
    Fixture { store, server }
}

async fn open_under_fresh_prefix(server: &EtcdTestServer, test: &str) -> EtcdStore {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("test-{}-{sequence}-{test}", std::process::id());
    EtcdStore::open(&server.url(&prefix))
        .await
        .expect("open the test etcd")
}

impl Fixture {
    fn store(&self) -> Arc<dyn MetadataStore> {
        Arc::new(self.store.clone())
    }
}

#[tokio::test]
async fn reads_see_own_writes() {
    let etcd = fixture("own-writes").await;
    conformance::reads_see_own_writes(etcd.store()).await;
}

#[tokio::test]
async fn commit_makes_writes_visible_to_new_transactions() {
    let etcd = fixture("visible").await;
    conformance::commit_makes_writes_visible_to_new_transactions(etcd.store()).await;
}

#[tokio::test]
async fn conflicting_read_fails_and_the_retry_loop_succeeds() {
    let etcd = fixture("conflict").await;
    conformance::conflicting_read_fails_and_the_retry_loop_succeeds(etcd.store()).await;
}

#[tokio::test]
async fn range_read_conflicts_with_an_insert_into_the_range() {
    let etcd = fixture("phantom").await;
    conformance::range_read_conflicts_with_an_insert_into_the_range(etcd.store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_through_transact_are_isolated() {
    let etcd = fixture("increments").await;
    conformance::concurrent_increments_through_transact_are_isolated(etcd.store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_atomic_adds_sum_without_conflicts() {
    let etcd = fixture("atomic-add").await;
    conformance::concurrent_atomic_adds_sum_without_conflicts(etcd.store()).await;
}

#[tokio::test]
async fn range_reads_honour_direction_limit_and_exclusive_end() {
    let etcd = fixture("ranges").await;
    conformance::range_reads_honour_direction_limit_and_exclusive_end(etcd.store()).await;
}

#[tokio::test]
async fn clear_range_removes_only_the_keys_in_the_range() {
    let etcd = fixture("clear-range").await;
    conformance::clear_range_removes_only_the_keys_in_the_range(etcd.store()).await;
}

#[tokio::test]
async fn watch_fires_once_per_change_and_not_before() {
    let etcd = fixture("watch").await;
    conformance::watch_fires_once_per_change_and_not_before(etcd.store()).await;
}

#[tokio::test]
async fn value_above_the_limit_is_refused_naming_the_key() {
    let etcd = fixture("too-large").await;
    conformance::value_above_the_limit_is_refused_naming_the_key(etcd.store()).await;
}

#[tokio::test]
async fn idempotent_transaction_retried_after_unknown_result_applies_once() {
    let etcd = fixture("unknown-result").await;
    conformance::idempotent_transaction_retried_after_unknown_result_applies_once(etcd.store())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_runs_on_fresh_stores() {
    let etcd = fixture("whole-suite").await;
    let server = Arc::clone(&etcd.server);
    conformance::run_all(move || {
        let server = Arc::clone(&server);
        async move {
            let store = open_under_fresh_prefix(&server, "whole-suite").await;
            Arc::new(store) as Arc<dyn MetadataStore>
        }
    })
    .await;
}

#[tokio::test]
async fn stores_under_different_prefixes_do_not_see_each_other() {
    let etcd = fixture("prefix-a").await;
    let other = open_under_fresh_prefix(&etcd.server, "prefix-b").await;

    let mut tx = etcd.store.begin().await.expect("begin");
    tx.set(b"shared-name", b"a");
    tx.commit().await.expect("commit");

    let mut tx = other.begin().await.expect("begin");
    assert_eq!(tx.get(b"shared-name").await.expect("get"), None);
    let all = tx
        .get_range(b"", b"\xff", RangeOptions::default())
        .await
        .expect("range");
    assert!(all.is_empty(), "another prefix leaked in: {all:?}");
}

#[tokio::test]
async fn range_reads_page_through_more_keys_than_one_request_returns() {
    let etcd = fixture("pages").await;
    const KEYS: usize = 600;

    // etcd takes at most 128 writes per transaction by default.
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let mut tx = etcd.store.begin().await.expect("begin");
        for index in chunk {
            tx.set(format!("k{index:04}").as_bytes(), b"v");
        }
        tx.commit().await.expect("commit");
    }

    let mut tx = etcd.store.begin().await.expect("begin");
    tx.clear_range(b"k0100", b"k0400");
    let forward = tx
        .get_range(b"k", b"l", RangeOptions::default())
        .await
        .expect("range");
    assert_eq!(forward.len(), KEYS - 300);
    assert_eq!(forward[100].key.as_ref(), b"k0400");

    let reverse = tx
        .get_range(b"k", b"l", RangeOptions::limit(250).reversed())
        .await
        .expect("range");
    assert_eq!(reverse.len(), 250);
    assert_eq!(reverse[0].key.as_ref(), b"k0599");
    assert_eq!(reverse[199].key.as_ref(), b"k0400");
    assert_eq!(reverse[200].key.as_ref(), b"k0099");
    assert_eq!(reverse[249].key.as_ref(), b"k0050");

    let limited = tx
        .get_range(b"k0050", b"l", RangeOptions::limit(60))
        .await
        .expect("range");
    assert_eq!(limited[49].key.as_ref(), b"k0099");
    assert_eq!(limited[50].key.as_ref(), b"k0400");
}

#[tokio::test]
async fn a_read_key_deleted_by_another_commit_causes_a_conflict() {
    let etcd = fixture("deleted").await;
    let mut tx = etcd.store.begin().await.expect("begin");
    tx.set(b"range/a", b"1");
    tx.set(b"point", b"1");
    tx.commit().await.expect("commit");

    for deleted in [&b"range/a"[..], b"point"] {
        let mut reader = etcd.store.begin().await.expect("begin");
        let seen = reader
            .get_range(b"range/", b"range0", RangeOptions::default())
            .await
            .expect("range");
        assert_eq!(seen.len(), 1);
        reader.get(b"point").await.expect("get");

        let mut deleter = etcd.store.begin().await.expect("begin");
        deleter.clear(deleted);
        deleter.commit().await.expect("commit");

        reader.set(b"summary", b"one key");
        let outcome = reader.commit().await;
        assert!(
            matches!(outcome, Err(MetadataError::Conflict)),
            "a deleted read key must cause Conflict, got {outcome:?}"
        );

        let mut restore = etcd.store.begin().await.expect("begin");
        restore.set(deleted, b"1");
        restore.commit().await.expect("commit");
    }
}

#[tokio::test]
async fn a_commit_with_too_many_writes_names_the_etcd_limit() {
    let etcd = fixture("too-many").await;
    let mut tx = etcd.store.begin().await.expect("begin");
    for index in 0..200 {
        tx.set(format!("k{index:04}").as_bytes(), b"v");
    }
    match tx.commit().await {
        Err(error @ MetadataError::Backend(_)) => {
            assert!(error.to_string().contains("--max-txn-ops"), "{error}");
        }
        other => panic!("200 writes must exceed etcd's default limit, got {other:?}"),
    }
}

#[tokio::test]
async fn leased_keys_live_while_kept_alive_and_vanish_when_revoked() {
    let etcd = fixture("leases").await;
    let store = &etcd.store;
    let lease = store
        .grant_lease(Duration::from_secs(5))
        .await
        .expect("grant");
    store
        .put_with_lease(b"brokers/1", b"alive", lease)
        .await
        .expect("put with lease");
    store.keep_alive(lease).await.expect("keep alive");

    let mut tx = store.begin().await.expect("begin");
    let value = tx.get(b"brokers/1").await.expect("get");
    assert_eq!(value.as_deref(), Some(&b"alive"[..]));
    drop(tx);

    let watch = store.watch(b"brokers/1").await.expect("watch");
    store.revoke_lease(lease).await.expect("revoke");
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("revoking must delete the key, firing its watch")
        .expect("watch");

    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.get(b"brokers/1").await.expect("get"), None);
    match store.keep_alive(lease).await {
        Err(MetadataError::NotFound { what }) => assert!(what.contains("lease"), "{what}"),
        other => panic!("a revoked lease must be NotFound, got {other:?}"),
    }
    match store.put_with_lease(b"brokers/2", b"late", lease).await {
        Err(MetadataError::NotFound { .. }) => {}
        other => panic!("a put with a revoked lease must be NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_left_without_keep_alive_expires_with_its_keys() {
    let etcd = fixture("lease-expiry").await;
    let store = &etcd.store;
    let lease = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant");
    store
        .put_with_lease(b"brokers/1", b"alive", lease)
        .await
        .expect("put with lease");

    // etcd may raise the TTL to its minimum and expires leases on its own
    // schedule: poll until the key is gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut tx = store.begin().await.expect("begin");
        if tx.get(b"brokers/1").await.expect("get").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the leased key outlived its TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn open_through_the_url_reaches_the_same_keys() {
    let etcd = fixture("url").await;
    let mut tx = etcd.store.begin().await.expect("begin");
    tx.set(b"k", b"v");
    tx.commit().await.expect("commit");

    let prefix = String::from_utf8(etcd.store.prefix().to_vec()).expect("utf-8 prefix");
    let url = etcd.server.url(&prefix);
    let store = sava_metadata::open(&url).await.expect("open by url");
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.get(b"k").await.expect("get").as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn a_commit_that_loses_etcd_reports_an_unknown_result() {
    // An etcd of its own, since this test kills it.
    let server = match EtcdTestServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("cannot run the etcd conformance tests: {error}"),
    };
    let store = EtcdStore::open(&server.url("lost"))
        .await
        .expect("open the test etcd");
    let mut tx = store.begin().await.expect("begin");
    tx.get(b"k").await.expect("get");
    tx.set(b"k", b"v");
    let watch = store.watch(b"k").await.expect("watch");
    drop(server);

    let outcome = tx.commit().await;
    assert!(
        matches!(outcome, Err(MetadataError::UnknownResult)),
        "a commit without etcd must be UnknownResult, got {outcome:?}"
    );
    let mut tx = store.begin().await.expect("begin");
    match tx.get(b"k").await {
        Err(error @ MetadataError::Unavailable { .. }) => assert!(error.is_retryable()),
        other => panic!("a read without etcd must be Unavailable, got {other:?}"),
    }
    match tokio::time::timeout(Duration::from_secs(30), watch).await {
        Ok(Err(MetadataError::Unavailable { .. })) => {}
        other => panic!("a watch without etcd must end Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn the_catalog_creates_lists_and_deletes_topics_on_etcd() {
    let etcd = fixture("catalog").await;
    let catalog = Catalog::new(etcd.store());
    let topic = |name: &str, partitions| TopicRecord {
        name: name.to_owned(),
        partitions,
        partition_of: None,
        dispatch_mode: DispatchMode::NonReliable,
        schema: None,
        created_at_ms: 0,
    };

    catalog.ensure_namespace("ns").await.expect("ensure");
    catalog
        .create_topic(topic("/ns/orders", 0))
        .await
        .expect("create");
    let (_, partitions) = catalog
        .create_partitioned_topic(topic("/ns/events", 4))
        .await
        .expect("create partitioned");
    assert_eq!(partitions.len(), 4);

    let listed = catalog.list_topics("ns").await.expect("list");
    assert_eq!(listed.len(), 6, "orders, events and its 4 partitions");
    catalog.delete_topic("/ns/orders").await.expect("delete");
    assert!(catalog.topic("/ns/orders").await.expect("read").is_none());
    assert!(matches!(
        catalog.delete_namespace("ns").await,
        Err(MetadataError::NotEmpty { .. })
    ));
}
