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
pub mod journal;
pub mod metrics;
pub mod register;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::dedupe::Dedupe;
use crate::metrics::{GrpcLayer, GrpcMetrics, MetricsListener};
use crate::pb;
use crate::server::{self, Health};
use crate::tls::Tls;
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
    /// The headnodes to register with (comma-separated URLs or host:port), if any.
    pub headnode: Option<String>,
    /// The address the headnode should dial; derived from the listener when absent.
    pub advertise: Option<String>,
    /// Longest message text accepted, in bytes.
    pub max_message_bytes: usize,
    /// Bounds of the idempotency map.
    pub dedupe: crate::dedupe::Limits,
    /// Transport limits of the listener.
    pub limits: crate::limits::Limits,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// List streams open at once; one more is RESOURCE_EXHAUSTED.
    pub max_lists: usize,
    /// A List whose reader takes no message for this long ends with DEADLINE_EXCEEDED.
    pub list_idle_timeout: Duration,
    /// Mutual TLS for the listener and for registering; `None`: plaintext.
    pub tls: Option<Tls>,
    /// `--health-listen`: a plaintext listener that serves only the health protocol.
    pub health_listener: Option<Arc<std::net::TcpListener>>,
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
            dedupe: Default::default(),
            limits: Default::default(),
            shutdown_grace: Duration::from_secs(5),
            max_lists: store::DEFAULT_MAX_LISTS,
            list_idle_timeout: store::DEFAULT_LIST_IDLE_TIMEOUT,
            tls: None,
            health_listener: None,
            metrics_listen: None,
        }
    }
}

/// Why a datanode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    DataFile(#[from] data_file::OpenError),
    #[error(transparent)]
    Router(#[from] server::RouterError),
    #[error("cannot use --health-listen: {0}")]
    HealthListener(std::io::Error),
    #[error("--headnode: {0}")]
    Headnode(#[from] crate::config::DialError),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("invalid --advertise address: {0}")]
    Advertise(String),
    #[error("{0}")]
    Metrics(std::io::Error),
    #[error("{0}")]
    Startup(String),
}

/// Runs a datanode on `listener` until `shutdown` resolves, then shuts down gracefully and syncs
/// the data file.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    // The idempotency map is rebuilt as the file is read, within its own bounds; reading the
    // whole file is blocking work, so it runs off the async runtime.
    let dedupe = Dedupe::new(config.dedupe);
    let (dir, fsync, name, map) = (
        config.data_dir.clone(),
        config.fsync,
        config.name.clone(),
        dedupe.clone(),
    );
    let (file, loaded) = tokio::task::spawn_blocking(move || {
        DataFile::open(&dir, fsync, |record| store::remember(&map, &name, &record))
    })
    .await
    .map_err(|e| Error::Startup(format!("opening the data file failed: {e}")))??;
    run(listener, config, file, loaded, dedupe, shutdown).await
}

/// [`serve`] with the data file already open.
async fn run(
    listener: TcpListener,
    config: Config,
    file: DataFile,
    loaded: data_file::Loaded,
    dedupe: Dedupe<pb::StoreReply>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let local = listener.local_addr().map_err(Error::Listener)?;
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None => default_advertise(local),
    };
    crate::config::check_host_port(&advertise).map_err(Error::Advertise)?;
    tracing::info!(
        name = %config.name,
        listen = %local,
        path = %file.path().display(),
        records = loaded.count,
        fsync = ?config.fsync,
        "datanode starting"
    );
    if loaded.journal.restored_bytes > 0 {
        tracing::warn!(
            bytes = loaded.journal.restored_bytes,
            journal_records = loaded.journal.records,
            "the data file had lost acknowledged bytes (a machine crash before its background sync); the journal wrote them back"
        );
    }
    if config.fsync == Fsync::Never {
        tracing::warn!(
            "--fsync never: replies do not wait for the disk; a machine crash can lose acknowledged messages"
        );
    }

    let (health, health_service) =
        Health::new(&[crate::STORE_SERVICE, crate::DATANODE_SERVICE]).await;
    let store = store::StoreService::new(&config, file.clone(), dedupe);
    if let Some(tls) = &config.tls {
        tls.log_identity(crate::tls::Role::Datanode);
    }
    // Checked now: with TLS, an http:// headnode is an error at start-up, not a silent retry loop.
    if let Some(headnodes) = &config.headnode {
        register::check(headnodes, config.tls.as_ref())?;
    }
    let (grpc_metrics, metrics_listener) = match &config.metrics_listen {
        Some(addr) => {
            let (grpc, listener) = observability(addr, &file).await?;
            (Some(grpc), Some(listener))
        }
        None => (None, None),
    };
    let health_only = health_service.clone();
    let tracker = crate::limits::Tracker::new(config.limits);
    // One service behind Store, StoreBatch and the Datanode service's other calls. StoreBatch,
    // the headnodes' call, is answered in front of tonic's router as Store is.
    let store = std::sync::Arc::new(store);
    let unary = crate::unary::UnaryLayer::default().with(
        crate::unary::STORE_BATCH,
        server::MAX_GRPC_BATCH_BYTES,
        {
            let store = store.clone();
            move |request| {
                let store = store.clone();
                async move { pb::datanode_server::Datanode::store_batch(&*store, request).await }
            }
        },
    );
    let router = server::router(
        &tracker,
        health_service,
        store.clone(),
        unary,
        config.tls.as_ref(),
        GrpcLayer::new(grpc_metrics),
    )?
    .add_service(
        pb::datanode_server::DatanodeServer::from_arc(store)
            .max_decoding_message_size(server::MAX_GRPC_BATCH_BYTES)
            .max_encoding_message_size(server::MAX_GRPC_BATCH_BYTES),
    );

    let mut followers = server::Followers::new();
    let (healthy, reporter) = (file.healthy(), health.clone());
    followers.spawn(|stop| follow_disk_health(healthy, reporter, stop));
    if let Some(headnodes) = &config.headnode {
        let (headnodes, tls) = (headnodes.clone(), config.tls.clone());
        let (name, advertise) = (config.name.clone(), advertise.clone());
        followers.spawn(|stop| register::run(headnodes, tls, name, advertise, stop));
    }
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

    tracing::info!("listening on {local}");
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
/// elsewhere; a writer thread that stopped leaves them NOT_SERVING for good. Returns when `stop`
/// turns true, before the shutdown sequence turns every status off.
async fn follow_disk_health(
    mut healthy: tokio::sync::watch::Receiver<bool>,
    health: Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let writer_alive = tokio::select! {
            changed = healthy.changed() => changed.is_ok(),
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        if !writer_alive {
            tracing::error!("the data file writer stopped: Store NOT_SERVING until restarted");
            health.set(crate::STORE_SERVICE, false).await;
            health.set(crate::DATANODE_SERVICE, false).await;
            // Nothing can change any more; wait to be stopped like the other followers.
            let _ = stop.wait_for(|stopped| *stopped).await;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::StoreRequest;
    use crate::pb::store_client::StoreClient;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    /// A writer thread that dies (a panic inside a write) turns `registro.v1.Store` and
    /// `registro.v1.Datanode` NOT_SERVING, and a Store answers UNAVAILABLE at once, saying why,
    /// instead of hanging.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_writer_thread_turns_health_not_serving_and_stores_fail_fast() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(data_file::tests::Faults::default()));
        let (file, loaded) = data_file::tests::open_faulty(dir.path(), &faults);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let node = tokio::spawn(run(
            listener,
            Config::new("d", dir.path()),
            file,
            loaded,
            Dedupe::new(crate::dedupe::Limits::default()),
            async {
                let _ = stopped.await;
            },
        ));
        let channel = crate::config::endpoint(&url, Duration::from_secs(2))
            .unwrap()
            .connect_lazy();
        let status_of = |service: &'static str| {
            let mut health = HealthClient::new(channel.clone());
            async move {
                health
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner().status())
            }
        };
        let start = Instant::now();
        while status_of(crate::STORE_SERVICE).await != Some(ServingStatus::Serving) {
            assert!(start.elapsed() < Duration::from_secs(15), "never SERVING");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        faults.lock().unwrap().panic_on_write = true;
        let mut store = StoreClient::new(channel.clone());
        for _ in 0..2 {
            let refused = tokio::time::timeout(
                Duration::from_secs(10),
                store.store(StoreRequest {
                    message: "m".into(),
                    request_id: String::new(),
                }),
            )
            .await
            .expect("a Store answers")
            .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            assert!(
                refused.message().contains("writer has stopped"),
                "{refused:?}"
            );
        }
        let start = Instant::now();
        for service in [crate::STORE_SERVICE, crate::DATANODE_SERVICE] {
            while status_of(service).await != Some(ServingStatus::NotServing) {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{service} still SERVING"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        stop.send(()).unwrap();
        node.await.unwrap().unwrap();
    }
}
