//! Object storage: where offloaded segments live, under which keys, and the
//! few requests the tier makes (put, ranged get, list, delete).
//!
//! One code path serves S3 proper, MinIO and other S3-compatible servers
//! (`s3://bucket/prefix`), the local file system (`file:///path`) and memory
//! (`memory://`, for tests), all through `object_store`.
//!
//! Key layout, below the location's prefix:
//!
//! ```text
//! <cluster>/<namespace>/<topic>/partition=<n>/<base_offset>-<next_offset>.parquet
//! ```
//!
//! `<n>` is the partition index of `/<namespace>/<topic>-part-<n>` and
//! `none` for a topic without partitions; offsets are zero-padded to 20
//! digits, so keys list in offset order. The `partition=` form is the one
//! lakehouse tools read as a partition column.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::Histogram;

/// Objects above this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// The part size of multipart uploads.
const PART_BYTES: usize = 8 * 1024 * 1024;

/// Where offloaded segments go, and how to reach an S3 server.
///
/// Every S3 setting left empty falls back to the standard `AWS_*`
/// variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`), then to
/// the instance's credentials on EC2.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// The endpoint of an S3-compatible server (MinIO, LocalStack); empty
    /// for AWS.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allow `http://` endpoints. Needed for local servers.
    pub allow_http: bool,
    /// Address buckets as `bucket.endpoint` rather than `endpoint/bucket`.
    /// Off by default: path-style requests work with every S3 server.
    pub virtual_hosted_style: bool,
}

/// The object store of the tier, with the prefix every key lives under.
#[derive(Debug, Clone)]
pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    requests: Arc<RequestStats>,
}

/// Latency and failures of the object store requests, by operation.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub put: OperationStats,
    pub get: OperationStats,
    pub delete: OperationStats,
    pub list: OperationStats,
}

impl RequestStats {
    /// Each operation's name (as a metric label) and figures.
    pub fn by_operation(&self) -> [(&'static str, &OperationStats); 4] {
        [
            ("put", &self.put),
            ("get", &self.get),
            ("delete", &self.delete),
            ("list", &self.list),
        ]
    }
}

/// One operation's request latency (whole calls, multipart uploads
/// included) and failures.
#[derive(Debug)]
pub struct OperationStats {
    pub latency: Histogram,
    pub errors: std::sync::atomic::AtomicU64,
}

impl Default for OperationStats {
    fn default() -> Self {
        OperationStats {
            latency: Histogram::latency(),
            errors: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl OperationStats {
    /// Runs `request`, recording its latency and whether it failed.
    async fn time<T, E>(
        &self,
        request: impl Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, E> {
        let started = std::time::Instant::now();
        let result = request.await;
        self.latency.observe_duration(started.elapsed());
        if result.is_err() {
            self.errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }
}

impl ObjectTier {
    /// Opens the store at `url`: `s3://bucket/prefix`, `file:///path` (the
    /// directory is created) or `memory://`.
    pub fn open(url: &str, config: &ObjectStoreConfig) -> Result<ObjectTier> {
        let invalid = |reason: String| Error::InvalidLocation {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected s3://, file:// or memory://".into()))?;

        let (store, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
            "s3" | "s3a" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("the URL names no bucket".into()));
                }
                let store = s3_builder(bucket, config)
                    .build()
                    .map_err(|error| invalid(error.to_string()))?;
                (Arc::new(store), prefix.trim_matches('/').to_owned())
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid("a file URL needs an absolute path".into()));
                }
                std::fs::create_dir_all(rest).map_err(|e| invalid(e.to_string()))?;
                let store = LocalFileSystem::new_with_prefix(rest)
                    .map_err(|error| invalid(error.to_string()))?;
                (Arc::new(store), String::new())
            }
            "memory" => (Arc::new(InMemory::new()), rest.trim_matches('/').to_owned()),
            other => return Err(invalid(format!("unknown scheme `{other}`"))),
        };
        Ok(ObjectTier {
            store,
            prefix,
            url: url.to_owned(),
            requests: Arc::new(RequestStats::default()),
        })
    }

    /// The location this tier was opened at.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key of the object holding `[base_offset, next_offset)` of `topic`
    /// (`/ns/topic` or `/ns/topic-part-N`), in `cluster`, written in
    /// ownership epoch `epoch`. The epoch (`-e<epoch>`, left out for 0) keeps
    /// a fenced broker's late upload of the same offsets from overwriting
    /// the current owner's object.
    pub fn segment_key(
        &self,
        cluster: &str,
        topic: &str,
        base_offset: u64,
        next_offset: u64,
        epoch: u64,
    ) -> String {
        let epoch = match epoch {
            0 => String::new(),
            epoch => format!("-e{epoch}"),
        };
        format!(
            "{}{base_offset:020}-{next_offset:020}{epoch}.parquet",
            self.topic_prefix(cluster, topic)
        )
    }

    /// The key prefix, ending in `/`, under which every object of `topic`
    /// lives.
    pub fn topic_prefix(&self, cluster: &str, topic: &str) -> String {
        let trimmed = topic.trim_start_matches('/');
        let (namespace, local) = trimmed.split_once('/').unwrap_or(("default", trimmed));
        let (base, partition) = match local.rsplit_once("-part-") {
            Some((base, index)) if index.parse::<u32>().is_ok() => (base, index),
            _ => (local, "none"),
        };
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        format!("{root}{cluster}/{namespace}/{base}/partition={partition}/")
    }

    /// Latency and failures of this store's requests.
    pub fn requests(&self) -> &Arc<RequestStats> {
        &self.requests
    }

    /// Uploads `bytes` to `key` (in parts when large), returning the etag.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<Option<String>> {
        let requests = Arc::clone(&self.requests);
        requests.put.time(self.put_untimed(key, bytes)).await
    }

    async fn put_untimed(&self, key: &str, bytes: Bytes) -> Result<Option<String>> {
        let path = Path::from(key);
        let failed = |source| Error::ObjectStore {
            operation: "upload",
            key: key.to_owned(),
            source,
        };
        if bytes.len() <= MULTIPART_THRESHOLD {
            let result = self.store.put(&path, PutPayload::from(bytes)).await;
            return result.map(|put| put.e_tag).map_err(failed);
        }

        let upload = self.store.put_multipart(&path).await.map_err(failed)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        for chunk in bytes.chunks(PART_BYTES) {
            writer.wait_for_capacity(4).await.map_err(failed)?;
            writer.put(bytes.slice_ref(chunk));
        }
        writer.finish().await.map(|put| put.e_tag).map_err(failed)
    }

    /// Bytes `range` of `key`.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = Path::from(key);
        self.requests
            .get
            .time(self.store.get_range(&path, range))
            .await
            .map_err(|source| Error::ObjectStore {
                operation: "get",
                key: key.to_owned(),
                source,
            })
    }

    /// The whole object at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let failed = |source| Error::ObjectStore {
            operation: "get",
            key: key.to_owned(),
            source,
        };
        let path = Path::from(key);
        let whole = async { self.store.get(&path).await?.bytes().await };
        self.requests.get.time(whole).await.map_err(failed)
    }

    /// Deletes `key`; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = Path::from(key);
        let deleted = self.requests.delete.time(async {
            match self.store.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        });
        match deleted.await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Error::ObjectStore {
                operation: "delete",
                key: key.to_owned(),
                source,
            }),
        }
    }

    /// Every object under `prefix`, with its size and last change.
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        let path = Path::from(prefix.trim_end_matches('/'));
        let listing = self.store.list(Some(&path)).try_collect::<Vec<_>>();
        let objects: Vec<_> =
            self.requests
                .list
                .time(listing)
                .await
                .map_err(|source| Error::ObjectStore {
                    operation: "list",
                    key: prefix.to_owned(),
                    source,
                })?;
        let mut objects: Vec<StoredObject> = objects
            .into_iter()
            .map(|meta| StoredObject {
                key: meta.location.to_string(),
                bytes: meta.size,
                last_modified_ms: meta.last_modified.timestamp_millis().max(0) as u64,
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }
}

/// One object found by [`ObjectTier::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub bytes: u64,
    pub last_modified_ms: u64,
}

fn s3_builder(bucket: &str, config: &ObjectStoreConfig) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if !config.endpoint.is_empty() {
        builder = builder.with_endpoint(&config.endpoint);
    }
    if !config.region.is_empty() {
        builder = builder.with_region(&config.region);
    }
    if !config.access_key_id.is_empty() {
        builder = builder.with_access_key_id(&config.access_key_id);
    }
    if !config.secret_access_key.is_empty() {
        builder = builder.with_secret_access_key(&config.secret_access_key);
    }
    if config.allow_http {
        builder = builder.with_allow_http(true);
    }
    if config.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(true);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_cluster_namespace_topic_and_partition_in_offset_order() {
        let tier = ObjectTier::open("memory://root/", &ObjectStoreConfig::default()).unwrap();
        assert_eq!(
            tier.segment_key("sava", "/orders/eu-part-3", 5, 12, 0),
            "root/sava/orders/eu/partition=3/00000000000000000005-00000000000000000012.parquet"
        );
        assert_eq!(
            tier.topic_prefix("sava", "/default/plain"),
            "root/sava/default/plain/partition=none/"
        );
        assert_eq!(
            tier.topic_prefix("c1", "/default/not-part-x"),
            "root/c1/default/not-part-x/partition=none/"
        );
    }

    #[test]
    fn locations_that_cannot_work_are_refused_with_the_reason() {
        let config = ObjectStoreConfig::default();
        for url in ["nowhere", "gs://b/p", "s3:///prefix", "file://relative"] {
            let error = ObjectTier::open(url, &config).unwrap_err();
            assert!(error.to_string().contains(url), "{error}");
        }
    }

    #[tokio::test]
    async fn objects_put_list_get_and_delete_on_the_local_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let tier = ObjectTier::open(&url, &ObjectStoreConfig::default()).unwrap();
        let key = tier.segment_key("sava", "/default/t", 0, 3, 0);
        let big = Bytes::from(vec![7u8; MULTIPART_THRESHOLD + 10]);

        tier.put(&key, Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        tier.put("sava/default/t/partition=none/big", big.clone())
            .await
            .unwrap();

        let listed = tier
            .list(&tier.topic_prefix("sava", "/default/t"))
            .await
            .unwrap();
        let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![key.as_str(), "sava/default/t/partition=none/big"]
        );
        assert_eq!(tier.get_range(&key, 6..11).await.unwrap(), "world");
        assert_eq!(
            tier.get("sava/default/t/partition=none/big").await.unwrap(),
            big
        );

        tier.delete(&key).await.unwrap();
        tier.delete(&key).await.unwrap();
        assert_eq!(tier.list("sava/default/t").await.unwrap().len(), 1);
    }
}
