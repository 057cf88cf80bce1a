//! Starts the broker's listeners and runs them until shutdown.

use std::sync::Arc;
use std::time::Duration;

use sava_metadata::Catalog;
use sava_proto::danube::{
    consumer_service_server::ConsumerServiceServer, discovery_server::DiscoveryServer,
    health_check_server::HealthCheckServer, producer_service_server::ProducerServiceServer,
};
use sava_proto::danube_admin::broker_admin_server::BrokerAdminServer;
use sava_proto::danube_admin::namespace_admin_server::NamespaceAdminServer;
use sava_proto::danube_admin::topic_admin_server::TopicAdminServer;
use sava_proto::danube_schema::schema_registry_server::SchemaRegistryServer;
use sava_proto::sava::v1::admin_server::AdminServer;
use sava_proto::sava::v1::sava_client_server::SavaClientServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::api::admin::AdminApi;
use crate::api::danube::DanubeApi;
use crate::api::danube_admin::DanubeAdminApi;
use crate::api::native::NativeApi;
use crate::api::schema::SchemaRegistryApi;
use crate::broker::Broker;
use crate::config::Config;

/// The largest HTTP/2 frame the client API accepts: large frames carry a
/// producer's batch in a few reads rather than one read per 16 KiB.
const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// The connections `listener` accepts, without Nagle's delay. (The
/// server's own `tcp_nodelay` covers only listeners it binds itself; with
/// Nagle on, small answers such as acks wait for the peer's delayed ACK,
/// up to 40 ms each.)
pub fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The gRPC server of the client port, as tuned for it: large flow-control
/// windows and frames, and keepalive pings. (The unary baseline example
/// serves through it too, so that it measures the same transport.)
pub fn client_port_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Errors that stop the broker from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("metadata store {url}: {source}")]
    Metadata {
        url: String,
        source: sava_metadata::MetadataError,
    },
    #[error(transparent)]
    Broker(#[from] crate::error::BrokerError),
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs a broker with `config` until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let data_dir = config.broker.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let metadata_url = config.metadata_url();
    let store =
        sava_metadata::open(&metadata_url)
            .await
            .map_err(|source| ServeError::Metadata {
                url: metadata_url.clone(),
                source,
            })?;
    let metrics = Arc::new(crate::metrics::BrokerMetrics::default());
    let store = crate::metrics::TimedStore::wrap(store, Arc::clone(&metrics));
    let catalog = Catalog::with_cluster(store, &config.broker.cluster);

    let client_listener = bind("client API", config.broker.client_addr).await?;
    let admin_listener = bind("admin API", config.broker.admin_addr).await?;
    let http_listener = bind("HTTP", config.broker.http_addr).await?;
    let broker = Broker::new(config.clone(), catalog, metrics).await?;
    info!(
        client = %client_listener.local_addr().map_or(config.broker.client_addr, |a| a),
        admin = %admin_listener.local_addr().map_or(config.broker.admin_addr, |a| a),
        http = %http_listener.local_addr().map_or(config.broker.http_addr, |a| a),
        advertised = %broker.advertised_url,
        data_dir = %data_dir.display(),
        metadata = %metadata_url,
        object_store = %config.object_store_url(),
        offload = config.offload.enabled,
        "sava broker listening"
    );

    // Register (and, alone, take the leadership) before serving lookups.
    broker.membership_round().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let membership = tokio::spawn(Arc::clone(&broker).keep_membership(stop_rx.clone()));
    let leader = tokio::spawn({
        let cluster = Arc::clone(&broker.cluster);
        let stop = stop_rx.clone();
        async move { cluster.lead(stop).await }
    });
    let janitor = tokio::spawn(janitor(Arc::clone(&broker), stop_rx.clone()));
    let flusher = tokio::spawn(cursor_flusher(Arc::clone(&broker), stop_rx.clone()));
    let offloader = tokio::spawn(offloader(Arc::clone(&broker), stop_rx.clone()));
    let http = tokio::spawn({
        let mut stop = stop_rx.clone();
        let app = crate::http::router(Arc::clone(&broker));
        async move {
            let _ = axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }
    });

    let admin = tokio::spawn({
        let mut stop = stop_rx.clone();
        let broker = Arc::clone(&broker);
        let danube_admin = DanubeAdminApi::new(Arc::clone(&broker));
        async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(AdminApi::new(Arc::clone(&broker))))
                .add_service(BrokerAdminServer::new(danube_admin.clone()))
                .add_service(NamespaceAdminServer::new(danube_admin.clone()))
                .add_service(TopicAdminServer::new(danube_admin))
                .add_service(SchemaRegistryServer::new(SchemaRegistryApi::new(broker)))
                .serve_with_incoming_shutdown(no_delay(admin_listener), stopped)
                .await
        }
    });

    let stopping = Arc::clone(&broker);
    let signal = async move {
        shutdown.await;
        info!("stopping broker; handing its topics over first");
        stopping.drain().await;
        stopping.stop();
        stopping.cluster.resign().await;
        stopping.cluster.deregister().await;
        let _ = stop_tx.send(true);
    };

    let danube = DanubeApi::new(Arc::clone(&broker));
    client_port_server()
        .add_service(ProducerServiceServer::new(danube.clone()))
        .add_service(ConsumerServiceServer::new(danube.clone()))
        .add_service(DiscoveryServer::new(danube.clone()))
        .add_service(HealthCheckServer::new(danube))
        .add_service(SchemaRegistryServer::new(SchemaRegistryApi::new(
            Arc::clone(&broker),
        )))
        .add_service(
            SavaClientServer::new(NativeApi::new(Arc::clone(&broker)))
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(no_delay(client_listener), signal)
        .await?;

    janitor.abort();
    offloader.abort();
    let _ = membership.await;
    let _ = leader.await;
    let _ = flusher.await;
    let _ = http.await;
    if let Ok(Err(error)) = admin.await {
        tracing::warn!(%error, "admin server failed");
    }
    info!("broker stopped");
    Ok(())
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Writes changed cursors every `storage.cursor_flush_ms`, and once more
/// when the broker stops.
async fn cursor_flusher(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = Duration::from_millis(broker.config.storage.cursor_flush_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if let Err(error) = broker.flush_cursors().await {
            tracing::warn!(%error, "cannot save subscription cursors; retrying");
        }
    }
    if let Err(error) = broker.flush_cursors().await {
        tracing::warn!(%error, "cannot save subscription cursors at shutdown");
    }
}

/// Offloads sealed segments every `offload.interval_ms`, applies retention
/// to offloaded history about once a second, and compacts and sweeps
/// orphans (those a crash left, those compaction replaced) every
/// `offload.compact_interval_secs` over the topics loaded then.
async fn offloader(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if broker.tier().is_none() {
        return;
    }
    let every = Duration::from_millis(broker.config.offload.interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let compact_every = Duration::from_secs(broker.config.offload.compact_interval_secs);
    let mut compacted_at: Option<tokio::time::Instant> = None;
    let mut retained_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        broker.offload_pass().await;
        if retained_at.elapsed() >= Duration::from_secs(1) {
            broker.apply_offloaded_retention().await;
            retained_at = tokio::time::Instant::now();
        }
        if compacted_at.is_none_or(|at| at.elapsed() >= compact_every) {
            broker.compact_and_sweep().await;
            compacted_at = Some(tokio::time::Instant::now());
        }
    }
}

async fn janitor(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        broker.expire_idle();
        for topic in broker.loaded_topics() {
            topic.sample_rates(last.elapsed());
        }
        last = tokio::time::Instant::now();
        if let Err(error) = broker.apply_retention().await {
            tracing::warn!(%error, "retention failed; retrying");
        }
    }
}
