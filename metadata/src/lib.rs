//! Sava's metadata: the [`MetadataStore`] trait, its backends, the key layout
//! and the typed [`Catalog`] the broker reads and writes.
//!
//! The store follows FoundationDB's model: ordered byte keys, serializable
//! transactions that may be retried ([`transact`]), range reads and watches.
//! Keys are tuple-encoded under one prefix per cluster ([`keys`]). Every
//! transaction is idempotent, because a commit can end in
//! [`MetadataError::UnknownResult`] and run again.
//!
//! Backends are picked by URL with [`open`]: `embedded:///path/to/file.redb`
//! today; `etcd://` and `fdb://` are reserved for the backends to come. The
//! `testsuite` feature exposes `conformance`, the suite every backend passes.

use std::sync::Arc;

mod buffer;
pub mod catalog;
#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod embedded;
pub mod error;
pub mod keys;
pub mod store;

pub use catalog::{
    Catalog, DEFAULT_CLUSTER, DispatchMode, MAX_PARTITIONS, NamespacePolicies, NamespaceRecord,
    SchemaRecord, SubjectRecord, SubscriptionRecord, TopicRecord, TopicSchema,
};
pub use embedded::{EMBEDDED_MAX_VALUE_BYTES, EmbeddedStore};
pub use error::{BoxError, MetadataError, Result};
pub use keys::{Key, prefix_range};
pub use store::{
    KeyValue, MAX_ATTEMPTS, MetadataStore, RangeOptions, Transaction, Watch, transact,
};

const ACCEPTED_SCHEMES: &str = "expected embedded:///path, etcd://host:port or fdb:///cluster-file";

/// Opens the metadata store a URL names.
///
/// - `embedded:///abs/path/file.redb` (or `embedded://relative/path`, from
///   the working directory): an [`EmbeddedStore`], created when missing.
/// - `etcd://h1:2379,h2:2379` and `fdb:///path/to/fdb.cluster`: not built
///   yet.
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
        "etcd" => Err(invalid("the etcd backend is not built yet")),
        "fdb" => Err(invalid("the foundationdb backend is not built yet")),
        _ => Err(invalid(ACCEPTED_SCHEMES)),
    }
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

    #[tokio::test]
    async fn open_refuses_backends_that_are_not_built_yet() {
        let error = open_error("etcd://127.0.0.1:2379").await;
        assert!(
            error.contains("the etcd backend is not built yet"),
            "{error}"
        );

        let error = open_error("fdb:///etc/foundationdb/fdb.cluster").await;
        assert!(
            error.contains("the foundationdb backend is not built yet"),
            "{error}"
        );
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
