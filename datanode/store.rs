//! The datanode's `registro.v1.Store`: validates, deduplicates by request id, appends durably,
//! and answers with a receipt. `List` streams the data file back.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Config;
use super::data_file::{AppendError, DataFile, Loaded, Record};
use crate::dedupe::{Dedupe, Outcome};
use crate::pb::{self, ListRequest, StoreReply, StoreRequest, StoredMessage};

/// The datanode's Store service.
pub struct StoreService {
    name: Arc<str>,
    file: DataFile,
    /// Request id → first reply, rebuilt from the data file at start.
    dedupe: Arc<Dedupe<StoreReply>>,
    max_message_bytes: usize,
}

impl StoreService {
    /// A service over `file`, remembering the request ids that `loaded` found in it.
    pub fn new(config: &Config, file: DataFile, loaded: &Loaded) -> Self {
        let dedupe = Dedupe::new(config.dedupe_capacity);
        for record in &loaded.recent_with_request_id {
            dedupe.remember(&record.request_id, reply(&config.name, record));
        }
        Self {
            name: config.name.as_str().into(),
            file,
            dedupe: Arc::new(dedupe),
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

#[tonic::async_trait]
impl pb::store_server::Store for StoreService {
    async fn store(&self, request: Request<StoreRequest>) -> Result<Response<StoreReply>, Status> {
        let StoreRequest {
            message,
            request_id,
        } = request.into_inner();
        crate::validate_message(&message, self.max_message_bytes)?;
        let key = request_id.clone();
        let (dedupe, file, name) = (self.dedupe.clone(), self.file.clone(), self.name.clone());
        // The append runs in a task of its own, so a caller that goes away (a forward past its
        // deadline) cannot leave a record stored but unknown to the idempotency map.
        let outcome = tokio::spawn(async move {
            dedupe
                .run(&request_id.clone(), || async {
                    let record = file
                        .append(message, request_id)
                        .await
                        .map_err(append_status)?;
                    Ok::<_, Status>(reply(&name, &record))
                })
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?;
        match outcome {
            Ok(Outcome::Fresh(reply)) => {
                tracing::info!(id = %reply.id, receipt = %reply.receipt, "stored");
                Ok(Response::new(reply))
            }
            Ok(Outcome::Repeat(reply)) => {
                tracing::info!(id = %reply.id, request_id = %key, "repeated request id: first reply returned, nothing stored");
                Ok(Response::new(reply))
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "store failed");
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
