//! The `sava` command line: arguments and dispatch to the subcommands.
//!
//! Each subcommand lives in its own module and returns an `anyhow` error
//! that names the problem; `main` prints it on one line and exits non-zero.

mod bench;
mod consume;
mod parse;
mod produce;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use sava_client::{Client, SubscriptionType};

/// Produce, consume and benchmark Sava topics.
#[derive(Debug, Parser)]
#[command(name = "sava", version, about)]
pub(crate) struct Cli {
    /// The broker (or cluster) to talk to.
    #[arg(
        long,
        global = true,
        env = "SAVA_SERVICE_URL",
        default_value = "http://127.0.0.1:6650"
    )]
    service_url: String,

    /// Threads that run the client (0: one per core). On a machine shared
    /// with a broker, fewer threads than cores leave the broker room and
    /// spare the cost of waking threads across cores.
    #[arg(long, global = true, env = "SAVA_THREADS", default_value_t = 0)]
    pub(crate) threads: usize,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish messages: from --message, --file, generated with --size, or
    /// one per line of stdin.
    Produce(produce::ProduceArgs),
    /// Print the messages of a subscription, one per line, and ack them.
    Consume(consume::ConsumeArgs),
    /// Measure throughput and latency.
    Bench(bench::BenchArgs),
}

/// The subscription types as spelled on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TypeArg {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

impl From<TypeArg> for SubscriptionType {
    fn from(value: TypeArg) -> SubscriptionType {
        match value {
            TypeArg::Exclusive => SubscriptionType::Exclusive,
            TypeArg::Shared => SubscriptionType::Shared,
            TypeArg::Failover => SubscriptionType::Failover,
            TypeArg::KeyShared => SubscriptionType::KeyShared,
        }
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputArg {
    Text,
    Json,
}

/// Runs the command `cli` describes.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    // The error names the URL already.
    let client = Client::builder(&cli.service_url).build().await?;

    match cli.command {
        Command::Produce(args) => produce::run(&client, args).await,
        Command::Consume(args) => consume::run(&client, args).await,
        Command::Bench(args) => bench::run(&client, args).await,
    }
}
