//! What "retryable" means in registro, and retrying a Store the way the protocol allows.
//!
//! One definition, [`is_retryable`], used by the client (`client send`, [`store`]) and by the
//! headnode when a datanode answers a forwarded Store: a Store that failed with one of these codes
//! may be sent again **with the same `request_id`**, later or to another server, and may then
//! succeed. The request id is what makes it safe: a Store that did reach a datanode is answered
//! with its first reply and stored nothing new.
//!
//! | code | why it is retryable |
//! |---|---|
//! | UNAVAILABLE | the server or the path to it failed (no datanode SERVING, every one tried failed, a disk error, a headnode still warming up, a refused connection); the request may or may not have been carried out |
//! | RESOURCE_EXHAUSTED | refused for load before anything was done (a full forward queue, too many Lists); the same request later, after a back-off, may get through |
//! | a broken connection | the connection died under the call (the server was killed, a reset): tonic reports UNKNOWN or INTERNAL from its own transport, with the transport error as the source, or CANCELLED with hyper's "operation was canceled" when the call was still waiting on the connection that closed ([`is_broken_connection`]); like UNAVAILABLE, the request may or may not have been carried out |
//!
//! Nothing else is retried:
//! - DEADLINE_EXCEEDED and CANCELLED: the caller's own deadline or cancellation (tonic reports a
//!   client-side timeout as CANCELLED): the caller has decided to stop waiting.
//! - INVALID_ARGUMENT, ALREADY_EXISTS, NOT_FOUND, PERMISSION_DENIED, …: about the request itself;
//!   the same request gets the same answer.
//! - INTERNAL, UNKNOWN, DATA_LOSS: a bug or a corruption, which a retry would hide.
//!
//! The headnode's forwards apply the same table to each message a datanode answers; a call that
//! fails as a whole (transport error, no reply within `--forward-timeout`) is the datanode's
//! failure whatever its code, and each of its messages counts as UNAVAILABLE.
//!
//! A client that knows several servers ([`store_failover`], `client --addr A,B`) sends a retry to
//! the next address at once, and waits out the back-off only once every address has failed in a
//! row: a dead headnode costs one failed attempt, not a wait.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::pb::store_client::StoreClient;
use crate::pb::{StoreReply, StoreRequest};

/// How often, and how patiently, a Store is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first attempt; 0 never retries.
    pub retries: u32,
    /// The wait before the first retry; each next wait doubles, up to `max_wait`.
    pub first_wait: Duration,
    pub max_wait: Duration,
}

impl Default for Retry {
    /// 4 retries after 100, 200, 400 and 800 ms: 1.5 s of waiting at most, about what the
    /// headnode needs to find a datanode again after a stall.
    fn default() -> Self {
        Self {
            retries: 4,
            first_wait: Duration::from_millis(100),
            max_wait: Duration::from_secs(2),
        }
    }
}

impl Retry {
    /// The wait before retry number `n` (0-based).
    pub fn wait(&self, n: u32) -> Duration {
        self.first_wait
            .saturating_mul(2u32.saturating_pow(n))
            .min(self.max_wait)
    }
}

/// Whether a Store that failed with `code` may be sent again with the same request id (see the
/// module docs for the table and the reasons).
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

/// Whether `status` is the client's own transport reporting a connection that broke under the
/// call (the server died, a reset), rather than an answer from the server. tonic reports those
/// as UNKNOWN (or INTERNAL for an HTTP/2 protocol error) with the transport error as the
/// status's source; a status a server sent is decoded from its trailers and has no source.
/// A call still waiting on a connection that closes (the server was killed with the request
/// queued on it) is CANCELLED with hyper's "operation was canceled" as its source: broken too.
/// The caller's own deadline is also CANCELLED, but with tonic's `TimeoutExpired`: not broken.
pub fn is_broken_connection(status: &Status) -> bool {
    let Some(source) = std::error::Error::source(status) else {
        return false;
    };
    match status.code() {
        Code::Unknown | Code::Internal => true,
        Code::Cancelled => {
            let mut cause = Some(source);
            while let Some(err) = cause {
                if err
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_canceled)
                {
                    return true;
                }
                cause = err.source();
            }
            false
        }
        _ => false,
    }
}

/// Whether this failed Store may be retried: a retryable code or a broken connection, and a
/// request id that makes the repeat safe.
pub fn may_retry(status: &Status, request: &StoreRequest) -> bool {
    (is_retryable(status.code()) || is_broken_connection(status)) && !request.request_id.is_empty()
}

/// Stores `request`, retrying failures that [`may_retry`] as `policy` says when the request has
/// a request id.
/// `on_retry` hears of each failure that is retried, with the wait before the retry.
pub async fn store(
    client: &mut StoreClient<Channel>,
    request: StoreRequest,
    policy: Retry,
    mut on_retry: impl FnMut(&Status, Duration),
) -> Result<StoreReply, Status> {
    store_failover(
        std::slice::from_mut(client),
        &mut 0,
        request,
        policy,
        |status, wait, _| on_retry(status, wait),
    )
    .await
}

/// Stores `request` through `clients` (one per server address), starting at `*current`. A
/// failure that [`may_retry`] is retried with the same request id on the next address at once;
/// after every address has failed in a row the next retry waits as `policy` says (so with one
/// address every retry waits). `policy.retries` bounds the retries in all. `*current` is left
/// at the address tried last, so the next Store starts at the one that answered.
/// `on_retry` hears of each failure that is retried, with the wait and the next address's index.
pub async fn store_failover(
    clients: &mut [StoreClient<Channel>],
    current: &mut usize,
    request: StoreRequest,
    policy: Retry,
    mut on_retry: impl FnMut(&Status, Duration, usize),
) -> Result<StoreReply, Status> {
    let count = clients.len();
    if count == 0 {
        return Err(Status::invalid_argument("no server address to send to"));
    }
    // Retries so far, and failures in a row since the last back-off.
    let (mut n, mut in_a_row) = (0u32, 0usize);
    // Back-offs so far: the exponent of the next one.
    let mut waits = 0u32;
    loop {
        *current %= count;
        match clients[*current].store(request.clone()).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if n < policy.retries && may_retry(&status, &request) => {
                in_a_row += 1;
                let wait = if in_a_row >= count {
                    in_a_row = 0;
                    waits += 1;
                    policy.wait(waits - 1)
                } else {
                    Duration::ZERO
                };
                *current = (*current + 1) % count;
                on_retry(&status, wait, *current);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                n += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_limit() {
        let policy = Retry::default();
        let waits: Vec<u128> = (0..6).map(|n| policy.wait(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000]);
        assert_eq!(policy.wait(u32::MAX), policy.max_wait);
    }

    #[test]
    fn unavailable_and_resource_exhausted_are_retryable_and_nothing_else() {
        let retryable: Vec<Code> = (0..=16)
            .map(Code::from_i32)
            .filter(|c| is_retryable(*c))
            .collect();
        assert_eq!(retryable, [Code::ResourceExhausted, Code::Unavailable]);
    }

    #[test]
    fn only_a_request_with_an_id_is_retried() {
        let with_id = StoreRequest {
            message: "m".into(),
            request_id: "r-1".into(),
        };
        let without = StoreRequest {
            message: "m".into(),
            request_id: String::new(),
        };
        assert!(may_retry(&Status::unavailable("x"), &with_id));
        assert!(may_retry(&Status::resource_exhausted("x"), &with_id));
        assert!(!may_retry(&Status::unavailable("x"), &without));
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_broken_connection(&broken));
        assert!(may_retry(&broken, &with_id));
        // The same code sent by a server is an answer, not a broken connection.
        assert!(!is_broken_connection(&Status::unknown("x")));
        assert!(!is_broken_connection(&Status::internal("x")));
        assert!(!is_broken_connection(&Status::cancelled("x")));
        // CANCELLED with a source counts only with hyper's "canceled" in the chain (a
        // `TimeoutExpired`, the caller's deadline, or anything else is not a broken connection).
        let mut cancelled = Status::cancelled("x");
        cancelled.set_source(std::sync::Arc::new(std::io::Error::other("deadline")));
        assert!(!is_broken_connection(&cancelled));
        for code in [
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(!may_retry(&Status::new(code, "x"), &with_id), "{code:?}");
        }
    }
}
