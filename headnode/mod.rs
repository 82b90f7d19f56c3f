//! The headnode: the cluster's front door.
//!
//! It serves `registro.v1.Store` to clients and forwards each message to the first healthy
//! datanode of the message's placement order (rendezvous hashing of its request id, so every
//! headnode places a message alike), `registro.v1.Heartbeat` for membership, the health protocol
//! (with `registro.v1.Store` NOT_SERVING during warm-up and while no datanode is healthy) and
//! reflection. Headnodes share no state: several can serve one set of datanodes.
//!
//! - [`pool`]: the datanodes, their observed health, a message's placement order over them.
//! - [`placement`]: rendezvous hashing of a request id over datanode names.
//! - [`record`]: the record forwarded: the id derived from the request id, the time.
//! - [`warmup`]: no Stores until a started headnode knows its pool.
//! - [`probe`]: the periodic health checks and the heartbeat log.
//! - [`store`]: forwarding with failover, idempotency, the registro log, List merging.
//! - [`batch`]: the Stores bound for one datanode, sent together.
//! - [`heartbeat`]: Register, Status and Repair.
//! - [`repair`]: copies under-replicated messages onto the next datanodes of their order.
//! - [`metrics`]: the pool's metrics; [`status_page`]: the HTML page on the metrics port.

pub mod batch;
pub mod heartbeat;
pub mod metrics;
pub mod placement;
pub mod pool;
pub mod probe;
pub mod record;
pub mod repair;
pub mod status_page;
pub mod store;
pub mod warmup;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::logfile::LogFile;
use crate::metrics::{GrpcLayer, GrpcMetrics, MetricsListener};
use crate::pb::heartbeat_server::HeartbeatServer;
use crate::server::{self, Health};
use crate::tls::Tls;
use pool::Pool;

/// Everything a headnode needs to run (the `headnode` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Datanodes known from the start (host:port); others join by registering.
    pub datanodes: Vec<String>,
    /// Datanodes that hold each message (`--replicas`, at least 1): a Store is acknowledged once
    /// this many have it durably.
    pub replicas: usize,
    pub heartbeat_interval: Duration,
    /// Deadline of one health probe.
    pub heartbeat_timeout: Duration,
    pub heartbeat_log: PathBuf,
    pub registro_log: PathBuf,
    /// Deadline of one forward call to a datanode, from when the call is sent (time queued
    /// before it does not count).
    pub forward_timeout: Duration,
    /// HTTP/2 connections the headnode opens to each datanode for forwards.
    pub datanode_connections: usize,
    pub max_message_bytes: usize,
    /// Bounds of the idempotency map.
    pub dedupe: crate::dedupe::Limits,
    /// Transport limits of the listener.
    pub limits: crate::limits::Limits,
    /// Bounds of List streams.
    pub lists: store::ListLimits,
    /// Ids one pass of a repair keeps at most (`--repair-ids-per-pass`).
    pub repair_ids_per_pass: usize,
    pub shutdown_grace: Duration,
    /// Mutual TLS for the listener and every dial to a datanode; `None`: plaintext.
    pub tls: Option<Tls>,
    /// `--health-listen`: a plaintext listener that serves only the health protocol.
    pub health_listener: Option<Arc<std::net::TcpListener>>,
    /// Where to serve `/metrics` and the status page (`--metrics-listen`); none without it.
    pub metrics_listen: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            datanodes: Vec::new(),
            replicas: 1,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_millis(500),
            heartbeat_log: "heartbeat.log".into(),
            registro_log: "registro.log".into(),
            forward_timeout: Duration::from_millis(500),
            datanode_connections: DEFAULT_DATANODE_CONNECTIONS,
            max_message_bytes: server::DEFAULT_MAX_MESSAGE_BYTES,
            dedupe: Default::default(),
            limits: Default::default(),
            lists: Default::default(),
            repair_ids_per_pass: repair::DEFAULT_IDS_PER_PASS,
            shutdown_grace: Duration::from_secs(5),
            tls: None,
            health_listener: None,
            metrics_listen: None,
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
    #[error("{0}")]
    Metrics(std::io::Error),
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
        config.forward_timeout,
        config.lists.max_open,
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
    let (warm_tx, warm) = tokio::sync::watch::channel(false);
    // Read before this run's probes add to the log: the datanodes SERVING when it last stopped.
    let expected = {
        let (path, interval) = (config.heartbeat_log.clone(), config.heartbeat_interval);
        tokio::task::spawn_blocking(move || warmup::expected_from_log(&path, interval))
            .await
            .unwrap_or_default()
    };
    let store = store::StoreService::new(
        pool.clone(),
        registro_log.clone(),
        store::Settings {
            replicas: config.replicas,
            dedupe: config.dedupe,
            max_message_bytes: config.max_message_bytes,
            list_limits: config.lists,
        },
        warm.clone(),
        crate::limits::Running::new(config.limits.max_in_flight),
    );
    let heartbeat = heartbeat::HeartbeatService::new(
        pool.clone(),
        heartbeat_log.clone(),
        config.heartbeat_interval,
        config.heartbeat_timeout,
    )
    .with_repair(repair::Repairer::new(
        pool.clone(),
        repair::Settings {
            replicas: config.replicas,
            ids_per_pass: config.repair_ids_per_pass,
            tls: config.tls.clone(),
            connect_timeout: config.heartbeat_timeout,
            idle_timeout: config.lists.idle_timeout,
        },
        warm.clone(),
    ));
    if let Some(tls) = &config.tls {
        tls.log_identity(crate::tls::Role::Headnode);
    }
    let (grpc_metrics, metrics_listener) = match &config.metrics_listen {
        Some(addr) => {
            let (grpc, listener) = observability(addr, &pool, &listener).await?;
            (Some(grpc), Some(listener))
        }
        None => (None, None),
    };
    let health_only = health_service.clone();
    let tracker = crate::limits::Tracker::new(config.limits);
    let router = server::router(
        &tracker,
        health_service,
        Arc::new(store),
        crate::unary::UnaryLayer::default(),
        config.tls.as_ref(),
        GrpcLayer::new(grpc_metrics),
    )?
    .add_service(HeartbeatServer::new(heartbeat));

    // The probes and the readiness follower stop before the shutdown sequence turns health
    // NOT_SERVING, so nothing can turn it back to SERVING while the headnode drains.
    let mut followers = server::Followers::new();
    let window = warmup::window(
        !config.datanodes.is_empty(),
        config.heartbeat_interval,
        config.heartbeat_timeout,
    );
    let probe_timeout = config.heartbeat_timeout;
    followers
        .spawn(|stop| warmup::run(pool.clone(), window, expected, probe_timeout, warm_tx, stop));
    followers.spawn(|stop| {
        probe::run(
            pool.clone(),
            heartbeat_log.clone(),
            config.heartbeat_interval,
            config.heartbeat_timeout,
            stop,
        )
    });
    let replicas = config.replicas;
    followers.spawn(|stop| follow_readiness(pool.clone(), replicas, warm, health.clone(), stop));
    // The plaintext health port and the metrics port outlive the drain, so probes see
    // NOT_SERVING rather than a refused connection while requests finish.
    let mut ports = server::Followers::new();
    if let Some(listener) = &config.health_listener {
        let listener = listener.try_clone().map_err(Error::HealthListener)?;
        let limits = config.limits;
        ports.spawn(|stop| server::serve_health_only(listener, limits, health_only, stop));
    }
    if let Some(metrics) = metrics_listener {
        ports.spawn(|stop| metrics.serve(stop));
    }

    if let Ok(local) = listener.local_addr() {
        tracing::info!("listening on {local}");
    }
    let result = server::serve(
        router,
        &tracker,
        listener,
        health,
        followers.stop_after(shutdown),
        config.shutdown_grace,
    )
    .await;
    // Already done unless the server failed before a shutdown.
    followers.stop().await;
    ports.stop().await;
    for log in [&heartbeat_log, &registro_log] {
        if let Err(e) = log.sync().await {
            tracing::error!(path = %log.path().display(), error = %e, "final sync of a log failed");
        }
    }
    tracing::info!("headnode stopped");
    Ok(result?)
}

/// Binds the metrics listener and builds what it serves: the gRPC metrics, the pool's, and the
/// status page.
async fn observability(
    addr: &str,
    pool: &Arc<Pool>,
    grpc_listener: &TcpListener,
) -> Result<(Arc<GrpcMetrics>, MetricsListener), Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    let grpc = GrpcMetrics::register(
        &mut registry,
        &[
            crate::STORE_SERVICE,
            crate::HEARTBEAT_SERVICE,
            crate::metrics::HEALTH_SERVICE,
            crate::metrics::REFLECTION_SERVICES[0],
            crate::metrics::REFLECTION_SERVICES[1],
        ],
    );
    metrics::register(&mut registry, pool.clone());
    let grpc_addr = grpc_listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let page = status_page::StatusPage::new(pool.clone(), grpc.clone(), grpc_addr);
    let listener = MetricsListener::bind(addr, registry, Some(Box::new(move || page.render())))
        .await
        .map_err(Error::Metrics)?;
    Ok((grpc, listener))
}

/// Keeps `registro.v1.Store` SERVING exactly while the headnode has warmed up and at least
/// `replicas` datanodes are SERVING, until `stop`.
async fn follow_readiness(
    pool: Arc<Pool>,
    replicas: usize,
    mut warm: tokio::sync::watch::Receiver<bool>,
    health: Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = pool.serving();
    loop {
        let count = *serving.borrow_and_update();
        let warmed = *warm.borrow_and_update();
        health
            .set(crate::STORE_SERVICE, warmed && count >= replicas.max(1))
            .await;
        tokio::select! {
            changed = serving.changed() => if changed.is_err() { return },
            // Warm-up only ever turns true; once it has, its sender may go.
            changed = warm.changed(), if !warmed => if changed.is_err() { return },
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool::ProbeResult;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    /// What a health client on `url` hears about `registro.v1.Store`.
    async fn store_status(url: &str) -> Result<ServingStatus, tonic::Code> {
        let channel = crate::config::lazy_channel(url, Duration::from_secs(1), None).unwrap();
        let mut client = HealthClient::new(channel);
        client
            .check(HealthCheckRequest {
                service: crate::STORE_SERVICE.into(),
            })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    }

    /// Once stopped, the readiness follower leaves health alone: a datanode turning SERVING
    /// during the drain cannot make a shutting-down headnode report SERVING again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_draining_headnode_never_reports_serving_again() {
        let (health, service) = Health::new(&[crate::STORE_SERVICE]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let pool = Arc::new(Pool::new(
            Duration::from_millis(100),
            1,
            Duration::from_secs(1),
            1,
            None,
        ));
        pool.add_static("127.0.0.1:1").unwrap();
        let node = pool.get("127.0.0.1:1").unwrap();
        let (_warm_tx, warm) = tokio::sync::watch::channel(true);
        let mut followers = server::Followers::new();
        followers.spawn(|stop| follow_readiness(pool.clone(), 1, warm, health.clone(), stop));
        pool.record_probe(&node, &ProbeResult::Serving(Duration::ZERO));
        let mut serving = false;
        for _ in 0..200 {
            if store_status(&url).await == Ok(ServingStatus::Serving) {
                serving = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(serving, "the follower reports a SERVING datanode");

        // The shutdown sequence: the follower first, then health.
        followers.stop().await;
        health.set(crate::STORE_SERVICE, false).await;
        pool.mark_down(&node, "gone");
        pool.record_probe(&node, &ProbeResult::Serving(Duration::ZERO));
        // Let any task still following the pool run (this runtime has one thread, so they run
        // here, in order) before looking.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store_status(&url).await, Ok(ServingStatus::NotServing));
    }
}
