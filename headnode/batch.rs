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
//! request id, or its own error), and a call that fails as a whole fails every message in it, so
//! the caller retries each elsewhere with its request id.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::pb::datanode_client::DatanodeClient;
use crate::pb::{StoreBatchRequest, StoreReply, StoreRequest, StoreResult};

/// Messages in one call at most.
pub const MAX_BATCH_MESSAGES: usize = 256;
/// Bytes of message text (and request ids) in one call at most; a single larger message goes
/// alone (the call limit, [`crate::server::MAX_GRPC_BATCH_BYTES`], leaves room for it).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One Store waiting for its call.
struct Pending {
    request: StoreRequest,
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
    /// Starts the sending task on `channels`, with one call out on each at a time; a call that
    /// has no answer within `timeout` fails every message in it. The task ends when the batcher is
    /// dropped and its queue is empty.
    pub fn new(channels: Vec<Channel>, timeout: Duration) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let clients = channels
            .into_iter()
            .map(|channel| {
                DatanodeClient::new(channel)
                    .max_decoding_message_size(crate::server::MAX_GRPC_BATCH_BYTES)
                    .max_encoding_message_size(crate::server::MAX_GRPC_BATCH_BYTES)
            })
            .collect();
        tokio::spawn(send_batches(rx, clients, timeout));
        Self { queue }
    }

    /// Stores one message through the next call to this datanode.
    pub async fn store(&self, request: StoreRequest) -> Result<StoreReply, Status> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .map_err(|_| Status::unavailable("the datanode's forward queue is closed"))?;
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("the forward was dropped unanswered")))
    }
}

/// Sends what is queued, in calls of up to [`MAX_BATCH_MESSAGES`], with at most one call out per
/// client (connection).
async fn send_batches(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    clients: Vec<DatanodeClient<Channel>>,
    timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(clients.len().max(1)));
    let mut carried: Option<Pending> = None;
    let mut next_client = 0;
    loop {
        // A permit first: while every call is out, Stores pile up in the queue for the next one.
        let Ok(permit) = permits.clone().acquire_owned().await else {
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
        // A Store whose caller gave up (its forward deadline passed) has been retried
        // elsewhere: sending it here too would only make an unacknowledged copy.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let client = clients[next_client % clients.len()].clone();
        next_client = next_client.wrapping_add(1);
        tokio::spawn(async move {
            send(client, batch, timeout).await;
            drop(permit);
        });
    }
}

/// One call: every message in `batch` gets its own outcome.
async fn send(mut client: DatanodeClient<Channel>, batch: Vec<Pending>, timeout: Duration) {
    let (requests, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let sent = requests.len();
    let answer =
        tokio::time::timeout(timeout, client.store_batch(StoreBatchRequest { requests })).await;
    let status = match answer {
        Ok(Ok(reply)) => {
            let results = reply.into_inner().results;
            if results.len() == sent {
                for (result, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(outcome(result));
                }
                return;
            }
            Status::unknown(format!(
                "the datanode answered {} results for {sent} messages",
                results.len()
            ))
        }
        Ok(Err(status)) => status,
        Err(_) => Status::deadline_exceeded(format!(
            "no reply within {}",
            humantime::format_duration(timeout)
        )),
    };
    for reply in replies {
        let _ = reply.send(Err(status.clone()));
    }
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
