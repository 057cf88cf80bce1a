//! The `sava` CLI against a real broker: produce from arguments and from
//! standard input, consume as text and as JSON, refusals, and bench output.

use std::io::Write;
use std::process::{Output, Stdio};

use sava_tests::Broker;

fn run(broker: &Broker, args: &[&str]) -> Output {
    broker
        .sava_command()
        .unwrap()
        .args(args)
        .output()
        .expect("sava runs")
}

fn run_with_stdin(broker: &Broker, args: &[&str], input: &str) -> Output {
    let mut child = broker
        .sava_command()
        .unwrap()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sava starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[tokio::test]
async fn produced_lines_are_consumed_as_json_with_every_field() {
    let broker = Broker::start().await.unwrap();
    let topic = "/default/cli-json";
    let subscribe = [
        "produce",
        "--topic",
        topic,
        "--reliable",
        "--message",
        "warmup",
    ];
    assert!(run(&broker, &subscribe).status.success());
    // A reliable subscription created now starts after `warmup`; it holds
    // what comes next even before the consumer runs.
    let create = broker
        .sava_command()
        .unwrap()
        .args([
            "consume",
            "--topic",
            topic,
            "--subscription",
            "s",
            "--count",
            "1",
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(create.status.success(), "{}", text(&create.stderr));

    let produced = run_with_stdin(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "--reliable",
            "--key",
            "k1",
            "--attr",
            "source=cli",
            "--attr",
            "n=1",
        ],
        "alpha\nbeta\ngamma\n",
    );
    assert!(produced.status.success(), "{}", text(&produced.stderr));
    assert!(
        text(&produced.stdout).contains("sent 3 messages, 3 acknowledged"),
        "{}",
        text(&produced.stdout)
    );

    let consumed = run(
        &broker,
        &[
            "consume",
            "--topic",
            topic,
            "--subscription",
            "s",
            "--count",
            "3",
            "--timeout",
            "5",
            "--output",
            "json",
        ],
    );
    assert!(consumed.status.success(), "{}", text(&consumed.stderr));
    let lines: Vec<serde_json::Value> = text(&consumed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let payloads: Vec<&str> = lines
        .iter()
        .map(|l| l["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, vec!["alpha", "beta", "gamma"]);
    for line in &lines {
        assert_eq!(line["topic"], topic);
        assert_eq!(line["key"], "k1");
        assert_eq!(line["attributes"]["source"], "cli");
        assert!(line["offset"].is_u64());
        assert!(
            line["publish_time"].as_str().unwrap().contains('T'),
            "RFC 3339: {line}"
        );
    }
}

#[tokio::test]
async fn generated_payloads_of_a_size_are_counted_and_consumed_as_text() {
    let broker = Broker::start().await.unwrap();
    let topic = "/default/cli-text";
    let create = [
        "produce",
        "--topic",
        topic,
        "--reliable",
        "--message",
        "first",
    ];
    assert!(run(&broker, &create).status.success());
    let subscribe = [
        "consume",
        "--topic",
        topic,
        "--subscription",
        "s",
        "--count",
        "1",
        "--timeout",
        "1",
    ];
    assert!(run(&broker, &subscribe).status.success());

    let produced = run(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "--reliable",
            "--size",
            "16",
            "--count",
            "3",
        ],
    );
    assert!(
        text(&produced.stdout).contains("sent 3 messages, 3 acknowledged"),
        "{}",
        text(&produced.stdout)
    );

    let consumed = run(
        &broker,
        &[
            "consume",
            "--topic",
            topic,
            "--subscription",
            "s",
            "--count",
            "3",
            "--timeout",
            "5",
        ],
    );
    assert!(consumed.status.success(), "{}", text(&consumed.stderr));
    let lines: Vec<String> = text(&consumed.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|line| line.len() == 16), "{lines:?}");
}

#[tokio::test]
async fn a_payload_that_breaks_the_schema_fails_the_command_with_the_reason() {
    let broker = Broker::start().await.unwrap();
    let topic = "/default/cli-schema";
    let ok = run(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "--schema",
            "string",
            "--message",
            "fine",
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, r#"{"type":"object","required":["id"]}"#).unwrap();
    let topic = "/default/cli-json-schema";
    let schema_path = schema.to_str().unwrap();
    let refused = run(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "--schema",
            "json",
            "--schema-file",
            schema_path,
            "--message",
            r#"{"name":"x"}"#,
        ],
    );
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("schema") && stderr.contains("id"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test]
async fn an_invalid_topic_name_fails_with_a_message_naming_it() {
    let broker = Broker::start().await.unwrap();
    let refused = run(
        &broker,
        &["produce", "--topic", "no-slashes", "--message", "x"],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("no-slashes"),
        "{}",
        text(&refused.stderr)
    );
}

#[tokio::test]
async fn bench_prints_one_json_object_with_throughput_and_latency() {
    let broker = Broker::start().await.unwrap();
    let output = run(
        &broker,
        &[
            "bench",
            "e2e",
            "--topic",
            "/default/cli-bench",
            "--size",
            "256",
            "--count",
            "2000",
            "--output",
            "json",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value =
        serde_json::from_str(text(&output.stdout).trim()).expect("one JSON object");
    assert_eq!(report["messages"], 2000);
    assert!(report["msgs_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["mb_per_sec"].as_f64().unwrap() > 0.0);
    for field in ["p50", "p99", "p999", "max"] {
        assert!(
            report["latency_us"][field].is_u64() || report["latency_us"][field].is_f64(),
            "{field}: {report}"
        );
    }
}
