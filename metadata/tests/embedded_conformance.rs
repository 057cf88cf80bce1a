//! The conformance suite on `EmbeddedStore`, plus what only a file-backed
//! store promises: data survives closing and reopening the file.

use std::sync::Arc;

use sava_metadata::conformance;
use sava_metadata::{Catalog, EmbeddedStore, MetadataStore, RangeOptions};

fn store() -> Arc<dyn MetadataStore> {
    Arc::new(EmbeddedStore::open_temporary().expect("open a temporary store"))
}

#[tokio::test]
async fn reads_see_own_writes() {
    conformance::reads_see_own_writes(store()).await;
}

#[tokio::test]
async fn commit_makes_writes_visible_to_new_transactions() {
    conformance::commit_makes_writes_visible_to_new_transactions(store()).await;
}

#[tokio::test]
async fn conflicting_read_fails_and_the_retry_loop_succeeds() {
    conformance::conflicting_read_fails_and_the_retry_loop_succeeds(store()).await;
}

#[tokio::test]
async fn range_read_conflicts_with_an_insert_into_the_range() {
    conformance::range_read_conflicts_with_an_insert_into_the_range(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_through_transact_are_isolated() {
    conformance::concurrent_increments_through_transact_are_isolated(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_atomic_adds_sum_without_conflicts() {
    conformance::concurrent_atomic_adds_sum_without_conflicts(store()).await;
}

#[tokio::test]
async fn range_reads_honour_direction_limit_and_exclusive_end() {
    conformance::range_reads_honour_direction_limit_and_exclusive_end(store()).await;
}

#[tokio::test]
async fn clear_range_removes_only_the_keys_in_the_range() {
    conformance::clear_range_removes_only_the_keys_in_the_range(store()).await;
}

#[tokio::test]
async fn watch_fires_once_per_change_and_not_before() {
    conformance::watch_fires_once_per_change_and_not_before(store()).await;
}

#[tokio::test]
async fn value_above_the_limit_is_refused_naming_the_key() {
    conformance::value_above_the_limit_is_refused_naming_the_key(store()).await;
}

#[tokio::test]
async fn idempotent_transaction_retried_after_unknown_result_applies_once() {
    conformance::idempotent_transaction_retried_after_unknown_result_applies_once(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_runs_on_fresh_stores() {
    conformance::run_all(|| async { store() }).await;
}

#[tokio::test]
async fn data_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().expect("create a temporary dir");
    let path = dir.path().join("nested/dirs/metadata.redb");

    let store = EmbeddedStore::open(&path).expect("open a new file");
    let mut tx = store.begin().await.expect("begin");
    tx.set(b"kept", b"value");
    tx.atomic_add(b"counter", 5);
    tx.commit().await.expect("commit");
    let catalog = Catalog::new(Arc::new(store));
    catalog.ensure_namespace("default").await.expect("ensure");
    drop(catalog);

    let url = format!("embedded://{}", path.display());
    let store = sava_metadata::open(&url)
        .await
        .expect("reopen through the url");
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(
        tx.get(b"kept").await.expect("get").as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(
        tx.get(b"counter").await.expect("get").as_deref(),
        Some(&5i64.to_le_bytes()[..])
    );
    let all = tx
        .get_range(b"", b"\xff", RangeOptions::default())
        .await
        .expect("range");
    assert_eq!(all.len(), 3);
    drop(tx);

    let catalog = Catalog::new(store);
    assert!(catalog.namespace("default").await.expect("read").is_some());
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().expect("create a temporary dir");
    let path = dir.path().join("metadata.redb");
    let _first = EmbeddedStore::open(&path).expect("open");

    let second = EmbeddedStore::open(&path);
    assert!(second.is_err(), "a locked file must not open twice");
}
