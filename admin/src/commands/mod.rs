//! One module per command group; each command makes its calls and prints
//! the result as a table or as JSON.

mod brokers;
mod namespaces;
mod schemas;
mod storage;
mod subscriptions;
mod topics;

use std::path::Path;

use anyhow::{Context, Result};
use sava_proto::sava::v1 as pb;
use serde::Serialize;

use crate::api::Api;
use crate::cli::{Cli, Command, OutputFormat, Position};
use crate::output::print_json;
use crate::views::DeletedView;

/// Runs the command `cli` names.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    let api = Api::connect(&cli.global.admin_url).await?;
    let output = cli.global.output;
    match cli.command {
        Command::Brokers { command } => brokers::run(&api, output, command).await,
        Command::Namespaces { command } => namespaces::run(&api, output, command).await,
        Command::Topics { command } => topics::run(&api, output, command).await,
        Command::Subscriptions { command } => subscriptions::run(&api, output, command).await,
        Command::Schemas { command } => schemas::run(&api, output, command).await,
        Command::Storage { command } => storage::run(&api, output, command).await,
    }
}

/// Prints `value` as JSON, or as a table with `table`.
fn show<T: Serialize + ?Sized>(
    output: OutputFormat,
    value: &T,
    table: impl FnOnce(&T),
) -> Result<()> {
    match output {
        OutputFormat::Json => print_json(value),
        OutputFormat::Table => {
            table(value);
            Ok(())
        }
    }
}

/// Prints what a delete call removed, for every command that deletes.
fn print_deleted(deleted: &DeletedView) {
    println!("deleted {}", deleted.deleted);
    if let Some(note) = &deleted.note {
        println!("{note}");
    }
}

/// The contents of a definition file.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read schema file {}", path.display()))
}

/// The wire form of a position.
fn start_position(position: Position) -> pb::StartPosition {
    use pb::start_position::Position as Wire;
    let position = match position {
        Position::Earliest => Wire::Earliest(true),
        Position::Latest => Wire::Latest(true),
        Position::Offset(offset) => Wire::Offset(offset),
        Position::Time(ms) => Wire::TimeMs(ms),
    };
    pb::StartPosition {
        position: Some(position),
    }
}
