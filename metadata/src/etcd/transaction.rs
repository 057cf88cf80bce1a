//! One transaction of `EtcdStore`: reads at a snapshot revision, the read
//! set they leave behind, and the commit as one compare-and-swap `Txn`.
//!
//! Reads go to etcd, served at the revision of the transaction's first read;
//! the buffered writes are merged in as in every backend. The commit sends
//! the read set as compares and the writes as the `Txn`'s success branch, so
//! it applies whole or not at all. Nothing is sent before the commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, KvClient, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse,
};

use super::{ETCD_MAX_VALUE_BYTES, Inner, PAGE_KEYS, commit_error, read_error};
use crate::buffer::{KeyRange, Lookup, Pending, WriteBuffer, add_le};
use crate::error::{MetadataError, Result};
use crate::store::{KeyValue, RangeOptions, Transaction};

/// How many times a commit with atomic adds re-reads its counters after
/// another commit moved them, before it reports `Conflict`.
const ADD_ATTEMPTS: usize = 64;
/// How many keys beyond its limit a limited range read asks for at first,
/// for the stored keys this transaction's own clears may hide.
const LIMIT_SLACK: usize = 8;

pub(super) struct EtcdTransaction {
    inner: Arc<Inner>,
    kv: KvClient,
    /// The revision every read is served at, taken from the first read.
    snapshot_revision: Option<i64>,
    writes: WriteBuffer,
    /// Every stored key read, by its etcd key, with its `mod_revision` at
    /// the snapshot (0 when it was absent).
    read_keys: BTreeMap<Vec<u8>, i64>,
    /// Every range read, in etcd keys: no key in it may be written after the
    /// snapshot.
    read_ranges: Vec<KeyRange>,
}

/// The stored pairs of one range read, fetched page by page.
struct RangeScan {
    fetched: Vec<etcd_client::KeyValue>,
    exhausted: bool,
}

/// A counter an atomic add writes, as last read from etcd.
struct Counter {
    key: Vec<u8>,
    delta: i64,
    value: Option<Vec<u8>>,
    mod_revision: i64,
}

impl EtcdTransaction {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        EtcdTransaction {
            kv: inner.kv.clone(),
            inner,
            snapshot_revision: None,
            writes: WriteBuffer::new(ETCD_MAX_VALUE_BYTES),
            read_keys: BTreeMap::new(),
            read_ranges: Vec::new(),
        }
    }

    /// Reads at the snapshot revision, taking it from this read if it is the
    /// first.
    async fn read(&mut self, key: Vec<u8>, options: GetOptions) -> Result<GetResponse> {
        let options = match self.snapshot_revision {
            Some(revision) => options.with_revision(revision),
            None => options,
        };
        let response = self
            .kv
            .get(key, Some(options))
            .await
            .map_err(|error| read_error("get", error))?;

        if self.snapshot_revision.is_none() {
            let header = response.header().ok_or_else(|| {
                MetadataError::backend("etcd answered a read without a response header")
            })?;
            self.snapshot_revision = Some(header.revision());
        }
        Ok(response)
    }

    async fn stored(&mut self, key: &[u8]) -> Result<Option<Bytes>> {
        let stored_key = self.inner.stored_key(key);
        let mut response = self.read(stored_key.clone(), GetOptions::new()).await?;

        let pair = response.take_kvs().into_iter().next();
        let mod_revision = pair.as_ref().map_or(0, |pair| pair.mod_revision());
        self.read_keys.insert(stored_key, mod_revision);
        Ok(pair.map(|pair| Bytes::from(pair.into_key_value().1)))
    }

    /// Fetches the next page of `[begin, end)` (etcd keys) after what `scan`
    /// holds, in the scan's direction.
    async fn fetch_page(
        &mut self,
        scan: &mut RangeScan,
        (begin, end): (&[u8], &[u8]),
        reverse: bool,
        page: usize,
    ) -> Result<()> {
        let (from, to) = match scan.fetched.last() {
            None => (begin.to_vec(), end.to_vec()),
            Some(last) if reverse => (begin.to_vec(), last.key().to_vec()),
            Some(last) => (KeyRange::point(last.key()).end, end.to_vec()),
        };
        if from >= to {
            scan.exhausted = true;
            return Ok(());
        }

        let mut options = GetOptions::new()
            .with_range(to)
            .with_limit(i64::try_from(page).unwrap_or(i64::MAX));
        if reverse {
            options = options.with_sort(SortTarget::Key, SortOrder::Descend);
        }
        let mut response = self.read(from, options).await?;
        scan.exhausted = !response.more();
        scan.fetched.extend(response.take_kvs());
        Ok(())
    }

    /// Merges what `scan` fetched with the buffered writes. Until the scan
    /// is exhausted, only up to its last fetched key: beyond it, unfetched
    /// stored keys could still come first.
    fn merge(
        &self,
        scan: &RangeScan,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<(Vec<KeyValue>, KeyRange)> {
        let fetched_bound = scan
            .fetched
            .last()
            .filter(|_| !scan.exhausted)
            .map(|last| self.inner.user_key(last.key()));
        let (begin, end) = match fetched_bound {
            None => (begin.to_vec(), end.to_vec()),
            Some(last) if options.reverse => (last.to_vec(), end.to_vec()),
            Some(last) => (begin.to_vec(), KeyRange::point(last).end),
        };

        let mut stored = scan.fetched.iter().map(|pair| {
            Ok(KeyValue {
                key: Bytes::copy_from_slice(self.inner.user_key(pair.key())),
                value: Bytes::copy_from_slice(pair.value()),
            })
        });
        self.writes.merge_range(&mut stored, &begin, &end, options)
    }

    /// Records what a range read observed: the range, and the stored keys in
    /// it with their revisions, so that a deletion shows up too.
    fn record_range(&mut self, scan: RangeScan, read: KeyRange) {
        if read.begin >= read.end {
            return;
        }
        let stored_read = KeyRange {
            begin: self.inner.range_start(&read.begin),
            end: self.inner.stored_key(&read.end),
        };
        for pair in scan.fetched {
            if stored_read.contains(pair.key()) {
                self.read_keys
                    .insert(pair.key().to_vec(), pair.mod_revision());
            }
        }
        self.read_ranges.push(stored_read);
    }

    /// The compares that hold when nothing this transaction read changed.
    fn read_compares(&self) -> Vec<Compare> {
        let Some(snapshot) = self.snapshot_revision else {
            return Vec::new();
        };
        let keys = self
            .read_keys
            .iter()
            .map(|(key, revision)| Compare::mod_revision(key.clone(), CompareOp::Equal, *revision));
        let ranges = self.read_ranges.iter().map(|range| {
            Compare::mod_revision(range.begin.clone(), CompareOp::Less, snapshot + 1)
                .with_range(range.end.clone())
        });
        keys.chain(ranges).collect()
    }
}

#[async_trait]
impl Transaction for EtcdTransaction {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>> {
        match self.writes.lookup(key) {
            Lookup::Known(value) => Ok(value),
            Lookup::Add(delta) => {
                let base = self.stored(key).await?;
                Ok(Some(add_le(base.as_deref(), delta)))
            }
            Lookup::Unwritten => self.stored(key).await,
        }
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>> {
        let stored_begin = self.inner.range_start(begin);
        let stored_end = self.inner.stored_key(end);
        if begin >= end || stored_begin >= stored_end || options.limit == Some(0) {
            return Ok(Vec::new());
        }

        // A limited read fetches a little more than its limit, then page by
        // page while its own clears hide what it fetched; an unlimited one
        // fetches every page before merging once.
        let mut scan = RangeScan {
            fetched: Vec::new(),
            exhausted: false,
        };
        let mut page = options
            .limit
            .map_or(PAGE_KEYS, |limit| (limit + LIMIT_SLACK).min(PAGE_KEYS));
        loop {
            let bounds = (stored_begin.as_slice(), stored_end.as_slice());
            self.fetch_page(&mut scan, bounds, options.reverse, page)
                .await?;
            page = PAGE_KEYS;
            if options.limit.is_none() && !scan.exhausted {
                continue;
            }

            let (pairs, read) = self.merge(&scan, begin, end, options)?;
            let enough = options.limit.is_some_and(|limit| pairs.len() >= limit);
            if scan.exhausted || enough {
                self.record_range(scan, read);
                return Ok(pairs);
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.writes.clear_range(begin, end);
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes.atomic_add(key, delta);
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        // A read-only transaction is serializable at its snapshot already.
        self.writes.check_sizes()?;
        if self.writes.is_empty() {
            return Ok(());
        }

        let reads = self.read_compares();
        let EtcdTransaction {
            inner,
            mut kv,
            writes,
            ..
        } = *self;
        let (writes, counters) = write_ops(&inner, writes);
        if counters.is_empty() {
            let counts = (reads.len(), writes.len());
            let txn = Txn::new().when(reads).and_then(writes);
            let response = kv
                .txn(txn)
                .await
                .map_err(|error| commit_error(error, counts.0, counts.1))?;
            return if response.succeeded() {
                Ok(())
            } else {
                Err(MetadataError::Conflict)
            };
        }

        commit_with_counters(&mut kv, reads, writes, counters).await
    }
}

/// The etcd operations of `writes`, and the counters its atomic adds write,
/// which need their current values first.
///
/// etcd refuses a `Txn` that puts a key inside a range it deletes, so each
/// cleared range is cut around the keys the transaction sets in it.
fn write_ops(inner: &Inner, writes: WriteBuffer) -> (Vec<TxnOp>, Vec<Counter>) {
    let (cleared, entries) = writes.into_parts();
    let mut ops = Vec::new();
    let mut counters = Vec::new();
    for (key, pending) in &entries {
        let stored_key = inner.stored_key(key);
        match pending {
            Pending::Set(value) => ops.push(TxnOp::put(stored_key, value.to_vec(), None)),
            Pending::Clear => ops.push(TxnOp::delete(stored_key, None)),
            Pending::Add(delta) => counters.push(Counter {
                key: stored_key,
                delta: *delta,
                value: None,
                mod_revision: 0,
            }),
        }
    }

    for range in cleared {
        let written = entries
            .range(range.begin.clone()..range.end.clone())
            .filter(|(_, pending)| !matches!(pending, Pending::Clear))
            .map(|(key, _)| key.as_slice());
        let mut pieces = Vec::new();
        let mut from = range.begin.clone();
        for key in written {
            pieces.push((from, key.to_vec()));
            from = KeyRange::point(key).end;
        }
        pieces.push((from, range.end.clone()));

        for (begin, end) in pieces {
            let (begin, end) = (inner.range_start(&begin), inner.stored_key(&end));
            if begin < end {
                let options = DeleteOptions::new().with_range(end);
                ops.push(TxnOp::delete(begin, Some(options)));
            }
        }
    }
    (ops, counters)
}

/// Commits `writes` plus the sums of `counters`, each under a compare on the
/// counter's `mod_revision`. When the commit fails only because a counter
/// moved (the failure branch checks the read compares again and returns the
/// counters), it retries with the new values; a moved read is `Conflict`.
async fn commit_with_counters(
    kv: &mut KvClient,
    reads: Vec<Compare>,
    writes: Vec<TxnOp>,
    mut counters: Vec<Counter>,
) -> Result<()> {
    let gets: Vec<TxnOp> = counters
        .iter()
        .map(|counter| TxnOp::get(counter.key.clone(), None))
        .collect();
    let current = kv
        .txn(Txn::new().and_then(gets.clone()))
        .await
        .map_err(|error| read_error("get", error))?;
    update_counters(&mut counters, &current.op_responses())?;

    for attempt in 1..=ADD_ATTEMPTS {
        let mut compares = reads.clone();
        let mut success = writes.clone();
        for counter in &counters {
            let revision = counter.mod_revision;
            compares.push(Compare::mod_revision(
                counter.key.clone(),
                CompareOp::Equal,
                revision,
            ));
            let sum = add_le(counter.value.as_deref(), counter.delta);
            success.push(TxnOp::put(counter.key.clone(), sum.to_vec(), None));
        }
        let mut failure = vec![TxnOp::txn(Txn::new().when(reads.clone()))];
        failure.extend(gets.iter().cloned());

        let counts = (compares.len(), success.len());
        let txn = Txn::new().when(compares).and_then(success).or_else(failure);
        let response = kv
            .txn(txn)
            .await
            .map_err(|error| commit_error(error, counts.0, counts.1))?;
        if response.succeeded() {
            return Ok(());
        }

        let responses = response.op_responses();
        let reads_held =
            matches!(responses.first(), Some(TxnOpResponse::Txn(check)) if check.succeeded());
        if !reads_held {
            return Err(MetadataError::Conflict);
        }
        update_counters(&mut counters, responses.get(1..).unwrap_or_default())?;
        tracing::debug!(attempt, "etcd counters moved during commit; adding again");
    }
    Err(MetadataError::Conflict)
}

/// Takes the counters' current values from the answers to their gets, in
/// order.
fn update_counters(counters: &mut [Counter], responses: &[TxnOpResponse]) -> Result<()> {
    if responses.len() != counters.len() {
        return Err(MetadataError::backend(
            "etcd answered a counter read with the wrong number of responses",
        ));
    }
    for (counter, response) in counters.iter_mut().zip(responses) {
        let TxnOpResponse::Get(get) = response else {
            return Err(MetadataError::backend(
                "etcd answered a counter read with something else than a get",
            ));
        };
        let pair = get.kvs().first();
        counter.value = pair.map(|pair| pair.value().to_vec());
        counter.mod_revision = pair.map_or(0, |pair| pair.mod_revision());
    }
    Ok(())
}
