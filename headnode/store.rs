//! The headnode's `registro.v1.Store`: validates, deduplicates by request id, forwards to a
//! random healthy datanode with failover, and writes the registro log. `List` merges every
//! reachable datanode's stream, oldest first.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::pool::{Datanode, Pool};
use super::probe::describe;
use crate::dedupe::{self, Dedupe, Outcome};
use crate::logfile::LogFile;
use crate::pb::{self, ListRequest, StoreReply, StoreRequest, StoredMessage};

/// The headnode's Store service.
pub struct StoreService {
    forwarder: Arc<Forwarder>,
    pool: Arc<Pool>,
    max_message_bytes: usize,
}

/// What a Store needs after validation; shared with the task each Store runs in.
struct Forwarder {
    pool: Arc<Pool>,
    /// `<ts> <id> <datanode> "<message>"` per stored message.
    registro_log: LogFile,
    /// Request id → first reply: a repeat must not land on another datanode.
    dedupe: Dedupe<StoreReply>,
    /// Deadline of one forward; past it the datanode is marked down and another is tried.
    forward_timeout: Duration,
}

impl StoreService {
    pub fn new(
        pool: Arc<Pool>,
        registro_log: LogFile,
        dedupe: dedupe::Limits,
        max_message_bytes: usize,
        forward_timeout: Duration,
    ) -> Self {
        Self {
            forwarder: Arc::new(Forwarder {
                pool: pool.clone(),
                registro_log,
                dedupe: Dedupe::new(dedupe),
                forward_timeout,
            }),
            pool,
            max_message_bytes,
        }
    }
}

impl Forwarder {
    /// Stores once per request id: forwards, logs the receipt, remembers the reply.
    async fn store(
        &self,
        message: String,
        request_id: String,
    ) -> Result<Outcome<StoreReply>, Status> {
        self.dedupe
            .run(&request_id, &message, || async {
                let (reply, _node) = self.forward(&message, &request_id).await?;
                self.registro_log
                    .line(registro_line(&crate::time::now(), &reply, &message));
                Ok::<_, Status>(reply)
            })
            .await
    }

    /// Forwards to a random SERVING datanode; on a failure that says nothing about the request
    /// itself (transport, UNAVAILABLE, deadline), marks that datanode down and tries another.
    async fn forward(
        &self,
        message: &str,
        request_id: &str,
    ) -> Result<(StoreReply, Arc<Datanode>), Status> {
        let mut tried: Vec<String> = Vec::new();
        loop {
            let Some(node) = self.pool.choose(&tried) else {
                return Err(Status::unavailable(if tried.is_empty() {
                    "no healthy datanode: none has passed its last health check".to_string()
                } else {
                    format!(
                        "no healthy datanode: forwards to {} failed",
                        tried.join(", ")
                    )
                }));
            };
            let request = StoreRequest {
                message: message.to_string(),
                request_id: request_id.to_string(),
            };
            // The deadline covers the wait in the datanode's batch queue and the call. It is
            // enforced here, not sent along: a datanode that got the request finishes it (and
            // remembers its request id) even after we have moved on.
            let deadline = tokio::time::Instant::now() + self.forward_timeout;
            let error = match tokio::time::timeout_at(deadline, node.store(request, deadline)).await
            {
                Ok(Ok(reply)) => {
                    node.count_routed();
                    return Ok((reply, node));
                }
                Ok(Err(status)) if !is_retryable(status.code()) => return Err(status),
                Ok(Err(status)) => describe(&status),
                Err(_) => format!(
                    "no reply within {}",
                    humantime::format_duration(self.forward_timeout)
                ),
            };
            tracing::warn!(datanode = %node.name, error = %error, "forward failed; marking the datanode down and trying another");
            self.pool.mark_down(&node, &error);
            tried.push(node.name.clone());
        }
    }
}

/// Failures of the datanode or the path to it, not of the request: worth another datanode.
fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
    )
}

/// The registro-log line of one stored message; the message is a JSON string so the line
/// never breaks.
pub fn registro_line(ts: &str, reply: &StoreReply, message: &str) -> String {
    let quoted = serde_json::to_string(message).unwrap_or_default();
    format!("{ts} {} {} {quoted}", reply.id, reply.datanode)
}

#[tonic::async_trait]
impl pb::store_server::Store for StoreService {
    async fn store(&self, request: Request<StoreRequest>) -> Result<Response<StoreReply>, Status> {
        let StoreRequest {
            message,
            request_id,
        } = request.into_inner();
        crate::validate_message(&message, self.max_message_bytes)?;
        dedupe::validate_request_id(&request_id)?;
        // The Store runs in a task of its own, to completion even if the client goes away, so
        // its reply is remembered for the client's retry and no forward is cut off midway.
        let forwarder = self.forwarder.clone();
        let key = request_id.clone();
        let outcome = tokio::spawn(async move { forwarder.store(message, key).await })
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?;
        match outcome {
            Ok(Outcome::Fresh(reply)) => {
                tracing::debug!(id = %reply.id, datanode = %reply.datanode, "stored");
                Ok(Response::new(reply))
            }
            Ok(Outcome::Repeat(reply)) => {
                tracing::info!(id = %reply.id, request_id = %request_id, "repeated request id: first reply returned, nothing stored");
                Ok(Response::new(reply))
            }
            Ok(Outcome::Conflict) => Err(crate::dedupe::conflict(&request_id)),
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "store failed");
                Err(status)
            }
        }
    }

    type ListStream = ReceiverStream<Result<StoredMessage, Status>>;

    async fn list(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ListRequest { datanode, limit } = request.into_inner();
        let members = if datanode.is_empty() {
            self.pool.members()
        } else {
            vec![self.pool.get(&datanode).ok_or_else(|| {
                Status::not_found(format!("no datanode called {datanode:?} in the pool"))
            })?]
        };
        let streams = futures::future::join_all(members.iter().map(|m| open_list(m, limit))).await;
        let streams: Vec<_> = streams.into_iter().flatten().collect();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(merge(streams, limit, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Opens one datanode's List; an unreachable datanode is skipped with a warning.
async fn open_list(node: &Datanode, limit: u32) -> Option<(String, Streaming<StoredMessage>)> {
    let request = ListRequest {
        datanode: String::new(),
        limit,
    };
    match node.store_client().list(request).await {
        Ok(stream) => Some((node.name.clone(), stream.into_inner())),
        Err(status) => {
            tracing::warn!(datanode = %node.name, error = %describe(&status), "List skips an unreachable datanode");
            None
        }
    }
}

/// Merges streams that are each oldest first into one oldest-first stream (ties by id).
async fn merge(
    streams: Vec<(String, Streaming<StoredMessage>)>,
    limit: u32,
    tx: tokio::sync::mpsc::Sender<Result<StoredMessage, Status>>,
) {
    let limit = if limit == 0 {
        u64::MAX
    } else {
        u64::from(limit)
    };
    let mut heads: Vec<(String, Streaming<StoredMessage>, Option<StoredMessage>)> = Vec::new();
    for (name, mut stream) in streams {
        let head = next(&name, &mut stream).await;
        heads.push((name, stream, head));
    }
    let mut sent = 0u64;
    while sent < limit {
        let oldest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, (_, _, head))| head.as_ref().map(|m| (i, sort_key(m))))
            .min_by(|a, b| a.1.cmp(&b.1))
            .map(|(i, _)| i);
        let Some(i) = oldest else { break };
        let (name, stream, head) = &mut heads[i];
        let message = head.take();
        *head = next(name, stream).await;
        if tx.send(Ok(message.unwrap_or_default())).await.is_err() {
            return;
        }
        sent += 1;
    }
}

fn sort_key(m: &StoredMessage) -> (i64, i32, &str) {
    let (s, n) = m
        .stored_at
        .as_ref()
        .map_or((0, 0), |t| (t.seconds, t.nanos));
    (s, n, m.id.as_str())
}

async fn next(name: &str, stream: &mut Streaming<StoredMessage>) -> Option<StoredMessage> {
    match stream.message().await {
        Ok(m) => m,
        Err(status) => {
            tracing::warn!(datanode = %name, error = %describe(&status), "List stream from a datanode broke off");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registro_lines_quote_the_message_as_json() {
        let reply = StoreReply {
            id: "id1".into(),
            datanode: "datanode2".into(),
            ..Default::default()
        };
        assert_eq!(
            registro_line("2026-11-23T10:00:00.000Z", &reply, "Hola \"mundo\"\n"),
            r#"2026-11-23T10:00:00.000Z id1 datanode2 "Hola \"mundo\"\n""#
        );
    }
}
