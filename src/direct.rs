//! [`Direct`]: a gRPC client transport on the `h2` crate itself, for the headnode's forwards.
//!
//! tonic's `Channel` puts a tower `Buffer` (a worker task and a queue) in front of hyper's
//! client, and hyper sends a streaming request body from a task of its own, after the request's
//! HEADERS frame has gone out on its own. A forward is one unary call with its whole body in hand,
//! on a connection the batcher uses for one call at a time, so none of that is needed: [`Direct`]
//! collects the (already encoded) body, queues HEADERS and DATA together on the `h2` stream, and
//! the connection writes both in one `writev`. The datanode is then woken once per call, not
//! twice, and the headnode spends one syscall, two task hand-offs and a spawn less per forward
//! (BENCHMARKS.md has the figures).
//!
//! What `Channel` did besides, done here too: connecting lazily, and again after the connection
//! broke (the next call dials); a connect timeout; `TCP_NODELAY`; HTTP/2 keep-alive pings (a
//! connection whose peer stops answering is closed, so a call fails fast rather than waiting on a
//! dead peer); mutual TLS with the cluster's CA (ALPN `h2`), with the handshake bounded by
//! [`crate::tls::HANDSHAKE_TIMEOUT`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::tls::Tls;

/// How often a dialled connection is pinged, and how long its pong may take (here and on every
/// tonic channel, [`crate::config::dial`]).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEP_ALIVE_INTERVAL`].
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows, as hyper's client sets them: a batch's reply (up to a few
/// hundred KiB) never waits for a WINDOW_UPDATE.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Why a call on a [`Direct`] connection failed before the datanode answered it.
#[derive(Debug)]
pub struct Error {
    context: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Error {
    fn new(context: impl Into<String>, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            context: context.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.context),
            None => f.write_str(&self.context),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// A lazily dialled HTTP/2 connection to one gRPC server, as a tower service tonic's generated
/// clients can call through (give them [`Direct::origin`] with `with_origin`). Cheap to clone;
/// clones share the connection. Meant for unary calls: a request body is collected before it is
/// sent.
#[derive(Clone)]
pub struct Direct {
    shared: Arc<Shared>,
}

struct Shared {
    /// `host:port`, as dialled and as named in errors.
    address: String,
    origin: Uri,
    connect_timeout: Duration,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The current connection, if one is up, and its number (so a call that found a connection
    /// broken forgets that one, not a newer one); taken out when a call finds it broken.
    connection: Mutex<Current>,
}

#[derive(Default)]
struct Current {
    generation: u64,
    send: Option<h2::client::SendRequest<Bytes>>,
}

impl fmt::Debug for Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("origin", &self.shared.origin)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// A transport to `address` (`host:port`; no connection is made until the first call),
    /// with mutual TLS when `tls` is given (the server must present a certificate of the CA for
    /// `host`).
    pub fn new(
        address: &str,
        connect_timeout: Duration,
        tls: Option<&Tls>,
    ) -> Result<Self, String> {
        crate::config::check_host_port(address)?;
        let scheme = if tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let authority: Authority = address
            .parse()
            .map_err(|e| format!("invalid address {address:?}: {e}"))?;
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("invalid address {address:?}: {e}"))?;
        let tls = match tls {
            None => None,
            Some(tls) => {
                // The certificate names an IPv6 host without the brackets of its URL form.
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| format!("invalid host in {address:?}: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(tls.rustls_client()), name))
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                address: address.to_string(),
                origin,
                connect_timeout,
                tls,
                connection: Mutex::default(),
            }),
        })
    }

    /// The URI to give a tonic client's `with_origin`: scheme and authority of the server.
    pub fn origin(&self) -> Uri {
        self.shared.origin.clone()
    }
}

impl Shared {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        // Plain replacements under the lock: a poisoned lock still holds a sound value.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection ready for a new stream, and its number: the current one, or a new one when
    /// there is none, or when the current one turns out to have closed since its last call
    /// (the peer restarted, or went away idle): nothing was sent on it, so dialling again is safe.
    async fn ready(&self) -> Result<(u64, h2::client::SendRequest<Bytes>), Error> {
        let current = {
            let current = self.current();
            current.send.clone().map(|send| (current.generation, send))
        };
        if let Some((generation, send)) = current {
            match send.ready().await {
                Ok(send) => return Ok((generation, send)),
                Err(e) => {
                    tracing::debug!(address = %self.address, error = %e, "connection closed; dialling again");
                    self.forget(generation);
                }
            }
        }
        let send = self.dial().await?;
        let generation = {
            let mut current = self.current();
            current.generation += 1;
            current.send = Some(send.clone());
            current.generation
        };
        match send.ready().await {
            Ok(send) => Ok((generation, send)),
            Err(e) => {
                self.forget(generation);
                Err(Error::new(
                    format!("the connection to {} failed", self.address),
                    e,
                ))
            }
        }
    }

    /// Forgets connection number `generation` if it is still the current one, so the next call
    /// dials.
    fn forget(&self, generation: u64) {
        let mut current = self.current();
        if current.generation == generation {
            current.send = None;
        }
    }

    async fn dial(&self) -> Result<h2::client::SendRequest<Bytes>, Error> {
        let address = &self.address;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                Error::new(
                    format!("cannot connect to {address}"),
                    format!(
                        "no connection within {}",
                        humantime::format_duration(self.connect_timeout)
                    ),
                )
            })?
            .map_err(|e| Error::new(format!("cannot connect to {address}"), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| Error::new(format!("cannot set TCP_NODELAY to {address}"), e))?;
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(
                    crate::tls::HANDSHAKE_TIMEOUT,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| {
                    Error::new(
                        format!("TLS handshake with {address} failed"),
                        "it did not finish in time",
                    )
                })?
                .map_err(|e| Error::new(format!("TLS handshake with {address} failed"), e))?;
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<h2::client::SendRequest<Bytes>, Error>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| Error::new(format!("HTTP/2 handshake with {} failed", self.address), e))?;
        let pings = connection.ping_pong();
        let address = self.address.clone();
        tokio::spawn(async move {
            // The connection ends when the peer closes it, on an I/O error, when every handle
            // to it is gone, or when a ping goes unanswered.
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%address, error = %e, "connection closed");
                    }
                }
                () = keep_alive(pings) => {
                    tracing::debug!(%address, "no pong within {KEEP_ALIVE_TIMEOUT:?}: connection closed");
                }
            }
        });
        Ok(send)
    }
}

/// Pings every [`KEEP_ALIVE_INTERVAL`]; returns when a pong does not come within
/// [`KEEP_ALIVE_TIMEOUT`] (or pings cannot be sent).
async fn keep_alive(pings: Option<h2::PingPong>) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

impl tower::Service<Request<tonic::body::Body>> for Direct {
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Readiness is the connection's, found out in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // A unary call's body is one encoded message, ready at once.
            let body = body
                .collect()
                .await
                .map_err(|e| Error::new("cannot encode the request", e))?
                .to_bytes();
            let request = Request::from_parts(parts, ());
            let (generation, connection) = shared.ready().await?;
            send(&shared.address, connection, request, body)
                .await
                .map_err(|failure| {
                    if !failure.stream_only {
                        shared.forget(generation);
                    }
                    failure.error
                })
        })
    }
}

/// A failed call, and whether only its stream failed (a reset), not the connection.
struct Failure {
    error: Error,
    stream_only: bool,
}

/// One request on `connection` (ready for it).
async fn send(
    address: &str,
    mut connection: h2::client::SendRequest<Bytes>,
    request: Request<()>,
    body: Bytes,
) -> Result<Response<ResponseBody>, Failure> {
    // The context is formatted only when a call fails: this runs once per forward.
    let broken = |what: &'static str| {
        move |e: h2::Error| Failure {
            stream_only: e.is_reset() && !e.is_go_away(),
            error: Error::new(format!("{what} {address}"), e),
        }
    };
    let (response, mut stream) = connection
        .send_request(request, body.is_empty())
        .map_err(broken("cannot send a request to"))?;
    if !body.is_empty() {
        // Queued with the HEADERS frame: both go out in the connection's next write. h2 keeps
        // what the peer's flow-control window does not take yet; that is bounded by the caller
        // (the batcher sends one call of at most 1 MiB of messages at a time on a connection).
        stream
            .send_data(body, true)
            .map_err(broken("cannot send a request to"))?;
    }
    let response = response.await.map_err(broken("no response from"))?;
    let (parts, recv) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        ResponseBody {
            recv,
            state: BodyState::Data,
        },
    ))
}

/// A response's DATA frames, then its trailers, with flow-control window given back as the data
/// is taken.
pub struct ResponseBody {
    recv: h2::RecvStream,
    state: BodyState,
}

#[derive(PartialEq)]
enum BodyState {
    Data,
    Trailers,
    Done,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.state == BodyState::Data {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Only fails if the stream is gone, which the next poll reports.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.state = BodyState::Trailers,
            }
        }
        if this.state == BodyState::Trailers {
            let trailers: Result<Option<HeaderMap>, h2::Error> =
                ready!(this.recv.poll_trailers(cx));
            this.state = BodyState::Done;
            return Poll::Ready(match trailers {
                Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            });
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_tls_names_taken_from_the_host() {
        let tls = || {
            let ca =
                crate::certs::new_ca(crate::certs::Validity::from_now(Duration::from_secs(3600)))
                    .unwrap();
            let id = crate::certs::identity(crate::tls::Role::Headnode, "headnode");
            let pem = crate::certs::issue(
                &ca,
                &id,
                &[],
                crate::certs::Validity::from_now(Duration::from_secs(3600)),
            )
            .unwrap();
            Tls::from_pem(ca.cert.as_bytes(), pem.cert.as_bytes(), pem.key.as_bytes()).unwrap()
        };
        let tls = tls();
        for (address, name) in [
            ("datanode1:6000", "datanode1"),
            ("127.0.0.1:6001", "127.0.0.1"),
            ("[::1]:6001", "::1"),
        ] {
            let direct = Direct::new(address, Duration::from_secs(1), Some(&tls)).unwrap();
            let (_, server_name) = direct.shared.tls.as_ref().unwrap();
            assert_eq!(server_name.to_str(), name, "{address}");
            assert_eq!(direct.shared.origin.scheme_str(), Some("https"));
            let plain = Direct::new(address, Duration::from_secs(1), None).unwrap();
            assert_eq!(plain.shared.origin.scheme_str(), Some("http"));
        }
        assert!(Direct::new("nohost", Duration::from_secs(1), None).is_err());
        assert!(Direct::new("a:0", Duration::from_secs(1), None).is_err());
    }
}
