//! The conformance suite on `FdbStore`, against the FoundationDB cluster
//! whose cluster file `SAVA_TEST_FDB_CLUSTER_FILE` names (the compose file in
//! deploy/ provides one). Without that variable each test says it skipped
//! and passes; without the `foundationdb` feature this file is empty.
//!
//! Every store works under a fresh key prefix, cleared when its test passes,
//! so runs and tests never see each other's keys.
#![cfg(feature = "foundationdb")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sava_metadata::conformance;
use sava_metadata::{FdbStore, MetadataStore};

const CLUSTER_FILE_VAR: &str = "SAVA_TEST_FDB_CLUSTER_FILE";

/// A store under a fresh prefix, whose keys are cleared on drop.
struct Fixture {
    store: FdbStore,
}

/// The fixture, or `None` (after saying so) when no cluster is configured.
async fn fixture(test: &str) -> Option<Fixture> {
    let Ok(cluster_file) = std::env::var(CLUSTER_FILE_VAR) else {
        println!("skipped {test}: {CLUSTER_FILE_VAR} names no foundationdb cluster file");
        return None;
    };
    Some(Fixture {
        store: open_under_fresh_prefix(cluster_file, test).await,
    })
}

async fn open_under_fresh_prefix(cluster_file: String, test: &str) -> FdbStore {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let prefix = format!("sava-test/{nanos}-{sequence}-{test}/").into_bytes();

    tokio::task::spawn_blocking(move || FdbStore::open_with_prefix(Some(&cluster_file), &prefix))
        .await
        .expect("the opening task panicked")
        .expect("open the foundationdb cluster")
}

impl Fixture {
    fn store(&self) -> Arc<dyn MetadataStore> {
        Arc::new(self.store.clone())
    }

    /// Removes every key the test wrote.
    async fn clean_up(self) {
        let mut tx = self.store.begin().await.expect("begin");
        tx.clear_range(b"", b"\xff");
        tx.commit().await.expect("clear the test's keys");
    }
}

macro_rules! conformance_test {
    ($(#[$attribute:meta])* $name:ident) => {
        $(#[$attribute])*
        async fn $name() {
            let Some(fdb) = fixture(stringify!($name)).await else {
                return;
            };
            conformance::$name(fdb.store()).await;
            fdb.clean_up().await;
        }
    };
}

conformance_test!(
    #[tokio::test]
    reads_see_own_writes
);
conformance_test!(
    #[tokio::test]
    commit_makes_writes_visible_to_new_transactions
);
conformance_test!(
    #[tokio::test]
    conflicting_read_fails_and_the_retry_loop_succeeds
);
conformance_test!(
    #[tokio::test]
    range_read_conflicts_with_an_insert_into_the_range
);
conformance_test!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    concurrent_increments_through_transact_are_isolated
);
conformance_test!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    concurrent_atomic_adds_sum_without_conflicts
);
conformance_test!(
    #[tokio::test]
    range_reads_honour_direction_limit_and_exclusive_end
);
conformance_test!(
    #[tokio::test]
    clear_range_removes_only_the_keys_in_the_range
);
conformance_test!(
    #[tokio::test]
    watch_fires_once_per_change_and_not_before
);
conformance_test!(
    #[tokio::test]
    value_above_the_limit_is_refused_naming_the_key
);
conformance_test!(
    #[tokio::test]
    idempotent_transaction_retried_after_unknown_result_applies_once
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_runs_on_fresh_stores() {
    let Ok(cluster_file) = std::env::var(CLUSTER_FILE_VAR) else {
        println!("skipped the_whole_suite_runs_on_fresh_stores: {CLUSTER_FILE_VAR} is not set");
        return;
    };
    let opened = Arc::new(Mutex::new(Vec::new()));
    let factory_opened = Arc::clone(&opened);
    conformance::run_all(move || {
        let cluster_file = cluster_file.clone();
        let opened = Arc::clone(&factory_opened);
        async move {
            let store = open_under_fresh_prefix(cluster_file, "whole-suite").await;
            opened.lock().expect("the store list").push(store.clone());
            Arc::new(store) as Arc<dyn MetadataStore>
        }
    })
    .await;

    let stores = std::mem::take(&mut *opened.lock().expect("the store list"));
    for store in stores {
        Fixture { store }.clean_up().await;
    }
}
