//! Backlog quotas and retention of reliable topics, set as namespace
//! policies through `sava-admin`.

use std::time::Duration;

use sava_client::{Client, Message, StartPosition};
use sava_tests::Broker;
use tokio::time::{Instant, sleep, timeout};

/// A config with small segments, so that retention has sealed ones to act on.
fn small_segments() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sava.toml");
    std::fs::write(&path, "[storage]\nsegment_bytes = 8192\n").unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[tokio::test]
async fn producers_are_refused_over_the_backlog_quota_until_consumers_catch_up() {
    let broker = Broker::start().await.unwrap();
    assert!(
        broker
            .admin(&["namespaces", "create", "quota"])
            .status
            .success()
    );
    let set = broker.admin(&[
        "namespaces",
        "set-policy",
        "quota",
        "backlog_quota_bytes",
        "20000",
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let topic = "/quota/jobs";
    let producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let mut consumer = client
        .consumer(topic, "workers")
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap();

    // The broker checks the quota once a second; keep producing until it says no.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0;
    let error = loop {
        assert!(
            Instant::now() < deadline,
            "never refused after {sent} messages"
        );
        match producer
            .send(Message::new(vec![b'j'; 1000]))
            .await
            .unwrap()
            .await
        {
            Ok(_) => sent += 1,
            Err(error) => break error.to_string(),
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("backlog quota of 20000 bytes"), "{error}");

    for _ in 0..sent {
        let message = timeout(Duration::from_secs(10), consumer.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        consumer.ack(&message).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match producer.send(Message::new("again")).await.unwrap().await {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "still refused after catching up: {error}"
            ),
        }
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn acknowledged_segments_are_deleted_and_retention_keeps_them_when_asked() {
    let (_config_dir, config) = small_segments();
    let broker = Broker::start_with(["--config", config.as_str()])
        .await
        .unwrap();
    assert!(
        broker
            .admin(&["namespaces", "create", "kept"])
            .status
            .success()
    );
    let set = broker.admin(&[
        "namespaces",
        "set-policy",
        "kept",
        "retention_age_secs",
        "3600",
    ]);
    assert!(set.status.success());

    let client = Client::builder(broker.service_url()).build().await.unwrap();
    for topic in ["/default/churn", "/kept/history"] {
        let producer = client
            .producer(topic)
            .reliable(true)
            .create()
            .await
            .unwrap();
        let mut consumer = client.consumer(topic, "s").subscribe().await.unwrap();
        for i in 0..200 {
            producer
                .send(Message::new(format!("{i:0>500}")))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        for _ in 0..200 {
            let message = timeout(Duration::from_secs(10), consumer.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            consumer.ack(&message).unwrap();
        }
        consumer.close().await;
    }

    // Retention runs once a second; cursors are saved every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let churn = broker.admin_json(&["topics", "stats", "/default/churn"]);
        if churn["local_bytes"].as_u64().unwrap() < 20_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged segments stayed: {churn}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    let history = broker.admin_json(&["topics", "stats", "/kept/history"]);
    assert!(
        history["local_bytes"].as_u64().unwrap() > 90_000,
        "retention kept nothing: {history}"
    );

    let mut replay = client
        .consumer("/kept/history", "replay")
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap();
    let first = timeout(Duration::from_secs(10), replay.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.offset, 0,
        "the retained history replays from the start"
    );
}

#[tokio::test]
async fn with_offload_off_sealed_history_never_counts_as_waiting_for_offload() {
    let (_config_dir, config) = small_segments();
    let env = [
        ("SAVA_OFFLOAD__ENABLED", "false".to_owned()),
        ("SAVA_OFFLOAD__MAX_PENDING_BYTES", "20000".to_owned()),
    ];
    let broker = Broker::start_with_env(["--config", config.as_str()], &env)
        .await
        .unwrap();
    broker.admin_ok(&["namespaces", "create", "local"]);
    broker.admin_ok(&[
        "namespaces",
        "set-policy",
        "local",
        "retention_age_secs",
        "3600",
    ]);
    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let producer = client
        .producer("/local/history")
        .reliable(true)
        .create()
        .await
        .unwrap();

    // 100 KB of sealed history, five times the bound, sent across several
    // passes of the janitor (once a second), which would refuse them.
    for i in 0..200 {
        let sent = producer.send(Message::new(format!("{i:0>500}")));
        sent.await.unwrap().await.unwrap();
        if i % 50 == 49 {
            sleep(Duration::from_millis(1100)).await;
        }
    }
    let history = broker.admin_json(&["topics", "stats", "/local/history"]);
    assert!(
        history["local_bytes"].as_u64().unwrap() > 90_000,
        "{history}"
    );
}

#[tokio::test]
async fn drop_oldest_moves_a_lagging_subscription_past_the_oldest_segments() {
    let (_config_dir, config) = small_segments();
    let broker = Broker::start_with(["--config", config.as_str()])
        .await
        .unwrap();
    assert!(
        broker
            .admin(&["namespaces", "create", "lossy"])
            .status
            .success()
    );
    for (key, value) in [
        ("backlog_quota_bytes", "30000"),
        ("backlog_policy", "drop_oldest"),
    ] {
        let set = broker.admin(&["namespaces", "set-policy", "lossy", key, value]);
        assert!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
    }

    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let topic = "/lossy/feed";
    let producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let subscribe = [
        "subscriptions",
        "create",
        topic,
        "laggard",
        "--from",
        "earliest",
    ];
    assert!(broker.admin(&subscribe).status.success());
    for i in 0..200 {
        producer
            .send(Message::new(format!("{i:0>500}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let described = broker.admin_json(&["subscriptions", "describe", topic, "laggard"]);
        // Whole sealed segments are dropped and the active one stays, so the
        // backlog settles within a segment or two of the quota.
        let settled = described["backlog_bytes"].as_u64().unwrap() <= 30_000 + 2 * 8192;
        if described["cursor"].as_u64().unwrap() > 0 && settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog did not shrink: {described}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    let mut consumer = client.consumer(topic, "laggard").subscribe().await.unwrap();
    let first = timeout(Duration::from_secs(10), consumer.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.offset > 0, "the oldest messages were dropped");
}

#[tokio::test]
async fn a_topic_policy_overrides_its_namespace_for_that_topic_only() {
    let broker = Broker::start().await.unwrap();
    broker.admin_ok(&["namespaces", "create", "mixed"]);
    for topic in ["/mixed/strict", "/mixed/free"] {
        broker.admin_ok(&["topics", "create", topic, "--reliable"]);
    }
    let set = broker.admin_json(&[
        "topics",
        "set-policy",
        "/mixed/strict",
        "backlog_quota_bytes",
        "20000",
    ]);
    assert_eq!(set["backlog_quota_bytes"], 20000, "{set}");
    assert_eq!(set["effective"]["backlog_quota_bytes"], 20000, "{set}");
    let free = broker.admin_json(&["topics", "policies", "/mixed/free"]);
    assert!(free["backlog_quota_bytes"].is_null(), "{free}");
    assert_eq!(free["effective"]["backlog_quota_bytes"], 0, "{free}");

    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    for topic in ["/mixed/strict", "/mixed/free"] {
        producers.push(
            client
                .producer(topic)
                .reliable(true)
                .create()
                .await
                .unwrap(),
        );
        let consumer = client
            .consumer(topic, "idle")
            .start(StartPosition::Earliest);
        consumers.push(consumer.subscribe().await.unwrap());
    }

    // The quota is checked once a second: the strict topic refuses in time,
    // the free one takes everything.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0;
    let refusal = loop {
        assert!(Instant::now() < deadline, "never refused after {sent}");
        let free = producers[1]
            .send(Message::new(vec![b'f'; 1000]))
            .await
            .unwrap();
        free.await.unwrap();
        match producers[0]
            .send(Message::new(vec![b's'; 1000]))
            .await
            .unwrap()
            .await
        {
            Ok(_) => sent += 1,
            Err(error) => break error.to_string(),
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refusal.contains("backlog quota of 20000 bytes"),
        "{refusal}"
    );

    // Back to the namespace's (no quota): accepted again.
    let back = broker.admin_json(&[
        "topics",
        "set-policy",
        "/mixed/strict",
        "backlog_quota_bytes",
        "inherit",
    ]);
    assert!(back["backlog_quota_bytes"].is_null(), "{back}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(error) = producers[0]
        .send(Message::new("again"))
        .await
        .unwrap()
        .await
    {
        assert!(Instant::now() < deadline, "still refused: {error}");
        sleep(Duration::from_millis(100)).await;
    }
    let unknown = broker.admin(&["topics", "set-policy", "/mixed/strict", "colour", "1"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown topic policy colour"));
}
