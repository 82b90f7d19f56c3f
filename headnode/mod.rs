//! The headnode: the cluster's front door.
//!
//! It serves `registro.v1.Store` to clients and forwards each message to one datanode chosen
//! uniformly at random among the healthy ones, `registro.v1.Heartbeat` for membership, the health
//! protocol (with `registro.v1.Store` NOT_SERVING while no datanode is healthy) and reflection.
//!
//! - [`pool`]: the datanodes, their observed health, the routing choice.
//! - [`probe`]: the periodic health checks and the heartbeat log.
//! - [`store`]: forwarding with failover, idempotency, the registro log, List merging.
//! - [`batch`]: the Stores bound for one datanode, sent together.
//! - [`heartbeat`]: Register and Status.

pub mod batch;
pub mod heartbeat;
pub mod pool;
pub mod probe;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::logfile::LogFile;
use crate::pb::heartbeat_server::HeartbeatServer;
use crate::server::{self, Health};
use crate::tls::Tls;
use pool::Pool;

/// Everything a headnode needs to run (the `headnode` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Datanodes known from the start (host:port); others join by registering.
    pub datanodes: Vec<String>,
    pub heartbeat_interval: Duration,
    /// Deadline of one health probe.
    pub heartbeat_timeout: Duration,
    pub heartbeat_log: PathBuf,
    pub registro_log: PathBuf,
    /// Deadline of one forward to a datanode.
    pub forward_timeout: Duration,
    /// HTTP/2 connections the headnode opens to each datanode for forwards.
    pub datanode_connections: usize,
    pub max_message_bytes: usize,
    /// How many recent request ids are remembered for idempotency.
    pub dedupe_capacity: usize,
    pub shutdown_grace: Duration,
    /// Mutual TLS for the listener and every dial to a datanode; `None`: plaintext.
    pub tls: Option<Tls>,
    /// `--health-listen`: a plaintext listener that serves only the health protocol.
    pub health_listener: Option<Arc<std::net::TcpListener>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            datanodes: Vec::new(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_millis(500),
            heartbeat_log: "heartbeat.log".into(),
            registro_log: "registro.log".into(),
            forward_timeout: Duration::from_millis(500),
            datanode_connections: DEFAULT_DATANODE_CONNECTIONS,
            max_message_bytes: server::DEFAULT_MAX_MESSAGE_BYTES,
            dedupe_capacity: server::DEFAULT_DEDUPE_CAPACITY,
            shutdown_grace: Duration::from_secs(5),
            tls: None,
            health_listener: None,
        }
    }
}

/// Default forward connections per datanode, each carrying one batch call at a time. On a
/// 2-core machine one wins: more calls in flight mean smaller batches and more CPU per Store
/// (BENCHMARKS.md); on a larger machine a few let a datanode's work spread over several cores.
pub const DEFAULT_DATANODE_CONNECTIONS: usize = 1;

/// Why a headnode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid datanode address in --datanodes: {0}")]
    Datanode(String),
    #[error(transparent)]
    Router(#[from] server::RouterError),
    #[error("cannot use --health-listen: {0}")]
    HealthListener(std::io::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn open_log(path: &PathBuf) -> Result<LogFile, Error> {
    LogFile::open(path).map_err(|source| Error::Log {
        path: path.clone(),
        source,
    })
}

/// Runs a headnode on `listener` until `shutdown` resolves, then shuts down gracefully and syncs
/// its logs.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let heartbeat_log = open_log(&config.heartbeat_log)?;
    let registro_log = open_log(&config.registro_log)?;
    let pool = Arc::new(Pool::new(
        config.heartbeat_timeout,
        config.datanode_connections,
        config.tls.clone(),
    ));
    for address in &config.datanodes {
        pool.add_static(address).map_err(Error::Datanode)?;
    }
    tracing::info!(
        listen = ?listener.local_addr().ok(),
        datanodes = ?config.datanodes,
        heartbeat_interval = ?config.heartbeat_interval,
        heartbeat_log = %config.heartbeat_log.display(),
        registro_log = %config.registro_log.display(),
        "headnode starting"
    );

    let (health, health_service) =
        Health::new(&[crate::STORE_SERVICE, crate::HEARTBEAT_SERVICE]).await;
    // Not ready until a datanode passes a probe.
    health.set(crate::STORE_SERVICE, false).await;
    let store = store::StoreService::new(
        pool.clone(),
        registro_log.clone(),
        config.dedupe_capacity,
        config.max_message_bytes,
        config.forward_timeout,
    );
    let heartbeat = heartbeat::HeartbeatService::new(
        pool.clone(),
        heartbeat_log.clone(),
        config.heartbeat_interval,
        config.heartbeat_timeout,
    );
    if let Some(tls) = &config.tls {
        tls.log_identity(crate::tls::Role::Headnode);
    }
    let health_only = health_service.clone();
    let router = server::router(health_service, store, config.tls.as_ref())?
        .add_service(HeartbeatServer::new(heartbeat));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(probe::run(
        pool.clone(),
        heartbeat_log.clone(),
        config.heartbeat_interval,
        config.heartbeat_timeout,
        stop_rx.clone(),
    ));
    if let Some(listener) = &config.health_listener {
        let listener = listener.try_clone().map_err(Error::HealthListener)?;
        let mut stop = stop_rx.clone();
        tasks.spawn(server::serve_health_only(
            listener,
            health_only,
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        ));
    }
    tasks.spawn(follow_readiness(pool.clone(), health.clone(), stop_rx));

    if let Ok(local) = listener.local_addr() {
        tracing::info!("listening on {local}");
    }
    let result = server::serve(router, listener, health, shutdown, config.shutdown_grace).await;
    let _ = stop_tx.send(true);
    tasks.join_all().await;
    for log in [&heartbeat_log, &registro_log] {
        if let Err(e) = log.sync().await {
            tracing::error!(path = %log.path().display(), error = %e, "final sync of a log failed");
        }
    }
    tracing::info!("headnode stopped");
    Ok(result?)
}

/// Keeps `registro.v1.Store` SERVING exactly while at least one datanode is.
async fn follow_readiness(
    pool: Arc<Pool>,
    health: Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = pool.serving();
    loop {
        let count = *serving.borrow_and_update();
        health.set(crate::STORE_SERVICE, count > 0).await;
        tokio::select! {
            changed = serving.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
