//! The bad-input matrix: nothing a client sends may crash a node or store anything.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use registro::pb::heartbeat_client::HeartbeatClient;
use registro::pb::{ListRequest, RegisterRequest};
use tonic::Code;

/// The Python interpreter of the test tools (`make tools`), which has grpcio.
fn python() -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(
        path.exists(),
        "{} not found: run `make test`, which installs grpcio from PyPI",
        path.display()
    );
    path
}

/// Sends the raw requests of `tests/python/raw_requests.py` to `addr`; returns case → code.
fn raw_requests(addr: &str) -> BTreeMap<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/raw_requests.py");
    let out = Command::new(python())
        .arg(script)
        .arg(addr)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["case"].as_str().unwrap().to_string(),
                v["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Invalid UTF-8, truncated protobuf, garbage, an over-4-MiB request, an empty message and a
/// gzip-compressed one, sent as raw bytes by grpcio to the headnode and to a datanode: each
/// refused with the documented code, nothing stored, and both nodes keep serving.
#[tokio::test(flavor = "multi_thread")]
async fn raw_bad_requests_are_refused_and_store_nothing() {
    let cluster = Cluster::start(1).await;
    for addr in [
        cluster.headnode.addr.to_string(),
        cluster.datanodes[0].addr.to_string(),
    ] {
        let codes = tokio::task::spawn_blocking(move || raw_requests(&addr))
            .await
            .unwrap();
        assert_eq!(codes["valid"], "OK");
        assert_eq!(codes["invalid_utf8"], "INTERNAL");
        assert_eq!(codes["truncated_protobuf"], "INTERNAL");
        assert_eq!(codes["garbage_bytes"], "INTERNAL");
        // A message over the transport limit is OUT_OF_RANGE (tonic's code, kept by the
        // unary layer that answers Store).
        assert_eq!(codes["over_transport_limit"], "OUT_OF_RANGE");
        assert_eq!(codes["empty_message"], "INVALID_ARGUMENT");
        // No server of ours takes compressed requests (tonic's answer, and the Store path's).
        assert_eq!(codes["gzip_compressed"], "UNIMPLEMENTED");
    }
    let records = cluster.records("datanode1");
    assert_eq!(records.len(), 2, "only the two valid requests are stored");
    assert!(records.iter().all(|r| r.message == "hola desde grpcio"));
    store(&cluster.headnode.url(), "still alive", "")
        .await
        .expect("the headnode still serves");
    store(&cluster.datanodes[0].url(), "still alive", "")
        .await
        .expect("the datanode still serves");
}

/// Register refuses an unparsable address or name with INVALID_ARGUMENT and adds nothing.
#[tokio::test]
async fn register_refuses_bad_addresses_and_names() {
    let cluster = Cluster::start(1).await;
    let mut client = HeartbeatClient::connect(cluster.headnode.url())
        .await
        .unwrap();
    for (name, address) in [
        ("d9", "no-port"),
        ("d9", "host:notaport"),
        ("d9", ":6000"),
        ("", "h:1"),
        ("two words", "h:1"),
    ] {
        let err = client
            .register(RegisterRequest {
                name: name.into(),
                address: address.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?} {address:?}");
    }
    assert_eq!(status(&cluster.headnode.url()).await.len(), 1);
}

/// The same name registering from a new address: the newest address wins.
#[tokio::test]
async fn the_newest_registration_of_a_name_wins() {
    let cluster = Cluster::start(1).await;
    let mut client = HeartbeatClient::connect(cluster.headnode.url())
        .await
        .unwrap();
    for address in ["127.0.0.1:1", "127.0.0.1:2"] {
        let reply = client
            .register(RegisterRequest {
                name: "mover".into(),
                address: address.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.added);
    }
    let status = status(&cluster.headnode.url()).await;
    let mover: Vec<_> = status.iter().filter(|d| d.name == "mover").collect();
    assert_eq!(mover.len(), 1);
    assert_eq!(mover[0].address, "127.0.0.1:2");
}

/// List for a datanode the headnode does not know is NOT_FOUND; asking a datanode for another
/// datanode's messages is NOT_FOUND too.
#[tokio::test]
async fn list_for_an_unknown_datanode_is_not_found() {
    let cluster = Cluster::start(1).await;
    for url in [cluster.headnode.url(), cluster.datanodes[0].url()] {
        let err = store_client(&url)
            .await
            .list(ListRequest {
                datanode: "nobody".into(),
                limit: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}
