//! `sava-admin`: administer a Sava cluster over the admin API of one of its
//! brokers: brokers, namespaces, topics, subscriptions and schemas.
//!
//! Results go to stdout as tables (fitted to 80 columns) or as JSON with
//! `--output json`. Errors go to stderr as one line `sava-admin: <message>`;
//! the exit status is 0 on success, 1 when a call fails, 2 for usage errors.

mod api;
mod cli;
mod commands;
mod output;
mod time;
mod views;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();

    // One call at a time: a single-threaded runtime is plenty.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sava-admin: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let line = format!("{error:#}").replace('\n', " ");
            eprintln!("sava-admin: {line}");
            ExitCode::FAILURE
        }
    }
}
