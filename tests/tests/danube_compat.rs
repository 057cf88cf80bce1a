//! The crates.io `danube-client` 0.16, unchanged, against a real
//! `sava-broker` process: the flows of its README and examples.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use danube_client::{DanubeClient, SchemaType, SubType};
use sava_tests::Broker;
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;

use danube_core::message::StreamMessage;

async fn client(broker: &Broker) -> DanubeClient {
    DanubeClient::builder()
        .service_url(broker.service_url())
        .build()
        .await
        .expect("danube client connects")
}

async fn consumer(
    client: &DanubeClient,
    topic: &str,
    name: &str,
    subscription: &str,
    kind: SubType,
) -> (danube_client::Consumer, Receiver<StreamMessage>) {
    let mut consumer = client
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name(name)
        .with_subscription(subscription)
        .with_subscription_type(kind)
        .build()
        .unwrap();
    consumer.subscribe().await.expect("subscribe");
    let stream = consumer.receive().await.expect("receive");
    // The receive loop opens its stream in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (consumer, stream)
}

async fn next(stream: &mut Receiver<StreamMessage>) -> StreamMessage {
    timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("a message within 10 s")
        .expect("the stream stays open")
}

async fn drain(stream: &mut Receiver<StreamMessage>, wait: Duration) -> Vec<StreamMessage> {
    let mut got = Vec::new();
    while let Ok(Some(message)) = timeout(wait, stream.recv()).await {
        got.push(message);
    }
    got
}

#[tokio::test]
async fn a_plain_producer_and_exclusive_consumer_exchange_messages_with_attributes() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/plain";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("p1")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (mut consumer, mut stream) =
        consumer(&client, topic, "c1", "sub", SubType::Exclusive).await;

    for i in 0..10 {
        let attributes = HashMap::from([("index".to_string(), i.to_string())]);
        producer
            .send(format!("hello {i}").into_bytes(), Some(attributes))
            .await
            .unwrap();
    }
    for i in 0..10u64 {
        let message = next(&mut stream).await;
        assert_eq!(message.payload.as_ref(), format!("hello {i}").as_bytes());
        assert_eq!(message.attributes.get("index"), Some(&i.to_string()));
        assert_eq!(message.msg_id.topic_offset, i);
        assert_eq!(message.msg_id.topic_name, topic);
        assert_eq!(message.producer_name, "p1");
        assert!(message.publish_time > 0);
        consumer.ack(&message).await.unwrap();
    }
}

#[tokio::test]
async fn a_partitioned_producer_spreads_messages_and_the_consumer_reads_every_partition() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/partitioned";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("pp")
        .with_partitions(3)
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (mut consumer, mut stream) =
        consumer(&client, topic, "pc", "psub", SubType::Exclusive).await;

    for i in 0..30 {
        producer
            .send(format!("m{i}").into_bytes(), None)
            .await
            .unwrap();
    }
    let mut payloads = HashSet::new();
    let mut partitions = HashSet::new();
    for _ in 0..30 {
        let message = next(&mut stream).await;
        partitions.insert(message.msg_id.topic_name.clone());
        payloads.insert(String::from_utf8(message.payload.to_vec()).unwrap());
        consumer.ack(&message).await.unwrap();
    }
    assert_eq!(payloads.len(), 30);
    let expected: HashSet<String> = (0..3).map(|i| format!("{topic}-part-{i}")).collect();
    assert_eq!(partitions, expected);
}

#[tokio::test]
async fn key_shared_consumers_each_get_whole_keys_in_order() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/keyed";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("kp")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (_a, mut a_stream) = consumer(&client, topic, "ka", "ks", SubType::KeyShared).await;
    let (_b, mut b_stream) = consumer(&client, topic, "kb", "ks", SubType::KeyShared).await;

    let keys = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    for round in 0..5 {
        for key in keys {
            let payload = format!("{key}:{round}").into_bytes();
            producer.send_with_key(payload, None, key).await.unwrap();
        }
    }
    let a = drain(&mut a_stream, Duration::from_secs(2)).await;
    let b = drain(&mut b_stream, Duration::from_secs(1)).await;
    assert_eq!(a.len() + b.len(), 30);

    let keys_of = |messages: &[StreamMessage]| -> HashSet<String> {
        messages
            .iter()
            .filter_map(|m| m.routing_key.clone())
            .collect()
    };
    assert!(
        keys_of(&a).is_disjoint(&keys_of(&b)),
        "a key went to both consumers"
    );
    for messages in [&a, &b] {
        for key in keys {
            let rounds: Vec<String> = messages
                .iter()
                .filter(|m| m.routing_key.as_deref() == Some(key))
                .map(|m| String::from_utf8_lossy(&m.payload).to_string())
                .collect();
            let expected: Vec<String> = (0..rounds.len()).map(|r| format!("{key}:{r}")).collect();
            assert_eq!(rounds, expected, "order of key {key}");
        }
    }
}

#[tokio::test]
async fn shared_consumers_split_the_messages_between_them() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/shared";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("sp")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (_a, mut a_stream) = consumer(&client, topic, "sa", "sh", SubType::Shared).await;
    let (_b, mut b_stream) = consumer(&client, topic, "sb", "sh", SubType::Shared).await;

    for i in 0..20 {
        producer
            .send(format!("s{i}").into_bytes(), None)
            .await
            .unwrap();
    }
    let a = drain(&mut a_stream, Duration::from_secs(2)).await;
    let b = drain(&mut b_stream, Duration::from_secs(1)).await;
    assert_eq!(
        a.len() + b.len(),
        20,
        "each message goes to exactly one consumer"
    );
    assert!(!a.is_empty() && !b.is_empty(), "both consumers get a share");
}

#[tokio::test]
async fn failover_sends_to_one_consumer_at_a_time() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/failover";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("fp")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (_a, mut a_stream) = consumer(&client, topic, "fa", "fo", SubType::FailOver).await;
    let (_b, mut b_stream) = consumer(&client, topic, "fb", "fo", SubType::FailOver).await;

    for i in 0..10 {
        producer
            .send(format!("f{i}").into_bytes(), None)
            .await
            .unwrap();
    }
    let a = drain(&mut a_stream, Duration::from_secs(2)).await;
    let b = drain(&mut b_stream, Duration::from_secs(1)).await;
    assert_eq!(
        (a.len(), b.len()),
        (10, 0),
        "the first consumer by name is active"
    );
}

#[tokio::test]
async fn a_second_exclusive_consumer_with_another_name_is_refused() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/exclusive";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("ep")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (_first, _stream) = consumer(&client, topic, "owner", "ex", SubType::Exclusive).await;

    let mut intruder = client
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("intruder")
        .with_subscription("ex")
        .with_subscription_type(SubType::Exclusive)
        .build()
        .unwrap();
    let error = intruder.subscribe().await.unwrap_err();
    assert!(error.to_string().contains("owner"), "{error}");
}

#[tokio::test]
async fn reliable_dispatch_delivers_every_message_and_takes_acks() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/reliable";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("rp")
        .with_reliable_dispatch()
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (mut consumer, mut stream) = consumer(&client, topic, "rc", "rs", SubType::Exclusive).await;

    for i in 0..50 {
        producer
            .send(format!("r{i}").into_bytes(), None)
            .await
            .unwrap();
    }
    for i in 0..50u64 {
        let message = next(&mut stream).await;
        assert_eq!(message.msg_id.topic_offset, i);
        consumer.ack(&message).await.unwrap();
    }
}

#[tokio::test]
async fn a_json_schema_producer_sends_valid_payloads_and_invalid_ones_are_refused() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/json";
    let schema = r#"{"type":"object","properties":{"field1":{"type":"string"},"field2":{"type":"integer"}},"required":["field1"]}"#;

    let schema_id = client
        .schema()
        .register_schema("events")
        .with_type(SchemaType::JsonSchema)
        .with_schema_data(schema.as_bytes())
        .execute()
        .await
        .unwrap();
    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("jp")
        .with_schema_subject("events")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (_consumer, mut stream) = consumer(&client, topic, "jc", "js", SubType::Exclusive).await;

    producer
        .send(br#"{"field1":"a","field2":1}"#.to_vec(), None)
        .await
        .unwrap();
    let error = producer
        .send(br#"{"field2":"nope"}"#.to_vec(), None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("schema"), "{error}");

    let message = next(&mut stream).await;
    assert_eq!(message.payload.as_ref(), br#"{"field1":"a","field2":1}"#);
    assert_eq!(message.schema_id, Some(schema_id));
    assert_eq!(message.schema_version, Some(1));
    assert!(
        drain(&mut stream, Duration::from_millis(500))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn key_filters_route_matching_keys_to_the_filtering_consumer() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/filtered";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("fp")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let mut eu = client
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("eu")
        .with_subscription("regions")
        .with_subscription_type(SubType::KeyShared)
        .with_key_filter("eu-*")
        .build()
        .unwrap();
    eu.subscribe().await.unwrap();
    let mut eu_stream = eu.receive().await.unwrap();
    let (_rest, mut rest_stream) =
        consumer(&client, topic, "rest", "regions", SubType::KeyShared).await;

    for i in 0..10 {
        producer
            .send_with_key(format!("e{i}").into_bytes(), None, &format!("eu-{i}"))
            .await
            .unwrap();
    }
    let eu_got = drain(&mut eu_stream, Duration::from_secs(2)).await;
    let rest_got = drain(&mut rest_stream, Duration::from_millis(500)).await;
    assert_eq!(eu_got.len(), 10, "every eu-* key goes to the eu consumer");
    assert!(
        rest_got
            .iter()
            .all(|m| !m.routing_key.clone().unwrap_or_default().starts_with("eu-"))
    );
}

#[tokio::test]
async fn failover_moves_to_the_next_consumer_when_the_active_one_closes() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let topic = "/default/takeover";

    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("tp")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let (mut active, mut a_stream) =
        consumer(&client, topic, "a-first", "fo", SubType::FailOver).await;
    let (_standby, mut b_stream) =
        consumer(&client, topic, "b-second", "fo", SubType::FailOver).await;

    producer.send(b"before".to_vec(), None).await.unwrap();
    assert_eq!(next(&mut a_stream).await.payload.as_ref(), b"before");

    active.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    producer.send(b"after".to_vec(), None).await.unwrap();
    let message = timeout(Duration::from_secs(1), b_stream.recv())
        .await
        .expect("the standby takes over within a second")
        .unwrap();
    assert_eq!(message.payload.as_ref(), b"after");
}
