//! The `sava-admin` binary against a real `sava-broker` process: every
//! command, its refusals, its idempotent creates, its table and JSON output
//! and its help. Traffic comes from the crates.io `danube-client`.
//!
//! The binary is found through `SAVA_ADMIN_BIN`, next to the test
//! executable, or in `<workspace>/target/<profile>`; build it with
//! `cargo build -p sava-admin -p sava-broker --bins` first. Command lines
//! are written as one string split at spaces, so no argument has one. Runs
//! block their thread for a moment, so tests with clients use two workers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use danube_client::{Consumer, DanubeClient, SubType};
use danube_core::message::StreamMessage;
use sava_tests::Broker;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;
use tokio::time::{Instant, timeout};

/// How long a condition polled through the CLI may take to hold.
const WAIT: Duration = Duration::from_secs(10);

/// How often it is polled.
const POLL: Duration = Duration::from_millis(50);

/// An admin URL nobody listens on, for runs that must not connect.
const NOWHERE: &str = "http://127.0.0.1:1";

/// The outcome of one `sava-admin` run.
#[derive(Debug)]
struct Run {
    command_line: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout of a run that must have succeeded.
    fn ok(&self) -> &str {
        let (line, stderr) = (&self.command_line, &self.stderr);
        assert_eq!(self.code, Some(0), "`sava-admin {line}` failed: {stderr}");
        &self.stdout
    }

    /// The stderr of a run that must have failed with `code`; for status 1,
    /// its one line without the `sava-admin: ` prefix.
    fn failed(&self, code: i32) -> &str {
        let (line, stdout, stderr) = (&self.command_line, &self.stdout, &self.stderr);
        let context = format!("`sava-admin {line}`; stdout: {stdout} stderr: {stderr}");
        assert_eq!(self.code, Some(code), "{context}");
        if code == 2 {
            return stderr;
        }
        let message = stderr.trim_end();
        assert!(!message.contains('\n'), "not one line: {context}");
        let message = message.strip_prefix("sava-admin: ");
        message.unwrap_or_else(|| panic!("no sava-admin prefix: {context}"))
    }
}

/// `sava-admin` pointed at one admin URL (through `SAVA_ADMIN_URL`, as a
/// user would).
struct Admin {
    url: String,
}

impl Admin {
    fn of(broker: &Broker) -> Admin {
        Admin::at(&broker.admin_url())
    }

    fn at(url: &str) -> Admin {
        Admin { url: url.into() }
    }

    /// Runs `sava-admin` with the arguments of `command_line`.
    fn run(&self, command_line: &str) -> Run {
        let output = Command::new(admin_binary())
            .args(command_line.split_whitespace())
            .env("SAVA_ADMIN_URL", &self.url)
            .output()
            .expect("sava-admin starts");
        Run {
            command_line: command_line.into(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The stdout of a run that must succeed.
    fn ok(&self, command_line: &str) -> String {
        self.run(command_line).ok().to_string()
    }

    /// The output of `COMMAND_LINE --output json`, which must succeed.
    fn json(&self, command_line: &str) -> Value {
        let run = self.run(&format!("{command_line} --output json"));
        let stdout = run.ok();
        serde_json::from_str(stdout)
            .unwrap_or_else(|error| panic!("`{command_line}` printed no json ({error}): {stdout}"))
    }

    /// The error line of a run that must fail with status 1.
    fn refused(&self, command_line: &str) -> String {
        self.run(command_line).failed(1).to_string()
    }

    /// The stderr of a run that must fail as a usage error (status 2).
    fn misused(&self, command_line: &str) -> String {
        self.run(command_line).failed(2).to_string()
    }

    /// Runs `COMMAND_LINE --output json` until `holds` accepts its output,
    /// and returns that output; fails after [`WAIT`].
    async fn wait_json(&self, command_line: &str, holds: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.json(command_line);
            if holds(&value) {
                return value;
            }
            let expired = Instant::now() >= deadline;
            assert!(
                !expired,
                "`{command_line}` never showed the expected state: {value:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `subscription` shows `backlog` messages, and returns it.
    /// A reset is applied by the broker after it answers.
    async fn wait_backlog(&self, topic: &str, subscription: &str, backlog: u64) -> Value {
        let describe = format!("subscriptions describe {topic} {subscription}");
        let holds = |info: &Value| info["backlog_messages"] == backlog;
        self.wait_json(&describe, holds).await
    }
}

/// The `sava-admin` binary: `SAVA_ADMIN_BIN`, or the one built with the
/// tests.
fn admin_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SAVA_ADMIN_BIN") {
        return PathBuf::from(path);
    }
    let mut candidates = Vec::new();
    // Test executables live in target/<profile>/deps, binaries one level up.
    if let Ok(executable) = std::env::current_exe()
        && let Some(directory) = executable.parent()
    {
        let profile_dir = if directory.ends_with("deps") {
            directory.parent().unwrap_or(directory)
        } else {
            directory
        };
        candidates.push(profile_dir.join("sava-admin"));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    candidates.push(target_dir.join(profile).join("sava-admin"));

    match candidates.iter().find(|candidate| candidate.is_file()) {
        Some(found) => found.clone(),
        None => panic!(
            "cannot find the sava-admin binary (searched {candidates:?}); \
             run `cargo build -p sava-admin --bins` or set SAVA_ADMIN_BIN"
        ),
    }
}

/// Asserts that `text` contains `part`.
#[track_caller]
fn assert_has(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} is missing from:\n{text}");
}

/// Asserts that a table fits the 80 columns it promises.
#[track_caller]
fn assert_fits(table: &str) {
    for line in table.lines() {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
    }
}

/// The cells of the first row of `table` that has a cell `cell`.
#[track_caller]
fn row<'a>(table: &'a str, cell: &str) -> Vec<&'a str> {
    let mut rows = table.lines().map(|line| line.split_whitespace());
    let found = rows.find(|cells| cells.clone().any(|each| each == cell));
    let found = found.map(|cells| cells.collect());
    found.unwrap_or_else(|| panic!("no row has a cell {cell}:\n{table}"))
}

/// The `name` fields of a JSON array.
fn names(listing: &Value) -> Vec<&str> {
    let items = listing.as_array().expect("a json array");
    items
        .iter()
        .map(|item| item["name"].as_str().unwrap())
        .collect()
}

/// Writes `text` to `name` in `directory` and returns the path.
fn write_file(directory: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = directory.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn danube(broker: &Broker) -> DanubeClient {
    DanubeClient::builder()
        .service_url(broker.service_url())
        .build()
        .await
        .expect("danube client connects")
}

/// A subscribed consumer named `<subscription>-consumer` with its message
/// stream; returns once the broker shows it attached.
async fn consumer(
    broker: &Broker,
    client: &DanubeClient,
    topic: &str,
    subscription: &str,
    kind: SubType,
) -> (Consumer, Receiver<StreamMessage>) {
    let mut consumer = client
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name(format!("{subscription}-consumer"))
        .with_subscription(subscription)
        .with_subscription_type(kind)
        .build()
        .unwrap();
    consumer.subscribe().await.expect("subscribe");
    let stream = consumer.receive().await.expect("receive");

    let describe = format!("subscriptions describe {topic} {subscription}");
    let attached = |info: &Value| {
        let consumers = info["consumers"].as_array().unwrap();
        consumers
            .iter()
            .any(|consumer| consumer["connected"] == true)
    };
    Admin::of(broker).wait_json(&describe, attached).await;
    (consumer, stream)
}

async fn next(stream: &mut Receiver<StreamMessage>) -> StreamMessage {
    let message = timeout(WAIT, stream.recv())
        .await
        .expect("a message in time");
    message.expect("the stream stays open")
}

#[tokio::test]
async fn the_broker_lists_itself_as_leader_and_describes_itself_by_id() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);

    let brokers = admin.json("brokers list");
    assert_eq!(brokers.as_array().unwrap().len(), 1);
    let listed = &brokers[0];
    let id = listed["broker_id"].as_str().unwrap();
    assert_eq!(listed["client_url"], broker.service_url());
    assert_eq!(listed["admin_url"], broker.admin_url());
    assert_eq!(listed["state"], "active");
    assert_eq!(listed["leader"], true);
    assert!(listed["topics"].is_u64());
    assert!(listed["started_at_ms"].as_u64().unwrap() > 0);
    assert!(listed["version"].is_string());

    let table = admin.ok("brokers list");
    assert_fits(&table);
    assert_eq!(row(&table, "ID")[..3], ["ID", "STATE", "LEADER"]);
    assert_eq!(row(&table, id)[1..3], ["active", "yes"]);

    assert_eq!(admin.json("brokers leader")["broker_id"], id);
    let described = admin.ok(&format!("brokers describe {id}"));
    assert_eq!(row(&described, "id:")[1], id);
    assert_eq!(row(&described, "leader:")[1], "yes");

    let missing = admin.refused("brokers describe broker-9");
    assert_eq!(missing, "broker broker-9 is not part of this cluster");
    let missing = admin.refused("brokers drain broker-9");
    assert_eq!(missing, "broker broker-9 is not part of this cluster");

    // Drain and activate answer with the state they set; once active
    // again the broker takes topics.
    let drained = admin.json(&format!("brokers drain {id}"));
    assert_eq!(drained["state"], "draining");
    assert!(drained["owned_topic_names"].is_array());
    let active = admin.json(&format!("brokers activate {id}"));
    assert_eq!(active["state"], "active");
    admin.ok("topics create /default/after-the-drain");
    let stats = admin.json("topics stats /default/after-the-drain");
    assert_eq!(stats["name"], "/default/after-the-drain");
}

#[tokio::test]
async fn creating_a_namespace_twice_succeeds_and_says_it_already_exists() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);

    let created = admin.ok("namespaces create billing");
    assert_eq!(created, "created namespace billing\n");
    let again = admin.ok("namespaces create billing");
    assert_eq!(again, "namespace already exists\n");
    let again = admin.json("namespaces create billing");
    assert_eq!(again["name"], "billing");
    assert_eq!(again["note"], "namespace already exists");

    let table = admin.ok("namespaces list");
    assert_fits(&table);
    assert_eq!(row(&table, "NAME")[..2], ["NAME", "TOPICS"]);
    assert_eq!(row(&table, "billing")[1..4], ["0", "yes", "broker"]);
    assert_eq!(row(&table, "default")[0], "default");

    let listed = admin.json("namespaces list");
    let namespaces = listed.as_array().unwrap();
    let billing = namespaces.iter().find(|n| n["name"] == "billing").unwrap();
    assert_eq!(billing["topics"], 0);
    assert!(billing["created_at_ms"].as_u64().unwrap() > 0);
    assert_eq!(billing["policies"]["auto_create_topics"], true);
    assert_eq!(billing["policies"]["max_message_bytes"], 0);
    assert!(billing["policies"]["default_dispatch_mode"].is_string());
    assert!(billing.get("note").is_none(), "listings carry no note");

    assert_has(&admin.refused("namespaces create no.dots"), "no.dots");
}

#[tokio::test]
async fn a_namespace_with_topics_is_deleted_only_with_force() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    admin.ok("namespaces create scratch");
    admin.ok("topics create /scratch/events");

    let refused = admin.refused("namespaces delete scratch");
    assert_has(&refused, "namespace scratch has 1 topics");
    assert_has(&refused, "--force");

    let topics = admin.json("namespaces topics scratch");
    assert_eq!(names(&topics), ["/scratch/events"]);

    let deleted = admin.ok("namespaces delete scratch --force");
    assert_eq!(deleted, "deleted namespace scratch and 1 topics\n");
    let listed = admin.json("namespaces list");
    assert!(!names(&listed).contains(&"scratch"));

    let missing = admin.run("namespaces delete scratch --output json");
    assert_eq!(missing.failed(1), "namespace scratch does not exist");
    assert!(missing.stdout.is_empty());
}

#[tokio::test]
async fn namespace_policies_are_shown_and_set_and_unknown_keys_are_refused() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);

    let policies = admin.json("namespaces policies default");
    assert_eq!(policies["namespace"], "default");
    assert!(policies["auto_create_topics"].is_boolean());
    assert!(policies["max_message_bytes"].is_u64());
    assert!(policies["default_dispatch_mode"].is_string());

    let set = admin.ok("namespaces set-policy default max_message_bytes 4096");
    assert_has(&set, "set max_message_bytes of namespace default to 4096\n");
    let limit = row(&set, "max_message_bytes:");
    assert_eq!(limit[1..], ["4096", "(4.0", "KiB)"]);
    let set = admin.json("namespaces set-policy default auto_create_topics false");
    assert_eq!(set["auto_create_topics"], false);
    assert_eq!(set["max_message_bytes"], 4096);

    let table = admin.ok("namespaces policies default");
    assert_eq!(row(&table, "auto_create_topics:")[1], "false");

    let unknown = admin.refused("namespaces set-policy default retention 1d");
    assert_has(&unknown, "unknown policy retention");
    let bad_value = admin.refused("namespaces set-policy default max_message_bytes lots");
    assert_has(&bad_value, "max_message_bytes");
    let missing = admin.refused("namespaces policies nowhere");
    assert_eq!(missing, "namespace nowhere does not exist");
}

#[tokio::test]
async fn topics_are_created_idempotently_listed_and_described() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    let create = "topics create /default/orders --partitions 3 --reliable";

    let created = admin.ok(create);
    assert_eq!(
        created,
        "created topic /default/orders (reliable, 3 partitions)\n"
    );
    assert_eq!(admin.ok(create), "topic already exists\n");
    let different = admin.refused("topics create /default/orders");
    assert_has(&different, "topic /default/orders exists with 3 partitions");

    let topic = admin.json("topics describe /default/orders");
    assert_eq!(topic["name"], "/default/orders");
    assert_eq!(topic["dispatch_mode"], "reliable");
    assert_eq!(topic["partitions"], 3);
    assert!(topic["partition_of"].is_null());
    assert!(topic["schema"].is_null());
    assert!(topic["created_at_ms"].as_u64().unwrap() > 0);
    let partition = admin.json("topics describe /default/orders-part-2");
    assert_eq!(partition["partition_of"], "/default/orders");
    assert_eq!(partition["partitions"], 0);
    let described = admin.ok("topics describe /default/orders");
    assert_eq!(row(&described, "mode:"), ["dispatch", "mode:", "reliable"]);

    admin.ok("topics create /default/plain");
    let table = admin.ok("topics list");
    assert_fits(&table);
    assert_eq!(row(&table, "/default/orders")[1..4], ["reliable", "3", "-"]);
    assert_eq!(
        row(&table, "/default/plain")[1..4],
        ["non-reliable", "0", "-"]
    );
    let listed = admin.json("topics list default");
    let expected = ["/default/orders", "/default/plain"];
    assert_eq!(names(&listed), expected, "partitions are not listed");
    let in_namespace = admin.ok("namespaces topics default");
    assert_eq!(row(&in_namespace, "/default/plain")[1], "non-reliable");

    let bad_name = admin.refused("topics describe orders");
    assert_has(&bad_name, "a topic name has the form /namespace/topic");
}

#[tokio::test]
async fn a_topic_created_with_a_json_schema_is_bound_to_its_subject() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    let directory = tempfile::tempdir().unwrap();
    let definition = r#"{"type":"object","properties":{"id":{"type":"integer"}}}"#;
    let schema = write_file(&directory, "order.json", definition);

    let create = "topics create /default/typed --schema json --schema-file";
    let created = admin.ok(&format!("{create} {schema}"));
    let expected = "created topic /default/typed (non-reliable, schema json_schema)\n";
    assert_eq!(created, expected);
    let topic = admin.json("topics describe /default/typed");
    assert_eq!(topic["schema"]["subject"], "/default/typed");
    assert_eq!(topic["schema"]["version"], 1);
    assert_eq!(topic["schema"]["schema_type"], "json_schema");
    let subject = admin.json("schemas get /default/typed");
    assert_eq!(subject["definition"], definition);

    let no_file = admin.misused("topics create /default/untyped --schema json");
    assert_has(&no_file, "--schema-file");
    let unreadable = admin.refused(&format!("{create} /nonexistent.json"));
    assert_has(&unreadable, "cannot read schema file /nonexistent.json");
}

#[tokio::test]
async fn deleting_a_topic_names_a_missing_one_and_needs_force_with_subscriptions() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);

    let missing = admin.refused("topics delete /default/missing");
    assert_eq!(missing, "topic /default/missing does not exist");

    admin.ok("topics create /default/held");
    admin.ok("subscriptions create /default/held audit");
    let refused = admin.refused("topics delete /default/held");
    assert_has(&refused, "topic /default/held has 1 subscriptions");

    let deleted = admin.json("topics delete /default/held --force");
    assert_eq!(deleted["deleted"], "/default/held");
    assert!(deleted["note"].is_null());
    let gone = admin.refused("topics describe /default/held");
    assert_eq!(gone, "topic /default/held does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_stats_show_traffic_and_reset_rewinds_a_reliable_subscription() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    let topic = "/default/ledger";
    admin.ok(&format!("topics create {topic} --reliable"));
    admin.ok(&format!(
        "subscriptions create {topic} audit --from earliest"
    ));

    let client = danube(&broker).await;
    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("writer")
        .with_reliable_dispatch()
        .build()
        .unwrap();
    producer.create().await.unwrap();
    for i in 0..10 {
        let payload = format!("entry {i}").into_bytes();
        producer.send(payload, None).await.unwrap();
    }

    let stats_command = format!("topics stats {topic}");
    let traffic = |stats: &Value| stats["messages_in"] == 10;
    let stats = admin.wait_json(&stats_command, traffic).await;
    assert_eq!(stats["name"], topic);
    assert!(stats["bytes_in"].as_u64().unwrap() >= 70);
    assert_eq!(stats["next_offset"], 10);
    assert!(stats["rate_in"].is_f64() && stats["rate_out"].is_f64());
    assert!(stats["messages_out"].is_u64());
    assert!(stats["local_bytes"].is_u64() && stats["offloaded_bytes"].is_u64());
    assert_eq!(stats["producers"][0]["name"], "writer");
    assert_eq!(stats["producers"][0]["connected"], true);
    let audit = &stats["subscriptions"][0];
    assert_eq!(audit["name"], "audit");
    assert_eq!(audit["backlog_messages"], 10);
    assert!(audit["backlog_bytes"].as_u64().unwrap() > 0);

    let table = admin.ok(&stats_command);
    assert_fits(&table);
    assert_eq!(row(&table, "in:")[..3], ["messages", "in:", "10"]);
    assert_eq!(row(&table, "audit")[1..4], ["exclusive", "0", "10"]);
    assert_eq!(row(&table, "PRODUCERS"), ["PRODUCERS"]);
    assert_eq!(row(&table, "writer")[1..], ["writer", "shared", "yes"]);

    let subscribed = consumer(&broker, &client, topic, "audit", SubType::Exclusive);
    let (mut consumer, mut stream) = subscribed.await;
    for _ in 0..10 {
        let message = next(&mut stream).await;
        consumer.ack(&message).await.unwrap();
    }
    let audit = admin.wait_backlog(topic, "audit", 0).await;
    assert_eq!(audit["cursor"], 10);
    assert_eq!(audit["delivered"], 10);
    consumer.close().await;

    let reset = format!("subscriptions reset {topic} audit --to");
    let rewound = admin.ok(&format!("{reset} earliest"));
    assert_eq!(
        rewound,
        "reset subscription audit on /default/ledger to earliest\n"
    );
    assert_eq!(admin.wait_backlog(topic, "audit", 10).await["cursor"], 0);

    let json = admin.json(&format!("{reset} offset:4"));
    assert_eq!(json["name"], "audit");
    assert!(json["cursor"].is_u64() && json["backlog_messages"].is_u64());
    assert_eq!(admin.wait_backlog(topic, "audit", 6).await["cursor"], 4);
    admin.ok(&format!("{reset} latest"));
    assert_eq!(admin.wait_backlog(topic, "audit", 0).await["cursor"], 10);
    admin.ok(&format!("{reset} time:1970-01-01T00:00:00Z"));
    admin.wait_backlog(topic, "audit", 10).await;
    admin.ok(&format!("{reset} time:2999-01-01T00:00:00+02:00"));
    admin.wait_backlog(topic, "audit", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_show_their_consumers_and_are_deleted_only_with_force_while_connected() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    let topic = "/default/live";
    let client = danube(&broker).await;
    let producer = client.new_producer().with_topic(topic).with_name("feed");
    producer.build().unwrap().create().await.unwrap();
    let subscribed = consumer(&broker, &client, topic, "watchers", SubType::Shared);
    let (_consumer, _stream) = subscribed.await;

    let listed = admin.json(&format!("subscriptions list {topic}"));
    let watchers = &listed[0];
    assert_eq!(watchers["topic"], topic);
    assert_eq!(watchers["name"], "watchers");
    assert_eq!(watchers["subscription_type"], "shared");
    let counters = [
        "cursor",
        "backlog_messages",
        "backlog_bytes",
        "oldest_unacked_age_ms",
        "pending",
        "delivered",
        "redelivered",
        "dropped",
    ];
    for field in counters {
        assert!(watchers[field].is_u64(), "{field} is a number: {watchers}");
    }
    let attached = &watchers["consumers"][0];
    assert_eq!(attached["name"], "watchers-consumer");
    assert_eq!(attached["mode"], "shared");
    assert_eq!(attached["connected"], true);
    assert!(attached["id"].is_u64());

    let table = admin.ok(&format!("subscriptions list {topic}"));
    assert_fits(&table);
    assert_eq!(row(&table, "watchers")[1], "shared");
    assert_eq!(row(&table, "watchers").last(), Some(&"1"));
    let described = admin.ok(&format!("subscriptions describe {topic} watchers"));
    assert_eq!(row(&described, "type:")[1], "shared");
    assert_eq!(row(&described, "CONSUMERS"), ["CONSUMERS"]);
    assert_eq!(row(&described, "ID")[1], "NAME");
    let consumer_row = row(&described, "watchers-consumer");
    assert_eq!(consumer_row[1..], ["watchers-consumer", "shared", "yes"]);

    let refused = admin.refused(&format!("subscriptions delete {topic} watchers"));
    assert_has(
        &refused,
        "subscription watchers on /default/live has 1 connected",
    );
    let deleted = admin.ok(&format!("subscriptions delete {topic} watchers --force"));
    assert_eq!(deleted, "deleted subscription watchers on /default/live\n");
    let listed = admin.json(&format!("subscriptions list {topic}"));
    assert_eq!(listed, Value::Array(vec![]));

    let missing = admin.refused(&format!("subscriptions describe {topic} watchers"));
    assert_eq!(
        missing,
        "subscription watchers does not exist on /default/live"
    );
}

#[tokio::test]
async fn creating_a_subscription_is_idempotent_and_a_non_reliable_one_cannot_be_reset() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    admin.ok("topics create /default/ticks");

    let create = "subscriptions create /default/ticks charts --type key-shared";
    let created = admin.ok(create);
    assert_eq!(
        created,
        "created key-shared subscription charts on /default/ticks\n"
    );
    let again = admin.json(create);
    assert_eq!(again["note"], "subscription already exists");
    assert_eq!(again["subscription_type"], "key-shared");
    let other_type = admin.refused("subscriptions create /default/ticks charts");
    let expected = "subscription charts on /default/ticks is key-shared, not exclusive";
    assert_eq!(other_type, expected);

    let create = "subscriptions create /default/ticks replay --type failover --from";
    admin.ok(&format!("{create} time:2024-02-29T12:00:00.5Z"));
    let bad_from = admin.misused(&format!("{create} time:yesterday"));
    assert_has(&bad_from, "\"yesterday\" is not an RFC 3339 time");
    let bad_to = admin.misused("subscriptions reset /default/ticks charts --to first");
    assert_has(
        &bad_to,
        "expected earliest, latest, offset:N or time:RFC3339",
    );

    let refused = admin.refused("subscriptions reset /default/ticks charts --to earliest");
    assert_has(
        &refused,
        "subscription charts on /default/ticks is non-reliable",
    );
    let missing_topic = admin.refused("subscriptions list /default/nothing");
    assert_eq!(missing_topic, "topic /default/nothing does not exist");
}

#[tokio::test]
async fn the_subscriptions_of_a_partitioned_topic_are_listed_by_partition() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    admin.ok("topics create /default/sharded --partitions 2 --reliable");
    admin.ok("subscriptions create /default/sharded-part-1 indexer");

    let table = admin.ok("subscriptions list /default/sharded");
    assert_eq!(row(&table, "PART")[1], "NAME");
    assert_eq!(row(&table, "indexer")[..3], ["1", "indexer", "exclusive"]);
    let listed = admin.json("subscriptions list /default/sharded");
    assert_eq!(listed[0]["topic"], "/default/sharded-part-1");

    let stats = admin.json("topics stats /default/sharded");
    assert_eq!(stats["subscriptions"][0]["name"], "indexer");
}

#[tokio::test]
async fn loaded_topics_unload_and_a_reliable_one_comes_back_with_its_subscriptions() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    admin.ok("topics create /default/cache");
    // Creating a subscription loads the topic.
    admin.ok("subscriptions create /default/cache warm");

    let unloaded = admin.ok("topics unload /default/cache");
    assert_eq!(unloaded, "unloaded topic /default/cache\n");
    let again = admin.json("topics unload /default/cache");
    assert_eq!(again["topic"], "/default/cache");
    assert_eq!(again["unloaded"], false);
    assert_eq!(again["note"], "topic was not loaded");

    admin.ok("topics create /default/journal --reliable");
    admin.ok("subscriptions create /default/journal audit --from earliest");
    let unloaded = admin.ok("topics unload /default/journal");
    assert_eq!(unloaded, "unloaded topic /default/journal\n");
    // Reloading reads the log from disk and the subscription from metadata.
    let described = admin.json("subscriptions describe /default/journal audit");
    assert_eq!(described["name"], "audit");
}

#[tokio::test]
async fn schemas_are_registered_versioned_checked_and_given_a_compatibility_mode() {
    let broker = Broker::start().await.unwrap();
    let admin = Admin::of(&broker);
    let directory = tempfile::tempdir().unwrap();
    let v1 = r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}"#;
    let v1 = write_file(&directory, "v1.json", v1);
    let v2 = r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}}}"#;
    let v2 = write_file(&directory, "v2.json", v2);
    let retyped = r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#;
    let retyped = write_file(&directory, "retyped.json", retyped);

    let register = "schemas register events --type json --file";
    let registered = admin.ok(&format!("{register} {v1}"));
    assert!(registered.starts_with("registered version 1 of subject events (schema id "));
    let again = admin.json(&format!("{register} {v1}"));
    assert_eq!(again["is_new_version"], false);
    assert_eq!(again["version"], 1);
    let second = admin.json(&format!("{register} {v2}"));
    assert_eq!(second["subject"], "events");
    assert_eq!(second["version"], 2);
    assert_eq!(second["is_new_version"], true);
    assert!(second["schema_id"].is_u64() && second["fingerprint"].is_string());

    let versions = admin.json("schemas versions events");
    let versions = versions.as_array().unwrap();
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(versions[0]["created_by"], "sava-admin");
    assert!(versions[0]["created_at_ms"].as_u64().unwrap() > 0);
    let table = admin.ok("schemas versions events");
    assert_fits(&table);
    assert_eq!(row(&table, "2")[3], "sava-admin");

    let latest = admin.json("schemas get events");
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["schema_type"], "json_schema");
    assert_eq!(latest["compatibility_mode"], "backward");
    assert_has(latest["definition"].as_str().unwrap(), "\"b\"");
    assert!(latest["tags"].is_array());
    let first = admin.ok("schemas get events --version 1");
    assert_eq!(row(&first, "version:")[1], "1");
    assert_eq!(row(&first, "DEFINITION"), ["DEFINITION"]);
    let absent = admin.refused("schemas get events --version 9");
    assert_eq!(absent, "schema subject events has no version 9");
    let unknown = admin.refused("schemas get nothing");
    assert_eq!(unknown, "schema subject nothing does not exist");

    let check = format!("schemas check events --type json --file {retyped}");
    let incompatible = admin.run(&check);
    let expected = "the schema is not compatible with the latest version of subject events";
    assert_eq!(incompatible.failed(1), expected);
    assert_has(&incompatible.stdout, "- property \"a\" changes type");
    let incompatible = admin.run(&format!("{check} --output json"));
    incompatible.failed(1);
    let verdict: Value = serde_json::from_str(&incompatible.stdout).unwrap();
    assert_eq!(verdict["subject"], "events");
    assert_eq!(verdict["compatible"], false);
    assert!(verdict["errors"][0].is_string());
    let compatible = admin.ok(&format!("schemas check events --type json --file {v2}"));
    assert_eq!(compatible, "compatible with subject events\n");

    let set = admin.json("schemas set-compatibility events none");
    assert_eq!(set["compatibility_mode"], "none");
    assert_has(set["message"].as_str().unwrap(), "events");
    admin.ok(&check);
    assert_eq!(
        admin.json("schemas get events")["compatibility_mode"],
        "none"
    );
    let missing = admin.refused("schemas set-compatibility nothing full");
    assert_has(&missing, "nothing");

    let plain = admin.ok("schemas register counter --type int64");
    assert!(plain.starts_with("registered version 1 of subject counter"));
    let no_file = admin.misused("schemas register events --type json");
    assert_has(&no_file, "--file");
}

#[test]
fn every_command_explains_its_flags_and_arguments_in_its_help() {
    let cases: &[(&str, &[&str])] = &[
        ("", &["brokers", "namespaces", "schemas", "SAVA_ADMIN_URL"]),
        (
            "brokers list",
            &["--admin-url", "http://127.0.0.1:50051", "json"],
        ),
        ("brokers leader", &["--output"]),
        ("brokers describe", &["<ID>", "brokers list"]),
        ("brokers drain", &["<ID>", "activated"]),
        ("brokers activate", &["<ID>", "drained"]),
        ("namespaces list", &["--output"]),
        ("namespaces create", &["<NAMESPACE>", "letters, digits"]),
        ("namespaces delete", &["<NAMESPACE>", "--force"]),
        ("namespaces topics", &["<NAMESPACE>"]),
        ("namespaces policies", &["<NAMESPACE>"]),
        (
            "namespaces set-policy",
            &["<KEY>", "<VALUE>", "auto_create_topics"],
        ),
        ("topics list", &["[NAMESPACE]", "every namespace"]),
        (
            "topics create",
            &["--partitions", "--reliable", "--schema-file"],
        ),
        ("topics delete", &["--force", "subscriptions"]),
        ("topics describe", &["<TOPIC>", "/namespace/topic"]),
        ("topics stats", &["<TOPIC>", "partitions"]),
        ("topics unload", &["<TOPIC>"]),
        ("subscriptions list", &["<TOPIC>"]),
        (
            "subscriptions create",
            &["--type", "key-shared", "--from", "offset:N"],
        ),
        ("subscriptions delete", &["<SUBSCRIPTION>", "--force"]),
        ("subscriptions reset", &["--to", "earliest", "time:RFC3339"]),
        ("subscriptions describe", &["<SUBSCRIPTION>"]),
        ("schemas register", &["--type", "--file", "json", "int64"]),
        ("schemas get", &["--version", "latest"]),
        ("schemas versions", &["<SUBJECT>"]),
        ("schemas check", &["--type", "--file", "exits 1"]),
        ("schemas set-compatibility", &["<MODE>", "backward", "full"]),
    ];
    let admin = Admin::at(NOWHERE);
    for (command, expected) in cases {
        let help = admin.ok(&format!("{command} --help"));
        for word in *expected {
            assert!(
                help.contains(word),
                "`{command} --help` lacks {word}:\n{help}"
            );
        }
    }
}

#[test]
fn usage_errors_exit_with_2_and_an_unreachable_broker_with_1() {
    let admin = Admin::at(NOWHERE);
    admin.misused("topics rename");
    assert_has(&admin.misused("topics list --output yaml"), "yaml");
    assert_has(&admin.misused("subscriptions reset /default/t s"), "--to");

    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let unreachable = Admin::at(&url).refused("brokers list");
    let expected = format!("cannot connect to the admin api at {url}: ");
    assert!(unreachable.starts_with(&expected), "{unreachable}");
    let flag_wins = admin.refused(&format!("--admin-url {url} brokers list"));
    assert_has(&flag_wins, &url);
}
