//! Sava's metadata: the [`MetadataStore`] trait, its backends, the key layout
//! and the typed [`Catalog`] the broker reads and writes.
//!
//! The store follows FoundationDB's model: ordered byte keys, serializable
//! transactions that may be retried ([`transact`]), range reads and watches.
//! Keys are tuple-encoded under one prefix per cluster ([`keys`]). Every
//! transaction is idempotent, because a commit can end in
//! [`MetadataError::UnknownResult`] and run again.
//!
//! Backends are picked by URL with [`open`]; the `testsuite` feature exposes
//! `conformance`, the suite every backend passes, and a throwaway etcd for
//! tests (`etcd::test_server`).
//!
//! | backend | URL | for |
//! | --- | --- | --- |
//! | [`EmbeddedStore`] | `embedded:///path/to/file.redb` | one node |
//! | [`EtcdStore`] | `etcd://h1:2379,h2:2379[/prefix]` | a cluster on etcd v3 |
//! | `FdbStore` | `fdb:///path/to/fdb.cluster` or `fdb://` | a cluster on FoundationDB |
//!
//! - **embedded**: one redb file, optimistic transactions checked against a
//!   log of recent commits, fsynced on commit; values up to 100,000 bytes.
//!   One process at a time. A cold read of a large range blocks an async
//!   worker, and a transaction older than the last 4096 commits conflicts.
//! - **etcd**: reads at one snapshot revision; the commit is one etcd `Txn`
//!   that compares the revisions of everything read and applies the writes
//!   only if nothing changed. Values up to 1 MiB less 16 KiB. Shortcomings:
//!   `atomic_add` is a read-modify-write inside the commit (a round trip
//!   more, and it can conflict under heavy contention); a read-write commit
//!   is bound by etcd's `--max-txn-ops` (128 compares and 128 writes by
//!   default, so a partitioned topic of more than about 125 partitions needs
//!   it raised) and its 1.5 MiB request limit; each watch holds its own watch
//!   stream; plain HTTP without auth only. Leases, for broker membership, are
//!   inherent methods of [`EtcdStore`].
//! - **fdb** (cargo feature `foundationdb`, links `libfdb_c`): FoundationDB's
//!   own transactions, conflict detection and `Add` mutation, which never
//!   conflicts; values up to 100,000 bytes, transactions up to 5 s and 10 MB.
//!   The client network thread is process-wide; call `fdb::stop_network`
//!   before exiting.

use std::sync::Arc;

mod buffer;
pub mod catalog;
#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod embedded;
pub mod error;
pub mod etcd;
#[cfg(feature = "foundationdb")]
pub mod fdb;
pub mod keys;
pub mod store;

pub use catalog::{
    BrokerLoad, BrokerRecord, BrokerState, Catalog, DEFAULT_CLUSTER, DispatchMode, LeaderRecord,
    MAX_PARTITIONS, NamespacePolicies, NamespaceRecord, Ownership, RowGroupDescriptor,
    SchemaRecord, SegmentDescriptor, SubjectRecord, SubscriptionRecord, TopicPolicies, TopicRecord,
    TopicSchema,
};
pub use embedded::{EMBEDDED_MAX_VALUE_BYTES, EmbeddedStore};
pub use error::{BoxError, MetadataError, Result};
pub use etcd::{ETCD_MAX_VALUE_BYTES, EtcdStore, LeaseId};
#[cfg(feature = "foundationdb")]
pub use fdb::{FDB_MAX_VALUE_BYTES, FdbStore};
pub use keys::{Key, prefix_range};
pub use store::{
    KeyValue, MAX_ATTEMPTS, MetadataStore, RangeOptions, Transaction, UNAVAILABLE_BUDGET, Watch,
    transact,
};

const ACCEPTED_SCHEMES: &str = "expected embedded:///path, etcd://host:port or fdb:///cluster-file";

/// Opens the metadata store a URL names.
///
/// - `embedded:///abs/path/file.redb` (or `embedded://relative/path`, from
///   the working directory): an [`EmbeddedStore`], created when missing.
/// - `etcd://h1:2379,h2:2379` (a host without a port uses 2379), optionally
///   with a key prefix: `etcd://host:2379/prefix` keeps every key under
///   `prefix/`. An [`EtcdStore`], connected.
/// - `fdb:///path/to/fdb.cluster`, or `fdb://` for the default cluster file:
///   an `FdbStore`, when built with the `foundationdb` feature.
///
/// # Errors
///
/// `InvalidUrl` for a URL that names no available backend; the backend's own
/// errors when it cannot open.
pub async fn open(url: &str) -> Result<Arc<dyn MetadataStore>> {
    let invalid = |reason: &str| MetadataError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(ACCEPTED_SCHEMES));
    };

    match scheme {
        "embedded" => {
            if rest.is_empty() {
                return Err(invalid("the url names no database file"));
            }
            let path = rest.to_owned();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(path))
                .await
                .map_err(MetadataError::backend)??;
            Ok(Arc::new(store))
        }
        "etcd" => Ok(Arc::new(EtcdStore::open(url).await?)),
        "fdb" => open_fdb(url, rest).await,
        _ => Err(invalid(ACCEPTED_SCHEMES)),
    }
}

#[cfg(feature = "foundationdb")]
async fn open_fdb(_url: &str, cluster_file: &str) -> Result<Arc<dyn MetadataStore>> {
    let cluster_file = (!cluster_file.is_empty()).then(|| cluster_file.to_owned());
    let store = tokio::task::spawn_blocking(move || FdbStore::open(cluster_file.as_deref()))
        .await
        .map_err(MetadataError::backend)??;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "foundationdb"))]
async fn open_fdb(url: &str, _cluster_file: &str) -> Result<Arc<dyn MetadataStore>> {
    Err(MetadataError::InvalidUrl {
        url: url.to_owned(),
        reason: "this binary was built without FoundationDB support; \
                 rebuild sava-metadata with the `foundationdb` feature"
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_error(url: &str) -> String {
        match open(url).await {
            Ok(_) => panic!("{url} opened"),
            Err(error) => error.to_string(),
        }
    }

    #[cfg(not(feature = "foundationdb"))]
    #[tokio::test]
    async fn open_names_the_missing_feature_for_fdb_urls() {
        let error = open_error("fdb:///etc/foundationdb/fdb.cluster").await;
        assert!(
            error.contains("built without FoundationDB support"),
            "{error}"
        );
        assert!(error.contains("`foundationdb` feature"), "{error}");
    }

    #[tokio::test]
    async fn open_refuses_an_etcd_url_without_endpoints() {
        let error = open_error("etcd:///prefix").await;
        assert!(error.contains("etcd:///prefix"), "{error}");
        assert!(error.contains("names no etcd endpoint"), "{error}");
    }

    #[tokio::test]
    async fn open_reports_an_unreachable_etcd_as_unavailable() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        match open(&format!("etcd://127.0.0.1:{port}")).await {
            Err(error @ MetadataError::Unavailable { .. }) => {
                assert!(error.to_string().contains("etcd connect failed"), "{error}");
            }
            Err(other) => panic!("an unreachable etcd must be Unavailable, got {other}"),
            Ok(_) => panic!("nothing listens on port {port}"),
        }
    }

    #[tokio::test]
    async fn open_names_the_accepted_schemes_for_an_unknown_url() {
        let error = open_error("postgres://localhost").await;
        assert!(error.contains("postgres://localhost"), "{error}");
        assert!(error.contains("embedded:///path"), "{error}");

        let error = open_error("just-a-path").await;
        assert!(error.contains("embedded:///path"), "{error}");
    }
}
