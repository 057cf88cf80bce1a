//! `/metrics` of a real broker: the figures move as a scripted workload
//! says they must, and Prometheus (Debian's package) scraping the broker
//! answers every query the Grafana dashboards in `deploy/` use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sava_client::Message;
use sava_tests::clients::{client_of, consumer_from_earliest, next_message, reliable_producer};
use sava_tests::{Broker, free_addr, http_get};
use tokio::time::{Instant, sleep, timeout};

/// The samples of one scrape: `name{labels}` to value, labels as written.
async fn scrape(broker: &Broker) -> HashMap<String, f64> {
    let (status, body) = broker.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in the scrape"))
}

#[tokio::test]
async fn counts_in_equal_counts_out_and_the_backlog_rises_and_falls() {
    let broker = Broker::start().await.unwrap();
    let client = client_of(&broker).await;
    let topic = "/default/metered";
    let producer = reliable_producer(&client, topic).await;
    let mut consumer = consumer_from_earliest(&client, topic, "meter").await;

    let mut bytes = 0;
    for index in 0..100 {
        let message = Message::new(format!("reading {index:03}")).with_attribute("unit", "kWh");
        bytes += format!("reading {index:03}").len() + "unit".len() + "kWh".len();
        producer.send(message).await.unwrap().await.unwrap();
    }
    let mut received = Vec::new();
    for _ in 0..100 {
        received.push(next_message(&mut consumer, Duration::from_secs(10)).await);
    }

    let topic_label = format!("{{topic=\"{topic}\"}}");
    let sub_label = format!("{{topic=\"{topic}\",subscription=\"meter\"}}");
    let before = scrape(&broker).await;
    let series = |name: &str, labels: &str| format!("{name}{labels}");
    assert_eq!(
        value(
            &before,
            &series("sava_topic_messages_in_total", &topic_label)
        ),
        100.0
    );
    assert_eq!(
        value(
            &before,
            &series("sava_topic_messages_out_total", &topic_label)
        ),
        100.0
    );
    assert_eq!(
        value(&before, &series("sava_topic_bytes_in_total", &topic_label)),
        bytes as f64
    );
    assert_eq!(
        value(&before, &series("sava_topic_bytes_out_total", &topic_label)),
        bytes as f64
    );
    assert_eq!(
        value(&before, &series("sava_topic_producers", &topic_label)),
        1.0
    );
    assert_eq!(
        value(&before, &series("sava_topic_consumers", &topic_label)),
        1.0
    );
    assert_eq!(
        value(
            &before,
            &series("sava_subscription_backlog_messages", &sub_label)
        ),
        100.0
    );
    assert!(
        value(
            &before,
            &series("sava_subscription_backlog_bytes", &sub_label)
        ) > 0.0
    );
    // The segment file holds every payload, key and attribute, and more.
    assert!(value(&before, &series("sava_topic_local_bytes", &topic_label)) > bytes as f64);
    assert_eq!(
        value(&before, &series("sava_topic_spare_bytes", &topic_label)),
        0.0
    );
    assert!(value(&before, "sava_fsync_duration_seconds_count") > 0.0);
    assert!(value(&before, "sava_group_commit_batch_bytes_sum") >= bytes as f64);
    assert!(value(&before, "sava_metadata_transaction_duration_seconds_count") > 0.0);
    assert!(value(&before, "sava_lookups_total{result=\"connect\"}") >= 2.0);
    assert_eq!(value(&before, "sava_broker_leader"), 1.0);
    assert_eq!(value(&before, "sava_broker_lease_holds"), 1.0);
    assert_eq!(value(&before, "sava_connected_producers"), 1.0);

    for message in &received {
        consumer.ack(message).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = scrape(&broker).await;
        let backlog = value(
            &after,
            &series("sava_subscription_backlog_messages", &sub_label),
        );
        if backlog == 0.0 {
            let age = value(
                &after,
                &series("sava_subscription_oldest_unacked_age_seconds", &sub_label),
            );
            assert_eq!(age, 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "the backlog stayed at {backlog}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn per_topic_series_can_be_turned_off() {
    let env = [("SAVA_METRICS__PER_TOPIC", "false".to_owned())];
    let broker = Broker::start_with_env(Vec::<String>::new(), &env)
        .await
        .unwrap();
    let client = client_of(&broker).await;
    let producer = client.producer("/default/quiet").create().await.unwrap();
    producer
        .send(Message::new("x"))
        .await
        .unwrap()
        .await
        .unwrap();

    let samples = scrape(&broker).await;
    assert!(
        samples.keys().all(|series| !series.contains("topic=")),
        "{samples:?}"
    );
    assert_eq!(value(&samples, "sava_broker_messages_in_total"), 1.0);
}

/// A Prometheus server from Debian's package, scraping one broker every
/// 500 ms, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n\
                 scrape_configs:\n  - job_name: sava\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("log")).unwrap(),
            ))
            .spawn()
            .expect("prometheus runs (tests/run.sh installs Debian's package)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Evaluates `query` now; returns how many series it gave, or the error.
    async fn series(&self, query: &str) -> Result<usize, String> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let (status, body) = http_get(self.addr, &path)
            .await
            .map_err(|e| e.to_string())?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(answer["data"]["result"].as_array().map_or(0, Vec::len))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` percent-encoded for a URL query.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn queries_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/queries.txt")
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_prometheus_scraping_a_broker() {
    // Small segments offloaded at once and dropped locally, so a replay
    // reads objects and the storage panels have data.
    let env = [
        ("SAVA_STORAGE__SEGMENT_BYTES", "8192".to_owned()),
        ("SAVA_STORAGE__TAIL_CACHE_BYTES", "4096".to_owned()),
        ("SAVA_OFFLOAD__INTERVAL_MS", "100".to_owned()),
        ("SAVA_OFFLOAD__LOCAL_RETENTION_SECS", "0".to_owned()),
        ("SAVA_OFFLOAD__ROW_GROUP_BYTES", "2048".to_owned()),
    ];
    let broker = Broker::start_with_env(Vec::<String>::new(), &env)
        .await
        .unwrap();
    broker.admin_ok(&[
        "namespaces",
        "set-policy",
        "default",
        "retention_age_secs",
        "3600",
    ]);
    let prometheus = Prometheus::start(broker.http_addr());
    let client = client_of(&broker).await;
    let topic = "/default/dashboards";

    let producer = reliable_producer(&client, topic).await;
    let mut live = consumer_from_earliest(&client, topic, "live").await;
    let started = Instant::now();
    let mut index = 0u64;
    // Keep traffic flowing for a while, so rates over a minute have points.
    while started.elapsed() < Duration::from_secs(6) {
        for _ in 0..50 {
            let message = Message::new(format!(
                "event {index:06} with some padding to fill segments"
            ));
            producer.send(message).await.unwrap().await.unwrap();
            index += 1;
        }
        while let Ok(Some(Ok(message))) = timeout(Duration::from_millis(50), live.recv()).await {
            live.ack(&message).unwrap();
        }
    }
    // A replay from the start reads offloaded objects.
    let mut replay = consumer_from_earliest(&client, topic, "replay").await;
    for _ in 0..index / 2 {
        let message = next_message(&mut replay, Duration::from_secs(20)).await;
        replay.ack(&message).unwrap();
    }

    // Until Prometheus has scraped what the workload left behind.
    let queries = std::fs::read_to_string(queries_file()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for query in queries.lines().filter(|line| !line.trim().is_empty()) {
            match prometheus.series(query).await {
                Ok(0) => empty.push(format!("no data: {query}")),
                Ok(_) => {}
                Err(error) => empty.push(format!("{error}: {query}")),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of the dashboard queries failed:\n{}",
            empty.len(),
            empty.join("\n")
        );
        sleep(Duration::from_millis(500)).await;
    }
}
