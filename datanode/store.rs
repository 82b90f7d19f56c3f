//! The datanode's `registro.v1.Store`: validates, deduplicates by request id, appends durably,
//! and answers with a receipt. `List` streams the data file back. `registro.v1.Datanode/StoreBatch`
//! does the same for many messages at once: the path the headnode forwards through.
//!
//! A Store is a batch of one: both go through one spawned task, which claims every
//! request id, hands every fresh message to the data file in one [`DataFile::append_many`] and
//! remembers each reply.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Config;
use super::data_file::{Append, AppendError, Cursor, DataFile, Record, Stamp};
use crate::dedupe::{self, Claim, Dedupe, Outcome, Ticket};
use crate::pb::{
    self, ListRequest, StoreBatchReply, StoreBatchRequest, StoreReply, StoreRequest, StoreResult,
    StoredMessage,
};

/// The last time [`stamp`] formatted, reused for the next record with the same time (a batch's
/// records mostly share their millisecond).
type LastTime = Option<(prost_types::Timestamp, String)>;

/// Checks the id and time a headnode gave a record, and turns them into the data file's form.
fn stamp(
    id: String,
    stored_at: Option<prost_types::Timestamp>,
    last: &mut LastTime,
) -> Result<Stamp, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(
            "a forwarded record needs an id (the headnode derives it from the request id)",
        ));
    }
    // Ids are held to the request id's rules: they reach the same files and logs.
    dedupe::validate_request_id(&id)
        .map_err(|s| Status::invalid_argument(s.message().replacen("request_id", "id", 1)))?;
    let invalid = || Status::invalid_argument("a forwarded record needs a valid stored_at");
    let at = stored_at.ok_or_else(invalid)?;
    if let Some((t, text)) = last
        && *t == at
    {
        return Ok(Stamp {
            id,
            stored_at: text.clone(),
        });
    }
    let text = crate::time::format(crate::time::from_proto(&at).ok_or_else(invalid)?);
    *last = Some((at, text.clone()));
    Ok(Stamp {
        id,
        stored_at: text,
    })
}
use crate::server::MAX_STORE_BATCH;

/// The default `--list-idle-timeout`: a List whose reader takes no message for this long ends
/// with DEADLINE_EXCEEDED, so a stalled reader cannot hold a List slot, a file handle and buffers forever.
pub const DEFAULT_LIST_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `--max-lists`: List streams open at once on one datanode; one more is
/// RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_LISTS: usize = 64;

/// Records a List reads from the file in one blocking call, at most…
const LIST_CHUNK_RECORDS: usize = 256;
/// …and no more once they reach this many bytes: with [`LIST_BUFFER`], what a List holds.
const LIST_CHUNK_BYTES: usize = 128 * 1024;
/// Messages a List queues ahead of its reader (the gRPC stream's flow-control window holds
/// more in the transport).
const LIST_BUFFER: usize = 8;

/// The datanode's Store service (and the Datanode service, its batch form).
#[derive(Clone)]
pub struct StoreService {
    name: Arc<str>,
    file: DataFile,
    /// Request id → first reply, rebuilt from the data file at start.
    dedupe: Dedupe<StoreReply>,
    max_message_bytes: usize,
    /// One permit per open List stream (`--max-lists`).
    lists: Arc<Semaphore>,
    max_lists: usize,
    /// How long a List waits for its reader to take a message before it ends the stream.
    list_idle_timeout: Duration,
    /// Store batches running now, whether or not their callers still wait.
    running: crate::limits::Running,
}

impl StoreService {
    /// A service over `file`, with `dedupe` already holding the request ids the file had (see
    /// [`remember`]).
    pub fn new(config: &Config, file: DataFile, dedupe: Dedupe<StoreReply>) -> Self {
        Self {
            name: config.name.as_str().into(),
            file,
            dedupe,
            max_message_bytes: config.max_message_bytes,
            lists: Arc::new(Semaphore::new(config.max_lists)),
            max_lists: config.max_lists,
            list_idle_timeout: config.list_idle_timeout,
            running: crate::limits::Running::new(config.limits.max_in_flight),
        }
    }
}

/// Remembers a record read back from the data file in `dedupe`, as if it had just been stored
/// (a record without a request id has nothing to remember).
pub fn remember(dedupe: &Dedupe<StoreReply>, datanode: &str, record: &Record) {
    let key = if record.request_id.is_empty() {
        id_key(&record.id)
    } else {
        record.request_id.clone()
    };
    dedupe.remember(&key, &record.message, reply(datanode, record));
}

/// The idempotency key of a record without a request id: its id, behind a prefix with a space
/// (which no request id may hold), so it never meets a client's key.
///
/// A headnode's record without a request id is placed by its id, so a copy of it may arrive
/// twice: Repair copying it while the headnode's own forward of it lands, or a forward retried
/// after a timeout. Keyed by its id, the second is answered with the first reply and adds no
/// line. The price: such records take entries of the idempotency map (bounded as ever), so
/// under many of them a client's request id is forgotten sooner.
fn id_key(id: &str) -> String {
    format!("id {id}")
}

/// What a batched append is deduplicated by: its request id, or for a record a headnode stamped
/// without one, its id ([`id_key`]); a message sent to this datanode directly without a request
/// id has none (the datanode makes its id).
fn dedupe_key(append: &Append) -> String {
    match &append.stamp {
        Some(stamp) if append.request_id.is_empty() => id_key(&stamp.id),
        _ => append.request_id.clone(),
    }
}

fn reply(datanode: &str, record: &Record) -> StoreReply {
    StoreReply {
        id: record.id.clone(),
        datanode: datanode.to_string(),
        stored_at: crate::time::parse(&record.stored_at).map(crate::time::to_proto),
        receipt: crate::receipt(&record.message, datanode),
        replicas: vec![datanode.to_string()],
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

type StoreOutcome = Result<Outcome<StoreReply>, Status>;

impl StoreService {
    /// Stores validated messages once per request id and answers in their order. The work runs
    /// in a task of its own, so a caller that goes away (a forward past its deadline) cannot
    /// leave a record stored but unknown to the idempotency map.
    async fn store_valid(&self, appends: Vec<Append>) -> Vec<StoreOutcome> {
        let n = appends.len();
        let slot = match self.running.try_start() {
            Ok(slot) => slot,
            Err(status) => return vec![Err(status); n],
        };
        let (dedupe, file, name) = (self.dedupe.clone(), self.file.clone(), self.name.clone());
        let stored = tokio::spawn(async move {
            let _slot = slot;
            store_batch(&dedupe, &file, &name, appends).await
        });
        match stored.await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let status = Status::internal(format!("store task failed: {e}"));
                vec![Err(status); n]
            }
        }
    }

    /// Validates each record of a batch, stores the valid ones together as they were given (id
    /// and time included), and answers every record in the batch's order.
    async fn store_many(&self, records: Vec<pb::Record>) -> Vec<Result<StoreReply, Status>> {
        let mut results: Vec<Option<Result<StoreReply, Status>>> = Vec::new();
        let mut valid = Vec::new();
        let mut appends = Vec::new();
        let mut last_time = None;
        for (
            i,
            pb::Record {
                id,
                stored_at,
                message,
                request_id,
            },
        ) in records.into_iter().enumerate()
        {
            match crate::validate_message(&message, self.max_message_bytes)
                .and_then(|()| dedupe::validate_request_id(&request_id))
                .and_then(|()| stamp(id, stored_at, &mut last_time))
            {
                Ok(stamp) => {
                    results.push(None);
                    valid.push(i);
                    appends.push(Append {
                        message,
                        request_id,
                        stamp: Some(stamp),
                    });
                }
                Err(status) => results.push(Some(logged(Err(status), ""))),
            }
        }
        let keys: Vec<String> = appends.iter().map(dedupe_key).collect();
        let outcomes = self.store_valid(appends).await;
        for ((i, key), outcome) in valid.into_iter().zip(keys).zip(outcomes) {
            results[i] = Some(logged(outcome, &key));
        }
        // Every slot is filled above; an empty one would shift the answers, so it says so.
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Status::internal("no outcome for this message"))))
            .collect()
    }
}

/// Stores a batch once per request id: every key is claimed without waiting, every fresh message
/// goes into one [`DataFile::append_many`], and each ticket is completed with its record's reply.
/// A key another call is storing right now is awaited beside that append, never holding it up;
/// a key repeated inside the batch is stored once (its copies get the first's reply, or
/// ALREADY_EXISTS for a different message). Outcomes come back in the batch's order.
async fn store_batch(
    dedupe: &Dedupe<StoreReply>,
    file: &DataFile,
    name: &str,
    appends: Vec<Append>,
) -> Vec<StoreOutcome> {
    let mut outcomes: Vec<Option<StoreOutcome>> = (0..appends.len()).map(|_| None).collect();
    // Claimed here: (position in the batch, ticket), and the messages to append, side by side.
    let mut fresh: Vec<(usize, Ticket<StoreReply>)> = Vec::new();
    let mut fresh_appends: Vec<Append> = Vec::new();
    // Request id → its index in `fresh`, for copies later in the batch.
    let mut claimed: HashMap<String, usize> = HashMap::new();
    // A later copy of a claimed key: (position in the batch, index in `fresh`).
    let mut copies: Vec<(usize, usize)> = Vec::new();
    // Keys another call is storing: (position in the batch, the message).
    let mut busy: Vec<(usize, Append)> = Vec::new();
    for (i, append) in appends.into_iter().enumerate() {
        let key = dedupe_key(&append);
        if let Some(&first) = claimed.get(&key) {
            if fresh_appends[first].message == append.message {
                copies.push((i, first));
            } else {
                outcomes[i] = Some(Ok(Outcome::Conflict));
            }
            continue;
        }
        match dedupe.try_claim(&key, &append.message) {
            Some(Claim::Fresh(ticket)) => {
                if !key.is_empty() {
                    claimed.insert(key, fresh.len());
                }
                fresh.push((i, ticket));
                fresh_appends.push(append);
            }
            Some(Claim::Repeat(reply)) => outcomes[i] = Some(Ok(Outcome::Repeat(reply))),
            Some(Claim::Conflict) => outcomes[i] = Some(Ok(Outcome::Conflict)),
            None => busy.push((i, append)),
        }
    }

    // The tickets are completed as soon as the append answers, inside this future: a busy key
    // of another batch may be waiting for one of them.
    let appended = async {
        match file.append_many(fresh_appends).await {
            Ok(records) => fresh
                .into_iter()
                .zip(records)
                .map(|((i, ticket), record)| {
                    let reply = reply(name, &record);
                    ticket.complete(reply.clone());
                    (i, Ok(Outcome::Fresh(reply)))
                })
                .collect::<Vec<_>>(),
            // Dropping the tickets lets a retry with the same keys store them.
            Err(e) => {
                let status = append_status(e);
                fresh
                    .into_iter()
                    .map(|(i, _ticket)| (i, Err(status.clone())))
                    .collect()
            }
        }
    };
    let waited =
        futures::future::join_all(busy.into_iter().map(|(i, append)| async move {
            (i, store_after_wait(dedupe, file, name, append).await)
        }));
    let (appended, waited) = tokio::join!(appended, waited);

    for &(i, first) in &copies {
        outcomes[i] = appended.get(first).map(|(_, outcome)| match outcome {
            Ok(Outcome::Fresh(reply)) => Ok(Outcome::Repeat(reply.clone())),
            other => other.clone(),
        });
    }
    for (i, outcome) in appended.into_iter().chain(waited) {
        outcomes[i] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Status::internal("no outcome for this message"))))
        .collect()
}

/// Stores one message whose key another call is storing: waits for that call, then answers
/// with its reply, or stores the message if that call failed.
async fn store_after_wait(
    dedupe: &Dedupe<StoreReply>,
    file: &DataFile,
    name: &str,
    append: Append,
) -> StoreOutcome {
    match dedupe.claim(&dedupe_key(&append), &append.message).await {
        Claim::Repeat(reply) => Ok(Outcome::Repeat(reply)),
        Claim::Conflict => Ok(Outcome::Conflict),
        Claim::Fresh(ticket) => {
            let record = file
                .append_many(vec![append])
                .await
                .map_err(append_status)?
                .pop()
                .ok_or_else(|| Status::internal("the data file answered no record"))?;
            let reply = reply(name, &record);
            ticket.complete(reply.clone());
            Ok(Outcome::Fresh(reply))
        }
    }
}

/// Logs what a Store did (each side of the message path logs every message) and returns the
/// reply; `request_id` is the key it was deduplicated by ([`dedupe_key`]).
fn logged(outcome: StoreOutcome, request_id: &str) -> Result<StoreReply, Status> {
    match outcome {
        Ok(Outcome::Fresh(reply)) => {
            tracing::info!(id = %reply.id, receipt = %reply.receipt, "stored");
            Ok(reply)
        }
        Ok(Outcome::Repeat(reply)) => {
            tracing::info!(id = %reply.id, request_id = %request_id, "repeated request id: first reply returned, nothing stored");
            Ok(reply)
        }
        Ok(Outcome::Conflict) => match request_id.strip_prefix("id ") {
            Some(id) => Err(Status::already_exists(format!(
                "a record with id {id:?} and a different message is already stored here; an id names one message"
            ))),
            None => Err(dedupe::conflict(request_id)),
        },
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
        let records = request.into_inner().records;
        if records.len() > MAX_STORE_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} records in one StoreBatch, over the limit of {MAX_STORE_BATCH}",
                records.len()
            )));
        }
        let results = self
            .store_many(records)
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
        let key = request_id.clone();
        let outcome = self
            .store_valid(vec![Append::new(message, request_id)])
            .await
            .pop()
            .unwrap_or_else(|| Err(Status::internal("no outcome for this message")));
        logged(outcome, &key).map(Response::new)
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
        let permit = self.lists.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} List streams are open on this datanode, its limit (--max-lists); try again later",
                self.max_lists
            ))
        })?;
        // One more slot than the buffer: it is reserved for the status that ends a stream early.
        let (tx, rx) = mpsc::channel(LIST_BUFFER + 1);
        tokio::spawn(stream_records(
            self.file.clone(),
            self.name.clone(),
            limit,
            self.list_idle_timeout,
            tx,
            permit,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends up to `limit` durable records into `tx`, reading them a chunk at a time on the blocking
/// pool and sending each chunk from the runtime: a slow reader holds a chunk and no thread. A
/// reader that takes no message for `idle` gets DEADLINE_EXCEEDED and the stream ends; a reader that went
/// away ends it at once. The List's slot (`_permit`) is held until then.
async fn stream_records(
    file: DataFile,
    name: Arc<str>,
    limit: u64,
    idle: Duration,
    tx: mpsc::Sender<Result<StoredMessage, Status>>,
    _permit: OwnedSemaphorePermit,
) {
    // Reserved first, so the status that ends the stream early finds room even when the reader
    // stopped reading and the buffer is full.
    let Ok(last) = tx.clone().reserve_owned().await else {
        return;
    };
    let mut cursor: Option<Cursor> = None;
    let mut sent = 0u64;
    loop {
        let read = tokio::task::spawn_blocking({
            let file = file.clone();
            let cursor = cursor.take();
            move || {
                let mut cursor = match cursor {
                    Some(c) => c,
                    None => file.cursor()?,
                };
                let records = cursor.next_chunk(LIST_CHUNK_RECORDS, LIST_CHUNK_BYTES)?;
                Ok::<_, std::io::Error>((cursor, records))
            }
        })
        .await;
        let records = match read {
            Ok(Ok((c, records))) => {
                cursor = Some(c);
                records
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the data file");
                last.send(Err(Status::internal(format!(
                    "cannot read the data file: {e}"
                ))));
                return;
            }
            Err(e) => {
                last.send(Err(Status::internal(format!("List read failed: {e}"))));
                return;
            }
        };
        if records.is_empty() {
            return;
        }
        for record in records {
            match tokio::time::timeout(idle, tx.send(Ok(stored_message(&name, record)))).await {
                Ok(Ok(())) => {}
                // The reader went away.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(idle = ?idle, sent, "List reader took no message within the idle timeout; ending the stream");
                    last.send(Err(Status::deadline_exceeded(format!(
                        "List ended after {sent} messages: the reader took none for {idle:?} (--list-idle-timeout); list again to read from the start"
                    ))));
                    return;
                }
            }
            sent += 1;
            if sent >= limit {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datanode::data_file::Fsync;
    use crate::dedupe::Limits;

    fn batch(items: &[(&str, &str)]) -> Vec<Append> {
        items
            .iter()
            .map(|(message, request_id)| Append::new(message.to_string(), request_id.to_string()))
            .collect()
    }

    fn messages_in(file: &DataFile) -> Vec<String> {
        let mut cursor = file.cursor().unwrap();
        cursor
            .next_chunk(usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.message)
            .collect()
    }

    fn ok(outcome: &StoreOutcome) -> &Outcome<StoreReply> {
        outcome.as_ref().expect("no error")
    }

    fn fresh(outcome: &StoreOutcome) -> &StoreReply {
        match outcome {
            Ok(Outcome::Fresh(reply)) => reply,
            other => panic!("expected a fresh store, got {other:?}"),
        }
    }

    /// A key twice in one batch is stored once: the copy with the same message gets the first's
    /// reply, a copy with another message ALREADY_EXISTS; answers stay in the batch's order.
    #[tokio::test]
    async fn a_key_repeated_inside_one_batch_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = DataFile::open(dir.path(), Fsync::Always, |_| {}).unwrap();
        let dedupe = Dedupe::new(Limits::default());
        let outcomes = store_batch(
            &dedupe,
            &file,
            "d",
            batch(&[
                ("one", "k1"),
                ("two", ""),
                ("one", "k1"),
                ("other", "k1"),
                ("two", ""),
            ]),
        )
        .await;
        let first = fresh(&outcomes[0]).clone();
        assert_eq!(fresh(&outcomes[1]).receipt, crate::receipt("two", "d"));
        assert_eq!(ok(&outcomes[2]), &Outcome::Repeat(first.clone()));
        assert_eq!(ok(&outcomes[3]), &Outcome::Conflict);
        // No request id, no idempotency: both are stored.
        assert_ne!(fresh(&outcomes[4]).id, fresh(&outcomes[1]).id);
        assert_eq!(messages_in(&file), ["one", "two", "two"]);

        // A later batch sees the first reply too.
        let again = store_batch(&dedupe, &file, "d", batch(&[("one", "k1")])).await;
        assert_eq!(ok(&again[0]), &Outcome::Repeat(first));
        assert_eq!(messages_in(&file).len(), 3);
    }

    /// A record a headnode stamped without a request id is deduplicated by its id: a second
    /// copy (Repair's, racing the headnode's forward) gets the first reply and adds no line; the
    /// same id with another message is ALREADY_EXISTS. A direct Store without a key still stores
    /// every time.
    #[tokio::test]
    async fn a_stamped_record_without_a_request_id_is_stored_once_per_id() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = DataFile::open(dir.path(), Fsync::Always, |_| {}).unwrap();
        let dedupe = Dedupe::new(Limits::default());
        let stamped = |message: &str, id: &str| Append {
            message: message.to_string(),
            request_id: String::new(),
            stamp: Some(Stamp {
                id: id.to_string(),
                stored_at: "2026-11-24T10:00:00.000Z".to_string(),
            }),
        };
        let first = store_batch(&dedupe, &file, "d", vec![stamped("m", "id-1")]).await;
        let reply = fresh(&first[0]).clone();
        let again = store_batch(
            &dedupe,
            &file,
            "d",
            vec![
                stamped("m", "id-1"),
                stamped("other", "id-1"),
                stamped("m", "id-2"),
            ],
        )
        .await;
        assert_eq!(ok(&again[0]), &Outcome::Repeat(reply));
        assert_eq!(ok(&again[1]), &Outcome::Conflict);
        fresh(&again[2]);
        assert_eq!(messages_in(&file), ["m", "m"]);
        let conflict = logged(again[1].clone(), &dedupe_key(&stamped("other", "id-1")));
        assert_eq!(conflict.unwrap_err().code(), tonic::Code::AlreadyExists);

        // After a restart the file's records are remembered by id too.
        let reloaded = Dedupe::new(Limits::default());
        let mut cursor = file.cursor().unwrap();
        for record in cursor.next_chunk(usize::MAX, usize::MAX).unwrap() {
            remember(&reloaded, "d", &record);
        }
        let after = store_batch(&reloaded, &file, "d", vec![stamped("m", "id-2")]).await;
        assert!(matches!(ok(&after[0]), Outcome::Repeat(_)));
        assert_eq!(messages_in(&file).len(), 2);

        let direct = store_batch(&dedupe, &file, "d", batch(&[("m", ""), ("m", "")])).await;
        fresh(&direct[0]);
        fresh(&direct[1]);
        assert_eq!(messages_in(&file).len(), 4);
    }

    /// A key another call is storing right now does not hold back the rest of the batch: the
    /// other messages are stored while it waits, and it then gets that call's reply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_key_waits_without_holding_back_the_rest_of_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = DataFile::open(dir.path(), Fsync::Always, |_| {}).unwrap();
        let dedupe = Dedupe::new(Limits::default());
        let Claim::Fresh(ticket) = dedupe.claim("busy", "m").await else {
            panic!("a new key is fresh");
        };
        let running = tokio::spawn({
            let (dedupe, file) = (dedupe.clone(), file.clone());
            async move {
                store_batch(
                    &dedupe,
                    &file,
                    "d",
                    batch(&[("m", "busy"), ("a", "ka"), ("b", "")]),
                )
                .await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while messages_in(&file) != ["a", "b"] {
            assert!(
                std::time::Instant::now() < deadline,
                "the rest was held back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!running.is_finished());
        let other_call = StoreReply {
            id: "from-the-other-call".into(),
            ..Default::default()
        };
        ticket.complete(other_call.clone());
        let outcomes = running.await.unwrap();
        assert_eq!(ok(&outcomes[0]), &Outcome::Repeat(other_call));
        assert_eq!(fresh(&outcomes[1]).receipt, crate::receipt("a", "d"));
        assert_eq!(fresh(&outcomes[2]).receipt, crate::receipt("b", "d"));
        assert_eq!(messages_in(&file), ["a", "b"]);
    }

    /// When the other call storing a key fails (its ticket dropped), the waiting copy stores it.
    #[tokio::test]
    async fn a_busy_key_whose_store_failed_is_stored_by_the_waiting_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = DataFile::open(dir.path(), Fsync::Always, |_| {}).unwrap();
        let dedupe = Dedupe::new(Limits::default());
        let Claim::Fresh(ticket) = dedupe.claim("k", "m").await else {
            panic!("a new key is fresh");
        };
        let running = tokio::spawn({
            let (dedupe, file) = (dedupe.clone(), file.clone());
            async move { store_batch(&dedupe, &file, "d", batch(&[("m", "k")])).await }
        });
        // On this single-threaded runtime the batch runs until it waits for the key.
        tokio::task::yield_now().await;
        assert!(!running.is_finished());
        drop(ticket);
        let outcomes = running.await.unwrap();
        fresh(&outcomes[0]);
        assert_eq!(messages_in(&file), ["m"]);
    }
}
