//! List on a datanode cannot starve it: an unread stream holds a small buffer and no thread,
//! streams are bounded in number, and a stream whose reader stalls past the idle timeout ends.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use registro::datanode::data_file::{FILE_NAME, Record};
use registro::pb::store_client::StoreClient;
use registro::pb::{ListRequest, StoredMessage};
use tonic::Streaming;
use tonic::transport::Channel;

/// Records written straight into a new data directory, about 6 MB: more than the HTTP/2
/// windows (a tonic client's stream window is 2 MiB) and the List buffers hold, so a reader that
/// stops reading stalls its stream on the datanode.
const RECORDS: usize = 6000;

fn fill_data_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for i in 0..RECORDS {
        let record = Record {
            id: format!("id-{i}"),
            stored_at: "2026-01-01T00:00:00.000Z".into(),
            message: format!("{i:0>1000}"),
            request_id: String::new(),
        };
        text.push_str(&serde_json::to_string(&record).unwrap());
        text.push('\n');
    }
    std::fs::write(dir.join(FILE_NAME), text).unwrap();
}

/// A client on a connection of its own (streams on one connection share its window).
async fn own_client(url: &str) -> StoreClient<Channel> {
    let channel = registro::config::endpoint(url, Duration::from_secs(2))
        .unwrap()
        .connect()
        .await
        .unwrap();
    StoreClient::new(channel)
}

async fn open_list(url: &str) -> Result<Streaming<StoredMessage>, tonic::Status> {
    own_client(url)
        .await
        .list(ListRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

/// Reads a stream to its end: how many messages, and the status it ended with.
async fn drain(stream: &mut Streaming<StoredMessage>) -> (usize, Result<(), tonic::Status>) {
    let mut n = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (n, Ok(())),
            Err(status) => return (n, Err(status)),
        }
    }
}

/// Twenty List streams opened and left unread hold no blocking thread: on a runtime with only
/// two, another List still reads the whole file and Stores are answered.
#[test]
fn unread_lists_hold_no_blocking_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        fill_data_dir(&dir.path().join("d"));
        let node = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "d")).await;
        let url = node.url();
        let mut unread = Vec::new();
        for i in 0..20 {
            let mut stream = open_list(&url).await.unwrap();
            tokio::time::timeout(DEADLINE, stream.message())
                .await
                .unwrap_or_else(|_| panic!("List {i} sends nothing: no blocking thread for it"))
                .unwrap()
                .expect("a first message");
            unread.push(stream);
        }
        let started = Instant::now();
        let whole = tokio::time::timeout(DEADLINE, async {
            drain(&mut open_list(&url).await.unwrap()).await
        })
        .await
        .expect("a List beside 20 unread ones finishes");
        assert_eq!(whole.0, RECORDS, "{whole:?}");
        whole.1.unwrap();
        for i in 0..20 {
            store(&url, &format!("beside unread lists {i}"), "")
                .await
                .unwrap();
        }
        println!(
            "beside 20 unread Lists (2 blocking threads): a whole List and 20 Stores took {:?}",
            started.elapsed()
        );
        drop(unread);
        node.stop().await;
    });
}

/// Lists past `--max-lists` are RESOURCE_EXHAUSTED; a stream whose reader takes nothing for
/// `--list-idle-timeout` ends with DEADLINE_EXCEEDED saying why, and its slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_idle_past_the_timeout_ends_with_deadline_exceeded_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    fill_data_dir(&dir.path().join("d"));
    let mut config = datanode_config(dir.path(), "d");
    config.max_lists = 1;
    config.list_idle_timeout = Duration::from_millis(500);
    let node = datanode_on("127.0.0.1:0", config).await;
    let url = node.url();

    let mut stalled = open_list(&url).await.unwrap();
    stalled.message().await.unwrap().expect("a first message");
    let refused = open_list(&url).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("--max-lists"), "{refused:?}");

    // Once the stalled stream times out, its slot takes another List, which reads everything.
    let mut next = eventually("the idle List's slot is free", || {
        let url = url.clone();
        async move { open_list(&url).await.ok() }
    })
    .await;
    let (all, end) = drain(&mut next).await;
    end.unwrap();
    assert_eq!(all, RECORDS);

    let (read, end) = drain(&mut stalled).await;
    let status = end.expect_err("an idle List ends with an error, not as if complete");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--list-idle-timeout"),
        "{status:?}"
    );
    assert!(read + 1 < RECORDS, "read {read}");
    println!(
        "idle List ended after {} messages: {}",
        read + 1,
        status.message()
    );
    node.stop().await;
}
