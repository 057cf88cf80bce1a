use std::sync::Arc;

use super::*;
use crate::conformance::UnknownResultAfterCommit;
use crate::embedded::EmbeddedStore;

fn catalog() -> Catalog {
    let store = EmbeddedStore::open_temporary().expect("open a temporary store");
    Catalog::new(Arc::new(store))
}

/// A catalog whose next commit applies but reports `UnknownResult`.
fn catalog_with_one_unknown_result(catalog: &Catalog) -> Catalog {
    let lying = UnknownResultAfterCommit::new(Arc::clone(catalog.store()), 1);
    Catalog::new(Arc::new(lying))
}

fn topic(name: &str) -> TopicRecord {
    TopicRecord {
        name: name.to_owned(),
        partitions: 0,
        partition_of: None,
        dispatch_mode: DispatchMode::NonReliable,
        schema: None,
        created_at_ms: 0,
    }
}

fn names(topics: &[TopicRecord]) -> Vec<&str> {
    topics.iter().map(|topic| topic.name.as_str()).collect()
}

async fn register(catalog: &Catalog, subject: &str, definition: &str) -> (SchemaRecord, bool) {
    catalog
        .register_schema(
            subject,
            "json_schema",
            definition.as_bytes(),
            "",
            "tester",
            &[],
        )
        .await
        .expect("register a schema")
}

#[tokio::test]
async fn ensure_namespace_creates_once_and_then_returns_the_existing_one() {
    let catalog = catalog();
    let created = catalog.ensure_namespace("default").await.expect("ensure");
    assert_eq!(created.policies, NamespacePolicies::default());
    assert!(created.policies.auto_create_topics);

    let again = catalog
        .ensure_namespace("default")
        .await
        .expect("ensure again");
    assert_eq!(again, created);
    assert_eq!(
        catalog.namespace("default").await.expect("read"),
        Some(created)
    );
    assert_eq!(catalog.namespace("missing").await.expect("read"), None);
}

#[tokio::test]
async fn create_namespace_accepts_identical_policies_and_refuses_others() {
    let catalog = catalog();
    let policies = NamespacePolicies {
        max_message_bytes: Some(1024),
        ..NamespacePolicies::default()
    };
    let created = catalog
        .create_namespace("ns", policies.clone())
        .await
        .expect("create");
    let again = catalog
        .create_namespace("ns", policies)
        .await
        .expect("create again");
    assert_eq!(again, created);

    let other = catalog
        .create_namespace("ns", NamespacePolicies::default())
        .await;
    assert!(matches!(other, Err(MetadataError::AlreadyExists { what }) if what.contains("`ns`")));
    let invalid = catalog
        .create_namespace("bad/name", NamespacePolicies::default())
        .await;
    assert!(matches!(invalid, Err(MetadataError::Invalid { .. })));
}

#[tokio::test]
async fn namespaces_are_listed_by_name_and_their_policies_can_change() {
    let catalog = catalog();
    for name in ["zeta", "alpha", "mid"] {
        catalog.ensure_namespace(name).await.expect("ensure");
    }
    let listed = catalog.list_namespaces().await.expect("list");
    let listed: Vec<&str> = listed.iter().map(|ns| ns.name.as_str()).collect();
    assert_eq!(listed, ["alpha", "mid", "zeta"]);

    let policies = NamespacePolicies {
        auto_create_topics: false,
        max_message_bytes: None,
        default_dispatch_mode: DispatchMode::Reliable,
        retention_age_secs: Some(3600),
        retention_bytes: None,
        backlog_quota_bytes: Some(1 << 30),
        backlog_policy: Some("refuse".into()),
    };
    let updated = catalog
        .set_namespace_policies("mid", policies.clone())
        .await
        .expect("set");
    assert_eq!(updated.policies, policies);
    let missing = catalog.set_namespace_policies("nope", policies).await;
    assert!(matches!(missing, Err(MetadataError::NotFound { what }) if what == "namespace `nope`"));
}

#[tokio::test]
async fn namespace_policies_decode_with_defaults_for_missing_fields() {
    let policies: NamespacePolicies =
        serde_json::from_str(r#"{"default_dispatch_mode":"reliable"}"#).expect("decode");
    assert!(policies.auto_create_topics);
    assert_eq!(policies.default_dispatch_mode, DispatchMode::Reliable);
}

#[tokio::test]
async fn delete_namespace_refuses_one_with_topics_and_a_missing_one() {
    let catalog = catalog();
    catalog.ensure_namespace("ns").await.expect("ensure");
    catalog
        .create_topic(topic("/ns/t"))
        .await
        .expect("create topic");

    let busy = catalog.delete_namespace("ns").await;
    assert!(matches!(busy, Err(MetadataError::NotEmpty { what }) if what == "namespace `ns`"));

    catalog.delete_topic("/ns/t").await.expect("delete topic");
    catalog
        .delete_namespace("ns")
        .await
        .expect("delete namespace");
    assert_eq!(catalog.namespace("ns").await.expect("read"), None);
    let missing = catalog.delete_namespace("ns").await;
    assert!(matches!(missing, Err(MetadataError::NotFound { .. })));
}

#[tokio::test]
async fn delete_namespace_retried_after_unknown_result_succeeds() {
    let catalog = catalog();
    catalog.ensure_namespace("ns").await.expect("ensure");

    let lying = catalog_with_one_unknown_result(&catalog);
    lying
        .delete_namespace("ns")
        .await
        .expect("the retried delete reports success");
    assert_eq!(catalog.namespace("ns").await.expect("read"), None);
}

#[tokio::test]
async fn create_topic_is_idempotent_and_refuses_a_different_topic_of_the_same_name() {
    let catalog = catalog();
    catalog.ensure_namespace("ns").await.expect("ensure");

    let created = catalog
        .create_topic(topic("/ns/orders"))
        .await
        .expect("create");
    assert!(created.created_at_ms > 0, "a zero creation time is stamped");
    let again = TopicRecord {
        created_at_ms: 12,
        ..topic("/ns/orders")
    };
    assert_eq!(
        catalog.create_topic(again).await.expect("create again"),
        created
    );

    let reliable = TopicRecord {
        dispatch_mode: DispatchMode::Reliable,
        ..topic("/ns/orders")
    };
    let different = catalog.create_topic(reliable).await;
    let Err(MetadataError::AlreadyExists { what }) = different else {
        panic!("expected AlreadyExists, got {different:?}");
    };
    assert_eq!(what, "topic `/ns/orders`");
    assert_eq!(
        catalog.topic("/ns/orders").await.expect("read"),
        Some(created)
    );
}

#[tokio::test]
async fn create_topic_in_a_missing_namespace_is_not_found_naming_the_namespace() {
    let catalog = catalog();
    let missing = catalog.create_topic(topic("/ghost/t")).await;
    let Err(MetadataError::NotFound { what }) = missing else {
        panic!("expected NotFound, got {missing:?}");
    };
    assert_eq!(what, "namespace `ghost`");

    let invalid = catalog.create_topic(topic("no-slashes")).await;
    assert!(matches!(invalid, Err(MetadataError::Invalid { .. })));
    assert_eq!(catalog.topic("no-slashes").await.expect("read"), None);
}

#[tokio::test]
async fn topics_are_listed_by_name_within_their_namespace() {
    let catalog = catalog();
    catalog.ensure_namespace("a").await.expect("ensure");
    catalog.ensure_namespace("b").await.expect("ensure");
    for name in ["/a/zeta", "/a/alpha", "/b/other", "/a/mid"] {
        catalog.create_topic(topic(name)).await.expect("create");
    }

    let listed = catalog.list_topics("a").await.expect("list");
    assert_eq!(names(&listed), ["/a/alpha", "/a/mid", "/a/zeta"]);
    assert!(
        catalog
            .list_topics("missing")
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn partitioned_topic_creates_its_partitions_atomically() {
    let catalog = catalog();
    catalog.ensure_namespace("ns").await.expect("ensure");
    let parent = TopicRecord {
        partitions: 3,
        dispatch_mode: DispatchMode::Reliable,
        ..topic("/ns/events")
    };

    let (created, partitions) = catalog
        .create_partitioned_topic(parent.clone())
        .await
        .expect("create partitioned");
    assert_eq!(created.partitions, 3);
    assert_eq!(
        names(&partitions),
        [
            "/ns/events-part-0",
            "/ns/events-part-1",
            "/ns/events-part-2"
        ]
    );
    for partition in &partitions {
        assert_eq!(partition.partition_of.as_deref(), Some("/ns/events"));
        assert_eq!(partition.partitions, 0);
        assert_eq!(partition.dispatch_mode, DispatchMode::Reliable);
    }
    let again = catalog
        .create_partitioned_topic(parent)
        .await
        .expect("create again");
    assert_eq!(again, (created, partitions));
    assert_eq!(catalog.list_topics("ns").await.expect("list").len(), 4);
}

#[tokio::test]
async fn partitioned_topic_colliding_with_an_existing_topic_writes_nothing() {
    let catalog = catalog();
    catalog.ensure_namespace("ns").await.expect("ensure");
    catalog
        .create_topic(topic("/ns/clicks-part-1"))
        .await
        .expect("create");

    let parent = TopicRecord {
        partitions: 2,
        ..topic("/ns/clicks")
    };
    let collision = catalog.create_topic(parent).await;
    let Err(MetadataError::AlreadyExists { what }) = collision else {
        panic!("expected AlreadyExists, got {collision:?}");
    };
    assert_eq!(what, "topic `/ns/clicks-part-1`");
    assert_eq!(
        names(&catalog.list_topics("ns").await.expect("list")),
        ["/ns/clicks-part-1"]
    );

    let none = catalog.create_partitioned_topic(topic("/ns/flat")).await;
    assert!(matches!(none, Err(MetadataError::Invalid { .. })));
    let too_many = TopicRecord {
        partitions: MAX_PARTITIONS + 1,
        ..topic("/ns/huge")
    };
    let too_many = catalog.create_partitioned_topic(too_many).await;
    assert!(matches!(too_many, Err(MetadataError::Invalid { .. })));
}

#[tokio::test]
async fn update_topic_keeps_the_creation_time_and_needs_an_existing_topic() {
    let catalog = catalog();
    catalog.ensure_namespace("ns").await.expect("ensure");
    let created = catalog.create_topic(topic("/ns/t")).await.expect("create");

    let schema = TopicSchema {
        subject: "t-value".to_owned(),
        schema_id: 1,
        version: 1,
    };
    let update = TopicRecord {
        schema: Some(schema.clone()),
        created_at_ms: 1,
        ..topic("/ns/t")
    };
    catalog.update_topic(update).await.expect("update");
    let stored = catalog
        .topic("/ns/t")
        .await
        .expect("read")
        .expect("the topic exists");
    assert_eq!(stored.schema, Some(schema));
    assert_eq!(stored.created_at_ms, created.created_at_ms);

    let missing = catalog.update_topic(topic("/ns/nope")).await;
    assert!(matches!(missing, Err(MetadataError::NotFound { what }) if what == "topic `/ns/nope`"));
}

#[tokio::test]
async fn delete_topic_removes_its_partitions_and_all_their_subscriptions() {
    let catalog = catalog();
    catalog.ensure_namespace("ns").await.expect("ensure");
    let parent = TopicRecord {
        partitions: 2,
        ..topic("/ns/p")
    };
    catalog
        .create_partitioned_topic(parent)
        .await
        .expect("create");
    catalog
        .create_topic(topic("/ns/kept"))
        .await
        .expect("create");

    let subscriptions = [
        ("/ns/p", "s1"),
        ("/ns/p-part-0", "s1"),
        ("/ns/p-part-1", "s2"),
        ("/ns/kept", "s1"),
    ];
    let mut tx = catalog.store().begin().await.expect("begin");
    for (topic, subscription) in subscriptions {
        tx.set(&catalog.subscription_key(topic, subscription), b"{}");
    }
    tx.commit().await.expect("commit");

    catalog.delete_topic("/ns/p").await.expect("delete");
    assert_eq!(
        names(&catalog.list_topics("ns").await.expect("list")),
        ["/ns/kept"]
    );

    let mut tx = catalog.store().begin().await.expect("begin");
    for (topic, _) in subscriptions {
        let (begin, end) = catalog.subscriptions_range(topic);
        let left = tx
            .get_range(&begin, &end, RangeOptions::default())
            .await
            .expect("range");
        assert_eq!(
            left.len(),
            usize::from(topic == "/ns/kept"),
            "subscriptions of {topic}"
        );
    }
    let missing = catalog.delete_topic("/ns/p").await;
    assert!(matches!(missing, Err(MetadataError::NotFound { .. })));
}

#[tokio::test]
async fn schema_registration_assigns_one_id_per_subject_and_counts_versions() {
    let catalog = catalog();
    let (first, new) = register(&catalog, "orders-value", r#"{"type":"object"}"#).await;
    assert!(new);
    assert_eq!((first.schema_id, first.version), (1, 1));
    assert_eq!(first.fingerprint.len(), 16);

    let (second, new) = register(&catalog, "orders-value", r#"{"type":"string"}"#).await;
    assert!(new);
    assert_eq!((second.schema_id, second.version), (1, 2));

    let (other, _) = register(&catalog, "users-value", r#"{"type":"object"}"#).await;
    assert_eq!((other.schema_id, other.version), (2, 1));
    assert_ne!(other.fingerprint, "", "fingerprints are filled in");

    let subject = catalog
        .subject("orders-value")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(subject.latest_version, 2);
    assert_eq!(subject.compatibility_mode, "backward");
    let subjects = catalog.list_subjects().await.expect("list");
    let subjects: Vec<&str> = subjects.iter().map(|s| s.subject.as_str()).collect();
    assert_eq!(subjects, ["orders-value", "users-value"]);
}

#[tokio::test]
async fn identical_re_registration_returns_the_existing_version() {
    let catalog = catalog();
    let (first, _) = register(&catalog, "s", r#"{"a":1}"#).await;
    register(&catalog, "s", r#"{"b":2}"#).await;

    let (again, new) = register(&catalog, "s", r#"{"a":1}"#).await;
    assert!(!new);
    assert_eq!(again, first);
    assert_eq!(
        catalog.schema_versions("s").await.expect("versions").len(),
        2
    );
}

#[tokio::test]
async fn registration_retried_after_unknown_result_reports_one_new_version() {
    let catalog = catalog();
    let lying = catalog_with_one_unknown_result(&catalog);

    let (record, new) = register(&lying, "s", r#"{"a":1}"#).await;
    assert!(new, "the retry must still report the version it created");
    assert_eq!(record.version, 1);
    assert_eq!(
        catalog.schema_versions("s").await.expect("versions"),
        [record]
    );

    let (next, _) = register(&catalog, "t", "{}").await;
    assert_eq!(
        next.schema_id, 2,
        "the retry must not take a second schema id"
    );
}

#[tokio::test]
async fn registration_refuses_unknown_types_and_a_type_change() {
    let catalog = catalog();
    register(&catalog, "s", "{}").await;

    let changed = catalog
        .register_schema("s", "avro", b"{}", "", "", &[])
        .await;
    let Err(MetadataError::Invalid { reason }) = changed else {
        panic!("expected Invalid, got {changed:?}");
    };
    assert!(reason.contains("`json_schema`"), "{reason}");
    let unknown = catalog
        .register_schema("s2", "xml", b"<a/>", "", "", &[])
        .await;
    assert!(matches!(unknown, Err(MetadataError::Invalid { reason }) if reason.contains("`xml`")));
}

#[tokio::test]
async fn schemas_are_found_by_id_and_version_or_latest() {
    let catalog = catalog();
    let (first, _) = register(&catalog, "s", "{}").await;
    let (second, _) = register(&catalog, "s", "[]").await;

    assert_eq!(
        catalog.schema(1, None).await.expect("read"),
        Some(second.clone())
    );
    assert_eq!(
        catalog.schema(1, Some(1)).await.expect("read"),
        Some(first.clone())
    );
    assert_eq!(catalog.schema(1, Some(9)).await.expect("read"), None);
    assert_eq!(catalog.schema(7, None).await.expect("read"), None);
    assert_eq!(
        catalog.latest_schema("s").await.expect("read"),
        Some(second.clone())
    );
    assert_eq!(
        catalog.schema_versions("s").await.expect("read"),
        [first, second]
    );
}

#[tokio::test]
async fn compatibility_mode_accepts_known_modes_for_known_subjects() {
    let catalog = catalog();
    register(&catalog, "s", "{}").await;

    let updated = catalog
        .set_compatibility_mode("s", "full")
        .await
        .expect("set");
    assert_eq!(updated.compatibility_mode, "full");
    let (_, _) = register(&catalog, "s", "[]").await;
    let subject = catalog.subject("s").await.expect("read").expect("exists");
    assert_eq!(
        subject.compatibility_mode, "full",
        "a new version keeps the mode"
    );

    let invalid = catalog.set_compatibility_mode("s", "sideways").await;
    assert!(matches!(invalid, Err(MetadataError::Invalid { .. })));
    let missing = catalog.set_compatibility_mode("nope", "none").await;
    assert!(matches!(missing, Err(MetadataError::NotFound { what }) if what.contains("`nope`")));
}

#[tokio::test]
async fn deleted_schema_versions_are_never_reused_and_the_last_delete_removes_the_subject() {
    let catalog = catalog();
    register(&catalog, "s", "{}").await;
    register(&catalog, "s", "[]").await;

    catalog.delete_schema_version("s", 2).await.expect("delete");
    let subject = catalog.subject("s").await.expect("read").expect("exists");
    assert_eq!(subject.latest_version, 1);
    let (third, _) = register(&catalog, "s", "\"x\"").await;
    assert_eq!(third.version, 3);

    let missing = catalog.delete_schema_version("s", 2).await;
    assert!(matches!(missing, Err(MetadataError::NotFound { .. })));
    catalog.delete_schema_version("s", 1).await.expect("delete");
    catalog.delete_schema_version("s", 3).await.expect("delete");
    assert_eq!(catalog.subject("s").await.expect("read"), None);
    assert_eq!(catalog.schema(1, None).await.expect("read"), None);
}

#[tokio::test]
async fn catalogs_of_different_clusters_do_not_see_each_other() {
    let catalog = catalog();
    let other = Catalog::with_cluster(Arc::clone(catalog.store()), "other");
    catalog.ensure_namespace("ns").await.expect("ensure");

    assert_eq!(other.cluster(), "other");
    assert_eq!(other.namespace("ns").await.expect("read"), None);
    assert!(other.list_namespaces().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_record_that_does_not_decode_is_corrupt_naming_its_key() {
    let catalog = catalog();
    let key = catalog.namespace_key("broken");
    let mut tx = catalog.store().begin().await.expect("begin");
    tx.set(&key, b"not json");
    tx.commit().await.expect("commit");

    let corrupt = catalog.namespace("broken").await;
    let Err(MetadataError::Corrupt { key, .. }) = corrupt else {
        panic!("expected Corrupt, got {corrupt:?}");
    };
    assert_eq!(key, "/sava/namespaces/broken");
}
