//! Transport limits on a real listener: connections, handshakes, idle connections and requests in
//! flight are bounded, and what is over a bound is refused at once without hurting honest calls.

mod common;

use std::time::Duration;

use common::*;
use registro::limits::Limits;
use registro::pb::ListRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The HTTP/2 client preface and an empty SETTINGS frame: a connection that has shaken hands.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn datanode_with(limits: Limits) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = datanode_config(dir.path(), "d1");
    config.limits = limits;
    let node = datanode_on("127.0.0.1:0", config).await;
    (dir, node)
}

/// Stores enough on `url` that a List stream of it outlasts every flow-control window (about
/// 5 MB), so an unread stream stays open. `parallel` Stores at a time.
async fn fill(url: &str, parallel: usize) {
    let mut client = store_client(url).await;
    let big = "x".repeat(16 * 1024);
    let messages: Vec<String> = (0..320).map(|i| format!("{i:03} {big}")).collect();
    for chunk in messages.chunks(parallel) {
        let stores = chunk.iter().map(|message| {
            let mut client = client.clone();
            async move { client.store(store_request(message, "")).await }
        });
        for result in futures::future::join_all(stores).await {
            result.unwrap();
        }
    }
    client.store(store_request("last", "")).await.unwrap();
}

/// Reads until the server closes the connection, failing the test past `DEADLINE`.
async fn closed_by_server(conn: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

/// A connection beyond `--max-connections` is closed at once; the ones within keep working, and
/// once a slot frees a new client gets in.
#[tokio::test]
async fn a_connection_over_the_limit_is_closed_and_the_others_keep_working() {
    let (_dir, node) = datanode_with(Limits {
        max_connections: 3,
        ..Limits::default()
    })
    .await;
    let mut honest = store_client(&node.url()).await;
    honest.store(store_request("first", "")).await.unwrap();
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(node.addr).await.unwrap();
        c.write_all(PREFACE).await.unwrap();
        hogs.push(c);
    }
    let mut over = TcpStream::connect(node.addr).await.unwrap();
    closed_by_server(&mut over).await;
    honest
        .store(store_request("still served", ""))
        .await
        .expect("a connection within the limit keeps working");

    drop(hogs);
    eventually("a new client gets in once slots free", || {
        let url = node.url();
        async move {
            let mut client = store_client(&url).await;
            client.store(store_request("new", "")).await.ok()
        }
    })
    .await;
}

/// A connection that sends nothing is closed after the handshake timeout.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let (_dir, node) = datanode_with(Limits {
        handshake_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut silent = TcpStream::connect(node.addr).await.unwrap();
    // Half a preface, then nothing: a slow client does not get more time for it.
    silent.write_all(&PREFACE[..10]).await.unwrap();
    closed_by_server(&mut silent).await;
}

/// A connection with no request in flight is closed after the idle timeout, while one whose
/// stream is still open is not.
#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let idle_timeout = Duration::from_millis(300);
    let (_dir, node) = datanode_with(Limits {
        idle_timeout,
        ..Limits::default()
    })
    .await;
    fill(&node.url(), 64).await;
    let mut client = store_client(&node.url()).await;
    // A List stream kept open (unread) across several idle timeouts.
    let mut busy = client
        .list(ListRequest {
            datanode: String::new(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();

    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    closed_by_server(&mut idle).await;

    // Letting time pass is the behaviour under test here, not synchronisation.
    tokio::time::sleep(idle_timeout * 3).await;
    let mut read = 0;
    while let Some(m) = busy.message().await.expect("the busy stream is never cut") {
        read += 1;
        if m.message == "last" {
            break;
        }
    }
    assert_eq!(read, 321);
}

/// Requests over `--max-in-flight` are answered RESOURCE_EXHAUSTED at once; health checks are
/// exempt, so a busy datanode is not mistaken for a dead one; the limit frees as streams end.
#[tokio::test]
async fn requests_over_the_in_flight_limit_are_shed_and_health_still_answers() {
    let (_dir, node) = datanode_with(Limits {
        max_in_flight: 2,
        ..Limits::default()
    })
    .await;
    fill(&node.url(), 2).await;
    let mut client = store_client(&node.url()).await;
    let list = || ListRequest {
        datanode: String::new(),
        limit: 0,
    };
    let a = client.list(list()).await.unwrap();
    let b = client.list(list()).await.unwrap();

    let shed = client.store(store_request("over", "")).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(shed.message().contains("--max-in-flight"), "{shed:?}");

    let channel = registro::config::endpoint(&node.url(), Duration::from_secs(2))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is exempt from the limit")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    drop((a, b));
    eventually("Stores accepted again once the streams end", || {
        let mut client = client.clone();
        async move { client.store(store_request("after", "")).await.ok() }
    })
    .await;
}
