//! The HTTP endpoint: `/healthz` (the process is up), `/readyz` (the broker
//! serves clients) and `/metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::broker::Broker;

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
    let mut out = String::new();
    let topics = broker.loaded_topics();
    let _ = writeln!(
        out,
        "# HELP sava_topic_messages_in_total Messages published to a topic."
    );
    let _ = writeln!(out, "# TYPE sava_topic_messages_in_total counter");
    for topic in &topics {
        let count = topic.stats.messages_in.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "sava_topic_messages_in_total{{topic=\"{}\"}} {count}",
            topic.name
        );
    }
    let _ = writeln!(
        out,
        "# HELP sava_topic_bytes_in_total Bytes published to a topic."
    );
    let _ = writeln!(out, "# TYPE sava_topic_bytes_in_total counter");
    for topic in &topics {
        let bytes = topic.stats.bytes_in.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "sava_topic_bytes_in_total{{topic=\"{}\"}} {bytes}",
            topic.name
        );
    }
    let _ = writeln!(
        out,
        "# HELP sava_consumer_messages_out_total Messages sent to a consumer."
    );
    let _ = writeln!(out, "# TYPE sava_consumer_messages_out_total counter");
    for topic in &topics {
        for subscription in topic.subscriptions() {
            let delivered: u64 = subscription.consumers().iter().map(|c| c.delivered()).sum();
            let _ = writeln!(
                out,
                "sava_consumer_messages_out_total{{topic=\"{}\",subscription=\"{}\"}} {delivered}",
                topic.name, subscription.name
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sava_topic_producers Producers attached to a topic."
    );
    let _ = writeln!(out, "# TYPE sava_topic_producers gauge");
    for topic in &topics {
        let _ = writeln!(
            out,
            "sava_topic_producers{{topic=\"{}\"}} {}",
            topic.name,
            topic.producers().len()
        );
    }
    tier_metrics(&broker, &topics, &mut out);
    out
}

/// One metric family: its help and type lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Offload lag per reliable topic and the object storage tier's counters.
fn tier_metrics(broker: &Broker, topics: &[Arc<crate::topic::Topic>], out: &mut String) {
    let Some(tier) = broker.tier() else {
        return;
    };
    family(
        out,
        "sava_offload_lag_messages",
        "gauge",
        "Durable messages of a reliable topic not offloaded to the object store yet.",
    );
    for topic in topics {
        if let Some(log) = topic.log() {
            let lag = log
                .end()
                .saturating_sub(log.offloaded_end().max(log.start()));
            let _ = writeln!(
                out,
                "sava_offload_lag_messages{{topic=\"{}\"}} {lag}",
                topic.name
            );
        }
    }
    family(
        out,
        "sava_offload_objects",
        "gauge",
        "Offloaded objects a reliable topic's history is in.",
    );
    for topic in topics {
        if let Some(log) = topic.log() {
            let objects = log.remote_segments().len();
            let _ = writeln!(
                out,
                "sava_offload_objects{{topic=\"{}\"}} {objects}",
                topic.name
            );
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
            "Ranged GETs that failed.",
            &stats.get_errors,
        ),
        (
            "sava_object_store_fetched_bytes_total",
            "Bytes fetched by ranged GETs.",
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
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
    let seconds = [
        (
            "sava_offload_upload_seconds_total",
            "Time spent uploading offloaded objects.",
            &stats.upload_micros_total,
        ),
        (
            "sava_object_store_get_seconds_total",
            "Time spent in ranged GETs; divide by sava_object_store_gets_total for the mean latency.",
            &stats.get_micros_total,
        ),
    ];
    for (name, help, micros) in seconds {
        family(out, name, "counter", help);
        let value = micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name} {value}");
    }
}
