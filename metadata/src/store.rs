//! The `MetadataStore` trait, in FoundationDB's model, and the retry loop.
//!
//! A store holds byte keys in order. All reads and writes happen inside a
//! [`Transaction`], which is serializable: it commits only if nothing it read
//! was changed by another commit since it began, and fails with
//! [`MetadataError::Conflict`] otherwise. Writes are buffered in the
//! transaction (and visible to its own reads) until [`Transaction::commit`].
//! A commit may also end in [`MetadataError::UnknownResult`], so every
//! transaction must be idempotent; [`transact`] retries both cases.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::{MetadataError, Result};

/// How many times [`transact`] runs a transaction before giving up.
pub const MAX_ATTEMPTS: u32 = 20;

/// How long [`transact`] keeps retrying a store that cannot be reached (or
/// whose commits end with unknown outcomes) before it returns the error, so
/// callers hear about an outage in seconds and decide themselves (a client
/// retries, a loop tries later).
pub const UNAVAILABLE_BUDGET: Duration = Duration::from_secs(3);

const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// One key and its value, as returned by a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
}

/// How a range read walks its range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// At most this many pairs; `None` reads the whole range.
    pub limit: Option<usize>,
    /// From the end of the range backwards.
    pub reverse: bool,
}

impl RangeOptions {
    /// At most `limit` pairs, from the start of the range.
    pub fn limit(limit: usize) -> Self {
        RangeOptions {
            limit: Some(limit),
            reverse: false,
        }
    }

    /// The same options, walking from the end of the range backwards.
    pub fn reversed(self) -> Self {
        RangeOptions {
            reverse: true,
            ..self
        }
    }
}

/// A transactional, ordered key-value store shared by every broker.
#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Starts a transaction.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the store cannot be reached.
    async fn begin(&self) -> Result<Box<dyn Transaction>>;

    /// Watches `key`: the returned [`Watch`] resolves once, after a committed
    /// transaction sets or clears the key. Changes committed before this call
    /// returns are not reported; a change racing with it may be.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the store cannot be reached.
    async fn watch(&self, key: &[u8]) -> Result<Watch>;

    /// The largest value, in bytes, the store accepts.
    fn max_value_bytes(&self) -> usize;
}

/// One serializable transaction. Dropping it without committing discards its
/// writes.
#[async_trait]
pub trait Transaction: Send {
    /// Reads one key, seeing this transaction's own writes.
    ///
    /// # Errors
    ///
    /// `Unavailable` or `Backend` when the store fails.
    async fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>>;

    /// Reads the keys in `[begin, end)` in order (or reverse order), seeing
    /// this transaction's own writes. An empty or inverted range reads
    /// nothing.
    ///
    /// # Errors
    ///
    /// `Unavailable` or `Backend` when the store fails.
    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>>;

    /// Sets `key` to `value` when the transaction commits. A value above
    /// [`MetadataStore::max_value_bytes`] makes the commit fail with
    /// `ValueTooLarge`.
    fn set(&mut self, key: &[u8], value: &[u8]);

    /// Removes `key` when the transaction commits.
    fn clear(&mut self, key: &[u8]);

    /// Removes every key in `[begin, end)` when the transaction commits.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]);

    /// Adds `delta` to the little-endian `i64` stored at `key` (a missing key
    /// counts as 0; a shorter value is zero-extended) when the transaction
    /// commits. The add does not read the key, so concurrent adds never
    /// conflict with each other; on etcd, which has no atomic add, the
    /// commit retries its read-modify-write and conflicts only under heavy
    /// contention (see [`crate::etcd`]).
    fn atomic_add(&mut self, key: &[u8], delta: i64);

    /// Commits the buffered writes atomically.
    ///
    /// # Errors
    ///
    /// `Conflict` when a key this transaction read was changed meanwhile,
    /// `UnknownResult` when the outcome is unknown, `ValueTooLarge` for an
    /// oversized value, `Unavailable` or `Backend` when the store fails.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not cancel the commit: it may still be
    /// applied, as after `UnknownResult`.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A pending notification that a watched key changed.
///
/// Await it directly or through [`Watch::changed`]; it resolves once.
pub struct Watch {
    changed: BoxFuture<'static, Result<()>>,
}

impl Watch {
    /// A watch that resolves when `changed` does; for backends.
    pub fn new(changed: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Watch {
            changed: Box::pin(changed),
        }
    }

    /// Waits until the watched key changes.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the store closed or lost the watch before the key
    /// changed.
    pub async fn changed(self) -> Result<()> {
        self.await
    }
}

impl Future for Watch {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.changed.as_mut().poll(cx)
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Runs `body` in a transaction and commits it, retrying on retryable errors.
///
/// Each attempt begins a fresh transaction, so `body` must be idempotent: it
/// may run again after an attempt whose commit did apply (`UnknownResult`).
/// Retries back off exponentially with jitter, from 2 ms up to 200 ms, for at
/// most [`MAX_ATTEMPTS`] attempts, and no longer than [`UNAVAILABLE_BUDGET`]
/// once the store could not be reached; then the last error is returned.
///
/// The future `body` returns may borrow the transaction only, so move owned
/// copies of other inputs into it:
///
/// ```
/// # use futures::FutureExt;
/// # async fn example(store: &dyn sava_metadata::MetadataStore) -> sava_metadata::Result<()> {
/// let key = b"greeting".to_vec();
/// sava_metadata::transact(store, |tx| {
///     let key = key.clone();
///     async move {
///         tx.set(&key, b"hello");
///         Ok(())
///     }
///     .boxed()
/// })
/// .await
/// # }
/// ```
///
/// # Errors
///
/// The first error that is not retryable, or the last one.
pub async fn transact<T, F>(store: &dyn MetadataStore, mut body: F) -> Result<T>
where
    F: for<'a> FnMut(&'a mut dyn Transaction) -> BoxFuture<'a, Result<T>> + Send,
    T: Send,
{
    let started = std::time::Instant::now();
    let mut attempt = 1;
    loop {
        let error = match run_once(store, &mut body).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        // Conflicts resolve by retrying; an outage (unreachable, or every
        // commit's outcome unknown) does not within the budget.
        let out_of_time =
            !matches!(error, MetadataError::Conflict) && started.elapsed() >= UNAVAILABLE_BUDGET;
        if !error.is_retryable() || attempt >= MAX_ATTEMPTS || out_of_time {
            return Err(error);
        }

        let delay = backoff(attempt);
        let delay_ms = delay.as_millis() as u64;
        tracing::debug!(attempt, delay_ms, %error, "metadata transaction failed; retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

async fn run_once<T, F>(store: &dyn MetadataStore, body: &mut F) -> Result<T>
where
    F: for<'a> FnMut(&'a mut dyn Transaction) -> BoxFuture<'a, Result<T>> + Send,
    T: Send,
{
    let mut tx = store.begin().await?;
    let value = body(tx.as_mut()).await?;
    tx.commit().await?;
    Ok(value)
}

/// The delay before retry `attempt`: half the capped exponential step plus a
/// random share of the other half, so that conflicting writers spread out.
fn backoff(attempt: u32) -> Duration {
    let step = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = step / 2;

    // Each `RandomState` is seeded differently, which is all the randomness
    // jitter needs.
    let random = RandomState::new().hash_one(attempt);
    let jitter_nanos = random % (half.as_nanos() as u64 + 1);
    half + Duration::from_nanos(jitter_nanos)
}

/// The error of a watch whose store went away before the key changed; kept
/// here so every backend words it the same way.
pub(crate) fn store_closed() -> MetadataError {
    MetadataError::unavailable("the metadata store was closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        assert!(backoff(1) <= FIRST_BACKOFF);
        assert!(backoff(1) >= FIRST_BACKOFF / 2);
        for attempt in 1..=MAX_ATTEMPTS + 5 {
            assert!(backoff(attempt) <= MAX_BACKOFF);
        }
        assert!(backoff(MAX_ATTEMPTS) >= MAX_BACKOFF / 2);
    }
}
