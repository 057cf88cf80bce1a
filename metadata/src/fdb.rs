//! `FdbStore`: the metadata store over FoundationDB, behind the cargo feature
//! `foundationdb` (it links `libfdb_c`).
//!
//! FoundationDB does the work: a transaction reads at its read version and
//! sees its own writes, the cluster's resolvers check its reads against
//! newer commits (`not_committed` is `Conflict`), and a commit is durable on
//! the cluster's replicas once it returns. `atomic_add` is FoundationDB's
//! `Add` mutation, which reads nothing and so never conflicts. This module
//! only maps keys under an optional prefix and folds errors into
//! [`MetadataError`].
//!
//! Known gaps:
//! - The client's network thread is process-wide: the first store boots it
//!   and it runs until [`stop_network`]. libfdb_c wants it stopped before the
//!   process exits; a binary that exits without calling `stop_network` risks
//!   a crash in libfdb_c's exit path, after its work is done.
//! - FoundationDB limits a transaction to 5 seconds and 10 MB; a longer one
//!   fails with `Conflict` (`transaction_too_old`) on every retry.
//! - A watch fires when the key's value changes; setting a key to the value
//!   it holds may not fire it. A process can hold 10,000 watches by default.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{MutationType, StreamingMode};
use foundationdb::{Database, FdbError, KeySelector, RangeOption};

use crate::error::{MetadataError, Result};
use crate::keys::display_key;
use crate::store::{KeyValue, MetadataStore, RangeOptions, Transaction, Watch};

/// The largest value FoundationDB accepts.
pub const FDB_MAX_VALUE_BYTES: usize = 100_000;

/// `not_committed`: a read conflicted with a newer commit.
const NOT_COMMITTED: i32 = 1020;
/// `transaction_too_old`: the read version is older than the cluster keeps.
const TRANSACTION_TOO_OLD: i32 = 1007;

/// The client network of this process: absent until the first store boots
/// it, `Stopped` once [`stop_network`] ran (it cannot start again).
static NETWORK: Mutex<Option<Network>> = Mutex::new(None);

enum Network {
    /// Held only to be dropped: dropping it stops the network.
    Running {
        _guard: NetworkAutoStop,
    },
    Stopped,
}

/// A metadata store in a FoundationDB cluster, under one key prefix.
///
/// Clones share the same database handle.
#[derive(Clone)]
pub struct FdbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    prefix: Vec<u8>,
}

impl FdbStore {
    /// Opens the cluster that `cluster_file` describes (`None` for the
    /// default file, `/etc/foundationdb/fdb.cluster` on Linux), booting the
    /// client network first if this is the process's first store. Blocking.
    ///
    /// # Errors
    ///
    /// `Backend` when libfdb_c cannot start (a second API version in the
    /// process, the network already stopped) or the cluster file is unusable.
    pub fn open(cluster_file: Option<&str>) -> Result<Self> {
        Self::open_with_prefix(cluster_file, &[])
    }

    /// As [`FdbStore::open`], keeping every key under `prefix`, so that
    /// several Sava clusters (or test runs) can share one FoundationDB.
    ///
    /// # Errors
    ///
    /// As [`FdbStore::open`].
    pub fn open_with_prefix(cluster_file: Option<&str>, prefix: &[u8]) -> Result<Self> {
        if cluster_file.is_some_and(|path| path.contains('\0')) {
            return Err(MetadataError::Invalid {
                reason: "a foundationdb cluster file path cannot hold a NUL byte".to_owned(),
            });
        }
        boot_network()?;

        let db = Database::new(cluster_file).map_err(|error| {
            let file = cluster_file.unwrap_or("the default cluster file");
            MetadataError::backend(FdbStoreError::Open {
                file: file.to_owned(),
                source: error,
            })
        })?;
        tracing::debug!(cluster_file, "opened foundationdb metadata store");
        Ok(FdbStore {
            inner: Arc::new(Inner {
                db,
                prefix: prefix.to_vec(),
            }),
        })
    }

    /// The prefix every key of this store is stored under.
    pub fn prefix(&self) -> &[u8] {
        &self.inner.prefix
    }
}

/// Stops the FoundationDB client network of this process, waiting for its
/// thread. Call it once, at shutdown, after the last store is dropped; no
/// store can open afterwards.
pub fn stop_network() {
    let mut network = NETWORK.lock().unwrap_or_else(PoisonError::into_inner);
    // Dropping the guard stops the network and joins its thread.
    *network = Some(Network::Stopped);
}

fn boot_network() -> Result<()> {
    let mut network = NETWORK.lock().unwrap_or_else(PoisonError::into_inner);
    match &*network {
        Some(Network::Running { .. }) => return Ok(()),
        Some(Network::Stopped) => {
            return Err(MetadataError::backend(
                "the foundationdb network was stopped and cannot start again in this process",
            ));
        }
        None => {}
    }

    // The lock makes this the process's only API version selection, which
    // the builder requires.
    let builder = FdbApiBuilder::default()
        .build()
        .map_err(|error| fdb_backend("select the api version", error))?;
    // SAFETY: `boot` requires the returned guard to be dropped before the
    // process exits. It lives in `NETWORK` and `stop_network` drops it; the
    // module docs tell binaries to call that at shutdown.
    let guard = unsafe { builder.boot() }
        .map_err(|error| fdb_backend("start the client network", error))?;
    *network = Some(Network::Running { _guard: guard });
    Ok(())
}

#[async_trait]
impl MetadataStore for FdbStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let tx = self
            .inner
            .db
            .create_trx()
            .map_err(|error| fdb_backend("create a transaction", error))?;
        Ok(Box::new(FdbTransaction {
            inner: Arc::clone(&self.inner),
            tx,
            oversized: None,
        }))
    }

    async fn watch(&self, key: &[u8]) -> Result<Watch> {
        let tx = self
            .inner
            .db
            .create_trx()
            .map_err(|error| fdb_backend("create a transaction", error))?;

        // A watch becomes active when its transaction commits; a read-only
        // commit costs nothing.
        let shown = display_key(key);
        let changed = tx.watch(&self.inner.stored_key(key));
        tx.commit()
            .await
            .map_err(|error| read_error(error.into()))?;
        Ok(Watch::new(async move {
            changed.await.map_err(|error| {
                MetadataError::unavailable(FdbStoreError::Watch {
                    key: shown,
                    source: error,
                })
            })
        }))
    }

    fn max_value_bytes(&self) -> usize {
        FDB_MAX_VALUE_BYTES
    }
}

struct FdbTransaction {
    inner: Arc<Inner>,
    tx: foundationdb::Transaction,
    /// The first value above the limit, refused at commit; it was never
    /// handed to FoundationDB.
    oversized: Option<(Vec<u8>, usize)>,
}

#[async_trait]
impl Transaction for FdbTransaction {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>> {
        let value = self
            .tx
            .get(&self.inner.stored_key(key), false)
            .await
            .map_err(read_error)?;
        Ok(value.map(|value| Bytes::copy_from_slice(&value)))
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>> {
        if begin >= end || options.limit == Some(0) {
            return Ok(Vec::new());
        }

        let mut range = Some(RangeOption {
            begin: KeySelector::first_greater_or_equal(self.inner.stored_key(begin)),
            end: KeySelector::first_greater_or_equal(self.inner.stored_key(end)),
            limit: options.limit,
            reverse: options.reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::default()
        });
        let mut pairs = Vec::new();
        while let Some(page) = range {
            let values = self
                .tx
                .get_range(&page, 1, false)
                .await
                .map_err(read_error)?;
            pairs.extend(values.iter().map(|pair| KeyValue {
                key: Bytes::copy_from_slice(self.inner.user_key(pair.key())),
                value: Bytes::copy_from_slice(pair.value()),
            }));
            range = page.next_range(&values);
        }
        Ok(pairs)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        if value.len() > FDB_MAX_VALUE_BYTES {
            self.oversized
                .get_or_insert_with(|| (key.to_vec(), value.len()));
            return;
        }
        self.tx.set(&self.inner.stored_key(key), value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.tx.clear(&self.inner.stored_key(key));
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin < end {
            let (begin, end) = (self.inner.stored_key(begin), self.inner.stored_key(end));
            self.tx.clear_range(&begin, &end);
        }
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        let stored_key = self.inner.stored_key(key);
        self.tx
            .atomic_op(&stored_key, &delta.to_le_bytes(), MutationType::Add);
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        if let Some((key, size)) = self.oversized {
            return Err(MetadataError::ValueTooLarge {
                key: display_key(&key),
                size,
                limit: FDB_MAX_VALUE_BYTES,
            });
        }

        match self.tx.commit().await {
            Ok(_) => Ok(()),
            Err(error) => Err(commit_error(error.into())),
        }
    }
}

impl Inner {
    fn stored_key(&self, key: &[u8]) -> Vec<u8> {
        let mut stored = Vec::with_capacity(self.prefix.len() + key.len());
        stored.extend_from_slice(&self.prefix);
        stored.extend_from_slice(key);
        stored
    }

    fn user_key<'a>(&self, stored: &'a [u8]) -> &'a [u8] {
        debug_assert!(stored.starts_with(&self.prefix), "key outside the prefix");
        stored.get(self.prefix.len()..).unwrap_or_default()
    }
}

/// FoundationDB failures, with what was being done.
#[derive(Debug, thiserror::Error)]
enum FdbStoreError {
    #[error("foundationdb could not {operation}: {source}")]
    Operation {
        operation: &'static str,
        #[source]
        source: FdbError,
    },

    #[error("foundationdb could not open cluster file {file}: {source}")]
    Open {
        file: String,
        #[source]
        source: FdbError,
    },

    #[error("foundationdb watch of key {key} failed: {source}")]
    Watch {
        key: String,
        #[source]
        source: FdbError,
    },

    #[error("foundationdb transaction failed (error {code}): {source}")]
    Transaction {
        code: i32,
        #[source]
        source: FdbError,
    },
}

fn fdb_backend(operation: &'static str, error: FdbError) -> MetadataError {
    MetadataError::backend(FdbStoreError::Operation {
        operation,
        source: error,
    })
}

/// Folds a failed read: a read version too old to serve is `Conflict`
/// (retry with a new one), other transient failures are `Unavailable`.
fn read_error(error: FdbError) -> MetadataError {
    if matches!(error.code(), NOT_COMMITTED | TRANSACTION_TOO_OLD) {
        return MetadataError::Conflict;
    }
    let failure = FdbStoreError::Transaction {
        code: error.code(),
        source: error,
    };
    if error.is_retryable() {
        MetadataError::unavailable(failure)
    } else {
        MetadataError::backend(failure)
    }
}

/// Folds a failed commit: `commit_unknown_result` and its kin are
/// `UnknownResult`.
fn commit_error(error: FdbError) -> MetadataError {
    if error.is_maybe_committed() {
        return MetadataError::UnknownResult;
    }
    read_error(error)
}
