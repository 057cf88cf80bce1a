//! The HTTP endpoint: `/healthz` (the process is up), `/readyz` (the broker
//! serves clients) and `/metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use sava_storage::metrics::HistogramSnapshot;

use crate::broker::Broker;
use crate::topic::{Topic, now_ms};

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(broker)
}

async fn ready(State(broker): State<Arc<Broker>>) -> (StatusCode, &'static str) {
    if broker.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    }
    if broker.cluster.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match broker.cluster.lease().holds() {
        true => (StatusCode::OK, "ready\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "no cluster lease\n"),
    }
}

async fn metrics(State(broker): State<Arc<Broker>>) -> String {
    let mut out = Exposition::default();
    let topics = broker.loaded_topics();
    broker_metrics(&broker, &topics, &mut out);
    if broker.config.metrics.per_topic {
        topic_metrics(&topics, &mut out);
        subscription_metrics(&topics, &mut out);
    }
    tier_metrics(&broker, &topics, &mut out);
    out.text
}

/// Prometheus's text format, written family by family.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// One family with a single sample and no labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The `_bucket`, `_sum` and `_count` series of one histogram.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], snapshot: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in &snapshot.buckets {
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, snapshot.count);
        self.sample(&format!("{name}_sum"), labels, snapshot.sum);
        self.sample(&format!("{name}_count"), labels, snapshot.count);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Figures of the whole broker: membership, clients, lookups, group commit
/// and metadata.
fn broker_metrics(broker: &Broker, topics: &[Arc<Topic>], out: &mut Exposition) {
    let cluster = &broker.cluster;
    out.single(
        "sava_broker_topics_loaded",
        "gauge",
        "Topics (partitions one by one) loaded on this broker.",
        topics.len(),
    );
    out.single(
        "sava_broker_topics_owned",
        "gauge",
        "Topics the cluster assigned to this broker, as of its last lease renewal.",
        cluster.owned_count(),
    );
    out.single(
        "sava_broker_leader",
        "gauge",
        "1 while this broker leads the cluster.",
        u8::from(cluster.is_leader()),
    );
    out.single(
        "sava_broker_lease_holds",
        "gauge",
        "1 while this broker's cluster lease holds (it accepts messages).",
        u8::from(cluster.lease().holds()),
    );
    out.single(
        "sava_broker_draining",
        "gauge",
        "1 while this broker hands its topics over.",
        u8::from(cluster.is_draining()),
    );
    let (producers, consumers) = broker.client_counts();
    out.single(
        "sava_connected_producers",
        "gauge",
        "Producers attached to this broker.",
        producers,
    );
    out.single(
        "sava_connected_consumers",
        "gauge",
        "Consumers registered on this broker.",
        consumers,
    );
    let messages_in: u64 = topics
        .iter()
        .map(|t| t.stats.messages_in.load(Ordering::Relaxed))
        .sum();
    out.single(
        "sava_broker_messages_in_total",
        "counter",
        "Messages published to the topics loaded here.",
        messages_in,
    );
    let messages_out: u64 = topics.iter().map(|t| t.messages_out()).sum();
    out.single(
        "sava_broker_messages_out_total",
        "counter",
        "Messages handed to consumers of the topics loaded here.",
        messages_out,
    );

    let metrics = &broker.metrics;
    out.family(
        "sava_lookups_total",
        "counter",
        "Topic lookups answered: connect (owned here), redirect (owned by another broker), error.",
    );
    for (result, counter) in [
        ("connect", &metrics.lookups_connect),
        ("redirect", &metrics.lookups_redirect),
        ("error", &metrics.lookups_error),
    ] {
        out.sample(
            "sava_lookups_total",
            &[("result", result)],
            counter.load(Ordering::Relaxed),
        );
    }
    out.family(
        "sava_group_commit_batch_bytes",
        "histogram",
        "Bytes acknowledged by one group commit flush, all producers together.",
    );
    out.histogram(
        "sava_group_commit_batch_bytes",
        &[],
        &metrics.commit_batch_bytes.snapshot(),
    );
    out.family(
        "sava_fsync_duration_seconds",
        "histogram",
        "Time one group commit flush spent in fsync.",
    );
    out.histogram(
        "sava_fsync_duration_seconds",
        &[],
        &metrics.fsync_seconds.snapshot(),
    );
    out.family(
        "sava_metadata_transaction_duration_seconds",
        "histogram",
        "Metadata store transactions, from begin to the end of the commit.",
    );
    out.histogram(
        "sava_metadata_transaction_duration_seconds",
        &[],
        &metrics.metadata_seconds.snapshot(),
    );
    out.single(
        "sava_metadata_conflicts_total",
        "counter",
        "Metadata transactions that conflicted with another commit (and were retried).",
        metrics.metadata_conflicts.load(Ordering::Relaxed),
    );
}

/// Per topic: rates in and out, clients, local disk use.
fn topic_metrics(topics: &[Arc<Topic>], out: &mut Exposition) {
    type Figure = fn(&Topic) -> u64;
    let families: [(&str, &str, &str, Figure); 9] = [
        (
            "sava_topic_messages_in_total",
            "counter",
            "Messages published to a topic.",
            |t| t.stats.messages_in.load(Ordering::Relaxed),
        ),
        (
            "sava_topic_bytes_in_total",
            "counter",
            "Message bytes (payload, key, attributes) published to a topic.",
            |t| t.stats.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "sava_topic_messages_out_total",
            "counter",
            "Messages handed to the consumers of a topic, over its subscriptions.",
            |t| t.messages_out(),
        ),
        (
            "sava_topic_bytes_out_total",
            "counter",
            "Message bytes handed to the consumers of a topic.",
            |t| t.bytes_out(),
        ),
        (
            "sava_topic_producers",
            "gauge",
            "Producers attached to a topic.",
            |t| t.producers().len() as u64,
        ),
        (
            "sava_topic_consumers",
            "gauge",
            "Consumers registered on a topic's subscriptions.",
            |t| {
                t.subscriptions()
                    .iter()
                    .map(|s| s.consumers().len() as u64)
                    .sum()
            },
        ),
        (
            "sava_topic_subscriptions",
            "gauge",
            "Subscriptions of a topic.",
            |t| t.subscriptions().len() as u64,
        ),
        (
            "sava_topic_local_bytes",
            "gauge",
            "Bytes of a reliable topic's segment files and indexes on local disk.",
            |t| t.local_bytes(),
        ),
        (
            "sava_topic_spare_bytes",
            "gauge",
            "Bytes of retired segment files a reliable topic keeps on local disk for reuse.",
            |t| t.spare_bytes(),
        ),
    ];
    for (name, kind, help, figure) in families {
        out.family(name, kind, help);
        for topic in topics {
            out.sample(name, &[("topic", topic.name.as_str())], figure(topic));
        }
    }
}

/// Per subscription: deliveries, backlog, redeliveries and dead letters.
fn subscription_metrics(topics: &[Arc<Topic>], out: &mut Exposition) {
    let mut rows = Vec::new();
    for topic in topics {
        for subscription in topic.subscriptions() {
            rows.push((
                topic.name.to_string(),
                subscription.name.clone(),
                subscription.snapshot(),
            ));
        }
    }
    type Figure = fn(&crate::subscription::SubscriptionSnapshot) -> f64;
    let families: [(&str, &str, &str, Figure); 6] = [
        (
            "sava_subscription_messages_out_total",
            "counter",
            "Messages handed to a subscription's consumers.",
            |s| s.delivered as f64,
        ),
        (
            "sava_subscription_backlog_messages",
            "gauge",
            "Messages of a subscription not acknowledged yet.",
            |s| s.backlog_messages as f64,
        ),
        (
            "sava_subscription_backlog_bytes",
            "gauge",
            "Bytes of a subscription's unacknowledged messages.",
            |s| s.backlog_bytes as f64,
        ),
        (
            "sava_subscription_oldest_unacked_age_seconds",
            "gauge",
            "Age of a subscription's oldest unacknowledged message; 0 without one.",
            |s| {
                s.oldest_unacked_ms
                    .map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0)
            },
        ),
        (
            "sava_subscription_redelivered_total",
            "counter",
            "Messages a subscription delivered again (nack, ack timeout, a consumer gone).",
            |s| s.redelivered as f64,
        ),
        (
            "sava_subscription_dead_lettered_total",
            "counter",
            "Messages a subscription sent to its dead-letter topic.",
            |s| s.dead_lettered as f64,
        ),
    ];
    for (name, kind, help, figure) in families {
        out.family(name, kind, help);
        for (topic, subscription, snapshot) in &rows {
            let labels = [
                ("topic", topic.as_str()),
                ("subscription", subscription.as_str()),
            ];
            out.sample(name, &labels, figure(snapshot));
        }
    }
}

/// Offload lag per reliable topic, the object storage tier's counters and
/// the object store's request latency.
fn tier_metrics(broker: &Broker, topics: &[Arc<Topic>], out: &mut Exposition) {
    let Some(tier) = broker.tier() else {
        return;
    };
    if broker.config.metrics.per_topic {
        out.family(
            "sava_offload_lag_messages",
            "gauge",
            "Durable messages of a reliable topic not offloaded to the object store yet.",
        );
        for topic in topics {
            if let Some(log) = topic.log() {
                let lag = log
                    .end()
                    .saturating_sub(log.offloaded_end().max(log.start()));
                out.sample(
                    "sava_offload_lag_messages",
                    &[("topic", topic.name.as_str())],
                    lag,
                );
            }
        }
        out.family(
            "sava_offload_objects",
            "gauge",
            "Offloaded objects a reliable topic's history is in.",
        );
        for topic in topics {
            if let Some(log) = topic.log() {
                let objects = log.remote_segments().len();
                out.sample(
                    "sava_offload_objects",
                    &[("topic", topic.name.as_str())],
                    objects,
                );
            }
        }
    }

    let stats = tier.stats();
    let counters = [
        (
            "sava_offload_segments_total",
            "Segments offloaded.",
            &stats.segments_offloaded,
        ),
        (
            "sava_offload_uploaded_bytes_total",
            "Bytes of Parquet objects uploaded by offload.",
            &stats.bytes_uploaded,
        ),
        (
            "sava_offload_message_bytes_total",
            "Message bytes offloaded (as produced, before encoding).",
            &stats.message_bytes_offloaded,
        ),
        (
            "sava_offload_upload_errors_total",
            "Offload uploads that failed (after the client's retries).",
            &stats.upload_errors,
        ),
        (
            "sava_object_store_gets_total",
            "Ranged GETs of offloaded objects by readers.",
            &stats.gets,
        ),
        (
            "sava_object_store_get_errors_total",
            "Ranged GETs by readers that failed.",
            &stats.get_errors,
        ),
        (
            "sava_object_store_fetched_bytes_total",
            "Bytes fetched by readers' ranged GETs.",
            &stats.bytes_fetched,
        ),
        (
            "sava_tier_cache_hits_total",
            "Row group reads served by the read cache.",
            &stats.cache_hits,
        ),
        (
            "sava_tier_cache_misses_total",
            "Row group reads that went to the object store.",
            &stats.cache_misses,
        ),
        (
            "sava_tier_compactions_total",
            "Merged objects written by compaction.",
            &stats.compactions,
        ),
        (
            "sava_tier_objects_deleted_total",
            "Objects deleted by retention, the sweeper and compaction.",
            &stats.objects_deleted,
        ),
    ];
    for (name, help, value) in counters {
        out.single(name, "counter", help, value.load(Ordering::Relaxed));
    }

    let requests = tier.objects().requests();
    out.family(
        "sava_object_store_request_duration_seconds",
        "histogram",
        "Object store requests by operation (put, get, delete, list), multipart uploads as one.",
    );
    for (operation, figures) in requests.by_operation() {
        out.histogram(
            "sava_object_store_request_duration_seconds",
            &[("operation", operation)],
            &figures.latency.snapshot(),
        );
    }
    out.family(
        "sava_object_store_errors_total",
        "counter",
        "Object store requests that failed, by operation.",
    );
    for (operation, figures) in requests.by_operation() {
        out.sample(
            "sava_object_store_errors_total",
            &[("operation", operation)],
            figures.errors.load(Ordering::Relaxed),
        );
    }
}
