//! Sava's native client against a real `sava-broker` process: every
//! subscription type, partitions, keys and attributes, schemas, exclusive
//! producers, and a slow consumer on a non-reliable topic.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sava_client::{Client, Message, ReceivedMessage, Schema, StartPosition, SubscriptionType};
use sava_tests::Broker;
use tokio::time::timeout;

async fn client(broker: &Broker) -> Client {
    Client::builder(broker.service_url())
        .build()
        .await
        .expect("client connects")
}

async fn next(consumer: &mut sava_client::Consumer) -> ReceivedMessage {
    timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("a message within 10 s")
        .expect("the consumer stays open")
        .expect("no error")
}

async fn drain(consumer: &mut sava_client::Consumer, quiet: Duration) -> Vec<ReceivedMessage> {
    let mut got = Vec::new();
    while let Ok(Some(Ok(message))) = timeout(quiet, consumer.recv()).await {
        got.push(message);
    }
    got
}

async fn send_all(
    producer: &sava_client::Producer,
    messages: Vec<Message>,
) -> Vec<sava_client::MessageId> {
    let mut pending = Vec::new();
    for message in messages {
        pending.push(producer.send(message).await.expect("queued"));
    }
    let mut ids = Vec::new();
    for future in pending {
        ids.push(future.await.expect("acknowledged"));
    }
    ids
}

#[tokio::test]
async fn pipelined_sends_get_dense_offsets_and_arrive_in_order_with_keys_and_attributes() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-plain";

    let producer = client.producer(topic).name("p").create().await.unwrap();
    let mut consumer = client
        .consumer(topic, "s")
        .name("c")
        .subscribe()
        .await
        .unwrap();

    let messages = (0..500)
        .map(|i| {
            Message::new(format!("m{i}"))
                .with_key(format!("k{}", i % 7))
                .with_attribute("i", i.to_string())
        })
        .collect();
    let ids = send_all(&producer, messages).await;
    assert_eq!(
        ids.iter().map(|id| id.offset).collect::<Vec<_>>(),
        (0..500).collect::<Vec<_>>()
    );

    for i in 0..500u64 {
        let message = next(&mut consumer).await;
        assert_eq!(message.offset, i);
        assert_eq!(message.payload.as_ref(), format!("m{i}").as_bytes());
        assert_eq!(message.key.as_deref(), Some(format!("k{}", i % 7).as_str()));
        assert_eq!(message.attributes.get("i"), Some(&i.to_string()));
        assert_eq!(message.producer_name, "p");
    }
}

#[tokio::test]
async fn a_partitioned_topic_spreads_batches_and_one_consumer_reads_all_partitions() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-parts";

    let producer = client.producer(topic).partitions(4).create().await.unwrap();
    assert_eq!(producer.partition_count(), 4);
    let mut consumer = client.consumer(topic, "s").subscribe().await.unwrap();

    let messages = (0..400)
        .map(|i| Message::new(format!("m{i}")).with_key(format!("key-{i}")))
        .collect();
    let ids = send_all(&producer, messages).await;
    let partitions: HashSet<String> = ids.iter().map(|id| id.topic.to_string()).collect();
    assert_eq!(partitions.len(), 4, "{partitions:?}");

    let mut got = HashSet::new();
    for _ in 0..400 {
        got.insert(next(&mut consumer).await.payload);
    }
    assert_eq!(got.len(), 400);
}

#[tokio::test]
async fn a_second_exclusive_consumer_is_refused_and_shared_consumers_split_the_work() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-types";
    let producer = client.producer(topic).create().await.unwrap();

    let _owner = client
        .consumer(topic, "ex")
        .name("owner")
        .subscribe()
        .await
        .unwrap();
    let refused = client.consumer(topic, "ex").name("other").subscribe().await;
    let error = refused
        .expect_err("a second exclusive consumer is refused")
        .to_string();
    assert!(error.contains("owner"), "{error}");

    let mut a = client
        .consumer(topic, "sh")
        .name("a")
        .subscription_type(SubscriptionType::Shared)
        .subscribe()
        .await
        .unwrap();
    let mut b = client
        .consumer(topic, "sh")
        .name("b")
        .subscription_type(SubscriptionType::Shared)
        .subscribe()
        .await
        .unwrap();
    send_all(
        &producer,
        (0..200).map(|i| Message::new(format!("{i}"))).collect(),
    )
    .await;
    let (a_got, b_got) = (
        drain(&mut a, Duration::from_secs(1)).await,
        drain(&mut b, Duration::from_millis(300)).await,
    );
    assert_eq!(a_got.len() + b_got.len(), 200);
    assert!(!a_got.is_empty() && !b_got.is_empty());
}

#[tokio::test]
async fn failover_and_key_shared_deliver_as_their_types_promise() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-fo-ks";
    let producer = client.producer(topic).create().await.unwrap();

    let mut active = client
        .consumer(topic, "fo")
        .name("a")
        .subscription_type(SubscriptionType::Failover)
        .subscribe()
        .await
        .unwrap();
    let mut standby = client
        .consumer(topic, "fo")
        .name("b")
        .subscription_type(SubscriptionType::Failover)
        .subscribe()
        .await
        .unwrap();
    let mut k1 = client
        .consumer(topic, "ks")
        .name("k1")
        .subscription_type(SubscriptionType::KeyShared)
        .subscribe()
        .await
        .unwrap();
    let mut k2 = client
        .consumer(topic, "ks")
        .name("k2")
        .subscription_type(SubscriptionType::KeyShared)
        .subscribe()
        .await
        .unwrap();

    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let messages = (0..80)
        .map(|i| Message::new(format!("{i}")).with_key(keys[i % 8]))
        .collect();
    send_all(&producer, messages).await;

    assert_eq!(drain(&mut active, Duration::from_secs(1)).await.len(), 80);
    assert!(
        drain(&mut standby, Duration::from_millis(300))
            .await
            .is_empty()
    );

    let (g1, g2) = (
        drain(&mut k1, Duration::from_secs(1)).await,
        drain(&mut k2, Duration::from_millis(300)).await,
    );
    assert_eq!(g1.len() + g2.len(), 80);
    let keys_of = |got: &[ReceivedMessage]| {
        got.iter()
            .filter_map(|m| m.key.clone())
            .collect::<HashSet<_>>()
    };
    assert!(keys_of(&g1).is_disjoint(&keys_of(&g2)));
    for got in [&g1, &g2] {
        let mut last: HashMap<String, u64> = HashMap::new();
        for message in got {
            let key = message.key.clone().unwrap();
            if let Some(previous) = last.insert(key, message.offset) {
                assert!(previous < message.offset, "order per key");
            }
        }
    }

    // Closing waits until the broker ended the stream, so the standby is
    // active by the time the next message is published.
    active.close().await;
    send_all(&producer, vec![Message::new("after")]).await;
    let message = next(&mut standby).await;
    assert_eq!(message.payload.as_ref(), b"after");
}

#[tokio::test]
async fn a_payload_that_breaks_the_json_schema_is_refused_with_the_reason() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-json";
    let schema = r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#;

    let producer = client
        .producer(topic)
        .schema(Schema::json(schema))
        .create()
        .await
        .unwrap();
    let ok = producer
        .send(Message::new(r#"{"id":1}"#))
        .await
        .unwrap()
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let refused = producer
        .send(Message::new(r#"{"id":"one"}"#))
        .await
        .unwrap()
        .await;
    let error = refused.expect_err("refused").to_string();
    assert!(error.contains("/id"), "{error}");

    let refused = producer.send(Message::new("not json")).await.unwrap().await;
    assert!(
        refused
            .expect_err("refused")
            .to_string()
            .contains("not JSON")
    );
}

#[tokio::test]
async fn an_exclusive_producer_keeps_others_out_until_it_leaves() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-exclusive";

    let holder = client
        .producer(topic)
        .name("holder")
        .exclusive(true)
        .create()
        .await
        .unwrap();
    let intruder = client.producer(topic).name("intruder").create().await;
    let error = intruder.expect_err("refused").to_string();
    assert!(error.contains("holder"), "{error}");

    holder.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client.producer(topic).name("intruder").create().await {
            Ok(_) => break,
            Err(error) if tokio::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the topic stays held after its exclusive producer left: {error}"),
        }
    }
}

/// A producer on `topic`, and two subscriptions: "fast" with `fast_credits`,
/// "slow" with 10 credits.
async fn fast_and_slow(
    client: &Client,
    topic: &str,
    fast_credits: u32,
) -> (
    sava_client::Producer,
    sava_client::Consumer,
    sava_client::Consumer,
) {
    let producer = client.producer(topic).create().await.unwrap();
    let fast = client.consumer(topic, "fast").credits(fast_credits);
    let slow = client.consumer(topic, "slow").credits(10);
    (
        producer,
        fast.subscribe().await.unwrap(),
        slow.subscribe().await.unwrap(),
    )
}

#[tokio::test]
async fn a_slow_non_reliable_consumer_loses_messages_without_slowing_anyone() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-slow";

    let (producer, mut fast, mut slow) = fast_and_slow(&client, topic, 100_000).await;

    // In rounds the fast consumer keeps up with, however slow the machine:
    // what is tested is that the slow one, which takes nothing, holds
    // neither the producer nor the fast consumer back.
    let mut fast_got = Vec::new();
    for round in 0..20u64 {
        let messages = (0..1_000).map(|i| Message::new(format!("{round}-{i}")));
        send_all(&producer, messages.collect()).await;
        while fast_got.len() < (round as usize + 1) * 1_000 {
            fast_got.push(next(&mut fast).await);
        }
    }
    let offsets: Vec<u64> = fast_got.iter().map(|m| m.offset).collect();
    assert_eq!(
        offsets,
        (0..20_000).collect::<Vec<_>>(),
        "the fast consumer gets everything"
    );
    assert!(fast.dropped_messages() == 0);

    let first = next(&mut slow).await;
    assert_eq!(first.offset, 0);
}

#[tokio::test]
async fn a_slow_consumer_of_large_messages_is_bounded_by_bytes_not_only_by_messages() {
    let bound = 1024 * 1024;
    let env = [("SAVA_LIMITS__CONSUMER_BUFFER_BYTES", bound.to_string())];
    let broker = Broker::start_with_env(Vec::<String>::new(), &env)
        .await
        .unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-slow-large";

    let (producer, mut fast, mut slow) = fast_and_slow(&client, topic, 1_000).await;

    // 200 messages of 64 KiB: far fewer than the 10,000 messages a buffer
    // may hold, but 12.5 MiB against a bound of 1 MiB.
    let size = 64 * 1024;
    let mut fast_got = 0;
    for round in 0..20 {
        let messages = (0..10).map(|_| Message::new(vec![7u8; size]));
        send_all(&producer, messages.collect()).await;
        while fast_got < (round + 1) * 10 {
            next(&mut fast).await;
            fast_got += 1;
        }
    }

    let slow_got = drain(&mut slow, Duration::from_secs(2)).await.len() as u64;
    // Its 10 credits on the wire, then the buffer's 16 (1 MiB of 64 KiB).
    assert!(
        slow_got <= 10 + (bound / size) as u64 + 1,
        "the slow consumer got {slow_got} of 200 messages"
    );
    assert_eq!(slow_got + slow.dropped_messages(), 200);
    assert_eq!(fast.dropped_messages(), 0);
}

#[tokio::test]
async fn reliable_messages_are_redelivered_after_a_nack_and_a_new_subscription_can_start_at_earliest()
 {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/native-reliable";

    let producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let mut consumer = client.consumer(topic, "s").subscribe().await.unwrap();
    send_all(
        &producer,
        (0..10).map(|i| Message::new(format!("{i}"))).collect(),
    )
    .await;

    let first = next(&mut consumer).await;
    consumer
        .nack(&first, Some(Duration::from_millis(100)))
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let message = next(&mut consumer).await;
        consumer.ack(&message).unwrap();
        seen.push((message.offset, message.delivery_count));
    }
    assert!(seen.contains(&(0, 2)), "{seen:?}");

    let mut late = client
        .consumer(topic, "late")
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap();
    let message = next(&mut late).await;
    assert_eq!(message.offset, 0, "the log still holds what nobody trimmed");
}
