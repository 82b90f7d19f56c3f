//! What every registro server shares: the health service, reflection, and the shutdown sequence.
//!
//! Shutdown, in order: the caller's `shutdown` future resolves (SIGTERM, SIGINT, or a test),
//! and a role stops its [`Followers`] inside it, so no task can set SERVING again; then every
//! health status turns NOT_SERVING and health Watch streams are closed, so they cannot hold
//! the server open; the listener stops accepting and open connections are told to go away;
//! in-flight requests get up to the grace period to finish; then [`serve`] returns and the role
//! syncs its files.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use crate::auth::AuthLayer;
use crate::limits::{InFlightLayer, LimitArgs, Limits, Tracker};
use crate::metrics::GrpcLayer;
use crate::pb;
use crate::tls::Tls;
use crate::unary::UnaryLayer;

/// A server's routes behind the [`crate::auth`] layer, with its busiest unary calls answered
/// in front of them ([`UnaryLayer`]).
pub type Router = tonic::transport::server::Router<
    Stack<UnaryLayer, Stack<AuthLayer, Stack<InFlightLayer, Stack<GrpcLayer, Identity>>>>,
>;

/// A server builder with the HTTP/2 settings of `limits` (see [`crate::limits`]).
fn builder(limits: Limits) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // A client resetting streams as fast as it opens them (the "rapid reset" attack) is
        // disconnected rather than allowed to keep the server busy.
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(16 * 1024)
}

/// Why a server's router cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot build reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot use the TLS certificate: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// The largest gRPC message a server accepts or sends: the transport limit, above which tonic
/// answers OUT_OF_RANGE before our code sees the request.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest `StoreBatch` call between the headnode and a datanode: room for a batch that
/// holds one message at the transport limit (the headnode keeps batches under
/// [`MAX_GRPC_MESSAGE_BYTES`] otherwise).
pub const MAX_GRPC_BATCH_BYTES: usize = 2 * MAX_GRPC_MESSAGE_BYTES;

/// The most messages a datanode takes in one `StoreBatch` (the headnode sends fewer); more is
/// INVALID_ARGUMENT, so a single call cannot make a datanode hold millions of pending appends
/// or answer with a reply over the size limit.
pub const MAX_STORE_BATCH: usize = 1024;

/// The default for `--max-message-bytes`: the longest message text a Store accepts.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The health statuses a server publishes, by service name, and how to turn them all off.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// Every service name this server reports, "" included, so shutdown can reach them all.
    services: Vec<&'static str>,
}

impl Health {
    /// A reporter for `services` (plus `""`, the whole server), all SERVING, and the gRPC
    /// service that publishes them.
    pub async fn new(
        services: &[&'static str],
    ) -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let mut all = vec![""];
        all.extend_from_slice(services);
        for name in services {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        (
            Self {
                reporter,
                services: all,
            },
            service,
        )
    }

    /// Sets one service's status (`""` is the whole server).
    pub async fn set(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }

    /// Turns every status NOT_SERVING, then ends every Watch stream: the first thing a server
    /// does on shutdown, so load balancers and probes stop sending work at once.
    pub async fn shut_down(&self) {
        for name in &self.services {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let mut reporter = self.reporter.clone();
        for name in &self.services {
            reporter.clear_service_status(name).await;
        }
    }
}

/// Server reflection (v1 and v1alpha) with the descriptors of registro and the health protocol,
/// so grpcurl can `list`, `describe` and call every service.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The router every registro server starts from: the transport limits of `tracker`, the health
/// service, reflection (v1 and v1alpha) and `registro.v1.Store` with the transport's message
/// limits, every call recorded by `metrics`, behind the [`crate::auth`] layer. With `tls`, every
/// connection needs a client certificate signed by the cluster's CA; without, it is plaintext
/// (and says so in the log). Store, and the role's own methods in `unary` (the datanode's
/// StoreBatch), are answered by the [`UnaryLayer`] in front of the routes. The headnode adds
/// Heartbeat, the datanode the Datanode service.
pub fn router<S>(
    tracker: &Tracker,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    store: std::sync::Arc<S>,
    unary: UnaryLayer,
    tls: Option<&Tls>,
    metrics: GrpcLayer,
) -> Result<Router, RouterError>
where
    S: pb::store_server::Store,
{
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let mut builder = builder(tracker.limits());
    match tls {
        Some(tls) => builder = builder.tls_config(tls.server_config())?,
        None => crate::tls::warn_plaintext(),
    }
    // Outermost first: every call is recorded (shed and refused ones too), then the limits,
    // then who may call what; then Store is answered, and every other call routed.
    Ok(builder
        .layer(metrics)
        .layer(tracker.layer())
        .layer(AuthLayer::new(tls.is_some()))
        .layer(unary.with_store(store.clone(), MAX_GRPC_MESSAGE_BYTES))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::store_server::StoreServer::from_arc(store)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        ))
}

/// Serves only `grpc.health.v1.Health` (the same statuses as the main port) in plaintext on
/// `listener` until `stop` resolves: `--health-listen`, for Kubernetes' native gRPC probes and
/// load balancers, which cannot present a client certificate. Nothing else is served there.
pub async fn serve_health_only(
    listener: std::net::TcpListener,
    limits: Limits,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve --health-listen");
            return;
        }
    };
    if let Ok(local) = listener.local_addr() {
        tracing::info!("health checks (plaintext, grpc.health.v1 only) on {local}");
    }
    let tracker = Tracker::new(limits);
    let incoming = tracker.incoming(listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = builder(limits)
        .layer(tracker.layer())
        .add_service(health_service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            if let Err(e) = result {
                tracing::error!(error = %e, "the --health-listen server failed");
            }
            return;
        }
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    let _ = stop_tx.send(());
    // Probes are single short calls; a Watch stream ended when the statuses were cleared.
    let _ = tokio::time::timeout(HEALTH_ONLY_GRACE, server).await;
}

/// How long the `--health-listen` server waits for open calls when it stops.
const HEALTH_ONLY_GRACE: Duration = Duration::from_secs(1);

/// The flags every registro server shares.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Longest message accepted, in bytes.
    #[arg(long, env = "REGISTRO_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// How many recent request ids are remembered for idempotency (the dedupe horizon).
    #[arg(long, env = "REGISTRO_DEDUPE_CAPACITY", default_value_t = crate::dedupe::DEFAULT_CAPACITY)]
    pub dedupe_capacity: usize,
    /// Memory the remembered request ids may hold (bytes; suffixes KiB, MiB, GiB); the oldest
    /// ids are forgotten first when either bound is reached.
    #[arg(long, env = "REGISTRO_DEDUPE_MEMORY", default_value = "64MiB", value_parser = crate::config::parse_bytes)]
    pub dedupe_memory: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "REGISTRO_SHUTDOWN_GRACE", default_value = "5s", value_parser = crate::config::parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// A second, plaintext address serving only grpc.health.v1.Health, for Kubernetes' gRPC
    /// probes and load balancers (which present no client certificate).
    #[arg(long, env = "REGISTRO_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<String>,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl CommonArgs {
    /// The idempotency map's bounds.
    pub fn dedupe_limits(&self) -> crate::dedupe::Limits {
        crate::dedupe::Limits {
            entries: self.dedupe_capacity,
            bytes: self.dedupe_memory,
        }
    }
}

/// Serves `router` on `listener` within the limits of `tracker` until `shutdown` resolves, then
/// runs the shutdown sequence (see the module docs) with `grace` for in-flight requests.
pub async fn serve(
    router: Router,
    tracker: &Tracker,
    listener: TcpListener,
    health: Health,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = tracker.incoming(listener);
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {}
    }
    tracing::info!(grace = ?grace, "shutting down: health NOT_SERVING, draining requests");
    health.shut_down().await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(grace = ?grace, "grace period over; closing the connections still open");
            Ok(())
        }
    }
}

/// The process's shutdown signal: SIGTERM or SIGINT. Clones share it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Extra time past the grace period before a process that has not stopped exits anyway.
pub const HARD_DEADLINE_MARGIN: Duration = Duration::from_secs(2);

impl Shutdown {
    /// Starts listening for SIGTERM and SIGINT.
    pub fn on_signal() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            termination_signal().await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once the signal has come.
    pub async fn wait(mut self) {
        // An error means the sender is gone, which only happens after it sent.
        let _ = self.0.wait_for(|signalled| *signalled).await;
    }

    /// Resolves `grace` plus [`HARD_DEADLINE_MARGIN`] after the signal: by then a server that
    /// has not stopped is stuck, and its process exits anyway.
    pub async fn hard_deadline(self, grace: Duration) {
        self.wait().await;
        tokio::time::sleep(grace + HARD_DEADLINE_MARGIN).await;
    }
}

/// Runs a server until SIGTERM or SIGINT, handing it the signal as its `shutdown` future; exits
/// the process with status 1 if it has not stopped by the hard deadline.
pub async fn run_until_signal<F, E>(
    serve: impl FnOnce(Shutdown) -> F,
    grace: Duration,
) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    let shutdown = Shutdown::on_signal();
    tokio::select! {
        result = serve(shutdown.clone()) => result,
        () = shutdown.hard_deadline(grace) => {
            tracing::error!(deadline = ?(grace + HARD_DEADLINE_MARGIN), "still running past the shutdown deadline; exiting");
            std::process::exit(1);
        }
    }
}

async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Tasks that run beside a server until told to stop. A role keeps two sets: the ones that set
/// its health (readiness, disk health) or announce it (registration) stop *before* health turns
/// NOT_SERVING (the role hands [`Followers::stop_after`] its shutdown signal as [`serve`]'s
/// `shutdown` future, so a draining server never reports SERVING again); the side ports
/// (`--health-listen`, `--metrics-listen`) stop after the drain, so probes read NOT_SERVING rather
/// than a refused connection while requests finish.
pub struct Followers {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Default for Followers {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: tokio::task::JoinSet::new(),
        }
    }
}

impl Followers {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `task` with the stop signal it must return on (it turns true).
    pub fn spawn<F>(&mut self, task: impl FnOnce(watch::Receiver<bool>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.stop.subscribe()));
    }

    /// Tells every task to stop and waits until each has returned (or panicked).
    pub async fn stop(&mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits for `shutdown`, then [`Self::stop`]s: the `shutdown` future to give [`serve`].
    pub async fn stop_after(&mut self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }
}

/// Binds `--health-listen` when given, as a std listener a role's `Config` can carry.
pub async fn bind_health(
    addr: Option<&str>,
) -> std::io::Result<Option<std::sync::Arc<std::net::TcpListener>>> {
    match addr {
        Some(addr) if !addr.trim().is_empty() => {
            Ok(Some(std::sync::Arc::new(bind(addr).await?.into_std()?)))
        }
        _ => Ok(None),
    }
}

/// Binds `addr` with a clear error when it cannot (port in use, bad address).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
