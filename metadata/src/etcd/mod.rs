//! `EtcdStore`: the metadata store over an etcd v3 cluster.
//!
//! etcd is the single writer and makes every commit durable (raft, fsynced on
//! a quorum) before it answers. A transaction reads at one snapshot revision,
//! the revision of its first read, and records the `mod_revision` of every
//! key it read (0 when absent) and every range it read. Its commit is one
//! etcd `Txn` that applies the buffered writes only if none of that changed:
//! each key read still has its recorded `mod_revision`, and no key in a range
//! read was written after the snapshot. A failed compare is `Conflict`.
//!
//! Known gaps:
//! - etcd has no atomic add: `atomic_add` reads the counter at commit time and
//!   writes the sum under a compare on its `mod_revision`, retrying that step
//!   inside the commit when only the counter moved. Unlike FoundationDB's, it
//!   costs a round trip and can end in `Conflict` when many writers add to
//!   one key at once.
//! - etcd limits a `Txn` to `--max-txn-ops` compares and writes (128 by
//!   default) and a request to `--max-request-bytes` (1.5 MiB): a commit that
//!   read or writes more keys than that, or whose values add up to more,
//!   fails with `Backend`. Reads that stay read-only have no such limit.
//! - A transaction whose snapshot revision was compacted away fails its next
//!   read with `Conflict`, so a long transaction can starve under aggressive
//!   auto-compaction.
//! - Every watch holds its own etcd watch stream; thousands of watches would
//!   want one shared stream. Clearing a key that does not exist changes
//!   nothing in etcd, so it fires no watch.
//! - Plain HTTP without authentication only: `etcd-client` is built without
//!   TLS, and no credentials are passed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, PutOptions};

use crate::error::{MetadataError, Result};
use crate::keys::display_key;
use crate::store::{MetadataStore, Transaction, Watch};

#[cfg(any(test, feature = "testsuite"))]
pub mod test_server;
mod transaction;

use transaction::EtcdTransaction;

/// The largest value accepted: 1 MiB less a margin, so that one value, its
/// key and the compares of its transaction stay under etcd's default request
/// limit of 1.5 MiB.
pub const ETCD_MAX_VALUE_BYTES: usize = 1024 * 1024 - 16 * 1024;

/// The port of an endpoint that names none.
const DEFAULT_PORT: u16 = 2379;
/// How many keys a range read asks etcd for at a time.
const PAGE_KEYS: usize = 256;
/// The largest response accepted: a full page of the largest values.
const MAX_RESPONSE_BYTES: usize = PAGE_KEYS * (ETCD_MAX_VALUE_BYTES + 64 * 1024);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A metadata store in an etcd v3 cluster, under one key prefix.
///
/// Clones share one connection to the cluster.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The client for reads and transactions, taking responses up to a page
    /// of the largest values.
    kv: KvClient,
    prefix: Vec<u8>,
}

/// An etcd lease: the keys put with it are deleted when it expires or is
/// revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(i64);

impl LeaseId {
    /// The lease's id in etcd.
    pub fn id(self) -> i64 {
        self.0
    }
}

/// Where an `etcd://` URL points.
#[derive(Debug, PartialEq, Eq)]
struct EtcdUrl {
    endpoints: Vec<String>,
    prefix: Vec<u8>,
}

impl EtcdStore {
    /// Connects to the etcd cluster named by `url`:
    /// `etcd://host:port[,host:port...][/prefix]`.
    ///
    /// A host without a port uses 2379. With a prefix, every key is stored
    /// under `prefix/`, so several clusters can share one etcd.
    ///
    /// # Errors
    ///
    /// `InvalidUrl` for a malformed URL, `Unavailable` when no endpoint
    /// answers.
    pub async fn open(url: &str) -> Result<Self> {
        let parsed = parse_url(url).map_err(|reason| MetadataError::InvalidUrl {
            url: url.to_owned(),
            reason,
        })?;
        Self::connect(&parsed.endpoints, &parsed.prefix).await
    }

    /// Connects to the etcd cluster at `endpoints` (`host:port` each) and
    /// keeps every key under `prefix` (empty for none).
    ///
    /// # Errors
    ///
    /// `Unavailable` when no endpoint answers, `Backend` for an endpoint that
    /// is not a valid address.
    pub async fn connect(endpoints: &[String], prefix: &[u8]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|error| read_error("connect", error))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                kv,
                prefix: prefix.to_vec(),
            }),
        };

        // The client connects lazily; one cheap read makes a dead cluster
        // fail here rather than in the first transaction.
        let probe = GetOptions::new().with_count_only();
        store
            .inner
            .kv
            .clone()
            .get(store.inner.range_start(b""), Some(probe))
            .await
            .map_err(|error| read_error("connect", error))?;

        let endpoints = endpoints.join(",");
        tracing::debug!(%endpoints, prefix = %display_key(prefix), "connected to etcd");
        Ok(store)
    }

    /// The prefix every key of this store is stored under.
    pub fn prefix(&self) -> &[u8] {
        &self.inner.prefix
    }

    /// Grants a lease that expires `ttl` after its last renewal, rounded up
    /// to whole seconds (etcd may raise very short TTLs to its minimum).
    ///
    /// # Errors
    ///
    /// `Unavailable` when etcd cannot be reached, `Backend` when it refuses.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        let granted = self
            .inner
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(|error| read_error("lease grant", error))?;
        if !granted.error().is_empty() {
            let reason = format!("etcd refused a lease of {seconds} s: {}", granted.error());
            return Err(MetadataError::backend(reason));
        }
        Ok(LeaseId(granted.id()))
    }

    /// Renews `lease` once, restarting its TTL. Call it well within the TTL,
    /// for example every third of it.
    ///
    /// # Errors
    ///
    /// `NotFound` when the lease expired or was revoked, `Unavailable` when
    /// etcd cannot be reached.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let renewed = self.inner.client.lease_client().keep_alive(lease.0).await;
        match renewed {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => Err(lease_not_found(lease)),
            Err(error) => Err(lease_error("lease keep-alive", lease, error)),
        }
    }

    /// Revokes `lease`, deleting every key put with it.
    ///
    /// # Errors
    ///
    /// `NotFound` when the lease expired or was revoked already,
    /// `Unavailable` when etcd cannot be reached.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner
            .client
            .lease_client()
            .revoke(lease.0)
            .await
            .map_err(|error| lease_error("lease revoke", lease, error))?;
        Ok(())
    }

    /// Sets `key` to `value` outside any transaction, attached to `lease`:
    /// the key is deleted when the lease ends. A later transaction that sets
    /// the key detaches it from the lease.
    ///
    /// # Errors
    ///
    /// `ValueTooLarge` above [`ETCD_MAX_VALUE_BYTES`], `NotFound` when the
    /// lease expired, `Unavailable` when etcd cannot be reached.
    pub async fn put_with_lease(&self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<()> {
        if value.len() > ETCD_MAX_VALUE_BYTES {
            return Err(MetadataError::ValueTooLarge {
                key: display_key(key),
                size: value.len(),
                limit: ETCD_MAX_VALUE_BYTES,
            });
        }

        let options = PutOptions::new().with_lease(lease.0);
        self.inner
            .kv
            .clone()
            .put(self.inner.stored_key(key), value, Some(options))
            .await
            .map_err(|error| lease_error("put with lease", lease, error))?;
        Ok(())
    }
}

#[async_trait]
impl MetadataStore for EtcdStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(EtcdTransaction::new(Arc::clone(&self.inner))))
    }

    async fn watch(&self, key: &[u8]) -> Result<Watch> {
        let shown = display_key(key);
        let mut stream = self
            .inner
            .client
            .watch_client()
            .watch(self.inner.stored_key(key), None)
            .await
            .map_err(|error| read_error("watch", error))?;

        // etcd reports every change after the `created` answer; waiting for
        // it keeps the promise that changes after this call are seen.
        match stream.message().await {
            Ok(Some(response)) if response.created() && !response.canceled() => {}
            Ok(Some(response)) => return Err(watch_canceled(&shown, response.cancel_reason())),
            Ok(None) => return Err(watch_ended(&shown)),
            Err(error) => return Err(read_error("watch", error)),
        }

        Ok(Watch::new(async move {
            loop {
                match stream.message().await {
                    Ok(Some(response)) if !response.events().is_empty() => return Ok(()),
                    Ok(Some(response)) if response.canceled() => {
                        return Err(watch_canceled(&shown, response.cancel_reason()));
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(watch_ended(&shown)),
                    Err(error) => return Err(read_error("watch", error)),
                }
            }
        }))
    }

    fn max_value_bytes(&self) -> usize {
        ETCD_MAX_VALUE_BYTES
    }
}

impl Inner {
    /// `key` as stored in etcd: under the prefix.
    fn stored_key(&self, key: &[u8]) -> Vec<u8> {
        let mut stored = Vec::with_capacity(self.prefix.len() + key.len());
        stored.extend_from_slice(&self.prefix);
        stored.extend_from_slice(key);
        stored
    }

    /// The stored start of a range from `begin`. etcd holds no empty key,
    /// so with no prefix a range from the empty key starts at `\0`, the
    /// first key it can hold.
    fn range_start(&self, begin: &[u8]) -> Vec<u8> {
        if self.prefix.is_empty() && begin.is_empty() {
            return vec![0x00];
        }
        self.stored_key(begin)
    }

    /// `stored` with the prefix taken off; etcd only returns keys of the
    /// ranges asked for, which all lie under it.
    fn user_key<'a>(&self, stored: &'a [u8]) -> &'a [u8] {
        debug_assert!(stored.starts_with(&self.prefix), "key outside the prefix");
        stored.get(self.prefix.len()..).unwrap_or_default()
    }
}

/// Parses `etcd://host:port[,host:port...][/prefix]`.
fn parse_url(url: &str) -> std::result::Result<EtcdUrl, String> {
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| "an etcd url starts with etcd://".to_owned())?;
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));

    let mut endpoints = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err("the url names no etcd endpoint (etcd://host:port)".to_owned());
        }
        match host.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => {
                endpoints.push(host.to_owned());
            }
            Some(_) => return Err(format!("etcd endpoint `{host}` has no valid port")),
            None => endpoints.push(format!("{host}:{DEFAULT_PORT}")),
        }
    }

    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() {
        Vec::new()
    } else {
        format!("{path}/").into_bytes()
    };
    Ok(EtcdUrl { endpoints, prefix })
}

/// The failures of this backend that carry more than etcd's own error.
#[derive(Debug, thiserror::Error)]
enum EtcdError {
    #[error("etcd {operation} failed: {source}")]
    Request {
        operation: &'static str,
        #[source]
        source: etcd_client::Error,
    },

    #[error("etcd watch of key {key} was canceled: {reason}")]
    WatchCanceled { key: String, reason: String },

    #[error("etcd watch stream of key {key} ended")]
    WatchEnded { key: String },

    #[error(
        "etcd refused a transaction of {compares} compares and {writes} writes \
         (raise etcd's --max-txn-ops, 128 by default): {source}"
    )]
    TooManyOperations {
        compares: usize,
        writes: usize,
        #[source]
        source: etcd_client::Error,
    },
}

/// Whether etcd answered and refused the request, as opposed to a failure
/// that leaves its outcome open (a lost connection, a timeout, no leader).
fn is_refusal(error: &etcd_client::Error) -> bool {
    use tonic::Code;

    match error {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Unauthenticated
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => false,
        _ => true,
    }
}

fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange && status.message().contains("compacted"))
}

fn is_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::NotFound)
}

/// Folds a failed read (or any request that changes nothing) into the
/// caller's terms: `Unavailable` when etcd could not answer, `Conflict` when
/// the snapshot was compacted away, `Backend` otherwise.
fn read_error(operation: &'static str, error: etcd_client::Error) -> MetadataError {
    if is_compacted(&error) {
        return MetadataError::Conflict;
    }
    let refused = is_refusal(&error);
    let error = EtcdError::Request {
        operation,
        source: error,
    };
    if refused {
        MetadataError::backend(error)
    } else {
        MetadataError::unavailable(error)
    }
}

/// Folds a failed commit: a failure that leaves the outcome open is
/// `UnknownResult`.
fn commit_error(error: etcd_client::Error, compares: usize, writes: usize) -> MetadataError {
    let too_many = matches!(&error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("too many operations"));
    if too_many {
        return MetadataError::backend(EtcdError::TooManyOperations {
            compares,
            writes,
            source: error,
        });
    }
    if !is_refusal(&error) {
        tracing::debug!(%error, "etcd commit outcome unknown");
        return MetadataError::UnknownResult;
    }
    MetadataError::backend(EtcdError::Request {
        operation: "commit",
        source: error,
    })
}

fn lease_error(
    operation: &'static str,
    lease: LeaseId,
    error: etcd_client::Error,
) -> MetadataError {
    if is_not_found(&error) {
        return lease_not_found(lease);
    }
    read_error(operation, error)
}

fn lease_not_found(lease: LeaseId) -> MetadataError {
    MetadataError::NotFound {
        what: format!("etcd lease {:x}", lease.0),
    }
}

fn watch_canceled(key: &str, reason: &str) -> MetadataError {
    MetadataError::unavailable(EtcdError::WatchCanceled {
        key: key.to_owned(),
        reason: reason.to_owned(),
    })
}

fn watch_ended(key: &str) -> MetadataError {
    MetadataError::unavailable(EtcdError::WatchEnded {
        key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_names_endpoints_with_default_ports_and_an_optional_prefix() {
        let parsed = parse_url("etcd://h1:2380,h2").expect("parse");
        assert_eq!(parsed.endpoints, ["h1:2380", "h2:2379"]);
        assert!(parsed.prefix.is_empty());

        let parsed = parse_url("etcd://127.0.0.1:2379/tenant/a/").expect("parse");
        assert_eq!(parsed.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(parsed.prefix, b"tenant/a/");
    }

    #[test]
    fn url_without_endpoints_or_with_a_bad_port_is_refused() {
        for url in [
            "etcd://",
            "etcd:///prefix",
            "etcd://h1,,h2",
            "etcd://h1:port",
        ] {
            assert!(parse_url(url).is_err(), "{url} parsed");
        }
        let error = parse_url("etcd://h1:port").expect_err("bad port");
        assert!(error.contains("h1:port"), "{error}");
    }

    #[test]
    fn connection_failures_are_not_refusals() {
        let unavailable = tonic::Status::unavailable("connection refused");
        assert!(!is_refusal(&etcd_client::Error::GRpcStatus(unavailable)));
        let timeout = tonic::Status::deadline_exceeded("timeout");
        assert!(!is_refusal(&etcd_client::Error::GRpcStatus(timeout)));

        let too_large = tonic::Status::invalid_argument("etcdserver: request is too large");
        assert!(is_refusal(&etcd_client::Error::GRpcStatus(too_large)));
    }

    #[test]
    fn a_lost_connection_during_commit_is_an_unknown_result() {
        let lost = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("reset"));
        assert!(matches!(
            commit_error(lost, 1, 1),
            MetadataError::UnknownResult
        ));

        let lost = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("reset"));
        assert!(matches!(
            read_error("get", lost),
            MetadataError::Unavailable { .. }
        ));

        let compacted =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        let compacted = etcd_client::Error::GRpcStatus(compacted);
        assert!(matches!(
            read_error("get", compacted),
            MetadataError::Conflict
        ));
    }
}
