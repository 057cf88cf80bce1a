//! A broker whose metadata store (a real etcd, paused with `SIGSTOP`) cannot
//! be reached: what needs the store fails with a clear UNAVAILABLE error,
//! the broker stops taking messages once its lease could not be renewed,
//! keeps its topics and consumers, and serves again by itself when the
//! store returns, with nothing acknowledged lost.

use std::process::Command;
use std::time::Duration;

use sava_client::{ErrorKind, Message};
use sava_metadata::etcd::test_server::EtcdTestServer;
use sava_tests::Broker;
use sava_tests::clients::{client_of, consumer_from_earliest, next_message, reliable_producer};
use tokio::time::{Instant, sleep, timeout};

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

#[tokio::test]
async fn an_unreachable_store_pauses_writes_and_the_broker_recovers_by_itself() {
    let etcd = EtcdTestServer::start().await.expect("etcd starts");
    let objects = tempfile::tempdir().unwrap();
    let env = [(
        "SAVA_STORAGE__OBJECT_STORE",
        format!("file://{}", objects.path().display()),
    )];
    let url = etcd.url("outage");
    let broker = Broker::start_with_env(["--metadata", url.as_str()], &env)
        .await
        .unwrap();
    let client = client_of(&broker).await;
    let topic = "/default/ledger";
    let producer = reliable_producer(&client, topic).await;
    let mut consumer = consumer_from_earliest(&client, topic, "books").await;
    for index in 0..10 {
        let message = Message::new(format!("entry {index}"));
        producer.send(message).await.unwrap().await.unwrap();
    }

    signal(etcd.pid(), "-STOP");
    let paused_at = Instant::now();

    // What needs the store fails, quickly and saying why.
    let lookup = timeout(
        Duration::from_secs(20),
        client.producer("/default/new-topic").create(),
    )
    .await
    .expect("the lookup answers while the store is away");
    let error = lookup.expect_err("a new topic needs the store");
    assert_eq!(error.kind(), Some(ErrorKind::Unavailable), "{error}");
    assert!(error.to_string().contains("metadata"), "{error}");

    // Once the lease could not be renewed the broker says it is not ready.
    while broker.is_ready().await {
        assert!(paused_at.elapsed() < Duration::from_secs(20), "still ready");
        sleep(Duration::from_millis(200)).await;
    }
    let waiting = producer.send(Message::new("entry 10")).await.unwrap();

    // The consumer it had keeps its messages.
    for index in 0..10u64 {
        let message = next_message(&mut consumer, Duration::from_secs(10)).await;
        assert_eq!(message.offset, index);
        consumer.ack(&message).unwrap();
    }

    signal(etcd.pid(), "-CONT");
    let acked = timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the send completes once the store is back")
        .unwrap();
    assert_eq!(acked.offset, 10);
    let message = next_message(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(
        (message.offset, &message.payload[..]),
        (10, &b"entry 10"[..])
    );
    assert!(broker.is_ready().await, "{}", broker.log_tail());
    let log = broker.log();
    assert!(log.contains("cannot renew the cluster lease"), "{log}");
}
