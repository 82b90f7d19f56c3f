//! The datanode: stores messages durably in its data file and serves them back.
//!
//! It serves `registro.v1.Store` (to a client directly), `registro.v1.Datanode` (batches from the
//! headnode), the health protocol and reflection. With a headnode address it registers itself and keeps re-announcing, so a
//! restarted headnode learns about it again without anyone restarting the datanode.
//!
//! - [`data_file`]: the file format, group commit, crash recovery.
//! - [`store`]: the Store service: validation, idempotency, receipts.
//! - [`register`]: announcing this datanode to the headnode.
//! - [`metrics`]: the data file's metrics, served with the gRPC ones on `--metrics-listen`.

pub mod data_file;
pub mod metrics;
pub mod register;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::metrics::{GrpcLayer, GrpcMetrics, MetricsListener};
use crate::pb;
use crate::server::{self, Health};
use data_file::{DataFile, Fsync};

/// Everything a datanode needs to run (the `datanode` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// The name in receipts, the headnode's pool and its logs.
    pub name: String,
    /// Folder of `messages.jsonl`.
    pub data_dir: PathBuf,
    /// Whether a reply waits for the sync that covers its record.
    pub fsync: Fsync,
    /// The headnode to register with (a URL or host:port), if any.
    pub headnode: Option<String>,
    /// The address the headnode should dial; derived from the listener when absent.
    pub advertise: Option<String>,
    /// Longest message text accepted, in bytes.
    pub max_message_bytes: usize,
    /// How many recent request ids are remembered for idempotency.
    pub dedupe_capacity: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Where to serve `/metrics` (`--metrics-listen`); none without it.
    pub metrics_listen: Option<String>,
}

impl Config {
    /// Defaults for a datanode called `name` keeping its file in `data_dir`.
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            data_dir: data_dir.into(),
            fsync: Fsync::Always,
            headnode: None,
            advertise: None,
            max_message_bytes: server::DEFAULT_MAX_MESSAGE_BYTES,
            dedupe_capacity: DEFAULT_DEDUPE_CAPACITY,
            shutdown_grace: Duration::from_secs(5),
            metrics_listen: None,
        }
    }
}

pub use crate::server::DEFAULT_DEDUPE_CAPACITY;

/// Why a datanode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    DataFile(#[from] data_file::OpenError),
    #[error("cannot build reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("invalid --advertise address: {0}")]
    Advertise(String),
    #[error("{0}")]
    Metrics(std::io::Error),
}

/// Runs a datanode on `listener` until `shutdown` resolves, then shuts down gracefully and syncs
/// the data file.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let local = listener.local_addr().map_err(Error::Listener)?;
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None => default_advertise(local),
    };
    crate::config::check_host_port(&advertise).map_err(Error::Advertise)?;

    let (file, loaded) = DataFile::open(&config.data_dir, config.fsync, config.dedupe_capacity)?;
    tracing::info!(
        name = %config.name,
        listen = %local,
        path = %file.path().display(),
        records = loaded.count,
        fsync = ?config.fsync,
        "datanode starting"
    );
    if config.fsync == Fsync::Never {
        tracing::warn!(
            "--fsync never: replies do not wait for the disk; a machine crash can lose acknowledged messages"
        );
    }

    let (health, health_service) =
        Health::new(&[crate::STORE_SERVICE, crate::DATANODE_SERVICE]).await;
    let store = store::StoreService::new(&config, file.clone(), &loaded);
    let (grpc_metrics, metrics_listener) = match &config.metrics_listen {
        Some(addr) => {
            let (grpc, listener) = observability(addr, &file).await?;
            (Some(grpc), Some(listener))
        }
        None => (None, None),
    };
    let router = server::router(health_service, store.clone(), GrpcLayer::new(grpc_metrics))?
        .add_service(
            pb::datanode_server::DatanodeServer::new(store)
                .max_decoding_message_size(server::MAX_GRPC_BATCH_BYTES)
                .max_encoding_message_size(server::MAX_GRPC_BATCH_BYTES),
        );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(metrics_listener) = metrics_listener {
        tasks.spawn(metrics_listener.serve(stop_rx.clone()));
    }
    tasks.spawn(follow_disk_health(
        file.healthy(),
        health.clone(),
        stop_rx.clone(),
    ));
    if let Some(headnode) = &config.headnode {
        tasks.spawn(register::run(
            headnode.clone(),
            config.name.clone(),
            advertise.clone(),
            stop_rx,
        ));
    }

    tracing::info!("listening on {local}");
    let result = server::serve(router, listener, health, shutdown, config.shutdown_grace).await;
    let _ = stop_tx.send(true);
    tasks.join_all().await;
    if let Err(e) = file.sync().await {
        tracing::error!(error = %e, "final sync of the data file failed");
    }
    tracing::info!(name = %config.name, "datanode stopped");
    Ok(result?)
}

/// Binds the metrics listener and builds what it serves: the gRPC metrics and the data file's.
async fn observability(
    addr: &str,
    file: &DataFile,
) -> Result<(Arc<GrpcMetrics>, MetricsListener), Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    let grpc = GrpcMetrics::register(
        &mut registry,
        &[
            crate::STORE_SERVICE,
            crate::DATANODE_SERVICE,
            crate::metrics::HEALTH_SERVICE,
            crate::metrics::REFLECTION_SERVICES[0],
            crate::metrics::REFLECTION_SERVICES[1],
        ],
    );
    file.metrics().register(&mut registry);
    let listener = MetricsListener::bind(addr, registry, None)
        .await
        .map_err(Error::Metrics)?;
    Ok((grpc, listener))
}

/// The address to announce when `--advertise` is not given: the listener's own, or the host name
/// with its port when listening on every interface (as in a container).
fn default_advertise(local: SocketAddr) -> String {
    if local.ip().is_unspecified() {
        let host = crate::config::host_name().unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", local.port())
    } else {
        local.to_string()
    }
}

/// Mirrors the data file's health into the health protocol: a datanode that cannot write
/// reports `registro.v1.Store` (and `registro.v1.Datanode`) NOT_SERVING, so the headnode routes
/// elsewhere.
async fn follow_disk_health(
    mut healthy: tokio::sync::watch::Receiver<bool>,
    health: Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = healthy.changed() => {
                if changed.is_err() {
                    return;
                }
                let ok = *healthy.borrow_and_update();
                if ok {
                    tracing::info!("disk healthy again: Store SERVING");
                } else {
                    tracing::warn!("disk writes failing: Store NOT_SERVING");
                }
                health.set(crate::STORE_SERVICE, ok).await;
                health.set(crate::DATANODE_SERVICE, ok).await;
            }
            _ = stop.changed() => return,
        }
    }
}
