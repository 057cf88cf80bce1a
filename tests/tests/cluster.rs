//! Three broker processes on loopback ports over one etcd and one shared
//! object store: lookups land on the owner through any broker, partitions
//! spread over the brokers, a killed broker's topics serve again on the
//! others with their offloaded history, and a terminated broker hands its
//! reliable topics over with no loss and no repeated offset. The native
//! client and Danube's client both follow the moves.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use danube_client::{DanubeClient, SubType};
use sava_client::{Client, Message};
use sava_metadata::etcd::test_server::EtcdTestServer;
use sava_proto::danube::TopicLookupRequest;
use sava_proto::danube::discovery_client::DiscoveryClient;
use sava_proto::sava::v1::LookupRequest;
use sava_proto::sava::v1::sava_client_client::SavaClientClient;
use sava_tests::Broker;
use sava_tests::clients::{client_of, consumer_from_earliest, next_message, reliable_producer};
use tempfile::TempDir;
use tokio::time::{Instant, sleep, timeout};

/// Brokers over one etcd key prefix and one object store directory.
struct Cluster {
    _etcd: Arc<EtcdTestServer>,
    objects: TempDir,
    metadata_url: String,
    brokers: Vec<Broker>,
}

impl Cluster {
    /// Starts `count` brokers under a prefix of their own and waits until
    /// every one is registered and one leads.
    async fn start(count: usize, prefix: &str) -> Cluster {
        let etcd = EtcdTestServer::shared().await.expect("etcd starts");
        let metadata_url = etcd.url(prefix);
        let objects = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            _etcd: etcd,
            objects,
            metadata_url,
            brokers: Vec::new(),
        };
        for _ in 0..count {
            let broker = cluster.launch().await;
            cluster.brokers.push(broker);
        }
        cluster.wait_for_members(count).await;
        // Acknowledged history stays, so new subscriptions can read it all.
        cluster.brokers[0].admin_ok(&[
            "namespaces",
            "set-policy",
            "default",
            "retention_age_secs",
            "3600",
        ]);
        cluster
    }

    async fn launch(&self) -> Broker {
        let env = [
            (
                "SAVA_STORAGE__OBJECT_STORE",
                format!("file://{}", self.objects.path().display()),
            ),
            ("SAVA_STORAGE__SEGMENT_AGE_SECS", "1".to_owned()),
            ("SAVA_OFFLOAD__INTERVAL_MS", "100".to_owned()),
        ];
        Broker::start_with_env(["--metadata", self.metadata_url.as_str()], &env)
            .await
            .unwrap()
    }

    /// Waits until `alive` brokers hold a lease and one of them leads, as
    /// the first broker's admin API reports.
    async fn wait_for_members(&self, alive: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = self.brokers[0].admin_json(&["brokers", "list"]);
            let brokers = listed.as_array().unwrap();
            let live = brokers.iter().filter(|b| b["alive"] == true).count();
            let leaders = brokers.iter().filter(|b| b["leader"] == true).count();
            if live == alive && leaders == 1 {
                return;
            }
            assert!(Instant::now() < deadline, "members never settled: {listed}");
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates reliable `topic` with one message at offset 0, and returns
    /// its owner, another broker, and a client looking up through that
    /// other broker (which survives what the test does to the owner).
    async fn reliable_topic(&self, topic: &str) -> (usize, usize, Client) {
        let first = self.client_of(0).await;
        produce(&first, topic, 0, 1).await;
        let owner = self.broker_at(&owner_of(&self.brokers[0], topic).await);
        let other = (owner + 1) % self.brokers.len();
        (owner, other, self.client_of(other).await)
    }

    async fn client_of(&self, broker: usize) -> Client {
        client_of(&self.brokers[broker]).await
    }

    /// The end of every broker's log, for a failure message.
    fn logs(&self) -> String {
        let mut all = String::new();
        for broker in &self.brokers {
            all.push_str(&format!(
                "--- {} ---\n{}\n",
                broker.service_url(),
                broker.log_tail()
            ));
        }
        all
    }

    fn broker_at(&self, url: &str) -> usize {
        self.brokers
            .iter()
            .position(|b| b.service_url() == url)
            .unwrap_or_else(|| panic!("no broker at {url}"))
    }
}

/// The owner URL of every partition of `topic`, looked up through `broker`
/// with the native API.
async fn owners_through(broker: &Broker, topic: &str) -> Vec<String> {
    let mut stub = SavaClientClient::connect(broker.service_url())
        .await
        .unwrap();
    let request = LookupRequest {
        topic: topic.to_owned(),
        create: None,
    };
    let lookup = stub.lookup(request).await.unwrap().into_inner();
    assert_eq!(lookup.partition_owner_urls.len(), lookup.partitions.len());
    lookup.partition_owner_urls
}

/// The owner URL of `topic`, as `broker` looks it up.
async fn owner_of(broker: &Broker, topic: &str) -> String {
    owners_through(broker, topic).await.remove(0)
}

fn payload(index: u64) -> String {
    format!("order {index:05}")
}

fn index_of(payload: &[u8]) -> u64 {
    let text = std::str::from_utf8(payload).unwrap();
    text.trim_start_matches("order ").parse().unwrap()
}

/// Publishes `count` reliable messages from `first` on, waiting for each
/// ack; returns the offsets the broker assigned.
async fn produce(client: &Client, topic: &str, first: u64, count: u64) -> Vec<u64> {
    let producer = reliable_producer(client, topic).await;
    let mut offsets = Vec::new();
    for index in first..first + count {
        let ack = producer.send(Message::new(payload(index))).await.unwrap();
        offsets.push(ack.await.unwrap().offset);
    }
    offsets
}

/// Reads `topic` from the earliest offset in a new subscription until
/// `count` messages arrived; returns (offset, payload index) pairs, or
/// panics with the cluster's logs.
async fn read_all(
    cluster: &Cluster,
    client: &Client,
    topic: &str,
    subscription: &str,
    count: usize,
) -> Vec<(u64, u64)> {
    let mut consumer = consumer_from_earliest(client, topic, subscription).await;
    let mut read = Vec::with_capacity(count);
    while read.len() < count {
        let message = timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} messages arrived: {:?}\n{}",
                    read.len(),
                    read.last(),
                    cluster.logs()
                )
            })
            .unwrap()
            .unwrap();
        consumer.ack(&message).unwrap();
        read.push((message.offset, index_of(&message.payload)));
    }
    read
}

/// Waits until the shared catalog lists `topic` as offloaded up to `end`.
async fn wait_offloaded(broker: &Broker, topic: &str, end: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let segments = broker.admin_json(&["storage", "segments", topic]);
        let offloaded = segments["segments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["location"] == "object")
            .filter_map(|s| s["next_offset"].as_u64())
            .max()
            .unwrap_or(0);
        if offloaded >= end {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never offloaded to {end}: {segments}"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn lookups_through_any_broker_land_on_the_owner_and_partitions_spread() {
    let cluster = Cluster::start(3, "lookups").await;
    let client = cluster.client_of(0).await;
    let topic = "/default/spread";
    let producer = client.producer(topic).partitions(6).create().await.unwrap();

    let owners = owners_through(&cluster.brokers[0], topic).await;
    let mut per_broker: HashMap<&str, usize> = HashMap::new();
    for owner in &owners {
        *per_broker.entry(owner.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_broker.len(),
        3,
        "partitions were not spread: {owners:?}"
    );
    assert!(per_broker.values().all(|&n| n == 2), "{owners:?}");
    for broker in &cluster.brokers[1..] {
        assert_eq!(owners_through(broker, topic).await, owners);
    }

    // Danube's discovery: the owner says Connect, the others Redirect.
    let partition = format!("{topic}-part-0");
    for broker in &cluster.brokers {
        let mut discovery = DiscoveryClient::connect(broker.service_url())
            .await
            .unwrap();
        let request = TopicLookupRequest {
            request_id: 1,
            topic: partition.clone(),
        };
        let answer = discovery.topic_lookup(request).await.unwrap().into_inner();
        assert_eq!(answer.broker_url, owners[0]);
        let connect = broker.service_url() == owners[0];
        assert_eq!(answer.response_type, if connect { 1 } else { 0 });
        // Danube clients send through the broker they asked, which passes
        // their calls on to the owner.
        assert_eq!(answer.proxy, !connect);
        assert_eq!(answer.connect_url, broker.service_url());
    }

    // The client writes each partition on its owner, and reads them back.
    let mut consumer = consumer_from_earliest(&client, topic, "all").await;
    for index in 0..60 {
        let message = Message::new(payload(index)).with_key(format!("k{index}"));
        producer.send(message).await.unwrap().await.unwrap();
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 60 {
        let message = next_message(&mut consumer, Duration::from_secs(10)).await;
        seen.insert(index_of(&message.payload));
    }

    let described = cluster.brokers[2].admin_json(&["topics", "describe", &partition]);
    assert_eq!(described["owner_url"], owners[0].as_str());
    assert!(described["epoch"].as_u64().unwrap() >= 1);
    let owner = cluster.broker_at(&owners[0]);
    let id = described["owner_broker"].as_str().unwrap().to_owned();
    let broker = cluster.brokers[owner].admin_json(&["brokers", "describe", &id]);
    let owned: Vec<&str> = broker["owned_topic_names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(owned.contains(&partition.as_str()), "{broker}");
}

#[tokio::test]
async fn a_killed_brokers_topics_serve_again_elsewhere_with_their_offloaded_history() {
    let mut cluster = Cluster::start(3, "kill").await;
    let topic = "/default/orders";
    let (owner, survivor, client) = cluster.reliable_topic(topic).await;

    let offsets = produce(&client, topic, 1, 299).await;
    assert_eq!(offsets, (1..300).collect::<Vec<_>>());
    // One more append seals the aged segment, so all of it offloads.
    sleep(Duration::from_millis(1100)).await;
    produce(&client, topic, 300, 1).await;
    wait_offloaded(&cluster.brokers[survivor], topic, 300).await;

    let producer = reliable_producer(&client, topic).await;
    cluster.brokers[owner].kill().unwrap();
    let killed_at = Instant::now();

    // The producer reconnects by itself once another broker owns the topic.
    let ack = producer.send(Message::new(payload(1000))).await.unwrap();
    let after = timeout(Duration::from_secs(20), ack)
        .await
        .expect("a produce succeeds again")
        .unwrap();
    let failover = killed_at.elapsed();
    assert!(failover < Duration::from_secs(10), "took {failover:?}");
    assert!(after.offset >= 300, "{after:?}");
    eprintln!("failover: first produce acked {failover:?} after the kill");

    let new_owner = owner_of(&cluster.brokers[survivor], topic).await;
    assert_ne!(new_owner, cluster.brokers[owner].service_url());

    // Every offloaded message is still there, in order, once.
    let read = read_all(&cluster, &client, topic, "audit", 300).await;
    let expected: Vec<(u64, u64)> = (0..300).map(|i| (i, i)).collect();
    assert_eq!(read, expected);

    // Restarted, the old owner registers again but serves the topic no more.
    cluster.brokers[owner].restart().await.unwrap();
    cluster.wait_for_members(3).await;
    assert_eq!(owner_of(&cluster.brokers[owner], topic).await, new_owner);
    let later = produce(&client, topic, 2000, 10).await;
    assert!(later.windows(2).all(|w| w[1] == w[0] + 1), "{later:?}");
    assert!(later[0] > after.offset);
    let log = cluster.brokers[owner].log();
    let since_restart = log.rsplit("starting sava-broker").next().unwrap();
    assert!(
        !since_restart.contains("reliable topic log opened"),
        "the restarted broker loaded a topic it no longer owns:\n{since_restart}"
    );
}

#[tokio::test]
async fn a_terminated_broker_hands_its_reliable_topics_over_without_loss_or_repeated_offsets() {
    let mut cluster = Cluster::start(3, "drain").await;
    let topic = "/default/payments";
    let (owner, survivor, client) = cluster.reliable_topic(topic).await;
    produce(&client, topic, 1, 199).await;

    cluster.brokers[owner].terminate().unwrap();
    let status = cluster.brokers[owner]
        .wait_exit(Duration::from_secs(30))
        .await;
    assert!(status.expect("the broker exits after draining").success());
    let log = cluster.brokers[owner].log();
    assert!(log.contains("handed topic over"), "{log}");

    let offsets = produce(&client, topic, 200, 200).await;
    assert_eq!(offsets, (200..400).collect::<Vec<_>>());
    let read = read_all(&cluster, &client, topic, "audit", 400).await;
    let expected: Vec<(u64, u64)> = (0..400).map(|i| (i, i)).collect();
    assert_eq!(read, expected);

    let brokers = cluster.brokers[survivor].admin_json(&["brokers", "list"]);
    assert_eq!(brokers.as_array().unwrap().len(), 2, "{brokers}");
}

#[tokio::test]
async fn danube_clients_follow_a_topic_that_moves_off_a_drained_broker() {
    let cluster = Cluster::start(2, "danube").await;
    let topic = "/default/danube-moves";
    let (owner, other, _) = cluster.reliable_topic(topic).await;
    let mut danube = DanubePair::open(&cluster.brokers[other], topic).await;
    danube.send(1..21).await;

    // An operator drains the owner through the other broker's admin API.
    let id = cluster.brokers[owner].service_url().replace("http://", "");
    cluster.brokers[other].admin_ok(&["brokers", "drain", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if owner_of(&cluster.brokers[other], topic).await == cluster.brokers[other].service_url() {
            break;
        }
        assert!(Instant::now() < deadline, "the topic never moved");
        sleep(Duration::from_millis(200)).await;
    }

    // The producer's next sends reach the new owner after its retries.
    danube.send(21..41).await;
    danube.receive_everything_sent().await;

    let drained = cluster.brokers[other].admin_json(&["brokers", "describe", &id]);
    assert_eq!(drained["state"], "draining");
    assert_eq!(drained["owned_topics"], 0);
    cluster.brokers[other].admin_ok(&["brokers", "activate", &id]);
    let active = cluster.brokers[other].admin_json(&["brokers", "describe", &id]);
    assert_eq!(active["state"], "active");
}

#[tokio::test]
async fn danube_clients_carry_on_after_the_owner_is_killed() {
    let mut cluster = Cluster::start(3, "danube-kill").await;
    let topic = "/default/danube-survives";
    let (owner, survivor, _) = cluster.reliable_topic(topic).await;
    let mut danube = DanubePair::open(&cluster.brokers[survivor], topic).await;
    danube.send(1..51).await;
    // An append after the seal age seals the segment, so it all offloads.
    sleep(Duration::from_millis(1100)).await;
    danube.send(51..52).await;
    wait_offloaded(&cluster.brokers[survivor], topic, 52).await;

    cluster.brokers[owner].kill().unwrap();
    danube.send(52..72).await;
    danube.receive_everything_sent().await;
}

/// A Danube producer and exclusive consumer on one topic, and what the
/// producer sent.
struct DanubePair {
    producer: danube_client::Producer,
    consumer: danube_client::Consumer,
    stream: tokio::sync::mpsc::Receiver<danube_core::message::StreamMessage>,
    sent: BTreeSet<u64>,
}

impl DanubePair {
    /// Opens both through `broker`'s service URL.
    async fn open(broker: &Broker, topic: &str) -> DanubePair {
        let danube = DanubeClient::builder()
            .service_url(broker.service_url())
            .build()
            .await
            .unwrap();
        let mut producer = danube
            .new_producer()
            .with_topic(topic)
            .with_name("mover")
            .with_reliable_dispatch()
            .build()
            .unwrap();
        producer.create().await.unwrap();
        let mut consumer = danube
            .new_consumer()
            .with_topic(topic)
            .with_consumer_name("follower")
            .with_subscription("follow")
            .with_subscription_type(SubType::Exclusive)
            .build()
            .unwrap();
        consumer.subscribe().await.unwrap();
        let stream = consumer.receive().await.unwrap();
        // The receive loop opens its stream in the background.
        sleep(Duration::from_millis(300)).await;
        DanubePair {
            producer,
            consumer,
            stream,
            sent: BTreeSet::new(),
        }
    }

    /// Sends the messages numbered `indexes`, each within 30 s. The client
    /// retries UNAVAILABLE and looks the topic up again while it moves; a
    /// send that fails because the broker died is sent again, as an
    /// application does.
    async fn send(&mut self, indexes: std::ops::Range<u64>) {
        for index in indexes {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let sending = self.producer.send(payload(index).into_bytes(), None);
                let left = deadline.saturating_duration_since(Instant::now());
                match timeout(left, sending).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(error)) => {
                        assert!(Instant::now() < deadline, "message {index}: {error}");
                        sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => panic!("message {index} was not sent within 30 s"),
                }
            }
            self.sent.insert(index);
        }
    }

    /// Receives (and acks) until every message sent arrived at least once.
    async fn receive_everything_sent(&mut self) {
        let mut received = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.sent.is_subset(&received) {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = timeout(left, self.stream.recv())
                .await
                .unwrap_or_else(|_| panic!("missing {:?}", self.sent.difference(&received)))
                .expect("the stream stays open");
            received.insert(index_of(&message.payload));
            // An ack can fail while the topic moves; the message then comes
            // again, which at-least-once allows.
            if let Err(error) = self.consumer.ack(&message).await {
                eprintln!("ack of {} failed: {error}", message.msg_id.topic_offset);
            }
        }
    }
}

/// A benchmark, ignored by default: the time from a broker kill to the
/// first acknowledged produce on the new owner over several kills, and the
/// latency of lookups answered by the owner and by another broker.
///
/// `cargo test -p sava-tests --test cluster -- --ignored --nocapture`
/// (`SAVA_BENCH_KILLS`, default 5).
#[tokio::test]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
async fn failover_and_lookup_latency() {
    let kills: usize = std::env::var("SAVA_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut cluster = Cluster::start(3, "bench").await;

    let topic = "/default/lookups";
    let (owner, other, _) = cluster.reliable_topic(topic).await;
    let on_owner = lookup_latencies(&cluster.brokers[owner], topic, 300).await;
    let redirected = lookup_latencies(&cluster.brokers[other], topic, 300).await;
    let danube = danube_lookup_latencies(&cluster.brokers[other], topic, 300).await;

    let mut failovers = Vec::new();
    for round in 0..kills {
        let topic = format!("/default/failover-{round}");
        let (owner, _, client) = cluster.reliable_topic(&topic).await;
        let producer = reliable_producer(&client, &topic).await;
        producer
            .send(Message::new("before"))
            .await
            .unwrap()
            .await
            .unwrap();
        cluster.brokers[owner].kill().unwrap();
        let killed = Instant::now();
        let ack = producer.send(Message::new("after")).await.unwrap();
        timeout(Duration::from_secs(30), ack)
            .await
            .unwrap()
            .unwrap();
        failovers.push(killed.elapsed());
        cluster.brokers[owner].restart().await.unwrap();
        cluster.wait_for_members(3).await;
    }

    println!("lookup latency (ms)          median      p99");
    for (what, mut samples) in [
        ("native, on the owner", on_owner),
        ("native, answering redirect", redirected),
        ("danube, answering redirect", danube),
    ] {
        samples.sort();
        println!(
            "{what:<28} {:>7.2} {:>8.2}",
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() * 99 / 100])
        );
    }
    failovers.sort();
    println!(
        "kill to first acknowledged produce over {kills} kills: median {:.2} s, max {:.2} s",
        failovers[failovers.len() / 2].as_secs_f64(),
        failovers[failovers.len() - 1].as_secs_f64()
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn lookup_latencies(broker: &Broker, topic: &str, count: usize) -> Vec<Duration> {
    let mut stub = SavaClientClient::connect(broker.service_url())
        .await
        .unwrap();
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let request = LookupRequest {
            topic: topic.to_owned(),
            create: None,
        };
        let started = Instant::now();
        stub.lookup(request).await.unwrap();
        samples.push(started.elapsed());
    }
    samples
}

async fn danube_lookup_latencies(broker: &Broker, topic: &str, count: usize) -> Vec<Duration> {
    let mut discovery = DiscoveryClient::connect(broker.service_url())
        .await
        .unwrap();
    let mut samples = Vec::with_capacity(count);
    for id in 0..count as u64 {
        let request = TopicLookupRequest {
            request_id: id,
            topic: topic.to_owned(),
        };
        let started = Instant::now();
        discovery.topic_lookup(request).await.unwrap();
        samples.push(started.elapsed());
    }
    samples
}
