//! `sava produce`: publish messages and report how many were acknowledged.
//!
//! Sends are pipelined: a collector task awaits the acks while the main loop
//! keeps queueing, so a slow ack never holds up the messages behind it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use sava_client::{Client, Error, Message, Producer, Schema, SendFuture};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::parse::parse_attribute;

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// The topic, as /namespace/topic. Created when missing.
    #[arg(long)]
    topic: String,

    /// The payload, as text.
    #[arg(long, conflicts_with_all = ["file", "size"])]
    message: Option<String>,

    /// A file whose whole content is the payload.
    #[arg(long, conflicts_with = "size")]
    file: Option<PathBuf>,

    /// How many times to send the message (each stdin line, when reading
    /// stdin).
    #[arg(long, default_value_t = 1)]
    count: u64,

    /// At most this many messages per second.
    #[arg(long)]
    rate: Option<f64>,

    /// Send generated payloads of this many bytes.
    #[arg(long)]
    size: Option<usize>,

    /// The routing key of every message.
    #[arg(long)]
    key: Option<String>,

    /// An attribute NAME=VALUE of every message; may be repeated.
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,

    /// Create the topic with this many partitions when it is missing.
    #[arg(long)]
    partitions: Option<u32>,

    /// Publish to a reliable topic (acks after the message is on disk).
    #[arg(long)]
    reliable: bool,

    /// The schema of the topic's payloads.
    #[arg(long, value_enum)]
    schema: Option<SchemaArg>,

    /// A JSON Schema document for --schema json (implies it).
    #[arg(long)]
    schema_file: Option<PathBuf>,

    /// The producer's name.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchemaArg {
    Bytes,
    String,
    Int64,
    Json,
}

/// Where payloads come from.
enum Source {
    /// One payload, sent `count` times.
    Repeat(Bytes),
    /// Each line of stdin, sent `count` times.
    Stdin,
}

pub(crate) async fn run(client: &Client, args: ProduceArgs) -> Result<()> {
    let source = source(&args).await?;
    let schema = schema(&args).await?;
    let pacer = Pacer::new(args.rate, Instant::now())?;

    let mut builder = client.producer(&args.topic).reliable(args.reliable);
    if let Some(partitions) = args.partitions {
        builder = builder.partitions(partitions);
    }
    if let Some(schema) = schema {
        builder = builder.schema(schema);
    }
    if let Some(name) = &args.name {
        builder = builder.name(name);
    }
    let producer = builder
        .create()
        .await
        .with_context(|| format!("cannot create a producer on {}", args.topic))?;

    // Paced from the moment the producer exists.
    let pacer = pacer.map(|pacer| pacer.starting_at(Instant::now()));
    let (acks, outcomes) = mpsc::channel(4096);
    let collector = tokio::spawn(collect(outcomes));
    let mut sender = Sender {
        producer: &producer,
        args: &args,
        acks,
        pacer,
        sent: 0,
    };

    let sent = match source {
        Source::Repeat(payload) => sender.repeat(&payload).await,
        Source::Stdin => sender.stdin_lines().await,
    };
    let sent_count = sender.sent;
    drop(sender);

    let closed = producer.close().await;
    let (acknowledged, first_refusal) = collector.await.context("the ack collector failed")?;
    println!("sent {sent_count} messages, {acknowledged} acknowledged");

    sent?;
    if let Some((index, error)) = first_refusal {
        bail!(
            "message {index} to {} was not acknowledged: {error}",
            args.topic
        );
    }
    closed.with_context(|| format!("cannot close the producer on {}", args.topic))
}

/// Queues messages, paced, and hands their futures to the collector.
struct Sender<'a> {
    producer: &'a Producer,
    args: &'a ProduceArgs,
    acks: mpsc::Sender<SendFuture>,
    pacer: Option<Pacer>,
    sent: u64,
}

impl Sender<'_> {
    async fn repeat(&mut self, payload: &Bytes) -> Result<()> {
        for _ in 0..self.args.count {
            self.send(payload.clone()).await?;
        }
        Ok(())
    }

    async fn stdin_lines(&mut self) -> Result<()> {
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = stdin.read_until(b'\n', &mut line).await;
            if read.context("cannot read stdin")? == 0 {
                return Ok(());
            }
            let payload = Bytes::copy_from_slice(trim_line_end(&line));
            for _ in 0..self.args.count {
                self.send(payload.clone()).await?;
            }
        }
    }

    async fn send(&mut self, payload: Bytes) -> Result<()> {
        if let Some(pacer) = &self.pacer {
            tokio::time::sleep_until(pacer.due(self.sent)).await;
        }

        let mut message = Message::new(payload);
        if let Some(key) = &self.args.key {
            message = message.with_key(key);
        }
        for (name, value) in &self.args.attributes {
            message = message.with_attribute(name, value);
        }

        let topic = &self.args.topic;
        let pending = (self.producer.send(message).await)
            .with_context(|| format!("cannot send to {topic}"))?;
        self.sent += 1;
        // The collector only stops once this sender is dropped.
        let _ = self.acks.send(pending).await;
        Ok(())
    }
}

/// Awaits every ack in order; returns how many succeeded and the first
/// failure with the index of its message.
async fn collect(mut outcomes: mpsc::Receiver<SendFuture>) -> (u64, Option<(u64, Error)>) {
    let mut acknowledged = 0;
    let mut first_refusal = None;
    let mut index = 0;
    while let Some(pending) = outcomes.recv().await {
        match pending.await {
            Ok(_) => acknowledged += 1,
            Err(error) => {
                first_refusal.get_or_insert((index, error));
            }
        }
        index += 1;
    }
    (acknowledged, first_refusal)
}

async fn source(args: &ProduceArgs) -> Result<Source> {
    if let Some(message) = &args.message {
        return Ok(Source::Repeat(Bytes::from(message.clone())));
    }
    if let Some(path) = &args.file {
        let content = tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read message file {}", path.display()))?;
        return Ok(Source::Repeat(Bytes::from(content)));
    }
    if let Some(size) = args.size {
        return Ok(Source::Repeat(generated_payload(size)));
    }
    Ok(Source::Stdin)
}

async fn schema(args: &ProduceArgs) -> Result<Option<Schema>> {
    let definition = match &args.schema_file {
        Some(path) => {
            let content = tokio::fs::read(path)
                .await
                .with_context(|| format!("cannot read schema file {}", path.display()))?;
            Some(Bytes::from(content))
        }
        None => None,
    };

    let schema = match (args.schema, definition) {
        (None, None) => return Ok(None),
        (Some(SchemaArg::Json) | None, Some(definition)) => Schema::json(definition),
        (Some(_), Some(_)) => bail!("--schema-file only applies to --schema json"),
        (Some(SchemaArg::Json), None) => Schema::json(Bytes::new()),
        (Some(SchemaArg::Bytes), None) => Schema::bytes(),
        (Some(SchemaArg::String), None) => Schema::string(),
        (Some(SchemaArg::Int64), None) => Schema::int64(),
    };
    Ok(Some(schema))
}

/// A fixed send rate: message `n` (from 0) is due `n / rate` seconds after
/// the start, so a sender that fell behind catches up at once instead of
/// drifting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    started: Instant,
    interval: Duration,
}

impl Pacer {
    /// A pacer for `rate` messages per second from `started`; none without
    /// a rate.
    pub(crate) fn new(rate: Option<f64>, started: Instant) -> Result<Option<Pacer>> {
        match rate {
            None => Ok(None),
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                match Duration::try_from_secs_f64(1.0 / rate) {
                    Ok(interval) => Ok(Some(Pacer { started, interval })),
                    Err(_) => bail!("invalid --rate {rate}: too slow to pace"),
                }
            }
            Some(rate) => {
                bail!("invalid --rate {rate}: expected a positive number of messages per second")
            }
        }
    }

    /// The same rate, counted from `started`.
    pub(crate) fn starting_at(self, started: Instant) -> Pacer {
        Pacer { started, ..self }
    }

    /// When message `sent` (counted from 0) is due.
    pub(crate) fn due(&self, sent: u64) -> Instant {
        self.started + self.interval.mul_f64(sent as f64)
    }
}

/// A printable payload of `size` bytes: the alphabet, over and over.
pub(crate) fn generated_payload(size: usize) -> Bytes {
    (b'a'..=b'z').cycle().take(size).collect::<Vec<u8>>().into()
}

/// A line without its `\n` or `\r\n`.
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_loses_its_line_ending_and_nothing_else() {
        assert_eq!(trim_line_end(b"hello\n"), b"hello");
        assert_eq!(trim_line_end(b"hello\r\n"), b"hello");
        assert_eq!(trim_line_end(b"last line"), b"last line");
        assert_eq!(trim_line_end(b" spaced \n"), b" spaced ");
    }

    #[test]
    fn a_generated_payload_has_the_requested_size_and_is_text() {
        let payload = generated_payload(30);
        assert_eq!(payload.len(), 30);
        assert!(payload.starts_with(b"abcdefghijklmnopqrstuvwxyzabcd"));
    }

    #[test]
    fn a_rate_must_be_positive() {
        let started = Instant::now();
        let pacer = Pacer::new(Some(4.0), started).unwrap().unwrap();
        assert_eq!(pacer.due(0), started);
        assert_eq!(pacer.due(3), started + Duration::from_millis(750));
        assert!(Pacer::new(Some(0.0), started).is_err());
        assert!(Pacer::new(Some(f64::NAN), started).is_err());
        assert!(Pacer::new(Some(1e-300), started).is_err());
        assert!(Pacer::new(None, started).unwrap().is_none());
    }
}
