//! Hostile but ordinary gRPC clients against a cluster of real processes (issue 10's mix):
//! oversized request ids, List streams opened and never read, idle and half-open TCP connections.
//! Honest Stores that follow must succeed within a second each, with every datanode still
//! SERVING and the headnode's memory flat.

mod common;

use std::time::{Duration, Instant};

use common::*;
use registro::pb::ListRequest;
use registro::pb::store_client::StoreClient;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    rss_kib(pid) * 1024
}

async fn channel(url: &str) -> Channel {
    registro::config::endpoint(url, Duration::from_secs(2))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The hostile mix of issue 10, then 300 honest Stores from 8 clients: each succeeds within a
/// second, every datanode stays SERVING, and the headnode's resident memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_stores_are_served_through_a_hostile_mix() {
    let dir = tempfile::tempdir().unwrap();
    let datanodes: Vec<Proc> = (1..=3)
        .map(|i| spawn_datanode(dir.path(), i, "127.0.0.1:0", &[]))
        .collect();
    let addrs: Vec<String> = datanodes.iter().map(|d| d.addr.clone()).collect();
    let list = addrs.join(",");
    let headnode = Proc::spawn(
        "headnode",
        &["--listen", "127.0.0.1:0", "--datanodes", &list],
        dir.path(),
        "headnode.err",
    );
    let url = headnode.url();
    let all_serving = || async {
        let s = status(&url).await;
        (s.len() == 3 && s.iter().all(|d| d.status == "SERVING")).then_some(())
    };
    eventually("every datanode SERVING", all_serving).await;

    // Enough data that a List of it outlasts every flow-control window (~5 MB), so an unread
    // stream stays open and holds whatever it holds.
    let client = StoreClient::new(channel(&url).await);
    let big = "x".repeat(16 * 1024);
    for chunk in (0..320).collect::<Vec<_>>().chunks(32) {
        let stores = chunk.iter().map(|i| {
            let mut client = client.clone();
            let message = format!("{i:03} {big}");
            async move { client.store(store_request(&message, "")).await }
        });
        for result in futures::future::join_all(stores).await {
            result.expect("filling the cluster");
        }
    }
    let baseline = rss(headnode.pid());

    // 300 Stores whose request_id is 1 MiB: refused, and nothing kept of them.
    let huge_id = "k".repeat(1024 * 1024);
    for chunk in (0..300).collect::<Vec<_>>().chunks(16) {
        let stores = chunk.iter().map(|i| {
            let mut client = client.clone();
            let id = format!("{i}{huge_id}");
            async move { client.store(store_request("hostile", &id)).await }
        });
        for result in futures::future::join_all(stores).await {
            let status = result.expect_err("a 1 MiB request_id is refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }
    let after_ids = rss(headnode.pid());

    // 300 List streams opened on the headnode and never read, over 10 connections. A headnode
    // may refuse some (a bound on concurrent Lists); what it accepts must not hurt Stores.
    let mut unread = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let mut lister = StoreClient::new(channel(&url).await);
        for _ in 0..30 {
            let mut request = tonic::Request::new(ListRequest {
                datanode: String::new(),
                limit: 0,
            });
            // Opening a List is prompt even when many are open: a hang here is a failure.
            request.set_timeout(Duration::from_secs(5));
            match lister.list(request).await {
                Ok(stream) => unread.push(stream.into_inner()),
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        tonic::Code::ResourceExhausted,
                        "List {} refused: {status:?}",
                        unread.len() + refused
                    );
                    refused += 1;
                }
            }
        }
    }

    // 300 idle TCP connections and 300 half-open ones (half a preface, then silence).
    let mut sockets = Vec::new();
    for i in 0..600 {
        let mut socket = TcpStream::connect(headnode.addr.as_str()).await.unwrap();
        if i % 2 == 1 {
            socket.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        sockets.push(socket);
    }

    // The honest Stores: 8 clients, each on its own connection, 1 s deadline each.
    let mut honest = Vec::new();
    for c in 0..8 {
        let channel = channel(&url).await;
        honest.push(tokio::spawn(async move {
            let mut client = StoreClient::new(channel);
            let mut worst = Duration::ZERO;
            for i in 0..300 / 8 + usize::from(c < 300 % 8) {
                let mut request = tonic::Request::new(store_request(
                    &format!("honest {c}-{i}"),
                    &format!("honest-{c}-{i}"),
                ));
                request.set_timeout(Duration::from_secs(1));
                let start = Instant::now();
                client
                    .store(request)
                    .await
                    .unwrap_or_else(|s| panic!("honest Store {c}-{i} failed: {s:?}"));
                worst = worst.max(start.elapsed());
            }
            worst
        }));
    }
    let mut worst = Duration::ZERO;
    for task in honest {
        worst = worst.max(task.await.unwrap());
    }

    let s = status(&url).await;
    assert!(
        s.iter().all(|d| d.status == "SERVING"),
        "every datanode still SERVING: {s:?}\n{}",
        warnings(&headnode.log_text())
    );
    let routed: u64 = s.iter().map(|d| d.routed).sum();
    assert!(routed >= 320 + 300, "{routed} routed");
    let under_load = rss(headnode.pid());
    println!(
        "headnode RSS: {} MiB before, {} MiB after 300 Stores with 1 MiB ids, {} MiB with {} unread Lists ({} refused) and 600 idle/half-open connections; honest Stores' worst latency {:?}",
        baseline >> 20,
        after_ids >> 20,
        under_load >> 20,
        unread.len(),
        refused,
        worst
    );
    assert!(
        under_load < baseline + 64 * 1024 * 1024,
        "headnode memory grew from {} to {} MiB",
        baseline >> 20,
        under_load >> 20
    );
    drop((unread, sockets, datanodes));
}
