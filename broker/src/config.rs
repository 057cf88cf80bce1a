//! The broker's configuration: defaults, the TOML file, `SAVA_<SECTION>__<KEY>`
//! environment overrides and command-line flags, applied in that order.
//!
//! `deploy/config/sava.toml` is the commented example of every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name} does not name a config key: {reason}")]
    Env { name: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerSection,
    pub metadata: MetadataSection,
    pub storage: StorageSection,
    pub offload: OffloadSection,
    /// How to reach an S3 server; see [`sava_storage::ObjectStoreConfig`].
    pub s3: sava_storage::ObjectStoreConfig,
    pub limits: LimitsSection,
    pub cluster: ClusterSection,
    pub metrics: MetricsSection,
    pub telemetry: TelemetrySection,
}

/// What `/metrics` exports.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Series per topic and per subscription (labels `topic` and
    /// `subscription`). Off for clusters with very many topics: the broker
    /// totals stay.
    pub per_topic: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { per_topic: true }
    }
}

/// Export of traces through OpenTelemetry (OTLP over gRPC).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySection {
    /// Where spans go, e.g. `http://otel-collector:4317`; empty: no export
    /// (unless `OTEL_EXPORTER_OTLP_ENDPOINT` names one).
    pub otlp_endpoint: String,
    /// The `service.name` of the spans; `OTEL_SERVICE_NAME` overrides it.
    pub service_name: String,
    /// The share of traces recorded, from 0.0 to 1.0; a trace continued
    /// from a client keeps the client's decision.
    pub sampling_ratio: f64,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            otlp_endpoint: String::new(),
            service_name: "sava-broker".to_string(),
            sampling_ratio: 1.0,
        }
    }
}

/// Membership, leadership and topic hand-over between brokers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// A broker whose lease was not renewed for this long counts as dead;
    /// the leader then gives its topics to others. A broker that cannot
    /// renew its own lease for this long stops accepting messages, since
    /// another broker may own its topics by then.
    pub lease_ttl_ms: u64,
    /// How often a broker renews its lease (and the leader its leadership).
    pub renew_interval_ms: u64,
    /// How long a lookup of a topic without an owner waits for the leader
    /// to place it before answering UNAVAILABLE (the client retries).
    pub assignment_timeout_ms: u64,
    /// How long a draining broker tries to offload a reliable topic before
    /// handing it over anyway, naming the offsets the next owner lacks.
    pub drain_timeout_secs: u64,
    /// The admin URL other brokers and tools are told; derived from
    /// `broker.admin_addr` and the advertised host when empty.
    pub advertised_admin_url: String,
    /// Whether Danube clients that looked a topic up on a broker that does
    /// not own it send their calls through that broker (one more hop), so
    /// they find the new owner after the owner dies; see
    /// `api::danube_proxy`. Off, they are redirected to the owner.
    pub proxy_danube_clients: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            lease_ttl_ms: 5000,
            renew_interval_ms: 1000,
            assignment_timeout_ms: 5000,
            drain_timeout_secs: 30,
            advertised_admin_url: String::new(),
            proxy_danube_clients: true,
        }
    }
}

/// Offload of sealed segments of reliable topics to the object store, and
/// reads back from it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffloadSection {
    /// Whether sealed segments are offloaded. Off, reliable topics keep
    /// their history on local disk only.
    pub enabled: bool,
    /// How often the broker looks for sealed segments to offload.
    pub interval_ms: u64,
    /// Message bytes per Parquet row group, the unit of a ranged read.
    pub row_group_bytes: usize,
    /// Bytes of object data (decoded row groups, footers) cached for reads.
    pub read_cache_bytes: usize,
    /// How far above the broker's nice value the threads decoding reads
    /// from object storage run (0 to 19): a replay then takes the CPU that
    /// producers and live consumers leave. 0 runs them at the broker's
    /// priority.
    pub read_nice: i32,
    /// An offloaded segment stays on local disk this long after its last
    /// message, for fast catch-up, unless retention lets it go earlier.
    pub local_retention_secs: u64,
    /// Sealed bytes of one topic waiting for offload above which its
    /// producers are refused, so an unreachable object store cannot fill the
    /// disk.
    pub max_pending_bytes: u64,
    /// Offloaded objects below this size are merged by compaction.
    pub compact_below_bytes: u64,
    /// Compaction writes objects of at most this size.
    pub compact_target_bytes: u64,
    /// How often compaction (and the sweep of orphan objects) runs.
    pub compact_interval_secs: u64,
    /// Objects no segment descriptor names (a crash between upload and
    /// commit) are deleted once this old; objects compaction replaced, this
    /// long after.
    pub orphan_grace_secs: u64,
}

impl Default for OffloadSection {
    fn default() -> Self {
        OffloadSection {
            enabled: true,
            interval_ms: 1000,
            row_group_bytes: 1024 * 1024,
            read_cache_bytes: 64 * 1024 * 1024,
            read_nice: 10,
            local_retention_secs: 300,
            max_pending_bytes: 1024 * 1024 * 1024,
            compact_below_bytes: 4 * 1024 * 1024,
            compact_target_bytes: 64 * 1024 * 1024,
            compact_interval_secs: 60,
            orphan_grace_secs: 600,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSection {
    /// Where the broker keeps its data.
    pub data_dir: PathBuf,
    /// The client API (both the `danube` and `sava.v1` families).
    pub client_addr: SocketAddr,
    /// The admin API.
    pub admin_addr: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http_addr: SocketAddr,
    /// The URL clients reach this broker at; derived from `client_addr`
    /// when empty.
    pub advertised_url: String,
    /// Names the cluster; every metadata key lives under it.
    pub cluster: String,
    /// Threads that serve clients and move messages; 0 for one per core.
    /// Fewer than the cores leaves room for other processes on the machine
    /// (a benchmark client, say) and wakes threads across cores less often.
    pub worker_threads: usize,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            data_dir: PathBuf::from("./sava-data"),
            client_addr: ([0, 0, 0, 0], 6650).into(),
            admin_addr: ([0, 0, 0, 0], 50051).into(),
            http_addr: ([0, 0, 0, 0], 9040).into(),
            advertised_url: String::new(),
            cluster: "sava".to_string(),
            worker_threads: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataSection {
    /// `embedded:///path`; empty means `embedded://<data_dir>/metadata.redb`.
    pub url: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// `s3://bucket/prefix`, `file:///path` or `memory://`; empty means
    /// `file://<data_dir>/objects`.
    pub object_store: String,
    /// When a reliable publish is acknowledged.
    pub fsync: FsyncSetting,
    /// Group commit: the shortest time between two fsyncs unless
    /// `flush_bytes` are waiting.
    pub flush_interval_ms: u64,
    /// Group commit: bytes waiting that trigger an fsync at once.
    pub flush_bytes: u64,
    /// A segment file is sealed once it holds this many bytes.
    pub segment_bytes: u64,
    /// A segment file is sealed once it is this old.
    pub segment_age_secs: u64,
    /// Retired segment files each reliable partition keeps for later rolls
    /// to reuse, instead of deleting them and creating new ones; 0 deletes
    /// them at once.
    pub spare_segments: usize,
    /// Bytes of such spare files the broker keeps across all its
    /// partitions; a retired segment past it is deleted.
    pub spare_bytes: u64,
    /// Newest messages of each reliable topic kept in memory, so consumers
    /// that keep up never read from disk.
    pub tail_cache_bytes: usize,
    /// How far above the broker's nice value (0 to 19) the threads reading
    /// local segments for consumers behind the memory tail run.
    pub read_nice: i32,
    /// Subscription cursors are written to metadata at most this long after
    /// they change.
    pub cursor_flush_ms: u64,
}

/// When a reliable publish is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncSetting {
    /// After the fsync that covers it: survives a machine crash.
    #[default]
    Always,
    /// After the write, without fsync: faster, survives a process crash,
    /// but a machine crash or power loss can lose acknowledged messages.
    Never,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            object_store: String::new(),
            fsync: FsyncSetting::Always,
            flush_interval_ms: 1,
            flush_bytes: 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
            segment_age_secs: 10,
            spare_segments: 32,
            spare_bytes: 4 * 1024 * 1024 * 1024,
            tail_cache_bytes: 8 * 1024 * 1024,
            read_nice: 10,
            cursor_flush_ms: 100,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest message accepted (payload, key and attributes).
    pub max_message_bytes: usize,
    /// Messages buffered per consumer; a non-reliable consumer whose buffer
    /// is full loses the messages that do not fit.
    pub consumer_buffer_messages: usize,
    /// Bytes (payload, key and attributes) buffered per consumer, on top of
    /// the message bound: a message is admitted while the buffer holds less.
    pub consumer_buffer_bytes: usize,
    /// Unacknowledged messages one consumer of a reliable topic may hold.
    pub max_unacked_per_consumer: usize,
    /// How long a Danube consumer without a stream keeps its place (and an
    /// exclusive subscription), so that it can reattach by id. Native
    /// consumers leave when their stream ends.
    pub consumer_grace_secs: u64,
    /// How long a Danube producer may stay silent (no send, no health
    /// check) before it is detached.
    pub producer_idle_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_message_bytes: 5 * 1024 * 1024,
            consumer_buffer_messages: 10_000,
            consumer_buffer_bytes: 64 * 1024 * 1024,
            max_unacked_per_consumer: 1_000,
            consumer_grace_secs: 15,
            producer_idle_secs: 60,
        }
    }
}

impl Config {
    /// Reads `path` (when given) and applies the `SAVA_*` variables of `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            apply_env(&mut table, &name, &value)?;
        }
        let config: Config = table
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Invalid(error.message().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.max_message_bytes == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be above 0".into(),
            ));
        }
        if self.storage.flush_interval_ms == 0 || self.storage.segment_bytes == 0 {
            return Err(ConfigError::Invalid(
                "storage.flush_interval_ms and storage.segment_bytes must be above 0".into(),
            ));
        }
        if self.storage.segment_age_secs == 0 || self.storage.cursor_flush_ms == 0 {
            return Err(ConfigError::Invalid(
                "storage.segment_age_secs and storage.cursor_flush_ms must be above 0".into(),
            ));
        }
        if self.offload.interval_ms == 0 || self.offload.row_group_bytes == 0 {
            return Err(ConfigError::Invalid(
                "offload.interval_ms and offload.row_group_bytes must be above 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return Err(ConfigError::Invalid(
                "telemetry.sampling_ratio must be between 0.0 and 1.0".into(),
            ));
        }
        let cluster = &self.cluster;
        if cluster.renew_interval_ms == 0 || cluster.lease_ttl_ms < 2 * cluster.renew_interval_ms {
            return Err(ConfigError::Invalid(
                "cluster.renew_interval_ms must be above 0 and cluster.lease_ttl_ms at least twice it".into(),
            ));
        }
        for (key, nice) in [
            ("storage.read_nice", self.storage.read_nice),
            ("offload.read_nice", self.offload.read_nice),
        ] {
            if !(0..=19).contains(&nice) {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be between 0 and 19, not {nice}"
                )));
            }
        }
        if self.limits.consumer_buffer_messages == 0 {
            return Err(ConfigError::Invalid(
                "limits.consumer_buffer_messages must be above 0".into(),
            ));
        }
        if self.limits.consumer_buffer_bytes == 0 {
            return Err(ConfigError::Invalid(
                "limits.consumer_buffer_bytes must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// The advertised client URL, derived from the listen address when unset.
    pub fn advertised_url(&self) -> String {
        if !self.broker.advertised_url.is_empty() {
            return self.broker.advertised_url.clone();
        }
        let addr = self.broker.client_addr;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        format!("http://{host}:{}", addr.port())
    }

    /// The advertised admin URL: the configured one, or the advertised
    /// client URL's host with the admin port.
    pub fn advertised_admin_url(&self) -> String {
        if !self.cluster.advertised_admin_url.is_empty() {
            return self.cluster.advertised_admin_url.clone();
        }
        let client = self.advertised_url();
        let host = client
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .rsplit_once(':')
            .map_or(client.as_str(), |(host, _)| host)
            .to_string();
        format!("http://{host}:{}", self.broker.admin_addr.port())
    }

    pub fn metadata_url(&self) -> String {
        if !self.metadata.url.is_empty() {
            return self.metadata.url.clone();
        }
        format!(
            "embedded://{}",
            absolute(&self.broker.data_dir.join("metadata.redb"))
        )
    }

    /// Whether the metadata store is an embedded file inside the data
    /// directory: no other broker can ever own this broker's topics, and
    /// the store and the local segments are kept or lost together.
    pub fn metadata_in_data_dir(&self) -> bool {
        let url = self.metadata_url();
        let Some(path) = url.strip_prefix("embedded://") else {
            return false;
        };
        Path::new(path).starts_with(absolute(&self.broker.data_dir))
    }

    pub fn object_store_url(&self) -> String {
        if !self.storage.object_store.is_empty() {
            return self.storage.object_store.clone();
        }
        format!("file://{}", absolute(&self.broker.data_dir.join("objects")))
    }
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Sets `section.key` from a variable named `SAVA_SECTION__KEY`.
fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), ConfigError> {
    let Some(rest) = name.strip_prefix("SAVA_") else {
        return Ok(());
    };
    let Some((section, key)) = rest.split_once("__") else {
        return Ok(());
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    if section.is_empty() || key.is_empty() {
        return Err(ConfigError::Env {
            name: name.to_string(),
            reason: "expected SAVA_<SECTION>__<KEY>".into(),
        });
    }
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(ConfigError::Env {
            name: name.to_string(),
            reason: "the section is not a table".into(),
        });
    };
    section_table.insert(key, scalar(value));
    Ok(())
}

fn scalar(value: &str) -> toml::Value {
    if let Ok(number) = value.parse::<i64>() {
        return toml::Value::Integer(number);
    }
    // Decimals such as `0.01`; words `parse` also takes (`inf`, `nan`)
    // stay strings.
    let decimal = value
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    if decimal && let Ok(number) = value.parse::<f64>() {
        return toml::Value::Float(number);
    }
    match value {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_in_a_variable_sets_a_ratio() {
        let env = [(
            "SAVA_TELEMETRY__SAMPLING_RATIO".to_string(),
            "0.01".to_string(),
        )];
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.telemetry.sampling_ratio, 0.01);
    }

    #[test]
    fn no_config_at_all_gives_the_single_node_defaults() {
        let config = Config::load(None, []).unwrap();
        assert_eq!(config.broker.client_addr.port(), 6650);
        assert_eq!(config.broker.admin_addr.port(), 50051);
        assert_eq!(config.broker.http_addr.port(), 9040);
        assert!(config.metadata_url().starts_with("embedded:///"));
        assert!(config.metadata_url().ends_with("sava-data/metadata.redb"));
        assert_eq!(config.advertised_url(), "http://127.0.0.1:6650");
    }

    #[test]
    fn only_an_embedded_store_inside_the_data_dir_counts_as_single_node() {
        let mut config = Config::load(None, []).unwrap();
        assert!(config.metadata_in_data_dir());

        config.metadata.url = "embedded:///var/lib/elsewhere/metadata.redb".into();
        assert!(!config.metadata_in_data_dir());

        config.metadata.url = "etcd://127.0.0.1:2379".into();
        assert!(!config.metadata_in_data_dir());
    }

    #[test]
    fn environment_variables_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sava.toml");
        std::fs::write(&path, "[limits]\nmax_message_bytes = 10\n").unwrap();
        let env = [
            (
                "SAVA_LIMITS__MAX_MESSAGE_BYTES".to_string(),
                "2048".to_string(),
            ),
            (
                "SAVA_BROKER__ADVERTISED_URL".to_string(),
                "http://b1:6650".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let config = Config::load(Some(&path), env).unwrap();
        assert_eq!(config.limits.max_message_bytes, 2048);
        assert_eq!(config.advertised_url(), "http://b1:6650");
    }

    #[test]
    fn the_commented_example_config_is_complete_and_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/sava.toml");
        let example = Config::load(Some(&path), []).unwrap();
        let defaults = Config::load(None, []).unwrap();
        assert_eq!(
            toml::to_string(&example).unwrap(),
            toml::to_string(&defaults).unwrap(),
            "the example must list every key at its default"
        );
    }

    #[test]
    fn bounds_that_could_never_work_are_refused_by_name() {
        for (key, value, named) in [
            ("SAVA_OFFLOAD__READ_NICE", "20", "offload.read_nice"),
            ("SAVA_STORAGE__READ_NICE", "-1", "storage.read_nice"),
            ("SAVA_OFFLOAD__READ_NICE", "-5", "offload.read_nice"),
            (
                "SAVA_LIMITS__CONSUMER_BUFFER_BYTES",
                "0",
                "limits.consumer_buffer_bytes",
            ),
        ] {
            let env = [(key.to_string(), value.to_string())];
            let error = Config::load(None, env).unwrap_err().to_string();
            assert!(error.contains(named), "{key}={value}: {error}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let env = [("SAVA_LIMITS__MAX_MESAGE_BYTES".to_string(), "1".to_string())];
        let error = Config::load(None, env).unwrap_err();
        assert!(error.to_string().contains("max_mesage_bytes"), "{error}");
    }
}
