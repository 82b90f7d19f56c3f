//! The headnode's forward transport ([`registro::direct::Direct`]) against a real datanode:
//! calls, the connection's flow-control window over many calls, a datanode that restarts between calls, and one that is
//! not there.

mod common;

use std::time::Duration;

use prost::Message;
use registro::direct::Direct;
use registro::pb::datanode_client::DatanodeClient;
use registro::pb::{Record, StoreBatchRequest};

use common::{datanode_config, datanode_on};

fn client(address: &str) -> DatanodeClient<Direct> {
    let direct = Direct::new(address, Duration::from_secs(1), None).unwrap();
    let origin = direct.origin();
    DatanodeClient::with_origin(direct, origin)
        .max_decoding_message_size(registro::server::MAX_GRPC_BATCH_BYTES)
        .max_encoding_message_size(registro::server::MAX_GRPC_BATCH_BYTES)
}

fn batch(call: usize, n: usize) -> StoreBatchRequest {
    StoreBatchRequest {
        records: (0..n)
            .map(|i| Record {
                id: format!("01a20de0-0000-7000-8000-{call:06}{i:06}"),
                stored_at: Some(prost_types::Timestamp {
                    seconds: 1_790_000_000,
                    nanos: 0,
                }),
                message: format!("message {i} of call {call}"),
                request_id: format!("direct-{call}-{i}"),
            })
            .collect(),
    }
}

#[tokio::test]
async fn replies_adding_up_past_the_connection_window_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = datanode_config(dir.path(), "datanode1");
    config.fsync = registro::datanode::data_file::Fsync::Never;
    let node = datanode_on("127.0.0.1:0", config).await;
    let mut client = client(&node.addr.to_string());
    // Each reply is about 100 KiB: 60 of them pass the 5 MiB connection window, so they only
    // keep arriving if each call's share of it is given back.
    let mut reply_bytes = 0;
    for call in 0..60 {
        let reply = client
            .store_batch(batch(call, 1024))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.results.len(), 1024);
        assert!(
            reply.results.iter().all(|r| r.code == 0),
            "{:?}",
            reply.results[0]
        );
        reply_bytes += reply.encoded_len();
    }
    assert!(reply_bytes > 6 << 20, "only {reply_bytes} bytes of replies");
    node.stop().await;
}

#[tokio::test]
async fn a_call_after_the_datanode_restarted_dials_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "datanode1")).await;
    let address = node.addr.to_string();
    let mut client = client(&address);
    let first = client.store_batch(batch(0, 2)).await.unwrap().into_inner();
    assert_eq!(first.results.len(), 2);

    // Stopped and started again on the same port: the connection the client holds is closed.
    node.stop().await;
    let node = datanode_on(&address, datanode_config(dir.path(), "datanode1")).await;
    let again = client.store_batch(batch(1, 2)).await.unwrap().into_inner();
    assert_eq!(again.results.len(), 2);
    assert!(again.results.iter().all(|r| r.code == 0), "{again:?}");
    node.stop().await;

    // Nobody there: the call fails, saying where it could not connect.
    let error = client.store_batch(batch(2, 1)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("cannot connect to {address}")),
        "{error}"
    );
}
