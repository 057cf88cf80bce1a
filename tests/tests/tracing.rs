//! One trace from producer to consumer: `sava produce` and `sava consume`
//! export their spans over OTLP/gRPC, and so does the broker, to a small
//! receiver built on the `opentelemetry-proto` crate's service. The
//! broker's publish (with its wait for the fsync), dispatch and offload,
//! and the consumer's receive, processing and ack continue the producer's
//! send through the message's `traceparent` attribute, which Danube
//! clients set themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sava_tests::{Broker, free_addr};
use tokio::time::{Instant, sleep};

/// Every span received, with the `service.name` of its resource.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let service = text(&attributes, "service.name").unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(number) => Some(number.to_string()),
        _ => None,
    }
}

fn run_cli(broker: &Broker, service: &str, endpoint: &str, args: &[&str]) -> String {
    let output = broker
        .sava_command()
        .unwrap()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", service)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sava {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A receiver serving on a free port, its endpoint URL, and its task.
fn start_receiver() -> (Receiver, String, tokio::task::JoinHandle<()>) {
    let receiver = Receiver::default();
    let addr = free_addr();
    let server = tokio::spawn({
        let receiver = receiver.clone();
        async move {
            let service = TraceServiceServer::new(receiver);
            let serving = tonic::transport::Server::builder().add_service(service);
            serving.serve(addr).await.expect("the receiver serves");
        }
    });
    (receiver, format!("http://{addr}"), server)
}

/// Waits until every `(service, span name)` of `wanted` arrived; the spans
/// in that order.
async fn wait_for(receiver: &Receiver, wanted: &[(&str, &str)]) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let found: Vec<_> = wanted
            .iter()
            .filter_map(|(service, name)| find(&spans, service, name).cloned())
            .collect();
        if found.len() == wanted.len() {
            return found;
        }
        let names: Vec<_> = spans
            .iter()
            .map(|(s, span)| format!("{s}/{}", span.name))
            .collect();
        assert!(Instant::now() < deadline, "spans so far: {names:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

/// The span named `name` from `service`, once it arrived.
fn find<'a>(spans: &'a [(String, Span)], service: &str, name: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|(from, span)| from == service && span.name == name)
        .map(|(_, span)| span)
}

// The receiver must keep serving while a CLI blocks the test's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_producer_through_the_broker_to_the_consumer() {
    let (receiver, endpoint, server) = start_receiver();
    let env = [
        ("SAVA_TELEMETRY__OTLP_ENDPOINT", endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ];
    let broker = Broker::start_with_env(Vec::<String>::new(), &env)
        .await
        .unwrap();
    let topic = "/default/traced";

    run_cli(
        &broker,
        "producer",
        &endpoint,
        &[
            "produce",
            "--topic",
            topic,
            "--reliable",
            "--message",
            "hello",
        ],
    );
    let printed = run_cli(
        &broker,
        "consumer",
        &endpoint,
        &[
            "consume",
            "--topic",
            topic,
            "--subscription",
            "audit",
            "--from",
            "earliest",
            "--count",
            "1",
        ],
    );
    assert_eq!(printed, "hello\n");

    // The segment holding the message goes to the object store now.
    let offloaded = broker
        .sava_admin_command()
        .unwrap()
        .args(["storage", "offload", topic])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&offloaded.stderr);
    assert!(offloaded.status.success(), "{stderr}");

    let wanted = [
        ("producer", "client.send"),
        ("sava-broker", "broker.publish"),
        ("sava-broker", "storage.commit"),
        ("sava-broker", "broker.dispatch"),
        ("sava-broker", "storage.upload"),
        ("consumer", "client.receive"),
        ("consumer", "client.process"),
        ("consumer", "client.settle"),
    ];
    let found = wait_for(&receiver, &wanted).await;
    let [
        send,
        publish,
        commit,
        dispatch,
        upload,
        receive,
        process,
        settle,
    ] = &found[..]
    else {
        unreachable!("one span per name")
    };

    // One trace: the broker and the consumer continue the producer's send;
    // the wait for the fsync is part of the publish.
    for span in [publish, dispatch, upload, receive, process, settle] {
        assert_eq!(span.trace_id, send.trace_id, "{}", span.name);
        assert_eq!(span.parent_span_id, send.span_id, "{}", span.name);
    }
    assert_eq!(commit.trace_id, send.trace_id);
    assert_eq!(commit.parent_span_id, publish.span_id);

    assert_eq!(send.kind, SpanKind::Producer as i32);
    assert_eq!(publish.kind, SpanKind::Server as i32);
    assert_eq!(dispatch.kind, SpanKind::Producer as i32);
    for span in [receive, process, settle] {
        assert_eq!(span.kind, SpanKind::Consumer as i32, "{}", span.name);
    }
    let operations = [
        (send, "send"),
        (publish, "send"),
        (dispatch, "send"),
        (receive, "receive"),
        (process, "process"),
        (settle, "settle"),
    ];
    for (span, operation) in operations {
        let attribute = |key| text(&span.attributes, key);
        assert_eq!(attribute("messaging.system").as_deref(), Some("sava"));
        let kind = attribute("messaging.operation.type");
        assert_eq!(kind.as_deref(), Some(operation), "{}", span.name);
        let destination = attribute("messaging.destination.name").unwrap();
        assert!(destination.starts_with(topic), "{destination}");
    }
    let attribute = |span: &Span, key| text(&span.attributes, key);
    assert_eq!(
        attribute(publish, "messaging.batch.message_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        attribute(publish, "messaging.message.id").as_deref(),
        Some("0")
    );
    let group = attribute(dispatch, "messaging.consumer.group.name");
    assert_eq!(group.as_deref(), Some("audit"));
    assert_eq!(
        attribute(settle, "messaging.operation.name").as_deref(),
        Some("ack")
    );
    server.abort();
}

/// A Danube client sets `traceparent` itself; the broker continues that
/// trace in its publish and dispatch, and hands the attribute on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_continues_the_trace_a_danube_client_puts_in_attributes() {
    let (receiver, endpoint, server) = start_receiver();
    let env = [
        ("SAVA_TELEMETRY__OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ];
    let broker = Broker::start_with_env(Vec::<String>::new(), &env)
        .await
        .unwrap();
    let client = danube_client::DanubeClient::builder()
        .service_url(broker.service_url())
        .build()
        .await
        .unwrap();
    let topic = "/default/danube-traced";
    let mut producer = client
        .new_producer()
        .with_topic(topic)
        .with_name("traced")
        .build()
        .unwrap();
    producer.create().await.unwrap();
    let mut consumer = client
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("c")
        .with_subscription("audit")
        .with_subscription_type(danube_client::SubType::Exclusive)
        .build()
        .unwrap();
    consumer.subscribe().await.unwrap();
    let mut stream = consumer.receive().await.unwrap();
    sleep(Duration::from_millis(300)).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{parent}-01");
    let attributes = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
    producer
        .send(b"hi".to_vec(), Some(attributes))
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.attributes.get("traceparent"), Some(&traceparent));

    let wanted = [
        ("sava-broker", "broker.publish"),
        ("sava-broker", "broker.dispatch"),
    ];
    for span in wait_for(&receiver, &wanted).await {
        assert_eq!(hex(&span.trace_id), trace, "{}", span.name);
        assert_eq!(hex(&span.parent_span_id), parent, "{}", span.name);
    }
    server.abort();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A benchmark, ignored by default: `sava bench` throughput against a
/// broker and a CLI that export spans with 1% sampling, as a ratio of the
/// same runs with export off, for a non-reliable end-to-end run and a
/// reliable produce run, alternating on and off over several rounds.
///
/// `cargo test --release -p sava-tests --test tracing -- --ignored
/// --nocapture` with release binaries (`SAVA_BENCH_ROUNDS`, default 3;
/// `SAVA_BENCH_SECS`, default 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
async fn throughput_with_export_at_one_percent_against_export_off() {
    let setting = |name, default| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (rounds, secs) = (
        setting("SAVA_BENCH_ROUNDS", 3),
        setting("SAVA_BENCH_SECS", 5),
    );
    let (receiver, endpoint, server) = start_receiver();
    let off = Broker::start().await.unwrap();
    let on_env = [
        ("SAVA_TELEMETRY__OTLP_ENDPOINT", endpoint.clone()),
        ("SAVA_TELEMETRY__SAMPLING_RATIO", "0.01".to_owned()),
    ];
    let on = Broker::start_with_env(Vec::<String>::new(), &on_env)
        .await
        .unwrap();

    let runs = [("e2e", false), ("produce", true)];
    for (mode, reliable) in runs {
        let mut rates = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Alternate which goes first, so drift hits both alike.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let (broker, exporting) = [(&off, false), (&on, true)][which];
                let topic = format!("/default/bench-{mode}-{round}-{which}");
                let mut command = broker.sava_command().unwrap();
                command.args(["bench", mode, "--topic", &topic, "--size", "256"]);
                command.args(["--duration", &secs.to_string(), "--output", "json"]);
                if reliable {
                    command.arg("--reliable");
                }
                if exporting {
                    command.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
                    command.env("OTEL_TRACES_SAMPLER_ARG", "0.01");
                }
                let output = command.output().unwrap();
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(output.status.success(), "{stderr}");
                let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                rates[which].push(report["msgs_per_sec"].as_f64().unwrap());
            }
        }
        let median = |rates: &mut Vec<f64>| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        };
        let (off_rate, on_rate) = (median(&mut rates[0]), median(&mut rates[1]));
        println!(
            "{mode:<8} reliable={reliable:<5} off {off_rate:>10.0} msg/s  on (1%) {on_rate:>10.0} msg/s  ratio {:.3}",
            on_rate / off_rate
        );
    }
    let spans = receiver.spans.lock().unwrap().clone();
    let mut by_name = std::collections::BTreeMap::<String, usize>::new();
    for (service, span) in &spans {
        *by_name
            .entry(format!("{service}/{}", span.name))
            .or_default() += 1;
    }
    let exported = spans.len();
    println!("spans received: {exported} {by_name:?}");
    assert!(exported > 0, "the exporting runs sent spans");
    server.abort();
}
