//! Batched forwarding: the Stores bound for one datanode leave together, in
//! `registro.v1.Datanode/StoreBatch` calls.
//!
//! Each forward costs the headnode an HTTP/2 stream on its way out (headers, frames, a tonic call
//! through the channel's buffer task) and the datanode one on its way in: more than half of the
//! headnode's CPU per Store when every message went alone. A [`Batcher`] keeps one call open per
//! forward connection to its datanode (`--datanode-connections`, default 1); while they are out,
//! new Stores queue, and the next call takes everything queued (up to [`MAX_BATCH_MESSAGES`] and
//! [`MAX_BATCH_BYTES`]). Under light load a call carries one message and leaves at once, from the
//! Store's own task (no hand-off to another task), so batching never adds a wait; under heavy
//! load the calls grow instead of the stream count.
//!
//! Load is not failure. Time a message spends in this queue is the headnode's own load and says
//! nothing about the datanode, so the two waits are kept apart:
//!
//! - A **call** gets its own deadline, `--forward-timeout` from the moment it is sent. Only a call
//!   that fails (past that deadline, a transport error, UNAVAILABLE) is the datanode's failure:
//!   each of its messages gets [`Error::Call`] and the caller marks the datanode down and tries
//!   another datanode with the same request id.
//! - A **caller** ([`Caller`]) enforces its own deadline (the client's `grpc-timeout`, if it sent
//!   one) for its own wait. If it passes, or the client goes away, while the message is still
//!   queued, the message is never sent and the caller gets [`Error::Expired`]; the datanode is not
//!   marked down. Once a message has been sent
//!   it is not withdrawn, and the caller waits for its call's outcome (bounded by the forward
//!   timeout), so a message cannot be stored here and, after a caller's impatience, elsewhere too.
//! - The queue is bounded, per datanode, by [`QUEUED_CALLS`] calls' worth of messages and bytes
//!   for each connection; a full queue refuses at once with [`Error::Full`]. With every call
//!   bounded by the forward timeout, this also bounds a message's wait in the queue.
//!
//! Every message keeps its own outcome: the datanode answers each one (stored, a repeated
//! request id, or its own error, [`Error::Message`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};

use crate::direct::{CallError, Direct};
use crate::pb::{Record, StoreBatchReply, StoreBatchRequest, StoreReply, StoreResult};

/// Messages in one call at most (a datanode takes up to [`crate::server::MAX_STORE_BATCH`]).
pub const MAX_BATCH_MESSAGES: usize = 256;
const _: () = assert!(MAX_BATCH_MESSAGES <= crate::server::MAX_STORE_BATCH);
/// Bytes of message text (and request ids) in one call at most; a single larger message goes
/// alone (the call limit, [`crate::server::MAX_GRPC_BATCH_BYTES`], leaves room for it).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// How many full calls' worth of Stores may wait for each forward connection: the queue holds
/// at most `QUEUED_CALLS × MAX_BATCH_MESSAGES` messages and `QUEUED_CALLS × MAX_BATCH_BYTES`
/// bytes per connection, so a queued Store waits for at most this many calls before its own.
pub const QUEUED_CALLS: usize = 4;

/// Why a Store did not get a reply from the datanode.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The datanode's queue was full; nothing was queued. Load, not failure.
    #[error("the forward queue to this datanode is full ({0})")]
    Full(&'static str),
    /// The caller gave up (its deadline passed, or it went away) while the message waited in
    /// the queue; it was not sent.
    #[error("the caller gave up after {} in the forward queue; not sent", humantime::format_duration(*waited))]
    Expired { waited: Duration },
    /// The datanode refused the whole call for load (RESOURCE_EXHAUSTED): not a failure.
    #[error("the datanode is busy: {0}")]
    Busy(String),
    /// The call that carried the message failed as a whole: the datanode's failure. The message
    /// may or may not be stored there.
    #[error("{0}")]
    Call(String),
    /// The datanode answered this message with an error of its own.
    #[error("{}", .0.message())]
    Message(Status),
}

/// Who waits for a Store: its deadline, and whether it has gone away (the client cancelled, or
/// tonic ended the call at the client's deadline). Clones share the "gone" flag.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// When the caller stops waiting, if it said.
    pub deadline: Option<Instant>,
    gone: Arc<AtomicBool>,
}

/// Marks its [`Caller`] gone when dropped; the gRPC handler holds it, so that the moment tonic
/// drops the handler (cancellation, the client's deadline) a queued Store is no longer sent.
#[derive(Debug)]
pub struct GoneOnDrop(Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Caller {
    /// A caller with `deadline`, and the guard that marks it gone.
    pub fn new(deadline: Option<Instant>) -> (Self, GoneOnDrop) {
        let gone = Arc::new(AtomicBool::new(false));
        (
            Self {
                deadline,
                gone: gone.clone(),
            },
            GoneOnDrop(gone),
        )
    }

    /// Whether the caller has stopped waiting by `now`.
    fn has_given_up(&self, now: Instant) -> bool {
        self.gone.load(Ordering::Acquire) || self.deadline.is_some_and(|d| d <= now)
    }
}

// Where a queued Store is: still waiting, on its way, or given up by its caller.
const QUEUED: u8 = 0;
const SENT: u8 = 1;
const ABANDONED: u8 = 2;

/// One Store waiting for its call.
struct Pending {
    record: Record,
    /// Who waits for it.
    caller: Caller,
    /// When it was queued.
    queued: Instant,
    /// [`QUEUED`], [`SENT`] or [`ABANDONED`]: the sender and the caller race for it, and the
    /// first to change it from [`QUEUED`] decides whether it is sent.
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<StoreReply, Error>>,
}

impl Pending {
    fn bytes(&self) -> usize {
        self.record.message.len() + self.record.request_id.len() + self.record.id.len()
    }
}

/// How many messages and bytes wait in a queue now; the bounds a new one is checked against.
struct Occupancy {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    max_messages: usize,
    max_bytes: usize,
}

impl Occupancy {
    /// Counts one message of `bytes` in, unless the queue is full. A queue with nothing in it
    /// takes any one message, however large.
    fn admit(&self, bytes: usize) -> Result<(), Error> {
        if self.messages.fetch_add(1, Ordering::AcqRel) >= self.max_messages {
            self.messages.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Full("messages"));
        }
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.messages.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Full("bytes"));
        }
        Ok(())
    }

    /// Counts one message of `bytes` out.
    fn release(&self, bytes: usize) {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The queue of Stores bound for one datanode, and the connections that send them.
///
/// There is no sending task: a Store that finds a connection idle and nothing queued sends its
/// record at once from its own task (no hand-off, no spawn); otherwise it queues. A call that
/// ends hands its connection, with everything queued meanwhile, to the next call (a task of its
/// own), or back to the idle list when nothing waits (see `Lease`).
pub struct Batcher {
    shared: Arc<Shared>,
}

struct Shared {
    state: std::sync::Mutex<State>,
    /// The queue's bound, checked when a Store queues.
    occupancy: Occupancy,
    forward_timeout: Duration,
}

/// What the lock guards: the queue, and the connections with no call out.
struct State {
    queue: VecDeque<Pending>,
    idle: Vec<Connection>,
}

/// A forward connection, and the timer that bounds its calls (one at a time).
///
/// The timer is reset for each call rather than made anew: a call's deadline is later than the
/// last one's, and moving a registered timer later is an atomic store, where a new timer goes
/// into tokio's timer wheel and, being the earliest there, wakes the runtime's driver (a write
/// to its eventfd and one more `epoll_wait`) once per call.
struct Connection {
    direct: Direct,
    /// Made at the first call (it needs the runtime's timer).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing under the lock can panic halfway; a poisoned lock still holds a sound state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection taken for one call. Given back when dropped, whatever happened to the call (it
/// ended, or the future making it was dropped): to the next batch if Stores are queued (a task
/// of its own sends it), else to the idle list. So a connection is never lost, and a queued Store
/// always has a call coming.
struct Lease {
    connection: Option<Connection>,
    shared: Arc<Shared>,
}

impl Lease {
    /// One call on the leased connection (a lease holds it until dropped).
    async fn call(&mut self, records: Vec<Record>) -> Result<Vec<StoreResult>, Error> {
        let timeout = self.shared.forward_timeout;
        match self.connection.as_mut() {
            Some(connection) => call(connection, records, timeout).await,
            None => Err(Error::Call("no connection in the lease".into())),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let mut state = self.shared.lock();
        let batch = next_batch(&mut state.queue, &self.shared.occupancy);
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !batch.is_empty() => {
                drop(state);
                let lease = Lease {
                    connection: Some(connection),
                    shared: self.shared.clone(),
                };
                runtime.spawn(send(lease, batch));
            }
            // Nothing wanted (or no runtime left to send on: the process is ending, and the
            // batch's callers get "dropped unanswered").
            _ => state.idle.push(connection),
        }
    }
}

impl Batcher {
    /// A batcher on `connections`, with one call out on each at a time, each call given
    /// `forward_timeout` from when it is sent.
    pub fn new(connections: Vec<Direct>, forward_timeout: Duration) -> Self {
        let idle: Vec<_> = connections
            .into_iter()
            .map(|direct| Connection {
                direct,
                timer: None,
            })
            .collect();
        let connections = idle.len().max(1);
        Self {
            shared: Arc::new(Shared {
                state: std::sync::Mutex::new(State {
                    queue: VecDeque::new(),
                    idle,
                }),
                occupancy: Occupancy {
                    messages: AtomicUsize::new(0),
                    bytes: AtomicUsize::new(0),
                    max_messages: QUEUED_CALLS * MAX_BATCH_MESSAGES * connections,
                    max_bytes: QUEUED_CALLS * MAX_BATCH_BYTES * connections,
                },
                forward_timeout,
            }),
        }
    }

    /// Stores one message through the next call to this datanode. A `caller` that gives up
    /// (its deadline, or gone) while the message is still queued stops it from being sent; once
    /// sent, the call's outcome is awaited whatever the caller does.
    pub async fn store(&self, record: Record, caller: &Caller) -> Result<StoreReply, Error> {
        let queued = Instant::now();
        let mut record = Some(record);
        let (mut rx, state) = match self.enter(&mut record, caller, queued)? {
            Entry::Direct(mut lease) => {
                // `enter` takes the record only to queue it.
                let Some(record) = record else {
                    return Err(Error::Call("the record was lost before sending".into()));
                };
                // A connection is free and nobody is ahead: this record goes alone, now, from
                // this task. Its caller is here, so it has gone away only if its deadline passed.
                if caller.has_given_up(queued) {
                    return Err(Error::Expired {
                        waited: Duration::ZERO,
                    });
                }
                let answer = lease.call(vec![record]).await;
                drop(lease);
                return answer.and_then(|results| {
                    results
                        .into_iter()
                        .next()
                        .map_or_else(|| Err(Error::Call("no result".into())), outcome)
                });
            }
            Entry::Queued(rx, state) => (rx, state),
        };
        let deadline = caller.deadline;
        let dropped = || Error::Call("the forward was dropped unanswered".into());
        if let Some(deadline) = deadline
            && let Ok(answer) = tokio::time::timeout_at(deadline, &mut rx).await
        {
            return answer.unwrap_or_else(|_| Err(dropped()));
        }
        if deadline.is_some()
            && state
                .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Err(Error::Expired {
                waited: queued.elapsed(),
            });
        }
        rx.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// Takes an idle connection for `record` when nothing is queued (leaving the record to the
    /// caller), else takes the record and queues it (or refuses it when the queue is full). One
    /// critical section, so a connection cannot go idle while a Store queues behind it.
    fn enter(
        &self,
        record: &mut Option<Record>,
        caller: &Caller,
        queued: Instant,
    ) -> Result<Entry, Error> {
        let mut state = self.shared.lock();
        if state.queue.is_empty()
            && let Some(connection) = state.idle.pop()
        {
            return Ok(Entry::Direct(Lease {
                connection: Some(connection),
                shared: self.shared.clone(),
            }));
        }
        let Some(record) = record.take() else {
            return Err(Error::Call("no record to store".into()));
        };
        let (reply, rx) = oneshot::channel();
        let flag = Arc::new(AtomicU8::new(QUEUED));
        let pending = Pending {
            record,
            caller: caller.clone(),
            queued,
            state: flag.clone(),
            reply,
        };
        self.shared.occupancy.admit(pending.bytes())?;
        state.queue.push_back(pending);
        Ok(Entry::Queued(rx, flag))
    }
}

/// Where [`Batcher::enter`] put a Store.
enum Entry {
    /// On an idle connection, to be sent at once by the caller.
    Direct(Lease),
    /// In the queue: the reply to wait for, and the [`Pending::state`] to race for.
    Queued(oneshot::Receiver<Result<StoreReply, Error>>, Arc<AtomicU8>),
}

/// Takes the next call's worth from the queue (up to [`MAX_BATCH_MESSAGES`] and
/// [`MAX_BATCH_BYTES`]; one message of any size), leaving out (and answering) those whose caller
/// gave up: a message whose caller gave up (or went away) is not sent, so it cannot be stored
/// here after its caller was told it was not.
fn next_batch(queue: &mut VecDeque<Pending>, occupancy: &Occupancy) -> Vec<Pending> {
    let now = Instant::now();
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < MAX_BATCH_MESSAGES {
        let Some(p) = queue.front() else { break };
        if !batch.is_empty() && bytes + p.bytes() > MAX_BATCH_BYTES {
            break;
        }
        let Some(p) = queue.pop_front() else { break };
        occupancy.release(p.bytes());
        let expired = p.caller.has_given_up(now)
            && p.state
                .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if expired {
            let waited = now.saturating_duration_since(p.queued);
            let _ = p.reply.send(Err(Error::Expired { waited }));
        } else if p
            .state
            .compare_exchange(QUEUED, SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            bytes += p.bytes();
            batch.push(p);
        }
        // Otherwise its caller abandoned it, and already has its answer.
    }
    batch
}

/// One call of queued Stores on `lease`'s connection: every message in `batch` gets its own
/// outcome. Dropping the lease at the end hands the connection to whatever queued meanwhile.
async fn send(mut lease: Lease, batch: Vec<Pending>) {
    let (records, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.record, p.reply)).unzip();
    match lease.call(records).await {
        Ok(results) => {
            for (result, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(outcome(result));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// One StoreBatch call with `timeout` from now: a result per record, or why the whole call
/// failed ([`Error::Busy`] for RESOURCE_EXHAUSTED, else [`Error::Call`]). Whatever failed the
/// whole call says nothing about the messages: each is retried on another datanode.
async fn call(
    connection: &mut Connection,
    records: Vec<Record>,
    timeout: Duration,
) -> Result<Vec<StoreResult>, Error> {
    let sent = records.len();
    let deadline = Instant::now() + timeout;
    let timer = match &mut connection.timer {
        Some(timer) => {
            timer.as_mut().reset(deadline);
            timer
        }
        None => connection
            .timer
            .insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    let request = StoreBatchRequest { records };
    let reply = connection
        .direct
        .unary::<_, StoreBatchReply>(&request, crate::server::MAX_GRPC_BATCH_BYTES);
    tokio::pin!(reply);
    let answer = std::future::poll_fn(|cx| match reply.as_mut().poll(cx) {
        Poll::Ready(answer) => Poll::Ready(Ok(answer)),
        Poll::Pending => timer.as_mut().poll(cx).map(Err),
    })
    .await;
    let error = match answer {
        Ok(Ok(reply)) => {
            let results = reply.results;
            if results.len() == sent {
                return Ok(results);
            }
            format!(
                "the datanode answered {} results for {sent} messages",
                results.len()
            )
        }
        Ok(Err(CallError::Status(status))) if status.code() == Code::ResourceExhausted => {
            return Err(Error::Busy(super::probe::describe(&status)));
        }
        Ok(Err(CallError::Status(status))) => {
            format!("StoreBatch failed: {}", super::probe::describe(&status))
        }
        Ok(Err(CallError::Failed(error))) => {
            format!("StoreBatch failed: {}", crate::one_line(&error.to_string()))
        }
        Err(_) => format!(
            "no reply within the forward timeout ({}) of the call",
            humantime::format_duration(timeout)
        ),
    };
    Err(Error::Call(error))
}

/// One message's outcome as the datanode reported it.
fn outcome(result: StoreResult) -> Result<StoreReply, Error> {
    match (Code::from_i32(result.code), result.reply) {
        (Code::Ok, Some(reply)) => Ok(reply),
        (Code::Ok, None) => Err(Error::Message(Status::unknown(
            "the datanode reported success without a reply",
        ))),
        (code, _) => Err(Error::Message(Status::new(code, result.error))),
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
        let Err(Error::Message(full)) = outcome(StoreResult {
            reply: None,
            code: Code::Unavailable as i32,
            error: "disk full".into(),
        }) else {
            panic!("a message error");
        };
        assert_eq!(
            (full.code(), full.message()),
            (Code::Unavailable, "disk full")
        );
        let Err(Error::Message(empty)) = outcome(StoreResult::default()) else {
            panic!("a message error");
        };
        assert_eq!(empty.code(), Code::Unknown);
    }

    #[test]
    fn a_queue_is_bounded_in_messages_and_bytes_but_takes_one_of_any_size() {
        let q = Occupancy {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages: 3,
            max_bytes: 100,
        };
        q.admit(1000).unwrap();
        assert!(matches!(q.admit(1), Err(Error::Full("bytes"))));
        q.release(1000);
        q.admit(40).unwrap();
        q.admit(40).unwrap();
        assert!(matches!(q.admit(40), Err(Error::Full("bytes"))));
        q.admit(10).unwrap();
        assert!(matches!(q.admit(1), Err(Error::Full("messages"))));
        assert_eq!(q.messages.load(Ordering::SeqCst), 3);
        assert_eq!(q.bytes.load(Ordering::SeqCst), 90);
    }
}
