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

    /// Threads that run the client (0: one per two producers or consumers
    /// the command drives, at most one per core). One thread keeps a
    /// producer and a consumer at full speed; more only add the cost of
    /// waking each other across cores, and on a machine shared with a
    /// broker they take its room.
    #[arg(long, global = true, env = "SAVA_THREADS", default_value_t = 0)]
    threads: usize,

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

impl Cli {
    /// The runtime's worker threads, from `--threads` or the command.
    pub(crate) fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let tasks = match &self.command {
            Command::Bench(args) => args.tasks(),
            Command::Produce(_) | Command::Consume(_) => 1,
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        tasks.div_ceil(2).clamp(1, cores)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(args: &str) -> usize {
        let args = std::iter::once("sava").chain(args.split_whitespace());
        Cli::parse_from(args).worker_threads()
    }

    #[test]
    fn the_runtime_gets_a_thread_per_two_producers_or_consumers_up_to_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);

        assert_eq!(threads("produce --topic /a/b"), 1);
        assert_eq!(threads("bench e2e --topic /a/b"), 1);
        assert_eq!(
            threads("bench produce --topic /a/b --producers 3"),
            2.min(cores)
        );
        let many = "bench e2e --topic /a/b --producers 8 --consumers 8";
        assert_eq!(threads(many), 8.min(cores));
    }

    #[test]
    fn threads_asked_for_are_taken_as_they_are() {
        assert_eq!(threads("--threads 3 bench e2e --topic /a/b"), 3);
    }
}
