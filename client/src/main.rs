//! `sava`: produce, consume and benchmark Sava topics from the command line.
//!
//! Errors go to stderr on one line that names the problem; the exit status
//! is 0 only on success. Logs go to stderr too, at the level `RUST_LOG`
//! sets (warnings by default). With `OTEL_EXPORTER_OTLP_ENDPOINT` set, its
//! spans (sends, receives, processing) go there over OTLP/gRPC, named by
//! `OTEL_SERVICE_NAME` (default `sava`), in the traces the brokers and
//! other clients share; every trace it starts is recorded unless
//! `OTEL_TRACES_SAMPLER_ARG` gives a ratio.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use sava_proto::telemetry::ExportConfig;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.worker_threads(cli.worker_threads());
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let export = ExportConfig {
        endpoint: String::new(),
        service_name: "sava".into(),
        sampling_ratio: 1.0,
        default_log_filter: "warn".into(),
        logs_on_stderr: true,
        caller_samples: true,
    };
    // The exporter's channel lives on the runtime.
    let telemetry = match runtime.block_on(async { sava_proto::telemetry::init(&export) }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };

    let outcome = runtime.block_on(cli::run(cli));
    // Flushes the spans still queued, through the runtime's gRPC channel.
    runtime.block_on(async move {
        let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Transport errors often repeat
/// their cause in their own text; a cause already said is left out.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string().replace('\n', " ");
        if parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}
