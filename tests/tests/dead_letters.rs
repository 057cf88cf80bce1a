//! Redelivery rules of reliable subscriptions, set through `sava-admin`:
//! ack timeouts, and messages that run out of deliveries going to the
//! dead-letter topic.

use std::time::Duration;

use sava_client::{Client, Consumer, Message, ReceivedMessage, StartPosition};
use sava_tests::Broker;
use tokio::time::timeout;

async fn next(consumer: &mut Consumer) -> ReceivedMessage {
    timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("a message within 10 s")
        .expect("open")
        .expect("no error")
}

#[tokio::test]
async fn an_unacknowledged_message_comes_back_after_the_ack_timeout() {
    let broker = Broker::start().await.unwrap();
    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let topic = "/default/timeouts";
    let producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let mut consumer = client.consumer(topic, "s").subscribe().await.unwrap();
    broker.admin_ok(&[
        "subscriptions",
        "set-policy",
        topic,
        "s",
        "ack_timeout_ms",
        "300",
    ]);

    producer
        .send(Message::new("once"))
        .await
        .unwrap()
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    assert_eq!(first.delivery_count, 1);
    let again = next(&mut consumer).await;
    assert_eq!((again.offset, again.delivery_count), (first.offset, 2));
    consumer.ack(&again).unwrap();
}

#[tokio::test]
async fn a_message_nacked_past_max_deliveries_lands_in_the_dead_letter_topic() {
    let broker = Broker::start().await.unwrap();
    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let topic = "/default/orders";
    let producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let mut consumer = client.consumer(topic, "billing").subscribe().await.unwrap();
    broker.admin_ok(&[
        "subscriptions",
        "set-policy",
        topic,
        "billing",
        "max_deliveries",
        "2",
    ]);
    let described = broker.admin_ok(&[
        "--output",
        "json",
        "subscriptions",
        "describe",
        topic,
        "billing",
    ]);
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["max_deliveries"], 2);
    assert_eq!(described["on_max_deliveries"], "dead-letter");
    assert_eq!(
        described["dead_letter_topic"],
        "/default/orders-billing-dlq"
    );

    let poison = Message::new("poison")
        .with_key("k")
        .with_attribute("origin", "test");
    producer.send(poison).await.unwrap().await.unwrap();
    producer
        .send(Message::new("fine"))
        .await
        .unwrap()
        .await
        .unwrap();
    for _ in 0..2 {
        let message = next(&mut consumer).await;
        if message.payload.as_ref() == b"fine" {
            consumer.ack(&message).unwrap();
            let message = next(&mut consumer).await;
            consumer.nack(&message, None).unwrap();
        } else {
            consumer.nack(&message, None).unwrap();
        }
    }

    // The dispatcher publishes the dead letter once it sees the last nack.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let described = broker.admin_ok(&[
            "--output",
            "json",
            "subscriptions",
            "describe",
            topic,
            "billing",
        ]);
        let described: serde_json::Value = serde_json::from_str(&described).unwrap();
        if described["dead_lettered"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter within 10 s: {described}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut letters = client
        .consumer("/default/orders-billing-dlq", "inspect")
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .expect("the dead-letter topic exists");
    let letter = next(&mut letters).await;
    assert_eq!(letter.payload.as_ref(), b"poison");
    assert_eq!(letter.key.as_deref(), Some("k"));
    assert_eq!(
        letter.attributes.get("origin").map(String::as_str),
        Some("test")
    );
    assert_eq!(
        letter.attributes.get("sava.dlq.topic").map(String::as_str),
        Some(topic)
    );
    assert_eq!(
        letter
            .attributes
            .get("sava.dlq.subscription")
            .map(String::as_str),
        Some("billing")
    );
    assert_eq!(
        letter.attributes.get("sava.dlq.offset").map(String::as_str),
        Some("0")
    );
    assert_eq!(
        letter
            .attributes
            .get("sava.dlq.delivery_count")
            .map(String::as_str),
        Some("2")
    );

    let settled = broker.admin_ok(&[
        "--output",
        "json",
        "subscriptions",
        "describe",
        topic,
        "billing",
    ]);
    let settled: serde_json::Value = serde_json::from_str(&settled).unwrap();
    assert_eq!(settled["dead_lettered"], 1);
    assert_eq!(
        settled["cursor"], 2,
        "the dead letter counts as acknowledged"
    );
}

#[tokio::test]
async fn a_policy_on_a_non_reliable_subscription_or_an_unknown_key_is_refused() {
    let broker = Broker::start().await.unwrap();
    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let _producer = client.producer("/default/fast").create().await.unwrap();
    let _consumer = client
        .consumer("/default/fast", "s")
        .subscribe()
        .await
        .unwrap();

    let refused = broker.admin(&[
        "subscriptions",
        "set-policy",
        "/default/fast",
        "s",
        "max_deliveries",
        "3",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("non-reliable"));

    let _reliable = client
        .producer("/default/slow")
        .reliable(true)
        .create()
        .await
        .unwrap();
    let _consumer = client
        .consumer("/default/slow", "s")
        .subscribe()
        .await
        .unwrap();
    let unknown = broker.admin(&[
        "subscriptions",
        "set-policy",
        "/default/slow",
        "s",
        "retries",
        "3",
    ]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("unknown subscription policy retries")
    );
}

#[tokio::test]
async fn the_policy_survives_a_broker_restart() {
    let mut broker = Broker::start().await.unwrap();
    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let topic = "/default/kept";
    let _producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let consumer = client.consumer(topic, "s").subscribe().await.unwrap();
    broker.admin_ok(&[
        "subscriptions",
        "set-policy",
        topic,
        "s",
        "on_max_deliveries",
        "drop",
    ]);
    consumer.close().await;

    broker.kill().unwrap();
    broker.restart().await.unwrap();
    let described = broker.admin_ok(&["--output", "json", "subscriptions", "describe", topic, "s"]);
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["on_max_deliveries"], "drop");
}
