//! The headnode's `registro.v1.Store`: validates, deduplicates by request id, forwards the
//! message's record (see [`super::record`]) to the first `--replicas` healthy datanodes of its
//! placement order (see [`super::placement`]) in parallel, with failover down that order, and
//! writes the registro log. `List` merges every reachable datanode's stream, oldest first, each
//! id once.
//!
//! Replication: a Store is acknowledged only once `--replicas` datanodes have its record durably.
//! Every replica gets the same record (the headnode set its id and stored_at), each through its
//! own datanode's batcher, so a batch call still carries records for one datanode and one fsync
//! covers many of them. A replica that fails is replaced by the next healthy datanode of the
//! order (at most every member is tried once); fewer healthy datanodes than `--replicas` is
//! UNAVAILABLE before anything is sent. A Store that failed after sending keeps its record (a
//! bounded table, `Attempts`) so that the client's retry sends the same record and the
//! replicas that had it and those that did not agree.
//!
//! Placement is what makes a retry safe beyond this headnode's memory: the same request id is
//! placed on the same datanodes, in the same order, by every headnode and after a restart, so a
//! retry reaches the datanode that already holds the message, whose own idempotency map answers
//! with the first record.
//!
//! Failover follows [`crate::retry::is_retryable`]: a forward whose call failed (the datanode's
//! own failure, see [`super::batch`]) or that a datanode answered UNAVAILABLE marks that datanode
//! down and goes to the next in the order with the same record. RESOURCE_EXHAUSTED and a full
//! forward queue are load, not failure: the Store is answered RESOURCE_EXHAUSTED at once (the
//! client retries after a back-off) rather than placed on the next datanode, where a later retry
//! would not look for it. A Store whose caller's deadline passed while it was still queued was
//! never sent: DEADLINE_EXCEEDED.
//!
//! Until the headnode has warmed up (see [`super::warmup`]) every Store is UNAVAILABLE: with a
//! partial pool, placement would pick a datanode other than the one holding a retried message.
//!
//! List is kept from starving Stores: it runs on a connection of its own to each datanode (never
//! the forward or probe connections), at most `--max-lists` run at once (RESOURCE_EXHAUSTED
//! beyond), its output to the reader is a bounded buffer of [`LIST_BUFFER`] messages, and a
//! stream whose reader takes nothing (or whose datanode sends nothing) for `--list-idle-timeout`
//! (default [`DEFAULT_LIST_IDLE_TIMEOUT`]) ends with DEADLINE_EXCEEDED, releasing its datanode
//! streams.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use super::batch;
use super::pool::{Datanode, Pool};
use super::probe::describe;
use super::record;
use crate::dedupe::{self, Dedupe, Outcome};
use crate::logfile::{LogFile, field};
use crate::pb::{self, ListRequest, StoreReply, StoreRequest, StoredMessage};

/// Messages a List's merge may have ready for a slow reader; past them it waits (up to the idle
/// timeout) instead of reading more from the datanodes.
pub const LIST_BUFFER: usize = 8;
/// The default `--list-idle-timeout`.
pub const DEFAULT_LIST_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `--max-lists`: List streams open on a headnode at once.
pub const DEFAULT_MAX_LISTS: usize = 64;

/// How List streams are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimits {
    /// Lists open at once; more get RESOURCE_EXHAUSTED.
    pub max_open: usize,
    /// A stream whose reader or datanodes are idle this long ends.
    pub idle_timeout: Duration,
}

impl Default for ListLimits {
    fn default() -> Self {
        Self {
            max_open: DEFAULT_MAX_LISTS,
            idle_timeout: DEFAULT_LIST_IDLE_TIMEOUT,
        }
    }
}

/// The headnode's Store service.
pub struct StoreService {
    /// Stores running now, whether or not their callers still wait.
    running: crate::limits::Running,
    forwarder: Arc<Forwarder>,
    pool: Arc<Pool>,
    max_message_bytes: usize,
    /// One permit per open List stream.
    lists: Arc<Semaphore>,
    list_limits: ListLimits,
    /// True once the headnode knows its pool (see [`super::warmup`]).
    warm: tokio::sync::watch::Receiver<bool>,
}

/// What a Store needs after validation; shared with the task each Store runs in.
struct Forwarder {
    pool: Arc<Pool>,
    /// `<ts> <id> <datanode> "<message>"` per stored message.
    registro_log: LogFile,
    /// Request id → first reply: a repeat through this headnode is answered without a forward.
    dedupe: Dedupe<StoreReply>,
    /// Datanodes that must hold a message before it is acknowledged (`--replicas`).
    replicas: usize,
    /// Records of partial Stores, for their retries.
    attempts: Attempts,
}

/// How a headnode's Store service behaves (its flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--replicas`: datanodes that hold each message.
    pub replicas: usize,
    /// Bounds of the idempotency map.
    pub dedupe: dedupe::Limits,
    pub max_message_bytes: usize,
    pub list_limits: ListLimits,
}

impl StoreService {
    pub fn new(
        pool: Arc<Pool>,
        registro_log: LogFile,
        settings: Settings,
        warm: tokio::sync::watch::Receiver<bool>,
        running: crate::limits::Running,
    ) -> Self {
        let Settings {
            replicas,
            dedupe,
            max_message_bytes,
            list_limits,
        } = settings;
        Self {
            running,
            forwarder: Arc::new(Forwarder {
                pool: pool.clone(),
                registro_log,
                dedupe: Dedupe::new(dedupe),
                replicas: replicas.max(1),
                attempts: Attempts::default(),
            }),
            pool,
            max_message_bytes,
            lists: Arc::new(Semaphore::new(list_limits.max_open.max(1))),
            list_limits,
            warm,
        }
    }
}

impl Forwarder {
    /// Stores once per request id: forwards, logs the receipt, remembers the reply. A Store
    /// without a request id is not remembered here (no client can repeat it); a random key
    /// places it and names it instead (see [`record`]).
    async fn store(
        &self,
        message: String,
        request_id: String,
        caller: batch::Caller,
    ) -> Result<Outcome<StoreReply>, Status> {
        self.dedupe
            .run(&request_id, &message, || async {
                // A retry of a Store that reached some of its replicas and failed sends the same
                // record again, so every replica ends up with one and the same record.
                let placed = match self.attempts.take(&request_id, &message) {
                    Some(placed) => placed,
                    None => record::new(&message, &request_id),
                };
                let reply = match self.forward(&placed, &caller).await {
                    Ok(reply) => reply,
                    Err(Failed { status, sent }) => {
                        if sent && !request_id.is_empty() {
                            self.attempts.remember(&request_id, placed);
                        }
                        return Err(status);
                    }
                };
                // The registro log is the record of stored messages: wait for room in its
                // queue rather than lose a line (see `LogFile::append`).
                self.registro_log
                    .append(registro_line(&crate::time::now(), &reply, &message))
                    .await;
                Ok::<_, Status>(reply)
            })
            .await
    }

    /// Stores `record` on the first `replicas` SERVING datanodes of its placement order, in
    /// parallel, and answers once every one of them has it. A replica that fails (see the
    /// module docs) is marked down and replaced by the next SERVING datanode of the order; load
    /// (a busy datanode, a full queue) and a caller who gave up end the Store without
    /// replacements, once the calls already sent have answered.
    async fn forward(
        &self,
        record::Placed { key, record }: &record::Placed,
        caller: &batch::Caller,
    ) -> Result<StoreReply, Failed> {
        let order = self.pool.placement(key);
        let healthy = order.iter().filter(|n| n.is_serving()).count();
        if healthy < self.replicas {
            return Err(Failed {
                status: too_few_healthy(self.replicas, healthy, order.len()),
                sent: false,
            });
        }
        let mut candidates = order.into_iter().enumerate();
        let mut next_serving = move || candidates.find(|(_, node)| node.is_serving());
        let send = |(rank, node): (usize, Arc<Datanode>)| {
            let record = record.clone();
            async move {
                let result = node.store(record, caller).await;
                (rank, node, result)
            }
        };
        let mut stored: Vec<(usize, StoreReply)> = Vec::with_capacity(self.replicas);
        let mut failed: Vec<String> = Vec::new();
        // The first error that is not the datanode's failure: it ends the Store (no replacements).
        let mut refused: Option<Status> = None;
        if self.replicas == 1 {
            // One replica: the calls go one after another, each awaited in place (no
            // FuturesUnordered, whose task node costs an allocation and a copy of the call on
            // every Store).
            let mut candidate = next_serving();
            while let Some(next) = candidate {
                let (rank, node, result) = send(next).await;
                let replace =
                    self.settle(rank, &node, result, &mut stored, &mut failed, &mut refused);
                candidate = if replace && refused.is_none() {
                    next_serving()
                } else {
                    None
                };
            }
        } else {
            let mut calls = futures::stream::FuturesUnordered::new();
            for _ in 0..self.replicas {
                if let Some(candidate) = next_serving() {
                    calls.push(send(candidate));
                }
            }
            while let Some((rank, node, result)) = calls.next().await {
                if self.settle(rank, &node, result, &mut stored, &mut failed, &mut refused)
                    && refused.is_none()
                    && let Some(candidate) = next_serving()
                {
                    calls.push(send(candidate));
                }
            }
        }
        if let Some(status) = refused {
            return Err(Failed { status, sent: true });
        }
        if stored.len() < self.replicas {
            return Err(Failed {
                status: not_enough_replicas(self.replicas, &stored, &failed),
                sent: true,
            });
        }
        stored.sort_by_key(|(rank, _)| *rank);
        Ok(acknowledge(&record.message, stored))
    }

    /// Takes one replica's answer: a stored reply goes into `stored`; an answer that ends the
    /// Store (the caller gave up, the datanode is busy, the request itself is refused) goes into
    /// `refused` if it is the first. A failure of the datanode marks it down, names it in
    /// `failed` and returns true: the Store should try the next datanode of the order.
    fn settle(
        &self,
        rank: usize,
        node: &Datanode,
        result: Result<StoreReply, batch::Error>,
        stored: &mut Vec<(usize, StoreReply)>,
        failed: &mut Vec<String>,
        refused: &mut Option<Status>,
    ) -> bool {
        let error = match result {
            Ok(reply) => {
                node.count_routed();
                stored.push((rank, reply));
                return false;
            }
            Err(batch::Error::Expired { waited }) => {
                refused.get_or_insert_with(|| Status::deadline_exceeded(format!(
                    "the caller gave up (its deadline passed, or it went away) after {} in the headnode's queue for {}; the message was not sent there and is not acknowledged",
                    humantime::format_duration(waited),
                    node.name
                )));
                return false;
            }
            Err(e @ (batch::Error::Full(_) | batch::Error::Busy(_))) => {
                tracing::debug!(datanode = %node.name, error = %e, "datanode busy");
                refused.get_or_insert_with(|| busy(&node.name, &e.to_string()));
                return false;
            }
            Err(batch::Error::Message(status)) if !crate::retry::is_retryable(status.code()) => {
                refused.get_or_insert(status);
                return false;
            }
            Err(batch::Error::Message(status)) if status.code() == Code::ResourceExhausted => {
                refused.get_or_insert_with(|| busy(&node.name, status.message()));
                return false;
            }
            Err(batch::Error::Message(status)) => describe(&status),
            Err(batch::Error::Call(error)) => error,
        };
        tracing::warn!(datanode = %node.name, error = %error, "forward failed; marking the datanode down and trying the next in the message's placement order");
        self.pool.mark_down(node, &error);
        failed.push(node.name.clone());
        true
    }
}

/// Why a forward failed, and whether it sent the record anywhere (then some datanode may hold
/// it, and a retry should send the same record).
struct Failed {
    status: Status,
    sent: bool,
}

/// The reply to a Store that `stored` (in placement order) all hold: the first replica's
/// answer, naming every replica.
fn acknowledge(message: &str, stored: Vec<(usize, StoreReply)>) -> StoreReply {
    let replicas: Vec<String> = stored
        .iter()
        .map(|(_, reply)| reply.datanode.clone())
        .collect();
    let mut replies = stored.into_iter().map(|(_, reply)| reply);
    let mut reply = replies.next().unwrap_or_default();
    for other in replies {
        if other.id != reply.id || other.stored_at != reply.stored_at {
            // Only a retry through another headnode after a partial Store can do this: the
            // first replica held an earlier record of the same request id.
            tracing::warn!(id = %field(&reply.id), other = %field(&other.id), datanode = %field(&other.datanode), "replicas answered with different records of one request id");
        }
    }
    reply.receipt = crate::receipt(message, &crate::names(&replicas));
    reply.datanode = replicas.first().cloned().unwrap_or_default();
    reply.replicas = replicas;
    reply
}

/// Records of Stores that reached some replicas and then failed, by request id: the client's
/// retry sends the same record (id and stored_at), so the replicas that already have it and the
/// ones that do not yet end up with the same record. Bounded; the oldest is forgotten first (a
/// retry after that still stores the message, and the copies differ only in `stored_at`).
#[derive(Default)]
struct Attempts {
    inner: std::sync::Mutex<AttemptsInner>,
}

#[derive(Default)]
struct AttemptsInner {
    records: std::collections::HashMap<String, record::Placed>,
    order: std::collections::VecDeque<String>,
}

impl Attempts {
    /// Records remembered at most (each at most one message, `--max-message-bytes`).
    const CAPACITY: usize = 1024;

    fn lock(&self) -> std::sync::MutexGuard<'_, AttemptsInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, request_id: &str, placed: record::Placed) {
        let mut inner = self.lock();
        if inner
            .records
            .insert(request_id.to_string(), placed)
            .is_none()
        {
            inner.order.push_back(request_id.to_string());
        }
        while inner.order.len() > Self::CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.records.remove(&old);
            }
        }
    }

    /// The record of an earlier attempt of `request_id` with this `message`, forgotten here
    /// (the retry remembers it again if it fails too).
    fn take(&self, request_id: &str, message: &str) -> Option<record::Placed> {
        if request_id.is_empty() {
            return None;
        }
        let mut inner = self.lock();
        if inner.records.is_empty() {
            return None;
        }
        let placed = inner.records.remove(request_id)?;
        inner.order.retain(|k| k != request_id);
        (placed.record.message == message).then_some(placed)
    }
}

/// The answer when the datanode a message is placed on is busy: load, retried by the client
/// after a back-off, never placed elsewhere (a later retry would not find it there).
fn busy(datanode: &str, why: &str) -> Status {
    Status::resource_exhausted(format!(
        "datanode {datanode} is busy ({}); retry after a back-off",
        crate::one_line(why)
    ))
}

/// The error when fewer datanodes are healthy than a Store needs: at once, before any forward.
fn too_few_healthy(replicas: usize, healthy: usize, members: usize) -> Status {
    if replicas == 1 {
        return Status::unavailable(format!(
            "no healthy datanode: none of {members} has passed its last health check"
        ));
    }
    Status::unavailable(format!(
        "not enough healthy datanodes: --replicas {replicas} needs {replicas}, {healthy} of {members} healthy; nothing stored"
    ))
}

/// The error when the datanodes left to try ran out before `replicas` held the message.
fn not_enough_replicas(
    replicas: usize,
    stored: &[(usize, StoreReply)],
    failed: &[String],
) -> Status {
    let failed = if failed.is_empty() {
        "none failed".to_string()
    } else {
        format!("forwards to {} failed", failed.join(", "))
    };
    if replicas == 1 {
        return Status::unavailable(format!("no healthy datanode: {failed}"));
    }
    let holders: Vec<String> = stored.iter().map(|(_, r)| r.datanode.clone()).collect();
    Status::unavailable(format!(
        "not enough healthy datanodes: stored on {} of the {replicas} replicas needed ({}) and no healthy datanode is left to try ({failed}); not acknowledged",
        holders.len(),
        if holders.is_empty() {
            "none".to_string()
        } else {
            holders.join(", ")
        },
    ))
}

/// The caller's deadline, from the `grpc-timeout` header a gRPC client sends when it has one
/// (the gRPC over HTTP/2 spec: up to 8 digits and a unit). tonic enforces it on the handler; the
/// Store's own task, which outlives the handler, needs it to know when to stop waiting.
fn caller_deadline(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    // `to_str` succeeded, so the value is ASCII and this split is on a character boundary.
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// The registro-log line of one stored message; the message is a JSON string and the id and
/// datanode (which a datanode chose) are escaped, so the line never breaks.
pub fn registro_line(ts: &str, reply: &StoreReply, message: &str) -> String {
    // Written in one buffer, sized for the usual line: this runs for every Store.
    let holders = reply.replicas.iter().map(String::len).sum::<usize>() + reply.datanode.len();
    let mut line = String::with_capacity(ts.len() + reply.id.len() + holders + message.len() + 16);
    line.push_str(ts);
    line.push(' ');
    line.push_str(&field(&reply.id));
    line.push(' ');
    if reply.replicas.is_empty() {
        line.push_str(&field(&reply.datanode));
    } else {
        for (i, name) in reply.replicas.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&field(name));
        }
    }
    line.push(' ');
    crate::logfile::push_json_string(&mut line, message);
    line
}

#[tonic::async_trait]
impl pb::store_server::Store for StoreService {
    async fn store(&self, request: Request<StoreRequest>) -> Result<Response<StoreReply>, Status> {
        // Dropped with this handler (the client cancelled, or tonic ended the call at the
        // client's deadline): a Store still queued then is not sent.
        let (caller, _gone) = batch::Caller::new(caller_deadline(request.metadata()));
        let StoreRequest {
            message,
            request_id,
        } = request.into_inner();
        crate::validate_message(&message, self.max_message_bytes)?;
        dedupe::validate_request_id(&request_id)?;
        if !*self.warm.borrow() {
            return Err(super::warmup::unavailable());
        }
        // The Store runs to completion even if the client goes away (the rest of it then goes
        // on in a task of its own), so its reply is remembered for the client's retry and no
        // forward is cut off midway.
        let forwarder = self.forwarder.clone();
        let key = request_id.clone();
        let slot = self.running.try_start()?;
        let outcome = crate::limits::run_to_completion(async move {
            let _slot = slot;
            forwarder.store(message, key, caller).await
        })
        .await;
        match outcome {
            Ok(Outcome::Fresh(reply)) => {
                tracing::debug!(id = %field(&reply.id), datanode = %field(&reply.datanode), "stored");
                Ok(Response::new(reply))
            }
            Ok(Outcome::Repeat(reply)) => {
                tracing::info!(id = %field(&reply.id), request_id = %request_id, "repeated request id: first reply returned, nothing stored");
                Ok(Response::new(reply))
            }
            Ok(Outcome::Conflict) => Err(crate::dedupe::conflict(&request_id)),
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %crate::one_line(status.message()), "store failed");
                Err(status)
            }
        }
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<StoredMessage, Status>> + Send>>;

    async fn list(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let permit = self.lists.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} List streams are open on this headnode, the limit (--max-lists); retry after a back-off",
                self.list_limits.max_open
            ))
        })?;
        let ListRequest { datanode, limit } = request.into_inner();
        let members = if datanode.is_empty() {
            self.pool.members()
        } else {
            vec![self.pool.get(&datanode).ok_or_else(|| {
                Status::not_found(format!("no datanode called {datanode:?} in the pool"))
            })?]
        };
        let idle = self.list_limits.idle_timeout;
        let streams =
            futures::future::join_all(members.iter().map(|m| open_list(m, limit, idle))).await;
        let streams: Vec<_> = streams.into_iter().flatten().collect();
        let (tx, rx) = mpsc::channel(LIST_BUFFER);
        let (end_tx, end_rx) = oneshot::channel();
        tokio::spawn(async move {
            if let Err(status) = merge(streams, limit, idle, &tx).await {
                let _ = end_tx.send(status);
            }
            drop(permit);
        });
        // The merged messages, then the reason the merge stopped early, if it did.
        let end = futures::stream::once(end_rx).filter_map(|ended| ended.ok().map(Err));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).chain(end))))
    }
}

/// Opens one datanode's List on its List connection; an unreachable datanode is skipped with a
/// warning.
async fn open_list(
    node: &Datanode,
    limit: u32,
    idle: Duration,
) -> Option<(String, Streaming<StoredMessage>)> {
    let request = ListRequest {
        datanode: String::new(),
        limit,
    };
    match tokio::time::timeout(idle, node.list_client().list(request)).await {
        Ok(Ok(stream)) => Some((node.name.clone(), stream.into_inner())),
        Ok(Err(status)) => {
            tracing::warn!(datanode = %node.name, error = %describe(&status), "List skips an unreachable datanode");
            None
        }
        Err(_) => {
            tracing::warn!(datanode = %node.name, "List skips a datanode that did not answer within the idle timeout");
            None
        }
    }
}

/// Merges streams that are each oldest first into one oldest-first stream (ties by id), each id
/// once (see [`Recent`]). Ends early, with the status the reader gets last, when the reader
/// takes nothing for `idle`.
async fn merge(
    streams: Vec<(String, Streaming<StoredMessage>)>,
    limit: u32,
    idle: Duration,
    tx: &mpsc::Sender<Result<StoredMessage, Status>>,
) -> Result<(), Status> {
    let limit = if limit == 0 {
        u64::MAX
    } else {
        u64::from(limit)
    };
    let mut heads: Vec<(String, Streaming<StoredMessage>, Option<StoredMessage>)> = Vec::new();
    for (name, mut stream) in streams {
        let head = next(&name, &mut stream, idle).await;
        heads.push((name, stream, head));
    }
    let mut sent = 0u64;
    let mut recent = Recent::default();
    while sent < limit {
        let oldest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, (_, _, head))| head.as_ref().map(|m| (i, sort_key(m))))
            .min_by(|a, b| a.1.cmp(&b.1))
            .map(|(i, _)| i);
        let Some(i) = oldest else { break };
        let (name, stream, head) = &mut heads[i];
        let message = head.take().unwrap_or_default();
        *head = next(name, stream, idle).await;
        if !recent.first_time(&message.id) {
            continue;
        }
        match tx.send_timeout(Ok(message), idle).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                tracing::info!(idle = ?idle, "List stream ended: its reader took nothing for the idle timeout");
                return Err(Status::deadline_exceeded(format!(
                    "List stream ended: nothing was read from it for {} (--list-idle-timeout)",
                    humantime::format_duration(idle)
                )));
            }
        }
        sent += 1;
    }
    Ok(())
}

/// Ids the merge sent last: a copy of one of them (a replica, or the stray copy of a forward
/// that timed out on one datanode and was stored again on the next) is not sent again. Copies
/// of a message are the same record (same id and stored_at), so in a merge of oldest-first
/// streams they come out next to each other; the window also covers files that are only roughly
/// in order (records from several headnodes whose clocks differ slightly). Bounded, so a List
/// holds the same memory however long it runs.
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
}

impl Recent {
    /// Ids remembered: a List holds at most this many (about 50 KiB).
    const WINDOW: usize = 1024;

    /// Whether `id` was not among the last [`Self::WINDOW`] ids sent; remembers it.
    fn first_time(&mut self, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == Self::WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.ids.insert(id.to_string());
        true
    }
}

fn sort_key(m: &StoredMessage) -> (i64, i32, &str) {
    let (s, n) = m
        .stored_at
        .as_ref()
        .map_or((0, 0), |t| (t.seconds, t.nanos));
    (s, n, m.id.as_str())
}

/// The next message of one datanode's stream; `None` when it ends, breaks, or sends nothing for
/// `idle` (that datanode is left out of the rest of the merge).
async fn next(
    name: &str,
    stream: &mut Streaming<StoredMessage>,
    idle: Duration,
) -> Option<StoredMessage> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(Ok(m)) => m,
        Ok(Err(status)) => {
            tracing::warn!(datanode = %name, error = %describe(&status), "List stream from a datanode broke off");
            None
        }
        Err(_) => {
            tracing::warn!(datanode = %name, idle = ?idle, "List stream from a datanode sent nothing for the idle timeout; left out");
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

    #[test]
    fn a_registro_line_cannot_be_broken_by_what_a_datanode_answers() {
        let reply = StoreReply {
            id: "id1\n2026-11-23T10:00:00.000Z forged".into(),
            datanode: "d 2\r".into(),
            ..Default::default()
        };
        let line = registro_line("ts", &reply, "m\nm");
        assert_eq!(line.lines().count(), 1, "{line}");
        assert_eq!(
            line,
            r#"ts id1\n2026-11-23T10:00:00.000Z\u{20}forged d\u{20}2\r "m\nm""#
        );
    }

    #[test]
    fn a_registro_line_names_every_replica() {
        let reply = StoreReply {
            id: "id1".into(),
            datanode: "datanode2".into(),
            replicas: vec!["datanode2".into(), "datanode3".into()],
            ..Default::default()
        };
        assert_eq!(
            registro_line("ts", &reply, "Hola"),
            r#"ts id1 datanode2,datanode3 "Hola""#
        );
    }

    fn reply_from(datanode: &str, seconds: i64) -> StoreReply {
        StoreReply {
            id: "id1".into(),
            datanode: datanode.into(),
            stored_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            receipt: crate::receipt("Hola", datanode),
            replicas: vec![datanode.into()],
        }
    }

    #[test]
    fn an_acknowledgement_names_the_replicas_in_placement_order() {
        let reply = acknowledge(
            "Hola",
            vec![
                (0, reply_from("datanode3", 7)),
                (2, reply_from("datanode1", 7)),
            ],
        );
        assert_eq!(reply.datanode, "datanode3");
        assert_eq!(reply.replicas, ["datanode3", "datanode1"]);
        assert_eq!(
            reply.receipt,
            "Message 'Hola' stored on datanode3 and datanode1."
        );
        assert_eq!(reply.stored_at.unwrap().seconds, 7);
        let one = acknowledge("Hola", vec![(1, reply_from("datanode2", 7))]);
        assert_eq!(one.receipt, "Message 'Hola' stored on datanode2.");
        assert_eq!(one.replicas, ["datanode2"]);
    }

    #[test]
    fn a_failed_attempt_is_retried_with_the_same_record() {
        let attempts = Attempts::default();
        let placed = record::new("m", "k1");
        attempts.remember("k1", placed.clone());
        assert_eq!(
            attempts.take("k1", "other message"),
            None,
            "another message"
        );
        attempts.remember("k1", placed.clone());
        assert_eq!(attempts.take("k1", "m"), Some(placed.clone()));
        assert_eq!(attempts.take("k1", "m"), None, "taken once");
        assert_eq!(attempts.take("", "m"), None);
        for i in 0..Attempts::CAPACITY + 10 {
            attempts.remember(&format!("k{i}"), record::new("m", &format!("k{i}")));
        }
        let inner = attempts.lock();
        assert_eq!(inner.records.len(), Attempts::CAPACITY);
        assert_eq!(inner.order.len(), Attempts::CAPACITY);
        assert!(!inner.records.contains_key("k0"), "the oldest is forgotten");
    }

    #[test]
    fn list_sends_each_id_once_within_its_window() {
        let mut recent = Recent::default();
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("a"));
        assert!(recent.first_time("b"));
        assert!(
            recent.first_time(""),
            "a record without an id is always sent"
        );
        assert!(recent.first_time(""));
        for i in 0..Recent::WINDOW {
            assert!(recent.first_time(&format!("x{i}")));
        }
        assert_eq!(recent.ids.len(), Recent::WINDOW);
        assert!(recent.first_time("a"), "forgotten past the window");
    }

    #[test]
    fn the_callers_deadline_comes_from_grpc_timeout() {
        let mut metadata = MetadataMap::new();
        assert!(caller_deadline(&metadata).is_none());
        for (value, expected) in [
            ("250m", Duration::from_millis(250)),
            ("3S", Duration::from_secs(3)),
            ("2M", Duration::from_secs(120)),
            ("99999999u", Duration::from_micros(99_999_999)),
        ] {
            metadata.insert("grpc-timeout", value.parse().unwrap());
            let left = caller_deadline(&metadata).unwrap() - Instant::now();
            assert!(
                left <= expected && left + Duration::from_secs(1) > expected,
                "{value}"
            );
        }
        for bad in ["", "m", "10", "10x", "123456789S", "-1S"] {
            metadata.insert("grpc-timeout", bad.parse().unwrap());
            assert!(caller_deadline(&metadata).is_none(), "{bad:?}");
        }
    }
}
