//! Retrying a Store the way the protocol allows.
//!
//! UNAVAILABLE from registro means the message could not be placed right now: no datanode is
//! SERVING, or every one tried failed (a disk stall that hit them all, a restart). The request
//! may still have reached a datanode, so a retry is only safe with the same `request_id`: the
//! headnode and the datanodes answer a repeated id with the first reply and store nothing new.
//! Other codes say something about the request (INVALID_ARGUMENT) or were decided by the caller
//! (DEADLINE_EXCEEDED, CANCELLED), and are returned at once.

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

/// Whether a failed Store may be sent again with the same request id.
pub fn is_retryable(status: &Status, request: &StoreRequest) -> bool {
    status.code() == Code::Unavailable && !request.request_id.is_empty()
}

/// Stores `request`, retrying UNAVAILABLE as `policy` says when the request has a request id.
/// `on_retry` hears of each failure that is retried, with the wait before the retry.
pub async fn store(
    client: &mut StoreClient<Channel>,
    request: StoreRequest,
    policy: Retry,
    mut on_retry: impl FnMut(&Status, Duration),
) -> Result<StoreReply, Status> {
    let mut n = 0;
    loop {
        match client.store(request.clone()).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if n < policy.retries && is_retryable(&status, &request) => {
                let wait = policy.wait(n);
                on_retry(&status, wait);
                tokio::time::sleep(wait).await;
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
    fn only_unavailable_with_a_request_id_is_retried() {
        let with_id = StoreRequest {
            message: "m".into(),
            request_id: "r-1".into(),
        };
        let without = StoreRequest {
            message: "m".into(),
            request_id: String::new(),
        };
        assert!(is_retryable(&Status::unavailable("x"), &with_id));
        assert!(!is_retryable(&Status::unavailable("x"), &without));
        for code in [
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            assert!(!is_retryable(&Status::new(code, "x"), &with_id));
        }
    }
}
