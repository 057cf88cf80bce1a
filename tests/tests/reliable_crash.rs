//! Reliable topics across broker crashes: a broker killed with SIGKILL
//! while producers send loses nothing it acknowledged, reuses no offset, and
//! redelivers what subscriptions had not acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sava_client::{Client, Message, Producer, StartPosition, SubscriptionType};
use sava_tests::Broker;
use tokio::time::{Instant, timeout};

/// Acknowledged messages: (partition, offset) → payload.
type Acked = Arc<Mutex<BTreeMap<(String, u64), String>>>;

async fn client(broker: &Broker) -> Client {
    Client::builder(broker.service_url())
        .build()
        .await
        .expect("client connects")
}

/// Sends the messages `make(seq)` gives (with their payload as text) until
/// the producer fails, and records each acknowledged one in `acked`.
fn keep_sending(
    producer: Producer,
    acked: &Acked,
    make: impl Fn(u64) -> (String, Message) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let acked = Arc::clone(acked);
    tokio::spawn(async move {
        for seq in 0.. {
            let (payload, message) = make(seq);
            let Ok(sent) = producer.send(message).await else {
                return;
            };
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                if let Ok(id) = sent.await {
                    let key = (id.topic.to_string(), id.offset);
                    acked.lock().unwrap().insert(key, payload);
                }
            });
            if seq % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    })
}

/// Runs `producers` producers until the broker is killed after `run_for`.
async fn produce_until_killed(
    broker: &mut Broker,
    topic: &str,
    round: usize,
    run_for: Duration,
    acked: &Acked,
) {
    let client = client(broker).await;
    let mut tasks = Vec::new();
    for p in 0..3 {
        let producer = client
            .producer(topic)
            .name(format!("p{p}"))
            .partitions(2)
            .reliable(true)
            .create()
            .await
            .expect("producer");
        tasks.push(keep_sending(producer, acked, move |seq| {
            let payload = format!("r{round}-p{p}-{seq}");
            let message = Message::new(payload.clone()).with_key(format!("k{}", seq % 5));
            (payload, message)
        }));
    }
    tokio::time::sleep(run_for).await;
    broker.kill().expect("kill -9");
    for task in tasks {
        task.abort();
    }
}

/// Reads every partition from the start and checks it against `acked`.
async fn check_history(broker: &Broker, topic: &str, subscription: &str, acked: &Acked) {
    let expected = acked.lock().unwrap().clone();
    assert!(
        !expected.is_empty(),
        "the producers got acknowledgements before the kill"
    );
    let client = client(broker).await;
    let mut consumer = client
        .consumer(topic, subscription)
        .subscription_type(SubscriptionType::Exclusive)
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe after restart");

    let mut seen: HashMap<(String, u64), String> = HashMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut missing: std::collections::HashSet<(String, u64)> = expected.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = timeout(left, consumer.recv()).await else {
            let missing: Vec<_> = missing.iter().collect();
            panic!(
                "{} of {} acknowledged messages not delivered within 60 s, e.g. {:?}; last offsets {last:?}\nbroker log:\n{}",
                missing.len(),
                expected.len(),
                &missing[..missing.len().min(5)],
                broker.log_tail()
            );
        };
        let message = message.expect("consumer open").expect("no error");
        let partition = message.topic.to_string();
        if let Some(previous) = last.insert(partition.clone(), message.offset) {
            assert!(
                message.offset > previous,
                "{partition}: offset {} after {previous}",
                message.offset
            );
        }
        let payload = String::from_utf8(message.payload.to_vec()).unwrap();
        let key = (partition, message.offset);
        missing.remove(&key);
        assert!(
            seen.insert(key.clone(), payload).is_none(),
            "offset {key:?} delivered twice"
        );
        consumer.ack(&message).unwrap();
    }
    for (key, payload) in &expected {
        assert_eq!(
            seen.get(key),
            Some(payload),
            "acknowledged message at {key:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_repeated_kills() {
    let mut broker = Broker::start().await.unwrap();
    let topic = "/default/crash";
    let acked: Acked = Arc::default();

    for (round, run_for) in [300u64, 700, 1100].into_iter().enumerate() {
        eprintln!("round {round}");
        let produce = produce_until_killed(
            &mut broker,
            topic,
            round,
            Duration::from_millis(run_for),
            &acked,
        );
        timeout(Duration::from_secs(30), produce)
            .await
            .expect("producing and killing within 30 s");
        eprintln!("killed; {} acknowledged", acked.lock().unwrap().len());
        broker.restart().await.expect("restart on the same data");
        eprintln!("restarted");
        check_history(&broker, topic, &format!("check-{round}"), &acked).await;
    }
}

#[tokio::test]
async fn a_subscription_resumes_after_its_acknowledged_messages_when_the_broker_restarts() {
    let mut broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/cursor";

    let producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let mut consumer = client
        .consumer(topic, "s")
        .name("c")
        .subscribe()
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(producer.send(Message::new(format!("{i}"))).await.unwrap());
    }
    for future in pending {
        future.await.unwrap();
    }
    for _ in 0..10 {
        let message = timeout(Duration::from_secs(10), consumer.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        consumer.ack(&message).unwrap();
    }
    consumer.close().await;
    // The broker has the acks once its cursor shows them ...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = broker
            .sava_admin_command()
            .unwrap()
            .args(["--output", "json", "subscriptions", "describe", topic, "s"])
            .output()
            .unwrap();
        let described: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if described["cursor"] == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the acks never arrived: {described}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and saves it within storage.cursor_flush_ms (100 ms), which is the
    // bound a kill may lose; waiting it out several times over is the point.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill().unwrap();
    broker.restart().await.unwrap();

    let client = self::client(&broker).await;
    let mut consumer = client
        .consumer(topic, "s")
        .name("c")
        .subscribe()
        .await
        .unwrap();
    let first = timeout(Duration::from_secs(10), consumer.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.offset, 10,
        "the first unacknowledged message comes first"
    );
}

#[tokio::test]
async fn a_danube_reliable_producer_keeps_working_across_a_broker_restart() {
    use danube_client::{DanubeClient, SubType};

    let mut broker = Broker::start().await.unwrap();
    let url = broker.service_url();
    let client = DanubeClient::builder()
        .service_url(url.clone())
        .build()
        .await
        .unwrap();
    let topic = "/default/danube-restart";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("dp")
        .with_reliable_dispatch()
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let mut consumer = client
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("dc")
        .with_subscription("ds")
        .with_subscription_type(SubType::Exclusive)
        .build()
        .unwrap();
    consumer.subscribe().await.unwrap();

    producer.send(b"before".to_vec(), None).await.unwrap();
    broker.kill().unwrap();
    broker.restart().await.unwrap();
    producer
        .send(b"after".to_vec(), None)
        .await
        .expect("the client reconnects");

    let mut stream = consumer.receive().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let message = timeout(Duration::from_secs(30), stream.recv())
            .await
            .unwrap()
            .unwrap();
        consumer.ack(&message).await.unwrap();
        got.push(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    assert_eq!(got, vec!["before", "after"]);
}

/// Inodes of the files in `dir` ending in `.extension`.
fn inodes(dir: &std::path::Path, extension: &str) -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(extension))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.ino())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_while_it_writes_into_reused_segment_files_loses_nothing_acknowledged() {
    // Small segments and a consumer that acknowledges as it reads: retention
    // retires segments every second, and rolls reuse their files, which
    // still hold their earlier batches past what is written into them.
    let env = [("SAVA_STORAGE__SEGMENT_BYTES", "16384".to_owned())];
    let mut broker = Broker::start_with_env(Vec::<String>::new(), &env)
        .await
        .unwrap();
    let topic = "/default/reuse";
    let dir = broker.data_dir().join("topics/default/reuse");

    for (round, linger_ms) in [0u64, 150, 400].into_iter().enumerate() {
        let client = client(&broker).await;
        let producer = client
            .producer(topic)
            .reliable(true)
            .create()
            .await
            .unwrap();
        let mut consumer = client
            .consumer(topic, "s")
            .name("c")
            .start(StartPosition::Earliest)
            .subscribe()
            .await
            .unwrap();
        let acked: Acked = Arc::default();
        let consumed: Acked = Arc::default();
        let reading = {
            let consumed = Arc::clone(&consumed);
            tokio::spawn(async move {
                while let Some(Ok(message)) = consumer.recv().await {
                    let payload = String::from_utf8(message.payload.to_vec()).unwrap();
                    let key = (message.topic.to_string(), message.offset);
                    consumed.lock().unwrap().insert(key, payload);
                    consumer.ack(&message).unwrap();
                }
            })
        };
        let producing = keep_sending(producer, &acked, move |seq| {
            let payload = format!("round {round} message {seq} {}", "x".repeat(200));
            (payload.clone(), Message::new(payload))
        });

        // Kill once a file that was a spare holds the segment being written.
        let mut spares = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            spares.extend(inodes(&dir, ".spare"));
            if !inodes(&dir, ".wal").is_disjoint(&spares) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no segment reused a spare within 30 s\n{}",
                broker.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(linger_ms)).await;
        broker.kill().unwrap();
        producing.abort();
        reading.abort();
        broker.restart().await.unwrap();

        // Everything acknowledged and not read before the kill comes now,
        // in order and once.
        let client = self::client(&broker).await;
        let mut consumer = client
            .consumer(topic, "s")
            .name("c")
            .subscribe()
            .await
            .unwrap();
        let acked = acked.lock().unwrap().clone();
        let consumed = consumed.lock().unwrap().clone();
        let mut missing: std::collections::BTreeSet<_> = acked
            .keys()
            .filter(|key| !consumed.contains_key(*key))
            .cloned()
            .collect();
        eprintln!(
            "round {round}: {} acknowledged, {} read before the kill, {} to come",
            acked.len(),
            consumed.len(),
            missing.len()
        );
        let mut last = None;
        while !missing.is_empty() {
            let Ok(Some(Ok(message))) = timeout(Duration::from_secs(30), consumer.recv()).await
            else {
                panic!(
                    "{} acknowledged messages never came, e.g. {:?}\n{}",
                    missing.len(),
                    missing.first(),
                    broker.log_tail()
                );
            };
            assert!(
                last.is_none_or(|last| message.offset > last),
                "offset {} after {last:?}",
                message.offset
            );
            last = Some(message.offset);
            let key = (message.topic.to_string(), message.offset);
            if let Some(payload) = acked.get(&key) {
                assert_eq!(payload.as_bytes(), &message.payload[..], "{key:?}");
            }
            missing.remove(&key);
            consumer.ack(&message).unwrap();
        }
        consumer.close().await;
    }
}
