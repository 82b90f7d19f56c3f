//! Metrics: one registry per process, the tower layer that records every gRPC call in it, and the
//! small HTTP listener (`--metrics-listen`) that serves it as `GET /metrics` (and, on the
//! headnode, the status page as `GET /`).
//!
//! The gRPC metrics carry go-grpc-prometheus's names and labels, so dashboards and alerts written
//! for Go servers work unchanged: `grpc_server_started_total`, `grpc_server_handled_total` and
//! the histogram `grpc_server_handling_seconds`, each with `grpc_type`, `grpc_service` and
//! `grpc_method` (and `grpc_code` on the handled counter, spelled as grpc-go spells codes). Every
//! method of the services a node serves is known up front (from the protocols' descriptors), so
//! each starts at zero and a request for any other path cannot add series: those are counted
//! under `grpc_service="unknown"`.
//!
//! `/metrics` answers in the format the client asks for: OpenMetrics text (`prometheus-client`'s
//! encoder) when its `Accept` names it, as Prometheus's does; otherwise the classic Prometheus
//! text format 0.0.4 (curl, a browser, older scrapers), converted from it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::Code;

/// Upper bounds (seconds) of `grpc_server_handling_seconds`' buckets: from 100 µs, since a Store
/// takes well under a millisecond on a fast disk, up to the long-lived streams (health Watch).
pub const HANDLING_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The gRPC service of the health protocol.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// The reflection services every server offers.
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// grpc-go's names of the status codes (`codes.Code.String()`), by code number: the values of
/// `grpc_code` in go-grpc-prometheus.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// grpc-go's name of `code`, as `grpc_code` carries it.
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// Labels of the started counter and the histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

/// Labels of the handled counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// The series of one method, looked up once at start so a call only touches atomics (and the
/// histogram's short lock).
#[derive(Debug)]
struct Method {
    /// `/package.Service/Method`, as the request's path says it.
    path: String,
    /// The full service name and the method name, for [`GrpcMetrics::handled`].
    service: String,
    method: String,
    /// `grpc_server_started_total`.
    started: Counter,
    /// `grpc_server_handled_total` by code number.
    handled: [Counter; 17],
    /// `grpc_server_handling_seconds`.
    seconds: Histogram,
}

/// The gRPC metrics of one server: every method of its services, pre-registered.
#[derive(Debug)]
pub struct GrpcMetrics {
    methods: Vec<Method>,
    /// Calls to any path not among `methods`, under one fixed set of labels.
    unknown: Method,
}

/// The families the methods' series live in (the registry holds clones).
struct Families {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Families {
    fn method(&self, grpc_type: &'static str, service: &str, method: &str) -> Method {
        let labels = MethodLabels {
            grpc_type,
            grpc_service: service.to_string(),
            grpc_method: method.to_string(),
        };
        let handled = std::array::from_fn(|code| {
            self.handled.get_or_create_owned(&HandledLabels {
                grpc_type,
                grpc_service: service.to_string(),
                grpc_method: method.to_string(),
                grpc_code: CODE_NAMES[code],
            })
        });
        Method {
            path: format!("/{service}/{method}"),
            service: service.to_string(),
            method: method.to_string(),
            started: self.started.get_or_create_owned(&labels),
            handled,
            seconds: self.seconds.get_or_create_owned(&labels),
        }
    }
}

fn handling_histogram() -> Histogram {
    Histogram::new(HANDLING_BUCKETS)
}

/// Every method of every service in the descriptor sets this crate serves (registro, health,
/// reflection v1 and v1alpha): `(service, method, grpc_type)`.
fn known_methods() -> Vec<(String, String, &'static str)> {
    let sets = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for set in sets {
        // The sets are compiled in; one that does not decode is a build problem, and then the
        // methods in it simply count as unknown.
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                let full = if package.is_empty() {
                    service.name().to_string()
                } else {
                    format!("{package}.{}", service.name())
                };
                for m in &service.method {
                    let grpc_type = match (m.client_streaming(), m.server_streaming()) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    methods.push((full.clone(), m.name().to_string(), grpc_type));
                }
            }
        }
    }
    methods
}

impl GrpcMetrics {
    /// Registers the gRPC metrics in `registry`, with a zero for every code of every method of
    /// `services` (full names, e.g. `registro.v1.Store`).
    pub fn register(registry: &mut Registry, services: &[&str]) -> Arc<Self> {
        let families = Families {
            started: Family::default(),
            handled: Family::default(),
            seconds: Family::new_with_constructor(handling_histogram),
        };
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            families.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            families.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            families.seconds.clone(),
        );
        let methods = known_methods()
            .into_iter()
            .filter(|(service, _, _)| services.contains(&service.as_str()))
            .map(|(service, method, grpc_type)| families.method(grpc_type, &service, &method))
            .collect();
        let unknown = families.method("unknown", "unknown", "unknown");
        Arc::new(Self { methods, unknown })
    }

    /// How many calls of `service`/`method` have completed, by grpc-go code name, codes with
    /// none left out (for the status page).
    pub fn handled(&self, service: &str, method: &str) -> Vec<(&'static str, u64)> {
        self.methods
            .iter()
            .find(|m| m.service == service && m.method == method)
            .map(|m| {
                m.handled
                    .iter()
                    .enumerate()
                    .map(|(code, c)| (CODE_NAMES[code], c.get()))
                    .filter(|(_, n)| *n > 0)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One call being recorded: its method and when it started. Recorded once, with its code, when
/// its status is known; dropped unrecorded, it counts as CANCELLED (the client went away).
struct Call {
    metrics: Arc<GrpcMetrics>,
    /// Index into `metrics.methods`, or `None` for an unknown path.
    method: Option<usize>,
    start: Instant,
    done: bool,
}

impl Call {
    fn start(metrics: &Arc<GrpcMetrics>, path: &str) -> Self {
        let method = metrics.methods.iter().position(|m| m.path == path);
        let call = Self {
            metrics: metrics.clone(),
            method,
            start: Instant::now(),
            done: false,
        };
        call.series().started.inc();
        call
    }

    fn series(&self) -> &Method {
        match self.method {
            Some(i) => &self.metrics.methods[i],
            None => &self.metrics.unknown,
        }
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let series = self.series();
        series.handled[code as usize].inc();
        series.seconds.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The code in a `grpc-status` header or trailer, if there is one.
fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// The tower layer that records every gRPC call a server answers: `Server::builder().layer(..)`.
/// Without metrics (no `--metrics-listen`) it passes calls through and records nothing.
#[derive(Clone, Default)]
pub struct GrpcLayer {
    metrics: Option<Arc<GrpcMetrics>>,
}

impl GrpcLayer {
    /// A layer recording into `metrics`, or recording nothing.
    pub fn new(metrics: Option<Arc<GrpcMetrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = self
            .metrics
            .as_ref()
            .map(|m| Call::start(m, request.uri().path()));
        ResponseFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a recorded call: a status in the headers (a trailers-only response, as
    /// tonic sends for an error) is recorded here; otherwise the body carries the call on.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<RecordedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = status_code(response.headers())
                    && let Some(mut call) = call.take()
                {
                    call.finish(code);
                }
                Ok(response.map(|inner| RecordedBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = &mut call {
                    call.finish(Code::Unknown);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status when the trailers pass through.
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(code) = f.trailers_ref().and_then(status_code) {
                        call.finish(code);
                    }
                }
                // A body that ends or fails without a status: grpc-go's client reads either
                // as UNKNOWN / INTERNAL; UNKNOWN it is.
                Some(Err(_)) | None => call.finish(Code::Unknown),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the metrics listener serves besides `/metrics`: the headnode's status page at `/`.
pub type Page = Box<dyn Fn() -> String + Send + Sync>;

/// How many connections the metrics listener serves at once; more are closed on arrival.
pub const MAX_HTTP_CONNECTIONS: usize = 32;
/// How long a client may take to send a request's headers.
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open (a keep-alive scraper reconnects); past it, the request
/// in flight gets [`HTTP_CLOSE_GRACE`] to finish, for a client too slow to read its answer.
pub const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// See [`HTTP_CONNECTION_LIFETIME`].
pub const HTTP_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The largest request head read (request line and headers).
pub const HTTP_MAX_HEAD_BYTES: usize = 16 * 1024;

/// The content type of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text exposition.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the listener serves: the registry, and the page at `/` if there is one.
struct Site {
    registry: Registry,
    page: Option<Page>,
}

/// A node's metrics listener (`--metrics-listen`), bound, with what it serves.
pub struct MetricsListener {
    listener: TcpListener,
    site: Arc<Site>,
}

impl MetricsListener {
    /// Binds `addr` (with a clear error when it cannot) to serve `registry`, and `page` at `/`.
    pub async fn bind(addr: &str, registry: Registry, page: Option<Page>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for metrics on {addr}: {e}"),
            )
        })?;
        if let Ok(local) = listener.local_addr() {
            if page.is_some() {
                tracing::info!(
                    "serving metrics on http://{local}/metrics and the status page on http://{local}/"
                );
            } else {
                tracing::info!("serving metrics on http://{local}/metrics");
            }
        }
        Ok(Self {
            listener,
            site: Arc::new(Site { registry, page }),
        })
    }

    /// Serves over HTTP/1.1 until `stop` turns true: `GET /metrics`, `GET /` (the page, where
    /// there is one), HEAD of both; 404 for any other path, 405 for other methods.
    pub async fn serve(self, stop: watch::Receiver<bool>) {
        serve_http(self.listener, self.site, stop).await;
    }
}

/// Serves `site` over HTTP/1.1 on `listener` until `stop` turns true: `GET /metrics`, `GET /`
/// (the page, where there is one), HEAD of both; 404 for any other path, 405 for other methods.
async fn serve_http(listener: TcpListener, site: Arc<Site>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        // Reap the connections that have ended, so the set stays as small as the open ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many connections; closing a new one");
            continue;
        };
        let site = site.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            serve_connection(stream, site, stop).await;
            drop(slot);
        });
    }
    connections.shutdown().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    site: Arc<Site>,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request| {
        let response = respond(&site, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_TIMEOUT)
        .max_buf_size(HTTP_MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        // A client that breaks the protocol or goes away is its own business.
        _ = connection.as_mut() => return,
        () = tokio::time::sleep(HTTP_CONNECTION_LIFETIME) => {}
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(HTTP_CLOSE_GRACE, connection).await;
}

/// The answer to one request; never fails.
fn respond(site: &Site, request: &http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let method = request.method();
    if method != http::Method::GET && method != http::Method::HEAD {
        return plain(http::StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n")
            .with_header(http::header::ALLOW, "GET, HEAD");
    }
    match (request.uri().path(), &site.page) {
        ("/metrics", _) => {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, &site.registry).is_err() {
                return plain(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the metrics\n",
                );
            }
            let openmetrics = request
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.as_bytes()
                        .windows(20)
                        .any(|w| w == b"application/openmetr")
                });
            if openmetrics {
                response(http::StatusCode::OK, OPENMETRICS_CONTENT_TYPE, text)
            } else {
                response(
                    http::StatusCode::OK,
                    PROMETHEUS_TEXT_CONTENT_TYPE,
                    prometheus_text(&text),
                )
            }
        }
        ("/", Some(page)) => response(http::StatusCode::OK, "text/html; charset=utf-8", page())
            // The page has no script and no external asset; say so to the browser too.
            .with_header(
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        _ => plain(http::StatusCode::NOT_FOUND, "not found: try /metrics\n"),
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition from
/// `prometheus-client`: a counter family is named with its `_total` (OpenMetrics names it
/// without), and there is no `# EOF` or `# UNIT` line. Samples, histograms and gauges read the
/// same in both.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which says whether the name needs `_total`.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').map_or("", |(_, text)| text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            if let Some(text) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn plain(status: http::StatusCode, text: &'static str) -> http::Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", text.to_string())
}

fn response(
    status: http::StatusCode,
    content_type: &'static str,
    body: String,
) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// Adds a header to a response being built.
trait WithHeader {
    fn with_header(self, name: http::HeaderName, value: &'static str) -> Self;
}

impl WithHeader for http::Response<Full<Bytes>> {
    fn with_header(mut self, name: http::HeaderName, value: &'static str) -> Self {
        self.headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tower::Layer as _;
    use tower::Service as _;

    type TestBody =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn metrics() -> (Registry, Arc<GrpcMetrics>) {
        let mut registry = Registry::default();
        let grpc = GrpcMetrics::register(&mut registry, &[crate::STORE_SERVICE, HEALTH_SERVICE]);
        (registry, grpc)
    }

    fn trailers(code: Code) -> http::HeaderMap {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from(code as i32));
        t
    }

    /// A server answering every call with `headers` and a body of one data frame and then
    /// `trailers` (if any).
    #[derive(Clone)]
    struct Fixed {
        headers: http::HeaderMap,
        trailers: Option<http::HeaderMap>,
    }

    fn server(headers: http::HeaderMap, trailers: Option<http::HeaderMap>) -> Fixed {
        Fixed { headers, trailers }
    }

    impl tower::Service<http::Request<()>> for Fixed {
        type Response = http::Response<TestBody>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<()>) -> Self::Future {
            let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))];
            if let Some(t) = self.trailers.clone() {
                frames.push(Ok(Frame::trailers(t)));
            }
            let mut response = http::Response::new(StreamBody::new(futures::stream::iter(frames)));
            *response.headers_mut() = self.headers.clone();
            std::future::ready(Ok(response))
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    fn handled(grpc: &GrpcMetrics, method: &str) -> Vec<(&'static str, u64)> {
        grpc.handled(crate::STORE_SERVICE, method)
    }

    /// A status in the trailers (a normal unary reply, the end of a stream) is recorded when
    /// the trailers pass, with the call's duration.
    #[tokio::test]
    async fn a_code_in_the_trailers_is_recorded() {
        let (registry, grpc) = metrics();
        let mut service = GrpcLayer::new(Some(grpc.clone()))
            .layer(server(http::HeaderMap::new(), Some(trailers(Code::Ok))));
        let response = service
            .call(request("/registro.v1.Store/Store"))
            .await
            .unwrap();
        assert!(
            handled(&grpc, "Store").is_empty(),
            "nothing is recorded before the trailers"
        );
        let body = response.into_body().collect().await.unwrap();
        assert_eq!(
            body.trailers().map(|t| t["grpc-status"].clone()),
            Some(0.into())
        );
        assert_eq!(handled(&grpc, "Store"), vec![("OK", 1)]);
        let text = exposition(&registry);
        assert!(text.contains(r#"grpc_server_handled_total{grpc_type="unary",grpc_service="registro.v1.Store",grpc_method="Store",grpc_code="OK"} 1"#), "{text}");
        assert!(text.contains(r#"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="registro.v1.Store",grpc_method="Store"} 1"#), "{text}");
        assert!(text.contains(r#"grpc_server_started_total{grpc_type="unary",grpc_service="registro.v1.Store",grpc_method="Store"} 1"#), "{text}");
    }

    /// A status in the response headers (trailers-only, as tonic answers an error) is recorded
    /// at once, and only once.
    #[tokio::test]
    async fn a_code_in_the_headers_is_recorded() {
        let (_registry, grpc) = metrics();
        let mut service =
            GrpcLayer::new(Some(grpc.clone())).layer(server(trailers(Code::InvalidArgument), None));
        let response = service
            .call(request("/registro.v1.Store/Store"))
            .await
            .unwrap();
        assert_eq!(handled(&grpc, "Store"), vec![("InvalidArgument", 1)]);
        response.into_body().collect().await.unwrap();
        assert_eq!(handled(&grpc, "Store"), vec![("InvalidArgument", 1)]);
    }

    /// A stream the client abandons (its body dropped before the trailers) counts as Canceled;
    /// a body that ends without any status counts as Unknown.
    #[tokio::test]
    async fn abandoned_and_statusless_calls_are_recorded() {
        let (_registry, grpc) = metrics();
        let layer = GrpcLayer::new(Some(grpc.clone()));
        let mut service = layer.layer(server(http::HeaderMap::new(), Some(trailers(Code::Ok))));
        let response = service
            .call(request("/registro.v1.Store/List"))
            .await
            .unwrap();
        drop(response);
        assert_eq!(handled(&grpc, "List"), vec![("Canceled", 1)]);

        let mut service = layer.layer(server(http::HeaderMap::new(), None));
        let response = service
            .call(request("/registro.v1.Store/List"))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(
            handled(&grpc, "List"),
            vec![("Canceled", 1), ("Unknown", 1)]
        );
    }

    /// Calls to paths the server does not have all land in one `unknown` series: a client
    /// cannot grow the exposition by inventing method names.
    #[tokio::test]
    async fn unknown_paths_share_one_series() {
        let (registry, grpc) = metrics();
        let before = exposition(&registry).lines().count();
        let mut service =
            GrpcLayer::new(Some(grpc)).layer(server(trailers(Code::Unimplemented), None));
        for i in 0..50 {
            service
                .call(request(&format!("/evil.Service{i}/Method{i}")))
                .await
                .unwrap();
        }
        let text = exposition(&registry);
        assert_eq!(text.lines().count(), before, "no new series");
        assert!(text.contains(r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"} 50"#), "{text}");
    }

    /// Every method of the services served starts at zero for every code, as go-grpc-prometheus
    /// does, with its streaming type from the protocol's descriptor.
    #[test]
    fn every_method_starts_at_zero_with_its_type() {
        let (registry, _grpc) = metrics();
        let text = exposition(&registry);
        for code in CODE_NAMES {
            assert!(text.contains(&format!(r#"grpc_server_handled_total{{grpc_type="server_stream",grpc_service="registro.v1.Store",grpc_method="List",grpc_code="{code}"}} 0"#)), "{code}");
        }
        assert!(text.contains(
            r#"grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch""#
        ));
        assert!(
            !text.contains("registro.v1.Heartbeat"),
            "only the services asked for"
        );
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::Unauthenticated), "Unauthenticated");
    }

    /// The classic text format names counter families with `_total` and drops the OpenMetrics
    /// end marker; everything else is the same.
    #[test]
    fn the_classic_text_format_is_converted_from_openmetrics() {
        let (registry, _grpc) = metrics();
        let openmetrics = exposition(&registry);
        let text = prometheus_text(&openmetrics);
        assert!(text.contains("# TYPE grpc_server_handled_total counter\n"));
        assert!(text.contains("# HELP grpc_server_handled_total Total number of RPCs completed"));
        assert!(text.contains("# TYPE grpc_server_handling_seconds histogram\n"));
        assert!(!text.contains("# EOF"));
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&text), samples(&openmetrics));
    }

    /// Without metrics the layer passes calls and bodies through untouched.
    #[tokio::test]
    async fn without_metrics_the_layer_only_passes_through() {
        let mut service =
            GrpcLayer::new(None).layer(server(http::HeaderMap::new(), Some(trailers(Code::Ok))));
        let body = service
            .call(request("/registro.v1.Store/Store"))
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        assert!(body.trailers().is_some());
    }
}
