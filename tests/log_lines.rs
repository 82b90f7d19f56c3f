//! Nothing a client or a datanode sends can forge a log line: names are validated at Register,
//! and every field that reaches the heartbeat and registro logs is escaped.

mod common;

use common::*;
use registro::pb::RegisterRequest;
use registro::pb::heartbeat_client::HeartbeatClient;
use tonic::Code;

/// A Register whose name or address holds a newline (a forged heartbeat line), a space, a
/// control or a non-ASCII character is INVALID_ARGUMENT: the datanode is not added, and the
/// heartbeat log never holds a line it did not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_refuses_names_that_could_forge_log_lines() {
    let cluster = Cluster::start(1).await;
    let url = cluster.headnode.url();
    let mut client = HeartbeatClient::connect(url.clone()).await.unwrap();
    let forged = "evil\n2026-11-23T10:00:00.000Z datanode9 10.0.0.9:6000 SERVING 0.10ms";
    for (name, address) in [
        (forged, "127.0.0.1:1"),
        ("evil\r", "127.0.0.1:1"),
        ("tab\tname", "127.0.0.1:1"),
        ("esc\u{1b}[2J", "127.0.0.1:1"),
        ("ñandú", "127.0.0.1:1"),
        ("fine", "127.0.0.1:1\n2026-11-23T10:00:00.000Z forged"),
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
    // A name that is fine registers, and its first probe is logged: every line before it has
    // been written too.
    client
        .register(RegisterRequest {
            name: "datanode-ok_1.local".into(),
            address: "127.0.0.1:1".into(),
        })
        .await
        .unwrap();
    let log_path = cluster.path().join("heartbeat.log");
    let log = eventually("the new datanode's first probe logged", || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains(" datanode-ok_1.local ").then_some(log)
    })
    .await;
    for line in log.lines() {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        assert_eq!(fields.len(), 5, "{line:?}");
        assert!(
            ["SERVING", "NOT_SERVING", "UNREACHABLE"].contains(&fields[3]),
            "{line:?}"
        );
        assert!(
            !line.contains("evil") && !line.contains("datanode9"),
            "{line:?}"
        );
    }
    let names: Vec<String> = status(&url).await.into_iter().map(|d| d.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A message with newlines and quotes is one registro-log line (a JSON string), and reads back
/// byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_newlines_is_one_registro_log_line() {
    let cluster = Cluster::start(1).await;
    let message = "line one\n2026-11-23T10:00:00.000Z forged datanode1 \"x\"\r\nend";
    store(&cluster.headnode.url(), message, "newlines-1")
        .await
        .unwrap();
    store(&cluster.headnode.url(), "plain", "newlines-2")
        .await
        .unwrap();
    let path = cluster.path().join("registro.log");
    let log = eventually("two registro-log lines", || async {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        (log.lines().count() >= 2).then_some(log)
    })
    .await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log:?}");
    let quoted = lines[0].splitn(4, ' ').nth(3).unwrap();
    assert_eq!(serde_json::from_str::<String>(quoted).unwrap(), message);
}
