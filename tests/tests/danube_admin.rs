//! The `danube_admin` services (BrokerAdmin, NamespaceAdmin, TopicAdmin) on
//! a real `sava-broker` admin port, through the generated clients: every
//! call, its answers and its refusals. Subscriptions are made through
//! `sava.v1.Admin` (Danube's admin API cannot create them) or with the
//! crates.io `danube-client`. The last test runs two brokers over etcd, for
//! the drain and for calls that reach a topic's owner through another broker.

use std::time::Duration;

use danube_client::{DanubeClient, SubType};
use sava_metadata::etcd::test_server::EtcdTestServer;
use sava_proto::danube_admin::broker_admin_client::BrokerAdminClient;
use sava_proto::danube_admin::namespace_admin_client::NamespaceAdminClient;
use sava_proto::danube_admin::topic_admin_client::TopicAdminClient;
use sava_proto::danube_admin::{self as pb, DispatchStrategy};
use sava_proto::danube_schema::RegisterSchemaRequest;
use sava_proto::danube_schema::schema_registry_client::SchemaRegistryClient;
use sava_proto::sava::v1;
use sava_proto::sava::v1::admin_client::AdminClient;
use sava_tests::Broker;
use tokio::time::{Instant, sleep};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

/// How long a condition polled through the admin API may take to hold.
const WAIT: Duration = Duration::from_secs(20);

/// How often it is polled.
const POLL: Duration = Duration::from_millis(100);

/// Danube's admin clients and Sava's own, on one admin port.
struct Admin {
    brokers: BrokerAdminClient<Channel>,
    namespaces: NamespaceAdminClient<Channel>,
    topics: TopicAdminClient<Channel>,
    native: AdminClient<Channel>,
}

impl Admin {
    async fn of(broker: &Broker) -> Admin {
        let channel = Channel::from_shared(broker.admin_url())
            .unwrap()
            .connect()
            .await
            .expect("the admin port answers");
        Admin {
            brokers: BrokerAdminClient::new(channel.clone()),
            namespaces: NamespaceAdminClient::new(channel.clone()),
            topics: TopicAdminClient::new(channel.clone()),
            native: AdminClient::new(channel),
        }
    }

    async fn create_topic(&mut self, name: &str, strategy: DispatchStrategy) {
        let request = new_topic(name, strategy);
        let created = self.topics.create_topic(request).await.unwrap();
        assert!(created.into_inner().success);
    }

    /// Creates subscription `name` of kind `kind` (sava.v1 numbering, which
    /// is Danube's) on `topic`, loading the topic.
    async fn subscribe(&mut self, topic: &str, name: &str, kind: i32) {
        let request = v1::CreateSubscriptionRequest {
            topic: topic.into(),
            subscription: name.into(),
            subscription_type: kind,
            start: None,
        };
        self.native.create_subscription(request).await.unwrap();
    }

    async fn subscriptions(&mut self, topic: &str) -> Vec<String> {
        let request = pb::TopicRequest { name: topic.into() };
        let listed = self.topics.list_subscriptions(request).await.unwrap();
        listed.into_inner().subscriptions
    }

    async fn describe(&mut self, topic: &str) -> pb::DescribeTopicResponse {
        let request = pb::DescribeTopicRequest { name: topic.into() };
        self.topics
            .describe_topic(request)
            .await
            .unwrap()
            .into_inner()
    }

    async fn list_brokers(&mut self) -> Vec<pb::BrokerInfo> {
        let listed = self.brokers.list_brokers(pb::Empty {}).await.unwrap();
        listed.into_inner().brokers
    }

    async fn broker_topics(&mut self, id: &str) -> Vec<pb::TopicInfo> {
        let request = pb::BrokerRequest {
            broker_id: id.into(),
        };
        let listed = self.topics.list_broker_topics(request).await.unwrap();
        listed.into_inner().topics
    }

    async fn failure_policy(
        &mut self,
        topic: &str,
        subscription: &str,
    ) -> Result<Response<pb::GetSubscriptionFailurePolicyResponse>, Status> {
        let request = pb::GetSubscriptionFailurePolicyRequest {
            topic: topic.into(),
            subscription: subscription.into(),
        };
        self.topics.get_subscription_failure_policy(request).await
    }

    async fn set_failure_policy(
        &mut self,
        topic: &str,
        subscription: &str,
        policy: pb::SubscriptionFailurePolicy,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let request = pb::SetSubscriptionFailurePolicyRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            failure_policy: Some(policy),
        };
        self.topics.set_subscription_failure_policy(request).await
    }

    async fn unsubscribe(
        &mut self,
        topic: &str,
        subscription: &str,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let request = pb::SubscriptionRequest {
            topic: topic.into(),
            subscription: subscription.into(),
        };
        self.topics.unsubscribe(request).await
    }
}

fn new_topic(name: &str, strategy: DispatchStrategy) -> pb::NewTopicRequest {
    pb::NewTopicRequest {
        name: name.into(),
        schema_subject: None,
        dispatch_strategy: strategy as i32,
    }
}

fn namespace(name: &str) -> pb::NamespaceRequest {
    pb::NamespaceRequest { name: name.into() }
}

fn topic(name: &str) -> pb::TopicRequest {
    pb::TopicRequest { name: name.into() }
}

/// A failure policy Sava can hold: no redelivery delay, no backoff.
fn plain_policy(
    max_redelivery_count: u32,
    poison: pb::SubscriptionPoisonPolicy,
) -> pb::SubscriptionFailurePolicy {
    pb::SubscriptionFailurePolicy {
        max_redelivery_count,
        ack_timeout_ms: 5_000,
        base_redelivery_delay_ms: 0,
        max_redelivery_delay_ms: 0,
        backoff_strategy: pb::SubscriptionBackoffStrategy::Fixed as i32,
        dead_letter_topic: None,
        poison_policy: poison as i32,
    }
}

/// The message of a refused call, which must have failed with `code`.
#[track_caller]
fn refused<T: std::fmt::Debug>(answer: Result<Response<T>, Status>, code: Code) -> String {
    let status = answer.expect_err("the call is refused");
    assert_eq!(status.code(), code, "{status:?}");
    status.message().to_string()
}

/// Sava's broker id: the advertised address without its scheme.
fn id_of(broker: &Broker) -> String {
    broker.client_addr().to_string()
}

/// The 64-bit FNV-1a hash Danube's numeric broker ids carry.
fn broker_number(id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[tokio::test]
async fn the_broker_lists_itself_as_the_leader_with_its_addresses() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    let id = id_of(&broker);

    let listed = admin.list_brokers().await;
    assert_eq!(listed.len(), 1);
    let me = &listed[0];
    assert_eq!(me.broker_id, id);
    assert_eq!(me.broker_addr, broker.service_url());
    assert_eq!(me.admin_addr, broker.admin_url());
    assert_eq!(me.metrics_addr, format!("http://{}", broker.http_addr()));
    assert_eq!(me.broker_role, "Cluster_Leader");
    assert_eq!(me.broker_status, "active");

    let leader = admin.brokers.get_leader_broker(pb::Empty {}).await;
    assert_eq!(leader.unwrap().into_inner().leader, id);
    let namespaces = admin.brokers.list_namespaces(pb::Empty {}).await;
    assert_eq!(namespaces.unwrap().into_inner().namespaces, ["default"]);
}

#[tokio::test]
async fn namespaces_are_created_idempotently_and_deleted_only_when_empty() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;

    for _ in 0..2 {
        let created = admin.namespaces.create_namespace(namespace("orders")).await;
        assert!(created.unwrap().into_inner().success);
    }
    let namespaces = admin.brokers.list_namespaces(pb::Empty {}).await;
    assert_eq!(
        namespaces.unwrap().into_inner().namespaces,
        ["default", "orders"]
    );
    let policies = admin
        .namespaces
        .get_namespace_policies(namespace("orders"))
        .await;
    let policies = policies.unwrap().into_inner().policies;
    let policies: serde_json::Value = serde_json::from_str(&policies).unwrap();
    assert_eq!(policies["auto_create_topics"], true);
    assert_eq!(policies["default_dispatch_mode"], "non_reliable");

    admin
        .create_topic("/orders/placed", DispatchStrategy::NonReliable)
        .await;
    let topics = admin
        .namespaces
        .get_namespace_topics(namespace("orders"))
        .await;
    assert_eq!(topics.unwrap().into_inner().topics, ["/orders/placed"]);
    let busy = admin.namespaces.delete_namespace(namespace("orders")).await;
    assert_eq!(
        refused(busy, Code::FailedPrecondition),
        "namespace orders has 1 topics; delete them before the namespace"
    );

    let deleted = admin.topics.delete_topic(topic("/orders/placed")).await;
    assert!(deleted.unwrap().into_inner().success);
    let deleted = admin.namespaces.delete_namespace(namespace("orders")).await;
    assert!(deleted.unwrap().into_inner().success);
    let gone = admin
        .namespaces
        .get_namespace_policies(namespace("orders"))
        .await;
    assert_eq!(
        refused(gone, Code::NotFound),
        "namespace orders does not exist"
    );
    let gone = admin.namespaces.delete_namespace(namespace("orders")).await;
    refused(gone, Code::NotFound);
    let gone = admin
        .namespaces
        .get_namespace_topics(namespace("orders"))
        .await;
    refused(gone, Code::NotFound);

    let bad = admin
        .namespaces
        .create_namespace(namespace("bad name"))
        .await;
    assert!(refused(bad, Code::InvalidArgument).contains("\"bad name\""));
}

#[tokio::test]
async fn topics_are_created_idempotently_and_listed_partition_by_partition() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    let id = id_of(&broker);

    for _ in 0..2 {
        admin
            .create_topic("/default/plain", DispatchStrategy::NonReliable)
            .await;
    }
    let other_mode = new_topic("/default/plain", DispatchStrategy::Reliable);
    let other_mode = admin.topics.create_topic(other_mode).await;
    assert_eq!(
        refused(other_mode, Code::AlreadyExists),
        "topic /default/plain exists with 0 partitions, non-reliable dispatch and no schema"
    );

    let wide = |partitions| pb::PartitionedTopicRequest {
        base_name: "/default/wide".into(),
        partitions,
        schema_subject: None,
        dispatch_strategy: DispatchStrategy::Reliable as i32,
    };
    for _ in 0..2 {
        let created = admin.topics.create_partitioned_topic(wide(3)).await;
        assert!(created.unwrap().into_inner().success);
    }
    let other_count = admin.topics.create_partitioned_topic(wide(2)).await;
    assert_eq!(
        refused(other_count, Code::AlreadyExists),
        "topic /default/wide exists with 3 partitions, reliable dispatch and no schema"
    );
    let none = pb::PartitionedTopicRequest {
        base_name: "/default/flat".into(),
        ..wide(0)
    };
    let none = admin.topics.create_partitioned_topic(none).await;
    assert_eq!(
        refused(none, Code::InvalidArgument),
        "partitioned topic /default/flat needs at least 1 partition; create a topic without partitions with CreateTopic"
    );
    let unknown_mode = pb::NewTopicRequest {
        dispatch_strategy: 7,
        ..new_topic("/default/odd", DispatchStrategy::Reliable)
    };
    let unknown_mode = admin.topics.create_topic(unknown_mode).await;
    assert_eq!(
        refused(unknown_mode, Code::InvalidArgument),
        "dispatch_strategy 7 is not a known value; use 0 (NonReliable) or 1 (Reliable)"
    );
    let bad_name = new_topic("default/odd", DispatchStrategy::Reliable);
    let bad_name = admin.topics.create_topic(bad_name).await;
    assert!(refused(bad_name, Code::InvalidArgument).contains("default/odd"));

    // Nothing is loaded yet, so no broker owns anything.
    let listed = admin
        .topics
        .list_namespace_topics(namespace("default"))
        .await;
    let mut listed = listed.unwrap().into_inner().topics;
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let seen: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|t| (t.name.as_str(), t.broker_id.as_str(), t.delivery.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("/default/plain", "", "NonReliable"),
            ("/default/wide-part-0", "", "Reliable"),
            ("/default/wide-part-1", "", "Reliable"),
            ("/default/wide-part-2", "", "Reliable"),
        ]
    );
    let names = admin
        .namespaces
        .get_namespace_topics(namespace("default"))
        .await;
    assert_eq!(names.unwrap().into_inner().topics.len(), 4);

    admin.subscribe("/default/plain", "watch", 0).await;
    let listed = admin
        .topics
        .list_namespace_topics(namespace("default"))
        .await;
    let listed = listed.unwrap().into_inner().topics;
    let plain = listed.iter().find(|t| t.name == "/default/plain").unwrap();
    assert_eq!(plain.broker_id, id);
    let owned = admin.broker_topics(&id).await;
    let expected = pb::TopicInfo {
        name: "/default/plain".into(),
        broker_id: id.clone(),
        delivery: "NonReliable".into(),
    };
    assert_eq!(owned, [expected]);
    let nobody = pb::BrokerRequest {
        broker_id: "nobody:1".into(),
    };
    let nobody = admin.topics.list_broker_topics(nobody).await;
    assert_eq!(
        refused(nobody, Code::NotFound),
        "broker nobody:1 is not part of this cluster"
    );

    let part = admin.describe("/default/wide-part-1").await;
    assert_eq!(part.name, "/default/wide-part-1");
    assert_eq!(part.delivery, "Reliable");
    assert_eq!(part.broker_id, "");
    assert!(part.subscriptions.is_empty());
    assert_eq!(part.schema_subject, None);
    let parent = admin.describe("/default/wide").await;
    assert_eq!(
        (parent.delivery.as_str(), parent.broker_id.as_str()),
        ("Reliable", "")
    );
    let plain = admin.describe("/default/plain").await;
    assert_eq!(plain.subscriptions, ["watch"]);
    assert_eq!(plain.broker_id, id);
    let missing = pb::DescribeTopicRequest {
        name: "/default/nothing".into(),
    };
    let missing = admin.topics.describe_topic(missing).await;
    assert_eq!(
        refused(missing, Code::NotFound),
        "topic /default/nothing does not exist"
    );
}

#[tokio::test]
async fn a_topic_created_with_a_schema_subject_is_described_with_its_schema() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    let mut registry = SchemaRegistryClient::connect(broker.service_url())
        .await
        .unwrap();
    let registration = RegisterSchemaRequest {
        subject: "orders-value".into(),
        schema_type: "json_schema".into(),
        schema_definition: bytes::Bytes::from_static(br#"{"type":"object"}"#),
        description: String::new(),
        created_by: "danube-admin-test".into(),
        tags: Vec::new(),
    };
    let registered = registry.register_schema(registration).await.unwrap();
    let schema_id = registered.into_inner().schema_id;

    let bound = pb::NewTopicRequest {
        schema_subject: Some("orders-value".into()),
        ..new_topic("/default/orders", DispatchStrategy::Reliable)
    };
    for _ in 0..2 {
        let created = admin.topics.create_topic(bound.clone()).await;
        assert!(created.unwrap().into_inner().success);
    }
    let described = admin.describe("/default/orders").await;
    assert_eq!(described.schema_subject.as_deref(), Some("orders-value"));
    assert_eq!(described.schema_id, Some(schema_id));
    assert_eq!(described.schema_version, Some(1));
    assert_eq!(described.schema_type.as_deref(), Some("json_schema"));
    assert_eq!(described.compatibility_mode.as_deref(), Some("BACKWARD"));

    let unbound = new_topic("/default/orders", DispatchStrategy::Reliable);
    let unbound = admin.topics.create_topic(unbound).await;
    assert_eq!(
        refused(unbound, Code::AlreadyExists),
        "topic /default/orders exists with 0 partitions, reliable dispatch and schema subject orders-value"
    );
    let unknown = pb::NewTopicRequest {
        schema_subject: Some("nope".into()),
        ..new_topic("/default/loose", DispatchStrategy::Reliable)
    };
    let unknown = admin.topics.create_topic(unknown).await;
    assert_eq!(
        refused(unknown, Code::NotFound),
        "schema subject nope does not exist"
    );
}

#[tokio::test]
async fn subscriptions_are_listed_and_unsubscribed_and_a_topic_with_one_is_not_deleted() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    let ledger = "/default/ledger";
    admin.create_topic(ledger, DispatchStrategy::Reliable).await;
    admin.subscribe(ledger, "billing", 1).await;
    admin.subscribe(ledger, "audit", 0).await;

    assert_eq!(admin.subscriptions(ledger).await, ["audit", "billing"]);
    assert_eq!(
        admin.describe(ledger).await.subscriptions,
        ["audit", "billing"]
    );
    let removed = admin.unsubscribe(ledger, "billing").await;
    assert!(removed.unwrap().into_inner().success);
    assert_eq!(admin.subscriptions(ledger).await, ["audit"]);
    let again = admin.unsubscribe(ledger, "billing").await;
    assert_eq!(
        refused(again, Code::NotFound),
        "subscription billing does not exist on /default/ledger"
    );

    let busy = admin.topics.delete_topic(topic(ledger)).await;
    assert_eq!(
        refused(busy, Code::FailedPrecondition),
        "topic /default/ledger has subscriptions audit; unsubscribe them first"
    );
    admin.unsubscribe(ledger, "audit").await.unwrap();
    let deleted = admin.topics.delete_topic(topic(ledger)).await;
    assert!(deleted.unwrap().into_inner().success);
    let gone = admin.topics.delete_topic(topic(ledger)).await;
    assert_eq!(
        refused(gone, Code::NotFound),
        "topic /default/ledger does not exist"
    );
    let gone = admin.topics.list_subscriptions(topic(ledger)).await;
    refused(gone, Code::NotFound);
}

#[tokio::test]
async fn the_subscriptions_of_a_partitioned_topic_are_found_on_its_partitions() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    let sharded = pb::PartitionedTopicRequest {
        base_name: "/default/sharded".into(),
        partitions: 2,
        schema_subject: None,
        dispatch_strategy: DispatchStrategy::Reliable as i32,
    };
    admin
        .topics
        .create_partitioned_topic(sharded)
        .await
        .unwrap();
    admin
        .subscribe("/default/sharded-part-1", "indexer", 3)
        .await;

    assert_eq!(admin.subscriptions("/default/sharded").await, ["indexer"]);
    assert!(
        admin
            .subscriptions("/default/sharded-part-0")
            .await
            .is_empty()
    );
    let policy = admin.failure_policy("/default/sharded", "indexer").await;
    assert_eq!(policy.unwrap().into_inner().subscription_type, 3);
    let policy = plain_policy(2, pb::SubscriptionPoisonPolicy::Block);
    let set = admin
        .set_failure_policy("/default/sharded", "indexer", policy)
        .await;
    assert!(set.unwrap().into_inner().success);
    let read = admin
        .failure_policy("/default/sharded-part-1", "indexer")
        .await;
    let read = read.unwrap().into_inner().failure_policy.unwrap();
    assert_eq!(read.max_redelivery_count, 2);

    let removed = admin.unsubscribe("/default/sharded", "indexer").await;
    assert!(removed.unwrap().into_inner().success);
    assert!(admin.subscriptions("/default/sharded").await.is_empty());
    let again = admin.unsubscribe("/default/sharded", "indexer").await;
    assert_eq!(
        refused(again, Code::NotFound),
        "subscription indexer does not exist on /default/sharded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_with_a_connected_consumer_is_not_unsubscribed() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    admin
        .create_topic("/default/live", DispatchStrategy::NonReliable)
        .await;
    let client = DanubeClient::builder()
        .service_url(broker.service_url())
        .build()
        .await
        .expect("danube client connects");
    let mut consumer = client
        .new_consumer()
        .with_topic("/default/live")
        .with_consumer_name("viewer-1")
        .with_subscription("viewers")
        .with_subscription_type(SubType::Shared)
        .build()
        .unwrap();
    consumer.subscribe().await.expect("subscribe");
    let _messages = consumer.receive().await.expect("receive");

    // The client opens its stream in the background.
    let deadline = Instant::now() + WAIT;
    loop {
        let request = v1::DescribeSubscriptionRequest {
            topic: "/default/live".into(),
            subscription: "viewers".into(),
        };
        let described = admin.native.describe_subscription(request).await.unwrap();
        if described.into_inner().consumers.iter().any(|c| c.connected) {
            break;
        }
        assert!(Instant::now() < deadline, "the consumer never attached");
        sleep(POLL).await;
    }

    let busy = admin.unsubscribe("/default/live", "viewers").await;
    assert_eq!(
        refused(busy, Code::FailedPrecondition),
        "subscription viewers on /default/live has 1 connected consumers; close them before unsubscribing"
    );
    let busy = admin.topics.delete_topic(topic("/default/live")).await;
    refused(busy, Code::FailedPrecondition);
    let policy = admin.failure_policy("/default/live", "viewers").await;
    let policy = policy.unwrap().into_inner();
    assert_eq!(policy.failure_policy, None);
    assert_eq!(policy.subscription_type, 1);
}

#[tokio::test]
async fn failure_policies_map_onto_sava_redelivery_rules_and_the_rest_is_refused() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    let payments = "/default/payments";
    admin
        .create_topic(payments, DispatchStrategy::Reliable)
        .await;
    admin.subscribe(payments, "settle", 0).await;

    let initial = admin.failure_policy(payments, "settle").await;
    let initial = initial.unwrap().into_inner();
    assert_eq!(initial.subscription_type, 0);
    let initial = initial.failure_policy.unwrap();
    assert_eq!(initial.max_redelivery_count, u32::MAX, "no limit at first");
    assert_eq!(initial.ack_timeout_ms, 0);

    let dropping = plain_policy(4, pb::SubscriptionPoisonPolicy::Drop);
    let set = admin
        .set_failure_policy(payments, "settle", dropping.clone())
        .await;
    assert!(set.unwrap().into_inner().success);
    let read = admin.failure_policy(payments, "settle").await;
    assert_eq!(read.unwrap().into_inner().failure_policy, Some(dropping));
    let request = v1::DescribeSubscriptionRequest {
        topic: payments.into(),
        subscription: "settle".into(),
    };
    let native = admin.native.describe_subscription(request).await.unwrap();
    let native = native.into_inner();
    assert_eq!(native.max_deliveries, 5);
    assert_eq!(native.ack_timeout_ms, 5_000);
    assert_eq!(native.on_max_deliveries, "drop");

    let dead_letters = pb::SubscriptionFailurePolicy {
        dead_letter_topic: Some("/default/payments-settle-dlq".into()),
        ..plain_policy(1, pb::SubscriptionPoisonPolicy::DeadLetter)
    };
    let set = admin
        .set_failure_policy(payments, "settle", dead_letters.clone())
        .await;
    assert!(set.unwrap().into_inner().success);
    let read = admin.failure_policy(payments, "settle").await;
    assert_eq!(
        read.unwrap().into_inner().failure_policy,
        Some(dead_letters)
    );
    let elsewhere = pb::SubscriptionFailurePolicy {
        dead_letter_topic: Some("/default/graveyard".into()),
        ..plain_policy(1, pb::SubscriptionPoisonPolicy::DeadLetter)
    };
    let elsewhere = admin
        .set_failure_policy(payments, "settle", elsewhere)
        .await;
    assert_eq!(
        refused(elsewhere, Code::Unimplemented),
        "sava writes the dead letters of subscription settle on /default/payments to /default/payments-settle-dlq; dead_letter_topic /default/graveyard is not supported"
    );

    let backoff = pb::SubscriptionFailurePolicy {
        base_redelivery_delay_ms: 1_000,
        max_redelivery_delay_ms: 60_000,
        backoff_strategy: pb::SubscriptionBackoffStrategy::Exponential as i32,
        ..plain_policy(5, pb::SubscriptionPoisonPolicy::Block)
    };
    let backoff = admin.set_failure_policy(payments, "settle", backoff).await;
    assert_eq!(
        refused(backoff, Code::Unimplemented),
        "sava redelivers a failed message at once, or after the delay its nack asks for, with no backoff and no cap; base_redelivery_delay_ms, max_redelivery_delay_ms, an Exponential backoff_strategy are not supported (use 0 and Fixed)"
    );
    let unknown = pb::SubscriptionFailurePolicy {
        poison_policy: 9,
        ..plain_policy(5, pb::SubscriptionPoisonPolicy::Block)
    };
    let unknown = admin.set_failure_policy(payments, "settle", unknown).await;
    assert_eq!(
        refused(unknown, Code::InvalidArgument),
        "poison_policy 9 is not a known value"
    );
    let no_policy = pb::SetSubscriptionFailurePolicyRequest {
        topic: payments.into(),
        subscription: "settle".into(),
        failure_policy: None,
    };
    let no_policy = admin
        .topics
        .set_subscription_failure_policy(no_policy)
        .await;
    assert_eq!(
        refused(no_policy, Code::InvalidArgument),
        "failure_policy must be set"
    );
    let policy = plain_policy(1, pb::SubscriptionPoisonPolicy::Drop);
    let missing = admin.set_failure_policy(payments, "nobody", policy).await;
    assert_eq!(
        refused(missing, Code::NotFound),
        "subscription nobody does not exist on /default/payments"
    );
    let missing = admin.failure_policy(payments, "nobody").await;
    refused(missing, Code::NotFound);

    admin
        .create_topic("/default/ticks", DispatchStrategy::NonReliable)
        .await;
    admin.subscribe("/default/ticks", "charts", 1).await;
    let policy = plain_policy(1, pb::SubscriptionPoisonPolicy::Drop);
    let push = admin
        .set_failure_policy("/default/ticks", "charts", policy)
        .await;
    assert!(refused(push, Code::InvalidArgument).contains("is non-reliable"));
    let read = admin.failure_policy("/default/ticks", "charts").await;
    let read = read.unwrap().into_inner();
    assert_eq!((read.failure_policy, read.subscription_type), (None, 1));
}

#[tokio::test]
async fn per_subscription_dispatch_configs_are_refused_naming_the_broker_wide_limit() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    admin
        .create_topic("/default/jobs", DispatchStrategy::Reliable)
        .await;
    admin.subscribe("/default/jobs", "workers", 1).await;

    let set = pb::SetSubscriptionDispatchConfigRequest {
        topic: "/default/jobs".into(),
        subscription: "workers".into(),
        dispatch_config: Some(pb::SubscriptionDispatchConfig {
            max_unacked_messages: 10,
        }),
    };
    let set = admin.topics.set_subscription_dispatch_config(set).await;
    let message = refused(set, Code::Unimplemented);
    assert!(
        message.contains("limits.max_unacked_per_consumer = 1000"),
        "{message}"
    );
    let get = pb::GetSubscriptionDispatchConfigRequest {
        topic: "/default/jobs".into(),
        subscription: "workers".into(),
    };
    let get = admin.topics.get_subscription_dispatch_config(get).await;
    assert!(refused(get, Code::Unimplemented).contains("per-subscription"));
}

#[tokio::test]
async fn unloading_a_topic_hands_it_over_and_says_whether_it_was_loaded() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    admin
        .create_topic("/default/cache", DispatchStrategy::Reliable)
        .await;
    admin.subscribe("/default/cache", "warm", 0).await;

    let unloaded = admin.topics.unload_topic(topic("/default/cache")).await;
    assert!(unloaded.unwrap().into_inner().success);
    let again = admin.topics.unload_topic(topic("/default/cache")).await;
    assert!(
        !again.unwrap().into_inner().success,
        "nothing left to unload"
    );
    // The reliable subscription survives the hand-over in the catalog.
    assert_eq!(admin.subscriptions("/default/cache").await, ["warm"]);

    let missing = admin.topics.unload_topic(topic("/default/nothing")).await;
    assert_eq!(
        refused(missing, Code::NotFound),
        "topic /default/nothing does not exist"
    );
}

#[tokio::test]
async fn a_lone_broker_is_not_drained_but_a_dry_run_counts_its_topics() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    let id = id_of(&broker);
    admin
        .create_topic("/default/solo", DispatchStrategy::NonReliable)
        .await;
    admin.subscribe("/default/solo", "watch", 0).await;

    let unload = |dry_run| pb::UnloadBrokerRequest {
        broker_id: id.clone(),
        max_parallel: 1,
        namespaces_include: Vec::new(),
        namespaces_exclude: Vec::new(),
        dry_run,
        timeout_seconds: 60,
    };
    let planned = admin.brokers.unload_broker(unload(true)).await.unwrap();
    let planned = planned.into_inner();
    assert!(!planned.started);
    assert_eq!((planned.total, planned.pending, planned.failed), (1, 1, 0));

    let alone = admin.brokers.unload_broker(unload(false)).await;
    assert_eq!(
        refused(alone, Code::FailedPrecondition),
        format!(
            "broker {id} is the only live active broker, so its topics would have nowhere to go; start or activate another broker first"
        )
    );
    assert_eq!(admin.list_brokers().await[0].broker_status, "active");
    let filtered = pb::UnloadBrokerRequest {
        namespaces_include: vec!["default".into()],
        ..unload(false)
    };
    let filtered = admin.brokers.unload_broker(filtered).await;
    assert!(refused(filtered, Code::Unimplemented).contains("namespaces_include"));
    let unknown = pb::UnloadBrokerRequest {
        broker_id: "nobody:1".into(),
        ..unload(true)
    };
    let unknown = admin.brokers.unload_broker(unknown).await;
    assert_eq!(
        refused(unknown, Code::NotFound),
        "broker nobody:1 is not part of this cluster"
    );

    let activate = |broker_id: &str| pb::ActivateBrokerRequest {
        broker_id: broker_id.into(),
        reason: "test".into(),
    };
    let active = admin.brokers.activate_broker(activate(&id)).await;
    assert!(active.unwrap().into_inner().success);
    let unnamed = admin.brokers.activate_broker(activate("")).await;
    refused(unnamed, Code::InvalidArgument);
    let unknown = admin.brokers.activate_broker(activate("nobody:1")).await;
    refused(unknown, Code::NotFound);
}

#[tokio::test]
async fn the_cluster_balance_counts_owned_topics_and_rebalancing_on_demand_is_refused() {
    let broker = Broker::start().await.unwrap();
    let mut admin = Admin::of(&broker).await;
    for name in ["/default/left", "/default/right"] {
        admin
            .create_topic(name, DispatchStrategy::NonReliable)
            .await;
        admin.subscribe(name, "watch", 0).await;
    }

    let balance = admin
        .brokers
        .get_cluster_balance(pb::ClusterBalanceRequest {})
        .await;
    let balance = balance.unwrap().into_inner();
    assert_eq!(balance.broker_count, 1);
    assert_eq!(balance.assignment_strategy, "least_loaded");
    let me = &balance.brokers[0];
    assert_eq!(me.broker_id, broker_number(&id_of(&broker)));
    assert_eq!(me.topic_count, 2);
    assert!(me.load >= 2.0, "{me:?}");
    assert_eq!(balance.mean_load, me.load);
    assert_eq!((balance.max_load, balance.min_load), (me.load, me.load));
    assert_eq!(balance.std_deviation, 0.0);
    assert_eq!(balance.coefficient_of_variation, 0.0);
    assert!(!me.is_overloaded && !me.is_underloaded);

    let rebalance = pb::RebalanceRequest {
        dry_run: true,
        max_moves: None,
    };
    let rebalance = admin.brokers.trigger_rebalance(rebalance).await;
    assert!(refused(rebalance, Code::Unimplemented).contains("does not move topics on demand"));
}

/// Polls `admin` until broker `id` shows `status` and, when `topics` is
/// given, owns that many topics.
async fn wait_for_broker(admin: &mut Admin, id: &str, status: &str, topics: Option<usize>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let brokers = admin.list_brokers().await;
        let shown = brokers.iter().find(|b| b.broker_id == id).unwrap();
        let owned = admin.broker_topics(id).await.len();
        if shown.broker_status == status && topics.is_none_or(|topics| owned == topics) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "broker {id} is {} with {owned} topics, not {status} with {topics:?}",
            shown.broker_status
        );
        sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_peer_a_broker_is_drained_and_its_topics_are_reached_through_the_other() {
    let etcd = EtcdTestServer::shared().await.expect("etcd starts");
    // A prefix of its own, so no earlier run's brokers show up.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let metadata = etcd.url(&format!("danube-admin-{}-{stamp}", std::process::id()));
    let first = Broker::start_with(["--metadata", metadata.as_str()])
        .await
        .unwrap();
    let second = Broker::start_with(["--metadata", metadata.as_str()])
        .await
        .unwrap();
    let mut admin = Admin::of(&first).await;

    let deadline = Instant::now() + WAIT;
    loop {
        let brokers = admin.list_brokers().await;
        let active = brokers.iter().filter(|b| b.broker_status == "active");
        let leaders = brokers.iter().filter(|b| b.broker_role == "Cluster_Leader");
        if active.count() == 2 && leaders.count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members never settled: {brokers:?}"
        );
        sleep(POLL).await;
    }

    // Loading the topic places it; while it lands on the other broker the
    // call is refused as UNAVAILABLE, and the next one is passed on.
    admin
        .create_topic("/default/spread", DispatchStrategy::NonReliable)
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let request = v1::CreateSubscriptionRequest {
            topic: "/default/spread".into(),
            subscription: "readers".into(),
            subscription_type: 1,
            start: None,
        };
        match admin.native.create_subscription(request).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => panic!("cannot subscribe: {status:?}"),
        }
        assert!(Instant::now() < deadline, "the topic was never placed");
        sleep(POLL).await;
    }
    let owner = admin.describe("/default/spread").await.broker_id;
    let (other, other_id) = match owner == id_of(&first) {
        true => (&second, id_of(&second)),
        false => (&first, id_of(&first)),
    };
    assert_ne!(owner, other_id);
    let mut via_other = Admin::of(other).await;

    assert_eq!(
        via_other.subscriptions("/default/spread").await,
        ["readers"]
    );
    let policy = via_other.failure_policy("/default/spread", "readers").await;
    let policy = policy.unwrap().into_inner();
    assert_eq!((policy.failure_policy, policy.subscription_type), (None, 1));
    let balance = via_other
        .brokers
        .get_cluster_balance(pb::ClusterBalanceRequest {})
        .await;
    let balance = balance.unwrap().into_inner();
    assert_eq!(balance.broker_count, 2);
    let loaded = balance
        .brokers
        .iter()
        .find(|b| b.broker_id == broker_number(&owner))
        .unwrap();
    assert_eq!(loaded.topic_count, 1);

    let drain = pb::UnloadBrokerRequest {
        broker_id: owner.clone(),
        max_parallel: 1,
        namespaces_include: Vec::new(),
        namespaces_exclude: Vec::new(),
        dry_run: false,
        timeout_seconds: 60,
    };
    let started = via_other.brokers.unload_broker(drain).await.unwrap();
    let started = started.into_inner();
    assert!(started.started);
    assert_eq!((started.total, started.pending), (1, 1));
    wait_for_broker(&mut via_other, &owner, "draining", Some(0)).await;

    let activate = pb::ActivateBrokerRequest {
        broker_id: owner.clone(),
        reason: "drained for the test".into(),
    };
    let activated = via_other.brokers.activate_broker(activate).await;
    assert!(activated.unwrap().into_inner().success);
    // Active again, it may be given topics at once; only the state counts.
    wait_for_broker(&mut via_other, &owner, "active", None).await;
}

/// The admin clients `danube-core` generates from Danube's own
/// `DanubeAdmin.proto`, not Sava's copy: the wire check of the services.
#[tokio::test]
async fn danubes_own_admin_clients_create_list_describe_and_delete() {
    use danube_core::admin_proto as danube;

    let broker = Broker::start().await.unwrap();
    let channel = Channel::from_shared(broker.admin_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut brokers = danube::broker_admin_client::BrokerAdminClient::new(channel.clone());
    let mut namespaces = danube::namespace_admin_client::NamespaceAdminClient::new(channel.clone());
    let mut topics = danube::topic_admin_client::TopicAdminClient::new(channel);

    let listed = brokers.list_brokers(danube::Empty {}).await.unwrap();
    let listed = listed.into_inner().brokers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].broker_id, id_of(&broker));
    let leader = brokers.get_leader_broker(danube::Empty {}).await.unwrap();
    assert_eq!(leader.into_inner().leader, id_of(&broker));

    let request = danube::NamespaceRequest {
        name: "orders".into(),
    };
    let created = namespaces.create_namespace(request).await.unwrap();
    assert!(created.into_inner().success);
    let request = danube::PartitionedTopicRequest {
        base_name: "/orders/placed".into(),
        partitions: 2,
        schema_subject: None,
        dispatch_strategy: danube::DispatchStrategy::Reliable as i32,
    };
    let created = topics.create_partitioned_topic(request).await.unwrap();
    assert!(created.into_inner().success);

    let request = danube::NamespaceRequest {
        name: "orders".into(),
    };
    let listed = topics.list_namespace_topics(request).await.unwrap();
    let mut listed: Vec<_> = listed
        .into_inner()
        .topics
        .into_iter()
        .map(|t| (t.name, t.delivery))
        .collect();
    listed.sort();
    // No owner yet: a topic is placed when it is first used.
    let reliable = |name: &str| (name.to_owned(), "Reliable".to_owned());
    assert_eq!(
        listed,
        [
            reliable("/orders/placed-part-0"),
            reliable("/orders/placed-part-1")
        ]
    );

    let request = danube::DescribeTopicRequest {
        name: "/orders/placed-part-1".into(),
    };
    let described = topics.describe_topic(request).await.unwrap().into_inner();
    assert_eq!(described.name, "/orders/placed-part-1");
    assert_eq!(described.delivery, "Reliable");
    assert!(described.subscriptions.is_empty());

    let request = danube::TopicRequest {
        name: "/orders/placed".into(),
    };
    assert!(
        topics
            .delete_topic(request)
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let request = danube::NamespaceRequest {
        name: "orders".into(),
    };
    let listed = topics.list_namespace_topics(request).await.unwrap();
    assert!(listed.into_inner().topics.is_empty());
}
