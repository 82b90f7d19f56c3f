//! Unary calls served without tonic's router and codec: `registro.v1.Store/Store` on every
//! server, and `registro.v1.Datanode/StoreBatch` on a datanode, the busiest calls of each.
//!
//! tonic routes a request through axum's router, then `Grpc::unary`: a streaming decoder with a
//! buffer of its own, then a streaming encoder with another, around the handler. For one request
//! message and one reply, [`UnaryLayer`] does the same work in a few lines, in front of the
//! router and behind every other layer (metrics, limits, auth and tonic's own `grpc-timeout`
//! handling keep seeing the call as before): it reads the request's one message (in place when it
//! came in one DATA frame), decodes it, calls the same handler that tonic would (the generated
//! service trait's method), and answers with the encoded reply and `grpc-status: 0` in the
//! trailers, or an error as trailers-only, as tonic does. Every other path goes on to the router.
//!
//! What tonic checks, checked here alike and with tonic's words: a `grpc-encoding` other than
//! `identity` is UNIMPLEMENTED (no server of ours takes compressed requests); a compressed-flag
//! without one, or a flag other than 0 or 1, is INTERNAL; a declared length over the method's
//! limit is OUT_OF_RANGE before its bytes are read; a body that ends inside a message is INTERNAL;
//! an unparsable message is INTERNAL. Data after the first message is read and dropped (nothing is
//! kept of it), as tonic's unary calls ignore it. `scripts/store-cost.sh` measures what it saves.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::Either;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;

use crate::pb;

/// The path of Store, served by every registro server.
pub const STORE: &str = "/registro.v1.Store/Store";
/// The path of a datanode's StoreBatch.
pub const STORE_BATCH: &str = "/registro.v1.Datanode/StoreBatch";

/// The gRPC message prefix: a compressed-flag byte and a big-endian 32-bit length.
const PREFIX: usize = 5;

type Answer = Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;

/// One unary method: a request in, its response out, errors included.
trait Method: Send + Sync {
    fn serve(&self, request: http::Request<Body>) -> Answer;
}

/// A [`Method`] from a handler `F` of tonic's shape, and the largest request message it takes.
struct Handler<Req, Rep, F> {
    handler: F,
    max_message_bytes: usize,
    types: PhantomData<fn(Req) -> Rep>,
}

impl<Req, Rep, F, Fut> Method for Handler<Req, Rep, F>
where
    Req: Message + Default + Send + 'static,
    Rep: Message + 'static,
    F: Fn(tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Rep>, Status>> + Send + 'static,
{
    fn serve(&self, request: http::Request<Body>) -> Answer {
        let handler = self.handler.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            match call(handler, request, max).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            }
        })
    }
}

/// Serves some unary methods itself, in front of a server's routes ([`UnaryLayer::with_store`]
/// for Store, [`UnaryLayer::with`] for more). Cheap to clone.
#[derive(Clone, Default)]
pub struct UnaryLayer {
    methods: Arc<Vec<(&'static str, Arc<dyn Method>)>>,
}

impl UnaryLayer {
    /// Adds Store, answered by `store`, refusing request messages over `max_message_bytes` (the
    /// transport limit, as tonic's `max_decoding_message_size`).
    pub fn with_store<S: pb::store_server::Store>(
        self,
        store: Arc<S>,
        max_message_bytes: usize,
    ) -> Self {
        self.with(STORE, max_message_bytes, move |request| {
            let store = store.clone();
            async move { store.store(request).await }
        })
    }

    /// Adds the unary method at `path` (`/package.Service/Method`), answered by `handler` (which
    /// gets and gives what the generated service trait's method does), with request messages of
    /// at most `max_message_bytes`.
    pub fn with<Req, Rep, F, Fut>(
        mut self,
        path: &'static str,
        max_message_bytes: usize,
        handler: F,
    ) -> Self
    where
        Req: Message + Default + Send + 'static,
        Rep: Message + 'static,
        F: Fn(tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Rep>, Status>> + Send + 'static,
    {
        let method: Arc<dyn Method> = Arc::new(Handler {
            handler,
            max_message_bytes,
            types: PhantomData,
        });
        let mut methods = (*self.methods).clone();
        methods.retain(|(p, _)| *p != path);
        methods.push((path, method));
        self.methods = Arc::new(methods);
        self
    }

    fn find(&self, path: &str) -> Option<&Arc<dyn Method>> {
        self.methods
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, method)| method)
    }
}

impl<I> tower::Layer<I> for UnaryLayer {
    type Service = Unary<I>;

    fn layer(&self, inner: I) -> Unary<I> {
        Unary {
            layer: self.clone(),
            inner,
        }
    }
}

/// See [`UnaryLayer`].
#[derive(Clone)]
pub struct Unary<I> {
    layer: UnaryLayer,
    inner: I,
}

impl<I> tower::Service<http::Request<Body>> for Unary<I>
where
    I: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = I::Error;
    type Future = Either<
        futures::future::Map<
            Answer,
            fn(http::Response<Body>) -> Result<http::Response<Body>, I::Error>,
        >,
        I::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), I::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        use futures::FutureExt;
        match self.layer.find(request.uri().path()) {
            Some(method) => Either::Left(method.serve(request).map(Ok)),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

/// One call: the request decoded, the handler called, the reply encoded.
async fn call<Req, Rep, F, Fut>(
    handler: F,
    request: http::Request<Body>,
    max: usize,
) -> Result<http::Response<Body>, Status>
where
    Req: Message + Default,
    Rep: Message,
    F: Fn(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Rep>, Status>>,
{
    let (parts, body) = request.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(unsupported_encoding(encoding));
    }
    let message = read_message(body, max).await?;
    let message = Req::decode(message).map_err(|e| Status::internal(e.to_string()))?;
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    );
    let (metadata, reply, extensions) = handler(request).await?.into_parts();
    let len = reply.encoded_len();
    let mut encoded = BytesMut::with_capacity(PREFIX + len);
    encoded.put_u8(0);
    // Replies stay under the transport limits (at most 8 MiB), far below u32::MAX.
    encoded.put_u32(
        u32::try_from(len).map_err(|_| Status::internal("the reply is too large to send"))?,
    );
    reply
        .encode(&mut encoded)
        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))?;
    let mut response = http::Response::new(Body::new(Reply {
        data: Some(encoded.freeze()),
        trailers: Some(ok_trailers()),
    }));
    *response.headers_mut() = metadata.into_headers();
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    *response.extensions_mut() = extensions;
    Ok(response)
}

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// tonic's answer to a compressed request on a server that takes none.
fn unsupported_encoding(encoding: &HeaderValue) -> Status {
    let name = match encoding.to_str() {
        Ok(s) => s.to_string(),
        Err(_) => format!("{:?}", encoding.as_bytes()),
    };
    let mut status = Status::unimplemented(format!(
        "Content is compressed with `{name}` which isn't supported"
    ));
    status.metadata_mut().insert(
        "grpc-accept-encoding",
        tonic::metadata::MetadataValue::from_static("identity"),
    );
    status
}

/// Reads a request body to its end and returns its first message (without the prefix). Holds at
/// most one message of at most `max` bytes (plus a DATA frame): a longer one is refused from its
/// prefix, and what follows the first message is dropped as it arrives.
async fn read_message(mut body: Body, max: usize) -> Result<Bytes, Status> {
    let mut buffer = BytesMut::new();
    let mut message: Option<Bytes> = None;
    let mut declared: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let Ok(mut data) = frame?.into_data() else {
            // Trailers end the body; tonic merges them into the metadata, which neither Store
            // nor StoreBatch reads.
            continue;
        };
        if message.is_some() {
            continue;
        }
        // The usual case: the whole message in one frame, taken without a copy.
        if buffer.is_empty()
            && let Some(len) = complete(&data, max)?
        {
            data.advance(PREFIX);
            message = Some(data.split_to(len));
            continue;
        }
        // Only what the message needs: its prefix, then the length the prefix declares.
        while data.has_remaining() && message.is_none() {
            let want = match declared {
                None => PREFIX - buffer.len(),
                Some(len) => PREFIX + len - buffer.len(),
            };
            let take = want.min(data.len());
            buffer.extend_from_slice(&data[..take]);
            data.advance(take);
            if declared.is_none() && buffer.len() == PREFIX {
                let len = check_prefix(&buffer, max)?;
                buffer.reserve(len);
                declared = Some(len);
            }
            if let Some(len) = declared
                && buffer.len() == PREFIX + len
            {
                buffer.advance(PREFIX);
                message = Some(buffer.split().freeze());
            }
        }
    }
    match message {
        Some(message) => Ok(message),
        None if buffer.is_empty() => Err(Status::internal("Missing request message.")),
        None => Err(Status::internal("Unexpected EOF decoding stream.")),
    }
}

/// The length of the message at the start of `data` when all of it is there (its prefix checked).
fn complete(data: &[u8], max: usize) -> Result<Option<usize>, Status> {
    if data.len() < PREFIX {
        return Ok(None);
    }
    let len = check_prefix(data, max)?;
    Ok((data.len() >= PREFIX + len).then_some(len))
}

/// Checks a message prefix as tonic's decoder does; returns the declared length.
fn check_prefix(prefix: &[u8], max: usize) -> Result<usize, Status> {
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > max {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
        )));
    }
    Ok(len)
}

/// A unary reply: one DATA frame, then the trailers.
struct Reply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use tonic::Code;
    use tower::{Layer, Service, ServiceExt};

    const MAX: usize = 64;

    /// A request body of these DATA frames, then (if given) trailers.
    fn body(frames: &[&[u8]], trailers: bool) -> Body {
        let mut all: Vec<Result<Frame<Bytes>, Status>> = frames
            .iter()
            .map(|f| Ok(Frame::data(Bytes::copy_from_slice(f))))
            .collect();
        if trailers {
            all.push(Ok(Frame::trailers(HeaderMap::new())));
        }
        Body::new(StreamBody::new(futures::stream::iter(all)))
    }

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    async fn read(frames: &[&[u8]]) -> Result<Bytes, Status> {
        read_message(body(frames, false), MAX).await
    }

    #[tokio::test]
    async fn a_message_is_read_whole_or_in_pieces_and_what_follows_is_dropped() {
        let message = framed(0, b"hello");
        assert_eq!(read(&[&message]).await.unwrap(), "hello");
        // Split in the prefix, in the message, and byte by byte.
        for cut in 1..message.len() {
            let (a, b) = message.split_at(cut);
            assert_eq!(read(&[a, b]).await.unwrap(), "hello", "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = message.chunks(1).collect();
        assert_eq!(read(&bytes).await.unwrap(), "hello");
        // A second message, in the same frame or after, is read and dropped.
        let two = [framed(0, b"one"), framed(0, b"two")].concat();
        assert_eq!(read(&[&two]).await.unwrap(), "one");
        assert_eq!(read(&[&two[..4], &two[4..]]).await.unwrap(), "one");
        // An empty message is a message; trailers end the body like its end.
        assert_eq!(read(&[&framed(0, b"")]).await.unwrap(), "");
        let got = read_message(body(&[&message], true), MAX).await.unwrap();
        assert_eq!(got, "hello");
    }

    #[tokio::test]
    async fn bad_bodies_get_tonics_answers() {
        let code = |r: Result<Bytes, Status>| r.unwrap_err().code();
        assert_eq!(code(read(&[]).await), Code::Internal, "no message");
        assert_eq!(
            code(read(&[&[0, 0, 0]]).await),
            Code::Internal,
            "cut prefix"
        );
        let cut = framed(0, b"hello");
        assert_eq!(
            code(read(&[&cut[..7]]).await),
            Code::Internal,
            "cut message"
        );
        assert_eq!(
            code(read(&[&framed(1, b"x")]).await),
            Code::Internal,
            "compressed"
        );
        assert_eq!(
            code(read(&[&framed(7, b"x")]).await),
            Code::Internal,
            "bad flag"
        );
        let long = vec![b'x'; MAX + 1];
        let err = read(&[&framed(0, &long)]).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        assert!(
            err.message().contains("found 65 bytes"),
            "{}",
            err.message()
        );
        // Refused from the prefix alone: the message's bytes need not come.
        let err = read(&[&framed(0, &long)[..PREFIX]]).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        // Exactly at the limit is fine.
        assert_eq!(read(&[&framed(0, &long[..MAX])]).await.unwrap().len(), MAX);
    }

    /// A store that answers with what its request carried.
    struct Echo;

    #[tonic::async_trait]
    impl pb::store_server::Store for Echo {
        async fn store(
            &self,
            request: tonic::Request<pb::StoreRequest>,
        ) -> Result<tonic::Response<pb::StoreReply>, Status> {
            let timeout = request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let tagged = request.extensions().get::<&'static str>().copied();
            let message = request.into_inner().message;
            if message == "fail" {
                return Err(Status::invalid_argument("told to fail"));
            }
            let mut response = tonic::Response::new(pb::StoreReply {
                id: message,
                datanode: format!("{timeout}/{}", tagged.unwrap_or("-")),
                ..Default::default()
            });
            response
                .metadata_mut()
                .insert("x-echo", tonic::metadata::MetadataValue::from_static("yes"));
            Ok(response)
        }

        type ListStream = futures::stream::Empty<Result<pb::StoredMessage, Status>>;

        async fn list(
            &self,
            _request: tonic::Request<pb::ListRequest>,
        ) -> Result<tonic::Response<Self::ListStream>, Status> {
            Err(Status::unimplemented("not here"))
        }
    }

    /// The service behind the layer: answers every call it gets with NOT_FOUND.
    fn router() -> impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<http::Response<Body>, std::convert::Infallible>> + Send,
    > + Clone {
        tower::service_fn(|_request: http::Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Status::not_found("routed").into_http())
        })
    }

    fn request(path: &str, message: &str, encoding: Option<&str>) -> http::Request<Body> {
        let encoded = pb::StoreRequest {
            message: message.into(),
            request_id: String::new(),
        }
        .encode_to_vec();
        let mut request = http::Request::new(body(&[&framed(0, &encoded)], false));
        *request.uri_mut() = path.parse().unwrap();
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("5S"));
        if let Some(encoding) = encoding {
            request
                .headers_mut()
                .insert("grpc-encoding", HeaderValue::from_str(encoding).unwrap());
        }
        request.extensions_mut().insert("tagged");
        request
    }

    /// Status code from headers (trailers-only) or trailers, and the body's message bytes.
    async fn answer(response: http::Response<Body>) -> (HeaderMap, String, Bytes) {
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = parts
            .headers
            .get("grpc-status")
            .or(trailers.get("grpc-status"))
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        (parts.headers, status, collected.to_bytes())
    }

    #[tokio::test]
    async fn store_is_answered_here_and_everything_else_is_routed() {
        let layer = UnaryLayer::default().with_store(Arc::new(Echo), MAX);
        let mut service = layer.layer(router());

        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(STORE, "hi", None))
            .await
            .unwrap();
        let (headers, status, data) = answer(response).await;
        assert_eq!(status, "0");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["x-echo"], "yes", "the handler's metadata is sent");
        assert_eq!(data[0], 0);
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, data.len() - PREFIX);
        let reply = pb::StoreReply::decode(&data[PREFIX..]).unwrap();
        assert_eq!(reply.id, "hi");
        assert_eq!(
            reply.datanode, "5S/tagged",
            "metadata and extensions reach the handler"
        );

        let response = service.call(request(STORE, "fail", None)).await.unwrap();
        let (headers, status, data) = answer(response).await;
        assert_eq!(status, (Code::InvalidArgument as i32).to_string());
        assert_eq!(
            headers["grpc-message"], "told%20to%20fail",
            "percent-encoded"
        );
        assert!(data.is_empty(), "an error is trailers-only");

        let response = service
            .call(request(STORE, "hi", Some("gzip")))
            .await
            .unwrap();
        let (headers, status, _) = answer(response).await;
        assert_eq!(status, (Code::Unimplemented as i32).to_string());
        assert_eq!(headers["grpc-accept-encoding"], "identity");
        let response = service
            .call(request(STORE, "hi", Some("identity")))
            .await
            .unwrap();
        assert_eq!(answer(response).await.1, "0");

        for path in ["/registro.v1.Store/List", "/registro.v1.Store/Store/x", "/"] {
            let response = service.call(request(path, "hi", None)).await.unwrap();
            let (_, status, _) = answer(response).await;
            assert_eq!(status, (Code::NotFound as i32).to_string(), "{path}");
        }
    }

    #[tokio::test]
    async fn more_methods_each_with_their_own_types_and_limit() {
        let layer = UnaryLayer::default().with_store(Arc::new(Echo), MAX).with(
            STORE_BATCH,
            8,
            |request: tonic::Request<pb::StoreBatchRequest>| async move {
                let records = request.into_inner().records.len();
                Ok(tonic::Response::new(pb::StoreBatchReply {
                    results: vec![pb::StoreResult::default(); records],
                }))
            },
        );
        let mut service = layer.layer(router());
        let batch = |records: usize| {
            let encoded = pb::StoreBatchRequest {
                records: vec![pb::Record::default(); records],
            }
            .encode_to_vec();
            let mut request = http::Request::new(body(&[&framed(0, &encoded)], false));
            *request.uri_mut() = STORE_BATCH.parse().unwrap();
            request
        };
        let (_, status, data) = answer(service.call(batch(3)).await.unwrap()).await;
        assert_eq!(status, "0");
        let reply = pb::StoreBatchReply::decode(&data[PREFIX..]).unwrap();
        assert_eq!(reply.results.len(), 3);
        // Five empty records are 10 bytes, over this method's 8; Store keeps its own limit.
        let (_, status, _) = answer(service.call(batch(5)).await.unwrap()).await;
        assert_eq!(status, (Code::OutOfRange as i32).to_string());
        let (_, status, _) = answer(service.call(request(STORE, "hi", None)).await.unwrap()).await;
        assert_eq!(status, "0");
    }
}
