//! [`Direct`]: the headnode's forward connection to a datanode. A minimal HTTP/2 client for one
//! unary gRPC method, making one call at a time, on a connection that the calling task drives
//! itself.
//!
//! The headnode's batcher holds each forward connection for one call at a time, and a forward is
//! one request message and one reply. `h2`'s client does much more: many streams on a connection
//! task of its own, each woken in turn, with stream states, priorities and a header encoder
//! general enough for any request. It also runs tonic's codec around it. With it, the forward
//! side cost about 40 % of the headnode's instructions per Store (callgrind, 1 in flight). Here a
//! call is a few steps, all in the caller's task and with no hand-off:
//!
//! - The request's HEADERS frame, made once per connection, goes out with the DATA frames in
//!   one write. The first request puts its fields in the datanode's HPACK table, so later ones
//!   send six bytes of header block.
//! - The reply is read in place from the socket buffer until its stream ends, decoded by
//!   [`crate::hpack`], and the message taken from its DATA.
//!
//! Nothing reads the socket between calls. The next call first takes whatever arrived meanwhile
//! without waiting for more: PING, SETTINGS, WINDOW_UPDATE, GOAWAY or the end of the connection.
//! A connection found closed or going away is dialled again before anything is sent on it. A
//! connection left idle longer than the datanode's keep-alive timeout misses the datanode's PING
//! and is closed by the datanode. The next call then dials again, as after the datanode's idle
//! timeout. A call whose future is dropped midway (the forward timeout) leaves its connection in an
//! unknown state, so the next call dials a new one.
//!
//! What it does of HTTP/2 (RFC 9113): the preface and both sides' SETTINGS; flow control both
//! ways, on the connection and the stream (a request larger than the peer's windows is sent as
//! WINDOW_UPDATEs come, and the windows of replies are given back); PING answered; GOAWAY and
//! RST_STREAM; padding, PRIORITY fields, CONTINUATION. A peer that breaks the protocol ends the
//! connection with an error and no panic: frames larger than 16 KiB (the size this side
//! advertises), header blocks over [`MAX_HEADER_BLOCK`], replies over the caller's limit.
//! Besides that it connects lazily, with a connect timeout, `TCP_NODELAY` and mutual TLS with
//! the cluster's CA (ALPN `h2`, the handshake bounded by [`crate::tls::HANDSHAKE_TIMEOUT`]).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tonic::{Code, Status};

use crate::hpack;
use crate::tls::Tls;

/// How often tonic channels that dial datanodes ping, and how long a pong may take
/// ([`crate::config::dial`]).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEP_ALIVE_INTERVAL`].
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The flow-control windows this side gives the datanode, as hyper's client sets them: a batch's
/// reply (up to a few hundred KiB) never waits for a WINDOW_UPDATE.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// The largest header block (HEADERS and CONTINUATION) taken from a datanode, and the most its
/// fields may decode to.
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;
/// The frame size this side takes (the HTTP/2 default; it does not advertise more).
const MAX_FRAME: usize = 16_384;
/// The most a connection's write buffer keeps between calls.
const KEPT_BUFFER: usize = 64 * 1024;
/// The window the RFC starts every connection and stream with.
const DEFAULT_WINDOW: i64 = 65_535;
/// The largest flow-control window the RFC allows.
const MAX_WINDOW: i64 = (1 << 31) - 1;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The gRPC message prefix: a compressed-flag byte and a big-endian 32-bit length.
const GRPC_PREFIX: usize = 5;
const FRAME_HEAD: usize = 9;

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;
/// The error code of the reset this side sends for a call the peer answered early.
const CANCEL: u32 = 0x8;

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

    fn protocol(text: impl Into<String>) -> Self {
        Self {
            context: text.into(),
            source: None,
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

/// How a call ended without a reply.
#[derive(Debug)]
pub enum CallError {
    /// The datanode answered with this gRPC status.
    Status(Status),
    /// The call failed on its way: no connection, a broken one, a reset stream, a reply that is
    /// not gRPC. The datanode may or may not have taken the request.
    Failed(Error),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
            CallError::Failed(error) => error.fmt(f),
        }
    }
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        CallError::Failed(error)
    }
}

/// A lazily dialled connection to one gRPC server for one unary method (see the module docs).
pub struct Direct {
    /// `host:port`, as dialled and as named in errors.
    address: String,
    connect_timeout: Duration,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The request's fields, as the first request of a connection sends them (literals that the
    /// peer adds to its table) and as the later ones do (those entries, by index); and, for a
    /// peer whose table cannot hold them, literals it does not keep.
    first_block: Vec<u8>,
    indexed_block: Vec<u8>,
    literal_block: Vec<u8>,
    /// The HPACK table room the indexed fields take.
    table_room: usize,
    /// The connection while no call holds it (see [`keep`]); a call takes it out and puts it
    /// back when it is done, so a call dropped midway drops its connection with it.
    parked: Arc<Parked>,
}

type Parked = Mutex<Option<Live>>;

/// How often a parked connection is looked at: PINGs answered, GOAWAY and the end of the
/// connection noticed. Well under the keep-alive timeout of a datanode (10 s by default), and
/// short enough that a datanode shutting down gracefully (GOAWAY, then a PING it waits for)
/// is let go at once.
pub const KEEPER_INTERVAL: Duration = Duration::from_millis(100);

impl fmt::Debug for Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("address", &self.address)
            .field("connected", &lock(&self.parked).is_some())
            .finish_non_exhaustive()
    }
}

/// Plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection.
struct Live {
    /// Held while the connection lives: its keeper stops when this is gone.
    alive: Arc<()>,
    io: Io,
    /// Bytes read and not yet taken as frames.
    read: BytesMut,
    /// The frames of the write under way.
    write: BytesMut,
    state: Connection,
}

/// What a connection knows besides its buffers.
struct Connection {
    /// Frames owed to the peer (acknowledgements, window updates, resets): sent with the next
    /// write, or before waiting to read if `urgent`.
    out: BytesMut,
    urgent: bool,
    decoder: hpack::Decoder,
    /// A header block being gathered from HEADERS and CONTINUATION frames: its stream, whether
    /// the HEADERS frame ended the stream, and the fragments so far.
    continuation: Option<(u32, bool)>,
    block: Vec<u8>,
    /// The next stream's id (odd, rising).
    next_stream: u32,
    /// What the peer lets this side send: on the connection, and on each new stream.
    send_window: i64,
    initial_send_window: i64,
    max_frame: usize,
    max_streams: u32,
    /// The connection window this side has left to the peer, and how much of what it used is
    /// not yet given back.
    recv_window: i64,
    unreleased: i64,
    /// Whether the peer's HPACK table holds the request's fields (the first request put them
    /// there); whether it cannot (its table is too small); a size update owed to its table.
    indexed: bool,
    literal_only: bool,
    size_update: Option<usize>,
    /// The last stream the peer said it will process (GOAWAY), if it is going away.
    goaway: Option<u32>,
}

/// The call under way on a connection: its stream and what has come back on it.
struct Call {
    stream: u32,
    send_window: i64,
    recv_window: i64,
    unreleased: i64,
    /// The reply's HTTP status, once its headers came.
    http_status: Option<u16>,
    /// `grpc-status` and `grpc-message`, from the trailers (or a trailers-only reply).
    grpc_status: Option<i32>,
    grpc_message: Option<String>,
    body: BytesMut,
    max_body: usize,
    /// The peer ended the stream (END_STREAM).
    ended: bool,
    /// The stream failed (reset, or broke the protocol); the connection may go on.
    failed: Option<Error>,
}

impl Call {
    fn finished(&self) -> bool {
        self.ended || self.failed.is_some()
    }
}

impl Direct {
    /// A connection to `address` (`host:port`; nothing is dialled until the first call) for the
    /// method at `path` (`/package.Service/Method`), with mutual TLS when `tls` is given (the
    /// server must present a certificate of the CA for `host`).
    pub fn new(
        address: &str,
        path: &str,
        connect_timeout: Duration,
        tls: Option<&Tls>,
    ) -> Result<Self, String> {
        crate::config::check_host_port(address)?;
        let authority: http::uri::Authority = address
            .parse()
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
        // :method POST and :scheme from the static table, then :path, :authority,
        // content-type and te, in that order. Inserted by the first request (literals with
        // incremental indexing), they are entries 65, 64, 63 and 62 of the peer's table.
        let scheme = if tls.is_some() { 0x87 } else { 0x86 };
        let fields: [(usize, &[u8], &[u8]); 4] = [
            (4, b":path", path.as_bytes()),
            (1, b":authority", address.as_bytes()),
            (31, b"content-type", b"application/grpc"),
            (0, b"te", b"trailers"),
        ];
        let mut first_block = vec![0x83, scheme];
        let mut literal_block = vec![0x83, scheme];
        let mut table_room = 0;
        for (index, name, value) in fields {
            for (block, flags, prefix) in [(&mut first_block, 0x40, 6), (&mut literal_block, 0, 4)]
            {
                hpack::put_integer(block, flags, prefix, index);
                if index == 0 {
                    hpack::put_string(block, name);
                }
                hpack::put_string(block, value);
            }
            table_room += name.len() + value.len() + 32;
        }
        Ok(Self {
            address: address.to_string(),
            connect_timeout,
            tls,
            first_block,
            indexed_block: vec![0x83, scheme, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62],
            literal_block,
            table_room,
            parked: Arc::default(),
        })
    }

    /// Where this connection goes, `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether a connection is up and can take the next call, after taking in what arrived on
    /// it since the last one; one that closed or is going away is let go here.
    pub fn is_connected(&mut self) -> bool {
        let mut parked = lock(&self.parked);
        if let Some(live) = parked.as_mut()
            && (live.take_arrived().is_err() || !live.can_open())
        {
            *parked = None;
        }
        parked.is_some()
    }

    /// One call: `request` sent, the reply (of at most `max_reply` bytes) decoded. Dials first if
    /// there is no connection, or if the one there closed or is going away.
    pub async fn unary<Req: Message, Rep: Message + Default>(
        &mut self,
        request: &Req,
        max_reply: usize,
    ) -> Result<Rep, CallError> {
        let mut live = self.take_or_dial().await?;
        let result = call(
            &mut live,
            &self.address,
            [&self.first_block, &self.indexed_block, &self.literal_block],
            self.table_room,
            request,
            max_reply,
        )
        .await;
        match result {
            Ok(call) => {
                self.park(live);
                finish(call)
            }
            Err(failure) => {
                if failure.stream_only {
                    self.park(live);
                }
                Err(failure.error.into())
            }
        }
    }

    /// The parked connection if it can take a stream (after taking in what arrived since its
    /// last call), or a new one.
    async fn take_or_dial(&mut self) -> Result<Live, Error> {
        let parked = lock(&self.parked).take();
        if let Some(mut live) = parked {
            if live.take_arrived().is_ok() && live.can_open() {
                return Ok(live);
            }
            tracing::debug!(address = %self.address, "forward connection closed or going away; dialling again");
        }
        let live = self.dial().await?;
        if !live.can_open() {
            return Err(Error::protocol(format!(
                "{} allows no streams on a new connection",
                self.address
            )));
        }
        tokio::spawn(keep(
            Arc::downgrade(&self.parked),
            Arc::downgrade(&live.alive),
        ));
        Ok(live)
    }

    /// Puts a connection back for the next call, unless it can take no more.
    fn park(&self, live: Live) {
        if live.can_open() {
            *lock(&self.parked) = Some(live);
        }
    }

    async fn dial(&self) -> Result<Live, Error> {
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
        let io = match &self.tls {
            None => Io::Plain(tcp),
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
                Io::Tls(Box::new(tls))
            }
        };
        // The preface goes out with the first request, in its write.
        let mut out = BytesMut::with_capacity(256);
        out.extend_from_slice(PREFACE);
        put_head(&mut out, 12, SETTINGS, 0, 0);
        for (id, value) in [(0x2u16, 0u32), (0x4, STREAM_WINDOW)] {
            out.put_u16(id);
            out.put_u32(value);
        }
        put_window_update(&mut out, 0, CONNECTION_WINDOW - DEFAULT_WINDOW as u32);
        Ok(Live {
            alive: Arc::new(()),
            io,
            read: BytesMut::with_capacity(MAX_FRAME + FRAME_HEAD),
            write: BytesMut::with_capacity(MAX_FRAME + FRAME_HEAD),
            state: Connection {
                out,
                urgent: false,
                decoder: hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE),
                continuation: None,
                block: Vec::new(),
                next_stream: 1,
                send_window: DEFAULT_WINDOW,
                initial_send_window: DEFAULT_WINDOW,
                max_frame: MAX_FRAME,
                max_streams: u32::MAX,
                recv_window: i64::from(CONNECTION_WINDOW),
                unreleased: 0,
                indexed: false,
                literal_only: false,
                size_update: None,
                goaway: None,
            },
        })
    }
}

/// A call that failed, and whether only its stream did (the connection can carry the next).
struct Failure {
    error: Error,
    stream_only: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            stream_only: false,
        }
    }
}

/// Sends `request` on a new stream of `live` and reads until the reply has ended.
async fn call<Req: Message>(
    live: &mut Live,
    address: &str,
    [first_block, indexed_block, literal_block]: [&Vec<u8>; 3],
    table_room: usize,
    request: &Req,
    max_reply: usize,
) -> Result<Call, Failure> {
    let state = &mut live.state;
    let stream = state.next_stream;
    // Stream ids run out after about a billion calls: this is the connection's last one.
    state.next_stream = state.next_stream.saturating_add(2);
    let mut call = Call {
        stream,
        send_window: state.initial_send_window,
        recv_window: i64::from(STREAM_WINDOW),
        unreleased: 0,
        http_status: None,
        grpc_status: None,
        grpc_message: None,
        body: BytesMut::new(),
        max_body: max_reply.saturating_add(GRPC_PREFIX),
        ended: false,
        failed: None,
    };

    // HEADERS, after whatever the connection owes the peer.
    live.write.clear();
    live.stage_owed();
    let (state, write) = (&mut live.state, &mut live.write);
    let mut block: Vec<u8> = Vec::new();
    if let Some(size) = state.size_update.take() {
        hpack::put_integer(&mut block, 0x20, 5, size);
    }
    let fields = if state.literal_only {
        literal_block
    } else if state.indexed {
        indexed_block
    } else {
        state.indexed = table_room <= hpack::DEFAULT_TABLE_SIZE;
        if state.indexed {
            first_block
        } else {
            state.literal_only = true;
            literal_block
        }
    };
    put_head(
        write,
        block.len() + fields.len(),
        HEADERS,
        END_HEADERS,
        stream,
    );
    write.extend_from_slice(&block);
    write.extend_from_slice(fields);

    // DATA: the message encoded in place after its frame head and gRPC prefix; the usual
    // request fits one frame and the windows, and goes out with the HEADERS in one write.
    let at = write.len();
    write.put_bytes(0, FRAME_HEAD + GRPC_PREFIX);
    request
        .encode(write)
        .map_err(|e| Error::new("cannot encode the request", e))?;
    let message = write.len() - at - FRAME_HEAD - GRPC_PREFIX;
    let message_len = u32::try_from(message)
        .map_err(|_| Error::protocol(format!("a request of {message} bytes is too large")))?;
    write[at + FRAME_HEAD + 1..at + FRAME_HEAD + GRPC_PREFIX]
        .copy_from_slice(&message_len.to_be_bytes());
    let body_len = message + GRPC_PREFIX;
    let room = state.send_window.min(call.send_window);
    if body_len <= state.max_frame && i64::try_from(body_len).is_ok_and(|n| n <= room) {
        write[at..at + FRAME_HEAD].copy_from_slice(&head(body_len, DATA, END_STREAM, stream));
        state.send_window -= body_len as i64;
        call.send_window -= body_len as i64;
        live.send(address).await?;
    } else {
        // Larger than a frame or the windows: sent in frames as the windows allow.
        let body = write.split_off(at + FRAME_HEAD).freeze();
        write.truncate(at);
        let mut sent = 0;
        loop {
            // Owed frames first: an acknowledgement of the peer's SETTINGS may be what gives
            // the stream its window, and must reach the peer before the DATA that uses it.
            live.stage_owed();
            let state = &mut live.state;
            let room = state.send_window.min(call.send_window).max(0) as usize;
            let mut room = room.min(body.len() - sent);
            while room > 0 {
                let chunk = room.min(state.max_frame);
                let last = sent + chunk == body.len();
                put_head(
                    &mut live.write,
                    chunk,
                    DATA,
                    if last { END_STREAM } else { 0 },
                    stream,
                );
                live.write.extend_from_slice(&body[sent..sent + chunk]);
                sent += chunk;
                room -= chunk;
                state.send_window -= chunk as i64;
                call.send_window -= chunk as i64;
            }
            live.send(address).await?;
            if sent == body.len() {
                break;
            }
            live.read_until(address, &mut call, |call, state| {
                call.finished() || state.send_window.min(call.send_window) > 0
            })
            .await?;
            if call.finished() {
                // The peer answered (or reset the stream) before taking the whole request; an
                // answer leaves this side of the stream open, so it is closed here.
                if call.failed.is_none() {
                    put_reset(&mut live.state.out, stream, CANCEL);
                }
                break;
            }
        }
    }

    live.read_until(address, &mut call, |call, _| call.finished())
        .await?;
    if live.state.urgent {
        // Acknowledgements the peer waits for, not left until the next call.
        live.stage_owed();
        live.send(address).await?;
    }
    if let Some(error) = call.failed.take() {
        return Err(Failure {
            error,
            stream_only: true,
        });
    }
    Ok(call)
}

/// The reply of a finished call: its message, or the status it carries.
fn finish<Rep: Message + Default>(call: Call) -> Result<Rep, CallError> {
    match call.grpc_status {
        Some(0) => {}
        Some(code) => {
            return Err(CallError::Status(Status::new(
                Code::from_i32(code),
                call.grpc_message.unwrap_or_default(),
            )));
        }
        None => {
            return Err(match call.http_status {
                Some(200) | None => {
                    CallError::Failed(Error::protocol("the reply ended without a grpc-status"))
                }
                Some(http) => CallError::Status(Status::new(
                    http_code(http),
                    format!("the reply's HTTP status is {http}, with no grpc-status"),
                )),
            });
        }
    }
    let body = &call.body[..];
    if body.len() < GRPC_PREFIX {
        return Err(Error::protocol("the reply holds no message").into());
    }
    if body[0] != 0 {
        return Err(Error::protocol(format!(
            "the reply's message has compressed-flag {}, and no compression was asked for",
            body[0]
        ))
        .into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let Some(message) = body.get(GRPC_PREFIX..GRPC_PREFIX + len) else {
        return Err(Error::protocol("the reply ends inside its message").into());
    };
    Rep::decode(message).map_err(|e| Error::new("cannot decode the reply", e).into())
}

/// Looks after a parked connection every [`KEEPER_INTERVAL`] until it is gone: takes in what
/// the peer sent (answering PING and SETTINGS at once, without waiting on the socket) and lets
/// the connection go when it ended or the peer is going away, so a datanode that closes it
/// (its idle timeout, or shutting down gracefully) is not kept waiting for this side.
async fn keep(parked: Weak<Parked>, alive: Weak<()>) {
    let mut tick = tokio::time::interval(KEEPER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(parked), Some(alive)) = (parked.upgrade(), alive.upgrade()) else {
            return;
        };
        let mut slot = lock(&parked);
        // Not parked (a call holds it), or parked and another connection's.
        let Some(live) = slot
            .as_mut()
            .filter(|live| Arc::ptr_eq(&live.alive, &alive))
        else {
            continue;
        };
        if live.take_arrived().is_err() || !live.can_open() || live.try_send_owed().is_err() {
            *slot = None;
            return;
        }
    }
}

fn lock(parked: &Parked) -> std::sync::MutexGuard<'_, Option<Live>> {
    // Only whole values are stored under the lock: a poisoned one still holds a sound value.
    parked.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The gRPC code of an HTTP status that came without a grpc-status (gRPC's
/// "HTTP to gRPC Status Code Mapping").
fn http_code(http: u16) -> Code {
    match http {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

impl Live {
    /// Whether a new stream may open here: the peer is not going away, allows streams, and ids
    /// are left.
    fn can_open(&self) -> bool {
        let state = &self.state;
        state.goaway.is_none() && state.max_streams > 0 && state.next_stream < 1 << 31
    }

    /// Writes what the connection owes the peer as far as the socket takes it now, without
    /// waiting (a parked connection's acknowledgements: a few bytes into an idle socket).
    fn try_send_owed(&mut self) -> io::Result<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while !self.state.out.is_empty() {
            match Pin::new(&mut self.io).poll_write(&mut cx, &self.state.out) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.state.out.advance(n),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        self.state.urgent = false;
        match Pin::new(&mut self.io).poll_flush(&mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves the frames owed to the peer into the write being made (after what is there).
    fn stage_owed(&mut self) {
        self.write.extend_from_slice(&self.state.out);
        self.state.out.clear();
        self.state.urgent = false;
    }

    /// Writes `self.write` whole.
    async fn send(&mut self, address: &str) -> Result<(), Error> {
        let result = async {
            self.io.write_all(&self.write).await?;
            self.io.flush().await
        }
        .await;
        self.write.clear();
        // A large batch's buffer is not kept for the small calls after it.
        if self.write.capacity() > KEPT_BUFFER {
            self.write = BytesMut::with_capacity(MAX_FRAME + FRAME_HEAD);
        }
        result.map_err(|e| Error::new(format!("cannot send to {address}"), e))
    }

    /// Takes in, without waiting, whatever the peer sent since the last call (no call is under
    /// way). Fails if the connection ended or broke.
    fn take_arrived(&mut self) -> Result<(), Error> {
        loop {
            while let Some(len) = frame_len(&self.read)? {
                self.state.frame(&self.read[..FRAME_HEAD + len], None)?;
                self.read.advance(FRAME_HEAD + len);
            }
            self.read.reserve(MAX_FRAME + FRAME_HEAD);
            // One poll, with a waker that does nothing: what is there now, or Pending.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let read = std::pin::pin!(self.io.read_buf(&mut self.read));
            match read.poll(&mut cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => {
                    return Err(Error::protocol("the peer closed the connection"));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(Error::new("the connection broke", e)),
            }
        }
    }

    /// Reads and takes frames until `done(call, connection)` holds, first sending what the
    /// connection owes the peer whenever it is about to wait.
    async fn read_until(
        &mut self,
        address: &str,
        call: &mut Call,
        done: impl Fn(&Call, &Connection) -> bool,
    ) -> Result<(), Error> {
        loop {
            if done(call, &self.state) {
                return Ok(());
            }
            if let Some(len) = frame_len(&self.read)? {
                self.state
                    .frame(&self.read[..FRAME_HEAD + len], Some(call))?;
                self.read.advance(FRAME_HEAD + len);
                continue;
            }
            if !self.state.out.is_empty() {
                self.stage_owed();
                self.send(address).await?;
            }
            self.read.reserve(MAX_FRAME + FRAME_HEAD);
            let n = self
                .io
                .read_buf(&mut self.read)
                .await
                .map_err(|e| Error::new(format!("the connection to {address} broke"), e))?;
            if n == 0 {
                return Err(Error::protocol(format!(
                    "{address} closed the connection before answering"
                )));
            }
        }
    }
}

/// The payload length of the whole frame at the front of `read`, if all of it is there.
fn frame_len(read: &[u8]) -> Result<Option<usize>, Error> {
    if read.len() < FRAME_HEAD {
        return Ok(None);
    }
    let len = usize::from(read[0]) << 16 | usize::from(read[1]) << 8 | usize::from(read[2]);
    if len > MAX_FRAME {
        return Err(Error::protocol(format!(
            "the peer sent a frame of {len} bytes, over the {MAX_FRAME} this side takes"
        )));
    }
    Ok((read.len() >= FRAME_HEAD + len).then_some(len))
}

impl Connection {
    /// Takes one whole frame (head and payload). `call` is the call under way, if any: frames on
    /// its stream go to it. A connection error is returned; a stream error fails the call.
    fn frame(&mut self, frame: &[u8], mut call: Option<&mut Call>) -> Result<(), Error> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEAD..];
        let ours = call
            .as_deref_mut()
            .filter(|c| c.stream == stream && stream != 0);
        if let Some((expected, _)) = self.continuation
            && (kind != CONTINUATION || stream != expected)
        {
            return Err(Error::protocol(
                "the peer sent another frame inside a header block",
            ));
        }
        match kind {
            DATA => {
                if stream == 0 {
                    return Err(Error::protocol("the peer sent DATA on stream 0"));
                }
                // Flow control counts the whole payload, padding included.
                let len = payload.len() as i64;
                self.recv_window -= len;
                if self.recv_window < 0 {
                    return Err(Error::protocol(
                        "the peer sent more DATA than the connection's window",
                    ));
                }
                self.unreleased += len;
                if self.unreleased >= i64::from(CONNECTION_WINDOW / 2) {
                    put_window_update(&mut self.out, 0, self.unreleased as u32);
                    self.recv_window += self.unreleased;
                    self.unreleased = 0;
                }
                let data = unpad(payload, flags)?;
                if let Some(call) = ours {
                    call.data(data, flags & END_STREAM != 0, len, &mut self.out);
                }
            }
            HEADERS => {
                if stream == 0 {
                    return Err(Error::protocol("the peer sent HEADERS on stream 0"));
                }
                let mut fragment = unpad(payload, flags)?;
                if flags & PRIORITY_FLAG != 0 {
                    fragment = fragment.get(5..).ok_or_else(|| {
                        Error::protocol("a HEADERS frame too short for its priority")
                    })?;
                }
                self.block.clear();
                self.block.extend_from_slice(fragment);
                if flags & END_HEADERS == 0 {
                    self.continuation = Some((stream, flags & END_STREAM != 0));
                } else {
                    self.headers(stream, flags & END_STREAM != 0, ours)?;
                }
            }
            CONTINUATION => {
                let Some((_, end_stream)) = self.continuation else {
                    return Err(Error::protocol(
                        "the peer sent CONTINUATION after no HEADERS",
                    ));
                };
                if self.block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(Error::protocol(format!(
                        "the peer sent a header block over {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                self.block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.continuation = None;
                    self.headers(stream, end_stream, ours)?;
                }
            }
            PRIORITY => {}
            RST_STREAM => {
                let code = payload_u32(payload, "RST_STREAM")?;
                if stream == 0 {
                    return Err(Error::protocol("the peer sent RST_STREAM on stream 0"));
                }
                if let Some(call) = ours
                    && !call.ended
                {
                    call.failed = Some(Error::protocol(format!(
                        "the peer reset the call ({})",
                        error_name(code)
                    )));
                }
            }
            SETTINGS => self.settings(stream, flags, payload, call)?,
            PUSH_PROMISE => {
                return Err(Error::protocol(
                    "the peer pushed a stream, which this side disabled",
                ));
            }
            PING => {
                if stream != 0 || payload.len() != 8 {
                    return Err(Error::protocol("the peer sent a malformed PING"));
                }
                if flags & ACK == 0 {
                    put_head(&mut self.out, 8, PING, ACK, 0);
                    self.out.extend_from_slice(payload);
                    self.urgent = true;
                }
            }
            GOAWAY => {
                if stream != 0 || payload.len() < 8 {
                    return Err(Error::protocol("the peer sent a malformed GOAWAY"));
                }
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                self.goaway = Some(last);
                if let Some(call) = call
                    && call.stream > last
                    && !call.finished()
                {
                    call.failed = Some(Error::protocol(format!(
                        "the peer is closing the connection ({}) and did not take the call",
                        error_name(code)
                    )));
                }
            }
            WINDOW_UPDATE => {
                let increment = i64::from(payload_u32(payload, "WINDOW_UPDATE")? & 0x7fff_ffff);
                if stream == 0 {
                    if increment == 0 {
                        return Err(Error::protocol("the peer sent a WINDOW_UPDATE of 0"));
                    }
                    self.send_window += increment;
                    if self.send_window > MAX_WINDOW {
                        return Err(Error::protocol(
                            "the peer's WINDOW_UPDATE overflows the connection's window",
                        ));
                    }
                } else if let Some(call) = ours {
                    call.send_window += increment;
                    if increment == 0 || call.send_window > MAX_WINDOW {
                        call.failed = Some(Error::protocol(
                            "the peer sent a bad WINDOW_UPDATE for the call",
                        ));
                    }
                }
            }
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => {}
        }
        Ok(())
    }

    /// A whole header block on `stream`: decoded (always, to keep the HPACK table in step), and
    /// given to the call if it is the call's.
    fn headers(
        &mut self,
        stream: u32,
        end_stream: bool,
        call: Option<&mut Call>,
    ) -> Result<(), Error> {
        if stream % 2 == 0 {
            return Err(Error::protocol(
                "the peer sent headers on a stream it may not open",
            ));
        }
        let mut has_status = false;
        let (mut grpc_status, mut grpc_message) = (None, None);
        let mut http_status = None;
        let mut bad = false;
        let block = std::mem::take(&mut self.block);
        let decoded = self
            .decoder
            .decode(&block, MAX_HEADER_BLOCK, |name, value| match name {
                b":status" => {
                    has_status = true;
                    http_status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u16>().ok());
                    bad |= http_status.is_none();
                }
                b"grpc-status" => {
                    grpc_status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<i32>().ok());
                    bad |= grpc_status.is_none();
                }
                b"grpc-message" => grpc_message = Some(percent_decode(value)),
                _ => {}
            });
        self.block = block;
        decoded.map_err(|e| Error::new("cannot decode the peer's headers", e))?;
        let Some(call) = call else { return Ok(()) };
        if call.finished() {
            return Ok(());
        }
        if bad {
            call.failed = Some(Error::protocol(
                "the reply has a malformed :status or grpc-status",
            ));
            return Ok(());
        }
        if call.http_status.is_none() {
            // The reply's headers (a trailers-only reply ends the stream with them).
            if !has_status {
                call.failed = Some(Error::protocol("the reply has no :status"));
                return Ok(());
            }
            call.http_status = http_status;
        } else if !end_stream {
            call.failed = Some(Error::protocol(
                "the reply's trailers do not end the stream",
            ));
            return Ok(());
        }
        if grpc_status.is_some() {
            call.grpc_status = grpc_status;
            call.grpc_message = grpc_message;
        }
        call.ended = end_stream;
        Ok(())
    }

    fn settings(
        &mut self,
        stream: u32,
        flags: u8,
        payload: &[u8],
        call: Option<&mut Call>,
    ) -> Result<(), Error> {
        if stream != 0 {
            return Err(Error::protocol("the peer sent SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(Error::protocol(
                    "the peer sent a SETTINGS acknowledgement with a payload",
                ));
            }
            return Ok(());
        }
        if payload.len() % 6 != 0 {
            return Err(Error::protocol("the peer sent a malformed SETTINGS frame"));
        }
        let mut call = call;
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                // The room the peer's decoder gives this side's fields: a size update is owed,
                // and the fields go as literals it does not keep if they do not fit.
                0x1 => {
                    let size = value as usize;
                    self.size_update = Some(size.min(hpack::DEFAULT_TABLE_SIZE));
                    if size < hpack::DEFAULT_TABLE_SIZE {
                        self.size_update = Some(0);
                        self.indexed = false;
                        self.literal_only = true;
                    }
                }
                0x2 if value > 1 => {
                    return Err(Error::protocol("the peer sent a bad SETTINGS_ENABLE_PUSH"));
                }
                0x3 => self.max_streams = value,
                0x4 => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(Error::protocol(
                            "the peer sent a window over the largest allowed",
                        ));
                    }
                    // A change applies to the open stream too.
                    if let Some(call) = call.as_deref_mut() {
                        call.send_window += value - self.initial_send_window;
                        if call.send_window > MAX_WINDOW {
                            call.failed = Some(Error::protocol(
                                "the peer's window change overflows the call's",
                            ));
                        }
                    }
                    self.initial_send_window = value;
                }
                0x5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(Error::protocol(
                            "the peer sent a bad SETTINGS_MAX_FRAME_SIZE",
                        ));
                    }
                    self.max_frame = value as usize;
                }
                _ => {}
            }
        }
        put_head(&mut self.out, 0, SETTINGS, ACK, 0);
        self.urgent = true;
        Ok(())
    }
}

impl Call {
    /// A DATA frame's `data` (of a frame of `len` bytes, padding included) on the call's stream.
    fn data(&mut self, data: &[u8], end_stream: bool, len: i64, out: &mut BytesMut) {
        if self.finished() {
            return;
        }
        self.recv_window -= len;
        if self.recv_window < 0 {
            self.failed = Some(Error::protocol(
                "the peer sent more DATA than the call's window",
            ));
            return;
        }
        if self.http_status.is_none() {
            self.failed = Some(Error::protocol(
                "the peer sent DATA before the reply's headers",
            ));
            return;
        }
        if self.body.len() + data.len() > self.max_body {
            self.failed = Some(Error::protocol(format!(
                "the reply is larger than the {} bytes this call takes",
                self.max_body - GRPC_PREFIX
            )));
            return;
        }
        self.body.extend_from_slice(data);
        self.ended = end_stream;
        self.unreleased += len;
        if !end_stream && self.unreleased >= i64::from(STREAM_WINDOW / 2) {
            put_window_update(out, self.stream, self.unreleased as u32);
            self.recv_window += self.unreleased;
            self.unreleased = 0;
        }
    }
}

/// A DATA or HEADERS payload without its padding.
fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], Error> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or_else(|| Error::protocol("a padded frame with no pad length"))?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
        .ok_or_else(|| Error::protocol("a frame's padding is longer than the frame"))
}

fn payload_u32(payload: &[u8], what: &str) -> Result<u32, Error> {
    <[u8; 4]>::try_from(payload)
        .map(u32::from_be_bytes)
        .map_err(|_| Error::protocol(format!("the peer sent a malformed {what}")))
}

/// `grpc-message`'s percent-encoding undone (gRPC's spec; invalid escapes are kept as they are).
fn percent_decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if value[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                value.get(i + 1).copied().and_then(hex),
                value.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name of an HTTP/2 error code (RFC 9113 §7).
fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("error code {code:#x}"), |name| name.to_string())
}

/// A frame head: a payload of `len` bytes (at most the peer's frame size, under 2^24).
fn head(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; FRAME_HEAD] {
    let [_, l0, l1, l2] = (len as u32).to_be_bytes();
    let [s0, s1, s2, s3] = stream.to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&head(len, kind, flags, stream));
}

fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.put_u32(increment);
}

fn put_reset(out: &mut BytesMut, stream: u32, code: u32) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.put_u32(code);
}

#[cfg(test)]
mod tests {
    //! The client against a fake server that writes its frames by hand: what a well-behaved
    //! datanode never sends but HTTP/2 allows (padding, PRIORITY fields, CONTINUATION, PING in
    //! the middle of a reply, a smaller HPACK table, resets, GOAWAY), and what breaks the
    //! protocol. `tests/direct.rs` runs the client against a real datanode.

    use super::*;
    use crate::pb::{StoreBatchReply, StoreBatchRequest, StoreReply, StoreResult};
    use tokio::net::TcpListener;

    const PATH: &str = "/registro.v1.Datanode/StoreBatch";

    /// A server's view of one request: its stream, its header fields and its body.
    struct Request {
        stream: u32,
        block: Vec<u8>,
        fields: Vec<(String, String)>,
        body: Vec<u8>,
    }

    /// The server side of one connection, with its own HPACK decoder for the client's blocks.
    struct Peer {
        socket: TcpStream,
        decoder: hpack::Decoder,
    }

    impl Peer {
        async fn accept(listener: &TcpListener) -> Peer {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            socket.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface[..], PREFACE);
            Peer {
                socket,
                decoder: hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            }
        }

        async fn frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
            let mut head = [0u8; FRAME_HEAD];
            self.socket.read_exact(&mut head).await.ok()?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0; len];
            self.socket.read_exact(&mut payload).await.ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
            Some((head[3], head[4], stream, payload))
        }

        /// Reads frames until a request has ended, skipping the rest (settings, windows, acks).
        async fn request(&mut self) -> Request {
            let mut request = Request {
                stream: 0,
                block: vec![],
                fields: vec![],
                body: vec![],
            };
            while let Some((kind, flags, stream, payload)) = self.frame().await {
                match kind {
                    HEADERS => {
                        assert_eq!(flags & END_HEADERS, END_HEADERS);
                        request.stream = stream;
                        request.block = payload.clone();
                        let mut fields = vec![];
                        self.decoder
                            .decode(&payload, 1 << 16, |n, v| {
                                fields.push((
                                    String::from_utf8_lossy(n).into_owned(),
                                    String::from_utf8_lossy(v).into_owned(),
                                ))
                            })
                            .unwrap();
                        request.fields = fields;
                    }
                    DATA => {
                        assert_eq!(stream, request.stream);
                        request.body.extend_from_slice(&payload);
                        if flags & END_STREAM != 0 {
                            return request;
                        }
                    }
                    _ => {}
                }
            }
            panic!("the connection ended before a request");
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.socket.write_all(bytes).await.unwrap();
        }

        /// Reads until a frame of `kind` with `flags`, and returns its payload.
        async fn expect(&mut self, kind: u8, flags: u8) -> Vec<u8> {
            loop {
                let Some((k, f, _, payload)) = self.frame().await else {
                    panic!("the connection ended before frame type {kind}");
                };
                if k == kind && f & flags == flags {
                    return payload;
                }
            }
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = head(payload.len(), kind, flags, stream).to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// A literal field without indexing, name and value as literals.
    fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0];
        hpack::put_string(&mut out, name.as_bytes());
        hpack::put_string(&mut out, value.as_bytes());
        out
    }

    /// `:status 200` (static entry 8) and content-type.
    fn ok_headers() -> Vec<u8> {
        let mut block = vec![0x88];
        block.extend(literal("content-type", "application/grpc"));
        block
    }

    fn grpc_message(reply: &StoreBatchReply) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((reply.encoded_len() as u32).to_be_bytes());
        out.extend(reply.encode_to_vec());
        out
    }

    fn reply(id: &str) -> StoreBatchReply {
        StoreBatchReply {
            results: vec![StoreResult {
                reply: Some(StoreReply {
                    id: id.into(),
                    ..Default::default()
                }),
                code: 0,
                error: String::new(),
            }],
        }
    }

    /// A whole, plain answer on `stream`.
    fn answer(stream: u32, reply: &StoreBatchReply) -> Vec<u8> {
        let mut out = frame(HEADERS, END_HEADERS, stream, &ok_headers());
        out.extend(frame(DATA, 0, stream, &grpc_message(reply)));
        out.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &literal("grpc-status", "0"),
        ));
        out
    }

    async fn listener() -> (TcpListener, Direct) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let direct = Direct::new(&address, PATH, Duration::from_secs(5), None).unwrap();
        (listener, direct)
    }

    fn request() -> StoreBatchRequest {
        StoreBatchRequest::default()
    }

    async fn call(direct: &mut Direct) -> Result<StoreBatchReply, CallError> {
        direct.unary(&request(), 1 << 20).await
    }

    #[tokio::test]
    async fn requests_carry_grpc_fields_then_six_bytes_of_indexes() {
        let (listener, mut direct) = listener().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            let mut blocks = vec![];
            for id in ["a", "b"] {
                let request = peer.request().await;
                assert_eq!(request.body, [0, 0, 0, 0, 0]);
                peer.send(&answer(request.stream, &reply(id))).await;
                blocks.push((request.block, request.fields));
            }
            blocks
        });
        assert_eq!(call(&mut direct).await.unwrap(), reply("a"));
        assert_eq!(call(&mut direct).await.unwrap(), reply("b"));
        let blocks = server.await.unwrap();
        let address = direct.address().to_string();
        let expected: Vec<(String, String)> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", PATH),
            (":authority", &address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(blocks[0].1, expected);
        assert_eq!(blocks[1].1, expected);
        assert_eq!(blocks[1].0, [0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe]);
    }

    #[tokio::test]
    async fn padding_priority_continuation_and_a_ping_midway_are_taken() {
        let (listener, mut direct) = listener().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            let request = peer.request().await;
            let s = request.stream;
            // SETTINGS, then the reply's headers: padded, with a priority, cut in two.
            let mut out = frame(SETTINGS, 0, 0, &[0, 5, 0, 0, 0x80, 0]);
            let headers = ok_headers();
            let mut first = vec![3]; // pad length
            first.extend([0, 0, 0, 0, 7]); // priority: dependency and weight
            first.extend_from_slice(&headers[..4]);
            first.extend([0, 0, 0]);
            out.extend(frame(HEADERS, PADDED | PRIORITY_FLAG, s, &first));
            out.extend(frame(CONTINUATION, END_HEADERS, s, &headers[4..]));
            out.extend(frame(PING, 0, 0, b"12345678"));
            // The message in two DATA frames, the first padded.
            let message = grpc_message(&reply("padded"));
            let mut data = vec![2];
            data.extend_from_slice(&message[..3]);
            data.extend([0, 0]);
            out.extend(frame(DATA, PADDED, s, &data));
            out.extend(frame(DATA, 0, s, &message[3..]));
            // Trailers in a HEADERS frame and a CONTINUATION.
            let trailers = literal("grpc-status", "0");
            out.extend(frame(HEADERS, END_STREAM, s, &trailers[..2]));
            out.extend(frame(CONTINUATION, END_HEADERS, s, &trailers[2..]));
            peer.send(&out).await;
            // Acknowledged in the order they came.
            peer.expect(SETTINGS, ACK).await;
            assert_eq!(peer.expect(PING, ACK).await, b"12345678");
        });
        assert_eq!(call(&mut direct).await.unwrap(), reply("padded"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_with_a_smaller_table_gets_a_size_update_and_literals() {
        let (listener, mut direct) = listener().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            // Table size 0: after the first request, none of its fields can be kept.
            peer.send(&frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 0])).await;
            let first = peer.request().await;
            peer.send(&answer(first.stream, &reply("a"))).await;
            let second = peer.request().await;
            peer.send(&answer(second.stream, &reply("b"))).await;
            let third = peer.request().await;
            peer.send(&answer(third.stream, &reply("c"))).await;
            (first.fields, second, third.block)
        });
        for id in ["a", "b", "c"] {
            assert_eq!(call(&mut direct).await.unwrap(), reply(id));
        }
        let (first, second, third) = server.await.unwrap();
        // A size update to 0 opens the next block, and the fields come as literals.
        assert_eq!(second.block[0], 0x20);
        assert_eq!(second.fields, first);
        assert_eq!(third[..2], [0x83, 0x86]);
        assert_eq!(third[2], 0x04, "{third:x?}");
    }

    #[tokio::test]
    async fn a_reset_fails_the_call_and_the_connection_carries_the_next() {
        let (listener, mut direct) = listener().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            let first = peer.request().await;
            peer.send(&frame(RST_STREAM, 0, first.stream, &7u32.to_be_bytes()))
                .await;
            let second = peer.request().await;
            peer.send(&answer(second.stream, &reply("after"))).await;
            (first.stream, second.stream)
        });
        let error = call(&mut direct).await.unwrap_err();
        assert!(error.to_string().contains("REFUSED_STREAM"), "{error}");
        assert_eq!(call(&mut direct).await.unwrap(), reply("after"));
        assert_eq!(server.await.unwrap(), (1, 3));
    }

    #[tokio::test]
    async fn goaway_before_the_call_fails_it_and_the_next_call_dials_again() {
        let (listener, mut direct) = listener().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            let request = peer.request().await;
            let mut goaway = 0u32.to_be_bytes().to_vec();
            goaway.extend(0u32.to_be_bytes());
            peer.send(&frame(GOAWAY, 0, 0, &goaway)).await;
            assert_eq!(request.stream, 1);
            // A new connection for the next call.
            let mut peer = Peer::accept(&listener).await;
            let request = peer.request().await;
            peer.send(&answer(request.stream, &reply("new"))).await;
        });
        let error = call(&mut direct).await.unwrap_err();
        assert!(
            error.to_string().contains("did not take the call"),
            "{error}"
        );
        assert_eq!(call(&mut direct).await.unwrap(), reply("new"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_parked_connection_answers_pings_and_lets_go_on_goaway() {
        let (listener, mut direct) = listener().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            let request = peer.request().await;
            peer.send(&answer(request.stream, &reply("a"))).await;
            // Idle now: the keeper answers.
            peer.send(&frame(PING, 0, 0, b"idle-pin")).await;
            assert_eq!(peer.expect(PING, ACK).await, b"idle-pin");
            let mut goaway = 1u32.to_be_bytes().to_vec();
            goaway.extend(0u32.to_be_bytes());
            peer.send(&frame(GOAWAY, 0, 0, &goaway)).await;
            // The client closes its side: the read ends.
            while peer.frame().await.is_some() {}
        });
        assert_eq!(call(&mut direct).await.unwrap(), reply("a"));
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the parked connection was not looked after")
            .unwrap();
        assert!(!direct.is_connected());
    }

    #[tokio::test]
    async fn grpc_and_http_errors_come_back_as_statuses() {
        let (listener, mut direct) = listener().await;
        let server = tokio::spawn(async move {
            let mut peer = Peer::accept(&listener).await;
            // Trailers-only, with a percent-encoded message.
            let request = peer.request().await;
            let mut block = ok_headers();
            block.extend(literal("grpc-status", "14"));
            block.extend(literal(
                "grpc-message",
                "datanode%20is%20shutting%20down%25",
            ));
            peer.send(&frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                request.stream,
                &block,
            ))
            .await;
            // An HTTP error with no grpc-status (a proxy's, say).
            let request = peer.request().await;
            let mut block = vec![0x08];
            hpack::put_string(&mut block, b"503");
            peer.send(&frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                request.stream,
                &block,
            ))
            .await;
        });
        match call(&mut direct).await {
            Err(CallError::Status(status)) => {
                assert_eq!(status.code(), Code::Unavailable);
                assert_eq!(status.message(), "datanode is shutting down%");
            }
            other => panic!("{other:?}"),
        }
        match call(&mut direct).await {
            Err(CallError::Status(status)) => assert_eq!(status.code(), Code::Unavailable),
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
    }

    /// Each of these breaks the protocol: the call fails, nothing panics, and the next call
    /// dials a new connection.
    #[tokio::test]
    async fn protocol_violations_fail_the_call_without_a_panic() {
        let block_200 = ok_headers();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("a frame over 16 KiB", head(20_000, DATA, 0, 1).to_vec()),
            ("DATA on stream 0", frame(DATA, 0, 0, b"x")),
            (
                "a push",
                frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]),
            ),
            (
                "an HPACK index past the table",
                frame(HEADERS, END_HEADERS, 1, &[0xff, 0x10]),
            ),
            ("DATA before headers", frame(DATA, END_STREAM, 1, b"xxxxx")),
            ("HTTP/1.1", b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
            ("a reply cut short", {
                let mut out = frame(HEADERS, END_HEADERS, 1, &block_200);
                out.extend(&head(100, DATA, 0, 1));
                out.extend(b"short");
                out
            }),
            ("a reply over the limit", {
                let mut out = frame(HEADERS, END_HEADERS, 1, &block_200);
                for _ in 0..80 {
                    out.extend(frame(DATA, 0, 1, &[0; 16_000]));
                }
                out
            }),
            ("a reply that is not the message", {
                let mut out = frame(HEADERS, END_HEADERS, 1, &block_200);
                out.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]));
                out.extend(frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    1,
                    &literal("grpc-status", "0"),
                ));
                out
            }),
            (
                "a window overflow",
                frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            ),
            (
                "a bad frame size setting",
                frame(SETTINGS, 0, 0, &[0, 5, 0, 0, 0, 1]),
            ),
        ];
        for (case, bytes) in cases {
            let (listener, mut direct) = listener().await;
            let server = tokio::spawn(async move {
                let mut peer = Peer::accept(&listener).await;
                peer.request().await;
                // The client may close the connection before it has taken everything.
                let _ = peer.socket.write_all(&bytes).await;
                let _ = peer.socket.shutdown().await;
                // Hold the connection until the client lets go of it.
                while peer.frame().await.is_some() {}
            });
            let result = tokio::time::timeout(Duration::from_secs(10), call(&mut direct))
                .await
                .unwrap_or_else(|_| panic!("{case}: no answer"));
            assert!(result.is_err(), "{case}: {result:?}");
            // The connection was let go (the fake server's read ended).
            drop(direct);
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .unwrap_or_else(|_| panic!("{case}: connection kept"))
                .unwrap();
        }
    }
}
