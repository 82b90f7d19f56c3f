//! The headnode's forward connection ([`registro::direct::Direct`]) against a real datanode:
//! calls, flow control both ways over many calls and past the datanode's windows, a datanode
//! that restarts between calls, one that closes an idle connection, and one that is not there.

mod common;

use std::future::Future;
use std::time::Duration;

use prost::Message;
use registro::direct::{CallError, Direct};
use registro::pb::{Record, StoreBatchReply, StoreBatchRequest};
use registro::server::MAX_GRPC_BATCH_BYTES;
use registro::unary::STORE_BATCH;

use common::{datanode_config, datanode_on};

fn direct(address: &str) -> Direct {
    Direct::new(address, STORE_BATCH, Duration::from_secs(1), None).unwrap()
}

fn batch(call: usize, n: usize, size: usize) -> StoreBatchRequest {
    StoreBatchRequest {
        records: (0..n)
            .map(|i| Record {
                id: format!("01a20de0-0000-7000-8000-{call:06}{i:06}"),
                stored_at: Some(prost_types::Timestamp {
                    seconds: 1_790_000_000,
                    nanos: 0,
                }),
                message: format!("message {i} of call {call} {}", "x".repeat(size)),
                request_id: format!("direct-{call}-{i}"),
            })
            .collect(),
    }
}

async fn store(
    direct: &mut Direct,
    request: &StoreBatchRequest,
) -> Result<StoreBatchReply, CallError> {
    direct.unary(request, MAX_GRPC_BATCH_BYTES).await
}

fn all_stored(reply: &StoreBatchReply, n: usize) {
    assert_eq!(reply.results.len(), n);
    assert!(
        reply.results.iter().all(|r| r.code == 0),
        "{:?}",
        reply.results[0]
    );
}

#[tokio::test]
async fn replies_adding_up_past_the_connection_window_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = datanode_config(dir.path(), "datanode1");
    config.fsync = registro::datanode::data_file::Fsync::Never;
    let node = datanode_on("127.0.0.1:0", config).await;
    let mut direct = direct(&node.addr.to_string());
    // Each reply is about 100 KiB: 60 of them pass the 5 MiB connection window, so they only
    // keep arriving if each call's share of it is given back.
    let mut reply_bytes = 0;
    for call in 0..60 {
        let reply = store(&mut direct, &batch(call, 1024, 0)).await.unwrap();
        all_stored(&reply, 1024);
        reply_bytes += reply.encoded_len();
    }
    assert!(reply_bytes > 6 << 20, "only {reply_bytes} bytes of replies");
    node.stop().await;
}

#[tokio::test]
async fn requests_larger_than_the_datanodes_windows_are_sent_as_they_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = datanode_config(dir.path(), "datanode1");
    config.fsync = registro::datanode::data_file::Fsync::Never;
    let node = datanode_on("127.0.0.1:0", config).await;
    let mut direct = direct(&node.addr.to_string());
    // 1024 messages of 3 KiB: 3 MiB, past the datanode's 1 MiB stream and connection windows
    // (and past the 64 KiB a new connection starts with), on the first call and on later ones.
    for call in 0..3 {
        let request = batch(call, 1024, 3 * 1024);
        assert!(request.encoded_len() > 3 << 20);
        let reply = store(&mut direct, &request).await.unwrap();
        all_stored(&reply, 1024);
    }
    node.stop().await;
}

#[tokio::test]
async fn the_datanodes_errors_come_back_as_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "datanode1")).await;
    let mut direct = direct(&node.addr.to_string());
    // More messages than a datanode takes in one call: INVALID_ARGUMENT, as trailers only.
    let too_many = batch(0, registro::server::MAX_STORE_BATCH + 1, 0);
    match store(&mut direct, &too_many).await {
        Err(CallError::Status(status)) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(!status.message().is_empty());
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    // The connection goes on.
    all_stored(&store(&mut direct, &batch(1, 3, 0)).await.unwrap(), 3);
    node.stop().await;
}

#[tokio::test]
async fn a_call_after_the_datanode_restarted_dials_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "datanode1")).await;
    let address = node.addr.to_string();
    let mut direct = direct(&address);
    all_stored(&store(&mut direct, &batch(0, 2, 0)).await.unwrap(), 2);

    // Stopped and started again on the same port: the connection the client holds is closed.
    node.stop().await;
    let node = datanode_on(&address, datanode_config(dir.path(), "datanode1")).await;
    all_stored(&store(&mut direct, &batch(1, 2, 0)).await.unwrap(), 2);
    node.stop().await;

    // Nobody there: the call fails, saying where it could not connect.
    let error = store(&mut direct, &batch(2, 1, 0)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("cannot connect to {address}")),
        "{error}"
    );
}

#[tokio::test]
async fn a_connection_the_datanode_closed_while_idle_is_dialled_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = datanode_config(dir.path(), "datanode1");
    config.limits.idle_timeout = Duration::from_millis(200);
    let node = datanode_on("127.0.0.1:0", config).await;
    let mut direct = direct(&node.addr.to_string());
    all_stored(&store(&mut direct, &batch(0, 1, 0)).await.unwrap(), 1);
    assert!(direct.is_connected());
    common::eventually("the datanode closes the idle connection", || {
        let closed = !direct.is_connected();
        async move { closed.then_some(()) }
    })
    .await;
    all_stored(&store(&mut direct, &batch(1, 1, 0)).await.unwrap(), 1);
    node.stop().await;
}

#[tokio::test]
async fn a_call_dropped_midway_leaves_the_next_one_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "datanode1")).await;
    let mut direct = direct(&node.addr.to_string());
    all_stored(&store(&mut direct, &batch(0, 1, 0)).await.unwrap(), 1);
    // Dropped before its reply (as the forward timeout drops a call).
    {
        let request = batch(1, 1024, 3 * 1024);
        let call = store(&mut direct, &request);
        tokio::pin!(call);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending());
    }
    all_stored(&store(&mut direct, &batch(2, 5, 0)).await.unwrap(), 5);
    node.stop().await;
}

#[tokio::test]
async fn a_parked_connection_does_not_hold_up_a_datanode_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = datanode_config(dir.path(), "datanode1");
    // Long enough that a stop waiting for it would stand out from one that does not.
    config.shutdown_grace = Duration::from_secs(30);
    let node = datanode_on("127.0.0.1:0", config).await;
    let mut direct = direct(&node.addr.to_string());
    all_stored(&store(&mut direct, &batch(0, 1, 0)).await.unwrap(), 1);
    // The datanode says GOAWAY and pings; the parked connection answers and lets go, so the
    // stop does not wait out the grace period for it.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), node.stop())
        .await
        .expect("the datanode's stop waited for its grace period");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!direct.is_connected());
}
