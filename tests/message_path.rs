//! The message path: client → headnode → a random healthy datanode → its data file.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use registro::pb::{ListRequest, StoreReply, StoredMessage};
use tonic::Code;

/// Messages that must round-trip byte for byte.
fn awkward_messages() -> Vec<String> {
    vec![
        "Hola".into(),
        "two\nlines\r\nand a tab\t".into(),
        "quotes \" ' \\ and a JSON-looking {\"id\":1}".into(),
        "emoji 😀🚀 and accents áéíóú ñ 漢字".into(),
        "control \u{0}\u{1}\u{7}\u{1b}[31m\u{7f} chars".into(),
        " leading and trailing spaces ".into(),
        "x".repeat(60 * 1024),
    ]
}

async fn list(url: &str, datanode: &str, limit: u32) -> Result<Vec<StoredMessage>, tonic::Status> {
    let mut stream = store_client(url)
        .await
        .list(ListRequest {
            datanode: datanode.into(),
            limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

/// Every acknowledged message is in exactly one data file — the one its reply named — byte for
/// byte, messages spread over all three datanodes, and nothing unacknowledged is stored.
#[tokio::test]
async fn every_acknowledged_message_is_in_exactly_one_data_file_byte_for_byte() {
    let cluster = Cluster::start(3).await;
    let url = cluster.headnode.url();
    let mut sent: Vec<(String, StoreReply)> = Vec::new();
    let mut messages = awkward_messages();
    messages.extend((0..90).map(|i| format!("message {i}")));
    for message in messages {
        let reply = store(&url, &message, "").await.expect("store");
        assert_eq!(reply.receipt, registro::receipt(&message, &reply.datanode));
        sent.push((message, reply));
    }

    let mut per_node = BTreeMap::new();
    let mut total = 0;
    for name in ["datanode1", "datanode2", "datanode3"] {
        let records = cluster.records(name);
        total += records.len();
        per_node.insert(name, records);
    }
    assert_eq!(
        total,
        sent.len(),
        "nothing stored that was not acknowledged"
    );
    for (message, reply) in &sent {
        let holders: Vec<_> = per_node
            .iter()
            .filter(|(_, records)| records.iter().any(|r| r.id == reply.id))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(
            holders,
            vec![reply.datanode.as_str()],
            "id {} in exactly the named file",
            reply.id
        );
        let record = per_node[reply.datanode.as_str()]
            .iter()
            .find(|r| r.id == reply.id)
            .unwrap();
        assert_eq!(&record.message, message, "byte for byte");
    }
    for (name, records) in &per_node {
        assert!(
            !records.is_empty(),
            "{name} got no messages: routing is not spread"
        );
    }
    // Every line of every file is one record: no message broke a line.
    for name in per_node.keys() {
        let text =
            std::fs::read_to_string(cluster.path().join(name).join("messages.jsonl")).unwrap();
        assert_eq!(text.lines().count(), per_node[name].len());
    }
}

/// List through the headnode returns exactly what was stored, oldest first; per-datanode
/// listing and limits work; an unknown datanode is NOT_FOUND.
#[tokio::test]
async fn list_returns_exactly_what_was_stored_oldest_first() {
    let cluster = Cluster::start(3).await;
    let url = cluster.headnode.url();
    let mut stored = BTreeMap::new();
    for message in awkward_messages()
        .into_iter()
        .chain((0..30).map(|i| format!("m{i}")))
    {
        let reply = store(&url, &message, "").await.unwrap();
        stored.insert(reply.id.clone(), (message, reply.datanode));
    }
    let listed = list(&url, "", 0).await.unwrap();
    assert_eq!(listed.len(), stored.len());
    for m in &listed {
        let (message, datanode) = &stored[&m.id];
        assert_eq!(&m.message, message);
        assert_eq!(&m.datanode, datanode);
    }
    let times: Vec<_> = listed
        .iter()
        .map(|m| m.stored_at.as_ref().map(|t| (t.seconds, t.nanos)).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");

    // Status names datanodes by address (they were given with --datanodes as IPs).
    let node = cluster.datanodes[0].addr.to_string();
    let only = list(&url, &node, 0).await.unwrap();
    assert_eq!(only.len(), cluster.records("datanode1").len());
    assert!(only.iter().all(|m| m.datanode == "datanode1"));
    assert_eq!(list(&url, "", 5).await.unwrap().len(), 5);
    assert_eq!(
        list(&url, "nosuch", 0).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// A Store repeated with the same request_id — one after another or concurrently — gets the
/// first reply and stores the message once.
#[tokio::test]
async fn a_repeated_request_id_stores_once() {
    let cluster = Cluster::start(3).await;
    let url = cluster.headnode.url();
    let first = store(&url, "once", "req-1").await.unwrap();
    let again = store(&url, "once", "req-1").await.unwrap();
    assert_eq!(first, again);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { store(&url, "together", "req-2").await.unwrap() })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().id);
    }
    assert_eq!(ids.len(), 1, "concurrent repeats share the first reply");
    let all: Vec<_> = ["datanode1", "datanode2", "datanode3"]
        .iter()
        .flat_map(|n| cluster.records(n))
        .collect();
    assert_eq!(all.iter().filter(|r| r.request_id == "req-1").count(), 1);
    assert_eq!(all.iter().filter(|r| r.request_id == "req-2").count(), 1);
    assert_eq!(all.len(), 2);
}

/// A datanode remembers request ids across a restart: the repeat after it returns the first
/// reply and adds nothing to the file.
#[tokio::test]
async fn a_datanode_dedupes_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "d")).await;
    let addr = node.addr.to_string();
    let first = store(&node.url(), "hello", "k").await.unwrap();
    node.stop().await;
    let node = datanode_on(&addr, datanode_config(dir.path(), "d")).await;
    assert_eq!(store(&node.url(), "hello", "k").await.unwrap(), first);
    assert_eq!(records_in(&dir.path().join("d")).len(), 1);
}

/// Bad input is INVALID_ARGUMENT and stores nothing, on the headnode and on a datanode.
#[tokio::test]
async fn empty_and_oversized_messages_are_invalid_and_store_nothing() {
    let cluster = Cluster::start(3).await;
    let too_big = "y".repeat(64 * 1024 + 1);
    for url in [cluster.headnode.url(), cluster.datanodes[0].url()] {
        for message in ["", too_big.as_str()] {
            let err = store(&url, message, "").await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        }
    }
    // Exactly at the limit is fine.
    store(&cluster.headnode.url(), &"z".repeat(64 * 1024), "")
        .await
        .unwrap();
    let total: usize = ["datanode1", "datanode2", "datanode3"]
        .iter()
        .map(|n| cluster.records(n).len())
        .sum();
    assert_eq!(total, 1);
}

/// With no healthy datanode, Store fails with UNAVAILABLE at once instead of hanging: during the
/// headnode's warm-up (which says so), and after it ("no healthy datanode").
#[tokio::test]
async fn no_healthy_datanode_is_unavailable_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    // One datanode address that nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    for datanodes in [vec![], vec![dead]] {
        let head = headnode(headnode_config(dir.path(), datanodes)).await;
        let url = head.url();
        eventually("UNAVAILABLE: no healthy datanode", || async {
            let start = Instant::now();
            let err = store(&url, "anyone?", "").await.unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "took {:?}",
                start.elapsed()
            );
            err.message().contains("no healthy datanode").then_some(())
        })
        .await;
        head.stop().await;
    }
}

/// A datanode that dies is routed around at once: every Store still succeeds.
#[tokio::test]
async fn stores_keep_succeeding_when_a_datanode_stops() {
    let mut cluster = Cluster::start(3).await;
    let url = cluster.headnode.url();
    let victim = cluster.datanodes.remove(1);
    victim.stop().await;
    for i in 0..30 {
        let reply = store(&url, &format!("after {i}"), "")
            .await
            .expect("no error while two are healthy");
        assert_ne!(reply.datanode, "datanode2");
    }
}

/// A Store the client gave up on (a 1 ms deadline) still runs to completion and is remembered:
/// the retry with the same request_id gets its reply, and each message is stored once.
#[tokio::test]
async fn a_store_cut_off_by_the_client_is_remembered_for_its_retry() {
    let cluster = Cluster::start(3).await;
    let url = cluster.headnode.url();
    let mut client = store_client(&url).await;
    let mut cut_off = 0;
    for i in 0..30 {
        let mut request = tonic::Request::new(registro::pb::StoreRequest {
            message: format!("impatient {i}"),
            request_id: format!("cut-{i}"),
        });
        request.set_timeout(Duration::from_millis(1));
        if client.store(request).await.is_err() {
            cut_off += 1;
        }
        store(&url, &format!("impatient {i}"), &format!("cut-{i}"))
            .await
            .unwrap();
    }
    println!("{cut_off} of 30 first attempts were cut off by their deadline");
    let all: Vec<_> = ["datanode1", "datanode2", "datanode3"]
        .iter()
        .flat_map(|n| cluster.records(n))
        .collect();
    for i in 0..30 {
        let copies = all
            .iter()
            .filter(|r| r.request_id == format!("cut-{i}"))
            .count();
        assert_eq!(copies, 1, "cut-{i} stored {copies} times");
    }
}

/// `Datanode/StoreBatch`, the headnode's path: one call stores many records, answers each in
/// order with its own outcome (a bad one fails alone, a repeated request id gets the first
/// reply), and stores exactly the good ones, each once, with the id and time it was given.
#[tokio::test]
async fn a_batch_answers_each_message_on_its_own() {
    use registro::headnode::record;
    use registro::pb::StoreBatchRequest;
    use registro::pb::datanode_client::DatanodeClient;

    let dir = tempfile::tempdir().unwrap();
    let node = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "d")).await;
    let first = store(&node.url(), "already here", "k-1").await.unwrap();
    let request = |message: &str, request_id: &str| record::new(message, request_id).record;
    let mut client = DatanodeClient::connect(node.url()).await.unwrap();
    let uno = request("uno", "");
    let no_id = registro::pb::Record {
        id: String::new(),
        ..request("sin id", "")
    };
    let batch = StoreBatchRequest {
        records: vec![
            uno.clone(),
            request("", ""),
            request("already here", "k-1"),
            request("dos\n\"tres\" 🎉", "k-2"),
            request(&"x".repeat(64 * 1024 + 1), ""),
            request("dos\n\"tres\" 🎉", "k-2"),
            no_id,
        ],
    };
    let results = client
        .store_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<Code> = results.iter().map(|r| Code::from_i32(r.code)).collect();
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::InvalidArgument,
            Code::Ok,
            Code::Ok,
            Code::InvalidArgument,
            Code::Ok,
            Code::InvalidArgument,
        ]
    );
    assert!(results[1].reply.is_none() && results[1].error.contains("empty"));
    assert!(results[6].error.contains("id"), "{}", results[6].error);
    assert_eq!(
        results[2].reply.as_ref(),
        Some(&first),
        "a repeat gets the first reply"
    );
    assert_eq!(
        results[3].reply, results[5].reply,
        "a repeat inside one batch stores once"
    );
    let reply = results[0].reply.as_ref().unwrap();
    assert_eq!(reply.datanode, "d");
    assert_eq!(reply.receipt, "Message 'uno' stored on d.");
    assert_eq!(
        (&reply.id, &reply.stored_at),
        (&uno.id, &uno.stored_at),
        "stored as given"
    );

    let records = records_in(&dir.path().join("d"));
    let messages: Vec<&str> = records.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages.contains(&"uno") && messages.contains(&"dos\n\"tres\" 🎉"));
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(reply.id.as_str()));
    assert!(ids.contains(results[3].reply.as_ref().unwrap().id.as_str()));

    // Over the per-call limit: refused whole, nothing stored.
    let too_many = StoreBatchRequest {
        records: vec![request("x", ""); registro::server::MAX_STORE_BATCH + 1],
    };
    let refused = client.store_batch(too_many).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(records_in(&dir.path().join("d")).len(), 3);
}
