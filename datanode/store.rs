//! The datanode's `registro.v1.Store`: validates, deduplicates by request id, appends durably,
//! and answers with a receipt. `List` streams the data file back. `registro.v1.Datanode/StoreBatch`
//! does the same for many messages at once: the path the headnode forwards through.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Config;
use super::data_file::{AppendError, DataFile, Loaded, Record};
use crate::dedupe::{self, Dedupe, Outcome};
use crate::pb::{
    self, ListRequest, StoreBatchReply, StoreBatchRequest, StoreReply, StoreRequest, StoreResult,
    StoredMessage,
};
use crate::server::MAX_STORE_BATCH;

/// The datanode's Store service (and the Datanode service, its batch form).
#[derive(Clone)]
pub struct StoreService {
    name: Arc<str>,
    file: DataFile,
    /// Request id → first reply, rebuilt from the data file at start.
    dedupe: Dedupe<StoreReply>,
    max_message_bytes: usize,
}

impl StoreService {
    /// A service over `file`, remembering the request ids that `loaded` found in it.
    pub fn new(config: &Config, file: DataFile, loaded: &Loaded) -> Self {
        let dedupe = Dedupe::new(config.dedupe);
        for record in &loaded.recent_with_request_id {
            dedupe.remember(
                &record.request_id,
                &record.message,
                reply(&config.name, record),
            );
        }
        Self {
            name: config.name.as_str().into(),
            file,
            dedupe,
            max_message_bytes: config.max_message_bytes,
        }
    }
}

fn reply(datanode: &str, record: &Record) -> StoreReply {
    StoreReply {
        id: record.id.clone(),
        datanode: datanode.to_string(),
        stored_at: crate::time::parse(&record.stored_at).map(crate::time::to_proto),
        receipt: crate::receipt(&record.message, datanode),
    }
}

fn stored_message(datanode: &str, record: Record) -> StoredMessage {
    StoredMessage {
        stored_at: crate::time::parse(&record.stored_at).map(crate::time::to_proto),
        id: record.id,
        message: record.message,
        datanode: datanode.to_string(),
        request_id: record.request_id,
    }
}

/// A failed write is retryable elsewhere: UNAVAILABLE tells the headnode to try another datanode.
fn append_status(e: AppendError) -> Status {
    Status::unavailable(e.to_string())
}

impl StoreService {
    /// Stores one validated message once per request id. The append runs in a task of its own,
    /// so a caller that goes away (a forward past its deadline) cannot leave a record stored but
    /// unknown to the idempotency map.
    async fn store_one(
        &self,
        message: String,
        request_id: String,
    ) -> Result<Outcome<StoreReply>, Status> {
        let (dedupe, file, name) = (self.dedupe.clone(), self.file.clone(), self.name.clone());
        tokio::spawn(async move { store_once(&dedupe, &file, &name, message, request_id).await })
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
    }

    /// Stores a batch: every valid message is appended at once (one group commit covers them
    /// all), in a task of its own for the same reason as [`Self::store_one`].
    async fn store_many(&self, requests: Vec<StoreRequest>) -> Vec<Result<StoreReply, Status>> {
        let mut results: Vec<Option<Result<StoreReply, Status>>> = Vec::new();
        let mut valid = Vec::new();
        for (
            i,
            StoreRequest {
                message,
                request_id,
            },
        ) in requests.into_iter().enumerate()
        {
            match crate::validate_message(&message, self.max_message_bytes)
                .and_then(|()| dedupe::validate_request_id(&request_id))
            {
                Ok(()) => {
                    results.push(None);
                    valid.push((i, message, request_id));
                }
                Err(status) => results.push(Some(logged(Err(status), ""))),
            }
        }
        let (dedupe, file, name) = (self.dedupe.clone(), self.file.clone(), self.name.clone());
        let stored = tokio::spawn(async move {
            let stores = valid.into_iter().map(|(i, message, request_id)| {
                let (dedupe, file, name) = (&dedupe, &file, &name);
                async move {
                    let key = request_id.clone();
                    let outcome = store_once(dedupe, file, name, message, request_id).await;
                    (i, key, outcome)
                }
            });
            // Every append of the batch is handed over in the first poll (unconstrained: the
            // runtime's per-task budget would otherwise stop that poll partway through a large
            // batch); the hold makes the writer wait for all of them, so the batch costs one
            // write and one sync. A message whose request id is being stored by another call
            // waits for that call instead, outside the hold.
            let mut hold = Some(file.hold());
            let mut all = std::pin::pin!(futures::future::join_all(stores));
            tokio::task::unconstrained(std::future::poll_fn(|cx| {
                let polled = all.as_mut().poll(cx);
                hold.take();
                polled
            }))
            .await
        })
        .await;
        match stored {
            Ok(stored) => {
                for (i, key, outcome) in stored {
                    results[i] = Some(logged(outcome, &key));
                }
            }
            Err(e) => {
                let status = Status::internal(format!("store task failed: {e}"));
                for slot in results.iter_mut().filter(|r| r.is_none()) {
                    *slot = Some(Err(status.clone()));
                }
            }
        }
        // Every slot is filled above; an empty one would shift the answers, so it says so.
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Status::internal("no outcome for this message"))))
            .collect()
    }
}

/// Appends `message` unless its request id was seen already.
async fn store_once(
    dedupe: &Dedupe<StoreReply>,
    file: &DataFile,
    name: &str,
    message: String,
    request_id: String,
) -> Result<Outcome<StoreReply>, Status> {
    let key = request_id.clone();
    let text = message.clone();
    dedupe
        .run(&key, &text, || async {
            let record = file
                .append(message, request_id)
                .await
                .map_err(append_status)?;
            Ok::<_, Status>(reply(name, &record))
        })
        .await
}

/// Logs what a Store did (each side of the message path logs every message) and returns the
/// reply.
fn logged(
    outcome: Result<Outcome<StoreReply>, Status>,
    request_id: &str,
) -> Result<StoreReply, Status> {
    match outcome {
        Ok(Outcome::Fresh(reply)) => {
            tracing::info!(id = %reply.id, receipt = %reply.receipt, "stored");
            Ok(reply)
        }
        Ok(Outcome::Repeat(reply)) => {
            tracing::info!(id = %reply.id, request_id = %request_id, "repeated request id: first reply returned, nothing stored");
            Ok(reply)
        }
        Ok(Outcome::Conflict) => Err(dedupe::conflict(request_id)),
        Err(status) => {
            tracing::warn!(code = ?status.code(), error = %status.message(), "store failed");
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl pb::datanode_server::Datanode for StoreService {
    async fn store_batch(
        &self,
        request: Request<StoreBatchRequest>,
    ) -> Result<Response<StoreBatchReply>, Status> {
        let requests = request.into_inner().requests;
        if requests.len() > MAX_STORE_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} messages in one StoreBatch, over the limit of {MAX_STORE_BATCH}",
                requests.len()
            )));
        }
        let results = self
            .store_many(requests)
            .await
            .into_iter()
            .map(|result| match result {
                Ok(reply) => StoreResult {
                    reply: Some(reply),
                    code: 0,
                    error: String::new(),
                },
                Err(status) => StoreResult {
                    reply: None,
                    code: status.code() as i32,
                    error: status.message().to_string(),
                },
            })
            .collect();
        Ok(Response::new(StoreBatchReply { results }))
    }
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
        let outcome = self.store_one(message, request_id.clone()).await;
        logged(outcome, &request_id).map(Response::new)
    }

    type ListStream = ReceiverStream<Result<StoredMessage, Status>>;

    async fn list(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ListRequest { datanode, limit } = request.into_inner();
        if !datanode.is_empty() && *datanode != *self.name {
            return Err(Status::not_found(format!(
                "this is datanode {:?}, not {datanode:?}",
                self.name
            )));
        }
        let limit = if limit == 0 {
            u64::MAX
        } else {
            u64::from(limit)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let file = self.file.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            let result = file.read(|record| {
                sent += 1;
                // A closed channel means the caller went away: stop reading.
                tx.blocking_send(Ok(stored_message(&name, record))).is_ok() && sent < limit
            });
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot read the data file");
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "cannot read the data file: {e}"
                ))));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
