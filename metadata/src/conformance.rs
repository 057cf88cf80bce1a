//! The conformance suite every [`MetadataStore`] backend passes.
//!
//! Each function takes a fresh store, drives it through one behaviour of the
//! trait and panics with a message naming the broken promise. A backend's
//! tests call [`run_all`] or, for one test per behaviour, each function on
//! its own. Keys live under `conformance/<test>/`, out of the way of other
//! data, and each test expects its keys to start out missing. Available to
//! other crates behind the `testsuite` feature, with
//! [`UnknownResultAfterCommit`], a store wrapper for testing retries.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;

use crate::error::{MetadataError, Result};
use crate::keys::display_key;
use crate::store::{KeyValue, MetadataStore, RangeOptions, Transaction, Watch, transact};

/// How long a watch that must stay quiet is given to fire anyway.
const QUIET: Duration = Duration::from_millis(100);
/// How long a watch that must fire is given to do so.
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs every test of the suite, each on a store from `store_factory`.
pub async fn run_all<F, Fut>(store_factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MetadataStore>>,
{
    reads_see_own_writes(store_factory().await).await;
    commit_makes_writes_visible_to_new_transactions(store_factory().await).await;
    conflicting_read_fails_and_the_retry_loop_succeeds(store_factory().await).await;
    range_read_conflicts_with_an_insert_into_the_range(store_factory().await).await;
    concurrent_increments_through_transact_are_isolated(store_factory().await).await;
    concurrent_atomic_adds_sum_without_conflicts(store_factory().await).await;
    range_reads_honour_direction_limit_and_exclusive_end(store_factory().await).await;
    clear_range_removes_only_the_keys_in_the_range(store_factory().await).await;
    watch_fires_once_per_change_and_not_before(store_factory().await).await;
    value_above_the_limit_is_refused_naming_the_key(store_factory().await).await;
    idempotent_transaction_retried_after_unknown_result_applies_once(store_factory().await).await;
}

/// Reads inside a transaction see its own sets, clears and adds.
pub async fn reads_see_own_writes(store: Arc<dyn MetadataStore>) {
    let key = test_key("own-writes", "a");
    let counter = test_key("own-writes", "counter");
    let mut tx = begin(&store).await;

    assert_eq!(
        get(tx.as_mut(), &key).await,
        None,
        "a fresh key must be missing"
    );
    tx.set(&key, b"1");
    assert_eq!(get(tx.as_mut(), &key).await.as_deref(), Some(&b"1"[..]));
    tx.clear(&key);
    assert_eq!(
        get(tx.as_mut(), &key).await,
        None,
        "a cleared key must read as missing"
    );
    tx.set(&key, b"2");

    tx.atomic_add(&counter, 3);
    tx.atomic_add(&counter, 4);
    assert_eq!(
        get(tx.as_mut(), &counter).await.as_deref(),
        Some(&7i64.to_le_bytes()[..])
    );

    let (begin_key, end_key) = test_range("own-writes");
    let pairs = range(tx.as_mut(), &begin_key, &end_key, RangeOptions::default()).await;
    assert_eq!(
        keys_of(&pairs),
        ["a", "counter"],
        "range reads must see own writes"
    );
    commit(tx).await;
}

/// Committed writes are visible to transactions begun later; uncommitted and
/// dropped ones are not.
pub async fn commit_makes_writes_visible_to_new_transactions(store: Arc<dyn MetadataStore>) {
    let key = test_key("visible", "a");
    let dropped_key = test_key("visible", "dropped");

    let mut writer = begin(&store).await;
    writer.set(&key, b"value");
    let mut reader = begin(&store).await;
    assert_eq!(
        get(reader.as_mut(), &key).await,
        None,
        "uncommitted writes must stay hidden"
    );
    commit(writer).await;

    let mut dropped = begin(&store).await;
    dropped.set(&dropped_key, b"value");
    drop(dropped);

    let mut reader = begin(&store).await;
    assert_eq!(
        get(reader.as_mut(), &key).await.as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(
        get(reader.as_mut(), &dropped_key).await,
        None,
        "a dropped transaction must write nothing"
    );
}

/// A transaction that read a key another one changed and committed meanwhile
/// fails with `Conflict`; one that read other keys commits; `transact` retries
/// a conflicted read-modify-write until it succeeds.
pub async fn conflicting_read_fails_and_the_retry_loop_succeeds(store: Arc<dyn MetadataStore>) {
    let key = test_key("conflict", "a");
    let other = test_key("conflict", "b");
    set_committed(&store, &key, b"0").await;

    let mut stale = begin(&store).await;
    get(stale.as_mut(), &key).await;
    let mut disjoint = begin(&store).await;
    get(disjoint.as_mut(), &other).await;

    let mut winner = begin(&store).await;
    winner.set(&key, b"1");
    commit(winner).await;

    stale.set(&other, b"from the stale transaction");
    match stale.commit().await {
        Err(MetadataError::Conflict) => {}
        other => panic!("a stale read must end in Conflict, got {other:?}"),
    }
    disjoint.set(&other, b"from the disjoint transaction");
    commit(disjoint).await;

    let attempts = Arc::new(AtomicU32::new(0));
    let mut stale = begin(&store).await;
    get(stale.as_mut(), &key).await;
    set_committed(&store, &key, b"2").await;
    stale.set(&key, b"lost");
    assert!(matches!(stale.commit().await, Err(MetadataError::Conflict)));
    increment(&store, &key, &attempts).await;
    assert_eq!(
        read_committed(&store, &key).await.as_deref(),
        Some(&b"3"[..])
    );
}

/// A range read conflicts with a concurrent insert of a new key into that
/// range (no phantoms), not with one outside it.
pub async fn range_read_conflicts_with_an_insert_into_the_range(store: Arc<dyn MetadataStore>) {
    let (begin_key, end_key) = test_range("phantom");
    let inside = test_key("phantom", "new");
    let outside = test_key("phantom-elsewhere", "new");

    let mut scanner = begin(&store).await;
    range(
        scanner.as_mut(),
        &begin_key,
        &end_key,
        RangeOptions::default(),
    )
    .await;
    set_committed(&store, &outside, b"x").await;
    let mut unaffected = begin(&store).await;
    range(
        unaffected.as_mut(),
        &begin_key,
        &end_key,
        RangeOptions::default(),
    )
    .await;
    unaffected.set(&test_key("phantom-elsewhere", "summary"), b"0 keys");
    commit(unaffected).await;

    set_committed(&store, &inside, b"x").await;
    scanner.set(&test_key("phantom-elsewhere", "summary"), b"0 keys");
    match scanner.commit().await {
        Err(MetadataError::Conflict) => {}
        other => panic!("an insert into a read range must cause Conflict, got {other:?}"),
    }
}

/// Concurrent tasks that each increment one counter by read-modify-write
/// through `transact` end with the counter at exactly their number.
pub async fn concurrent_increments_through_transact_are_isolated(store: Arc<dyn MetadataStore>) {
    const TASKS: u32 = 10;
    let key = test_key("increments", "counter");
    let attempts = Arc::new(AtomicU32::new(0));

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            let key = key.clone();
            let attempts = Arc::clone(&attempts);
            tokio::spawn(async move { increment(&store, &key, &attempts).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("an incrementing task panicked");
    }

    let expected = TASKS.to_string();
    assert_eq!(
        read_committed(&store, &key).await.as_deref(),
        Some(expected.as_bytes()),
        "lost update"
    );
    assert!(attempts.load(Ordering::Relaxed) >= TASKS);
}

/// Atomic adds from many concurrent transactions never conflict and sum up.
pub async fn concurrent_atomic_adds_sum_without_conflicts(store: Arc<dyn MetadataStore>) {
    const TASKS: i64 = 20;
    let key = test_key("atomic-add", "sum");

    let mut transactions = Vec::new();
    for delta in 1..=TASKS {
        let mut tx = begin(&store).await;
        tx.atomic_add(&key, delta);
        transactions.push(tx);
    }
    let commits: Vec<_> = transactions
        .into_iter()
        .map(|tx| tokio::spawn(async move { tx.commit().await }))
        .collect();
    for commit in commits {
        let outcome = commit.await.expect("a committing task panicked");
        assert!(
            outcome.is_ok(),
            "atomic adds must not conflict, got {outcome:?}"
        );
    }

    let expected = TASKS * (TASKS + 1) / 2;
    let stored = read_committed(&store, &key).await;
    assert_eq!(stored.as_deref(), Some(&expected.to_le_bytes()[..]));
}

/// Range reads run forwards and in reverse, stop at a limit and never
/// include their end key.
pub async fn range_reads_honour_direction_limit_and_exclusive_end(store: Arc<dyn MetadataStore>) {
    let mut tx = begin(&store).await;
    for name in ["a", "b", "c", "d", "e"] {
        tx.set(&test_key("ranges", name), name.as_bytes());
    }
    tx.set(&test_key("ranges-next", "a"), b"outside");
    commit(tx).await;

    let begin_key = test_key("ranges", "a");
    let end_key = test_key("ranges", "e");
    let middle = test_key("ranges", "c");
    let mut tx = begin(&store).await;
    let read = |options| range_keys(&store, &begin_key, &end_key, options);

    assert_eq!(read(RangeOptions::default()).await, ["a", "b", "c", "d"]);
    assert_eq!(
        read(RangeOptions::default().reversed()).await,
        ["d", "c", "b", "a"]
    );
    assert_eq!(read(RangeOptions::limit(2)).await, ["a", "b"]);
    assert_eq!(read(RangeOptions::limit(2).reversed()).await, ["d", "c"]);
    assert!(read(RangeOptions::limit(0)).await.is_empty());
    assert!(
        range(tx.as_mut(), &end_key, &begin_key, RangeOptions::default())
            .await
            .is_empty()
    );
    let pairs = range(tx.as_mut(), &begin_key, &middle, RangeOptions::default()).await;
    assert_eq!(keys_of(&pairs), ["a", "b"]);
    assert_eq!(pairs[1].value.as_ref(), b"b");
}

/// `clear_range` removes the keys in `[begin, end)`, visibly to the same
/// transaction first, and nothing else.
pub async fn clear_range_removes_only_the_keys_in_the_range(store: Arc<dyn MetadataStore>) {
    let mut tx = begin(&store).await;
    for name in ["a", "b", "c", "d", "e"] {
        tx.set(&test_key("clear-range", name), name.as_bytes());
    }
    commit(tx).await;

    let (begin_key, end_key) = test_range("clear-range");
    let mut tx = begin(&store).await;
    tx.clear_range(&test_key("clear-range", "b"), &test_key("clear-range", "d"));
    tx.clear(&test_key("clear-range", "e"));
    let pairs = range(tx.as_mut(), &begin_key, &end_key, RangeOptions::default()).await;
    assert_eq!(
        keys_of(&pairs),
        ["a", "d"],
        "a transaction must see its own range clear"
    );
    tx.set(&test_key("clear-range", "c"), b"again");
    commit(tx).await;

    let after = range_keys(&store, &begin_key, &end_key, RangeOptions::default()).await;
    assert_eq!(after, ["a", "c", "d"]);
}

/// A watch resolves after a committed change of its key, not before it and
/// not for other keys; a clear and a range clear count as changes.
pub async fn watch_fires_once_per_change_and_not_before(store: Arc<dyn MetadataStore>) {
    let key = test_key("watch", "a");
    let neighbour = test_key("watch", "b");
    set_committed(&store, &key, b"before the watch").await;

    let mut watch = watch_key(&store, &key).await;
    assert_quiet(&mut watch, "no change yet").await;
    set_committed(&store, &neighbour, b"x").await;
    assert_quiet(&mut watch, "only another key changed").await;
    let mut uncommitted = begin(&store).await;
    uncommitted.set(&key, b"never committed");
    drop(uncommitted);
    assert_quiet(&mut watch, "the change was never committed").await;

    let other_watch = watch_key(&store, &key).await;
    set_committed(&store, &key, b"changed").await;
    assert_fires(watch, "the key was set").await;
    assert_fires(other_watch, "the key was set (second watch)").await;

    let watch = watch_key(&store, &key).await;
    let mut tx = begin(&store).await;
    tx.clear(&key);
    commit(tx).await;
    assert_fires(watch, "the key was cleared").await;

    set_committed(&store, &key, b"back").await;
    let watch = watch_key(&store, &key).await;
    let (begin_key, end_key) = test_range("watch");
    let mut tx = begin(&store).await;
    tx.clear_range(&begin_key, &end_key);
    commit(tx).await;
    assert_fires(watch, "the key's range was cleared").await;
}

/// A value above `max_value_bytes` is refused with `ValueTooLarge` naming the
/// key; a value of exactly the limit is accepted.
pub async fn value_above_the_limit_is_refused_naming_the_key(store: Arc<dyn MetadataStore>) {
    let limit = store.max_value_bytes();
    let key = test_key("too-large", "value");

    let mut tx = begin(&store).await;
    tx.set(&key, &vec![7; limit + 1]);
    match tx.commit().await {
        Err(MetadataError::ValueTooLarge {
            key: named,
            size,
            limit: reported,
        }) => {
            assert_eq!(named, display_key(&key), "the error must name the key");
            assert_eq!((size, reported), (limit + 1, limit));
        }
        other => panic!("an oversized value must be refused, got {other:?}"),
    }
    assert_eq!(
        read_committed(&store, &key).await,
        None,
        "nothing must be written"
    );

    set_committed(&store, &key, &vec![7; limit]).await;
    assert_eq!(
        read_committed(&store, &key).await.map(|value| value.len()),
        Some(limit)
    );
}

/// A transaction retried after `UnknownResult` applies once when it checks a
/// marker key of its own first, as every Sava transaction does.
///
/// `UnknownResult` is simulated by a wrapper store whose commit first commits
/// for real and then reports `UnknownResult`, once. A control run without the
/// marker check applies twice, which proves the first commit did land.
pub async fn idempotent_transaction_retried_after_unknown_result_applies_once(
    store: Arc<dyn MetadataStore>,
) {
    let unchecked_counter = test_key("unknown-result", "unchecked");
    let lying = UnknownResultAfterCommit::new(Arc::clone(&store), 1);
    let runs = Arc::new(AtomicU32::new(0));
    transact(&lying, |tx| {
        let counter = unchecked_counter.clone();
        let runs = Arc::clone(&runs);
        async move {
            runs.fetch_add(1, Ordering::Relaxed);
            add_one(tx, &counter).await
        }
        .boxed()
    })
    .await
    .expect("the unchecked transaction must succeed on retry");
    assert_eq!(
        runs.load(Ordering::Relaxed),
        2,
        "UnknownResult must cause one retry"
    );
    assert_eq!(
        read_committed(&store, &unchecked_counter).await.as_deref(),
        Some(&b"2"[..])
    );

    let counter = test_key("unknown-result", "counter");
    let marker = test_key("unknown-result", "marker-7f3a");
    let lying = UnknownResultAfterCommit::new(Arc::clone(&store), 1);
    transact(&lying, |tx| {
        let counter = counter.clone();
        let marker = marker.clone();
        async move {
            if tx.get(&marker).await?.is_some() {
                return Ok(());
            }
            tx.set(&marker, b"applied");
            add_one(tx, &counter).await
        }
        .boxed()
    })
    .await
    .expect("the idempotent transaction must succeed on retry");
    assert_eq!(
        read_committed(&store, &counter).await.as_deref(),
        Some(&b"1"[..])
    );
}

/// A store wrapper whose first `failures` successful commits report
/// `UnknownResult` although they were applied: a test double for retries.
pub struct UnknownResultAfterCommit {
    inner: Arc<dyn MetadataStore>,
    failures_left: Arc<AtomicU32>,
}

impl UnknownResultAfterCommit {
    /// Wraps `inner`; its next `failures` successful commits lie.
    pub fn new(inner: Arc<dyn MetadataStore>, failures: u32) -> Self {
        UnknownResultAfterCommit {
            inner,
            failures_left: Arc::new(AtomicU32::new(failures)),
        }
    }

    /// How many commits will still report `UnknownResult`.
    pub fn failures_left(&self) -> u32 {
        self.failures_left.load(Ordering::Acquire)
    }
}

#[async_trait]
impl MetadataStore for UnknownResultAfterCommit {
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(UnknownResultTransaction {
            inner: self.inner.begin().await?,
            failures_left: Arc::clone(&self.failures_left),
        }))
    }

    async fn watch(&self, key: &[u8]) -> Result<Watch> {
        self.inner.watch(key).await
    }

    fn max_value_bytes(&self) -> usize {
        self.inner.max_value_bytes()
    }
}

struct UnknownResultTransaction {
    inner: Box<dyn Transaction>,
    failures_left: Arc<AtomicU32>,
}

#[async_trait]
impl Transaction for UnknownResultTransaction {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.get(key).await
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>> {
        self.inner.get_range(begin, end, options).await
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.inner.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.inner.clear_range(begin, end);
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.inner.atomic_add(key, delta);
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await?;
        let failed = self
            .failures_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            });
        match failed {
            Ok(_) => Err(MetadataError::UnknownResult),
            Err(_) => Ok(()),
        }
    }
}

fn test_key(test: &str, name: &str) -> Vec<u8> {
    format!("conformance/{test}/{name}").into_bytes()
}

/// The range of every key of one test: `conformance/<test>/` up to `0`,
/// the byte after `/`.
fn test_range(test: &str) -> (Vec<u8>, Vec<u8>) {
    let begin = format!("conformance/{test}/").into_bytes();
    let end = format!("conformance/{test}0").into_bytes();
    (begin, end)
}

fn keys_of(pairs: &[KeyValue]) -> Vec<String> {
    pairs
        .iter()
        .map(|pair| {
            let key = String::from_utf8_lossy(&pair.key);
            key.rsplit('/').next().unwrap_or_default().to_owned()
        })
        .collect()
}

async fn begin(store: &Arc<dyn MetadataStore>) -> Box<dyn Transaction> {
    store.begin().await.expect("begin must succeed")
}

async fn commit(tx: Box<dyn Transaction>) {
    tx.commit().await.expect("commit must succeed");
}

async fn get(tx: &mut dyn Transaction, key: &[u8]) -> Option<Bytes> {
    tx.get(key).await.expect("get must succeed")
}

async fn range(
    tx: &mut dyn Transaction,
    begin: &[u8],
    end: &[u8],
    options: RangeOptions,
) -> Vec<KeyValue> {
    tx.get_range(begin, end, options)
        .await
        .expect("get_range must succeed")
}

async fn range_keys(
    store: &Arc<dyn MetadataStore>,
    begin_key: &[u8],
    end_key: &[u8],
    options: RangeOptions,
) -> Vec<String> {
    let mut tx = begin(store).await;
    keys_of(&range(tx.as_mut(), begin_key, end_key, options).await)
}

async fn set_committed(store: &Arc<dyn MetadataStore>, key: &[u8], value: &[u8]) {
    let mut tx = begin(store).await;
    tx.set(key, value);
    commit(tx).await;
}

async fn read_committed(store: &Arc<dyn MetadataStore>, key: &[u8]) -> Option<Bytes> {
    let mut tx = begin(store).await;
    get(tx.as_mut(), key).await
}

async fn watch_key(store: &Arc<dyn MetadataStore>, key: &[u8]) -> Watch {
    store.watch(key).await.expect("watch must succeed")
}

async fn assert_quiet(watch: &mut Watch, why: &str) {
    let fired = tokio::time::timeout(QUIET, watch).await;
    assert!(fired.is_err(), "the watch fired too early: {why}");
}

async fn assert_fires(watch: impl Future<Output = Result<()>>, why: &str) {
    match tokio::time::timeout(PATIENCE, watch).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("the watch failed ({why}): {error}"),
        Err(_) => panic!("the watch did not fire within {PATIENCE:?}: {why}"),
    }
}

/// Reads the decimal counter at `key` (missing is 0) and writes it plus one.
async fn add_one(tx: &mut dyn Transaction, key: &[u8]) -> Result<()> {
    let current = match tx.get(key).await? {
        Some(value) => std::str::from_utf8(&value)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .expect("the counter must hold a decimal number"),
        None => 0,
    };
    tx.set(key, (current + 1).to_string().as_bytes());
    Ok(())
}

async fn increment(store: &Arc<dyn MetadataStore>, key: &[u8], attempts: &Arc<AtomicU32>) {
    transact(store.as_ref(), |tx| {
        let key = key.to_vec();
        let attempts = Arc::clone(attempts);
        async move {
            attempts.fetch_add(1, Ordering::Relaxed);
            add_one(tx, &key).await
        }
        .boxed()
    })
    .await
    .expect("transact must overcome conflicts");
}
