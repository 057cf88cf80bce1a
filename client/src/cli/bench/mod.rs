//! `sava bench produce|consume|e2e`: throughput and latency, over the
//! native API or the Danube-compatible one.
//!
//! - `produce` measures publish-to-ack latency of every message.
//! - `e2e` subscribes first, then publishes payloads whose first 8 bytes
//!   are the send time (microseconds since the Unix epoch, little endian),
//!   and measures publish-to-receive latency.
//! - `consume` reads a topic that has a backlog or that another process
//!   feeds, and measures the receive rate; its latency is from the broker's
//!   publish time (millisecond precision) to receipt.
//!
//! Megabytes are 10^6 bytes of payload. The hot loops reuse one payload
//! (`produce`) or carve stamped payloads out of large shared buffers
//! (`e2e`), so they allocate little per message.

mod danube;
mod native;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use sava_client::{Client, SubscriptionType};
use tokio::time::Instant;

use self::stats::{Meter, Progress, Report, Tally, unix_micros};
use super::produce::{Pacer, generated_payload};
use super::{OutputArg, TypeArg};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,

    /// The topic, as /namespace/topic. Created when missing (produce, e2e).
    #[arg(long)]
    topic: String,

    /// Payload size in bytes (at least 8 for e2e).
    #[arg(long, default_value_t = 1024)]
    size: usize,

    /// Stop after this many messages in all.
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,

    /// Stop after this many seconds (default 10 when --count is absent).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// Producer tasks, each with its own producer.
    #[arg(long, default_value_t = 1)]
    producers: usize,

    /// Consumer tasks, each with its own consumer in the subscription.
    #[arg(long, default_value_t = 1)]
    consumers: usize,

    /// Create the topic with this many partitions when it is missing.
    #[arg(long)]
    partitions: Option<u32>,

    /// Use a reliable topic.
    #[arg(long)]
    reliable: bool,

    /// Native API: close batches at this many bytes.
    #[arg(long)]
    batch_bytes: Option<usize>,

    /// Native API: how long a batch waits for more messages.
    #[arg(long)]
    linger_ms: Option<u64>,

    /// The API to measure.
    #[arg(long, value_enum, default_value = "native")]
    api: Api,

    /// Native: batches in flight per partition (default: the client's, 16
    /// non-reliable, 64 reliable); danube: concurrent unary calls per
    /// producer (default 64).
    #[arg(long)]
    in_flight: Option<usize>,

    /// Send at this many messages per second in all, split evenly between
    /// the producers, to measure latency below the peak (default: as fast
    /// as the in-flight window allows).
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,

    /// Native: each consumer's credit window per partition, the messages
    /// the broker may send ahead of the application. Larger than the
    /// client's default (1000), so that the bench measures the broker
    /// rather than the wait for credits.
    #[arg(long, default_value_t = 10_000)]
    credits: u32,

    /// The subscription type (default: exclusive with one consumer, shared
    /// with more).
    #[arg(long, value_enum)]
    subscription_type: Option<TypeArg>,

    /// The subscription consumers read.
    #[arg(long, default_value = "bench")]
    subscription: String,

    /// text: a short summary; json: one object.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputArg,
}

impl BenchArgs {
    /// The producers and consumers the run drives.
    pub(crate) fn tasks(&self) -> usize {
        match self.mode {
            Mode::Produce => self.producers,
            Mode::Consume => self.consumers,
            Mode::E2e => self.producers + self.consumers,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    Produce,
    Consume,
    E2e,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Api {
    Native,
    Danube,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Native => "native",
            Api::Danube => "danube",
        }
    }
}

/// The validated settings of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    mode: Mode,
    api: Api,
    topic: String,
    size: usize,
    count: Option<u64>,
    /// How long to produce (or consume); unused when `count` is set.
    duration: Duration,
    producers: usize,
    consumers: usize,
    partitions: Option<u32>,
    reliable: bool,
    batch_bytes: Option<usize>,
    linger: Option<Duration>,
    in_flight: Option<usize>,
    /// Each producer's pace, when paced; started anew by [`Plan::pace`].
    pacer: Option<Pacer>,
    credits: u32,
    subscription_type: SubscriptionType,
    subscription: String,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Plan> {
        if args.producers == 0
            || args.consumers == 0
            || args.in_flight == Some(0)
            || args.credits == 0
        {
            bail!("--producers, --consumers, --in-flight and --credits must be at least 1");
        }
        if args.mode == Mode::E2e && args.size < 8 {
            bail!(
                "invalid --size {}: e2e payloads carry an 8-byte timestamp",
                args.size
            );
        }
        if args.count == Some(0) {
            bail!("invalid --count 0: expected at least one message");
        }
        let duration = match args.duration {
            None => Duration::from_secs(10),
            Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
                Duration::from_secs_f64(seconds)
            }
            Some(seconds) => bail!("invalid --duration {seconds}: expected a positive number"),
        };
        if args.rate.is_some() && args.mode == Mode::Consume {
            bail!("--rate paces producers; bench consume has none");
        }
        // Each producer is paced at its share, which must be valid too.
        Pacer::new(args.rate, Instant::now())?;
        let share = args.rate.map(|rate| rate / args.producers as f64);
        let pacer = Pacer::new(share, Instant::now())?;
        let subscription_type = match args.subscription_type {
            Some(subscription_type) => subscription_type.into(),
            None if args.consumers > 1 => SubscriptionType::Shared,
            None => SubscriptionType::Exclusive,
        };

        Ok(Plan {
            mode: args.mode,
            api: args.api,
            topic: args.topic.clone(),
            size: args.size,
            count: args.count,
            duration,
            producers: args.producers,
            consumers: args.consumers,
            partitions: args.partitions,
            reliable: args.reliable,
            batch_bytes: args.batch_bytes,
            linger: args.linger_ms.map(Duration::from_millis),
            in_flight: args.in_flight,
            pacer,
            credits: args.credits,
            subscription_type,
            subscription: args.subscription.clone(),
        })
    }

    /// How many messages producer `index` sends, when counting.
    fn quota(&self, index: usize) -> Option<u64> {
        let count = self.count?;
        let producers = self.producers as u64;
        let extra = u64::from((index as u64) < count % producers);
        Some(count / producers + extra)
    }

    /// How much producer `index` of a run started at `started` sends, and
    /// how fast.
    fn pace(&self, index: usize, started: Instant) -> Pace {
        Pace {
            quota: self.quota(index),
            deadline: self.deadline(started),
            pacer: self.pacer.map(|pacer| pacer.starting_at(started)),
        }
    }

    /// When producing (or, in consume mode, consuming) stops, when timed.
    fn deadline(&self, started: Instant) -> Option<Instant> {
        match self.count {
            Some(_) => None,
            None => Some(started + self.duration),
        }
    }

    /// Whether payloads carry their send time.
    fn stamps_payloads(&self) -> bool {
        self.mode == Mode::E2e
    }
}

/// How much one producer sends, and how fast.
pub(crate) struct Pace {
    quota: Option<u64>,
    deadline: Option<Instant>,
    pacer: Option<Pacer>,
}

impl Pace {
    /// When message `sent` may go: at once unpaced, and never past the
    /// deadline.
    fn due(&self, sent: u64) -> Option<Instant> {
        let due = self.pacer?.due(sent);
        Some(self.deadline.map_or(due, |deadline| due.min(deadline)))
    }
}

/// What a run measured: the side that is reported (producers for produce,
/// consumers otherwise), the producers' acks, and every error.
pub(crate) struct Outcome {
    measured: Tally,
    acknowledged: Option<u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Outcome {
    /// Puts the producer and consumer tallies of a run together.
    fn new(plan: &Plan, producers: Tally, consumers: Tally, started: Instant) -> Outcome {
        let errors = producers.errors + consumers.errors;
        let first_error = producers
            .first_error
            .clone()
            .or(consumers.first_error.clone());
        let acknowledged = (plan.mode != Mode::Consume).then_some(producers.messages);
        let measured = match plan.mode {
            Mode::Produce => producers,
            Mode::Consume | Mode::E2e => consumers,
        };
        let finished = measured.last_at.unwrap_or_else(Instant::now);
        Outcome {
            elapsed: finished.duration_since(started),
            measured,
            acknowledged,
            errors,
            first_error,
        }
    }
}

pub(crate) async fn run(client: &Client, args: BenchArgs) -> Result<()> {
    let plan = Plan::new(&args)?;
    let target = match plan.mode {
        Mode::Produce => None,
        Mode::Consume | Mode::E2e => plan.count,
    };
    let meter = Meter::new(target);

    let progress = Progress::start(&plan, Arc::clone(&meter));
    let outcome = match plan.api {
        Api::Native => native::run(client, &plan, &meter).await,
        Api::Danube => danube::run(client, &plan, &meter).await,
    };
    progress.finish();
    let outcome = outcome?;

    let mut report = Report::new(&plan, &outcome.measured, outcome.elapsed);
    report.acknowledged = outcome.acknowledged;
    report.errors = outcome.errors;
    report.first_error = outcome.first_error.clone();
    report.print(args.output)?;

    if let Some(first) = outcome.first_error {
        bail!(
            "{} operations failed during the bench; the first: {first}",
            outcome.errors
        );
    }
    Ok(())
}

/// Payloads for the hot loop: one shared payload cloned, or, when stamping,
/// copies of it carved out of large buffers with the send time in front.
pub(crate) struct Payloads {
    template: Bytes,
    stamp: bool,
    buffer: BytesMut,
}

/// How many bytes of stamped payloads one allocation holds.
const STAMPED_CHUNK: usize = 4 * 1024 * 1024;

impl Payloads {
    pub(crate) fn new(size: usize, stamp: bool) -> Payloads {
        Payloads {
            template: generated_payload(size),
            stamp,
            buffer: BytesMut::new(),
        }
    }

    /// The next payload, stamped (when stamping) with `sent_at`.
    pub(crate) fn next(&mut self, sent_at: Instant) -> Bytes {
        if !self.stamp {
            return self.template.clone();
        }
        let size = self.template.len();
        if self.buffer.capacity() < size {
            self.buffer = BytesMut::with_capacity(STAMPED_CHUNK.max(size));
        }
        self.buffer.extend_from_slice(&self.template);
        self.buffer[..8].copy_from_slice(&unix_micros(sent_at).to_le_bytes());
        self.buffer.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(count: Option<u64>, producers: usize) -> Plan {
        paced_plan(count, producers, None)
    }

    fn paced_plan(count: Option<u64>, producers: usize, rate: Option<f64>) -> Plan {
        let args = BenchArgs {
            mode: Mode::E2e,
            topic: "/default/bench".into(),
            size: 64,
            count,
            duration: None,
            producers,
            consumers: 1,
            partitions: None,
            reliable: false,
            batch_bytes: None,
            linger_ms: None,
            api: Api::Native,
            in_flight: None,
            rate,
            credits: 1000,
            subscription_type: None,
            subscription: "bench".into(),
            output: OutputArg::Text,
        };
        Plan::new(&args).unwrap()
    }

    #[test]
    fn the_count_is_split_between_producers_without_losing_any() {
        let plan = plan(Some(10), 3);
        let quotas: Vec<u64> = (0..3).filter_map(|index| plan.quota(index)).collect();
        assert_eq!(quotas, [4, 3, 3]);
        assert!(plan.deadline(Instant::now()).is_none());
    }

    #[test]
    fn a_paced_run_splits_the_rate_between_producers() {
        let started = Instant::now();
        assert!(plan(None, 4).pace(0, started).pacer.is_none());

        let plan = paced_plan(None, 4, Some(1000.0));
        let pacer = plan.pace(0, started).pacer.unwrap();

        assert_eq!(pacer.due(250), started + Duration::from_secs(1));
    }

    #[test]
    fn without_a_count_the_run_is_timed() {
        let plan = plan(None, 1);
        assert_eq!(plan.quota(0), None);
        assert!(plan.deadline(Instant::now()).is_some());
        assert_eq!(plan.subscription_type, SubscriptionType::Exclusive);
    }

    #[test]
    fn stamped_payloads_keep_the_size_and_carry_the_send_time() {
        let mut payloads = Payloads::new(64, true);
        let first = payloads.next(Instant::now());
        let second = payloads.next(Instant::now());

        assert_eq!(first.len(), 64);
        assert_eq!(&first[8..], &generated_payload(64)[8..]);
        let stamp = u64::from_le_bytes(first[..8].try_into().unwrap());
        assert!(unix_micros(Instant::now()) - stamp < 5_000_000);
        assert_eq!(second.len(), 64);
        assert_ne!(first.as_ptr(), second.as_ptr());
    }

    #[test]
    fn unstamped_payloads_share_one_buffer() {
        let mut payloads = Payloads::new(64, false);
        assert_eq!(
            payloads.next(Instant::now()).as_ptr(),
            payloads.next(Instant::now()).as_ptr()
        );
    }
}
