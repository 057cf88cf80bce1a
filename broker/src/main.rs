//! `sava-broker`: runs one Sava broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use sava_broker::config::Config;
use sava_proto::telemetry::ExportConfig;

/// Runs a Sava broker. With no configuration it runs a single node with its
/// data in ./sava-data.
#[derive(Debug, Parser)]
#[command(name = "sava-broker", version)]
struct Args {
    /// A TOML config file (see deploy/config/sava.toml).
    #[arg(long, env = "SAVA_CONFIG")]
    config: Option<PathBuf>,
    /// Where the broker keeps its data [broker.data_dir].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address of the client API [broker.client_addr].
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// Listen address of the admin API [broker.admin_addr].
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// Listen address of /metrics, /healthz and /readyz [broker.http_addr].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// The URL clients reach this broker at [broker.advertised_url].
    #[arg(long)]
    advertised_url: Option<String>,
    /// Metadata store URL, e.g. embedded:///var/lib/sava/metadata.redb [metadata.url].
    #[arg(long)]
    metadata: Option<String>,
    /// Object store URL, e.g. s3://bucket/prefix [storage.object_store].
    #[arg(long)]
    object_store: Option<String>,
}

fn main() {
    let args = Args::parse();
    let config = match load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sava-broker: {error}");
            std::process::exit(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.broker.worker_threads > 0 {
        runtime.worker_threads(config.broker.worker_threads);
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(error) => {
            eprintln!("sava-broker: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    }
}

async fn serve(config: Config) {
    let telemetry = &config.telemetry;
    let export = ExportConfig {
        endpoint: telemetry.otlp_endpoint.clone(),
        service_name: telemetry.service_name.clone(),
        sampling_ratio: telemetry.sampling_ratio,
        default_log_filter: "info,h2=warn,tower=warn,hyper=warn".into(),
        logs_on_stderr: false,
        caller_samples: false,
    };
    let telemetry = match sava_proto::telemetry::init(&export) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("sava-broker: {error}");
            std::process::exit(2);
        }
    };
    let outcome = sava_broker::server::run(config, shutdown_signal()).await;
    // Flushes the spans still queued before the process ends, off the
    // runtime's workers, which carry the export.
    let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
    if let Err(error) = outcome {
        eprintln!("sava-broker: {error}");
        std::process::exit(1);
    }
}

fn load(args: &Args) -> Result<Config, sava_broker::config::ConfigError> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(dir) = &args.data_dir {
        config.broker.data_dir = dir.clone();
    }
    if let Some(addr) = args.client_addr {
        config.broker.client_addr = addr;
    }
    if let Some(addr) = args.admin_addr {
        config.broker.admin_addr = addr;
    }
    if let Some(addr) = args.http_addr {
        config.broker.http_addr = addr;
    }
    if let Some(url) = &args.advertised_url {
        config.broker.advertised_url = url.clone();
    }
    if let Some(url) = &args.metadata {
        config.metadata.url = url.clone();
    }
    if let Some(url) = &args.object_store {
        config.storage.object_store = url.clone();
    }
    Ok(config)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
