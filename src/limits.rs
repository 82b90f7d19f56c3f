//! Transport limits: what every listener enforces so that no client, careless or hostile, can take
//! a server down by holding connections open or piling requests up.
//!
//! - **Connections**: at most [`Limits::max_connections`] open at once; one over it is closed
//!   as soon as it is accepted (with a warning at most once a second), so the process never runs
//!   out of file descriptors and honest clients that retry get in once a slot frees.
//! - **Handshake**: a connection must send the HTTP/2 preface (or its TLS handshake) within
//!   [`Limits::handshake_timeout`], so a socket opened and left silent holds nothing for long.
//! - **Idle connections** (as grpc-go's `MaxConnectionIdle`): a connection with no request in
//!   flight for [`Limits::idle_timeout`] is closed. A client's next call simply reconnects.
//! - **Dead peers**: the server pings every [`Limits::keepalive_interval`] and closes a
//!   connection whose peer does not answer within [`Limits::keepalive_timeout`] (a half-open
//!   connection whose peer vanished).
//! - **Streams**: at most [`Limits::max_streams_per_connection`] concurrent HTTP/2 streams per
//!   connection (advertised in SETTINGS; a client queues past it).
//! - **Requests in flight**: at most [`Limits::max_in_flight`] requests (streams until their
//!   response ends) across all connections; one over it is answered RESOURCE_EXHAUSTED at once
//!   (load shedding) instead of queueing without bound. Health checks are exempt: a busy server
//!   is not a dead one, and probes must keep saying so. A Store that runs on after its caller went
//!   away holds a [`Running`] slot until it ends, so resets cannot pile work up either.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Bytes of the HTTP/2 client preface: a connection that has sent fewer is still handshaking.
const PREFACE_BYTES: usize = 24;

/// The limits of one server's listener (the `--max-*`, `--*-timeout` and `--keepalive-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    pub max_in_flight: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: 256,
            max_in_flight: 2048,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// The flags of [`Limits`], shared by every server.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Connections open at once; more are closed as soon as they are accepted.
    #[arg(long, env = "REGISTRO_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls) on one connection.
    #[arg(long, env = "REGISTRO_MAX_STREAMS_PER_CONNECTION", default_value_t = Limits::default().max_streams_per_connection)]
    pub max_streams_per_connection: u32,
    /// Requests in flight across all connections; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "REGISTRO_MAX_IN_FLIGHT", default_value_t = Limits::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Time a new connection has to send its TLS or HTTP/2 handshake.
    #[arg(long, env = "REGISTRO_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[arg(long, env = "REGISTRO_IDLE_TIMEOUT", default_value = "5m", value_parser = crate::config::parse_duration)]
    pub idle_timeout: Duration,
    /// How often the server pings each connection's peer.
    #[arg(long, env = "REGISTRO_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = crate::config::parse_duration)]
    pub keepalive_interval: Duration,
    /// A peer that does not answer a ping within this is dropped.
    #[arg(long, env = "REGISTRO_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub keepalive_timeout: Duration,
}

impl LimitArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            max_streams_per_connection: self.max_streams_per_connection.max(1),
            max_in_flight: self.max_in_flight.max(1),
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
        }
    }
}

/// What one server's limits share between its listener and its request layer: the open
/// connections by peer address, so a request can mark its connection busy.
#[derive(Clone)]
pub struct Tracker {
    limits: Limits,
    connections: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    table: Arc<Mutex<HashMap<SocketAddr, Arc<Activity>>>>,
    /// When this tracker was made: the zero of [`Activity::last_active_ms`].
    epoch: Instant,
    /// Last rate-limited warning, in ms since `epoch` (plus one, so 0 means never).
    warned_at: Arc<AtomicU64>,
}

/// Whether a connection is busy, and since when it has not been.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since the tracker's epoch when a request last ended (or the connection
    /// opened).
    last_active_ms: AtomicU64,
}

impl Tracker {
    /// A tracker enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            table: Arc::default(),
            epoch: Instant::now(),
            warned_at: Arc::default(),
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections - self.connections.available_permits()
    }

    /// The layer that sheds requests over [`Limits::max_in_flight`] and keeps connections'
    /// activity for the idle timeout.
    pub fn layer(&self) -> InFlightLayer {
        InFlightLayer {
            tracker: self.clone(),
        }
    }

    /// Accepts connections from `listener` within the limits.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<LimitedStream>> + Send + 'static {
        let tracker = self.clone();
        futures::stream::unfold((listener, tracker), |(listener, tracker)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors or memory: wait a moment instead of
                        // spinning on the error.
                        tracker.warn(|| tracing::warn!(error = %e, "accept failed"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = tracker.connections.clone().try_acquire_owned() else {
                    tracker.warn(|| {
                        tracing::warn!(
                            peer = %peer,
                            max_connections = tracker.limits.max_connections,
                            "too many connections; closing a new one"
                        )
                    });
                    drop(stream);
                    continue;
                };
                // Replies are small: without TCP_NODELAY they wait for the peer's delayed
                // ACK (~40 ms).
                let _ = stream.set_nodelay(true);
                let limited = tracker.open(stream, peer, permit);
                return Some((Ok(limited), (listener, tracker)));
            }
        })
    }

    fn open(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> LimitedStream {
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
        });
        self.lock_table().insert(peer, activity.clone());
        LimitedStream {
            local: stream.local_addr().ok(),
            inner: stream,
            peer,
            activity,
            tracker: self.clone(),
            timer: Box::pin(tokio::time::sleep(self.limits.handshake_timeout)),
            handshaken: 0,
            _permit: permit,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Activity>>> {
        // A map of plain values: a panicking holder cannot leave it half-changed.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `log` at most once a second.
    fn warn(&self, log: impl FnOnce()) {
        let now = self.now_ms() + 1;
        let last = self.warned_at.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log();
        }
    }
}

/// An accepted connection within the limits: closed (a read error) when it stays silent past
/// the handshake timeout or has no request in flight past the idle timeout. Frees its slot when
/// dropped.
pub struct LimitedStream {
    inner: TcpStream,
    local: Option<SocketAddr>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    tracker: Tracker,
    /// Fires at the handshake deadline, then at each moment the connection could turn idle.
    timer: Pin<Box<Sleep>>,
    /// Bytes read so far, counted up to [`PREFACE_BYTES`].
    handshaken: usize,
    _permit: OwnedSemaphorePermit,
}

impl LimitedStream {
    /// Checks the deadlines when the timer fires; `Err` closes the connection.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let limits = self.tracker.limits;
            if self.handshaken < PREFACE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no handshake within {}",
                        humantime::format_duration(limits.handshake_timeout)
                    ),
                ));
            }
            let now = self.tracker.now_ms();
            let next = if self.activity.in_flight.load(Ordering::Acquire) > 0 {
                now + limits.idle_timeout.as_millis() as u64
            } else {
                let idle_at = self.activity.last_active_ms.load(Ordering::Acquire)
                    + limits.idle_timeout.as_millis() as u64;
                if idle_at <= now {
                    tracing::debug!(peer = %self.peer, "closing an idle connection");
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection idle past the idle timeout",
                    ));
                }
                idle_at
            };
            let deadline = self.tracker.epoch + Duration::from_millis(next);
            self.timer.as_mut().reset(deadline);
        }
        Ok(())
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        let mut table = self.tracker.lock_table();
        // The peer address may already belong to a newer connection only if this one was
        // replaced in the table; remove only our own entry.
        if table
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            table.remove(&self.peer);
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.check_deadlines(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.handshaken < PREFACE_BYTES {
            let read = buf.filled().len() - before;
            self.handshaken = (self.handshaken + read).min(PREFACE_BYTES);
            if self.handshaken == PREFACE_BYTES {
                // Handshake done: from now on the timer watches for idleness.
                let deadline = Instant::now() + self.tracker.limits.idle_timeout;
                self.timer.as_mut().reset(deadline);
            }
        }
        polled
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for LimitedStream {
    // The plain TCP information, so tonic's `remote_addr()` and (under TLS) `peer_certs()` work
    // as with its own listener.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.peer),
        }
    }
}

/// The tower layer of [`Tracker::layer`].
#[derive(Clone)]
pub struct InFlightLayer {
    tracker: Tracker,
}

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            tracker: self.tracker.clone(),
        }
    }
}

/// See [`InFlightLayer`].
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    tracker: Tracker,
}

/// Holds a request's slot and marks its connection busy until the response body ends.
struct Busy {
    _permit: Option<OwnedSemaphorePermit>,
    activity: Option<Arc<Activity>>,
    tracker: Tracker,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(activity) = &self.activity {
            activity
                .last_active_ms
                .store(self.tracker.now_ms(), Ordering::Release);
            activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for InFlight<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let exempt = request.uri().path().starts_with("/grpc.health.v1.Health/");
        let permit = if exempt {
            None
        } else {
            match self.tracker.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let max = self.tracker.limits.max_in_flight;
                    self.tracker.warn(|| {
                        tracing::warn!(
                            max_in_flight = max,
                            "requests in flight at the limit; shedding"
                        )
                    });
                    let status = tonic::Status::resource_exhausted(format!(
                        "server busy: {max} requests in flight (--max-in-flight); retry shortly"
                    ));
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        };
        let extensions = request.extensions();
        let peer = extensions
            .get::<TcpConnectInfo>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .and_then(|info| info.remote_addr);
        let activity = peer.and_then(|peer| self.tracker.lock_table().get(&peer).cloned());
        if let Some(activity) = &activity {
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        let busy = Busy {
            _permit: permit,
            activity,
            tracker: self.tracker.clone(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(BusyBody { body, _busy: busy })))
        })
    }
}

/// A response body that holds its request's [`Busy`] until it ends (or is dropped).
struct BusyBody {
    body: tonic::body::Body,
    _busy: Busy,
}

impl http_body::Body for BusyBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Stores that run on after their caller went away (they finish so that their reply is
/// remembered for a retry) are bounded too: a client that sends and resets streams as fast as it
/// can cannot pile up work past [`Limits::max_in_flight`] of them.
#[derive(Clone)]
pub struct Running {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Running {
    /// At most `max` at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
        }
    }

    /// A slot for one more, held until the work ends; RESOURCE_EXHAUSTED when none is free.
    pub fn try_start(&self) -> Result<OwnedSemaphorePermit, tonic::Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "server busy: {} Stores still running (--max-in-flight); retry shortly",
                self.max
            ))
        })
    }
}

/// Runs `work` in the caller's task, and to completion even if the caller stops polling it: when
/// dropped unfinished (the client cancelled, or tonic ended the call at its deadline), the rest of
/// `work` goes on in a task of its own. Cheaper than spawning every piece of work up front (no
/// task, no hand-off back to the caller) with the same guarantee: work once started is never cut
/// off midway.
pub fn run_to_completion<F>(work: F) -> RunToCompletion<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    RunToCompletion {
        work: Some(Box::pin(work)),
    }
}

/// See [`run_to_completion`].
pub struct RunToCompletion<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    work: Option<Pin<Box<F>>>,
}

impl<F> Future for RunToCompletion<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Pending;
        };
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for RunToCompletion<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(work) = self.work.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work left running is bounded: past the bound RESOURCE_EXHAUSTED, and a slot frees when
    /// its work ends.
    #[tokio::test]
    async fn work_dropped_unfinished_still_completes() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        let work = run_to_completion(async move {
            let _ = started_tx.send(());
            let _ = go_rx.await;
            let _ = done_tx.send(7);
            1
        });
        let caller = tokio::spawn(work);
        started_rx.await.unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        go_tx.send(()).unwrap();
        assert_eq!(
            done_rx.await.unwrap(),
            7,
            "the rest ran in a task of its own"
        );
        assert_eq!(run_to_completion(async { 2 }).await, 2);
    }

    #[test]
    fn running_work_is_bounded_and_slots_come_back() {
        let running = Running::new(2);
        let a = running.try_start().unwrap();
        let _b = running.try_start().unwrap();
        let refused = running.try_start().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--max-in-flight"));
        drop(a);
        assert!(running.try_start().is_ok());
    }
}
