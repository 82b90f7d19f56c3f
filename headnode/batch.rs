//! Batched forwarding: the Stores bound for one datanode leave together, in
//! `registro.v1.Datanode/StoreBatch` calls.
//!
//! Each forward costs the headnode an HTTP/2 stream on its way out (headers, frames, a tonic call
//! through the channel's buffer task) and the datanode one on its way in: more than half of the
//! headnode's CPU per Store when every message went alone. A [`Batcher`] keeps one call open per
//! forward connection to its datanode (`--datanode-connections`, default 1); while they are out,
//! new Stores queue, and the next call takes everything queued (up to [`MAX_BATCH_MESSAGES`] and
//! [`MAX_BATCH_BYTES`]). Under light load a call carries one message and leaves at once, so
//! batching never adds a wait; under heavy load the calls grow instead of the stream count.
//!
//! Every message keeps its own outcome: the datanode answers each one (stored, a repeated
//! request id, or its own error). A call that fails as a whole (transport, deadline, a datanode
//! that does not know the call) fails every message in it with UNAVAILABLE, so the caller marks
//! the datanode down and retries each message elsewhere with its request id.
//!
//! Each message carries its caller's deadline: one that has passed by the time a call leaves is
//! not sent (the caller has moved on to another datanode), and a call's deadline is the earliest
//! of its messages'.

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::pb::datanode_client::DatanodeClient;
use crate::pb::{StoreBatchRequest, StoreReply, StoreRequest, StoreResult};

/// Messages in one call at most (a datanode takes up to [`crate::server::MAX_STORE_BATCH`]).
pub const MAX_BATCH_MESSAGES: usize = 256;
const _: () = assert!(MAX_BATCH_MESSAGES <= crate::server::MAX_STORE_BATCH);
/// Bytes of message text (and request ids) in one call at most; a single larger message goes
/// alone (the call limit, [`crate::server::MAX_GRPC_BATCH_BYTES`], leaves room for it).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One Store waiting for its call.
struct Pending {
    request: StoreRequest,
    /// When its caller stops waiting and tries another datanode.
    deadline: Instant,
    reply: oneshot::Sender<Result<StoreReply, Status>>,
}

impl Pending {
    fn bytes(&self) -> usize {
        self.request.message.len() + self.request.request_id.len()
    }
}

/// The queue of Stores bound for one datanode, and the task that sends them.
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the sending task on `channels`, with one call out on each at a time. The task ends
    /// when the batcher is dropped and its queue is empty.
    pub fn new(channels: Vec<Channel>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let clients = channels
            .into_iter()
            .map(|channel| {
                DatanodeClient::new(channel)
                    .max_decoding_message_size(crate::server::MAX_GRPC_BATCH_BYTES)
                    .max_encoding_message_size(crate::server::MAX_GRPC_BATCH_BYTES)
            })
            .collect();
        tokio::spawn(send_batches(rx, clients));
        Self { queue }
    }

    /// Stores one message through the next call to this datanode, unless `deadline` passes
    /// first (the caller enforces it; past it the message is not sent).
    pub async fn store(
        &self,
        request: StoreRequest,
        deadline: Instant,
    ) -> Result<StoreReply, Status> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending {
                request,
                deadline,
                reply,
            })
            .map_err(|_| Status::unavailable("the datanode's forward queue is closed"))?;
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("the forward was dropped unanswered")))
    }
}

/// Sends what is queued, in calls of up to [`MAX_BATCH_MESSAGES`], with at most one call out on
/// each client (connection) at a time.
async fn send_batches(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    clients: Vec<DatanodeClient<Channel>>,
) {
    // The connections with no call out; a call gives its connection back when it ends.
    let (idle_tx, mut idle) = mpsc::unbounded_channel();
    for client in clients {
        let _ = idle_tx.send(client);
    }
    let mut carried: Option<Pending> = None;
    loop {
        // A free connection first: while every one has a call out, Stores pile up in the queue
        // for the next call.
        let Some(client) = idle.recv().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_MESSAGES {
            let Ok(p) = rx.try_recv() else { break };
            if bytes + p.bytes() > MAX_BATCH_BYTES {
                carried = Some(p);
                break;
            }
            bytes += p.bytes();
            batch.push(p);
        }
        // A Store whose caller gave up (its deadline passed) is being retried elsewhere:
        // sending it here too would only make an unacknowledged copy.
        let now = Instant::now();
        batch.retain(|p| !p.reply.is_closed() && p.deadline > now);
        let Some(deadline) = batch.iter().map(|p| p.deadline).min() else {
            let _ = idle_tx.send(client);
            continue;
        };
        let idle_tx = idle_tx.clone();
        tokio::spawn(async move {
            let client = send(client, batch, deadline).await;
            // The receiver is gone only when the sending task has ended.
            let _ = idle_tx.send(client);
        });
    }
}

/// One call, answered by `deadline`: every message in `batch` gets its own outcome. Returns
/// the client for the next call.
async fn send(
    mut client: DatanodeClient<Channel>,
    batch: Vec<Pending>,
    deadline: Instant,
) -> DatanodeClient<Channel> {
    let (requests, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let sent = requests.len();
    let answer =
        tokio::time::timeout_at(deadline, client.store_batch(StoreBatchRequest { requests })).await;
    // Whatever failed the whole call says nothing about the messages: UNAVAILABLE, so each is
    // retried on another datanode.
    let status = match answer {
        Ok(Ok(reply)) => {
            let results = reply.into_inner().results;
            if results.len() == sent {
                for (result, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(outcome(result));
                }
                return client;
            }
            Status::unavailable(format!(
                "the datanode answered {} results for {sent} messages",
                results.len()
            ))
        }
        Ok(Err(status)) => Status::unavailable(format!(
            "StoreBatch failed: {:?}: {}",
            status.code(),
            status.message()
        )),
        Err(_) => Status::unavailable("no reply before the forward deadline"),
    };
    for reply in replies {
        let _ = reply.send(Err(status.clone()));
    }
    client
}

/// One message's outcome as the datanode reported it.
fn outcome(result: StoreResult) -> Result<StoreReply, Status> {
    match (Code::from_i32(result.code), result.reply) {
        (Code::Ok, Some(reply)) => Ok(reply),
        (Code::Ok, None) => Err(Status::unknown(
            "the datanode reported success without a reply",
        )),
        (code, _) => Err(Status::new(code, result.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_result_becomes_the_status_store_would_have_returned() {
        let reply = StoreReply {
            id: "id1".into(),
            ..Default::default()
        };
        let ok = StoreResult {
            reply: Some(reply.clone()),
            code: 0,
            error: String::new(),
        };
        assert_eq!(outcome(ok).unwrap(), reply);
        let full = outcome(StoreResult {
            reply: None,
            code: Code::Unavailable as i32,
            error: "disk full".into(),
        })
        .unwrap_err();
        assert_eq!(
            (full.code(), full.message()),
            (Code::Unavailable, "disk full")
        );
        let empty = outcome(StoreResult::default()).unwrap_err();
        assert_eq!(empty.code(), Code::Unknown);
    }
}
