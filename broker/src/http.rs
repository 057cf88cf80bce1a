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
    match broker.is_stopping() {
        true => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        false => (StatusCode::OK, "ready\n"),
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
    out
}
