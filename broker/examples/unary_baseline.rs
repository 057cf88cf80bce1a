//! The baseline for the Danube-compatible API's speed: one-message-per-call
//! gRPC with no broker behind it.
//!
//! ```text
//! cargo run --release -p sava-broker --example unary_baseline -- \
//!     [--seconds 4] [--in-flight 64] [--size 1024]
//! ```
//!
//! It starts a copy of itself as a separate server process that answers
//! Danube's `SendMessage` at once, served through the broker's own client
//! port setup (`server::client_port_server`, no Nagle), and calls it the
//! way `sava bench produce --api danube` calls a broker: through a
//! `sava_client` channel, `--in-flight` unary calls outstanding, each
//! carrying one `--size` byte payload. The rate it prints is the ceiling
//! for the Danube API on this machine; divide the bench's rate by it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sava_broker::server::{client_port_server, no_delay};
use sava_proto::danube::producer_service_client::ProducerServiceClient;
use sava_proto::danube::producer_service_server::{ProducerService, ProducerServiceServer};
use sava_proto::danube::{
    MessageResponse, MsgId, ProducerRequest, ProducerResponse, StreamMessage,
};
use tonic::{Request, Response, Status};

struct Options {
    seconds: f64,
    in_flight: usize,
    size: usize,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Options {
    let mut options = Options {
        seconds: 4.0,
        in_flight: 64,
        size: 1024,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        let invalid = || -> ! { panic!("invalid {flag} {value}: expected a positive number") };
        let count = || value.parse::<usize>().ok().filter(|n| *n > 0);
        match flag.as_str() {
            "--seconds" => {
                let seconds = value.parse::<f64>().ok().filter(|s| *s > 0.0);
                options.seconds = seconds.unwrap_or_else(|| invalid());
            }
            "--in-flight" => options.in_flight = count().unwrap_or_else(|| invalid()),
            "--size" => options.size = count().unwrap_or_else(|| invalid()),
            _ => panic!("unknown flag {flag}"),
        }
    }
    options
}

/// Answers every message at once; creates no producers.
struct Echo;

#[tonic::async_trait]
impl ProducerService for Echo {
    async fn create_producer(
        &self,
        _request: Request<ProducerRequest>,
    ) -> Result<Response<ProducerResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline only answers SendMessage",
        ))
    }

    async fn send_message(
        &self,
        request: Request<StreamMessage>,
    ) -> Result<Response<MessageResponse>, Status> {
        let request_id = request.into_inner().request_id;
        Ok(Response::new(MessageResponse { request_id }))
    }
}

/// The server process: prints its address, then serves until killed.
async fn serve() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    println!("{addr}");
    client_port_server()
        .add_service(ProducerServiceServer::new(Echo))
        .serve_with_incoming(no_delay(listener))
        .await
        .expect("serve");
}

/// The server process, killed when this is dropped, even by a panic.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server process and reads the address it listens on.
fn spawn_server() -> (Server, String) {
    let exe = std::env::current_exe().expect("the path of this example");
    let mut child = Command::new(exe)
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's address");
    (server, format!("http://{}", line.trim()))
}

/// Keeps `in_flight` calls outstanding for `seconds`; returns the answered
/// calls and their latencies in microseconds.
async fn call(url: &str, options: &Options) -> (u64, Vec<u32>, Duration) {
    let client = sava_client::Client::builder(url)
        .build()
        .await
        .expect("connect to the baseline server");
    let stub = ProducerServiceClient::new(client.channel());
    let payload = Bytes::from(vec![b'x'; options.size]);
    let mut pending = FuturesUnordered::new();
    let mut latencies = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.seconds);
    let mut sent = 0u64;

    loop {
        while pending.len() < options.in_flight && Instant::now() < deadline {
            let message = StreamMessage {
                request_id: sent,
                msg_id: Some(MsgId {
                    producer_id: 1,
                    topic_name: "/default/baseline".to_owned(),
                    ..MsgId::default()
                }),
                payload: payload.clone(),
                producer_name: "baseline".to_owned(),
                ..StreamMessage::default()
            };
            let mut stub = stub.clone();
            let sent_at = Instant::now();
            pending.push(async move { (sent_at, stub.send_message(message).await) });
            sent += 1;
        }
        let Some((sent_at, answer)) = pending.next().await else {
            break;
        };
        answer.expect("the baseline server answers every call");
        latencies.push(sent_at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    (sent, latencies, started.elapsed())
}

/// The value at `fraction` of `sorted`; 0 when nothing was measured.
fn percentile(sorted: &[u32], fraction: f64) -> u32 {
    let index = (sorted.len() as f64 * fraction) as usize;
    let index = index.min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if args.peek().is_some_and(|arg| arg == "serve") {
        runtime.block_on(serve());
        return;
    }

    let options = parse_options(args);
    let (server, url) = spawn_server();
    let (calls, mut latencies, elapsed) = runtime.block_on(call(&url, &options));
    drop(server);

    latencies.sort_unstable();
    let rate = calls as f64 / elapsed.as_secs_f64();
    println!(
        "unary baseline: {calls} calls of {} bytes, {} in flight, in {:.2} s",
        options.size,
        options.in_flight,
        elapsed.as_secs_f64()
    );
    println!(
        "{rate:.0} calls/s, {:.1} MB/s; latency p50 {} us, p99 {} us, max {} us",
        rate * options.size as f64 / 1e6,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
}
