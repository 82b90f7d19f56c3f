//! Idempotency keys as SPEC states them, over real gRPC, on the headnode and straight to a
//! datanode: 1–128 printable ASCII characters or INVALID_ARGUMENT; a key names one message
//! (another message under it is ALREADY_EXISTS); a repeat gets the first reply. Nothing refused
//! is stored. And a headnode fed megabyte keys keeps its memory.

mod common;

use std::time::Duration;

use common::*;
use registro::pb::StoreRequest;
use registro::pb::store_client::StoreClient;
use tonic::Code;

/// Every record in the cluster's data files, and the registro log's lines.
fn stored(cluster: &Cluster) -> (usize, usize) {
    let records = ["datanode1", "datanode2"]
        .iter()
        .map(|n| cluster.records(n).len())
        .sum();
    let log = std::fs::read_to_string(cluster.path().join("registro.log")).unwrap_or_default();
    (records, log.lines().count())
}

/// Waits until the registro log has `n` lines (it is written behind the replies). Lines are
/// written in order, so once a later Store's line is there, an earlier one would be too.
async fn wait_log_lines(cluster: &Cluster, n: usize) {
    eventually(&format!("{n} registro-log lines"), || async {
        (stored(cluster).1 >= n).then_some(())
    })
    .await;
}

/// The ids SPEC refuses: too long (129), a space, a control character, non-ASCII.
fn bad_ids() -> Vec<String> {
    vec![
        "x".repeat(129),
        "two words".into(),
        "tab\there".into(),
        "line\nbreak".into(),
        "nul\0".into(),
        "\u{7f}".into(),
        "ñandú".into(),
        "emoji-😀".into(),
    ]
}

/// A request id over 128 characters, or with a space, a control or a non-ASCII character, is
/// INVALID_ARGUMENT on the headnode and on a datanode, and nothing is stored or logged; 128
/// printable characters are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_that_break_the_rules_are_invalid_and_store_nothing() {
    let cluster = Cluster::start(2).await;
    for url in [cluster.headnode.url(), cluster.datanodes[0].url()] {
        for id in bad_ids() {
            let err = store(&url, "hola", &id).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{url} {id:?}");
            assert!(err.message().contains("request_id"), "{}", err.message());
        }
    }
    assert_eq!(stored(&cluster).0, 0, "nothing stored");
    let longest = "~".repeat(128);
    store(&cluster.headnode.url(), "hola", &longest)
        .await
        .expect("128 printable characters are a valid id");
    wait_log_lines(&cluster, 1).await;
    assert_eq!(stored(&cluster), (1, 1));
}

/// The same request id with a different message is ALREADY_EXISTS on the headnode and on a
/// datanode, and stores nothing: the key names the first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_for_another_message_is_already_exists_and_stores_nothing() {
    let cluster = Cluster::start(2).await;
    for (url, key) in [
        (cluster.headnode.url(), "via-headnode"),
        (cluster.datanodes[0].url(), "via-datanode"),
    ] {
        store(&url, "first", key).await.unwrap();
        let err = store(&url, "second", key).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{url}");
        assert!(err.message().contains(key), "{}", err.message());
    }
    wait_log_lines(&cluster, 1).await;
    let all: Vec<_> = ["datanode1", "datanode2"]
        .iter()
        .flat_map(|n| cluster.records(n))
        .collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|r| r.message == "first"), "{all:?}");
}

/// The same request id with the same message gets the first reply, on the headnode and on a
/// datanode, and stores nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_and_message_get_the_first_reply() {
    let cluster = Cluster::start(2).await;
    for (url, key) in [
        (cluster.headnode.url(), "again-headnode"),
        (cluster.datanodes[0].url(), "again-datanode"),
    ] {
        let first = store(&url, "same", key).await.unwrap();
        for _ in 0..3 {
            assert_eq!(store(&url, "same", key).await.unwrap(), first, "{url}");
        }
    }
    wait_log_lines(&cluster, 1).await;
    assert_eq!(stored(&cluster), (2, 1));
}

/// 300 Stores whose request id is 1 MiB each (the hostile client) are all refused, and
/// the headnode process does not keep them: its resident memory after them is within 64 MiB of
/// before (it grew by over 600 MB when ids were unbounded). Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_request_ids_are_refused_and_the_headnode_keeps_no_memory_for_them() {
    const STORES: usize = 300;
    const IN_FLIGHT: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let data = Proc::spawn(
        "datanode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "d1",
            "--data-dir",
            "d1",
        ],
        dir.path(),
        "datanode.err",
    );
    let head = Proc::spawn(
        "headnode",
        &["--listen", "127.0.0.1:0", "--datanodes", &data.addr],
        dir.path(),
        "headnode.err",
    );
    let url = head.url();
    eventually("the datanode SERVING", || async {
        status(&url)
            .await
            .iter()
            .any(|d| d.status == "SERVING")
            .then_some(())
    })
    .await;
    // And past its warm-up: a datanode SERVING in Status is not yet a headnode that takes Stores.
    wait_ready(&url).await;
    // Warm up the paths an honest Store takes, so their one-off allocations are in "before".
    for i in 0..20 {
        store(&url, "warm-up", &format!("warm-{i}")).await.unwrap();
    }
    let before = rss_kib(head.pid());
    let channel = registro::config::endpoint(&url, Duration::from_secs(5))
        .unwrap()
        .connect_lazy();
    let huge = "k".repeat(1024 * 1024);
    let mut refused = 0;
    for round in 0..STORES / IN_FLIGHT {
        let calls: Vec<_> = (0..IN_FLIGHT)
            .map(|i| {
                let mut client = StoreClient::new(channel.clone());
                let request_id = format!("{huge}{round}-{i}");
                tokio::spawn(async move {
                    client
                        .store(StoreRequest {
                            message: "hostile".into(),
                            request_id,
                        })
                        .await
                })
            })
            .collect();
        for call in calls {
            let err = call.await.unwrap().unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            refused += 1;
        }
    }
    let after = rss_kib(head.pid());
    store(&url, "still serving", "after-1")
        .await
        .expect("an honest Store after them");
    println!(
        "headnode RSS: {:.1} MB before {STORES} Stores with 1 MiB request ids, {:.1} MB after ({refused} refused)",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    assert_eq!(refused, STORES);
    assert!(
        after < before + 64 * 1024,
        "the headnode grew from {before} KiB to {after} KiB"
    );
    let records = records_in(&dir.path().join("d1"));
    assert_eq!(records.len(), 21, "only the honest Stores are stored");
}
